"""Family F: Vydra's own JSON API (providers.md section 8).

POST {base}/models/{model}/edit {prompt, imageUrl?, aspectRatio?} -> {imageUrl, mimeType, mode,
creditsCharged, durationMs}: synchronous, one image per call, one reference, which must be a URL, so
a local reference is uploaded first (POST {base}/upload, multipart field `file`, free).
How Vydra reports a safety refusal is UNVERIFIED, so both readings are handled: an error whose code
or message names safety/policy/moderation is a SafetyRejected; a Vydra-declared 500 failure (a body
with a code, e.g. GENERATION_FAILED, credits refunded) is a NoImageReturned and is not resent; a 200
without imageUrl is one of the two, with Vydra's text kept verbatim.
"""

from __future__ import annotations

from typing import Any

from ..engine import ErrorEnvelope, error_for_status, parse_error_body
from ..errors import MalformedResponse, NoImageReturned, Refusal, SafetyRejected, SafetyStage
from ..outcome import GenerationRequest, GenerationResult, ImageInput

SAFETY_WORDS = ("safety", "policy", "moderation", "prohibited", "nsfw")
REFUSAL_STATUSES = (400, 403, 422, 500)  # answers read here first, for a refusal hidden in them


async def upload(call, image: ImageInput) -> str:
    response = await call.send(
        "POST", call.option("upload_path", "upload"), files=[("file", (f"reference.{image.extension}", image.data, image.mime))], status="Uploading the reference image to Vydra"
    )
    body = response.json_object()
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    url = body.get("url") or data.get("url")
    if not isinstance(url, str) or not url:
        raise MalformedResponse(f"Vydra's upload answered without a URL: {str(body)[:300]}", provider=call.provider.id)
    return url


def refusal(call, status: int | None, envelope: ErrorEnvelope) -> Refusal | None:
    raw = envelope.body if isinstance(envelope.body, dict) else {}
    code = str(raw.get("code") or "") or None
    details = dict(finish_message=envelope.message or None, provider=call.provider.id, model=call.model.model_id, status=status)
    if any(word in f"{envelope.code} {envelope.message}".lower() for word in SAFETY_WORDS):
        return SafetyRejected("Vydra refused the request on content-policy grounds.", stage=SafetyStage.OUTPUT_BLOCKED, reason=code or "SAFETY", **details)
    if status in (None, 500) and (code or status is None):
        return NoImageReturned("Vydra finished without an image.", reason=code or "NO_IMAGE_URL", **details)
    return None


async def generate(call, request: GenerationRequest) -> GenerationResult:
    body: dict[str, Any] = {"prompt": request.prompt}
    if request.images:
        body["imageUrl"] = await upload(call, request.images[0])
    if request.aspect_ratio:
        body["aspectRatio"] = request.aspect_ratio  # omitted: Vydra's default (1:1)
    path = f"models/{call.model.model_id}/edit"  # one endpoint for generation and edits
    response = await call.send("POST", path, json_body=body, ok_statuses=REFUSAL_STATUSES)
    if response.status >= 400:
        envelope = parse_error_body(response.content, response.headers.get("content-type", ""))
        found = refusal(call, response.status, envelope)
        if found:
            raise found
        if response.status != 500:
            raise error_for_status(response.status, envelope, call.caller)
        response = await call.post_json(path, body)  # a plain 500: resend with the engine's retries
    answer = response.json_object()
    url = answer.get("imageUrl") or answer.get("image_url") or answer.get("url")
    if not isinstance(url, str) or not url.strip():
        text = str(answer.get("error") or answer.get("message") or "")
        raise refusal(call, None, ErrorEnvelope(message=text, code=str(answer.get("code") or "").lower(), body=answer))
    image = await call.fetch_image(url)
    usage = {key: answer[key] for key in ("creditsCharged", "durationMs", "mode") if key in answer}
    result = call.result([image], finish_reason=answer.get("mode"), usage=usage)
    if isinstance(answer.get("creditsCharged"), (int, float)):
        result.cost, result.cost_unit = float(answer["creditsCharged"]), "credits"
    if len(request.images) > 1:
        result.warnings.append(f"Vydra takes one reference image; {len(request.images) - 1} more were not sent.")
    return result
