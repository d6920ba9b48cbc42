"""The engine proper: the pooled httpx client, requests with retries, waiting with cancellation and
status, polling of asynchronous jobs, and result downloads."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import httpx

from ..errors import (
    AuthError,
    BananaError,
    Cancelled,
    MalformedResponse,
    Refusal,
    TimedOut,
    UpstreamUnavailable,
)
from ..outcome import GeneratedImage, NotAnImage, decode_base64_payload, inspect_image
from ..redaction import install_log_filter, redact
from .context import CallContext, Caller
from .error_mapping import _request_id, error_for_status, parse_error_body
from .policy import IDEMPOTENT, RetryPolicy, retry_after_header
from .polling import PollCadence, PollState, _poll_status_text

log = logging.getLogger("nano_banana_bridge")
install_log_filter("nano_banana_bridge", "httpx", "httpcore")

CONNECT_TIMEOUT = 15.0
CANCEL_CHECK_INTERVAL = 0.2  # how often a cancel flag is looked at: well inside the 1 s promise
STATUS_INTERVAL = 1.0
MAX_DOWNLOAD_BYTES = 80 * 1024 * 1024


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str
    caller: Caller

    def json(self) -> Any:
        """The body as JSON; a gateway's HTML page or a truncated body becomes MalformedResponse."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            summary = parse_error_body(self.content).message
            raise MalformedResponse(
                f"Expected JSON, got {summary} ({len(self.content)} bytes, content-type '{self.headers.get('content-type', '')}').",
                provider=self.caller.provider,
                model=self.caller.model or None,
                status=self.status,
            ) from None

    def json_object(self) -> dict:
        body = self.json()
        if not isinstance(body, dict):
            raise MalformedResponse(
                f"Expected a JSON object, got {type(body).__name__}.", provider=self.caller.provider, model=self.caller.model or None, status=self.status
            )
        return body


