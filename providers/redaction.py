"""Keeps API keys out of every string the pack produces.

Every key the pack loads is registered here; `redact` replaces each registered key, and the
forms it takes on its way through URLs and JSON (percent-encoded by quote / quote_plus,
JSON-escaped), with a fixed marker. Error messages, log records, progress text, node outputs,
reports and sidecars all pass through it, so a key that reached a provider's error body or a
URL still never reaches the user's screen, a log, a file or /history.

Truncate only after redacting (`clip`): a key cut in half by a [:200] no longer matches. For
text that was cut before it got here (a provider's truncated echo, a model's words), the first or
last 8 or more characters of a key are redacted wherever they appear: keys are random, so such a
run does not occur in ordinary text by chance.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

MARKER = "***"
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_MIN_PIECE = 8  # a cut-off piece of a key is redacted from this many characters

_lock = threading.Lock()
_secrets: set[str] = set()
_forms: list[str] = []  # every registered secret in every encoded form, longest first
_pattern: re.Pattern[str] | None = None


def _encoded_forms(secret: str) -> set[str]:
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), quote_plus(secret, safe="")}
    forms |= {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    # Percent-encoding with lower-case hex digits is as valid as upper case.
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in list(forms)}
    return forms


def register_secret(value: str | None) -> None:
    global _pattern, _forms
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        forms = {form for secret in _secrets for form in _encoded_forms(secret)}
        _forms = sorted(forms, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(f) for f in _forms))


def redact(text: object) -> str:
    s = text if isinstance(text, str) else str(text)
    pattern, forms = _pattern, _forms
    if pattern is None or not s:
        return s
    s = pattern.sub(MARKER, s)
    return _redact_cut_pieces(s, forms)


def _redact_cut_pieces(s: str, forms: list[str]) -> str:
    """A piece of a key that a cut left behind: its first or last _MIN_PIECE+ characters, anywhere in the text."""
    for form in forms:
        if len(form) <= _MIN_PIECE:
            continue
        head, tail = form[:_MIN_PIECE], form[-_MIN_PIECE:]
        at = s.find(head)
        while at != -1:  # `...key[:n]`: extend the match as far as the key goes
            n = _MIN_PIECE
            while n < len(form) and at + n < len(s) and s[at + n] == form[n]:
                n += 1
            s = s[:at] + MARKER + s[at + n :]
            at = s.find(head, at + len(MARKER))
        at = s.find(tail)
        while at != -1:  # `key[-n:]...`: extend the match backwards
            end, n = at + _MIN_PIECE, _MIN_PIECE
            while n < len(form) and end - n - 1 >= 0 and s[end - n - 1] == form[-n - 1]:
                n += 1
            s = s[: end - n] + MARKER + s[end:]
            at = s.find(tail, end - n + len(MARKER))
    return s


def clip(text: object, limit: int, *, ellipsis: str = "...") -> str:
    """Redact, then shorten to `limit` characters: never the other way round."""
    s = redact(text)
    return s if len(s) <= limit else s[:limit] + ellipsis


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, strings, numbers) with every string redacted."""
    if _pattern is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with keys removed (installed on the pack's and httpx's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
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
