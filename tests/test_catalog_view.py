"""The node's widget lists and price badge, derived from the catalog."""

from __future__ import annotations

import json

import jsonata
import pytest

from banana_pack.nodes.catalog_view import model_capabilities, price_badge_expr
from banana_pack.providers.catalog import PRESETS


def badge(**widgets):
    return jsonata.Jsonata(price_badge_expr()).evaluate({"widgets": widgets})


@pytest.mark.parametrize("spec", PRESETS, ids=lambda s: s.id)
def test_badge_matches_the_catalog_for_every_offer(spec):
    for offer in spec.models:
        for resolution in offer.resolutions or ("",):
            for count in (1, 3):
                # The frontend hands combo values to the expression in lower case.
                got = badge(provider=spec.id, model=offer.name.lower(), count=count, **({"model.resolution": resolution.lower()} if resolution else {}))
                price = offer.price(resolution or None)
                suffix = f" ({count} images)" if count > 1 else "/image"
                if price is None:
                    assert got == {"type": "text", "text": "price: see provider"}
                elif offer.price_unit == "usd":
                    assert got["type"] == "text" and got["text"].startswith("~$") and got["text"].endswith(suffix)
                    assert float(got["text"][2:].split(" ")[0].split("/")[0]) == pytest.approx(price * count, abs=0.0051)
                else:
                    assert got == {"type": "text", "text": f"{price * count:g} {offer.price_unit}{suffix}"}


def test_badge_for_auto_and_unknown_values():
    assert badge(provider="auto", model="nano banana pro", count=1)["type"] == "text"
    assert badge(provider="google", model="not a model", count=1)["type"] == "text"
    # A fixed-size model ignores a stale resolution left from another model.
    assert badge(provider="google", model="nano banana", count=2, **{"model.resolution": "4k"})["text"] == "~$0.078 (2 images)"
    assert badge(provider="google", model="nano banana pro", count=1, **{"model.resolution": "4k"})["text"] == "~$0.24/image"


def test_widget_lists_are_the_union_over_providers():
    caps = model_capabilities()
    assert caps["Nano Banana 2"]["ratios"][:2] == ["auto", "match input"] and "8:1" in caps["Nano Banana 2"]["ratios"]
    assert "8:1" not in caps["Nano Banana Pro"]["ratios"]
    assert caps["Nano Banana Pro"]["resolutions"] == ["1K", "2K", "4K"] and caps["Nano Banana 2"]["resolutions"][0] == "0.5K"
    assert caps["Nano Banana"]["resolutions"] == [] and caps["Nano Banana Pro"]["max_refs"] == 14


def test_frontend_catalog_says_which_providers_have_keys_without_the_keys(monkeypatch):
    from banana_pack.nodes.routes import catalog_summary

    monkeypatch.setenv("FAL_KEY", "fal-secret-key-0123456789")
    monkeypatch.setenv("BANANA_PROVIDER_ORDER", "fal,google")
    summary = catalog_summary()
    flags = {p["id"]: p["has_key"] for p in summary["providers"]}
    assert flags["fal"] is True and flags["google"] is False
    assert summary["auto"]["Nano Banana Pro"] == "fal"
    assert summary["providers"][0]["models"]["Nano Banana Pro"]["prices"]["4K"] == 0.24
    assert "fal-secret-key-0123456789" not in json.dumps(summary)
