"""Providers and models as data.

A model has one stable name across providers ("Nano Banana Pro"); each provider maps it onto
its own id, which differs per reseller (providers.md section 1). A workflow stores the stable
name, so it runs for a user who has a different provider. Capabilities (aspect ratios,
resolutions, reference limits, which parameters are honoured) and prices live here, never in
if/elif chains in protocol or node code.

User-defined gateways are read from a JSON file in the same shape (see config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

NANO_BANANA = "Nano Banana"
NANO_BANANA_PRO = "Nano Banana Pro"
NANO_BANANA_2 = "Nano Banana 2"

RATIOS_10 = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
RATIOS_14 = RATIOS_10 + ("1:4", "4:1", "1:8", "8:1")
AUTO = "auto"  # let the provider decide (Gemini: follow the last reference image, else 1:1)
MATCH_INPUT = "match input"  # the supported ratio nearest the first reference image, chosen here
RESOLUTIONS_ALL = ("0.5K", "1K", "2K", "4K")

FAMILIES = ("gemini", "vertex", "openai_images", "openai_chat", "fal_queue", "async_tasks", "vydra")
GOOGLE_OAUTH = "google-service-account"  # the "key" is a service-account key; calls carry its access token
AUTH_SCHEMES = ("x-goog-api-key", "bearer", "key", GOOGLE_OAUTH)

# Model ids that were renamed or retired, and their successors: a workflow that still names the old id
# runs with the new one and a warning naming both (preview-to-GA renames broke other packs' workflows).
RENAMED_MODEL_IDS: Mapping[str, str] = MappingProxyType(
    {
        "gemini-2.5-flash-image-preview": "gemini-2.5-flash-image",  # GA in Oct 2025; the preview id was discontinued 30 Oct 2025
    }
)

# How a family lists the models a key can use (providers/model_list.py); absent: it cannot.
MODEL_LISTS: Mapping[str, str] = MappingProxyType(
    {"gemini": "gemini", "vertex": "vertex", "openai_chat": "openai", "openai_images": "openai"}
)

# -- Generation options beyond the basics: their values, and who honours them -----------------------

THINKING_LEVELS = ("MINIMAL", "HIGH")  # Gemini 3.1 Flash Image (Google's image-generation docs)
RESPONSE_MODALITIES = ("IMAGE+TEXT", "IMAGE")
HARM_CATEGORIES = ("HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT")
SAFETY_THRESHOLDS = ("BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF")


# Options that depend on the protocol as well as the model (OPTION_RULES rows): the offers of a
# provider whose protocol cannot carry one lose that capability (ProviderSpec narrows them), so the
# one rule refuses or notes it like any other option.
FAMILY_GATED = ("thinking_level", "include_thoughts", "response_modalities", "safety", "history")
_GEMINI_OPTIONS = frozenset(FAMILY_GATED)
# What each protocol can carry; a custom gateway narrows it with "honours" in providers.json.
FAMILY_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "gemini": _GEMINI_OPTIONS,
        "vertex": _GEMINI_OPTIONS,
        "openai_chat": frozenset({"history"}),  # earlier turns as messages: sent, but see UNDOCUMENTED
        "fal_queue": frozenset({"thinking_level"}),  # fal's nano-banana-2 takes thinking_level minimal|high
        "openai_images": frozenset(),
        "async_tasks": frozenset(),
        "vydra": frozenset(),
    }
)
# Options a family sends that its providers do not document: sent, and the result says so.
UNDOCUMENTED: Mapping[str, frozenset[str]] = MappingProxyType({"openai_chat": frozenset({"history"})})


@dataclass(frozen=True)
class ModelOffer:
    """A model as one provider sells it."""

    name: str  # stable, cross-provider name shown in the node
    model_id: str  # this provider's id
    aspect_ratios: tuple[str, ...]  # "W:H" values, plus AUTO where the provider can choose
    resolutions: tuple[str, ...] = ()  # canonical "0.5K".."4K"; empty: fixed (about 1K)
    max_refs: int = 3
    seed: bool = True
    temperature: bool = True
    system_prompt: bool = True
    web_search: bool = False
    max_count: int = 1  # images one call can return (the provider's own n); more run in parallel
    prices: Mapping[str, float] = field(default_factory=dict)  # resolution ("" when fixed) -> price per image
    price_unit: str = "usd"  # "usd" or "credits"
    # USD per 1M tokens ("input", "output_text", "output_image"), where the provider bills by
    # usageMetadata tokens (Google): the ledger computes a call's cost from its tokens with these.
    token_prices: Mapping[str, float] = field(default_factory=dict)
    ids_by_resolution: Mapping[str, str] = field(default_factory=dict)  # resellers bake the tier into the id
    edit_model_id: str | None = None  # a separate endpoint for edits (fal)
    known: bool = True  # False for a free-text id the catalog does not describe
    fixed_resolution: str = "1K"  # the size a model without `resolutions` gives: asking for it is honoured
    best_effort: tuple[str, ...] = ()  # options (OPTION_RULES names) this offer treats as best-effort on top of the global ones
    renamed_from: str | None = None  # the retired id a workflow asked for (RENAMED_MODEL_IDS), for the warning
    # Gemini generation options: what the model takes. ProviderSpec narrows them to what its protocol
    # can carry (FAMILY_OPTIONS), so on a provider that cannot, they read as "not honoured".
    thinking_levels: tuple[str, ...] = ()  # thinkingLevel values the model accepts; empty: not settable
    thoughts: bool = False  # can return its thinking (thought parts, interim images) on request
    response_modalities: tuple[str, ...] = RESPONSE_MODALITIES
    safety_settings: bool = True  # per-category safetySettings
    multi_turn: bool = True  # earlier turns of a conversation in the request

    def id_for(self, resolution: str | None, editing: bool = False) -> str:
        if editing and self.edit_model_id:
            return self.edit_model_id
        return self.ids_by_resolution.get(resolution or "", self.model_id)

    def price(self, resolution: str | None) -> float | None:
        if not self.prices:
            return None
        return self.prices.get(resolution or "", self.prices.get(self.default_resolution or "", None))

    @property
    def default_resolution(self) -> str | None:
        if not self.resolutions:
            return None
        return "1K" if "1K" in self.resolutions else self.resolutions[0]


@dataclass(frozen=True)
class OptionRule:
    """One rule for every generation option a provider might not honour.

    A value the offer cannot honour is refused before anything is sent, with the allowed values,
    unless the option is best-effort (here, or in the offer's `best_effort`): then it is dropped
    and the report says so. `capability` names the ModelOffer attribute that says what is
    honoured: a tuple of allowed values, or a bool (any value, or none). New options (thinking
    level, safety, grounding...) add a GenerationRequest field, a ModelOffer capability and a row.
    """

    option: str  # the GenerationRequest field (and the node's input of the same name)
    capability: str  # the ModelOffer attribute listing what is honoured
    unset: tuple[Any, ...] = (None, "", False)  # values that ask for nothing: never checked, never refused
    best_effort: bool = False
    why: str = ""  # for best-effort options: why dropping it is acceptable (README, messages)
    note: bool = True  # best-effort: say in the report that it was not sent
    turn_off: str = ""  # how to not ask for it, when the node's wording differs from "Leave <option> empty"

    def allowed(self, offer: ModelOffer) -> tuple[Any, ...] | None:
        """The values the offer honours; None: any value."""
        capability = getattr(offer, self.capability)
        if isinstance(capability, bool):
            return None if capability else ()
        if self.capability == "resolutions" and not capability:
            return (offer.fixed_resolution,)  # a fixed size: asking for that size is honoured
        return tuple(capability)

    def is_unset(self, value: Any) -> bool:
        # By type as well as value: a seed of 0 or a temperature of 0.0 is a setting, not False.
        return any(value is u or (type(value) is type(u) and value == u) for u in self.unset)

    def is_best_effort(self, offer: ModelOffer) -> bool:
        return self.best_effort or self.option in offer.best_effort


OPTION_RULES: tuple[OptionRule, ...] = (
    OptionRule("aspect_ratio", "aspect_ratios", unset=(None, "", AUTO)),
    OptionRule("resolution", "resolutions"),
    OptionRule("system_prompt", "system_prompt"),
    OptionRule("web_search", "web_search"),
    OptionRule("temperature", "temperature", best_effort=True, why="a sampling hint: results vary run to run even where it is sent"),
    OptionRule(
        "seed",
        "seed",
        best_effort=True,
        note=False,
        why="no provider promises identical images for a seed; where it is not sent it still makes ComfyUI run the node again",
    ),
    OptionRule("thinking_level", "thinking_levels", turn_off="Set thinking_level to default"),
    OptionRule("include_thoughts", "thoughts", best_effort=True, why="it only adds the thought_image output; the image itself is the same"),
    OptionRule(
        "response_modalities",
        "response_modalities",
        unset=(None, "", RESPONSE_MODALITIES[0]),
        best_effort=True,
        why="IMAGE only asks for fewer words; the image is the same",
    ),
    OptionRule("safety", "safety_settings", unset=((),), turn_off="Set every safety_* option to default"),
    # Continuing without the earlier turns would be another, paid edit: refused, never dropped.
    OptionRule("history", "multi_turn", unset=((),), turn_off="Disconnect the conversation input (or connect the earlier image to image_1 instead)"),
)


def narrowed(offer: ModelOffer, honoured: frozenset[str]) -> ModelOffer:
    """The offer without the FAMILY_GATED capabilities its provider's protocol cannot carry."""
    changes: dict[str, Any] = {}
    for rule in OPTION_RULES:
        if rule.option in FAMILY_GATED and rule.option not in honoured:
            changes[rule.capability] = False if isinstance(getattr(offer, rule.capability), bool) else ()
    return replace(offer, **changes) if changes else offer


def option_rule(option: str) -> OptionRule:
    return next(rule for rule in OPTION_RULES if rule.option == option)


@dataclass(frozen=True)
class ProviderSpec:
    id: str  # stable id: used in workflows, env names (BANANA_<ID>_API_KEY) and the keys file
    display_name: str
    family: str  # protocol module in providers/protocols/
    base_url: str
    auth: str  # one of AUTH_SCHEMES
    models: tuple[ModelOffer, ...]
    key_id: str = ""  # whose key this preset uses (presets of one reseller share a key)
    key_env: tuple[str, ...] = ()  # conventional variable names, after BANANA_<KEY_ID>_API_KEY
    key_help: str = ""  # where a user gets a key
    concurrency: int = 4  # requests in flight at once, process-wide
    read_timeout: float = 360.0  # 4K Pro generations take minutes
    max_wait: float = 900.0  # asynchronous jobs: total wait before giving up (the job is journaled)
    # How long an accepted job's result can still be fetched; a journal entry older than this is
    # removed at load (nothing left to attach to). Where unknown, err long: an entry kept too
    # long costs one failed attach, one removed too early a second payment.
    result_lifetime: float = 24 * 3600.0
    upload_max_pixels: int = 4 * 1024 * 1024  # reference images are downscaled above this
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific knobs
    custom: bool = False
    # https hosts besides the base URL's origin that may receive the key ("host" or "*.domain"); see engine/auth.py.
    auth_hosts: tuple[str, ...] = ()
    honours: frozenset[str] | None = None  # FAMILY_GATED options it carries; None: its family's FAMILY_OPTIONS
    # A 429 from it may come after the request was billed (a reseller that bills a request when it
    # arrives): the engine then never resends a paid request it answered with 429 (policy.py,
    # RATE_LIMITED_MAY_BILL). Settable per provider in providers.json ("rate_limit_may_bill").
    rate_limit_may_bill: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(narrowed(offer, self.honoured_options) for offer in self.models))

    @property
    def honoured_options(self) -> frozenset[str]:
        return self.honours if self.honours is not None else FAMILY_OPTIONS.get(self.family, frozenset())

    @property
    def key_owner(self) -> str:
        return self.key_id or self.id

    def model(self, name: str) -> ModelOffer | None:
        for offer in self.models:
            if offer.name == name or offer.model_id == name:
                return offer
        return None

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


