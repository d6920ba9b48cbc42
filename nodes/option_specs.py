"""The advanced settings of the Nano Banana Bridge node, as data.

The "Nano Banana Options" node (options.py) turns each spec into a widget and outputs a plain,
JSON-serialisable dict; the main node reads it through `resolve_options`, which fills in the
default of every missing key. So a workflow saved without the options node, or before an option
existed, still runs, and an option is added by appending one spec to OPTION_SPECS (and reading
it where it is used). Free of ComfyUI, so it is tested in CI.

Every value is untrusted (a workflow carries it): `resolve_options` checks type, range and
choices, and says what to do when one is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..providers.catalog import HARM_CATEGORIES, RESPONSE_MODALITIES, SAFETY_THRESHOLDS, THINKING_LEVELS
from ..providers.errors import ConfigError
from .store import STORE_FOLDER

SOCKET_TYPE = "NANO_BANANA_OPTIONS"  # the custom socket type between the two nodes
MODEL_DEFAULT = "default"  # a combo value meaning "not sent: the model's own default"
SAFETY_OPTION_PREFIX = "safety_"


@dataclass(frozen=True)
class OptionSpec:
    """One advanced setting. The kind follows from the default: bool, int, float, str, or a combo when `choices` is set."""

    name: str
    default: Any
    tooltip: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    multiline: bool = False
    max_length: int = 20_000  # strings: a workflow can carry anything
    optional: bool = False  # added after API prompts were written: an absent value takes the default, not a validation error

    @property
    def kind(self) -> str:
        if self.choices:
            return "combo"
        return {bool: "bool", int: "int", float: "float", str: "str"}[type(self.default)]

    def coerce(self, value: Any) -> Any:
        """The value checked against this spec, or ConfigError saying what is accepted."""
        kind = self.kind
        if kind == "combo":
            if isinstance(value, str) and value in self.choices:
                return value
            raise self._error(value, f"one of: {', '.join(self.choices)}")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise self._error(value, "true or false")
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self._error(value, "a number")
            if kind == "int" and value != int(value):
                raise self._error(value, "a whole number")
            if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
                raise self._error(value, f"a number from {self.minimum:g} to {self.maximum:g}")
            return int(value) if kind == "int" else float(value)
        if not isinstance(value, str) or len(value) > self.max_length:
            raise self._error(value, f"text of at most {self.max_length} characters")
        return value

    def _error(self, value: Any, accepted: str) -> ConfigError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ConfigError(
            f"Nano Banana Options: '{self.name}' is {shown}; it must be {accepted}.",
            hint=f"Set '{self.name}' on the Nano Banana Options node (or remove the key from the API prompt to use the default, {self.default!r}).",
        )


OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "on_failure",
        "fail",
        "When some items are refused or fail: fail the node (finished images stay saved), skip them, or keep going and list them at the top of the text output.",
        choices=("fail", "skip", "flag"),
    ),
    OptionSpec(
        "size_policy",
        "resize",
        "Results of different sizes become one batch the size of the first: stretched, letterboxed or centre-cropped.",
        choices=("resize", "pad", "crop"),
    ),
    OptionSpec("system_prompt", "", "Sent where the model honours a system instruction.", multiline=True),
    OptionSpec("temperature", 1.0, "1.0 is the model's default and is not sent.", minimum=0.0, maximum=2.0, step=0.05),
    OptionSpec("web_search", False, "Google Search grounding (Pro and Nano Banana 2, where the provider supports it)."),
    OptionSpec(
        "upload_format",
        "auto",
        "auto: JPEG q95 for opaque images (a quarter of PNG's size), PNG when there is transparency. png: lossless.",
        choices=("auto", "png", "jpeg", "webp"),
    ),
    OptionSpec("use_cache", True, "Answer an identical request (same provider, model, prompt, images, settings and seed) from the saved result, even after a restart."),
    OptionSpec("save_to", STORE_FOLDER, "Folder under ComfyUI's output directory for every result and its provenance. Empty: don't save (and no cache).", max_length=500),
    OptionSpec("model_id_override", "", "Send this model id instead of the catalog's (a newer or reseller-specific id); checks are relaxed.", max_length=500),
    # Gemini generation options: where a provider or model cannot honour one, the result says so
    # (catalog.GENERATION_OPTIONS holds who honours what).
    OptionSpec(
        "thinking_level",
        MODEL_DEFAULT,
        "How much Nano Banana 2 thinks before drawing (Gemini API, APIYI native, fal). Pro always thinks; Nano Banana does not. default: not sent (MINIMAL).",
        choices=(MODEL_DEFAULT,) + THINKING_LEVELS,
        optional=True,
    ),
    OptionSpec(
        "include_thoughts",
        False,
        "Return the model's thinking (Pro and Nano Banana 2, Gemini-native providers): its first interim image goes to the thought_image output, "
        "which is an empty 1024x1024 image when there is none (thinking_level HIGH and IMAGE+TEXT give the most).",
        optional=True,
    ),
    OptionSpec(
        "response_modalities",
        RESPONSE_MODALITIES[0],
        "IMAGE+TEXT: the model may add words (the text output). IMAGE: ask for the image only (fewer, not always no, words). Gemini-native providers only.",
        choices=RESPONSE_MODALITIES,
        optional=True,
    ),
    *(
        OptionSpec(
            SAFETY_OPTION_PREFIX + category.removeprefix("HARM_CATEGORY_").lower(),
            MODEL_DEFAULT,
            f"Block threshold for {category.removeprefix('HARM_CATEGORY_').replace('_', ' ').lower()} (Gemini-native providers only; "
            "the image-output filter is not configurable). default: not sent.",
            choices=(MODEL_DEFAULT,) + SAFETY_THRESHOLDS,
            optional=True,
        )
        for category in HARM_CATEGORIES
    ),
    OptionSpec(
        "delivery",
        "now",
        "now: one request per image, answers in seconds. batch: Google's Batch Mode (Gemini API only): the run's items go as one batch job "
        "at half price, answered within 24 hours (usually minutes); re-queue the same run to collect it after a restart.",
        choices=("now", "batch"),
        optional=True,
    ),
    OptionSpec(
        "dry_run",
        False,
        "Send nothing: the report and text list, per call, the exact request that would be sent (keys redacted, image bytes summarised) "
        "and its estimated cost. The images output produces no image, so nothing downstream runs on it.",
        optional=True,
    ),
)

SPECS_BY_NAME: Mapping[str, OptionSpec] = {spec.name: spec for spec in OPTION_SPECS}


def default_options() -> dict[str, Any]:
    return {spec.name: spec.default for spec in OPTION_SPECS}


def resolve_options(value: Any, legacy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option, from the options socket's dict, then `legacy` values, then the defaults.

    `legacy` holds the same keys given as the main node's own inputs (API prompts written
    before the options node existed). Keys this version does not know are ignored, so a
    workflow from a newer version still runs here.
    """
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"The options input must come from a Nano Banana Options node, got {type(value).__name__}.",
            hint="Connect a Nano Banana Options node to 'options', or disconnect it to use the defaults.",
        )
    resolved = default_options()
    for source in (legacy or {}, value):
        for name, raw in source.items():
            spec = SPECS_BY_NAME.get(name)
            if spec is not None and raw is not None:
                resolved[name] = spec.coerce(raw)
    return resolved


def generation_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved options as GenerationRequest fields (unset ones as "not asked for")."""
    safety = tuple(
        (category, opts[SAFETY_OPTION_PREFIX + category.removeprefix("HARM_CATEGORY_").lower()])
        for category in HARM_CATEGORIES
        if opts.get(SAFETY_OPTION_PREFIX + category.removeprefix("HARM_CATEGORY_").lower(), MODEL_DEFAULT) != MODEL_DEFAULT
    )
    return {
        "thinking_level": None if opts.get("thinking_level", MODEL_DEFAULT) == MODEL_DEFAULT else opts["thinking_level"],
        "include_thoughts": bool(opts.get("include_thoughts", False)),
        "response_modalities": None if opts.get("response_modalities", RESPONSE_MODALITIES[0]) == RESPONSE_MODALITIES[0] else opts["response_modalities"],
        "safety": safety,
    }
