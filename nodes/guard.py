"""The spend guard: per-day and per-run limits, checked before a run sends anything.

Limits come from the environment first, then providers.json:
  BANANA_SPEND_LIMIT_DAY, BANANA_SPEND_LIMIT_RUN            all providers billed in USD
  BANANA_<ID>_SPEND_LIMIT_DAY, BANANA_<ID>_SPEND_LIMIT_RUN  one provider, in its own price unit
  providers.json: {"spend_limits": {"day": 10, "run": 2},
                   "settings": {"fal": {"spend_limit_day": 3, "spend_limit_run": 1}}}
A day is the local calendar day. A run is one queued workflow (ComfyUI's prompt id), so several
Nano Banana nodes in one workflow share the run limit; outside ComfyUI, one render call.

Before a run, its estimate (calls x list price, halved in Batch Mode) plus what the ledger says
was spent plus what other runs have reserved and not yet recorded is compared with every limit
that applies; the run fails before any request if one would be crossed. The check is the only
place a limit acts: work already sent is never abandoned to enforce one.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from ..providers.catalog import ProviderSpec
from ..providers.config import display_path, env_name, user_settings
from ..providers.errors import BananaError, ConfigError
from .ledger import Ledger, today

DAY, RUN = "day", "run"


class SpendLimitReached(BananaError):
    kind = "spend_limit"
    default_hint = "Nothing was sent. Raise or unset the limit (see the README, 'Cost: ledger and spend limits'), or make the run smaller."


@dataclass(frozen=True)
class Limit:
    scope: str  # DAY or RUN
    amount: float
    unit: str  # "usd" for the global limits; the provider's price unit for a provider's own
    source: str  # the variable or setting it came from, for the message
    provider: str | None = None  # None: every provider billed in `unit`

    def describe(self) -> str:
        who = f" for {self.provider}" if self.provider else ""
        return f"the {'daily' if self.scope == DAY else 'per-run'} limit{who} of {money(self.amount, self.unit)} ({self.source})"


def money(amount: float, unit: str | None) -> str:
    return f"${amount:.2f}" if (unit or "usd") == "usd" else f"{amount:g} {unit}"


def _amount(raw: Any, source: str) -> float | None:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source} must be a number (an amount of money), got {str(raw)[:40]!r}.", hint="Unset it for no limit.") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source} must be zero or more, got {str(raw)[:40]!r}.", hint="Unset it for no limit.")
    return value


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def limits_for(spec: ProviderSpec, unit: str) -> list[Limit]:
    """Every limit that applies to a call to `spec` billed in `unit`."""
    settings = user_settings()
    file_limits = _obj(settings.get("spend_limits"))
    per_provider = _obj(_obj(settings.get("settings")).get(spec.id))
    limits: list[Limit] = []
    for scope in (DAY, RUN):
        variable = f"BANANA_SPEND_LIMIT_{scope.upper()}"
        if unit == "usd":
            raw, source = (os.environ[variable], variable) if os.environ.get(variable, "").strip() else (file_limits.get(scope), f'providers.json "spend_limits"."{scope}"')
            amount = _amount(raw, source)
            if amount is not None:
                limits.append(Limit(scope, amount, "usd", source))
        variable = env_name(spec.id, f"SPEND_LIMIT_{scope.upper()}")
        key = f"spend_limit_{scope}"
        raw, source = (os.environ[variable], variable) if os.environ.get(variable, "").strip() else (per_provider.get(key), f'providers.json "settings"."{spec.id}"."{key}"')
        amount = _amount(raw, source)
        if amount is not None:
            limits.append(Limit(scope, amount, unit, source, spec.id))
    return limits


@dataclass
class _Reservation:
    day: str
    provider: str
    unit: str
    run: str
    amount: float


class SpendGuard:
    """Checks a run against the limits and holds its estimate until the run's calls are in the ledger."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _reserved: ClassVar[dict[str, _Reservation]] = {}  # process-wide: every node and event loop shares it

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _in_flight(self, limit: Limit, run: str) -> float:
        day = today()
        return sum(
            r.amount
            for r in self._reserved.values()
            if r.unit == limit.unit and (limit.provider is None or r.provider == limit.provider) and (r.day == day if limit.scope == DAY else r.run == run)
        )

    def spent(self, limit: Limit, run: str) -> float:
        try:
            if limit.scope == DAY:
                recorded = self.ledger.spent(unit=limit.unit, day=today(), provider=limit.provider)
            else:
                recorded = self.ledger.spent(unit=limit.unit, run_id=run, provider=limit.provider)
        except (sqlite3.Error, OSError) as exc:
            # A limit that cannot be checked is not waived: refuse, and say where the ledger is (as users
            # know the place: the message reaches /history, and an OSError's own text is the absolute path).
            why = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
            where = display_path(self.ledger.path)
            raise ConfigError(f"Cannot check {limit.describe()}: the cost ledger {where} cannot be read ({why}).", hint="Check that the config folder is writable; nothing was sent.") from None
        return recorded + self._in_flight(limit, run)

    @contextmanager
    def reserve(self, spec: ProviderSpec, *, estimate: float | None, unit: str, run: str, what: str = "") -> Iterator[Reserved]:
        """Refuse (SpendLimitReached) if the run would cross a limit; else hold its estimate while it runs."""
        token = uuid.uuid4().hex
        with self._lock:
            for limit in limits_for(spec, unit):
                spent = self.spent(limit, run)
                cost = estimate or 0.0
                if spent + cost > limit.amount + 1e-9:
                    so_far = "today" if limit.scope == DAY else "in this run"
                    raise SpendLimitReached(
                        f"Spend limit reached: {limit.describe()} has {money(spent, unit)} spent {so_far} (including runs still in progress), "
                        f"and this run is estimated at {money(cost, unit)}{f' ({what})' if what else ''}.",
                        provider=spec.id,
                    )
            self._reserved[token] = _Reservation(today(), spec.id, unit, run, estimate or 0.0)
        try:
            yield Reserved(self, token)
        finally:
            with self._lock:
                self._reserved.pop(token, None)


@dataclass
class Reserved:
    """A held estimate; each call recorded in the ledger releases its share, so nothing counts twice."""

    guard: SpendGuard
    token: str

    def settle(self, cost: float) -> None:
        with self.guard._lock:
            held = self.guard._reserved.get(self.token)
            if held is not None:
                held.amount = max(0.0, held.amount - max(0.0, cost))
