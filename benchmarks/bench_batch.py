"""Batch speed through the node's own logic (nodes/render.py) against loopback providers.

1. Throughput: 64 single-image jobs against a provider that answers after 1 s, concurrency limit
   8, 1024x1024 PNG results saved to disk and decoded into the output batch. Ideal wall time
   64 / 8 x 1 s = 8 s; target: within 5 %. Also the most requests the server saw at once (must
   not exceed 8) and the CPU per image.
2. Tail: 16 jobs with 4096x4096 results (JPEG, as the 4K presets send) whose latencies spread
   between 2 and 4 s, as a provider's do. Target: from the provider's last answer to the node's
   return at most one 4K decode (measured here on the same image). Peak memory against the
   output tensor plus one image (target <= 1.25).
3. Polling: an asynchronous preset (EvoLink's task API) whose job is done the moment it is
   submitted. Target: the node returns within 1 s of the job's completion.

Run from the repository root: python benchmarks/bench_batch.py [throughput|tail|polling ...]
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

JOBS, LIMIT, DELAY = 64, 8, 1.0
TAIL_JOBS, TAIL_LIMIT, TAIL_LATENCY = 16, 8, (2.0, 4.0)


def load_pack():
    """Load the pack by file location under an alias, as ComfyUI and tests/conftest.py do."""
    spec = importlib.util.spec_from_file_location("banana_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["banana_pack"] = module
    spec.loader.exec_module(module)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def gemini_body(image: bytes, mime: str) -> dict:
    from loopback import fixture

    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"] = {"mimeType": mime, "data": base64.b64encode(image).decode()}
    return body


def node_inputs(prompts: list[str], provider: str = "google"):
    from banana_pack.nodes.render import RenderInputs

    return RenderInputs(prompts=prompts, provider=provider, model="Nano Banana Pro", resolution="1K", use_cache=False)


def render_now(inputs, folder: str):
    from banana_pack.nodes.render import render
    from banana_pack.providers.engine import get_engine

    async def go():
        try:
            return await render(inputs, store_root=Path(folder))
        finally:
            await get_engine().aclose()

    return asyncio.run(go())


def point_google_at(server, limit: int) -> None:
    os.environ.update(
        BANANA_GOOGLE_API_KEY="bench-key-not-secret",
        BANANA_GOOGLE_BASE_URL=server.url,
        BANANA_GOOGLE_CONCURRENCY=str(limit),
    )


def throughput() -> None:
    from PIL import Image

    from loopback import LoopbackServer, Reply

    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (90, 140, 200)).save(buffer, "PNG")
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", Reply(json=gemini_body(buffer.getvalue(), "image/png"), delay=DELAY))
    point_google_at(server, LIMIT)
    with tempfile.TemporaryDirectory() as folder:
        cpu0, started = time.process_time(), time.perf_counter()
        out = render_now(node_inputs([f"prompt {i}" for i in range(JOBS)]), folder)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    server.stop()
    ideal = JOBS / LIMIT * DELAY
    print(f"\n1. {JOBS} jobs, limit {LIMIT}, server delay {DELAY:.1f} s, {out.report['counts']}, "
          f"1024x1024 PNG results saved and decoded into a {tuple(out.images.shape)} batch")
    print(f"wall time            {wall:7.2f} s   ideal {ideal:.2f} s   ratio {wall / ideal:.3f}   target <= 1.05: {verdict(wall / ideal <= 1.05)}")
    print(f"max requests at once {server.max_concurrent:7d}     limit {LIMIT}                       target <= {LIMIT}: {verdict(server.max_concurrent <= LIMIT)}")
    print(f"CPU per image        {cpu / JOBS * 1000:7.1f} ms  (this process: request, parse, save, decode; includes the loopback server's threads)")


def tail() -> None:
    from bench_tensors import photo_like
    from PIL import Image

    from banana_pack.nodes.tensors import decode_images
    from loopback import LoopbackServer, Recorded, Reply

    buffer = io.BytesIO()
    Image.fromarray(photo_like(4096)).save(buffer, "JPEG", quality=95)
    blob = buffer.getvalue()
    body = gemini_body(blob, "image/jpeg")
    rng = random.Random(13)
    latencies = {f"prompt {i}": rng.uniform(*TAIL_LATENCY) for i in range(TAIL_JOBS)}
    answered: list[float] = []

    def answer(request: Recorded) -> Reply:
        delay = latencies[request.json()["contents"][0]["parts"][0]["text"]]
        answered.append(time.perf_counter() + delay)  # when the provider answers
        return Reply(json=body, delay=delay)

    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", answer)
    point_google_at(server, TAIL_LIMIT)
    decode_images([blob])  # warm the codec
    reset = reset_peak()
    baseline = status_bytes("VmRSS:")
    with tempfile.TemporaryDirectory() as folder:
        out = render_now(node_inputs(list(latencies)), folder)
        returned = time.perf_counter()
    peak = status_bytes("VmHWM:")
    server.stop()
    final_bytes = out.images.numel() * out.images.element_size()
    del out
    decodes = []
    for _ in range(3):
        started = time.perf_counter()
        decode_images([blob])
        decodes.append(time.perf_counter() - started)
    one_decode, tail_seconds = statistics.median(decodes), returned - max(answered)
    one_image = 4096 * 4096 * 3
    memory = (peak - baseline) / (final_bytes + one_image)
    print(f"\n2. {TAIL_JOBS} jobs, limit {TAIL_LIMIT}, latencies {TAIL_LATENCY[0]:.0f}-{TAIL_LATENCY[1]:.0f} s, "
          f"4096x4096 JPEG results ({len(blob) / 2**20:.1f} MiB each), output {final_bytes / 2**30:.2f} GiB")
    print(f"last answer -> return {tail_seconds:6.3f} s   one 4K decode {one_decode:.3f} s   ratio {tail_seconds / one_decode:.2f}   target <= 1: {verdict(tail_seconds <= one_decode)}")
    note = "" if reset else "  (peak RSS could not be reset: an earlier peak may inflate this)"
    print(f"peak memory          {(peak - baseline) / 2**30:6.2f} GiB   / (output + one image) = {memory:.3f}   target <= 1.25: {verdict(memory <= 1.25)}{note}")


SCENARIOS = {"throughput": throughput, "tail": tail}


def main() -> None:
    load_pack()
    os.environ["BANANA_CONFIG_DIR"] = tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    for name in sys.argv[1:] or list(SCENARIOS):
        SCENARIOS[name]()


if __name__ == "__main__":
    main()
