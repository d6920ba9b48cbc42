"""The run's report and the sidecars: one path convention, job ids, source URLs, actionable errors.

Paths are relative to ComfyUI's output folder, as ComfyUI's /view takes them
(filename + subfolder, type=output), for fresh and cached items alike.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from banana_pack.nodes.batch import (
    CACHED,
    CANCELLED,
    OK,
    BatchFailed,
    BatchSettings,
    expand_items,
    run_batch,
)
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.nodes.store import ResultStore
from helpers import png_bytes, point_at, run
from loopback import Recorded, Reply, fixture

GEN_PATH = r":generateContent$"
FAL_APP = "fal-ai/nano-banana-pro"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "report-test-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    return server


@pytest.fixture
def fal(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-report-key:secret-123")
    point_at(monkeypatch, "fal", server.url)
    return server


def gemini_answer(req: Recorded) -> Reply:
    prompt = req.json()["contents"][0]["parts"][0]["text"]
    if prompt.startswith("refuse"):
        return Reply(json=fixture("gemini/finish_image_safety.json"))
    body = fixture("gemini/success_single.json")
    import base64

    body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(len(prompt), 2)).decode()
    return Reply(json=body)


def view(output: Path, path: str) -> Path:
    """What ComfyUI's /view serves for filename=<name>&subfolder=<folder>&type=output."""
    subfolder, _, filename = path.rpartition("/")
    assert not path.startswith("/") and ".." not in path.split("/")
    return output / subfolder / filename


def test_fresh_and_cached_items_use_output_relative_paths(google, tmp_path):
    google.route("POST", GEN_PATH, gemini_answer)
    output = tmp_path / "output"
    store_root = output / "nano_banana_bridge"
    inputs = RenderInputs(prompts=["a cat"], provider="google", model="Nano Banana Pro", resolution="1K", seed=1)
    fresh = run(render(inputs, store_root=store_root, output_root=output))
    cached = run(render(inputs, store_root=store_root, output_root=output))
    (fresh_item,), (cached_item,) = fresh.report["items"], cached.report["items"]
    assert fresh_item["status"] == OK and cached_item["status"] == CACHED and len(google.requests) == 1
    assert fresh_item["files"] == cached_item["files"]  # one convention for both
    (path,) = fresh_item["files"]
    assert path.startswith("nano_banana_bridge/") and path.endswith(".png")
    assert view(output, path).read_bytes().startswith(b"\x89PNG")
    assert json.loads(view(output, path).with_suffix(".json").read_text())["file"] == path.rsplit("/", 1)[1]
    for report in (fresh.report, cached.report):
        assert report["save_folder"] == "nano_banana_bridge"
        assert report["report_file"].startswith("nano_banana_bridge/reports/")
        on_disk = json.loads(view(output, report["report_file"]).read_text())
        assert on_disk["report_file"] == report["report_file"] and on_disk["items"][0]["files"] == [path]
    assert cached_item["request_id"] == fresh_item["request_id"] == "DrZkaeGZJdeez7IP_Om04A8"


