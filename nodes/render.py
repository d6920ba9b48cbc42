"""What the node does, without ComfyUI: inputs in, IMAGE tensor, text and report out.

The node class (bridge_node.py) only declares the schema and adapts ComfyUI's inputs, progress
and interrupts to this; everything here runs in CI against the loopback server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from PIL import Image

from ..providers.catalog import ModelOffer, ProviderSpec
from ..providers.client import AUTO_PROVIDER, check_key_for_run, check_request, resolve
from ..providers.errors import BananaError, ConfigError, InvalidRequest
from ..providers.failover import failover_on_refusal, fallback_chain
from ..providers.outcome import GenerationRequest, ImageInput, Turn
from ..providers.redaction import redact, redact_data
from .batch import CANCELLED, FLAG, REFUSED, FAILED, BatchProgress, BatchSettings, ItemOutcome, RunSettings, batch_report, expand_items, run_batch, settle, split_prompts
from .batch_mode import batch_discount, check_batch_provider, run_batch_mode
from .dry_run import dry_run_report
from .option_specs import EACH_IMAGE, REFERENCES, generation_options
from .guard import money
from .assemble import OutputBatch
from .conversation import build_conversation, load_history, unsaved_conversation
from .housekeeping import tidy_once
from .ledger import BATCH, NOW, Ledger
from .spend import RunSpend
from .store import ResultStore
from .tensors import EncodeFormat, ImageDecodeError, SizePolicy, decode_images, encode_image

log = logging.getLogger("nano_banana_bridge")


def empty_image() -> torch.Tensor:
    """The thought_image output when there is none: what ComfyUI's own Nano Banana 2 node returns."""
    return torch.zeros((1, 1024, 1024, 4))


# Decoded pixels per run (width x height x images of the output batch): a float32 IMAGE takes 12
# bytes per pixel, so the default (about 1.2 GiB) holds six 4096x4096 results. Checked from the
# image headers, before anything is decoded.
MAX_PIXELS_ENV = "BANANA_MAX_DECODED_PIXELS"
DEFAULT_MAX_PIXELS = 105_000_000


@dataclass(frozen=True, kw_only=True)
class RenderInputs(RunSettings):
    """The node's whole run request: the settings every call shares (RunSettings), and what makes the calls."""

    prompts: list[str]
    images: list[list[torch.Tensor]] = field(default_factory=list)  # per reference slot, in order: its IMAGE batches (one per list item)
    image_mode: str = REFERENCES
    prompt_per_line: bool = False
    seed: int | None = None
    count: int = 1
    on_failure: str = "fail"
    size_policy: SizePolicy = "resize"
    upload_format: EncodeFormat = "auto"
    delivery: str = NOW  # "now" or "batch" (Google's Batch Mode)
    dry_run: bool = False  # send nothing; report the requests and their estimated cost
    conversation: dict[str, Any] | None = None  # a NANO_BANANA_CONVERSATION to continue
    conversation_root: Path | None = None  # the result store holding its images
    store_folder: str = ""  # save_to, as the conversation output names it

    def settings(self, provider_id: str, *, history: tuple[Turn, ...], fallback: tuple[str, ...], failover_on_refusal: bool) -> BatchSettings:
        """The shared settings resolved for the run's provider (its id, not "auto")."""
        shared = {f.name: getattr(self, f.name) for f in dataclass_fields(RunSettings)}
        shared.update(provider=provider_id, model_id_override=self.model_id_override or None, system_prompt=(self.system_prompt or "").strip() or None, safety=tuple(self.safety))
        return BatchSettings(**shared, history=history, fallback=fallback, failover_on_refusal=failover_on_refusal)


@dataclass
class RenderOutput:
    images: torch.Tensor | None  # None after a dry run: there is no image, and the node blocks its consumers
    text: str
    report: dict
    thought_image: torch.Tensor = field(default_factory=empty_image)
    conversation: dict[str, Any] = field(default_factory=lambda: unsaved_conversation("nothing was generated"))


class ProgressSink(Protocol):
    def text(self, text: str, *, force: bool = False) -> None: ...

    def items_finished(self, finished: int, total: int) -> None: ...


