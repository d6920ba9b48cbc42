"""No paid image is lost: which image of an answer is the result, and what happens to the others.

APIYI's presets keep only a turn's last image (its drafts come as ordinary parts first). A link the
model writes in its text is no result of the turn's own: it must not push the real, paid image out.
Every answer here comes from the loopback server, as the provider would send it.
"""

from __future__ import annotations

import base64

import pytest
from banana_pack.providers.client import generate
from banana_pack.providers.errors import BananaError
from banana_pack.providers.outcome import GenerationRequest
from helpers import png_bytes, run
from loopback import Reply

GEMINI_PATH = r"^/apiyi/models/[^/]+:generateContent$"
CHAT_PATH = r"^/apiyi_chat/chat/completions$"


@pytest.fixture
def presets(server, monkeypatch):
    from banana_pack.providers.engine.transport import HttpEngine
    from fake_providers import point_presets_at, script_all

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    server.route("GET", r"^/gone/", Reply(404, body=b"not found", content_type="text/plain"))
    return server


def inline(width: int, height: int) -> dict:
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(width, height)).decode()}}


def gemini_answer(*parts: dict) -> dict:
    return {
        "candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"candidatesTokenCount": 1290},
        "responseId": "resp-kept-1",
    }


def sizes(result) -> list[tuple[int, int]]:
    return [(im.width, im.height) for im in result.images]


def apiyi(count: int = 1):
    return run(generate("apiyi", "Nano Banana Pro", GenerationRequest(prompt="a red kite", count=count)))


@pytest.mark.parametrize("link", ["markdown", "bare"])
def test_a_link_written_after_the_real_image_does_not_replace_it_as_last(presets, link):
    """APIYI (native): a draft, the real image, then text with a link that cannot be downloaded.
    The link used to be the turn's "last image": it was the only one fetched, it failed, and the call
    failed with the paid image discarded."""
    url = f"{presets.url}/gone/copy.png"
    text = f"Here is a copy: ![copy]({url})" if link == "markdown" else f"A copy is at {url}"
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(2, 2), inline(6, 3), {"text": text})))
    result = apiyi()
    assert sizes(result) == [(6, 3)]


def test_a_chat_answer_with_a_link_after_the_real_image_keeps_the_real_image(presets):
    """APIYI (chat): message.images carries the real image; the text links a copy that is gone."""
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes(6, 3)).decode()
    message = {"role": "assistant", "content": f"Done. Copy: {presets.url}/gone/copy.png", "images": [{"type": "image_url", "image_url": {"url": data_uri}}]}
    presets.route("POST", CHAT_PATH, Reply(json={"id": "chatcmpl-kept", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}))
    result = run(generate("apiyi_chat", "Nano Banana Pro", GenerationRequest(prompt="a red kite")))
    assert sizes(result) == [(6, 3)]


def test_when_the_kept_image_cannot_be_fetched_the_turns_other_paid_image_takes_its_place(presets):
    """The turn's last image is a link that fails: the image the provider sent before it (paid for in
    the same answer) is the result, with a warning saying so, instead of failing the paid call."""
    gone = {"fileData": {"mimeType": "image/png", "fileUri": f"{presets.url}/gone/final.png"}}
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(5, 4), gone)))
    result = apiyi()
    assert sizes(result) == [(5, 4)]
    assert any("could not be downloaded" in w and "took its place" in w for w in result.warnings)


def test_a_turn_of_drafts_still_gives_only_its_last_image(presets):
    """keep_images "last" still means one result per turn when everything arrives."""
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(2, 2), inline(3, 3), inline(6, 3))))
    assert sizes(apiyi()) == [(6, 3)]


def test_a_turn_with_only_links_keeps_the_last_link(presets):
    """Without any inline image the links in the text are the results: the last one is kept."""
    presets.route("GET", r"^/files/a\.png$", Reply(body=png_bytes(2, 2), content_type="image/png"))
    presets.route("GET", r"^/files/b\.png$", Reply(body=png_bytes(7, 2), content_type="image/png"))
    text = f"Draft ![a]({presets.url}/files/a.png) and final ![b]({presets.url}/files/b.png)"
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer({"text": text})))
    assert sizes(apiyi()) == [(7, 2)]


def test_when_no_image_of_the_turn_arrives_the_error_names_the_request(presets):
    """Every image of the answer fails: the call fails, saying it may have been billed."""
    gone = {"fileData": {"mimeType": "image/png", "fileUri": f"{presets.url}/gone/final.png"}}
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(gone)))
    with pytest.raises(BananaError) as caught:
        apiyi()
    assert caught.value.maybe_billed


# -- images beyond the count asked for ------------------------------------------------------------


def gemini_batch(root, count: int = 1):
    from banana_pack.nodes.batch import BatchSettings, expand_items, run_batch
    from banana_pack.nodes.store import ResultStore

    settings = BatchSettings(provider="apiyi", model="Nano Banana Pro", use_cache=False)
    store = ResultStore(root) if root is not None else None
    (outcome,) = run(run_batch(expand_items(["a red kite"], [], count=count, max_count=1), settings, store=store))
    return outcome


def saved_images(root) -> list[tuple[int, int]]:
    from PIL import Image

    found = []
    for path in sorted(root.glob("*/*.png")):
        with Image.open(path) as im:
            found.append(im.size)
    return sorted(found)


