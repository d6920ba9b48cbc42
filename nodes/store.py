"""Nothing paid is lost: results on disk the moment they arrive, a result cache, a job journal.

Layout under the store's root (by default `<ComfyUI output>/nano_banana_bridge/`):
  <YYYY-MM-DD>/<HHMMSS>_<provider>_<key8>_<n>.<ext>   the provider's original bytes, before any decoding
  <same name>.json                                   provenance sidecar (no secrets)
  .cache/<key>.json                                  cache entry: which files answer a request
  .journal/<key>.json                                an asynchronous job accepted but not yet saved
  reports/<YYYYMMDD-HHMMSS>_<run>.json               the report of each batch run
  .blobs/<ab>/<sha256>                               conversation images by content hash (put_blob / read_blob)

Pure Python (no torch, no ComfyUI), so it is tested in CI; the node layer chooses the root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..providers.outcome import GeneratedImage, GenerationResult, NotAnImage, inspect_image
from ..providers.redaction import redact

STORE_FOLDER = "nano_banana_bridge"


def request_key(fields: dict[str, Any], image_digests: Iterable[str]) -> str:
    """A stable hash of everything that determines a result: provider, model, prompt, params, seed, references."""
    digest = hashlib.sha256()
    digest.update(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode())
    for image_digest in image_digests:
        digest.update(image_digest.encode())
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves a half file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_bytes(data: Any) -> bytes:
    return redact(json.dumps(data, indent=2, ensure_ascii=False, default=str)).encode("utf-8")


@dataclass
class CachedResult:
    images: list[GeneratedImage]
    files: list[str]
    text: str
    meta: dict[str, Any]


class ResultStore:
    """Files under one root; safe to use from several threads and event loops at once."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    # -- saving on arrival ---------------------------------------------------------------------

    def save(self, key: str, result: GenerationResult, provenance: dict[str, Any]) -> list[Path]:
        """Write every image's original bytes, then its sidecar, then the cache entry; return the image paths."""
        now = dt.datetime.now()
        folder = self.root / now.strftime("%Y-%m-%d")
        stem = f"{now:%H%M%S}_{_safe(result.provider)}_{key[:8]}_{uuid.uuid4().hex[:4]}"
        paths: list[Path] = []
        for n, image in enumerate(result.images):
            path = folder / f"{stem}_{n}.{image.extension}"
            _atomic_write(path, image.data)
            paths.append(path)
        sidecar = {
            **provenance,
            "provider": result.provider,
            "model_id": result.model,
            "request_id": result.request_id,
            "cost": result.cost,
            "cost_unit": result.cost_unit,
            "seconds": round(result.seconds, 3) if result.seconds is not None else None,
            "finish_reason": result.finish_reason,
            "text": result.text,
            "usage": result.usage,
            "warnings": result.warnings,
            "saved_at": now.isoformat(timespec="seconds"),
            "cache_key": key,
        }
        for n, path in enumerate(paths):
            image = result.images[n]
            _atomic_write(path.with_suffix(".json"), _json_bytes({**sidecar, "file": path.name, "index": n, "mime": image.mime, "width": image.width, "height": image.height}))
        entry = {"files": [str(p.relative_to(self.root)) for p in paths], "text": result.text, "meta": sidecar}
        _atomic_write(self._cache_path(key), _json_bytes(entry))
        self.forget_task(key)
        return paths

    # -- the cache -----------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path:
        return self.root / ".cache" / f"{key}.json"

    def lookup(self, key: str) -> CachedResult | None:
        """A saved result for exactly this request, if every file is still there and intact."""
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            images = [inspect_image((self.root / rel).read_bytes()) for rel in entry["files"]]
        except (OSError, ValueError, KeyError, NotAnImage):
            return None  # missing, moved or damaged: the request runs again
        if not images:
            return None
        return CachedResult(images=images, files=entry["files"], text=entry.get("text", ""), meta=entry.get("meta", {}))

    # -- the journal of accepted asynchronous jobs ---------------------------------------------

    def _journal_path(self, key: str) -> Path:
        return self.root / ".journal" / f"{key}.json"

    def remember_task(self, key: str, handle: dict[str, Any], provenance: dict[str, Any]) -> None:
        _atomic_write(self._journal_path(key), _json_bytes({"handle": handle, "provenance": provenance, "submitted_at": dt.datetime.now().isoformat(timespec="seconds")}))

    def pending_task(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._journal_path(key).read_text(encoding="utf-8"))["handle"]
        except (OSError, ValueError, KeyError):
            return None

    def forget_task(self, key: str) -> None:
        self._journal_path(key).unlink(missing_ok=True)

    # -- reports -------------------------------------------------------------------------------

    def save_report(self, report: dict[str, Any]) -> Path:
        path = self.root / "reports" / f"{dt.datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:6]}.json"
        _atomic_write(path, _json_bytes(report))
        return path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:40] or "x"


# -- content-addressed images for conversations (nodes/conversation.py) ------------------------------
# A conversation names its images by SHA-256 only; the bytes live here, under .blobs/. The name is
# the content's hash, so a read checks the bytes against it: a file swapped in the output folder
# (which ComfyUI's upload route can write to) is never sent as part of a conversation.

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def blob_path(root: str | os.PathLike, digest: str) -> Path:
    if not _DIGEST.match(digest or ""):
        raise ValueError("not a SHA-256 hex digest")
    return Path(root) / ".blobs" / digest[:2] / digest


def put_blob(root: str | os.PathLike, data: bytes) -> str:
    """Keep `data` under its hash (once); return the hash."""
    digest = hashlib.sha256(data).hexdigest()
    if read_blob(root, digest) is None:
        _atomic_write(blob_path(root, digest), data)
    return digest


def read_blob(root: str | os.PathLike, digest: str) -> bytes | None:
    """The bytes stored under `digest`, or None when missing or not matching their hash."""
    try:
        data = blob_path(root, digest).read_bytes()
    except (OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == digest else None
