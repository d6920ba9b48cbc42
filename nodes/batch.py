"""Batch rendering: many calls at provider speed, each item's fate reported, no paid image lost.

Items run concurrently; the provider's process-wide limit (providers/engine.py) is what bounds
them, so several nodes and list items share it. Each item is saved to disk as it arrives,
before anything decodes it; identical requests are answered from the cache; accepted
asynchronous jobs are journaled so a re-run attaches to them. Pure Python: the node layer
passes the cancel check and turns the outcomes into tensors.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from ..providers.catalog import FAMILY_GATED, ModelOffer, ProviderSpec, option_rule
from ..providers.client import resolve
from ..providers.engine import CallContext
from ..providers.errors import BananaError, Cancelled, InvalidRequest, Refusal, UnusableImage
from ..providers.failover import generate_with_failover
from ..providers.outcome import GeneratedImage, GenerationRequest, GenerationResult, ImageInput, Turn, inspect_image
from ..providers.redaction import redact, redact_data
from .journals import job_journals
from .store import ResultStore, put_blob, read_blob, request_key

# Statuses in the report.
OK, CACHED, REFUSED, FAILED, CANCELLED = "ok", "cached", "refused", "failed", "cancelled"

FAIL, SKIP, FLAG = "fail", "skip", "flag"  # per-item failure policies


@dataclass(frozen=True)
class BatchItem:
    index: int
    prompt: str
    images: tuple[ImageInput, ...]
    seed: int | None
    count: int = 1


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The node's parameters that every call of a run shares, declared once.

    RenderInputs (the node's whole run request) and BatchSettings (the same settings resolved for
    one provider) both extend it; the fields that are also GenerationRequest fields reach each
    call's request by name (BatchSettings.request).
    """

    provider: str
    model: str
    model_id_override: str | None = None
    aspect_ratio: str | None = None
    resolution: str | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    web_search: bool = False
    use_cache: bool = True
    thinking_level: str | None = None
    include_thoughts: bool = False
    response_modalities: str | None = None
    safety: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class BatchSettings(RunSettings):
    """RunSettings resolved for the run: the provider's id, the conversation's turns and the failover chain."""

    history: tuple[Turn, ...] = ()
    fallback: tuple[str, ...] = ()  # providers an item moves to when `provider` is unavailable (providers/failover.py)
    failover_on_refusal: bool = False

    def request(self, prompt: str, images: tuple[ImageInput, ...] = (), *, seed: int | None = None, count: int = 1) -> GenerationRequest:
        """One call's GenerationRequest: the settings every call shares (by field name), plus this call's own."""
        shared = {name: getattr(self, name) for name in _SHARED_WITH_REQUEST}
        return GenerationRequest(prompt=prompt, images=images, seed=seed, count=count, **shared)


# The settings that are also GenerationRequest fields, passed on by name, so no field is restated between the two.
_SHARED_WITH_REQUEST = tuple(f.name for f in dataclass_fields(GenerationRequest) if f.name in {g.name for g in dataclass_fields(BatchSettings)})


@dataclass
class ItemOutcome:
    index: int
    prompt: str
    seed: int | None
    status: str = "pending"
    reason: str | None = None
    message: str | None = None
    provider: str | None = None
    model_id: str | None = None
    request_id: str | None = None
    cost: float | None = None
    cost_unit: str | None = None
    cost_source: str | None = None  # providers/costs.py: provider, tokens or list_price
    key_slot: int | None = None  # which of the provider's keys served (1 = the first); never the key
    failover: list[dict[str, Any]] = field(default_factory=list)  # attempts that moved on: provider, key_slot, error
    seconds: float | None = None
    files: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)  # images beyond the count asked for: saved, not in the output
    text: str = ""
    warnings: list[str] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)  # search grounding: {"title", "uri"}
    search_queries: list[str] = field(default_factory=list)
    images: list[GeneratedImage] = field(default_factory=list, repr=False)
    thought_images: list[GeneratedImage] = field(default_factory=list, repr=False)
    model_parts: list[dict[str, Any]] | None = field(default=None, repr=False)  # for the conversation output
    error: BaseException | None = field(default=None, repr=False)
    usage: dict[str, Any] = field(default_factory=dict, repr=False)  # the provider's token counts, for the ledger

    def report(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k not in ("images", "error", "thought_images", "model_parts", "usage")}
        row["images"] = len(self.images)
        row["thought_images"] = len(self.thought_images)
        if self.seconds is not None:
            row["seconds"] = round(self.seconds, 3)
        return redact_data(row)


