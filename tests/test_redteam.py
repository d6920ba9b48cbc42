"""Red-team findings after issue 8 and 14: each test is an attack that worked on the merged code.

- Files planted in the store through ComfyUI's upload route (a file where a folder goes, a folder
  where an entry goes) made a paid result fail after it was paid, or lost it: a re-run paid again.
- httpcore's own loggers (children of "httpcore") log response headers at DEBUG, unredacted.
- A custom gateway whose id differs from a preset's only by '-' / '_' read that preset's key.
- Housekeeping removed cache and journal entries this install never wrote.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import time

import pytest
from banana_pack.nodes.batch import CACHED, OK, BatchSettings, expand_items, run_batch
from banana_pack.nodes.housekeeping import tidy
from banana_pack.nodes.store import ResultStore
from banana_pack.providers.config import all_providers
from banana_pack.providers.errors import ConfigError
from helpers import fal_job_done, fal_submit, png_bytes, point_at, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"
GOOGLE = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K")
FAL = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")
FAL_APP = "fal-ai/nano-banana-pro"
GOOGLE_KEY = "AIzaRedTeamKey-0123456789abcdef"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)

    def handler(_req: Recorded) -> Reply:
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(13, 5)).decode()
        return Reply(json=body, headers={"x-echo": f"key={GOOGLE_KEY}"})

    server.route("POST", GEN_PATH, handler)
    return server


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-redteam-key:secret-456")
    point_at(monkeypatch, "fal", server.url)
    rid = "job-red"
    server.route("POST", rf"^/{FAL_APP}$", Reply(json=fal_submit(server.url, rid, FAL_APP)))
    fal_job_done(server, rid, png_bytes(7, 5))
    return server


def once(items, settings, root):
    (outcome,) = run(run_batch(items, settings, store=ResultStore(root)))
    return outcome


# -- planted files must not cost a paid result ----------------------------------------------------


def test_a_file_planted_where_todays_folder_goes_does_not_lose_the_paid_image(google, tmp_path):
    """POST /upload/image can write a file named like today's folder (or tomorrow's) into the store."""
    root = tmp_path / "store"
    root.mkdir()
    for day in (dt.date.today(), dt.date.today() + dt.timedelta(days=1)):
        (root / day.isoformat()).write_bytes(b"planted")
    items = expand_items(["a cat"], [], seed=1)
    first = once(items, GOOGLE, root)
    assert first.status == OK, first.message
    assert first.files and (root / first.files[0]).is_file() and (root / first.files[0]).read_bytes() == first.images[0].data
    again = once(items, GOOGLE, root)
    assert again.status == CACHED and len(google.hits("POST", GEN_PATH)) == 1  # paid once


@pytest.mark.parametrize("where", [".cache", ".journal"])
def test_a_file_planted_where_a_bookkeeping_folder_goes_does_not_fail_a_paid_result(google, tmp_path, where):
    root = tmp_path / "store"
    root.mkdir()
    (root / where).write_bytes(b"planted")
    outcome = once(expand_items(["a dog"], [], seed=2), GOOGLE, root)
    assert outcome.status == OK, outcome.message
    assert outcome.images and (root / outcome.files[0]).read_bytes() == outcome.images[0].data


def test_a_folder_planted_where_the_journal_entry_goes_does_not_fail_the_paid_job(fal, tmp_path):
    """The request key is a hash of the workflow's own values, so a stranger can compute it, and an
    upload into subfolder .journal/<key>.json makes a folder there."""
    root = tmp_path / "store"
    items = expand_items(["a lighthouse"], [], seed=9)
    first = once(items, FAL, root)
    assert first.status == OK
    (entry,) = (root / ".cache").glob("*.json")
    entry.unlink()
    (root / ".journal" / entry.name).mkdir(parents=True)
    (root / ".journal" / entry.name / "x.png").write_bytes(b"planted")
    again = once(items, FAL, root)
    assert again.status == OK, again.message
    assert again.images and (root / again.files[0]).is_file()
    (root / ".cache" / entry.name).unlink()
    (root / ".cache" / entry.name).mkdir()  # and a folder where the cache entry goes
    third = once(items, FAL, root)
    assert third.status == OK, third.message


def test_a_file_planted_where_the_reports_folder_goes_does_not_fail_the_node(google, tmp_path):
    from banana_pack.nodes.render import RenderInputs, render

    root = tmp_path / "store"
    root.mkdir()
    (root / "reports").write_bytes(b"planted")
    inputs = RenderInputs(prompts=["a yak"], provider="google", model="Nano Banana Pro", resolution="1K", seed=3)
    out = run(render(inputs, store_root=root, output_root=tmp_path))
    assert out.report["counts"].get("ok") == 1 and tuple(out.images.shape[1:3]) == (5, 13)


# -- logs ------------------------------------------------------------------------------------------


def test_debug_logging_of_httpcore_never_shows_a_key(google, tmp_path, monkeypatch):
    """ComfyUI --verbose DEBUG sets the root logger to DEBUG: httpcore.http11 then logs every
    response header, and /internal/logs serves ComfyUI's log to any page that reaches it."""
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    for name in ("httpx", "httpcore"):  # as BANANA_DEBUG=1 leaves them (another test may have quietened them)
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    try:
        assert once(expand_items(["a hen"], [], seed=4), GOOGLE, tmp_path / "store").status == OK
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    text = captured.getvalue()
    assert "x-echo" in text  # the headers were logged: the test looks at the right lines
    assert GOOGLE_KEY not in text and GOOGLE_KEY[:10] not in text


