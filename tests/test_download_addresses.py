"""Result downloads never reach into the user's network (providers/engine/addresses.py).

A result link comes from the provider's answer, or from the model's own text, which a stranger's
prompt can steer. A download may go to a public address, to the provider's own host (how these
tests' loopback providers and local gateways work), or to the catalog's allowlist; anything else
non-public is refused before a connection is made, unless BANANA_ALLOW_PRIVATE_DOWNLOADS=1.

Two real servers on 127.0.0.1: `base` is the configured provider, `other` another port standing
for a LAN service, which records every request it gets. No traffic ever leaves loopback: for
10.x and 169.254.169.254 the tests watch every TCP connect the engine attempts.
"""

from __future__ import annotations

import ipaddress

import httpcore
import pytest
from banana_pack.providers import GenerationRequest, MalformedResponse, generate
from banana_pack.providers.engine import addresses, get_engine
from banana_pack.providers.engine.addresses import CheckedBackend, non_public_kind
from helpers import png_bytes, run
from hostile import HostileServer, redirect, reply

HK_KEY = "hk-download-addresses-key-0123456789"
GOOGLE_KEY = "google-download-addresses-key-0123"


@pytest.fixture
def base():
    srv = HostileServer().start()
    srv.route("GET", r"^/cdn/", reply(200, raw=png_bytes(2, 2), headers={"Content-Type": "image/png"}))
    yield srv
    srv.stop()


@pytest.fixture
def other():
    srv = HostileServer().start()
    srv.route("GET", "", reply(200, raw=png_bytes(3, 3), headers={"Content-Type": "image/png"}))
    yield srv
    srv.stop()


@pytest.fixture
def hk(base, monkeypatch):
    monkeypatch.delenv(addresses.ALLOW_PRIVATE_ENV, raising=False)
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_BASE_URL", base.url + "/v1")
    return base


@pytest.fixture(autouse=True)
def connects(monkeypatch):
    """Every (host, port) the engine's HTTP stack opens a TCP connection to.

    Only loopback is ever really connected: an attempt anywhere else is recorded and fails here, so
    a regression makes these tests fail without sending a packet off this machine."""
    seen: list[tuple[str, int]] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def recording(self, host, port, *args, **kwargs):
        seen.append((host, port))
        if host not in ("localhost", "::1") and not str(host).startswith("127."):
            raise httpcore.ConnectError(f"test guard: no connection to {host} from the test suite")
        return await original(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recording)
    return seen


def result_at(server: HostileServer, url: str) -> None:
    """The provider answers a generation with one image link: `url`."""
    server.route("POST", r"^/v1/images/generations$", reply(200, {"data": [{"url": url}]}))


def gen_hk():
    return run(generate("openai_hk", "Nano Banana Pro", GenerationRequest(prompt="a cat")))


def port_of(server: HostileServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_a_result_on_the_providers_own_loopback_host_downloads(hk):
    result_at(hk, hk.url + "/cdn/1.png")
    result = gen_hk()
    assert (result.images[0].width, result.images[0].height) == (2, 2)
    assert [hit.path for hit in hk.hits if hit.method == "GET"] == ["/cdn/1.png"]


def test_localhost_on_the_providers_port_is_the_providers_host(hk):
    # Compared by resolved address and port: localhost resolves to 127.0.0.1, the base URL's host.
    result_at(hk, f"http://localhost:{port_of(hk)}/cdn/2.png")
    assert gen_hk().images[0].width == 2
    assert [hit.path for hit in hk.hits if hit.method == "GET"] == ["/cdn/2.png"]


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]"])
def test_another_loopback_port_is_refused_without_a_connection(hk, other, connects, name):
    result_at(hk, f"http://{name}:{port_of(other)}/latest/meta-data/x.png")
    with pytest.raises(MalformedResponse) as info:
        gen_hk()
    message = str(info.value)
    assert "Refusing to download a result from" in message and name.strip("[]") in message and "loopback" in message
    assert "BANANA_ALLOW_PRIVATE_DOWNLOADS" in str(info.value.hint) and info.value.sent is False
    assert other.hits == []
    assert all(port != port_of(other) for _host, port in connects)  # no connection was even attempted


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/x.png", "link-local"),
        ("http://10.0.0.1/router/x.png", "private"),
        ("http://192.168.1.1:8080/x.png", "private"),
        ("http://[fd00::1]/x.png", "private"),
        ("http://[::ffff:169.254.169.254]/x.png", "link-local"),
        ("http://0.0.0.0:8080/x.png", "unspecified"),
    ],
)
def test_private_and_metadata_addresses_are_refused_before_any_connect(hk, connects, url, kind):
    result_at(hk, url)
    with pytest.raises(MalformedResponse) as info:
        gen_hk()
    assert kind in str(info.value) and "Nothing was sent there" in str(info.value)
    # The only connection the engine opened was to the provider (the generation itself).
    assert {host for host, _port in connects} == {"127.0.0.1"} and {port for _h, port in connects} == {port_of(hk)}


