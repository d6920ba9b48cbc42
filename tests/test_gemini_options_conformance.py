"""The new Gemini fields checked against Google's own client (google-genai): enum values, field
names of what we send (thinking, safety, signed history) and of what the thinking fake answers."""

from __future__ import annotations

import base64
import warnings

import pytest
from banana_pack.providers.catalog import (
    HARM_CATEGORIES,
    SAFETY_THRESHOLDS,
    THINKING_LEVELS,
)
from banana_pack.providers.outcome import GenerationRequest, ImageInput, Turn, TurnPart
from banana_pack.providers.protocols.gemini import build_body
from gemini_thinking_fake import png

types = pytest.importorskip("google.genai.types")


def test_our_values_are_googles_enum_values():
    assert set(HARM_CATEGORIES) <= {m.value for m in types.HarmCategory}
    assert set(SAFETY_THRESHOLDS) <= {m.value for m in types.HarmBlockThreshold}
    assert set(THINKING_LEVELS) <= {m.value for m in types.ThinkingLevel}


def test_the_request_reads_as_google_genai_reads_it():
    signature = base64.b64encode(b"opaque-signature").decode()
    image = ImageInput(png(4), "image/png", 4, 8)
    history = (
        Turn("user", (TurnPart(text="a cat"), TurnPart(image=image))),
        Turn("model", (TurnPart(text="Here it is", thought_signature=signature), TurnPart(image=image, thought_signature=signature)), model="gemini-3-pro-image-preview"),
    )
    request = GenerationRequest(
        prompt="now blue",
        thinking_level="HIGH",
        include_thoughts=True,
        response_modalities="IMAGE",
        safety=(("HARM_CATEGORY_SEXUALLY_EXPLICIT", "BLOCK_LOW_AND_ABOVE"),),
        history=history,
    )
    body = build_body(request, "gemini-3-pro-image-preview")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # google-genai only warns on an unknown enum value: make it fail
        config = types.GenerationConfig.model_validate(body["generationConfig"])
        safety = [types.SafetySetting.model_validate(s) for s in body["safetySettings"]]
        contents = [types.Content.model_validate(c) for c in body["contents"]]
    assert config.thinking_config.thinking_level == types.ThinkingLevel.HIGH and config.thinking_config.include_thoughts is True
    assert config.response_modalities == ["IMAGE"]
    assert safety[0].category == types.HarmCategory.HARM_CATEGORY_SEXUALLY_EXPLICIT and safety[0].threshold == types.HarmBlockThreshold.BLOCK_LOW_AND_ABOVE
    model_turn = contents[1]
    assert model_turn.role == "model" and [p.thought_signature for p in model_turn.parts] == [b"opaque-signature", b"opaque-signature"]
    assert model_turn.parts[1].inline_data.data == png(4)
    assert contents[2].parts[0].text == "now blue"


def test_a_turn_from_another_model_carries_the_documented_stand_in():
    history = (Turn("model", (TurnPart(image=ImageInput(png(4), "image/png")),), model="fal-ai/nano-banana"),)
    body = build_body(GenerationRequest(prompt="x", history=history), "gemini-3.1-flash-image-preview")
    part = body["contents"][0]["parts"][0]
    # Sent as the literal sentinel REST clients use; proto3 JSON reads a bytes field as base64 or
    # base64url, and the sentinel is valid base64url (google-genai's own model parses standard base64 only).
    assert part["thoughtSignature"] == "skip_thought_signature_validator"
    assert base64.urlsafe_b64decode(part["thoughtSignature"])


def test_the_fakes_answer_parses_with_google_genai(server):
    import httpx
    from gemini_thinking_fake import ThinkingGemini

    ThinkingGemini(server)
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"thinkingConfig": {"includeThoughts": True}}, "tools": [{"google_search": {}}]}
    answer = httpx.post(server.url + "/v1beta/models/gemini-3-pro-image-preview:generateContent", json=body).json()
    response = types.GenerateContentResponse.model_validate(answer)
    parts = response.candidates[0].content.parts
    assert [bool(p.thought) for p in parts] == [True, True, False, False]
    assert all(p.thought_signature for p in parts if not p.thought) and not any(p.thought_signature for p in parts if p.thought)
    grounding = response.candidates[0].grounding_metadata
    assert grounding.grounding_chunks[0].web.uri == "https://example.org/weather" and grounding.web_search_queries == ["weather lisbon today"]