class Interrupted(Exception):
    """The user stopped the run; finished results are saved and listed in `report`."""

    def __init__(self, report: dict) -> None:
        self.report = report
        super().__init__("interrupted")


def _flatten(slots: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Every single image of the slots, in order: each element of each batch of each list item."""
    return [image for batches in slots for batch in batches for image in (batch if batch.ndim == 4 else batch.unsqueeze(0))]


def _check_inputs(slots: list[list[torch.Tensor]]) -> None:
    """Refuse an empty or non-finite input image before encoding, naming its input."""
    for number, batches in enumerate(slots, start=1):
        for batch in batches:
            shape = tuple(batch.shape)
            if batch.ndim not in (3, 4) or 0 in shape:
                raise InvalidRequest(
                    f"The image on connected image input {number} is empty (shape {list(shape)}).",
                    hint="Check the node that makes it: a crop or mask with no area, or an empty batch, gives an image with no pixels.",
                )
            # A finite sum (one pass, no copy) proves every value finite; only otherwise look closer.
            if batch.is_floating_point() and not bool(torch.isfinite(batch.sum())) and not bool(torch.isfinite(batch).all()):
                raise InvalidRequest(
                    f"The image on connected image input {number} contains NaN or infinite values.",
                    hint="An upstream node produced invalid pixels (often a VAE decode in half precision); fix that node, or clamp the image first.",
                )


def max_decoded_pixels() -> int:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        raise ConfigError(f"{MAX_PIXELS_ENV} must be a number of pixels, got {raw[:40]!r}.") from None
    if value < 1:
        raise ConfigError(f"{MAX_PIXELS_ENV} must be at least 1, got {value}.")
    return value


def _check_decoded_size(blobs: list[bytes], limit: int) -> None:
    """Raise ImageDecodeError if decoding would exceed `limit` pixels, reading only the headers."""
    sizes = []
    for blob in blobs:
        try:
            with Image.open(io.BytesIO(blob)) as picture:
                sizes.append(picture.size)
        except Exception:  # noqa: BLE001 - not an image: decoding reports it with the details
            continue
    if not sizes:
        return
    width, height = sizes[0]  # the batch takes the first image's size (see decode_images)
    batch = width * height * len(blobs)
    largest = max(w * h for w, h in sizes)  # each image is decoded at its own size first
    if max(batch, largest) > limit:
        raise DecodeLimitExceeded(
            f"The results would decode to {max(batch, largest) / 1e6:.0f} megapixels ({len(blobs)} image(s), the first "
            f"{width}x{height}), over the limit of {limit / 1e6:.0f} megapixels per run ({MAX_PIXELS_ENV})."
        )


class DecodeLimitExceeded(ImageDecodeError):
    """Decoding would take more memory than the configured cap allows."""


def _stand_in_references(inputs: RenderInputs) -> tuple[ImageInput, ...]:
    """The first call's references as sizes only (no bytes): enough for the catalog's checks
    (how many, and the first one's shape for 'match input'), before anything is encoded."""
    each = inputs.image_mode == EACH_IMAGE
    tensors = (_flatten(inputs.images[:1])[:1] if each else []) + _flatten(inputs.images[1:] if each else inputs.images)
    return tuple(ImageInput(b"", "image/png", int(t.shape[-2]), int(t.shape[-3])) for t in tensors)


def run_provider(inputs: RenderInputs, *, prompt: str, history: tuple[Turn, ...], references: tuple[ImageInput, ...]) -> tuple[ProviderSpec, ModelOffer]:
    """The provider and offer a run of these settings uses. For "auto": the first provider with a key
    that offers the model and can run the request (Batch Mode for delivery "batch", then every check of
    check_request); a named provider is checked the same way (what it cannot do comes first: a key
    would not change it). Raises the BananaError a run would. Sends nothing and reads no key value
    (has_key), so the frontend's "auto -> <provider>" asks the same question (auto_pick.py).
    `references` may be stand-ins (sizes only, no bytes)."""

    def fits(spec: ProviderSpec, offer: ModelOffer) -> None:
        if inputs.delivery == BATCH:
            check_batch_provider(spec)  # before any encoding: say at once that this provider has no Batch Mode
        check_request(spec, offer, inputs.settings(spec.id, history=history, fallback=(), failover_on_refusal=False).request(prompt, references, seed=inputs.seed))

    spec, offer = resolve(inputs.provider, inputs.model, inputs.model_id_override or None, fits=fits)
    if inputs.provider != AUTO_PROVIDER:
        fits(spec, offer)
    return spec, offer


def request_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Resolved options (option_specs.resolve_options) as RenderInputs fields: an option named like a
    field travels as it is; the rest are converted here."""
    fields = {name: value for name, value in opts.items() if name in RenderInputs.__dataclass_fields__}
    fields.update(generation_options(opts), temperature=_temperature(opts["temperature"]), model_id_override=opts["model_id_override"].strip())
    return fields


def _temperature(value: float) -> float | None:
    return None if value is None or abs(float(value) - 1.0) < 1e-9 else float(value)


def _encode(images: list[torch.Tensor], max_pixels: int, fmt: EncodeFormat) -> list[ImageInput]:
    encoded = (encode_image(image, max_pixels=max_pixels, fmt=fmt) for image in images)
    return [ImageInput(e.data, e.mime, e.width, e.height) for e in encoded]


async def render(
    inputs: RenderInputs,
    *,
    store_root: Path | None,
    output_root: Path | None = None,
    cancel_check: Callable[[], bool] | None = None,
    progress: ProgressSink | None = None,
    prompt_id: str | None = None,
    ledger: Ledger | None = None,
) -> RenderOutput:
    """Run the node's work. Report paths are relative to `output_root` (ComfyUI's output folder)."""
    prompts = [p for text in inputs.prompts for p in split_prompts(text or "", inputs.prompt_per_line)]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise InvalidRequest("The prompt is empty.", hint="Type what the image should show (or, for an edit, what to change). With 'prompt_per_line' on, each non-empty line is one prompt.")
    if inputs.on_failure not in ("fail", "skip", "flag"):
        raise InvalidRequest(f"Unknown on_failure '{inputs.on_failure}'.", hint="Use fail, skip or flag.")
    if inputs.delivery not in (NOW, BATCH):
        raise InvalidRequest(f"Unknown delivery '{inputs.delivery}'.", hint="Use now or batch.")
    history = await asyncio.to_thread(load_history, inputs.conversation, inputs.conversation_root) if inputs.conversation is not None else ()
    await asyncio.to_thread(_check_inputs, inputs.images)

    spec, offer = run_provider(inputs, prompt=prompts[0], history=history, references=_stand_in_references(inputs))
    if inputs.provider != AUTO_PROVIDER and not inputs.dry_run:  # a dry run works without a key (and says a real run would stop there)
        check_key_for_run(spec, inputs.model, batch_delivery=inputs.delivery == BATCH)
    pixel_limit = max_decoded_pixels()

    images = _flatten(inputs.images)
    subjects: list[torch.Tensor] = []
    if inputs.image_mode == EACH_IMAGE:
        if not inputs.images:
            raise InvalidRequest("Image mode 'each image' needs images on image_1.", hint="Connect the batch to edit to image_1, or set image_mode to 'references'.")
        subjects, images = _flatten(inputs.images[:1]), _flatten(inputs.images[1:])
    # Encoding is CPU work on large tensors: off the event loop, so other requests keep flowing.
    references = await asyncio.to_thread(_encode, images, spec.upload_max_pixels, inputs.upload_format) if images else []
    per_image = await asyncio.to_thread(_encode, subjects, spec.upload_max_pixels, inputs.upload_format) if subjects else None

    # Check the first call against the catalog now, so a wrong ratio, an option the provider cannot
    # honour or too many references fails at once with the model's limits, instead of once per item.
    first_refs = tuple(([per_image[0]] if per_image else []) + references)
    settings = inputs.settings(
        spec.id, history=history, fallback=tuple(fallback_chain(inputs.provider, spec.id, inputs.model)), failover_on_refusal=failover_on_refusal()
    )
    # Every option the settings carry goes through the catalog's one rule here, once, before any call.
    check_request(spec, offer, settings.request(prompts[0], first_refs, seed=inputs.seed))

    items = expand_items(prompts, references, per_image=per_image, count=inputs.count, seed=inputs.seed, max_count=offer.max_count)
    store = ResultStore(store_root, output_root=output_root) if store_root is not None else None
    if store_root is not None:
        await asyncio.to_thread(tidy_once, store_root)  # a save_to folder's first use in this process (the default one: at load)

    def on_update(state: BatchProgress) -> None:
        if progress is not None:
            progress.text(redact(state.line()), force=state.in_flight == 0)
            progress.items_finished(state.finished, state.total)

    normalised, _ = check_request(spec, offer, GenerationRequest(prompt=prompts[0], resolution=settings.resolution))
    spend = RunSpend(
        spec,
        offer,
        normalised.resolution,
        ledger or Ledger(),
        prompt_id=prompt_id,
        delivery=inputs.delivery,
        discount=batch_discount(spec) if inputs.delivery == BATCH else 1.0,
    )
    if inputs.dry_run:
        report, text = await dry_run_report(items, settings, spec, offer, spend, store)
        if progress is not None:
            progress.text(text.splitlines()[0], force=True)
        return RenderOutput(images=None, text=text, report=report)
    counts = {item.index: item.count for item in items}

    # Results are decoded into the output batch as they arrive, not after the last one; the blank
    # thought_image is made now, not beside the last decode.
    blank_thought = empty_image()
    output = OutputBatch([item.count for item in items], inputs.size_policy, pixel_limit=pixel_limit)

    async def finished(outcome: ItemOutcome) -> None:
        # The ledger row first (it never raises; SQLite, so off the loop): the images are saved and
        # cached already, so a crash while decoding (the OOM killer) neither pays twice nor hides a cost.
        # (output.written may have started a row-buffer decode earlier: it takes no memory.)
        await asyncio.to_thread(spend.record_outcome, outcome, counts[outcome.index])
        output.add(outcome.index, [image.data for image in outcome.images])
    try:
        if inputs.delivery == BATCH:
            outcomes = await run_batch_mode(items, settings, store=store, spend=spend, cancel_check=cancel_check, on_update=on_update, resolved=(spec, offer), output_root=output_root)
            for outcome in outcomes:  # a batch's results arrive together (its ledger rows are written as they are saved)
                output.add(outcome.index, [image.data for image in outcome.images])
        else:
            with spend.guarded([item.count for item in items]):
                outcomes = await run_batch(items, settings, store=store, cancel_check=cancel_check, on_update=on_update, resolved=(spec, offer), on_finished=finished, on_written=output.written, output_root=output_root)
        report = batch_report(outcomes, settings)
        report["delivery"] = inputs.delivery
        report["spend"] = await asyncio.to_thread(spend.summary)
        report_file = None
        if store is not None:
            report["save_folder"] = store.view_path(store.root)
            try:
                report_file = await asyncio.to_thread(store.save_report, report)
                report["report_file"] = store.view_path(report_file)
            except OSError as exc:  # a planted file in the way: the paid results are saved, the report is in the output
                log.warning("Nano Banana Bridge: could not write the run's report: %s", redact(exc))
        if any(o.status == CANCELLED for o in outcomes):
            raise Interrupted(report)
        kept = settle(outcomes, inputs.on_failure, saved_in=str(store.root) if store else None, report_file=str(report_file) if report_file else None)
        # The conversation's blobs are written while the last images decode, not after; so is what
        # the other outputs need.
        conversation_saved = asyncio.ensure_future(asyncio.to_thread(_next_conversation, inputs, kept, items, store))
        texts = [outcome.text.strip() for outcome in kept if outcome.text.strip()]
        if inputs.on_failure == FLAG:
            texts = [f"[item {o.index + 1} {o.status}: {o.reason or ''}] {(o.message or '').splitlines()[0] if o.message else ''}".strip() for o in outcomes if o.status in (REFUSED, FAILED)] + texts
        warnings = sorted({w for outcome in kept for w in outcome.warnings})
        first_thought = next((o.thought_images[0] for o in kept if o.thought_images), None)
        thought_image = blank_thought if first_thought is None else None
        # batch_report redacted the items; what was added since is redacted here (the whole report
        # again took milliseconds of the cores the last decode needs).
        added = {key: report[key] for key in ("delivery", "spend", "save_folder", "report_file") if key in report}
        summary, shown_report = redact(_summary(report)), {**report, **redact_data(added)}
        try:
            try:
                tensor = await output.result(
                    [(o.index, [image.data for image in o.images]) for o in kept],
                    check=lambda blobs: _check_decoded_size(blobs, pixel_limit),
                )
            except ImageDecodeError as exc:
                saved = [str(store.output_root / f) for outcome in kept for f in outcome.files] if store else []
                where = f"The provider's original files are saved: {', '.join(saved)}" if saved else "Turn saving on (save_to) to keep the provider's original bytes."
                if isinstance(exc, DecodeLimitExceeded):
                    raise BananaError(str(exc), provider=spec.id, hint=f"{where}\nTo decode them here, set {MAX_PIXELS_ENV} higher before starting ComfyUI, or ask for fewer or smaller images.") from None
                raise BananaError(f"A result could not be decoded: {exc}", provider=spec.id, hint=where) from None
        except BaseException:
            conversation_saved.cancel()  # the run failed: nobody reads it (its thread finishes alone)
            raise
    finally:
        output.close()

    if first_thought is None and inputs.include_thoughts and not any("include thoughts" in w for w in warnings):  # dropped: already said
        warnings.append("include_thoughts: the model returned no interim image this time, so thought_image is empty.")
    if first_thought is not None:
        try:
            thought_image = await asyncio.to_thread(decode_images, [first_thought.data], size_policy=inputs.size_policy)
        except ImageDecodeError as exc:
            thought_image = empty_image()
            warnings.append(f"The thought image could not be decoded: {exc}")
    assert thought_image is not None
    text = "\n\n".join(texts + ([f"Note: {w}" for w in warnings] if warnings else []))
    conversation = await conversation_saved
    if progress is not None:
        progress.text(summary, force=True)
    return RenderOutput(images=tensor, text=redact(text), report=shown_report, thought_image=thought_image, conversation=conversation)


def _next_conversation(inputs: RenderInputs, kept: list, items: list, store: ResultStore | None) -> dict[str, Any]:
    """The conversation continued by this run's first result (one branch, when a batch made several)."""
    if store is None:
        return unsaved_conversation("save_to was empty, so the images a conversation names were not kept; set save_to to continue one.")
    first = kept[0]
    return build_conversation(
        inputs.conversation,
        store_root=store.root,
        store_folder=inputs.store_folder,
        prompt=first.prompt,
        user_images=items[first.index].images,
        provider=first.provider or inputs.provider,
        model_id=first.model_id or "",
        model_text=first.text,
        model_parts=first.model_parts,
        result_images=first.images,
        result_files=[store.output_root / name for name in first.files],
    )


def _summary(report: dict) -> str:
    """The node's text after a run: counts, with the reasons of refused and failed items."""

    def reasons(status: str) -> str:
        found = sorted({str(row.get("reason")) for row in report.get("items", []) if row.get("status") == status and row.get("reason")})
        return f" ({', '.join(found)})" if found else ""

    counts = ", ".join(f"{n} {status}{reasons(status)}" for status, n in report["counts"].items())
    cost = f" - about {money(report['cost'], report['cost_unit'])}" if report.get("cost") else ""
    spend = report.get("spend") or {}
    if spend.get("run") is not None:
        cost += f"\nThis run so far: {money(spend['run'], spend.get('unit'))}; today: {money(spend.get('today') or 0.0, spend.get('unit'))}"
    return f"Done: {counts}{cost}"


def report_json(report: dict) -> str:
    return redact(json.dumps(redact_data(report), indent=2, ensure_ascii=False, default=str))
