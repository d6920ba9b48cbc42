"""The HTTP engine: timeouts, cancellation, the shared concurrency limit, status text, retries."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from banana_pack.providers import CallContext, Cancelled, GenerationRequest, TimedOut, generate
from banana_pack.providers.engine import ProcessLimiter, get_engine, parse_error_body, retry_after_header
from helpers import run
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
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json"), delay=3))
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        run(generate("google", "Nano Banana", request()))
    assert time.monotonic() - started < 2.5
    assert "timeout" in str(info.value).lower()
    assert len(google.requests) == 1  # a generation that may still be billed is never resent


def test_cancel_check_stops_the_request_within_a_second(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json"), delay=20))
    flag = threading.Event()
    threading.Timer(0.5, flag.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run(generate("google", "Nano Banana", request(), CallContext(cancel_check=flag.is_set)))
    assert time.monotonic() - started < 1.5


def test_cancelled_asyncio_task_stops_the_request(google):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json"), delay=20))

    async def scenario():
        task = asyncio.create_task(generate("google", "Nano Banana", request()))
        await asyncio.sleep(0.4)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert run(scenario()) < 1.0


def test_concurrency_limit_is_shared_by_every_call(google, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_CONCURRENCY", "3")
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json"), delay=0.3))

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
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json"), delay=2.2))
    lines: list[str] = []
    run(generate("google", "Nano Banana", request(), CallContext(on_status=lines.append)))
    assert 2 <= len(lines) <= 4
    assert lines[0].startswith("Generating with Google Gemini API") and lines[-1].endswith("(2s)")


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
