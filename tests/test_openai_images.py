"""The OpenAI Images family (openai-hk and custom openai-images gateways) against a loopback server: fixtures 11.B."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json

import pytest
from PIL import Image

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
from helpers import BLUE_PNG, YELLOW_PNG, YELLOW_PNG_B64, png_bytes, run
from loopback import Reply, fixture

HK_KEY = "hk-test-openai-hk-key-0123456789"
GEN = r"^/v1/images/generations$"
EDIT = r"^/v1/images/edits$"


@pytest.fixture
def hk(server, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_BASE_URL", server.url + "/v1")
    return server


def gen(model="Nano Banana Pro", provider="openai_hk", **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a cat on a sofa"), **kw)))


def jpeg_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def multipart(recorded) -> tuple[dict[str, str], list[tuple[str, str, str, bytes]]]:
    """The form fields and the file parts (name, filename, content type, bytes) of a recorded multipart body."""
    head = f"Content-Type: {recorded.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + recorded.body)
    assert message.is_multipart()
    fields, files = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            files.append((name, part.get_filename(), part.get_content_type(), payload))
        else:
            fields[name] = payload.decode()
    return fields, files


# -- success shapes and request bodies -------------------------------------------------------------


def test_text_to_image_b64_and_request_shape(hk):
    hk.route("POST", GEN, Reply(json=fixture("openai_images/success_single_b64.json")))
    result = gen("Nano Banana Pro", aspect_ratio="16:9", resolution="2K")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.provider == "openai_hk"
    (req,) = hk.requests
    assert req.headers["authorization"] == f"Bearer {HK_KEY}" and req.headers["content-type"] == "application/json"
    # The tier is in the model id; the ratio goes in `size` as "16x9", a ratio and not pixels.
    assert req.json() == {"model": "nano-banana-2-2k", "prompt": "a cat on a sofa", "n": 1, "size": "16x9", "response_format": "b64_json"}
    assert result.warnings == []


@pytest.mark.parametrize("resolution, model_id", [("1K", "gemini-3.1-flash-image-preview"), ("2K", "gemini-3.1-flash-image-preview-2k"), ("4K", "gemini-3.1-flash-image-preview-4k")])
def test_resolution_is_baked_into_the_model_id(hk, resolution, model_id):
    hk.route("POST", GEN, Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("Nano Banana 2", resolution=resolution, aspect_ratio="9:16")
    body = hk.requests[0].json()
    assert body["model"] == model_id and body["size"] == "9x16" and "resolution" not in body


def test_auto_ratio_sends_no_size(hk):
    hk.route("POST", GEN, Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("Nano Banana", aspect_ratio="auto")
    assert hk.requests[0].json() == {"model": "nano-banana", "prompt": "a cat on a sofa", "n": 1, "response_format": "b64_json"}


def test_ratio_outside_openai_hk_list_is_rejected_before_sending(hk):
    with pytest.raises(InvalidRequest) as info:
        gen("Nano Banana", aspect_ratio="21:9")
    assert "16:9" in str(info.value) and hk.requests == []


def test_url_result_is_downloaded_without_the_key(hk):
    body = fixture("openai_images/success_single_url.json")
    body["data"][0]["url"] = hk.url + "/imgs/1782633695067198543.jpg"
    hk.route("POST", GEN, Reply(json=body))
    hk.route("GET", r"^/imgs/", Reply(body=jpeg_bytes(6, 4), content_type="image/jpeg"))
    result = gen()
    assert result.images[0].mime == "image/jpeg" and (result.images[0].width, result.images[0].height) == (6, 4)
    assert result.images[0].source_url == body["data"][0]["url"]
    (download,) = hk.hits("GET", r"^/imgs/")
    assert "authorization" not in download.headers


def test_several_images_mixed_forms_with_data_prefix_and_usage(hk):
    hk.route("POST", GEN, Reply(json=fixture("openai_images/success_multi.json")))
    result = gen()
    assert [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    assert result.usage["output_tokens"] == 2580 and result.usage["input_tokens_details"]["text_tokens"] == 24


def test_url_and_b64_in_one_answer_with_revised_prompt(hk):
    body = {"created": 1, "data": [{"url": hk.url + "/out/1.png", "revised_prompt": "a tabby cat on a red sofa"}, {"b64_json": YELLOW_PNG_B64}]}
    hk.route("POST", GEN, Reply(json=body))
    hk.route("GET", r"^/out/1\.png$", Reply(body=png_bytes(3, 5), content_type="image/png"))
    result = gen()
    assert [(im.width, im.height) for im in result.images] == [(3, 5)] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    assert result.text == "a tabby cat on a red sofa" and result.usage == {}


def test_result_url_failing_once_is_downloaded_again(hk):
    hk.route("POST", GEN, Reply(json={"data": [{"url": hk.url + "/cdn/a.png"}]}))
    hk.route("GET", r"^/cdn/a\.png$", [Reply(503, {"error": {"message": "warming up"}}), Reply(body=png_bytes(2, 2), content_type="image/png")])
    result = gen()
    assert (result.images[0].width, result.images[0].height) == (2, 2)
    assert len(hk.hits("GET", r"^/cdn/a\.png$")) == 2 and len(hk.hits("POST", GEN)) == 1  # the paid call is not repeated


def test_result_url_that_is_not_an_image(hk):
    hk.route("POST", GEN, Reply(json={"data": [{"url": hk.url + "/cdn/a.png"}]}))
    hk.route("GET", r"^/cdn/a\.png$", Reply(body=b"<html>expired</html>", content_type="text/html"))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "not a usable image" in str(info.value)


# -- edits: multipart with repeated image[] parts --------------------------------------------------


def test_edit_sends_repeated_image_parts_with_real_content_types(hk):
    hk.route("POST", EDIT, Reply(json=fixture("openai_images/success_single_b64.json")))
    jpeg = jpeg_bytes(30, 20)
    refs = (ImageInput(YELLOW_PNG, "image/png", 1, 1), ImageInput(jpeg, "image/jpeg", 30, 20))
    result = gen("Nano Banana Pro", images=refs, aspect_ratio="3:2", resolution="4K", prompt="put them together")
    assert len(result.images) == 1 and hk.hits("POST", GEN) == []
    (req,) = hk.requests
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert req.headers["authorization"] == f"Bearer {HK_KEY}"
    fields, files = multipart(req)
    assert fields == {"model": "nano-banana-2-4k", "prompt": "put them together", "n": "1", "size": "3x2", "response_format": "b64_json"}
    assert [(name, mime, data) for name, _, mime, data in files] == [("image[]", "image/png", YELLOW_PNG), ("image[]", "image/jpeg", jpeg)]
    assert [filename for _, filename, _, _ in files] == ["reference-1.png", "reference-2.jpg"]


def test_single_reference_also_uses_image_brackets(hk):
    hk.route("POST", EDIT, Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("Nano Banana", images=(ImageInput(BLUE_PNG, "image/png", 1, 1),))
    _, files = multipart(hk.requests[0])
    assert [(name, mime) for name, _, mime, _ in files] == [("image[]", "image/png")]


def test_edit_field_option_from_the_environment(hk, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_EDIT_FIELD", "image")
    monkeypatch.setenv("BANANA_OPENAI_HK_SEND_N", "false")
    monkeypatch.setenv("BANANA_OPENAI_HK_RESPONSE_FORMAT", "none")
    hk.route("POST", EDIT, Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("Nano Banana", images=(ImageInput(BLUE_PNG, "image/png", 1, 1),))
    fields, files = multipart(hk.requests[0])
    assert [name for name, *_ in files] == ["image"] and fields == {"model": "nano-banana", "prompt": "a cat on a sofa"}


def test_match_input_picks_the_nearest_supported_ratio(hk):
    hk.route("POST", EDIT, Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("Nano Banana", images=(ImageInput(png_bytes(400, 300), "image/png", 400, 300),), aspect_ratio="match input")
    fields, _ = multipart(hk.requests[0])
    assert fields["size"] == "4x3"


# -- refusals --------------------------------------------------------------------------------------


def test_empty_data_is_no_image_returned(hk):
    hk.route("POST", GEN, Reply(json=fixture("openai_images/refusal_empty_data.json")))
    with pytest.raises(NoImageReturned) as info:
        gen()
    assert info.value.reason == "EMPTY_DATA" and "empty data list" in str(info.value)
    assert len(hk.requests) == 1


@pytest.mark.parametrize(
    "extra, error_type, stage, reason",
    [
        ({"message": "I can't create images of real people."}, SafetyRejected, "soft_refusal", "EMPTY_DATA"),
        ({"finish_reason": "IMAGE_SAFETY"}, SafetyRejected, "output_blocked", "IMAGE_SAFETY"),
        ({"finish_reason": "content_filter", "message": "Blocked by safety filter"}, SafetyRejected, "output_blocked", "content_filter"),
        ({"finish_reason": "NO_IMAGE"}, NoImageReturned, "no_image", "NO_IMAGE"),
    ],
)
def test_empty_data_with_a_reason_keeps_it_verbatim(hk, extra, error_type, stage, reason):
    hk.route("POST", GEN, Reply(json={**fixture("openai_images/refusal_empty_data.json"), **extra}))
    with pytest.raises(error_type) as info:
        gen()
    assert type(info.value) is error_type and info.value.stage == stage and info.value.reason == reason
    if "message" in extra:
        assert extra["message"] in str(info.value)


def test_empty_image_items_with_revised_prompt_surface_it(hk):
    hk.route("POST", GEN, Reply(json={"created": 1, "data": [{"url": None, "b64_json": None, "revised_prompt": "a cat, tasteful"}]}))
    with pytest.raises(NoImageReturned) as info:
        gen()
    assert "a cat, tasteful" in str(info.value)


def test_moderation_blocked_input_stage(hk):
    hk.route("POST", GEN, Reply(400, fixture("openai_images/error_moderation.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    err = info.value
    assert err.stage == "prompt_blocked" and err.reason == "moderation_blocked (other)" and err.status == 400
    assert "rejected by the safety system" in str(err) and "[openai_hk/nano-banana-2]" in str(err)
    assert len(hk.requests) == 1


def test_moderation_blocked_output_stage(hk):
    body = fixture("openai_images/error_moderation.json")
    body["error"]["moderation_details"]["moderation_stage"] = "output"
    hk.route("POST", EDIT, Reply(400, body))
    with pytest.raises(SafetyRejected) as info:
        gen(images=(ImageInput(YELLOW_PNG, "image/png", 1, 1),))
    assert info.value.stage == "output_blocked"


def test_content_policy_violation(hk):
    hk.route("POST", GEN, Reply(400, fixture("openai_images/error_content_policy.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    assert info.value.reason == "content_policy_violation" and info.value.stage == "prompt_blocked"
    assert "Your prompt may contain text" in str(info.value) and len(hk.requests) == 1


# -- HTTP failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["error_401", "error_401_newapi"])
def test_bad_key_is_auth_error(hk, name):
    hk.route("POST", GEN, Reply(401, fixture(f"openai_images/{name}.json")))
    with pytest.raises(AuthError) as info:
        gen()
    assert info.value.status == 401 and fixture(f"openai_images/{name}.json")["error"]["message"][:20] in str(info.value)
    assert "BANANA_OPENAI_HK_API_KEY" in str(info.value) and len(hk.requests) == 1


def test_rate_limit_then_success(hk):
    limited = Reply(429, fixture("openai_images/error_429.json"), headers={"Retry-After": "0"})
    hk.route("POST", GEN, [limited, limited, Reply(json=fixture("openai_images/success_single_b64.json"))])
    result = gen()
    assert len(result.images) == 1 and len(hk.requests) == 3


def test_rate_limit_on_an_edit_resends_the_files(hk):
    limited = Reply(429, fixture("openai_images/error_429.json"), headers={"Retry-After": "0"})
    hk.route("POST", EDIT, [limited, Reply(json=fixture("openai_images/success_single_b64.json"))])
    gen(images=(ImageInput(BLUE_PNG, "image/png", 1, 1),))
    assert [multipart(r)[1][0][3] for r in hk.requests] == [BLUE_PNG, BLUE_PNG]


def test_insufficient_quota_429_is_reported_at_once(hk):
    hk.route("POST", GEN, Reply(429, fixture("openai_images/error_429_quota.json"), headers={"Retry-After": "0"}))
    with pytest.raises(QuotaOrRateLimited) as info:
        gen()
    assert "out of credits" in str(info.value) and "exceeded your current quota" in str(info.value)
    assert info.value.status == 429 and len(hk.requests) == 1


def test_new_api_empty_balance_403_is_quota_not_auth(hk):
    body = {"error": {"message": "用户额度不足, 剩余额度: $0.000000 (request id: 2026042012)", "type": "new_api_error", "code": "insufficient_user_quota"}}
    hk.route("POST", GEN, Reply(403, body))
    with pytest.raises(QuotaOrRateLimited) as info:
        gen()
    assert info.value.status == 403 and "out of credits" in str(info.value) and len(hk.requests) == 1


def test_rate_limit_text_that_links_to_billing_is_still_a_rate_limit(hk):
    body = fixture("openai_images/error_429.json")
    body["error"]["message"] += " You can increase your rate limit by adding a payment method at https://platform.openai.com/account/billing."
    hk.route("POST", GEN, [Reply(429, body, headers={"Retry-After": "0"}), Reply(json=fixture("openai_images/success_single_b64.json"))])
    assert len(gen().images) == 1 and len(hk.requests) == 2


def test_a_400_that_merely_mentions_safety_settings_is_no_refusal(hk):
    hk.route("POST", GEN, Reply(400, {"error": {"message": "Unknown field safety_settings in request", "type": "invalid_request_error", "code": "invalid_value"}}))
    with pytest.raises(InvalidRequest):
        gen()


def test_invalid_argument_400(hk):
    hk.route("POST", GEN, Reply(400, fixture("openai_images/error_400.json")))
    with pytest.raises(InvalidRequest) as info:
        gen()
    assert "Invalid value: '9:16'" in str(info.value) and len(hk.requests) == 1


def test_no_channel_503_is_upstream_unavailable_after_retries(hk):
    hk.route("POST", GEN, Reply(503, fixture("openai_images/error_503_no_channel.json"), headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert "No available channel for model nano-banana-2-4k" in str(info.value) and "no working upstream channel" in str(info.value)
    assert len(hk.requests) == 4


def test_server_error_then_success(hk):
    hk.route("POST", GEN, [Reply(500, {"error": {"message": "boom", "type": "server_error"}}, headers={"Retry-After": "0"}), Reply(json=fixture("openai_images/success_single_b64.json"))])
    assert len(gen().images) == 1 and len(hk.requests) == 2


@pytest.mark.parametrize(
    "reply, text",
    [
        (Reply(200, body=b"<html><head><title>502 Bad Gateway</title></head></html>", content_type="text/html"), "HTML page: 502 Bad Gateway"),
        (Reply(200, body=b'{"created": 1, "data": [{"b64_js', content_type="application/json"), "Expected JSON"),
        (Reply(200, body=b"OK", content_type="text/plain"), "Expected JSON"),
        (Reply(200, json=[{"b64_json": YELLOW_PNG_B64}]), "Expected a JSON object"),
        (Reply(200, json={"data": [{"b64_json": "not base64 at all!"}]}), "not a usable image"),
    ],
)
def test_malformed_answers(hk, reply, text):
    hk.route("POST", GEN, reply)
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert text in str(info.value) and len(hk.requests) == 1


def test_json_with_the_wrong_content_type_is_still_read(hk):
    hk.route("POST", GEN, Reply(200, body=json.dumps(fixture("openai_images/success_single_b64.json")).encode(), content_type="text/html; charset=utf-8"))
    assert [im.data for im in gen().images] == [YELLOW_PNG]


def test_error_envelope_with_http_200(hk):
    hk.route("POST", GEN, Reply(200, {"error": {"message": "upstream returned nothing", "type": "new_api_error", "code": ""}}))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "HTTP 200 with an error" in str(info.value) and "upstream returned nothing" in str(info.value)
    hk.route("POST", GEN, Reply(200, fixture("openai_images/error_401_newapi.json")))
    with pytest.raises(AuthError):
        gen()


def test_key_never_in_errors(hk):
    hk.route("POST", GEN, Reply(401, {"error": {"message": f"Incorrect API key provided: {HK_KEY}", "code": "invalid_api_key"}}))
    with pytest.raises(AuthError) as info:
        gen()
    assert HK_KEY not in str(info.value) and HK_KEY not in repr(info.value)
