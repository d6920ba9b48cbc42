"""Paid work survives a neighbour's failure; a user's interrupt still cancels.

How ComfyUI (v0.21, execution.py) ends a prompt, reproduced here without ComfyUI:
- another node fails: execute() returns FAILURE, the executor's loop breaks, execute_async()
  returns, and asyncio.run() cancels every task still pending, our node's included. The interrupt
  flag (comfy.model_management.interrupt_processing) is never set.
- the user presses Interrupt: /interrupt sets the flag. If a synchronous node is running (a
  sampler), the event loop is blocked; that node's hook clears the flag as it raises, the loop
  breaks, and our task is cancelled the same way as above, with the flag already cleared.
The stub below has ComfyUI's flag functions verbatim in behaviour; the fal job runs on the loopback fake.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types

import pytest
from banana_pack.nodes import comfy_glue
from banana_pack.nodes.batch import (
    CANCELLED,
    OK,
    BatchSettings,
    expand_items,
    run_batch,
)
from banana_pack.nodes.comfy_glue import NodeProgress
from banana_pack.nodes.store import ResultStore
from helpers import png_bytes, point_at, run
from loopback import Reply, fixture

APP = "fal-ai/nano-banana-pro"
RID = "job-neighbour-0001"
SETTINGS = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")


def comfy_stub() -> types.ModuleType:
    """comfy.model_management's interrupt flag, as ComfyUI implements it."""
    mm = types.ModuleType("comfy.model_management")
    lock = threading.RLock()
    state = {"flag": False}

    class InterruptProcessingException(Exception):
        pass

    def interrupt_current_processing(value=True):
        with lock:
            state["flag"] = value

    def processing_interrupted():
        with lock:
            return state["flag"]

    def throw_exception_if_processing_interrupted():
        with lock:
            if state["flag"]:
                state["flag"] = False
                raise InterruptProcessingException()

    mm.InterruptProcessingException = InterruptProcessingException
    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = processing_interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    return mm


@pytest.fixture
def comfy(monkeypatch):
    package = types.ModuleType("comfy")
    package.__path__ = []
    mm = comfy_stub()
    package.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", package)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    return mm


def user_presses_interrupt(mm) -> None:
    """server.py's /interrupt: nodes.interrupt_processing() -> comfy.model_management.interrupt_current_processing(True)."""
    mm.interrupt_current_processing(True)


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-neighbour-key:secret-123")
    point_at(monkeypatch, "fal", server.url)
    submit = fixture("fal/submit.json")
    base = f"{server.url}/{APP}/requests/{RID}"
    submit.update(request_id=RID, response_url=base, status_url=base + "/status", cancel_url=base + "/cancel")
    server.route("POST", rf"^/{APP}$", Reply(json=submit))
    server.route("GET", rf"/requests/{RID}/status", Reply(202, fixture("fal/status_in_progress.json")))
    server.route("PUT", rf"/requests/{RID}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    return server


def run_prompt(store: ResultStore, tmp_path, while_pending) -> list:
    """Our node as ComfyUI runs it: a task created by the executor, which returns (and asyncio.run
    cancels what is left) once `while_pending(node task)` has run, i.e. once the neighbour has failed."""
    holder: list = []

    async def execute_async():
        progress = NodeProgress("7", total=1)
        node = asyncio.create_task(run_batch(expand_items(["a lighthouse"], []), SETTINGS, store=store, cancel_check=progress.cancel_requested))
        node.add_done_callback(holder.append)
        while not list((tmp_path / ".journal").glob("*.json")):
            await asyncio.sleep(0.02)
        await while_pending(node)

    asyncio.run(execute_async())
    return holder


def test_neighbour_failure_leaves_the_job_running_and_journaled(comfy, fal, tmp_path):
    store = ResultStore(tmp_path)

    async def neighbour_fails(_node):
        pass  # execute() returned FAILURE for another node: the executor returns, nothing sets the flag

    (task,) = run_prompt(store, tmp_path, neighbour_fails)
    assert task.cancelled()  # cancelled by asyncio.run, as in ComfyUI
    assert fal.hits("POST", APP) and not fal.hits("PUT", r"/cancel$")  # the paid job was not cancelled
    (journal,) = (tmp_path / ".journal").glob("*.json")
    assert json.loads(journal.read_text())["body"]["handle"]["request_id"] == RID

    # The next run of the same prompt attaches to the finished job instead of paying again.
    result = fixture("fal/result_single.json")
    result["images"][0]["url"] = f"{fal.url}/files/out.png"
    fal.route("GET", rf"/requests/{RID}/status", Reply(json=fixture("fal/status_completed.json")))
    fal.route("GET", rf"/requests/{RID}$", Reply(json=result))
    fal.route("GET", r"^/files/out\.png$", Reply(body=png_bytes(7, 5), content_type="image/png"))
    (outcome,) = run(run_batch(expand_items(["a lighthouse"], []), SETTINGS, store=ResultStore(tmp_path)))
    assert outcome.status == OK and outcome.request_id == RID and len(fal.hits("POST", APP)) == 1
    assert not list((tmp_path / ".journal").glob("*.json"))


def test_user_interrupt_taken_by_a_blocking_neighbour_still_cancels(comfy, fal, tmp_path):
    async def sampler_interrupted(_node):
        # A synchronous sampler runs (no await: the loop is blocked); the user presses Interrupt;
        # the sampler's progress hook clears the flag as it raises; the executor returns.
        user_presses_interrupt(comfy)
        with pytest.raises(comfy.InterruptProcessingException):
            comfy.throw_exception_if_processing_interrupted()
        assert not comfy.processing_interrupted()

    (task,) = run_prompt(ResultStore(tmp_path), tmp_path, sampler_interrupted)
    assert task.cancelled()
    (cancel,) = fal.hits("PUT", r"/cancel$")  # the user's interrupt cancels the remote job
    assert cancel.path.endswith(f"/requests/{RID}/cancel")


def test_user_interrupt_while_our_node_runs_alone_cancels(comfy, fal, tmp_path):
    async def interrupt_and_wait(node):
        user_presses_interrupt(comfy)  # the loop is free: our node sees the flag itself
        # Until our node has finished (not a fixed pause after its cancel request, which a loaded machine
        # outlasts, so asyncio.run cancelled the node before it could return its outcome).
        await asyncio.wait({node}, timeout=30)

    (task,) = run_prompt(ResultStore(tmp_path), tmp_path, interrupt_and_wait)
    (outcome,) = task.result()
    assert outcome.status == CANCELLED and outcome.request_id == RID
    assert len(fal.hits("PUT", r"/cancel$")) == 1


def test_an_interrupt_of_an_earlier_prompt_does_not_count(comfy, fal, tmp_path):
    user_presses_interrupt(comfy)
    comfy.interrupt_current_processing(False)  # execute_async() clears the flag when the next prompt starts
    comfy_glue.install_interrupt_observer()
    user_presses_interrupt(comfy)
    comfy.interrupt_current_processing(False)

    async def neighbour_fails(_node):
        pass

    run_prompt(ResultStore(tmp_path), tmp_path, neighbour_fails)
    assert not fal.hits("PUT", r"/cancel$")