# -- Google's own capabilities, the baseline every reseller's offer starts from --------------------

GOOGLE_MODELS = (
    ModelOffer(
        name=NANO_BANANA,
        model_id="gemini-2.5-flash-image",
        aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_10,
        max_refs=3,
        prices=_freeze({"": 0.039}),
        token_prices=_freeze({"input": 0.30, "output_text": 2.50, "output_image": 30.0}),
    ),
    ModelOffer(
        name=NANO_BANANA_PRO,
        model_id="gemini-3-pro-image-preview",
        aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_10,
        resolutions=("1K", "2K", "4K"),
        max_refs=14,
        web_search=True,
        thoughts=True,  # always thinks; its level is not settable (Google's image-generation docs)
        prices=_freeze({"1K": 0.134, "2K": 0.134, "4K": 0.24}),
        token_prices=_freeze({"input": 2.0, "output_text": 12.0, "output_image": 120.0}),
    ),
    ModelOffer(
        name=NANO_BANANA_2,
        model_id="gemini-3.1-flash-image-preview",
        aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_14,
        resolutions=RESOLUTIONS_ALL,
        max_refs=14,
        web_search=True,
        thinking_levels=THINKING_LEVELS,
        thoughts=True,
        prices=_freeze({"0.5K": 0.045, "1K": 0.067, "2K": 0.101, "4K": 0.151}),
        token_prices=_freeze({"input": 0.50, "output_text": 3.0, "output_image": 60.0}),
    ),
)


