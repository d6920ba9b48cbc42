"""IMAGE tensor <-> image bytes: encoding, decoding, size policies and their failure modes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from banana_pack.nodes import tensors
from banana_pack.nodes.tensors import ImageDecodeError, Placement, decode_image, decode_images, encode_image


def random_u8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def as_image(pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> float32 IMAGE frame holding exactly representable k/255 values."""
    return torch.from_numpy(pixels).float() / 255


def smooth_image(height: int, width: int) -> torch.Tensor:
    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    return torch.cat([x.expand(height, width, 1), y.expand(height, width, 1), ((x + y) / 2).expand(height, width, 1)], -1)


def open_bytes(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def save(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(1, 1), (3, 7), (1023, 517), (64, 48)])
def test_png_round_trip_is_exact(height, width):
    pixels = random_u8(height, width)
    encoded = encode_image(as_image(pixels), max_pixels=None, fmt="png")
    assert (encoded.mime, encoded.width, encoded.height) == ("image/png", width, height)
    assert np.array_equal(np.asarray(open_bytes(encoded.data)), pixels)
    decoded = decode_image(encoded.data)
    assert decoded.shape == (height, width, 3) and decoded.dtype == torch.float32
    assert torch.equal(decoded, as_image(pixels))


def test_jpeg_round_trip_within_tolerance():
    image = smooth_image(96, 128)
    encoded = encode_image(image, max_pixels=None, fmt="jpeg")
    assert encoded.mime == "image/jpeg" and open_bytes(encoded.data).format == "JPEG"
    error = (decode_image(encoded.data) - image).abs()
    assert error.mean() < 1.5 / 255 and error.max() < 8 / 255


def test_auto_keeps_real_transparency_as_png():
    pixels = random_u8(16, 24, 4)
    pixels[..., 3] = np.arange(24, dtype=np.uint8)[None, :] * 10
    encoded = encode_image(as_image(pixels), max_pixels=None)
    picture = open_bytes(encoded.data)
    assert encoded.mime == "image/png" and picture.mode == "RGBA"
    assert np.array_equal(np.asarray(picture), pixels)


def test_auto_sends_opaque_rgba_as_rgb_jpeg():
    pixels = random_u8(16, 24, 4)
    pixels[..., 3] = 255
    encoded = encode_image(as_image(pixels), max_pixels=None)
    assert encoded.mime == "image/jpeg" and open_bytes(encoded.data).mode == "RGB"
    assert encode_image(as_image(pixels), max_pixels=None, fmt="png").data == encode_image(
        as_image(pixels[..., :3]), max_pixels=None, fmt="png"
    ).data


def test_jpeg_composites_transparency_over_white():
    image = torch.zeros(8, 8, 4)  # black, fully transparent ...
    image[:, 4:] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # ... except an opaque red right half
    decoded = decode_image(encode_image(image, max_pixels=None, fmt="jpeg").data)
    assert torch.allclose(decoded[4, 0], torch.ones(3), atol=0.05)
    assert torch.allclose(decoded[4, 7], torch.tensor([1.0, 0.0, 0.0]), atol=0.1)


def test_webp_is_lossy_and_keeps_alpha():
    image = smooth_image(32, 32)
    encoded = encode_image(image, max_pixels=None, fmt="webp")
    assert encoded.mime == "image/webp" and open_bytes(encoded.data).format == "WEBP"
    assert (decode_image(encoded.data) - image).abs().mean() < 2 / 255
    transparent = torch.cat([image, torch.full((32, 32, 1), 0.5)], -1)
    assert open_bytes(encode_image(transparent, max_pixels=None, fmt="webp").data).mode == "RGBA"


def test_grey_one_channel_input():
    pixels = random_u8(9, 11, 1)
    encoded = encode_image(as_image(pixels), max_pixels=None, fmt="png")
    assert open_bytes(encoded.data).mode == "L"
    assert np.array_equal(np.asarray(open_bytes(encoded.data)), pixels[..., 0])
    assert torch.equal(decode_image(encoded.data), as_image(pixels).expand(9, 11, 3))
    assert open_bytes(encode_image(as_image(pixels), max_pixels=None).data).format == "JPEG"


