"""The node's logic without ComfyUI: tensors in, provider over HTTP, tensors, text and report out."""

from __future__ import annotations

import base64
import io
import json
import random
import threading

import pytest
import torch
from PIL import Image

from banana_pack.nodes.render import EACH_IMAGE, Interrupted, RenderInputs, render
from banana_pack.providers import BananaError, InvalidRequest, SafetyRejected
from banana_pack.providers.config import get_provider
from fake_providers import PRESET_IDS, point_presets_at, script_all, width_for
from helpers import png_bytes, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "render-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    return server


def answer_with(images_for: callable):
    """Reply with PNGs chosen from the request (prompt and number of inline images)."""

    def handler(req: Recorded) -> Reply:
        parts = req.json()["contents"][0]["parts"]
        prompt, refs = parts[0]["text"], len(parts) - 1
        if prompt.startswith("refuse"):
            return Reply(json=fixture("gemini/finish_image_safety.json"))
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"] = [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b).decode()}} for b in images_for(prompt, refs)] + [{"text": f"made for {prompt}"}]
        return Reply(json=body)

    return handler


def inputs(**kw) -> RenderInputs:
    kw.setdefault("provider", "google")
    kw.setdefault("model", "Nano Banana Pro")
    kw.setdefault("prompts", ["a red square"])
    return RenderInputs(**kw)


def test_text_to_image_returns_an_image_tensor_and_saves_it(google, tmp_path):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(6, 4, (255, 0, 0))]))
    out = run(render(inputs(aspect_ratio="3:2", resolution="2K", seed=3), store_root=tmp_path / "bridge", output_root=tmp_path))
    assert out.images.shape == (1, 4, 6, 3) and out.images.dtype == torch.float32
    assert torch.allclose(out.images[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert out.text == "made for a red square"
    (item,) = out.report["items"]
    assert item["status"] == "ok" and item["seed"] == 3 and len(item["files"]) == 1
    assert json.loads((tmp_path / out.report["report_file"]).read_text())["counts"] == {"ok": 1}
    body = google.requests[0].json()
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "2K"}


def test_references_from_several_slots_and_batches_are_uploaded(google, tmp_path):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(r + 1, 1)]))
    batch = torch.rand(2, 16, 24, 3)
    rgba = torch.ones(1, 8, 8, 4)
    rgba[0, :4, :, 3] = 0  # real transparency: must go as PNG
    out = run(render(inputs(images=[[batch], [rgba]]), store_root=None))
    assert out.images.shape[2] == 4  # the server saw three references
    parts = google.requests[0].json()["contents"][0]["parts"]
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/jpeg", "image/jpeg", "image/png"]
    decoded = Image.open(io.BytesIO(base64.b64decode(parts[1]["inline_data"]["data"])))
    assert decoded.size == (24, 16)


def test_too_many_references_fail_before_any_call(google):
    with pytest.raises(InvalidRequest) as info:
        run(render(inputs(model="Nano Banana", images=[[torch.rand(4, 8, 8, 3)]]), store_root=None))
    assert "at most 3" in str(info.value) and google.requests == []


def test_each_image_mode_edits_every_image_in_order(google):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(5, 5)]))
    subjects = torch.stack([torch.full((4, 4, 3), v) for v in (0.0, 0.5, 1.0)])
    style = torch.rand(1, 4, 4, 3)
    out = run(render(inputs(images=[[subjects], [style]], image_mode=EACH_IMAGE, upload_format="png"), store_root=None))
    assert out.images.shape == (3, 5, 5, 3) and len(google.requests) == 3
    firsts = sorted(
        Image.open(io.BytesIO(base64.b64decode(r.json()["contents"][0]["parts"][1]["inline_data"]["data"]))).getpixel((0, 0))[0]
        for r in google.requests
    )
    assert firsts == [0, 128, 255]
    assert all(len(r.json()["contents"][0]["parts"]) == 3 for r in google.requests)  # subject + shared style


def test_each_image_mode_iterates_a_list_input_on_image_1(google):
    """A list-producing node (e.g. RebatchImages) hands image_1 over as several batches."""
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(4, 4)]))
    slot_1 = [torch.rand(1, 4, 4, 3), torch.rand(2, 6, 6, 3)]  # three images in two list items of different sizes
    out = run(render(inputs(images=[slot_1], image_mode=EACH_IMAGE), store_root=None))
    assert out.images.shape[0] == 3 and len(google.requests) == 3
    assert all(len(r.json()["contents"][0]["parts"]) == 2 for r in google.requests)  # the subject alone


