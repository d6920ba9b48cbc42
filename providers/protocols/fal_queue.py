"""Family D: the fal.ai queue (fal.ai itself, openai-hk's `/fal-ai/...` passthrough, `fal-queue` gateways).

submit: POST {base}/{endpoint} (the `/edit` endpoint when there are references) -> request_id and
        status/response/cancel URLs, journaled as the handle.
wait:   GET status_url?logs=1 (202 while IN_QUEUE/IN_PROGRESS, 200 when COMPLETED), then GET
        response_url; the model's own failures (422 content_policy_violation, validation) surface on
        that result GET and the engine maps them. Status and result URLs name owner/app only (no
        `/edit`), so the URLs fal returns are always preferred (providers.md section 5).
Passthroughs return fal's own queue.fal.run URLs: option `rewrite_queue_urls` moves them onto the
configured base URL (5.8). Their status endpoint is UNVERIFIED: if it 404s, the result URL is polled
instead until it stops answering 202 / 400 "still in progress".
References go inline as data URIs (fal accepts them; the core already downscales references).
fal storage upload (5.6) is not used: it needs a raw-bytes body with a token header, which the core's
request() does not send yet.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlsplit

from ..engine import IDEMPOTENT, SUBMIT, CallContext, PollState, Response, error_for_status, parse_error_body
from ..errors import BananaError, Cancelled, ConfigError, MalformedResponse, NoImageReturned, SafetyRejected, SafetyStage
from ..outcome import GenerationRequest, GenerationResult

PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
FAILED = frozenset({"FAILED", "CANCELED", "CANCELLED", "ERROR"})
STILL_RUNNING = ("in progress", "in queue", "not completed", "not yet", "still running", "still processing")
LOST_SUBMIT_HINT = (
    "No answer to the submit arrived, so the job may have been accepted (and billed). It was NOT sent again: "
    "check the provider's dashboard or request history before queueing the same request again."
)


# -- helpers shared with async_tasks.py (candidates for ProviderCall / the engine) --------------


def number_option(call, name: str, default: float) -> float:
    raw = call.option(name, default)
    try:
        return float(default if raw in (None, "") else raw)
    except (TypeError, ValueError):
        raise ConfigError(f"Option '{name}' of '{call.provider.id}' must be a number, got {raw!r}.", provider=call.provider.id) from None


def flag_option(call, name: str, default: bool = False) -> bool:
    raw = call.option(name, default)
    if isinstance(raw, str):  # from the environment
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return bool(raw)


def detached(call):
    """The same call without the user's cancel flag: cleanup after an interrupt must still run."""
    return dataclasses.replace(call, ctx=CallContext())


async def submit_once(call, path: str, body: dict[str, Any]) -> Response:
    """POST a paid job exactly once (the SUBMIT policy); a lost answer says the job may exist."""
    try:
        return await call.send("POST", path, json_body=body, policy=SUBMIT, status=f"Submitting to {call.provider.display_name}")
    except BananaError as exc:
        never_sent = "ConnectError" in exc.message or "No connect " in exc.message
        if exc.status is None and not never_sent:
            exc.hint = LOST_SUBMIT_HINT
        raise


async def poll(call, check, cancel=None, label: str = ""):
    async def checked() -> PollState:
        # engine.watch() looks at the cancel flag only when a step outlasts its 0.2 s tick, so
        # quick polls would never see it: look before every poll as well.
        if call.ctx.cancelled():
            raise Cancelled("Stopped by the user.")
        return await check()

    return await call.engine.poll(
        call.ctx,
        call.caller,
        checked,
        cancel=cancel,
        first_delay=number_option(call, "poll_first_delay", 1.0),
        max_delay=number_option(call, "poll_max_delay", 5.0),
        max_wait=call.provider.max_wait,
        task_label=label,
    )


# -- submit ----------------------------------------------------------------------------------------


def endpoint(call, request: GenerationRequest) -> str:
    if not call.model.known:
        return call.model.model_id  # a typed id is the endpoint, as typed
    return call.model.id_for(request.resolution, editing=bool(request.images))


