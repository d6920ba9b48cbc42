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


import errno  # noqa: E402
import ipaddress  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402

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


def _on_this_machine(address) -> bool:
    if isinstance(address, (str, bytes)):
        return True  # a Unix socket
    host = str(address[0]).split("%", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Nothing the suite runs reaches past this machine: a connection anywhere else, or a DNS
    lookup of any name but localhost, is refused before a packet leaves, and the test fails even if
    the code under test swallowed the error (a fake left pointing at a real provider once sent its
    test key there on every run)."""
    refused: list = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address) -> None:
        if not _on_this_machine(address):
            refused.append(address)
            raise OSError(errno.ENETUNREACH, f"test guard: no connection to {address!r} from the test suite")

    def guarded_connect(self, address):
        check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        # A name is never looked up either: where DNS works, that is a packet past this machine.
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name != "localhost" and not name.endswith(".localhost"):
            try:
                ipaddress.ip_address(str(name).split("%", 1)[0])
            except ValueError:
                refused.append((name,))
                raise socket.gaierror(socket.EAI_NONAME, f"test guard: no lookup of {name!r} from the test suite") from None
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield refused
    assert not refused, f"the test tried to connect outside this machine: {refused}"


@pytest.fixture
def fresh_tokens():
    """Service-account access tokens are cached per process: each test that uses them starts and ends without any."""
    from banana_pack.providers.vertex_auth import forget_tokens

    forget_tokens()
    yield
    forget_tokens()
