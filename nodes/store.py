"""Nothing paid is lost: results on disk the moment they arrive, a result cache, a job journal.

Layout under the store's root (by default `<ComfyUI output>/nano_banana_bridge/`):
  <YYYY-MM-DD>/<HHMMSS>_<provider>_<key8>_<n>.<ext>   the provider's original bytes, before any decoding
  <same name>.json                                   provenance sidecar (no secrets)
  .cache/<key>.json                                  cache entry: which files answer a request
  .journal/<key>.json                                an asynchronous job accepted but not yet saved
  reports/<YYYYMMDD-HHMMSS>_<run>.json               the report of each batch run
  .blobs/<ab>/<sha256>                               conversation images by content hash (put_blob / read_blob)

Every file here is untrusted input: ComfyUI's own upload route (POST /upload/image, type=output)
writes any file into any subfolder of the output folder. So cache and journal entries carry an
HMAC made with a per-install secret kept beside keys.json (providers.config.store_secret), bound
to their kind and request key; a cache entry also holds each image's SHA-256, and every path it
names must stay inside the store. An entry that fails any check is a miss, logged once, never an
exception: a planted journal entry never reaches the engine, a planted cache entry never returns
a file from elsewhere on disk.

Paths in reports and cache answers are relative to ComfyUI's output folder (`output_root`), in
the form ComfyUI's own `/view?filename=...&subfolder=...&type=output` takes, for fresh and cached
results alike; the cache entries themselves name files relative to the store's root, so a
moved output folder keeps its cache.

Pure Python (no torch, no ComfyUI), so it is tested in CI; the node layer chooses the root.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, NamedTuple

from ..providers.config import store_secret, warn_once
from ..providers.engine.auth import without_userinfo
from ..providers.errors import ConfigError
from ..providers.outcome import GeneratedImage, GenerationResult, NotAnImage, inspect_image
from ..providers.redaction import redact, redact_data

log = logging.getLogger("nano_banana_bridge")

STORE_FOLDER = "nano_banana_bridge"
ENTRY_VERSION = 2  # version 1 (before authentication) entries are misses
_CACHE, _JOURNAL = "cache", "journal"
_MAX_ENTRY_BYTES = 1 << 20  # a real entry is a few KB; a planted giant is not read
_KEY_SHAPE = re.compile(r"^[0-9a-f]{64}$")

_logged_lock = threading.Lock()
_logged: set[tuple[str, str]] = set()
_fallback_secret = secrets.token_bytes(32)  # when the config folder is unusable: entries last for this process only


class _Untrusted(Exception):
    """An entry that must not be used; the message says why (for the log, never the user's output)."""


def _ignore(path: Path, why: str) -> None:
    """Log an ignored entry once per file and reason, then treat it as a miss."""
    with _logged_lock:
        if (str(path), why) in _logged:
            return
        _logged.add((str(path), why))
    log.warning("Nano Banana Bridge: ignoring %s: %s", path, why)


def request_key(fields: dict[str, Any], image_digests: Iterable[str]) -> str:
    """A stable hash of everything that determines a result: provider, model, prompt, params, seed, references."""
    digest = hashlib.sha256()
    digest.update(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode())
    for image_digest in image_digests:
        digest.update(image_digest.encode())
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves a half file under the final name."""
    _finish_write(_start_write(path, data))


class _Writing(NamedTuple):
    file: BinaryIO
    temporary: str
    path: Path


def _start_write(path: Path, data: bytes) -> _Writing:
    """The bytes in a new file beside `path`: the system has them (they outlive this process), but
    they are neither durable nor under their name yet (_finish_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    file = os.fdopen(fd, "wb")
    try:
        file.write(data)
        file.flush()
    except BaseException:
        file.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return _Writing(file, tmp, path)


def _finish_write(writing: _Writing) -> None:
    """Durable first (fsync), then under its name (rename)."""
    try:
        with writing.file:
            os.fsync(writing.file.fileno())
        os.replace(writing.temporary, writing.path)
    except BaseException:
        Path(writing.temporary).unlink(missing_ok=True)
        raise


def _finish_writes(writings: list[_Writing]) -> None:
    """_finish_write each; after a failure the rest are abandoned and it is raised."""
    for number, writing in enumerate(writings):
        try:
            _finish_write(writing)
        except BaseException:
            _abandon(writings[number + 1 :])
            raise


def _abandon(writings: list[_Writing]) -> None:
    """Close and remove started writes that will not be finished."""
    for writing in writings:
        writing.file.close()
        Path(writing.temporary).unlink(missing_ok=True)


def _json_bytes(data: Any) -> bytes:
    # Strings are redacted before serialising (so JSON escaping cannot hide a key), and the text after.
    return redact(json.dumps(redact_data(_plain(data)), indent=2, ensure_ascii=False, default=str)).encode("utf-8")


def _plain(data: Any) -> Any:
    """JSON-ready data exactly as it reads back (so an HMAC over it verifies after a round trip)."""
    return json.loads(json.dumps(data, ensure_ascii=False, default=str))


def _signed_text(kind: str, key: str, body: Any) -> str:
    return json.dumps({"version": ENTRY_VERSION, "kind": kind, "key": key, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _mac(secret: bytes, kind: str, key: str, body: Any) -> str:
    return hmac.new(secret, _signed_text(kind, key, body).encode(), hashlib.sha256).hexdigest()


@dataclass
class CachedResult:
    images: list[GeneratedImage]
    files: list[str]
    text: str
    meta: dict[str, Any]


class ResultStore:
    """Files under one root; safe to use from several threads and event loops at once."""

    def __init__(self, root: str | os.PathLike, output_root: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        # What report paths are relative to: ComfyUI's output folder (default: the store's root).
        self.output_root = Path(output_root) if output_root is not None else self.root
        self._lock = threading.Lock()
        self._secret: bytes | None = None  # read (or created) on first use

    # -- authenticated entries -----------------------------------------------------------------

    def _key_secret(self) -> bytes:
        if self._secret is None:
            try:
                self._secret = store_secret()
            except (ConfigError, OSError) as exc:
                warn_once("Nano Banana Bridge: no store secret (%s); cached results and job journal entries last only until ComfyUI restarts.", exc)
                self._secret = _fallback_secret
        return self._secret

    def _write_entry(self, path: Path, kind: str, key: str, body: dict[str, Any]) -> None:
        body = redact_data(_plain(body))
        entry = {"version": ENTRY_VERSION, "kind": kind, "key": key, "body": body, "mac": _mac(self._key_secret(), kind, key, body)}
        atomic_write(path, json.dumps(entry, indent=2, ensure_ascii=False).encode("utf-8"))

    def _read_entry(self, path: Path, kind: str, key: str, *, quiet: bool = False) -> dict[str, Any] | None:
        """The body of an authentic entry of this kind for this key; None (logged once, unless quiet) for anything else."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None  # the ordinary miss
        except OSError as exc:
            _ignore(path, f"unreadable ({type(exc).__name__})")
            return None
        try:
            if not stat.S_ISREG(info.st_mode):
                raise _Untrusted("not a regular file")
            if info.st_size > _MAX_ENTRY_BYTES:
                raise _Untrusted(f"{info.st_size} bytes, more than any real entry")
            try:
                entry = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, ValueError) as exc:
                raise _Untrusted(f"not readable JSON ({type(exc).__name__})") from None
            if not isinstance(entry, dict) or "mac" not in entry:
                raise _Untrusted("no authentication (written by an older version, or not by this pack)")
            if set(entry) != {"version", "kind", "key", "body", "mac"} or entry["version"] != ENTRY_VERSION:
                raise _Untrusted("unexpected shape")
            if entry["kind"] != kind or entry["key"] != key or not isinstance(entry["body"], dict) or not isinstance(entry["mac"], str):
                raise _Untrusted("entry for another request, or of the wrong kind")
            if not hmac.compare_digest(entry["mac"], _mac(self._key_secret(), kind, key, entry["body"])):
                raise _Untrusted("authentication failed (tampered, planted, or made with another install's secret)")
            return entry["body"]
        except _Untrusted as exc:
            if not quiet:
                _ignore(path, str(exc))
            return None

    def authentic_body(self, path: Path, kind: str) -> dict[str, Any] | None:
        """The body of the cache ("cache") or journal ("journal") entry file at `path` if this install
        wrote it (housekeeping removes nothing else); None otherwise."""
        if kind not in (_CACHE, _JOURNAL) or not _KEY_SHAPE.match(path.stem):
            return None
        return self._read_entry(path, kind, path.stem, quiet=True)  # at every load: old entries are not news

    def _inside(self, rel: Any) -> Path:
        """The file a cache entry names, which must lie inside this store (symlinks resolved)."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise _Untrusted("a file entry is not a path")
        root = self.root.resolve()
        path = (root / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or root not in path.parents:
            raise _Untrusted(f"names a file outside the store: {rel!r}")
        return path

    def view_path(self, path: str | os.PathLike) -> str:
        """A saved file as the report names it: relative to the output folder, with forward slashes."""
        path = Path(path)
        try:
            return path.resolve().relative_to(self.output_root.resolve()).as_posix()
        except ValueError:
            return str(path)  # outside the output folder (a script's own root): absolute

    # -- saving on arrival ---------------------------------------------------------------------

    def save(
        self, key: str, result: GenerationResult, provenance: dict[str, Any], *, cache: bool = True, on_written: Callable[[], None] | None = None
    ) -> list[Path]:
        """Write every image's original bytes, then the cache entry, then each sidecar; return the
        paths of result.images, then of result.extra_images.

        cache=False: keep the bytes without answering later requests from them (unusable results,
        saved as .bin because they were paid for). The cache entry comes before the sidecars: once
        the images are on disk, what keeps a re-run from paying for them again follows first.
        Extra images (beyond the count asked for) are saved as `<stem>_extra<n>`, named in the
        sidecars, and are not part of the cache entry: a cached answer has the count asked for.
        `on_written` is called (in this thread) once every image's bytes are written, before they
        are made durable and renamed: what waits for the bytes to be on disk may start then.
        """
        now = dt.datetime.now()
        folder = _own_folder(self.root / now.strftime("%Y-%m-%d"))
        stem = f"{now:%H%M%S}_{_safe(result.provider)}_{key[:8]}_{uuid.uuid4().hex[:4]}"
        paths = [folder / f"{stem}_{n}.{image.extension}" for n, image in enumerate(result.images)]
        extra_paths = [folder / f"{stem}_extra{n}.{image.extension}" for n, image in enumerate(result.extra_images)]
        writings: list[_Writing] = []
        try:
            for path, image in zip([*paths, *extra_paths], [*result.images, *result.extra_images]):
                writings.append(_start_write(path, image.data))
        except BaseException:
            _abandon(writings)
            raise
        if on_written is not None:
            try:
                on_written()
            except Exception:  # noqa: BLE001 - a caller's hook must not stop the paid bytes from being made durable
                log.exception("Nano Banana Bridge: the hook after writing a result failed; saving goes on")
        _finish_writes(writings)
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
        if extra_paths:
            sidecar["extra_files"] = [p.name for p in extra_paths]
        if cache:
            files = [{"path": p.relative_to(self.root).as_posix(), "sha256": hashlib.sha256(image.data).hexdigest(), "bytes": len(image.data)} for p, image in zip(paths, result.images)]
            # The images are on disk: bookkeeping that a planted file blocks must not fail the paid result.
            try:
                self._write_entry(self._cache_path(key), _CACHE, key, {"files": files, "text": result.text, "meta": sidecar})
            except OSError as exc:
                _ignore(self._cache_path(key), f"could not write the cache entry ({type(exc).__name__}); the result is saved, but not cached")
        for n, (path, image) in enumerate(zip(paths + extra_paths, result.images + result.extra_images)):
            details = {"file": path.name, "index": n, "mime": image.mime, "width": image.width, "height": image.height, "source_url": without_userinfo(image.source_url) if image.source_url else None}
            if n >= len(paths):
                details["extra"] = True  # beyond the count asked for: not in the node's output
            atomic_write(path.with_suffix(".json"), _json_bytes({**sidecar, **details}))
        self.forget_task(key)
        return paths + extra_paths

    # -- the cache -----------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path:
        return self.root / ".cache" / f"{_checked_key(key)}.json"

    def lookup(self, key: str) -> CachedResult | None:
        """A saved result for exactly this request, if its entry is authentic and every file is still there, unchanged."""
        path = self._cache_path(key)
        body = self._read_entry(path, _CACHE, key)
        if body is None:
            return None
        try:
            files = body.get("files")
            if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
                raise _Untrusted("unexpected shape")
            images, names = [], []
            for file in files:
                target = self._inside(file.get("path"))
                info = target.stat()
                # Sized before it is read: an upload may have replaced the image with anything.
                if not stat.S_ISREG(info.st_mode) or info.st_size != file.get("bytes"):
                    raise _Untrusted(f"{file['path']} changed since it was saved")
                data = target.read_bytes()
                if hashlib.sha256(data).hexdigest() != file.get("sha256"):
                    raise _Untrusted(f"{file['path']} changed since it was saved")
                images.append(inspect_image(data))
                names.append(self.view_path(target))
        except _Untrusted as exc:
            _ignore(path, str(exc))
            return None
        except (OSError, NotAnImage):
            return None  # moved or deleted since: the request runs again
        text, meta = body.get("text"), body.get("meta")
        return CachedResult(images=images, files=names, text=text if isinstance(text, str) else "", meta=meta if isinstance(meta, dict) else {})

    # -- the journal of accepted asynchronous jobs ---------------------------------------------

    def _journal_path(self, key: str) -> Path:
        return self.root / ".journal" / f"{_checked_key(key)}.json"

    def remember_task(self, key: str, handle: dict[str, Any], provenance: dict[str, Any]) -> None:
        """Journal an accepted (paid) job. A write that fails (a planted file or folder in the way) is
        logged, never raised: the job is running, and failing now would lose its result."""
        body = {"handle": handle, "provenance": provenance, "submitted_at": dt.datetime.now().isoformat(timespec="seconds")}
        try:
            self._write_entry(self._journal_path(key), _JOURNAL, key, body)
        except OSError as exc:
            _ignore(self._journal_path(key), f"could not journal the job ({type(exc).__name__}); a re-run cannot attach to it")

    def pending_task(self, key: str) -> dict[str, Any] | None:
        """The handle of a job this install journaled for exactly this request; nothing else reaches the engine."""
        path = self._journal_path(key)
        body = self._read_entry(path, _JOURNAL, key)
        if body is None:
            return None
        handle = body.get("handle")
        if not isinstance(handle, dict) or not handle or not all(isinstance(k, str) for k in handle):
            _ignore(path, "unexpected shape")
            return None
        return handle

    def journal_entry(self, key: str) -> dict[str, Any] | None:
        """An authentic journal entry as a whole (handle, provenance, submitted_at), for the jobs panel."""
        body = self._read_entry(self._journal_path(key), _JOURNAL, key)
        return body if body is not None and isinstance(body.get("handle"), dict) else None

    def forget_task(self, key: str) -> None:
        path = self._journal_path(key)
        try:
            if stat.S_ISREG(path.lstat().st_mode):
                path.unlink()  # never a folder or a link an upload left under the entry's name
        except FileNotFoundError:
            pass
        except OSError as exc:
            _ignore(path, f"could not remove the journal entry ({type(exc).__name__})")

    # -- reports -------------------------------------------------------------------------------

    def save_report(self, report: dict[str, Any]) -> Path:
        path = _own_folder(self.root / "reports") / f"{dt.datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:6]}.json"
        atomic_write(path, _json_bytes({**report, "report_file": self.view_path(path)}))
        return path


def _own_folder(folder: Path) -> Path:
    """`folder`, or a fresh sibling when something else holds its name (a file an upload planted
    there, a link): the pack writes paid results only into real folders it can create."""
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return folder
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        return folder
    _ignore(folder, "not a folder (planted?); writing beside it instead")
    return folder.with_name(f"{folder.name}_{uuid.uuid4().hex[:6]}")


def _checked_key(key: str) -> str:
    if not _KEY_SHAPE.match(key):
        raise ValueError(f"not a request key: {key[:80]!r}")
    return key


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


def put_blob(root: str | os.PathLike, data: bytes, source: str | os.PathLike | None = None) -> str:
    """Keep `data` under its hash (once); return the hash.

    `source`, a file said to hold the same bytes (a saved result), becomes the blob as a hard link:
    no second copy on disk, and no second write and fsync beside a batch's last decode. It is in
    the output folder, which anything may have rewritten since: the link is used only when it is a
    regular file whose bytes hash right; otherwise the bytes are written as usual. (Rewriting the
    saved file in place later changes the blob too; read_blob's hash check then calls it missing.)
    """
    digest = hashlib.sha256(data).hexdigest()
    if read_blob(root, digest) is None and not (source is not None and _link_blob(root, digest, Path(source), len(data))):
        atomic_write(blob_path(root, digest), data)
    return digest


def _link_blob(root: str | os.PathLike, digest: str, source: Path, size: int) -> bool:
    """Make `source` the blob `digest` by a hard link; False (and nothing left behind) when it cannot be."""
    target = blob_path(root, digest)
    linked = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, linked, follow_symlinks=False)  # the file itself, never where a planted symlink points
        found = os.lstat(linked)
        if not stat.S_ISREG(found.st_mode) or found.st_size != size or hashlib.sha256(linked.read_bytes()).hexdigest() != digest:
            raise OSError("not the same bytes")
        os.replace(linked, target)
        return True
    except OSError:  # another filesystem, no hard links there, a rewritten or vanished file
        linked.unlink(missing_ok=True)
        return False


def read_blob(root: str | os.PathLike, digest: str) -> bytes | None:
    """The bytes stored under `digest`, or None when missing or not matching their hash."""
    try:
        data = blob_path(root, digest).read_bytes()
    except (OSError, ValueError):
        return None
    return data if hashlib.sha256(data).hexdigest() == digest else None
