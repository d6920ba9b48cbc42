"""On a ComfyUI without the V3 features the node needs, the pack says so in one line and registers nothing.

The pack's entry is loaded the way ComfyUI loads it (by file location, as a package), against a
stub of ComfyUI 0.3.64's comfy_api: ComfyExtension and a V3 `io` exist, but DynamicCombo,
Autogrow, PriceBadge and the `advanced` / `search_aliases` keywords do not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass

import pytest
from conftest import PACK_DIR


def _old_comfy_api() -> dict[str, types.ModuleType]:
    class ComfyExtension(ABC):
        async def on_load(self) -> None:
            pass

        @abstractmethod
        async def get_node_list(self) -> list:
            ...

    class Input:
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None):
            self.id = id

    class ComboInput(Input):
        def __init__(self, id, options=None, default=None, display_name=None, optional=False, tooltip=None):
            super().__init__(id, display_name, optional, tooltip)

    Combo = types.SimpleNamespace(Input=ComboInput)

    @dataclass
    class Schema:  # 0.3.64: no search_aliases, no price_badge
        node_id: str
        display_name: str = None
        inputs: list = None
        is_input_list: bool = False

    class Hidden:
        unique_id = "UNIQUE_ID"

    class ComfyNode:
        pass

    io = types.SimpleNamespace(ComfyNode=ComfyNode, Schema=Schema, Combo=Combo, Hidden=Hidden, Image=types.SimpleNamespace(Input=Input))
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.__path__ = []
    latest = types.ModuleType("comfy_api.latest")
    latest.ComfyExtension, latest.io = ComfyExtension, io
    comfy_api.latest = latest
    version = types.ModuleType("comfyui_version")
    version.__version__ = "0.3.64"
    return {"comfy_api": comfy_api, "comfy_api.latest": latest, "comfyui_version": version}


def _load_pack_as(alias: str):
    spec = importlib.util.spec_from_file_location(alias, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_pack(monkeypatch):
    """Load the pack under a new name, and drop it (and its submodules) afterwards."""
    alias = "old_comfy_pack"
    yield lambda: _load_pack_as(alias)
    for name in [n for n in sys.modules if n == alias or n.startswith(alias + ".")]:
        del sys.modules[name]


def test_old_comfyui_gets_one_clear_line_and_no_nodes(fresh_pack, monkeypatch, caplog):
    for name, module in _old_comfy_api().items():
        monkeypatch.setitem(sys.modules, name, module)
    with caplog.at_level(logging.DEBUG):
        pack = fresh_pack()
        extension = asyncio.run(pack.comfy_entrypoint())
        nodes = asyncio.run(extension.get_node_list())
    assert nodes == []
    assert isinstance(extension, sys.modules["comfy_api.latest"].ComfyExtension)  # what 0.3.64's loader insists on
    assert pack.WEB_DIRECTORY is None  # no frontend extension either
    ours = [r for r in caplog.records if r.name == "nano_banana_bridge"]
    assert len(ours) == 1 and ours[0].levelno == logging.ERROR and ours[0].exc_info is None
    line = ours[0].getMessage()
    assert "\n" not in line
    assert "needs ComfyUI 0.11.0 or newer" in line and "found 0.3.64" in line
    assert "DynamicCombo" in line and "update ComfyUI" in line
    assert f"{pack.__name__}.nodes.extension" not in sys.modules  # the node module was never imported


def test_comfyui_without_any_v3_api_is_named_too(fresh_pack, monkeypatch, caplog):
    """Pre-V3 ComfyUI never calls comfy_entrypoint: the line comes at import."""
    monkeypatch.setitem(sys.modules, "comfy_api", None)  # import comfy_api -> ImportError
    monkeypatch.setitem(sys.modules, "folder_paths", types.ModuleType("folder_paths"))
    monkeypatch.setitem(sys.modules, "comfyui_version", None)
    with caplog.at_level(logging.ERROR):
        pack = fresh_pack()
    (record,) = [r for r in caplog.records if r.name == "nano_banana_bridge"]
    assert "needs ComfyUI 0.11.0 or newer, found unknown" in record.getMessage() and "comfy_api.latest" in record.getMessage()
    assert pack.WEB_DIRECTORY is None


def test_new_enough_stub_passes_and_outside_comfyui_nothing_is_checked(monkeypatch):
    from banana_pack.nodes import compat

    # Outside ComfyUI, whatever earlier tests imported: a stray `comfy` (a folder of that name beside
    # the checkout is a namespace package once pytest puts the checkout's parent on sys.path).
    for name in ("comfy", "folder_paths"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert compat.missing_features() is None  # tests, scripts: no ComfyUI to check
    old = _old_comfy_api()
    latest = old["comfy_api.latest"]

    class Later:
        class Option:
            pass

        class TemplateNames:
            pass

    @dataclass
    class Schema:
        node_id: str
        search_aliases: list = None
        price_badge: object = None

    class ComboInput:
        def __init__(self, id, options=None, advanced=None):
            pass

    latest.io = types.SimpleNamespace(**{**latest.io.__dict__, "DynamicCombo": Later, "Autogrow": Later, "PriceBadge": Later, "PriceBadgeDepends": Later, "Schema": Schema, "Combo": types.SimpleNamespace(Input=ComboInput)})
    for name, module in old.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert compat.missing_features() == []
    assert compat.unsupported_comfyui_message() is None
    # Take one feature away: it is named.
    del latest.io.Autogrow
    assert compat.missing_features() == ["io.Autogrow"]
