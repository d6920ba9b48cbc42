"""Batch throughput: 64 single-image jobs against a loopback provider that answers after 1 s.

With a concurrency limit of 8 the ideal wall time is 64 / 8 x 1 s = 8 s. Prints the wall time
against that ideal (target: within 15 %), the most requests the server saw at once (must not
exceed 8), and the local overhead per image: the wall time beyond the ideal, per job per slot,
and the process CPU time per image (encoding the request, parsing, saving to disk, bookkeeping).

Run from the repository root: python benchmarks/bench_batch.py
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

JOBS, LIMIT, DELAY = 64, 8, 1.0


def load_pack():
    """Load the pack by file location under an alias, as ComfyUI and tests/conftest.py do."""
    spec = importlib.util.spec_from_file_location("banana_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["banana_pack"] = module
    spec.loader.exec_module(module)


def main() -> None:
    load_pack()
    from PIL import Image

    from banana_pack.nodes.batch import OK, BatchSettings, expand_items, run_batch
    from banana_pack.nodes.store import ResultStore
    from banana_pack.providers.engine import get_engine
    from loopback import LoopbackServer, Reply, fixture

    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (90, 140, 200)).save(buffer, "PNG")
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(buffer.getvalue()).decode()

    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", Reply(json=body, delay=DELAY))
    os.environ.update(
        BANANA_GOOGLE_API_KEY="bench-key-not-secret",
        BANANA_GOOGLE_BASE_URL=server.url,
        BANANA_GOOGLE_CONCURRENCY=str(LIMIT),
        BANANA_CONFIG_DIR=tempfile.mkdtemp(),
    )
    items = expand_items([f"prompt {i}" for i in range(JOBS)], [], seed=1)
    settings = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K", use_cache=False)

    async def batch():
        try:
            with tempfile.TemporaryDirectory() as folder:
                return await run_batch(items, settings, store=ResultStore(folder))
        finally:
            await get_engine().aclose()

    cpu0, started = time.process_time(), time.perf_counter()
    outcomes = asyncio.run(batch())
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    server.stop()

    ideal = JOBS / LIMIT * DELAY
    ok = sum(o.status == OK for o in outcomes)
    over = wall / ideal - 1
    print(f"jobs {JOBS}, concurrency limit {LIMIT}, server delay {DELAY:.1f} s, {ok} ok, 1024x1024 PNG results saved to disk")
    print(f"wall time            {wall:7.2f} s   ideal {ideal:.2f} s   ratio {wall / ideal:.3f}   ({over:+.1%})   target <= +15%: {'PASS' if over <= 0.15 else 'MISS'}")
    print(f"max requests at once {server.max_concurrent:7d}     limit {LIMIT}                                 target <= {LIMIT}: {'PASS' if server.max_concurrent <= LIMIT else 'MISS'}")
    print(f"overhead per image   {(wall - ideal) * LIMIT / JOBS * 1000:7.1f} ms  (wall beyond ideal, per job per slot)")
    print(f"CPU per image        {cpu / JOBS * 1000:7.1f} ms  (this process, includes the loopback server's threads)")


if __name__ == "__main__":
    main()
