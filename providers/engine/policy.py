"""Retry policies: which failures are resent, how often, and the providers' retry hints."""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 524})
    max_attempts: int = 4  # first try plus three retries
    max_rate_limited_attempts: int = 6  # 429s get their own, larger budget
    retry_network_errors: bool = True  # connection reset, protocol errors while reading
    retry_timeouts: bool = True
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After (a daily quota) is reported, not waited out


# A synchronous generation: retried on transient statuses, but a read timeout is not resent,
# because the provider may still be generating (and billing) the first one.
GENERATE = RetryPolicy(retry_timeouts=False)
# Submitting an asynchronous job: only resent when it provably was not accepted (429, or the
# connection never opened); any other failure could hide an accepted, paid job.
SUBMIT = RetryPolicy(statuses=frozenset({429}), retry_network_errors=False, retry_timeouts=False)
# Polls and downloads are idempotent: retry freely.
IDEMPOTENT = RetryPolicy(max_attempts=5)


def _retry_delay_seconds(text: Any) -> float | None:
    if isinstance(text, (int, float)):
        return float(text)
    if isinstance(text, str):
        match = re.fullmatch(r"\s*([0-9.]+)\s*s?\s*", text)
        if match:
            return float(match.group(1))
    return None


def retry_after_header(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _retry_delay_seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
