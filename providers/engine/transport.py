"""The engine proper: the HTTP client and its lifecycle, requests with retries by the billing rules,
the key attached only to the provider's origin, limits on every body, waiting with cancellation
and status, polling of asynchronous jobs, and result downloads."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import re
import time
import weakref
from urllib.parse import urljoin
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import httpx

from ..errors import (
    AuthError,
    BananaError,
    Cancelled,
    ConfigError,
    MalformedResponse,
    Refusal,
    TimedOut,
    UnusableImage,
    UpstreamUnavailable,
)
from ..outcome import UNKNOWN_MIME, GeneratedImage, NotAnImage, decode_base64_payload, inspect_image
from ..redaction import install_log_filter, redact
from .addresses import DownloadScope, bind_checks, checked_addresses, download_scope
from .auth import Credentials, host_of, origin, without_userinfo
from .bodies import ACCEPT_ENCODING, BadEncoding, BodyTooLarge, read_limited
from .context import CallContext, Caller
from .error_mapping import decoded_text, error_for_status, is_provider_error, loads_json, parse_error_body, request_id_in
from .policy import (
    CONNECTION_LOST,
    IDEMPOTENT,
    MAYBE_BILLED,
    MAYBE_BILLED_HINT,
    NEVER_CONNECTED,
    RATE_LIMITED_MAY_BILL,
    READ_TIMEOUT,
    REDIRECTED,
    REPORTED_FAILURE,
    TRUNCATED,
    RetryPolicy,
    retry_after_header,
    retry_hint,
    status_outcome,
)
from .polling import PollCadence, PollState, _poll_status_text

log = logging.getLogger("nano_banana_bridge")
# A logger's filter does not see records its children log: httpcore logs response headers (DEBUG)
# on its own child loggers, so each is named here.
install_log_filter("nano_banana_bridge", "httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy", "httpcore.socks")

CONNECT_TIMEOUT = 15.0
# Servers close idle keep-alive connections after a few seconds (Node and uvicorn after 5, httpx's
# own default expiry). A paid request sent on one as the close crosses it is lost unanswered and may
# not be resent (it may have been billed): a connection idle this long is not reused. A second below
# 5 s (a request's time on the wire, with margin), yet above the catalog's polling cadences (at most
# 3 s), so a job's polls keep their connection.
KEEPALIVE_EXPIRY = 4.0
CANCEL_CHECK_INTERVAL = 0.2  # how often a cancel flag is looked at: well inside the 1 s promise
STATUS_INTERVAL = 1.0
MAX_DOWNLOAD_BYTES = 80 * 1024 * 1024  # one result image, downloaded or inline base64
MAX_ANSWER_BYTES = 128 * 1024 * 1024  # one JSON answer, decompressed (inline 4K images run to tens of MB)
MAX_ERROR_BYTES = 64 * 1024  # an error body: its first 64 KB say enough
MAX_DOWNLOAD_REDIRECTS = 5  # hops a result download may take, each checked
_REDIRECTS = (301, 302, 303, 307, 308)
LOOPBACK_NAMES = ("all://127.0.0.1", "all://localhost", "all://*.localhost", "all://[::1]")  # never proxied
SUBMIT_STOP_GRACE = 5.0  # seconds a user's stop waits for a submit's answer already on its way (the job's handle)
DEADLINE_FACTOR = 2.0  # an attempt's overall deadline, in read timeouts: a slow drip cannot hold a call forever


def mark_maybe_billed(error: BananaError, request_id: str | None) -> BananaError:
    error.maybe_billed = True
    error.request_id = error.request_id or request_id
    error.hint = MAYBE_BILLED_HINT.format(request_id=f" (request id {error.request_id})" if error.request_id else "")
    error.args = (str(error),)
    return error


# Set in a task whose prompt ComfyUI ended (another node failed: asyncio.run() cancels every task left)
# while a paid request of it was in flight: the answer was awaited anyway so it is saved, and the
# task now goes no further than that (no resend, no polling of a journaled job).
_ended_outside: contextvars.ContextVar[bool] = contextvars.ContextVar("banana_ended_outside", default=False)


def _untracked(awaitable: Awaitable[Any]) -> asyncio.Future:
    """A task that asyncio.run()'s shutdown does not cancel on its own (it cancels only what
    all_tasks() lists): whoever awaits it decides, so a paid exchange can be awaited to its end.
    (Python 3.14 keeps native tasks in per-thread lists; its _unregister_task unlinks them from those.)"""
    task = asyncio.ensure_future(awaitable)
    unregister = getattr(asyncio.tasks, "_unregister_task", None)
    if unregister is not None:
        try:
            unregister(task)
        except Exception:  # noqa: BLE001 - without it, the exchange is cancelled as before
            pass
    return task


def _ended_by_user(ctx: CallContext) -> bool:
    try:
        return ctx.cancelled()
    except Exception:  # noqa: BLE001 - a broken cancel check counts as a stop
        return True


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    content: bytes
    url: str
    caller: Caller
    paid: bool = False  # the answer to a paid request: an unreadable one may still have been billed

    def json(self) -> Any:
        """The body as JSON; a gateway's HTML page or a truncated body becomes MalformedResponse.

        A body in a charset its Content-Type declares is read in that one (error_mapping.loads_json)."""
        try:
            return loads_json(self.content, self.headers.get("content-type", ""))
        except (ValueError, LookupError):
            summary = parse_error_body(self.content, self.headers.get("content-type", "")).message
            error = MalformedResponse(
                f"Expected JSON, got {summary} ({len(self.content)} bytes, content-type '{self.headers.get('content-type', '')}').",
                provider=self.caller.provider,
                model=self.caller.model or None,
                status=self.status,
            )
            if self.paid and 200 <= self.status < 300:
                mark_maybe_billed(error, request_id_in(self.headers))
            raise error from None

    def text(self) -> str:
        """The body as text in its declared charset (or by its byte-order mark), as redaction needs it."""
        return decoded_text(self.content, self.headers.get("content-type", ""))

    def json_object(self) -> dict:
        body = self.json()
        if not isinstance(body, dict):
            error = MalformedResponse(
                f"Expected a JSON object, got {type(body).__name__}.", provider=self.caller.provider, model=self.caller.model or None, status=self.status
            )
            if self.paid and 200 <= self.status < 300:  # like an unparseable answer: the provider ran the request
                mark_maybe_billed(error, request_id_in(self.headers))
            raise error
        return body


class _BodyRefused(Exception):
    """An answer refused unread: over its size limit, or in an encoding that was not asked for."""

    def __init__(self, status: int, headers: httpx.Headers, reason: str) -> None:
        self.status, self.headers = status, headers
        super().__init__(reason)


class _BodyCut(Exception):
    """The status and headers arrived, then the body did not (completely)."""

    def __init__(self, status: int, headers: httpx.Headers, cause: Exception) -> None:
        self.status, self.headers, self.cause = status, headers, cause
        super().__init__(str(cause))


@dataclass
class _Failure:
    """One failed attempt: the error to raise, how it ended (a BILLING_RULES outcome), and the provider's hints."""

    error: BananaError
    outcome: str
    answered: bool = False  # an HTTP status arrived
    request_id: str | None = None
    retry_after: float | None = None
    hint: bool | None = None  # x-should-retry / X-Fal-Retryable


