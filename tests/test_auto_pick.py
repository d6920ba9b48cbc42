"""The provider widget's "auto -> <provider>" and the badge ask the server which provider "auto" will
use for the node's settings (nodes/auto_pick.py): the answer must be the provider a real run uses.

Runs go to the loopback fakes of every preset; the user's keys are the only thing that differs.
"""

from __future__ import annotations

import asyncio
import shutil
import json

import pytest

from banana_pack.nodes.auto_pick import MAX_BODY, auto_pick
from banana_pack.nodes.key_routes import guarded_query
from banana_pack.nodes.catalog_view import model_label
from banana_pack.nodes.option_specs import resolve_options
from banana_pack.nodes.render import RenderInputs, render, request_options
from banana_pack.nodes.routes import catalog_summary
from banana_pack.providers.config import env_name
from fake_providers import key_for
from helpers import run
from test_shared_workflow import only_key


def pick(**settings) -> dict:
    status, answer = auto_pick({"model": "Nano Banana 2", **settings})
    assert status == 200
    return answer


def ran_on(out) -> list[str]:
    return [item["provider"] for item in out.report["items"]]


def test_a_conversation_makes_auto_use_the_chat_preset_and_the_route_says_so(server, monkeypatch, tmp_path):
    only_key(server, monkeypatch, "openai_hk")
    assert catalog_summary()["auto"]["Nano Banana 2"] == "openai_hk"  # by model alone
    assert pick() == {"model": "Nano Banana 2", "provider": "openai_hk"}
    answer = pick(conversation=True)
    assert answer["provider"] == "openai_hk_chat"

    store = tmp_path / "store"
    first = run(render(RenderInputs(prompts=["a paper boat"], provider="openai_hk", model="Nano Banana 2", store_folder="s"), store_root=store))
    second = RenderInputs(prompts=["now make it red"], provider="auto", model="Nano Banana 2", conversation=first.conversation, conversation_root=store, store_folder="s")
    assert ran_on(run(render(second, store_root=store))) == [answer["provider"]]


@pytest.mark.parametrize(
    ("keys", "order", "options", "expected"),
    [
        (("openai_hk",), "", {"thinking_level": "HIGH"}, "openai_hk_fal"),  # the same key's fal passthrough thinks
        (("openai_hk", "google"), "openai_hk", {"thinking_level": "HIGH", "system_prompt": "Keep the style flat."}, "google"),
    ],
)
def test_an_option_moves_auto_and_the_route_names_where_the_run_goes(server, monkeypatch, keys, order, options, expected):
    only_key(server, monkeypatch, keys[0])
    for owner in keys[1:]:
        monkeypatch.setenv(env_name(owner, "API_KEY"), key_for(owner))
    if order:
        monkeypatch.setenv("BANANA_PROVIDER_ORDER", order)
    assert pick()["provider"] == keys[0]  # without the option: the first keyed one, as the catalog says
    answer = pick(options=options)
    assert answer["provider"] == expected
    inputs = RenderInputs(prompts=["a paper boat"], provider="auto", model="Nano Banana 2", **request_options(resolve_options(options)))
    assert ran_on(run(render(inputs, store_root=None))) == [expected]


def test_batch_delivery_references_and_resolution_count(server, monkeypatch):
    only_key(server, monkeypatch, "openai_hk")
    monkeypatch.setenv(env_name("google", "API_KEY"), key_for("google"))
    monkeypatch.setenv("BANANA_PROVIDER_ORDER", "openai_hk")
    assert pick(options={"delivery": "batch"})["provider"] == "google"  # Batch Mode is Google's
    assert pick(references=3)["provider"] == "openai_hk"
    too_many = pick(references=15)
    assert too_many["provider"] is None and too_many["reason"] == "unfit" and "at most 14" in too_many["error"]


