"""Bad input images are clear errors before anything is sent; oversized results are refused before decoding."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import torch

from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers.errors import BananaError, ConfigError, InvalidRequest
from helpers import png_bytes, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "limits-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)

    def handler(req: Recorded) -> Reply:
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(40, 30)).decode()
        return Reply(json=body)

    server.route("POST", GEN_PATH, handler)
    return server


def inputs(images=None, prompts=("edit it",), **kw) -> RenderInputs:
    return RenderInputs(prompts=list(prompts), provider="google", model="Nano Banana Pro", resolution="1K", images=images or [], **kw)


GOOD = torch.rand(1, 8, 8, 3)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(1, 0, 8, 3), torch.zeros(1, 8, 0, 3), torch.zeros(0, 8, 8, 3)],
    ids=["no-rows", "no-columns", "empty-batch"],
)
def test_zero_size_image_is_invalid_request_and_nothing_is_sent(google, bad):
    with pytest.raises(InvalidRequest) as info:
        run(render(inputs([[GOOD], [bad]]), store_root=None))
    assert "connected image input 2 is empty" in str(info.value) and str(list(bad.shape)) in str(info.value)
    assert google.requests == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinite_pixels_are_invalid_request(google, value):
    bad = torch.rand(2, 8, 8, 3)
    bad[1, 3, 4, 0] = value
    with pytest.raises(InvalidRequest) as info:
        run(render(inputs([[bad]], image_mode="each image"), store_root=None))
    assert "connected image input 1 contains NaN or infinite values" in str(info.value)
    assert google.requests == []


def test_decoded_pixels_per_run_are_capped_before_decoding_and_the_files_are_named(google, monkeypatch, tmp_path):
    monkeypatch.setenv("BANANA_MAX_DECODED_PIXELS", "2000")  # two 40x30 results are 2400 pixels
    with pytest.raises(BananaError) as info:
        run(render(inputs(prompts=["one\ntwo"], prompt_per_line=True), store_root=tmp_path / "store"))
    text = str(info.value)
    assert "BANANA_MAX_DECODED_PIXELS" in text and "2 image(s)" in text and "40x30" in text
    saved = re.findall(r"(/\S+?\.png)", text)
    assert len(saved) == 2 and all(Path(p).read_bytes() == png_bytes(40, 30) for p in saved)  # the paid bytes, where it says
    assert len(google.requests) == 2
    # Within the cap (one image), the same results decode.
    monkeypatch.setenv("BANANA_MAX_DECODED_PIXELS", "1200")
    out = run(render(inputs(prompts=["one"]), store_root=tmp_path / "store"))
    assert tuple(out.images.shape) == (1, 30, 40, 3)


def test_the_default_cap_refuses_the_two_8000px_pngs(google, server, tmp_path):
    """Two 8000x8000 PNGs of a few KB each used to become a 1.46 GiB tensor."""
    big = png_bytes(8000, 8000, color=(0, 0, 0))
    assert len(big) < 300_000

    def handler(req: Recorded) -> Reply:
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(big).decode()
        return Reply(json=body)

    server.route("POST", GEN_PATH, handler)
    with pytest.raises(BananaError) as info:
        run(render(inputs(prompts=["one\ntwo"], prompt_per_line=True), store_root=tmp_path / "store"))
    assert "128 megapixels" in str(info.value) and "limit of 105 megapixels" in str(info.value)


def test_a_bad_cap_setting_is_a_config_error(google, monkeypatch):
    monkeypatch.setenv("BANANA_MAX_DECODED_PIXELS", "lots")
    with pytest.raises(ConfigError) as info:
        run(render(inputs(), store_root=None))
    assert "BANANA_MAX_DECODED_PIXELS" in str(info.value) and google.requests == []
