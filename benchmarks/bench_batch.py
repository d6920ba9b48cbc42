"""Batch speed through the node's own logic (nodes/render.py) against loopback providers.

1. Throughput: 64 single-image jobs against a provider that answers after 1 s, concurrency limit
   8, 1024x1024 PNG results saved to disk and decoded into the output batch. Ideal wall time
   64 / 8 x 1 s = 8 s; target: within 5 %. Also the most requests the server saw at once (must
   not exceed 8) and the CPU per image.
2. Tail: 16 jobs with 4096x4096 results (JPEG, as the 4K presets send) whose latencies spread
   between 8 and 16 s (Nano Banana Pro takes tens of seconds for 4K; spread, as a provider's are). Target: from the provider's last answer to the node's
   return at most one 4K decode (measured here on the same image). Also what the same image
   costs through the batch's row path alone (nodes/jpeg_rows.py). Peak memory against the
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
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

JOBS, LIMIT, DELAY = 64, 8, 1.0
TAIL_JOBS, TAIL_LIMIT, TAIL_LATENCY = 16, 8, (8.0, 16.0)  # Nano Banana Pro takes tens of seconds for 4K


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


def gemini_body(image: bytes, mime: str) -> bytes:
    """The provider's answer, serialised once: the loopback server shares this process, and a real
    provider's CPU is not ours."""
    from loopback import fixture

    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"] = {"mimeType": mime, "data": base64.b64encode(image).decode()}
    return json.dumps(body).encode()


def node_inputs(prompts: list[str], provider: str = "google"):
    from banana_pack.nodes.render import RenderInputs

    return RenderInputs(prompts=prompts, provider=provider, model="Nano Banana Pro", resolution="1K", use_cache=False)


WARM_UP = "warm-up"  # a prompt the loopback providers answer at once


def render_now(inputs, folder: str, warm_up: bool = True):
    """The node's logic on one event loop, as ComfyUI runs it: first a one-image warm-up (imports,
    the HTTP client and its connections, the thread pool), then `inputs`, timed. Returns the
    output and the time.monotonic() span of the timed run."""
    from dataclasses import replace

    from banana_pack.nodes.render import render
    from banana_pack.providers.engine import get_engine

    async def go():
        try:
            if warm_up:
                await render(replace(inputs, prompts=[WARM_UP]), store_root=Path(folder, "warm-up"))
            started = time.monotonic()
            out = await render(inputs, store_root=Path(folder))
            return out, started, time.monotonic()
        finally:
            await get_engine().aclose()

    return asyncio.run(go())


