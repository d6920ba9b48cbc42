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
References go inline as data URIs (fal accepts them; the core already downscales references), so
fal storage upload (5.6) is not used, though call.send(content=..., headers=...) could send it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..client import LOST_SUBMIT_HINT
from ..engine import PollState, error_for_status, parse_error_body, retry_after_header
from ..errors import BananaError, ConfigError, InvalidRequest, MalformedResponse, NoImageReturned, SafetyRejected, SafetyStage
from ..redaction import clip
from ..outcome import GenerationRequest, GenerationResult

PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
FAILED = frozenset({"FAILED", "CANCELED", "CANCELLED", "ERROR"})
STILL_RUNNING = ("in progress", "in queue", "not completed", "not yet", "still running", "still processing")


# -- submit ----------------------------------------------------------------------------------------


def build_body(call, request: GenerationRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": request.prompt, "num_images": request.count, "output_format": call.option("output_format", "png")}
    # aspect_ratio omitted = auto: 1:1 for text-to-image, follow the input on /edit endpoints.
    optional = {"seed": request.seed, "aspect_ratio": request.aspect_ratio, "resolution": request.resolution}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.images:
        body["image_urls"] = [image.data_uri() for image in request.images]
    if request.web_search:
        body["enable_web_search"] = True
    if request.thinking_level:
        body["thinking_level"] = request.thinking_level.lower()  # fal: "minimal" | "high" (providers.md 5.4)
    return body


def queue_url(call, returned: Any, fallback_path: str) -> str:
    if not isinstance(returned, str) or not returned.startswith(("http://", "https://")):
        return call.url(fallback_path)
    parts = urlsplit(returned)
    if call.flag_option("rewrite_queue_urls") and (parts.hostname or "").endswith("fal.run"):
        return call.url(parts.path + (f"?{parts.query}" if parts.query else ""))
    return returned


async def submit(call, request: GenerationRequest) -> dict[str, Any]:
    model_id = call.model.id_for(request.resolution, editing=bool(request.images))  # a typed id: as typed
    body = (await call.submit_once(model_id, build_body(call, request))).json_object()
    response_url = body.get("response_url") if isinstance(body.get("response_url"), str) else ""
    request_id = str(body.get("request_id") or response_url.rstrip("/").rsplit("/", 1)[-1] or "")
    if not request_id:
        raise MalformedResponse(f"The submit answer has no request_id: {clip(body, 300)}", provider=call.provider.id, hint=LOST_SUBMIT_HINT)
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


def cancelled_job(error: BananaError) -> BananaError:
    """fal's answer for a request cancelled in the queue (499 client_cancelled, or a 4xx that says
    so) is its final word on the job: over, without a result (job_over), so a re-run submits anew."""
    words = f"{error.provider_message or ''} {error.message}".lower()
    if error.status == 499 or (error.status is not None and 400 <= error.status < 500 and "cancel" in words):
        error.job_over = True
    return error


async def wait(call, handle: dict[str, Any]) -> GenerationResult:
    try:
        return await _wait(call, handle)
    except InvalidRequest as exc:
        raise cancelled_job(exc) from None


async def _wait(call, handle: dict[str, Any]) -> GenerationResult:
    try:
        status_url, response_url = handle["status_url"], handle["response_url"]
    except (KeyError, TypeError):
        raise ConfigError(f"The journaled fal job is incomplete: {clip(handle, 200)}", provider=call.provider.id) from None
    seen: dict[str, Any] = {"result_only": False, "failure": None}

    async def check() -> PollState:
        if not seen["result_only"]:
            response = await call.get(with_logs(status_url), ok_statuses=(404, 405))
            if response.status not in (404, 405):
                body = response.json_object()
                status = str(body.get("status") or "").upper()
                if response.status == 202 or status in PENDING:
                    return PollState(False, status=status_text(body), queue_position=queue_position(body), retry_after=retry_after_header(response.headers))
                if status in FAILED:  # the result GET below carries the verbatim error
                    seen["failure"] = str(body.get("error") or body.get("detail") or status)
                return PollState(True)
            seen["result_only"] = True  # a passthrough without a status endpoint (UNVERIFIED)
        response = await call.get(response_url, ok_statuses=(202, 400))
        if response.status == 400:
            envelope = parse_error_body(response.content)
            if not any(words in envelope.message.lower() for words in STILL_RUNNING):
                raise error_for_status(400, envelope, call.caller)
            return PollState(False, status=clip(envelope.message, 80, ellipsis=""), retry_after=retry_after_header(response.headers))
        if response.status == 202:
            body = parse_error_body(response.content).body  # any JSON, or None
            body = body if isinstance(body, dict) else {}
            return PollState(False, status=status_text(body), queue_position=queue_position(body), retry_after=retry_after_header(response.headers))
        body = response.json_object()
        if str(body.get("status") or "").upper() in PENDING and not body.get("images"):
            return PollState(False, status=status_text(body), queue_position=queue_position(body), retry_after=retry_after_header(response.headers))
        return PollState(True, body)

    cancel = ("PUT", handle["cancel_url"]) if handle.get("cancel_url") else None
    body = await call.poll(check, cancel=cancel, label=handle.get("request_id", ""))
    if body is None:
        body = (await call.get(response_url, status=f"Fetching the result from {call.provider.display_name}")).json_object()
    return await parse_result(call, body, handle, seen["failure"])


async def parse_result(call, body: dict[str, Any], handle: dict[str, Any], failure: str | None = None) -> GenerationResult:
    images, image = body.get("images"), body.get("image")
    items: list[Any] = images if isinstance(images, list) else [image] if isinstance(image, dict) else []
    refs = [item.get("url") if isinstance(item, dict) else item for item in items]
    refs = [ref for ref in refs if isinstance(ref, str) and ref.strip()]
    text = str(body.get("description") or "").strip()
    common = dict(provider=call.provider.id, model=call.model.model_id, request_id=handle.get("request_id"))
    if not refs:
        flags = body.get("has_nsfw_concepts")
        if isinstance(flags, list) and any(flags):
            raise SafetyRejected("fal withheld the image (has_nsfw_concepts).", stage=SafetyStage.OUTPUT_BLOCKED, reason="has_nsfw_concepts", model_text=text or None, **common)
        if text:
            raise SafetyRejected.soft_refusal("NO_IMAGES", model_text=text, **common)
        raise NoImageReturned("fal returned no image.", reason="NO_IMAGES", finish_message=failure, **common)
    usage = {key: body[key] for key in ("seed", "timings", "has_nsfw_concepts") if key in body}
    return call.result(await call.fetch_images(refs), asked=int(handle.get("count") or 1), text=text, request_id=handle.get("request_id"), usage=usage)
