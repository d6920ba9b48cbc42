"""In a real ComfyUI: another node's failure does not cancel this node's paid fal job; Interrupt does.

The graph has two branches: our node on fal (a loopback fal queue whose job stays in progress) and
a second Nano Banana node on Google whose call fails a few seconds later. ComfyUI then stops the
prompt and cancels every pending task; the fal job must stay running and journaled, and the next
run of the same request attaches to it (no second submit).
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import fal_job_done, fal_submit
from loopback import LoopbackServer, Reply, fixture

from .comfyui_harness import status_events, status_message
from .test_node_live import bridge, png

APP = "fal-ai/nano-banana-pro"


@pytest.fixture(scope="module")
def fake():
    server = LoopbackServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, fake):
    env = {
        "FAL_KEY": "fal-live-key:neighbour-4242",
        "BANANA_FAL_BASE_URL": fake.url,
        "BANANA_FAL_POLL_FIRST_DELAY": "0.2",
        "BANANA_FAL_POLL_MAX_DELAY": "0.3",
        "BANANA_GOOGLE_API_KEY": "AIzaLIVE-neighbour-4242424242",
        "BANANA_GOOGLE_BASE_URL": fake.url + "/v1beta",
    }
    server = comfyui_server_factory(extra_env=env)
    client = server.client()
    yield client
    client.close()


def script_fal_job(fake, rid: str) -> None:
    fake.route("POST", rf"^/{APP}$", Reply(json=fal_submit(fake.url, rid, APP)))
    fake.route("GET", rf"/requests/{rid}/status", Reply(202, fixture("fal/status_in_progress.json")))
    fake.route("PUT", rf"/requests/{rid}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))


def finish_fal_job(fake, rid: str) -> None:
    fal_job_done(fake, rid, png(20, 10))


def previewed(node: dict, node_id: str = "1") -> dict:
    """`node` under `node_id` and a PreviewImage of its images under the next id."""
    return {node_id: node, str(int(node_id) + 1): {"class_type": "PreviewImage", "inputs": {"images": [node_id, 0]}}}


def journal(comfy) -> list:
    return sorted((comfy.server.output_dir / "nano_banana_bridge" / ".journal").glob("*.json"))


def test_a_failing_neighbour_leaves_the_fal_job_running_and_the_next_run_attaches(comfy, fake):
    rid = "live-neighbour-0001"
    script_fal_job(fake, rid)
    fake.route("POST", r":generateContent$", Reply(400, fixture("gemini/error_400.json"), delay=4))
    ours = bridge("a lighthouse at dusk", provider="fal", seed=11)
    graph = {**previewed(ours), **previewed(bridge("the neighbour that fails", provider="google", seed=12), "5")}
    entry = comfy.run(graph, timeout=60)
    error = status_message(entry, "execution_error")
    assert error is not None and error["node_id"] == "5", status_events(entry)
    time.sleep(1.0)  # let the cancelled task finish its cleanup
    assert len(fake.hits("POST", rf"^/{APP}$")) == 1
    assert not fake.hits("PUT", r"/cancel$"), "a neighbour's failure cancelled the paid fal job"
    assert len(journal(comfy)) == 1
    assert "left running" in comfy.server.log_text()

    finish_fal_job(fake, rid)
    entry = comfy.run(previewed(ours), timeout=60)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    assert len(fake.hits("POST", rf"^/{APP}$")) == 1  # attached to the journaled job: not paid twice
    assert journal(comfy) == []


def test_interrupt_still_cancels_the_fal_job(comfy, fake):
    rid = "live-interrupt-0002"
    script_fal_job(fake, rid)
    before = len(fake.hits("POST", rf"^/{APP}$"))
    prompt_id = comfy.post_prompt(previewed(bridge("a ship in a storm", provider="fal", seed=21)))
    deadline = time.monotonic() + 30
    while len(fake.hits("POST", rf"^/{APP}$")) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    comfy.interrupt()
    entry = comfy.wait_for(prompt_id, timeout=30)
    assert "execution_interrupted" in status_events(entry)
    time.sleep(0.5)
    assert fake.hits("PUT", rf"/requests/{rid}/cancel$")


def test_a_failing_neighbour_does_not_lose_a_synchronous_paid_answer(comfy, fake):
    """Our node on Google (answered after 4 s) and a neighbour whose call fails after 1 s: ComfyUI ends
    the prompt and cancels our task while its paid request is in flight. The answer is still received
    and saved, and the next run of our node is answered from the cache (one paid request in all)."""
    import base64

    from loopback import Recorded

    def gemini(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        if "neighbour" in prompt:
            return Reply(400, fixture("gemini/error_400.json"), delay=1)
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png(24, 12)).decode()
        return Reply(json=body, delay=4)

    fake.route("POST", r":generateContent$", gemini)
    ours = bridge("a paid kite in the wind", provider="google", seed=31)
    graph = {**previewed(ours), **previewed(bridge("the neighbour that fails", provider="google", seed=32), "5")}
    entry = comfy.run(graph, timeout=60)
    error = status_message(entry, "execution_error")
    assert error is not None and error["node_id"] == "5", status_events(entry)
    entry = comfy.run(previewed(ours), timeout=60)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    ours_sent = [r for r in fake.hits("POST", r":generateContent$") if "paid kite" in r.body.decode()]
    assert len(ours_sent) == 1, "the re-run paid for the same image again"
    assert "waiting for its answer" in comfy.server.log_text()


def test_an_attach_refused_for_the_key_never_submits_the_journaled_job_again(comfy, fake):
    """A journaled fal job (left running by a neighbour's failure) whose status endpoint then refuses
    the key (403): the re-run keeps the journal and says so, without a second submit; once the status
    answers again, the next run collects the job. One paid submit in all."""
    rid = "live-attach-0003"
    earlier = set(journal(comfy))  # the interrupt test's cancelled job stays journaled
    ours_journal = lambda: [p for p in journal(comfy) if p not in earlier]  # noqa: E731
    script_fal_job(fake, rid)
    fake.route("POST", r":generateContent$", Reply(400, fixture("gemini/error_400.json"), delay=3))
    ours = bridge("a harbour in the rain", provider="fal", seed=41)
    graph = {**previewed(ours), **previewed(bridge("the neighbour that fails", provider="google", seed=42), "5")}
    comfy.run(graph, timeout=60)
    time.sleep(1.0)
    submits = lambda: len(fake.hits("POST", rf"^/{APP}$"))  # noqa: E731
    before = submits()
    assert len(ours_journal()) == 1

    fake.route("GET", rf"/requests/{rid}/status", Reply(403, {"detail": "Forbidden"}))
    alone = previewed(ours)
    entry = comfy.run(alone, timeout=60)
    error = status_message(entry, "execution_error")
    assert error is not None and "NOT submitted again" in error["exception_message"], status_events(entry)
    assert submits() == before, "the journaled job was paid for again"
    assert len(ours_journal()) == 1

    finish_fal_job(fake, rid)
    entry = comfy.run(alone, timeout=60)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    assert submits() == before and ours_journal() == []


def test_interrupt_during_the_submit_journals_and_cancels_the_accepted_job(comfy, fake):
    """Interrupt pressed while fal is answering the submit: the answer (the job's handle) is awaited,
    so the accepted job is journaled and cancelled at fal instead of running on with no handle."""
    import threading

    from loopback import Recorded

    rid = "live-submit-stop-0004"
    script_fal_job(fake, rid)
    submit = fal_submit(fake.url, rid, APP)
    arrived = threading.Event()

    def slow_submit(_req: Recorded) -> Reply:
        arrived.set()
        return Reply(json=submit, delay=2)

    fake.route("POST", rf"^/{APP}$", slow_submit)
    earlier = set(journal(comfy))
    prompt_id = comfy.post_prompt(previewed(bridge("a submarine at dawn", provider="fal", seed=51)))
    assert arrived.wait(30)
    comfy.interrupt()
    entry = comfy.wait_for(prompt_id, timeout=30)
    assert "execution_interrupted" in status_events(entry)
    time.sleep(0.5)
    assert fake.hits("PUT", rf"/requests/{rid}/cancel$"), "the accepted job was left running"
    assert len([p for p in journal(comfy) if p not in earlier]) == 1
