"""Files in the output folder are untrusted: planted or tampered cache and journal entries are misses.

ComfyUI's own POST /upload/image (type=output, any subfolder, overwrite) writes any file there,
so these tests plant files the way that route would, then check that the pack neither returns
an image from elsewhere on disk nor polls a URL it did not journal itself, and says so once in
the log instead of raising.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging

import pytest

from banana_pack.nodes.batch import CACHED, OK, BatchSettings, expand_items, run_batch
from banana_pack.nodes.store import ResultStore
from helpers import fal_job_done, fal_submit, png_bytes, point_at, run
from loopback import LoopbackServer, Recorded, Reply, fixture

GEN_PATH = r":generateContent$"
GOOGLE = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K")
FAL = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")
FAL_APP = "fal-ai/nano-banana-pro"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "store-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    width = iter(range(3, 1000))

    def handler(_req: Recorded) -> Reply:
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(next(width), 2)).decode()
        return Reply(json=body)

    server.route("POST", GEN_PATH, handler)
    return server


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-store-key:secret-456")
    point_at(monkeypatch, "fal", server.url)
    return server


def fal_job(server, rid: str, *, done: bool, width: int) -> dict:
    """Script one fal job on the server; return its submit answer."""
    fal_job_done(server, rid, png_bytes(width, 5))
    if not done:
        server.route("GET", rf"/requests/{rid}/status$", Reply(202, fixture("fal/status_in_progress.json")))
    server.route("PUT", rf"/requests/{rid}/cancel$", Reply(400, {"detail": "already processing"}))
    return fal_submit(server.url, rid, FAL_APP)


def only(paths):
    (path,) = list(paths)
    return path


def sign(isolated_config, kind: str, key: str, body: dict) -> dict:
    """An entry authenticated with this install's secret, as if that secret had leaked."""
    secret = (isolated_config / "store.secret").read_bytes().strip()
    text = json.dumps({"version": 2, "kind": kind, "key": key, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {"version": 2, "kind": kind, "key": key, "body": body, "mac": hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()}


def first_run(tmp_path, items, settings=GOOGLE):
    (outcome,) = run(run_batch(items, settings, store=ResultStore(tmp_path / "store")))
    assert outcome.status == OK
    entry = only((tmp_path / "store" / ".cache").glob("*.json"))
    return outcome, entry, entry.stem


def test_planted_cache_entry_pointing_outside_the_store_is_a_miss(google, tmp_path):
    items = expand_items(["a cat"], [], seed=1)
    outcome, entry, key = first_run(tmp_path, items)
    secret_image = tmp_path / "elsewhere" / "private.png"
    secret_image.parent.mkdir()
    secret_image.write_bytes(png_bytes(41, 41))
    # What an upload to output/nano_banana_bridge/.cache/<key>.json would leave, in the old entry format.
    entry.write_text(json.dumps({"files": ["../elsewhere/private.png"], "text": "planted", "meta": {}}))
    (again,) = run(run_batch(items, GOOGLE, store=ResultStore(tmp_path / "store")))
    assert again.status == OK and again.images[0].width != 41 and again.text != "planted"
    assert len(google.hits("POST", GEN_PATH)) == 2  # the request ran again


def test_authentic_entry_naming_a_path_outside_the_store_is_still_a_miss(google, tmp_path, isolated_config, caplog):
    """Even with the install's secret (leaked), an entry can only name files inside the store, unchanged."""
    items = expand_items(["a cat"], [], seed=1)
    outcome, entry, key = first_run(tmp_path, items)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(41, 41))
    data = outside.read_bytes()
    store = ResultStore(tmp_path / "store")
    for rel in ("../elsewhere.png", str(outside), "2026-01-01/../../elsewhere.png"):
        body = {"files": [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}], "text": "", "meta": {}}
        entry.write_text(json.dumps(sign(isolated_config, "cache", key, body)))
        with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
            assert store.lookup(key) is None
        assert "outside the store" in caplog.text
    # The entry's own image, replaced by an upload with overwrite: the SHA-256 no longer matches.
    saved = tmp_path / "store" / outcome.files[0]  # report paths are relative to the output folder (here: the store's root)
    original = saved.read_bytes()
    rel = outcome.files[0]
    entry.write_text(json.dumps(sign(isolated_config, "cache", key, {"files": [{"path": rel, "sha256": hashlib.sha256(original).hexdigest(), "bytes": len(original)}], "text": "", "meta": {}})))
    assert store.lookup(key) is not None  # the test's own signing is right
    saved.write_bytes(png_bytes(41, 41))
    assert store.lookup(key) is None


