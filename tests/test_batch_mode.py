"""Google Batch Mode (delivery "batch") through render() against a loopback fake of the batch API."""

from __future__ import annotations

import json

import pytest
from banana_pack.nodes.batch import CANCELLED, FAILED, OK, REFUSED
from banana_pack.nodes.batch_mode import run_key
from banana_pack.nodes.guard import SpendLimitReached
from banana_pack.nodes.ledger import LEDGER_FILE, Ledger
from banana_pack.nodes.render import Interrupted, RenderInputs, render
from banana_pack.providers.errors import BananaError, ConfigError
from fake_gemini_batch import CANCELLED as STATE_CANCELLED
from fake_gemini_batch import EXPIRED, PENDING, RUNNING, SUCCEEDED, FakeBatchMode
from fake_gemini_batch import FAILED as STATE_FAILED
from fake_providers import point_presets_at
from helpers import ProgressLines, point_at, run
from loopback import Reply

CREATE = r":batchGenerateContent$"
NB2_1K = 0.067  # list price of Nano Banana 2 at 1K; Batch Mode bills half


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "batch-mode-key-0123456789")
    point_at(monkeypatch, "google", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "20")  # a broken attach fails the test instead of hanging it
    return server


def inputs(prompts: list[str], **kw) -> RenderInputs:
    kw.setdefault("provider", "google")
    kw.setdefault("model", "Nano Banana 2")
    kw.setdefault("resolution", "1K")
    kw.setdefault("on_failure", "skip")
    return RenderInputs(prompts=["\n".join(prompts)], prompt_per_line=True, delivery="batch", **kw)


def ledger_rows(config_dir) -> list[dict]:
    return list(Ledger(config_dir / LEDGER_FILE).entries())


def test_one_inline_batch_mixed_answers_saved_and_billed_at_half_price(google, tmp_path, isolated_config):
    fake = FakeBatchMode(google, states=[PENDING, RUNNING, RUNNING, SUCCEEDED]).install()
    progress = ProgressLines()
    out = run(render(inputs(["cat 4", "refuse this", "error here", "dog 7"]), store_root=tmp_path, progress=progress, prompt_id="p-1"))
    (create,) = google.hits("POST", CREATE)
    assert create.path == "/models/gemini-3.1-flash-image-preview:batchGenerateContent"
    sent = create.json()["batch"]["inputConfig"]["requests"]["requests"]
    assert [r["request"]["contents"][0]["parts"][0]["text"] for r in sent] == ["cat 4", "refuse this", "error here", "dog 7"]
    assert sent[0]["request"]["generationConfig"]["imageConfig"]["imageSize"] == "1K"
    assert create.headers["x-goog-api-key"] == "batch-mode-key-0123456789"
    (batch,) = fake.batches.values()

    statuses = [row["status"] for row in out.report["items"]]
    assert statuses == [OK, REFUSED, FAILED, OK]
    assert out.images.shape[0] == 2 and [out.images.shape[2]] == [5]  # widths 5 and 8 resized to the first
    assert out.report["items"][2]["reason"] == "invalid_request" and "invalid argument" in out.report["items"][2]["message"]
    assert out.report["items"][1]["reason"] == "STOP"
    assert all(row["files"] for row in out.report["items"] if row["status"] == OK)
    saved = json.loads((tmp_path / out.report["items"][0]["files"][0]).with_suffix(".json").read_text())  # relative to the output folder
    assert saved["delivery"] == "batch" and saved["batch"] == batch.name
    assert any("answered" in line and "pending" in line for line in progress.lines)  # progress from batchStats
    # The journal entry is gone once every answer is saved.
    assert not list((tmp_path / ".journal").glob("*.json"))

    rows = {r["request_id"]: r for r in ledger_rows(isolated_config)}
    ok_rows = [r for r in rows.values() if r["outcome"] == "ok"]
    assert len(ok_rows) == 2 and all(r["delivery"] == "batch" and r["prompt_id"] == "p-1" for r in ok_rows)
    # Half of the token price: 14 prompt tokens at $0.50/1M and 1290 image tokens at $60/1M.
    assert ok_rows[0]["cost"] == pytest.approx((14 * 0.5 + 1290 * 60) / 1e6 / 2, abs=1e-6)  # kept to a millionth of a dollar
    assert [r["outcome"] for r in rows.values()].count("refused") == 1 and len(rows) == 3  # the failed request costs nothing