def _failed_answer(response: Response, caller: Caller) -> _Failure:
    """An answer with an error status (a 3xx included: API calls do not follow redirects)."""
    request_id = request_id_in(response.headers)
    if 300 <= response.status < 400:
        location = response.headers.get("location") or ""
        error: BananaError = ConfigError(
            f"The provider answered with a redirect to {host_of(location) if location else '(no Location)'}; "
            "API calls do not follow redirects, so nothing (and no key) was sent there.",
            provider=caller.provider,
            model=caller.model or None,
            status=response.status,
            request_id=request_id,
            hint="Check the provider's base URL (BANANA_<PROVIDER>_BASE_URL): it may need https:// or another path.",
        )
        return _Failure(error, REDIRECTED, answered=True, request_id=request_id)
    envelope = parse_error_body(response.content, response.headers.get("content-type", ""))
    retry_after = retry_after_header(response.headers)
    if retry_after is None:
        retry_after = envelope.retry_after
    error = error_for_status(response.status, envelope, caller, request_id=request_id)
    outcome = status_outcome(response.status, provider_error=is_provider_error(envelope.body), rate_limit_may_bill=caller.rate_limit_may_bill)
    return _Failure(error, outcome, answered=True, request_id=request_id, retry_after=retry_after, hint=retry_hint(response.headers))