class RemoteProvider:
    """benchmarks/remote_provider.py in a child process: a provider whose work is not ours."""

    def __init__(self, answer: bytes, latencies: dict[str, float], folder: str) -> None:
        Path(folder, "answer.json").write_bytes(answer)
        Path(folder, "latencies.json").write_text(json.dumps(latencies))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "remote_provider.py"), str(Path(folder, "answer.json")), str(Path(folder, "latencies.json"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.url = self.process.stdout.readline().split()[1]

    def stop(self) -> dict:
        """Stop it; its most requests at once and the times it answered (time.monotonic)."""
        stats, _ = self.process.communicate("")
        return json.loads(stats.strip().splitlines()[-1])


def point_google_at(url: str, limit: int) -> None:
    os.environ.update(BANANA_GOOGLE_API_KEY="bench-key-not-secret", BANANA_GOOGLE_BASE_URL=url, BANANA_GOOGLE_CONCURRENCY=str(limit))


def throughput() -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (90, 140, 200)).save(buffer, "PNG")
    inputs = node_inputs([f"prompt {i}" for i in range(JOBS)])
    with tempfile.TemporaryDirectory() as folder:
        provider = RemoteProvider(gemini_body(buffer.getvalue(), "image/png"), {"*": DELAY, WARM_UP: 0.0}, folder)
        point_google_at(provider.url, LIMIT)
        cpu0 = time.process_time()
        out, started, returned = render_now(inputs, folder)
        wall, cpu = returned - started, time.process_time() - cpu0
        stats = provider.stop()
    ideal = JOBS / LIMIT * DELAY
    print(f"\n1. {JOBS} jobs, limit {LIMIT}, provider latency {DELAY:.1f} s, {out.report['counts']}, "
          f"1024x1024 PNG results saved and decoded into a {tuple(out.images.shape)} batch")
    print(f"wall time            {wall:7.2f} s   ideal {ideal:.2f} s   ratio {wall / ideal:.3f}   target <= 1.05: {verdict(wall / ideal <= 1.05)}")
    print(f"max requests at once {stats['max_concurrent']:7d}     limit {LIMIT}                       target <= {LIMIT}: {verdict(stats['max_concurrent'] <= LIMIT)}")
    print(f"CPU per image        {cpu / JOBS * 1000:7.1f} ms  (the node's process: request, parse, save, decode)")


def tail() -> None:
    from banana_pack.nodes.tensors import decode_images
    from bench_tensors import photo_like
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo_like(4096)).save(buffer, "JPEG", quality=95)
    blob = buffer.getvalue()
    body = gemini_body(blob, "image/jpeg")
    rng = random.Random(13)
    latencies = {f"prompt {i}": rng.uniform(*TAIL_LATENCY) for i in range(TAIL_JOBS)}
    inputs = node_inputs(list(latencies))
    os.environ["BANANA_MAX_DECODED_PIXELS"] = str(TAIL_JOBS * 4096 * 4096)  # over the default cap: the user raises it
    decode_images([blob])  # warm the codec
    with tempfile.TemporaryDirectory() as folder:
        provider = RemoteProvider(body, {"*": TAIL_LATENCY[1], WARM_UP: 0.0, **latencies}, folder)
        point_google_at(provider.url, TAIL_LIMIT)
        reset = reset_peak()
        baseline = status_bytes("VmRSS:")
        out, _, returned = render_now(inputs, folder)
        answered = sorted(provider.stop()["answered"])[1:]  # without the warm-up's
    peak = status_bytes("VmHWM:")
    final_bytes = out.images.numel() * out.images.element_size()
    del out
    decodes = []
    for _ in range(3):
        started = time.perf_counter()
        decode_images([blob])
        decodes.append(time.perf_counter() - started)
    one_decode, tail_seconds = statistics.median(decodes), returned - max(answered)
    row_path = row_path_seconds(blob)
    alone = []  # the same answer as a one-job run: all the node can do after any answer
    for run in range(3):
        with tempfile.TemporaryDirectory() as folder:
            provider = RemoteProvider(body, {"*": 1.0, WARM_UP: 0.0}, folder)
            point_google_at(provider.url, TAIL_LIMIT)
            _, _, single_returned = render_now(node_inputs([f"alone {run}"]), folder)
            alone.append(single_returned - max(provider.stop()["answered"]))
    one_answer = statistics.median(alone)
    one_image = 4096 * 4096 * 3
    memory = (peak - baseline) / (final_bytes + one_image)
    print(f"\n2. {TAIL_JOBS} jobs, limit {TAIL_LIMIT}, latencies {TAIL_LATENCY[0]:.0f}-{TAIL_LATENCY[1]:.0f} s, "
          f"4096x4096 JPEG results ({len(blob) / 2**20:.1f} MiB each), output {final_bytes / 2**30:.2f} GiB")
    print(f"last answer -> return {tail_seconds:6.3f} s   one 4K decode {one_decode:.3f} s   ratio {tail_seconds / one_decode:.2f}   target <= 1: {verdict(tail_seconds <= one_decode)}")
    print(f"                              one-job run, answer -> return {one_answer:.3f} s   ratio {tail_seconds / one_answer:.2f}  (the answer's transfer, parse, save and decode)")
    if row_path is not None:
        print(f"                              the same JPEG through a row buffer (nodes/jpeg_rows.py), memory touched: {row_path:.3f} s   ratio {row_path / one_decode:.2f}")
    note = "" if reset else "  (peak RSS could not be reset: an earlier peak may inflate this)"
    print(f"peak memory          {(peak - baseline) / 2**30:6.2f} GiB   / (output + one image) = {memory:.3f}   target <= 1.25: {verdict(memory <= 1.25)}{note}")


def row_path_seconds(blob: bytes) -> float | None:
    """What a batch's last JPEG costs the node once its bytes are in hand: decoded into a row
    buffer and converted into a frame, both touched while the batch waited (median of 3)."""
    import numpy as np
    from banana_pack.nodes.jpeg_rows import decode_drawing, new_row_buffer
    from PIL import Image

    size = Image.open(io.BytesIO(blob)).size
    buffer = new_row_buffer(size)
    if buffer is None:  # Pillow before 11.2: batches take the ordinary path
        return None
    buffer.touch()
    frame = np.zeros((size[1], size[0], 3), dtype=np.float32)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        if not decode_drawing(blob, frame, buffer):
            return None
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def polling() -> None:
    from loopback import LoopbackServer, Recorded, Reply, fixture

    server = LoopbackServer().start()
    done = json.loads(json.dumps(fixture("evolink/completed_single.json")).replace("https://files.evolink.ai", server.url))
    completed: list[float] = []

    def submit(request: Recorded) -> Reply:
        completed.append(time.monotonic())  # the job is done the moment it is accepted
        return Reply(json=fixture("evolink/create.json"))

    server.route("POST", r"^/v1/images/generations$", submit)
    server.route("GET", r"^/v1/tasks/[^/]+$", Reply(json=done))
    server.route("GET", r"^/generated/", Reply(body=tiny_png(), content_type="image/png"))
    os.environ.update(BANANA_EVOLINK_API_KEY="bench-key-not-secret", BANANA_EVOLINK_BASE_URL=server.url + "/v1")
    inputs = node_inputs(["a job that is done at once"], provider="evolink")
    with tempfile.TemporaryDirectory() as folder:
        _, _, returned = render_now(inputs, folder, warm_up=False)
    server.stop()
    polls = len(server.hits("GET", r"^/v1/tasks/"))
    after = returned - completed[0]
    print("\n3. EvoLink (async tasks), a job complete the moment it is submitted, the catalog's cadence")
    print(f"completion -> return {after:6.3f} s   polls {polls}   target <= 1 s: {verdict(after <= 1.0)}")


def tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


SCENARIOS = {"throughput": throughput, "tail": tail, "polling": polling}


def main() -> None:
    load_pack()
    import banana_pack.nodes.render  # noqa: F401 - torch and the node's modules load before any timing
    os.environ["BANANA_CONFIG_DIR"] = tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    for name in sys.argv[1:] or list(SCENARIOS):
        SCENARIOS[name]()


if __name__ == "__main__":
    main()
