"""Access tokens for Vertex AI from a service-account key (the OAuth 2.0 JWT-bearer grant).

google-auth signs the assertion (an optional dependency, imported only here, only when a Vertex
preset with a service account is used); the token request itself goes through the engine like
every other request, to the token_uri the key file names, with no key in any header. Tokens are
cached per service account until a minute before they expire, for the whole process.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .catalog import ProviderSpec
from .engine import IDEMPOTENT, CallContext, Caller, HttpEngine
from .errors import AuthError, BananaError, ConfigError, MalformedResponse
from .redaction import register_secret

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
LIFETIME = 3600  # seconds an assertion asks for (Google's maximum)

_tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
_lock = threading.Lock()


def _help(spec: ProviderSpec) -> str:
    return (
        f"Point BANANA_{spec.key_owner.upper()}_API_KEY or GOOGLE_APPLICATION_CREDENTIALS at a service-account key file (JSON, from the "
        "Google Cloud console: IAM, Service accounts, Keys), or use the vertex_express provider with an API key."
    )


def load_service_account(credential: str, spec: ProviderSpec) -> dict[str, Any]:
    """The service-account key: the JSON text itself, or the path of a file holding it."""
    try:
        text = credential if credential.lstrip().startswith("{") else Path(credential).expanduser().read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, ValueError) as exc:
        # Never echo the content: it holds a private key.
        raise ConfigError(f"The Vertex AI credential for '{spec.id}' is not a readable service-account key ({type(exc).__name__}).", provider=spec.id, hint=_help(spec)) from None
    if not isinstance(info, dict) or info.get("type") != "service_account" or not all(isinstance(info.get(k), str) and info[k] for k in ("client_email", "private_key")):
        raise ConfigError(f"The Vertex AI credential for '{spec.id}' is not a service-account key (type, client_email, private_key).", provider=spec.id, hint=_help(spec))
    register_secret(info["private_key"])
    token_uri = str(info.get("token_uri") or DEFAULT_TOKEN_URI)
    parts = urlsplit(token_uri)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"The service account's token_uri must be https, got {parts.scheme}://{parts.hostname}.", provider=spec.id)
    return {**info, "token_uri": token_uri}


def signed_assertion(info: dict[str, Any], spec: ProviderSpec) -> str:
    try:
        from google.auth import crypt, jwt
    except ImportError:
        raise ConfigError(
            "Vertex AI with a service account needs the google-auth package, which is not installed.",
            provider=spec.id,
            hint="Install it into the Python that runs ComfyUI (python -m pip install google-auth), or use the vertex_express provider with an API key.",
        ) from None
    try:
        signer = crypt.RSASigner.from_service_account_info(info)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"The service account's private key could not be read ({type(exc).__name__}).", provider=spec.id, hint=_help(spec)) from None
    now = int(time.time())
    payload = {"iss": info["client_email"], "scope": SCOPE, "aud": info["token_uri"], "iat": now, "exp": now + LIFETIME}
    assertion = jwt.encode(signer, payload)
    return assertion.decode("ascii") if isinstance(assertion, bytes) else str(assertion)


async def service_account_token(engine: HttpEngine, ctx: CallContext, spec: ProviderSpec, credential: str) -> tuple[ProviderSpec, str]:
    """An access token for the key (cached), and the spec with the key's project as the default project."""
    info = load_service_account(credential, spec)
    if not spec.options.get("project") and not os.environ.get("GOOGLE_CLOUD_PROJECT") and isinstance(info.get("project_id"), str):
        spec = replace(spec, options={**spec.options, "project": info["project_id"]})
    slot = (info["client_email"], str(info.get("private_key_id") or ""), info["token_uri"])
    with _lock:
        cached = _tokens.get(slot)
    if cached and cached[1] > time.time() + 60:
        return spec, cached[0]
    caller = Caller(provider=spec.id, model="", read_timeout=60.0)
    assertion = signed_assertion(info, spec)
    # The assertion buys access tokens until it expires, so a token endpoint or a gateway echoing the
    # form must not show it. Its signature is the part only the key can make (the header and claims
    # are no secret, and alike in every assertion of the account): redacting it is enough.
    register_secret(assertion.rsplit(".", 1)[-1], expires_at=time.time() + LIFETIME)
    form = {"grant_type": GRANT_TYPE, "assertion": assertion}
    try:
        response = await engine.request(ctx, caller, "POST", info["token_uri"], data=form, policy=IDEMPOTENT, status="Getting a Vertex AI access token", max_bytes=64 * 1024)
    except BananaError as exc:
        if exc.status in (400, 401, 403):
            raise AuthError(
                f"The token endpoint refused the service account {info['client_email']}: {exc.provider_message or exc}",
                provider=spec.id,
                status=exc.status,
                hint="The key may be revoked or deleted, or the account disabled: create a new key in the Google Cloud console.",
            ) from None
        raise
    try:
        body = response.json_object()
    except MalformedResponse:
        # Never quoted: an answer that is not the expected JSON (form-encoded, say) may still hold the token.
        content_type = response.headers.get("content-type", "")[:60]
        raise MalformedResponse(
            f"The token endpoint answered HTTP {response.status} with {len(response.content)} bytes that are not a JSON object (content-type '{content_type}'); not shown, as it may hold a token.",
            provider=spec.id,
            status=response.status,
            hint="Check the service account's token_uri: it should be Google's token endpoint (https://oauth2.googleapis.com/token).",
        ) from None
    token, expires_in = body.get("access_token"), body.get("expires_in", LIFETIME)
    if not isinstance(token, str) or not token:
        raise AuthError("The token endpoint answered without an access_token.", provider=spec.id)
    try:
        expiry = time.time() + float(expires_in)
    except (TypeError, ValueError):
        expiry = time.time() + 300
    register_secret(token, expires_at=expiry if math.isfinite(expiry) else None)
    with _lock:
        _tokens[slot] = (token, expiry)
    return spec, token


def forget_tokens() -> None:
    with _lock:
        _tokens.clear()