def test_tampered_cache_entry_is_ignored_and_logged_once(google, tmp_path, caplog):
    items = expand_items(["a dog"], [], seed=2)
    outcome, entry, key = first_run(tmp_path, items)
    assert run(run_batch(items, GOOGLE, store=ResultStore(tmp_path / "store")))[0].status == CACHED  # authentic: a hit
    data = json.loads(entry.read_text())
    data["body"]["text"] = "tampered"
    entry.write_text(json.dumps(data))
    store = ResultStore(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
        assert store.lookup(key) is None
        assert store.lookup(key) is None
        assert ResultStore(tmp_path / "store").lookup(key) is None
    lines = [r.getMessage() for r in caplog.records if entry.name in r.getMessage()]
    assert len(lines) == 1 and "authentication failed" in lines[0]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"version": 2}', json.dumps({"files": [], "text": ""}).encode(), b"\xff\xfe" * 10, b" " * (2 << 20)],
    ids=["syntax", "list", "partial", "old-empty", "binary", "huge"],
)
def test_malformed_entries_are_misses_logged_once_not_exceptions(google, tmp_path, content, caplog):
    items = expand_items(["a fox"], [], seed=3)
    outcome, entry, key = first_run(tmp_path, items)
    entry.write_bytes(content)
    journal = tmp_path / "store" / ".journal" / entry.name
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(content)
    store = ResultStore(tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
        for _ in range(2):
            assert store.lookup(key) is None and store.pending_task(key) is None
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 2 and any(".journal" in m for m in ignored) and any(".cache" in m for m in ignored)
    entry.unlink()
    entry.mkdir()  # a folder where the entry should be
    assert store.lookup(key) is None


def test_entries_made_with_another_install_secret_are_misses(google, tmp_path, monkeypatch):
    items = expand_items(["a hen"], [], seed=4)
    first_run(tmp_path, items)
    monkeypatch.setenv("BANANA_CONFIG_DIR", str(tmp_path / "another_install"))
    (again,) = run(run_batch(items, GOOGLE, store=ResultStore(tmp_path / "store")))
    assert again.status == OK and len(google.hits("POST", GEN_PATH)) == 2


def test_store_secret_is_private_and_stable(google, tmp_path, isolated_config):
    first_run(tmp_path, expand_items(["a yak"], [], seed=5))
    secret = isolated_config / "store.secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_bytes().strip()) >= 32
    before = secret.read_bytes()
    run(run_batch(expand_items(["a yak"], [], seed=5), GOOGLE, store=ResultStore(tmp_path / "store")))
    assert secret.read_bytes() == before


def test_planted_journal_entry_never_reaches_the_engine(fal, tmp_path):
    """A journal entry the pack did not write is not polled, on the provider's own host or any other."""
    items = expand_items(["a lighthouse"], [], seed=9)
    fal.route("POST", rf"^/{FAL_APP}$", Reply(json=fal_job(fal, "job-real", done=True, width=7)))
    outcome, entry, key = first_run(tmp_path, items, FAL)
    entry.unlink()  # no cache: the next run looks at the journal
    foreign = LoopbackServer().start()
    try:
        foreign.route("GET", r".*", Reply(json=fixture("fal/status_completed.json")))
        journal = tmp_path / "store" / ".journal" / f"{key}.json"
        journal.parent.mkdir(parents=True, exist_ok=True)
        for base in (f"{fal.url}/{FAL_APP}/requests/planted", f"{foreign.url}/steal"):
            handle = {"request_id": "planted", "endpoint": FAL_APP, "status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel", "count": 1}
            # The old format, and the new shape with a made-up MAC.
            for planted in ({"handle": handle, "provenance": {}}, {"version": 2, "kind": "journal", "key": key, "body": {"handle": handle}, "mac": "0" * 64}):
                journal.write_text(json.dumps(planted))
                (again,) = run(run_batch(items, FAL, store=ResultStore(tmp_path / "store")))
                assert again.status == OK and again.images[0].width == 7
                (tmp_path / "store" / ".cache" / f"{key}.json").unlink()
        assert foreign.requests == []
        assert fal.hits("GET", "planted") == [] and fal.hits("PUT", "planted") == []
        assert len(fal.hits("POST", rf"^/{FAL_APP}$")) == 5  # each run submitted its own job
    finally:
        foreign.stop()


def test_repeated_items_get_their_own_cache_entries(google, tmp_path):
    """Two identical lines are two paid calls: each keeps its own result, and a re-run answers each from the cache."""
    items = expand_items(["same prompt", "same prompt", "other"], [], seed=1)
    first = run(run_batch(items, GOOGLE, store=ResultStore(tmp_path)))
    assert [o.status for o in first] == [OK, OK, OK] and len(google.hits("POST", GEN_PATH)) == 3
    assert len(list((tmp_path / ".cache").glob("*.json"))) == 3
    again = run(run_batch(items, GOOGLE, store=ResultStore(tmp_path)))
    assert [o.status for o in again] == [CACHED] * 3 and len(google.hits("POST", GEN_PATH)) == 3
    assert [o.images[0].width for o in again] == [o.images[0].width for o in first]
    assert again[0].images[0].width != again[1].images[0].width  # not one shared entry
    # A single request still hits what the first of them saved.
    (single,) = run(run_batch(expand_items(["same prompt"], [], seed=1), GOOGLE, store=ResultStore(tmp_path)))
    assert single.status == CACHED and single.images[0].width == first[0].images[0].width


def test_repeated_async_items_never_share_or_delete_one_journal_entry(fal, tmp_path):
    items = expand_items(["same", "same"], [], seed=9)
    jobs = iter([fal_job(fal, "job-1", done=True, width=5), fal_job(fal, "job-2", done=False, width=7)])
    fal.route("POST", rf"^/{FAL_APP}$", lambda _req: Reply(json=next(jobs), delay=0.0))
    store_root = tmp_path / "store"

    async def polled(rid: str) -> None:
        while not fal.hits("GET", rf"/requests/{rid}/status$"):
            await asyncio.sleep(0.02)

    async def crash_while_second_runs():
        finished = asyncio.Event()
        task = asyncio.create_task(run_batch(items, FAL, store=ResultStore(store_root), on_update=lambda p: p.done and finished.set()))
        await asyncio.wait_for(finished.wait(), 30)
        # The second job is journaled before its first poll: wait for that poll (a fixed pause let a
        # loaded machine cancel the item before its job was even submitted).
        await asyncio.wait_for(polled("job-2"), 30)
        task.cancel()  # ComfyUI dies while the second job is still running at fal
        await asyncio.gather(task, return_exceptions=True)

    run(crash_while_second_runs())
    assert len(fal.hits("POST", rf"^/{FAL_APP}$")) == 2
    (journal,) = (store_root / ".journal").glob("*.json")  # the first item's save did not delete the second's entry
    assert json.loads(journal.read_text())["body"]["handle"]["request_id"] == "job-2"

    fal_job(fal, "job-2", done=True, width=7)  # finished at fal while ComfyUI was down
    again = run(run_batch(items, FAL, store=ResultStore(store_root)))
    assert sorted(o.images[0].width for o in again) == [5, 7]  # each item its own image
    assert len(fal.hits("POST", rf"^/{FAL_APP}$")) == 2  # attached to job-2: no new submit
    assert not list((store_root / ".journal").glob("*.json"))


def test_two_runs_of_one_request_at_once_keep_separate_journal_entries(fal, tmp_path):
    """Two copies of a node with the same settings run concurrently (ComfyUI runs async nodes at once)."""
    items = expand_items(["twin"], [], seed=4)
    jobs = iter([fal_job(fal, "twin-1", done=False, width=5), fal_job(fal, "twin-2", done=False, width=7)])
    fal.route("POST", rf"^/{FAL_APP}$", lambda _req: Reply(json=next(jobs)))
    store_root = tmp_path / "store"

    async def both_then_crash():
        tasks = [asyncio.create_task(run_batch(items, FAL, store=ResultStore(store_root))) for _ in range(2)]
        for _ in range(300):
            if len(list((store_root / ".journal").glob("*.json"))) == 2:
                break
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(both_then_crash())
    entries = [json.loads(p.read_text()) for p in (store_root / ".journal").glob("*.json")]
    journals = [entry.get("body", entry)["handle"]["request_id"] for entry in entries]
    assert sorted(journals) == ["twin-1", "twin-2"]  # neither overwrote the other
    fal_job(fal, "twin-1", done=True, width=5)
    fal_job(fal, "twin-2", done=True, width=7)
    (a,) = run(run_batch(items, FAL, store=ResultStore(store_root)))
    assert a.status == OK and len(fal.hits("POST", rf"^/{FAL_APP}$")) == 2  # attached, not resubmitted


@pytest.mark.parametrize("tamper", ["rewritten", "symlink", "missing", "grown"])
def test_a_blob_is_linked_only_to_a_saved_file_that_still_holds_its_bytes(tmp_path, tamper):
    """The conversation links its result image to the saved file instead of writing it twice; that
    file is in the output folder, so whatever is there now is checked before it becomes the blob."""
    from banana_pack.nodes.store import blob_path, put_blob, read_blob

    data = png_bytes(6, 4)
    saved = tmp_path / "out" / "result.png"
    saved.parent.mkdir()
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(data)
    if tamper == "rewritten":
        saved.write_bytes(png_bytes(7, 4))
    elif tamper == "symlink":
        saved.symlink_to(elsewhere)  # the same bytes, but not a file of the store's
    elif tamper == "grown":
        saved.write_bytes(data + b"\0" * 4096)
    digest = put_blob(tmp_path / "store", data, source=saved)
    blob = blob_path(tmp_path / "store", digest)
    assert read_blob(tmp_path / "store", digest) == data and not blob.is_symlink()
    assert blob.stat().st_nlink == 1 and blob.stat().st_ino != elsewhere.stat().st_ino  # written, not linked
    assert not list(blob.parent.glob(".tmp-*"))
    if saved.exists() and not saved.is_symlink():
        assert saved.read_bytes() != data  # the planted file is left as it was


def test_a_blob_linked_to_its_saved_file_shares_it(tmp_path):
    from banana_pack.nodes.store import blob_path, put_blob, read_blob

    data = png_bytes(6, 4)
    saved = tmp_path / "out" / "result.png"
    saved.parent.mkdir()
    saved.write_bytes(data)
    digest = put_blob(tmp_path / "store", data, source=saved)
    assert blob_path(tmp_path / "store", digest).stat().st_ino == saved.stat().st_ino
    assert read_blob(tmp_path / "store", digest) == data
