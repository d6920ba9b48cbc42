"""Decode on arrival (nodes/assemble.py): whatever order results arrive in, the output batch is the
one decoding every kept result at the end would give: input order, the size policy, the first
image's frame size. The reference is nodes/tensors.decode_images, which decodes all at once."""

from __future__ import annotations

import asyncio
import base64
import io
import random
import threading

import numpy as np
import pytest
import torch
from banana_pack.nodes import assemble, jpeg_rows
from banana_pack.nodes import store as store_module
from banana_pack.nodes.assemble import OutputBatch
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.nodes.tensors import ImageDecodeError, decode_images, open_picture
from helpers import run
from loopback import Recorded, Reply, fixture
from PIL import Image


def picture(width: int, height: int, seed: int) -> bytes:
    """A PNG with a different colour per seed and a bright left column, so placement shows."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    image.paste((255, 255, 255), (0, 0, 1, height))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def assemble_in(order, results, expected, policy):
    """Feed `results` (item -> blobs, [] = failed) in `order`, yielding between arrivals."""
    output = OutputBatch(expected, policy)
    for index in order:
        output.add(index, results[index])
        for _ in range(random.Random(index).randrange(3)):
            await asyncio.sleep(0)  # let some decodes start before the next arrival
    kept = [(index, results[index]) for index in range(len(expected)) if results[index]]
    return await output.result(kept)


@pytest.mark.parametrize("policy", ["resize", "pad", "crop"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_arrival_order_gives_the_batch_of_decoding_at_the_end(policy, seed):
    rng = random.Random(seed)
    sizes = [(rng.randrange(8, 40), rng.randrange(8, 40)) for _ in range(7)]
    results = {i: [picture(*sizes[i], seed * 10 + i)] for i in range(7)}
    order = list(range(7))
    rng.shuffle(order)
    batch = asyncio.run(assemble_in(order, results, [1] * 7, policy))
    reference = decode_images([results[i][0] for i in range(7)], size_policy=policy)
    assert batch.shape == reference.shape == (7, sizes[0][1], sizes[0][0], 3)
    assert torch.equal(batch, reference)


def jpeg_picture(width: int, height: int, seed: int) -> bytes:
    """A noisy JPEG: rows differ, so a row drawn from the wrong place shows."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("policy", ["resize", "pad", "crop"])
def test_jpeg_results_decoded_through_row_buffers_give_the_same_batch(monkeypatch, policy):
    """Results of the frame size decode into reused row buffers (nodes/jpeg_rows.py), the others
    the ordinary way: together, in any order, the batch of decoding them all at the end."""
    monkeypatch.setattr(jpeg_rows, "_FEED_BYTES", 1000)  # many bands per image
    through_rows = []
    original = assemble.decode_drawing

    def counted(blob, frame, buffer):
        drawn = original(blob, frame, buffer)
        through_rows.append(drawn)
        return drawn

    monkeypatch.setattr(assemble, "decode_drawing", counted)
    rng = random.Random(7)
    sizes = [(96, 64)] * 6 + [(64, 96), (50, 50)]  # two of other sizes take the ordinary path
    results = {i: [jpeg_picture(*sizes[i], i)] for i in range(len(sizes))}
    later = list(range(2, len(sizes)))
    rng.shuffle(later)

    async def scenario():
        output = OutputBatch([1] * len(sizes), policy)
        output.add(1, results[1])  # held: the frame size is item 0's
        output.add(0, results[0])
        for _ in range(1000):  # the rest arrive once the frame size is known, as in a real batch
            if output._target is not None:
                break
            await asyncio.sleep(0.01)
        for index in later:
            output.written(index, results[index])  # on disk, not yet durable: the row path may start
            await asyncio.sleep(0)
            output.add(index, results[index])
        return await output.result([(index, results[index]) for index in range(len(sizes))])

    batch = asyncio.run(scenario())
    assert torch.equal(batch, decode_images([results[i][0] for i in range(len(sizes))], size_policy=policy))
    if jpeg_rows.new_row_buffer((8, 8)) is not None:  # Pillow 11.2 and later
        assert through_rows.count(True) >= 1 and through_rows.count(False) >= 1


def test_failed_items_and_short_answers_are_compacted_out():
    # Item 0 failed, so item 1 sets the frame size; item 2 asked for three images and got two.
    results = {0: [], 1: [picture(20, 10, 1)], 2: [picture(9, 9, 2), picture(30, 12, 3)], 3: [], 4: [picture(5, 25, 4)]}
    batch = asyncio.run(assemble_in([4, 2, 3, 1, 0], results, [1, 1, 3, 1, 1], "pad"))
    reference = decode_images([blob for i in range(5) for blob in results[i]], size_policy="pad")
    assert batch.shape == (4, 10, 20, 3) and torch.equal(batch, reference)
    assert batch.is_contiguous()


def test_more_images_than_asked_for_still_come_out_in_order():
    results = {0: [picture(12, 12, 1), picture(6, 6, 2)], 1: [picture(8, 16, 3)]}
    batch = asyncio.run(assemble_in([1, 0], results, [1, 1], "crop"))
    reference = decode_images([results[0][0], results[0][1], results[1][0]], size_policy="crop")
    assert torch.equal(batch, reference)


def test_images_arriving_before_the_first_are_held_within_the_bound(monkeypatch):
    held = []
    original = OutputBatch._settle_target

    def watch(self):
        held.append(len(self._held) + self._opening)
        original(self)

    monkeypatch.setattr(OutputBatch, "_settle_target", watch)
    results = {i: [picture(16, 12, i)] for i in range(20)}
    batch = asyncio.run(assemble_in(list(range(19, -1, -1)), results, [1] * 20, "resize"))
    assert torch.equal(batch, decode_images([results[i][0] for i in range(20)]))
    assert max(held) <= int(assemble.HELD_SHARE * 20) + 1  # + the image that sets the frame size


