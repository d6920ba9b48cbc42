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
Failed answers are read here before the engine maps them, for what the engine cannot know: the
stage in moderation_details, OpenRouter's metadata.reasons, and a 429 that is an empty balance
(reported at once) rather than a rate limit (waited out and resent).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..engine import Response, error_for_status, parse_error_body, retry_after_header
from ..errors import BananaError, ConfigError, MalformedResponse, NoImageReturned, QuotaOrRateLimited, Refusal, SafetyRejected, SafetyStage
from ..outcome import GenerationRequest, GenerationResult

# Error codes name a policy outright; in messages only unambiguous phrases count ("safety_settings" is no refusal).
SAFETY_CODES = ("content_policy", "moderation", "safety", "prohibited", "nsfw", "content_filter")
SAFETY_PHRASES = ("safety system", "content policy", "content moderation", "flagged")
# An empty balance (not worth retrying) versus a rate limit; OpenAI's rate-limit texts link to billing.
QUOTA_CODES = ("insufficient_quota", "insufficient_user_quota", "quota_exceeded", "insufficient_balance", "insufficient_credits", "billing_hard_limit")
QUOTA_PHRASES = ("exceeded your current quota", "insufficient balance", "out of credits", "额度不足", "余额不足")
REREAD = (400, 403, 422, 429)  # answers classified here first (none of them is resent by the engine either)
MAX_RATE_WAIT = 120.0


# -- options (values from the environment arrive as strings) --------------------------------------


def text_option(call, name: str, default: str | None) -> str | None:
    raw = call.option(name, default)
    return None if raw is None or str(raw).strip().lower() in ("", "none", "null", "false") else str(raw)


def flag_option(call, name: str, default: bool) -> bool:
    raw = call.option(name, default)
    return raw.strip().lower() in ("1", "true", "yes", "on") if isinstance(raw, str) else bool(raw)


def dict_option(call, name: str) -> dict[str, Any]:
    raw = call.option(name) or {}
    try:
        raw = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise ConfigError(f"Option '{name}' of '{call.provider.id}' must be a JSON object.", provider=call.provider.id)
    return dict(raw)


def ratio_value(call, ratio: str) -> str:
    if ":" not in ratio:
        return ratio
    w, h = ratio.split(":", 1)
    return (text_option(call, "ratio_format", "{w}:{h}") or "{w}:{h}").format(w=w, h=h)


def resolution_value(call, resolution: str) -> str:
    mapped = dict_option(call, "resolution_values").get(resolution)
    if mapped:
        return str(mapped)
    style = text_option(call, "resolution_format", "upper") or "upper"
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


# -- failed answers (shared with openai_chat) ------------------------------------------------------


