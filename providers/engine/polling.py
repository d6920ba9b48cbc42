"""What a poll of an asynchronous job reports, when to poll next, and the status line shown while waiting."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .context import Caller


@dataclass
class PollState:
    done: bool
    value: Any = None
    status: str = ""
    progress: float | None = None  # 0..100 when the provider reports it
    queue_position: int | None = None
    retry_after: float | None = None  # the provider's own "poll again in N s" (Retry-After on the poll)


BUDGET_WINDOW = 60.0  # seconds: a poll budget counts polls per job in any window this long


@dataclass(frozen=True)
class PollCadence:
    """When one job is polled: soon after submit, then backing off to the provider's cadence.

    first: seconds from submit to the first poll (a job that is done at once returns that soon);
    every: the steady interval the backoff reaches (the provider's documented or observed one);
    budget: the most polls one job makes in any BUDGET_WINDOW (the provider's rate limits);
    a provider's Retry-After on a poll replaces the next interval, within the budget.
    """

    first: float = 0.25
    every: float = 5.0
    budget: int = 30
    growth: float = 2.0

    def schedule(self) -> PollClock:
        return PollClock(self)

    def polls_in_window(self) -> int:
        """Polls the backoff alone makes in the first window (the busiest one); <= budget when the data is sane."""
        elapsed, delay, polls = self.first, self.first, 0
        while elapsed <= BUDGET_WINDOW:
            polls += 1
            delay = min(self.every, delay * self.growth)
            elapsed += delay
        return polls


class PollClock:
    """The delays of one job's polls; `next_delay` is called after each poll, at time `now`."""

    def __init__(self, cadence: PollCadence) -> None:
        self.cadence = cadence
        self._delay = cadence.first
        self._recent: deque[float] = deque()  # times of the polls within the last window

    @property
    def first_delay(self) -> float:
        return self.cadence.first

    def next_delay(self, now: float, hint: float | None = None) -> float:
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - BUDGET_WINDOW:
            self._recent.popleft()
        self._delay = min(self.cadence.every, self._delay * self.cadence.growth)
        delay = hint if hint is not None and hint >= 0 else self._delay
        if len(self._recent) >= max(1, self.cadence.budget):
            # The budget is spent for this window: wait until its oldest poll leaves it.
            delay = max(delay, self._recent[-max(1, self.cadence.budget)] + BUDGET_WINDOW - now)
        return delay


def _poll_status_text(caller: Caller, state: PollState) -> str:
    text = state.status or "Working"
    if state.queue_position is not None:
        text += f", queue position {state.queue_position}"
    if state.progress is not None:
        text += f", {state.progress:.0f}%"
    return f"{caller.provider}: {text}"