def test_a_broken_result_raises_the_decode_error():
    results = {0: [picture(8, 8, 1)], 1: [b"not an image at all"]}
    with pytest.raises(ImageDecodeError, match="not an image format"):
        asyncio.run(assemble_in([1, 0], results, [1, 1], "resize"))
    with pytest.raises(ImageDecodeError):  # the frame-size image itself is broken
        asyncio.run(assemble_in([0, 1], {0: [b"junk"], 1: [picture(8, 8, 2)]}, [1, 1], "resize"))


def test_render_decodes_out_of_order_results_into_input_order(server, monkeypatch, tmp_path):
    """Through the node's logic and HTTP: later prompts answer first, with other sizes, and the
    first prompt is only answered once an earlier answer has been decoded."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "arrival-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_CONCURRENCY", "6")
    blobs = {f"prompt {i}": picture(10 + 3 * i, 20 - i, i) for i in range(6)}
    decoded = threading.Event()
    waited = []

    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        if prompt == "prompt 0":
            waited.append(decoded.wait(timeout=30))
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(blobs[prompt]).decode()
        return Reply(json=body, delay=0.05 * (6 - int(prompt.split()[-1])))  # later prompts answer sooner

    def open_and_tell(blob):
        opened = open_picture(blob)
        decoded.set()
        return opened

    server.route("POST", r":generateContent$", handler)
    monkeypatch.setattr(assemble, "open_picture", open_and_tell)
    inputs = RenderInputs(prompts=list(blobs), provider="google", model="Nano Banana Pro", size_policy="pad")
    out = run(render(inputs, store_root=tmp_path))
    assert waited == [True]  # a result was decoded while the first prompt was still running
    assert torch.equal(out.images, decode_images(list(blobs.values()), size_policy="pad"))
    assert [row["index"] for row in out.report["items"]] == list(range(6))


@pytest.mark.skipif(jpeg_rows.new_row_buffer((8, 8)) is None, reason="this Pillow exports no Arrow arrays (before 11.2)")
def test_only_a_frame_size_jpeg_decodes_before_its_file_is_durable(server, monkeypatch, tmp_path):
    """Once a result's bytes are written, and while fsync makes them durable, a JPEG of the frame
    size decodes through a row buffer (it takes no memory). Every other decode waits until the
    item is saved: a crash while decoding must neither lose a paid image nor make a re-run pay."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "arrival-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    blobs = {"prompt 0": jpeg_picture(96, 64, 1), "prompt 1": jpeg_picture(96, 64, 2), "prompt 2": picture(96, 64, 3)}
    names = {blob: prompt for prompt, blob in blobs.items()}

    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        body = fixture("gemini/success_single.json")
        mime = "image/png" if prompt == "prompt 2" else "image/jpeg"
        body["candidates"][0]["content"]["parts"][0]["inlineData"] = {"mimeType": mime, "data": base64.b64encode(blobs[prompt]).decode()}
        return Reply(json=body, delay=0.4 * int(prompt.split()[-1]))  # they arrive in order

    events: list[str] = []
    row_decode_started = threading.Event()
    waited_for_decode: list[bool] = []
    finish_write, decode_drawing, opening = store_module._finish_write, assemble.decode_drawing, assemble.open_picture

    durable_jpegs: list[object] = []

    def finishing(writing):
        suffix = writing.path.suffix
        if suffix == ".jpg" and len(durable_jpegs) == 1:  # prompt 1's image (prompt 0's is durable)
            waited_for_decode.append(row_decode_started.wait(timeout=10))
        finish_write(writing)
        if suffix == ".jpg":
            durable_jpegs.append(writing.path)
            events.append(f"durable prompt {len(durable_jpegs) - 1}")
        elif suffix == ".png":
            events.append("durable prompt 2")

    def rows(blob, frame, buffer):
        events.append(f"rows {names[blob]}")
        if names[blob] == "prompt 1":
            row_decode_started.set()
        return decode_drawing(blob, frame, buffer)

    def ordinary(blob):
        events.append(f"open {names[blob]}")
        return opening(blob)

    server.route("POST", r":generateContent$", handler)
    monkeypatch.setattr(store_module, "_finish_write", finishing)
    monkeypatch.setattr(assemble, "decode_drawing", rows)
    monkeypatch.setattr(assemble, "open_picture", ordinary)
    out = run(render(RenderInputs(prompts=list(blobs), provider="google", model="Nano Banana Pro"), store_root=tmp_path))
    assert waited_for_decode == [True]  # prompt 1's row decode ran while its file was being made durable
    assert events.index("rows prompt 1") < events.index("durable prompt 1")
    assert events.index("durable prompt 0") < events.index("open prompt 0")  # it set the frame size: the ordinary path
    assert events.index("durable prompt 2") < events.index("open prompt 2")  # a PNG: only once it is durable
    assert torch.equal(out.images, decode_images(list(blobs.values())))


def test_close_before_the_decodes_start_leaves_no_coroutine_unawaited():
    """A run that fails at once (its neighbour's error) closes the batch before its decodes ran."""
    import gc
    import warnings

    async def scenario():
        batch = OutputBatch([1, 1, 1], "resize")
        for index in range(3):
            batch.add(index, [picture(6, 4, index)])
        batch.close()  # before the loop ran any of the spawned tasks
        await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(scenario())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