def _failed_exchange(exc: BaseException, caller: Caller, deadline: float) -> _Failure:
    """No (complete) answer: past the deadline, a body cut off, or a network error."""
    provider, model = caller.provider, caller.model or None
    if isinstance(exc, _BodyCut):
        request_id = request_id_in(exc.headers)
        if isinstance(exc.cause, httpx.TimeoutException):
            error: BananaError = TimedOut(f"The answer (HTTP {exc.status}) stopped arriving: {type(exc.cause).__name__}.", provider=provider, model=model, request_id=request_id)
            return _Failure(error, READ_TIMEOUT, request_id=request_id)
        error = MalformedResponse(f"The answer (HTTP {exc.status}) was cut off: {exc}.", provider=provider, model=model, request_id=request_id)
        return _Failure(error, TRUNCATED, request_id=request_id)
    if not isinstance(exc, httpx.TransportError):  # the attempt's deadline
        error = TimedOut(f"No complete answer within the {deadline:.0f} s deadline ({DEADLINE_FACTOR:g} x the read timeout).", provider=provider, model=model)
        return _Failure(error, READ_TIMEOUT)
    # A connection that never opened sent nothing, so even a submit may be resent.
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    if isinstance(exc, httpx.TimeoutException):
        error = TimedOut(f"No {'connect' if never_sent else 'response'} within the timeout ({type(exc).__name__}).", provider=provider, model=model)
    else:
        error = UpstreamUnavailable(
            f"Network error talking to the provider: {type(exc).__name__}: {exc}", provider=provider, model=model, hint="Check the network, proxy settings and the provider's base URL."
        )
    error.sent = not never_sent
    return _Failure(error, NEVER_CONNECTED if never_sent else READ_TIMEOUT if isinstance(exc, httpx.ReadTimeout) else CONNECTION_LOST)


