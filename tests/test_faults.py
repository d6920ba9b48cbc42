"""The three faults of issue 9, each tried the way a new user meets it: through generate() or a batch, on loopback."""

from __future__ import annotations

import json

import pytest

from banana_pack.providers import AuthError, GenerationRequest, generate
from fake_providers import b64, key_for, point_presets_at, script_all
from helpers import BLUE_PNG, YELLOW_PNG, png_bytes, run
from loopback import Reply

DRAFT, FINAL = png_bytes(3, 2, (90, 90, 90)), png_bytes(6, 4, (10, 200, 10))


def _image_part(data: bytes, **extra) -> dict:
    return {"inlineData": {"mimeType": "image/png", "data": b64(data)}, **extra}


# -- 1. drafts and repeats: the last image of a turn ----------------------------------------------


def test_apiyi_drafts_sent_as_ordinary_parts_yield_only_the_final_image(server, monkeypatch):
    """providers.md 2.4: through APIYI, interim drafts arrive with a thoughtSignature but no `thought: true`."""
    point_presets_at(server, monkeypatch.setenv)
    answer = {
        "candidates": [{
            "content": {"role": "model", "parts": [
                _image_part(DRAFT, thoughtSignature="c2lnLTE="),
                _image_part(BLUE_PNG, thoughtSignature="c2lnLTI="),
                {"text": "Here is the final image.", "thoughtSignature": "c2lnLTM="},
                _image_part(FINAL, thoughtSignature="c2lnLTQ="),
            ]},
            "finishReason": "STOP",
        }],
        "usageMetadata": {"candidatesTokenCount": 1290},
    }
    server.route("POST", r"^/apiyi/models/[^/]+:generateContent$", Reply(json=answer))
    result = run(generate("apiyi", "Nano Banana Pro", GenerationRequest(prompt="a castle", count=1)))
    assert [im.data for im in result.images] == [FINAL]


