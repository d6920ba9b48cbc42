"""Adapting the pack's route handlers (plain values in, (status, JSON) out) to ComfyUI's aiohttp
server, which exists only inside ComfyUI: elsewhere (tests, scripts) registering does nothing."""

from __future__ import annotations

import functools
from typing import Any, Callable


def register_once(register: Callable[[Any, Any], None]) -> Callable[[], None]:
    """`register(routes, web)` runs once, with ComfyUI's route table and aiohttp's web module."""
    done = False

    @functools.wraps(register)
    def registering() -> None:
        nonlocal done
        if done:
            return
        try:
            from aiohttp import web
            from server import PromptServer
        except ImportError:
            return
        register(PromptServer.instance.routes, web)
        done = True

    return registering


def json_answer(web: Any, status: int, body: dict) -> Any:
    """A JSON response that no browser or proxy keeps."""
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})