def test_attach_after_restart_never_submits_twice(google, tmp_path, monkeypatch):
    fake = FakeBatchMode(google, states=[PENDING, RUNNING]).install()
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "0.3")
    prompts = ["cat 1", "cat 2", "cat 3"]
    with pytest.raises(BananaError, match="still running at Google") as caught:  # gives up waiting; the batch runs on
        run(render(inputs(prompts), store_root=tmp_path))
    assert "queue the same run again" in str(caught.value)
    journal = list((tmp_path / ".journal").glob("*.json"))
    assert len(journal) == 1
    (batch,) = fake.batches.values()

    # "Restart": a new event loop and store on the same folder; Google finishes the batch meanwhile.
    batch.states = [SUCCEEDED]
    second = run(render(inputs(prompts), store_root=tmp_path))
    assert len(google.hits("POST", CREATE)) == 1
    assert [row["status"] for row in second.report["items"]] == [OK, OK, OK]
    assert [second.images.shape[0], second.images.shape[2]] == [3, 2]
    assert not list((tmp_path / ".journal").glob("*.json"))
    # A third run finds every result in the cache: no request at all.
    before = len(google.requests)
    third = run(render(inputs(prompts), store_root=tmp_path))
    assert len(google.requests) == before and {row["status"] for row in third.report["items"]} == {"cached"}


def test_a_requeue_with_another_save_to_attaches_to_the_batch_instead_of_creating_one(google, tmp_path, monkeypatch):
    """The batch is journaled in the first run's save folder; the user changes save_to and queues again.
    The re-queue looked only in its own folder's journal and created (and paid for) a second batch."""
    fake = FakeBatchMode(google, states=[PENDING, RUNNING]).install()
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "0.3")
    output = tmp_path / "output"
    prompts = ["cat 1", "cat 2"]
    with pytest.raises(BananaError, match="still running at Google"):
        run(render(inputs(prompts), store_root=output / "first", output_root=output))
    (entry,) = (output / "first" / ".journal").glob("*.json")
    (batch,) = fake.batches.values()
    batch.states = [SUCCEEDED]
    second = run(render(inputs(prompts), store_root=output / "second", output_root=output))
    assert len(google.hits("POST", CREATE)) == 1, "a second batch was created (and paid for)"
    assert [row["status"] for row in second.report["items"]] == [OK, OK]
    assert all(row["files"][0].startswith("second/") for row in second.report["items"])  # saved where the re-queue saves
    assert not entry.exists() and not list((output / "second" / ".journal").glob("*.json"))


def test_interrupt_cancels_the_batch_and_keeps_what_finished(google, tmp_path):
    fake = FakeBatchMode(google, states=[PENDING, RUNNING, RUNNING, RUNNING, RUNNING], partial=1).install()
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] = sum(b.polls for b in fake.batches.values())
        return polls["n"] >= 2

    with pytest.raises(Interrupted) as caught:
        run(render(inputs(["cat 1", "cat 2", "cat 3"]), store_root=tmp_path, cancel_check=stop))
    assert len(google.hits("POST", r"^/batches/[\w-]+:cancel$")) == 1
    items = caught.value.report["items"]
    assert [row["status"] for row in items] == [OK, CANCELLED, CANCELLED]
    assert items[0]["files"] and "cancelled at Google" in items[1]["message"]
    assert not list((tmp_path / ".journal").glob("*.json"))  # Google settled it (cancelled): nothing left to collect