# -- custom gateways -------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway_id", ["openai-hk", "OPENAI-HK", "apiyi-chat", "fal "])
def test_a_custom_gateway_cannot_take_a_presets_key_by_its_spelling(isolated_config, monkeypatch, gateway_id):
    """BANANA_OPENAI_HK_API_KEY is the openai_hk preset's key; a gateway named 'openai-hk' read it and
    sent it to the gateway's own base URL."""
    isolated_config.mkdir(parents=True, exist_ok=True)
    entry = {"id": gateway_id, "protocol": "openai-chat", "base_url": "https://gateway.example", "models": ["gemini-3-pro-image-preview"]}
    (isolated_config / "providers.json").write_text(json.dumps({"providers": [entry]}))
    with pytest.raises(ConfigError, match="already"):
        all_providers()


# -- housekeeping only removes what this install wrote ---------------------------------------------


def test_housekeeping_leaves_entries_this_install_did_not_write(google, tmp_path):
    root = tmp_path / "store"
    first = once(expand_items(["a bee"], [], seed=6), GOOGLE, root)
    (entry,) = (root / ".cache").glob("*.json")
    planted_cache = root / ".cache" / ("a" * 64 + ".json")
    planted_cache.write_text(json.dumps({"version": 2, "kind": "cache", "key": "a" * 64, "body": {"files": [{"path": "gone.png"}]}, "mac": "0" * 64}))
    planted_journal = root / ".journal" / ("b" * 64 + ".json")
    planted_journal.parent.mkdir(parents=True, exist_ok=True)
    planted_journal.write_text(json.dumps({"handle": {"request_id": "x"}, "provenance": {"provider": "fal"}, "submitted_at": "2020-01-01T00:00:00"}))
    long_ago = time.time() - 400 * 86400
    os.utime(planted_journal, (long_ago, long_ago))
    (root / first.files[0]).unlink()  # the real entry's image is gone: that entry goes
    tidied = tidy(root, lifetimes={"google": 3600.0, "fal": 3600.0}, report_age=None)
    assert tidied.cache == [entry]
    assert planted_cache.exists() and planted_journal.exists()


# -- attaching to a journaled job ------------------------------------------------------------------


def test_a_rate_limited_attach_keeps_the_journal_and_never_submits_again(fal, tmp_path, monkeypatch):
    """A re-run attaches to the journaled job; a 429 on its status (a busy queue, or a gateway) is not
    'the job is gone': submitting anew would pay for the same request twice."""
    from banana_pack.providers.engine.transport import HttpEngine

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))
    root = tmp_path / "store"
    items = expand_items(["a lighthouse"], [], seed=11)
    fal.route("GET", r"/requests/job-red/status$", Reply(503, body=b"busy", content_type="text/plain"))
    first = once(items, FAL, root)
    assert first.status == "failed" and len(fal.hits("POST", rf"^/{FAL_APP}$")) == 1
    (journal,) = (root / ".journal").glob("*.json")  # kept: the job may still finish
    fal.route("GET", r"/requests/job-red/status$", Reply(429, {"detail": "Too many requests"}))
    second = once(items, FAL, root)
    assert second.status == "failed"
    assert len(fal.hits("POST", rf"^/{FAL_APP}$")) == 1, "the journaled job was paid for again"
    assert journal.exists()


