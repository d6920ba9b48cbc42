"""Errors from HTTP answers: read every provider's error envelope and map it onto the taxonomy."""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import (
    AuthError,
    BananaError,
    InvalidRequest,
    MalformedResponse,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    SafetyStage,
    TimedOut,
    UpstreamUnavailable,
)
from ..redaction import clip
from .context import Caller
from .policy import _retry_delay_seconds


@dataclass
class ErrorEnvelope:
    """What a provider said in a failed answer, whatever its envelope looked like."""

    message: str = ""
    code: str = ""  # every code and type the provider gave, lower-cased, space-joined
    reason: str | None = None  # the provider's own error code, verbatim (a refusal's reason)
    labels: tuple[str, ...] = ()  # moderation categories (moderation_details.categories, OpenRouter metadata.reasons)
    stage: str | None = None  # "input" or "output", where a moderation says it struck
    flagged: bool = False  # the answer carries moderation details: a refusal, whatever its code says
    retry_after: float | None = None
    daily_quota: bool = False
    body: Any = None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


_CHARSET = re.compile(r"charset=[\"']?([\w.:-]{1,40})", re.I)


def loads_json(content: bytes, content_type: str = "") -> Any:
    """JSON is UTF-8 (or UTF-16/32, which json.loads tells apart); a body that is not, in a charset
    its Content-Type declares (a reseller's gbk, say), is read in that one. ValueError (which
    UnicodeError is), or LookupError for a charset Python does not know, when it is no JSON."""
    try:
        return json.loads(content)
    except UnicodeDecodeError:
        declared = _CHARSET.search(content_type or "")
        if declared is None:
            raise
        return json.loads(content.decode(declared.group(1)))


def parse_error_body(content: bytes, content_type: str = "") -> ErrorEnvelope:
    """Read the error envelopes in use: Google's, OpenAI's and new-api's, OpenRouter's, fal's, Vydra's, EvoLink's."""
    try:
        body = loads_json(content, content_type)
    except (ValueError, LookupError):
        text = decoded_text(content[:4000], content_type)[:2000]
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        if "<html" in text.lower() or title:
            summary = f"an HTML page{': ' + title.group(1).strip() if title else ''} instead of JSON"
        else:
            summary = clip(text.strip(), 300, ellipsis="") or "an empty body"  # redacted before the cut
        return ErrorEnvelope(message=summary)
    return read_error_body(body)


def is_provider_error(body: Any) -> bool:
    """Whether a failed answer's JSON is a provider's own error envelope (Google's, OpenAI's and
    new-api's {"error": ...}, Vydra's {"error": "..."}, fal's and FastAPI's {"detail": ...}, APIMart's
    {"code", "msg"}), the provider's word that it failed; not an API gateway's page that happens to be
    JSON (Kong's or AWS API Gateway's {"message": ...}, an empty object), behind which it may have run."""
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    if isinstance(error, dict):
        return any(error.get(key) not in (None, "") for key in ("message", "code", "status", "type"))
    if isinstance(error, str) and error.strip():
        return True
    if body.get("detail"):
        return True
    code = body.get("code")
    return code not in (None, "") and bool(body.get("msg") or body.get("message"))


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decoded_text(content: bytes, content_type: str) -> str:
    """A body as text, for redaction: in its declared charset, else by its byte-order mark, else as
    JSON's rules tell UTF-8 from BOM-less UTF-16 and UTF-32 (by where the NULs are).

    Read in the wrong one (UTF-16 as UTF-8), an echoed key comes out with a NUL between its
    characters, which redaction does not match and a reader easily does; any NUL left is dropped.
    A charset that spells text in other letters (UTF-7's base64) is undone here, before redaction."""
    charset = _CHARSET.search(content_type or "")
    encoding, start = (charset.group(1), 0) if charset else (json.detect_encoding(content[:4]), 0)
    for bom, name in _BOMS:
        if content.startswith(bom):
            encoding, start = name, len(bom)
            break
    try:
        text = content[start:].decode(encoding, "replace")
    except (LookupError, UnicodeError):  # a charset Python does not know, or cannot decode leniently (idna, undefined)
        text = content[start:].decode("utf-8", "replace")
    return text.replace("\x00", "")


