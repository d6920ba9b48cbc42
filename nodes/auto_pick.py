"""Which provider "auto" will use for a node's current settings, for the provider widget's label and
the price badge: the question a run asks (render.run_provider), answered without running.

  POST /nano_banana_bridge/auto  {"model", "aspect_ratio", "resolution", "seed", "count", "image_mode",
                                  "references": connected image inputs, "conversation": connected?,
                                  "options": the connected Nano Banana Options node's values or null}
  ->  {"model": stable name, "provider": id}  or  {"model", "provider": null, "reason", "error"}

reason: "no_key" (no provider with a key offers the model), "unfit" (none of them can run these
settings; `error` is what the first one cannot do) or "invalid" (a setting no provider takes).
It calls no provider and reads no key value (has_key only). Every field is a workflow's value,
so untrusted: checked as a run checks it, and echoed only clipped and redacted.
"""

from __future__ import annotations

from typing import Any

from ..providers.catalog import AUTO
from ..providers.client import AUTO_PROVIDER
from ..providers.errors import BananaError, MissingKey
from ..providers.outcome import ImageInput, Turn, TurnPart
from ..providers.redaction import clip, redact
from .catalog_view import model_from_choice
from .option_specs import MAIN_INPUTS_BY_NAME, resolve_options
from .render import RenderInputs, request_options, run_provider

ROUTE = "/nano_banana_bridge/auto"
MAX_BODY = 32_768  # the options node's strings are clipped by the page; a system prompt may still be long
MAX_REFERENCES = 64
MAX_VALUE = 40  # an aspect ratio or resolution: short names

# Stand-ins for what only a run has: the checks read how many references there are and the first
# one's shape ("match input"), and whether earlier turns exist, never their bytes or words.
_STAND_IN_IMAGE = ImageInput(b"", "image/png", 1024, 1024)
_STAND_IN_HISTORY = (Turn("user", (TurnPart(text="earlier prompt"),)), Turn("model", (TurnPart(text="earlier answer"),)))
_STAND_IN_PROMPT = "the node's prompt"


def _short(value: Any) -> str | None:
    return value[:MAX_VALUE] if isinstance(value, str) else None


def auto_pick(body: Any) -> tuple[int, dict]:
    """(HTTP status, answer) for the route; 400 only for a body that is not a settings object."""
    if not isinstance(body, dict):
        return 400, {"error": 'Send the node\'s settings as a JSON object: {"model": ..., "options": {...}}.'}
    model = model_from_choice(body.get("model"))
    if model is None:
        return 200, {"model": None, "provider": None, "reason": "invalid", "error": "Unknown model."}
    references = body.get("references", 0)
    references = min(max(references, 0), MAX_REFERENCES) if isinstance(references, int) and not isinstance(references, bool) else 0
    try:
        main = {name: spec.coerce(body[name]) if body.get(name) is not None else spec.default for name, spec in MAIN_INPUTS_BY_NAME.items()}
        opts = resolve_options(body.get("options"))
        inputs = RenderInputs(
            prompts=[_STAND_IN_PROMPT],
            provider=AUTO_PROVIDER,
            model=model,
            aspect_ratio=_short(body.get("aspect_ratio")) or AUTO,
            resolution=_short(body.get("resolution")),
            image_mode=main["image_mode"],
            seed=main["seed"],
            count=main["count"],
            **request_options(opts),
        )
        spec, _ = run_provider(
            inputs,
            prompt=_STAND_IN_PROMPT,
            history=_STAND_IN_HISTORY if body.get("conversation") is True else (),
            references=(_STAND_IN_IMAGE,) * references,
        )
    except MissingKey as exc:
        return 200, {"model": model, "provider": None, "reason": "no_key", "error": clip(redact(exc.headline()), 300)}
    except BananaError as exc:
        reason = "unfit" if exc.provider and exc.provider != AUTO_PROVIDER else "invalid"
        return 200, {"model": model, "provider": None, "reason": reason, "error": clip(redact(exc.headline()), 300)}
    return 200, {"model": model, "provider": spec.id}
