"""The cost ledger: one row per call that may have cost money, in SQLite beside keys.json.

Why SQLite (the standard library's sqlite3) and not JSON lines: the spend guard asks "how much
today / this run / this provider" before every run, from several threads and event loops at
once; SQLite answers that with one indexed query under its own file locking, and a crash mid-write
cannot leave half a row. Why the config folder and not the output folder: anyone who can reach
ComfyUI can write files into the output folder (its upload route), so a ledger there could be
replaced to wipe the day's spend and lift the limits; the config folder (beside keys.json) is
not served or written by ComfyUI's HTTP routes. The ledger still treats its file as untrusted:
a damaged file is moved aside (and logged) instead of failing the node, and values read back are
clamped (a negative or non-numeric cost counts as nothing).

Pure Python: no torch, no ComfyUI.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..providers.config import config_dir, user_settings
from ..providers.redaction import redact

log = logging.getLogger("nano_banana_bridge")

LEDGER_FILE = "ledger.sqlite3"
OK, REFUSED, MAYBE_BILLED = "ok", "refused", "maybe_billed"  # what happened to the call
NOW, BATCH = "now", "batch"  # delivery

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    prompt_id TEXT,
    run_id TEXT,
    provider TEXT,
    model TEXT,
    model_id TEXT,
    resolution TEXT,
    images INTEGER,
    outcome TEXT,
    cost REAL,
    unit TEXT,
    cost_source TEXT,
    delivery TEXT,
    request_id TEXT,
    prompt TEXT
);
CREATE INDEX IF NOT EXISTS calls_day ON calls(day, provider);
CREATE INDEX IF NOT EXISTS calls_prompt ON calls(prompt_id);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
"""
_COLUMNS = ("ts", "day", "prompt_id", "run_id", "provider", "model", "model_id", "resolution", "images", "outcome", "cost", "unit", "cost_source", "delivery", "request_id", "prompt")
# A cost as stored counts only when it is a plain non-negative number (a tampered row counts as nothing).
_COST = "CASE WHEN typeof(cost) IN ('real', 'integer') AND cost >= 0 THEN cost ELSE 0 END"
_ON = ("1", "true", "yes", "on")


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Not a database, a corrupt one, or one with a foreign schema (someone else's file)."""
    text = str(exc).lower()
    return any(sign in text for sign in ("not a database", "malformed", "no such column", "has no column", "encrypted", "no such table"))


def today() -> str:
    return dt.date.today().isoformat()


def clean_cost(value: Any) -> float | None:
    """A provider-reported cost is untrusted input: only a finite, non-negative number is kept."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


@dataclass
class LedgerEntry:
    provider: str
    model: str
    outcome: str
    cost: float | None
    unit: str | None = "usd"
    cost_source: str | None = None
    model_id: str | None = None
    resolution: str | None = None
    images: int = 0
    delivery: str = NOW
    request_id: str | None = None
    prompt_id: str | None = None
    run_id: str | None = None
    prompt: str | None = None  # kept only when the user asked for it (keep_prompts)
    ts: float = field(default_factory=time.time)

    def row(self) -> tuple:
        values = {**self.__dict__, "day": dt.date.fromtimestamp(self.ts).isoformat(), "cost": clean_cost(self.cost)}
        return tuple(values[c] for c in _COLUMNS)


def keep_prompts() -> bool:
    """BANANA_LEDGER_PROMPTS=1, or {"ledger": {"keep_prompts": true}} in providers.json."""
    raw = os.environ.get("BANANA_LEDGER_PROMPTS")
    if raw is None:
        section = user_settings().get("ledger")
        raw = section.get("keep_prompts") if isinstance(section, dict) else None
    return str(raw).strip().lower() in _ON if raw is not None else False


class Ledger:
    """Append-only rows and the sums the guard and the panel need; safe from any thread."""

    _lock = threading.Lock()  # one process-wide lock: sqlite3 connections are opened per call

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else config_dir() / LEDGER_FILE

    # -- storage ----------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.executescript(_SCHEMA)
        return conn

    def _quarantine(self, exc: Exception) -> None:
        """Move a damaged or foreign file aside, keep it for inspection, and start a new ledger."""
        target = self.path.with_name(f"{self.path.name}.damaged-{dt.datetime.now():%Y%m%d-%H%M%S}")
        try:
            os.replace(self.path, target)
            log.warning("Nano Banana Bridge: the cost ledger %s could not be read (%s); moved it to %s and started a new one.", self.path, exc, target)
        except OSError:
            log.warning("Nano Banana Bridge: the cost ledger %s could not be read (%s) and could not be moved aside.", self.path, exc)

    def _run(self, sql: str, params: tuple = (), *, many: list[tuple] | None = None) -> list[tuple]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connect()
                    try:
                        cursor = conn.executemany(sql, many) if many is not None else conn.execute(sql, params)
                        return cursor.fetchall()
                    finally:
                        conn.close()
                except sqlite3.DatabaseError as exc:
                    if attempt == 2 or not _damaged(exc):
                        raise  # locked, unwritable folder, ...: report, never move a good ledger aside
                    self._quarantine(exc)
        return []

    def record(self, *entries: LedgerEntry) -> None:
        """Append rows. Never raises: a paid image is already on disk, a ledger problem must not fail the run."""
        if not entries:
            return
        try:
            keep = keep_prompts()
        except Exception:  # noqa: BLE001 - a broken providers.json: keep no prompt, still record the cost
            keep = False
        for entry in entries:
            entry.prompt = redact(entry.prompt) if keep and entry.prompt else None
        try:
            self._run(f"INSERT INTO calls ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", many=[e.row() for e in entries])
        except (sqlite3.Error, OSError) as exc:
            log.error("Nano Banana Bridge: could not write the cost ledger %s: %s", self.path, exc)

    # -- sums -------------------------------------------------------------------------------------

    def spent(self, *, unit: str = "usd", day: str | None = None, provider: str | None = None, prompt_id: str | None = None, run_id: str | None = None) -> float:
        where, params = ["unit = ?"], [unit]
        for column, value in (("day", day), ("provider", provider), ("prompt_id", prompt_id), ("run_id", run_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._run(f"SELECT COALESCE(SUM({_COST}), 0) FROM calls WHERE {' AND '.join(where)}", tuple(params))
        return round(float(rows[0][0]), 6) if rows else 0.0

    def by_day(self, days: int = 30) -> list[dict[str, Any]]:
        """Spend per day, provider and unit, newest first (the jobs & spend panel)."""
        since = (dt.date.today() - dt.timedelta(days=max(0, days - 1))).isoformat()
        rows = self._run(
            f"SELECT day, provider, unit, COUNT(*), COALESCE(SUM({_COST}), 0), SUM(outcome = '{REFUSED}'), SUM(outcome = '{MAYBE_BILLED}') "
            "FROM calls WHERE day >= ? GROUP BY day, provider, unit ORDER BY day DESC, provider",
            (since,),
        )
        return [
            {"day": str(d), "provider": str(p), "unit": str(u or ""), "calls": int(n or 0), "cost": round(float(c or 0), 6), "refused": int(r or 0), "maybe_billed": int(m or 0)}
            for d, p, u, n, c, r, m in rows
        ]

    def entries(self, *, prompt_id: str | None = None, limit: int = 200) -> Iterator[dict[str, Any]]:
        where, params = ("WHERE prompt_id = ?", (prompt_id,)) if prompt_id else ("", ())
        rows = self._run(f"SELECT {', '.join(_COLUMNS)} FROM calls {where} ORDER BY id DESC LIMIT ?", (*params, int(limit)))
        for row in rows:
            yield dict(zip(_COLUMNS, row))
