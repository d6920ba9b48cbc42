"""Whether the running ComfyUI has the V3 node API this pack is built on.

An older ComfyUI (0.3.x portable installs are still common) lacks DynamicCombo, Autogrow, price
badges and advanced inputs; importing the node there fails deep inside the schema with an
AttributeError and a traceback. Checking first lets the pack say, in one line, what it needs and
how to get it, and register nothing instead of half a node.

No ComfyUI import at module level: outside ComfyUI (tests, scripts) there is nothing to check.
"""

from __future__ import annotations

import importlib
import inspect
import sys

MIN_COMFYUI = "0.11.0"  # the first release with every feature below

# What the node's schema uses, as attribute paths under comfy_api.latest.
REQUIRED_ATTRIBUTES = (
    "ComfyExtension",
    "io.ComfyNode",
    "io.Schema",
    "io.DynamicCombo",
    "io.DynamicCombo.Option",
    "io.Autogrow",
    "io.Autogrow.TemplateNames",
    "io.PriceBadge",
    "io.PriceBadgeDepends",
    "io.Hidden.unique_id",
)
# Keyword arguments the node passes, as (constructor path, keyword).
REQUIRED_KEYWORDS = (
    ("io.Combo.Input", "advanced"),
    ("io.Schema", "search_aliases"),
    ("io.Schema", "price_badge"),
)

UPDATE_HINT = (
    "update ComfyUI (portable: run update/update_comfyui.bat; git install: 'git pull' in the ComfyUI folder and "
    "'pip install -r requirements.txt'; ComfyUI-Manager: 'Update ComfyUI'), then restart"
)


def comfyui_version() -> str:
    try:
        return str(importlib.import_module("comfyui_version").__version__)
    except Exception:  # noqa: BLE001 - very old installs have no version module
        return "unknown (older than 0.3.50)"


def _lookup(root: object, path: str) -> object:
    value = root
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _takes_keyword(target: object, keyword: str) -> bool:
    fields = getattr(target, "__dataclass_fields__", None)
    if fields is not None:
        return keyword in fields
    try:
        parameters = inspect.signature(target).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # cannot tell: do not block the load on it
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def missing_features() -> list[str] | None:
    """What comfy_api.latest lacks; None when not running inside ComfyUI (nothing to check)."""
    try:
        api = importlib.import_module("comfy_api.latest")
    except ImportError:
        # ComfyUI without the V3 API at all (its loader then never calls comfy_entrypoint).
        return ["comfy_api.latest"] if "folder_paths" in sys.modules or "comfy" in sys.modules else None
    missing: list[str] = []
    for path in REQUIRED_ATTRIBUTES:
        if any(path.startswith(gone + ".") for gone in missing):
            continue  # io.DynamicCombo.Option when io.DynamicCombo itself is missing: said once
        try:
            _lookup(api, path)
        except AttributeError:
            missing.append(path)
    for path, keyword in REQUIRED_KEYWORDS:
        try:
            if not _takes_keyword(_lookup(api, path), keyword):
                missing.append(f"{path}({keyword}=...)")
        except AttributeError:
            if path not in missing:
                missing.append(path)
    return missing


def unsupported_comfyui_message() -> str | None:
    """One line for the log when this ComfyUI is too old, else None."""
    missing = missing_features()
    if not missing:
        return None
    return (
        f"Nano Banana Bridge needs ComfyUI {MIN_COMFYUI} or newer, found {comfyui_version()} "
        f"(its V3 node API lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): {UPDATE_HINT}. "
        "The pack registers no nodes until then."
    )