@dataclass
class BatchProgress:
    total: int
    done: int = 0
    cached: int = 0
    refused: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)
    last_status: str = ""

    @property
    def finished(self) -> int:
        return self.done + self.cached + self.refused + self.failed + self.cancelled

    def line(self) -> str:
        parts = [f"{self.finished}/{self.total} finished", f"{self.done} ok"]
        for label, value in (("cached", self.cached), ("refused", self.refused), ("failed", self.failed), ("cancelled", self.cancelled)):
            if value:
                parts.append(f"{value} {label}")
        parts.append(f"{self.in_flight} in flight")
        text = ", ".join(parts) + f" - {time.monotonic() - self.started:.0f}s"
        return f"{text}\n{self.last_status}" if self.last_status and self.in_flight else text


def expand_items(
    prompts: list[str],
    references: list[ImageInput],
    *,
    per_image: list[ImageInput] | None = None,
    count: int = 1,
    seed: int | None = None,
    max_count: int = 1,
) -> list[BatchItem]:
    """Every call the batch makes, in output order.

    Each prompt runs once, or once per image of `per_image` (the same instruction applied to
    each image, with `references` shared by all). `count` images per run come from the
    provider's own n where it has one (`max_count`), else from parallel calls with seed, seed+1, ...
    """
    subjects: list[tuple[ImageInput, ...]] = [(image,) for image in per_image] if per_image else [()]
    items: list[BatchItem] = []
    for prompt in prompts:
        for subject in subjects:
            remaining, offset = max(1, count), 0
            while remaining > 0:
                n = min(remaining, max(1, max_count))
                item_seed = None if seed is None else seed + offset
                items.append(BatchItem(len(items), prompt, subject + tuple(references), item_seed, n))
                remaining -= n
                offset += 1
    return items


def split_prompts(text: str, per_line: bool) -> list[str]:
    if not per_line:
        return [text]
    return [line.strip() for line in text.splitlines() if line.strip()]


