"""The explicit context a caller (a node, a test, a script) passes down, and who is calling."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..redaction import redact

log = logging.getLogger("nano_banana_bridge")


@dataclass
class CallContext:
    """How a caller observes and steers a call; every field is optional.

    cancel_check: returns True once the user asked to stop (ComfyUI's interrupt flag).
    on_status: receives a one-line human status about once a second while waiting.
    on_task: receives a resumable task handle right after an asynchronous job is accepted,
        before any polling, so the caller can journal it (a lost handle is a lost paid job).
    resume_task: a handle from an earlier on_task; the call attaches to that job instead of
        submitting a new one.
    """

    cancel_check: Callable[[], bool] | None = None
    on_status: Callable[[str], None] | None = None
    on_task: Callable[[dict], None] | None = None
    resume_task: dict | None = None
    started: float = field(default_factory=time.monotonic)

    def cancelled(self) -> bool:
        return bool(self.cancel_check and self.cancel_check())

    def status(self, text: str) -> None:
        if self.on_status:
            try:
                self.on_status(redact(text))
            except Exception:  # a broken display must not fail a paid call
                log.exception("status callback failed")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def detached(self) -> "CallContext":
        """A context without the cancel flag (or callbacks): for cleanup that must run after an interrupt."""
        return CallContext(started=self.started)


@dataclass(frozen=True)
class Caller:
    """Who is calling, for messages, limits and timeouts; base_url and own_hosts (the catalog's
    allowlist) say which non-public hosts count as the provider's own for downloads (addresses.py)."""

    provider: str
    model: str = ""
    read_timeout: float = 360.0
    base_url: str = ""
    own_hosts: tuple[str, ...] = ()
    rate_limit_may_bill: bool = False  # the catalog's word: a 429 from it may come after billing
