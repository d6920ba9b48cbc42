"""One run's money: its estimate checked by the guard, each call written to the ledger as it ends.

render() makes one RunSpend per node execution: `guarded()` around the calls, `record` as the
batch's per-item callback, `summary()` for the report and the node's status line.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..providers import costs
from ..providers.catalog import ModelOffer, ProviderSpec
from ..providers.errors import BananaError, Cancelled, Refusal
from .guard import Reserved, SpendGuard, money
from .ledger import MAYBE_BILLED, NOW, OK, REFUSED, Ledger, LedgerEntry, today


@dataclass
class RunSpend:
    spec: ProviderSpec
    offer: ModelOffer
    resolution: str | None
    ledger: Ledger
    prompt_id: str | None = None  # ComfyUI's prompt id: a run is one queued workflow
    delivery: str = NOW
    discount: float = 1.0  # Batch Mode bills half
    run_id: str = ""
    recorded: float = 0.0  # this node's recorded cost, in `unit`
    _reserved: Reserved | None = field(default=None, repr=False)
    _recording: threading.Lock = field(default_factory=threading.Lock, repr=False)  # record() runs in worker threads

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.prompt_id or f"local-{uuid.uuid4().hex[:12]}"

    @property
    def unit(self) -> str:
        return self.offer.price_unit or "usd"

    def per_call(self, count: int = 1) -> float | None:
        listed = costs.list_cost(self.offer, self.resolution, count)
        return None if listed is None else round(listed * self.discount, 6)

    def estimate(self, counts: list[int]) -> tuple[float | None, str]:
        """Calls x list price (x the batch discount), and how it was reckoned, for the guard's message."""
        prices = [self.per_call(n) for n in counts]
        if any(p is None for p in prices):
            return None, f"{len(counts)} call(s), no list price known for {self.offer.name} on {self.spec.display_name}"
        total = round(sum(p or 0.0 for p in prices), 6)
        unit_price = self.per_call(1) or 0.0
        discount = " at the Batch Mode price" if self.discount != 1.0 else ""
        return total, f"{sum(counts)} image(s) x {money(unit_price, self.unit)}{discount}"

    @contextmanager
    def guarded(self, counts: list[int]) -> Iterator[None]:
        amount, what = self.estimate(counts)
        with SpendGuard(self.ledger).reserve(self.spec, estimate=amount, unit=self.unit, run=self.run_id, what=what) as reserved:
            self._reserved = reserved
            try:
                yield
            finally:
                self._reserved = None

    # -- recording ------------------------------------------------------------------------------

    def entry_for(self, *, prompt: str, images: int, count: int, cost: float | None, unit: str | None, source: str | None, request_id: str | None, error: BaseException | None, usage: dict | None) -> LedgerEntry | None:
        """The row for one finished call, or None when it cannot have cost anything."""
        if error is None:
            outcome = OK
        elif isinstance(error, Refusal):
            outcome = REFUSED
            by_tokens = costs.token_cost(self.offer, usage or error.usage, has_image=False)
            if "not be charged" in (error.finish_message or "").lower():
                cost, unit, source = 0.0, self.unit, costs.PROVIDER  # Google's IMAGE_SAFETY text says so
            elif by_tokens is not None:  # otherwise Google bills a refusal's tokens too
                cost, unit, source = round(by_tokens * self.discount, 6), "usd", costs.TOKENS
            request_id = request_id or error.request_id
        elif isinstance(error, BananaError) and (error.maybe_billed or (error.unanswered and not isinstance(error, Cancelled))):
            # Sent, no answer: the provider may have generated (and billed) it. Counted at list price.
            outcome, cost, unit, source = MAYBE_BILLED, self.per_call(count), self.unit, costs.LIST_PRICE
            request_id = request_id or error.request_id
        else:
            return None  # refused before generation by HTTP status, never sent, or cancelled while waiting
        return LedgerEntry(
            provider=self.spec.id,
            model=self.offer.name,
            model_id=self.offer.model_id,
            resolution=self.resolution,
            images=images,
            outcome=outcome,
            cost=cost,
            unit=unit or self.unit,
            cost_source=source,
            delivery=self.delivery,
            request_id=request_id,
            prompt_id=self.prompt_id,
            run_id=self.run_id,
            prompt=prompt,
        )

    def record(self, entry: LedgerEntry | None, count: int = 1) -> None:
        """Write the call's row, then release its share of the estimate; safe from any thread.

        The row comes first, so a guard checking meanwhile counts the call twice, never not at all."""
        if entry is not None:
            self.ledger.record(entry)
        if self._reserved is not None:
            self._reserved.settle(self.per_call(count) or 0.0)
        if entry is not None and entry.cost is not None and entry.unit == self.unit:
            with self._recording:
                self.recorded = round(self.recorded + max(0.0, entry.cost), 6)

    def record_outcome(self, outcome: Any, count: int = 1) -> None:
        """The batch runner's per-item callback (an ItemOutcome; cached items cost nothing)."""
        if outcome.status in ("cached", "pending"):
            self.record(None, count)
            return
        self.record(
            self.entry_for(
                prompt=outcome.prompt,
                images=len(outcome.images),
                count=count,
                cost=outcome.cost if outcome.error is None else None,
                unit=outcome.cost_unit,
                source=getattr(outcome, "cost_source", None),
                request_id=outcome.request_id,
                error=outcome.error,
                usage=getattr(outcome, "usage", None),
            ),
            count,
        )

    def summary(self) -> dict[str, Any]:
        """This node's recorded cost, the run's (every node of the workflow) and today's, in the node's unit."""
        run: float | None
        day: float | None
        try:
            run, day = self.ledger.spent(unit=self.unit, run_id=self.run_id), self.ledger.spent(unit=self.unit, day=today())
        except (sqlite3.Error, OSError):
            run = day = None  # the ledger is unreadable (logged there); the run itself is done and saved
        return {
            "unit": self.unit,
            "node": self.recorded,
            "run": run,
            "today": day,
            "prompt_id": self.prompt_id,
            "ledger": str(self.ledger.path),
        }
