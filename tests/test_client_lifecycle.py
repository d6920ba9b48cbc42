"""One HTTP client lifecycle that cannot leak (issue 8, item 5).

ComfyUI runs every prompt in a fresh event loop (execution.py: asyncio.run per prompt). The engine
keeps one client per loop; it must be closed when that loop ends, without anyone calling aclose()
and without waiting for the garbage collector (which is switched off here, so a client left to
the collector shows up as open sockets).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

from banana_pack.providers import GenerationRequest, generate
from banana_pack.providers.engine import get_engine
from loopback import Reply, fixture

RUNS = 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(at_most: int, wait: float = 5.0) -> int:
    """The fd count once the server's threads have seen the client hang up (they close their end)."""
    deadline = time.monotonic() + wait
    count = open_fds()
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
        count = open_fds()
    return count


def test_twenty_event_loops_leave_no_client_and_no_file_descriptor(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "lifecycle-test-key-0123456789")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.route("POST", r":generateContent$", Reply(json=fixture("gemini/success_single.json")))
    engine = get_engine()
    gc.collect()
    gc.disable()
    try:
        asyncio.run(generate("google", "Nano Banana", GenerationRequest(prompt="warm-up")))  # imports, the server's threads
        baseline = settled_fds(at_most=0, wait=0.5)
        for i in range(RUNS):
            # Like ComfyUI: a fresh loop per prompt, and nobody closes the engine's client.
            result = asyncio.run(generate("google", "Nano Banana", GenerationRequest(prompt=f"prompt {i}")))
            assert len(result.images) == 1
        assert len(engine._clients) == 0 and engine.open_clients == 0
        after = settled_fds(at_most=baseline)
        assert after <= baseline, f"{after - baseline} file descriptors left open after {RUNS} runs"
    finally:
        gc.enable()
    assert len(server.hits("POST", "generateContent")) == RUNS + 1
