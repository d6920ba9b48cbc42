"""A read-only HTTP route for the frontend: which providers offer which models, and which have a key.

It never returns a key, only whether one is configured and where it would be looked up.
"""

from __future__ import annotations

import logging

from ..providers.catalog import STABLE_MODEL_NAMES
from ..providers.client import choose_provider
from ..providers.config import all_providers, config_dir, env_name, has_key
from ..providers.errors import BananaError

log = logging.getLogger("nano_banana_bridge")
ROUTE = "/nano_banana_bridge/catalog"
MODELS_ROUTE = "/nano_banana_bridge/models"  # ?provider=<id>[&refresh=1]: which Nano Banana ids the key can use
_registered = False


def catalog_summary() -> dict:
    providers = []
    for spec in all_providers():
        providers.append(
            {
                "id": spec.id,
                "display_name": spec.display_name,
                "has_key": has_key(spec),
                "key_owner": spec.key_owner,
                "key_env": [env_name(spec.key_owner, "API_KEY"), *spec.key_env],
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
    auto = {}
    for name in STABLE_MODEL_NAMES:
        try:
            auto[name] = choose_provider(name).id
        except BananaError:
            auto[name] = None
    return {"providers": providers, "auto": auto, "keys_file": str(config_dir() / "keys.json")}


async def models_summary(provider_id: str, *, refresh: bool = False) -> dict:
    """The provider's live model list (cached; see providers/model_list.py); never a key, never raises."""
    from ..providers.model_list import list_models

    try:
        return await list_models(provider_id, refresh=refresh)
    except BananaError as exc:
        return {"provider": provider_id[:100], "listed": False, "error": str(exc).splitlines()[0]}


def register_routes() -> None:
    global _registered
    if _registered:
        return
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return

    @PromptServer.instance.routes.get(ROUTE)
    async def catalog(_request):
        return web.json_response(catalog_summary())

    @PromptServer.instance.routes.get(MODELS_ROUTE)
    async def models(request):
        return web.json_response(await models_summary(request.query.get("provider", ""), refresh=request.query.get("refresh") in ("1", "true")))

    _registered = True