async def run_batch(
    items: list[BatchItem],
    settings: BatchSettings,
    *,
    store: ResultStore | None,
    cancel_check: Callable[[], bool] | None = None,
    on_update: Callable[[BatchProgress], None] | None = None,
    on_finished: Callable[[ItemOutcome], Awaitable[None] | None] | None = None,
    on_written: Callable[[int, list[bytes]], None] | None = None,
    resolved: tuple[ProviderSpec, ModelOffer] | None = None,
    output_root: Path | None = None,
) -> list[ItemOutcome]:
    """Run every item concurrently; return their outcomes in input order. Never raises for one item.

    `on_finished` sees each outcome the moment its item ends (saved to disk first), in any order,
    and may be a coroutine function. `on_written` (item index, image bytes) is called on the loop
    when the store has written an item's images, before fsync makes them durable and before its
    cache entry and ledger row (so only work that takes no memory should start then).
    resolved: the run's (provider, model), resolved once by the caller and passed to every call.
    output_root: ComfyUI's output folder, whose save folders' job journals are looked through too.
    """
    spec, offer = resolved or resolve(settings.provider, settings.model, settings.model_id_override)
    journal = await asyncio.to_thread(job_journals, store, output_root)
    progress = BatchProgress(total=len(items))
    requests = [_request(item, settings) for item in items]
    fields = [_key_fields(spec.id, offer.model_id, r) for r in requests]
    keys = claim_keys(fields, items)

    loop = asyncio.get_running_loop()

    def written(index: int, result: GenerationResult) -> Callable[[], None] | None:
        """store.save's on_written for this item (called in its thread): hands the bytes to the loop."""
        if on_written is None:
            return None
        hook, blobs = on_written, [image.data for image in result.images]

        def hand_over() -> None:
            loop.call_soon_threadsafe(hook, index, blobs)

        return hand_over

    def update(status: str | None = None) -> None:
        if status is not None:
            progress.last_status = status
        if on_update:
            on_update(progress)

    async def run_one(position: int, item: BatchItem) -> ItemOutcome:
        outcome = ItemOutcome(index=item.index, prompt=item.prompt, seed=item.seed, provider=spec.id, model_id=offer.model_id)
        request, key = requests[position], keys[position]
        provenance = {**fields[position], "model": offer.name, "references": len(item.images), "item": item.index}
        if store is not None and settings.use_cache:
            cached = await asyncio.to_thread(store.lookup, key)
            if cached is not None:
                outcome.status, outcome.images, outcome.files, outcome.text = CACHED, cached.images, cached.files, redact(cached.text)
                outcome.request_id = cached.meta.get("request_id")
                _restore_extras(outcome, cached.meta, store)
                progress.cached += 1
                update()
                return outcome

        def on_task(handle: dict) -> None:
            outcome.request_id = job_id(handle)  # known from the submit on, so even a cancelled item names its job
            journal.remember_task(key, handle, provenance)

        ctx = CallContext(
            cancel_check=cancel_check,
            on_status=lambda text: update(f"item {item.index + 1}: {text}"),
            on_task=on_task,
            resume_task=await asyncio.to_thread(journal.pending_task, key),
        )
        outcome.request_id = job_id(ctx.resume_task)

        async def serve(call_ctx: CallContext) -> GenerationResult:
            """The item's call: on its provider, then its other keys and fallback providers."""
            result, served = await generate_with_failover(
                [spec.id, *settings.fallback], settings.model, request, call_ctx,
                model_id_override=settings.model_id_override, on_refusal=settings.failover_on_refusal, attempts=outcome.failover,
                resolved=(spec, offer),
            )
            outcome.provider, outcome.model_id, outcome.key_slot = served.provider, served.model_id, served.key_slot
            provenance.update(provider=served.provider, model_id=served.model_id, key_slot=served.key_slot)
            return result

        progress.in_flight += 1
        update()
        try:
            try:
                result = await serve(ctx)
            except Refusal:
                journal.forget_task(key)  # that job is over; a re-run is a new request
                raise
            except BananaError as exc:
                if ctx.resume_task is None:
                    raise
                if not job_is_over(exc):
                    # Keep the journal: the job may still finish (a busy status endpoint, a key that no longer
                    # reads it, an answer not understood say nothing about it), and a re-run attaches to it.
                    say_journal_kept(exc, outcome.request_id)
                    raise
                # The provider says the journaled job expired or failed: run it anew.
                journal.forget_task(key)
                result = await serve(replace(ctx, resume_task=None))
            if store is not None:
                extras = _extras(result)
                try:
                    # On disk before any decoding (on_written: once the bytes are written, while fsync makes them durable).
                    paths = await asyncio.to_thread(store.save, key, result, {**provenance, **extras}, on_written=written(item.index, result))
                    name_saved(outcome, store, result, paths)
                    await asyncio.to_thread(journal.forget_elsewhere, key)  # collected (store.save forgot the run's own entry)
                    for image in result.thought_images:  # paid for too: kept by hash
                        await asyncio.to_thread(put_blob, store.root, image.data)
                except OSError as exc:  # the folder is unusable (a planted file in its place): keep the paid images in the graph
                    result.warnings.append(redact(f"Not saved to {store.view_path(store.root)}: {type(exc).__name__}: {exc.strerror or exc}. The images are in this node's output only."))
            else:
                await asyncio.to_thread(journal.forget_task, key)  # collected
            if store is None and result.extra_images:
                result.warnings.append(
                    f"{len(result.extra_images)} extra image(s) beyond the {item.count} asked for came with this answer (paid for); "
                    "they are not in the output and were not kept, because save_to is empty: set save_to to keep them."
                )
            outcome.thought_images, outcome.model_parts = result.thought_images, result.model_parts
            outcome.sources, outcome.search_queries = result.sources, result.search_queries
            outcome.status, outcome.images, outcome.text = OK, result.images, redact(result.text)
            outcome.request_id, outcome.cost, outcome.cost_unit = result.request_id or outcome.request_id, result.cost, result.cost_unit
            outcome.cost_source, outcome.usage = result.cost_source, result.usage
            outcome.seconds, outcome.warnings = result.seconds, result.warnings
            progress.done += 1
        except Cancelled as exc:
            outcome.status, outcome.message, outcome.error = CANCELLED, str(exc), exc
            progress.cancelled += 1
        except Refusal as exc:
            outcome.status, outcome.reason, outcome.message, outcome.error = REFUSED, exc.reason, str(exc), exc
            outcome.request_id = exc.request_id or outcome.request_id
            outcome.text = redact(exc.model_text or "")
            progress.refused += 1
        except UnusableImage as exc:
            if store is not None and exc.payloads:
                outcome.files = await asyncio.to_thread(save_unusable, store, key, exc, provenance)
            if exc.payloads:  # its answer arrived: collected (store.save forgot the run's own entry)
                await asyncio.to_thread(journal.forget_task if store is None else journal.forget_elsewhere, key)
            outcome.status, outcome.reason, outcome.message, outcome.error = FAILED, exc.kind, str(exc), exc
            progress.failed += 1
        except BananaError as exc:
            outcome.status, outcome.reason, outcome.message, outcome.error = FAILED, exc.kind, str(exc), exc
            outcome.request_id = exc.request_id or outcome.request_id
            progress.failed += 1
        except Exception as exc:  # noqa: BLE001 - one broken item must not sink the batch
            outcome.status, outcome.reason, outcome.message, outcome.error = FAILED, type(exc).__name__, redact(exc), exc
            progress.failed += 1
        finally:
            progress.in_flight -= 1
            update()
        return outcome

    async def run_and_hand_over(position: int, item: BatchItem) -> ItemOutcome:
        outcome = await run_one(position, item)
        if on_finished is not None:
            finishing = on_finished(outcome)
            if finishing is not None:
                await finishing
        return outcome

    try:
        return list(await asyncio.gather(*(run_and_hand_over(position, item) for position, item in enumerate(items))))
    finally:
        release_keys(keys)


