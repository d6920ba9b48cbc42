"""Which models a user's key can use, from the provider's own list, cached for a while.

Families that list models (catalog.MODEL_LISTS): the Gemini API's `GET models` (paged), an
OpenAI-compatible `GET models` (new-api resellers list only the models the key's group may use),
and Vertex AI, asked model by model (`GET publishers/google/models/{id}`). Each answer marks the
catalog's Nano Banana ids as usable or not, and names renamed or retired ids with their successors.
Requests go through ProviderCall (the key only to the provider's origin) with a size limit.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any
from urllib.parse import quote

from .catalog import MODEL_LISTS, RENAMED_MODEL_IDS, ProviderSpec
from .client import ProviderCall, provider_call
from .config import api_key_for, get_provider
from .engine import CallContext, HttpEngine
from .errors import BananaError
from .redaction import clip

DEFAULT_TTL = 600.0  # seconds; BANANA_MODEL_LIST_TTL overrides
MAX_PAGES = 20
MAX_BODY = 4 * 1024 * 1024
MAX_IDS = 2000

_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def ttl() -> float:
    try:
        return max(0.0, float(os.environ.get("BANANA_MODEL_LIST_TTL", DEFAULT_TTL)))
    except ValueError:
        return DEFAULT_TTL


def _catalog_ids(spec: ProviderSpec) -> dict[str, list[str]]:
    """Stable name -> every id the catalog may send for it at this provider."""
    return {offer.name: list(dict.fromkeys([offer.model_id, *offer.ids_by_resolution.values(), *([offer.edit_model_id] if offer.edit_model_id else [])])) for offer in spec.models}


async def _gemini(call: ProviderCall) -> list[str]:
    ids: list[str] = []
    token = ""
    for _ in range(MAX_PAGES):
        body = (await call.get("models?pageSize=1000" + (f"&pageToken={quote(token, safe='')}" if token else ""), status="Listing models", max_bytes=MAX_BODY)).json_object()
        ids += [str(m.get("name", "")).removeprefix("models/") for m in body.get("models") or [] if isinstance(m, dict)]
        page = body.get("nextPageToken")
        token = page if isinstance(page, str) else ""
        if not token or len(ids) >= MAX_IDS:
            break
    return ids


async def _openai(call: ProviderCall) -> list[str]:
    body = (await call.get(call.text_option("models_path") or "models", status="Listing models", max_bytes=MAX_BODY)).json_object()
    return [str(m.get("id")) for m in body.get("data") or [] if isinstance(m, dict) and m.get("id")]


async def _vertex(call: ProviderCall, wanted: list[str]) -> list[str]:
    """Vertex lists publisher models only in v1beta1: ask for each catalog id instead (404: not there)."""
    found = []
    for model_id in wanted:
        response = await call.get(f"publishers/google/models/{model_id}", status="Checking models", ok_statuses=(404,), max_bytes=MAX_BODY)
        if response.status != 404:
            found.append(model_id)
    return found


async def list_models(provider_id: str, ctx: CallContext | None = None, *, refresh: bool = False, engine: HttpEngine | None = None) -> dict[str, Any]:
    """{"provider", "listed", "models", "nano_banana": {name: {"ids", "available"}}, "renamed", "checked_at", "cached", "error"}."""
    spec = get_provider(provider_id)
    kind = MODEL_LISTS.get(spec.family)
    result: dict[str, Any] = {"provider": spec.id, "listed": False, "models": [], "nano_banana": {}, "renamed": {}, "checked_at": None, "cached": False, "error": None}
    if kind is None:
        result["error"] = f"{spec.display_name} has no model list in its protocol ({spec.family.replace('_', '-')})."
        return result
    try:
        fingerprint = hashlib.sha256(api_key_for(spec).encode()).hexdigest()[:16]  # another key, another answer
    except BananaError as exc:
        result["error"] = str(exc)
        return result
    slot = (spec.id, fingerprint)
    with _lock:
        hit = _cache.get(slot)
    if hit and not refresh and time.time() - hit[0] < ttl():
        return {**hit[1], "cached": True}
    catalog_ids = _catalog_ids(spec)
    ctx = ctx or CallContext()
    try:
        call = await provider_call(spec, spec.models[0], ctx, engine)
        if kind == "gemini":
            ids = await _gemini(call)
        elif kind == "vertex":
            ids = await _vertex(call, [i for ids in catalog_ids.values() for i in ids])
        else:
            ids = await _openai(call)
    except BananaError as exc:
        result["error"] = str(exc).splitlines()[0]
        return result  # not cached: the next look tries again
    ids = list(dict.fromkeys(clip(i, 200, ellipsis="") for i in ids if i))[:MAX_IDS]  # the gateway's words: redacted, then cut
    listed = set(ids)
    result.update(listed=True, models=ids, checked_at=time.time())
    result["nano_banana"] = {name: {"ids": wanted, "available": any(i in listed for i in wanted)} for name, wanted in catalog_ids.items()}
    result["renamed"] = {old: new for old, new in RENAMED_MODEL_IDS.items() if old in listed or new in listed}
    with _lock:
        _cache[slot] = (time.time(), result)
    return result


def forget_model_lists() -> None:
    with _lock:
        _cache.clear()
