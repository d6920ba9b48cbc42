"""Retry policies: which failures are resent, how often, and the providers' retry hints.

The billing rules are the table BILLING_RULES: for each way a request can end, whether a paid
synchronous generation, an asynchronous submit, or an idempotent request (a poll, a download)
may be sent again. A paid request is resent only where the provider provably did not process it;
everything else ends in an error that says it may have been billed (README, "Billing and retries").
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

# How a request ended, as far as the billing rules care.
RATE_LIMITED = "rate_limited"
RATE_LIMITED_MAY_BILL = "rate_limited_may_bill"
REPORTED_FAILURE = "reported_failure"
NEVER_CONNECTED = "never_connected"
OTHER_STATUS = "other_status"
GATEWAY_TIMEOUT = "gateway_timeout"
UNREPORTED_FAILURE = "unreported_failure"
READ_TIMEOUT = "read_timeout"
CONNECTION_LOST = "connection_lost"
TRUNCATED = "truncated"
REDIRECTED = "redirected"


@dataclass(frozen=True)
class BillingRule:
    outcome: str
    what: str  # the outcome in words (README table)
    generate: bool  # a synchronous generation may be resent
    submit: bool  # an asynchronous submit may be resent
    idempotent: bool  # a poll or a download may be resent
    why: str


BILLING_RULES: tuple[BillingRule, ...] = (
    BillingRule(RATE_LIMITED, "HTTP 429 (rate limited; not an empty balance or a used-up daily quota)", True, True, True, "refused before any work"),
    BillingRule(
        RATE_LIMITED_MAY_BILL,
        "HTTP 429 from a provider that bills a request when it arrives (the catalog's rate_limit_may_bill: APIYI)",
        False, False, True, "it may have been billed on arrival",
    ),
    BillingRule(REPORTED_FAILURE, "HTTP 500, 502 or 503 with the provider's own JSON error envelope", True, False, True, "the provider reports that it failed"),
    BillingRule(NEVER_CONNECTED, "the connection never opened (connect error or connect timeout)", True, True, True, "nothing was sent"),
    BillingRule(UNREPORTED_FAILURE, "HTTP 500, 502 or 503 without the provider's error envelope (a proxy's page, an API gateway's {\"message\"} JSON, an empty body)", False, False, True, "no word from the provider: it may have run"),
    BillingRule(GATEWAY_TIMEOUT, "HTTP 408, 504 or 524 (a gateway gave up waiting)", False, False, True, "the provider may still be generating"),
    BillingRule(READ_TIMEOUT, "no answer, or no complete answer, within the timeout", False, False, True, "the provider may still be generating"),
    BillingRule(CONNECTION_LOST, "the connection dropped after the request was sent", False, False, True, "the request may have arrived"),
    BillingRule(TRUNCATED, "a 2xx answer cut off, or not parseable JSON", False, False, True, "the provider answered: it ran"),
    BillingRule(REDIRECTED, "a 3xx redirect (API calls never follow one)", False, False, False, "the key must not go to another host"),
    BillingRule(OTHER_STATUS, "any other 4xx or 5xx answer", False, False, False, "resending the same request will not help"),
)
RULES_BY_OUTCOME = {rule.outcome: rule for rule in BILLING_RULES}
# Outcomes after which a paid request may have been processed (and billed) by the provider.
MAYBE_BILLED = frozenset({UNREPORTED_FAILURE, GATEWAY_TIMEOUT, READ_TIMEOUT, CONNECTION_LOST, TRUNCATED, RATE_LIMITED_MAY_BILL})
MAYBE_BILLED_HINT = (
    "This call may have been processed and billed by the provider, so it was NOT sent again: check the provider's "
    "dashboard or request history{request_id} before running the same request again."
)


def status_outcome(status: int, provider_error: bool, rate_limit_may_bill: bool = False) -> str:
    """The outcome of an answer with an error status; provider_error: the body is the provider's own JSON
    error envelope (error_mapping.is_provider_error); rate_limit_may_bill: the catalog says a 429 from this
    provider may come after the request was billed."""
    if status == 429:
        return RATE_LIMITED_MAY_BILL if rate_limit_may_bill else RATE_LIMITED
    if status in (408, 504, 524):
        return GATEWAY_TIMEOUT
    if status in (500, 502, 503):
        return REPORTED_FAILURE if provider_error else UNREPORTED_FAILURE
    if 300 <= status < 400:
        return REDIRECTED
    return OTHER_STATUS


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; `billing` says which column of BILLING_RULES applies.

    billing None (a custom policy): statuses / retry_network_errors / retry_timeouts decide, as
    for any idempotent request.
    """

    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 524})
    max_attempts: int = 4  # first try plus three retries
    max_rate_limited_attempts: int = 6  # 429s get their own, larger budget
    retry_network_errors: bool = True  # connection reset, protocol errors while reading
    retry_timeouts: bool = True
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After (a daily quota) is reported, not waited out
    billing: str | None = None  # "generate", "submit", "idempotent" or None

    @property
    def paid(self) -> bool:
        return self.billing in ("generate", "submit")

    def may_resend(self, outcome: str, hint: bool | None = None) -> bool:
        """Whether a request that ended so may be sent again; `hint` is the provider's own say
        (x-should-retry, X-Fal-Retryable): False forbids, True allows a resend of a failed answer
        except for a submit, whose rule it cannot widen (an accepted job must not be paid twice)."""
        if hint is False:
            return False
        if self.billing is None:
            if outcome in (NEVER_CONNECTED,):
                return True
            if outcome in (READ_TIMEOUT,):
                return self.retry_timeouts
            if outcome in (CONNECTION_LOST, TRUNCATED):
                return self.retry_network_errors
            return False  # statuses are checked against `statuses` by the caller
        rule = RULES_BY_OUTCOME[outcome]
        allowed = getattr(rule, self.billing)
        if hint is True and self.billing != "submit" and outcome in (UNREPORTED_FAILURE, GATEWAY_TIMEOUT, REPORTED_FAILURE, RATE_LIMITED):
            return True
        return allowed


# A synchronous generation: resent only where the provider provably did not process it.
GENERATE = RetryPolicy(billing="generate")
# Submitting an asynchronous job: only resent when it provably was not accepted (429, or the
# connection never opened); any other failure could hide an accepted, paid job.
SUBMIT = RetryPolicy(statuses=frozenset({429}), retry_network_errors=False, retry_timeouts=False, billing="submit")
# Polls and downloads are idempotent: retry freely.
IDEMPOTENT = RetryPolicy(max_attempts=5, billing="idempotent")


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


def retry_hint(headers: httpx.Headers) -> bool | None:
    """The provider's own say on retrying: OpenAI-style `x-should-retry`, fal's `X-Fal-Retryable`."""
    for name in ("x-should-retry", "x-fal-retryable"):
        value = (headers.get(name) or "").strip().lower()
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
    return None
