"""Conversions between ComfyUI IMAGE tensors and the image bytes that providers take and return.

IMAGE is a torch.Tensor [B, H, W, C], float 0..1, channels-last, C = 3 (RGB), 4 (RGBA) or 1 (grey).
Everything here is a pure function without shared mutable state, so it is safe to run under
asyncio.to_thread, and it imports neither ComfyUI nor the server, so it is testable on its own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

EncodeFormat = Literal["auto", "jpeg", "png", "webp"]
SizePolicy = Literal["resize", "pad", "crop"]

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_POLICIES = ("resize", "pad", "crop")
_WEBP_QUALITY = 95
# Values per conversion block: 1 MiB as float32, small enough to stay in the CPU cache.
_BLOCK_VALUES = 1 << 18
# Encoding works on 4 MiB blocks: measured faster than 1 MiB (fewer numpy calls per image).
_ENCODE_BLOCK_VALUES = 1 << 20
_MAGIC = np.float32(2**23)
_ROUNDED_0 = np.int32(0x4B000000)  # the bits of float32 2**23 + 0
_ROUNDED_255 = np.int32(0x4B0000FF)  # ... and of 2**23 + 255
_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, or the image is too large to decode safely."""


@dataclass(frozen=True)
class EncodedImage:
    """One image ready to upload."""

    data: bytes = field(repr=False)  # megabytes; keep it out of logs and tracebacks
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class Placement:
    """How a source image maps onto an output frame: resize it to `size` (width, height), then put
    its top-left corner at `offset` (x, y) in the frame; a negative offset crops that much away."""

    size: tuple[int, int]
    offset: tuple[int, int]


