"""The jobs & spend panel's routes: journaled jobs with their status, spend from the ledger, cancel.

  GET  /nano_banana_bridge/jobs          pending journaled jobs (provider, task id, age, status) and
                                         spend per day and provider for the last 30 days
  POST /nano_banana_bridge/jobs/cancel   {"id": "<save folder>/<journal key>"} (the folder may be nested:
                                         `a/b/<key>`), or "config:<journal key>"
                                         for a run without save_to (journaled in the config folder):
                                         cancel that job at the provider, where it allows it (Google
                                         batches, fal queue jobs)

Journal files live in the output folder, which anyone who can reach ComfyUI can write to: every
field shown is checked and shortened, a job is only read through the result store, and a cancel
goes through ProviderCall, so the key is attached only on the provider's own origin whatever URL a
tampered journal holds. Cancelling keeps the journal entry: a re-queue of the run still collects
whatever had finished. Cancel, like the key routes, is accepted only from this machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

from ..providers.client import ProviderCall, provider_call, resolve_model
from ..providers.config import display_path, get_provider
from ..providers.engine import IDEMPOTENT, CallContext, get_engine
from ..providers.errors import BananaError, ConfigError
from ..providers.failover import HANDLE_KEY_SLOT, HANDLE_PROVIDER
from ..providers.protocols import gemini_batch
from ..providers.redaction import redact
from .journals import journal_without_store_root, save_folder_name, save_folder_with_journal, save_folders_with_journals
from .batch_mode import supports_batch
from .comfy_glue import output_dir
from .key_routes import guarded_read, guarded_write
from .ledger import Ledger, today
from .server_routes import register_once
from .store import ResultStore

log = logging.getLogger("nano_banana_bridge")

ROUTE = "/nano_banana_bridge/jobs"
CANCEL_ROUTE = "/nano_banana_bridge/jobs/cancel"
MAX_JOURNAL_BYTES = 256 * 1024
MAX_JOBS = 200
STATUS_TIMEOUT = 8.0
_KEY = re.compile(r"^[0-9a-f]{64}$")
# Jobs of runs without save_to, journaled in the config folder: their ids have no slash, so no save folder's can match.
CONFIG_ID = "config:"
CONFIG_FOLDER_LABEL = "(save_to empty)"


def _text(value: Any, limit: int = 120) -> str | None:
    return redact(str(value))[:limit] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _journal_files(root: Path) -> list[Path]:
    folder = root / ".journal"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.json") if _KEY.match(p.stem) and p.is_file() and p.stat().st_size <= MAX_JOURNAL_BYTES), key=lambda p: p.stat().st_mtime)


def _job(root: Path, path: Path, folder: str, in_config: bool = False) -> dict[str, Any] | None:
    """The panel's row for one journal entry: `folder` is a save folder's name under the output folder
    (`a` or `a/b`; ids are `<folder>/<key>`), or with in_config the label of the config folder's journal
    (runs without save_to), whose ids are CONFIG_ID + key."""
    entry = ResultStore(root).journal_entry(path.stem)  # only entries this install wrote and signed
    if entry is None:
        return None
    handle: dict[str, Any] = entry["handle"]
    provenance: dict[str, Any] = entry["provenance"] if isinstance(entry.get("provenance"), dict) else {}
    submitted = _text(entry.get("submitted_at"))
    try:
        age = (dt.datetime.now() - dt.datetime.fromisoformat(submitted)).total_seconds() if submitted else None
    except ValueError:
        age = None
    is_batch = isinstance(handle.get("batch"), str)
    task_id = handle.get("batch") if is_batch else next((handle[k] for k in ("request_id", "task_id", "id", "display_name") if isinstance(handle.get(k), str)), None)
    # A job that failed over was accepted by another provider (and key) than the one asked for: the
    # handle says which (failover.HANDLE_PROVIDER), and only that provider's key may act on it.
    served_by = handle.get(HANDLE_PROVIDER) if isinstance(handle.get(HANDLE_PROVIDER), str) else provenance.get("provider")
    return {
        "id": f"{CONFIG_ID}{path.stem}" if in_config else f"{folder}/{path.stem}",
        "folder": folder,
        "provider": _text(served_by, 40),
        "model": _text(provenance.get("model_id"), 80),
        "kind": "batch" if is_batch else "job",
        "items": len(handle["keys"]) if is_batch and isinstance(handle.get("keys"), list) else 1,
        "task_id": _text(task_id),
        "submitted_at": submitted,
        "age_seconds": round(age) if age is not None else None,
        "status": "journaled: queue the same run again to collect it",
        "can_cancel": is_batch or isinstance(handle.get("cancel_url"), str),
    }


def _roots(base: Path) -> list[tuple[Path, str, bool]]:
    """Every journal to list (folder, its name, whether it is the config folder's): the save folders a
    re-run looks through, then the config folder's (runs without save_to)."""
    roots = [(p, name, False) for p in save_folders_with_journals(base) if (name := save_folder_name(base, p)) is not None]
    config_root = journal_without_store_root()
    if config_root is not None and (config_root / ".journal").is_dir():
        roots.append((config_root, CONFIG_FOLDER_LABEL, True))
    return roots


def _find(job_id: Any, base: Path) -> tuple[Path, str, dict[str, Any], dict[str, Any]] | None:
    if not isinstance(job_id, str):
        return None
    in_config = "/" not in job_id and job_id.startswith(CONFIG_ID)
    if in_config:
        folder, key = CONFIG_FOLDER_LABEL, job_id[len(CONFIG_ID) :]
    else:
        folder, _, key = job_id.rpartition("/")
    if not _KEY.match(key):
        return None
    # A save folder's name is used only when it leads, through no link, to a journal inside the output folder.
    root = journal_without_store_root() if in_config else save_folder_with_journal(base, folder)
    if root is None:
        return None
    path = root / ".journal" / f"{key}.json"
    if not path.is_file() or path.stat().st_size > MAX_JOURNAL_BYTES:
        return None
    job = _job(root, path, folder, in_config)
    handle = ResultStore(root).pending_task(key)
    return (root, key, handle, job) if job and isinstance(handle, dict) else None


async def _call(provider_id: str | None, model_id: str | None, handle: dict[str, Any] | None = None) -> ProviderCall:
    """The call a status check or cancel goes through: provider_call, as for a generation (a
    service-account credential becomes an access token; the key goes only to the provider's origin),
    with the key that accepted the job (failover.HANDLE_KEY_SLOT)."""
    spec = get_provider(str(provider_id or ""))
    offer = resolve_model(spec, spec.models[0].name, model_id) if model_id else spec.models[0]
    slot = (handle or {}).get(HANDLE_KEY_SLOT)
    return await provider_call(spec, offer, CallContext(), get_engine(), key_slot=slot - 1 if isinstance(slot, int) and slot >= 1 else 0)


async def _batch_status(job: dict[str, Any], handle: dict[str, Any]) -> None:
    try:
        spec = get_provider(str(job["provider"] or ""))
        if not supports_batch(spec):
            return
        call = await asyncio.wait_for(_call(spec.id, None), STATUS_TIMEOUT)
        state = await asyncio.wait_for(gemini_batch.get_state(call, handle["batch"]), STATUS_TIMEOUT)
        job["status"] = state.line()
        job["state"] = state.state
    except (BananaError, asyncio.TimeoutError) as exc:
        job["status"] = f"status unavailable: {redact(str(exc)).splitlines()[0][:160]}"


async def jobs_summary(with_status: bool = True, base: Path | None = None) -> dict[str, Any]:
    """Pending jobs under every save folder of `base` (ComfyUI's output folder), and the ledger's spend."""
    jobs: list[dict[str, Any]] = []
    checks = []
    for root, folder, in_config in await asyncio.to_thread(_roots, base or output_dir()):
        for path in await asyncio.to_thread(_journal_files, root):
            if len(jobs) >= MAX_JOBS:
                break
            job = await asyncio.to_thread(_job, root, path, folder, in_config)
            if job is None:
                continue
            jobs.append(job)
            handle = ResultStore(root).pending_task(path.stem)
            if with_status and job["kind"] == "batch" and isinstance(handle, dict):
                checks.append(_batch_status(job, handle))
    if checks:
        await asyncio.gather(*checks)
    try:
        ledger = Ledger()
    except ConfigError as exc:  # the config folder is refused (one ComfyUI serves): no ledger to show
        return {"jobs": jobs, "spend": {"days": [], "today": {}, "ledger": None, "error": exc.headline()}}
    shown = display_path(ledger.path)  # any page that reaches ComfyUI reads this: no absolute path (home folder, user name)
    try:
        days = await asyncio.to_thread(ledger.by_day, 30)
        error = None
    except sqlite3.Error as exc:
        days, error = [], f"The ledger {shown} cannot be read: {redact(exc)}"
    except OSError as exc:  # its text names the absolute path
        days, error = [], f"The ledger {shown} cannot be read: {exc.strerror or type(exc).__name__}"
    totals: dict[str, float] = {}
    for row in days:
        if row["day"] == today():
            totals[row["unit"]] = round(totals.get(row["unit"], 0.0) + row["cost"], 6)
    return {"jobs": jobs, "spend": {"days": days, "today": totals, "ledger": shown, "error": error}}


async def cancel_job(body: Any, base: Path | None = None) -> tuple[int, dict[str, Any]]:
    found = await asyncio.to_thread(_find, body.get("id") if isinstance(body, dict) else None, base or output_dir())
    if found is None:
        return 404, {"error": "No such journaled job (it may have finished and been collected)."}
    _root, _key, handle, job = found
    try:
        call = await _call(job["provider"], None, handle)
        if job["kind"] == "batch":
            if not supports_batch(call.provider):
                return 400, {"error": f"{call.provider.display_name} has no Batch Mode to cancel."}
            await gemini_batch.cancel(call, handle["batch"])
        elif isinstance(handle.get("cancel_url"), str):
            await call.send("PUT", handle["cancel_url"], policy=IDEMPOTENT, status="Cancelling the job")
        else:
            return 400, {"error": f"{call.provider.display_name} offers no way to cancel a job."}
    except BananaError as exc:
        return 502, {"error": redact(str(exc))}
    return 200, {"ok": True, "message": "Cancel requested. The job stays journaled: queue the same run again to collect whatever had finished."}


@register_once
def register_jobs_routes(routes, web) -> None:
    @routes.get(ROUTE)
    async def jobs(request):
        return await guarded_read(web, request, lambda: jobs_summary(with_status=request.query.get("status", "1") != "0"))

    @routes.post(CANCEL_ROUTE)
    async def cancel(request):
        return await guarded_write(web, request, cancel_job)