def test_values_outside_0_1_are_clamped_and_rounded():
    # 127.5 and 254.5 are exact ties in float32: rounded to even, as torch.round does.
    image = torch.tensor([[[-0.5, 1.7, 0.5], [0.2 / 255, 0.6 / 255, 254.5 / 255], [253.5 / 255, -0.0, 1e30]]])
    pixels = np.asarray(open_bytes(encode_image(image, max_pixels=None, fmt="png").data))
    assert pixels.tolist() == [[[0, 255, 128], [0, 1, 254], [254, 0, 255]]]
    extremes = torch.tensor([[[float("inf"), float("-inf"), -1e30]]])
    assert np.asarray(open_bytes(encode_image(extremes, max_pixels=None, fmt="png").data)).tolist() == [[[255, 0, 0]]]


def test_conversion_matches_torch_round_and_clamp():
    generator = torch.Generator().manual_seed(7)
    image = torch.rand(1500, 257, 3, generator=generator) * 1.4 - 0.2  # two blocks; a seventh out of range either side
    expected = (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(tensors._to_uint8(image), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    pixels = random_u8(20, 30)
    encoded = encode_image(as_image(pixels).to(dtype), max_pixels=None, fmt="png")
    difference = np.abs(np.asarray(open_bytes(encoded.data)).astype(int) - pixels)
    assert difference.max() <= (1 if dtype == torch.bfloat16 else 0)  # bfloat16 cannot hold every k/255


def test_non_contiguous_views():
    pixels = random_u8(40, 60, 4)
    channels_first = as_image(pixels).permute(2, 0, 1).contiguous()
    permuted = channels_first.permute(1, 2, 0)  # channels-last view of channels-first memory
    assert not permuted.is_contiguous()
    assert np.array_equal(np.asarray(open_bytes(encode_image(permuted, max_pixels=None, fmt="png").data)), pixels)
    sliced = as_image(pixels)[::2, 1::3, :3]
    expected = pixels[::2, 1::3, :3]
    encoded = encode_image(sliced, max_pixels=None, fmt="png")
    assert np.array_equal(np.asarray(open_bytes(encoded.data)), expected)


def test_inference_and_grad_tensors():
    pixels = random_u8(5, 6)
    with torch.inference_mode():
        frozen = as_image(pixels)
    needs_grad = as_image(pixels).requires_grad_()
    for image in (frozen, needs_grad):
        assert np.array_equal(np.asarray(open_bytes(encode_image(image, max_pixels=None, fmt="png").data)), pixels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_matches_cpu():
    image = as_image(random_u8(33, 17))
    on_gpu = encode_image(image.cuda().half(), max_pixels=None, fmt="png").data
    assert on_gpu == encode_image(image.half(), max_pixels=None, fmt="png").data


def test_encode_batch_gives_one_reference_per_element():
    batch = torch.stack([as_image(random_u8(10, 12, seed=s)) for s in range(3)])
    encoded = tensors.encode_batch(batch, max_pixels=None, fmt="png")
    assert len(encoded) == 3
    for index, item in enumerate(encoded):
        assert np.array_equal(np.asarray(open_bytes(item.data)), random_u8(10, 12, seed=index))


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        encode_image(torch.zeros(1, 4, 4, 3), max_pixels=None)
    with pytest.raises(ValueError, match="shape"):
        encode_image(torch.zeros(4, 4, 2), max_pixels=None)
    with pytest.raises(ValueError, match="float"):
        encode_image(torch.zeros(4, 4, 3, dtype=torch.uint8), max_pixels=None)
    with pytest.raises(ValueError, match="fmt"):
        encode_image(torch.zeros(4, 4, 3), max_pixels=None, fmt="gif")
    with pytest.raises(ValueError, match="batch"):
        tensors.encode_batch(torch.zeros(4, 4, 3), max_pixels=None)


# --- downscale geometry -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,budget",
    [(4096, 4096, 2048 * 2048), (3000, 2000, 1_000_000), (1023, 517, 100_000), (7, 3, 20), (517, 1023, 4096)],
)
def test_fit_pixels_keeps_aspect_within_budget(width, height, budget):
    new_w, new_h = tensors.fit_pixels(width, height, budget)
    assert new_w * new_h <= budget
    assert abs(new_h - new_w * height / width) <= 1
    assert new_w <= width and new_h <= height and new_w * new_h < width * height
    assert (new_w + 1) * (new_h + 1) > budget  # as large as the budget allows
    assert abs(new_h - new_w * height / width) <= 0.5 or abs(new_w - new_h * width / height) <= 0.5


def test_fit_pixels_random_sizes_stay_in_budget():
    rng = np.random.default_rng(1)
    for width, height, budget in rng.integers(1, 5000, (500, 3)).tolist():
        new_w, new_h = tensors.fit_pixels(width, height, budget)
        assert 1 <= new_w <= width and 1 <= new_h <= height
        if width * height > budget:
            assert new_w * new_h <= budget
            long_side, short_side, new_long, new_short = (
                (width, height, new_w, new_h) if width >= height else (height, width, new_h, new_w)
            )
            # The long side is as large as the budget allows at the exact aspect ratio ...
            assert (new_long + 1) ** 2 * short_side / long_side > budget or new_long == budget
            # ... and the short side follows it within a pixel (unless clamped to 1 px).
            assert abs(new_short - new_long * short_side / long_side) <= 1 or new_short == 1


def test_fit_pixels_exact_values_and_no_upscaling():
    assert tensors.fit_pixels(4096, 4096, 2048 * 2048) == (2048, 2048)
    assert tensors.fit_pixels(3000, 2000, 1_000_000) == (1224, 816)
    assert tensors.fit_pixels(1, 10_000, 100) == (1, 100)
    assert tensors.fit_pixels(2048, 2048, 2048 * 2048) == (2048, 2048)
    assert tensors.fit_pixels(100, 50, 10**9) == (100, 50)
    assert tensors.fit_pixels(100, 50, None) == (100, 50)
    assert tensors.fit_pixels(10_000, 1, 100) == (100, 1)  # a strip keeps its 1 px side
    with pytest.raises(ValueError):
        tensors.fit_pixels(10, 10, 0)


def test_encode_downscales_only_over_budget():
    image = smooth_image(200, 300)
    small = encode_image(image, max_pixels=10_000, fmt="png")
    assert (small.width, small.height) == tensors.fit_pixels(300, 200, 10_000) == open_bytes(small.data).size
    same = encode_image(image, max_pixels=60_000, fmt="png")
    assert (same.width, same.height) == (300, 200)
    # Lanczos of a smooth ramp stays close to the ramp sampled at the new size.
    expected = smooth_image(small.height, small.width)
    assert (decode_image(small.data) - expected).abs().mean() < 0.01


def test_downscale_keeps_transparency():
    image = torch.zeros(64, 64, 4)
    image[..., 0] = 1.0
    image[:, 32:, 3] = 1.0
    encoded = encode_image(image, max_pixels=32 * 32)
    pixels = np.asarray(open_bytes(encoded.data))
    assert encoded.mime == "image/png" and (encoded.width, encoded.height) == (32, 32)
    assert pixels[:, :12, 3].max() <= 1 and pixels[:, 20:, 3].min() == 255  # Lanczos rings a little
    # Resampled with premultiplied alpha: the half-transparent edge stays red, not darkened.
    assert pixels[:, 16, 3].max() > 200 and (pixels[:, 16, :3] == [255, 0, 0]).all()


# --- decoding formats and modes ---------------------------------------------------------------


def test_decode_rgb_jpeg_webp():
    pixels = random_u8(12, 10)
    assert torch.equal(decode_image(save(Image.fromarray(pixels), "PNG")), as_image(pixels))
    assert torch.equal(decode_image(save(Image.fromarray(pixels), "WEBP", lossless=True)), as_image(pixels))
    smooth = (smooth_image(32, 32) * 255).round().to(torch.uint8).numpy()
    jpeg = decode_image(save(Image.fromarray(smooth), "JPEG", quality=95))
    assert (jpeg - as_image(smooth)).abs().mean() < 2 / 255


def test_decode_grey_and_grey_alpha():
    grey = random_u8(6, 5, 1)[..., 0]
    assert torch.equal(decode_image(save(Image.fromarray(grey, "L"), "PNG")), as_image(grey[..., None]).expand(6, 5, 3))
    grey_alpha = Image.new("LA", (4, 4), (0, 255))
    grey_alpha.putpixel((0, 0), (0, 0))  # transparent black becomes white
    decoded = decode_image(save(grey_alpha, "PNG"))
    assert decoded[0, 0].tolist() == [1.0, 1.0, 1.0] and decoded[1, 1].tolist() == [0.0, 0.0, 0.0]


def test_decode_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.putpixel((3, 3), 2)
    decoded = decode_image(save(palette, "PNG"))
    assert decoded[0, 0].tolist() == [1.0, 0.0, 0.0] and decoded[3, 3].tolist() == [0.0, 0.0, 1.0]
    transparent = decode_image(save(palette, "PNG", transparency=1))  # index 1 (red) is transparent
    assert transparent[0, 0].tolist() == [1.0, 1.0, 1.0] and transparent[3, 3].tolist() == [0.0, 0.0, 1.0]


def test_decode_16_bit_keeps_precision():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    picture = Image.fromarray(values)
    assert picture.mode.startswith("I;16")
    decoded = decode_image(save(picture, "PNG"))
    assert decoded.shape == (1, 4, 3)
    assert torch.allclose(decoded[0, :, 0], torch.tensor([0, 257, 32768, 65535]) / 65535)
    assert torch.equal(decoded[..., 0], decoded[..., 2])


def test_decode_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 16))  # magenta + yellow ink: red
    decoded = decode_image(save(cmyk, "JPEG", quality=95))
    assert torch.allclose(decoded[8, 12], torch.ones(3), atol=0.05)
    assert torch.allclose(decoded[8, 3], torch.tensor([1.0, 0.0, 0.0]), atol=0.05)


