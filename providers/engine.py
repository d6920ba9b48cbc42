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
    NoImageReturned,
    QuotaOrRateLimited,
    Refusal,
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

    def detached(self) -> "CallContext":
        """A context without the cancel flag (or callbacks): for cleanup that must run after an interrupt."""
        return CallContext(started=self.started)


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
    code: str = ""  # every code and type the provider gave, lower-cased, space-joined
    reason: str | None = None  # the provider's own error code, verbatim (a refusal's reason)
    labels: tuple[str, ...] = ()  # moderation categories (moderation_details.categories, OpenRouter metadata.reasons)
    stage: str | None = None  # "input" or "output", where a moderation says it struck
    flagged: bool = False  # the answer carries moderation details: a refusal, whatever its code says
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


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def parse_error_body(content: bytes, content_type: str = "") -> ErrorEnvelope:
    """Read the error envelopes in use: Google's, OpenAI's and new-api's, OpenRouter's, fal's, Vydra's, EvoLink's."""
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
    return read_error_body(body)


def read_error_body(body: Any) -> ErrorEnvelope:
    """The same, for a body already parsed from JSON."""
    envelope = ErrorEnvelope(body=body)
    if not isinstance(body, dict):
        envelope.message = str(body)[:300]
        return envelope
    err = body.get("error")
    codes: list[Any] = []
    if isinstance(err, dict):
        envelope.message = str(err.get("message") or "")
        codes += [err.get(k) for k in ("code", "status", "type")]
        for detail in err.get("details") or []:
            if not isinstance(detail, dict):
                continue
            codes.append(detail.get("reason"))
            delay = _retry_delay_seconds(detail.get("retryDelay"))
            if delay is not None:
                envelope.retry_after = delay
            for violation in detail.get("violations") or []:
                if "PerDay" in str(_dict(violation).get("quotaId", "")):
                    envelope.daily_quota = True
        # OpenAI's moderation_details (also beside "error") and OpenRouter's metadata name the stage and categories.
        moderation, metadata = _dict(err.get("moderation_details") or body.get("moderation_details")), _dict(err.get("metadata"))
        envelope.labels = tuple(str(x) for x in (metadata.get("reasons") or moderation.get("categories") or []) if x)
        envelope.flagged = bool(moderation or envelope.labels or metadata.get("flagged_input"))
        stage = str(moderation.get("moderation_stage") or "").lower()
        envelope.stage = stage if stage in ("input", "output") else "input" if metadata.get("flagged_input") else None
    elif isinstance(err, str):  # Vydra: {"error": "...", "code": "..."}
        envelope.message = err
    detail = body.get("detail")
    if isinstance(detail, list):  # fal / FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                parts.append(str(item.get("msg") or item.get("message") or item))
                codes.append(item.get("type"))
        envelope.message = envelope.message or "; ".join(parts)
    elif isinstance(detail, str):
        envelope.message = envelope.message or detail
    codes += [body.get(key) for key in ("code", "error_type", "type", "status")]
    if not envelope.message:
        envelope.message = str(body.get("message") or body.get("msg") or "")[:1000]
    if body.get("retryAfter") is not None:
        envelope.retry_after = _retry_delay_seconds(body.get("retryAfter"))
    words = [c for c in codes if isinstance(c, str) and c.strip()]
    envelope.reason = words[0] if words else None
    envelope.code = " ".join(dict.fromkeys(c.lower() for c in words))
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


# Codes name a policy outright; in free text only unambiguous phrases count ("safety_settings" is no refusal).
SAFETY_CODES = ("content_policy", "content_filter", "moderation", "safety", "prohibited", "nsfw")
SAFETY_PHRASES = ("safety system", "safety filter", "content policy", "content moderation", "content filter", "flagged by", "image_safety", "prohibited_content", "nsfw")
_REFUSAL_STATUSES = (200, 400, 403, 422, 451, 500)  # where a provider reports a refusal (Vydra: a declared 500)
_NO_IMAGE_CODES = ("generation_failed",)  # a declared, final generation failure (Vydra, EvoLink): no image, not resent
# An empty balance is reported at once, even as a 429; OpenAI's rate-limit texts link to billing, so no phrase says "billing",
# and Google's per-minute 429 says "exceeded your current quota", so that phrase is no empty balance either.
EMPTY_BALANCE_CODES = ("insufficient_quota", "insufficient_user_quota", "quota_exceeded", "insufficient_balance", "insufficient_credits", "billing")
EMPTY_BALANCE_PHRASES = ("insufficient balance", "insufficient credits", "out of credits", "额度不足", "余额不足", "额度已用尽")
_RATE_CODES = ("rate_limit", "resource_exhausted", "too_many_requests")
_AUTH_CODES = ("api_key_invalid", "invalid_api_key", "authentication", "unauthenticated", "key_not_found", "key_revoked", "key_expired", "invalid token")
_NO_CHANNEL_PHRASES = ("no available channel", "无可用渠道")  # new-api gateways
_NO_CHANNEL_HINT = "The gateway has no working upstream channel for this model in your key's group right now: retry later, pick another model, or ask the gateway."


