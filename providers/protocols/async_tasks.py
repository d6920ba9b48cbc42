"""Family E: asynchronous task APIs, two flavours chosen by the preset option `flavor`.

  evolink  (providers.md 7.1): POST {base}/images/generations -> task object {id, status, progress};
           GET {base}/tasks/{id} until completed -> results[] / result_data[].image_url.
  apimart  (7.2, APIMaster and APIMart-style gateways): POST {base}/images/generations/async ->
           {"code":200,"data":[{"task_id"}]}; GET {base}/tasks/{id}?model=... -> data.result.images[].url
           (a string or a one-element list). The synchronous endpoint is not used: a job id that is
           journaled before waiting is what keeps a paid image from being lost on a disconnect.

Both flavours are parsed by the same defensive reader (the task may be the body or body.data, the id
`id` or `task_id`, results in any of the three shapes). Field names for ratio and resolution come
from options `ratio_field`/`resolution_field` (EvoLink's pages disagree: aspect_ratio/resolution or
size/quality; BANANA_EVOLINK_RATIO_FIELD=size switches). Auto ratio: omitted for `aspect_ratio`,
sent as "auto" for `size` (the value both APIs document for that spelling).

References: EvoLink needs downloadable URLs, so local images go through its file API first
(option `upload_url`) and are deleted once the job is over (its quota is 100 files). APIMaster
documents no upload endpoint: references go inline as data URIs, and a 4xx then says that the
provider may need public URLs. Neither documents a cancel endpoint: option `cancel_path` adds one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .. import config
from ..engine import PollState, names_safety, retry_after_header
from ..errors import (
    BananaError,
    Cancelled,
    ConfigError,
    InvalidRequest,
    MalformedResponse,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    SafetyStage,
    TimedOut,
    UpstreamUnavailable,
)
from ..outcome import GenerationRequest, GenerationResult, ImageInput
from ..redaction import clip

FLAVORS: dict[str, dict[str, Any]] = {
    "evolink": {"submit_path": "images/generations", "task_path": "tasks/{id}", "references": "upload"},
    "apimart": {"submit_path": "images/generations/async", "task_path": "tasks/{id}?model={model}", "references": "data_uri"},
}
EVOLINK_UPLOAD_URL = "https://files-api.evolink.ai/api/v1/files/upload/base64"
EVOLINK_FILE_URL = "https://files-api.evolink.ai/api/v1/files/{file_id}"
AUTO_RATIO = {"size": "auto"}  # the value an omitted ratio takes per field spelling; absent: omit

PENDING = frozenset({"pending", "submitted", "queued", "in_queue", "processing", "in_progress", "running", "started"})
DONE = frozenset({"completed", "succeeded", "success", "finished", "done"})
FAILED = frozenset({"failed", "failure", "error"})
CANCELLED = frozenset({"cancelled", "canceled"})
# Task error codes (EvoLink's list; APIMart's are undocumented and fall through to the default).
CODE_ERRORS: dict[str, type[BananaError]] = {
    "generation_failed_no_content": NoImageReturned,
    "invalid_parameters": InvalidRequest,
    "image_processing_error": InvalidRequest,
    "image_dimension_mismatch": InvalidRequest,
    "quota_exceeded": QuotaOrRateLimited,
    "generation_timeout": TimedOut,
    "request_cancelled": Cancelled,
}


def setting(call, name: str) -> Any:
    flavor = call.text_option("flavor", "evolink")
    if flavor not in FLAVORS:
        raise ConfigError(f"Unknown async task flavor '{flavor}' for '{call.provider.id}'.", hint=f"Use one of: {', '.join(FLAVORS)}.")
    return call.text_option(name) or FLAVORS[flavor].get(name)


def task_of(body: dict[str, Any]) -> dict[str, Any]:
    """The task object: the body itself (EvoLink) or body.data, a dict or a one-element list (APIMart)."""
    data = body.get("data")
    if isinstance(data, list):
        data = next((item for item in data if isinstance(item, dict)), None)
    return data if isinstance(data, dict) else body


def check_envelope(call, body: dict[str, Any]) -> None:
    """APIMart-style gateways can wrap an error in HTTP 200: {"code": 401, "msg": ...}."""
    code = body.get("code")
    if isinstance(code, int) and code >= 400 and not body.get("data"):
        raise call.error_in_answer(body)


def result_urls(task: dict[str, Any]) -> list[str]:
    found: list[Any] = list(task.get("results") or [])
    found += [item.get("image_url") or item.get("url") for item in task.get("result_data") or [] if isinstance(item, dict)]
    result = task.get("result")
    result = result if isinstance(result, dict) else {}
    for image in result.get("images") or []:
        url = image.get("url") if isinstance(image, dict) else image
        found += url if isinstance(url, list) else [url]
    found = [item.get("url") if isinstance(item, dict) else item for item in found]
    return list(dict.fromkeys(url for url in found if isinstance(url, str) and url.strip()))


def build_body(call, request: GenerationRequest, image_urls: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": call.model.id_for(request.resolution), "prompt": request.prompt}
    ratio_field = call.text_option("ratio_field") or "aspect_ratio"
    ratio = request.aspect_ratio or AUTO_RATIO.get(ratio_field)
    if ratio:
        body[ratio_field] = ratio
    resolution_field = call.text_option("resolution_field") or "resolution"
    if request.resolution:
        body[resolution_field] = request.resolution
    if request.count > 1:
        body["n"] = request.count
    if image_urls:
        body["image_urls"] = image_urls
    return body


# -- references ------------------------------------------------------------------------------------


async def upload(call, image: ImageInput, index: int) -> tuple[str, str | None]:
    """EvoLink's file API: base64 in, a downloadable URL (valid 72 h) and a file id out."""
    try:
        response = await call.send(
            "POST",
            call.text_option("upload_url") or EVOLINK_UPLOAD_URL,
            json_body={"base64_data": image.data_uri(), "file_name": f"banana-reference-{index + 1}.{image.extension}"},
            status="Uploading reference images",
        )
    except InvalidRequest as exc:
        if not exc.sent:  # the upload address is not on the base URL's host (the preset points at another gateway)
            upload_url, delete_url = (config.env_name(call.provider.id, suffix) for suffix in ("UPLOAD_URL", "FILE_DELETE_URL"))
            exc.hint = (
                f"Set {upload_url} and {delete_url} to the gateway's own file API (or set the provider's \"auth_hosts\" in "
                "providers.json settings if it really uses that host). Nothing was sent."
            )
            exc.args = (str(exc),)
        raise
    body = response.json_object()
    data = body.get("data") if isinstance(body.get("data"), dict) else body
    url = next((data.get(k) or body.get(k) for k in ("file_url", "url", "download_url") if data.get(k) or body.get(k)), None)
    if body.get("success") is False or not isinstance(url, str):
        raise UpstreamUnavailable(
            f"Uploading reference image {index + 1} failed: {body.get('msg') or body.get('message') or clip(body, 300)}",
            provider=call.provider.id,
            hint="The file API keeps at most 100 files per account for 72 h; delete old uploads in the dashboard, or retry later.",
        )
    return url, data.get("file_id")


