"""Family A: Gemini `generateContent` (Google's API, APIYI and other native-format gateways).

Nano Banana refuses with HTTP 200, so success means at least one decodable, non-thought image;
everything else is classified from promptFeedback.blockReason, every candidate's finishReason,
usageMetadata.candidatesTokenCount and the model's own text (providers.md sections 2.4-2.5).
"""

from __future__ import annotations

from typing import Any

from ..errors import NoImageReturned, SafetyRejected, SafetyStage
from ..outcome import GeneratedImage, GenerationRequest, GenerationResult, Turn, final_positions, format_sources, image_refs_in_text, spare_positions

# Output withheld by a policy filter: final, rephrase.
SAFETY_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
)
# Everything else that is not STOP (NO_IMAGE, IMAGE_OTHER, OTHER, LANGUAGE, MAX_TOKENS, and any
# value Google adds later) is a NoImageReturned with the reason kept verbatim.

RESOLUTION_VALUES = {"0.5K": "512"}  # Gemini's names; uppercase K is required for the rest


# Google's documented stand-in for model turns this model did not produce (another model's or
# provider's, whose signatures it cannot validate): it skips signature validation for that part.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def history_contents(history: tuple[Turn, ...], model_id: str) -> list[dict[str, Any]]:
    """Earlier turns as contents: the model's own parts with the signature it gave them, unchanged."""
    contents = []
    for turn in history:
        parts: list[dict[str, Any]] = []
        foreign = turn.role == "model" and turn.model != model_id
        for part in turn.parts:
            if part.image is not None:
                item: dict[str, Any] = {"inline_data": {"mime_type": part.image.mime, "data": part.image.base64()}}
            else:
                item = {"text": part.text or ""}
            if foreign:
                item["thoughtSignature"] = SKIP_SIGNATURE
            elif part.thought_signature:
                item["thoughtSignature"] = part.thought_signature
            parts.append(item)
        if parts:
            contents.append({"role": turn.role, "parts": parts})
    return contents


def build_body(request: GenerationRequest, model_id: str = "") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    parts += [{"inline_data": {"mime_type": im.mime, "data": im.base64()}} for im in request.images]
    image_config: dict[str, str] = {}
    if request.aspect_ratio:
        image_config["aspectRatio"] = request.aspect_ratio
    if request.resolution:
        image_config["imageSize"] = RESOLUTION_VALUES.get(request.resolution, request.resolution)
    config: dict[str, Any] = {"responseModalities": ["IMAGE"] if request.response_modalities == "IMAGE" else ["TEXT", "IMAGE"]}
    thinking: dict[str, Any] = {}
    if request.thinking_level:
        thinking["thinkingLevel"] = request.thinking_level
    if request.include_thoughts:
        thinking["includeThoughts"] = True
    if thinking:
        config["thinkingConfig"] = thinking
    if image_config:
        config["imageConfig"] = image_config
    if request.seed is not None:
        config["seed"] = int(request.seed) & 0x7FFFFFFF  # the API takes an int32
    if request.temperature is not None:
        config["temperature"] = float(request.temperature)
    body: dict[str, Any] = {"contents": history_contents(request.history, model_id) + [{"role": "user", "parts": parts}], "generationConfig": config}
    if request.system_prompt:
        body["systemInstruction"] = {"parts": [{"text": request.system_prompt}]}
    if request.web_search:
        body["tools"] = [{"google_search": {}}]
    if request.safety:
        body["safetySettings"] = [{"category": category, "threshold": threshold} for category, threshold in request.safety]
    return body


