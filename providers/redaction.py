"""Keeps API keys out of every string the pack produces.

Every key the pack loads is registered here; `redact` replaces each registered key (and its
common derivations, such as the value of an `Authorization` header) with a fixed marker.
Error messages, log records and progress text all pass through it, so a key that reached a
provider's error body or a URL still never reaches the user's screen, a log, or /history.
"""

from __future__ import annotations

import logging
import threading

MARKER = "***"
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    s = text if isinstance(text, str) else str(text)
    if not _secrets:
        return s
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in s:
            s = s.replace(secret, MARKER)
    return s


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with keys removed (installed on the pack's and httpx's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is the logging module's problem, not ours
                return True
            record.msg, record.args = redact(message), None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def install_log_filter(*logger_names: str) -> None:
    for name in logger_names:
        target = logging.getLogger(name)
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
