"""Housekeeping of a result store: the bookkeeping folders stop growing; saved images are never touched.

Run at load (for the default save folder) and once per process for any other save_to folder:
- `.journal/`: an entry older than its provider's result lifetime (catalog `result_lifetime`,
  BANANA_<ID>_RESULT_LIFETIME) is removed: the provider no longer has a result to attach to.
  Where the provider is unknown (a custom gateway since removed, an unreadable entry), the
  longest lifetime of any provider applies.
- `.cache/`: an entry none of whose files is still in the store is removed (the request would
  run again anyway). An entry with any of its files still there is kept, whatever else it holds.
- `reports/`: reports older than BANANA_REPORTS_MAX_AGE_DAYS (default 30; 0 or "off": keep
  all) are removed. The images they list, and the sidecars beside them (each image's own
  provenance: prompt, request id, cost), are not.
Nothing else is deleted: not an image, not a sidecar, not a file this pack did not name itself
(only `<64 hex>.json` entries and `<date>-<time>_<id>.json` reports are candidates), and nothing
through a symlink. Ages are taken as the younger of the file's time and the time it records, so
a touched or an edited file is never removed early.

Files are read as untrusted input (anyone can upload into the output folder): size-limited,
shape-checked, and a file that cannot be understood is left where it is.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..providers.catalog import PRESETS
from ..providers.errors import BananaError
from .store import ResultStore

log = logging.getLogger("nano_banana_bridge")

REPORTS_MAX_AGE_ENV = "BANANA_REPORTS_MAX_AGE_DAYS"
DEFAULT_REPORTS_MAX_AGE_DAYS = 30.0
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")
_REPORT_NAME = re.compile(r"^(\d{8}-\d{6})_[0-9a-f]{6}\.json$")
_MAX_READ = 1 << 20  # a real entry is a few KB

_tidied: set[str] = set()
_tidied_lock = threading.Lock()


@dataclass
class Tidied:
    journal: list[Path] = field(default_factory=list)
    cache: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.journal) + len(self.cache) + len(self.reports)


def reports_max_age() -> float | None:
    """Seconds a report is kept, from BANANA_REPORTS_MAX_AGE_DAYS; None: keep every report."""
    raw = os.environ.get(REPORTS_MAX_AGE_ENV, "").strip().lower()
    if raw in ("", "default"):
        return DEFAULT_REPORTS_MAX_AGE_DAYS * 86400
    if raw in ("0", "off", "never", "none", "false"):
        return None
    try:
        days = float(raw)
    except ValueError:
        log.warning("Nano Banana Bridge: %s=%r is not a number of days; keeping reports for %g days.", REPORTS_MAX_AGE_ENV, raw, DEFAULT_REPORTS_MAX_AGE_DAYS)
        return DEFAULT_REPORTS_MAX_AGE_DAYS * 86400
    return days * 86400 if days > 0 else None


def provider_lifetimes() -> dict[str, float]:
    """Each provider's result lifetime in seconds, with the user's overrides; presets if the config is broken."""
    from ..providers.config import all_providers

    try:
        specs = all_providers()
    except (BananaError, OSError, ValueError):
        specs = list(PRESETS)
    return {spec.id: spec.result_lifetime for spec in specs}


def tidy(
    root: str | os.PathLike,
    *,
    lifetimes: Mapping[str, float] | None = None,
    report_age: float | None | str = "env",
    now: float | None = None,
) -> Tidied:
    """Remove the stale bookkeeping under one store root; return what was removed. Never raises for a file."""
    root = Path(root)
    now = time.time() if now is None else now
    lifetimes = provider_lifetimes() if lifetimes is None else lifetimes
    max_age = reports_max_age() if isinstance(report_age, str) else report_age  # "env": read the setting
    done = Tidied()
    longest = max(lifetimes.values(), default=30 * 86400.0)
    # Only entries this install wrote (their HMAC verifies) are candidates: anyone can upload a file
    # named like an entry, and housekeeping never deletes what the pack did not write.
    store = ResultStore(root)
    for path in _candidates(root / ".journal", _ENTRY_NAME):
        body = store.authentic_body(path, "journal")
        if body is None:
            continue
        _, mtime = _read(path)
        provenance = body.get("provenance")
        provenance = provenance if isinstance(provenance, dict) else {}
        lifetime = lifetimes.get(str(provenance.get("provider")), longest)
        if _age(now, mtime, _timestamp(body.get("submitted_at"))) > lifetime:
            _remove(path, done.journal)
    for path in _candidates(root / ".cache", _ENTRY_NAME):
        files = (store.authentic_body(path, "cache") or {}).get("files")
        if not isinstance(files, list) or not files:
            continue  # not understood: left alone
        if not any(_still_there(root, f) for f in files):
            _remove(path, done.cache)
    if max_age is not None:
        for path in _candidates(root / "reports", _REPORT_NAME):
            named = _REPORT_NAME.match(path.name)
            written = _timestamp(named.group(1), "%Y%m%d-%H%M%S") if named else None
            try:
                mtime = path.lstat().st_mtime
            except OSError:
                continue
            if _age(now, mtime, written) > max_age:
                _remove(path, done.reports)
    if done.count:
        log.info(
            "Nano Banana Bridge: tidied %s: %d expired journal entries, %d cache entries without files, %d old reports (saved images are never removed)",
            root,
            len(done.journal),
            len(done.cache),
            len(done.reports),
        )
    return done


def tidy_once(root: str | os.PathLike) -> Tidied | None:
    """tidy() the first time a root is seen in this process (load, or a save_to folder's first use)."""
    key = str(Path(root).resolve())
    with _tidied_lock:
        if key in _tidied:
            return None
        _tidied.add(key)
    try:
        return tidy(root)
    except Exception:
        log.warning("Nano Banana Bridge: housekeeping of %s failed", root, exc_info=True)
        return None


# -- helpers -----------------------------------------------------------------------------------


def _candidates(folder: Path, name: re.Pattern[str]) -> list[Path]:
    """Regular files (not symlinks) in `folder` whose names this pack writes."""
    try:
        if not stat.S_ISDIR(folder.lstat().st_mode):
            return []
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        try:
            if name.match(path.name) and stat.S_ISREG(path.lstat().st_mode):
                found.append(path)
        except OSError:
            continue
    return found


def _read(path: Path) -> tuple[Any, float]:
    """The JSON in a candidate file (None when unreadable or too large) and its modification time."""
    try:
        info = path.lstat()
        if info.st_size > _MAX_READ:
            return None, info.st_mtime
        return json.loads(path.read_bytes().decode("utf-8")), info.st_mtime
    except (OSError, ValueError):
        try:
            return None, path.lstat().st_mtime
        except OSError:
            return None, time.time()


def _timestamp(text: Any, fmt: str | None = None) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.strptime(text, fmt) if fmt else dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp()  # naive times are local, as the store writes them


def _age(now: float, mtime: float, recorded: float | None) -> float:
    """The younger of the two ages: a file is never removed early because one of its times is off."""
    newest = mtime if recorded is None else max(mtime, recorded)
    return now - newest


def _still_there(root: Path, file: Any) -> bool:
    """Whether a cache entry's file is present inside the store (a path outside it counts as gone)."""
    rel = file.get("path") if isinstance(file, dict) else file
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return False
    try:
        return (root / rel).is_file()
    except OSError:
        return True  # cannot tell: keep the entry


def _remove(path: Path, removed: list[Path]) -> None:
    try:
        path.unlink()
        removed.append(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.info("Nano Banana Bridge: could not remove %s: %s", path, exc)
