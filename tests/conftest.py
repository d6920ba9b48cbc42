"""Load the pack the way ComfyUI does: by file location, as a package with an arbitrary name.

The alias `banana_pack` differs from the folder name on purpose: any absolute import of the
pack's own modules (`import providers`, `import nodes`) fails here just as it would in
ComfyUI, where a top-level `nodes` module already exists.
"""

import importlib.util
import pathlib
import sys

PACK_DIR = pathlib.Path(__file__).resolve().parents[1]
PACK_ALIAS = "banana_pack"


def _load_pack():
    if PACK_ALIAS in sys.modules:
        return sys.modules[PACK_ALIAS]
    spec = importlib.util.spec_from_file_location(
        PACK_ALIAS, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_ALIAS] = module
    spec.loader.exec_module(module)
    return module


_load_pack()
sys.path.insert(0, str(PACK_DIR / "tests"))


import os  # noqa: E402

import pytest  # noqa: E402

from loopback import LoopbackServer  # noqa: E402


@pytest.fixture
def server():
    srv = LoopbackServer().start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """No test sees the developer's real keys, settings or ComfyUI folders."""
    for name in list(os.environ):
        if name.startswith("BANANA_") or name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "FAL_KEY"):
            monkeypatch.delenv(name, raising=False)
    config_dir = tmp_path / "banana_config"
    monkeypatch.setenv("BANANA_CONFIG_DIR", str(config_dir))
    return config_dir