def read_error_body(body: Any) -> ErrorEnvelope:
    """The same, for a body already parsed from JSON."""
    envelope = ErrorEnvelope(body=body)
    if not isinstance(body, dict):
        envelope.message = clip(body, 300, ellipsis="")
        return envelope
    err = body.get("error")
    codes: list[Any] = []
    if isinstance(err, dict):
        envelope.message = str(err.get("message") or "")
        codes += [err.get(k) for k in ("code", "status", "type")]
        for detail in err.get("details") or []:
            if not isinstance(detail, dict):
                continue
            codes.append(detail.get("reason"))
            delay = _retry_delay_seconds(detail.get("retryDelay"))
            if delay is not None:
                envelope.retry_after = delay
            for violation in detail.get("violations") or []:
                if "PerDay" in str(_dict(violation).get("quotaId", "")):
                    envelope.daily_quota = True
        # OpenAI's moderation_details (also beside "error") and OpenRouter's metadata name the stage and categories.
        moderation, metadata = _dict(err.get("moderation_details") or body.get("moderation_details")), _dict(err.get("metadata"))
        envelope.labels = tuple(str(x) for x in (metadata.get("reasons") or moderation.get("categories") or []) if x)
        envelope.flagged = bool(moderation or envelope.labels or metadata.get("flagged_input"))
        stage = str(moderation.get("moderation_stage") or "").lower()
        envelope.stage = stage if stage in ("input", "output") else "input" if metadata.get("flagged_input") else None
    elif isinstance(err, str):  # Vydra: {"error": "...", "code": "..."}; OAuth 2.0 (RFC 6749): a code, and error_description in words
        described = body.get("error_description")
        envelope.message = f"{err}: {described}" if isinstance(described, str) and described.strip() else err
    detail = body.get("detail")
    if isinstance(detail, list):  # fal / FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                parts.append(str(item.get("msg") or item.get("message") or item))
                codes.append(item.get("type"))
        envelope.message = envelope.message or "; ".join(parts)
    elif isinstance(detail, str):
        envelope.message = envelope.message or detail
    codes += [body.get(key) for key in ("code", "error_type", "type", "status")]
    if not envelope.message:
        envelope.message = clip(body.get("message") or body.get("msg") or "", 1000, ellipsis="")
    if body.get("retryAfter") is not None:
        envelope.retry_after = _retry_delay_seconds(body.get("retryAfter"))
    words = [c for c in codes if isinstance(c, str) and c.strip()]
    envelope.reason = words[0] if words else None
    envelope.code = " ".join(dict.fromkeys(c.lower() for c in words))
    return envelope



# Codes name a policy outright; in free text only unambiguous phrases count ("safety_settings" is no refusal).
SAFETY_CODES = ("content_policy", "content_filter", "moderation", "safety", "prohibited", "nsfw")
SAFETY_PHRASES = ("safety system", "safety filter", "content policy", "content moderation", "content filter", "flagged by", "image_safety", "prohibited_content", "nsfw")
_REFUSAL_STATUSES = (200, 400, 403, 422, 451, 500)  # where a provider reports a refusal (Vydra: a declared 500)
_NO_IMAGE_CODES = ("generation_failed",)  # a declared, final generation failure (Vydra, EvoLink): no image, not resent
# An empty balance is reported at once, even as a 429; OpenAI's rate-limit texts link to billing, so no phrase says "billing",
# and Google's per-minute 429 says "exceeded your current quota", so that phrase is no empty balance either.
EMPTY_BALANCE_CODES = ("insufficient_quota", "insufficient_user_quota", "quota_exceeded", "insufficient_balance", "insufficient_credits", "billing")
EMPTY_BALANCE_PHRASES = ("insufficient balance", "insufficient credits", "out of credits", "额度不足", "余额不足", "额度已用尽")
_RATE_CODES = ("rate_limit", "resource_exhausted", "too_many_requests")
_AUTH_CODES = ("api_key_invalid", "invalid_api_key", "authentication", "unauthenticated", "key_not_found", "key_revoked", "key_expired", "invalid token")
_NO_CHANNEL_PHRASES = ("no available channel", "无可用渠道")  # new-api gateways
_NO_CHANNEL_HINT = "The gateway has no working upstream channel for this model in your key's group right now: retry later, pick another model, or ask the gateway."


def names_safety(codes: str | None, message: str | None) -> bool:
    """Whether a code or a message names a content-policy refusal."""
    return any(word in (codes or "").lower() for word in SAFETY_CODES) or any(phrase in (message or "").lower() for phrase in SAFETY_PHRASES)