def test_prompt_per_line_and_count_with_seeds(google):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(3, 3)]))
    out = run(render(inputs(prompts=["one\n\ntwo\n"], prompt_per_line=True, count=2, seed=100), store_root=None))
    assert out.images.shape[0] == 4
    assert [(row["prompt"], row["seed"]) for row in out.report["items"]] == [("one", 100), ("one", 101), ("two", 100), ("two", 101)]
    assert sorted(r.json()["generationConfig"]["seed"] for r in google.requests) == [100, 100, 101, 101]


def test_mixed_sizes_follow_the_size_policy(google):
    sizes = {"a": (8, 4), "b": (4, 8)}
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(*sizes[p], (0, 255, 0))]))
    for policy in ("resize", "pad", "crop"):
        out = run(render(inputs(prompts=["a", "b"], prompt_per_line=False, size_policy=policy, use_cache=False), store_root=None))
        assert out.images.shape == (2, 4, 8, 3)
        centre = out.images[1, 2, 4]
        corner = out.images[1, 0, 0]
        assert torch.allclose(centre, torch.tensor([0.0, 1.0, 0.0]))
        assert torch.allclose(corner, torch.tensor([0.0, 0.0, 0.0])) == (policy == "pad")


def test_flag_policy_keeps_going_and_writes_the_failures_into_text(google):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [png_bytes(2, 2)]))
    out = run(render(inputs(prompts=["fine", "refuse this"], on_failure="flag"), store_root=None))
    assert out.images.shape[0] == 1
    assert out.text.startswith("[item 2 refused: IMAGE_SAFETY]")
    with pytest.raises(BananaError):
        run(render(inputs(prompts=["fine", "refuse this"], on_failure="fail"), store_root=None))


def test_single_refusal_is_the_typed_error_with_the_reason(google):
    google.route("POST", GEN_PATH, answer_with(lambda p, r: []))
    with pytest.raises(SafetyRejected) as info:
        run(render(inputs(prompts=["refuse please"]), store_root=None))
    assert "IMAGE_SAFETY" in str(info.value) and "Unable to show the generated image" in str(info.value)


def test_decode_failure_still_leaves_the_paid_file_on_disk(google, tmp_path):
    noise = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3)).save(noise, "PNG")
    broken = noise.getvalue()[:200]  # a valid header whose pixel data never arrives
    google.route("POST", GEN_PATH, answer_with(lambda p, r: [broken]))
    with pytest.raises(BananaError) as info:
        run(render(inputs(), store_root=tmp_path))
    saved = [p for p in tmp_path.rglob("*.png")]
    assert len(saved) == 1 and saved[0].read_bytes() == broken
    assert str(saved[0]) in str(info.value)


def test_interrupt_raises_with_the_finished_results_in_the_report(google, tmp_path):
    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        reply = answer_with(lambda p, r: [png_bytes(2, 2)])(req)
        reply.delay = 0 if prompt == "fast" else 30
        return reply

    google.route("POST", GEN_PATH, handler)
    stop = threading.Event()

    class Progress:
        def text(self, text, *, force=False):
            pass

        def items_finished(self, finished, total):
            if finished >= 1:
                stop.set()

    with pytest.raises(Interrupted) as info:
        run(render(inputs(prompts=["fast\nslow"], prompt_per_line=True), store_root=tmp_path, cancel_check=stop.is_set, progress=Progress()))
    assert info.value.report["counts"] == {"ok": 1, "cancelled": 1}
    assert len(list(tmp_path.rglob("*.png"))) == 1


@pytest.mark.parametrize("preset", PRESET_IDS)
def test_every_preset_runs_text_to_image_and_edit_through_the_node(server, monkeypatch, preset):
    """One node, the provider chosen in one value: each preset end to end against its protocol."""
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    spec = get_provider(preset)
    offer = spec.models[-1]
    text = run(render(inputs(provider=preset, model=offer.name, prompts=["a kite over the sea"]), store_root=None))
    assert text.images.shape == (1, 32, width_for(0), 3)
    refs = min(2, offer.max_refs)
    edit = run(render(inputs(provider=preset, model=offer.name, prompts=["make it night"], images=[[torch.rand(refs, 12, 16, 3)]]), store_root=None))
    assert edit.images.shape == (1, 32, width_for(refs), 3)  # the provider received every reference
    own = [r.path for r in server.requests if not r.path.startswith(("/files/", "/evolink-files/"))]
    assert own and all(path.startswith(f"/{preset}/") for path in own), own
