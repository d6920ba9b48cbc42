"""Read-only HTTP routes for the frontend: which providers offer which models, which have a key, and
(auto_pick.py) which provider "auto" uses for a node's settings.

It never returns a key, only whether one is configured and where it would be looked up; and no
absolute paths. A broken keys.json or providers.json is an `error` field in the JSON answer
(with the built-in presets listed), never a bare 500.
"""

from __future__ import annotations

import logging

from ..providers.catalog import STABLE_MODEL_NAMES
from ..providers.client import choose_provider
from ..providers.config import (
    KEYS_FILE,
    all_providers,
    config_dir,
    display_path,
    env_name,
    has_key,
    schema_providers,
)
from ..providers.errors import BananaError, ConfigError
from .batch_mode import batch_discount, supports_batch
from .auto_pick import MAX_BODY as AUTO_MAX_BODY
from .auto_pick import ROUTE as AUTO_ROUTE
from .auto_pick import auto_pick
from .key_routes import guarded_query, guarded_read
from .server_routes import register_once

log = logging.getLogger("nano_banana_bridge")
ROUTE = "/nano_banana_bridge/catalog"
MODELS_ROUTE = "/nano_banana_bridge/models"  # ?provider=<id>[&refresh=1]: which Nano Banana ids the key can use


def catalog_summary() -> dict:
    errors: list[str] = []

    def note(exc: BananaError) -> None:
        if str(exc) not in errors:
            errors.append(str(exc))

    try:
        keys_file = display_path(config_dir() / KEYS_FILE)
    except ConfigError as exc:
        note(exc)
        keys_file = KEYS_FILE
    try:
        specs = all_providers()
    except ConfigError as exc:
        note(exc)
        specs = schema_providers()
    providers = []
    for spec in specs:
        try:
            key_configured = has_key(spec)
        except ConfigError as exc:  # an unreadable keys.json or a malformed key
            note(exc)
            key_configured = False
        providers.append(
            {
                "id": spec.id,
                "display_name": spec.display_name,
                "has_key": key_configured,
                "key_owner": spec.key_owner,
                "key_env": [env_name(spec.key_owner, "API_KEY"), *spec.key_env],
                "batch_discount": batch_discount(spec) if supports_batch(spec) else None,  # delivery "batch": x list price
                "models": {
                    offer.name: {
                        "aspect_ratios": list(offer.aspect_ratios),
                        "resolutions": list(offer.resolutions),
                        "max_refs": offer.max_refs,
                        "prices": dict(offer.prices),  # resolution ("" when fixed) -> list price per image
                        "price_unit": offer.price_unit,
                    }
                    for offer in spec.models
                },
            }
        )
    auto: dict[str, str | None] = {}
    for name in STABLE_MODEL_NAMES:
        try:
            auto[name] = choose_provider(name).id
        except BananaError:
            auto[name] = None
    answer: dict = {"providers": providers, "auto": auto, "keys_file": keys_file}
    if errors:
        answer["error"] = "\n".join(errors)
    return answer


def catalog_answer() -> dict:
    """What the route sends: the summary, or an `error` field; never an exception."""
    try:
        return catalog_summary()
    except Exception as exc:  # noqa: BLE001 - the frontend gets JSON it can show, the log gets the trace
        log.exception("Nano Banana Bridge: the catalog route failed")
        return {"providers": [], "auto": {}, "error": f"The catalog could not be built ({type(exc).__name__}); see the ComfyUI log."}


async def models_summary(provider_id: str, *, refresh: bool = False) -> dict:
    """The provider's live model list (cached; see providers/model_list.py); never a key, never raises."""
    from ..providers.model_list import list_models

    try:
        return await list_models(provider_id, refresh=refresh)
    except BananaError as exc:
        return {"provider": provider_id[:100], "listed": False, "error": str(exc).splitlines()[0]}


@register_once
def register_routes(routes, web) -> None:
    @routes.get(ROUTE)
    async def catalog(request):
        return await guarded_read(web, request, catalog_answer)

    @routes.post(AUTO_ROUTE)  # which provider "auto" uses for a node's settings: reads only
    async def auto(request):
        return await guarded_query(web, request, auto_pick, AUTO_MAX_BODY)

    @routes.get(MODELS_ROUTE)
    async def models(request):  # a refresh calls the provider with the key: never for another site
        return await guarded_read(web, request, lambda: models_summary(request.query.get("provider", ""), refresh=request.query.get("refresh") in ("1", "true")))
