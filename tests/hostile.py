"""A misbehaving provider on 127.0.0.1: real HTTP, with the faults LoopbackServer cannot script.

Each route's action writes the answer itself on the raw connection, so it can redirect, drip one
byte at a time, declare more body than it sends, drop the connection after reading the request,
send a gzip bomb, or stream an endless error body while counting what the client took. Every
request is recorded (method, path, headers, body), so tests can check where a key went and how
many times a paid request was sent.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Action = Callable[["Wire"], None]


class Wire:
    """The raw connection of one request, with helpers to answer in odd ways."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: "HostileServer") -> None:
        self._handler, self._server = handler, server

    def write(self, data: bytes) -> None:
        self._handler.wfile.write(data)
        self._handler.wfile.flush()
        with self._server.lock:
            self._server.bytes_sent += len(data)

    def head(self, status: int, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def drop(self) -> None:
        self._handler.close_connection = True
        try:
            self._handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Action:
    payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()

    def act(wire: Wire) -> None:
        wire.head(status, {"Content-Type": "application/json", "Content-Length": str(len(payload)), **(headers or {})})
        wire.write(payload)

    return act


def redirect(status: int, location: str) -> Action:
    return reply(status, {}, {"Location": location})


def drop() -> Action:
    return lambda wire: wire.drop()


def closes_when_idle(idle: float, then: Action) -> Action:
    """A server whose keep-alive timeout is `idle` seconds, at its worst: a request on a connection
    idle that long is read and dropped unanswered, as when the server's close crosses it on the wire
    (the client cannot tell that from a provider that failed while generating)."""

    def act(wire: Wire) -> None:
        answered = getattr(wire._handler, "answered_at", None)
        if answered is not None and time.monotonic() - answered >= idle:
            wire.drop()
            return
        then(wire)
        wire._handler.answered_at = time.monotonic()

    return act


def truncated(status: int = 200, declared: int = 1000, sent: bytes = b'{"candidates": [{"content": ', headers: dict[str, str] | None = None) -> Action:
    """Declare `declared` bytes of body, send fewer, close: an answer cut off in transit."""

    def act(wire: Wire) -> None:
        wire.head(status, {"Content-Type": "application/json", "Content-Length": str(declared), **(headers or {})})
        wire.write(sent)
        wire.drop()

    return act


def drip(interval: float, total: int = 10_000, give_up_after: float = 20.0) -> Action:
    """A 200 whose body arrives one byte per `interval` seconds (each read well within a read timeout)."""

    def act(wire: Wire) -> None:
        wire.head(200, {"Content-Type": "application/json", "Content-Length": str(total)})
        started = time.monotonic()
        for _ in range(total):
            if time.monotonic() - started > give_up_after:
                break
            time.sleep(interval)
            wire.write(b" ")
        wire.drop()

    return act


def gzip_bytes(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (a 64 MB bomb is about 64 KB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    out = [packer.compress(chunk) for _ in range(size >> 20)]
    out.append(packer.compress(bytes(size & ((1 << 20) - 1))))
    out.append(packer.flush())
    return b"".join(out)


def gzip_bomb(size: int, status: int = 200) -> Action:
    packed = gzip_bytes(size)
    return reply(status, raw=packed, headers={"Content-Encoding": "gzip"})


def endless(status: int, size: int, chunk: int = 64 * 1024, headers: dict[str, str] | None = None) -> Action:
    """Stream `size` bytes of plain text body in chunks; stops quietly when the client hangs up."""

    def act(wire: Wire) -> None:
        wire.head(status, {"Content-Type": "text/plain", "Content-Length": str(size), **(headers or {})})
        block = b"x" * chunk
        try:
            for _ in range(size // chunk):
                wire.write(block)
        except OSError:
            return

    return act


class HostileServer:
    def __init__(self, port: int = 0) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self._routes: list[tuple[str, re.Pattern, list[Action]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                hit = Hit(self.command, urlsplit(self.path).path, {k.lower(): v for k, v in self.headers.items()}, body)
                with server.lock:
                    server.hits.append(hit)
                try:
                    server._action(hit)(Wire(self, server))
                except OSError:
                    pass  # the client hung up (a limit or a deadline did its job)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HostileServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, method: str, pattern: str, *actions: Action) -> None:
        """Answer matching requests with the actions in turn, the last one repeating."""
        self._routes.insert(0, (method.upper(), re.compile(pattern), list(actions)))

    def count(self, method: str, pattern: str = "") -> int:
        rx = re.compile(pattern)
        return sum(1 for h in self.hits if h.method == method.upper() and rx.search(h.path))

    def _action(self, hit: Hit) -> Action:
        with self.lock:
            for method, pattern, actions in self._routes:
                if method == hit.method and pattern.search(hit.path):
                    return actions.pop(0) if len(actions) > 1 else actions[0]
        return reply(404, {"error": {"message": f"no route for {hit.method} {hit.path}"}})
