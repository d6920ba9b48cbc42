"""What happens the moment a result arrives: its base64 is decoded; its image bytes, cache entry,
sidecars and ledger row are written; and only then is it handed to the output batch for decoding."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from banana_pack.nodes import store as store_module
from banana_pack.nodes import tensors
from banana_pack.nodes.assemble import OutputBatch
from banana_pack.nodes.ledger import LEDGER_FILE, Ledger
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.nodes.store import ResultStore
from banana_pack.providers.engine import get_engine
from banana_pack.providers.outcome import GeneratedImage, GenerationResult, NotAnImage, decode_base64_payload
from loopback import LoopbackServer, Reply, fixture


def png(width: int, height: int, colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


PAYLOAD = png(9, 7)
TEXT = base64.b64encode(PAYLOAD).decode()


@pytest.mark.parametrize(
    "payload",
    [
        TEXT,
        f"data:image/png;base64,{TEXT}",
        f"  {TEXT}\n",
        "\n".join(TEXT[i : i + 76] for i in range(0, len(TEXT), 76)),  # MIME line breaks
        TEXT.rstrip("="),  # padding dropped
        f"data:image/png;base64,{TEXT[:40]}\r\n{TEXT[40:]}",
    ],
)
def test_base64_payloads_in_every_shape_decode_to_the_same_bytes(payload):
    assert decode_base64_payload(payload) == PAYLOAD


@pytest.mark.parametrize("payload", [TEXT[:20] + "*" + TEXT[21:], TEXT + "=A", "AAAAA"])
def test_bad_base64_is_not_an_image(payload):
    with pytest.raises(NotAnImage, match="invalid base64"):
        decode_base64_payload(payload)


def test_the_size_limit_counts_the_payload_without_its_whitespace():
    spaced = " \n".join(TEXT[i : i + 4] for i in range(0, len(TEXT), 4))
    assert decode_base64_payload(spaced, max_bytes=len(PAYLOAD) + 2) == PAYLOAD  # the estimate counts padding
    with pytest.raises(NotAnImage, match="limit"):
        decode_base64_payload(spaced, max_bytes=len(PAYLOAD) - 3)


def result_with(*images: bytes) -> GenerationResult:
    return GenerationResult(images=[GeneratedImage(data=data, mime="image/png") for data in images], provider="google", model="m")


def test_save_writes_the_cache_entry_before_the_sidecars(tmp_path, monkeypatch):
    """Once the images are on disk, what keeps a re-run from paying for them again comes next."""
    store = ResultStore(tmp_path)
    key = "a" * 64
    order: list[str] = []
    finish = store_module._finish_write

    def recording(writing):  # every file is durable and under its name once this returns
        finish(writing)
        order.append("cache" if writing.path.parent.name == ".cache" else writing.path.suffix)

    monkeypatch.setattr(store_module, "_finish_write", recording)
    store.save(key, result_with(png(4, 4), png(5, 5)), {"prompt": "p"})
    assert order == [".png", ".png", "cache", ".json", ".json"]
    assert store.lookup(key) is not None


def test_save_calls_on_written_before_fsync_and_goes_on_when_it_fails(tmp_path, monkeypatch):
    """on_written comes once every image's bytes are in their files, before any fsync; whatever it
    does, the paid images are still made durable, named and cached."""
    store = ResultStore(tmp_path)
    key = "b" * 64
    order: list[str] = []
    real_fsync = store_module.os.fsync

    def fsync(fd):
        order.append("fsync")
        return real_fsync(fd)

    def hook():
        order.append("written")
        raise RuntimeError("the loop is closed")

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    paths = store.save(key, result_with(png(4, 4), png(5, 5)), {"prompt": "p"}, on_written=hook)
    assert order[0] == "written" and order.count("written") == 1 and "fsync" in order
    assert [p.read_bytes() for p in paths] == [png(4, 4), png(5, 5)]
    assert store.lookup(key) is not None


def serve_gemini(server: LoopbackServer, image: bytes) -> None:
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"] = {"mimeType": "image/png", "data": base64.b64encode(image).decode()}
    server.route("POST", r":generateContent$", Reply(json=body))


def test_each_result_is_saved_cached_and_in_the_ledger_before_it_is_decoded(tmp_path, monkeypatch):
    """Decoding starts as each item ends, not after the last; by then a crash while decoding (the
    OOM killer on a large batch) can neither lose the image, nor make a re-run pay for it again,
    nor hide its cost. Cached items are handed over too, and every output is the provider's image."""
    image = png(12, 8, (250, 10, 10))
    server = LoopbackServer().start()
    try:
        serve_gemini(server, image)
        monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "test-key-not-secret")
        monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
        config = tmp_path / "config"
        monkeypatch.setenv("BANANA_CONFIG_DIR", str(config))
        handed: list[tuple[int, int, int]] = []  # (item, ledger rows, saved images) when handed over
        original = OutputBatch.add

        def checking(self, index, blobs):
            saved = [p for p in (tmp_path / "out").rglob("*.png") if p.read_bytes() == image]
            handed.append((index, len(list(Ledger(config / LEDGER_FILE).entries())), len(saved)))
            return original(self, index, blobs)

        monkeypatch.setattr(OutputBatch, "add", checking)
        inputs = RenderInputs(prompts=["one", "two", "three"], provider="google", model="Nano Banana Pro", resolution="1K")

        async def run_twice():
            try:
                return await render(inputs, store_root=tmp_path / "out"), await render(inputs, store_root=tmp_path / "out")
            finally:
                await get_engine().aclose()

        fresh, cached = asyncio.run(run_twice())
    finally:
        server.stop()
    first_run = sorted(handed[:3])
    assert [index for index, _, _ in first_run] == [0, 1, 2]  # once per item
    # The n-th hand-over found at least n ledger rows and n saved images: its own were there.
    assert all(rows >= n and saved >= n for n, (_, rows, saved) in enumerate(handed[:3], start=1)), handed
    assert sorted(index for index, _, _ in handed[3:]) == [0, 1, 2]
    assert [row["status"] for row in cached.report["items"]] == ["cached"] * 3
    expected = torch.from_numpy(np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.float32) / 255)
    for output in (fresh, cached):
        assert output.images.shape == (3, 8, 12, 3)
        assert all(torch.equal(frame, expected) for frame in output.images)
    saved = sorted((tmp_path / "out").rglob("*.png"))
    assert len(saved) == 3 and all(p.read_bytes() == image for p in saved)


@pytest.mark.parametrize("policy", ["resize", "pad", "crop"])
def test_a_frame_drawn_in_two_bands_equals_one_drawn_whole(policy):
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    placement = tensors.place(picture.width, picture.height, (41, 29), policy)
    whole = np.full((29, 41, 3), 7.0, dtype=np.float32)
    tensors.draw_picture(whole, picture, 255, placement)
    banded = np.full((29, 41, 3), 7.0, dtype=np.float32)
    fitted = tensors.fitted(picture, placement)
    for band in ((0, 11), (11, 29)):
        tensors.draw_picture(banded, fitted, 255, placement, band)
    assert np.array_equal(whole, banded)
    assert not (banded == 7.0).any()  # every row written, bars included


def test_a_band_needs_a_fitted_picture():
    picture = Image.new("RGB", (10, 10))
    placement = tensors.place(10, 10, (20, 20), "resize")
    with pytest.raises(ValueError, match="fitted"):
        tensors.draw_picture(np.zeros((20, 20, 3), np.float32), picture, 255, placement, (0, 10))