async def delete_uploads(call, file_ids: list[str]) -> None:
    """Best effort, never a new failure: free the account's file quota once the job is over."""
    template = call.text_option("file_delete_url") or EVOLINK_FILE_URL
    for file_id in file_ids:
        await call.cleanup("DELETE", template.format(file_id=quote(str(file_id))), f"delete the uploaded reference {file_id}")


def public_url_error(exc: BananaError, count: int) -> InvalidRequest:
    return InvalidRequest(
        f"The provider rejected a request that carried {count} reference image(s) inline as data URIs; "
        "it may accept only public image URLs, and it documents no upload endpoint.",
        provider=exc.provider,
        status=exc.status,
        provider_message=exc.provider_message,
        request_id=exc.request_id,
        hint="Use this provider for text-to-image only, or run edits through one that takes local images "
        "(google, apiyi, fal, evolink). If the message names another problem, fix that instead.",
    )


# -- submit and wait -------------------------------------------------------------------------------


async def submit(call, request: GenerationRequest) -> dict[str, Any]:
    uploads: list[tuple[str, str | None]] = []
    inline = setting(call, "references") != "upload"
    try:
        if not inline:
            uploads = [await upload(call, image, i) for i, image in enumerate(request.images)]
        urls = [image.data_uri() for image in request.images] if inline else [url for url, _ in uploads]
        response = await call.submit_once(setting(call, "submit_path"), build_body(call, request, urls))
    except BananaError as exc:
        if not (exc.unanswered or exc.maybe_billed):  # refused or never sent: no job exists, so its uploads can go
            await delete_uploads(call, [fid for _, fid in uploads if fid])
        if inline and request.images and isinstance(exc, InvalidRequest) and exc.status in (400, 413, 415, 422):
            raise public_url_error(exc, len(request.images)) from None
        raise
    body = response.json_object()
    check_envelope(call, body)
    task = task_of(body)
    task_id = task.get("task_id") or task.get("id")
    if not task_id:
        raise MalformedResponse(f"The submit answer has no task id: {clip(body, 300)}", provider=call.provider.id)
    return {"task_id": str(task_id), "model": call.model.id_for(request.resolution), "count": request.count, "uploads": [fid for _, fid in uploads if fid]}


