"""The chat-completions family (APIYI compat, openai-hk chat, custom openai-chat gateways): fixtures 11.C."""

from __future__ import annotations

import json

import pytest

from banana_pack.providers import (
    AuthError,
    GenerationRequest,
    ImageInput,
    InvalidRequest,
    MalformedResponse,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    UpstreamUnavailable,
    generate,
)
from helpers import BLUE_PNG, BLUE_PNG_B64, YELLOW_PNG, YELLOW_PNG_B64, png_bytes, run
from loopback import Reply, fixture

APIYI_KEY = "sk-apiyi-chat-test-key-0123"
HK_KEY = "hk-chat-test-key-0123456789"
GW_KEY = "sk-or-gateway-test-key-0123"
CHAT = r"/chat/completions$"
YELLOW = ImageInput(YELLOW_PNG, "image/png", 1, 1)


@pytest.fixture
def apiyi(server, monkeypatch):
    monkeypatch.setenv("BANANA_APIYI_API_KEY", APIYI_KEY)  # the chat preset shares the native preset's key
    monkeypatch.setenv("BANANA_APIYI_CHAT_BASE_URL", server.url + "/v1")
    return server


@pytest.fixture
def hk(server, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_CHAT_BASE_URL", server.url + "/v1")
    return server


@pytest.fixture
def gateway(server, monkeypatch, isolated_config):
    """A custom openai-chat gateway; returns a function that (re)writes its options."""
    monkeypatch.setenv("BANANA_ROUTER_API_KEY", GW_KEY)

    def configure(**options):
        isolated_config.mkdir(parents=True, exist_ok=True)
        entry = {
            "id": "router",
            "display_name": "My router",
            "protocol": "openai-chat",
            "base_url": server.url + "/api/v1",
            "models": [{"id": "gemini-2.5-flash-image", "name": "Nano Banana", "resolutions": ["1K"]}, "gemini-3-pro-image-preview"],
            "options": options,
        }
        (isolated_config / "providers.json").write_text(json.dumps({"providers": [entry]}))
        return server

    configure()
    return configure


def gen(provider, model="Nano Banana Pro", **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a cat on a sofa"), **kw)))


def choice(message, finish="stop", **extra):
    return {"id": "chatcmpl-t", "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **extra}]}


# -- presets end to end ------------------------------------------------------------------------------


def test_apiyi_text_to_image_request_shape(apiyi):
    apiyi.route("POST", CHAT, Reply(json=fixture("chat/success_markdown_datauri.json")))
    result = gen("apiyi_chat", "Nano Banana")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.text == "" and result.provider == "apiyi_chat"
    assert result.request_id == "chatcmpl-20260420160744809365000fdOhL0KY" and result.usage["completion_tokens"] == 1290
    (req,) = apiyi.requests
    assert req.path == "/v1/chat/completions" and req.headers["authorization"] == f"Bearer {APIYI_KEY}"
    assert req.json() == {
        "model": "gemini-2.5-flash-image",
        "stream": False,
        "modalities": ["image", "text"],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a cat on a sofa"}]}],
    }


def test_apiyi_edit_sends_references_as_data_urls(apiyi):
    apiyi.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    result = gen("apiyi_chat", "Nano Banana 2", images=(YELLOW, ImageInput(BLUE_PNG, "image/png", 1, 1)), prompt="Make this a watercolor painting")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.text == "Here is your watercolor cat."
    body = apiyi.requests[0].json()
    parts = body["messages"][0]["content"]
    assert parts[:2] == fixture("chat/request_edit.json")["messages"][0]["content"]
    assert parts[2] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{BLUE_PNG_B64}"}}
    assert body["model"] == "gemini-3.1-flash-image-preview" and "image_config" not in body and "extra_body" not in body


def test_openai_hk_chat_text_to_image_puts_the_tier_in_the_model_id(hk):
    hk.route("POST", CHAT, Reply(json=fixture("chat/success_markdown_datauri.json")))
    result = gen("openai_hk_chat", "Nano Banana Pro", resolution="4K")
    body = hk.requests[0].json()
    assert body["model"] == "nano-banana-2-4k" and "image_config" not in body and "extra_body" not in body
    assert hk.requests[0].headers["authorization"] == f"Bearer {HK_KEY}" and result.warnings == []


def test_openai_hk_chat_edit(hk):
    hk.route("POST", CHAT, Reply(json=fixture("chat/success_images_multi.json")))
    result = gen("openai_hk_chat", "Nano Banana 2", resolution="1K", images=(YELLOW,))
    # The second item spells it imageUrl: found (two returned), then dropped (one asked).
    assert [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    body = hk.requests[0].json()
    assert body["model"] == "gemini-3.1-flash-image-preview" and body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert result.usage["completion_tokens_details"] == {"image_tokens": 2240}


# -- size controls and sampling on a custom gateway ------------------------------------------------


def test_openrouter_size_controls_match_the_request_fixture(gateway):
    server = gateway()  # size_controls defaults to "openrouter"
    server.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    gen("router", "Nano Banana", images=(YELLOW,), aspect_ratio="3:2", resolution="1K", prompt="Make this a watercolor painting")
    (req,) = server.requests
    assert req.path == "/api/v1/chat/completions" and req.headers["authorization"] == f"Bearer {GW_KEY}"
    assert req.json() == fixture("chat/request_edit.json")


def test_extra_body_google_size_controls(gateway):
    server = gateway(size_controls="extra_body_google", resolution_values={"4K": "4096"})
    server.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    gen("router", "Nano Banana Pro", aspect_ratio="21:9", resolution="4K")
    body = server.requests[0].json()
    assert body["extra_body"] == {"google": {"image_config": {"aspect_ratio": "21:9", "image_size": "4096"}}} and "image_config" not in body


def test_no_size_controls_warns_that_the_ratio_was_not_sent(gateway):
    server = gateway(size_controls="none")
    server.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    result = gen("router", "Nano Banana Pro", aspect_ratio="16:9", resolution="2K")
    body = server.requests[0].json()
    assert "image_config" not in body and "extra_body" not in body
    assert any("aspect ratio 16:9" in w for w in result.warnings) and any("resolution 2K" in w for w in result.warnings)


def test_system_prompt_seed_and_temperature_where_the_offer_allows(gateway):
    server = gateway(extra_fields={"max_tokens": 4096})
    server.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    result = gen("router", "Nano Banana Pro", system_prompt="Always photorealistic.", seed=7, temperature=0.4)
    body = server.requests[0].json()
    assert body["messages"][0] == {"role": "system", "content": "Always photorealistic."} and body["messages"][1]["role"] == "user"
    assert body["seed"] == 7 and body["temperature"] == 0.4 and body["max_tokens"] == 4096
    assert result.warnings == []


def test_presets_without_sampling_send_none_of_it(apiyi):
    apiyi.route("POST", CHAT, Reply(json=fixture("chat/success_images_field.json")))
    result = gen("apiyi_chat", seed=7, temperature=0.4)  # both best-effort: dropped, the temperature with a note
    body = apiyi.requests[0].json()
    assert [m["role"] for m in body["messages"]] == ["user"] and "seed" not in body and "temperature" not in body
    assert any("temperature (best-effort)" in w for w in result.warnings) and not any("seed" in w for w in result.warnings)
    with pytest.raises(InvalidRequest, match="system prompt is not available"):
        gen("apiyi_chat", system_prompt="x")  # not best-effort: refused before sending
    assert len(apiyi.requests) == 1


# -- every response variant ----------------------------------------------------------------------------


def test_markdown_images_with_a_hosted_url(apiyi, monkeypatch):
    monkeypatch.setenv("BANANA_APIYI_CHAT_KEEP_IMAGES", "all")  # APIYI keeps a turn's last image by default (drafts)
    body = fixture("chat/success_markdown_multi.json")
    content = body["choices"][0]["message"]["content"]
    body["choices"][0]["message"]["content"] = content.replace("https://example.com/img/generated-1.png", apiyi.url + "/img/generated-1.png")
    apiyi.route("POST", CHAT, Reply(json=body))
    apiyi.route("GET", r"^/img/generated-1\.png$", Reply(body=png_bytes(5, 3), content_type="image/png"))
    result = gen("apiyi_chat")
    assert [(im.width, im.height) for im in result.images] == [(5, 3)] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    assert result.text == "Two variations:" and "authorization" not in apiyi.hits("GET", "generated-1")[0].headers


@pytest.mark.parametrize(
    "message",
    [
        {"content": [{"type": "text", "text": "Here you go"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{YELLOW_PNG_B64}"}}]},
        {"content": [{"type": "text", "text": "Here you go"}, {"type": "image_url", "image_url": f"data:image/png;base64,{YELLOW_PNG_B64}"}]},
        {"content": "Here you go", "images": [f"data:image/png;base64,{YELLOW_PNG_B64}"]},
        {"content": "Here you go", "images": [{"imageUrl": f"data:image/png;base64,{YELLOW_PNG_B64}"}]},
        {"content": [{"type": "text", "text": f"Here you go ![x](data:image/png;base64,{YELLOW_PNG_B64})"}]},
    ],
    ids=["content-part", "content-part-string", "images-string", "images-imageUrl-string", "markdown-in-part"],
)
def test_content_part_and_string_variants(apiyi, message):
    apiyi.route("POST", CHAT, Reply(json=choice(message)))
    result = gen("apiyi_chat")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.text == "Here you go"


def test_bare_url_in_text_is_downloaded(apiyi):
    apiyi.route("POST", CHAT, Reply(json=choice({"content": f"Image ready: {apiyi.url}/files/out.webp?sig=abc"})))
    apiyi.route("GET", r"^/files/out\.webp$", Reply(body=png_bytes(4, 4), content_type="image/png"))
    result = gen("apiyi_chat")
    assert len(result.images) == 1 and result.text == "Image ready:"


def test_images_across_several_choices(apiyi):
    body = fixture("chat/success_images_field.json")
    second = json.loads(json.dumps(body["choices"][0]))
    second["message"]["images"][0]["image_url"]["url"] = f"data:image/png;base64,{BLUE_PNG_B64}"
    body["choices"].append(second)
    apiyi.route("POST", CHAT, Reply(json=body))
    result = gen("apiyi_chat")
    assert [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)


def test_result_url_failing_once_is_downloaded_again(apiyi):
    apiyi.route("POST", CHAT, Reply(json=choice({"content": f"![image]({apiyi.url}/cdn/x.png)"})))
    apiyi.route("GET", r"^/cdn/x\.png$", [Reply(503, body=b"busy", content_type="text/plain"), Reply(body=png_bytes(2, 3), content_type="image/png")])
    result = gen("apiyi_chat")
    assert (result.images[0].width, result.images[0].height) == (2, 3)
    assert len(apiyi.hits("GET", r"^/cdn/x\.png$")) == 2 and len(apiyi.hits("POST", CHAT)) == 1


def test_image_with_a_non_stop_finish_is_kept_with_a_warning(apiyi):
    body = fixture("chat/success_images_field.json")
    body["choices"][0]["finish_reason"] = "length"
    apiyi.route("POST", CHAT, Reply(json=body))
    result = gen("apiyi_chat")
    assert len(result.images) == 1 and result.finish_reason == "length" and any("length" in w for w in result.warnings)


# -- refusals ------------------------------------------------------------------------------------------


def test_text_only_refusal(apiyi):
    apiyi.route("POST", CHAT, Reply(json=fixture("chat/refusal_text_only.json")))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    err = info.value
    assert err.stage == "soft_refusal" and err.reason == "stop" and err.model_text == "I'm just a language model and can't help with that."
    assert "can't help with that" in str(err) and err.request_id == "chatcmpl-refuse-1" and len(apiyi.requests) == 1


def test_content_filter_keeps_the_native_reason(apiyi):
    apiyi.route("POST", CHAT, Reply(json=fixture("chat/refusal_content_filter.json")))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.stage == "output_blocked" and info.value.reason == "content_filter (IMAGE_SAFETY)"
    assert "reason: content_filter (IMAGE_SAFETY)" in str(info.value)


def test_content_filter_without_native_reason(apiyi):
    apiyi.route("POST", CHAT, Reply(json=choice({"content": "Sorry."}, finish="content_filter")))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.reason == "content_filter" and info.value.model_text == "Sorry."


def test_policy_native_reason_under_a_stop_finish(apiyi):
    apiyi.route("POST", CHAT, Reply(json=choice({"content": None}, native_finish_reason="PROHIBITED_CONTENT")))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.stage == "output_blocked" and info.value.reason == "stop (PROHIBITED_CONTENT)"


def test_refusal_field(apiyi):
    apiyi.route("POST", CHAT, Reply(json=choice({"content": None, "refusal": "I can't make that image."})))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.stage == "soft_refusal" and info.value.reason == "refusal" and "I can't make that image." in str(info.value)


@pytest.mark.parametrize("finish, native, reason", [("length", None, "length"), ("stop", "NO_IMAGE", "stop (NO_IMAGE)"), ("stop", "IMAGE_OTHER", "stop (IMAGE_OTHER)")])
def test_other_finishes_are_no_image_with_verbatim_reason(apiyi, finish, native, reason):
    extra = {"native_finish_reason": native} if native else {}
    apiyi.route("POST", CHAT, Reply(json=choice({"content": ""}, finish=finish, **extra)))
    with pytest.raises(NoImageReturned) as info:
        gen("apiyi_chat")
    assert info.value.reason == reason


def test_empty_answer_with_zero_completion_tokens_is_a_review_rejection(apiyi):
    apiyi.route("POST", CHAT, Reply(json={**choice({"content": ""}), "usage": {"prompt_tokens": 9, "completion_tokens": 0}}))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.stage == "output_blocked"
    apiyi.route("POST", CHAT, Reply(json={**choice({"content": ""}), "usage": {"completion_tokens": 12}}))
    with pytest.raises(NoImageReturned):
        gen("apiyi_chat")
    apiyi.route("POST", CHAT, Reply(json={"id": "x", "choices": []}))
    with pytest.raises(NoImageReturned) as info:
        gen("apiyi_chat")
    assert info.value.reason == "NO_CHOICES"


def test_openrouter_403_moderation_is_a_prompt_block_with_its_reasons(gateway):
    server = gateway()
    server.route("POST", CHAT, Reply(403, fixture("chat/error_403_moderation.json")))
    with pytest.raises(SafetyRejected) as info:
        gen("router")
    err = info.value
    assert err.stage == "prompt_blocked" and err.reason == "sexual" and err.status == 403
    assert "Input flagged by content moderation" in str(err) and len(server.requests) == 1


# -- HTTP failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["error_401", "error_401_newapi"])
def test_bad_key(apiyi, name):
    apiyi.route("POST", CHAT, Reply(401, fixture(f"openai_images/{name}.json")))
    with pytest.raises(AuthError) as info:
        gen("apiyi_chat")
    assert info.value.status == 401 and "BANANA_APIYI" in str(info.value) and len(apiyi.requests) == 1


def test_unsupported_endpoint_400(apiyi):
    body = {"error": {"message": "This model does not support the Chat Completions endpoint. Use POST /v1/images/generations.", "type": "invalid_request_error", "param": "model", "code": "unsupported_endpoint"}}
    apiyi.route("POST", CHAT, Reply(400, body))
    with pytest.raises(InvalidRequest) as info:
        gen("apiyi_chat")
    assert "does not support the Chat Completions endpoint" in str(info.value) and len(apiyi.requests) == 1


def test_rate_limit_then_success(hk):
    # openai-hk: APIYI bills a request on arrival, so its 429 is not resent (tests/test_rate_limit_billing.py).
    hk.route("POST", CHAT, [Reply(429, fixture("openai_images/error_429.json"), headers={"Retry-After": "0"}), Reply(json=fixture("chat/success_images_field.json"))])
    assert len(gen("openai_hk_chat").images) == 1 and len(hk.requests) == 2


def test_insufficient_quota_is_not_retried(apiyi):
    apiyi.route("POST", CHAT, Reply(429, fixture("openai_images/error_429_quota.json"), headers={"Retry-After": "0"}))
    with pytest.raises(QuotaOrRateLimited) as info:
        gen("apiyi_chat")
    assert "out of credits" in str(info.value) and len(apiyi.requests) == 1


def test_upstream_5xx_typed_and_resent_only_when_reported(apiyi):
    # A proxy's 502 page says nothing about the generation: it may have run, so it is not resent.
    apiyi.route("POST", CHAT, Reply(502, body=b"<html><title>502 Bad Gateway</title></html>", content_type="text/html", headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen("apiyi_chat")
    assert "502 Bad Gateway" in str(info.value) and info.value.maybe_billed and len(apiyi.requests) == 1
    apiyi.reset()
    # The gateway's own JSON error on a 503 reports the failure: resent.
    apiyi.route("POST", CHAT, [Reply(503, {"error": {"message": "upstream overloaded", "type": "new_api_error"}}, headers={"Retry-After": "0"}), Reply(json=fixture("chat/success_images_field.json"))])
    assert len(gen("apiyi_chat").images) == 1 and len(apiyi.requests) == 2


@pytest.mark.parametrize(
    "reply, text",
    [
        (Reply(200, body=b"<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>", content_type="text/html"), "HTML page: Just a moment..."),
        (Reply(200, body=b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "![image](data:image/png;base64,iVBO', content_type="application/json"), "Expected JSON"),
        (Reply(200, body=b"data: {\"choices\": []}\n\ndata: [DONE]\n", content_type="text/event-stream"), "Expected JSON"),
        (Reply(200, json={"choices": [{"message": {"content": "![image](data:image/png;base64,AAAAAAAA)"}}]}), "not a usable image"),
    ],
)
def test_malformed_answers(apiyi, reply, text):
    apiyi.route("POST", CHAT, reply)
    with pytest.raises(MalformedResponse) as info:
        gen("apiyi_chat")
    assert text in str(info.value) and len(apiyi.requests) == 1


def test_json_with_the_wrong_content_type_is_still_read(apiyi):
    apiyi.route("POST", CHAT, Reply(200, body=json.dumps(fixture("chat/success_images_field.json")).encode(), content_type="text/plain"))
    assert len(gen("apiyi_chat").images) == 1


def test_error_envelope_with_http_200(apiyi):
    apiyi.route("POST", CHAT, Reply(200, {"error": {"message": "Your request was flagged by the safety system", "type": "new_api_error", "code": "content_policy_violation"}}))
    with pytest.raises(SafetyRejected) as info:
        gen("apiyi_chat")
    assert info.value.reason == "content_policy_violation"
