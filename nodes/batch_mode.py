"""delivery "batch": the run's items as one Google Batch Mode job, at half price.

The order of events protects the money: the spend guard checks the run's estimate (at the batch
price); the batch is journaled in the result store under its display name before the create is
sent and with Google's batch name the moment Google answers, under a key made of every item's
request; the create is never resent (after a lost answer a re-queue finds the batch by display
name), so re-queuing the same run, even after a restart, attaches to it instead of paying again. While it runs, the
node shows Google's batch stats. When it ends, every answer is classified like a direct call's
(refusals and errors become the same typed outcomes, under the same failure policy), saved to disk
before anything decodes it, and written to the cost ledger; only then is the journal entry dropped.

Interrupt (ComfyUI's Stop): the batch is cancelled at Google (POST batches/{id}:cancel), then
whatever had already finished is collected and saved. If Google has not settled the batch yet,
its journal entry stays, and queuing the same run again collects the rest of what finished: a
finished result is never lost. A wait longer than the option batch_max_wait (default one hour,
BANANA_GOOGLE_BATCH_MAX_WAIT) stops waiting without cancelling: the batch keeps running, and
re-queuing the run attaches to it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..providers.catalog import ModelOffer, ProviderSpec
from ..providers.client import ProviderCall, check_request, price_result, provider_call, resolve
from ..providers.engine import CallContext, get_engine
from ..providers.errors import BananaError, Cancelled, ConfigError, Refusal, TimedOut
from ..providers.outcome import GenerationRequest
from ..providers.protocols import gemini_batch
from ..providers.redaction import redact
from .batch import (
    CACHED,
    CANCELLED,
    FAILED,
    OK,
    REFUSED,
    BatchItem,
    BatchProgress,
    BatchSettings,
    ItemOutcome,
    _key_fields,
    _request,
    claim_keys,
    name_saved,
    release_keys,
)
from .journals import JobJournals, job_journals
from .spend import RunSpend
from .store import ResultStore

DISPLAY_PREFIX = "nano-banana-bridge"


class BatchStillRunning(TimedOut):
    """The wait ran out; the batch runs on at Google, journaled, and a re-queue collects it."""

    kind = "batch_pending"
    headline_template = "The batch is still running at {provider}: queue the same run again to collect it"
FINAL_LOOK_SECONDS = 10.0  # after an interrupt: how long to wait for the answers that had finished


@contextmanager
def claimed_requests(items: list[BatchItem], settings: BatchSettings, provider_id: str, offer: ModelOffer) -> Iterator[list[tuple[GenerationRequest, str, dict[str, Any]]]]:
    """Each item's request, cache key and provenance, keyed as run_batch keys them (identical items
    get keys of their own: nodes/batch.py claim_keys), held while the run lasts."""
    requests = [_request(item, settings) for item in items]
    fields = [_key_fields(provider_id, offer.model_id, r) for r in requests]
    keys = claim_keys(fields, items)
    try:
        yield [(r, k, {**f, "model": offer.name, "references": len(i.images), "item": i.index}) for i, r, k, f in zip(items, requests, keys, fields)]
    finally:
        release_keys(keys)


def supports_batch(spec) -> bool:
    raw = spec.options.get("batch_mode", False)
    return spec.family == "gemini" and (raw.strip().lower() in ("1", "true", "yes", "on") if isinstance(raw, str) else bool(raw))


def batch_discount(spec) -> float:
    try:
        return float(spec.options.get("batch_discount", 0.5))
    except (TypeError, ValueError):
        return 0.5


def check_batch_provider(spec) -> None:
    if not supports_batch(spec):
        raise ConfigError(
            f"Batch delivery is Google's Batch Mode, which '{spec.display_name}' does not offer.",
            provider=spec.id,
            hint="Pick the provider 'google' (Gemini API), or set delivery to 'now' on the Nano Banana Options node.",
        )


def run_key(keys: list[str]) -> str:
    """The journal key of a whole run: the same items (in the same order) give the same key."""
    return hashlib.sha256(("batch\n" + "\n".join(keys)).encode()).hexdigest()


def entry_key(index: int, key: str) -> str:
    # Unique per item even when two items are the same request (no seed), stable across restarts.
    return f"item-{index}-{key[:16]}"


async def run_batch_mode(
    items: list[BatchItem],
    settings: BatchSettings,
    *,
    store: ResultStore | None,
    spend: RunSpend,
    cancel_check: Callable[[], bool] | None = None,
    on_update: Callable[[BatchProgress], None] | None = None,
    resolved: tuple[ProviderSpec, ModelOffer] | None = None,
    output_root: Path | None = None,
) -> list[ItemOutcome]:
    """output_root: ComfyUI's output folder, whose save folders' journals are looked through for the batch too."""
    spec, offer = resolved or resolve(settings.provider, settings.model, settings.model_id_override)
    check_batch_provider(spec)
    if store is None:
        raise ConfigError("Batch delivery needs a save folder: the batch is journaled there so that no paid result is lost.", hint="Set save_to on the Nano Banana Options node (the default is nano_banana_bridge).")
    progress = BatchProgress(total=len(items))

    def update(status: str | None = None) -> None:
        if status is not None:
            progress.last_status = status
        if on_update:
            on_update(progress)

    ctx = CallContext(cancel_check=cancel_check, on_status=update)
    max_wait = float(spec.options.get("batch_max_wait", 3600.0) or 3600.0)
    # provider_call, like every other path: a service-account credential becomes an access token (never sent itself).
    call = await provider_call(replace(spec, max_wait=max_wait), offer, ctx, get_engine())

    # A re-queue with save_to changed still finds the batch journaled in the earlier folder: no second batch.
    journals = await asyncio.to_thread(job_journals, store, output_root)
    with claimed_requests(items, settings, spec.id, offer) as requests:
        return await _run(call, items, requests, settings, store, journals, spend, progress, update)


async def _run(
    call: ProviderCall, items: list[BatchItem], requests, settings: BatchSettings, store: ResultStore, journals: JobJournals, spend: RunSpend, progress: BatchProgress, update
) -> list[ItemOutcome]:
    spec, offer = call.provider, call.model
    prepared: list[tuple[BatchItem, Any, str, dict[str, Any], list[str]]] = []
    for item, (request, key, provenance) in zip(items, requests):
        normalised, warnings = check_request(spec, offer, request)
        prepared.append((item, normalised, key, provenance, warnings))
    outcomes = {item.index: ItemOutcome(index=item.index, prompt=item.prompt, seed=item.seed, provider=spec.id, model_id=offer.model_id) for item in items}
    journal_key = run_key([key for _, _, key, _, _ in prepared])
    by_entry = {entry_key(item.index, key): (item, request, key, provenance, warnings) for item, request, key, provenance, warnings in prepared}

    journaled = await asyncio.to_thread(journals.pending_task, journal_key)
    handle: dict[str, Any] | None = journaled if isinstance(journaled, dict) and isinstance(journaled.get("keys"), list) else None
    if handle is not None and not isinstance(handle.get("batch"), str) and isinstance(handle.get("display_name"), str):
        # The create's answer was lost: the batch may exist. Find it by its display name before sending anything.
        update(f"Looking for the batch {handle['display_name']} at Google")
        found = await gemini_batch.find_by_display_name(call, handle["display_name"])
        handle = {**handle, "batch": found} if found else None
        if handle is not None:
            await asyncio.to_thread(journals.remember_task, journal_key, handle, {"delivery": "batch", "provider": spec.id, "model_id": offer.model_id, "display_name": handle["display_name"]})
    in_batch = [k for k in handle["keys"] if k in by_entry] if handle is not None and isinstance(handle.get("batch"), str) else []
    handle = handle if in_batch else None
    # Items not in the journaled batch: from the cache (saved on an earlier run), else into a new batch.
    todo: list[str] = []
    for entry, (item, _req, key, _prov, _warn) in by_entry.items():
        if entry in in_batch:
            continue
        cached = await asyncio.to_thread(store.lookup, key) if settings.use_cache or handle is not None else None
        if cached is not None:
            outcome = outcomes[item.index]
            outcome.status, outcome.images, outcome.files, outcome.text = CACHED, cached.images, cached.files, redact(cached.text)
            outcome.request_id = cached.meta.get("request_id")
            progress.cached += 1
        else:
            todo.append(entry)
    update()

    if handle is not None:
        update(f"Attached to {handle['batch']} (journaled)")
        if todo:
            for entry in todo:  # a journaled batch always holds every uncached item: anything else is a damaged journal
                _fail(outcomes[by_entry[entry][0].index], progress, BananaError("This item is not in the journaled batch; queue the run again to render it."))
        await _wait_and_collect(call, store, journals, spend, handle, by_entry, outcomes, progress, update, journal_key)
    elif todo:
        counts = [by_entry[e][0].count for e in todo]
        with spend.guarded(counts):
            display_name = f"{DISPLAY_PREFIX}-{journal_key[:16]}"
            entries = gemini_batch.build_entries([(e, by_entry[e][1]) for e in todo])
            body, input_file = await gemini_batch.prepare_input(call, display_name, entries)
            provenance = {"delivery": "batch", "provider": spec.id, "model_id": offer.model_id, "items": len(todo), "display_name": display_name}
            handle = {"batch": None, "display_name": display_name, "input_file": input_file, "keys": todo, "model_id": offer.model_id}
            # Journaled before the create is sent (by display name), and again with the batch's name the
            # moment Google answers: a lost answer, a lost process or a re-queue always finds this batch.
            await asyncio.to_thread(journals.remember_task, journal_key, handle, provenance)
            try:
                handle["batch"] = await gemini_batch.create(call, offer.model_id, body)
            except BananaError as exc:
                if exc.maybe_billed or exc.unanswered:
                    exc.hint = f"{exc.hint}\nQueue the same run again: it looks for the batch '{display_name}' at Google and attaches to it instead of submitting again."
                    exc.args = (str(exc),)
                else:
                    await asyncio.to_thread(journals.forget_task, journal_key)  # answered with an error: no batch exists
                raise
            await asyncio.to_thread(journals.remember_task, journal_key, handle, provenance)
            progress.in_flight = len(todo)
            update(f"Submitted {handle['batch']} ({len(todo)} requests)")
            await _wait_and_collect(call, store, journals, spend, handle, by_entry, outcomes, progress, update, journal_key)
    return [outcomes[item.index] for item in items]


def _fail(outcome: ItemOutcome, progress: BatchProgress, error: BananaError, status: str = FAILED) -> None:
    outcome.status, outcome.reason, outcome.message, outcome.error = status, error.kind if status == FAILED else None, str(error), error
    if status == CANCELLED:
        progress.cancelled += 1
    else:
        progress.failed += 1


async def _wait_and_collect(call, store, journals, spend, handle, by_entry, outcomes, progress, update, journal_key) -> None:
    name = handle["batch"]
    keys = [k for k in handle["keys"] if k in by_entry]
    progress.in_flight = len(keys)

    async def check():
        state = await gemini_batch.get_state(call, name, len(keys))
        progress.in_flight = state.pending if state.total else len(keys)
        return gemini_batch.poll_state(state)

    interrupted: Cancelled | None = None
    try:
        state = await call.poll(check, cancel=("POST", f"{name}:cancel"), label=name)
    except Cancelled as exc:
        # The engine has asked Google to cancel the batch; collect whatever had finished.
        interrupted = exc
        try:
            state = await asyncio.wait_for(gemini_batch.get_state(replace(call, ctx=call.ctx.detached()), name, len(keys)), FINAL_LOOK_SECONDS)
        except (BananaError, asyncio.TimeoutError):
            state = None
    except TimedOut as exc:
        waiting = BatchStillRunning(
            f"The batch {name} was still running after {call.provider.max_wait:.0f} s; it stays journaled.",
            provider=call.provider.id,
            model=call.model.model_id,
            hint="Queue the same run again to collect it (nothing is submitted twice), or raise BANANA_GOOGLE_BATCH_MAX_WAIT.",
        )
        waiting.__cause__ = exc
        for entry in keys:
            _fail(outcomes[by_entry[entry][0].index], progress, waiting)
        progress.in_flight = 0
        update()
        return

    answers = await gemini_batch.answers(call if interrupted is None else replace(call, ctx=call.ctx.detached()), state, keys) if state is not None else {}
    for entry in keys:
        item, request, key, provenance, warnings = by_entry[entry]
        outcome = outcomes[item.index]
        row = answers.get(entry)
        if row is None:
            if interrupted is not None:
                _fail(outcome, progress, Cancelled(f"Stopped by the user; the batch {name} was cancelled at Google before this item finished."), CANCELLED)
            else:
                ended = state.state if state else "unknown"
                why = gemini_batch.item_error(call, state.error) if state is not None and state.error else BananaError(f"The batch {name} ended ({ended}) without an answer for this item.", provider=call.provider.id)
                _fail(outcome, progress, why)
            await asyncio.to_thread(spend.record_outcome, outcome, item.count)
            continue
        try:
            result = await gemini_batch.parse_answer(call, row)
            price_result(result, call.model, request.resolution, discount=spend.discount)
            result.request_id = result.request_id or f"{name}#{entry}"
            paths = await asyncio.to_thread(store.save, key, result, {**provenance, "delivery": "batch", "batch": name})  # on disk before any decoding
            name_saved(outcome, store, result, paths)
            outcome.status, outcome.images, outcome.text = OK, result.images, redact(result.text)
            outcome.request_id, outcome.cost, outcome.cost_unit = result.request_id, result.cost, result.cost_unit
            outcome.cost_source, outcome.usage = result.cost_source, result.usage
            outcome.warnings = warnings + result.warnings
            progress.done += 1
        except Refusal as exc:
            exc.request_id = exc.request_id or f"{name}#{entry}"
            outcome.status, outcome.reason, outcome.message, outcome.error = REFUSED, exc.reason, str(exc), exc
            outcome.request_id, outcome.text = exc.request_id, redact(exc.model_text or "")
            progress.refused += 1
        except BananaError as exc:
            _fail(outcome, progress, exc)
        await asyncio.to_thread(spend.record_outcome, outcome, item.count)  # SQLite: off the event loop
    progress.in_flight = 0
    update()
    if state is not None and state.done:
        await asyncio.to_thread(journals.forget_task, journal_key)  # every answer is saved: the job is over (wherever it was journaled)
        if handle.get("input_file"):
            await call.cleanup("DELETE", handle["input_file"], "delete the batch's requests file")
