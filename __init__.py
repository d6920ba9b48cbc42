"""Nano Banana Bridge: ComfyUI nodes for Google's Nano Banana image models, through any provider.

ComfyUI imports this file by location, under whatever folder name the pack was cloned into,
so everything inside the pack is imported relatively. The node classes (and comfy_api) are
imported only when ComfyUI asks for them, which keeps providers/ importable and testable
without a running ComfyUI.
"""

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint():
    from .nodes.extension import BananaBridgeExtension

    return BananaBridgeExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
