"""Family F: Vydra's own JSON API (providers.md section 8).

POST {base}/models/{model}/edit {prompt, imageUrl?, aspectRatio?} -> {imageUrl, mimeType, mode,
creditsCharged, durationMs}: synchronous, one image per call, one reference, which must be a URL, so
a local reference is uploaded first (POST {base}/upload, multipart field `file`, free).
How Vydra reports a safety refusal is UNVERIFIED, so both readings are handled, by the engine's
error mapping: an error whose code or message names safety/policy/moderation is a SafetyRejected
(even on a 500); a declared GENERATION_FAILED (credits refunded) is a NoImageReturned and is not
resent; a plain 500 is retried. A 200 without imageUrl is one of the two, with Vydra's text verbatim.
"""

from __future__ import annotations

from typing import Any

from ..errors import MalformedResponse, NoImageReturned, Refusal
from ..outcome import GenerationRequest, GenerationResult, ImageInput
from ..redaction import clip


async def upload(call, image: ImageInput) -> str:
    response = await call.send(
        "POST", call.text_option("upload_path") or "upload", files=[("file", (f"reference.{image.extension}", image.data, image.mime))], status="Uploading the reference image to Vydra"
    )
    body = response.json_object()
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    url = body.get("url") or data.get("url")
    if not isinstance(url, str) or not url:
        raise MalformedResponse(f"Vydra's upload answered without a URL: {clip(body, 300)}", provider=call.provider.id)
    return url


async def generate(call, request: GenerationRequest) -> GenerationResult:
    body: dict[str, Any] = {"prompt": request.prompt}
    if request.images:
        body["imageUrl"] = await upload(call, request.images[0])
    if request.aspect_ratio:
        body["aspectRatio"] = request.aspect_ratio  # omitted: Vydra's default (1:1)
    answer = (await call.post_json(f"models/{call.model.model_id}/edit", body)).json_object()  # one endpoint for generation and edits
    url = answer.get("imageUrl") or answer.get("image_url") or answer.get("url")
    if not isinstance(url, str) or not url.strip():
        found = call.error_in_answer(answer)
        if isinstance(found, Refusal):
            raise found
        said = str(answer.get("error") or answer.get("message") or "") or None
        raise NoImageReturned("Vydra finished without an image.", reason=str(answer.get("code") or "NO_IMAGE_URL"), finish_message=said, provider=call.provider.id, model=call.model.model_id)
    image = await call.fetch_image(url)
    usage = {key: answer[key] for key in ("creditsCharged", "durationMs", "mode") if key in answer}
    result = call.result([image], finish_reason=answer.get("mode"), usage=usage)
    if isinstance(answer.get("creditsCharged"), (int, float)):
        result.cost, result.cost_unit = float(answer["creditsCharged"]), "credits"
    if len(request.images) > 1:
        result.warnings.append(f"Vydra takes one reference image; {len(request.images) - 1} more were not sent.")
    return result