def test_decode_rgba_composites_over_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    assert decode_image(save(rgba, "PNG")).tolist() == [[[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]]


def test_decode_applies_exif_rotation():
    picture = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    assert decode_image(save(picture, "JPEG", exif=exif)).shape == (20, 10, 3)


# --- batches of mixed sizes -------------------------------------------------------------------


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid_png(width: int, height: int, color) -> bytes:
    return save(Image.new("RGB", (width, height), color), "PNG")


def halves_png(width: int, height: int) -> bytes:
    """Left half red, right half blue."""
    picture = Image.new("RGB", (width, height), BLUE)
    picture.paste(RED, (0, 0, width // 2, height))
    return save(picture, "PNG")


def test_resize_policy_stretches_to_first_size():
    batch = decode_images([solid_png(40, 20, RED), solid_png(10, 10, GREEN)])
    assert batch.shape == (2, 20, 40, 3)
    assert torch.allclose(batch[1], torch.tensor([0.0, 1.0, 0.0]).expand(20, 40, 3), atol=1e-6)


def test_pad_policy_letterboxes_centred():
    batch = decode_images([solid_png(40, 20, RED), solid_png(10, 10, GREEN)], size_policy="pad")
    assert batch.shape == (2, 20, 40, 3)
    assert batch[1, 10, 20].tolist() == [0.0, 1.0, 0.0]  # scaled to 20x20 at x 10..29
    assert batch[1, 10, 10].tolist() == [0.0, 1.0, 0.0] and batch[1, 10, 29].tolist() == [0.0, 1.0, 0.0]
    assert batch[1, 10, 9].tolist() == [0.0, 0.0, 0.0] and batch[1, 10, 30].tolist() == [0.0, 0.0, 0.0]
    assert batch[0].eq(torch.tensor([1.0, 0.0, 0.0])).all()


def test_crop_policy_covers_and_centres():
    batch = decode_images([solid_png(10, 10, GREEN), halves_png(20, 10)], size_policy="crop")
    assert batch.shape == (2, 10, 10, 3)
    # The 20x10 source keeps its scale and shows its middle columns 5..14: red, then blue.
    assert batch[1, 5, 0].tolist() == [1.0, 0.0, 0.0] and batch[1, 5, 4].tolist() == [1.0, 0.0, 0.0]
    assert batch[1, 5, 5].tolist() == [0.0, 0.0, 1.0] and batch[1, 5, 9].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "size,target,policy,expected",
    [
        ((10, 10), (40, 20), "resize", Placement((40, 20), (0, 0))),
        ((10, 10), (40, 20), "pad", Placement((20, 20), (10, 0))),
        ((10, 10), (40, 20), "crop", Placement((40, 40), (0, -10))),
        ((20, 10), (10, 10), "crop", Placement((20, 10), (-5, 0))),
        ((20, 10), (10, 10), "pad", Placement((10, 5), (0, 2))),
        ((40, 20), (40, 20), "pad", Placement((40, 20), (0, 0))),
        ((3, 1), (4, 4), "pad", Placement((4, 1), (0, 1))),
    ],
)
def test_place_geometry(size, target, policy, expected):
    assert tensors.place(*size, target, policy) == expected


def test_place_rejects_unknown_policy_and_bad_target():
    with pytest.raises(ValueError, match="size_policy"):
        tensors.place(10, 10, (10, 10), "stretch")
    with pytest.raises(ValueError, match="target"):
        tensors.place(10, 10, (0, 10), "pad")


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob,fragment",
    [
        (b"", "0 bytes"),
        (b'{"error": "quota exceeded"}', "27 bytes starting b'{\"error\""),
        (solid_png(8, 8, RED)[:40], "40 bytes starting b'\\x89PNG"),
    ],
)
def test_undecodable_bytes_raise_image_decode_error(blob, fragment):
    with pytest.raises(ImageDecodeError, match="bytes") as caught:
        decode_image(blob)
    assert isinstance(caught.value, ValueError) and fragment in str(caught.value)


def test_decode_images_validates_arguments():
    with pytest.raises(ValueError, match="no images"):
        decode_images([])
    with pytest.raises(ValueError, match="size_policy"):
        decode_images([solid_png(2, 2, RED)], size_policy="stretch")


def test_encoded_image_repr_leaves_out_the_bytes():
    encoded = encode_image(torch.zeros(4, 4, 3), max_pixels=None)
    assert "data" not in repr(encoded) and "width=4" in repr(encoded)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_enforced(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="12x12 pixels, over the 100-pixel"):
        decode_image(solid_png(12, 12, RED))  # Pillow only warns below twice its limit
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(solid_png(20, 20, RED))  # and raises its own error above
    assert decode_image(solid_png(10, 10, RED)).shape == (10, 10, 3)


def test_png_header_claiming_a_huge_size_raises():
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10 gigapixels of RGB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError):
        decode_image(bomb)


# --- memory and threads -----------------------------------------------------------------------


def test_decode_fills_the_batch_in_place():
    # numpy (and Python bytes) allocations are traced: the batch plus strips of one image may be
    # alive at once, never a second batch-sized buffer from stacking or whole-image copies.
    blobs = [save(Image.fromarray(random_u8(512, 1024, seed=seed)), "PNG") for seed in range(4)]
    decode_images(blobs)  # warm up lazily imported codecs
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        batch = decode_images(blobs)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    final, one_image = batch.numel() * batch.element_size(), 1024 * 512 * 3
    assert batch.is_contiguous() and final <= peak <= final + one_image


def test_concurrent_calls_agree_with_serial_ones():
    images = [as_image(random_u8(64 + seed, 48, seed=seed)) for seed in range(8)]
    serial = [encode_image(image, max_pixels=2000, fmt="png").data for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda image: encode_image(image, max_pixels=2000, fmt="png").data, images))
        decoded = list(pool.map(decode_image, serial))
    assert parallel == serial
    assert all(torch.equal(one, decode_image(blob)) for one, blob in zip(decoded, serial))