def error_for_status(status: int, envelope: ErrorEnvelope, caller: Caller, request_id: str | None = None) -> BananaError:
    """Map a failed answer onto the taxonomy; the provider's own words win over the status."""
    common: dict[str, Any] = dict(provider=caller.provider, model=caller.model or None, status=status, provider_message=envelope.message or None, request_id=request_id)
    codes, message = envelope.code, envelope.message.lower()
    if status in _REFUSAL_STATUSES and (envelope.flagged or names_safety(codes, message)):
        where = envelope.stage or ("input" if "input" in f"{codes} {message}" or "prompt" in message else "output")
        stage = SafetyStage.PROMPT_BLOCKED if where == "input" else SafetyStage.OUTPUT_BLOCKED
        what = "the prompt or a reference image" if where == "input" else "the generated image"
        labels = ", ".join(envelope.labels)
        reason = f"{envelope.reason} ({labels})" if envelope.reason and labels else envelope.reason or labels or codes or None
        return SafetyRejected(f"The provider's moderation blocked {what}.", stage=stage, reason=reason, finish_message=envelope.message or None, **common)
    if any(word in codes for word in _NO_IMAGE_CODES):
        return NoImageReturned("The provider finished without an image.", reason=envelope.reason, finish_message=envelope.message or None, **common)
    if status == 402 or any(word in codes for word in EMPTY_BALANCE_CODES) or any(phrase in message for phrase in EMPTY_BALANCE_PHRASES):
        return QuotaOrRateLimited("The account is out of credits or quota.", hint="Top up the account with this provider, or choose another provider.", exhausted=True, **common)
    if status in (401, 403) or any(word in f"{codes} {message}" for word in _AUTH_CODES):
        # Generic: presets of one reseller share a key, so generate() names the variable this preset reads (config.key_hint).
        hint = "Check the API key for this provider: it may be wrong, revoked, or lack access to this model (README, 'API keys')."
        return AuthError("The provider did not accept the API key.", hint=hint, **common)
    if status == 429 or any(word in codes for word in _RATE_CODES):
        retry = f" Retry after about {envelope.retry_after:.0f} s." if envelope.retry_after else ""
        if envelope.daily_quota:
            return QuotaOrRateLimited("The daily quota is used up." + retry, hint="Wait for the daily reset, or use another key or provider.", retry_after=envelope.retry_after, exhausted=True, **common)
        return QuotaOrRateLimited("Rate limited by the provider." + retry, retry_after=envelope.retry_after, **common)
    if status == 404:
        return InvalidRequest("Not found: the model id or the base URL is wrong, or the job expired.", hint="Check the model (or the free-text model id) and BANANA_<PROVIDER>_BASE_URL.", **common)
    if status == 413:
        return InvalidRequest("The request is too large.", hint="Use fewer or smaller reference images (lower the upload pixel budget).", **common)
    if status in (408, 504, 524):
        return TimedOut("The provider timed out.", **common)
    if status >= 500:
        no_channel = _NO_CHANNEL_HINT if any(phrase in message for phrase in _NO_CHANNEL_PHRASES) else None
        return UpstreamUnavailable("The provider failed or is overloaded.", hint=no_channel, **common)
    if 400 <= status < 500:
        return InvalidRequest("The provider rejected the request.", **common)
    return MalformedResponse(f"The provider answered HTTP {status} with an error instead of a result.", **common)


def error_in_answer(body: Any, caller: Caller, request_id: str | None = None) -> BananaError:
    """A 2xx answer that carries an error instead of a result: {"error": {...}} (new-api, OpenRouter) or
    {"code": 401, "msg": ...} (APIMart-style); an HTTP-like code in the body stands for the status."""
    inner = _dict(_dict(body).get("error")).get("code")
    status = next((c for c in (_dict(body).get("code"), inner) if isinstance(c, int) and 400 <= c < 600), 200)
    error = error_for_status(status, read_error_body(body), caller, request_id=request_id)
    error.in_answer = True
    return error


def request_id_in(headers: httpx.Headers) -> str | None:
    for name in ("x-request-id", "x-fal-request-id", "request-id", "x-goog-request-id"):
        if headers.get(name):
            return headers[name]
    return None
