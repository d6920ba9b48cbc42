"""Housekeeping: stale journal entries, cache entries without files and old reports go; saved images never do.

The store is filled the real way (run_batch against the loopback Gemini fake, remember_task,
save_report), then tidied "later" by passing a future `now`.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from banana_pack.nodes import housekeeping
from banana_pack.nodes.batch import CACHED, BatchSettings, expand_items, run_batch
from banana_pack.nodes.housekeeping import REPORTS_MAX_AGE_ENV, tidy, tidy_once
from banana_pack.nodes.store import ResultStore
from banana_pack.providers.catalog import PRESETS
from helpers import png_bytes, run
from loopback import Recorded, Reply, fixture

DAY = 86400.0
GEN_PATH = r":generateContent$"
SETTINGS = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K")
LIFETIMES = {spec.id: spec.result_lifetime for spec in PRESETS}


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "tidy-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)

    def answer(req: Recorded) -> Reply:
        import base64

        prompt = req.json()["contents"][0]["parts"][0]["text"]
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(len(prompt), 3)).decode()
        return Reply(json=body)

    server.route("POST", GEN_PATH, answer)
    return server


def saved_images(root) -> dict[str, str]:
    """Every image and sidecar under the date folders, with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0][:2] == "20"
    }


def key_of(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_tidy_removes_stale_bookkeeping_and_keeps_every_saved_image(google, tmp_path):
    root = tmp_path / "nano_banana_bridge"
    store = ResultStore(root)
    prompts = ["kept cat", "gone dog", "a bird"]
    outcomes = run(run_batch(expand_items(prompts, []), SETTINGS, store=store))
    assert all(o.files for o in outcomes)
    # The dog's image (and sidecar) were deleted by the user: its cache entry points at nothing.
    (root / outcomes[1].files[0]).unlink()
    (root / outcomes[1].files[0]).with_suffix(".json").unlink()
    before = saved_images(root)
    assert len(before) == 4  # two images, two sidecars

    store.remember_task(key_of(1), {"request_id": "fal-job"}, {"provider": "fal"})  # 30-day lifetime
    store.remember_task(key_of(2), {"task_id": "evo-task"}, {"provider": "evolink"})  # 24 h
    store.remember_task(key_of(3), {"task_id": "x"}, {"provider": "a-gateway-since-removed"})  # the longest lifetime
    (root / ".journal" / "notes.json").write_text("{}")  # not a name this pack writes: never touched
    report = store.save_report({"items": [{"files": outcomes[0].files}]})

    later = time.time() + 2 * DAY
    done = tidy(root, lifetimes=LIFETIMES, report_age=30 * DAY, now=later)
    assert [p.name for p in done.journal] == [f"{key_of(2)}.json"]
    assert len(done.cache) == 1 and done.reports == []
    assert sorted(p.name for p in (root / ".journal").iterdir()) == sorted([f"{key_of(1)}.json", f"{key_of(3)}.json", "notes.json"])
    assert saved_images(root) == before  # not one image or sidecar touched

    # The cat's entry is still authentic and answers from the cache; the dog runs again.
    again = run(run_batch(expand_items(prompts[:2], []), SETTINGS, store=ResultStore(root)))
    assert [o.status for o in again] == [CACHED, "ok"]
    before = saved_images(root)

    much_later = time.time() + 31 * DAY
    done = tidy(root, lifetimes=LIFETIMES, report_age=30 * DAY, now=much_later)
    assert sorted(p.name for p in done.journal) == sorted([f"{key_of(1)}.json", f"{key_of(3)}.json"])
    assert [p.name for p in done.reports] == [report.name]
    assert done.cache == []  # every remaining entry still has its files
    assert (root / ".journal" / "notes.json").exists()
    assert saved_images(root) == before


def test_an_entry_with_any_file_left_is_kept(tmp_path):
    root = tmp_path / "store"
    (root / ".cache").mkdir(parents=True)
    (root / "2026-01-01").mkdir()
    (root / "2026-01-01" / "a.png").write_bytes(png_bytes(2, 2))
    half = {"body": {"files": [{"path": "2026-01-01/a.png"}, {"path": "2026-01-01/b.png"}]}}
    gone = {"body": {"files": [{"path": "2026-01-01/b.png"}]}}
    escaping = {"body": {"files": [{"path": "../outside.png"}]}}  # outside the store: counts as gone
    (tmp_path / "outside.png").write_bytes(png_bytes(2, 2))
    first_format = {"files": ["2026-01-01/a.png"], "text": ""}
    import json

    store = ResultStore(root)
    for n, entry in enumerate((half, gone, escaping)):  # written by this install: authenticated
        store._write_entry(root / ".cache" / f"{key_of(n)}.json", "cache", key_of(n), entry["body"])
    # An unauthenticated entry (the first format, or planted) is not this install's: never removed.
    (root / ".cache" / f"{key_of(3)}.json").write_text(json.dumps(first_format))
    (root / ".cache" / f"{key_of(9)}.json").write_text("not json")  # not understood: left alone
    done = tidy(root, lifetimes=LIFETIMES, report_age=None)
    assert sorted(p.name for p in done.cache) == sorted([f"{key_of(1)}.json", f"{key_of(2)}.json"])
    assert (root / ".cache" / f"{key_of(0)}.json").exists() and (root / ".cache" / f"{key_of(3)}.json").exists()
    assert (root / ".cache" / f"{key_of(9)}.json").exists()
    assert (root / "2026-01-01" / "a.png").exists() and (tmp_path / "outside.png").exists()


def test_symlinks_are_never_followed_or_removed(tmp_path):
    root = tmp_path / "store"
    (root / ".journal").mkdir(parents=True)
    target = tmp_path / "precious.json"
    target.write_text('{"submitted_at": "2000-01-01T00:00:00"}')
    os.utime(target, (0, 0))
    (root / ".journal" / f"{key_of(1)}.json").symlink_to(target)
    done = tidy(root, lifetimes=LIFETIMES, report_age=None)
    assert done.journal == [] and target.exists() and (root / ".journal" / f"{key_of(1)}.json").is_symlink()


def test_a_recent_time_in_either_place_keeps_an_entry(tmp_path):
    root = tmp_path / "store"
    store = ResultStore(root)
    store.remember_task(key_of(1), {"task_id": "t"}, {"provider": "evolink"})
    path = root / ".journal" / f"{key_of(1)}.json"
    os.utime(path, (time.time() - 5 * DAY, time.time() - 5 * DAY))  # an old file time, but a fresh submitted_at
    assert tidy(root, lifetimes=LIFETIMES, report_age=None).journal == []
    assert tidy(root, lifetimes=LIFETIMES, report_age=None, now=time.time() + 2 * DAY).journal == [path]


def test_report_age_from_the_environment(tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = ResultStore(root)
    report = store.save_report({"items": []})
    (root / "reports" / f"{key_of(1)}.json").write_text("{}")  # not a report name: never touched
    monkeypatch.setenv(REPORTS_MAX_AGE_ENV, "off")
    assert tidy(root, lifetimes=LIFETIMES, now=time.time() + 400 * DAY).reports == []
    monkeypatch.setenv(REPORTS_MAX_AGE_ENV, "7")
    assert tidy(root, lifetimes=LIFETIMES, now=time.time() + 6 * DAY).reports == []
    assert tidy(root, lifetimes=LIFETIMES, now=time.time() + 8 * DAY).reports == [report]
    assert (root / "reports" / f"{key_of(1)}.json").exists()
    monkeypatch.delenv(REPORTS_MAX_AGE_ENV)
    assert housekeeping.reports_max_age() == 30 * DAY


def test_lifetimes_come_from_the_catalog_and_the_environment(monkeypatch):
    lifetimes = housekeeping.provider_lifetimes()
    assert lifetimes["fal"] == 30 * DAY and lifetimes["evolink"] == DAY and lifetimes["apimaster"] == DAY
    monkeypatch.setenv("BANANA_EVOLINK_RESULT_LIFETIME", str(3 * DAY))
    assert housekeeping.provider_lifetimes()["evolink"] == 3 * DAY


def test_tidy_once_per_root(tmp_path):
    root = tmp_path / "once"
    ResultStore(root).save_report({"items": []})
    assert tidy_once(root) is not None
    assert tidy_once(root) is None
    assert tidy_once(tmp_path / "missing") is not None  # a folder that does not exist yet: nothing to do, no error
