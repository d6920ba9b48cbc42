"""Decode a JPEG into reusable memory and convert its rows to float while the decoder goes on.

A 4K result is the last thing a batch waits for, and the ordinary path does three things one
after the other: Pillow allocates fresh memory for the image and decodes into it (the first
writes into fresh memory are page faults: about a third of the decode's time), then the rows are
copied out of Pillow and scaled into the output frame. Here Pillow decodes into a buffer the
output batch allocated (and touched) while it waited, and a second thread scales each band of
rows the moment the decoder has written it, so the conversion ends a band after the decode.

The buffer is a Pillow image in one block of memory, read through Arrow's C data interface (a
stable ABI that Pillow 11.2 and later export): numpy sees its RGBX rows without a copy. Anything
this path does not handle (another format or mode, EXIF rotation, another size, an older Pillow,
a decoding error) returns False and the caller takes the ordinary path, which also words errors.
"""

from __future__ import annotations

import ctypes
import io
import queue
import threading
from typing import Any

import numpy as np
from PIL import Image

from .tensors import Placement, draw_picture

# Bytes fed to the decoder at a time: each return is a chance to hand finished rows on.
_FEED_BYTES = 1 << 18
# The 4th byte of each RGBX pixel: Pillow's RGB unpacker writes 255 there with the pixel, so a
# row whose last pixel has it is complete (rows are written whole, in order).
_PADDING = 3
_EXIF_ORIENTATION = 0x0112


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p),
    ("name", ctypes.c_char_p),
    ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64),
    ("null_count", ctypes.c_int64),
    ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64),
    ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class RowBuffer:
    """One RGB image's worth of Pillow memory in a single block, with a numpy view [H, W, 4] of it."""

    def __init__(self, size: tuple[int, int]) -> None:
        width, height = size
        self.size = size
        self.core = Image.core.new_block("RGB", size)
        # The capsules own Pillow's lease on the memory: kept as long as the view is.
        self._capsules = (self.core.__arrow_c_schema__(), self.core.__arrow_c_array__())
        schema = _ArrowSchema.from_address(_capsule_pointer(self._capsules[0], b"arrow_schema"))
        array = _ArrowArray.from_address(_capsule_pointer(self._capsules[1], b"arrow_array"))
        if schema.format != b"+w:4" or schema.n_children != 1 or array.n_children != 1 or array.offset:
            raise ValueError(f"unexpected Arrow export of an RGB image: {schema.format!r}")
        values = array.children[0].contents
        if schema.children[0].contents.format != b"C" or values.n_buffers != 2 or values.offset or values.length != width * height * 4:
            raise ValueError("unexpected Arrow export of an RGB image's bytes")
        memory = (ctypes.c_uint8 * values.length).from_address(values.buffers[1])
        self.view = np.frombuffer(memory, dtype=np.uint8).reshape(height, width, 4)
        # The same memory as a Pillow image, for copying rows out packed (3 bytes a pixel): numpy
        # converting the view's 3-of-4 bytes directly is six times slower (tiny inner loops).
        self.picture = Image.fromarrow(self, "RGB", size)

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.core.__arrow_c_schema__(), self.core.__arrow_c_array__()

    def touch(self) -> None:
        """Write every page once, so a decode into it does not pay for first writes."""
        self.view.fill(0)


def new_row_buffer(size: tuple[int, int]) -> RowBuffer | None:
    """A RowBuffer, or None where this Pillow cannot give one (before 11.2, or a changed export)."""
    try:
        return RowBuffer(size)
    except Exception:  # noqa: BLE001 - any failure only means the ordinary path is used
        return None


def decode_drawing(blob: bytes, frame: np.ndarray, buffer: RowBuffer) -> bool:
    """Decode JPEG `blob` into `buffer` while scaling its rows to 0..1 into `frame` [H, W, 3].

    Only a baseline or progressive JPEG in RGB, upright, exactly the frame's and the buffer's
    size; returns False (maybe with part of the frame written) for anything else or any error.
    Runs in a worker thread; converts in a second one. Pillow's decoder releases the GIL.
    """
    try:
        with Image.open(io.BytesIO(blob)) as picture:
            if picture.format != "JPEG" or picture.mode != "RGB" or picture.size != buffer.size or len(picture.tile) != 1:
                return False
            limit = Image.MAX_IMAGE_PIXELS
            if (limit and picture.width * picture.height > limit) or frame.shape[:2] != (picture.height, picture.width):
                return False
            if picture.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return False
            decoder_name, extents, offset, args = picture.tile[0]
            decoder = Image._getdecoder(picture.mode, decoder_name, args, picture.decoderconfig)
    except Exception:  # noqa: BLE001 - the ordinary path decodes it, or says what is wrong
        return False
    buffer.view[:, -1, _PADDING] = 0  # no row counts as decoded until the decoder writes it again
    bands: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    failures: list[BaseException] = []
    converter = threading.Thread(target=_convert, args=(bands, buffer.picture, frame, failures), name="banana-rows", daemon=True)
    converter.start()
    try:
        decoded = _decode(decoder, buffer, memoryview(blob)[offset:], bands)
    except Exception:  # noqa: BLE001
        decoded = False
    finally:
        decoder.cleanup()
        bands.put(None)
        converter.join()
    return decoded and not failures


def _decode(decoder: Any, buffer: RowBuffer, data: memoryview, bands: queue.SimpleQueue) -> bool:
    """ImageFile.load's loop for one tile, handing on finished rows after every call."""
    height = buffer.size[1]
    decoder.setimage(buffer.core, (0, 0, *buffer.size))
    last_pixels = buffer.view[:, -1, _PADDING]
    pending, position, finished_rows = b"", 0, 0
    while True:
        feed = bytes(data[position : position + _FEED_BYTES])
        position += len(feed)
        if not feed:
            return False  # truncated: the ordinary path reports it (or pads it, as the user's Pillow allows)
        pending += feed
        consumed, error = decoder.decode(pending)
        if consumed < 0:  # the decoder is done
            if error < 0:
                return False
            if finished_rows < height:
                bands.put((finished_rows, height))
            return True
        pending = pending[consumed:]
        # The decoder is not running now (this thread called it): rows written so far are whole.
        done = finished_rows + int(np.argmin(last_pixels[finished_rows:] == 255)) if last_pixels[-1] != 255 else height
        if done > finished_rows:
            bands.put((finished_rows, done))
            finished_rows = done


def _convert(bands: queue.SimpleQueue, picture: Image.Image, frame: np.ndarray, failures: list[BaseException]) -> None:
    """Scale each band as it comes (as draw_picture does, strip by strip); keep taking bands after a failure."""
    whole = Placement(picture.size, (0, 0))
    while (band := bands.get()) is not None:
        try:
            draw_picture(frame, picture, 255, whole, band)
        except Exception as exc:  # noqa: BLE001 - reported to decode_drawing, which falls back
            failures.append(exc)
