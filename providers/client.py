"""The entry point: generate images with any provider, by provider id and stable model name.

    result = await generate("google", "Nano Banana Pro", GenerationRequest(prompt="..."), ctx)

This resolves the provider (presets, custom gateways, overrides), its key, and the model's
capabilities; checks the request against them with messages that say what to do; holds the
provider's process-wide concurrency slot; and runs the protocol module for the provider's family.
Protocol modules implement one of two typed interfaces (providers/protocols/__init__.py): SyncFamily,
`generate(call, request)`, or AsyncFamily, `submit(call, request) -> handle` and `wait(call, handle)`
(asynchronous jobs, so the handle can be journaled before polling and a later run can attach to it
instead of paying again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

from . import costs
from .catalog import (
    AUTO,
    FAMILY_GATED,
    GOOGLE_OAUTH,
    HARM_CATEGORIES,
    MATCH_INPUT,
    OPTION_RULES,
    RENAMED_MODEL_IDS,
    RESPONSE_MODALITIES,
    SAFETY_THRESHOLDS,
    UNDOCUMENTED,
    ModelOffer,
    OptionRule,
    ProviderSpec,
    narrowed,
    unknown_model,
)
from .config import KEYS_TAB, all_providers, api_keys_for, config_dir, display_path, get_provider, has_key, key_hint
from .engine import GENERATE, IDEMPOTENT, SUBMIT, CallContext, Caller, HttpEngine, PollCadence, PollState, Response, RetryPolicy, error_in_answer, get_engine, limiter_for, mark_maybe_billed, request_id_in
from .engine.auth import Credentials, check_model_id, without_userinfo
from .errors import AuthError, BananaError, ConfigError, InvalidRequest, MalformedResponse, MissingKey, Refusal, UnusableImage
from .outcome import GeneratedImage, GenerationRequest, GenerationResult
from .protocols import AsyncFamily, SyncFamily, family_for
from .redaction import clip


LOST_SUBMIT_HINT = (
    "No answer to the submit arrived, so the job may have been accepted (and billed). It was NOT sent again: "
    "check the provider's dashboard or request history before queueing the same request again."
)
log = logging.getLogger("nano_banana_bridge")
# Images beyond the count asked for are paid for and kept (result.extra_images), up to this many a
# call: no Nano Banana call makes more, and a hostile answer listing a thousand links gets no more
# downloads than that.
MAX_EXTRA_IMAGES = 8
_OFF = ("", "none", "null", "false")  # option values that mean "not set" (the environment sends strings)
_ON = ("1", "true", "yes", "on")


@dataclass
class ProviderCall:
    """Everything a protocol module needs for one call, passed explicitly.

    The key never reaches protocol code as a header: send() hands the engine the provider's
    Credentials, which attach it only for the provider's origin (engine/auth.py).
    max_images: the most images this call returns as results (the request's count); extra ones are
    kept apart (extra_images, at most MAX_EXTRA_IMAGES), paid for: saved, not in the output.
    """

    engine: HttpEngine
    ctx: CallContext
    provider: ProviderSpec
    model: ModelOffer
    api_key: str = field(repr=False)
    max_images: int | None = None
    notes: list[str] = field(default_factory=list)  # warnings gathered on the way, added to the result
    extra_images: list[GeneratedImage] = field(default_factory=list)  # beyond max_images, added to the result
    # fetch_images: result position -> the answer's other image (its ref) that took the place of one that could not be fetched
    stood_in: dict[int, str] = field(default_factory=dict)
    # A paid request of this call got a 2xx answer: the provider ran it, so whatever fails after
    # (parsing it, downloading its images) fails a billed generation (see paid_answer_failed).
    paid_answered: bool = False
    paid_request_id: str | None = None

    @property
    def caller(self) -> Caller:
        spec = self.provider
        return Caller(
            provider=spec.id, model=self.model.model_id, read_timeout=spec.read_timeout, base_url=spec.base_url, own_hosts=tuple(spec.auth_hosts),
            rate_limit_may_bill=spec.rate_limit_may_bill,
        )

    # -- options: catalog values are typed, values from BANANA_<ID>_<OPTION> arrive as strings -------

    def option(self, name: str, default: Any = None) -> Any:
        return self.provider.options.get(name, default)

    def text_option(self, name: str, default: str | None = None) -> str | None:
        """A string, or None for null, "", "none", "null" or "false" (an option switched off)."""
        raw = self.option(name, default)
        return None if raw is None or str(raw).strip().lower() in _OFF else str(raw)

    def flag_option(self, name: str, default: bool = False) -> bool:
        raw = self.option(name, default)
        return raw.strip().lower() in _ON if isinstance(raw, str) else bool(raw)

    def number_option(self, name: str, default: float) -> float:
        raw = self.option(name, default)
        try:
            return float(default if raw in (None, "") else raw)
        except (TypeError, ValueError):
            raise self._bad_option(name, "a number", raw) from None

    def dict_option(self, name: str) -> dict[str, Any]:
        """A JSON object (or its JSON text); absent: {}."""
        raw = self.option(name) or {}
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self._bad_option(name, "a JSON object", raw)
        return dict(value)

    def _bad_option(self, name: str, what: str, raw: Any) -> ConfigError:
        return ConfigError(f"Option '{name}' of '{self.provider.id}' must be {what}, got {clip(raw, 60)!r}.", provider=self.provider.id)

    # -- requests --------------------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        """A path on the base URL, or an absolute URL (from an answer or a journal) without user info;
        whether the key may go there is the engine's check, at send time."""
        if path_or_url.startswith(("http://", "https://")):
            return without_userinfo(path_or_url)
        return f"{self.provider.base_url.rstrip('/')}/{path_or_url.lstrip('/')}"

    @property
    def credentials(self) -> Credentials:
        """GOOGLE_OAUTH: api_key is then the service account's access token, sent as a bearer token."""
        spec = self.provider
        return Credentials(provider=spec.id, scheme=spec.auth, key=self.api_key, base_url=spec.base_url, auth_hosts=tuple(spec.auth_hosts))

    async def send(
        self,
        method: str,
        path_or_url: str,
        *,
        json_body: Any = None,
        data: dict[str, Any] | None = None,
        files: list | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        policy: RetryPolicy = GENERATE,
        status: str | None = None,
        ok_statuses: tuple[int, ...] = (),
        auth: bool = True,
        max_bytes: int | None = None,
    ) -> Response:
        """One request through the engine, which adds the key (auth=True) only on the provider's origin.

        max_bytes: a larger answer limit than the engine's default (a batch's results hold many images).
        """
        if policy.paid:
            self.paid_answered = False  # a paid request that fails reports that itself (the engine's rules)
        response = await self.engine.request(
            self.ctx,
            self.caller,
            method,
            self.url(path_or_url),
            headers=headers,
            credentials=self.credentials if auth else None,
            json_body=json_body,
            data=data,
            files=files,
            content=content,
            policy=policy,
            status=status or f"Generating with {self.provider.display_name}",
            ok_statuses=ok_statuses,
            max_bytes=max_bytes,
        )
        if policy.paid and 200 <= response.status < 300:
            self.paid_answered, self.paid_request_id = True, request_id_in(response.headers)
        return response

    async def post_json(self, path_or_url: str, body: Any, *, policy: RetryPolicy = GENERATE, status: str | None = None) -> Response:
        return await self.send("POST", path_or_url, json_body=body, policy=policy, status=status)

    async def get(self, path_or_url: str, *, status: str | None = None, ok_statuses: tuple[int, ...] = (), max_bytes: int | None = None) -> Response:
        return await self.send("GET", path_or_url, policy=IDEMPOTENT, status=status or f"Checking {self.provider.display_name}", ok_statuses=ok_statuses, max_bytes=max_bytes)

    def error_in_answer(self, body: Any, request_id: str | None = None) -> BananaError:
        """The typed error for a 2xx answer that carries an error envelope instead of a result."""
        return error_in_answer(body, self.caller, request_id)

    # -- asynchronous jobs -----------------------------------------------------------------------

    async def submit_once(self, path_or_url: str, body: Any) -> Response:
        """POST a paid job exactly once (the SUBMIT policy); a lost answer says the job may exist."""
        try:
            return await self.send("POST", path_or_url, json_body=body, policy=SUBMIT, status=f"Submitting to {self.provider.display_name}")
        except BananaError as exc:
            if exc.unanswered:
                exc.hint = LOST_SUBMIT_HINT
                exc.args = (str(exc),)
            raise

    async def poll(self, check: Callable[[], Awaitable[PollState]], *, cancel: tuple[str, str] | None = None, label: str = "") -> Any:
        """engine.poll at the provider's cadence (options poll_first_delay, poll_max_delay and
        poll_budget: see PollCadence) and within its max_wait.

        cancel: the (method, path or URL) that cancels the remote job when the user stops. Only a
        stop the caller asked for (ctx.cancel_check, ComfyUI's Interrupt) cancels the job. When the
        task is cancelled from outside without that (ComfyUI cancels a prompt's other nodes when one
        fails), the paid job is left running: its handle is already journaled, so the next run attaches.
        """
        return await self.engine.poll(
            self.ctx,
            self.caller,
            check,
            cancel=self._cancel_if_asked(*cancel, label) if cancel else None,
            cadence=self.poll_cadence(),
            max_wait=self.provider.max_wait,
            task_label=label,
        )

    def poll_cadence(self) -> PollCadence:
        default = PollCadence()
        budget = self.number_option("poll_budget", default.budget)
        if budget < 1:
            raise self._bad_option("poll_budget", "a number of polls per minute, at least 1", budget)
        return PollCadence(
            first=max(0.0, self.number_option("poll_first_delay", default.first)),
            every=max(0.0, self.number_option("poll_max_delay", default.every)),
            budget=int(budget),
        )

    async def cleanup(self, method: str, path_or_url: str, what: str) -> None:
        """A best-effort request (delete an upload, ...) that also runs after an interrupt and never fails."""
        await self.engine.courtesy(self.ctx, self.caller, self._request_later(method, path_or_url, what), what)

    def _cancel_if_asked(self, method: str, path_or_url: str, label: str) -> Callable[[CallContext], Awaitable[Response | None]]:
        request = self._request_later(method, path_or_url, "Cancelling the job")

        async def cancel_remote(detached: CallContext) -> Response | None:
            if not self.ctx.cancelled():
                log.info(
                    "%s: the run was cancelled without an interrupt (another node in the prompt failed?); job %s is left running, "
                    "journaled for the next run of the same request",
                    self.provider.id,
                    label or "(no id)",
                )
                return None
            return await request(detached)

        return cancel_remote

    def _request_later(self, method: str, path_or_url: str, status: str) -> Callable[[CallContext], Awaitable[Response]]:
        """An idempotent request to run under the context the engine passes (a detached one)."""
        return lambda ctx: replace(self, ctx=ctx).send(method, path_or_url, policy=IDEMPOTENT, status=status)

    # -- results ---------------------------------------------------------------------------------

    async def fetch_image(self, ref: str) -> GeneratedImage:
        """A data URI, bare base64, or URL (one starting with "/" is on the provider's base URL)."""
        # Bare base64 of a JPEG starts with "/9j/" (FF D8 FF): that is an image, not a path.
        on_base_url = ref.startswith("/") and not ref.startswith("/9j/")
        return await self.engine.fetch_image(self.ctx, self.caller, self.url(ref) if on_base_url else ref)

    async def fetch_images(self, refs: list[str], spare_refs: list[str] | tuple[str, ...] = ()) -> list[GeneratedImage]:
        """fetch_image for each, concurrently, in order.

        The first max_images are the results. The ones beyond were paid with the same call: they are
        fetched too, at most MAX_EXTRA_IMAGES, and kept apart (extra_images, saved with the result but
        not in the output; a warning says so). Bytes that are not a usable image do not stop the
        rest: they were paid for, so one UnusableImage is raised at the end carrying every payload of
        the answer (the spare_refs' too), to be saved. A link that cannot be downloaded does not stop the rest either: the
        next image of the answer beyond the count takes its place (a link the model wrote in its text,
        which a prompt can steer, must not push the paid image out), then the `spare_refs` in order (the
        answer's images that are no result of their own, such as a gateway's drafts before its final
        image: fetched only to stand in), else the images that did arrive are returned (paid for:
        saved and cached) with a warning per lost one; only when none arrived is the first failure raised.
        """
        ordered = list(refs)
        refs = self._within_count(refs)
        beyond = ordered[len(refs):]
        spares = beyond + list(spare_refs)

        async def fetch(ref: str) -> GeneratedImage | BananaError:
            try:
                return await self.fetch_image(ref)
            except BananaError as exc:  # an UnusableImage too: its bytes are kept below
                return exc

        async def fetch_all(refs: list[str]) -> list[GeneratedImage | BananaError]:
            tasks = [asyncio.ensure_future(fetch(ref)) for ref in refs]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        fetched = await fetch_all(refs)
        lost: list[BananaError] = []
        for n, item in enumerate(fetched):
            if not isinstance(item, BananaError) or isinstance(item, UnusableImage):
                continue
            while spares and isinstance(fetched[n], BananaError) and not isinstance(fetched[n], UnusableImage):
                self.stood_in[n] = spares.pop(0)
                fetched[n] = await fetch(self.stood_in[n])
            if isinstance(fetched[n], GeneratedImage) or isinstance(fetched[n], UnusableImage):
                self.notes.append(f"Image {n + 1} of the answer could not be downloaded; another image of the same answer took its place: {clip(item.message, 200)}")
            else:
                lost.append(item)
                self.notes.append(f"Image {n + 1} of {len(fetched)} could not be downloaded, the others are kept: {clip(item.message, 200)}")
        if lost and len(lost) == len(fetched):
            raise lost[0]
        used = len(beyond) + len(spare_refs) - len(spares)  # spares taken from the front: `beyond` first
        extras = await self._extras(fetch_all, beyond[used:])
        fetched = [item for item in fetched if not (isinstance(item, BananaError) and not isinstance(item, UnusableImage))]
        unusable = [item for item in fetched if isinstance(item, UnusableImage)]
        if unusable:
            # The answer's other images (a gateway's drafts) were paid with it too: saved with the unusable bytes.
            others = await self._extras(fetch_all, spares[max(0, len(beyond) - used) :])
            first = unusable[0]
            first.payloads = [p for item in fetched for p in (item.payloads if isinstance(item, UnusableImage) else [item])] + extras + others
            if len(unusable) > 1:
                first.message += f" ({len(unusable)} of {len(fetched)} results are unusable.)"
                first.args = (str(first),)
            raise first
        self.extra_images += extras
        return [item for item in fetched if isinstance(item, GeneratedImage)]

    async def _extras(self, fetch_all: Callable[[list[str]], Awaitable[list[GeneratedImage | BananaError]]], refs: list[str]) -> list[GeneratedImage]:
        """The images beyond the count, at most MAX_EXTRA_IMAGES: paid for, kept apart. One that cannot be
        fetched is a warning (it is no result); unusable bytes are kept as they are (saved as .bin)."""
        extras: list[GeneratedImage] = []
        for n, item in enumerate(await fetch_all(refs[:MAX_EXTRA_IMAGES])):
            if isinstance(item, GeneratedImage):
                extras.append(item)
            elif isinstance(item, UnusableImage):
                extras += item.payloads
            else:
                self.notes.append(f"Extra image {n + 1} (beyond the count asked for) could not be downloaded: {clip(item.message, 200)}")
        return extras

    def _within_count(self, items: list) -> list:
        if self.max_images is not None and len(items) > self.max_images:
            beyond = len(items) - self.max_images
            kept = f"the other {min(beyond, MAX_EXTRA_IMAGES)} are kept apart (saved with the result, not in the output)"
            if beyond > MAX_EXTRA_IMAGES:
                kept += f"; {beyond - MAX_EXTRA_IMAGES} more were ignored"
            note = f"{self.provider.display_name} returned {len(items)} images for {self.max_images} asked: the output has {self.max_images}, {kept}."
            if note not in self.notes:
                self.notes.append(note)
            return items[: self.max_images]
        return items

    def result(self, images: list[GeneratedImage], *, asked: int | None = None, **fields: Any) -> GenerationResult:
        """The result; with `asked`, a warning when the provider returned fewer images than that.
        More than max_images are cut to max_images, the others kept as extra_images, with a warning."""
        kept = self._within_count(images)
        self.extra_images += images[len(kept) :][: max(0, MAX_EXTRA_IMAGES - len(self.extra_images))]
        images = kept
        result = GenerationResult(provider=self.provider.id, model=self.model.model_id, images=images, extra_images=list(self.extra_images), **fields)
        result.warnings.extend(self.notes)
        if asked is not None and len(images) < asked:
            result.warnings.append(f"Asked for {asked} images, {self.provider.display_name} returned {len(images)}.")
        return result


def protocol_module(family: str) -> SyncFamily | AsyncFamily:
    return family_for(family)


def resolve_model(spec: ProviderSpec, model: str, model_id_override: str | None = None) -> ModelOffer:
    """The provider's offer for a stable model name; a free-text id overrides the catalog."""
    if model_id_override and model_id_override.strip():
        override = check_model_id(model_id_override, spec.id)  # joined into URLs: an id, never an address
        successor = RENAMED_MODEL_IDS.get(override)
        if successor:
            renamed = spec.model(successor) or resolve_model(spec, model, successor)
            return replace(renamed, renamed_from=override)
        offer = spec.model(override)
        if offer is not None:
            return offer
        base = spec.model(model)
        # Keep the capabilities of the chosen model when the id is just a newer variant of it.
        # The catalog's per-resolution and edit endpoints belong to the catalog id, not to this one.
        return replace(base, model_id=override, ids_by_resolution={}, edit_model_id=None, known=False) if base else unknown_model(override)
    offer = spec.model(model)
    if offer is None:
        raise ConfigError(
            f"'{spec.display_name}' does not offer the model '{model}'.",
            provider=spec.id,
            hint=f"Pick one of: {', '.join(spec.model_names)}, or type the provider's model id into 'model_id_override'.",
        )
    return offer


def nearest_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str | None:
    """The supported "W:H" closest (in log space) to an image's shape."""
    candidates = [r for r in ratios if ":" in r]
    if not candidates or width <= 0 or height <= 0:
        return None
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (float(x) for x in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(candidates, key=distance)


def check_request(spec: ProviderSpec, offer: ModelOffer, request: GenerationRequest) -> tuple[GenerationRequest, list[str]]:
    """Validate against the catalog and normalise; returns the request to send and warnings.

    Every option goes through one rule (catalog.OPTION_RULES): a value this offer cannot honour
    is refused here, before anything is sent, naming the allowed values, unless the option is
    best-effort, in which case it is dropped and the report says so. A free-text model id
    (model_id_override) is not described by the catalog: its values are sent unchecked, with a note.
    """
    warnings: list[str] = []
    where = f"{offer.name} on {spec.display_name}"
    if offer.renamed_from:
        warnings.append(f"The model id {offer.renamed_from} was renamed or retired; {offer.model_id} was sent instead. Update model_id_override.")
    if not request.prompt.strip():
        raise InvalidRequest("The prompt is empty.", provider=spec.id, hint="Type what the image should show (or, for an edit, what to change).")
    if len(request.images) > offer.max_refs:
        if offer.known:
            raise InvalidRequest(
                f"{len(request.images)} reference images, but {where} accepts at most {offer.max_refs}.",
                provider=spec.id,
                hint="Each image in a batch counts as one reference. Remove some, or pick a model that takes more (Nano Banana Pro and Nano Banana 2 take 14).",
            )
        warnings.append(f"{len(request.images)} reference images sent to an unlisted model; the provider may reject them.")
    check_option_values(spec, offer, request, warnings)
    offer = narrowed(offer, spec.honoured_options)  # a free-text model id too: its protocol limits it all the same
    dropped: dict[str, Any] = {}
    for rule in OPTION_RULES:
        value = getattr(request, rule.option)
        if rule.is_unset(value):
            continue
        allowed = rule.allowed(offer)
        if allowed is None or value in allowed:
            continue
        shown = _shown(rule.option, value)
        protocol_cannot = rule.option in FAMILY_GATED and rule.option not in spec.honoured_options
        if not offer.known and not protocol_cannot:
            warnings.append(f"{shown} sent to an unlisted model unchecked.")
        elif rule.is_best_effort(offer):
            dropped[rule.option] = rule.unset[0]
            if rule.note:
                warnings.append(f"{where} does not take the {rule.option.replace('_', ' ')} (best-effort); it was not sent.")
        else:
            raise _unhonoured(spec, offer, rule, value, allowed)
    request = replace(request, **dropped)
    ratio = request.aspect_ratio
    if ratio in (None, "", AUTO):
        ratio = None
    elif ratio == MATCH_INPUT:
        first = next((im for im in request.images if im.width and im.height), None)
        ratio = nearest_ratio(first.width or 0, first.height or 0, offer.aspect_ratios) if first else None
    resolution = request.resolution or None
    if offer.known and not offer.resolutions:
        resolution = None  # a fixed size: nothing to send
    normalised = replace(
        request,
        aspect_ratio=ratio,
        resolution=resolution if resolution else offer.default_resolution if offer.resolutions else None,
        count=max(1, min(request.count, offer.max_count)),
    )
    return normalised, warnings


def check_option_values(spec: ProviderSpec, offer: ModelOffer, request: GenerationRequest, warnings: list[str]) -> None:
    """Values the rule cannot judge by membership (safety pairs, the response modality), checked
    whatever the provider; and a note where a family sends an option its providers do not document."""
    if request.response_modalities not in (None, "") and request.response_modalities not in RESPONSE_MODALITIES:
        raise InvalidRequest(f"Unknown response_modalities '{str(request.response_modalities)[:40]}'.", provider=spec.id, hint=f"Use one of: {', '.join(RESPONSE_MODALITIES)}.")
    for category, threshold in request.safety:
        if category not in HARM_CATEGORIES or threshold not in SAFETY_THRESHOLDS:
            raise InvalidRequest(
                f"Unknown safety setting {str(category)[:60]}={str(threshold)[:40]}.",
                provider=spec.id,
                hint=f"Categories: {', '.join(HARM_CATEGORIES)}; thresholds: {', '.join(SAFETY_THRESHOLDS)}.",
            )
    for option in UNDOCUMENTED.get(spec.family, frozenset()) & spec.honoured_options:
        rule = next(r for r in OPTION_RULES if r.option == option)
        if not rule.is_unset(getattr(request, option)):
            warnings.append(f"{spec.display_name} does not document the {_shown(option, getattr(request, option))}; it was sent as best effort.")


def _shown(option: str, value: Any) -> str:
    label = option.replace("_", " ")
    if isinstance(value, bool):
        return f"{label} on"
    if option == "system_prompt":
        return "a system prompt"
    if option == "safety":
        return "a safety setting"
    if option == "history":
        return "a conversation (multi-turn editing)"
    return f"{label} {value}"


def _unhonoured(spec: ProviderSpec, offer: ModelOffer, rule: OptionRule, value: Any, allowed: tuple[Any, ...]) -> InvalidRequest:
    """The refusal for a value this offer cannot honour: what it allows instead, and which providers take the value."""
    shown = _shown(rule.option, value)
    takers = []
    for other in all_providers():
        their = other.model(offer.name) if other.id != spec.id else None
        if their is not None and their.known:
            their_allowed = rule.allowed(their)
            if their_allowed is None or value in their_allowed:
                takers.append(other.id)
    if not allowed:
        instead = rule.turn_off or (f"Turn {rule.option} off" if isinstance(value, bool) else f"Leave {rule.option} empty")
    elif rule.option == "resolution" and not offer.resolutions:
        instead = f"It has a fixed size: choose {allowed[0]}"
    else:
        instead = f"Choose one of: {', '.join(str(v) for v in allowed)}"
    elsewhere = f", or pick a provider that offers it for {offer.name}: {', '.join(takers)}" if takers else ""
    return InvalidRequest(f"{shown[0].upper()}{shown[1:]} is not available for {offer.name} on {spec.display_name}.", provider=spec.id, hint=f"{instead}{elsewhere}.")


AUTO_PROVIDER = "auto"


def auto_order() -> list[ProviderSpec]:
    """Every configured provider in the order "auto" tries them: BANANA_PROVIDER_ORDER first, then the catalog's."""
    specs = all_providers()
    preferred = [p.strip() for p in os.environ.get("BANANA_PROVIDER_ORDER", "").split(",") if p.strip()]
    specs.sort(key=lambda s: preferred.index(s.id) if s.id in preferred else len(preferred))
    return specs


def _names(specs: list[ProviderSpec]) -> str:
    return ", ".join(f"{s.display_name} ({s.id})" for s in specs)


def choose_provider(model: str, fits: Callable[[ProviderSpec], object] | None = None) -> ProviderSpec:
    """For provider "auto": the first provider with a key that offers the model (and, given `fits`,
    that can run this request: `fits(spec)` raises a BananaError when it cannot, e.g. a conversation
    on a provider without turns; then the next one is tried, and if none can, the first one's error
    is raised).

    The order is BANANA_PROVIDER_ORDER (comma-separated ids) if set, then the catalog's order,
    so a shared workflow set to "auto" runs for whoever opens it, with whatever key they have.
    """
    specs = auto_order()
    keyed = [spec for spec in specs if has_key(spec)]
    candidates = [spec for spec in keyed if spec.model(model) is not None]
    if not candidates:
        keys_file = display_path(config_dir() / "keys.json")
        if not keyed:
            raise MissingKey(
                "No API key is set for any provider.",
                provider=AUTO_PROVIDER,
                hint=f"Paste a key for a provider you have an account with in the {KEYS_TAB} and run again (no restart needed), "
                "or set one before starting ComfyUI (for example BANANA_GOOGLE_API_KEY or GEMINI_API_KEY, or FAL_KEY), or add one to "
                f"{keys_file}; see the README, 'API keys'.",
            )
        offers = sorted({name for spec in keyed for name in spec.model_names})
        takers = [spec.id for spec in specs if spec.model(model) is not None]
        raise MissingKey(
            f"None of the providers you have a key for offers '{model}': {_names(keyed)}.",
            provider=AUTO_PROVIDER,
            hint=f"Choose a model they offer ({', '.join(offers)}), or add a key for a provider that offers {model} "
            f"({', '.join(takers)}) in the {KEYS_TAB}.",
        )
    if fits is None:
        return candidates[0]
    first_error: BananaError | None = None
    for spec in candidates:
        try:
            fits(spec)
            return spec
        except BananaError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def unknown_provider(provider_id: str) -> str | None:
    """What to do when a workflow names a provider this install does not have (a custom gateway from
    its author's providers.json, or a preset of another version); None when it is known.

    ComfyUI's own check would only say "Value not in list". With a broken providers.json every id
    passes here: the run then names the file and line.
    """
    if provider_id == AUTO_PROVIDER:
        return None
    try:
        specs = auto_order()
    except BananaError:
        return None
    if any(spec.id == provider_id for spec in specs):
        return None
    keyed = [spec.id for spec in specs if has_key(spec)]
    yours = f" or to a provider you have a key for ({', '.join(keyed)})" if keyed else ""
    provider_id = clip(provider_id, 60)  # a workflow's value: shown, redacted, never at length
    return (
        f"The provider '{provider_id}' is not set up on this ComfyUI: the workflow was saved with a provider from its author's setup "
        f"(a custom gateway in their providers.json). Set provider to 'auto'{yours}, or add a gateway with the id '{provider_id}' "
        f"to {display_path(config_dir() / 'providers.json')} (see the README, 'Custom gateways')."
    )


def check_key_for_run(spec: ProviderSpec, model: str, *, batch_delivery: bool = False) -> None:
    """For a provider the workflow names: a MissingKey that says what to do, before anything is prepared.

    A workflow saved by someone else names their provider; when this user has no key for it but has
    one for a provider that offers the model, the error says to switch to it (or to "auto"), rather
    than only where a key for the named provider goes.
    """
    if has_key(spec):
        return
    others = [other for other in auto_order() if other.key_owner != spec.key_owner and other.model(model) is not None and has_key(other)]
    switch = ""
    if others:
        first = others[0]
        switch = (
            f"You have a key for {_names(others)}, which offers {model}: set provider to 'auto' (or '{first.id}') to run it there"
            + (" and delivery to 'now' on the Nano Banana Options node (Batch Mode is Google's only)" if batch_delivery else "")
            + f". To use {spec.display_name}: "
        )
    raise MissingKey(
        f"No API key for '{spec.display_name}', the provider this node is set to.",
        provider=spec.id,
        hint=switch + key_hint(spec, missing=True),
    )


def resolve(
    provider_id: str, model: str, model_id_override: str | None = None, fits: Callable[[ProviderSpec, ModelOffer], object] | None = None
) -> tuple[ProviderSpec, ModelOffer]:
    """The provider and its offer for a run. For "auto", `fits(spec, offer)` (raising a BananaError when
    that provider cannot run the request) makes it pick the first provider with a key that can."""
    if provider_id != AUTO_PROVIDER:
        spec = get_provider(provider_id)
        return spec, resolve_model(spec, model, model_id_override)
    check = None if fits is None else (lambda spec: fits(spec, resolve_model(spec, model, model_id_override)))
    spec = choose_provider(model, check)
    return spec, resolve_model(spec, model, model_id_override)


async def provider_call(
    spec: ProviderSpec, offer: ModelOffer, ctx: CallContext, engine: HttpEngine | None = None, *, max_images: int | None = None, key_slot: int = 0
) -> ProviderCall:
    """The ProviderCall for a spec: its endpoint settled, its key (or Vertex access token) found.

    key_slot: which of the provider's keys to use (0 = the first; see config.api_keys_for).
    """
    module = protocol_module(spec.family)
    if hasattr(module, "prepare"):
        spec = module.prepare(spec)  # e.g. Vertex's regional endpoint: settled before a key goes anywhere
    engine = engine or get_engine()
    keys = api_keys_for(spec)
    if not 0 <= key_slot < len(keys):
        raise ConfigError(f"'{spec.display_name}' has {len(keys)} key(s); there is no key {key_slot + 1}.", provider=spec.id)
    api_key = keys[key_slot]
    if spec.auth == GOOGLE_OAUTH:
        from .vertex_auth import service_account_token

        spec, api_key = await service_account_token(engine, ctx, spec, api_key)
    return ProviderCall(engine=engine, ctx=ctx, provider=spec, model=offer, api_key=api_key, max_images=max_images)


async def generate(
    provider_id: str,
    model: str,
    request: GenerationRequest,
    ctx: CallContext | None = None,
    *,
    model_id_override: str | None = None,
    engine: HttpEngine | None = None,
    resolved: tuple[ProviderSpec, ModelOffer] | None = None,
    key_slot: int = 0,
) -> GenerationResult:
    """Run one generation; raise a BananaError (never return a placeholder) when there is no image.

    resolved: the (provider, model) a run resolved once, so every call of a batch uses the same
    provider and settings even if the config files or keys change meanwhile; else resolved here.
    key_slot: which of the provider's keys to use (0 = the first; see config.api_keys_for).
    """
    ctx = ctx or CallContext()
    spec, offer = resolved or resolve(provider_id, model, model_id_override)
    request, warnings = check_request(spec, offer, request)
    module = protocol_module(spec.family)
    call = await provider_call(spec, offer, ctx, engine, max_images=request.count, key_slot=key_slot)
    started = time.monotonic()
    limiter = limiter_for(spec.id, spec.concurrency)
    acquiring = asyncio.ensure_future(limiter.acquire())
    try:
        await call.engine.watch(ctx, acquiring, f"Waiting for a free {spec.display_name} slot")
    except BaseException:
        if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
            limiter.release()  # acquired in the same instant the wait was abandoned
        raise
    try:
        if isinstance(module, AsyncFamily):
            handle = ctx.resume_task or await module.submit(call, request)
            call.paid_answered = False  # from here on the accepted job's fate is the journal's (polls say nothing of billing)
            if ctx.on_task and handle is not ctx.resume_task:
                ctx.on_task(handle)
            result = await module.wait(call, handle)
        else:
            result = await module.generate(call, request)
    except BananaError as exc:
        if isinstance(exc, AuthError):
            exc.hint = key_hint(spec)  # the engine knows the preset's id, not whose key it reads
        exc.with_context(provider=spec.id, model=offer.model_id)
        if call.paid_answered:
            paid_answer_failed(exc, call.paid_request_id)
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        if not call.paid_answered:
            raise
        # A parser tripped over an answer of an unexpected shape: the generation ran all the same.
        unread = MalformedResponse(f"The provider's answer could not be read: {type(exc).__name__}: {exc}", provider=spec.id, model=offer.model_id)
        raise mark_maybe_billed(unread, call.paid_request_id) from None
    finally:
        limiter.release()
    result.seconds = time.monotonic() - started
    result.warnings = warnings + result.warnings
    price_result(result, offer, request.resolution)
    return result


def paid_answer_failed(error: BananaError, request_id: str | None) -> None:
    """Mark an error raised after a paid request was answered 2xx as maybe billed (so it is never
    resent, nor failed over to another key or provider, and says so): the provider ran the request,
    and only reading the answer or downloading its images failed. Not a refusal (the provider's own
    verdict, reported as such), nor an error the provider reported inside its answer, except one
    that says a gateway gave up waiting (408, 504, 524) or gives no code at all."""
    if error.maybe_billed or isinstance(error, Refusal):
        return
    if error.in_answer and error.status not in (200, 408, 504, 524):
        return
    hint = error.hint
    mark_maybe_billed(error, request_id)
    if hint and "billed" not in hint:  # what to do about the failure itself stays first
        error.hint = f"{hint}\n{error.hint}"
        error.args = (str(error),)


def price_result(result: GenerationResult, offer: ModelOffer, resolution: str | None, discount: float = 1.0) -> None:
    """Fill in the cost and its source: the provider's figure, else its tokens, else the list price."""
    if result.cost is not None:
        result.cost_source = result.cost_source or costs.PROVIDER
        return
    by_tokens = costs.token_cost(offer, result.usage)
    if by_tokens is not None:
        result.cost, result.cost_unit, result.cost_source = round(by_tokens * discount, 6), "usd", costs.TOKENS
        return
    listed = costs.list_cost(offer, resolution, len(result.images))
    if listed is not None:
        result.cost, result.cost_unit, result.cost_source = round(listed * discount, 6), offer.price_unit, costs.LIST_PRICE
