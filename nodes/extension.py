"""ComfyUI's entry: the V3 extension listing the pack's nodes, and its start-up work."""

from __future__ import annotations

import logging
import threading

from comfy_api.latest import ComfyExtension, io

from ..providers.config import ensure_keys_file, set_comfy_user_dir
from .bridge_node import NanoBananaBridge
from .comfy_glue import install_interrupt_observer, output_dir, quiet_http_logs, served_dirs, user_dir
from .housekeeping import tidy_once
from .jobs_routes import register_jobs_routes
from .key_routes import register_key_routes
from .options import NanoBananaOptions
from .routes import register_routes
from .store import STORE_FOLDER

log = logging.getLogger("nano_banana_bridge")


class BananaBridgeExtension(ComfyExtension):
    async def on_load(self) -> None:
        quiet_http_logs()
        try:
            set_comfy_user_dir(user_dir(), served_dirs())
            path = ensure_keys_file()
            log.info("Nano Banana Bridge: keys file %s (environment variables take precedence)", path)
        except Exception:  # noqa: BLE001 - a read-only disk must not stop the pack from loading
            log.warning("Nano Banana Bridge: could not prepare the keys file", exc_info=True)
        register_routes()
        register_key_routes()
        register_jobs_routes()
        install_interrupt_observer()  # tells a user's Interrupt from a neighbour's failure (comfy_glue)
        try:
            # Off the load path: reading many small entries must not delay ComfyUI's start.
            threading.Thread(target=tidy_once, args=(output_dir() / STORE_FOLDER,), name="nano-banana-housekeeping", daemon=True).start()
        except Exception:  # noqa: BLE001 - housekeeping is never a reason not to load
            log.warning("Nano Banana Bridge: could not start housekeeping", exc_info=True)

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [NanoBananaBridge, NanoBananaOptions]
