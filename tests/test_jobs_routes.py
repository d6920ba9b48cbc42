"""The jobs & spend panel's handlers: journaled jobs with live batch status, cancel, spend per day."""

from __future__ import annotations

import json

import pytest
from banana_pack.nodes.jobs_routes import cancel_job, jobs_summary
from banana_pack.nodes.ledger import LEDGER_FILE, OK, Ledger, LedgerEntry, today
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.nodes.store import ResultStore
from banana_pack.providers.errors import BananaError
from fake_gemini_batch import PENDING, RUNNING, FakeBatchMode
from helpers import point_at, run


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "jobs-panel-key-0123456789")
    point_at(monkeypatch, "google", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "0.2")
    return server


def journal_a_batch(server, output) -> FakeBatchMode:
    fake = FakeBatchMode(server, states=[PENDING, RUNNING]).install()
    with pytest.raises(BananaError, match="still running"):
        run(render(RenderInputs(prompts=["cat 1\ncat 2"], prompt_per_line=True, provider="google", model="Nano Banana 2", delivery="batch"), store_root=output / "nano_banana_bridge"))
    return fake


def test_pending_batch_is_listed_with_googles_status_and_can_be_cancelled(google, tmp_path):
    output = tmp_path / "output"
    fake = journal_a_batch(google, output)
    (batch,) = fake.batches.values()
    summary = run(jobs_summary(base=output))
    (job,) = summary["jobs"]
    assert job["provider"] == "google" and job["task_id"] == batch.name and job["kind"] == "batch" and job["items"] == 2
    assert job["can_cancel"] and job["age_seconds"] is not None and job["age_seconds"] < 60
    assert job["status"].startswith("Batch running") and job["state"] == RUNNING

    status, answer = run(cancel_job({"id": job["id"]}, base=output))
    assert status == 200 and "stays journaled" in answer["message"]
    (cancel,) = google.hits("POST", r"^/batches/[\w-]+:cancel$")
    assert cancel.path == f"/{batch.name}:cancel" and cancel.headers["x-goog-api-key"] == "jobs-panel-key-0123456789"
    assert run(jobs_summary(base=output, with_status=False))["jobs"]  # still journaled for a re-queue


def test_planted_journal_files_are_skipped_and_ids_cannot_leave_the_output_folder(google, tmp_path):
    output = tmp_path / "output"
    root = output / "nano_banana_bridge"
    journal = root / ".journal"
    journal.mkdir(parents=True)
    # Anyone can write here through ComfyUI's upload route: none of these was signed by this install.
    (journal / ("a" * 64 + ".json")).write_text("not json")
    (journal / ("b" * 64 + ".json")).write_text(json.dumps({"handle": ["a", "list"], "provenance": "x"}))
    (journal / ("c" * 64 + ".json")).write_text(json.dumps({"handle": {"batch": "batches/x", "cancel_url": "https://evil.example/"}, "provenance": {"provider": "google"}}))
    assert run(jobs_summary(base=output))["jobs"] == []
    assert run(cancel_job({"id": "nano_banana_bridge/" + "c" * 64}, base=output))[0] == 404
    # A signed entry naming a provider that does not exist: listed, but nothing is sent anywhere.
    ResultStore(root).remember_task("d" * 64, {"batch": "batches/x", "keys": ["k"]}, {"provider": "no-such"})
    (job,) = run(jobs_summary(base=output))["jobs"]
    assert job["provider"] == "no-such" and "unavailable" in job["status"]
    status, _ = run(cancel_job({"id": job["id"]}, base=output))
    assert status == 502 and google.requests == []
    for bad in ("../nano_banana_bridge/" + "d" * 64, "nano_banana_bridge/../../x", "x", None, 5):
        assert run(cancel_job({"id": bad}, base=output))[0] == 404


def test_spend_per_day_and_provider_from_the_ledger(tmp_path, isolated_config):
    ledger = Ledger(isolated_config / LEDGER_FILE)
    ledger.record(
        LedgerEntry(provider="google", model="m", outcome=OK, cost=0.134),
        LedgerEntry(provider="google", model="m", outcome="refused", cost=0.001),
        LedgerEntry(provider="fal", model="m", outcome=OK, cost=0.15),
        LedgerEntry(provider="vydra", model="m", outcome=OK, cost=8, unit="credits"),
    )
    summary = run(jobs_summary(base=tmp_path / "empty"))
    assert summary["jobs"] == []
    rows = {(r["provider"], r["unit"]): r for r in summary["spend"]["days"]}
    assert rows[("google", "usd")]["calls"] == 2 and rows[("google", "usd")]["cost"] == pytest.approx(0.135) and rows[("google", "usd")]["refused"] == 1
    assert summary["spend"]["today"] == {"usd": pytest.approx(0.285), "credits": 8.0}
    assert all(r["day"] == today() for r in rows.values())


@pytest.mark.parametrize("ledger_state", ["readable", "unreadable"])
def test_the_panel_names_no_absolute_path(ledger_state, google, tmp_path, isolated_config, monkeypatch):
    """Any page that reaches ComfyUI reads GET /nano_banana_bridge/jobs (a DNS-rebinding page too): it
    gave the ledger's absolute path (the home folder, the user name), and an unreadable ledger's
    OSError named it again. Only the config-relative name (as the keys tab shows keys.json) is given."""
    output = tmp_path / "output"
    journal_a_batch(google, output)
    if ledger_state == "readable":
        Ledger().record(LedgerEntry(provider="google", model="m", outcome=OK, cost=0.1))
    else:  # a folder where the ledger's file should be
        (isolated_config / LEDGER_FILE).unlink(missing_ok=True)
        (isolated_config / LEDGER_FILE).mkdir()
    summary = run(jobs_summary(base=output))
    shown = json.dumps(summary)
    assert summary["jobs"] and str(tmp_path) not in shown and str(output) not in shown, shown
    spend = summary["spend"]
    assert spend["ledger"] == f"$BANANA_CONFIG_DIR/{LEDGER_FILE}"
    if ledger_state == "unreadable":
        assert spend["error"] and "$BANANA_CONFIG_DIR/ledger.sqlite3 cannot be read" in spend["error"], spend