def test_apiyi_chat_mode_keeps_the_last_image_of_a_choice(server, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    content = f"Draft ![d](data:image/png;base64,{b64(DRAFT)}) final ![f](data:image/png;base64,{b64(FINAL)})"
    server.route("POST", r"^/apiyi_chat/chat/completions$", Reply(json={"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}))
    result = run(generate("apiyi_chat", "Nano Banana", GenerationRequest(prompt="a castle")))
    assert [im.data for im in result.images] == [FINAL]


def test_google_marks_its_own_drafts_and_a_repeat_counts_once(server, monkeypatch):
    """Google marks drafts itself (thought: true). Distinct images beyond the count asked are dropped with
    a warning (the engine's rule); an image sent twice in one turn is one image, so the warning counts 2."""
    point_presets_at(server, monkeypatch.setenv)
    parts = [
        _image_part(DRAFT, thought=True),
        {"text": "Step 1."},
        _image_part(YELLOW_PNG, thoughtSignature="c2lnLTE="),
        {"text": "Step 2."},
        _image_part(BLUE_PNG, thoughtSignature="c2lnLTI="),
        _image_part(BLUE_PNG, thoughtSignature="c2lnLTI="),
    ]
    server.route("POST", r"^/google/models/[^/]+:generateContent$", Reply(json={"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}))
    result = run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a recipe in two steps")))
    assert [im.data for im in result.images] == [YELLOW_PNG]
    assert any("returned 2 images for 1 asked" in w for w in result.warnings), result.warnings


def test_keep_images_can_be_switched_off_per_preset(server, monkeypatch):
    """BANANA_APIYI_KEEP_IMAGES=all turns the rule off: APIYI is then read like any provider (the first image)."""
    point_presets_at(server, monkeypatch.setenv)
    monkeypatch.setenv("BANANA_APIYI_KEEP_IMAGES", "all")
    parts = [_image_part(DRAFT, thoughtSignature="c2lnLTE="), _image_part(FINAL, thoughtSignature="c2lnLTI=")]
    server.route("POST", r"^/apiyi/models/[^/]+:generateContent$", Reply(json={"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}))
    result = run(generate("apiyi", "Nano Banana Pro", GenerationRequest(prompt="a castle")))
    assert [im.data for im in result.images] == [DRAFT]


# -- 2. a wrong key: the hint names what the preset really reads --------------------------------------


@pytest.mark.parametrize(
    "preset, owner_var, owner_entry, never",
    [
        ("openai_hk_chat", "BANANA_OPENAI_HK_API_KEY", '"openai_hk"', "BANANA_OPENAI_HK_CHAT_API_KEY"),
        ("openai_hk_fal", "BANANA_OPENAI_HK_API_KEY", '"openai_hk"', "BANANA_OPENAI_HK_FAL_API_KEY"),
        ("apiyi_chat", "BANANA_APIYI_API_KEY", '"apiyi"', "BANANA_APIYI_CHAT_API_KEY"),
        ("fal", "BANANA_FAL_API_KEY or FAL_KEY", '"fal"', "BANANA_FAL_API_KEY_"),
    ],
)
def test_wrong_key_hint_names_the_variable_and_keys_file_entry_the_preset_reads(server, monkeypatch, isolated_config, preset, owner_var, owner_entry, never):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)  # the fakes answer a wrong key with the provider's own 401
    monkeypatch.setenv(owner_var.split()[0], "a-revoked-key-0123456789")
    with pytest.raises(AuthError) as info:
        run(generate(preset, "Nano Banana", GenerationRequest(prompt="a castle")))
    text = str(info.value)
    assert owner_var in text and f'{owner_entry}: "<your key>" to $BANANA_CONFIG_DIR/keys.json' in text
    assert never not in text


def test_the_hinted_variable_is_the_one_that_fixes_it(server, monkeypatch):
    """Follow the hint: setting the variable it names to the right key makes the same preset work."""
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", "hk-a-revoked-key-0123456789")
    with pytest.raises(AuthError) as info:
        run(generate("openai_hk_chat", "Nano Banana", GenerationRequest(prompt="a castle")))
    variable = str(info.value).split("environment variable ", 1)[1].split()[0]
    monkeypatch.setenv(variable, key_for("openai_hk"))
    result = run(generate("openai_hk_chat", "Nano Banana", GenerationRequest(prompt="a castle")))
    assert len(result.images) == 1


# -- 3. bytes that are not a recognised image: kept as .bin with a sidecar, then the error -----------------

AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(range(256)) * 4  # an AVIF header Pillow cannot open here


def _batch(server, monkeypatch, tmp_path, provider: str, answer_route, file_route=None, count: int = 1):
    from banana_pack.nodes.batch import BatchSettings, expand_items, run_batch
    from banana_pack.nodes.store import ResultStore

    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    server.route(*answer_route)
    if file_route:
        server.route(*file_route)
    store = ResultStore(tmp_path / "out")
    items = expand_items(["a castle"], [], count=count, seed=7, max_count=count)
    outcomes = run(run_batch(items, BatchSettings(provider=provider, model="Nano Banana"), store=store))
    return store, outcomes


def test_unrecognised_inline_bytes_are_saved_as_bin_with_sidecar_before_the_error(server, monkeypatch, tmp_path):
    from banana_pack.nodes.batch import FAILED, settle
    from banana_pack.providers import MalformedResponse

    answer = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/avif", "data": b64(AVIF)}}]}, "finishReason": "STOP"}], "responseId": "resp-avif-1"}
    store, (outcome,) = _batch(server, monkeypatch, tmp_path, "google", ("POST", r"^/google/models/[^/]+:generateContent$", Reply(json=answer)))
    assert outcome.status == FAILED and outcome.reason == "unusable_image"
    (saved,) = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix == ".bin"]
    assert saved.read_bytes() == AVIF and [str(saved)] == outcome.files
    sidecar = json.loads(saved.with_suffix(".json").read_text())
    assert sidecar["provider"] == "google" and sidecar["mime"] == "application/octet-stream" and sidecar["prompt"] == "a castle"
    assert not (tmp_path / "out" / ".cache").exists() or not any((tmp_path / "out" / ".cache").iterdir())  # not a cache answer
    with pytest.raises(MalformedResponse) as info:
        settle([outcome], "fail")
    assert store.view_path(saved) in str(info.value) and "not a usable image" in str(info.value)
    assert str(tmp_path) not in str(info.value)  # shown in /history: relative to the output folder, never absolute


def test_unrecognised_download_keeps_every_image_of_the_answer(server, monkeypatch, tmp_path):
    """fal returns the two images asked for, one a TIFF: both reach disk (the PNG with its own extension), then the error."""
    tiff = b"II*\x00" + b"\x08\x00\x00\x00" + bytes(200)

    def result(req):
        return Reply(json={"images": [{"url": f"{server.url}/files/24.png", "content_type": "image/png"}, {"url": f"{server.url}/odd/result.tiff", "content_type": "image/tiff"}], "description": ""})

    store, (outcome,) = _batch(
        server, monkeypatch, tmp_path, "fal",
        ("GET", r"^/fal/fal-ai/[\w.-]+/requests/[\w-]+$", result),
        ("GET", r"^/odd/result\.tiff$", Reply(body=tiff, content_type="image/tiff")),
        count=2,
    )
    files = outcome.files
    assert [f.rsplit(".", 1)[1] for f in files] == ["png", "bin"]  # the answer's order
    by_ext = {f.rsplit(".", 1)[1]: f for f in files}
    assert open(by_ext["bin"], "rb").read() == tiff and open(by_ext["png"], "rb").read()[:4] == b"\x89PNG"
    assert json.loads(open(by_ext["bin"][:-4] + ".json").read())["mime"] == "application/octet-stream"
    assert "not a usable image" in outcome.message and store.view_path(by_ext["bin"]) in outcome.message and str(tmp_path) not in outcome.message
