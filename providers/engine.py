"""The one HTTP engine every provider uses.

It owns everything that is not a provider's protocol: the pooled httpx client, timeouts,
retries with backoff and jitter, Retry-After and Google's RetryInfo, the per-provider
concurrency limit shared by the whole process, cancellation, once-a-second status text,
polling of asynchronous jobs, result downloads, and the mapping of HTTP failures onto the
error taxonomy. Protocol modules stay declarative: they build bodies and parse answers.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import httpx

from .errors import (
    AuthError,
    BananaError,
    Cancelled,
    InvalidRequest,
    MalformedResponse,
    QuotaOrRateLimited,
    SafetyRejected,
    SafetyStage,
    TimedOut,
    UpstreamUnavailable,
)
from .outcome import GeneratedImage, NotAnImage, decode_base64_payload, inspect_image
from .redaction import install_log_filter, redact

log = logging.getLogger("nano_banana_bridge")
install_log_filter("nano_banana_bridge", "httpx", "httpcore")

CONNECT_TIMEOUT = 15.0
CANCEL_CHECK_INTERVAL = 0.2  # how often a cancel flag is looked at: well inside the 1 s promise
STATUS_INTERVAL = 1.0
MAX_DOWNLOAD_BYTES = 80 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The explicit context a caller (a node, a test, a script) passes down.


@dataclass
class CallContext:
    """How a caller observes and steers a call; every field is optional.

    cancel_check: returns True once the user asked to stop (ComfyUI's interrupt flag).
    on_status: receives a one-line human status about once a second while waiting.
    on_task: receives a resumable task handle right after an asynchronous job is accepted,
        before any polling, so the caller can journal it (a lost handle is a lost paid job).
    resume_task: a handle from an earlier on_task; the call attaches to that job instead of
        submitting a new one.
    """

    cancel_check: Callable[[], bool] | None = None
    on_status: Callable[[str], None] | None = None
    on_task: Callable[[dict], None] | None = None
    resume_task: dict | None = None
    started: float = field(default_factory=time.monotonic)

    def cancelled(self) -> bool:
        return bool(self.cancel_check and self.cancel_check())

    def status(self, text: str) -> None:
        if self.on_status:
            try:
                self.on_status(redact(text))
            except Exception:  # a broken display must not fail a paid call
                log.exception("status callback failed")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Caller:
    """Who is calling, for messages, limits and timeouts."""

    provider: str
    model: str = ""
    read_timeout: float = 360.0


# ---------------------------------------------------------------------------------------------
# Retry policy.


@dataclass(frozen=True)
class RetryPolicy:
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 524})
    max_attempts: int = 4  # first try plus three retries
    max_rate_limited_attempts: int = 6  # 429s get their own, larger budget
    retry_network_errors: bool = True  # connection reset, protocol errors while reading
    retry_timeouts: bool = True
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After (a daily quota) is reported, not waited out


# A synchronous generation: retried on transient statuses, but a read timeout is not resent,
# because the provider may still be generating (and billing) the first one.
GENERATE = RetryPolicy(retry_timeouts=False)
# Submitting an asynchronous job: only resent when it provably was not accepted (429, or the
# connection never opened); any other failure could hide an accepted, paid job.
SUBMIT = RetryPolicy(statuses=frozenset({429}), retry_network_errors=False, retry_timeouts=False)
# Polls and downloads are idempotent: retry freely.
IDEMPOTENT = RetryPolicy(max_attempts=5)


# ---------------------------------------------------------------------------------------------
# A concurrency limit shared by every event loop and thread in the process.


class ProcessLimiter:
    """A semaphore usable from any event loop; ComfyUI may run nodes on more than one."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    @property
    def active(self) -> int:
        return self._active

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self.limit and not self._waiters:
                self._active += 1
                return
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    raise
            if waiter[1].done() and not waiter[1].cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._active -= 1
                return
            loop, future = self._waiters.popleft()  # hand the slot straight to the next waiter

        def grant() -> None:
            if future.done():
                self.release()  # that waiter gave up meanwhile: pass the slot on
            else:
                future.set_result(None)

        try:
            loop.call_soon_threadsafe(grant)
        except RuntimeError:  # its loop is closed
            self.release()

    async def __aenter__(self) -> "ProcessLimiter":
        await self.acquire()
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


_limiters: dict[str, ProcessLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(provider_id: str, limit: int) -> ProcessLimiter:
    with _limiters_lock:
        current = _limiters.get(provider_id)
        if current is None or current.limit != max(1, int(limit)):
            if current is None or current.active == 0:
                current = _limiters[provider_id] = ProcessLimiter(limit)
        return current


# ---------------------------------------------------------------------------------------------
# Errors from HTTP answers.


@dataclass
class ErrorEnvelope:
    """What a provider said in a failed answer, whatever its envelope looked like."""

    message: str = ""
    code: str = ""  # the provider's own error code or type, lower-cased words joined
    retry_after: float | None = None
    daily_quota: bool = False
    body: Any = None


def _retry_delay_seconds(text: Any) -> float | None:
    if isinstance(text, (int, float)):
        return float(text)
    if isinstance(text, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*s?\s*", text)
        if match:
            return float(match.group(1))
    return None


def parse_error_body(content: bytes, content_type: str = "") -> ErrorEnvelope:
    """Read the error envelopes in use: Google's, OpenAI's and new-api's, fal's, Vydra's, EvoLink's."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        text = content[:2000].decode("utf-8", "replace")
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        if "<html" in text.lower() or title:
            summary = f"an HTML page{': ' + title.group(1).strip() if title else ''} instead of JSON"
        else:
            summary = text.strip()[:300] or "an empty body"
        return ErrorEnvelope(message=summary)
    envelope = ErrorEnvelope(body=body)
    if not isinstance(body, dict):
        envelope.message = str(body)[:300]
        return envelope
    err = body.get("error")
    codes: list[str] = []
    if isinstance(err, dict):
        envelope.message = str(err.get("message") or "")
        codes += [str(err.get(k)) for k in ("status", "type", "code") if err.get(k) not in (None, "")]
        for detail in err.get("details") or []:
            if not isinstance(detail, dict):
                continue
            if detail.get("reason"):
                codes.append(str(detail["reason"]))
            delay = _retry_delay_seconds(detail.get("retryDelay"))
            if delay is not None:
                envelope.retry_after = delay
            for violation in detail.get("violations") or []:
                if "PerDay" in str(violation.get("quotaId", "")):
                    envelope.daily_quota = True
    elif isinstance(err, str):  # Vydra: {"error": "...", "code": "..."}
        envelope.message = err
    detail = body.get("detail")
    if isinstance(detail, list):  # fal / FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                parts.append(str(item.get("msg") or item.get("message") or item))
                if item.get("type"):
                    codes.append(str(item["type"]))
        envelope.message = envelope.message or "; ".join(parts)
    elif isinstance(detail, str):
        envelope.message = envelope.message or detail
    for key in ("code", "error_type", "type", "status"):
        if isinstance(body.get(key), str) and body[key]:
            codes.append(body[key])
    if not envelope.message:
        envelope.message = str(body.get("message") or body.get("msg") or "")[:1000]
    if body.get("retryAfter") is not None:
        envelope.retry_after = _retry_delay_seconds(body.get("retryAfter"))
    envelope.code = " ".join(dict.fromkeys(c.lower() for c in codes if c and c != "None"))
    return envelope


def retry_after_header(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _retry_delay_seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_SAFETY_CODES = ("content_policy", "moderation", "safety", "prohibited", "nsfw")
_AUTH_CODES = ("api_key_invalid", "invalid_api_key", "authentication", "unauthenticated", "key_not_found", "key_revoked", "key_expired", "invalid token")
_QUOTA_CODES = ("insufficient_quota", "insufficient_credits", "quota_exceeded", "billing", "resource_exhausted", "rate_limit")


def error_for_status(status: int, envelope: ErrorEnvelope, caller: Caller, request_id: str | None = None) -> BananaError:
    """Map a failed HTTP answer onto the taxonomy; the provider's own code wins over the status."""
    common = dict(provider=caller.provider, model=caller.model or None, status=status, provider_message=envelope.message or None, request_id=request_id)
    codes = envelope.code
    text = f"{codes} {envelope.message}".lower()
    if any(word in codes for word in _SAFETY_CODES) and status in (400, 403, 422):
        stage = SafetyStage.PROMPT_BLOCKED if "input" in text else SafetyStage.OUTPUT_BLOCKED
        return SafetyRejected("The provider refused the request on content-policy grounds.", stage=stage, reason=codes or None, **common)
    if status in (401, 403) or any(word in text for word in _AUTH_CODES):
        hint = f"Check the key for '{caller.provider}': set BANANA_{caller.provider.upper()}_API_KEY or add it to the keys file (README, 'API keys')."
        return AuthError("The provider did not accept the API key.", hint=hint, **common)
    if status == 402 or (status != 429 and any(word in codes for word in _QUOTA_CODES)):
        return QuotaOrRateLimited("The account is out of credits or quota.", hint="Top up the account with this provider, or choose another provider.", **common)
    if status == 429:
        retry = f" Retry after about {envelope.retry_after:.0f} s." if envelope.retry_after else ""
        if envelope.daily_quota:
            return QuotaOrRateLimited("The daily quota is used up." + retry, hint="Wait for the daily reset, or use another key or provider.", retry_after=envelope.retry_after, **common)
        return QuotaOrRateLimited("Rate limited by the provider." + retry, retry_after=envelope.retry_after, **common)
    if status == 404:
        return InvalidRequest("Not found: the model id or the base URL is wrong, or the job expired.", hint="Check the model (or the free-text model id) and BANANA_<PROVIDER>_BASE_URL.", **common)
    if status == 413:
        return InvalidRequest("The request is too large.", hint="Use fewer or smaller reference images (lower the upload pixel budget).", **common)
    if status in (408, 504, 524):
        return TimedOut("The provider timed out.", **common)
    if status >= 500:
        return UpstreamUnavailable("The provider failed or is overloaded.", **common)
    if 400 <= status < 500:
        return InvalidRequest("The provider rejected the request.", **common)
    return MalformedResponse(f"Unexpected HTTP status {status}.", **common)


# ---------------------------------------------------------------------------------------------
# The engine.


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


@dataclass
class PollState:
    done: bool
    value: Any = None
    status: str = ""
    progress: float | None = None  # 0..100 when the provider reports it
    queue_position: int | None = None


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
                done, _ = await asyncio.wait({task}, timeout=CANCEL_CHECK_INTERVAL)
                if done:
                    return task.result()
                if ctx.cancelled():
                    raise Cancelled("Stopped by the user.")
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
        policy: RetryPolicy = IDEMPOTENT,
        status: str | None = None,
        read_timeout: float | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> Response:
        """Send one request with retries; return a 2xx Response (or one in ok_statuses) or raise a BananaError."""
        status = status or f"Waiting for {caller.provider}"
        timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout or caller.read_timeout, write=120.0, pool=None)
        attempts = rate_limited = 0
        while True:
            attempts += 1
            error: BananaError
            retry_after: float | None = None
            try:
                sent = self.client().request(method, url, headers=headers, json=json_body, data=data, files=files, timeout=timeout)
                raw: httpx.Response = await self.watch(ctx, sent, status)
                response = Response(raw.status_code, raw.headers, raw.content, str(raw.url), caller)
                if raw.is_success or raw.status_code in ok_statuses:
                    return response
                envelope = parse_error_body(raw.content, raw.headers.get("content-type", ""))
                retry_after = retry_after_header(raw.headers)
                if retry_after is None:
                    retry_after = envelope.retry_after
                error = error_for_status(raw.status_code, envelope, caller, request_id=_request_id(raw.headers))
                retryable = raw.status_code in policy.statuses and not isinstance(error, (SafetyRejected, AuthError))
                if raw.status_code == 429:
                    rate_limited += 1
                    if envelope.daily_quota or (retry_after or 0) > policy.max_retry_after:
                        retryable = False
            except httpx.TimeoutException as exc:
                phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "response"
                error = TimedOut(f"No {phase} within the timeout ({type(exc).__name__}).", provider=caller.provider, model=caller.model or None)
                # A connect timeout means nothing was sent, so even a submit may be resent.
                retryable = policy.retry_timeouts or isinstance(exc, httpx.ConnectTimeout)
            except httpx.TransportError as exc:
                error = UpstreamUnavailable(f"Network error talking to the provider: {type(exc).__name__}: {exc}", provider=caller.provider, model=caller.model or None, hint="Check the network, proxy settings and the provider's base URL.")
                retryable = policy.retry_network_errors or isinstance(exc, httpx.ConnectError)
            if error.status == 429:
                budget_left = rate_limited < policy.max_rate_limited_attempts
            else:
                budget_left = attempts - rate_limited < policy.max_attempts
            if not retryable or not budget_left:
                raise error
            delay = self._backoff(attempts if not rate_limited else rate_limited, policy, retry_after)
            log.info("%s: %s; retrying in %.1f s", caller.provider, str(error).splitlines()[0], delay)
            await self.sleep(ctx, delay, f"{status}: retrying after {type(error).__name__}")

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
        cancel: Callable[[], Awaitable[Any]] | None = None,
        first_delay: float = 1.0,
        max_delay: float = 5.0,
        max_wait: float = 900.0,
        task_label: str = "",
    ) -> Any:
        """Poll until check() says done; back off from about a second; cancel the remote job on interrupt."""
        delay, started = first_delay, time.monotonic()
        last = "Submitted"
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
                delay = min(max_delay, delay * 1.5)
        except (Cancelled, asyncio.CancelledError):
            if cancel is not None:
                # Best effort, bounded: the user is waiting for the stop to take effect.
                try:
                    await asyncio.wait_for(cancel(), timeout=5.0)
                except Exception as exc:  # noqa: BLE001 - cancelling is a courtesy, never a new failure
                    log.info("%s: could not cancel the remote job %s: %s", caller.provider, task_label, redact(exc))
            raise

    # -- downloads -------------------------------------------------------------------------------

    async def fetch_image(self, ctx: CallContext, caller: Caller, ref: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> GeneratedImage:
        """Turn a result reference (data URI, bare base64 or http(s) URL) into checked image bytes.

        URLs are fetched at once, without the provider's auth headers (they are third-party CDN
        links that expire), with retries, a size limit and magic-byte and pixel-count checks.
        """
        ref = ref.strip()
        try:
            if ref.startswith("data:") or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", ref):
                return inspect_image(decode_base64_payload(ref))
            if not ref.lower().startswith(("http://", "https://")):
                raise NotAnImage(f"refusing to fetch a result from a non-http(s) address: {ref[:40]}")
            data = await self._download(ctx, caller, ref, max_bytes)
            return inspect_image(data, source_url=ref)
        except NotAnImage as exc:
            raise MalformedResponse(f"The provider's result is not a usable image: {exc}", provider=caller.provider, model=caller.model or None) from None

    async def _download(self, ctx: CallContext, caller: Caller, url: str, max_bytes: int) -> bytes:
        async def stream() -> tuple[int, bytes]:
            async with self.client().stream("GET", url, timeout=httpx.Timeout(CONNECT_TIMEOUT, read=120.0)) as raw:
                if not raw.is_success:
                    return raw.status_code, await raw.aread()
                declared = int(raw.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise NotAnImage(f"result is {declared} bytes, over the {max_bytes}-byte limit")
                chunks, size = [], 0
                async for chunk in raw.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise NotAnImage(f"result exceeds the {max_bytes}-byte limit")
                    chunks.append(chunk)
                return raw.status_code, b"".join(chunks)

        policy = IDEMPOTENT
        for attempt in range(1, policy.max_attempts + 1):
            try:
                code, content = await self.watch(ctx, stream(), f"Downloading the result from {caller.provider}")
                if 200 <= code < 300:
                    return content
                error: BananaError = error_for_status(code, parse_error_body(content), caller)
                if code not in policy.statuses:
                    raise error
            except httpx.TransportError as exc:
                error = UpstreamUnavailable(f"Downloading the result failed: {type(exc).__name__}", provider=caller.provider, model=caller.model or None)
            if attempt == policy.max_attempts:
                raise error
            await self.sleep(ctx, self._backoff(attempt, policy, None), "Retrying the download")
        raise AssertionError("unreachable")


def _poll_status_text(caller: Caller, state: PollState) -> str:
    text = state.status or "Working"
    if state.queue_position is not None:
        text += f", queue position {state.queue_position}"
    if state.progress is not None:
        text += f", {state.progress:.0f}%"
    return f"{caller.provider}: {text}"


def _request_id(headers: httpx.Headers) -> str | None:
    for name in ("x-request-id", "x-fal-request-id", "request-id", "x-goog-request-id"):
        if headers.get(name):
            return headers[name]
    return None


_engine: HttpEngine | None = None


def get_engine() -> HttpEngine:
    global _engine
    if _engine is None:
        _engine = HttpEngine()
    return _engine
