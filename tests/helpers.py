"""Small helpers shared by the provider tests."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
import time
from typing import Any, Awaitable

import pytest
from PIL import Image

from banana_pack.providers.engine import get_engine
from loopback import Handler, Recorded, Reply, fixture

YELLOW_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4f4IBAASRAcjyuzl2AAAAAElFTkSuQmCC"
BLUE_PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGOQm/AfAAJ9Aa5x8yHNAAAAAElFTkSuQmCC"
YELLOW_PNG = base64.b64decode(YELLOW_PNG_B64)
BLUE_PNG = base64.b64decode(BLUE_PNG_B64)


def png_bytes(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


FAL_PRO_APP = "fal-ai/nano-banana-pro"


def fal_submit(url: str, rid: str, app: str = FAL_PRO_APP) -> dict:
    """fal's answer to a submit of job `rid`: its status, result and cancel URLs on the server at `url`."""
    base = f"{url}/{app}/requests/{rid}"
    submit = fixture("fal/submit.json")
    submit.update(request_id=rid, response_url=base, status_url=f"{base}/status", cancel_url=f"{base}/cancel")
    return submit


def fal_job_done(server, rid: str, image: bytes, file: str | None = None) -> None:
    """Job `rid` on the server is complete: its status says so, and its result links one image there."""
    file = file or f"{rid}.png"
    result = fixture("fal/result_single.json")
    result["images"][0]["url"] = f"{server.url}/files/{file}"
    server.route("GET", rf"/requests/{rid}/status$", Reply(json=fixture("fal/status_completed.json")))
    server.route("GET", rf"/requests/{rid}$", Reply(json=result))
    server.route("GET", rf"^/files/{re.escape(file)}$", Reply(body=image, content_type="image/png"))


def point_at(monkeypatch, provider: str, url: str) -> None:
    """Point one preset at a loopback server, polling fast (first poll 20 ms, then at most 50 ms)."""
    prefix = f"BANANA_{provider.upper()}_"
    monkeypatch.setenv(prefix + "BASE_URL", url)
    monkeypatch.setenv(prefix + "POLL_FIRST_DELAY", "0.02")
    monkeypatch.setenv(prefix + "POLL_MAX_DELAY", "0.05")


class ProgressLines:
    """A render() progress sink that keeps every status line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self, text: str, *, force: bool = False) -> None:
        self.lines.append(text)

    def items_finished(self, finished: int, total: int) -> None:
        pass


def run(coro):
    """Run a coroutine on a fresh loop and close the engine's client for that loop afterwards."""

    async def wrapper():
        try:
            return await coro
        finally:
            await get_engine().aclose()

    return asyncio.run(wrapper())


class UserStop:
    """A user who presses stop at a known moment: when the loopback server receives a chosen request.

    The call is then provably under way (a timer started by the test races with the call's own
    setup on a loaded machine), and "stops within a second" is timed from the press itself, to the
    moment the call raises in its own event loop (not to the end of the test's teardown).
    """

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self.at: float | None = None

    def press(self) -> None:
        if not self.pressed.is_set():
            self.at = time.monotonic()
            self.pressed.set()

    def presses_while_answering(self, reply: Reply) -> Handler:
        """A route handler that presses stop as its request arrives, then answers with `reply`
        (give it a long delay: the call must notice the press while it waits, not after the answer)."""

        def handler(_req: Recorded) -> Reply:
            self.press()
            return reply

        return handler

    async def seconds_until(self, error: type[BaseException], call: Awaitable[Any]) -> float:
        """Await the call, which must raise `error`; return the seconds from the press to the raise."""
        with pytest.raises(error):
            await call
        assert self.at is not None, "the call ended before the user pressed stop"
        return time.monotonic() - self.at


def held_until(released: threading.Event, reply: Reply) -> Handler:
    """A route handler whose answer comes only once `released` is set (the test sets it when the call
    is over, in a finally): slower than any timeout under test however loaded the machine, where a
    fixed delay can be outlasted by a starved client. Gives up after 30 s (a broken timeout then
    receives `reply` and the test fails)."""

    def handler(_req: Recorded) -> Reply:
        released.wait(30)
        return reply

    return handler