def fit_pixels(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """Largest (width, height) within `max_pixels` at the same aspect ratio (within half a pixel).

    Never upscales: a size already within budget (or no budget) is returned unchanged.
    """
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    long_side, short_side = max(width, height), min(width, height)
    # The long side takes the exact scale rounded down; the short side follows it rounded to the
    # nearest pixel, capped by the integer budget (which also settles 1 px strips).
    new_long = max(1, min(int(long_side * (max_pixels / (width * height)) ** 0.5), max_pixels))
    new_short = max(1, min(round(new_long * short_side / long_side), max_pixels // new_long))
    return (new_long, new_short) if width >= height else (new_short, new_long)


def place(width: int, height: int, target: tuple[int, int], policy: SizePolicy) -> Placement:
    """Geometry that fits a width x height image into a `target` (width, height) frame.

    "resize" stretches to the target exactly (the aspect ratio changes if it differs);
    "pad" scales to fit inside and centres it (letterbox, the caller fills the bars black);
    "crop" scales to cover the frame and centres it, so the overhang is cut off.
    """
    if policy not in _POLICIES:
        raise ValueError(f"size_policy must be one of {_POLICIES}, got {policy!r}")
    tw, th = target
    if tw < 1 or th < 1:
        raise ValueError(f"target must be a positive (width, height), got {target}")
    if policy == "resize" or (width, height) == (tw, th):
        return Placement((tw, th), (0, 0))
    scale = (min if policy == "pad" else max)(tw / width, th / height)
    sw, sh = max(1, round(width * scale)), max(1, round(height * scale))
    # Rounding may miss the frame by a pixel: pad must fit inside it, crop must cover it.
    sw, sh = (min(sw, tw), min(sh, th)) if policy == "pad" else (max(sw, tw), max(sh, th))
    # int() truncates toward zero, so an odd spare (or overhang) pixel goes to the right/bottom.
    return Placement((sw, sh), (int((tw - sw) / 2), int((th - sh) / 2)))


def encode_image(
    image: torch.Tensor,
    *,
    max_pixels: int | None,
    fmt: EncodeFormat = "auto",
    jpeg_quality: int = 95,
) -> EncodedImage:
    """Encode one IMAGE [H, W, C] (C = 1, 3 or 4; any float dtype or device) for upload.

    Downscales with Lanczos only when H*W exceeds `max_pixels`. Alpha that is fully opaque is
    dropped. "auto" sends JPEG (quality `jpeg_quality`) unless real transparency is left, then
    PNG; "png" is always lossless; "jpeg" composites transparency over white first; "webp" is
    lossy at quality 95 and keeps transparency.
    """
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or not image.is_floating_point():
        raise ValueError(
            f"expected a float image of shape [H, W, C] with C in 1, 3, 4, got {image.dtype} {tuple(image.shape)}"
        )
    if fmt not in ("auto", *_MIME):
        raise ValueError(f"fmt must be 'auto' or one of {tuple(_MIME)}, got {fmt!r}")
    pixels = _to_uint8(image)
    if pixels.shape[-1] == 4 and pixels[..., 3].min() == 255:
        # Opaque alpha carries nothing; dropping it lets "auto" choose JPEG and shrinks PNG by 1/4.
        pixels = np.ascontiguousarray(pixels[..., :3])
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    size = fit_pixels(picture.width, picture.height, max_pixels)
    if size != picture.size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)  # Pillow premultiplies RGBA while resampling
    if fmt == "auto":
        # A 2048x2048 photo is ~10 MB as PNG but ~2.6 MB as JPEG q95, with no visible loss.
        fmt = "png" if picture.mode == "RGBA" else "jpeg"
    buffer = io.BytesIO()
    if fmt == "jpeg":
        if picture.mode == "RGBA":
            # JPEG has no alpha, and the colour under transparent pixels is arbitrary (often black);
            # white is what a viewer shows behind a transparent image, so the model sees the same.
            picture = _over_white(picture)
        picture.save(buffer, "JPEG", quality=jpeg_quality)
    elif fmt == "png":
        picture.save(buffer, "PNG")
    else:
        picture.save(buffer, "WEBP", quality=_WEBP_QUALITY, lossless=False)
    return EncodedImage(buffer.getvalue(), _MIME[fmt], picture.width, picture.height)


def encode_batch(
    images: torch.Tensor,
    *,
    max_pixels: int | None,
    fmt: EncodeFormat = "auto",
    jpeg_quality: int = 95,
) -> list[EncodedImage]:
    """Encode an IMAGE batch [B, H, W, C]: each batch element becomes one reference image."""
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE batch of shape [B, H, W, C], got {tuple(images.shape)}")
    # One image at a time, so no float copy of the whole batch ever exists.
    return [encode_image(image, max_pixels=max_pixels, fmt=fmt, jpeg_quality=jpeg_quality) for image in images]


def decode_image(blob: bytes) -> torch.Tensor:
    """Decode one image to a [H, W, 3] float32 CPU tensor (see decode_images)."""
    return decode_images([blob])[0]


def decode_images(
    blobs: Sequence[bytes],
    *,
    size_policy: SizePolicy = "resize",
) -> torch.Tensor:
    """Decode provider images into one IMAGE batch [B, H, W, 3], float32 0..1, on the CPU.

    Any Pillow format and mode works (PNG, JPEG, WebP, grey, palette, 16-bit, CMYK); EXIF
    rotation is applied and transparency is composited over white. The batch size is the first
    image's; other sizes follow `size_policy` (see `place`).
    Raises ImageDecodeError for bytes that are not an image or exceed Image.MAX_IMAGE_PIXELS.
    """
    if not blobs:
        raise ValueError("no images to decode")
    frames, size = None, None
    for index, blob in enumerate(blobs):
        picture, full_scale = open_picture(blob)
        size = size or picture.size
        placement = place(picture.width, picture.height, size, size_policy)  # also validates both
        if frames is None:
            # Filled in place image by image: peak memory is the batch plus one decoded image.
            # numpy allocates it because numpy asks Linux for huge pages on large arrays: writing
            # a fresh batch then takes a fraction of the page faults of torch.empty's memory.
            frames = np.empty((len(blobs), size[1], size[0], 3), dtype=np.float32)
        draw_picture(frames[index], picture, full_scale, placement)
    return torch.from_numpy(frames)  # shares the memory, no copy


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, C] float 0..1 on any device -> contiguous uint8 [H, W, C] on the CPU.

    Clamped to 0..1 and rounded to the nearest value, ties to even (as torch.round)."""
    image = image.detach()  # .numpy() refuses tensors that require grad
    if image.device.type != "cpu":
        # Arithmetic is cheap on an accelerator; convert there so one byte per value crosses over.
        scaled = image.float().mul(255).round_().clamp_(0, 255)
        return scaled.to(torch.uint8).contiguous().cpu().numpy()
    height, width, channels = image.shape
    pixels = np.empty((height, width, channels), dtype=np.uint8)
    rows = max(1, _ENCODE_BLOCK_VALUES // (width * channels))
    scratch = np.empty((min(rows, height), width, channels), dtype=np.float32)
    scratch_bits = scratch.view(np.int32)
    # numpy has no bfloat16: those blocks go through torch's float(); every other float dtype
    # and any strides are read in place through one numpy view, without a per-block tensor.
    source = None if image.dtype == torch.bfloat16 else image.numpy()
    # Each float is read from memory once; the passes below run on a block that stays in cache.
    # numpy rather than torch: torch's multi-threaded ops stall at every block when other work
    # (a sampler) holds the cores.
    for top in range(0, height, rows):
        block_source = image[top : top + rows].float().numpy() if source is None else source[top : top + rows]
        block, bits = scratch[: block_source.shape[0]], scratch_bits[: block_source.shape[0]]
        np.multiply(block_source, np.float32(255), out=block, dtype=np.float32)
        # Adding 2**23 rounds to an integer in the float's low mantissa bits (x + 2**23 has a
        # spacing of 1), so the bits of 0..255 are _ROUNDED_0.._ROUNDED_255: clamping those as
        # integers also sends negatives, -0, overflows and infinities to 0 or 255. One pass less
        # than add-0.5-clip-truncate, and an integer clamp is faster than numpy's float clip.
        np.add(block, _MAGIC, out=block)
        np.clip(bits, _ROUNDED_0, _ROUNDED_255, out=bits)
        np.copyto(pixels[top : top + rows], bits, casting="unsafe")  # the low byte is the value
    return pixels


def _over_white(picture: Image.Image) -> Image.Image:
    """Composite an image with alpha over a white background, returning RGB."""
    rgba = picture if picture.mode == "RGBA" else picture.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba)
    return flat


def _has_alpha(picture: Image.Image) -> bool:
    """Whether the image carries transparency (Image.has_transparency_data needs Pillow 10.1)."""
    return (
        picture.mode in ("LA", "La", "PA", "RGBA", "RGBa")
        or "transparency" in picture.info
        or (picture.mode == "P" and picture.palette is not None and picture.palette.mode.endswith("A"))
    )


def _describe(blob: bytes) -> str:
    """Say what undecodable bytes looked like, for the error message."""
    return f"{len(blob)} bytes starting {blob[:24]!r}" if blob else "0 bytes"


def open_picture(blob: bytes) -> tuple[Image.Image, int]:
    """Decode bytes to an upright L, RGB or I;16 image plus the value that means full intensity."""
    try:
        picture: Image.Image = Image.open(io.BytesIO(blob))
        # Checked here, not by turning DecompressionBombWarning into an error: warning filters
        # are process-global state, which threads must not change.
        limit = Image.MAX_IMAGE_PIXELS
        if limit and picture.width * picture.height > limit:
            raise ImageDecodeError(
                f"image claims {picture.width}x{picture.height} pixels, over the {limit}-pixel "
                f"decompression-bomb limit ({_describe(blob)})"
            )
        picture.load()
        ImageOps.exif_transpose(picture, in_place=True)
        if _has_alpha(picture):
            return _over_white(picture), 255
        if picture.mode.startswith("I;16"):
            return picture, 65535  # 16-bit grey keeps its precision in the float output
        if picture.mode not in ("L", "RGB"):
            picture = picture.convert("L" if picture.mode == "1" else "RGB")
        return picture, 255
    except (ImageDecodeError, MemoryError):
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image format Pillow recognises: {_describe(blob)}") from None
    except Exception as exc:  # Pillow raises many types for corrupt data; callers need one
        raise ImageDecodeError(f"could not decode image from {_describe(blob)}: {exc}") from exc


def fitted(picture: Image.Image, placement: Placement) -> Image.Image:
    """The picture at its placed size (resampled with Lanczos when that differs)."""
    return picture if placement.size == picture.size else picture.resize(placement.size, Image.Resampling.LANCZOS)


def draw_picture(
    frame: np.ndarray, picture: Image.Image, full_scale: int, placement: Placement, band: tuple[int, int] | None = None
) -> None:
    """Write `picture` into the float frame [H, W, 3] at `placement`, scaled to 0..1.

    `band` (first row, end row) limits the work to those frame rows, so threads can share one
    frame; the picture must then be `fitted` already.
    """
    if band is not None and placement.size != picture.size:
        raise ValueError("draw a band only from a fitted picture")
    picture = fitted(picture, placement)
    (x, y), (w, h) = placement.offset, placement.size
    frame_h, frame_w = frame.shape[:2]
    first, stop = band or (0, frame_h)
    left, top, right, bottom = max(x, 0), max(y, 0), min(x + w, frame_w), min(y + h, frame_h)
    if (left, top, right, bottom) != (0, 0, frame_w, frame_h):
        frame[first:stop].fill(0)  # letterbox bars
    top, bottom = max(top, first), min(bottom, stop)
    # Strip by strip: np.asarray copies what it is given, so whole-image copies never exist and
    # each strip is still in cache when it is scaled into the batch. Dividing matches LoadImage.
    rows = max(1, _BLOCK_VALUES // (3 * (right - left)))
    for row in range(top, bottom, rows):
        end = min(row + rows, bottom)
        pixels = np.asarray(picture.crop((left - x, row - y, right - x, end - y)))
        if pixels.ndim == 2:
            pixels = pixels[..., None]  # grey broadcasts to the three channels
        np.divide(pixels, np.float32(full_scale), out=frame[row:end, left:right])