def build_body(call, request: GenerationRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": request.prompt, "num_images": request.count, "output_format": call.option("output_format", "png")}
    # aspect_ratio omitted = auto: 1:1 for text-to-image, follow the input on /edit endpoints.
    optional = {"seed": request.seed, "aspect_ratio": request.aspect_ratio, "resolution": request.resolution}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.images:
        body["image_urls"] = [image.data_uri() for image in request.images]
    if request.web_search:
        body["enable_web_search"] = True
    return body


def queue_url(call, returned: Any, fallback_path: str) -> str:
    if not isinstance(returned, str) or not returned.startswith(("http://", "https://")):
        return call.url(fallback_path)
    parts = urlsplit(returned)
    if flag_option(call, "rewrite_queue_urls") and (parts.hostname or "").endswith("fal.run"):
        return call.url(parts.path + (f"?{parts.query}" if parts.query else ""))
    return returned


async def submit(call, request: GenerationRequest) -> dict[str, Any]:
    model_id = endpoint(call, request)
    body = (await submit_once(call, model_id, build_body(call, request))).json_object()
    response_url = body.get("response_url") if isinstance(body.get("response_url"), str) else ""
    request_id = str(body.get("request_id") or response_url.rstrip("/").rsplit("/", 1)[-1] or "")
    if not request_id:
        raise MalformedResponse(f"The submit answer has no request_id: {str(body)[:300]}", provider=call.provider.id, hint=LOST_SUBMIT_HINT)
    requests = f"{'/'.join(model_id.split('/')[:2])}/requests/{request_id}"  # owner/app only, no /edit
    return {
        "request_id": request_id,
        "endpoint": model_id,
        "status_url": queue_url(call, body.get("status_url"), f"{requests}/status"),
        "response_url": queue_url(call, body.get("response_url"), requests),
        "cancel_url": queue_url(call, body.get("cancel_url"), f"{requests}/cancel"),
        "count": request.count,
    }


# -- wait ------------------------------------------------------------------------------------------


def with_logs(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "logs=1"


def status_text(body: dict[str, Any]) -> str:
    status = str(body.get("status") or "").upper()
    text = "In queue" if status == "IN_QUEUE" else "Generating" if status == "IN_PROGRESS" else status.title() or "Working"
    logs = [entry.get("message") for entry in body.get("logs") or [] if isinstance(entry, dict) and entry.get("message")]
    return f"{text}: {logs[-1]}" if logs else text


def queue_position(body: dict[str, Any]) -> int | None:
    value = body.get("queue_position")
    return value if isinstance(value, int) else None


async def wait(call, handle: dict[str, Any]) -> GenerationResult:
    try:
        status_url, response_url = handle["status_url"], handle["response_url"]
    except (KeyError, TypeError):
        raise ConfigError(f"The journaled fal job is incomplete: {str(handle)[:200]}", provider=call.provider.id) from None
    seen: dict[str, Any] = {"result_only": False, "failure": None}

    async def check() -> PollState:
        if not seen["result_only"]:
            response = await call.get(with_logs(status_url), ok_statuses=(404, 405))
            if response.status not in (404, 405):
                body = response.json_object()
                status = str(body.get("status") or "").upper()
                if response.status == 202 or status in PENDING:
                    return PollState(False, status=status_text(body), queue_position=queue_position(body))
                if status in FAILED:  # the result GET below carries the verbatim error
                    seen["failure"] = str(body.get("error") or body.get("detail") or status)
                return PollState(True)
            seen["result_only"] = True  # a passthrough without a status endpoint (UNVERIFIED)
        response = await call.get(response_url, ok_statuses=(202, 400))
        if response.status == 400:
            envelope = parse_error_body(response.content)
            if not any(words in envelope.message.lower() for words in STILL_RUNNING):
                raise error_for_status(400, envelope, call.caller)
            return PollState(False, status=envelope.message[:80])
        if response.status == 202:
            body = parse_error_body(response.content).body  # any JSON, or None
            body = body if isinstance(body, dict) else {}
            return PollState(False, status=status_text(body), queue_position=queue_position(body))
        body = response.json_object()
        if str(body.get("status") or "").upper() in PENDING and not body.get("images"):
            return PollState(False, status=status_text(body), queue_position=queue_position(body))
        return PollState(True, body)

    async def cancel() -> None:
        await detached(call).send("PUT", handle["cancel_url"], policy=IDEMPOTENT, status="Cancelling the fal job")

    body = await poll(call, check, cancel if handle.get("cancel_url") else None, handle.get("request_id", ""))
    if body is None:
        body = (await call.get(response_url, status=f"Fetching the result from {call.provider.display_name}")).json_object()
    return await parse_result(call, body, handle, seen["failure"])


async def parse_result(call, body: dict[str, Any], handle: dict[str, Any], failure: str | None = None) -> GenerationResult:
    items = body.get("images") if isinstance(body.get("images"), list) else [body["image"]] if isinstance(body.get("image"), dict) else []
    refs = [item.get("url") if isinstance(item, dict) else item for item in items]
    refs = [ref for ref in refs if isinstance(ref, str) and ref.strip()]
    text = str(body.get("description") or "").strip()
    common = dict(provider=call.provider.id, model=call.model.model_id, request_id=handle.get("request_id"))
    if not refs:
        flags = body.get("has_nsfw_concepts")
        if isinstance(flags, list) and any(flags):
            raise SafetyRejected("fal withheld the image (has_nsfw_concepts).", stage=SafetyStage.OUTPUT_BLOCKED, reason="has_nsfw_concepts", model_text=text or None, **common)
        if text:
            raise SafetyRejected("The model answered in words instead of an image (a soft refusal).", stage=SafetyStage.SOFT_REFUSAL, reason="NO_IMAGES", model_text=text, **common)
        raise NoImageReturned("fal returned no image.", reason="NO_IMAGES", finish_message=failure, **common)
    images = [await call.fetch_image(ref) for ref in refs]
    usage = {key: body[key] for key in ("seed", "timings", "has_nsfw_concepts") if key in body}
    result = call.result(images, text=text, request_id=handle.get("request_id"), usage=usage)
    if len(images) < int(handle.get("count") or 1):
        result.warnings.append(f"Asked for {handle.get('count')} images, fal returned {len(images)}.")
    return result
