"""A bare base64 JPEG result starts with "/9j/": it is the image, not a path on the base URL."""

from __future__ import annotations

import base64
import io

from banana_pack.providers import GenerationRequest, generate
from helpers import run
from loopback import Reply, fixture
from PIL import Image


def test_inline_jpeg_result_is_decoded_not_fetched(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "jpeg-test-key-0123456789")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    buffer = io.BytesIO()
    Image.new("RGB", (12, 7), (10, 200, 30)).save(buffer, "JPEG")
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"] = {"mimeType": "image/jpeg", "data": base64.b64encode(buffer.getvalue()).decode()}
    server.route("POST", r":generateContent$", Reply(json=body))
    result = run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a green field")))
    assert [im.data for im in result.images] == [buffer.getvalue()]
    assert result.images[0].mime == "image/jpeg" and (result.images[0].width, result.images[0].height) == (12, 7)
    assert [r.method for r in server.requests] == ["POST"]  # nothing was downloaded
