"""Dry run: the exact first request a call would send, built by the real protocol module, never sent.

An engine stands in for the HTTP one: the protocol module builds its request through
ProviderCall exactly as it would for real, and the engine records it and stops instead of
sending. Keys are redacted, and image bytes (base64 strings, data URIs, uploads) are replaced by
a summary of their size and hash. For protocols whose later requests depend on the provider's
answer (an upload before the job, a poll after a submit), the first request is what is shown.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .catalog import ModelOffer, ProviderSpec
from .client import ProviderCall, check_request, protocol_module, resolve
from .config import api_key_for
from .engine import CallContext, HttpEngine
from .errors import MissingKey
from .outcome import GenerationRequest
from .redaction import redact

NO_KEY = "NO-KEY-CONFIGURED"
REDACTED = "<redacted>"
_BASE64 = re.compile(r"^(data:[\w/+.-]+;base64,)?[A-Za-z0-9+/=\s_-]+$")
_SECRET_FIELDS = ("assertion", "client_secret", "refresh_token", "password", "api_key", "key")  # form fields that carry a credential
_LONG = 256  # strings longer than this that look like base64 are image bytes, summarised


class WouldSend(Exception):
    """Raised by the dry-run engine in place of sending: carries the request as planned."""

    def __init__(self, planned: dict[str, Any]) -> None:
        self.planned = planned
        super().__init__("dry run")


def summarise(value: Any) -> Any:
    """The body with every image payload replaced by '<image: N bytes base64, sha256 …>'."""
    if isinstance(value, dict):
        return {k: summarise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [summarise(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}>"
    if isinstance(value, str) and len(value) > _LONG and _BASE64.match(value[:4096]):
        head = value.split(",", 1)[0] + "," if value.startswith("data:") else ""
        payload = value[len(head):]
        return f"<{head or ''}image: {len(payload) * 3 // 4} bytes base64, sha256 {hashlib.sha256(payload.encode()).hexdigest()[:16]}>"
    return value


class DryRunEngine(HttpEngine):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def _redact(self, text: str) -> str:
        text = text.replace(self.api_key, REDACTED) if self.api_key else text
        return redact(text)

    async def request(self, ctx, caller, method, url, *, headers=None, json_body=None, data=None, files=None, content=None, credentials=None, **_kw):
        if credentials is not None:
            headers = {**(headers or {}), **credentials.headers_for(url)}  # the same origin check a real send makes
        body: Any
        if json_body is not None:
            body = summarise(json_body)
        elif files or data:
            form = {name: (REDACTED if name.lower() in _SECRET_FIELDS else value) for name, value in (data or {}).items()}
            body = {"form": summarise(form), "files": [{"field": name, "filename": spec[0], "content_type": spec[2], "bytes": len(spec[1])} for name, spec in (files or [])]}
        elif content is not None:
            body = summarise(content)
        else:
            body = None
        shown_headers = {name: (REDACTED if self.api_key and self.api_key in str(value) else self._redact(str(value))) for name, value in (headers or {}).items()}
        raise WouldSend({"method": method, "url": self._redact(url), "headers": shown_headers, "body": body})


async def plan_request(spec: ProviderSpec, offer: ModelOffer, request: GenerationRequest) -> dict[str, Any]:
    """The first request `generate` would send for this call, redacted and summarised, plus warnings."""
    request, warnings = check_request(spec, offer, request)
    try:
        key = api_key_for(spec)
    except MissingKey:
        key = ""
        warnings = warnings + [f"No API key is configured for {spec.display_name}: a real run would stop here."]
    engine = DryRunEngine(key)
    call = ProviderCall(engine=engine, ctx=CallContext(), provider=spec, model=offer, api_key=key or NO_KEY)
    module = protocol_module(spec.family)
    try:
        if hasattr(module, "submit"):
            await module.submit(call, request)
        else:
            await module.generate(call, request)
    except WouldSend as planned:
        return {**planned.planned, "warnings": warnings}
    return {"method": None, "url": None, "body": None, "warnings": warnings + ["The protocol module sent nothing."]}


async def plan(provider_id: str, model: str, request: GenerationRequest, *, model_id_override: str | None = None) -> dict[str, Any]:
    spec, offer = resolve(provider_id, model, model_id_override)
    return await plan_request(spec, offer, request)