async def _close_at_loop_end(engine: "HttpEngine", loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Suspended at its yield for the life of the loop; asyncio.run's shutdown_asyncgens() closes it,
    which closes the loop's client (ComfyUI runs every prompt in a fresh asyncio.run loop)."""
    try:
        yield
    finally:
        if engine._clients.get(loop) is client:
            del engine._clients[loop]
        engine._closers.pop(loop, None)
        await client.aclose()


class HttpEngine:
    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = weakref.WeakKeyDictionary()

    def client(self) -> httpx.AsyncClient:
        """One pooled client per event loop (httpx clients cannot cross loops), closed when the loop ends."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY),
                timeout=httpx.Timeout(connect=CONNECT_TIMEOUT, read=360.0, write=120.0, pool=None),
                follow_redirects=False,  # API calls: a key must not follow a redirect to another host
                headers={"Accept-Encoding": ACCEPT_ENCODING},  # what bodies.read_limited can decode
                trust_env=True,  # honour HTTPS_PROXY etc., which users behind firewalls rely on
                # ...except for this machine: a proxy cannot reach its loopback, and a plain-http gateway
                # there (new-api, one-api) would hand the proxy its key in clear text.
                mounts=dict.fromkeys(LOOPBACK_NAMES),
            )
            bind_checks(client)  # result downloads connect only to checked addresses (addresses.py)
            self._clients[loop] = client
            closer = _close_at_loop_end(self, loop, client)
            # Start it now, synchronously (it yields at once): starting registers it with the loop's
            # async-generator hooks, so the loop's shutdown closes it. The strong reference is ours.
            try:
                closer.asend(None).send(None)
            except StopIteration:
                pass
            self._closers[loop] = closer
        return client

    async def aclose(self) -> None:
        """Close this loop's client now (tests and scripts; asyncio.run would close it at its end)."""
        loop = asyncio.get_running_loop()
        closer = self._closers.pop(loop, None)
        client = self._clients.pop(loop, None)
        if closer is not None:
            await closer.aclose()
        elif client is not None:
            await client.aclose()

    @property
    def open_clients(self) -> int:
        return sum(1 for client in list(self._clients.values()) if not client.is_closed)

    # -- waiting, cancellation and status --------------------------------------------------------

    async def watch(self, ctx: CallContext, awaitable: Awaitable[Any], status: str, *, paid: bool = False, grace: float = 0.0) -> Any:
        """Await while checking for cancellation and reporting status once a second.

        A stop raises Cancelled; its `sent` is False when the awaitable never got to run.
        paid: the awaitable is a paid exchange. When the task is cancelled from outside (ComfyUI ends
        the prompt because another node failed, and cancels every task left) rather than by the
        user's stop, the exchange is awaited to its end (its own deadline bounds it), so the answer
        the provider bills is received and saved instead of dropped with the connection.
        grace: seconds the user's stop waits for an exchange already under way to finish (a submit's
        answer carries the handle of a job the provider may have accepted: journaled, it is collected
        or cancelled instead of billed with no handle)."""
        task = _untracked(awaitable) if paid else asyncio.ensure_future(awaitable)
        next_status = 0.0
        started = False
        try:
            while True:
                # Before every wait, not only after a tick: a loop of short steps must see the flag too.
                if ctx.cancelled():
                    if grace > 0 and started:
                        done, _ = await asyncio.wait({task}, timeout=grace)
                        if done:
                            return task.result()
                    stopped = Cancelled("Stopped by the user.")
                    stopped.sent = started
                    raise stopped
                started = True
                try:
                    done, _ = await asyncio.wait({task}, timeout=CANCEL_CHECK_INTERVAL)
                except asyncio.CancelledError:
                    if not paid or _ended_by_user(ctx):
                        raise
                    return await self._finish_paid(task)
                if done:
                    return task.result()
                if ctx.elapsed >= next_status:
                    ctx.status(f"{status} ({ctx.elapsed:.0f}s)")
                    next_status = (ctx.elapsed // STATUS_INTERVAL + 1) * STATUS_INTERVAL  # on whole seconds
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @staticmethod
    async def _finish_paid(task: asyncio.Future) -> Any:
        """Await a paid exchange whose caller was cancelled from outside; the cancellation is taken
        back (it stays recorded in _ended_outside, which stops any further request of this task)."""
        _ended_outside.set(True)
        log.warning("The prompt ended while a paid request was in flight; waiting for its answer so the result is saved.")
        current = asyncio.current_task()
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                continue  # asyncio.run() and gather() each cancel once; the exchange's deadline ends the wait
        uncancel, cancelling = getattr(current, "uncancel", None), getattr(current, "cancelling", None)  # Python 3.11+
        while uncancel is not None and cancelling is not None and cancelling():
            uncancel()
        return task.result()

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
        credentials: Credentials | None = None,
        follow_redirects: bool = False,
    ) -> Response:
        """Send one request with retries; return a 2xx Response (or one in ok_statuses) or raise a BananaError.

        The body is json_body, or a form (data, files), or raw `content` (say with its Content-Type in
        headers). `credentials` add the provider's auth headers, and only for a URL they allow (else
        InvalidRequest before anything is sent). Redirects are followed only with follow_redirects
        (downloads, which never carry a key); otherwise a 3xx is an error naming where it pointed.
        An answer over max_bytes (default MAX_ANSWER_BYTES, counted decompressed) is refused; error
        bodies are read up to MAX_ERROR_BYTES; each attempt has an overall deadline of DEADLINE_FACTOR
        read timeouts. What is resent follows the policy's column of BILLING_RULES; a paid request that
        ends in a maybe-billed way raises an error with `maybe_billed` set. A raised error's `sent` is
        False when the request provably never left (the connection did not open).
        """
        status = status or f"Waiting for {caller.provider}"
        if credentials is not None:
            headers = {**(headers or {}), **credentials.headers_for(url)}  # refuses a foreign origin before sending
        read = read_timeout or caller.read_timeout
        timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=read, write=120.0, pool=None)
        deadline = DEADLINE_FACTOR * read
        limit = MAX_ANSWER_BYTES if max_bytes is None else max_bytes
        if json_body is not None:
            # Bodies with inline reference images run to tens of MB: serialise once, off the event loop.
            text = await asyncio.to_thread(json.dumps, json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            content, json_body = text.encode("utf-8"), None
            headers = {**(headers or {}), "Content-Type": "application/json"}
        attempts = rate_limited = 0
        while True:
            attempts += 1
            failure: _Failure
            try:
                exchange = self._attempt(
                    deadline, caller, method, url, limit, ok_statuses,
                    headers=headers, data=data, files=files, content=content, timeout=timeout, follow_redirects=follow_redirects,
                )
                try:
                    response: Response = await self.watch(ctx, exchange, status, paid=policy.paid, grace=SUBMIT_STOP_GRACE if policy.billing == "submit" else 0.0)
                except Cancelled as stopped:
                    if policy.paid and stopped.sent:  # stopped mid-exchange: the provider may be generating it now
                        mark_maybe_billed(stopped, None)
                    raise
                response.paid = policy.paid
                if 200 <= response.status < 300 or response.status in ok_statuses:
                    return response
                failure = _failed_answer(response, caller)
                rate_limited += response.status == 429
            except _BodyRefused as refused:  # over a limit, or an encoding not asked for: never resent
                unread = MalformedResponse(
                    f"The answer (HTTP {refused.status}) was refused: {refused}.",
                    status=refused.status, request_id=request_id_in(refused.headers), provider=caller.provider, model=caller.model or None,
                )
                if policy.paid and 200 <= refused.status < 300:
                    mark_maybe_billed(unread, unread.request_id)
                raise unread from None
            except (asyncio.TimeoutError, TimeoutError, _BodyCut, httpx.TransportError) as exc:
                failure = _failed_exchange(exc, caller, deadline)
            except httpx.RequestError as exc:  # too many redirects on a download, a bad URL: not transient
                raise MalformedResponse(f"The request to {host_of(url)} failed: {type(exc).__name__}: {exc}", provider=caller.provider, model=caller.model or None) from None
            error = failure.error
            if failure.answered and policy.billing is None:
                retryable = error.status in policy.statuses and failure.hint is not False
            else:
                retryable = policy.may_resend(failure.outcome, failure.hint)
            if failure.answered:
                retryable = (
                    retryable
                    and not isinstance(error, (Refusal, AuthError))
                    and not getattr(error, "exhausted", False)
                    and (failure.retry_after or 0) <= policy.max_retry_after  # a longer wait is reported, not waited out
                )
            if error.status == 429:
                budget_left = rate_limited < policy.max_rate_limited_attempts
            else:
                budget_left = attempts - rate_limited < policy.max_attempts
            if _ended_outside.get() and policy.paid:
                retryable = False  # the prompt is over: nothing more is paid for it (downloads of what was paid still retry)
            if not retryable or not budget_left:
                # A submit's reported 5xx is not resent because it may hide an accepted job: it says so too.
                hidden_job = policy.billing == "submit" and failure.outcome == REPORTED_FAILURE
                # An empty balance or a used-up quota (exhausted), even as a 429, was no generation.
                no_work = failure.outcome == RATE_LIMITED_MAY_BILL and getattr(error, "exhausted", False)
                if policy.paid and (failure.outcome in MAYBE_BILLED or hidden_job) and error.sent and not no_work:
                    mark_maybe_billed(error, failure.request_id)
                raise error
            delay = self._backoff(attempts if not rate_limited else rate_limited, policy, failure.retry_after)
            log.info("%s: %s; retrying in %.1f s", caller.provider, str(error).splitlines()[0], delay)
            await self.sleep(ctx, delay, f"{status}: retrying after {type(error).__name__}")

    async def _attempt(self, deadline: float, *args: Any, **kwargs: Any) -> Response:
        """One exchange within its overall deadline (asyncio.TimeoutError past it). Not wait_for: before
        Python 3.12 it runs the exchange as a task of its own, which asyncio.run()'s shutdown cancels."""
        exchange = _untracked(self._exchange(*args, **kwargs))
        try:
            done, _ = await asyncio.wait({exchange}, timeout=deadline)
        finally:
            if not exchange.done():
                exchange.cancel()
                await asyncio.gather(exchange, return_exceptions=True)
        if not done:
            raise asyncio.TimeoutError()
        return exchange.result()

    async def _exchange(self, caller: Caller, method: str, url: str, limit: int, ok_statuses: tuple[int, ...], **kwargs: Any) -> Response:
        async with self.client().stream(method, url, **kwargs) as raw:
            answer = raw.is_success or raw.status_code in ok_statuses
            encoding = raw.headers.get("content-encoding", "")
            if answer and not encoding and int(raw.headers.get("content-length") or 0) > limit:
                raise _BodyRefused(raw.status_code, raw.headers, f"it is over the {limit}-byte limit")
            try:
                content, complete = await read_limited(raw.aiter_raw(), encoding, limit if answer else MAX_ERROR_BYTES, keep_partial=not answer)
            except BodyTooLarge as exc:
                raise _BodyRefused(raw.status_code, raw.headers, f"it is over the {exc.limit}-byte limit (counted decompressed)") from None
            except BadEncoding as exc:
                if answer:
                    raise _BodyRefused(raw.status_code, raw.headers, str(exc)) from None
                content, complete = b"", True
            except httpx.TransportError as exc:
                if answer:
                    raise _BodyCut(raw.status_code, raw.headers, exc) from exc
                content, complete = b"", True  # an error status with a broken body: the status says enough
            if answer and not complete:
                raise _BodyCut(raw.status_code, raw.headers, BadEncoding(f"the {encoding} stream ended early"))
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
        cadence: PollCadence | None = None,
        max_wait: float = 900.0,
        task_label: str = "",
    ) -> Any:
        """Poll until check() says done, at the provider's cadence and within its poll budget
        (see PollCadence); cancel the remote job on interrupt.

        `cancel` receives a context without the cancel flag (the one given is already cancelled).
        """
        clock, started = (cadence or PollCadence()).schedule(), time.monotonic()
        delay, last = clock.first_delay, "Submitted"
        try:
            while True:
                if _ended_outside.get():  # the prompt ended while the submit was answered: the job is journaled
                    raise asyncio.CancelledError()
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

    async def fetch_image(self, ctx: CallContext, caller: Caller, ref: str, *, max_bytes: int | None = None) -> GeneratedImage:
        """Turn a result reference (data URI, bare base64 or http(s) URL) into checked image bytes.

        Inline base64 has the same size limit as a download. URLs lose any `user:pass@` part and are
        fetched at once, never with a key (they are third-party CDN links that expire), following
        redirects (each hop checked), through request() (so with its retries and Retry-After handling),
        with a size limit and magic-byte and pixel-count checks. A URL (or a hop) to a loopback, private,
        link-local or other non-public address is refused unless it is the provider's own host
        (addresses.py).
        """
        ref = ref.strip()
        max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
        try:
            if ref.startswith("data:") or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", ref):
                return inspect_image(decode_base64_payload(ref, max_bytes=max_bytes))
            if not ref.lower().startswith(("http://", "https://")):
                raise NotAnImage(f"refusing to fetch a result from a non-http(s) address: {ref[:40]}")
            url = without_userinfo(ref)
            response = await self._download(ctx, caller, url, max_bytes)
            return inspect_image(response.content, source_url=url)
        except NotAnImage as exc:
            message = f"The provider's result is not a usable image: {exc}"
            where: dict[str, Any] = dict(provider=caller.provider, model=caller.model or None)
            if exc.data is None:
                raise MalformedResponse(message, **where) from None
            raw = GeneratedImage(data=exc.data, mime=UNKNOWN_MIME, source_url=without_userinfo(ref) if ref.lower().startswith(("http://", "https://")) else None)
            raise UnusableImage(message, payloads=[raw], **where) from None


    async def _download(self, ctx: CallContext, caller: Caller, url: str, max_bytes: int) -> Response:
        """GET a result URL, following redirects by hand: every hop is checked (addresses.py) before
        the request, and again at connect time by the client's CheckedBackend, under the download scope."""
        scope = DownloadScope(provider=caller.provider, model=caller.model, base_url=caller.base_url, hosts=caller.own_hosts)
        status = f"Downloading the result from {caller.provider}"
        for _hop in range(MAX_DOWNLOAD_REDIRECTS + 1):
            target = origin(url)
            if target is None:
                raise MalformedResponse(f"The result link points to an unusable address ({host_of(url)}).", provider=caller.provider, model=caller.model or None)
            await checked_addresses(target[1], target[2], scope)  # a clean refusal before any I/O; through a proxy, the only check
            with download_scope(scope):
                response = await self.request(
                    ctx, caller, "GET", url, policy=IDEMPOTENT, status=status, read_timeout=120.0, max_bytes=max_bytes, ok_statuses=_REDIRECTS,
                )
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("location")
            if not location:
                raise MalformedResponse(f"The result download from {host_of(url)} answered HTTP {response.status} without a Location.", provider=caller.provider, model=caller.model or None)
            url = without_userinfo(urljoin(url, location.strip()))
        raise MalformedResponse(
            f"The result download was redirected more than {MAX_DOWNLOAD_REDIRECTS} times (last to {host_of(url)}).", provider=caller.provider, model=caller.model or None
        )


_engine: HttpEngine | None = None


def get_engine() -> HttpEngine:
    global _engine
    if _engine is None:
        _engine = HttpEngine()
    return _engine
