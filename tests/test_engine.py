"""The HTTP engine: timeouts, cancellation, the shared concurrency limit, status text, retries."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import pytest

from banana_pack.providers import CallContext, Cancelled, GenerationRequest, InvalidRequest, MalformedResponse, NoImageReturned, generate
from banana_pack.providers import QuotaOrRateLimited, SafetyRejected, TimedOut, UpstreamUnavailable
from banana_pack.providers.engine import Caller, HttpEngine, PollCadence, PollState, ProcessLimiter, RetryPolicy, get_engine, parse_error_body, retry_after_header
from helpers import UserStop, held_until, png_bytes, run
from loopback import Reply, fixture

GEN_PATH = r":generateContent$"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "engine-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    return server


def request(prompt="p"):
    return GenerationRequest(prompt=prompt)


def test_slow_server_hits_the_read_timeout_and_is_not_resent(google, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_TIMEOUT", "0.5")
    test_over = threading.Event()
    # The answer comes once the call is over: without its read timeout the call would end with this success.
    google.route("POST", GEN_PATH, held_until(test_over, Reply(json=fixture("gemini/success_single.json"))))
    try:
        with pytest.raises(TimedOut) as info:
            run(generate("google", "Nano Banana", request()))
    finally:
        test_over.set()
    assert "timeout" in str(info.value).lower()
    assert len(google.requests) == 1  # a generation that may still be billed is never resent


def test_cancel_check_stops_the_request_within_a_second(google):
    stop = UserStop()
    google.route("POST", GEN_PATH, stop.presses_while_answering(Reply(json=fixture("gemini/success_single.json"), delay=20)))
    assert run(stop.seconds_until(Cancelled, generate("google", "Nano Banana", request(), CallContext(cancel_check=stop.pressed.is_set)))) < 1.0


def test_cancelled_asyncio_task_stops_a_request_that_costs_nothing(google):
    """A poll or a download stops at once. (A paid generation in flight is awaited to its answer, so
    the answer is saved: tests/test_paid_once.py.)"""
    sent = threading.Event()
    google.route("GET", r"^/slow$", lambda _req: (sent.set(), Reply(json={}, delay=20))[1])

    async def scenario():
        task = asyncio.create_task(get_engine().request(CallContext(), Caller("google"), "GET", google.url + "/slow"))
        assert await asyncio.to_thread(sent.wait, 30)  # cancelled while the request is in flight, not before it left
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert run(scenario()) < 1.0


def test_concurrency_limit_is_shared_by_every_call(google, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_CONCURRENCY", "3")
    limit_reached = threading.Event()

    def held(_req):
        # Each answer waits until the limit's worth of calls is in flight (a fixed delay can end before a
        # loaded machine sends the third), then a little longer, so a call past the limit would overlap.
        if google.max_concurrent >= 3:
            limit_reached.set()
        limit_reached.wait(10)
        return Reply(json=fixture("gemini/success_single.json"), delay=0.3)

    google.route("POST", GEN_PATH, held)

    async def scenario():
        return await asyncio.gather(*(generate("google", "Nano Banana", request(f"p{i}")) for i in range(10)))

    results = run(scenario())
    assert len(results) == 10 and all(len(r.images) == 1 for r in results)
    assert google.max_concurrent == 3


def test_limit_holds_across_event_loops_in_threads():
    limiter = ProcessLimiter(2)
    lock = threading.Lock()
    active = peak = 0

    async def job():
        nonlocal active, peak
        async with limiter:
            with lock:
                active += 1
                peak = max(peak, active)
            await asyncio.sleep(0.05)
            with lock:
                active -= 1

    async def five_jobs():
        await asyncio.wait_for(asyncio.gather(*(job() for _ in range(5))), 10)

    def worker():
        asyncio.run(five_jobs())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2 and limiter.active == 0


def test_cancelled_waiter_does_not_leak_a_slot():
    async def scenario():
        limiter = ProcessLimiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limiter.release()
        await asyncio.wait_for(limiter.acquire(), 1)  # the slot is free again
        return limiter.active

    assert asyncio.run(scenario()) == 1


def test_status_text_about_once_a_second(google):
    lines: list[str] = []
    two_seconds = threading.Event()

    def on_status(line: str) -> None:
        lines.append(line)
        if line.endswith("(2s)"):
            two_seconds.set()

    def answer_once_two_seconds_were_reported(_req):  # not a fixed delay that a loaded machine stretches past 3 s
        two_seconds.wait(30)
        return Reply(json=fixture("gemini/success_single.json"))

    google.route("POST", GEN_PATH, answer_once_two_seconds_were_reported)
    run(generate("google", "Nano Banana", request(), CallContext(on_status=on_status)))
    assert all(line.startswith("Generating with Google Gemini API") for line in lines)
    seconds = [int(re.search(r"\((\d+)s\)$", line).group(1)) for line in lines]
    # Once a second, on whole seconds: never two lines for one second (a line per 0.2 s tick would repeat).
    assert 2 in seconds and seconds == sorted(set(seconds)), lines


def test_retry_after_http_date_and_seconds():
    import email.utils
    import httpx

    assert retry_after_header(httpx.Headers({"Retry-After": "7"})) == 7
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_header(httpx.Headers({"Retry-After": future})) <= 31
    assert retry_after_header(httpx.Headers({})) is None


def test_error_envelopes_are_read():
    google = parse_error_body(str(fixture("gemini/error_429.json")).replace("'", '"').encode())
    assert google.retry_after == 37 and "resource_exhausted" in google.code
    vydra = parse_error_body(b'{"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED", "retryAfter": 12}')
    assert vydra.message == "Rate limit exceeded" and vydra.retry_after == 12 and "rate_limit_exceeded" in vydra.code
    fal = parse_error_body(b'{"detail": [{"loc": ["body"], "msg": "Unsafe content", "type": "content_policy_violation"}]}')
    assert fal.message == "Unsafe content" and "content_policy_violation" in fal.code
    html = parse_error_body(b"<html><head><title>Bad Gateway</title></head></html>")
    assert html.message == "an HTML page: Bad Gateway instead of JSON"


def test_one_pooled_client_per_loop():
    async def scenario():
        engine = get_engine()
        first, second = engine.client(), engine.client()
        await engine.aclose()
        return first is second

    assert asyncio.run(scenario())


# -- error mapping: one taxonomy for every family ----------------------------------------------------


def mapped(status, body, provider="openai_hk"):
    from banana_pack.providers.engine import Caller, error_for_status

    return error_for_status(status, parse_error_body(json.dumps(body).encode()), Caller(provider=provider, model="m"))


@pytest.mark.parametrize(
    "stage, expected",
    [("input", "prompt_blocked"), ("output", "output_blocked")],
)
def test_moderation_stage_decides_the_safety_stage(stage, expected):
    body = fixture("openai_images/error_moderation.json")
    body["error"]["moderation_details"]["moderation_stage"] = stage
    error = mapped(400, body)
    assert isinstance(error, SafetyRejected) and error.stage == expected and error.reason == "moderation_blocked (other)"


def test_openrouter_403_with_moderation_metadata_is_a_refusal_not_auth():
    error = mapped(403, fixture("chat/error_403_moderation.json"))
    assert isinstance(error, SafetyRejected) and error.stage == "prompt_blocked" and error.reason == "sexual"


@pytest.mark.parametrize(
    "status, body",
    [
        (400, {"error": {"message": "Your request was rejected by our safety system.", "type": "invalid_request_error", "code": None}}),
        (400, {"error": "Prompt rejected by content moderation", "code": "INVALID_INPUT"}),
        (422, {"detail": [{"msg": "flagged by a content checker", "type": "content_policy_violation"}]}),
        (500, {"error": "Image generation failed (IMAGE_SAFETY). Credits have been refunded.", "code": "GENERATION_FAILED"}),
        (200, {"error": {"message": "blocked by the safety filter", "type": "new_api_error", "code": ""}}),
    ],
    ids=["openai-phrase", "vydra-phrase", "fal-code", "vydra-500", "new-api-200"],
)
def test_safety_from_codes_or_unambiguous_phrases_in_every_envelope(status, body):
    assert isinstance(mapped(status, body), SafetyRejected)


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "Unknown field safety_settings in request", "type": "invalid_request_error", "code": "invalid_value"}},
        {"error": {"message": "Invalid value for policy_id", "code": "invalid_value"}},
    ],
)
def test_words_that_merely_resemble_safety_are_no_refusal(body):
    assert type(mapped(400, body)) is InvalidRequest


def test_refusal_text_is_shown_once_and_kept_in_both_fields():
    body = fixture("openai_images/error_content_policy.json")
    error = mapped(400, body)
    said = body["error"]["message"]
    assert error.finish_message == said and error.provider_message == said
    assert str(error).count(said) == 1


@pytest.mark.parametrize(
    "status, body",
    [
        (429, {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": "insufficient_quota"}}),
        (403, {"error": {"message": "用户额度不足, 剩余额度: $0.000000", "type": "new_api_error", "code": "insufficient_user_quota"}}),
        (429, {"error": {"message": "余额不足", "type": "new_api_error", "code": ""}}),
        (429, {"error": {"message": "额度不足", "type": "new_api_error", "code": ""}}),
        (429, {"error": {"message": "Quota exhausted", "code": "quota_exceeded"}}),
        (429, {"error": {"message": "no money", "code": "insufficient_balance"}}),
        (400, {"error": {"message": "Insufficient credits", "code": "insufficient_credits"}}),
        (400, {"error": {"message": "Billing hard limit has been reached", "type": "invalid_request_error", "code": "billing_hard_limit_reached"}}),
        (402, {"error": "Insufficient credits", "creditsRequired": 15}),
    ],
)
def test_an_empty_balance_is_quota_and_final_whatever_the_status(status, body):
    error = mapped(status, body)
    assert isinstance(error, QuotaOrRateLimited) and error.exhausted and "out of credits" in str(error)


def test_google_per_minute_429_is_a_rate_limit_despite_its_quota_wording():
    error = mapped(429, fixture("gemini/error_429.json"), provider="google")
    assert isinstance(error, QuotaOrRateLimited) and not error.exhausted and error.retry_after == 37


def test_empty_balance_429_is_not_retried(google):
    google.route("POST", GEN_PATH, Reply(429, {"error": {"message": "余额不足", "code": "insufficient_balance"}}, headers={"Retry-After": "0"}))
    with pytest.raises(QuotaOrRateLimited):
        run(generate("google", "Nano Banana", request()))
    assert len(google.requests) == 1


def test_declared_generation_failure_is_no_image_and_not_retried(google):
    google.route("POST", GEN_PATH, Reply(500, {"error": "Image generation failed.", "code": "GENERATION_FAILED"}))
    with pytest.raises(NoImageReturned) as info:
        run(generate("google", "Nano Banana", request()))
    assert info.value.reason == "GENERATION_FAILED" and len(google.requests) == 1


# -- cancellation reaches loops of short steps; cleanup runs detached ------------------------------------


def test_cancel_is_seen_by_a_loop_of_steps_shorter_than_the_tick():
    engine = get_engine()
    flag = threading.Event()
    polls: list[float] = []

    async def check():
        polls.append(time.monotonic())
        if len(polls) == 4:
            flag.set()  # the user stops between two steps (each much shorter than the cancel tick)
        return PollState(False)

    async def scenario():
        ctx = CallContext(cancel_check=flag.is_set)
        await engine.poll(ctx, Caller("p"), check, cadence=PollCadence(first=0.01, every=0.01), max_wait=5)

    with pytest.raises(Cancelled):  # unseen, the loop would run on to max_wait's TimedOut
        run(scenario())
    assert len(polls) == 4  # seen before the next step, not after some later tick


def test_remote_cancel_runs_without_the_cancel_flag(server):
    server.route("POST", r"^/cancel$", Reply(json={}, delay=0.3))  # slower than a cancel-flag tick
    engine = get_engine()
    seen: list[bool] = []

    async def check():
        return PollState(False)

    async def cancel(ctx):
        seen.append(ctx.cancelled())
        await engine.request(ctx, Caller("p"), "POST", server.url + "/cancel")

    async def scenario():
        await engine.poll(CallContext(cancel_check=lambda: True), Caller("p"), check, cancel=cancel, cadence=PollCadence(first=0.01))

    with pytest.raises(Cancelled):
        run(scenario())
    assert seen == [False] and len(server.hits("POST", "^/cancel$")) == 1


# -- what the engine says about a failed request; raw bodies; downloads --------------------------------------


def test_a_connection_that_never_opened_is_marked_not_sent():
    import socket

    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    once = RetryPolicy(max_attempts=1)
    with pytest.raises(UpstreamUnavailable) as info:
        run(get_engine().request(CallContext(), Caller("p"), "POST", f"http://127.0.0.1:{port}/x", json_body={}, policy=once))
    assert info.value.sent is False and not info.value.unanswered


def test_a_lost_answer_is_marked_sent(server):
    server.route("POST", "^/x$", Reply(drop=True))
    with pytest.raises(UpstreamUnavailable) as info:
        run(get_engine().request(CallContext(), Caller("p"), "POST", server.url + "/x", json_body={}, policy=RetryPolicy(max_attempts=1, retry_network_errors=False)))
    assert info.value.sent is True and info.value.unanswered


def test_raw_content_with_custom_headers(server):
    server.route("PUT", "^/upload$", Reply(json={"ok": True}))
    response = run(get_engine().request(CallContext(), Caller("p"), "PUT", server.url + "/upload", content=b"\x89PNG raw", headers={"Content-Type": "image/png", "X-Token": "t"}))
    (req,) = server.requests
    assert response.json() == {"ok": True} and req.body == b"\x89PNG raw"
    assert req.headers["content-type"] == "image/png" and req.headers["x-token"] == "t"


def test_download_honours_retry_after(server, monkeypatch):
    server.route("GET", r"^/img\.png$", [Reply(429, {}, headers={"Retry-After": "0"}), Reply(body=png_bytes(2, 2), content_type="image/png")])
    chosen: list[float] = []
    backoff = HttpEngine._backoff
    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *args: chosen.append(backoff(*args)) or chosen[-1]))
    image = run(get_engine().fetch_image(CallContext(), Caller("p", base_url=server.url), server.url + "/img.png"))
    assert image.width == 2 and len(server.requests) == 2
    # The wait the engine chose (not wall time, which a loaded machine stretches): Retry-After 0 plus
    # at most 0.25 s of jitter, not the 0.5-1 s exponential backoff.
    assert len(chosen) == 1 and chosen[0] <= 0.25


def test_download_with_a_long_retry_after_is_reported_not_waited(server):
    server.route("GET", r"^/img\.png$", Reply(503, {}, headers={"Retry-After": "600"}))
    with pytest.raises(UpstreamUnavailable):
        run(get_engine().fetch_image(CallContext(), Caller("p", base_url=server.url), server.url + "/img.png"))
    assert len(server.requests) == 1


def test_download_over_the_size_limit(server):
    server.route("GET", r"^/big\.png$", Reply(body=png_bytes(64, 64), content_type="image/png"))
    with pytest.raises(MalformedResponse) as info:
        run(get_engine().fetch_image(CallContext(), Caller("p", base_url=server.url), server.url + "/big.png", max_bytes=100))
    assert "100-byte limit" in str(info.value)