def _request(item: BatchItem, settings: BatchSettings) -> GenerationRequest:
    return settings.request(item.prompt, item.images, seed=item.seed, count=item.count)


def _key_fields(provider: str, model_id: str, request: GenerationRequest) -> dict[str, Any]:
    """What identifies a request for the cache and journal (images are added by digest)."""
    fields = {
        "provider": provider,
        "model_id": model_id,
        **{k: v for k, v in request.__dict__.items() if k not in ("images", "history") and not _unset_option(k, v)},
    }
    if request.history:
        fields["history"] = request.history_digest()
    return fields


_claims_lock = threading.Lock()
_claimed: set[str] = set()  # request keys of the items running now, in any node of this process


def claim_keys(fields: list[dict[str, Any]], items: list[BatchItem]) -> list[str]:
    """One request key per item, unique among everything running now; release_keys when done.

    Identical items (a repeated prompt line, the same seed twice, two copies of a node running at
    once) are separate paid calls, so each needs its own journal entry and cache entry: the n-th
    one running is keyed by the first's key and n. A re-run of the same batch assigns the same
    keys in the same order, so each repeat is answered from the cache with its own image, and a
    request running alone keeps the plain key, so it still hits what any earlier run saved for it.
    """
    keys = []
    with _claims_lock:
        for item_fields, item in zip(fields, items):
            base = request_key(item_fields, (image.digest for image in item.images))
            key, repeat = base, 0
            while key in _claimed:
                repeat += 1
                key = request_key({"repeat_of": base, "repeat": repeat}, ())
            _claimed.add(key)
            keys.append(key)
    return keys


