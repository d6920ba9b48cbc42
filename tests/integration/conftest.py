"""Fixtures that run the pack inside a real ComfyUI (opt-in: set COMFYUI_PATH).

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python \
        python -m pytest tests/integration -q

COMFYUI_PYTHON defaults to the interpreter running pytest. Without COMFYUI_PATH every test that
uses these fixtures is skipped.

Environment for the server: the pytest process's environment minus BANANA_* / GEMINI_API_KEY /
GOOGLE_API_KEY / FAL_KEY (so a developer's real keys never reach it), plus `comfyui_extra_env`.
To point the pack at a loopback fake provider, override `comfyui_extra_env` (session scope) in
this file or a sub-conftest, e.g.

    @pytest.fixture(scope="session")
    def comfyui_extra_env(fake_google):          # a session-scoped fake provider
        return {"BANANA_GOOGLE_BASE_URL": fake_google.url, "BANANA_GOOGLE_API_KEY": "test-key"}

or start a dedicated server with `comfyui_server_factory(extra_env={...})`.
"""

from __future__ import annotations

import os
import sys

import pytest

from .comfyui_harness import SKIP_REASON, ComfyUIClient, ComfyUIServer


def _comfyui_path() -> str | None:
    path = os.environ.get("COMFYUI_PATH", "").strip()
    return path or None


def _comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable


@pytest.fixture(scope="session")
def comfyui_extra_env() -> dict[str, str]:
    """Extra environment variables for the shared server (override to inject fake-provider URLs)."""
    return {}


@pytest.fixture(scope="session")
def comfyui_server_factory(tmp_path_factory):
    """Start additional ComfyUI servers: factory(extra_env=None, extra_args=(), pack_name=...) -> ComfyUIServer."""
    path = _comfyui_path()
    if path is None:
        pytest.skip(SKIP_REASON)
    started: list[ComfyUIServer] = []

    def factory(extra_env=None, extra_args=(), **kw) -> ComfyUIServer:
        base = tmp_path_factory.mktemp("comfyui_base")
        srv = ComfyUIServer(path, _comfyui_python(), extra_env=extra_env, extra_args=extra_args, base_dir=base, **kw)
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.cleanup()


@pytest.fixture(scope="session")
def comfyui_instance(comfyui_server_factory, comfyui_extra_env) -> ComfyUIServer:
    """The shared ComfyUIServer (process, directories, log) for the whole session."""
    return comfyui_server_factory(extra_env=comfyui_extra_env)


@pytest.fixture(scope="session")
def comfyui_server(comfyui_instance):
    """A ComfyUIClient connected to the shared server (WebSocket capture when websocket-client is installed).

    The server process itself is `comfyui_server.server` (log_text(), log_tail(), output_dir, ...).
    """
    client: ComfyUIClient = comfyui_instance.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def thinking_gemini():
    """A loopback Gemini that signs its answers and rejects a continuation without the signatures (as
    the API does), for one test module."""
    from gemini_thinking_fake import ThinkingGemini
    from loopback import LoopbackServer

    server = LoopbackServer().start()
    server.fake = ThinkingGemini(server)
    yield server
    server.stop()
