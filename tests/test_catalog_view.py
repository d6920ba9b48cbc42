"""The node's widget lists and model labels, derived from the catalog."""

from __future__ import annotations

import json

from banana_pack.nodes.catalog_view import MODEL_ORDER, model_capabilities, model_from_choice, model_label
from banana_pack.providers.catalog import STABLE_MODEL_NAMES


def test_model_labels_show_the_gemini_name_and_map_back():
    assert model_label("Nano Banana Pro") == "Nano Banana Pro (Gemini 3 Pro Image)"
    assert [model_label(n) for n in MODEL_ORDER][0] == "Nano Banana 2 (Gemini 3.1 Flash Image)"  # the default: newest
    for name in STABLE_MODEL_NAMES:
        assert model_from_choice(model_label(name)) == name
        assert model_from_choice(name) == name  # workflows saved before the labels
    assert model_from_choice("Nano Banana 9 (Gemini 9)") is None and model_from_choice(None) is None


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
