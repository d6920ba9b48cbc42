"""What a call cost, and where that figure came from.

Three sources, best first: the provider reported it (fal, Vydra, ...); it is computed from the
answer's usageMetadata tokens at the catalog's per-token prices (Google bills by tokens); or it is
the catalog's list price per image. Batch Mode bills half of the standard rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .catalog import ModelOffer

PROVIDER, TOKENS, LIST_PRICE = "provider", "tokens", "list_price"
_MILLION = 1_000_000


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0  # usage comes from the provider: a string or garbage counts as nothing


def token_cost(offer: ModelOffer, usage: Mapping[str, Any] | None, *, has_image: bool = True) -> float | None:
    """USD for a Gemini answer's usageMetadata at the offer's per-token prices, or None.

    Image tokens (candidatesTokensDetails, modality IMAGE) are billed at the image rate; other
    output tokens and thinking tokens (thoughtsTokenCount) at the text rate.
    """
    prices = offer.token_prices
    if not prices or not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("promptTokenCount", usage.get("prompt_token_count")))
    output = _int(usage.get("candidatesTokenCount", usage.get("candidates_token_count")))
    thoughts = _int(usage.get("thoughtsTokenCount", usage.get("thoughts_token_count")))
    if not (prompt or output or thoughts):
        return None
    details = usage.get("candidatesTokensDetails", usage.get("candidates_tokens_details"))
    image = 0
    if isinstance(details, list):
        image = sum(_int(d.get("tokenCount", d.get("token_count"))) for d in details if isinstance(d, Mapping) and str(d.get("modality", "")).upper() == "IMAGE")
    else:
        image = output if has_image else 0  # no breakdown: an image answer is (almost all) image tokens, a refusal's are text
    image = min(image, output)
    text = output - image + thoughts
    cost = prompt * prices.get("input", 0.0) + text * prices.get("output_text", 0.0) + image * prices.get("output_image", 0.0)
    return cost / _MILLION  # callers round once, after any discount


def list_cost(offer: ModelOffer, resolution: str | None, images: int) -> float | None:
    price = offer.price(resolution)
    return None if price is None else round(price * max(0, images), 6)
