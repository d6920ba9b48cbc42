"""Vydra's bespoke JSON API: fixtures 11.F, and both readings of its UNVERIFIED refusal shape."""

from __future__ import annotations

import asyncio
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
from helpers import BLUE_PNG, YELLOW_PNG, png_bytes, run
from loopback import Reply, fixture

KEY = "vydra-test-key-0123456789"
GEN = r"^/api/v1/models/nano-banana/edit$"
UPLOAD = r"^/api/v1/upload$"
REF = ImageInput(YELLOW_PNG, "image/png", 1, 1)


@pytest.fixture
def vydra(server, monkeypatch):
    monkeypatch.setenv("BANANA_VYDRA_API_KEY", KEY)
    monkeypatch.setenv("BANANA_VYDRA_BASE_URL", server.url + "/api/v1")
    server.route("GET", r"^/(generated|uploads)/", Reply(body=png_bytes(6, 9), content_type="image/png"))
    server.route("POST", UPLOAD, Reply(json=local(server, "vydra/upload.json")))
    return server


def local(server, name: str) -> dict:
    return json.loads(json.dumps(fixture(name)).replace("https://pub-xxx.r2.dev", server.url))


def gen(**kw):
    return run(generate("vydra", "Nano Banana", GenerationRequest(prompt=kw.pop("prompt", "a red fox in snow"), **kw)))


def generations(server):
    return server.hits("POST", GEN)


# -- success ---------------------------------------------------------------------------------------------


