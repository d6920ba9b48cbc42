"""One test per row of the billing table (providers/engine/policy.py BILLING_RULES, README "Billing
and retries"): a synchronous generation is resent only where the provider provably did not process
it. Each test counts the POSTs the provider received and checks the count against the table.
"""

from __future__ import annotations

import socket
import threading

import pytest
from banana_pack.providers import (
    GenerationRequest,
    MalformedResponse,
    TimedOut,
    UpstreamUnavailable,
    generate,
)
from banana_pack.providers.engine import transport
from banana_pack.providers.engine.policy import (
    BILLING_RULES,
    GENERATE,
    MAYBE_BILLED,
    RULES_BY_OUTCOME,
    SUBMIT,
)
from banana_pack.providers.errors import BananaError, ConfigError
from helpers import run
from hostile import HostileServer, drop, redirect, reply, truncated
from loopback import fixture

KEY = "billing-test-google-key-0123456789"
GEN = r":generateContent$"
OK = fixture("gemini/success_single.json")
JSON_500 = {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}


@pytest.fixture
def google(monkeypatch):
    srv = HostileServer().start()
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", srv.url)
    monkeypatch.setattr(transport.HttpEngine, "_backoff", staticmethod(lambda *args: 0.0))
    yield srv
    srv.stop()


def gen():
    return run(generate("google", "Nano Banana", GenerationRequest(prompt="a cat")))


def expect(outcome: str) -> int:
    """POSTs the provider receives when the first answer ends so and the second succeeds."""
    return 2 if RULES_BY_OUTCOME[outcome].generate else 1


def assert_maybe_billed(error: BananaError, request_id: str | None = None) -> None:
    assert error.maybe_billed is True and "may have been processed and billed" in str(error)
    assert "NOT sent again" in str(error)
    if request_id:
        assert f"request id {request_id}" in str(error)


def test_the_table_says_what_the_issue_says():
    resent = {rule.outcome for rule in BILLING_RULES if rule.generate}
    assert resent == {"rate_limited", "reported_failure", "never_connected"}
    # rate_limited_may_bill: a 429 from a preset the catalog says may bill on arrival (tests/test_rate_limit_billing.py).
    assert MAYBE_BILLED == {"gateway_timeout", "unreported_failure", "read_timeout", "connection_lost", "truncated", "rate_limited_may_bill"}
    assert {rule.outcome for rule in BILLING_RULES if rule.submit} == {"rate_limited", "never_connected"}
    assert GENERATE.paid and SUBMIT.paid


# -- resent: the provider provably did not process it ---------------------------------------------


def test_429_is_resent(google):
    google.route("POST", GEN, reply(429, {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}, {"Retry-After": "0"}), reply(200, OK))
    assert len(gen().images) == 1
    assert google.count("POST") == expect("rate_limited") == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_the_provider_reports_as_failed_is_resent(google, status):
    google.route("POST", GEN, reply(status, JSON_500), reply(200, OK))
    assert len(gen().images) == 1
    assert google.count("POST") == expect("reported_failure") == 2


def test_a_connection_that_never_opened_is_resent(monkeypatch):
    # The port is closed at the first attempt and serving at the second.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"http://127.0.0.1:{port}")
    late: list[HostileServer] = []

    def backoff_then_open(*args):
        if not late:
            late.append(HostileServer(port).start())
            late[0].route("POST", GEN, reply(200, OK))
        return 0.0

    monkeypatch.setattr(transport.HttpEngine, "_backoff", staticmethod(backoff_then_open))
    try:
        assert len(gen().images) == 1
        assert late[0].count("POST") == 1 and expect("never_connected") == 2  # one refused connect, one POST
    finally:
        for srv in late:
            srv.stop()