def _offer(name: str, model_id: str, **changes: Any) -> ModelOffer:
    base = next(m for m in GOOGLE_MODELS if m.name == name)
    for key in ("prices", "ids_by_resolution", "token_prices"):
        if key in changes:
            changes[key] = _freeze(changes[key])
    changes.setdefault("prices", _freeze({}))
    changes.setdefault("token_prices", _freeze({}))  # resellers bill per image, not by Google's tokens
    return replace(base, model_id=model_id, **changes)


_NO_SAMPLING = dict(seed=False, temperature=False, system_prompt=False)

# Ratios per providers.md 3.5 ("4x3" ... "3x2"; "1x1" seen in the wild); the tier is in the model id.
_OPENAI_HK_RATIOS = (AUTO, MATCH_INPUT, "1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9")
_OPENAI_HK_MODELS = (
    _offer(NANO_BANANA, "nano-banana", aspect_ratios=_OPENAI_HK_RATIOS, **_NO_SAMPLING),
    # openai-hk's nano-banana-2 launched the day after Nano Banana Pro: it is Pro there.
    _offer(
        NANO_BANANA_PRO,
        "nano-banana-2",
        aspect_ratios=_OPENAI_HK_RATIOS,
        ids_by_resolution={"1K": "nano-banana-2", "2K": "nano-banana-2-2k", "4K": "nano-banana-2-4k"},
        web_search=False,
        **_NO_SAMPLING,
    ),
    _offer(
        NANO_BANANA_2,
        "gemini-3.1-flash-image-preview",
        aspect_ratios=_OPENAI_HK_RATIOS,
        resolutions=("1K", "2K", "4K"),
        ids_by_resolution={"2K": "gemini-3.1-flash-image-preview-2k", "4K": "gemini-3.1-flash-image-preview-4k"},
        web_search=False,
        **_NO_SAMPLING,
    ),
)

