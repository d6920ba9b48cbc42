"""Dry run: per call, the exact request that would be sent and what it would cost; nothing is sent.

The requests are built by the real protocol modules (providers/dry_run.py), so what is shown is
what a real run sends first: URL, headers and body, with keys redacted and image bytes
summarised. In Batch Mode the one batchGenerateContent request stands for every item. The spend
guard is asked too, so a dry run also says whether the real run would be refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ..providers.catalog import ModelOffer, ProviderSpec
from ..providers.client import check_request
from ..providers.dry_run import NO_KEY, REDACTED, plan_request, summarise
from ..providers.errors import BananaError
from ..providers.protocols import gemini_batch
from .batch import BatchItem, BatchSettings
from .batch_mode import DISPLAY_PREFIX, claimed_requests, entry_key, run_key
from .guard import money
from .ledger import BATCH
from .spend import RunSpend
from .store import ResultStore

HEADLINE = "DRY RUN: nothing was sent and no image was made."


async def dry_run_report(items: list[BatchItem], settings: BatchSettings, spec: ProviderSpec, offer: ModelOffer, spend: RunSpend, store: ResultStore | None = None) -> tuple[dict[str, Any], str]:
    calls: list[dict[str, Any]] = []
    batch_entries: list[tuple[str, Any]] = []
    keys: list[str] = []
    with claimed_requests(items, settings, spec.id, offer) as claimed:
        requests = [(request, key) for request, key, _ in claimed]
    for item, (request, key) in zip(items, requests):
        keys.append(key)
        cached = store is not None and settings.use_cache and await asyncio.to_thread(store.lookup, key) is not None
        row: dict[str, Any] = {"item": item.index + 1, "prompt": item.prompt, "seed": item.seed, "images": item.count, "references": len(item.images)}
        row["estimated_cost"] = 0.0 if cached else spend.per_call(item.count)
        if cached:
            row["note"] = "An identical request's result is saved: a real run answers it from the cache, at no cost."
        elif spend.delivery == BATCH:
            normalised, warnings = check_request(spec, offer, request)
            batch_entries.append((entry_key(item.index, key), normalised))
            row["warnings"] = warnings
        else:
            row["request"] = await plan_request(spec, offer, request)
        calls.append(row)
    estimate = round(sum(c["estimated_cost"] or 0.0 for c in calls), 6) if all(c["estimated_cost"] is not None for c in calls) else None
    report: dict[str, Any] = {
        "dry_run": True,
        "provider": spec.id,
        "model": offer.name,
        "model_id": offer.model_id,
        "delivery": spend.delivery,
        "estimate": estimate,
        "unit": spend.unit,
        "price_basis": "list price" + (f" x {spend.discount:g} (Batch Mode)" if spend.delivery == BATCH else ""),
        "calls": calls,
    }
    if batch_entries:
        entries = gemini_batch.build_entries(batch_entries)
        body = gemini_batch.inline_body(f"{DISPLAY_PREFIX}-{run_key(keys)[:16]}", entries)
        report["batch_request"] = {
            "method": "POST",
            "url": f"{spec.base_url.rstrip('/')}/models/{offer.model_id}:batchGenerateContent",
            "auth": f"{spec.auth} header, added by the engine ({REDACTED})",
            "body": summarise(body),
            "note": f"Over {spec.options.get('batch_inline_bytes', 20_000_000)} bytes the same requests go as a JSONL file uploaded through the Files API first.",
        }
    try:
        with spend.guarded([c["images"] for c in calls if c["estimated_cost"]]):
            report["spend_check"] = "within every spend limit"
    except BananaError as exc:
        report["spend_check"] = str(exc)
    return report, _text(report)


def _text(report: dict[str, Any]) -> str:
    unit = report["unit"]
    total = money(report["estimate"], unit) if report["estimate"] is not None else "unknown (no list price)"
    lines = [HEADLINE, f"{len(report['calls'])} call(s) to {report['provider']} / {report['model_id']} ({report['delivery']}), estimated {total} at {report['price_basis']}.", f"Spend limits: {report['spend_check']}"]
    if report.get("batch_request"):
        batch = report["batch_request"]
        lines += ["", f"{batch['method']} {batch['url']}", json.dumps(batch["body"], indent=2, ensure_ascii=False)]
    for call in report["calls"]:
        cost = money(call["estimated_cost"], unit) if call["estimated_cost"] is not None else "unknown"
        lines += ["", f"Call {call['item']} ({cost}): {call.get('note') or ''}".rstrip()]
        request = call.get("request")
        if request:
            lines.append(f"{request['method']} {request['url']}")
            lines.append(json.dumps(request["body"], indent=2, ensure_ascii=False))
            lines += [f"Note: {w}" for w in request.get("warnings") or []]
    if any(NO_KEY in line for line in lines):
        lines.append("(No API key is configured for this provider: a real run would stop before sending.)")
    return "\n".join(lines)
