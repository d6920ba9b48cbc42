"""Small helpers shared by the provider tests."""

from __future__ import annotations

import asyncio
import base64
import io

from PIL import Image

from banana_pack.providers.engine import get_engine

YELLOW_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4f4IBAASRAcjyuzl2AAAAAElFTkSuQmCC"
BLUE_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGOQm/AfAAJ9Aa5x8yHNAAAAAElFTkSuQmCC"
YELLOW_PNG = base64.b64decode(YELLOW_PNG_B64)
BLUE_PNG = base64.b64decode(BLUE_PNG_B64)


def png_bytes(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def run(coro):
    """Run a coroutine on a fresh loop and close the engine's client for that loop afterwards."""

    async def wrapper():
        try:
            return await coro
        finally:
            await get_engine().aclose()

    return asyncio.run(wrapper())