def refusal_in_error(call, status: int, content: bytes) -> SafetyRejected | None:
    envelope = parse_error_body(content)
    body = envelope.body if isinstance(envelope.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    metadata = err.get("metadata") if isinstance(err.get("metadata"), dict) else {}
    moderation = err.get("moderation_details") or body.get("moderation_details")
    moderation = moderation if isinstance(moderation, dict) else {}
    labels = [str(x) for x in (metadata.get("reasons") or moderation.get("categories") or []) if x]
    words = f"{envelope.code} {envelope.message}".lower()
    said = any(w in envelope.code for w in SAFETY_CODES) or any(p in envelope.message.lower() for p in SAFETY_PHRASES)
    if not (labels or moderation or metadata.get("flagged_input") or said):
        return None
    where = str(moderation.get("moderation_stage") or "").lower()
    if where not in ("input", "output"):
        where = "input" if metadata.get("flagged_input") or "input" in words or "prompt" in words else "output"
    code = err.get("code") if isinstance(err.get("code"), str) and err.get("code") else None
    reason = f"{code} ({', '.join(labels)})" if code and labels else code or ", ".join(labels) or envelope.code or None
    stage = SafetyStage.PROMPT_BLOCKED if where == "input" else SafetyStage.OUTPUT_BLOCKED
    what = "the prompt or a reference image" if where == "input" else "the generated image"
    return SafetyRejected(
        f"The provider's moderation blocked {what}.", stage=stage, reason=reason, finish_message=envelope.message or None,
        provider=call.provider.id, model=call.model.model_id, status=status,
    )


def is_quota(content: bytes) -> bool:
    envelope = parse_error_body(content)
    return any(c in envelope.code for c in QUOTA_CODES) or any(p in envelope.message.lower() for p in QUOTA_PHRASES)


async def post(call, path: str, *, json_body: Any = None, data: dict | None = None, files: list | None = None) -> Response:
    """POST a generation; refusals, empty balances and rate limits are told apart before the engine's mapping."""
    kwargs = dict(json_body=json_body, data=data, files=files)
    try:
        response = await call.send("POST", path, ok_statuses=REREAD, **kwargs)
        if response.status < 400:
            return response
        refusal = refusal_in_error(call, response.status, response.content)
        if refusal:
            raise refusal
        envelope = parse_error_body(response.content)
        request_id = response.headers.get("x-request-id")
        if is_quota(response.content):  # new-api answers an empty balance with 403, OpenAI with 429
            raise QuotaOrRateLimited(
                "The account is out of credits or quota.", hint="Top up the account with this provider, or choose another provider.",
                provider=call.provider.id, model=call.model.model_id, status=response.status, provider_message=envelope.message or None, request_id=request_id,
            )
        delay = retry_after_header(response.headers)
        delay = envelope.retry_after if delay is None else delay
        if response.status != 429 or (delay or 0) > MAX_RATE_WAIT or envelope.daily_quota:
            raise error_for_status(response.status, envelope, call.caller, request_id=request_id)
        await call.engine.sleep(call.ctx, 1.0 if delay is None else delay, f"Rate limited by {call.provider.display_name}: retrying")
        return await call.send("POST", path, **kwargs)  # the engine's own retries from here on
    except BananaError as exc:
        if exc.status == 503 and "channel" in (exc.provider_message or "").lower():
            exc.hint = "The gateway has no working upstream channel for this model in your key's group right now: retry later, pick another model, or ask the gateway."
            exc.args = (str(exc),)
        raise


def error_in_ok_answer(call, body: dict[str, Any]) -> BananaError:
    """A 200 that carries an error envelope instead of a result (some new-api gateways)."""
    content = json.dumps(body).encode()
    found = refusal_in_error(call, 200, content)
    if found:
        return found
    error = error_for_status(200, parse_error_body(content), call.caller)
    if isinstance(error, MalformedResponse):
        return MalformedResponse("The provider answered HTTP 200 with an error instead of a result.", provider_message=error.provider_message, provider=call.provider.id, status=200)
    return error


# -- request and answer ----------------------------------------------------------------------------


def build_fields(call, request: GenerationRequest) -> tuple[dict[str, Any], list[str]]:
    fields: dict[str, Any] = {"model": call.model.id_for(request.resolution), "prompt": request.prompt}
    if flag_option(call, "send_n", True):
        fields["n"] = request.count
    ratio_field, resolution_field = text_option(call, "ratio_field", "aspect_ratio"), text_option(call, "resolution_field", "resolution")
    if request.aspect_ratio and ratio_field:
        fields[ratio_field] = ratio_value(call, request.aspect_ratio)
    if request.resolution and resolution_field:
        fields[resolution_field] = resolution_value(call, request.resolution)
    response_format = text_option(call, "response_format", "b64_json")
    if response_format:
        fields["response_format"] = response_format
    fields.update(dict_option(call, "extra_fields"))
    return fields, unsent_warnings(call, request, bool(ratio_field), bool(resolution_field), "images")


async def generate(call, request: GenerationRequest) -> GenerationResult:
    fields, warnings = build_fields(call, request)
    if not request.images:
        response = await post(call, call.option("generations_path", "images/generations"), json_body=fields)
    else:
        field = text_option(call, "edit_field", "image[]") or "image[]"
        files = [(field, (f"reference-{i}.{im.extension}", im.data, im.mime)) for i, im in enumerate(request.images, 1)]
        form = {key: value if isinstance(value, str) else json.dumps(value) for key, value in fields.items()}
        response = await post(call, call.option("edits_path", "images/edits"), data=form, files=files)
    result = await parse_response(call, response)
    result.warnings += warnings
    if flag_option(call, "send_n", True) and len(result.images) < request.count:
        result.warnings.append(f"Asked for {request.count} images, {call.provider.display_name} returned {len(result.images)}.")
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


async def parse_response(call, response: Response) -> GenerationResult:
    body = response.json_object()
    refs, prompts = _refs(body.get("data"))
    request_id = str(body.get("id") or response.headers.get("x-request-id") or "") or None
    if not refs:
        if body.get("error"):
            raise error_in_ok_answer(call, body)
        raise no_image(call, body, "\n".join(prompts), request_id)
    fetches = [call.fetch_image(call.url(ref) if ref.startswith("/") else ref) for ref in refs]
    images = list(await asyncio.gather(*fetches))
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return call.result(images, text="\n".join(prompts), request_id=request_id, usage=usage)


def no_image(call, body: dict[str, Any], revised: str, request_id: str | None) -> Refusal:
    """200 with an empty data list (B-04): why, if the answer says, verbatim; else NoImageReturned."""
    reason = next((str(body[k]) for k in ("finish_reason", "native_finish_reason", "reason", "code") if body.get(k)), None)
    said = next((str(body[k]).strip() for k in ("text", "message", "msg", "content") if isinstance(body.get(k), str) and body[k].strip()), None)
    details = dict(request_id=request_id, provider=call.provider.id, model=call.model.model_id)
    if any(word in f"{reason} {said}".lower() for word in SAFETY_CODES + SAFETY_PHRASES):
        return SafetyRejected("The provider withheld the image (content policy).", stage=SafetyStage.OUTPUT_BLOCKED, reason=reason or "EMPTY_DATA", finish_message=said, model_text=revised or None, **details)
    if said:
        return SafetyRejected("The provider answered in words instead of an image (a soft refusal).", stage=SafetyStage.SOFT_REFUSAL, reason=reason or "EMPTY_DATA", model_text=said, finish_message=revised or None, **details)
    return NoImageReturned(
        "The provider returned an empty data list (Gemini-backed resellers do this when the safety filter withholds the image).",
        reason=reason or "EMPTY_DATA", model_text=revised or None, **details,
    )