# -- not resent: it may have been processed (and billed) ------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_without_the_providers_error_is_not_resent(google, status):
    page = b"<html><head><title>Bad Gateway</title></head></html>"
    google.route("POST", GEN, reply(status, raw=page, headers={"Content-Type": "text/html", "x-request-id": "req-5xx-1"}), reply(200, OK))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert google.count("POST") == expect("unreported_failure") == 1
    assert_maybe_billed(info.value, "req-5xx-1")


@pytest.mark.parametrize("status", [504, 524, 408])
def test_gateway_timeouts_are_not_resent(google, status):
    google.route("POST", GEN, reply(status, {"error": {"message": "timed out"}}, {"x-request-id": f"req-{status}"}), reply(200, OK))
    with pytest.raises(TimedOut) as info:
        gen()
    assert google.count("POST") == expect("gateway_timeout") == 1
    assert_maybe_billed(info.value, f"req-{status}")


def test_a_read_timeout_is_not_resent(google, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_TIMEOUT", "0.5")
    answered = threading.Event()

    def slow(wire):
        answered.wait(3)

    google.route("POST", GEN, slow, reply(200, OK))
    try:
        with pytest.raises(TimedOut) as info:
            gen()
    finally:
        answered.set()
    assert google.count("POST") == expect("read_timeout") == 1
    assert_maybe_billed(info.value)


def test_a_connection_lost_after_the_request_was_sent_is_not_resent(google):
    google.route("POST", GEN, drop(), reply(200, OK))
    with pytest.raises(UpstreamUnavailable) as info:
        gen()
    assert google.count("POST") == expect("connection_lost") == 1
    assert_maybe_billed(info.value)


def test_a_200_cut_off_in_transit_is_not_resent(google):
    google.route("POST", GEN, truncated(200, headers={"x-request-id": "req-cut-1"}), reply(200, OK))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert google.count("POST") == expect("truncated") == 1
    assert "cut off" in str(info.value)
    assert_maybe_billed(info.value, "req-cut-1")


def test_a_200_that_is_not_json_is_not_resent_and_may_be_billed(google):
    google.route("POST", GEN, reply(200, raw=b'{"candidates": [{"content": {"parts": [{"inlineData": {"data": "iVBO', headers={"x-request-id": "req-json-1"}), reply(200, OK))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert google.count("POST") == expect("truncated") == 1
    assert_maybe_billed(info.value, "req-json-1")


def test_a_redirect_is_not_followed_nor_resent(google):
    google.route("POST", GEN, redirect(307, google.url + "/elsewhere"), reply(200, OK))
    with pytest.raises(ConfigError):
        gen()
    assert google.count("POST") == expect("redirected") == 1 and google.count("POST", "elsewhere") == 0


def test_other_4xx_is_not_resent(google):
    google.route("POST", GEN, reply(400, {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}), reply(200, OK))
    with pytest.raises(BananaError) as info:
        gen()
    assert google.count("POST") == expect("other_status") == 1 and not info.value.maybe_billed


# -- the providers' retry hints -------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-should-retry", "X-Fal-Retryable"])
def test_a_hint_saying_false_forbids_a_resend(google, header):
    google.route("POST", GEN, reply(503, JSON_500, {header: "false"}), reply(200, OK))
    with pytest.raises(UpstreamUnavailable):
        gen()
    assert google.count("POST") == 1


def test_x_should_retry_true_allows_a_resend_the_table_would_not(google):
    google.route("POST", GEN, reply(504, {"error": {"message": "timed out"}}, {"x-should-retry": "true"}), reply(200, OK))
    assert len(gen().images) == 1 and google.count("POST") == 2


def test_google_retry_info_sets_the_wait(google, monkeypatch):
    waits: list = []
    monkeypatch.setattr(transport.HttpEngine, "_backoff", staticmethod(lambda attempt, policy, retry_after: waits.append(retry_after) or 0.0))
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}
    body = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [retry_info]}}
    google.route("POST", GEN, reply(429, body), reply(200, OK))
    gen()
    assert waits == [7.0] and google.count("POST") == 2
