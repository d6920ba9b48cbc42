"""Generation options (thinking, thoughts, response modalities, safety, grounding) and multi-turn
requests, against a loopback Gemini that thinks and validates thought signatures like the real API."""

from __future__ import annotations

import pytest
from banana_pack.providers import (
    GenerationRequest,
    ImageInput,
    InvalidRequest,
    generate,
)
from banana_pack.providers.catalog import (
    FAMILY_GATED,
    FAMILY_OPTIONS,
    OPTION_RULES,
    PRESETS,
)
from banana_pack.providers.outcome import Turn, TurnPart
from gemini_thinking_fake import SKIP, ThinkingGemini, png
from helpers import run
from loopback import Reply

KEY = "AIzaTEST-options-key-0123456789"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    fake = ThinkingGemini(server)
    server.fake = fake
    return server


def gen(model="Nano Banana 2", provider="google", **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a cat on a sofa"), **kw)))


def sent(server):
    return server.requests[-1].json()


def test_thinking_level_goes_to_the_model_that_takes_it(google):
    result = gen("Nano Banana 2", thinking_level="HIGH")
    assert sent(google)["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH"}
    assert not any("thinking" in w for w in result.warnings)


@pytest.mark.parametrize("model", ["Nano Banana Pro", "Nano Banana"])
def test_thinking_level_where_the_model_takes_none_is_refused_before_sending(google, model):
    with pytest.raises(InvalidRequest, match="Thinking level HIGH is not available") as caught:
        gen(model, thinking_level="HIGH")
    assert "Set thinking_level to default" in caught.value.hint
    assert google.requests == []


def test_unknown_thinking_level_is_refused_before_sending(google):
    with pytest.raises(InvalidRequest, match="MEDIUM"):
        gen("Nano Banana 2", thinking_level="MEDIUM")
    assert google.requests == []


def test_include_thoughts_returns_the_interim_image_apart_from_the_result(google):
    result = gen("Nano Banana Pro", include_thoughts=True)
    assert sent(google)["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}
    assert len(result.images) == 1 and result.images[0].width != 5
    assert [(im.width, im.height) for im in result.thought_images] == [(5, 5)]
    assert "Planning" not in result.text  # thought text is not the model's answer


def test_without_include_thoughts_nothing_is_asked(google):
    result = gen("Nano Banana Pro")
    assert "thinkingConfig" not in sent(google)["generationConfig"]
    assert result.thought_images == []


def test_response_modalities_image_only(google):
    result = gen("Nano Banana 2", response_modalities="IMAGE")
    assert sent(google)["generationConfig"]["responseModalities"] == ["IMAGE"]
    assert result.text == "" and len(result.images) == 1
    gen("Nano Banana 2")
    assert sent(google)["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]


def test_safety_settings_are_sent_per_category(google):
    safety = (("HARM_CATEGORY_HARASSMENT", "BLOCK_ONLY_HIGH"), ("HARM_CATEGORY_DANGEROUS_CONTENT", "OFF"))
    gen("Nano Banana", safety=safety)
    assert sent(google)["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "OFF"},
    ]


@pytest.mark.parametrize("pair", [("HARM_CATEGORY_HARASSMENT", "BLOCK_SOMETIMES"), ("HARM_CATEGORY_IMAGE_SAFETY", "OFF"), ("harassment", "OFF")])
def test_unknown_safety_values_are_refused_before_sending(google, pair):
    with pytest.raises(InvalidRequest, match="safety setting") as caught:
        gen("Nano Banana", safety=(pair,))
    assert "BLOCK_ONLY_HIGH" in caught.value.hint
    assert google.requests == []


def test_the_fake_rejects_what_the_real_api_rejects(google):
    """The check above is not vacuous: the API itself answers such a value with a 400."""
    from banana_pack.providers.protocols.gemini import build_body

    body = build_body(GenerationRequest(prompt="x", safety=(("HARM_CATEGORY_HARASSMENT", "BLOCK_SOMETIMES"),)))
    import httpx

    answer = httpx.post(google.url + "/v1beta/models/gemini-2.5-flash-image:generateContent", json=body)
    assert answer.status_code == 400 and "safety_settings[0].threshold" in answer.text


def test_grounding_sources_in_result_and_text(google):
    result = gen("Nano Banana Pro", web_search=True, prompt="today's weather in Lisbon as a poster")
    assert sent(google)["tools"] == [{"google_search": {}}]
    assert result.sources == [{"title": "Weather in Lisbon", "uri": "https://example.org/weather"}, {"title": "Lisbon news", "uri": "https://example.com/news"}]
    assert result.search_queries == ["weather lisbon today"]
    assert "Sources:" in result.text and "- Weather in Lisbon: https://example.org/weather" in result.text


def test_grounding_ignores_non_web_uris(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    chunks = [{"web": {"uri": "javascript:alert(1)", "title": "x"}}, {"web": {"uri": "https://ok.example/a", "title": "A"}}, {"web": "nonsense"}]
    body = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": __import__("base64").b64encode(png(4)).decode()}}]}, "finishReason": "STOP", "groundingMetadata": {"groundingChunks": chunks}}]}
    server.route("POST", r":generateContent$", Reply(json=body))
    result = gen("Nano Banana Pro", web_search=True)
    assert result.sources == [{"title": "A", "uri": "https://ok.example/a"}]


# -- options on providers that cannot carry them --------------------------------------------------


def test_every_option_is_a_row_of_the_one_rule():
    rules = {rule.option: rule for rule in OPTION_RULES}
    assert set(FAMILY_GATED) <= set(rules)
    assert [o for o in FAMILY_GATED if rules[o].best_effort] == ["include_thoughts", "response_modalities"]
    for spec in PRESETS:
        assert spec.honoured_options <= set(FAMILY_GATED)
    assert FAMILY_OPTIONS["gemini"] == set(FAMILY_GATED) and "safety" not in FAMILY_OPTIONS["openai_chat"]
    # A provider's offers lose what its protocol cannot carry.
    fal = next(s for s in PRESETS if s.id == "fal").model("Nano Banana 2")
    assert fal.thinking_levels == ("MINIMAL", "HIGH") and not fal.safety_settings and not fal.multi_turn and not fal.thoughts


def _fal(server, monkeypatch):
    monkeypatch.setenv("BANANA_FAL_API_KEY", "fal-key-0123456789")
    monkeypatch.setenv("BANANA_FAL_BASE_URL", server.url)
    monkeypatch.setenv("BANANA_FAL_POLL_FIRST_DELAY", "0.01")
    server.route("POST", r"^/fal-ai/nano-banana-2$", Reply(json={"request_id": "req-1", "status": "IN_QUEUE"}))
    server.route("GET", r"/requests/req-1/status$", Reply(json={"status": "COMPLETED"}))
    server.route("GET", r"/requests/req-1$", Reply(json={"images": [{"url": f"{server.url}/files/a.png"}], "description": ""}))
    server.route("GET", r"^/files/a.png$", Reply(body=png(9), content_type="image/png"))


def test_safety_on_fal_is_refused_before_paying(server, monkeypatch):
    _fal(server, monkeypatch)
    with pytest.raises(InvalidRequest, match="A safety setting is not available for Nano Banana 2 on fal.ai") as caught:
        gen("Nano Banana 2", provider="fal", safety=(("HARM_CATEGORY_HARASSMENT", "BLOCK_NONE"),))
    assert "safety_* option to default" in caught.value.hint and "google" in caught.value.hint
    assert server.requests == []


def test_fal_takes_the_thinking_level_and_notes_best_effort_options(server, monkeypatch):
    _fal(server, monkeypatch)
    result = gen("Nano Banana 2", provider="fal", thinking_level="HIGH", response_modalities="IMAGE", include_thoughts=True)
    body = server.hits("POST", r"nano-banana-2$")[0].json()
    assert body["thinking_level"] == "high"  # fal's nano-banana-2 takes it
    assert "responseModalities" not in str(body) and "include" not in str(body)
    notes = " | ".join(result.warnings)
    assert "response modalities" in notes and "include thoughts" in notes and "thinking" not in notes


def test_a_conversation_on_a_provider_without_turns_is_refused_before_paying(server, monkeypatch):
    monkeypatch.setenv("BANANA_FAL_API_KEY", "fal-key-0123456789")
    monkeypatch.setenv("BANANA_FAL_BASE_URL", server.url)
    history = (Turn("user", (TurnPart(text="a cat"),)), Turn("model", (TurnPart(image=ImageInput(png(4), "image/png", 4, 8)),), model="fal-ai/nano-banana"))
    with pytest.raises(InvalidRequest, match="conversation") as caught:
        gen("Nano Banana", provider="fal", history=history, prompt="now make it blue")
    assert "google" in caught.value.hint and "Disconnect the conversation input" in caught.value.hint
    assert server.requests == []


# -- multi-turn: thought signatures ---------------------------------------------------------------


def _continue_from(first, prompt: str, model_id: str, strip: bool = False, keep_thoughtless_text: bool = True):
    parts = []
    for part in first.model_parts:
        signature = None if strip else part.get("thought_signature")
        if "image" in part:
            image = first.images[part["image"]]
            parts.append(TurnPart(image=ImageInput(image.data, image.mime, image.width, image.height), thought_signature=signature))
        else:
            parts.append(TurnPart(text=part["text"], thought_signature=signature))
    return (Turn("user", (TurnPart(text="a cat on a sofa"),)), Turn("model", tuple(parts), model=model_id))


def test_signatures_are_kept_and_sent_back_unchanged(google):
    first = gen("Nano Banana Pro")
    signatures = [p.get("thought_signature") for p in first.model_parts]
    assert all(signatures) and len(signatures) == 2 and first.model_parts[1]["image"] == 0
    second = gen("Nano Banana Pro", prompt="now make the sofa blue", history=_continue_from(first, "", "gemini-3-pro-image-preview"))
    contents = sent(google)["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert [p.get("thoughtSignature") for p in contents[1]["parts"]] == signatures
    assert contents[2]["parts"] == [{"text": "now make the sofa blue"}]
    assert second.images[0].width == 13  # the fake saw three contents


def test_a_continuation_without_the_signatures_gets_the_apis_400(google):
    first = gen("Nano Banana 2")
    with pytest.raises(InvalidRequest) as caught:
        gen("Nano Banana 2", prompt="now blue", history=_continue_from(first, "", "gemini-3.1-flash-image-preview", strip=True))
    assert "missing a thought_signature in content position 2, part position 1" in str(caught.value)
    assert len(google.requests) == 2  # a 400 is not resent


def test_turns_from_another_model_carry_the_documented_stand_in(google):
    first = gen("Nano Banana")  # 2.5 signs nothing
    assert all("thought_signature" not in p for p in first.model_parts)
    gen("Nano Banana 2", prompt="now blue", history=_continue_from(first, "", "gemini-2.5-flash-image"))
    model_turn = sent(google)["contents"][1]
    assert {p["thoughtSignature"] for p in model_turn["parts"]} == {SKIP}


def test_chat_providers_carry_earlier_turns_as_messages(server, monkeypatch):
    import base64

    monkeypatch.setenv("BANANA_APIYI_API_KEY", "sk-apiyi-0123456789")
    monkeypatch.setenv("BANANA_APIYI_CHAT_BASE_URL", server.url + "/v1")
    answer = {"choices": [{"message": {"role": "assistant", "content": f"ok ![i](data:image/png;base64,{base64.b64encode(png(7)).decode()})"}, "finish_reason": "stop"}]}
    server.route("POST", r"/chat/completions$", Reply(json=answer))
    earlier = ImageInput(png(4), "image/png", 4, 8)
    history = (Turn("user", (TurnPart(text="a cat"),)), Turn("model", (TurnPart(text="Here"), TurnPart(image=earlier)), model="gemini-3-pro-image-preview"))
    result = gen("Nano Banana Pro", provider="apiyi_chat", history=history, prompt="now blue")
    messages = server.requests[-1].json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][1]["image_url"]["url"] == earlier.data_uri()
    assert any("best effort" in w for w in result.warnings)
