"""Family C: OpenAI chat completions carrying Gemini images (providers.md section 4).

POST {base}/chat/completions {model, stream: false, modalities: ["image", "text"], messages}: the prompt
and each reference (a data URL) are parts of one user message; a system prompt is a system message
and seed/temperature are top-level fields, where the offer allows them. Size controls are
non-standard, so option `size_controls` picks the dialect:
  "openrouter" (default)  top-level image_config {aspect_ratio, image_size}
  "extra_body_google"     extra_body.google.image_config {aspect_ratio, image_size} (new-api gateways)
  "none"                  nothing (APIYI compat mode, openai-hk chat: 1:1, edits follow the input)
Options ratio_format / resolution_format / resolution_values / extra_fields / chat_path work as in
openai_images. Every answer variant is read, over every choice: message.images[] (image_url or
imageUrl, an object or a string), content-part lists, markdown data URIs and URLs in the text, and
bare image URLs. No image: content_filter (or a policy native_finish_reason) is an output block,
a refusal or text-only answer a soft refusal, other finish reasons NoImageReturned, all verbatim.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, NoImageReturned, SafetyRejected, SafetyStage
from ..outcome import GenerationRequest, GenerationResult, final_positions, image_refs_in_text, spare_positions
from .gemini import SAFETY_FINISH_REASONS
from .openai_images import ratio_value, resolution_value, unsent_warnings

SIZE_CONTROLS = ("openrouter", "extra_body_google", "none")


def build_body(call, request: GenerationRequest) -> tuple[dict[str, Any], list[str]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
    content += [{"type": "image_url", "image_url": {"url": im.data_uri()}} for im in request.images]
    messages: list[dict[str, Any]] = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    messages += history_messages(request)
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {"model": call.model.id_for(request.resolution), "stream": False, "modalities": ["image", "text"], "messages": messages}
    image_config: dict[str, str] = {}
    if request.aspect_ratio:
        image_config["aspect_ratio"] = ratio_value(call, request.aspect_ratio)
    if request.resolution and request.resolution not in call.model.ids_by_resolution:
        image_config["image_size"] = resolution_value(call, request.resolution)
    controls = call.text_option("size_controls", "openrouter") or "none"
    if controls not in SIZE_CONTROLS:
        raise ConfigError(f"Option 'size_controls' of '{call.provider.id}' is {controls!r}.", provider=call.provider.id, hint=f"Use one of: {', '.join(SIZE_CONTROLS)}.")
    if controls == "openrouter" and image_config:
        body["image_config"] = image_config
    elif controls == "extra_body_google" and image_config:
        body["extra_body"] = {"google": {"image_config": image_config}}
    if request.seed is not None:
        body["seed"] = int(request.seed) & 0x7FFFFFFF
    if request.temperature is not None:
        body["temperature"] = float(request.temperature)
    body.update(call.dict_option("extra_fields"))
    sent = controls in SIZE_CONTROLS[:2]
    return body, unsent_warnings(call, request, sent, sent, "chat")


def history_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """Earlier turns of a conversation as messages, images as data-URL parts (the model's too: gateways
    that front Gemini map assistant image parts onto its model turn; best effort, see the catalog)."""
    messages = []
    for turn in request.history:
        parts = [{"type": "image_url", "image_url": {"url": p.image.data_uri()}} if p.image is not None else {"type": "text", "text": p.text or ""} for p in turn.parts]
        messages.append({"role": "assistant" if turn.role == "model" else "user", "content": parts})
    return messages


async def generate(call, request: GenerationRequest) -> GenerationResult:
    body, warnings = build_body(call, request)
    response = await call.post_json(call.text_option("chat_path") or "chat/completions", body)
    result = await parse_response(call, response.json_object())
    result.warnings += warnings
    return result


def image_ref(item: Any) -> str | None:
    """The data URL or URL in an images[] item or a content part, whichever spelling it uses."""
    if isinstance(item, str):
        return item.strip() or None
    if not isinstance(item, dict):
        return None
    for key in ("image_url", "imageUrl", "url", "b64_json", "inline_data", "inlineData"):
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("data")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def read_message(message: dict[str, Any], refs: list[str], texts: list[str], linked: set[int] | None = None) -> None:
    """The message's images into `refs`, its text into `texts`; `linked` gets the positions in
    `refs` of links the model wrote in its text (not images the gateway sent as such)."""
    refs += [ref for ref in map(image_ref, message.get("images") or []) if ref]
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    for part in parts:
        text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str):
            found, rest = image_refs_in_text(text)
            if linked is not None:
                linked.update(range(len(refs), len(refs) + len(found)))
            refs += found
            if rest:
                texts.append(rest)
        elif (ref := image_ref(part)) is not None:
            refs.append(ref)


async def parse_response(call, body: dict[str, Any]) -> GenerationResult:
    choices = [c for c in body.get("choices") or [] if isinstance(c, dict)] if isinstance(body.get("choices"), list) else []
    if not choices and body.get("error"):
        raise call.error_in_answer(body, str(body.get("id") or "") or None)
    refs: list[str] = []
    spares: list[str] = []  # the choices' other images, for a result that cannot be fetched
    texts: list[str] = []
    refusals: list[str] = []
    finishes: list[str] = []
    natives: list[str] = []
    keep_last = call.text_option("keep_images") == "last"
    for choice in choices:
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        turn: list[str] = []
        linked: set[int] = set()
        read_message(message, turn, texts, linked)
        kept = final_positions(turn, keep_last, frozenset(linked))
        refs += [turn[n] for n in kept]
        spares += [turn[n] for n in spare_positions(turn, kept, frozenset(linked))]
        if isinstance(message.get("refusal"), str) and message["refusal"].strip():
            refusals.append(message["refusal"].strip())
        finishes += [str(choice["finish_reason"])] if choice.get("finish_reason") else []
        natives += [str(choice["native_finish_reason"])] if choice.get("native_finish_reason") else []
    text = "\n".join(texts)
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    request_id = str(body.get("id") or "") or None
    finish = next((f for f in finishes if f != "stop"), finishes[0] if finishes else None)
    native = next((n for n in natives if n.upper() != "STOP"), None)
    if refs:
        result = call.result(await call.fetch_images(refs, spare_refs=spares), text=text, finish_reason=finish, request_id=request_id, usage=usage)
        if finish not in (None, "stop"):
            result.warnings.append(f"The model finished with {finish}; the image may be incomplete.")
        return result

    reason = f"{finish or 'stop'} ({native})" if native else finish or "stop"
    details = dict(model_text=text or None, request_id=request_id, provider=call.provider.id, model=call.model.model_id)
    if "content_filter" in finishes or (native or "").upper() in SAFETY_FINISH_REASONS:
        raise SafetyRejected("The generated image was blocked by the provider's content filter.", stage=SafetyStage.OUTPUT_BLOCKED, reason=reason, finish_message="\n".join(refusals) or None, **details)
    if refusals:
        raise SafetyRejected("The model refused to generate the image.", stage=SafetyStage.SOFT_REFUSAL, reason="refusal", finish_message="\n".join(refusals), **details)
    if finish not in (None, "stop") or native:
        raise NoImageReturned(f"The model finished with {reason} and returned no image.", reason=reason, **details)
    if text:
        raise SafetyRejected.soft_refusal(reason, **details)
    if usage.get("completion_tokens") == 0:
        raise SafetyRejected("Nothing was generated (completion_tokens is 0): rejected at review.", stage=SafetyStage.OUTPUT_BLOCKED, reason=reason, **details)
    raise NoImageReturned("The model finished without an image or any text.", reason=reason if choices else "NO_CHOICES", **details)
