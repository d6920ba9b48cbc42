"""Family B: the OpenAI Images API and the resellers that overload it (providers.md section 3).

Text-to-image: POST {base}/images/generations (JSON). With reference images: POST {base}/images/edits
(multipart; one file part per image, each with its real image Content-Type). Results are data[].b64_json
(a data: prefix is stripped) or data[].url (downloaded at once, without the key).
Resellers differ only in field names and value formats (3.5), so those are options, settable per
gateway in providers.json or per preset with BANANA_<ID>_<OPTION>:
  ratio_field        "aspect_ratio" (default), "size" (openai-hk, APIMaster); null: never sent
  ratio_format       "{w}:{h}" (default); openai-hk: "{w}x{h}" ("16x9": the ratio, not pixels)
  resolution_field   "resolution" (default), "image_size", "quality"; null where the id carries the tier
  resolution_format  "upper" ("2K", default) or "lower" ("2k"); resolution_values maps any value {"0.5K": "512"}
  response_format    "b64_json" (default), "url"; null: not sent
  send_n             true (default): send n = the image count
  edit_field         "image[]" (default; also for one image) or "image"
  generations_path, edits_path, extra_fields (merged into every body: {"quality": "high"})
A 200 without an image is a refusal: SafetyRejected when the answer says why, else NoImageReturned.
Failed answers (moderation stages, empty balances, rate limits) are the engine's to read and map.
"""

from __future__ import annotations

import json
from typing import Any

from ..engine import Response, names_safety
from ..errors import ConfigError, NoImageReturned, Refusal, SafetyRejected, SafetyStage
from ..outcome import GenerationRequest, GenerationResult


def ratio_value(call, ratio: str) -> str:
    if ":" not in ratio:
        return ratio
    w, h = ratio.split(":", 1)
    return (call.text_option("ratio_format", "{w}:{h}") or "{w}:{h}").format(w=w, h=h)


def resolution_value(call, resolution: str) -> str:
    mapped = call.dict_option("resolution_values").get(resolution)
    if mapped:
        return str(mapped)
    style = call.text_option("resolution_format", "upper") or "upper"
    if style not in ("upper", "lower"):
        raise ConfigError(f"Option 'resolution_format' of '{call.provider.id}' is {style!r}.", provider=call.provider.id, hint="Use upper (2K) or lower (2k); resolution_values maps any other spelling.")
    return resolution.lower() if style == "lower" else resolution


def unsent_warnings(call, request: GenerationRequest, ratio_sent: bool, resolution_sent: bool, protocol: str) -> list[str]:
    """What the catalog let through but this protocol or gateway configuration cannot send."""
    baked = request.resolution in call.model.ids_by_resolution or request.resolution == call.model.default_resolution
    unsent = [
        ("aspect ratio " + str(request.aspect_ratio), request.aspect_ratio and not ratio_sent),
        ("resolution " + str(request.resolution), request.resolution and not resolution_sent and not baked),
        ("system prompt", request.system_prompt and protocol == "images"),
        ("temperature", request.temperature is not None and protocol == "images"),
        ("web search", request.web_search),
    ]
    return [f"{call.provider.display_name} ({protocol} protocol) cannot take the {label}; it was not sent." for label, hit in unsent if hit]


# -- request and answer ----------------------------------------------------------------------------


def build_fields(call, request: GenerationRequest) -> tuple[dict[str, Any], list[str]]:
    fields: dict[str, Any] = {"model": call.model.id_for(request.resolution), "prompt": request.prompt}
    if call.flag_option("send_n", True):
        fields["n"] = request.count
    ratio_field, resolution_field = call.text_option("ratio_field", "aspect_ratio"), call.text_option("resolution_field", "resolution")
    if request.aspect_ratio and ratio_field:
        fields[ratio_field] = ratio_value(call, request.aspect_ratio)
    if request.resolution and resolution_field:
        fields[resolution_field] = resolution_value(call, request.resolution)
    response_format = call.text_option("response_format", "b64_json")
    if response_format:
        fields["response_format"] = response_format
    fields.update(call.dict_option("extra_fields"))
    return fields, unsent_warnings(call, request, bool(ratio_field), bool(resolution_field), "images")


async def generate(call, request: GenerationRequest) -> GenerationResult:
    fields, warnings = build_fields(call, request)
    if not request.images:
        response = await call.post_json(call.text_option("generations_path") or "images/generations", fields)
    else:
        field = call.text_option("edit_field", "image[]") or "image[]"
        files = [(field, (f"reference-{i}.{im.extension}", im.data, im.mime)) for i, im in enumerate(request.images, 1)]
        form = {key: value if isinstance(value, str) else json.dumps(value) for key, value in fields.items()}
        response = await call.send("POST", call.text_option("edits_path") or "images/edits", data=form, files=files)
    result = await parse_response(call, response, asked=request.count if call.flag_option("send_n", True) else None)
    result.warnings += warnings
    return result


def _refs(items: Any) -> tuple[list[str], list[str]]:
    refs, prompts = [], []
    for item in items if isinstance(items, list) else [items] if isinstance(items, dict) else []:
        ref = item if isinstance(item, str) else next((item.get(k) for k in ("b64_json", "url", "image") if isinstance(item, dict) and item.get(k)), None)
        if isinstance(ref, str) and ref.strip():
            refs.append(ref.strip())
        if isinstance(item, dict) and isinstance(item.get("revised_prompt"), str) and item["revised_prompt"].strip():
            prompts.append(item["revised_prompt"].strip())
    return refs, prompts


async def parse_response(call, response: Response, asked: int | None = None) -> GenerationResult:
    body = response.json_object()
    refs, prompts = _refs(body.get("data"))
    request_id = str(body.get("id") or response.headers.get("x-request-id") or "") or None
    if not refs:
        if body.get("error"):
            raise call.error_in_answer(body, request_id)
        raise no_image(call, body, "\n".join(prompts), request_id)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return call.result(await call.fetch_images(refs), asked=asked, text="\n".join(prompts), request_id=request_id, usage=usage)


def no_image(call, body: dict[str, Any], revised: str, request_id: str | None) -> Refusal:
    """200 with an empty data list (B-04): why, if the answer says, verbatim; else NoImageReturned."""
    reason = next((str(body[k]) for k in ("finish_reason", "native_finish_reason", "reason", "code") if body.get(k)), None)
    said = next((str(body[k]).strip() for k in ("text", "message", "msg", "content") if isinstance(body.get(k), str) and body[k].strip()), None)
    details = dict(request_id=request_id, provider=call.provider.id, model=call.model.model_id)
    if names_safety(reason, said):
        return SafetyRejected("The provider withheld the image (content policy).", stage=SafetyStage.OUTPUT_BLOCKED, reason=reason or "EMPTY_DATA", finish_message=said, model_text=revised or None, **details)
    if said:
        return SafetyRejected.soft_refusal(reason or "EMPTY_DATA", model_text=said, finish_message=revised or None, **details)
    return NoImageReturned(
        "The provider returned an empty data list (Gemini-backed resellers do this when the safety filter withholds the image).",
        reason=reason or "EMPTY_DATA", model_text=revised or None, **details,
    )