def failure(call, task: dict[str, Any], status: str) -> BananaError:
    """The error for a task that ended without a result (its status says so): job_over."""
    error = _failure(call, task, status)
    error.job_over = True
    return error


def _failure(call, task: dict[str, Any], status: str) -> BananaError:
    error = task.get("error")
    code = str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""
    message = str((error.get("message") or error.get("msg") or "") if isinstance(error, dict) else error or "")
    common = dict(provider=call.provider.id, model=call.model.model_id, request_id=str(task.get("id") or task.get("task_id") or "") or None)
    if names_safety(code, message):
        stage = SafetyStage.PROMPT_BLOCKED if "input" in f"{code} {message}".lower() else SafetyStage.OUTPUT_BLOCKED
        return SafetyRejected("The provider refused the job on content-policy grounds.", stage=stage, reason=code or status, finish_message=message or None, **common)
    kind = CODE_ERRORS.get(code.lower(), Cancelled if status in CANCELLED else UpstreamUnavailable)
    if kind is NoImageReturned:
        return NoImageReturned("The job finished without an image.", reason=code, finish_message=message or None, **common)
    what = "was cancelled at the provider" if kind is Cancelled else f"failed at the provider ({code or status})"
    return kind(f"The job {what}.", provider_message=message or None, **common)


async def wait(call, handle: dict[str, Any]) -> GenerationResult:
    task_id = str((handle or {}).get("task_id") or "")
    if not task_id:
        raise ConfigError(f"The journaled task is incomplete: {clip(handle, 200)}", provider=call.provider.id)
    model = str(handle.get("model") or call.model.model_id)
    path = setting(call, "task_path").format(id=quote(task_id, safe=""), model=quote(model, safe=""))
    over: list[bool] = []

    async def check() -> PollState:
        response = await call.get(path)
        body = response.json_object()
        check_envelope(call, body)
        task = task_of(body)
        status = str(task.get("status") or "").lower()
        if status in DONE | FAILED | CANCELLED or (status not in PENDING and result_urls(task)):
            over.append(True)
            return PollState(True, task)
        progress = task.get("progress")
        return PollState(
            False,
            status=status.replace("_", " ") or "waiting",
            progress=float(progress) if isinstance(progress, (int, float)) else None,
            retry_after=retry_after_header(response.headers),
        )

    cancel_path = setting(call, "cancel_path")
    cancel = (call.text_option("cancel_method") or "POST", cancel_path.format(id=quote(task_id, safe=""))) if cancel_path else None
    try:
        task = await call.poll(check, cancel=cancel, label=task_id)
        status = str(task.get("status") or "").lower()
        urls = result_urls(task)
        if status in FAILED | CANCELLED or not urls:
            if status in DONE and not task.get("error"):
                raise NoImageReturned("The job completed without an image URL.", reason=status, provider=call.provider.id, model=call.model.model_id, request_id=task_id)
            raise failure(call, task, status)
        images = await call.fetch_images(urls)
    finally:
        if over and handle.get("uploads"):  # the job is over: its references are no longer needed
            await delete_uploads(call, list(handle["uploads"]))
    usage = task.get("usage") if isinstance(task.get("usage"), dict) else {}
    return call.result(images, asked=int(handle.get("count") or 1), request_id=task_id, usage=dict(usage))
