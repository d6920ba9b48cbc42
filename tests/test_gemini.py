"""The Gemini generateContent family against a loopback server: every fixture class of 11.A."""

from __future__ import annotations

import json
import logging

import pytest

from banana_pack.providers import (
    AuthError,
    GenerationRequest,
    ImageInput,
    InvalidRequest,
    MalformedResponse,
    MissingKey,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    UpstreamUnavailable,
    generate,
)
from helpers import BLUE_PNG, YELLOW_PNG, png_bytes, run
from loopback import Reply, fixture

KEY = "AIzaTEST-gemini-key-0123456789"
GEN_PATH = r"/models/[^/]+:generateContent$"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    return server


def gen(model="Nano Banana Pro", provider="google", **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a cat on a sofa"), **kw)))


def test_success_single_image_and_request_shape(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    result = gen("Nano Banana Pro", aspect_ratio="16:9", resolution="2K", seed=42, temperature=0.7, system_prompt="be bold")
    assert [im.data for im in result.images] == [YELLOW_PNG]
    assert result.images[0].mime == "image/png" and (result.images[0].width, result.images[0].height) == (1, 1)
    assert result.request_id == "DrZkaeGZJdeez7IP_Om04A8"
    assert result.usage["candidatesTokenCount"] == 1290
    # Google bills tokens: 14 prompt tokens at $2/1M, 1290 image tokens at $120/1M (catalog token prices).
    assert result.cost == pytest.approx((14 * 2.0 + 1290 * 120.0) / 1e6) and result.cost_source == "tokens"
    (req,) = google.requests
    assert req.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    body = req.json()
    assert body["contents"][0]["parts"] == [{"text": "a cat on a sofa"}]
    config = body["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert config["seed"] == 42 and config["temperature"] == 0.7
    assert body["systemInstruction"] == {"parts": [{"text": "be bold"}]}


def test_edit_sends_every_reference_inline(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    refs = (ImageInput(YELLOW_PNG, "image/png", 1, 1), ImageInput(BLUE_PNG, "image/png", 1, 1))
    gen("Nano Banana 2", images=refs, web_search=True, resolution="0.5K")
    body = google.requests[0].json()
    parts = body["contents"][0]["parts"]
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/png", "image/png"]
    assert parts[1]["inline_data"]["data"] == fixture("gemini/request_edit.json")["contents"][0]["parts"][1]["inline_data"]["data"]
    assert body["tools"] == [{"google_search": {}}]
    assert body["generationConfig"]["imageConfig"]["imageSize"] == "512"


def test_flash_image_never_gets_image_size(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    result = gen("Nano Banana", resolution="1K", aspect_ratio="3:2")  # its fixed size: honoured, nothing to send
    body = google.requests[0].json()
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"} and result.warnings == []
    with pytest.raises(InvalidRequest, match="fixed size: choose 1K"):
        gen("Nano Banana", resolution="2K")  # one rule: refused before sending, not silently dropped
    assert len(google.requests) == 1


def test_thought_parts_are_skipped(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_thoughts.json")))
    result = gen()
    assert [im.data for im in result.images] == [YELLOW_PNG]  # the blue interim draft is a thought
    assert result.text == "Here is the cat on the sofa."


def test_several_images_collected_and_mime_sniffed(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_multi.json")))
    result = gen()
    # Two images for the one asked: the first is used, the second dropped with a warning.
    assert [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    assert "Step 1" in result.text and "Step 2" in result.text


def test_gateway_markdown_data_uri_in_text(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/gateway_text_datauri.json")))
    result = gen("Nano Banana")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.text == ""


def test_gateway_url_in_text_is_downloaded(google):
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"] = [{"text": f"Done: ![img]({google.url}/files/out.png)"}]
    google.route("POST", GEN_PATH, Reply(json=body))
    google.route("GET", r"^/files/out\.png$", Reply(body=png_bytes(8, 4), content_type="image/png"))
    result = gen()
    assert (result.images[0].width, result.images[0].height) == (8, 4)
    assert result.images[0].source_url.endswith("/files/out.png") and result.text == "Done:"
    assert "x-goog-api-key" not in google.hits("GET", "out.png")[0].headers  # no key to a CDN


def test_snake_case_response_accepted(google):
    body = {"candidates": [{"content": {"parts": [{"inline_data": {"mime_type": "image/png", "data": fixture("gemini/success_single.json")["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]}}]}, "finish_reason": "STOP"}]}
    google.route("POST", GEN_PATH, Reply(json=body))
    assert [im.data for im in gen().images] == [YELLOW_PNG]


def test_soft_refusal_surfaces_the_text(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/refusal_text_only.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    err = info.value
    assert err.stage == "soft_refusal" and err.reason == "STOP"
    assert err.model_text.startswith("I'm unable to help with that request.")
    assert "I'm unable to help" in str(err) and "[google/gemini-3-pro-image-preview]" in str(err)


@pytest.mark.parametrize(
    "name, reason, finish_message_start, token_count",
    [
        ("finish_safety", "SAFETY", None, None),
        ("finish_image_safety", "IMAGE_SAFETY", "Unable to show the generated image. The generated image was filtered", 0),
        ("finish_prohibited", "PROHIBITED_CONTENT", "The request was blocked", 181),
        ("finish_image_prohibited", "IMAGE_PROHIBITED_CONTENT", "Unable to show the generated image due to interests", None),
    ],
)
def test_policy_finish_reasons_are_safety_rejections(google, name, reason, finish_message_start, token_count):
    google.route("POST", GEN_PATH, Reply(json=fixture(f"gemini/{name}.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    err = info.value
    assert err.stage == "output_blocked" and err.reason == reason
    assert err.candidates_token_count == token_count
    if finish_message_start:
        assert err.finish_message.startswith(finish_message_start)
        assert finish_message_start in str(err)
    assert f"reason: {reason}" in str(err)


@pytest.mark.parametrize(
    "reason", ["SPII", "RECITATION", "BLOCKLIST", "IMAGE_RECITATION"]
)
def test_other_policy_reasons(google, reason):
    body = fixture("gemini/finish_prohibited.json")
    body["candidates"][0]["finishReason"] = reason
    google.route("POST", GEN_PATH, Reply(json=body))
    with pytest.raises(SafetyRejected) as info:
        gen()
    assert info.value.reason == reason


@pytest.mark.parametrize("reason", ["NO_IMAGE", "IMAGE_OTHER", "OTHER", "MAX_TOKENS", "LANGUAGE", "SOMETHING_NEW_FROM_GOOGLE"])
def test_non_policy_reasons_are_no_image_with_verbatim_reason(google, reason):
    body = fixture("gemini/finish_no_image.json") if reason == "NO_IMAGE" else fixture("gemini/finish_image_other.json")
    body["candidates"][0]["finishReason"] = reason
    google.route("POST", GEN_PATH, Reply(json=body))
    with pytest.raises(NoImageReturned) as info:
        gen()
    assert info.value.reason == reason and reason in str(info.value)
    if reason == "IMAGE_OTHER":
        assert "could not generate the image" in info.value.finish_message


@pytest.mark.parametrize("name, reason", [("prompt_blocked", "PROHIBITED_CONTENT"), ("prompt_blocked_other", "OTHER")])
def test_prompt_blocked(google, name, reason):
    google.route("POST", GEN_PATH, Reply(json=fixture(f"gemini/{name}.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    assert info.value.stage == "prompt_blocked" and info.value.reason == reason


def test_zero_candidate_tokens_without_reason_is_review_rejection(google):
    body = {"candidates": [{"content": {"parts": None}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 0}}
    google.route("POST", GEN_PATH, Reply(json=body))
    with pytest.raises(SafetyRejected) as info:
        gen()
    assert info.value.candidates_token_count == 0 and "candidatesTokenCount: 0" in str(info.value)


def test_bad_key_400_is_auth_error_not_invalid_request(google):
    google.route("POST", GEN_PATH, Reply(400, fixture("gemini/error_bad_key.json")))
    with pytest.raises(AuthError) as info:
        gen()
    assert info.value.status == 400 and "API key not valid" in str(info.value)
    assert len(google.requests) == 1  # never retried


@pytest.mark.parametrize(
    "name, status, error_type",
    [("error_401", 401, AuthError), ("error_403", 403, AuthError), ("error_400", 400, InvalidRequest)],
)
def test_client_errors_are_typed_and_not_retried(google, name, status, error_type):
    google.route("POST", GEN_PATH, Reply(status, fixture(f"gemini/{name}.json")))
    with pytest.raises(error_type) as info:
        gen()
    assert info.value.status == status
    assert fixture(f"gemini/{name}.json")["error"]["message"] in str(info.value)
    assert len(google.requests) == 1


def test_429_with_retry_delay_then_success(google):
    google.route("POST", GEN_PATH, [Reply(429, fixture("gemini/error_429.json")), Reply(json=fixture("gemini/success_single.json"))])
    # 37 s is the fixture's delay; shrink it so the test waits about a second but still honours it.
    body = fixture("gemini/error_429.json")
    body["error"]["details"][2]["retryDelay"] = "1s"
    google.route("POST", GEN_PATH, [Reply(429, body), Reply(json=fixture("gemini/success_single.json"))])
    import time

    started = time.monotonic()
    result = gen()
    assert len(result.images) == 1 and len(google.requests) == 2
    assert time.monotonic() - started >= 1.0  # the server's retryDelay was honoured


def test_daily_quota_is_reported_not_waited_out(google):
    body = fixture("gemini/error_429.json")
    body["error"]["details"][1]["violations"][0]["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel"
    google.route("POST", GEN_PATH, Reply(429, body))
    with pytest.raises(QuotaOrRateLimited) as info:
        gen()
    assert "daily quota" in str(info.value) and len(google.requests) == 1


def test_503_retried_then_gives_up_with_typed_error(google, monkeypatch):
    google.route("POST", GEN_PATH, Reply(503, fixture("gemini/error_503.json"), headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert "The model is overloaded" in str(info.value)
    assert len(google.requests) == 4  # first try plus three retries


def test_html_error_page_is_malformed_response(google):
    google.route("POST", GEN_PATH, Reply(200, body=b"<html><head><title>502 Bad Gateway</title></head></html>", content_type="text/html"))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "HTML page: 502 Bad Gateway" in str(info.value)


def test_truncated_json_is_malformed_response(google):
    google.route("POST", GEN_PATH, Reply(200, body=b'{"candidates": [{"content": {"par', content_type="application/json"))
    with pytest.raises(MalformedResponse):
        gen()


def test_apiyi_preset_uses_bearer_and_its_base_url(server, monkeypatch):
    monkeypatch.setenv("BANANA_APIYI_API_KEY", "sk-apiyi-test-key-123")
    monkeypatch.setenv("BANANA_APIYI_BASE_URL", server.url + "/v1beta")
    server.route("POST", GEN_PATH, Reply(json=fixture("gemini/finish_image_safety.json")))
    with pytest.raises(SafetyRejected) as info:
        gen("Nano Banana Pro", provider="apiyi")
    req = server.requests[0]
    assert req.headers["authorization"] == "Bearer sk-apiyi-test-key-123" and "x-goog-api-key" not in req.headers
    assert "[apiyi/gemini-3-pro-image-preview]" in str(info.value)


def test_apiyi_text_only_edit(server, monkeypatch):
    monkeypatch.setenv("BANANA_APIYI_API_KEY", "sk-apiyi-test-key-123")
    monkeypatch.setenv("BANANA_APIYI_BASE_URL", server.url + "/v1beta")
    server.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    result = gen("Nano Banana 2", provider="apiyi", images=(ImageInput(png_bytes(4, 4), "image/png", 4, 4),))
    assert result.provider == "apiyi" and len(result.images) == 1


def test_missing_key_says_where_to_put_one(server, isolated_config):
    with pytest.raises(MissingKey) as info:
        gen()
    text = str(info.value)
    assert "BANANA_GOOGLE_API_KEY" in text and "GEMINI_API_KEY" in text and "$BANANA_CONFIG_DIR/keys.json" in text and str(isolated_config) not in text
    assert server.requests == []


def test_key_lookup_order(server, monkeypatch, isolated_config):
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "keys.json").write_text(json.dumps({"google": "file-key-123456"}))
    gen()
    monkeypatch.setenv("GOOGLE_API_KEY", "google-conventional-2")
    gen()
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-conventional-1")
    gen()
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "banana-specific-000")
    gen()
    assert [r.headers["x-goog-api-key"] for r in server.requests] == ["file-key-123456", "google-conventional-2", "gemini-conventional-1", "banana-specific-000"]


def test_too_many_references_names_the_limit(google):
    refs = tuple(ImageInput(YELLOW_PNG, "image/png", 1, 1) for _ in range(4))
    with pytest.raises(InvalidRequest) as info:
        gen("Nano Banana", images=refs)
    assert "at most 3" in str(info.value) and google.requests == []


def test_unknown_ratio_for_model_is_a_clear_error(google):
    with pytest.raises(InvalidRequest) as info:
        gen("Nano Banana Pro", aspect_ratio="8:1")
    assert "8:1" in str(info.value) and "Choose one of" in str(info.value)


def test_free_text_model_id_is_sent_with_relaxed_checks(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    result = run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="x", aspect_ratio="8:1"), model_id_override="gemini-3-pro-image"))
    assert google.requests[0].path.endswith("/models/gemini-3-pro-image:generateContent")
    assert result.model == "gemini-3-pro-image" and any("unchecked" in w for w in result.warnings)


def test_key_never_in_errors_or_logs(google, caplog):
    """Provoke every failure kind with the key echoed back by the server; the key must not leak."""
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"code": 400, "message": f"API key not valid: {KEY}", "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}
    scenarios = [
        Reply(400, echo),
        Reply(503, {"error": {"message": f"overloaded for key {KEY}"}}, headers={"Retry-After": "0"}),
        Reply(200, body=f"<html><title>{KEY}</title></html>".encode(), content_type="text/html"),
        Reply(json={"candidates": [{"content": {"parts": [{"text": f"I refuse, {KEY}"}]}, "finishReason": "STOP"}]}),
    ]
    seen = []
    for reply in scenarios:
        google.route("POST", GEN_PATH, reply)
        with pytest.raises(Exception) as info:
            gen()
        seen += [str(info.value), repr(info.value), " ".join(map(str, info.value.args))]
    assert all(KEY not in text for text in seen)
    assert KEY not in caplog.text
    assert any("***" in text for text in seen)


@pytest.mark.parametrize(
    "body, error_type",
    [
        ({"error": {"code": 401, "message": "API key expired. Please renew the API key.", "status": "UNAUTHENTICATED"}}, AuthError),
        ({"error": {"message": "upstream returned nothing", "type": "new_api_error"}}, MalformedResponse),
    ],
)
def test_error_envelope_with_http_200_is_typed(google, body, error_type):
    google.route("POST", GEN_PATH, Reply(json=body))
    with pytest.raises(error_type) as info:
        gen()
    assert body["error"]["message"] in str(info.value) and len(google.requests) == 1


@pytest.mark.parametrize("charset", ["gbk", "gb18030", "big5", "shift_jis"])
def test_an_answer_in_its_declared_non_utf8_charset_is_read(google, charset):
    """JSON is UTF-8 by its RFC, but a reseller's gateway may declare and send another charset (a
    Chinese one, for the model's words). Read as UTF-8 it failed as 'not JSON', a paid answer whose
    image was there called unreadable and 'may have been billed'."""
    body = fixture("gemini/success_single.json")
    words = {"big5": "圖像已生成", "shift_jis": "画像を生成しました"}.get(charset, "图像已生成")
    body["candidates"][0]["content"]["parts"].insert(0, {"text": words})
    google.route("POST", GEN_PATH, Reply(body=json.dumps(body, ensure_ascii=False).encode(charset), content_type=f"application/json; charset={charset}"))
    result = gen()
    assert [im.data for im in result.images] == [YELLOW_PNG]
    assert words in result.text


def test_an_answer_that_is_no_text_in_its_declared_charset_is_still_refused(google):
    google.route("POST", GEN_PATH, Reply(body=b'{"candidates": "\xff\xfe\xfd', content_type="application/json; charset=no-such-charset"))
    with pytest.raises(MalformedResponse) as caught:
        gen()
    assert caught.value.maybe_billed


def test_an_error_in_its_declared_charset_is_read_as_the_providers_own(google):
    """A reseller's 429 in gbk saying the balance is empty: read as its JSON envelope, so the message is
    the provider's words and the error is a quota error (not retried), not a page of unknown text."""
    envelope = {"error": {"message": "余额不足，请充值", "type": "insufficient_quota", "code": "insufficient_quota"}}
    google.route("POST", GEN_PATH, Reply(429, body=json.dumps(envelope, ensure_ascii=False).encode("gbk"), content_type="application/json; charset=gbk"))
    with pytest.raises(QuotaOrRateLimited) as caught:
        gen()
    assert caught.value.exhausted and "Provider said: 余额不足，请充值\n" in str(caught.value)  # its words, not its raw JSON
    assert len(google.requests) == 1, "an empty balance is not retried"
