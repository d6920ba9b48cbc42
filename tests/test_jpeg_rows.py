"""JPEG results decoded into a reused buffer, rows converted while the decoder goes on
(nodes/jpeg_rows.py): the frame must be exactly what the ordinary path (open_picture, then
draw_picture) gives, and anything the path does not handle must say so (False), not half-draw."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from banana_pack.nodes import jpeg_rows
from banana_pack.nodes.jpeg_rows import decode_drawing, new_row_buffer
from banana_pack.nodes.tensors import ImageDecodeError, draw_picture, open_picture, place
from PIL import Image

pytestmark = pytest.mark.skipif(new_row_buffer((8, 8)) is None, reason="this Pillow exports no Arrow arrays (before 11.2)")


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Noise over a gradient: every row differs, so a row drawn from the wrong place shows."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def ordinary(blob: bytes) -> np.ndarray:
    picture, full_scale = open_picture(blob)
    frame = np.full((picture.height, picture.width, 3), -1, dtype=np.float32)
    draw_picture(frame, picture, full_scale, place(picture.width, picture.height, picture.size, "resize"))
    return frame


@pytest.fixture
def small_feeds(monkeypatch):
    """A few hundred bytes per decoder call: many bands, so rows are handed on while it decodes."""
    monkeypatch.setattr(jpeg_rows, "_FEED_BYTES", 700)


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 2, "optimize": True}], ids=["baseline", "progressive", "444", "420-optimized"])
def test_the_frame_is_what_the_ordinary_path_draws(small_feeds, options):
    blob = jpeg(photo(203, 97, 1), **options)
    frame = np.full((97, 203, 3), -1, dtype=np.float32)
    assert decode_drawing(blob, frame, new_row_buffer((203, 97)))
    assert np.array_equal(frame, ordinary(blob))


def test_a_reused_buffer_never_hands_on_the_previous_images_rows(small_feeds):
    buffer = new_row_buffer((120, 80))
    first, second = jpeg(photo(120, 80, 2)), jpeg(photo(120, 80, 3))
    frame = np.zeros((80, 120, 3), dtype=np.float32)
    assert decode_drawing(first, frame, buffer)
    frame.fill(-1)
    assert decode_drawing(second, frame, buffer)  # every row of `first` is still in the buffer
    assert np.array_equal(frame, ordinary(second))


def test_a_touched_buffer_decodes_the_same(small_feeds):
    buffer = new_row_buffer((64, 48))
    buffer.touch()
    blob = jpeg(photo(64, 48, 4))
    frame = np.zeros((48, 64, 3), dtype=np.float32)
    assert decode_drawing(blob, frame, buffer) and np.array_equal(frame, ordinary(blob))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: the ordinary path turns it upright
    return jpeg(photo(64, 48, 5), exif=exif)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(png(photo(64, 48, 6)), id="png"),
        pytest.param(jpeg(photo(64, 48, 7).convert("L")), id="grey"),
        pytest.param(jpeg(photo(64, 48, 8).convert("CMYK")), id="cmyk"),
        pytest.param(rotated_jpeg(), id="exif-rotated"),
        pytest.param(jpeg(photo(48, 64, 9)), id="another-size"),
        pytest.param(jpeg(photo(64, 48, 10))[:900], id="truncated"),
        pytest.param(b"not an image at all", id="not-an-image"),
    ],
)
def test_what_the_path_does_not_handle_is_left_to_the_ordinary_one(small_feeds, blob):
    frame = np.zeros((48, 64, 3), dtype=np.float32)
    assert decode_drawing(blob, frame, new_row_buffer((64, 48))) is False


def test_corrupt_entropy_data_is_left_to_the_ordinary_path(small_feeds):
    blob = bytearray(jpeg(photo(64, 48, 11)))
    start = blob.index(b"\xff\xda")  # start of scan: scramble what follows its header
    rng = random.Random(11)
    for position in range(start + 20, len(blob) - 2):
        blob[position] = rng.choice([0xFF, 0xD0, 0x00])
    try:
        expected = ordinary(bytes(blob))
    except ImageDecodeError:
        expected = None
    frame = np.zeros((48, 64, 3), dtype=np.float32)
    drawn = decode_drawing(bytes(blob), frame, new_row_buffer((64, 48)))
    if expected is None:
        assert drawn is False
    else:  # libjpeg gets through some scrambled data with a warning: then both paths must agree
        assert drawn is False or np.array_equal(frame, expected)
