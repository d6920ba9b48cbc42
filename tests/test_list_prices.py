"""List prices: what the frontend's badge draws (the /nano_banana_bridge/catalog route) and what a run
reports, checked against prices written here from the providers' own pages, not read from the catalog."""

from __future__ import annotations

import pytest

from banana_pack.nodes.routes import catalog_summary
from banana_pack.providers import GenerationRequest, generate
from fake_providers import point_presets_at, script_all
from helpers import run

# https://ai.google.dev/gemini-api/docs/pricing: image output is billed per token; one image is
# 1290 tokens (2.5 Flash Image), 1120 (3 Pro Image at 1K and 2K) or 2000 (at 4K).
GOOGLE_PER_TOKEN = {"Nano Banana": 30 / 1e6, "Nano Banana Pro": 120 / 1e6}
GOOGLE = {
    ("Nano Banana", ""): 1290 * GOOGLE_PER_TOKEN["Nano Banana"],  # $0.039
    ("Nano Banana Pro", "1K"): 1120 * GOOGLE_PER_TOKEN["Nano Banana Pro"],  # $0.134
    ("Nano Banana Pro", "2K"): 1120 * GOOGLE_PER_TOKEN["Nano Banana Pro"],
    ("Nano Banana Pro", "4K"): 2000 * GOOGLE_PER_TOKEN["Nano Banana Pro"],  # $0.24
    # Gemini 3.1 Flash Image, per image as the pricing page lists it.
    ("Nano Banana 2", "0.5K"): 0.045,
    ("Nano Banana 2", "1K"): 0.067,
    ("Nano Banana 2", "2K"): 0.101,
    ("Nano Banana 2", "4K"): 0.151,
}
# https://fal.ai/models/fal-ai/nano-banana and https://fal.ai/models/fal-ai/nano-banana-pro: per image; 4K costs double.
# https://fal.ai/models/fal-ai/nano-banana-2/edit/llms.txt: $0.08 at 1K; 0.5K 0.75x, 2K 1.5x, 4K 2x.
FAL = {
    ("Nano Banana", ""): 0.039,
    ("Nano Banana Pro", "1K"): 0.15,
    ("Nano Banana Pro", "2K"): 0.15,
    ("Nano Banana Pro", "4K"): 0.30,
    ("Nano Banana 2", "0.5K"): 0.08 * 0.75,
    ("Nano Banana 2", "1K"): 0.08,
    ("Nano Banana 2", "2K"): 0.08 * 1.5,
    ("Nano Banana 2", "4K"): 0.08 * 2,
}
# https://www.vydra.ai/docs/models/nano-banana: 8 credits per image.
VYDRA = {("Nano Banana", ""): 8}


def listed(summary, provider: str) -> dict[tuple[str, str], float]:
    entry = next(p for p in summary["providers"] if p["id"] == provider)
    return {(model, resolution): price for model, offer in entry["models"].items() for resolution, price in (offer.get("prices") or {}).items()}


@pytest.mark.parametrize("provider, prices, unit", [("google", GOOGLE, "usd"), ("fal", FAL, "usd"), ("vydra", VYDRA, "credits")])
def test_the_badges_prices_are_the_providers_list_prices(provider, prices, unit):
    summary = catalog_summary()
    got = listed(summary, provider)
    assert got.keys() == prices.keys()
    for key, price in prices.items():
        assert got[key] == pytest.approx(price, abs=0.0005), key
    entry = next(p for p in summary["providers"] if p["id"] == provider)
    assert {offer.get("price_unit", unit) for offer in entry["models"].values() if offer.get("prices")} == {unit}


@pytest.mark.parametrize(
    "provider, model, resolution, count, expected",
    [
        ("google", "Nano Banana Pro", "4K", 1, GOOGLE[("Nano Banana Pro", "4K")]),
        ("fal", "Nano Banana Pro", "2K", 3, 3 * FAL[("Nano Banana Pro", "2K")]),  # fal's own n: one call, three images
        ("fal", "Nano Banana", None, 2, 2 * FAL[("Nano Banana", "")]),
        ("fal", "Nano Banana 2", "4K", 1, FAL[("Nano Banana 2", "4K")]),
    ],
)
def test_a_runs_cost_is_the_list_price_times_the_images_it_returned(server, monkeypatch, provider, model, resolution, count, expected):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    result = run(generate(provider, model, GenerationRequest(prompt="a lighthouse", resolution=resolution, count=count)))
    assert len(result.images) == count
    # Google bills the answer's tokens (the fake reports what Google bills per image): within 0.1% of the list price.
    assert result.cost == pytest.approx(expected, rel=1e-3) and result.cost_unit == "usd"
    assert result.cost_source == ("tokens" if provider == "google" else "list_price")


def test_vydra_reports_the_credits_it_charged(server, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    result = run(generate("vydra", "Nano Banana", GenerationRequest(prompt="a lighthouse")))
    assert (result.cost, result.cost_unit) == (VYDRA[("Nano Banana", "")], "credits")