def test_interrupt_before_google_settles_keeps_the_journal_for_a_requeue(google, tmp_path):
    fake = FakeBatchMode(google, states=[PENDING, RUNNING]).install()
    google.route("POST", r"^/batches/[\w-]+:cancel$", Reply(json={}))  # accepted, not yet applied
    with pytest.raises(Interrupted):
        run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path, cancel_check=lambda: sum(b.polls for b in fake.batches.values()) >= 1))
    assert len(list((tmp_path / ".journal").glob("*.json"))) == 1
    (batch,) = fake.batches.values()
    batch.states, batch.partial = [STATE_CANCELLED], 1  # Google cancels it, with the first answer finished
    again = run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path))
    assert [row["status"] for row in again.report["items"]] == [OK, FAILED]
    assert "BATCH_STATE_CANCELLED" in again.report["items"][1]["message"]
    assert len(google.hits("POST", CREATE)) == 1


def test_expired_batch_fails_its_unanswered_items(google, tmp_path):
    FakeBatchMode(google, states=[PENDING, EXPIRED], partial=1).install()
    out = run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path))
    assert [row["status"] for row in out.report["items"]] == [OK, FAILED]
    assert "BATCH_STATE_EXPIRED" in out.report["items"][1]["message"]


def test_failed_batch_reports_googles_error_under_the_failure_policy(google, tmp_path):
    FakeBatchMode(google, states=[PENDING, STATE_FAILED], batch_error={"code": 3, "message": "Batch input is malformed.", "status": "INVALID_ARGUMENT"}).install()
    with pytest.raises(BananaError, match="Batch input is malformed"):
        run(render(inputs(["cat 1", "cat 2"], on_failure="fail"), store_root=tmp_path))


def test_beyond_the_inline_limit_the_requests_go_as_a_jsonl_file(google, tmp_path, monkeypatch):
    fake = FakeBatchMode(google).install()
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_INLINE_BYTES", "200")
    out = run(render(inputs(["cat 1", "refuse 2", "cat 3"]), store_root=tmp_path))
    start, upload = google.hits("POST", r"^/upload/files$")
    assert start.headers["x-goog-upload-command"] == "start" and start.headers["x-goog-upload-protocol"] == "resumable"
    assert upload.headers["x-goog-upload-command"] == "upload, finalize" and upload.query.startswith("upload_id=")
    lines = [json.loads(line) for line in upload.body.splitlines()]
    assert [line["request"]["contents"][0]["parts"][0]["text"] for line in lines] == ["cat 1", "refuse 2", "cat 3"]
    (create,) = google.hits("POST", CREATE)
    assert create.json()["batch"]["inputConfig"]["fileName"].startswith("files/in-")
    assert len(google.hits("GET", r"^/download/files/")) == 1
    assert [row["status"] for row in out.report["items"]] == [OK, REFUSED, OK]
    assert len(google.hits("DELETE", r"^/files/in-")) == 1  # the uploaded requests file is cleaned up
    assert len(fake.batches) == 1


def test_batch_delivery_is_refused_for_providers_without_batch_mode(server, tmp_path, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    for provider in ("fal", "apiyi", "openai_hk"):
        with pytest.raises(ConfigError, match="does not offer"):
            run(render(inputs(["cat 1"], provider=provider, model="Nano Banana"), store_root=tmp_path))
    assert server.requests == []


def test_guard_checks_the_batch_estimate_at_half_price(google, tmp_path, monkeypatch):
    FakeBatchMode(google).install()
    monkeypatch.setenv("BANANA_SPEND_LIMIT_RUN", "0.1")  # 3 x $0.0335 = $0.1005 crosses it; 2 do not
    with pytest.raises(SpendLimitReached, match=r"\$0.10"):
        run(render(inputs(["cat 1", "cat 2", "cat 3"]), store_root=tmp_path))
    assert google.requests == []
    out = run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path))
    assert out.images.shape[0] == 2


def test_dry_run_in_batch_mode_sends_nothing(google, tmp_path):
    FakeBatchMode(google).install()
    out = run(render(inputs(["cat 1", "cat 2"], dry_run=True), store_root=tmp_path))
    assert google.requests == [] and out.images is None
    batch = out.report["batch_request"]
    assert batch["url"].endswith("/models/gemini-3.1-flash-image-preview:batchGenerateContent")
    assert len(batch["body"]["batch"]["inputConfig"]["requests"]["requests"]) == 2
    assert out.report["estimate"] == pytest.approx(2 * NB2_1K / 2)


def test_run_key_depends_on_every_item():
    assert run_key(["a", "b"]) != run_key(["b", "a"]) != run_key(["a"])


