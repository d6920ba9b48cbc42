"""Start a real ComfyUI with this pack installed, and talk to it over HTTP and WebSocket.

Standard library only; `websocket-client` is used for WebSocket capture when importable.

The server runs in a subprocess with its own temporary base directory (custom_nodes, user,
input, output, temp, models) and an in-memory database, so it never touches the ComfyUI
checkout's own folders and several instances can run side by side. The pack is made visible as
`<base>/custom_nodes/<pack_name>` -> symlink to the repository root, so ComfyUI imports it under
an arbitrary folder name, exactly as it does for a user's clone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

try:  # optional
    import websocket  # type: ignore[import-not-found]  # websocket-client
except ImportError:  # pragma: no cover - depends on the environment
    websocket = None

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PACK_NAME = "nbb_under_test"
SKIP_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run the integration tests"

# Binary WebSocket event types (ComfyUI protocol.BinaryEventTypes)
BINARY_PREVIEW_IMAGE = 1
BINARY_UNENCODED_PREVIEW_IMAGE = 2
BINARY_TEXT = 3
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4

TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")

# Inherited variables that could point the pack at a developer's real keys or config.
_SCRUBBED_PREFIXES = ("BANANA_",)
_SCRUBBED_NAMES = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "FAL_KEY")


class ComfyUIError(RuntimeError):
    """The server did not start, or answered an API call with an error."""


class PromptRejected(ComfyUIError):
    """POST /prompt answered 400: the prompt failed validation. `why` is added to the message (for a
    node type ComfyUI does not know: the log lines saying why the pack did not load)."""

    def __init__(self, status: int, body: Any, why: str = ""):
        self.status = status
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else body
        self.node_errors = body.get("node_errors", {}) if isinstance(body, dict) else {}
        super().__init__(f"/prompt answered {status}: {json.dumps(body)[:4000]}{why}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_binary_frame(data: bytes) -> dict[str, Any]:
    """Decode one binary WebSocket frame from ComfyUI.

    Type 3 (progress text): 4-byte big-endian event type, 4-byte big-endian node-id length,
    node id, UTF-8 text. Other types are summarised (preview images are not decoded).
    """
    if len(data) < 4:
        return {"type": "binary", "event": None, "size": len(data)}
    event = struct.unpack(">I", data[:4])[0]
    if event == BINARY_TEXT and len(data) >= 8:
        n = struct.unpack(">I", data[4:8])[0]
        node = data[8 : 8 + n].decode("utf-8", "replace")
        text = data[8 + n :].decode("utf-8", "replace")
        return {"type": "progress_text", "node": node, "text": text}
    return {"type": "binary", "event": event, "size": len(data)}


class _WebSocketRecorder:
    """Background reader of /ws?clientId=...; keeps every message in arrival order.

    JSON messages are kept as sent ({"type", "data"}); binary frames are decoded with
    parse_binary_frame and tagged with the prompt that was executing when they arrived
    (progress-text frames carry no prompt id of their own).
    """

    def __init__(self, url: str):
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._current_prompt: str | None = None
        self._ws = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> "_WebSocketRecorder":
        self._ws = websocket.create_connection(self.url, timeout=timeout)
        self._ws.settimeout(0.5)
        self._thread = threading.Thread(target=self._run, name="comfyui-ws", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                opcode, data = self._ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:  # noqa: BLE001 - connection closed or broken
                if not self._stop.is_set():
                    self.error = exc
                return
            if opcode == websocket.ABNF.OPCODE_BINARY:
                msg = parse_binary_frame(data)
                msg["prompt_id"] = self._current_prompt
            elif opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    msg = json.loads(data)
                except ValueError:
                    continue
                payload = msg.get("data") if isinstance(msg, dict) else None
                if isinstance(payload, dict) and payload.get("prompt_id"):
                    if msg.get("type") in ("execution_start", "executing", "progress", "progress_state", "executed"):
                        self._current_prompt = payload["prompt_id"]
            else:
                continue
            with self._lock:
                self.messages.append(msg)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        try:
            if self._ws is not None:
                self._ws.close()
        except Exception:  # noqa: BLE001
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)


class ComfyUIClient:
    """Small synchronous client for one running ComfyUI."""

    def __init__(self, base_url: str, server: "ComfyUIServer | None" = None, request_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.server = server
        self.request_timeout = request_timeout
        self.client_id = uuid.uuid4().hex
        self._ws: _WebSocketRecorder | None = None
        if websocket is not None:
            ws_url = self.base_url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
            self._ws = _WebSocketRecorder(ws_url).start()

    # ---- plumbing -------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            status = exc.code
        if raw:
            return status, payload
        if not payload:
            return status, None
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode("utf-8", "replace")

    def get_json(self, path: str) -> Any:
        status, body = self._request("GET", path)
        if status != 200:
            raise ComfyUIError(f"GET {path} answered {status}: {str(body)[:2000]}")
        return body

    # ---- API ------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        if node_class:
            return self.get_json("/object_info/" + urllib.parse.quote(node_class, safe=""))
        return self.get_json("/object_info")

    def post_prompt(self, api_prompt: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None,
                    prompt_id: str | None = None) -> str:
        """Queue an API-format prompt; returns its prompt_id. Raises PromptRejected on 400."""
        body: dict[str, Any] = {"prompt": api_prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        if prompt_id:
            body["prompt_id"] = prompt_id
        status, resp = self._request("POST", "/prompt", body)
        if status != 200:
            error = resp.get("error") if isinstance(resp, dict) else None
            missing_node = isinstance(error, dict) and error.get("type") == "missing_node_type"
            raise PromptRejected(status, resp, self.server.import_failures() if missing_node and self.server else "")
        return resp["prompt_id"]

    def history(self, prompt_id: str | None = None) -> dict[str, Any]:
        return self.get_json("/history/" + prompt_id if prompt_id else "/history")

    def wait_for(self, prompt_id: str, timeout: float = 60.0, poll: float = 0.1) -> dict[str, Any]:
        """Block until the prompt is in /history; return its entry.

        The entry has "prompt", "outputs" ({node_id: ui dict}), "status" ({"status_str":
        "success"|"error", "completed": bool, "messages": [[event, data], ...]}) and "meta".
        An interrupted prompt ends with status_str "error" and an "execution_interrupted" message.
        """
        deadline = time.monotonic() + timeout
        while True:
            hist = self.history(prompt_id)
            if prompt_id in hist:
                return hist[prompt_id]
            if self.server is not None and not self.server.is_running():
                raise ComfyUIError("ComfyUI exited while waiting for %s\n%s" % (prompt_id, self.server.log_tail()))
            if time.monotonic() > deadline:
                tail = self.server.log_tail() if self.server is not None else ""
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s\n{tail}")
            time.sleep(poll)

    def run(self, api_prompt: Mapping[str, Any], timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        """post_prompt + wait_for."""
        return self.wait_for(self.post_prompt(api_prompt, **kw), timeout=timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        status, resp = self._request("POST", "/interrupt", body)
        if status != 200:
            raise ComfyUIError(f"/interrupt answered {status}: {resp}")

    def queue(self) -> dict[str, Any]:
        return self.get_json("/queue")

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, body = self._request("GET", "/view?" + query, raw=True)
        if status != 200:
            raise ComfyUIError(f"/view {query} answered {status}")
        return body

    # ---- WebSocket ------------------------------------------------------------------------
    @property
    def has_websocket(self) -> bool:
        return self._ws is not None

    def ws_messages(self, prompt_id: str | None = None, wait_terminal: float = 5.0) -> list[dict[str, Any]]:
        """Messages captured on this client's WebSocket, optionally only those of one prompt.

        JSON events look like {"type": "executing", "data": {...}}; progress text frames like
        {"type": "progress_text", "node": "5", "text": "...", "prompt_id": ...}. When prompt_id
        is given, waits up to `wait_terminal` seconds for its terminal event
        (execution_success / execution_error / execution_interrupted) to arrive first.
        Returns [] when websocket-client is not installed.
        """
        if self._ws is None:
            return []
        if prompt_id is not None:
            deadline = time.monotonic() + wait_terminal
            while time.monotonic() < deadline:
                if any(_prompt_of(m) == prompt_id and m.get("type") in TERMINAL_EVENTS for m in self._ws.snapshot()):
                    break
                time.sleep(0.05)
        msgs = self._ws.snapshot()
        if prompt_id is None:
            return msgs
        return [m for m in msgs if _prompt_of(m) == prompt_id]

    def progress_texts(self, prompt_id: str | None = None, node_id: str | None = None) -> list[str]:
        return [m["text"] for m in self.ws_messages(prompt_id)
                if m.get("type") == "progress_text" and (node_id is None or m.get("node") == str(node_id))]

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None


def _prompt_of(msg: Mapping[str, Any]) -> str | None:
    if "prompt_id" in msg and msg.get("type") in ("progress_text", "binary"):
        return msg.get("prompt_id")
    data = msg.get("data")
    if isinstance(data, dict):
        return data.get("prompt_id")
    return None


def status_events(history_entry: Mapping[str, Any]) -> list[str]:
    """Event names from a history entry's status messages, e.g. ["execution_start", ..., "execution_success"]."""
    status = history_entry.get("status") or {}
    return [m[0] for m in status.get("messages", [])]