def test_cancelled_async_item_keeps_its_job_id(fal, tmp_path):
    rid = "job-report-0001"
    submit = fixture("fal/submit.json")
    base = f"{fal.url}/{FAL_APP}/requests/{rid}"
    submit.update(request_id=rid, response_url=base, status_url=base + "/status", cancel_url=base + "/cancel")
    fal.route("POST", rf"^/{FAL_APP}$", Reply(json=submit))
    fal.route("GET", rf"/requests/{rid}/status", Reply(202, fixture("fal/status_in_progress.json")))
    fal.route("PUT", rf"/requests/{rid}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    stop = threading.Event()
    store = ResultStore(tmp_path)
    settings = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")

    async def interrupt_once_journaled():
        import asyncio

        task = asyncio.create_task(run_batch(expand_items(["a ship"], []), settings, store=store, cancel_check=stop.is_set))
        while not list((tmp_path / ".journal").glob("*.json")):
            await asyncio.sleep(0.02)
        stop.set()  # the user's interrupt
        return await task

    (outcome,) = run(interrupt_once_journaled())
    assert outcome.status == CANCELLED and outcome.request_id == rid
    assert outcome.report()["request_id"] == rid
    assert fal.hits("PUT", r"/cancel$")  # a user interrupt still cancels the remote job


def test_sidecar_records_the_source_url_without_credentials(fal, tmp_path):
    rid = "job-report-0002"
    base = f"{fal.url}/{FAL_APP}/requests/{rid}"
    submit = fixture("fal/submit.json")
    submit.update(request_id=rid, response_url=base, status_url=base + "/status", cancel_url=base + "/cancel")
    result = fixture("fal/result_single.json")
    host = fal.url.split("://", 1)[1]
    result["images"][0]["url"] = f"http://cdnuser:cdn-secret-999@{host}/files/out.png?sig=abc"
    fal.route("POST", rf"^/{FAL_APP}$", Reply(json=submit))
    fal.route("GET", rf"/requests/{rid}/status", Reply(json=fixture("fal/status_completed.json")))
    fal.route("GET", rf"/requests/{rid}$", Reply(json=result))
    fal.route("GET", r"^/files/out\.png", Reply(body=png_bytes(5, 3), content_type="image/png"))
    (outcome,) = run(run_batch(expand_items(["a ship"], []), BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K"), store=ResultStore(tmp_path)))
    assert outcome.status == OK and outcome.request_id == rid
    sidecar_text = (tmp_path / outcome.files[0]).with_suffix(".json").read_text()
    sidecar = json.loads(sidecar_text)
    assert sidecar["source_url"] == f"http://{host}/files/out.png?sig=abc"
    assert "cdn-secret-999" not in sidecar_text and "cdnuser" not in sidecar_text
    assert sidecar["request_id"] == rid


def test_fail_policy_error_names_the_save_folder_and_the_report(google, tmp_path):
    google.route("POST", GEN_PATH, gemini_answer)
    output = tmp_path / "output"
    store_root = output / "nano_banana_bridge"
    inputs = RenderInputs(prompts=["a cat", "refuse this", "a dog"], provider="google", model="Nano Banana Pro", resolution="1K", on_failure="fail")
    with pytest.raises(BatchFailed) as info:
        run(render(inputs, store_root=store_root, output_root=output))
    message = str(info.value)
    assert f"2 finished image(s) are saved in {store_root}" in message
    (report_file,) = (store_root / "reports").glob("*.json")
    assert str(report_file) in message
    report = json.loads(report_file.read_text())
    assert report["counts"] == {"ok": 2, "refused": 1}
    assert all(view(output, f).exists() for item in report["items"] for f in item["files"])


def test_failed_items_keep_the_request_id_the_provider_gave(google, tmp_path):
    google.route("POST", GEN_PATH, Reply(400, fixture("gemini/error_400.json"), headers={"x-request-id": "req-400-abc"}))
    (outcome,) = run(run_batch(expand_items(["x"], []), BatchSettings(provider="google", model="Nano Banana"), store=None))
    assert outcome.status == "failed" and outcome.request_id == "req-400-abc"


def test_no_store_means_no_paths_and_a_plain_message(google):
    google.route("POST", GEN_PATH, gemini_answer)
    with pytest.raises(BatchFailed) as info:
        run(render(RenderInputs(prompts=["a cat", "refuse it"], provider="google", model="Nano Banana", on_failure="fail"), store_root=None))
    assert "are saved" not in str(info.value) and "report" not in str(info.value).lower()  # nothing was saved: nothing claimed


def test_the_nodes_status_line_names_the_cost_as_money_like_the_spend_line_below_it():
    from banana_pack.nodes.render import _summary

    report = {"counts": {"ok": 2}, "items": [], "cost": 0.134424, "cost_unit": "usd", "spend": {"run": 0.134424, "today": 0.4, "unit": "usd"}}
    assert _summary(report) == "Done: 2 ok - about $0.13\nThis run so far: $0.13; today: $0.40"
    credits = {"counts": {"ok": 1}, "items": [], "cost": 12.5, "cost_unit": "credits"}
    assert _summary(credits) == "Done: 1 ok - about 12.5 credits"
