"""Benchmark nodes/tensors.py against bare Pillow codecs.  Run from the repo root:

    python benchmarks/bench_tensors.py

Targets (from the issue): the tensor work around the codec costs at most half the codec's own
time, (ours - bare) / bare <= 0.5; decoding a batch peaks at most 1.25x the final tensor plus one
decoded image. Prints figures and PASS/MISS per target; always exits 0.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

PACK_DIR = pathlib.Path(__file__).resolve().parents[1]
PACK_ALIAS = "banana_pack"
SIZES = {"1K": 1024, "2K": 2048, "4K": 4096}
RATIO_TARGET = 0.5
MEMORY_TARGET = 1.25


def load_pack():
    """Load the pack by file location under an alias, as ComfyUI and tests/conftest.py do."""
    if PACK_ALIAS not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_ALIAS, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_ALIAS] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_ALIAS}.nodes.tensors")


def photo_like(size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields at three scales plus sensor-like noise: compresses like a photo."""
    rng = np.random.default_rng(seed)

    def layer(cells: int, amplitude: float) -> np.ndarray:
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        return (np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32) - 128) * amplitude

    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 3
    picture = 128 + layer(6, 0.9) + layer(48, 0.35) + layer(size // 8, 0.1) + noise
    return np.clip(picture, 0, 255).astype(np.uint8)


def timed(ours, bare, repeats: int) -> tuple[float, float, float, object, object]:
    """Run two callables alternately: median CPU ms of each, median of the per-pair overhead
    ratios, and the results of their last runs.

    CPU time of this process, not wall time: the machine is shared, and wall time also counts
    the moments another process held the core. Both sides are single-threaded (Pillow's codecs,
    numpy's loops), so CPU time is their work; neighbouring runs share the cache's state."""
    pairs = []
    results = [None, None]
    for _ in range(repeats):
        pair = []
        for index, run in enumerate((ours, bare)):
            start = time.process_time()
            results[index] = run()
            pair.append((time.process_time() - start) * 1000)
        pairs.append(pair)
    ours_ms, bare_ms = (statistics.median(column) for column in zip(*pairs))
    ratio = statistics.median((mine - theirs) / theirs for mine, theirs in pairs)
    return ours_ms, bare_ms, ratio, *results


def pil_encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


# Runs in a fresh interpreter so the peak belongs to the decode alone. Linux: the kernel's peak
# RSS (VmHWM) is reset just before decoding, so earlier peaks (imports) cannot hide this one.
MEMORY_PROBE = """
import io, sys
from PIL import Image
sys.path.insert(0, sys.argv[1])
from bench_tensors import load_pack
tensors = load_pack()

def status_bytes(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))

blobs = [open(path, "rb").read() for path in sys.argv[2:]]
tiny = io.BytesIO()
Image.new("RGB", (8, 8)).save(tiny, "PNG")
tensors.decode_images([tiny.getvalue()])  # warm up the codec and torch
try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    reset = 1
except OSError:
    reset = 0
baseline = status_bytes("VmRSS:")
batch = tensors.decode_images(blobs)
print(baseline, status_bytes("VmHWM:"), batch.numel() * batch.element_size(), reset)
"""


def measure_decode_memory(size: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for seed in range(count):
            path = pathlib.Path(folder, f"{seed}.png")
            path.write_bytes(pil_encode(photo_like(size, seed), "PNG", compress_level=1))
            paths.append(str(path))
        output = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(PACK_DIR / "benchmarks"), *paths],
            check=True, capture_output=True, text=True,
        ).stdout.split()
    baseline, peak, final_bytes, reset = map(int, output)
    one_image = size * size * 3
    ratio = (peak - baseline) / (final_bytes + one_image)
    print(f"\nDecode memory, batch of {count} PNGs at {size}x{size} (peak RSS of a fresh process):")
    print(f"  final tensor {final_bytes / 2**20:.1f} MiB, one decoded image {one_image / 2**20:.1f} MiB, "
          f"peak increase {(peak - baseline) / 2**20:.1f} MiB")
    note = "" if reset else "  (peak RSS could not be reset: an earlier peak may inflate this)"
    print(f"  peak / (final + one image) = {ratio:.3f}  target <= {MEMORY_TARGET}  "
          f"{verdict(ratio, MEMORY_TARGET)}{note}")


def main() -> None:
    tensors = load_pack()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Pillow {Image.__version__}, "
          f"numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}; medians of interleaved runs, CPU time")
    warm = torch.rand(64, 64, 3)
    for fmt in ("jpeg", "png", "webp"):
        tensors.decode_image(tensors.encode_image(warm, max_pixels=None, fmt=fmt).data)

    header = (f"{'size':<5}{'format':<7}{'enc ours':>10}{'enc bare':>10}{'ratio':>7}  {'':4}"
              f"{'bytes':>11}{'dec ours':>10}{'dec bare':>10}{'ratio':>7}  {'':4}")
    print("\n" + header + "\n" + "-" * len(header))
    misses = 0
    for label, size in SIZES.items():
        pixels = photo_like(size)
        image = torch.from_numpy(pixels).float().div_(255)  # a ComfyUI IMAGE frame
        repeats = max(5, 21 * 1024 // size)  # more runs where runs are short and noisy
        for fmt, pil_format, options, enc_repeats in (
            ("jpeg", "JPEG", {"quality": 95}, repeats),
            ("png", "PNG", {}, 3),  # slow codec: three runs already take seconds
        ):
            enc_ours, enc_bare, enc_ratio, encoded, data = timed(
                partial(tensors.encode_image, image, max_pixels=None, fmt=fmt),
                partial(pil_encode, pixels, pil_format, **options),
                enc_repeats,
            )
            assert encoded.data == data, "same pixels and codec settings must give the same bytes"
            dec_ours, dec_bare, dec_ratio, decoded, _ = timed(
                partial(tensors.decode_image, data), partial(pil_decode, data), repeats
            )
            assert decoded.shape == (size, size, 3)
            misses += (enc_ratio > RATIO_TARGET) + (dec_ratio > RATIO_TARGET)
            print(f"{label:<5}{fmt:<7}{enc_ours:>10.1f}{enc_bare:>10.1f}{enc_ratio:>7.2f}  "
                  f"{verdict(enc_ratio, RATIO_TARGET)}{len(data):>11,}{dec_ours:>10.1f}{dec_bare:>10.1f}"
                  f"{dec_ratio:>7.2f}  {verdict(dec_ratio, RATIO_TARGET)}")
        webp = tensors.encode_image(image, max_pixels=None, fmt="webp").data
        print(f"{label:<5}{'webp':<7}{'':>10}{'':>10}{'':>7}  {'':4}{len(webp):>11,}")
    print(f"\nCPU times in ms (medians); ratio = median of (ours - bare) / bare, target <= {RATIO_TARGET}; "
          f"{'all PASS' if not misses else f'{misses} MISS'}. 'bytes' is the upload size.")
    measure_decode_memory(2048, 4)


if __name__ == "__main__":
    main()
