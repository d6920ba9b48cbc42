"""The async task family: EvoLink (fixtures 11.E1) and APIMaster / APIMart-style (11.E2)."""

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
    QuotaOrRateLimited,
    SafetyRejected,
    TimedOut,
    UpstreamUnavailable,
    generate,
)
from helpers import BLUE_PNG, YELLOW_PNG, YELLOW_PNG_B64, UserStop, held_until, png_bytes, run
from loopback import Reply, fixture

KEYS = {"evolink": "sk-evolink-test-key-0123", "apimaster": "sk-apimaster-test-key-4567"}
SUBMIT = {"evolink": r"^/v1/images/generations$", "apimaster": r"^/v1/images/generations/async$"}
TASK = r"^/v1/tasks/[^/]+$"
UPLOAD = r"^/files/upload/base64$"
MODELS = {"Nano Banana": "gemini-2.5-flash-image", "Nano Banana Pro": "gemini-3-pro-image-preview", "Nano Banana 2": "gemini-3.1-flash-image-preview"}
FIXTURE_DIR = {"evolink": "evolink", "apimaster": "apimaster"}
CREATED = {"evolink": "evolink/create.json", "apimaster": "apimaster/submit.json"}
RUNNING = {"evolink": "evolink/processing.json", "apimaster": "apimaster/in_progress.json"}
DONE_ONE = {"evolink": "evolink/completed_single.json", "apimaster": "apimaster/completed_single.json"}
DONE_MANY = {"evolink": "evolink/completed_multi.json", "apimaster": "apimaster/completed_multi.json"}
TASK_ID = {"evolink": "task-unified-1757165031-uyujaw3d", "apimaster": "task_01K8SGYNNNVBQTXNR4MM964S7K"}
REF = ImageInput(YELLOW_PNG, "image/png", 1, 1)
BOTH = pytest.mark.parametrize("provider", ["evolink", "apimaster"])


@pytest.fixture
def setup(server, monkeypatch):
    """Point every preset at the loopback server with fast polling; returns the server."""
    for provider, key in KEYS.items():
        prefix = f"BANANA_{provider.upper()}_"
        monkeypatch.setenv(prefix + "API_KEY", key)
        monkeypatch.setenv(prefix + "BASE_URL", server.url + "/v1")
        monkeypatch.setenv(prefix + "POLL_FIRST_DELAY", "0.02")
        monkeypatch.setenv(prefix + "POLL_MAX_DELAY", "0.05")
    monkeypatch.setenv("BANANA_EVOLINK_UPLOAD_URL", server.url + "/files/upload/base64")
    monkeypatch.setenv("BANANA_EVOLINK_FILE_DELETE_URL", server.url + "/files/{file_id}")
    return server


def local(server, name: str) -> dict:
    """A fixture with its result hosts moved onto the loopback server."""
    text = json.dumps(fixture(name))
    for host in ("https://files.evolink.ai", "https://upload.apimart.ai", "https://apimaster.ai"):
        text = text.replace(host, server.url)
    return json.loads(text)


def script(server, provider, *, created=None, task=None, upload=None):
    server.route("POST", SUBMIT[provider], created or Reply(json=fixture(CREATED[provider])))
    server.route("GET", TASK, task or Reply(json=local(server, DONE_ONE[provider])))
    server.route("GET", r"^/(generated|f|imgs)/", Reply(body=png_bytes(8, 4), content_type="image/png"))
    server.route("POST", UPLOAD, upload or (lambda req: Reply(json={"success": True, "code": 200, "msg": "ok", "data": {"file_id": f"file_{len(server.hits('POST', UPLOAD))}", "file_url": f"{server.url}/uploads/ref{len(server.hits('POST', UPLOAD))}.png"}})))
    server.route("DELETE", r"^/files/[^/]+$", Reply(json={"success": True, "code": 200}))


