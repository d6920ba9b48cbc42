"""The fal queue family (fal.ai, the openai-hk passthrough, custom fal-queue gateways): fixtures 11.D."""

from __future__ import annotations

import json
import threading

import pytest

from banana_pack.providers import (
    AuthError,
    CallContext,
    Cancelled,
    GenerationRequest,
    ImageInput,
    InvalidRequest,
    MalformedResponse,
    NoImageReturned,
    SafetyRejected,
    TimedOut,
    UpstreamUnavailable,
    generate,
)
from helpers import BLUE_PNG, YELLOW_PNG, YELLOW_PNG_B64, UserStop, held_until, png_bytes, run
from loopback import Reply, fixture

KEY = "fal-key-id-0123:fal-key-secret-4567"
HK_KEY = "hk-test-passthrough-key-0123"
RID = "551a32da-52b2-4be8-bf2f-bfb7cce2b324"
APPS = {"Nano Banana": "fal-ai/nano-banana", "Nano Banana Pro": "fal-ai/nano-banana-pro", "Nano Banana 2": "fal-ai/nano-banana-2"}
REF = ImageInput(BLUE_PNG, "image/png", 1, 1)


def fast(monkeypatch, provider: str, base: str) -> None:
    prefix = f"BANANA_{provider.upper()}_"
    monkeypatch.setenv(prefix + "BASE_URL", base)
    monkeypatch.setenv(prefix + "POLL_FIRST_DELAY", "0.02")
    monkeypatch.setenv(prefix + "POLL_MAX_DELAY", "0.05")


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", KEY)
    fast(monkeypatch, "fal", server.url)
    return server