class HttpEngine:
    def __init__(self) -> None:
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = weakref.WeakKeyDictionary()

    def client(self) -> httpx.AsyncClient:
        """One pooled client per event loop: httpx clients cannot cross loops."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=360.0, write=120.0, pool=None),
                follow_redirects=True,
                trust_env=True,  # honour HTTPS_PROXY etc., which users behind firewalls rely on
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    # -- waiting, cancellation and status --------------------------------------------------------

    async def watch(self, ctx: CallContext, awaitable: Awaitable[Any], status: str) -> Any:
        """Await while checking for cancellation and reporting status once a second."""
        task = asyncio.ensure_future(awaitable)
        next_status = 0.0
        try:
            while True:
                # Before every wait, not only after a tick: a loop of short steps must see the flag too.
                if ctx.cancelled():
                    raise Cancelled("Stopped by the user.")
                done, _ = await asyncio.wait({task}, timeout=CANCEL_CHECK_INTERVAL)
                if done:
                    return task.result()
                if ctx.elapsed >= next_status:
                    ctx.status(f"{status} ({ctx.elapsed:.0f}s)")
                    next_status = (ctx.elapsed // STATUS_INTERVAL + 1) * STATUS_INTERVAL  # on whole seconds
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def sleep(self, ctx: CallContext, seconds: float, status: str) -> None:
        await self.watch(ctx, asyncio.sleep(max(0.0, seconds)), status)

    # -- requests --------------------------------------------------------------------------------

    async def request(
        self,
        ctx: CallContext,
        caller: Caller,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        data: dict[str, Any] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
        content: bytes | None = None,
        policy: RetryPolicy = IDEMPOTENT,
        status: str | None = None,
        read_timeout: float | None = None,
        ok_statuses: tuple[int, ...] = (),
        max_bytes: int | None = None,
    ) -> Response:
        """Send one request with retries; return a 2xx Response (or one in ok_statuses) or raise a BananaError.

        The body is json_body, or a form (data, files), or raw `content` (say with its Content-Type in
        headers). A successful body over max_bytes is refused. A raised error's `sent` is False when
        the request provably never left (the connection did not open), so even a submit may be resent.
        """
        status = status or f"Waiting for {caller.provider}"
        timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout or caller.read_timeout, write=120.0, pool=None)
        if json_body is not None:
            # Bodies with inline reference images run to tens of MB: serialise once, off the event loop.
            text = await asyncio.to_thread(json.dumps, json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            content, json_body = text.encode("utf-8"), None
            headers = {**(headers or {}), "Content-Type": "application/json"}
        attempts = rate_limited = 0
        while True:
            attempts += 1
            error: BananaError
            retry_after: float | None = None
            try:
                exchange = self._exchange(caller, method, url, max_bytes, headers=headers, json=json_body, data=data, files=files, content=content, timeout=timeout)
                response: Response = await self.watch(ctx, exchange, status)
                if 200 <= response.status < 300 or response.status in ok_statuses:
                    return response
                envelope = parse_error_body(response.content, response.headers.get("content-type", ""))
                retry_after = retry_after_header(response.headers)
                if retry_after is None:
                    retry_after = envelope.retry_after
                error = error_for_status(response.status, envelope, caller, request_id=_request_id(response.headers))
                retryable = (
                    response.status in policy.statuses
                    and not isinstance(error, (Refusal, AuthError))
                    and not getattr(error, "exhausted", False)
                    and (retry_after or 0) <= policy.max_retry_after  # a longer wait is reported, not waited out
                )
                if response.status == 429:
                    rate_limited += 1
            except httpx.TransportError as exc:
                # A connection that never opened sent nothing, so even a submit may be resent.
                never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if isinstance(exc, httpx.TimeoutException):
                    phase = "connect" if never_sent else "response"
                    error = TimedOut(f"No {phase} within the timeout ({type(exc).__name__}).", provider=caller.provider, model=caller.model or None)
                    retryable = policy.retry_timeouts or never_sent
                else:
                    error = UpstreamUnavailable(f"Network error talking to the provider: {type(exc).__name__}: {exc}", provider=caller.provider, model=caller.model or None, hint="Check the network, proxy settings and the provider's base URL.")
                    retryable = policy.retry_network_errors or never_sent
                error.sent = not never_sent
            if error.status == 429:
                budget_left = rate_limited < policy.max_rate_limited_attempts
            else:
                budget_left = attempts - rate_limited < policy.max_attempts
            if not retryable or not budget_left:
                raise error
            delay = self._backoff(attempts if not rate_limited else rate_limited, policy, retry_after)
            log.info("%s: %s; retrying in %.1f s", caller.provider, str(error).splitlines()[0], delay)
            await self.sleep(ctx, delay, f"{status}: retrying after {type(error).__name__}")

    async def _exchange(self, caller: Caller, method: str, url: str, max_bytes: int | None, **kwargs: Any) -> Response:
        async with self.client().stream(method, url, **kwargs) as raw:
            if max_bytes is None or not raw.is_success:
                content = await raw.aread()
            else:
                too_large = MalformedResponse(f"The answer is over the {max_bytes}-byte limit.", provider=caller.provider, model=caller.model or None, status=raw.status_code)
                if int(raw.headers.get("content-length") or 0) > max_bytes:
                    raise too_large
                chunks, size = [], 0
                async for chunk in raw.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise too_large
                    chunks.append(chunk)
                content = b"".join(chunks)
            return Response(raw.status_code, raw.headers, content, str(raw.url), caller)

    @staticmethod
    def _backoff(attempt: int, policy: RetryPolicy, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, policy.max_retry_after) + random.uniform(0, 0.25)
        return min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    # -- asynchronous jobs -----------------------------------------------------------------------

    async def poll(
        self,
        ctx: CallContext,
        caller: Caller,
        check: Callable[[], Awaitable[PollState]],
        *,
        cancel: Callable[[CallContext], Awaitable[Any]] | None = None,
        cadence: PollCadence = PollCadence(),
        max_wait: float = 900.0,
        task_label: str = "",
    ) -> Any:
        """Poll until check() says done, at the provider's cadence and within its poll budget
        (see PollCadence); cancel the remote job on interrupt.

        `cancel` receives a context without the cancel flag (the one given is already cancelled).
        """
        clock, started = cadence.schedule(), time.monotonic()
        delay, last = clock.first_delay, "Submitted"
        try:
            while True:
                await self.sleep(ctx, delay, last)
                state = await check()
                if state.done:
                    return state.value
                last = _poll_status_text(caller, state)
                ctx.status(f"{last} ({ctx.elapsed:.0f}s)")
                if time.monotonic() - started > max_wait:
                    raise TimedOut(
                        f"The job {task_label} was still running after {max_wait:.0f} s.",
                        provider=caller.provider,
                        model=caller.model or None,
                        hint="It may still finish at the provider: queue the same request again to attach to it (its task id is journaled), or raise BANANA_<PROVIDER>_MAX_WAIT.",
                    )
                delay = clock.next_delay(time.monotonic(), state.retry_after)
        except (Cancelled, asyncio.CancelledError):
            if cancel is not None:
                await self.courtesy(ctx, caller, cancel, f"cancel the remote job {task_label}")
            raise

    async def courtesy(self, ctx: CallContext, caller: Caller, action: Callable[[CallContext], Awaitable[Any]], what: str, timeout: float = 5.0) -> None:
        """Best-effort cleanup (cancel a remote job, delete an upload): run with a detached context, so
        an interrupt does not cut it off, bounded, since the user is waiting, and never a new failure."""
        try:
            await asyncio.wait_for(action(ctx.detached()), timeout)
        except Exception as exc:  # noqa: BLE001 - a courtesy
            log.info("%s: could not %s: %s", caller.provider, what, redact(exc))

    # -- downloads -------------------------------------------------------------------------------

    async def fetch_image(self, ctx: CallContext, caller: Caller, ref: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> GeneratedImage:
        """Turn a result reference (data URI, bare base64 or http(s) URL) into checked image bytes.

        URLs are fetched at once, without the provider's auth headers (they are third-party CDN
        links that expire), through request() (so with its retries and Retry-After handling), with a
        size limit and magic-byte and pixel-count checks.
        """
        ref = ref.strip()
        try:
            if ref.startswith("data:") or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", ref):
                return inspect_image(decode_base64_payload(ref))
            if not ref.lower().startswith(("http://", "https://")):
                raise NotAnImage(f"refusing to fetch a result from a non-http(s) address: {ref[:40]}")
            status = f"Downloading the result from {caller.provider}"
            response = await self.request(ctx, caller, "GET", ref, policy=IDEMPOTENT, status=status, read_timeout=120.0, max_bytes=max_bytes)
            return inspect_image(response.content, source_url=ref)
        except NotAnImage as exc:
            raise MalformedResponse(f"The provider's result is not a usable image: {exc}", provider=caller.provider, model=caller.model or None) from None



_engine: HttpEngine | None = None


def get_engine() -> HttpEngine:
    global _engine
    if _engine is None:
        _engine = HttpEngine()
    return _engine
