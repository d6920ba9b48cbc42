"""What the node's widgets offer, derived from the catalog, and how model choices are labelled.

Kept free of ComfyUI so it is tested in CI. The price badge is drawn by the frontend
(web/js/nbb_logic.js) from the /nano_banana_bridge/catalog route, with the same per-image list
prices the run's report uses.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from ..providers.catalog import AUTO, MATCH_INPUT, NANO_BANANA, NANO_BANANA_2, NANO_BANANA_PRO, PRESETS, RATIOS_14, RESOLUTIONS_ALL, STABLE_MODEL_NAMES, ProviderSpec
from ..providers.config import schema_providers, warn_once
from ..providers.redaction import redact

T = TypeVar("T")


def _from_catalog(build: Callable[[list[ProviderSpec]], T]) -> T:
    """Build from the configured providers; if a custom entry breaks the build, from the presets.

    The schema is built from this, and ComfyUI drops a node whose schema raises.
    """
    try:
        return build(schema_providers())
    except Exception as exc:  # noqa: BLE001 - a bad value in providers.json must not remove the node
        warn_once("Nano Banana Bridge: the node lists the built-in presets only: %s", redact(exc))
        return build(list(PRESETS))


def model_capabilities() -> dict[str, dict[str, Any]]:
    """Per stable model, the union of what any provider offers: the node lists these; the provider chosen at run time is checked exactly."""
    return _from_catalog(_capabilities)


def _capabilities(specs: list[ProviderSpec]) -> dict[str, dict[str, Any]]:
    caps: dict[str, dict[str, Any]] = {name: {"ratios": set(), "resolutions": set(), "max_refs": 0} for name in STABLE_MODEL_NAMES}
    for spec in specs:
        for offer in spec.models:
            if offer.name in caps:
                cap = caps[offer.name]
                cap["ratios"].update(offer.aspect_ratios)
                cap["resolutions"].update(offer.resolutions)
                cap["max_refs"] = max(cap["max_refs"], offer.max_refs)
    order = (AUTO, MATCH_INPUT) + RATIOS_14
    for cap in caps.values():
        cap["ratios"] = [r for r in order if r in cap["ratios"]]
        cap["resolutions"] = [r for r in RESOLUTIONS_ALL if r in cap["resolutions"]]
    return caps


# Google's own names, shown beside the nickname so a user knows which model they pay for.
GEMINI_NAMES = {
    NANO_BANANA_2: "Gemini 3.1 Flash Image",
    NANO_BANANA_PRO: "Gemini 3 Pro Image",
    NANO_BANANA: "Gemini 2.5 Flash Image",
}
# The node's model list, newest first: the first is the default of a fresh node.
MODEL_ORDER = (NANO_BANANA_2, NANO_BANANA_PRO, NANO_BANANA)


def model_label(name: str) -> str:
    """"Nano Banana Pro (Gemini 3 Pro Image)": the node's choice for a stable model name."""
    gemini = GEMINI_NAMES.get(name)
    return f"{name} ({gemini})" if gemini else name


def model_from_choice(value: object) -> str | None:
    """The stable model name for a node choice: a label, or the bare name older workflows saved; None if unknown."""
    if not isinstance(value, str):
        return None
    name = value.split(" (", 1)[0].strip()
    return name if name in STABLE_MODEL_NAMES else None
