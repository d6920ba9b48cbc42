"""Family A: Gemini `generateContent` (Google's API, APIYI and other native-format gateways).

Nano Banana refuses with HTTP 200, so success means at least one decodable, non-thought image;
everything else is classified from promptFeedback.blockReason, every candidate's finishReason,
usageMetadata.candidatesTokenCount and the model's own text (providers.md sections 2.4-2.5).
"""

from __future__ import annotations

from typing import Any

from ..errors import NoImageReturned, SafetyRejected, SafetyStage
from ..outcome import GeneratedImage, GenerationRequest, GenerationResult, final_images, image_refs_in_text

# Output withheld by a policy filter: final, rephrase.
SAFETY_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
)
# Everything else that is not STOP (NO_IMAGE, IMAGE_OTHER, OTHER, LANGUAGE, MAX_TOKENS, and any
# value Google adds later) is a NoImageReturned with the reason kept verbatim.

RESOLUTION_VALUES = {"0.5K": "512"}  # Gemini's names; uppercase K is required for the rest


def build_body(request: GenerationRequest) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += [{"inline_data": {"mime_type": im.mime, "data": im.base64()}} for im in request.images]
    image_config: dict[str, str] = {}
    if request.aspect_ratio:
        image_config["aspectRatio"] = request.aspect_ratio
    if request.resolution:
        image_config["imageSize"] = RESOLUTION_VALUES.get(request.resolution, request.resolution)
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    if image_config:
        config["imageConfig"] = image_config
    if request.seed is not None:
        config["seed"] = int(request.seed) & 0x7FFFFFFF  # the API takes an int32
    if request.temperature is not None:
        config["temperature"] = float(request.temperature)
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
    if request.system_prompt:
        body["systemInstruction"] = {"parts": [{"text": request.system_prompt}]}
    if request.web_search:
        body["tools"] = [{"google_search": {}}]
    return body


async def generate(call, request: GenerationRequest) -> GenerationResult:
    model_id = call.model.id_for(request.resolution)
    response = await call.post_json(f"models/{model_id}:generateContent", build_body(request))
    return await parse_response(call, response.json_object())


def _get(obj: dict, camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake))


async def parse_response(call, body: dict[str, Any]) -> GenerationResult:
    common = dict(provider=call.provider.id, model=call.model.model_id)
    usage = _get(body, "usageMetadata", "usage_metadata") or {}
    token_count = _get(usage, "candidatesTokenCount", "candidates_token_count")
    request_id = _get(body, "responseId", "response_id")
    candidates = body.get("candidates")
    feedback = _get(body, "promptFeedback", "prompt_feedback") or {}
    block_reason = _get(feedback, "blockReason", "block_reason")

    if not candidates:
        if block_reason:
            raise SafetyRejected(
                "The prompt (or a reference image) was blocked before generation.",
                stage=SafetyStage.PROMPT_BLOCKED,
                reason=str(block_reason),
                finish_message=_get(feedback, "blockReasonMessage", "block_reason_message"),
                candidates_token_count=token_count,
                request_id=request_id,
                **common,
            )
        if "candidates" not in body and "error" in body:
            raise call.error_in_answer(body, request_id)
        raise NoImageReturned("The response had no candidates.", reason="NO_CANDIDATES", candidates_token_count=token_count, request_id=request_id, **common)

    refs: list[tuple[str, str | None]] = []  # (payload or URL, declared MIME)
    texts: list[str] = []
    finish_reasons: list[str] = []
    finish_messages: list[str] = []
    keep_last = call.text_option("keep_images") == "last"
    for candidate in candidates:
        reason = _get(candidate, "finishReason", "finish_reason")
        if reason:
            finish_reasons.append(str(reason))
        message = _get(candidate, "finishMessage", "finish_message")
        if message:
            finish_messages.append(str(message))
        turn: list[tuple[str, str | None]] = []
        for part in (candidate.get("content") or {}).get("parts") or []:
            if not isinstance(part, dict) or part.get("thought"):
                continue  # interim "thought" drafts are not results
            blob = _get(part, "inlineData", "inline_data")
            file_data = _get(part, "fileData", "file_data")
            if blob and blob.get("data"):
                turn.append((blob["data"], _get(blob, "mimeType", "mime_type")))
            elif file_data and _get(file_data, "fileUri", "file_uri"):
                turn.append((_get(file_data, "fileUri", "file_uri"), _get(file_data, "mimeType", "mime_type")))
            elif isinstance(part.get("url"), str):
                turn.append((part["url"], None))
            elif isinstance(part.get("text"), str):
                found, rest = image_refs_in_text(part["text"])
                turn += [(ref, None) for ref in found]
                if rest:
                    texts.append(rest)
        refs += final_images(turn, keep_last)
    text = "\n".join(t.strip() for t in texts if t.strip())
    images: list[GeneratedImage] = await call.fetch_images([ref for ref, _ in refs])  # at most the count asked for
    finish = next((r for r in finish_reasons if r != "STOP"), finish_reasons[0] if finish_reasons else None)
    if images:
        result = call.result(images, text=text, finish_reason=finish, request_id=request_id, usage=usage)
        if finish and finish != "STOP":
            result.warnings.append(f"The model finished with {finish}; the image may be incomplete.")
        return result

    details = dict(finish_message="\n".join(finish_messages) or None, model_text=text or None, candidates_token_count=token_count, request_id=request_id, **common)
    policy_reason = next((r for r in finish_reasons if r in SAFETY_FINISH_REASONS), None)
    if policy_reason:
        raise SafetyRejected("The generated image was blocked by the provider's safety filter.", stage=SafetyStage.OUTPUT_BLOCKED, reason=policy_reason, **details)
    if finish and finish != "STOP":
        raise NoImageReturned(f"The model finished with {finish} and returned no image.", reason=finish, **details)
    if text:
        raise SafetyRejected.soft_refusal(finish or "STOP", **details)
    if token_count in (0, None):
        # APIYI's "highest priority" signal: nothing was generated, a review-stage rejection.
        raise SafetyRejected("Nothing was generated (candidatesTokenCount is 0): rejected at review.", stage=SafetyStage.OUTPUT_BLOCKED, reason=finish or "STOP", **details)
    raise NoImageReturned("The model finished without an image or any text.", reason=finish or "STOP", **details)
