"""Batch runs against the loopback server: order, policies, saving on arrival, cache, interrupts."""

from __future__ import annotations

import json
import random
import threading

import pytest

from banana_pack.nodes.batch import (
    CACHED,
    CANCELLED,
    FAILED,
    OK,
    REFUSED,
    BatchFailed,
    BatchSettings,
    batch_report,
    expand_items,
    run_batch,
    settle,
    split_prompts,
)
from banana_pack.nodes.store import ResultStore
from banana_pack.providers import SafetyRejected
from banana_pack.providers.outcome import ImageInput
from helpers import fal_submit, png_bytes, point_at, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"
SETTINGS = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K")


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "batch-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_CONCURRENCY", "8")
    return server


def image_reply_for_prompt(width_of_prompt=None, delay_of_prompt=None):
    """A handler that draws an image whose width encodes the prompt, so order can be checked."""

    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        if prompt.startswith("refuse"):
            return Reply(json=fixture("gemini/finish_image_safety.json"), delay=(delay_of_prompt or (lambda p: 0))(prompt))
        body = fixture("gemini/success_single.json")
        width = (width_of_prompt or (lambda p: int(p.split()[-1]) + 1))(prompt)
        import base64

        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(width, 2)).decode()
        return Reply(json=body, delay=(delay_of_prompt or (lambda p: 0))(prompt))

    return handler


def test_expand_items_prompts_count_and_per_image():
    ref = ImageInput(b"r", "image/png", 1, 1)
    a, b = ImageInput(b"a", "image/png", 1, 1), ImageInput(b"b", "image/png", 1, 1)
    items = expand_items(["p1", "p2"], [ref], per_image=[a, b], count=3, seed=10, max_count=2)
    assert [(i.prompt, i.images[0].data, i.seed, i.count) for i in items] == [
        ("p1", b"a", 10, 2), ("p1", b"a", 11, 1), ("p1", b"b", 10, 2), ("p1", b"b", 11, 1),
        ("p2", b"a", 10, 2), ("p2", b"a", 11, 1), ("p2", b"b", 10, 2), ("p2", b"b", 11, 1),
    ]
    assert all(i.images[1] is ref for i in items) and [i.index for i in items] == list(range(8))
    assert [i.seed for i in expand_items(["p"], [], count=3, seed=5)] == [5, 6, 7]
    assert split_prompts(" a \n\n b\n", per_line=True) == ["a", "b"] and split_prompts("a\nb", per_line=False) == ["a\nb"]


def test_outputs_keep_input_order_whatever_order_they_finish(google, tmp_path):
    rng = random.Random(7)
    delays = {f"prompt {i}": rng.uniform(0, 0.4) for i in range(12)}
    answer = image_reply_for_prompt(delay_of_prompt=lambda p: delays[p])
    overlapping = threading.Event()

    def once_two_run_at_once(req: Recorded) -> Reply:
        # Answers wait until two calls are in flight (a starved client could otherwise send each one
        # after the last was answered), then come in the shuffled order of their delays.
        if google.max_concurrent > 1:
            overlapping.set()
        overlapping.wait(5)
        return answer(req)

    google.route("POST", GEN_PATH, once_two_run_at_once)
    items = expand_items(list(delays), [])
    outcomes = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))
    assert [o.images[0].width for o in outcomes] == [i + 1 for i in range(12)]
    assert [o.index for o in outcomes] == list(range(12)) and all(o.status == OK for o in outcomes)
    assert google.max_concurrent > 1  # they really ran at once


def test_mixed_refusals_and_successes_and_each_policy(google, tmp_path):
    google.route("POST", GEN_PATH, image_reply_for_prompt())
    items = expand_items(["ok 1", "refuse me", "ok 3"], [])
    outcomes = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))
    assert [o.status for o in outcomes] == [OK, REFUSED, OK]
    refused = outcomes[1]
    assert refused.reason == "IMAGE_SAFETY" and "Unable to show the generated image" in refused.message
    assert [o.index for o in settle(outcomes, "skip")] == [0, 2] and [o.index for o in settle(outcomes, "flag")] == [0, 2]
    with pytest.raises(BatchFailed) as info:
        settle(outcomes, "fail")
    assert "1 of 3 items" in str(info.value) and "IMAGE_SAFETY" in str(info.value) and "2 finished image(s) are saved" in str(info.value)
    report = batch_report(outcomes, SETTINGS)
    assert report["counts"] == {OK: 2, REFUSED: 1}
    assert [row["status"] for row in report["items"]] == [OK, REFUSED, OK]
    assert json.loads(json.dumps(report))["items"][1]["reason"] == "IMAGE_SAFETY"


def test_all_failed_is_an_error_under_every_policy(google, tmp_path):
    google.route("POST", GEN_PATH, Reply(json=fixture("gemini/finish_image_safety.json")))
    outcomes = run(run_batch(expand_items(["refuse a", "refuse b"], []), SETTINGS, store=None))
    for policy in ("fail", "skip", "flag"):
        with pytest.raises(BatchFailed):
            settle(outcomes, policy)
    single = run(run_batch(expand_items(["refuse"], []), SETTINGS, store=None))
    with pytest.raises(SafetyRejected):  # one call: its own typed error
        settle(single, "skip")