# -- checked against Google's own client (google-genai) ------------------------------------------


@pytest.fixture
def google_v1beta(server, monkeypatch):
    """The fake under /v1beta, where google-genai sends its requests."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "batch-mode-key-0123456789")
    point_at(monkeypatch, "google", f"{server.url}/v1beta")
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "20")
    return server


def sdk_client(server):
    from google import genai

    return genai.Client(api_key="sdk-key-0123456789", http_options={"base_url": server.url, "api_version": "v1beta"})


def test_our_batch_request_has_the_shape_google_genai_sends(google_v1beta, tmp_path):
    fake = FakeBatchMode(google_v1beta, prefix="/v1beta").install()
    client = sdk_client(google_v1beta)  # kept referenced: the SDK closes its HTTP client when collected
    client.batches.create(
        model="gemini-3.1-flash-image-preview",
        src=[{"contents": [{"parts": [{"text": "cat 1"}], "role": "user"}], "metadata": {"key": "item-0"}}],
        config={"display_name": "sdk-made"},
    )
    run(render(inputs(["cat 1"]), store_root=tmp_path))
    sdk_req, ours = google_v1beta.hits("POST", CREATE)
    assert sdk_req.path == ours.path == "/v1beta/models/gemini-3.1-flash-image-preview:batchGenerateContent"
    sdk_batch, our_batch = sdk_req.json()["batch"], ours.json()["batch"]
    assert set(our_batch) == set(sdk_batch) == {"displayName", "inputConfig"}
    sdk_entry, our_entry = sdk_batch["inputConfig"]["requests"]["requests"][0], our_batch["inputConfig"]["requests"]["requests"][0]
    assert set(our_entry) == set(sdk_entry) == {"request", "metadata"}
    assert our_entry["request"]["contents"] == sdk_entry["request"]["contents"]
    assert len(fake.batches) == 2


def test_google_genai_reads_the_fakes_answers_as_we_do(google_v1beta, tmp_path):
    fake = FakeBatchMode(google_v1beta, prefix="/v1beta", states=[SUCCEEDED]).install()
    out = run(render(inputs(["cat 1", "refuse 2", "error 3"]), store_root=tmp_path))
    (batch,) = fake.batches.values()
    client = sdk_client(google_v1beta)
    job = client.batches.get(name=batch.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.name == batch.name
    responses = job.dest.inlined_responses
    assert [r.metadata["key"] for r in responses] == [line[0] for line in batch.requests]
    sdk_kinds = ["refused" if r.response and not any(p.inline_data for p in r.response.candidates[0].content.parts or []) else "failed" if r.error else "ok" for r in responses]
    assert sdk_kinds == [row["status"] for row in out.report["items"]] == [OK, REFUSED, FAILED]


def test_a_lost_create_answer_is_never_resent_and_a_requeue_finds_the_batch_by_name(google, tmp_path):
    fake = FakeBatchMode(google, states=[RUNNING, SUCCEEDED], drop_create_answers=1).install()
    with pytest.raises(BananaError) as caught:
        run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path))
    assert caught.value.maybe_billed and "looks for the batch" in str(caught.value)
    assert len(google.hits("POST", CREATE)) == 1 and len(fake.batches) == 1  # sent once, and it exists at Google
    again = run(render(inputs(["cat 1", "cat 2"]), store_root=tmp_path))
    assert len(google.hits("POST", CREATE)) == 1 and len(google.hits("GET", r"^/batches$")) == 1
    assert [row["status"] for row in again.report["items"]] == [OK, OK]
    assert not list((tmp_path / ".journal").glob("*.json"))


def test_a_create_refused_with_an_error_leaves_no_journal(google, tmp_path):
    FakeBatchMode(google).install()
    google.route("POST", CREATE, Reply(400, {"error": {"code": 400, "message": "Batch mode is not available for this model.", "status": "INVALID_ARGUMENT"}}))
    with pytest.raises(BananaError, match="not available for this model"):
        run(render(inputs(["cat 1"]), store_root=tmp_path))
    assert not list((tmp_path / ".journal").glob("*.json"))