@pytest.fixture
def hk(server, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    fast(monkeypatch, "openai_hk_fal", server.url)
    return server


def submit_body(host: str, app: str = "fal-ai/nano-banana") -> dict:
    """D-01 with its URLs on `host` (fal.ai's own answer) or left on queue.fal.run (the passthrough)."""
    body = fixture("fal/submit.json")
    for key in ("response_url", "status_url", "cancel_url"):
        body[key] = body[key].replace("https://queue.fal.run/fal-ai/nano-banana", f"{host}/{app}")
    return body


def result_single(server) -> dict:
    body = fixture("fal/result_single.json")
    body["images"][0]["url"] = f"{server.url}/files/out.png"
    return body


def script(server, *, app="fal-ai/nano-banana", status=None, result=None, host=None):
    """Submit, status and result routes for one job; the image at /files/out.png."""
    server.route("POST", rf"^/{app}(/edit)?$", Reply(json=submit_body(host or server.url, app)))
    server.route("GET", rf"^/{app}/requests/{RID}/status$", status if status is not None else Reply(json=fixture("fal/status_completed.json")))
    server.route("GET", rf"^/{app}/requests/{RID}$", result if result is not None else Reply(json=result_single(server)))
    server.route("GET", r"^/files/out\.png$", Reply(body=png_bytes(8, 4), content_type="image/png"))


def gen(provider="fal", model="Nano Banana", ctx=None, override=None, **kw):
    request = GenerationRequest(prompt=kw.pop("prompt", "a banana on the moon"), **kw)
    return run(generate(provider, model, request, ctx, model_id_override=override))


def submits(server):
    return [r for r in server.requests if r.method == "POST"]


# -- success, every preset, text-to-image and edit ----------------------------------------------------


@pytest.mark.parametrize("provider", ["fal", "openai_hk_fal"])
@pytest.mark.parametrize("model", list(APPS))
@pytest.mark.parametrize("editing", [False, True], ids=["t2i", "edit"])
def test_every_preset_and_model_end_to_end(server, monkeypatch, provider, model, editing):
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    fast(monkeypatch, provider, server.url)
    app = APPS[model]
    # fal.ai answers with its own host; the passthrough relays fal's queue.fal.run URLs unchanged.
    script(server, app=app, host=server.url if provider == "fal" else "https://queue.fal.run")
    result = gen(provider, model, images=(REF,) if editing else ())
    assert [(im.width, im.height) for im in result.images] == [(8, 4)]
    assert result.text == fixture("fal/result_single.json")["description"] and result.request_id == RID
    submit, status, fetch, _download = server.requests
    assert submit.path == f"/{app}/edit" if editing else f"/{app}"
    assert status.path == f"/{app}/requests/{RID}/status" and status.query == "logs=1"  # owner/app only
    assert fetch.path == f"/{app}/requests/{RID}"
    expected_auth = f"Key {KEY}" if provider == "fal" else f"Bearer {HK_KEY}"
    assert {r.headers.get("authorization") for r in (submit, status, fetch)} == {expected_auth}
    assert "authorization" not in _download.headers  # no key to a CDN
    body = submit.json()
    assert body["prompt"] == "a banana on the moon" and body["num_images"] == 1 and body["output_format"] == "png"
    assert "aspect_ratio" not in body  # auto
    assert ("image_urls" in body) == editing


def test_request_shape_with_every_parameter(fal):
    script(fal, app="fal-ai/nano-banana-2")
    gen("fal", "Nano Banana 2", aspect_ratio="8:1", resolution="0.5K", seed=7, web_search=True, images=(REF, ImageInput(YELLOW_PNG, "image/png", 1, 1)))
    body = fal.requests[0].json()
    expected = fixture("fal/request_edit.json")
    assert body["image_urls"] == [expected["image_urls"][1], "data:image/png;base64," + YELLOW_PNG_B64]
    assert (body["aspect_ratio"], body["resolution"], body["seed"], body["enable_web_search"]) == ("8:1", "0.5K", 7, True)
    assert "sync_mode" not in body


def test_several_images_as_data_uris(fal):
    script(fal, result=Reply(json=fixture("fal/result_multi_datauri.json")))
    result = gen(count=2)
    assert [im.data for im in result.images] == [YELLOW_PNG, BLUE_PNG] and result.warnings == []
    assert fal.requests[0].json()["num_images"] == 2


def test_fewer_images_than_asked_is_a_warning(fal):
    script(fal)
    result = gen(count=3)
    assert len(result.images) == 1 and any("Asked for 3 images" in w for w in result.warnings)


def test_price_is_estimated_from_the_catalog(fal):
    script(fal, app="fal-ai/nano-banana-pro")
    assert gen("fal", "Nano Banana Pro", resolution="4K").cost == pytest.approx(0.30)


# -- progress, journaling, resume, cancellation ---------------------------------------------------------


def test_slow_progress_reports_queue_position_and_logs(fal):
    queued, working = fixture("fal/status_in_queue.json"), fixture("fal/status_in_progress.json")
    statuses = [Reply(202, queued), Reply(202, queued), Reply(202, working), Reply(202, working), Reply(json=fixture("fal/status_completed.json"))]
    script(fal, status=statuses)
    seen: list[str] = []
    result = gen(ctx=CallContext(on_status=seen.append))
    assert len(result.images) == 1 and len(fal.hits("GET", "/status$")) == 5
    assert any("In queue, queue position 2" in line for line in seen)
    assert any("Generating image with Gemini" in line for line in seen)


def test_handle_is_journaled_before_the_first_poll_and_resume_skips_submit(fal):
    events: list[str] = []

    def status(_req):
        events.append("poll")
        return Reply(json=fixture("fal/status_completed.json"))

    script(fal, status=status)
    handles: list[dict] = []
    gen(ctx=CallContext(on_task=lambda h: (events.append("task"), handles.append(h))))
    assert events[:2] == ["task", "poll"]
    handle = json.loads(json.dumps(handles[0]))  # survives a journal on disk
    assert handle["request_id"] == RID and handle["response_url"].endswith(f"/fal-ai/nano-banana/requests/{RID}")
    fal.requests.clear()
    result = gen(ctx=CallContext(resume_task=handle))
    assert len(result.images) == 1 and submits(fal) == []


def test_cancel_stops_within_a_second_and_cancels_the_remote_job(fal):
    stop = UserStop()
    # The user stops while a status poll is in flight (its answer is slow): the call notices the press
    # while it waits, and cancelling the remote job is part of stopping.
    script(fal, status=stop.presses_while_answering(Reply(202, fixture("fal/status_in_queue.json"), delay=20)))
    fal.route("PUT", rf"/requests/{RID}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    call = generate("fal", "Nano Banana", GenerationRequest(prompt="a banana on the moon"), CallContext(cancel_check=stop.pressed.is_set))
    assert run(stop.seconds_until(Cancelled, call)) < 1.0
    (cancel,) = fal.hits("PUT", r"/cancel$")
    assert cancel.path == f"/fal-ai/nano-banana/requests/{RID}/cancel" and cancel.headers["authorization"] == f"Key {KEY}"
    assert len(submits(fal)) == 1


def test_max_wait_gives_up_with_a_resumable_hint(fal, monkeypatch):
    monkeypatch.setenv("BANANA_FAL_MAX_WAIT", "0.2")
    script(fal, status=Reply(202, fixture("fal/status_in_progress.json")))
    with pytest.raises(TimedOut) as info:
        gen()
    assert "still running" in str(info.value) and "journaled" in str(info.value)
    assert len(submits(fal)) == 1


# -- lost submits are never resent ----------------------------------------------------------------------


def test_lost_submit_answer_is_not_resent(fal):
    script(fal)
    fal.route("POST", r"^/fal-ai/nano-banana$", Reply(drop=True))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert len(submits(fal)) == 1
    assert "NOT sent again" in str(info.value)


def test_submit_slower_than_the_timeout_is_not_resent(fal, monkeypatch):
    monkeypatch.setenv("BANANA_FAL_TIMEOUT", "0.5")
    script(fal)
    call_over = threading.Event()
    fal.route("POST", r"^/fal-ai/nano-banana$", held_until(call_over, Reply(json=submit_body(fal.url))))
    try:
        with pytest.raises(TimedOut) as info:
            gen()
    finally:
        call_over.set()
    assert len(submits(fal)) == 1 and "NOT sent again" in str(info.value)


def test_submit_5xx_is_not_resent(fal):
    script(fal)
    fal.route("POST", r"^/fal-ai/nano-banana$", Reply(503, {"detail": "Runner scheduling failure", "error_type": "runner_scheduling_failure"}, headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert len(submits(fal)) == 1 and "Runner scheduling failure" in str(info.value)


def test_rate_limited_submit_is_retried_then_succeeds(fal):
    script(fal)
    fal.route("POST", r"^/fal-ai/nano-banana$", [Reply(429, fixture("fal/error_429.json"), headers={"Retry-After": "0"}), Reply(json=submit_body(fal.url))])
    result = gen()
    assert len(result.images) == 1 and len(submits(fal)) == 2


# -- refusals and errors ----------------------------------------------------------------------------------


def test_zero_images_with_description_is_a_soft_refusal(fal):
    script(fal, result=Reply(json=fixture("fal/result_refusal_text.json")))
    with pytest.raises(SafetyRejected) as info:
        gen()
    err = info.value
    assert err.stage == "soft_refusal" and err.model_text == fixture("fal/result_refusal_text.json")["description"]
    assert "I can't create images of real public figures" in str(err)


def test_zero_images_without_text_is_no_image(fal):
    script(fal, result=Reply(json={"images": [], "description": ""}))
    with pytest.raises(NoImageReturned):
        gen()


def test_content_policy_422_on_result_is_a_safety_rejection(fal):
    script(fal, result=Reply(422, fixture("fal/error_422_content_policy.json"), headers={"X-Fal-Retryable": "false"}))
    with pytest.raises(SafetyRejected) as info:
        gen()
    message = fixture("fal/error_422_content_policy.json")["detail"][0]["msg"]
    assert info.value.provider_message == message and message in str(info.value)
    assert "content_policy_violation" in info.value.reason
    assert len(fal.hits("GET", rf"/requests/{RID}$")) == 1  # never retried


def test_validation_422_is_invalid_request(fal):
    script(fal, result=Reply(422, fixture("fal/error_422_validation.json")))
    with pytest.raises(InvalidRequest) as info:
        gen()
    assert info.value.status == 422 and "Field required" in str(info.value)


def test_bad_key_401(fal):
    script(fal)
    fal.route("POST", r"^/fal-ai/nano-banana$", Reply(401, fixture("fal/error_401.json")))
    with pytest.raises(AuthError) as info:
        gen()
    assert "Invalid key authorization header format" in str(info.value) and len(fal.requests) == 1


def test_504_on_the_result_is_retried_then_a_timeout(fal):
    script(fal, result=Reply(504, fixture("fal/error_504_timeout.json"), headers={"Retry-After": "0", "X-Fal-Error-Type": "request_timeout"}))
    with pytest.raises(TimedOut) as info:
        gen()
    assert "Request timed out" in str(info.value)
    assert len(fal.hits("GET", rf"/requests/{RID}$")) == 5 and len(submits(fal)) == 1


def test_failed_status_surfaces_the_result_error(fal):
    script(fal, status=Reply(json={"status": "FAILED", "error": "Runner crashed"}), result=Reply(json={"images": []}))
    with pytest.raises(NoImageReturned) as info:
        gen()
    assert info.value.finish_message == "Runner crashed"


def test_result_url_that_fails_once_then_works(fal):
    script(fal, result=[Reply(503, {"detail": "upstream connect error"}, headers={"Retry-After": "0"}), Reply(json=result_single(fal))])
    fal.route("GET", r"^/files/out\.png$", [Reply(502, body=b"<html><title>502</title></html>", content_type="text/html"), Reply(body=png_bytes(8, 4), content_type="image/png")])
    result = gen()
    assert len(result.images) == 1
    assert len(fal.hits("GET", rf"/requests/{RID}$")) == 2 and len(fal.hits("GET", "out.png")) == 2


@pytest.mark.parametrize(
    "reply, words",
    [
        (Reply(200, body=b"<html><head><title>502 Bad Gateway</title></head></html>", content_type="text/html"), "HTML page: 502 Bad Gateway"),
        (Reply(200, body=b'{"images": [{"url": "data:image/png;base64,iVBO', content_type="application/json"), "Expected JSON"),
        (Reply(200, body=png_bytes(2, 2), content_type="image/png"), "image/png"),
    ],
    ids=["html", "truncated", "wrong-content-type"],
)
def test_malformed_result_bodies(fal, reply, words):
    script(fal, result=reply)
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert words in str(info.value)


def test_json_with_a_wrong_content_type_is_still_read(fal):
    script(fal, result=Reply(body=json.dumps(result_single(fal)).encode(), content_type="text/plain"))
    assert len(gen().images) == 1


def test_malformed_submit_answer(fal):
    script(fal)
    fal.route("POST", r"^/fal-ai/nano-banana$", Reply(json={"status": "IN_QUEUE"}))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "no request_id" in str(info.value) and len(submits(fal)) == 1


# -- the openai-hk passthrough, custom gateways, free-text ids ---------------------------------------------


def test_passthrough_without_a_status_endpoint_polls_the_result(hk):
    script(hk, host="https://queue.fal.run")
    hk.route("GET", rf"/requests/{RID}/status$", Reply(404, {"error": {"message": "Invalid URL (GET /fal-ai/nano-banana/requests/x/status)"}}))
    in_progress = Reply(400, {"detail": "Request is still in progress"})
    hk.route("GET", rf"^/fal-ai/nano-banana/requests/{RID}$", [Reply(202, {"status": "IN_QUEUE", "queue_position": 1}), in_progress, Reply(json=result_single(hk))])
    seen: list[str] = []
    result = gen("openai_hk_fal", ctx=CallContext(on_status=seen.append))
    assert len(result.images) == 1
    assert len(hk.hits("GET", "/status$")) == 1  # tried once, then the result URL
    assert len(hk.hits("GET", rf"/requests/{RID}$")) == 3
    assert any("queue position 1" in line for line in seen)


def test_passthrough_result_400_that_is_not_progress_is_an_error(hk):
    script(hk, host="https://queue.fal.run")
    hk.route("GET", rf"/requests/{RID}/status$", Reply(404, {}))
    hk.route("GET", rf"/requests/{RID}$", Reply(400, {"detail": "num_images must be 1 for this model"}))
    with pytest.raises(InvalidRequest) as info:
        gen("openai_hk_fal")
    assert "num_images must be 1" in str(info.value)


def test_passthrough_cancel_goes_to_the_rewritten_url(hk):
    flag = threading.Event()

    def queued(_req):
        flag.set()  # stop once the job is being polled (not after a fixed time: the machine may be slow)
        return Reply(202, fixture("fal/status_in_queue.json"))

    script(hk, host="https://queue.fal.run", status=queued)
    hk.route("PUT", r"/cancel$", Reply(json={}))
    with pytest.raises(Cancelled):
        gen("openai_hk_fal", ctx=CallContext(cancel_check=flag.is_set))
    (cancel,) = hk.hits("PUT", r"/cancel$")
    assert cancel.path == f"/fal-ai/nano-banana/requests/{RID}/cancel" and cancel.headers["authorization"] == f"Bearer {HK_KEY}"


def test_custom_fal_queue_gateway(server, monkeypatch, isolated_config):
    isolated_config.mkdir(parents=True, exist_ok=True)
    gateway = {
        "id": "myqueue",
        "protocol": "fal-queue",
        "base_url": server.url + "/queue",
        "auth": "key",
        "models": [{"id": "fal-ai/nano-banana", "name": "Nano Banana", "edit_model_id": "fal-ai/nano-banana/edit"}],
        "options": {"poll_first_delay": 0.02, "poll_max_delay": 0.05},
    }
    (isolated_config / "providers.json").write_text(json.dumps({"providers": [gateway]}))
    monkeypatch.setenv("BANANA_MYQUEUE_API_KEY", "custom-gateway-key-123")
    # No URLs in the submit answer: they are built from owner/app and the request id.
    server.route("POST", r"^/queue/fal-ai/nano-banana/edit$", Reply(json={"request_id": RID, "status": "IN_QUEUE"}))
    server.route("GET", rf"^/queue/fal-ai/nano-banana/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    server.route("GET", rf"^/queue/fal-ai/nano-banana/requests/{RID}$", Reply(json=fixture("fal/result_multi_datauri.json")))
    result = gen("myqueue", "Nano Banana", images=(REF,))
    assert result.provider == "myqueue" and [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    assert server.requests[0].headers["authorization"] == "Key custom-gateway-key-123"


def test_free_text_model_id_is_the_endpoint(fal):
    script(fal, app="fal-ai/nano-banana-3")
    result = gen("fal", "Nano Banana", override="fal-ai/nano-banana-3/edit", images=(REF,))
    assert fal.requests[0].path == "/fal-ai/nano-banana-3/edit" and result.model == "fal-ai/nano-banana-3/edit"


def test_free_text_text_to_image_id_is_not_swapped_for_the_catalog_edit_endpoint(fal):
    script(fal, app="fal-ai/nano-banana-3")
    result = gen("fal", "Nano Banana", override="fal-ai/nano-banana-3", images=(REF,))
    assert fal.requests[0].path == "/fal-ai/nano-banana-3" and len(result.images) == 1