def test_every_image_saved_with_sidecar_and_no_secret(google, tmp_path):
    google.route("POST", GEN_PATH, image_reply_for_prompt())
    outcomes = run(run_batch(expand_items(["cat 4"], []), SETTINGS, store=ResultStore(tmp_path)))
    (path,) = outcomes[0].files
    saved = (tmp_path / path).read_bytes()  # report paths are relative to the output folder (here: the store's root)
    assert saved == outcomes[0].images[0].data  # the provider's original bytes
    sidecar = json.loads((tmp_path / path).with_suffix(".json").read_text())
    assert sidecar["provider"] == "google" and sidecar["prompt"] == "cat 4" and sidecar["model"] == "Nano Banana Pro"
    assert sidecar["request_id"] == "DrZkaeGZJdeez7IP_Om04A8" and sidecar["resolution"] == "1K"
    assert "batch-test-key-123" not in "".join(p.read_text() for p in tmp_path.rglob("*.json"))


def test_cache_hit_after_restart_makes_zero_calls(google, tmp_path):
    google.route("POST", GEN_PATH, image_reply_for_prompt())
    items = expand_items(["cat 2", "dog 3"], [ImageInput(png_bytes(3, 3), "image/png", 3, 3)], seed=1)
    first = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))
    calls = len(google.requests)
    again = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))  # a new store object: as after a restart
    assert len(google.requests) == calls == 2
    assert [o.status for o in again] == [CACHED, CACHED]
    assert [o.images[0].data for o in again] == [o.images[0].data for o in first]
    changed_seed = expand_items(["cat 2"], [], seed=2)
    run(run_batch(changed_seed, SETTINGS, store=ResultStore(tmp_path)))
    assert len(google.requests) == 3  # a different seed is a different request
    bypass = run(run_batch(items[:1], BatchSettings(**{**SETTINGS.__dict__, "use_cache": False}), store=ResultStore(tmp_path)))
    assert bypass[0].status == OK and len(google.requests) == 4


def test_damaged_cache_entry_runs_again(google, tmp_path):
    google.route("POST", GEN_PATH, image_reply_for_prompt())
    items = expand_items(["cat 2"], [])
    (first,) = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))
    (tmp_path / first.files[0]).write_bytes(b"not an image")
    (again,) = run(run_batch(items, SETTINGS, store=ResultStore(tmp_path)))
    assert again.status == OK and len(google.requests) == 2


def test_interrupt_mid_batch_keeps_finished_results(google, tmp_path):
    google.route("POST", GEN_PATH, image_reply_for_prompt(delay_of_prompt=lambda p: 0 if p.startswith("fast") else 30))
    stop = threading.Event()
    store = ResultStore(tmp_path)

    def on_update(progress):
        if progress.done == 2:
            stop.set()

    items = expand_items(["fast 1", "slow 2", "fast 3", "slow 4"], [])
    outcomes = run(run_batch(items, SETTINGS, store=store, cancel_check=stop.is_set, on_update=on_update))
    assert [o.status for o in outcomes] == [OK, CANCELLED, OK, CANCELLED]
    assert all(len(o.files) == 1 and (tmp_path / o.files[0]).read_bytes() for o in outcomes if o.status == OK)
    report_path = store.save_report(batch_report(outcomes, SETTINGS))
    assert json.loads(report_path.read_text())["counts"] == {OK: 2, CANCELLED: 2}


def test_failed_item_reports_kind(google, tmp_path):
    google.route("POST", GEN_PATH, Reply(400, fixture("gemini/error_400.json")))
    (outcome,) = run(run_batch(expand_items(["x"], []), SETTINGS, store=None))
    assert outcome.status == FAILED and outcome.reason == "invalid_request" and "invalid argument" in outcome.message


def test_journaled_async_job_is_reattached_after_restart_not_resubmitted(server, monkeypatch, tmp_path):
    """A job accepted before a crash is finished by the next run, without paying for it again."""
    monkeypatch.setenv("FAL_KEY", "fal-journal-key:secret-123")
    point_at(monkeypatch, "fal", server.url)
    rid = "job-0001"
    app = "fal-ai/nano-banana-pro"
    server.route("POST", rf"^/{app}$", Reply(json=fal_submit(server.url, rid, app)))
    server.route("GET", rf"/requests/{rid}/status$", Reply(202, fixture("fal/status_in_progress.json")))
    server.route("PUT", rf"/requests/{rid}/cancel$", Reply(400, {"detail": "already processing"}))
    store = ResultStore(tmp_path)
    settings = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")
    items = expand_items(["a lighthouse"], [], seed=9)

    async def crash_after_journal():
        import asyncio

        task = asyncio.create_task(run_batch(items, settings, store=store))
        while not list((tmp_path / ".journal").glob("*.json")):
            await asyncio.sleep(0.02)
        task.cancel()  # the process dies while the job is still running at fal
        await asyncio.gather(task, return_exceptions=True)

    run(crash_after_journal())
    assert len(server.hits("POST", app)) == 1
    (journal,) = (tmp_path / ".journal").glob("*.json")
    assert json.loads(journal.read_text())["body"]["handle"]

    # After the restart the job has finished at fal.
    result = fixture("fal/result_single.json")
    result["images"][0]["url"] = f"{server.url}/files/out.png"
    server.route("GET", rf"/requests/{rid}/status$", Reply(json=fixture("fal/status_completed.json")))
    server.route("GET", rf"/requests/{rid}$", Reply(json=result))
    server.route("GET", r"^/files/out\.png$", Reply(body=png_bytes(7, 5), content_type="image/png"))
    (outcome,) = run(run_batch(items, settings, store=ResultStore(tmp_path)))
    assert outcome.status == OK and outcome.images[0].width == 7
    assert len(server.hits("POST", app)) == 1  # attached to the journaled job: no second submit
    assert not list((tmp_path / ".journal").glob("*.json"))  # saved, so the journal entry is gone