def test_images_beyond_the_count_asked_for_are_saved_though_not_in_the_output(presets, tmp_path, monkeypatch):
    """One image asked for, three distinct ones answered (APIYI_KEEP_IMAGES=all: no drafts here), one of
    them a link: the output holds the first, and the other two, paid with the same call, reach disk
    too. They used to be dropped unseen (the link never even downloaded)."""
    presets.route("GET", r"^/files/third\.png$", Reply(body=png_bytes(9, 2), content_type="image/png"))
    text = f"and one more ![third]({presets.url}/files/third.png)"
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(6, 3), inline(4, 4), {"text": text})))
    monkeypatch.setenv("BANANA_APIYI_KEEP_IMAGES", "all")
    outcome = gemini_batch(tmp_path)
    assert outcome.status == "ok" and [(im.width, im.height) for im in outcome.images] == [(6, 3)]
    assert saved_images(tmp_path) == [(4, 4), (6, 3), (9, 2)]
    assert len(outcome.files) == 1 and len(outcome.extra_files) == 2
    assert all((tmp_path / f).is_file() for f in outcome.extra_files)
    said = " ".join(outcome.warnings)
    assert "2 extra image(s)" in said and all(f in said for f in outcome.extra_files)
    assert outcome.report()["extra_files"] == outcome.extra_files


def test_extra_images_of_an_async_provider_are_saved(server, monkeypatch, tmp_path):
    """EvoLink-style task services answer with a list of URLs: two for the one asked, both saved."""
    from banana_pack.nodes.batch import BatchSettings, expand_items, run_batch
    from banana_pack.nodes.store import ResultStore
    from fake_providers import point_presets_at, script_all

    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    done = {"id": "task-extra", "status": "completed", "progress": 100, "results": [f"{server.url}/files/e1.png", f"{server.url}/files/e2.png"]}
    server.route("GET", r"^/evolink/tasks/", Reply(json=done))
    server.route("GET", r"^/files/e1\.png$", Reply(body=png_bytes(3, 1), content_type="image/png"))
    server.route("GET", r"^/files/e2\.png$", Reply(body=png_bytes(1, 3), content_type="image/png"))
    settings = BatchSettings(provider="evolink", model="Nano Banana Pro", use_cache=False)
    (outcome,) = run(run_batch(expand_items(["a red kite"], []), settings, store=ResultStore(tmp_path)))
    assert outcome.status == "ok", outcome.message
    assert saved_images(tmp_path) == [(1, 3), (3, 1)] and len(outcome.extra_files) == 1


def test_without_save_to_the_report_says_the_extra_images_were_not_kept(presets, monkeypatch):
    monkeypatch.setenv("BANANA_APIYI_KEEP_IMAGES", "all")
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(6, 3), inline(4, 4))))
    outcome = gemini_batch(None)
    assert outcome.status == "ok" and len(outcome.images) == 1
    assert any("1 extra image(s)" in w and "save_to" in w for w in outcome.warnings)


def test_a_flood_of_links_beyond_the_count_is_not_all_downloaded(presets, monkeypatch):
    """A hostile answer with 40 links for one image: the extras kept are capped (MAX_EXTRA_IMAGES)."""
    from banana_pack.providers.client import MAX_EXTRA_IMAGES

    monkeypatch.setenv("BANANA_APIYI_KEEP_IMAGES", "all")
    presets.route("GET", r"^/flood/", Reply(body=png_bytes(2, 2), content_type="image/png"))
    text = " ".join(f"![x]({presets.url}/flood/{n}.png)" for n in range(40))
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(6, 3), {"text": text})))
    result = apiyi()
    assert len(result.images) == 1 and len(result.extra_images) == MAX_EXTRA_IMAGES
    assert len(presets.hits("GET", r"^/flood/")) == MAX_EXTRA_IMAGES


def test_an_image_that_stood_in_carries_its_own_signature_into_the_conversation(presets):
    """The model's turn for a conversation pairs each image with the signature the model gave it;
    the stand-in must not inherit the signature of the image it replaced (Gemini 3 validates them)."""
    draft = {**inline(5, 4), "thoughtSignature": "c2lnLWRyYWZ0"}
    gone = {"fileData": {"mimeType": "image/png", "fileUri": f"{presets.url}/gone/final.png"}, "thoughtSignature": "c2lnLWZpbmFs"}
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(draft, gone)))
    result = apiyi()
    assert sizes(result) == [(5, 4)]
    assert result.model_parts == [{"image": 0, "thought_signature": "c2lnLWRyYWZ0"}]


def test_when_the_kept_image_is_unusable_the_turns_other_images_are_kept_with_its_bytes(presets, tmp_path):
    """The turn's last image is bytes that are no usable image: the call fails with them saved (.bin),
    and the draft before it, paid with the same answer, is saved with them instead of lost."""
    from banana_pack.providers.errors import UnusableImage

    garbage = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"\x00\x01 not an image at all" * 4).decode()}}
    presets.route("POST", GEMINI_PATH, Reply(json=gemini_answer(inline(5, 4), garbage)))
    with pytest.raises(UnusableImage) as caught:
        apiyi()
    assert sorted((p.mime, p.width) for p in caught.value.payloads) == [("application/octet-stream", None), ("image/png", 5)]
    outcome = gemini_batch(tmp_path)
    assert outcome.status == "failed" and saved_images(tmp_path) == [(5, 4)] and len(list(tmp_path.glob("*/*.bin"))) == 1