def status_message(history_entry: Mapping[str, Any], event: str) -> dict[str, Any] | None:
    status = history_entry.get("status") or {}
    for name, data in status.get("messages", []):
        if name == event:
            return data
    return None


class ComfyUIServer:
    """A ComfyUI subprocess with the pack symlinked in under `pack_name`."""

    def __init__(self, comfyui_path: str | os.PathLike, python: str | None = None, *,
                 pack_dir: str | os.PathLike = REPO_ROOT, pack_name: str = DEFAULT_PACK_NAME,
                 extra_env: Mapping[str, str] | None = None, extra_args: Iterable[str] = (),
                 port: int | None = None, base_dir: str | os.PathLike | None = None,
                 scrub_env: bool = True, startup_timeout: float = 120.0):
        self.comfyui_path = Path(comfyui_path).resolve()
        self.python = python or sys.executable
        self.pack_dir = Path(pack_dir).resolve()
        self.pack_name = pack_name
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="comfyui_it_"))
        self.scrub_env = scrub_env
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self._log_fh = None

    # ---- paths ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    # ---- lifecycle ------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            self.python, "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            # --base-directory moves custom_nodes, models, input, output, temp and user together
            "--base-directory", str(self.base_dir),
            # the default database lives in <ComfyUI>/user/comfyui.db; keep runs independent
            "--database-url", "sqlite:///:memory:",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.scrub_env:
            for name in list(env):
                if name.startswith(_SCRUBBED_PREFIXES) or name in _SCRUBBED_NAMES:
                    del env[name]
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        return env

    def _prepare_dirs(self) -> None:
        for d in (self.custom_nodes_dir, self.user_dir, self.output_dir, self.input_dir, self.temp_dir):
            d.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / self.pack_name
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                raise ComfyUIError(f"{link} exists and is not a symlink")
        link.symlink_to(self.pack_dir, target_is_directory=True)

    def start(self) -> "ComfyUIServer":
        if not (self.comfyui_path / "main.py").is_file():
            raise ComfyUIError(f"{self.comfyui_path} has no main.py; point COMFYUI_PATH at a ComfyUI checkout")
        self._prepare_dirs()
        self._log_fh = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(), cwd=str(self.comfyui_path), env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = self.base_url + "/object_info"
        last_error: str = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyUIError(f"ComfyUI exited with code {self.proc.returncode} during start-up\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        json.loads(resp.read())
                        return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise ComfyUIError(f"ComfyUI did not answer {url} within {self.startup_timeout}s ({last_error})\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        """Stop, then delete the temporary base directory (only if this object created it)."""
        self.stop()
        if self._own_base:
            link = self.custom_nodes_dir / self.pack_name
            if link.is_symlink():
                link.unlink()  # never follow the link into the repository
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---- logs -----------------------------------------------------------------------------
    def log_text(self) -> str:
        if self._log_fh is not None:
            self._log_fh.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def import_failures(self) -> str:
        """ComfyUI's log lines about custom nodes that did not load (a missing requirement in its
        Python, such as httpx, makes every prompt fail with an unknown node type)."""
        lines = [line for line in self.log_text().splitlines() if any(mark in line for mark in ("Cannot import", "Error while calling comfy_entrypoint", "IMPORT FAILED"))]
        return ("\n----- why custom nodes did not load (ComfyUI log) -----\n" + "\n".join(lines[:20])) if lines else ""

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_text().splitlines()
        return "----- ComfyUI log (last %d lines) -----\n%s" % (lines, "\n".join(text[-lines:]))

    def client(self) -> ComfyUIClient:
        return ComfyUIClient(self.base_url, server=self)

    def __enter__(self) -> "ComfyUIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def pack_import_lines(log: str, pack_name: str = DEFAULT_PACK_NAME) -> list[str]:
    """The 'Import times for custom nodes' lines that mention the pack folder."""
    return [line for line in log.splitlines() if "seconds" in line and pack_name in line]


# ---- UI workflow -> API prompt --------------------------------------------------------------------
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3")
_SKIPPED_MODES = (2, 4)  # muted, bypassed


def _widget_names(spec: Mapping[str, Any], prefix: str, values: list[Any]) -> list[tuple[str, int, Any]]:
    """(input name, how many widget values it takes, its default) in widget order, following a DynamicCombo's choice."""
    names: list[tuple[str, int, Any]] = []
    order = spec.get("input_order") or {section: list(spec.get("input", {}).get(section, {})) for section in ("required", "optional")}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            kind, options = (spec["input"][section][name] + [{}])[:2]
            if not (isinstance(kind, list) or kind in WIDGET_TYPES):
                continue
            names.append((prefix + name, 2 if options.get("control_after_generate") else 1, options.get("default")))
            if kind == "COMFY_DYNAMICCOMBO_V3":
                chosen = values[sum(n for _, n, _ in names) - 1] if len(values) >= sum(n for _, n, _ in names) else None
                option = next((o for o in options.get("options", []) if o["key"] == chosen), None)
                if option is not None:
                    names += _widget_names({"input": option["inputs"]}, f"{prefix}{name}.", values)
    return names


def workflow_to_prompt(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """The API-format prompt the frontend's graphToPrompt makes from a saved (UI) workflow.

    Widget values are matched to the node's widget inputs in schema order (a seed's `control after
    generate` takes a second value; a DynamicCombo's chosen option adds its own widgets, named
    `model.aspect_ratio`); links become [source node id, output slot]. Nodes unknown to the server
    (notes) and muted or bypassed nodes are left out; the frontend's `_meta` titles are not added.
    Checked against frontend 1.43's graphToPrompt for the example workflows.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        spec = object_info.get(node["type"])
        if spec is None or node.get("mode", 0) in _SKIPPED_MODES:
            continue
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        position = 0
        for name, width, default in _widget_names(spec, "", values):
            # A workflow saved before an input existed lacks its value: the frontend gives it the default.
            inputs[name] = values[position] if position < len(values) else default
            position += width
        for slot in node.get("inputs", []):
            link = links.get(slot.get("link"))
            if link is not None:
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
