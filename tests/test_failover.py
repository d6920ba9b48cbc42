"""Several keys per provider and failover between providers (providers/failover.py), against the
loopback server: the order, key rotation on 429 and quota errors, and the calls that must never move
(maybe billed, refused, an accepted job). The report names provider and key slot, never the key."""

from __future__ import annotations

import json
import socket

import pytest
from banana_pack.nodes.batch import (
    FAILED,
    OK,
    REFUSED,
    BatchSettings,
    batch_report,
    expand_items,
    run_batch,
)
from banana_pack.providers import (
    ConfigError,
    GenerationRequest,
    QuotaOrRateLimited,
    UpstreamUnavailable,
)
from banana_pack.providers.config import api_keys_for, get_provider
from banana_pack.providers.engine import CallContext
from banana_pack.providers.failover import KEYS, fallback_chain, generate_with_failover
from helpers import run
from loopback import Recorded, Reply, fixture

GOOGLE_KEYS = ["AIza-first-key-0123456789", "AIza-second-key-0123456789", "AIza-third-key-0123456789"]
APIYI_KEY = "sk-apiyi-fallback-key-0123"
GEN = r":generateContent$"
RATE_LIMITED = {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}


@pytest.fixture(autouse=True)
def rested_keys():
    KEYS.clear()
    yield
    KEYS.clear()


