"""What the node's widgets offer and what its price badge shows, derived from the catalog.

Kept free of ComfyUI so it is tested in CI (the badge expression is evaluated with a JSONata engine there).
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from ..providers.catalog import AUTO, MATCH_INPUT, PRESETS, RATIOS_14, RESOLUTIONS_ALL, STABLE_MODEL_NAMES, ProviderSpec
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


def price_table() -> dict[str, dict[str, dict[str, Any]]]:
    """provider -> model -> {"unit", resolution ("" when fixed) -> price per image}, lower-cased as the frontend passes widget values."""
    return _from_catalog(_prices)


def _prices(specs: list[ProviderSpec]) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        for offer in spec.models:
            if offer.prices:
                prices = {k.lower(): v for k, v in offer.prices.items()}
                table.setdefault(spec.id.lower(), {})[offer.name.lower()] = {"unit": offer.price_unit, "prices": prices}
    return table


def price_badge_expr() -> str:
    table = json.dumps(price_table(), separators=(",", ":"))
    return (
        "("
        f"$t := {table};"
        "$m := $lookup($lookup($t, $lowercase(widgets.provider)), $lowercase(widgets.model));"
        "$r := $lookup(widgets, \"model.resolution\");"
        "$r := $r ? $lowercase($r) : \"\";"
        "$p := $m ? ($exists($lookup($m.prices, $r)) ? $lookup($m.prices, $r) : $lookup($m.prices, \"\"));"
        "$n := widgets.count ? widgets.count : 1;"
        "$total := $exists($p) ? $p * $n : 0;"
        "$amount := $m.unit = \"usd\" ? \"~$\" & $formatNumber($total, \"0.00#\") : $string($total) & \" \" & $m.unit;"
        # Text, not the "usd" type: the frontend shows "usd" as Comfy credits, and users pay the provider.
        "$not($exists($p)) ? {\"type\":\"text\",\"text\":\"price: see provider\"}"
        " : {\"type\":\"text\",\"text\": $amount & ($n > 1 ? \" (\" & $string($n) & \" images)\" : \"/image\")}"
        ")"
    )
