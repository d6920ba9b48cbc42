"""The one HTTP engine every provider uses.

It owns everything that is not a provider's protocol: the pooled httpx client, timeouts,
retries with backoff and jitter, Retry-After and Google's RetryInfo, the per-provider
concurrency limit shared by the whole process, cancellation, once-a-second status text,
polling of asynchronous jobs, result downloads, and the mapping of HTTP failures onto the
error taxonomy. Protocol modules stay declarative: they build bodies and parse answers.

Modules by concern: context (CallContext, Caller), policy (retry policies and hints), limiter
(the process-wide concurrency limit), error_mapping (provider error envelopes onto the
taxonomy), polling (PollState, PollCadence), transport (HttpEngine, Response, the client lifecycle), auth (where a
key may go: Credentials, the model-id check), bodies (reading answers within limits).
"""

from .auth import Credentials, check_model_id, without_userinfo
from .context import CallContext, Caller
from .error_mapping import (
    EMPTY_BALANCE_CODES,
    EMPTY_BALANCE_PHRASES,
    SAFETY_CODES,
    SAFETY_PHRASES,
    ErrorEnvelope,
    error_for_status,
    error_in_answer,
    names_safety,
    parse_error_body,
    read_error_body,
    request_id_in,
)
from .limiter import ProcessLimiter, limiter_for
from .policy import (
    BILLING_RULES,
    GENERATE,
    IDEMPOTENT,
    SUBMIT,
    BillingRule,
    RetryPolicy,
    retry_after_header,
)
from .polling import BUDGET_WINDOW, PollCadence, PollClock, PollState
from .transport import (
    CANCEL_CHECK_INTERVAL,
    CONNECT_TIMEOUT,
    MAX_ANSWER_BYTES,
    MAX_DOWNLOAD_BYTES,
    MAX_ERROR_BYTES,
    STATUS_INTERVAL,
    HttpEngine,
    Response,
    get_engine,
    mark_maybe_billed,
)

__all__ = [
    "mark_maybe_billed",
    "request_id_in",
    "BILLING_RULES",
    "MAX_ANSWER_BYTES",
    "MAX_ERROR_BYTES",
    "BillingRule",
    "Credentials",
    "check_model_id",
    "without_userinfo",
    "CANCEL_CHECK_INTERVAL",
    "CONNECT_TIMEOUT",
    "EMPTY_BALANCE_CODES",
    "EMPTY_BALANCE_PHRASES",
    "GENERATE",
    "IDEMPOTENT",
    "MAX_DOWNLOAD_BYTES",
    "SAFETY_CODES",
    "SAFETY_PHRASES",
    "STATUS_INTERVAL",
    "SUBMIT",
    "CallContext",
    "Caller",
    "ErrorEnvelope",
    "HttpEngine",
    "BUDGET_WINDOW",
    "PollCadence",
    "PollClock",
    "PollState",
    "ProcessLimiter",
    "Response",
    "RetryPolicy",
    "error_for_status",
    "error_in_answer",
    "get_engine",
    "limiter_for",
    "names_safety",
    "parse_error_body",
    "read_error_body",
    "retry_after_header",
]