@pytest.fixture
def providers(server, monkeypatch):
    """google (three keys) and apiyi (Gemini-compatible) on the loopback server, told apart by path."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", GOOGLE_KEYS[0])
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY_2", GOOGLE_KEYS[1])
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY_3", GOOGLE_KEYS[2])
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/google")
    monkeypatch.setenv("BANANA_APIYI_API_KEY", APIYI_KEY)
    monkeypatch.setenv("BANANA_APIYI_BASE_URL", server.url + "/apiyi")
    return server


def which(req: Recorded) -> str:
    """provider:slot of a request, from its path and key."""
    if req.path.startswith("/apiyi"):
        return "apiyi"
    return f"google:{GOOGLE_KEYS.index(req.headers['x-goog-api-key']) + 1}"


def answer(replies: dict[str, Reply]):
    """Reply per provider:slot (or provider); anything unlisted succeeds."""

    def handler(req: Recorded) -> Reply:
        who = which(req)
        return replies.get(who) or replies.get(who.split(":")[0]) or Reply(json=fixture("gemini/success_single.json"))

    return handler


def call(chain, **kw):
    attempts: list[dict] = []

    async def go():
        return await generate_with_failover(chain, "Nano Banana Pro", GenerationRequest(prompt="a tide pool"), CallContext(), attempts=attempts, **kw)

    result, served = run(go())
    return result, served, attempts


def test_keys_come_from_numbered_variables_or_a_list_in_the_keys_file(providers, monkeypatch, isolated_config):
    assert api_keys_for(get_provider("google")) == GOOGLE_KEYS
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "keys.json").write_text(json.dumps({"fal": ["fal-one:0123456789", "fal-two:0123456789"], "vydra": "vydra-single-0123456789"}))
    assert api_keys_for(get_provider("fal")) == ["fal-one:0123456789", "fal-two:0123456789"]
    assert api_keys_for(get_provider("vydra")) == ["vydra-single-0123456789"]
    monkeypatch.setenv("FAL_KEY", "fal-env:0123456789")  # the environment wins over the file, as before
    assert api_keys_for(get_provider("fal")) == ["fal-env:0123456789"]
    (isolated_config / "keys.json").write_text(json.dumps({"vydra": ["vydra-fine-0123456789", "bad key\u00a0with spaces"]}))
    with pytest.raises(ConfigError) as info:
        api_keys_for(get_provider("vydra"))
    assert "bad key" not in str(info.value)


def test_a_rate_limited_key_hands_over_to_the_next_and_rests(providers):
    providers.route("POST", GEN, answer({"google:1": Reply(429, RATE_LIMITED, headers={"Retry-After": "0"})}))
    result, served, attempts = call(["google"])
    assert (served.provider, served.key_slot) == ("google", 2) and len(result.images) == 1
    assert [(a["provider"], a["key_slot"], a["error"]) for a in attempts] == [("google", 1, "quota_or_rate")]
    assert {which(r) for r in providers.requests} == {"google:1", "google:2"}
    providers.requests.clear()
    _, served, attempts = call(["google"])  # the next call starts on the key that works
    assert served.key_slot == 2 and attempts == [] and [which(r) for r in providers.requests] == ["google:2"]


def test_an_exhausted_quota_moves_on_at_once(providers):
    daily = fixture("gemini/error_429.json")
    daily["error"]["details"][1]["violations"][0]["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel"
    providers.route("POST", GEN, answer({"google:1": Reply(429, daily), "google:2": Reply(429, daily)}))
    _, served, attempts = call(["google"])
    assert served.key_slot == 3
    assert [which(r) for r in providers.requests] == ["google:1", "google:2", "google:3"]  # not waited out, not retried
    assert [a["key_slot"] for a in attempts] == [1, 2]


def test_failover_follows_the_chain_in_order(providers):
    providers.route("POST", GEN, answer({"google": Reply(503, fixture("gemini/error_503.json"), headers={"Retry-After": "0"})}))
    _, served, attempts = call(["google", "apiyi"])
    assert served.provider == "apiyi" and served.key_slot == 1
    seen = [which(r) for r in providers.requests]
    assert seen[-1] == "apiyi" and set(seen[:-1]) == {"google:1"}  # 503 is not a key's fault: no rotation
    assert [(a["provider"], a["error"]) for a in attempts] == [("google", "upstream")]


def test_all_keys_limited_then_the_next_provider(providers):
    providers.route("POST", GEN, answer({"google": Reply(429, RATE_LIMITED, headers={"Retry-After": "0"})}))
    _, served, attempts = call(["google", "apiyi"])
    assert served.provider == "apiyi"
    assert [(a["provider"], a["key_slot"]) for a in attempts] == [("google", 1), ("google", 2), ("google", 3)]


def test_a_provider_that_never_answers_the_connect_is_skipped(providers, monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"http://127.0.0.1:{port}")
    providers.route("POST", GEN, answer({}))
    _, served, attempts = call(["google", "apiyi"])
    assert served.provider == "apiyi" and attempts[0]["provider"] == "google"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(drop=True),  # sent, no answer: it may have run
        Reply(500, body=b"", content_type="text/plain"),  # a failure the provider did not report
        Reply(200, body=b'{"candidates": [', content_type="application/json"),  # a cut-off answer: it ran
    ],
    ids=["connection-lost", "unreported-500", "truncated-200"],
)
def test_no_failover_after_a_call_that_may_have_been_billed(providers, reply):
    providers.route("POST", GEN, answer({"google": reply}))
    with pytest.raises(Exception) as info:
        call(["google", "apiyi"])
    assert getattr(info.value, "maybe_billed", False) or getattr(info.value, "unanswered", False)
    assert {which(r) for r in providers.requests} == {"google:1"}  # never sent to apiyi, nor with another key


def test_no_failover_on_a_refusal_unless_asked(providers):
    providers.route("POST", GEN, answer({"google": Reply(json=fixture("gemini/finish_image_safety.json"))}))
    with pytest.raises(Exception) as info:
        call(["google", "apiyi"])
    assert info.value.kind == "refused" and {which(r) for r in providers.requests} == {"google:1"}
    _, served, attempts = call(["google", "apiyi"], on_refusal=True)
    assert served.provider == "apiyi" and attempts[0]["error"] == "refused"


def test_an_accepted_job_is_never_moved(server, monkeypatch):
    """EvoLink accepts the job, then reports it failed: the fallback is not asked to pay again."""
    monkeypatch.setenv("BANANA_EVOLINK_API_KEY", "sk-evolink-failover-0123")
    monkeypatch.setenv("BANANA_EVOLINK_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("BANANA_EVOLINK_POLL_FIRST_DELAY", "0.01")
    monkeypatch.setenv("BANANA_APIYI_API_KEY", APIYI_KEY)
    monkeypatch.setenv("BANANA_APIYI_BASE_URL", server.url + "/apiyi")
    failed = fixture("evolink/processing.json")
    failed.update(status="failed", error={"code": "service_error", "message": "upstream busy"})
    server.route("POST", r"^/v1/images/generations$", Reply(json=fixture("evolink/create.json")))
    server.route("GET", r"^/v1/tasks/", Reply(json=failed))
    server.route("POST", GEN, Reply(json=fixture("gemini/success_single.json")))
    journaled = []
    with pytest.raises(UpstreamUnavailable):

        async def go():
            ctx = CallContext(on_task=journaled.append)
            return await generate_with_failover(["evolink", "apiyi"], "Nano Banana Pro", GenerationRequest(prompt="x"), ctx)

        run(go())
    assert not server.hits("POST", GEN)
    assert journaled and journaled[0]["_served_by"] == "evolink" and journaled[0]["_key_slot"] == 1


def test_auto_and_the_fallback_list_build_the_chain(providers, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-id:fal-secret-0123")
    assert fallback_chain("google", "google", "Nano Banana Pro") == []  # an explicit provider stays put
    auto = fallback_chain("auto", "google", "Nano Banana Pro")
    assert set(auto) == {"apiyi", "apiyi_chat", "fal"}  # every other provider with a key that offers the model
    monkeypatch.setenv("BANANA_FALLBACK", "fal, nosuch, apiyi, google")
    assert fallback_chain("google", "google", "Nano Banana Pro") == ["fal", "apiyi"]


def test_the_batch_report_names_provider_and_key_slot_never_the_key(providers, monkeypatch, tmp_path):
    providers.route("POST", GEN, answer({"google:1": Reply(429, RATE_LIMITED, headers={"Retry-After": "0"}), "google:2": Reply(503, fixture("gemini/error_503.json"), headers={"Retry-After": "0"})}))
    settings = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K", use_cache=False, fallback=("apiyi",))
    outcomes = run(run_batch(expand_items(["one", "two"], []), settings, store=None))
    assert [o.status for o in outcomes] == [OK, OK]
    report = batch_report(outcomes, settings)
    rows = report["items"]
    assert {(row["provider"], row["key_slot"]) for row in rows} <= {("apiyi", 1), ("google", 3)}
    assert any(row["failover"] for row in rows)
    text = json.dumps(report)
    assert not any(key in text for key in GOOGLE_KEYS + [APIYI_KEY])


def test_a_failed_item_lists_where_it_tried(providers, tmp_path):
    providers.route("POST", GEN, answer({"google": Reply(429, RATE_LIMITED, headers={"Retry-After": "0"}), "apiyi": Reply(json=fixture("gemini/finish_image_safety.json"))}))
    settings = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K", use_cache=False, fallback=("apiyi",))
    (outcome,) = run(run_batch(expand_items(["one"], []), settings, store=None))
    assert outcome.status == REFUSED
    assert [(a["provider"], a["key_slot"]) for a in outcome.failover] == [("google", 1), ("google", 2), ("google", 3)]
    assert FAILED != outcome.status and isinstance(outcome.error, Exception) and not isinstance(outcome.error, QuotaOrRateLimited)


def test_a_failed_asynchronous_submit_is_not_moved(server, monkeypatch):
    """A 503 to a submit could hide an accepted job (the billing rules do not resend it): no failover."""
    monkeypatch.setenv("BANANA_EVOLINK_API_KEY", "sk-evolink-failover-0123")
    monkeypatch.setenv("BANANA_EVOLINK_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("BANANA_APIYI_API_KEY", APIYI_KEY)
    monkeypatch.setenv("BANANA_APIYI_BASE_URL", server.url + "/apiyi")
    unavailable = {"error": {"code": 503, "message": "service unavailable", "type": "service_unavailable_error"}}
    server.route("POST", r"^/v1/images/generations$", Reply(503, unavailable, headers={"Retry-After": "0"}))
    server.route("POST", GEN, Reply(json=fixture("gemini/success_single.json")))

    async def go():
        return await generate_with_failover(["evolink", "apiyi"], "Nano Banana Pro", GenerationRequest(prompt="x"), CallContext())

    with pytest.raises(UpstreamUnavailable):
        run(go())
    assert len(server.hits("POST", r"^/v1/images/generations$")) == 1 and not server.hits("POST", GEN)
