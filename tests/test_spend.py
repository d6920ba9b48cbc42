"""The cost ledger, the spend guard and the dry run, through render() against the loopback server."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading

import pytest
from banana_pack.nodes.guard import SpendLimitReached
from banana_pack.nodes.ledger import (
    LEDGER_FILE,
    MAYBE_BILLED,
    OK,
    REFUSED,
    Ledger,
    LedgerEntry,
    today,
)
from banana_pack.nodes.render import Interrupted, RenderInputs, render
from banana_pack.providers.errors import ConfigError
from fake_providers import point_presets_at, script_all
from helpers import png_bytes, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"
KEY = "spend-test-key-0123456789"
PRO_1K = 0.134  # the catalog's list price of Nano Banana Pro at 1K


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    return server


def answer(req: Recorded) -> Reply:
    prompt = req.json()["contents"][0]["parts"][0]["text"]
    if prompt.startswith("refuse"):
        return Reply(json=fixture("gemini/refusal_text_only.json"))
    if prompt.startswith("lose"):
        return Reply(drop=True)  # the request arrived; the answer never comes back
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(4, 4)).decode()
    body["responseId"] = f"resp-{prompt}"
    return Reply(json=body)


def inputs(prompts, **kw) -> RenderInputs:
    kw.setdefault("provider", "google")
    kw.setdefault("model", "Nano Banana Pro")
    kw.setdefault("resolution", "1K")
    kw.setdefault("on_failure", "skip")
    return RenderInputs(prompts=prompts, prompt_per_line=True, **kw)


def rows(config_dir) -> list[dict]:
    return list(Ledger(config_dir / LEDGER_FILE).entries())


# -- the ledger ---------------------------------------------------------------------------------


def test_ledger_records_success_refusal_and_lost_answer_with_their_cost_sources(google, tmp_path, isolated_config):
    google.route("POST", GEN_PATH, answer)
    out = run(render(inputs(["ok one", "refuse two", "lose three"]), store_root=tmp_path / "out", prompt_id="prompt-42"))
    by_outcome = {r["outcome"]: r for r in rows(isolated_config)}
    assert set(by_outcome) == {OK, REFUSED, MAYBE_BILLED}
    ok = by_outcome[OK]
    # Billed by tokens: 14 prompt tokens at $2/1M and 1290 image tokens at $120/1M (success_single.json).
    assert ok["cost"] == pytest.approx((14 * 2 + 1290 * 120) / 1e6) and ok["cost_source"] == "tokens"
    assert ok["request_id"] == "resp-ok one" and ok["prompt_id"] == "prompt-42" and ok["images"] == 1
    assert (ok["provider"], ok["model"], ok["resolution"], ok["delivery"]) == ("google", "Nano Banana Pro", "1K", "now")
    refused = by_outcome[REFUSED]
    # A soft refusal's tokens are billed at the text rate: 287 prompt tokens at $2/1M, 31 at $12/1M.
    assert refused["cost"] == pytest.approx((287 * 2 + 31 * 12) / 1e6) and refused["cost_source"] == "tokens"
    lost = by_outcome[MAYBE_BILLED]
    assert lost["cost"] == pytest.approx(PRO_1K) and lost["cost_source"] == "list_price"
    assert all(r["prompt"] is None for r in by_outcome.values())  # no prompt text by default
    spend = out.report["spend"]
    assert spend["run"] == pytest.approx(ok["cost"] + refused["cost"] + lost["cost"]) == pytest.approx(spend["today"])
    assert out.report["items"][0]["cost_source"] == "tokens"


def test_keep_prompts_option_keeps_the_prompt_redacted(google, tmp_path, isolated_config, monkeypatch):
    monkeypatch.setenv("BANANA_LEDGER_PROMPTS", "1")
    google.route("POST", GEN_PATH, answer)
    run(render(inputs([f"ok with {KEY}"]), store_root=tmp_path))
    (row,) = rows(isolated_config)
    assert row["prompt"].startswith("ok with") and KEY not in row["prompt"]


def test_a_garbage_ledger_file_is_moved_aside_and_never_fails_a_run(google, tmp_path, isolated_config):
    isolated_config.mkdir(parents=True)
    (isolated_config / LEDGER_FILE).write_bytes(b"this is not a database" * 100)
    google.route("POST", GEN_PATH, answer)
    out = run(render(inputs(["ok"]), store_root=tmp_path))
    assert out.images.shape[0] == 1
    assert len(rows(isolated_config)) == 1
    assert list(isolated_config.glob(f"{LEDGER_FILE}.damaged-*"))


def test_tampered_rows_cannot_lower_the_spend(tmp_path):
    ledger = Ledger(tmp_path / LEDGER_FILE)
    ledger.record(LedgerEntry(provider="google", model="m", outcome=OK, cost=2.0))
    ledger.record(LedgerEntry(provider="google", model="m", outcome=OK, cost=float("nan")), LedgerEntry(provider="google", model="m", outcome=OK, cost=-50.0))
    with sqlite3.connect(tmp_path / LEDGER_FILE) as conn:  # someone edits the file by hand
        conn.execute("INSERT INTO calls (ts, day, provider, outcome, cost, unit) VALUES (0, ?, 'google', 'ok', 'free', 'usd')", (today(),))
        conn.execute("INSERT INTO calls (ts, day, provider, outcome, cost, unit) VALUES (0, ?, 'google', 'ok', -100, 'usd')", (today(),))
    assert ledger.spent(day=today()) == pytest.approx(2.0)


# -- the spend guard ----------------------------------------------------------------------------


def test_guard_refuses_before_any_request_and_names_limit_spend_and_estimate(google, tmp_path, isolated_config, monkeypatch):
    monkeypatch.setenv("BANANA_SPEND_LIMIT_DAY", "1.00")
    Ledger(isolated_config / LEDGER_FILE).record(LedgerEntry(provider="fal", model="Nano Banana Pro", outcome=OK, cost=0.70))
    google.route("POST", GEN_PATH, answer)
    with pytest.raises(SpendLimitReached) as caught:
        run(render(inputs(["ok a", "ok b", "ok c"]), store_root=tmp_path))
    message = str(caught.value)
    assert "daily limit" in message and "$1.00" in message and "BANANA_SPEND_LIMIT_DAY" in message
    assert "$0.70" in message and "$0.40" in message  # spent so far, and 3 x $0.134
    assert google.requests == []


def test_guard_lets_a_run_within_the_limit_through(google, tmp_path, monkeypatch):
    monkeypatch.setenv("BANANA_SPEND_LIMIT_DAY", "1.00")
    monkeypatch.setenv("BANANA_SPEND_LIMIT_RUN", "0.50")
    google.route("POST", GEN_PATH, answer)
    out = run(render(inputs(["ok a", "ok b", "ok c"]), store_root=tmp_path))
    assert out.images.shape[0] == 3 and len(google.requests) == 3


def test_run_limit_counts_every_node_of_the_same_workflow(google, tmp_path, monkeypatch):
    monkeypatch.setenv("BANANA_SPEND_LIMIT_RUN", "0.35")
    google.route("POST", GEN_PATH, answer)
    run(render(inputs(["ok a", "ok b"]), store_root=tmp_path, prompt_id="same-workflow"))
    with pytest.raises(SpendLimitReached, match="per-run limit"):
        run(render(inputs(["ok c"]), store_root=tmp_path, prompt_id="same-workflow"))
    assert len(google.requests) == 2
    run(render(inputs(["ok c"]), store_root=tmp_path, prompt_id="another-workflow"))  # a new run starts from zero
    assert len(google.requests) == 3


def test_per_provider_limit_from_providers_json(google, tmp_path, isolated_config):
    isolated_config.mkdir(parents=True)
    (isolated_config / "providers.json").write_text(json.dumps({"settings": {"google": {"spend_limit_day": 0.2}}, "spend_limits": {"day": 100}}))
    google.route("POST", GEN_PATH, answer)
    with pytest.raises(SpendLimitReached, match=r'limit for google of \$0.20 \(providers.json "settings"."google"."spend_limit_day"\)'):
        run(render(inputs(["ok a", "ok b"]), store_root=tmp_path))
    assert google.requests == []


def test_a_bad_limit_value_is_a_clear_config_error(google, tmp_path, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_SPEND_LIMIT_RUN", "ten dollars")
    with pytest.raises(ConfigError, match="BANANA_GOOGLE_SPEND_LIMIT_RUN must be a number"):
        run(render(inputs(["ok"]), store_root=tmp_path))
    assert google.requests == []


def test_an_unreadable_ledger_does_not_waive_a_limit(google, tmp_path, isolated_config, monkeypatch):
    monkeypatch.setenv("BANANA_SPEND_LIMIT_DAY", "5")
    isolated_config.mkdir(parents=True)
    (isolated_config / LEDGER_FILE).mkdir()  # a folder where the file should be: cannot be opened or moved aside
    with pytest.raises(ConfigError, match="Cannot check the daily limit") as refused:
        run(render(inputs(["ok"]), store_root=tmp_path))
    assert google.requests == []
    # The message reaches /history (any page that reaches ComfyUI reads it): the ledger by its
    # config-relative name, never its absolute path (home folder, user name).
    assert "$BANANA_CONFIG_DIR/ledger.sqlite3 cannot be read" in str(refused.value) and str(tmp_path) not in str(refused.value)


def test_a_limit_lowered_mid_run_does_not_abandon_work_in_flight(google, tmp_path, isolated_config, monkeypatch):
    import os

    monkeypatch.setenv("BANANA_SPEND_LIMIT_DAY", "10")

    def slow(req: Recorded) -> Reply:
        os.environ["BANANA_SPEND_LIMIT_DAY"] = "0.01"  # the limit drops while the calls are out
        reply = answer(req)
        reply.delay = 0.5
        return reply

    google.route("POST", GEN_PATH, slow)
    out = run(render(inputs(["ok a", "ok b", "ok c"]), store_root=tmp_path))
    assert out.images.shape[0] == 3 and len(rows(isolated_config)) == 3
    with pytest.raises(SpendLimitReached):  # the next run is refused
        run(render(inputs(["ok d"]), store_root=tmp_path))
    assert len(google.requests) == 3


# -- dry run ------------------------------------------------------------------------------------


def test_dry_run_sends_nothing_and_shows_each_exact_request_redacted(google, tmp_path):
    ref = png_bytes(64, 64)
    import torch

    image = torch.rand(1, 64, 64, 3)
    out = run(render(inputs(["ok a", "ok b"], images=[[image]], dry_run=True, seed=7), store_root=tmp_path))
    assert google.requests == []
    assert out.images is None  # the node turns this into an ExecutionBlocker: nothing downstream runs
    report = out.report
    assert report["dry_run"] is True and report["estimate"] == pytest.approx(2 * PRO_1K)
    call = report["calls"][0]
    request = call["request"]
    assert request["method"] == "POST" and request["url"] == f"{google.url}/models/gemini-3-pro-image-preview:generateContent"
    assert request["body"]["contents"][0]["parts"][0]["text"] == "ok a"
    assert request["body"]["generationConfig"]["seed"] == 7 and request["body"]["generationConfig"]["imageConfig"]["imageSize"] == "1K"
    summary = request["body"]["contents"][0]["parts"][1]["inline_data"]["data"]
    assert summary.startswith("<image:") and "bytes base64" in summary
    assert request["headers"]["x-goog-api-key"] == "<redacted>"
    text = out.text
    assert text.startswith("DRY RUN") and KEY not in text and KEY not in json.dumps(report) and ref.hex()[:32] not in text
    assert "within every spend limit" in report["spend_check"]
    assert not list(tmp_path.rglob("*.png"))


def test_dry_run_reports_the_guard_verdict_and_works_without_a_key(server, tmp_path, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    monkeypatch.delenv("BANANA_FAL_API_KEY")
    monkeypatch.setenv("BANANA_FAL_SPEND_LIMIT_RUN", "0.01")
    out = run(render(RenderInputs(prompts=["ok"], provider="fal", model="Nano Banana Pro", resolution="1K", dry_run=True), store_root=None))
    assert server.requests == []
    assert "per-run limit for fal" in out.report["spend_check"]
    assert out.report["calls"][0]["request"]["url"].endswith("/fal-ai/nano-banana-pro")
    assert "No API key" in out.text


def test_dry_run_of_every_preset_makes_zero_requests(server, tmp_path, monkeypatch):
    from fake_providers import PRESET_IDS

    point_presets_at(server, monkeypatch.setenv)
    monkeypatch.setenv("BANANA_VERTEX_PROJECT", "dry-run-project")  # Vertex builds its URL from the project
    script_all(server)
    for provider in PRESET_IDS:
        out = run(render(RenderInputs(prompts=["a cat"], provider=provider, model="Nano Banana", dry_run=True), store_root=tmp_path))
        assert out.report["calls"][0]["request"]["method"] in ("POST", "PUT"), provider
        shown = json.dumps(out.report) + out.text
        assert "PRIVATE KEY" not in shown and "key-for-" not in shown, provider  # no key, no service-account secret
    assert server.requests == []


def test_a_stop_while_the_provider_works_is_recorded_as_maybe_billed(google, tmp_path, isolated_config):
    """The request reached the provider, which generates (and bills) it whether or not we wait."""
    arrived = threading.Event()

    def slow(req: Recorded) -> Reply:
        arrived.set()
        return Reply(json=fixture("gemini/success_single.json"), delay=20)

    google.route("POST", GEN_PATH, slow)
    with pytest.raises(Interrupted) as info:
        run(render(inputs(["stopped mid-call"]), store_root=tmp_path / "out", cancel_check=arrived.is_set))
    (row,) = rows(isolated_config)
    assert row["outcome"] == MAYBE_BILLED and row["cost"] == pytest.approx(PRO_1K) and row["cost_source"] == "list_price"
    (item,) = info.value.report["items"]
    assert item["status"] == "cancelled" and "may have been processed and billed" in item["message"]
    assert len(google.hits("POST", GEN_PATH)) == 1


def test_a_stop_before_sending_costs_nothing(google, tmp_path, isolated_config):
    google.route("POST", GEN_PATH, answer)
    with pytest.raises(Interrupted):
        run(render(inputs(["never sent"]), store_root=tmp_path / "out", cancel_check=lambda: True))
    assert google.hits("POST", GEN_PATH) == [] and rows(isolated_config) == []
