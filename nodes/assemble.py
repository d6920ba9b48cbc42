"""The output IMAGE batch, filled while the batch runs: each result is decoded the moment it arrives.

Decoding a 4K result takes a few hundred milliseconds; doing it for the whole batch after the
last answer made the node return seconds after the provider finished. Here each arriving image
is decoded off the event loop and drawn into its slot of one preallocated batch, so after the
last answer only that answer's own decode is left.

The layout is optimistic: item i's images go to slots after the images every earlier item asked
for. The frame size is the first output image's (the size policy's rule, see tensors.place), so
it is known once the first item in input order that produced an image has arrived; images that
arrive before that are decoded and held (a bounded number of them) until it is. At the end the
batch is compacted if some items produced fewer images than asked (skipped failures), and
anything the layout could not foresee (more images than asked) falls back to decoding all
results at once, so the result never depends on arrival order. While no decode is waiting, the
frames still to come are written once (prefaulted), so the memory of a multi-GB batch is not
first touched by the last answer's decode.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from itertools import accumulate

import numpy as np
import torch
from PIL import Image

from .jpeg_rows import RowBuffer, decode_drawing, new_row_buffer
from .tensors import (
    ImageDecodeError,
    SizePolicy,
    decode_images,
    draw_picture,
    fitted,
    open_picture,
    place,
)

# Decodes at once: Pillow and numpy release the GIL, so two use both cores of a small machine
# without holding more than two decoded images in flight.
DECODE_LANES = 2
# Images decoded before the frame size is known are held as Pillow images (4 bytes a pixel,
# a third of a float frame); at most this share of the batch is held, the rest waits as bytes.
HELD_SHARE = 0.2

Slot = tuple[int, int]  # (item index, image index within the item)
_JPEG_START = b"\xff\xd8\xff"  # only JPEGs can take the row path (jpeg_rows), so only they start early


class OutputBatch:
    """Collects results by item index (any order) into one IMAGE batch [B, H, W, 3] in input order."""

    def __init__(self, expected: Sequence[int], size_policy: SizePolicy, *, pixel_limit: int | None = None) -> None:
        self._expected = list(expected)  # images each item asked for, in input order
        # Over this many decoded pixels nothing is decoded on arrival; result()'s check decides.
        self._pixel_limit = pixel_limit
        self._offsets = [0, *accumulate(self._expected)]
        self._policy = size_policy
        self._lanes = asyncio.Semaphore(DECODE_LANES)
        self._held_limit = max(1, int(HELD_SHARE * self._offsets[-1]))
        self._arrived: dict[int, int] = {}  # item -> images it produced (0 = none)
        self._held: dict[Slot, tuple[Image.Image, int]] = {}  # decoded, waiting for the frame size
        self._opening = 0  # being decoded into _held
        self._deferred: dict[Slot, bytes] = {}  # not decoded yet, waiting for the frame size
        self._drawn: set[Slot] = set()
        self._errors: dict[Slot, ImageDecodeError] = {}
        self._target: tuple[int, int] | None = None
        self._target_item: int | None = None
        self._frames: np.ndarray | None = None
        self._unforeseen = False  # more images than asked for, or over the pixel limit: decode at the end
        self._tasks: set[asyncio.Task] = set()
        # Frames are prefaulted (their memory touched) while no decode is waiting, so the last
        # answer's decode does not also pay for the first writes into a fresh multi-GB batch.
        self._claimed: set[int] = set()  # frames an arrived image will be drawn into
        self._busy = 0  # decodes running or waiting for a lane
        self._idle = asyncio.Event()
        self._idle.set()
        self._prefaulter: asyncio.Task | None = None
        self._prefaulting: tuple[int, asyncio.Future] | None = None  # (frame, its fill)
        # JPEG results of the frame size decode into these (one per lane, touched while idle),
        # not into fresh memory: see jpeg_rows.
        self._row_buffers: list[RowBuffer] = []
        self._early: dict[Slot, asyncio.Future] = {}  # row-buffer decodes started from written()
        self._handed: dict[int, int] = {}  # item -> images handed over so far (written() or add())

    # -- arrivals (on the event loop) ------------------------------------------------------------

    def add(self, index: int, blobs: Sequence[bytes]) -> None:
        """Item `index` finished with these images (none if it failed); decoding starts now."""
        self._arrived[index] = len(blobs)
        self._handed[index] = min(len(blobs), self._expected[index])
        if len(blobs) > self._expected[index]:
            self._unforeseen = True
        for number, blob in enumerate(blobs):
            if number < self._expected[index]:
                self._claimed.add(self._offsets[index] + number)
                self._spawn(self._take((index, number), blob))
        self._settle_target()

    def written(self, index: int, blobs: Sequence[bytes]) -> None:
        """Item `index`'s images are written to disk, not yet made durable nor recorded (see
        run_batch's on_written). The ones that decode through a row buffer, which takes no memory
        (a JPEG of the frame size), start now; everything else waits for add()."""
        self._handed[index] = min(len(blobs), self._expected[index])
        if self._target is None or self._unforeseen or index in self._arrived:
            return
        for number, blob in enumerate(blobs[: self._expected[index]]):
            slot = (index, number)
            if blob.startswith(_JPEG_START) and slot not in self._early:
                self._claimed.add(self._offsets[index] + number)
                self._early[slot] = self._spawn(self._take_early(slot, blob))

    async def _take_early(self, slot: Slot, blob: bytes) -> None:
        async with self._lanes:
            if not self._unforeseen:
                await self._unfaulted(slot)
                await self._decode_drawing(slot, blob)

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.ensure_future(self._working(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled (close()) before it started never runs `work`: close it, unawaited.
        task.add_done_callback(lambda done: work.close() if done.cancelled() else None)
        return task

    def _frontier(self) -> int | None:
        """The item whose first image sets the frame size, once every item before it produced none."""
        for index in range(len(self._expected)):
            produced = self._arrived.get(index)
            if produced is None:
                return None
            if produced:
                return index
        return None

    async def _working(self, work) -> None:
        self._busy += 1
        self._idle.clear()
        try:
            await work
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _prefault(self) -> None:
        assert self._frames is not None
        for buffer in list(self._row_buffers):
            await self._idle.wait()
            if buffer in self._row_buffers:  # out of the pool while it is written
                self._row_buffers.remove(buffer)
                await asyncio.shield(asyncio.to_thread(buffer.touch))
                self._row_buffers.append(buffer)
        for frame in range(len(self._frames)):
            await self._idle.wait()
            if frame in self._claimed:
                continue
            fill = asyncio.ensure_future(asyncio.to_thread(self._frames[frame].fill, 0.0))
            self._prefaulting = (frame, fill)
            try:
                await asyncio.shield(fill)
            finally:
                self._prefaulting = None

    async def _unfaulted(self, slot: Slot) -> None:
        """Wait until no prefault writes into this slot's frame."""
        current = self._prefaulting
        if current is not None and current[0] == self._offsets[slot[0]] + slot[1]:
            await asyncio.shield(current[1])

    async def _take(self, slot: Slot, blob: bytes) -> None:
        early = self._early.pop(slot, None)
        if early is not None:
            await early  # before taking a lane: it needs one
            if slot in self._drawn:
                return
        async with self._lanes:
            if self._unforeseen or not await asyncio.to_thread(self._within_limit, blob):
                self._unforeseen = True
                return
            if self._target is None and len(self._held) + self._opening >= self._held_limit and slot != (self._frontier(), 0):
                self._deferred[slot] = blob  # memory bound: decode once the frame size is known
                return
            try:
                if self._target is not None:
                    await self._unfaulted(slot)
                    if await self._decode_drawing(slot, blob):
                        return
                    picture, full_scale = await asyncio.to_thread(open_picture, blob)
                    await self._draw_now(slot, picture, full_scale)
                    return
                self._opening += 1
                try:
                    self._held[slot] = await asyncio.to_thread(open_picture, blob)
                finally:
                    self._opening -= 1
            except ImageDecodeError as exc:
                self._errors[slot] = exc
                return
        self._settle_target()

    def _settle_target(self) -> None:
        """Once the frame size is known: allocate the batch and draw everything that waited."""
        if self._unforeseen:  # everything is decoded at the end instead
            self._held.clear()
            self._deferred.clear()
            return
        if self._target is None:
            frontier = self._frontier()
            if frontier is None:
                return
            first = (frontier, 0)
            if first in self._deferred:
                self._spawn(self._take(first, self._deferred.pop(first)))
            if first not in self._held:
                return  # still decoding (or broken: the error is raised at the end)
            width, height = self._held[first][0].size
            if self._pixel_limit is not None and self._offsets[-1] * width * height > self._pixel_limit:
                self._unforeseen = True
                self._settle_target()
                return
            self._target, self._target_item = (width, height), frontier
            # torch's allocator, not numpy's: numpy asks Linux for huge pages on large arrays, and on
            # a machine whose memory is fragmented each huge-page fault then waits for compaction
            # (seconds per 4K frame of a multi-GB batch); small pages fault in steadily.
            self._frames = torch.empty((self._offsets[-1], height, width, 3), dtype=torch.float32).numpy()
            # Only results still to come can use one (a one-image run has none to touch).
            to_come = sum(count for index, count in enumerate(self._expected) if index not in self._arrived)
            buffers = (new_row_buffer((width, height)) for _ in range(min(DECODE_LANES, to_come)))
            self._row_buffers = [buffer for buffer in buffers if buffer is not None]
            self._prefaulter = asyncio.ensure_future(self._prefault())
        for slot, (picture, full_scale) in list(self._held.items()):
            del self._held[slot]
            self._spawn(self._draw(slot, picture, full_scale))
        for slot, blob in list(self._deferred.items()):
            del self._deferred[slot]
            self._spawn(self._take(slot, blob))

    async def _decode_drawing(self, slot: Slot, blob: bytes) -> bool:
        """Decode a JPEG straight into its frame through a row buffer; False: take the ordinary path."""
        if not self._row_buffers:
            return False
        assert self._frames is not None
        buffer = self._row_buffers.pop()
        frame = self._frames[self._offsets[slot[0]] + slot[1]]
        decoding = asyncio.ensure_future(asyncio.to_thread(decode_drawing, blob, frame, buffer))
        if self._is_last(slot):
            self._row_buffers.clear()  # no other image will need one: freed now, beside this decode
        drawn = await decoding
        if not self._is_last(slot):
            self._row_buffers.append(buffer)  # not when cancelled: its thread may still be writing into it
        if drawn:
            self._drawn.add(slot)
        return drawn

    def _is_last(self, slot: Slot) -> bool:
        """Whether every item has handed over its images and all but `slot` are drawn."""
        return len(self._handed) == len(self._expected) and all(
            (index, number) in self._drawn or (index, number) == slot for index, count in self._handed.items() for number in range(count)
        )

    async def _draw(self, slot: Slot, picture: Image.Image, full_scale: int) -> None:
        async with self._lanes:
            await self._unfaulted(slot)
            await self._draw_now(slot, picture, full_scale)

    async def _draw_now(self, slot: Slot, picture: Image.Image, full_scale: int) -> None:
        """Draw into the slot's frame, holding a lane. When the other lane is idle (the last
        answers of a batch), it draws half the rows: the node returns that much sooner."""
        assert self._frames is not None and self._target is not None
        placement = place(picture.width, picture.height, self._target, self._policy)
        frame = self._frames[self._offsets[slot[0]] + slot[1]]
        if self._lanes.locked():
            await asyncio.to_thread(draw_picture, frame, picture, full_scale, placement)
        else:
            async with self._lanes:  # free, so taken at once
                picture = await asyncio.to_thread(fitted, picture, placement)
                middle = len(frame) // 2
                halves = ((0, middle), (middle, len(frame)))
                await asyncio.gather(*(asyncio.to_thread(draw_picture, frame, picture, full_scale, placement, band) for band in halves))
        self._drawn.add(slot)

    # -- worker threads ----------------------------------------------------------------------------

    def _within_limit(self, blob: bytes) -> bool:
        """Whether one image decodes within the pixel limit, from its header alone."""
        if self._pixel_limit is None:
            return True
        try:
            with Image.open(io.BytesIO(blob)) as picture:
                return picture.width * picture.height <= self._pixel_limit
        except Exception:  # noqa: BLE001 - not an image: decoding reports it with the details
            return True

    # -- the end ---------------------------------------------------------------------------------

    async def result(
        self, kept: Sequence[tuple[int, Sequence[bytes]]], *, check: Callable[[list[bytes]], None] | None = None
    ) -> torch.Tensor:
        """The IMAGE batch of the `kept` items' images, in that order (the items' input order).

        `check` sees all those images first (in a thread) and may raise to refuse them.
        """
        slots = [(index, number) for index, blobs in kept for number in range(len(blobs))]
        if not slots:
            raise ValueError("no images to decode")
        # The check reads headers while the last decodes run, not after them.
        checking = asyncio.ensure_future(asyncio.to_thread(check, [blob for _, item_blobs in kept for blob in item_blobs])) if check else None
        try:
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            if checking is not None:
                await checking
        await self._stop_prefaulting()
        self._row_buffers = []  # their memory goes back before the output is handed on
        for slot in slots:
            if slot in self._errors:
                raise self._errors[slot]
        if self._unforeseen or self._target_item != slots[0][0] or not self._drawn.issuperset(slots):
            self._frames = None  # let it go before the full-size fallback allocates its own
            blobs = [blob for _, item_blobs in kept for blob in item_blobs]
            return await asyncio.to_thread(decode_images, blobs, size_policy=self._policy)
        if all(self._offsets[index] + number == position for position, (index, number) in enumerate(slots)):
            frames, self._frames = self._frames, None  # nothing to move (no item fell short)
            assert frames is not None
            return torch.from_numpy(frames[: len(slots)])
        return torch.from_numpy(await asyncio.to_thread(self._compact, slots))

    def _compact(self, slots: list[Slot]) -> np.ndarray:
        """Move frames down over the slots of images that never came (skipped failures).

        The slots of those images were never written, so they never took memory (pages are
        allocated when first written); the frames moved down free nothing, as the batch is one
        allocation: at most the moved frames' worth stays unused until the output is released.
        """
        frames, self._frames = self._frames, None
        assert frames is not None
        for position, (index, number) in enumerate(slots):
            source = self._offsets[index] + number
            if source != position:  # sources only move down, in order, so nothing is overwritten
                frames[position] = frames[source]
        return frames[: len(slots)]

    async def _stop_prefaulting(self) -> None:
        if self._prefaulter is not None:
            self._prefaulter.cancel()
        current = self._prefaulting
        if current is not None:
            await asyncio.shield(current[1])  # a fill in a thread runs on: let it end before frames move

    def close(self) -> None:
        """Stop decoding (the run ended without output); threads already decoding finish alone."""
        for task in [*self._tasks, *([self._prefaulter] if self._prefaulter else [])]:
            task.cancel()