def test_no_key_and_bad_values_are_answers_not_errors(monkeypatch):
    assert pick() == {"model": "Nano Banana 2", "provider": None, "reason": "no_key", "error": "No API key is set for any provider."}
    monkeypatch.setenv("FAL_KEY", "fal-secret-key-0123456789")
    bad = pick(options={"temperature": "hot"})
    assert bad["provider"] is None and bad["reason"] == "invalid" and "temperature" in bad["error"]
    assert pick(seed=-1)["reason"] == "invalid"
    assert auto_pick({"model": "Nano Banana 9"})[1]["reason"] == "invalid"
    assert auto_pick(["not", "an", "object"])[0] == 400
    # Wrong types and sizes are refused or ignored, never a traceback: the body is a workflow's.
    for hostile in ({"model": "Nano Banana 2", "references": "many"}, {"model": "Nano Banana 2", "references": 10**9}, {"model": "Nano Banana 2", "aspect_ratio": ["1:1"]},
                    {"model": "Nano Banana 2", "options": "x"}, {"model": "Nano Banana 2", "conversation": "yes", "resolution": 4}):
        status, answer = auto_pick(hostile)
        assert status == 200 and set(answer) >= {"model", "provider"}
    echoed = pick(aspect_ratio="9" * 5000)
    assert echoed["provider"] is None and len(echoed["error"]) <= 300


def test_the_answer_holds_no_key_and_no_absolute_path(monkeypatch, isolated_config):
    key = "fal-secret-key-0123456789"
    monkeypatch.setenv("FAL_KEY", key)
    for settings in ({}, {"options": {"thinking_level": "HIGH", "model_id_override": key}}, {"options": {"safety_harassment": "BLOCK_NONE"}}, {"conversation": True}):
        text = json.dumps(pick(**settings))
        assert key not in text and str(isolated_config) not in text and "/tmp" not in text


# -- the HTTP side: guarded like the pack's other routes ------------------------------------------


class FakeContent:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    async def read(self, limit: int) -> bytes:
        return self.raw[:limit]


class FakeRequest:
    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.content, self.headers, self.remote = FakeContent(body), headers, "127.0.0.1"


class FakeWeb:
    @staticmethod
    def json_response(body, status, headers):
        return status, body, headers


def ask(body: bytes, **headers) -> tuple[int, dict]:
    headers = {"Host": "127.0.0.1:8188", "Content-Type": "application/json", **headers}
    status, answer, sent = asyncio.run(guarded_query(FakeWeb, FakeRequest(body, headers), auto_pick, MAX_BODY))
    assert sent["Cache-Control"] == "no-store"
    return status, answer


def test_the_route_refuses_other_sites_non_json_and_large_bodies(monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-secret-key-0123456789")
    body = json.dumps({"model": "Nano Banana 2"}).encode()
    assert ask(body) == (200, {"model": "Nano Banana 2", "provider": "fal"})
    assert ask(body, Origin="http://127.0.0.1:8188")[0] == 200  # the page itself
    assert ask(body, Origin="https://evil.example")[0] == 403
    assert ask(body, **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert ask(body, **{"Content-Type": "text/plain"})[0] == 415  # what a form on another site could send
    assert ask(b" " * (MAX_BODY + 1))[0] == 400
    assert ask(b"[" * 5000 + b"]" * 5000) == (400, {"error": f"Send a JSON body of at most {MAX_BODY} bytes."})  # nesting deeper than the parser goes
    assert ask(b"{not json")[0] == 400


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_badge_prices_the_provider_the_run_uses(server, monkeypatch):
    """The badge given the route's answer shows the price the run's report gives (the frontend's badgeFor, run by node)."""
    from test_badge_matches_report import badge  # imported here: that module skips itself without node

    only_key(server, monkeypatch, "fal")
    monkeypatch.setenv(env_name("google", "API_KEY"), key_for("google"))
    monkeypatch.setenv("BANANA_PROVIDER_ORDER", "fal")
    options = {"safety_harassment": "BLOCK_ONLY_HIGH", "use_cache": False}  # fal takes no safety settings
    answer = pick(options=options)
    settings = {"providerId": "auto", "model": model_label("Nano Banana 2"), "resolution": "1K", "count": 1, "promptText": "a paper boat"}
    by_model, shown = badge(**settings), badge(**settings, autoPick=answer)
    inputs = RenderInputs(prompts=["a paper boat"], provider="auto", model="Nano Banana 2", resolution="1K", **request_options(resolve_options(options)))
    out = run(render(inputs, store_root=None))
    assert ran_on(out) == [answer["provider"]] == ["google"]
    assert out.report["cost"] == pytest.approx(shown["total"], rel=0.01) and out.report["cost_unit"] == shown["unit"] == "usd"
    assert by_model["total"] == pytest.approx(0.08) and shown["total"] == pytest.approx(0.067)  # by model alone it showed fal's price