# -- the store secret --------------------------------------------------------------------------------


def test_the_store_secret_is_the_same_for_threads_that_create_it_at_once(isolated_config):
    """A fresh install's first batch looks up every item's cache entry in parallel threads: a reader
    that saw the file between its creation and its write got 'damaged', and its store fell back to
    a secret that dies with the process (so that run's journal could not be attached to after a
    restart: the job was paid again)."""
    import threading

    from banana_pack.providers import config

    for trial in range(40):
        folder = isolated_config / f"install-{trial}"
        results: list[object] = []
        barrier = threading.Barrier(6)

        def make(barrier: threading.Barrier = barrier, results: list[object] = results) -> None:
            barrier.wait()
            try:
                results.append(config.store_secret())
            except Exception as exc:  # noqa: BLE001 - the test reports it
                results.append(exc)

        os.environ["BANANA_CONFIG_DIR"] = str(folder)
        threads = [threading.Thread(target=make) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({repr(r) for r in results}) == 1 and isinstance(results[0], bytes), results
        assert (folder / "store.secret").stat().st_mode & 0o777 == 0o600
        assert (folder / "store.secret").read_bytes().strip() == results[0]
        assert [p.name for p in folder.iterdir()] == ["store.secret"]  # no temporary file left


# -- text a provider (or a steered model) sends ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["![" * 60_000, "http://" * 20_000, "![](http://" * 12_000, "![](data:image/png;base64,A" * 5_000 + "![" * 30_000],
    ids=["markdown-starts", "url-starts", "markdown-urls", "mixed"],
)
def test_image_links_in_hostile_text_are_found_in_linear_time(text):
    """parse runs on ComfyUI's event loop: a quadratic pattern froze the whole server (these took
    10 to 60 s each; a linear scan takes milliseconds)."""
    from banana_pack.providers.outcome import image_refs_in_text

    started = time.monotonic()
    image_refs_in_text(text)
    assert time.monotonic() - started < 3.0


def test_image_links_are_still_found_where_they_were():
    from banana_pack.providers.outcome import image_refs_in_text

    text = (
        "Here ![a cat](https://cdn.example/a.png?sig=1) and ![](data:image/png;base64,iVBORw0K) then "
        "https://cdn.example/b.jpeg?x=y, (https://cdn.example/c.webp) and http://x.example/not-an-image.txt"
    )
    refs, rest = image_refs_in_text(text)
    assert refs == ["https://cdn.example/a.png?sig=1", "data:image/png;base64,iVBORw0K", "https://cdn.example/b.jpeg?x=y,", "https://cdn.example/c.webp"]
    assert "not-an-image.txt" in rest and "cdn.example" not in rest


def test_a_file_planted_where_the_save_folder_goes_still_returns_the_paid_images(google, tmp_path):
    """An upload of a file named like the save_to folder (before its first use) makes it unusable:
    the images still reach the graph, and the report says they were not saved."""
    root = tmp_path / "store"
    root.write_bytes(b"planted")
    outcome = once(expand_items(["a owl"], [], seed=12), GOOGLE, root)
    assert outcome.status == OK and outcome.images and outcome.files == []
    assert any("Not saved" in w for w in outcome.warnings)
    assert root.read_bytes() == b"planted"


def test_a_store_secret_other_users_can_read_is_warned_about(isolated_config, caplog):
    """Like keys.json: a secret restored from a backup or copied with the wrong mode lets other local
    users forge cache and journal entries."""
    from banana_pack.providers import config

    isolated_config.mkdir(parents=True, exist_ok=True)
    secret = isolated_config / "store.secret"
    secret.write_text("f" * 64 + "\n")
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
        assert config.store_secret() == b"f" * 64
    # (other tests register words like "readable" as keys in this process: look for the rest)
    assert "store.secret" in caplog.text and "by other users" in caplog.text and "chmod 600" in caplog.text