def names_safety(codes: str | None, message: str | None) -> bool:
    """Whether a code or a message names a content-policy refusal."""
    return any(word in (codes or "").lower() for word in SAFETY_CODES) or any(phrase in (message or "").lower() for phrase in SAFETY_PHRASES)


def error_for_status(status: int, envelope: ErrorEnvelope, caller: Caller, request_id: str | None = None) -> BananaError:
    """Map a failed answer onto the taxonomy; the provider's own words win over the status."""
    common = dict(provider=caller.provider, model=caller.model or None, status=status, provider_message=envelope.message or None, request_id=request_id)
    codes, message = envelope.code, envelope.message.lower()
    if status in _REFUSAL_STATUSES and (envelope.flagged or names_safety(codes, message)):
        where = envelope.stage or ("input" if "input" in f"{codes} {message}" or "prompt" in message else "output")
        stage = SafetyStage.PROMPT_BLOCKED if where == "input" else SafetyStage.OUTPUT_BLOCKED
        what = "the prompt or a reference image" if where == "input" else "the generated image"
        labels = ", ".join(envelope.labels)
        reason = f"{envelope.reason} ({labels})" if envelope.reason and labels else envelope.reason or labels or codes or None
        return SafetyRejected(f"The provider's moderation blocked {what}.", stage=stage, reason=reason, finish_message=envelope.message or None, **common)
    if any(word in codes for word in _NO_IMAGE_CODES):
        return NoImageReturned("The provider finished without an image.", reason=envelope.reason, finish_message=envelope.message or None, **common)
    if status == 402 or any(word in codes for word in EMPTY_BALANCE_CODES) or any(phrase in message for phrase in EMPTY_BALANCE_PHRASES):
        return QuotaOrRateLimited("The account is out of credits or quota.", hint="Top up the account with this provider, or choose another provider.", exhausted=True, **common)
    if status in (401, 403) or any(word in f"{codes} {message}" for word in _AUTH_CODES):
        hint = f"Check the key for '{caller.provider}': set BANANA_{caller.provider.upper()}_API_KEY or add it to the keys file (README, 'API keys')."
        return AuthError("The provider did not accept the API key.", hint=hint, **common)
    if status == 429 or any(word in codes for word in _RATE_CODES):
        retry = f" Retry after about {envelope.retry_after:.0f} s." if envelope.retry_after else ""
        if envelope.daily_quota:
            return QuotaOrRateLimited("The daily quota is used up." + retry, hint="Wait for the daily reset, or use another key or provider.", retry_after=envelope.retry_after, exhausted=True, **common)
        return QuotaOrRateLimited("Rate limited by the provider." + retry, retry_after=envelope.retry_after, **common)
    if status == 404:
        return InvalidRequest("Not found: the model id or the base URL is wrong, or the job expired.", hint="Check the model (or the free-text model id) and BANANA_<PROVIDER>_BASE_URL.", **common)
    if status == 413:
        return InvalidRequest("The request is too large.", hint="Use fewer or smaller reference images (lower the upload pixel budget).", **common)
    if status in (408, 504, 524):
        return TimedOut("The provider timed out.", **common)
    if status >= 500:
        hint = _NO_CHANNEL_HINT if any(phrase in message for phrase in _NO_CHANNEL_PHRASES) else None
        return UpstreamUnavailable("The provider failed or is overloaded.", hint=hint, **common)
    if 400 <= status < 500:
        return InvalidRequest("The provider rejected the request.", **common)
    return MalformedResponse(f"The provider answered HTTP {status} with an error instead of a result.", **common)


def error_in_answer(body: Any, caller: Caller, request_id: str | None = None) -> BananaError:
    """A 2xx answer that carries an error instead of a result: {"error": {...}} (new-api, OpenRouter) or
    {"code": 401, "msg": ...} (APIMart-style); an HTTP-like code in the body stands for the status."""
    inner = _dict(_dict(body).get("error")).get("code")
    status = next((c for c in (_dict(body).get("code"), inner) if isinstance(c, int) and 400 <= c < 600), 200)
    return error_for_status(status, read_error_body(body), caller, request_id=request_id)


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
        first_delay: float = 1.0,
        max_delay: float = 5.0,
        max_wait: float = 900.0,
        task_label: str = "",
    ) -> Any:
        """Poll until check() says done; back off from about a second; cancel the remote job on interrupt.

        `cancel` receives a context without the cancel flag (the one given is already cancelled).
        """
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