def release_keys(keys: list[str]) -> None:
    with _claims_lock:
        _claimed.difference_update(keys)


def job_is_over(error: BananaError) -> bool:
    """Whether a journaled job's error is the provider's word that the job is gone or failed for good,
    so the request may be submitted anew: not found or expired (404, 410), rejected (422), or a final
    task status of failed or cancelled (job_over). Anything else (a poll refused for the key, 400, a
    5xx, an answer not understood) leaves the paid job's fate unknown: submitting again could pay twice."""
    return error.job_over or (isinstance(error, InvalidRequest) and error.status in (None, 404, 410, 422))


def say_journal_kept(error: BananaError, job: str | None) -> None:
    """Add to the error of a journaled job that it was not submitted again."""
    if not isinstance(error, Cancelled):
        note = (
            f"The job{f' {job}' if job else ''} accepted in an earlier run stays journaled and was NOT submitted again (that could pay twice): "
            "fix the cause and queue the same request to attach to it (the Nano Banana jobs tab lists it); a changed request (another seed) is a new paid call."
        )
        error.hint = f"{error.hint}\n{note}" if error.hint else note
        error.args = (str(error),)


def job_id(handle: dict | None) -> str | None:
    """The provider's id of an accepted asynchronous job (fal's request_id, the task services' task_id)."""
    if not isinstance(handle, dict):
        return None
    value = handle.get("request_id") or handle.get("task_id")
    return str(value) if value else None


def name_saved(outcome: ItemOutcome, store: ResultStore, result: GenerationResult, paths: list) -> None:
    """The saved files on the outcome (store.save's paths: the results, then the extra images), and a
    warning naming where the extra images went: they were paid for, and the output does not show them."""
    names = [store.view_path(p) for p in paths]
    outcome.files, outcome.extra_files = names[: len(result.images)], names[len(result.images) :]
    if outcome.extra_files:
        result.warnings.append(
            f"{len(outcome.extra_files)} extra image(s) beyond the count asked for came with this answer (paid for): "
            f"not in the output, saved as {', '.join(outcome.extra_files)}."
        )


def save_unusable(store: ResultStore, key: str, error: UnusableImage, provenance: dict[str, Any]) -> list[str]:
    """Bytes that are not a usable image were still paid for: on disk (.bin, with a sidecar) before the error is shown."""
    kept = GenerationResult(provider=error.provider or "", model=error.model or "", images=error.payloads, request_id=error.request_id, warnings=[str(error)])
    paths = [str(p) for p in store.save(key, kept, provenance, cache=False)]
    # Named relative to the output folder: the error reaches /history, which any page that reaches ComfyUI reads.
    error.hint = f"The provider's bytes are saved as {', '.join(store.view_path(p) for p in paths)} in the output folder. {error.hint}"
    error.args = (str(error),)
    return paths


def _unset_option(name: str, value: Any) -> bool:
    """A Gemini option left at "not asked for": kept out of cache keys, so keys from before it existed still match."""
    return name in FAMILY_GATED and option_rule(name).is_unset(value)


