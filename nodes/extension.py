"""ComfyUI's entry: the V3 extension listing the pack's nodes, and its start-up work."""

from __future__ import annotations

import logging

from comfy_api.latest import ComfyExtension, io

from ..providers.config import ensure_keys_file, set_comfy_user_dir
from .bridge_node import NanoBananaBridge
from .comfy_glue import served_dirs, user_dir
from .routes import register_routes

log = logging.getLogger("nano_banana_bridge")


class BananaBridgeExtension(ComfyExtension):
    async def on_load(self) -> None:
        try:
            set_comfy_user_dir(user_dir(), served_dirs())
            path = ensure_keys_file()
            log.info("Nano Banana Bridge: keys file %s (environment variables take precedence)", path)
        except Exception:  # noqa: BLE001 - a read-only disk must not stop the pack from loading
            log.warning("Nano Banana Bridge: could not prepare the keys file", exc_info=True)
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [NanoBananaBridge]
