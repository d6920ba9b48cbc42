"""Key rotation and provider failover around client.generate.

A provider may have several keys (config.api_keys_for): when one is rate-limited (429 after the
engine's own retries) or out of quota, the call moves to the provider's next key, and that key
rests for a while, process-wide, so the next calls start on a key that works. When a provider
is unavailable (its keys all limited, a 503 or similar reported failure, a connection that never
opened), the call moves to the next provider of its chain that offers the model: with provider
"auto" every provider with a key, in preference order; with BANANA_FALLBACK=google,fal,apiyi that
list, after the chosen provider.

Never after a call that may have been billed (the engine's `maybe_billed`: a paid request sent
without a clear answer), never once an asynchronous job was accepted, and never on a refusal unless
the caller asks for it. The caller learns which provider and key slot (never the key) served.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .catalog import ModelOffer, ProviderSpec
from .client import AUTO_PROVIDER, check_request, generate, protocol_module, resolve_model
from .config import all_providers, api_keys_for, get_provider, has_key
from .engine import CallContext
from .errors import (
    BananaError,
    MalformedResponse,
    QuotaOrRateLimited,
    Refusal,
    UpstreamUnavailable,
)
from .outcome import GenerationRequest, GenerationResult

FALLBACK_ENV = "BANANA_FALLBACK"
ORDER_ENV = "BANANA_PROVIDER_ORDER"
REFUSAL_ENV = "BANANA_FAILOVER_ON_REFUSAL"
RATE_LIMIT_REST = 60.0  # seconds a rate-limited key rests when the provider names no time
EXHAUSTED_REST = 3600.0  # an empty balance or a used-up daily quota: an hour
# Keys in a journaled job handle that say who accepted it, so a re-run attaches there.
HANDLE_PROVIDER, HANDLE_KEY_SLOT = "_served_by", "_key_slot"


@dataclass(frozen=True)
class Served:
    provider: str
    model_id: str
    key_slot: int  # 1-based: "key 2" is BANANA_<ID>_API_KEY_2 or the second key in the keys file


class KeyRing:
    """Which keys are resting after a rate limit or an empty quota; shared by the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resting: dict[tuple[str, int], float] = {}  # (key owner, slot) -> monotonic time it may be used again

    def order(self, owner: str, count: int) -> list[int]:
        """Slots (0-based) to try, in turn: the rested ones in order, else the one back soonest."""
        now = time.monotonic()
        with self._lock:
            until = {slot: self._resting.get((owner, slot), 0.0) for slot in range(count)}
        ready = [slot for slot in range(count) if until[slot] <= now]
        return ready or [min(until, key=until.__getitem__)]

    def rest(self, owner: str, slot: int, seconds: float) -> None:
        with self._lock:
            self._resting[(owner, slot)] = time.monotonic() + max(0.0, seconds)

    def clear(self) -> None:
        with self._lock:
            self._resting.clear()


KEYS = KeyRing()


def fallback_chain(requested: str, first: str, model: str) -> list[str]:
    """Provider ids to try after `first` (the resolved `requested` provider) for `model`."""
    listed = [p.strip().lower() for p in os.environ.get(FALLBACK_ENV, "").split(",") if p.strip()]
    if listed:
        candidates = listed
    elif requested == AUTO_PROVIDER:
        preferred = [p.strip() for p in os.environ.get(ORDER_ENV, "").split(",") if p.strip()]
        specs = sorted(all_providers(), key=lambda s: preferred.index(s.id) if s.id in preferred else len(preferred))
        candidates = [s.id for s in specs]
    else:
        return []
    chain: list[str] = []
    for provider_id in candidates:
        if provider_id in chain or provider_id == first:
            continue
        try:
            spec = get_provider(provider_id)
        except BananaError:
            continue  # a listed id that is not configured: skipped, like one without a key
        if spec.model(model) is not None and has_key(spec):
            chain.append(spec.id)
    return chain


