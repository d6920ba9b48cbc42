"""Nano Banana Bridge: ComfyUI nodes for Google's Nano Banana image models, through any provider.

ComfyUI imports this file by location, under whatever folder name the pack was cloned into,
so everything inside the pack is imported relatively. The node classes (and comfy_api) are
imported only when ComfyUI asks for them, which keeps providers/ importable and testable
without a running ComfyUI.

On a ComfyUI too old for the V3 features the node uses, the pack logs one line saying which
version it needs and how to update, and registers nothing (no node, no frontend extension).
"""

import logging

if __package__:
    from .nodes.compat import unsupported_comfyui_message

    _UNSUPPORTED = unsupported_comfyui_message()
else:  # pytest imports this file alone (looking for setup_module) when the checkout's folder name is no identifier
    _UNSUPPORTED = None
if _UNSUPPORTED:
    logging.getLogger("nano_banana_bridge").error(_UNSUPPORTED)

WEB_DIRECTORY = None if _UNSUPPORTED else "./web/js"


async def comfy_entrypoint():
    if _UNSUPPORTED:
        # This ComfyUI called us, so it has ComfyExtension: hand it an empty one (no nodes, no traceback).
        from comfy_api.latest import ComfyExtension

        class UnsupportedComfyUI(ComfyExtension):
            async def get_node_list(self) -> list:
                return []

        return UnsupportedComfyUI()

    from .nodes.extension import BananaBridgeExtension

    return BananaBridgeExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