# -- The presets ---------------------------------------------------------------------------------

PRESETS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        id="google",
        display_name="Google Gemini API",
        family="gemini",
        base_url="https://generativelanguage.googleapis.com/v1beta",
        auth="x-goog-api-key",
        models=GOOGLE_MODELS,
        key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        key_help="https://aistudio.google.com/apikey (image models need billing enabled)",
        concurrency=4,
        # Batch Mode (delivery "batch"): half price, up to 24 h (nodes/batch_mode.py). Inline requests
        # up to Google's 20 MB, a JSONL file through the Files API beyond it.
        options=_freeze({"batch_mode": True, "batch_discount": 0.5, "batch_inline_bytes": 20_000_000, "batch_max_wait": 3600.0, "poll_first_delay": 5.0, "poll_max_delay": 30.0}),
    ),
    ProviderSpec(
        id="vertex",
        display_name="Google Vertex AI (service account)",
        family="vertex",
        base_url="https://aiplatform.googleapis.com/v1",  # a regional location moves it to {location}-aiplatform...
        auth=GOOGLE_OAUTH,
        models=tuple(_offer(m.name, m.model_id) for m in GOOGLE_MODELS),
        key_env=("GOOGLE_APPLICATION_CREDENTIALS",),
        key_help="a service-account key file from the Google Cloud console (IAM, Service accounts, Keys); needs the google-auth package",
        options=_freeze({"project": "", "location": "", "express": False}),
    ),
    ProviderSpec(
        id="vertex_express",
        display_name="Google Vertex AI (express mode)",
        family="vertex",
        base_url="https://aiplatform.googleapis.com/v1",
        auth="x-goog-api-key",
        models=tuple(_offer(m.name, m.model_id) for m in GOOGLE_MODELS),
        key_help="https://console.cloud.google.com/vertex-ai (express mode API key)",
        options=_freeze({"express": True}),
    ),
    ProviderSpec(
        id="apiyi",
        display_name="APIYI (Gemini native)",
        family="gemini",
        base_url="https://api.apiyi.com/v1beta",
        auth="bearer",
        models=tuple(_offer(m.name, m.model_id) for m in GOOGLE_MODELS),
        key_help="https://api.apiyi.com (token page); keys start with sk-",
        concurrency=4,
        read_timeout=600.0,  # APIYI: 360 s, 600 s for 4K or many references
        # Its gateway sends interim drafts as ordinary image parts before the final one (providers.md 2.4).
        options=_freeze({"keep_images": "last"}),
        # APIYI bills a synchronous call on receipt (providers.md 2.4) and calls its 429s upstream
        # capacity; whether a 429'd call was billed is UNVERIFIED, so it is never resent.
        rate_limit_may_bill=True,
    ),
    ProviderSpec(
        id="apiyi_chat",
        display_name="APIYI (chat mode)",
        family="openai_chat",
        base_url="https://api.apiyi.com/v1",
        auth="bearer",
        key_id="apiyi",
        # Compat mode has no ratio or size control (generation is 1:1, edits follow the input) and no search.
        models=tuple(_offer(m.name, m.model_id, aspect_ratios=(AUTO,), resolutions=(), web_search=False, **_NO_SAMPLING) for m in GOOGLE_MODELS),
        key_help="https://api.apiyi.com (token page); keys start with sk-",
        read_timeout=600.0,
        options=_freeze({"size_controls": "none", "keep_images": "last"}),
        rate_limit_may_bill=True,  # as apiyi: billed on receipt
    ),
    ProviderSpec(
        id="openai_hk",
        display_name="openai-hk (OpenAI Images)",
        family="openai_images",
        base_url="https://api.openai-hk.com/v1",
        auth="bearer",
        models=_OPENAI_HK_MODELS,
        key_help="https://openai-hk.com (keys start with hk-)",
        # The ratio goes in `size` as "16x9" (not pixels); which of url/b64_json nano-banana returns is
        # UNVERIFIED (both are read). Override with BANANA_OPENAI_HK_<OPTION> (see openai_images.py).
        options=_freeze(
            {"ratio_field": "size", "ratio_format": "{w}x{h}", "resolution_field": None, "response_format": "b64_json", "send_n": True, "edit_field": "image[]"}
        ),
    ),
    ProviderSpec(
        id="openai_hk_chat",
        display_name="openai-hk (chat mode)",
        family="openai_chat",
        base_url="https://api.openai-hk.com/v1",
        auth="bearer",
        key_id="openai_hk",
        # Chat mode has no size control: the tier is in the model id, the ratio follows the input (else 1:1).
        models=tuple(replace(m, aspect_ratios=(AUTO,)) for m in _OPENAI_HK_MODELS),
        key_help="https://openai-hk.com (keys start with hk-)",
        options=_freeze({"size_controls": "none"}),
    ),
    ProviderSpec(
        id="openai_hk_fal",
        display_name="openai-hk (fal passthrough)",
        family="fal_queue",
        base_url="https://api.openai-hk.com",
        auth="bearer",
        key_id="openai_hk",
        models=(
            _offer(NANO_BANANA, "fal-ai/nano-banana", edit_model_id="fal-ai/nano-banana/edit", max_count=4, temperature=False, system_prompt=False),
            # enable_web_search is documented for fal's nano-banana-2 only (providers.md 5.4).
            _offer(NANO_BANANA_PRO, "fal-ai/nano-banana-pro", edit_model_id="fal-ai/nano-banana-pro/edit", max_count=4, temperature=False, system_prompt=False, web_search=False),
            _offer(NANO_BANANA_2, "fal-ai/nano-banana-2", edit_model_id="fal-ai/nano-banana-2/edit", max_count=4, temperature=False, system_prompt=False),
        ),
        key_help="https://openai-hk.com (keys start with hk-)",
        result_lifetime=7 * 24 * 3600.0,  # UNVERIFIED for the passthrough: a week, erring long
        # The passthrough answers with fal's queue.fal.run URLs: moved onto the base URL (5.8).
        # Polling: fal's cadence (below), but a reseller's rate limits are unknown: half fal's budget.
        options=_freeze({"rewrite_queue_urls": True, "output_format": "png", "poll_first_delay": 0.25, "poll_max_delay": 2.0, "poll_budget": 60}),
    ),
    ProviderSpec(
        id="fal",
        display_name="fal.ai",
        family="fal_queue",
        base_url="https://queue.fal.run",
        auth="key",
        models=(
            _offer(NANO_BANANA, "fal-ai/nano-banana", edit_model_id="fal-ai/nano-banana/edit", max_count=4, temperature=False, system_prompt=False, prices={"": 0.039}),
            _offer(NANO_BANANA_PRO, "fal-ai/nano-banana-pro", edit_model_id="fal-ai/nano-banana-pro/edit", max_count=4, temperature=False, system_prompt=False, web_search=False, prices={"1K": 0.15, "2K": 0.15, "4K": 0.30}),
            # fal's page (fal.ai/models/fal-ai/nano-banana-2/edit/llms.txt): $0.08 per image at 1K, 0.75x at 0.5K,
            # 1.5x at 2K, 2x at 4K; web search adds $0.015 and high thinking $0.002, which the list price leaves out.
            _offer(NANO_BANANA_2, "fal-ai/nano-banana-2", edit_model_id="fal-ai/nano-banana-2/edit", max_count=4, temperature=False, system_prompt=False, prices={"0.5K": 0.06, "1K": 0.08, "2K": 0.12, "4K": 0.16}),
        ),
        key_env=("FAL_KEY",),
        key_help="https://fal.ai/dashboard/keys",
        concurrency=8,
        result_lifetime=30 * 24 * 3600.0,  # request payloads are kept 30 days (providers.md 5.7)
        auth_hosts=("*.fal.run",),  # the queue's status/result/cancel URLs (queue.fal.run)
        # Polling: fal's own client polls its queue every 0.1 s; we back off to 1 s, at most 120 a minute.
        options=_freeze({"rewrite_queue_urls": False, "output_format": "png", "poll_first_delay": 0.25, "poll_max_delay": 1.0, "poll_budget": 120}),
    ),
    ProviderSpec(
        id="apimaster",
        display_name="APIMaster",
        family="async_tasks",
        base_url="https://apimaster.ai/v1",
        auth="bearer",
        models=(
            # Its search-grounding request key is undocumented (providers.md section 10): no web search.
            _offer(NANO_BANANA, "gemini-2.5-flash-image", **_NO_SAMPLING),
            _offer(NANO_BANANA_PRO, "gemini-3-pro-image-preview", web_search=False, **_NO_SAMPLING),
            _offer(NANO_BANANA_2, "gemini-3.1-flash-image-preview", aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_10 + ("1:4", "4:1"), web_search=False, **_NO_SAMPLING),
        ),
        key_help="https://apimaster.ai (console, API keys)",
        result_lifetime=24 * 3600.0,  # results expire 24 h after completion (expires_at, providers.md section 10)
        # Async endpoint (a journaled task id), not the sync one; references go inline (no upload API).
        # Polling: no documented cadence; EvoLink's (same task model) is used, at most 30 a minute.
        options=_freeze({"flavor": "apimart", "ratio_field": "size", "resolution_field": "resolution", "cancel_path": None, "poll_first_delay": 0.25, "poll_max_delay": 3.0, "poll_budget": 30}),
    ),
    ProviderSpec(
        id="evolink",
        display_name="EvoLink",
        family="async_tasks",
        base_url="https://api.evolink.ai/v1",
        auth="bearer",
        models=(
            # Web/image search flags exist but their key names are UNVERIFIED (section 10): not offered.
            _offer(NANO_BANANA, "gemini-2.5-flash-image", max_refs=5, max_count=4, **_NO_SAMPLING),
            _offer(NANO_BANANA_PRO, "gemini-3-pro-image-preview", max_refs=10, max_count=4, web_search=False, **_NO_SAMPLING),
            _offer(NANO_BANANA_2, "gemini-3.1-flash-image-preview", max_count=4, web_search=False, **_NO_SAMPLING),
        ),
        key_help="https://evolink.ai (dashboard, API keys)",
        result_lifetime=24 * 3600.0,  # result URLs and tasks expire after 24 h (providers.md section 10)
        auth_hosts=("files-api.evolink.ai",),  # its file API for reference uploads
        # EvoLink's pages disagree on the field names (providers.md section 10): configurable,
        # BANANA_EVOLINK_RATIO_FIELD=size / BANANA_EVOLINK_RESOLUTION_FIELD=quality, or a custom provider.
        # References are uploaded to its file API (URLs only) and deleted when the job is over.
        options=_freeze(
            {
                "flavor": "evolink",
                "ratio_field": "aspect_ratio",
                "resolution_field": "resolution",
                "upload_url": "https://files-api.evolink.ai/api/v1/files/upload/base64",
                "file_delete_url": "https://files-api.evolink.ai/api/v1/files/{file_id}",
                "cancel_path": None,
                # Polling: documented "every 3-5 s" (providers.md 7.1); the first polls come sooner
                # so a finished job returns at once, and a job makes at most 30 polls a minute.
                "poll_first_delay": 0.25,
                "poll_max_delay": 3.0,
                "poll_budget": 30,
            }
        ),
    ),
    ProviderSpec(
        id="vydra",
        display_name="Vydra",
        family="vydra",
        base_url="https://vydra.app/api/v1",
        auth="bearer",
        models=(
            _offer(NANO_BANANA, "nano-banana", aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_10, max_refs=1, prices={"": 8}, price_unit="credits", **_NO_SAMPLING),
        ),
        key_help="https://www.vydra.ai (account, API keys)",
        concurrency=5,  # the starter plan allows 5 concurrent requests
    ),
)