async def generate(call, request: GenerationRequest) -> GenerationResult:
    model_id = call.model.id_for(request.resolution)
    response = await call.post_json(f"models/{model_id}:generateContent", build_body(request, model_id))
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
                usage=usage,
                request_id=request_id,
                **common,
            )
        if "candidates" not in body and "error" in body:
            raise call.error_in_answer(body, request_id)
        raise NoImageReturned("The response had no candidates.", reason="NO_CANDIDATES", candidates_token_count=token_count, request_id=request_id, **common)

    refs: list[tuple[str, str | None]] = []  # (payload or URL, declared MIME)
    spares: list[str] = []  # the turns' other images, for a result that cannot be fetched
    thought_refs: list[str] = []
    texts: list[str] = []
    model_parts: list[dict[str, Any]] = []  # the model's turn, for a conversation to send back
    signature_of: dict[str, str] = {}  # the first candidate's image refs -> the signature the model gave each
    sources: list[dict[str, str]] = []
    queries: list[str] = []
    finish_reasons: list[str] = []
    finish_messages: list[str] = []
    keep_last = call.text_option("keep_images") == "last"
    for number, candidate in enumerate(candidates):
        read_grounding(_get(candidate, "groundingMetadata", "grounding_metadata"), sources, queries)
        reason = _get(candidate, "finishReason", "finish_reason")
        if reason:
            finish_reasons.append(str(reason))
        message = _get(candidate, "finishMessage", "finish_message")
        if message:
            finish_messages.append(str(message))
        turn: list[tuple[str, str | None]] = []  # this candidate's images, before drafts and repeats are dropped
        parts: list[dict[str, Any]] = []  # its parts for a conversation; "image" indexes `turn`
        linked: set[int] = set()  # positions in `turn` of links the model wrote in its text
        for part in (candidate.get("content") or {}).get("parts") or []:
            if not isinstance(part, dict):
                continue
            blob = _get(part, "inlineData", "inline_data")
            if part.get("thought"):
                if blob and isinstance(blob.get("data"), str):
                    thought_refs.append(blob["data"])  # an interim draft: shown as thought_image, never a result
                continue
            signature = _get(part, "thoughtSignature", "thought_signature")
            signed = {"thought_signature": signature} if isinstance(signature, str) and signature else {}
            file_data = _get(part, "fileData", "file_data")
            if blob and blob.get("data"):
                turn.append((blob["data"], _get(blob, "mimeType", "mime_type")))
                parts.append({"image": len(turn) - 1, **signed})
            elif file_data and _get(file_data, "fileUri", "file_uri"):
                turn.append((_get(file_data, "fileUri", "file_uri"), _get(file_data, "mimeType", "mime_type")))
                parts.append({"image": len(turn) - 1, **signed})
            elif isinstance(part.get("url"), str):
                turn.append((part["url"], None))
                parts.append({"image": len(turn) - 1, **signed})
            elif isinstance(part.get("text"), str):
                found, rest = image_refs_in_text(part["text"])
                linked.update(range(len(turn), len(turn) + len(found)))
                turn += [(ref, None) for ref in found]
                parts.append({"text": part["text"] if not found else rest, **signed})
                parts += [{"image": len(turn) - len(found) + n} for n in range(len(found))]
                if rest:
                    texts.append(rest)
        # Drafts a gateway sent as ordinary parts and repeated images are not results (final_positions).
        results = final_positions(turn, keep_last, frozenset(linked))
        position = {n: len(refs) + k for k, n in enumerate(results)}
        refs += [turn[n] for n in position]
        spares += [turn[n][0] for n in spare_positions(turn, results, frozenset(linked))]
        if number == 0:  # a conversation continues from the first candidate, with its kept images only
            signature_of = {turn[p["image"]][0]: p["thought_signature"] for p in parts if "image" in p and "thought_signature" in p}
            model_parts = [({**p, "image": position[p["image"]]} if "image" in p else p) for p in parts if "image" not in p or p["image"] in position]
    text = "\n".join(t.strip() for t in texts if t.strip())
    if sources:
        text = "\n\n".join(t for t in (text, format_sources(sources)) if t)

    images: list[GeneratedImage] = await call.fetch_images([ref for ref, _ in refs], spare_refs=spares)
    finish = next((r for r in finish_reasons if r != "STOP"), finish_reasons[0] if finish_reasons else None)
    if images:
        result = call.result(images, text=text, finish_reason=finish, request_id=request_id, usage=usage)
        result.thought_images = [await call.fetch_image(ref) for ref in thought_refs]
        kept = [_stood_in(call, p, signature_of) for p in model_parts if p.get("image", 0) < len(images)]  # extra images beyond the count are no results
        result.sources, result.search_queries, result.model_parts = sources, queries, kept
        if finish and finish != "STOP":
            result.warnings.append(f"The model finished with {finish}; the image may be incomplete.")
        return result

    details = dict(finish_message="\n".join(finish_messages) or None, model_text=text or None, candidates_token_count=token_count, usage=usage, request_id=request_id, **common)
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


def _stood_in(call, part: dict[str, Any], signature_of: dict[str, str]) -> dict[str, Any]:
    """A model part whose image another of the answer's images replaced (its own could not be fetched)
    carries that image's signature, or none: a signature is only valid with the image it was given for."""
    ref = call.stood_in.get(part["image"]) if "image" in part else None
    if ref is None:
        return part
    replaced = {k: v for k, v in part.items() if k != "thought_signature"}
    return {**replaced, "thought_signature": signature_of[ref]} if ref in signature_of else replaced


def read_grounding(metadata: Any, sources: list[dict[str, str]], queries: list[str]) -> None:
    """Search grounding: the web pages the answer drew on (groundingChunks[].web) and the queries run."""
    if not isinstance(metadata, dict):
        return
    for chunk in _get(metadata, "groundingChunks", "grounding_chunks") or []:
        for kind in ("web", "image"):
            page = chunk.get(kind) if isinstance(chunk, dict) else None
            if not isinstance(page, dict):
                continue
            uri = page.get("uri")
            if isinstance(uri, str) and uri.startswith(("http://", "https://")) and all(s["uri"] != uri for s in sources):
                title = page.get("title") or page.get("domain") or ""
                sources.append({"title": str(title)[:300], "uri": uri[:2000]})
    queries += [str(q)[:500] for q in _get(metadata, "webSearchQueries", "web_search_queries") or [] if isinstance(q, str) and q not in queries]
