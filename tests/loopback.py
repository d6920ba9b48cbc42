"""A real HTTP server on 127.0.0.1 that speaks whatever a test scripts for it.

Tests register routes (method + path regex) whose replies are fixed, a sequence (one per hit,
the last repeating), or computed from the request. The server records every request and the
most requests it was handling at once, so tests can check retries, concurrency limits and that
a submit was sent exactly once. It runs in a thread, so the code under test talks to it through
its real HTTP client and network stack.
"""

from __future__ import annotations

import json
import pathlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    content_type: str | None = None
    drop: bool = False  # close the connection without answering (a lost response)

    def payload(self) -> tuple[bytes, str]:
        if self.body is not None:
            return self.body, self.content_type or "application/octet-stream"
        return json.dumps(self.json if self.json is not None else {}).encode(), self.content_type or "application/json"


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Handler = Callable[[Recorded], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops bursts of connects (the client retries after 1 s)


class LoopbackServer:
    def __init__(self, port: int = 0) -> None:
        """port 0: any free port; a given port lets a test bring a server up where a connection was refused."""
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._active = 0
        self.max_concurrent = 0
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), self._make_handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- scripting --

    def route(self, method: str, pattern: str, reply: Reply | list[Reply] | Handler) -> None:
        """Answer requests whose path matches `pattern` (a regex searched in the path)."""
        if isinstance(reply, Reply):
            handler: Handler = lambda _req, r=reply: r
        elif isinstance(reply, list):
            queue = list(reply)

            def handler(_req: Recorded) -> Reply:
                with self._lock:
                    return queue.pop(0) if len(queue) > 1 else queue[0]
        else:
            handler = reply
        self._routes.insert(0, (method.upper(), re.compile(pattern), handler))  # newest wins

    def hits(self, method: str, pattern: str) -> list[Recorded]:
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == method.upper() and rx.search(r.path)]

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self.requests.clear()
            self.max_concurrent = 0

    # -- serving --

    def _make_handler(self):
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                recorded = Recorded(self.command, parts.path, parts.query, {k.lower(): v for k, v in self.headers.items()}, body)
                with server._lock:
                    server.requests.append(recorded)
                    server._active += 1
                    server.max_concurrent = max(server.max_concurrent, server._active)
                try:
                    reply = server._dispatch(recorded)
                    deadline = time.monotonic() + reply.delay
                    while time.monotonic() < deadline and not server._stopping.is_set():
                        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
                    if reply.drop:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    payload, content_type = reply.payload()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up (cancellation tests)
                finally:
                    with server._lock:
                        server._active -= 1

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return _Handler

    def _dispatch(self, request: Recorded) -> Reply:
        for method, pattern, handler in self._routes:
            if method == request.method and pattern.search(request.path):
                return handler(request)
        return Reply(404, {"error": {"message": f"no route for {request.method} {request.path}"}})
