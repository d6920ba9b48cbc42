"""Where accepted asynchronous jobs are journaled, and where a re-run looks for them.

A run journals each job a provider accepted (and so may bill) in its save folder, or, with save_to
empty, in the pack's config folder; a re-run of the same request attaches to that job instead of
paying again. The re-run may save elsewhere than the run that paid, so it looks through every
journal this install keeps: its own, the config folder's, then the save folders that hold one.

Which save folders: first those an index in the config folder names (each run with a save folder
puts it first there; nested folders such as `a/b` too), then the folders directly
under the output folder that hold a journal. The index comes first because anyone who can reach
ComfyUI can create folders in the output folder (its upload route): found by a scan alone, planted
folders could crowd the user's own out of the ones looked through. The index only says where to
look: entries are signed with the install's secret and bound to their request key wherever they are.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from itertools import islice
from pathlib import Path
from typing import Any

from ..providers.config import config_dir, warn_once
from ..providers.errors import ConfigError
from .housekeeping import tidy_once
from .store import ResultStore, atomic_write

JOURNAL_WITHOUT_STORE = "jobs"  # under the pack's config folder
SAVE_FOLDER_INDEX = "save_folders.json"  # in that folder: the save folders runs journaled jobs in, newest first
MAX_SAVE_FOLDERS_WITH_JOURNALS = 50  # looked through (and listed by the jobs tab)
MAX_INDEXED_SAVE_FOLDERS = 200
MAX_INDEX_BYTES = 64 * 1024
MAX_FOLDER_NAME = 1000
_index_lock = threading.Lock()


def journal_without_store_root() -> Path | None:
    """Where a run without a result store (save_to empty) journals its accepted asynchronous jobs: the
    pack's config folder, never ComfyUI's output folder (config_dir refuses a folder ComfyUI serves).
    None when the config folder is refused."""
    try:
        return config_dir() / JOURNAL_WITHOUT_STORE
    except ConfigError as exc:
        warn_once("Nano Banana Bridge: no job journal without save_to (%s); a re-run cannot attach to an accepted job.", exc.headline())
        return None


def job_journal_without_store() -> ResultStore | None:
    """The journal of a run without a result store, so a re-run after a stop, a timeout or a crash
    attaches to its accepted jobs instead of paying again. Only journal entries are written there,
    signed like a save folder's (the jobs tab lists them too)."""
    root = journal_without_store_root()
    if root is None:
        return None
    tidy_once(root)  # expired entries go, as in a save folder at its first use
    return ResultStore(root)