def failover_on_refusal() -> bool:
    return os.environ.get(REFUSAL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _next_step(exc: BananaError, accepted: bool, on_refusal: bool, submit: bool) -> str | None:
    """'key' (the next key), 'provider' (the next provider) or None (raise: no resend).

    submit: the call was an asynchronous submit, which the billing rules resend only after a 429
    or a connection that never opened (any other failure could hide an accepted, paid job).
    """
    if accepted or exc.maybe_billed:
        return None  # it may have been processed (and billed): never sent anywhere again
    if isinstance(exc, Refusal):
        return "provider" if on_refusal else None
    if isinstance(exc, QuotaOrRateLimited):
        return "key"  # refused before any work (429), or no quota left to do any
    if isinstance(exc, MalformedResponse):
        return None  # a 2xx answer: the provider ran the request
    if isinstance(exc, UpstreamUnavailable) and not exc.sent:
        return "provider"  # the connection never opened: nothing reached the provider
    if isinstance(exc, UpstreamUnavailable) and exc.status is not None and not submit:
        return "provider"  # an HTTP status that reports it unavailable (503 ...)
    return None


def _rest_for(exc: QuotaOrRateLimited) -> float:
    if exc.exhausted:
        return EXHAUSTED_REST
    return exc.retry_after if exc.retry_after else RATE_LIMIT_REST


async def generate_with_failover(
    chain: Sequence[str],
    model: str,
    request: GenerationRequest,
    ctx: CallContext,
    *,
    model_id_override: str | None = None,
    on_refusal: bool = False,
    attempts: list[dict[str, Any]] | None = None,
    resolved: tuple[ProviderSpec, ModelOffer] | None = None,
) -> tuple[GenerationResult, Served]:
    """Run `request` on chain[0], moving along keys and the chain as described above.

    `attempts` (if given) receives one row per attempt that failed over: provider, key_slot, error.
    The model_id_override and `resolved` (a run's provider and model, resolved once) belong to
    chain[0]; the others run the model by its name.
    """
    attempts = attempts if attempts is not None else []
    handle = ctx.resume_task
    if isinstance(handle, dict) and handle.get(HANDLE_PROVIDER):
        # A journaled job is attached to where it was accepted, and never moved.
        provider_id = str(handle[HANDLE_PROVIDER])
        chain = [provider_id]
        slots: list[int] | None = [int(handle.get(HANDLE_KEY_SLOT) or 1) - 1]
    else:
        slots = None
    last: BananaError | None = None
    for position, provider_id in enumerate(chain):
        first = resolved if position == 0 and resolved is not None and resolved[0].id == provider_id else None
        spec = first[0] if first else get_provider(provider_id)
        override = model_id_override if position == 0 else None
        if position > 0:
            try:
                check_request(spec, resolve_model(spec, model, None), request)
            except BananaError as unfit:
                attempts.append({"provider": spec.id, "key_slot": None, "error": unfit.kind, "message": str(unfit).splitlines()[0]})
                continue  # this provider cannot take the request as it is
        count = len(api_keys_for(spec))
        for slot in slots if slots is not None else KEYS.order(spec.key_owner, count):
            accepted: list[bool] = []
            result_or_error = await _attempt(spec, model, request, ctx, override, slot, accepted, first)
            if isinstance(result_or_error, GenerationResult):
                offer = first[1] if first else resolve_model(spec, model, override)
                return result_or_error, Served(spec.id, offer.model_id, slot + 1)
            failure = last = result_or_error
            submit = hasattr(protocol_module(spec.family), "submit")
            step = _next_step(failure, bool(accepted), on_refusal, submit) if position + 1 < len(chain) or count > 1 else None
            if step is None:
                raise failure
            attempts.append({"provider": spec.id, "key_slot": slot + 1, "error": failure.kind, "message": str(failure).splitlines()[0]})
            if step == "key" and isinstance(failure, QuotaOrRateLimited):
                KEYS.rest(spec.key_owner, slot, _rest_for(failure))
                continue
            break  # the next provider
        slots = None
    if last is not None:
        raise last
    raise BananaError(f"No provider could take the request for '{model}'.", hint="See the report's failover rows for why each was skipped.")


async def _attempt(
    spec: ProviderSpec,
    model: str,
    request: GenerationRequest,
    ctx: CallContext,
    override: str | None,
    slot: int,
    accepted: list[bool],
    resolved: tuple[ProviderSpec, ModelOffer] | None,
) -> GenerationResult | BananaError:
    journal = ctx.on_task
    if ctx.resume_task is not None:
        accepted.append(True)  # a journaled job: the provider accepted it in an earlier run

    def on_task(handle: dict[str, Any]) -> None:
        accepted.append(True)
        if journal is not None:
            journal({**handle, HANDLE_PROVIDER: spec.id, HANDLE_KEY_SLOT: slot + 1})

    try:
        return await generate(spec.id, model, request, replace(ctx, on_task=on_task), model_id_override=override, resolved=resolved, key_slot=slot)
    except BananaError as exc:
        return exc