def _extras(result: GenerationResult) -> dict[str, Any]:
    """What a cached answer needs beyond images and text: thoughts (by hash), grounding, the model's turn."""
    extras: dict[str, Any] = {}
    if result.thought_images:
        extras["thought_images"] = [{"sha256": hashlib.sha256(im.data).hexdigest(), "mime": im.mime} for im in result.thought_images]
    if result.sources or result.search_queries:
        extras["sources"], extras["search_queries"] = result.sources, result.search_queries
    if result.model_parts is not None:
        extras["model_parts"] = result.model_parts
    return extras


def _restore_extras(outcome: ItemOutcome, meta: dict[str, Any], store: ResultStore) -> None:
    sources, queries, parts = meta.get("sources"), meta.get("search_queries"), meta.get("model_parts")
    outcome.sources = [s for s in sources if isinstance(s, dict) and isinstance(s.get("uri"), str)] if isinstance(sources, list) else []
    outcome.search_queries = [q for q in queries if isinstance(q, str)] if isinstance(queries, list) else []
    images = len(outcome.images)
    if isinstance(parts, list) and all(isinstance(p, dict) and (("image" in p and isinstance(p["image"], int) and 0 <= p["image"] < images) or isinstance(p.get("text"), str)) for p in parts):
        outcome.model_parts = parts
    for entry in meta.get("thought_images") or []:
        data = read_blob(store.root, entry.get("sha256", "")) if isinstance(entry, dict) else None
        if data is not None:
            try:
                outcome.thought_images.append(inspect_image(data))
            except ValueError:
                pass  # a damaged draft is no reason to pay again


class BatchFailed(BananaError):
    kind = "batch_failed"


def settle(outcomes: list[ItemOutcome], policy: str, *, saved_in: str | None = None, report_file: str | None = None) -> list[ItemOutcome]:
    """The outcomes whose images go to the output, or the error the node raises.

    "fail" raises when any item was refused or failed; "skip" and "flag" keep going (flag also
    writes a warning line per failed item into the text output). A batch in which nothing
    succeeded is an error under every policy. Saved results stay on disk either way, and the
    error names their folder (`saved_in`) and the run's report file.
    """
    good = [o for o in outcomes if o.status in (OK, CACHED)]
    bad = [o for o in outcomes if o.status in (REFUSED, FAILED)]
    if bad and (policy == FAIL or not good):
        first = bad[0]
        if len(outcomes) == 1 and isinstance(first.error, BananaError):
            raise first.error  # a single call: its own error, verbatim
        saved = sum(len(o.files) for o in good)
        summary = ", ".join(f"{sum(1 for o in outcomes if o.status == s)} {s}" for s in (OK, CACHED, REFUSED, FAILED, CANCELLED) if any(o.status == s for o in outcomes))
        first_line = first.error.headline() if isinstance(first.error, BananaError) else (first.message or first.reason or "failed").splitlines()[0]
        where = f"{saved} finished image(s) are saved in {saved_in}. " if saved and saved_in else f"{saved} finished image(s) are saved. " if saved else ""
        raise BatchFailed(
            f"{len(bad)} of {len(outcomes)} items did not produce an image ({summary}). First, item {first.index + 1}: {first_line}\n"
            f"Item {first.index + 1} in full: {first.message}",
            hint=where
            + (f"Every item's status, reason and request id: {report_file}. " if report_file else "")
            + ("Set on_failure (on a Nano Banana Options node) to 'skip' or 'flag' to keep the images that succeeded." if good else "Nothing succeeded; see the first error above."),
        )
    return good


def batch_report(outcomes: list[ItemOutcome], settings: BatchSettings, *, report_path: str | None = None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    costs = [o.cost for o in outcomes if o.cost is not None and o.status == OK]
    return redact_data({
        "provider": outcomes[0].provider if outcomes else settings.provider,
        "model": settings.model,
        "counts": counts,
        "cost": round(sum(costs), 6) if costs else None,
        "cost_unit": next((o.cost_unit for o in outcomes if o.cost_unit), None),
        "report_file": report_path,
        "items": [o.report() for o in outcomes],
    })