def gen(provider="evolink", model="Nano Banana 2", ctx=None, **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a lighthouse in fog"), **kw), ctx))


def submits(server, provider):
    return server.hits("POST", SUBMIT[provider])


# -- success, every preset and model, text-to-image and edit ------------------------------------------


@BOTH
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("editing", [False, True], ids=["t2i", "edit"])
def test_every_preset_and_model_end_to_end(setup, provider, model, editing):
    script(setup, provider)
    result = gen(provider, model, images=(REF,) if editing else ())
    assert [(im.width, im.height) for im in result.images] == [(8, 4)] and result.request_id == TASK_ID[provider]
    (submit,) = submits(setup, provider)
    assert submit.headers["authorization"] == f"Bearer {KEYS[provider]}"
    body = submit.json()
    assert body["model"] == MODELS[model] and body["prompt"] == "a lighthouse in fog"
    (poll,) = setup.hits("GET", TASK)
    assert poll.path == f"/v1/tasks/{TASK_ID[provider]}" and poll.headers["authorization"] == f"Bearer {KEYS[provider]}"
    if provider == "apimaster":
        assert poll.query == f"model={MODELS[model]}"
    uploads = setup.hits("POST", UPLOAD)
    if not editing:
        assert "image_urls" not in body and uploads == []
    elif provider == "evolink":  # a downloadable URL from the file API, deleted once the job is over
        assert body["image_urls"] == [f"{setup.url}/uploads/ref1.png"]
        assert uploads[0].json()["base64_data"] == "data:image/png;base64," + YELLOW_PNG_B64
        assert [r.path for r in setup.hits("DELETE", "/files/")] == ["/files/file_1"]
    else:  # APIMaster documents no upload endpoint: inline data URIs
        assert body["image_urls"] == ["data:image/png;base64," + YELLOW_PNG_B64] and uploads == []


def test_evolink_request_fields(setup):
    script(setup, "evolink")
    gen("evolink", "Nano Banana 2", aspect_ratio="8:1", resolution="4K", count=3)
    body = submits(setup, "evolink")[0].json()
    assert (body["aspect_ratio"], body["resolution"], body["n"]) == ("8:1", "4K", 3)
    gen("evolink", "Nano Banana 2")
    body = submits(setup, "evolink")[1].json()
    assert "aspect_ratio" not in body and "n" not in body and body["resolution"] == "1K"


def test_evolink_alternative_field_spelling(setup, monkeypatch):
    monkeypatch.setenv("BANANA_EVOLINK_RATIO_FIELD", "size")
    monkeypatch.setenv("BANANA_EVOLINK_RESOLUTION_FIELD", "quality")
    script(setup, "evolink")
    gen("evolink", "Nano Banana Pro", resolution="2K")
    gen("evolink", "Nano Banana Pro", aspect_ratio="21:9")
    first, second = (r.json() for r in submits(setup, "evolink"))
    assert (first["size"], first["quality"]) == ("auto", "2K") and "aspect_ratio" not in first and "resolution" not in first
    assert second["size"] == "21:9"


def test_apimaster_request_fields(setup):
    script(setup, "apimaster")
    gen("apimaster", "Nano Banana 2", aspect_ratio="4:1", resolution="0.5K")
    gen("apimaster", "Nano Banana 2")
    first, second = (r.json() for r in submits(setup, "apimaster"))
    assert (first["size"], first["resolution"]) == ("4:1", "0.5K")
    assert second["size"] == "auto"


@BOTH
def test_several_images(setup, provider):
    script(setup, provider, task=Reply(json=local(setup, DONE_MANY[provider])))
    asked = 2 if provider == "evolink" else 1
    result = gen(provider, "Nano Banana Pro", count=asked)
    # EvoLink's results[] and result_data[] name the same two URLs; APIMaster's two for one asked:
    # the count asked for is the result, the other one (paid for too) is downloaded and kept apart.
    assert len(result.images) == asked and len(result.extra_images) == 2 - asked
    assert len(setup.hits("GET", r"^/(generated|imgs)/")) == 2
    assert any("kept apart" in w for w in result.warnings) == (asked == 1)


def test_evolink_usage_is_kept(setup):
    script(setup, "evolink", task=Reply(json=local(setup, DONE_MANY["evolink"])))
    assert gen("evolink", "Nano Banana Pro", count=2).usage["credits_reserved"] == 3.2


def test_fewer_images_than_asked_is_a_warning(setup):
    script(setup, "evolink")
    result = gen("evolink", count=4)
    assert any("Asked for 4 images" in w for w in result.warnings)


# -- progress, journaling, resume, cancellation -----------------------------------------------------------


@BOTH
def test_slow_progress_is_reported(setup, provider):
    running = fixture(RUNNING[provider])
    replies = []
    for percent in (10, 40, 70):
        body = json.loads(json.dumps(running))
        (body["data"] if provider == "apimaster" else body)["progress"] = percent
        replies.append(Reply(json=body))
    script(setup, provider, task=replies + [Reply(json=local(setup, DONE_ONE[provider]))])
    seen: list[str] = []
    result = gen(provider, ctx=CallContext(on_status=seen.append))
    assert len(result.images) == 1 and len(setup.hits("GET", TASK)) == 4
    word = "processing" if provider == "evolink" else "in progress"
    assert any(f"{provider}: {word}, 40%" in line for line in seen)
    assert any("70%" in line for line in seen)


@BOTH
def test_handle_is_journaled_before_the_first_poll_and_resume_skips_submit(setup, provider):
    events: list[str] = []

    def poll(_req):
        events.append("poll")
        return Reply(json=local(setup, DONE_ONE[provider]))

    script(setup, provider, task=poll)
    handles: list[dict] = []
    gen(provider, images=(REF,), ctx=CallContext(on_task=lambda h: (events.append("task"), handles.append(h))))
    assert events[:2] == ["task", "poll"]
    handle = json.loads(json.dumps(handles[0]))
    assert handle["task_id"] == TASK_ID[provider]
    setup.requests.clear()
    result = gen(provider, images=(REF,), ctx=CallContext(resume_task=handle))
    assert len(result.images) == 1
    assert submits(setup, provider) == [] and setup.hits("POST", UPLOAD) == []


@BOTH
def test_cancel_stops_within_a_second(setup, provider):
    stop = UserStop()
    # The user stops while a poll is in flight (its answer is slow): the call notices the press while it waits.
    script(setup, provider, task=stop.presses_while_answering(Reply(json=fixture(RUNNING[provider]), delay=20)))
    call = generate(provider, "Nano Banana 2", GenerationRequest(prompt="a lighthouse in fog", images=(REF,)), CallContext(cancel_check=stop.pressed.is_set))
    assert run(stop.seconds_until(Cancelled, call)) < 1.0
    # No documented cancel endpoint: nothing else is sent, and the job's references are kept.
    assert [r.method for r in setup.requests if r.method != "GET"] == (["POST", "POST"] if provider == "evolink" else ["POST"])


def test_cancel_endpoint_when_configured(setup, monkeypatch):
    monkeypatch.setenv("BANANA_EVOLINK_CANCEL_PATH", "tasks/{id}/cancel")
    script(setup, "evolink", task=Reply(json=fixture(RUNNING["evolink"])))
    setup.route("POST", r"/cancel$", Reply(json={"status": "cancelled"}))
    with pytest.raises(Cancelled):  # stopped once the job runs
        gen("evolink", ctx=CallContext(cancel_check=lambda: bool(setup.hits("GET", TASK))))
    (cancel,) = setup.hits("POST", r"/cancel$")
    assert cancel.path == f"/v1/tasks/{TASK_ID['evolink']}/cancel"


def test_max_wait(setup, monkeypatch):
    monkeypatch.setenv("BANANA_EVOLINK_MAX_WAIT", "0.2")
    script(setup, "evolink", task=Reply(json=fixture(RUNNING["evolink"])))
    with pytest.raises(TimedOut) as info:
        gen("evolink")
    assert "still running" in str(info.value) and len(submits(setup, "evolink")) == 1


# -- submits are never resent ----------------------------------------------------------------------------


@BOTH
def test_lost_submit_answer_is_not_resent(setup, provider):
    script(setup, provider, created=Reply(drop=True))
    with pytest.raises(UpstreamUnavailable) as info:
        gen(provider, images=(REF,))
    assert len(submits(setup, provider)) == 1 and "NOT sent again" in str(info.value)
    assert setup.hits("DELETE", "/files/") == []  # the job may exist: its references stay


@BOTH
def test_submit_slower_than_the_timeout_is_not_resent(setup, provider, monkeypatch):
    monkeypatch.setenv(f"BANANA_{provider.upper()}_TIMEOUT", "0.5")
    call_over = threading.Event()
    script(setup, provider, created=held_until(call_over, Reply(json=fixture(CREATED[provider]))))
    try:
        with pytest.raises(TimedOut):
            gen(provider)
    finally:
        call_over.set()
    assert len(submits(setup, provider)) == 1


@BOTH
def test_submit_5xx_is_not_resent(setup, provider):
    script(setup, provider, created=Reply(503, {"error": {"code": 503, "message": "Service unavailable", "type": "service_unavailable_error"}}, headers={"Retry-After": "0"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen(provider)
    assert len(submits(setup, provider)) == 1 and "Service unavailable" in str(info.value)


@BOTH
def test_rate_limited_submit_then_success(setup, provider):
    script(setup, provider, created=[Reply(429, fixture("evolink/error_429.json"), headers={"Retry-After": "0"}), Reply(json=fixture(CREATED[provider]))])
    assert len(gen(provider).images) == 1 and len(submits(setup, provider)) == 2


# -- failed tasks and HTTP errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider, name", [("evolink", "evolink/failed_content_policy.json"), ("apimaster", "apimaster/failed.json")])
def test_content_policy_failure_is_a_safety_rejection(setup, provider, name):
    script(setup, provider, task=Reply(json=fixture(name)))
    with pytest.raises(SafetyRejected) as info:
        gen(provider)
    error = fixture(name).get("error") or fixture(name)["data"]["error"]
    assert info.value.reason == "content_policy_violation" and info.value.finish_message == error["message"]
    assert error["message"].splitlines()[0] in str(info.value)


def test_no_content_failure_is_no_image(setup):
    script(setup, "evolink", task=Reply(json=fixture("evolink/failed_no_content.json")))
    with pytest.raises(NoImageReturned) as info:
        gen("evolink")
    assert info.value.reason == "generation_failed_no_content" and "not charged" in info.value.finish_message


@pytest.mark.parametrize(
    "error, status, kind",
    [
        ({"code": "service_error", "message": "Upstream model error"}, "failed", UpstreamUnavailable),
        ({"code": "invalid_parameters", "message": "image_urls[0] could not be downloaded"}, "failed", InvalidRequest),
        ({"code": "generation_timeout", "message": "Generation timed out"}, "failed", TimedOut),
        (None, "cancelled", Cancelled),
        ("flat error text from a gateway", "failed", UpstreamUnavailable),
    ],
)
def test_other_task_failures(setup, error, status, kind):
    body = {"id": TASK_ID["evolink"], "status": status, "progress": 0}
    if error is not None:
        body["error"] = error
    script(setup, "evolink", task=Reply(json=body))
    with pytest.raises(kind) as info:
        gen("evolink")
    if error is not None:
        assert (error["message"] if isinstance(error, dict) else error) in str(info.value)


def test_completed_without_urls_is_no_image(setup):
    script(setup, "apimaster", task=Reply(json={"code": 200, "data": {"id": "t", "status": "completed", "result": {"images": []}}}))
    with pytest.raises(NoImageReturned):
        gen("apimaster")


@pytest.mark.parametrize(
    "name, kind, words",
    [
        ("evolink/error_401.json", AuthError, "Invalid or expired token"),
        ("evolink/error_402.json", QuotaOrRateLimited, "Insufficient quota"),
        ("evolink/error_400.json", InvalidRequest, "Invalid aspect_ratio parameter"),
    ],
)
def test_submit_errors_are_typed(setup, name, kind, words):
    status = fixture(name)["error"]["code"]
    script(setup, "evolink", created=Reply(status, fixture(name)))
    with pytest.raises(kind) as info:
        gen("evolink")
    assert words in str(info.value) and info.value.status == status and len(setup.requests) == 1


def test_expired_task_404_on_poll(setup):
    script(setup, "evolink", task=Reply(404, fixture("evolink/error_404.json")))
    with pytest.raises(InvalidRequest) as info:
        gen("evolink")
    assert "Task not found or expired" in str(info.value)


def test_error_wrapped_in_http_200(setup):
    script(setup, "apimaster", created=Reply(json={"code": 401, "msg": "invalid token"}))
    with pytest.raises(AuthError) as info:
        gen("apimaster")
    assert "invalid token" in str(info.value)


def test_poll_and_result_url_that_fail_once(setup):
    script(setup, "evolink", task=[Reply(502, {"error": {"code": 502, "message": "upstream_error", "type": "upstream_error"}}, headers={"Retry-After": "0"}), Reply(json=local(setup, DONE_ONE["evolink"]))])
    setup.route("GET", r"^/generated/", [Reply(503, body=b"busy", content_type="text/plain"), Reply(body=png_bytes(8, 4), content_type="image/png")])
    assert len(gen("evolink").images) == 1
    assert len(setup.hits("GET", TASK)) == 2 and len(setup.hits("GET", "^/generated/")) == 2


@pytest.mark.parametrize(
    "reply, words",
    [
        (Reply(200, body=b"<html><head><title>Just a moment...</title></head></html>", content_type="text/html"), "HTML page: Just a moment"),
        (Reply(200, body=b'{"code": 200, "data": {"status": "compl', content_type="application/json"), "Expected JSON"),
        (Reply(200, body=png_bytes(2, 2), content_type="image/png"), "image/png"),
    ],
    ids=["html", "truncated", "wrong-content-type"],
)
def test_malformed_poll_answers(setup, reply, words):
    script(setup, "apimaster", task=reply)
    with pytest.raises(MalformedResponse) as info:
        gen("apimaster")
    assert words in str(info.value)


def test_malformed_submit_answer(setup):
    script(setup, "evolink", created=Reply(json={"object": "image.generation.task", "status": "pending"}))
    with pytest.raises(MalformedResponse) as info:
        gen("evolink")
    assert "no task id" in str(info.value) and len(submits(setup, "evolink")) == 1


# -- references -------------------------------------------------------------------------------------------------


def test_apimaster_rejecting_inline_references_says_what_to_do(setup):
    script(setup, "apimaster", created=Reply(400, {"error": {"message": "image_urls must be valid http(s) URLs", "type": "invalid_request_error"}}))
    with pytest.raises(InvalidRequest) as info:
        gen("apimaster", images=(REF,))
    text = str(info.value)
    assert "public image URLs" in text and "image_urls must be valid http(s) URLs" in text and "text-to-image only" in text


def test_evolink_several_references_each_uploaded(setup):
    script(setup, "evolink")
    gen("evolink", "Nano Banana Pro", images=(REF, ImageInput(BLUE_PNG, "image/png", 1, 1)))
    body = submits(setup, "evolink")[0].json()
    assert body["image_urls"] == [f"{setup.url}/uploads/ref1.png", f"{setup.url}/uploads/ref2.png"]
    assert sorted(r.path for r in setup.hits("DELETE", "/files/")) == ["/files/file_1", "/files/file_2"]


@pytest.mark.parametrize("answer", [{"url": "URL"}, {"data": {"url": "URL"}}, {"data": {"download_url": "URL"}}])
def test_evolink_upload_answer_shapes(setup, answer):
    text = json.dumps(answer).replace("URL", "https://cdn.example/ref.png")
    script(setup, "evolink", upload=Reply(json=json.loads(text)))
    gen("evolink", images=(REF,))
    assert submits(setup, "evolink")[0].json()["image_urls"] == ["https://cdn.example/ref.png"]
    assert setup.hits("DELETE", "/files/") == []  # no file id, nothing to delete


def test_evolink_upload_refused(setup):
    script(setup, "evolink", upload=Reply(json={"success": False, "code": 400, "msg": "File quota exceeded (100/100)"}))
    with pytest.raises(UpstreamUnavailable) as info:
        gen("evolink", images=(REF,))
    assert "File quota exceeded (100/100)" in str(info.value) and submits(setup, "evolink") == []


def test_evolink_submit_refused_deletes_its_uploads(setup):
    script(setup, "evolink", created=Reply(400, fixture("evolink/error_400.json")))
    with pytest.raises(InvalidRequest):
        gen("evolink", images=(REF,))
    assert [r.path for r in setup.hits("DELETE", "/files/")] == ["/files/file_1"]


def test_too_many_references_for_evolink_pro(setup):
    with pytest.raises(InvalidRequest) as info:
        gen("evolink", "Nano Banana Pro", images=tuple(REF for _ in range(11)))
    assert "at most 10" in str(info.value) and setup.requests == []