def save_folder_name(base: Path, folder: Path) -> str | None:
    """`folder`'s name under `base` (`a` or `a/b`), or None when it is not a folder inside it."""
    try:
        relative = folder.resolve().relative_to(base.resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    return relative.as_posix() if relative.parts else None


def save_folder_with_journal(base: Path, name: Any) -> Path | None:
    """The folder `name` (`a` or `a/b`) under `base` when it holds a job journal and no link leads
    anywhere on the way: names come from the index and from the jobs tab's requests, and the folders
    from the output folder, none of which is trusted to stay inside it."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_FOLDER_NAME or "\\" in name or "\x00" in name:
        return None
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    folder = base.joinpath(*parts)
    try:
        if folder.resolve() != base.resolve().joinpath(*parts):  # a symlink somewhere on the way
            return None
        is_journal = stat.S_ISDIR((folder / ".journal").lstat().st_mode)
    except (OSError, RuntimeError, ValueError):
        return None
    return folder if is_journal else None


def _index_path() -> Path | None:
    root = journal_without_store_root()
    return root / SAVE_FOLDER_INDEX if root is not None else None


def _indexed_names(path: Path) -> list[str]:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_INDEX_BYTES + 1)
        names = json.loads(data) if len(data) <= MAX_INDEX_BYTES else None
    except (OSError, ValueError):  # none yet, or unreadable: the scan still finds direct subfolders
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def record_save_folder(base: Path, folder: Path) -> None:
    """Put `folder` (under `base`) first in the index: a run saves there, and journals there any job it
    submits. Never raises: the job is journaled either way, and the scan still finds a folder directly
    under `base`."""
    name, path = save_folder_name(base, folder), _index_path()
    if name is None or path is None:
        return
    with _index_lock:
        indexed = _indexed_names(path)
        if indexed[:1] == [name]:
            return  # the same folder as the last run: nothing to write
        # What no longer leads to a journal (a folder deleted, a hand edit, a run that journaled nothing) goes on the way.
        names = [name] + [other for other in indexed if other != name and save_folder_with_journal(base, other) is not None]
        try:
            atomic_write(path, json.dumps(names[:MAX_INDEXED_SAVE_FOLDERS]).encode())
        except OSError as exc:
            warn_once("Nano Banana Bridge: could not record the save folder of a journaled job (%s); a re-run with another save_to may not find it.", type(exc).__name__)


def save_folders_with_journals(base: Path | None) -> list[Path]:
    """The save folders whose journals a re-run and the jobs tab look through (at most 50): those the
    index names, newest first, then the folders directly under `base` that hold a journal, sorted; each
    by the same rule (save_folder_with_journal), so the jobs tab can act on every folder it lists."""
    if base is None:
        return []
    path = _index_path()
    names = _indexed_names(path) if path is not None else []
    try:
        with os.scandir(base) as entries:  # an output folder holds thousands of files: no stat for those
            names += sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except OSError:
        pass
    found = (save_folder_with_journal(base, name) for name in dict.fromkeys(names))
    return list(islice((folder for folder in found if folder is not None), MAX_SAVE_FOLDERS_WITH_JOURNALS))


class JobJournals:
    """Where a run journals the jobs it submits (its save folder, or the config folder without one), and
    the other journals this install keeps: a re-run whose save_to was changed or emptied still attaches
    to the job an earlier run paid for, instead of paying again. Entries are signed with the install's
    secret and bound to their request key, so another folder's journal is as trusted as the run's own."""

    def __init__(self, own: ResultStore | None, others: list[ResultStore]) -> None:
        self._own = own
        self._in_order = ([own] if own is not None else []) + others  # where pending_task looks
        self._found_elsewhere: dict[str, ResultStore] = {}
        self._lock = threading.Lock()

    def remember_task(self, key: str, handle: dict[str, Any], provenance: dict[str, Any]) -> None:
        if self._own is not None:
            self._own.remember_task(key, handle, provenance)

    def pending_task(self, key: str) -> dict[str, Any] | None:
        """The handle journaled for this request: in the run's own journal, else in any other."""
        for journal in self._in_order:
            handle = journal.pending_task(key)
            if handle is not None:
                if journal is not self._own:
                    with self._lock:
                        self._found_elsewhere[key] = journal
                return handle
        return None

    def forget_task(self, key: str) -> None:
        """The job is over (collected, refused, or ended by the provider): in every journal that held it."""
        if self._own is not None:
            self._own.forget_task(key)
        self.forget_elsewhere(key)

    def forget_elsewhere(self, key: str) -> None:
        """After store.save (which forgets the run's own entry): the entry the job was found under elsewhere."""
        with self._lock:
            journal = self._found_elsewhere.pop(key, None)
        if journal is not None:
            journal.forget_task(key)


def job_journals(store: ResultStore | None, output_root: Path | None) -> JobJournals:
    """The run's journals: its own, then the config folder's (runs without save_to), then the save
    folders'. A run's save folder goes first in the index here (a thread; not on the event loop)."""
    if store is not None and output_root is not None:
        record_save_folder(output_root, store.root)
    without_store = job_journal_without_store()
    own = store if store is not None else without_store
    roots = ([without_store.root] if without_store is not None and store is not None else []) + save_folders_with_journals(output_root)
    own_root = own.root.resolve() if own is not None else None
    others = [ResultStore(root) for root in dict.fromkeys(roots) if root.resolve() != own_root]
    return JobJournals(own, others)
