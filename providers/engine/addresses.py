"""Where a result download may connect: public addresses, the provider's own host, its allowlist.

Result URLs come from the provider's answer, and some from the model's own text (image links it
writes), which a stranger's prompt can steer. Without a check, a hostile workflow could make the
pack send a GET from the user's machine to a router, a LAN service or the cloud metadata address
(169.254.169.254). So a download may connect to:
- a public address;
- the provider's own host: the base URL's port, and a name equal to the base URL's host or that
  resolves only to addresses the base URL's host resolves to (so with a base URL on 127.0.0.1,
  `localhost` on the same port is the provider's host; on another port it is not);
- a host the catalog allowlists for the provider (`auth_hosts`, by name, any port);
- anything, with BANANA_ALLOW_PRIVATE_DOWNLOADS=1 (a LAN gateway that links to other LAN hosts).
Anything else that is loopback, private, link-local, unspecified, multicast or reserved is refused
with MalformedResponse (the address came from the provider's answer; the request itself was fine)
before a connection is made.

The check is bound to the connection, not only to a lookup made before it (DNS rebinding): the
engine's client connects through CheckedBackend, which resolves the name once, checks every
address, and connects only to an address that passed. It applies while a download scope is set
(downloads only; API calls go to the configured base URL and are left alone). Through a proxy
(HTTPS_PROXY etc.) the proxy resolves the name, so there only the check before the request holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterable

import httpcore
import httpx

from ..errors import MalformedResponse
from .auth import host_matches, origin

log = logging.getLogger("nano_banana_bridge")

ALLOW_PRIVATE_ENV = "BANANA_ALLOW_PRIVATE_DOWNLOADS"
_ON = ("1", "true", "yes", "on")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DownloadScope:
    """Whose result is downloaded: the provider, its base URL and its allowlisted hosts."""

    provider: str
    model: str = ""
    base_url: str = ""
    hosts: tuple[str, ...] = ()


_scope: contextvars.ContextVar[DownloadScope | None] = contextvars.ContextVar("banana_download_scope", default=None)


def private_allowed() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in _ON


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services live)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private network address"
    if address.is_reserved or not address.is_global:
        return "a reserved, non-public address"
    return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself, without a lookup)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


async def checked_addresses(host: str, port: int, scope: DownloadScope) -> list[str]:
    """The addresses of host:port a download may connect to, in resolver order; MalformedResponse
    naming the host when there is none. Addresses that fail the check are never returned."""
    host = host.lower().rstrip(".")
    try:
        addresses = await _resolve(host, port)
    except OSError as exc:
        raise _refused(scope, host, f"its name does not resolve ({exc})", hint=None) from None
    if not addresses:
        raise _refused(scope, host, "its name does not resolve", hint=None)
    if private_allowed() or any(host_matches(host, pattern) for pattern in scope.hosts):
        return [str(address) for address in addresses]
    base = origin(scope.base_url) if scope.base_url else None
    same_port = base is not None and base[2] == port
    base_addresses: list[IPAddress] | None = None
    allowed: list[str] = []
    refusal = ""
    for address in addresses:
        kind = non_public_kind(address)
        if kind is None:
            allowed.append(str(address))
            continue
        if same_port and base is not None:
            if host == base[1]:
                allowed.append(str(address))
                continue
            if base_addresses is None:
                try:
                    base_addresses = await _resolve(base[1], base[2])
                except OSError:
                    base_addresses = []
            if address in base_addresses:
                allowed.append(str(address))
                continue
        refusal = refusal or f"it resolves to {address}, {kind}, and is not the provider's own host"
    if not allowed:
        raise _refused(scope, host, refusal)
    return allowed


def _refused(scope: DownloadScope, host: str, why: str, hint: str | None = "") -> MalformedResponse:
    error = MalformedResponse(
        f"Refusing to download a result from {host}: {why}. Nothing was sent there.",
        provider=scope.provider,
        model=scope.model or None,
        hint=(
            "A result link (from the provider's answer or the model's text, which a workflow's prompt can steer) pointed "
            f"into your network. If your gateway really serves results from there, set {ALLOW_PRIVATE_ENV}=1, or add the "
            "host to the provider's auth_hosts in providers.json."
        )
        if hint == ""
        else hint,
    )
    error.sent = False
    return error


class download_scope:
    """`with download_scope(scope):` connections opened inside go through the check."""

    def __init__(self, scope: DownloadScope) -> None:
        self.scope = scope
        self._token: contextvars.Token[DownloadScope | None] | None = None

    def __enter__(self) -> DownloadScope:
        self._token = _scope.set(self.scope)
        return self.scope

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _scope.reset(self._token)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that, inside a download scope, resolves once, checks every address and
    connects only to one that passed (TLS still names the host: httpcore passes it to start_tls)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        scope = _scope.get()
        if scope is None:
            return await self.inner.connect_tcp(host, port, timeout=timeout, local_address=local_address, socket_options=socket_options)
        last: Exception | None = None
        for address in await checked_addresses(host, port, scope):
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def bind_checks(client: httpx.AsyncClient) -> bool:
    """Route the client's direct connections through CheckedBackend; False if httpx's internals
    differ from what this expects (then only the check before each request holds, logged once)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if type(pool) is not httpcore.AsyncConnectionPool or backend is None:
        global _warned
        if not _warned:
            _warned = True
            log.warning("nano_banana_bridge: could not bind the download address check to connections (httpx %s); checking before each request only", httpx.__version__)
        return False
    if not isinstance(backend, CheckedBackend):
        pool._network_backend = CheckedBackend(backend)
    return True


_warned = False
