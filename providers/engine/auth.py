"""Where a key may go, and the one place auth headers are built.

The rule: a provider's key is attached by the engine, and only to a URL on the origin (scheme,
host, port) of the provider's configured base URL, or on an https host the catalog allowlists for
that provider (`ProviderSpec.auth_hosts`, e.g. fal's `*.fal.run`). Protocol code never builds
auth headers. API calls do not follow redirects, so a key never travels on to another host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ..errors import InvalidRequest

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A model id: letters, digits and ._-/: only; no "//", no "..", not starting with "/".
_MODEL_ID = re.compile(r"[A-Za-z0-9._\-/:]{1,200}")


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def host_of(url: str) -> str:
    """The host a URL names, for messages (never its path, query or user info)."""
    try:
        return urlsplit(url.strip()).hostname or "(no host)"
    except ValueError:
        return "(unreadable address)"


def without_userinfo(url: str) -> str:
    """The URL without any `user:pass@` part (result URLs are stored, reported and fetched so)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def host_matches(host: str, pattern: str) -> bool:
    """`pattern` is a host name or `*.domain` (any subdomain of domain, not domain itself)."""
    pattern = pattern.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def check_model_id(model_id: str, provider: str | None = None) -> str:
    """A free-text model id is joined into request paths: only an id, never a URL or a path trick."""
    value = model_id.strip()
    if not _MODEL_ID.fullmatch(value) or "//" in value or ".." in value or value.startswith("/"):
        raise InvalidRequest(
            f"'model_id_override' must be a model id (letters, digits and . _ - / : only, no '//' or '..', "
            f"not starting with '/'), got {value[:60]!r}.",
            provider=provider,
            hint="Type the provider's model id, e.g. gemini-3-pro-image-preview or fal-ai/nano-banana-pro, or leave it empty. "
            "Addresses are configured with BANANA_<PROVIDER>_BASE_URL, never in a workflow.",
        )
    return value


@dataclass(frozen=True)
class Credentials:
    """A provider's key, its scheme, and the origins it may be sent to."""

    provider: str
    scheme: str  # catalog.AUTH_SCHEMES: "x-goog-api-key", "bearer", "key"
    key: str = field(repr=False)
    base_url: str
    auth_hosts: tuple[str, ...] = ()

    def allows(self, url: str) -> bool:
        target = origin(url)
        if target is None:
            return False
        if target == origin(self.base_url):
            return True
        scheme, host, port = target
        return scheme == "https" and port == 443 and any(host_matches(host, pattern) for pattern in self.auth_hosts)

    def headers_for(self, url: str) -> dict[str, str]:
        """The auth headers for `url`; InvalidRequest (before anything is sent) for any other origin."""
        if not self.allows(url):
            allowed = ", ".join([self.base_url, *self.auth_hosts])
            refused = InvalidRequest(
                f"Refusing to send the '{self.provider}' key to {host_of(url)}: it is not the provider's base URL origin "
                f"or on its allowlist ({allowed}). Nothing was sent.",
                provider=self.provider,
                hint="An answer, a journaled job or a workflow named another host. If that host is really the provider's, "
                "set BANANA_<PROVIDER>_BASE_URL to it (or add it to the provider's auth_hosts in providers.json).",
            )
            refused.sent = False
            raise refused
        if self.scheme == "x-goog-api-key":
            return {"x-goog-api-key": self.key}
        if self.scheme == "key":
            return {"Authorization": f"Key {self.key}"}
        return {"Authorization": f"Bearer {self.key}"}
