"""A 429 from a reseller that bills a request when it arrives is not resent.

APIYI bills a synchronous call on receipt (providers.md 2.4: "disconnect = result lost but billed")
and documents its 429s as upstream capacity, without saying whether a 429 was billed (UNVERIFIED).
Its presets say so in the catalog (rate_limit_may_bill), and the engine sends such a request once:
the error says it may have been billed, with the request id. Everywhere else a 429 is resent.
"""

from __future__ import annotations

import json

import pytest
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import generate
from banana_pack.providers.errors import BananaError
from banana_pack.providers.outcome import GenerationRequest
from helpers import run
from loopback import Reply, fixture

BUSY = {"error": {"code": 429, "message": "upstream resources are tight, retry later", "type": "rate_limit_error"}}
PATHS = {"apiyi": r"^/apiyi/models/[^/]+:generateContent$", "apiyi_chat": r"^/apiyi_chat/chat/completions$", "google": r"^/google/models/[^/]+:generateContent$"}


@pytest.fixture
def presets(server, monkeypatch):
    from banana_pack.providers.engine.transport import HttpEngine
    from fake_providers import point_presets_at, script_all

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    return server


def answer_429_then_ok(server, provider: str, body: dict = BUSY) -> None:
    """The first request gets a 429 (with a request id), every later one the fake's own answer."""
    ok = fixture("gemini/success_single.json") if provider != "apiyi_chat" else None
    later = Reply(json=ok) if ok else None
    first = Reply(429, json=body, headers={"x-request-id": "req-429-apiyi", "Retry-After": "0"})
    if later is None:
        inline = fixture("gemini/success_single.json")["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
        later = Reply(json={"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": f"![x](data:image/png;base64,{inline})"}, "finish_reason": "stop"}]})
    server.route("POST", PATHS[provider], [first, later])


def call(provider: str):
    return run(generate(provider, "Nano Banana Pro", GenerationRequest(prompt="a red kite")))


def test_the_catalog_says_which_presets_may_bill_a_429():
    assert {spec.id for spec in PRESETS if spec.rate_limit_may_bill} == {"apiyi", "apiyi_chat"}


@pytest.mark.parametrize("provider", ["apiyi", "apiyi_chat"])
def test_a_429_from_a_reseller_that_bills_on_receipt_is_not_resent(presets, provider):
    """It used to be resent at once: if APIYI billed the 429'd request, the resend paid a second time."""
    answer_429_then_ok(presets, provider)
    with pytest.raises(BananaError) as caught:
        call(provider)
    assert len(presets.hits("POST", PATHS[provider])) == 1
    error = caught.value
    assert error.maybe_billed and error.status == 429
    said = str(error)
    assert "may have been processed and billed" in said and "NOT sent again" in said and "req-429-apiyi" in said


def test_google_429_is_still_resent(presets):
    answer_429_then_ok(presets, "google")
    assert len(call("google").images) == 1
    assert len(presets.hits("POST", PATHS["google"])) == 2


def test_an_empty_balance_429_is_not_called_maybe_billed(presets):
    """A 429 that says the balance is empty is no generation: reported at once, never billed."""
    empty = {"error": {"code": "insufficient_user_quota", "message": "user quota is not enough", "type": "new_api_error"}}
    answer_429_then_ok(presets, "apiyi", empty)
    with pytest.raises(BananaError) as caught:
        call("apiyi")
    assert len(presets.hits("POST", PATHS["apiyi"])) == 1
    assert not caught.value.maybe_billed


def test_a_user_who_knows_a_429_is_not_billed_can_turn_the_rule_off(presets, isolated_config):
    """providers.json settings: "rate_limit_may_bill": false for apiyi makes its 429 resent again."""
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "providers.json").write_text(json.dumps({"settings": {"apiyi": {"rate_limit_may_bill": False}}}))
    answer_429_then_ok(presets, "apiyi")
    assert len(call("apiyi").images) == 1
    assert len(presets.hits("POST", PATHS["apiyi"])) == 2


def test_a_429_that_may_be_billed_does_not_move_to_a_fallback_provider(presets):
    """Failing over would pay a second provider for a request the first may have billed."""
    from banana_pack.providers.engine import CallContext
    from banana_pack.providers.failover import generate_with_failover

    answer_429_then_ok(presets, "apiyi")
    with pytest.raises(BananaError) as caught:
        run(generate_with_failover(["apiyi", "google"], "Nano Banana Pro", GenerationRequest(prompt="a red kite"), CallContext()))
    assert caught.value.maybe_billed
    assert len(presets.hits("POST", PATHS["apiyi"])) == 1 and not presets.hits("POST", PATHS["google"])
