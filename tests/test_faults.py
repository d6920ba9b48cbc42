"""The three faults of issue 9, each tried the way a new user meets it: through generate() or a batch, on loopback."""

from __future__ import annotations

import json

import pytest

from banana_pack.providers import AuthError, GenerationRequest, generate
from fake_providers import b64, point_presets_at, script_all
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


def test_google_interleaved_images_are_all_results_but_a_repeat_counts_once(server, monkeypatch):
    """Google marks drafts itself (thought: true); distinct images of a turn are all results; a repeat is one."""
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
    assert [im.data for im in result.images] == [YELLOW_PNG, BLUE_PNG]


def test_keep_images_can_be_switched_off_per_preset(server, monkeypatch):
    """A user who wants every image APIYI sends (an illustrated story) sets BANANA_APIYI_KEEP_IMAGES=all."""
    point_presets_at(server, monkeypatch.setenv)
    monkeypatch.setenv("BANANA_APIYI_KEEP_IMAGES", "all")
    parts = [_image_part(DRAFT, thoughtSignature="c2lnLTE="), _image_part(FINAL, thoughtSignature="c2lnLTI=")]
    server.route("POST", r"^/apiyi/models/[^/]+:generateContent$", Reply(json={"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]}))
    result = run(generate("apiyi", "Nano Banana Pro", GenerationRequest(prompt="a story in two pictures")))
    assert [im.data for im in result.images] == [DRAFT, FINAL]


# -- 2. a wrong key: the hint names what the preset really reads --------------------------------------

WRONG_KEY = {"error": {"message": "Invalid token (request id: 2026042012345678901234567890abcd)", "type": "new_api_error", "param": "", "code": ""}}


@pytest.mark.parametrize(
    "preset, model, route, owner_var, owner_entry, never",
    [
        ("openai_hk_chat", "Nano Banana", ("POST", r"^/openai_hk_chat/chat/completions$"), "BANANA_OPENAI_HK_API_KEY", '"openai_hk"', "BANANA_OPENAI_HK_CHAT_API_KEY"),
        ("openai_hk_fal", "Nano Banana", ("POST", r"^/openai_hk_fal/fal-ai/"), "BANANA_OPENAI_HK_API_KEY", '"openai_hk"', "BANANA_OPENAI_HK_FAL_API_KEY"),
        ("apiyi_chat", "Nano Banana", ("POST", r"^/apiyi_chat/chat/completions$"), "BANANA_APIYI_API_KEY", '"apiyi"', "BANANA_APIYI_CHAT_API_KEY"),
        ("fal", "Nano Banana", ("POST", r"^/fal/fal-ai/"), "BANANA_FAL_API_KEY or FAL_KEY", '"fal"', "BANANA_FAL_API_KEY_"),
    ],
)
def test_wrong_key_hint_names_the_variable_and_keys_file_entry_the_preset_reads(server, monkeypatch, isolated_config, preset, model, route, owner_var, owner_entry, never):
    point_presets_at(server, monkeypatch.setenv)
    server.route(*route, Reply(401, json=WRONG_KEY))
    with pytest.raises(AuthError) as info:
        run(generate(preset, model, GenerationRequest(prompt="a castle")))
    text = str(info.value)
    assert owner_var in text and f"{owner_entry}: \"<your key>\" to {isolated_config / 'keys.json'}" in text
    assert never not in text


def test_the_hinted_variable_is_the_one_that_fixes_it(server, monkeypatch):
    """Follow the hint: setting the variable it names makes the same preset's next call carry that key."""
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    server.route("POST", r"^/openai_hk_chat/chat/completions$", Reply(401, json=WRONG_KEY))
    with pytest.raises(AuthError) as info:
        run(generate("openai_hk_chat", "Nano Banana", GenerationRequest(prompt="a castle")))
    variable = str(info.value).split("environment variable ", 1)[1].split()[0]
    server.reset()
    script_all(server)
    monkeypatch.setenv(variable, "hk-the-right-key-0123456789")
    run(generate("openai_hk_chat", "Nano Banana", GenerationRequest(prompt="a castle")))
    assert server.requests[0].headers["authorization"] == "Bearer hk-the-right-key-0123456789"
    assert json.loads(server.requests[0].body)["model"] == "nano-banana"