def test_an_image_link_in_the_models_text_to_the_metadata_address_is_refused(base, connects, monkeypatch):
    monkeypatch.delenv(addresses.ALLOW_PRIVATE_ENV, raising=False)
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", base.url)
    text = "Here it is: ![result](http://169.254.169.254/latest/meta-data/x.png)"
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}]}
    base.route("POST", r":generateContent$", reply(200, answer))
    with pytest.raises(MalformedResponse) as info:
        run(generate("google", "Nano Banana", GenerationRequest(prompt="a cat")))
    assert "169.254.169.254" in str(info.value)
    assert all(host == "127.0.0.1" and port == port_of(base) for host, port in connects)


def test_a_redirect_from_the_providers_host_to_another_loopback_port_is_refused(hk, other):
    result_at(hk, hk.url + "/cdn/moved.png")
    hk.route("GET", r"^/cdn/moved\.png$", redirect(302, other.url + "/lan/x.png"))
    with pytest.raises(MalformedResponse) as info:
        gen_hk()
    assert "127.0.0.1" in str(info.value) and "loopback" in str(info.value)
    assert other.hits == []
    assert [hit.path for hit in hk.hits if hit.method == "GET"] == ["/cdn/moved.png"]


def test_a_redirect_within_the_providers_host_is_followed(hk):
    result_at(hk, hk.url + "/cdn/a.png")
    hk.route("GET", r"^/cdn/a\.png$", redirect(307, "/cdn/b.png"))
    assert gen_hk().images[0].width == 2
    assert [hit.path for hit in hk.hits if hit.method == "GET"] == ["/cdn/a.png", "/cdn/b.png"]


def test_endless_redirects_stop(hk):
    result_at(hk, hk.url + "/cdn/loop.png")
    hk.route("GET", r"^/cdn/loop\.png$", redirect(302, "/cdn/loop.png"))
    with pytest.raises(MalformedResponse) as info:
        gen_hk()
    assert "redirected more than" in str(info.value)
    assert len([hit for hit in hk.hits if hit.method == "GET"]) == 6  # the first request and 5 hops


def test_the_switch_allows_a_lan_download_and_a_redirect_there(hk, other, monkeypatch):
    monkeypatch.setenv(addresses.ALLOW_PRIVATE_ENV, "1")
    result_at(hk, hk.url + "/cdn/moved.png")
    hk.route("GET", r"^/cdn/moved\.png$", redirect(302, other.url + "/lan/x.png"))
    assert gen_hk().images[0].width == 3
    assert [hit.path for hit in other.hits] == ["/lan/x.png"]


def test_the_check_holds_at_connect_time_when_the_name_rebinds(hk, other, connects, monkeypatch):
    """DNS rebinding: the name looks public when checked before the request, then resolves to a
    loopback service. The connection goes only to an address checked at connect time."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # the first is never connected to
    real = addresses._resolve

    async def rebinding(host, port):
        if host == "rebind.example":
            return [ipaddress.ip_address(a) for a in next(answers)]
        return await real(host, port)

    monkeypatch.setattr(addresses, "_resolve", rebinding)
    result_at(hk, f"http://rebind.example:{port_of(other)}/x.png")
    with pytest.raises(MalformedResponse) as info:
        gen_hk()
    assert "rebind.example" in str(info.value) and "127.0.0.1" in str(info.value)
    assert other.hits == []
    assert next(answers, None) is None  # both lookups happened: before the request, and at connect
    assert all(port == port_of(hk) for _host, port in connects)


def test_the_engines_client_connects_through_the_checked_backend():
    async def backend():
        client = get_engine().client()
        return client._transport._pool._network_backend  # type: ignore[attr-defined]

    assert isinstance(run(backend()), CheckedBackend)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.2", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("240.0.0.1", False),
        ("100.64.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_address_kinds(address, public):
    assert (non_public_kind(ipaddress.ip_address(address)) is None) is public