def custom_provider_from_dict(data: Any) -> ProviderSpec:
    """Build a user-defined gateway from the providers file (see config.py for the format).

    Errors name the entry by its id, never by its content: a misplaced key must not be echoed.
    """
    from .errors import ConfigError

    if not isinstance(data, dict):
        raise ConfigError(f"Each entry of 'providers' must be a JSON object, got {type(data).__name__}.", hint="See the README, 'Custom gateways', for the format.")
    label = str(data.get("id") or "(no id)")
    missing = [k for k in ("id", "protocol", "base_url", "models") if not data.get(k)]
    if missing:
        raise ConfigError(f"Custom provider '{label}' is missing {', '.join(missing)}.", hint="Each entry needs id, protocol, base_url and models.")
    provider_id = str(data["id"]).strip().lower()
    family = str(data["protocol"]).strip().replace("-", "_")
    base_url = str(data["base_url"]).rstrip("/")
    auth = str(data.get("auth", "bearer")).strip().lower()
    if family not in FAMILIES:
        raise ConfigError(f"Custom provider '{provider_id}': unknown protocol '{family}'.", hint=f"Use one of: {', '.join(f.replace('_', '-') for f in FAMILIES)}.")
    if auth not in AUTH_SCHEMES:
        raise ConfigError(f"Custom provider '{provider_id}': unknown auth '{auth}'.", hint=f"Use one of: {', '.join(AUTH_SCHEMES)}.")
    if not isinstance(data["models"], list):
        raise ConfigError(f"Custom provider '{provider_id}': 'models' must be a list of model ids or objects.")
    models = []
    for raw in data["models"]:
        if isinstance(raw, str):
            raw = {"id": raw}
        if not isinstance(raw, dict) or not raw.get("id"):
            raise ConfigError(f"Custom provider '{provider_id}': every model needs an 'id' (the gateway's model id).", hint='Write "models": ["gemini-3-pro-image-preview"] or [{"id": "...", "name": "Nano Banana Pro"}].')
        name = str(raw.get("name") or _stable_name(raw["id"]) or raw["id"])
        base = next((m for m in GOOGLE_MODELS if m.name == name), None)
        if base is None:
            models.append(ModelOffer(name=name, model_id=raw["id"], aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_14, resolutions=RESOLUTIONS_ALL, max_refs=14, known=False))
            continue
        changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in ModelOffer.__dataclass_fields__ and k not in ("name", "id")}
        models.append(_offer(name, raw["id"], **changes))
    honours = data.get("honours")
    if honours is not None:
        names = set(FAMILY_GATED)
        if not isinstance(honours, list) or not all(isinstance(h, str) and h in names for h in honours):
            raise ConfigError(f"Custom provider '{provider_id}': 'honours' must be a list of option names.", hint=f"Use any of: {', '.join(sorted(names))}.")
        honours = frozenset(honours) & FAMILY_OPTIONS.get(family, frozenset())  # a gateway cannot add what its protocol cannot send
    try:
        limits: dict[str, Any] = dict(concurrency=int(data.get("concurrency", 4)), read_timeout=float(data.get("timeout", 360.0)))
    except (TypeError, ValueError):
        raise ConfigError(f"Custom provider '{provider_id}': concurrency and timeout must be numbers.") from None
    return ProviderSpec(
        id=provider_id,
        display_name=str(data.get("display_name") or provider_id),
        family=family,
        base_url=base_url,
        auth=auth,
        models=tuple(models),
        options=_freeze(data.get("options") or {}),
        key_help=str(data.get("key_help", "")),
        auth_hosts=tuple(str(host) for host in data.get("auth_hosts") or () if isinstance(host, str)),
        custom=True,
        honours=honours,
        **limits,
    )


def _stable_name(model_id: str) -> str | None:
    """Recognise Google's own ids in a custom gateway's model list, so capabilities carry over."""
    for offer in GOOGLE_MODELS:
        if model_id == offer.model_id:
            return offer.name
    return None


def unknown_model(name_or_id: str) -> ModelOffer:
    """A free-text model id: capability checks relaxed; the node warns."""
    known = _stable_name(name_or_id)
    if known:
        return replace(next(m for m in GOOGLE_MODELS if m.name == known), model_id=name_or_id)
    return ModelOffer(name=name_or_id, model_id=name_or_id, aspect_ratios=(AUTO, MATCH_INPUT) + RATIOS_14, resolutions=RESOLUTIONS_ALL, max_refs=14, known=False)


STABLE_MODEL_NAMES = (NANO_BANANA, NANO_BANANA_PRO, NANO_BANANA_2)