def test_text_to_image(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_generate.json")))
    result = gen()
    assert [(im.width, im.height) for im in result.images] == [(6, 9)]
    assert (result.cost, result.cost_unit) == (8.0, "credits")
    assert result.usage == {"creditsCharged": 8, "durationMs": 6240, "mode": "generate"} and result.finish_reason == "generate"
    (req,) = generations(vydra)
    assert req.json() == {"prompt": "a red fox in snow"}  # auto ratio: Vydra's default
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert "authorization" not in vydra.hits("GET", "^/generated/")[0].headers
    assert vydra.hits("POST", UPLOAD) == []


def test_aspect_ratio_is_sent_camel_case(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_generate.json")))
    gen(aspect_ratio="21:9")
    assert generations(vydra)[0].json() == {"prompt": "a red fox in snow", "aspectRatio": "21:9"}


def test_match_input_picks_the_nearest_supported_ratio(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_edit.json")))
    gen(images=(ImageInput(png_bytes(300, 400), "image/png", 300, 400),), aspect_ratio="match input")
    assert generations(vydra)[0].json()["aspectRatio"] == "3:4"


def test_edit_uploads_the_reference_first(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_edit.json")))
    result = gen(images=(REF,))
    assert result.finish_reason == "edit" and len(result.images) == 1
    (upload,) = vydra.hits("POST", UPLOAD)
    assert upload.headers["content-type"].startswith("multipart/form-data") and upload.headers["authorization"] == f"Bearer {KEY}"
    assert b'name="file"; filename="reference.png"' in upload.body and YELLOW_PNG in upload.body
    assert generations(vydra)[0].json()["imageUrl"] == local(vydra, "vydra/upload.json")["url"]
    assert [r.method for r in vydra.requests[:2]] == ["POST", "POST"] and vydra.requests[0].path == "/api/v1/upload"


def test_several_images_are_several_calls(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_generate.json"), delay=0.1))

    async def batch():
        request = GenerationRequest(prompt="a red fox in snow")
        return await asyncio.gather(*(generate("vydra", "Nano Banana", request) for _ in range(3)))

    results = run(batch())
    assert [len(r.images) for r in results] == [1, 1, 1] and len(generations(vydra)) == 3


def test_count_above_one_is_clamped_to_one_call(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_generate.json")))
    assert len(gen(count=3).images) == 1 and len(generations(vydra)) == 1


def test_one_reference_only(vydra):
    with pytest.raises(InvalidRequest) as info:
        gen(images=(REF, ImageInput(BLUE_PNG, "image/png", 1, 1)))
    assert "at most 1" in str(info.value) and vydra.requests == []


def test_download_that_fails_once_then_works(vydra):
    vydra.route("POST", GEN, Reply(json=local(vydra, "vydra/success_generate.json")))
    vydra.route("GET", r"^/generated/", [Reply(503, body=b"busy", content_type="text/plain"), Reply(body=png_bytes(6, 9), content_type="image/png")])
    assert len(gen().images) == 1 and len(vydra.hits("GET", "^/generated/")) == 2


# -- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, name, kind, words",
    [
        (401, "vydra/error_401.json", AuthError, "API key doesn't exist"),
        (402, "vydra/error_402.json", QuotaOrRateLimited, "Insufficient credits"),
        (400, "vydra/error_400.json", InvalidRequest, "Missing required field: prompt (string)"),
    ],
)
def test_error_envelopes_are_typed_and_not_resent(vydra, status, name, kind, words):
    vydra.route("POST", GEN, Reply(status, fixture(name)))
    with pytest.raises(kind) as info:
        gen()
    assert info.value.status == status and words in str(info.value) and len(generations(vydra)) == 1


def test_rate_limit_with_retry_after_then_success(vydra):
    limited = fixture("vydra/error_429.json")
    limited["retryAfter"] = 0  # the fixture's 30 s, shortened; read from the body, not a header
    vydra.route("POST", GEN, [Reply(429, limited), Reply(json=local(vydra, "vydra/success_generate.json"))])
    assert len(gen().images) == 1 and len(generations(vydra)) == 2


def test_rate_limit_reports_retry_after(vydra):
    vydra.route("POST", GEN, Reply(429, fixture("vydra/error_429.json") | {"retryAfter": 500}))
    with pytest.raises(QuotaOrRateLimited) as info:
        gen()
    assert info.value.retry_after == 500 and len(generations(vydra)) == 1  # too long to wait out


def test_generation_failure_naming_safety_is_a_refusal(vydra):
    vydra.route("POST", GEN, Reply(500, fixture("vydra/error_generation_failed.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    err = info.value
    assert err.reason == "GENERATION_FAILED" and err.finish_message == fixture("vydra/error_generation_failed.json")["error"]
    assert "IMAGE_SAFETY" in str(err) and len(generations(vydra)) == 1  # refunded and final: not resent


def test_generation_failure_without_safety_is_no_image(vydra):
    vydra.route("POST", GEN, Reply(500, {"error": "Image generation failed. Credits have been refunded.", "code": "GENERATION_FAILED"}))
    with pytest.raises(NoImageReturned) as info:
        gen()
    assert info.value.reason == "GENERATION_FAILED" and len(generations(vydra)) == 1


@pytest.mark.parametrize("body", [{"error": "Prompt rejected by content moderation", "code": "INVALID_INPUT"}, {"error": "Request blocked", "code": "CONTENT_POLICY_VIOLATION"}])
def test_4xx_naming_safety_is_a_refusal(vydra, body):
    vydra.route("POST", GEN, Reply(400, body))
    with pytest.raises(SafetyRejected) as info:
        gen()
    assert info.value.reason == body["code"] and body["error"] in str(info.value)


def test_reported_500_is_retried_then_succeeds(vydra):
    failed = Reply(500, {"error": "Internal error, please retry", "code": "internal_error"})
    vydra.route("POST", GEN, [failed, Reply(json=local(vydra, "vydra/success_generate.json"))])
    assert len(gen().images) == 1 and len(generations(vydra)) == 2


def test_persistent_reported_5xx_gives_up_with_a_typed_error(vydra):
    vydra.route("POST", GEN, Reply(503, {"error": "Service busy", "code": "busy"}, headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert "Service busy" in str(info.value) and len(generations(vydra)) == 4 and not info.value.maybe_billed


def test_unreported_5xx_page_is_not_resent(vydra):
    vydra.route("POST", GEN, Reply(503, body=b"<html><title>503 Service Unavailable</title></html>", content_type="text/html", headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert "503 Service Unavailable" in str(info.value) and len(generations(vydra)) == 1 and info.value.maybe_billed


@pytest.mark.parametrize(
    "answer, kind, words",
    [
        ({"error": "Generation blocked by the safety filter", "mode": "generate"}, SafetyRejected, "safety filter"),
        ({"mode": "generate", "creditsCharged": 0, "message": "The model returned text only"}, NoImageReturned, "text only"),
        ({"mode": "generate"}, NoImageReturned, "without an image"),
    ],
)
def test_200_without_image_url(vydra, answer, kind, words):
    vydra.route("POST", GEN, Reply(json=answer))
    with pytest.raises(kind) as info:
        gen()
    assert words in str(info.value)


@pytest.mark.parametrize(
    "reply, words",
    [
        (Reply(200, body=b"<html><head><title>Vercel - Deployment</title></head></html>", content_type="text/html"), "HTML page: Vercel"),
        (Reply(200, body=b'{"imageUrl": "https://pub-', content_type="application/json"), "Expected JSON"),
        (Reply(200, body=png_bytes(2, 2), content_type="image/png"), "image/png"),
    ],
    ids=["html", "truncated", "wrong-content-type"],
)
def test_malformed_answers(vydra, reply, words):
    vydra.route("POST", GEN, reply)
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert words in str(info.value)


def test_upload_refused(vydra):
    vydra.route("POST", UPLOAD, Reply(400, {"error": "Invalid file type. Allowed: image/jpeg, image/jpg, image/png, image/webp, image/gif"}))
    with pytest.raises(InvalidRequest) as info:
        gen(images=(REF,))
    assert "Invalid file type" in str(info.value) and generations(vydra) == []


def test_upload_without_url(vydra):
    vydra.route("POST", UPLOAD, Reply(json={"filename": "image.png"}))
    with pytest.raises(MalformedResponse) as info:
        gen(images=(REF,))
    assert "without a URL" in str(info.value) and generations(vydra) == []
