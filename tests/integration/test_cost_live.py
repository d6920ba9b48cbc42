"""Cost features inside a real ComfyUI: dry run blocks what is downstream, Batch Mode end to end with
the ledger keyed by ComfyUI's prompt id, and the jobs & spend route.

Run with COMFYUI_PATH (and COMFYUI_PYTHON) set; see tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import pytest
from fake_gemini_batch import RUNNING, SUCCEEDED, FakeBatchMode
from loopback import LoopbackServer

KEY = "AIzaLIVE-cost-key-5151515151"


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    fake = FakeBatchMode(server, prefix="/v1beta", states=[RUNNING, SUCCEEDED]).install()
    yield server, fake
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    server, _ = provider
    env = {
        "BANANA_GOOGLE_API_KEY": KEY,
        "BANANA_GOOGLE_BASE_URL": server.url + "/v1beta",
        "BANANA_GOOGLE_POLL_FIRST_DELAY": "0.2",
        "BANANA_GOOGLE_POLL_MAX_DELAY": "0.5",
    }
    instance = comfyui_server_factory(extra_env=env)
    client = instance.client()
    yield client
    client.close()


def prompt_graph(comfy, text: str, **options) -> dict:
    info = comfy.object_info("NanoBananaBridge")["NanoBananaBridge"]
    model = next(o["key"] for o in info["input"]["required"]["model"][1]["options"] if o["key"].startswith("Nano Banana 2"))
    option_inputs = comfy.object_info("NanoBananaOptions")["NanoBananaOptions"]["input"]
    option_names = list(option_inputs["required"]) + list(option_inputs.get("optional", {}))
    defaults = {"on_failure": "flag", "size_policy": "resize", "system_prompt": "", "temperature": 1.0, "web_search": False, "upload_format": "auto",
                "use_cache": True, "save_to": "nano_banana_bridge", "model_id_override": "", "delivery": "now", "dry_run": False}
    return {
        "1": {"class_type": "NanoBananaOptions", "inputs": {name: {**defaults, **options}[name] for name in option_names if name in {**defaults, **options}}},
        "2": {"class_type": "NanoBananaBridge", "inputs": {"prompt": text, "provider": "google", "model": model, "model.aspect_ratio": "auto", "model.resolution": "1K",
                                                        "seed": 7, "count": 1, "prompt_per_line": True, "image_mode": "references", "options": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nbb_cost"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
    }


def ledger_rows(comfy) -> list[dict]:
    path = comfy.server.user_dir / "nano_banana_bridge" / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM calls")]


def test_dry_run_sends_nothing_and_nothing_downstream_of_images_runs(comfy, provider):
    server, _ = provider
    before = len(server.requests)
    entry = comfy.run(prompt_graph(comfy, "a dry cat 1\na dry dog 2", dry_run=True), timeout=60)
    assert entry["status"]["status_str"] == "success"
    assert len(server.requests) == before
    assert "3" not in entry["outputs"] or not entry["outputs"]["3"].get("images")  # Save Image was blocked
    report = json.loads("".join(entry["outputs"]["4"]["text"]))
    assert report["dry_run"] is True and len(report["calls"]) == 2 and KEY not in json.dumps(report)
    assert not list(comfy.server.output_dir.rglob("nbb_cost*"))


def test_batch_mode_end_to_end_with_the_ledger_keyed_by_the_prompt_id(comfy, provider):
    server, _ = provider
    prompt_id = comfy.post_prompt(prompt_graph(comfy, "batch cat 1\nbatch dog 2", delivery="batch"))
    entry = comfy.wait_for(prompt_id, timeout=90)
    assert entry["status"]["status_str"] == "success", comfy.server.log_tail()
    assert len(entry["outputs"]["3"]["images"]) == 2
    assert len(server.hits("POST", r":batchGenerateContent$")) == 1
    rows = [r for r in ledger_rows(comfy) if r["prompt_id"] == prompt_id]
    assert len(rows) == 2 and {r["delivery"] for r in rows} == {"batch"} and all(r["cost"] > 0 for r in rows)
    with urllib.request.urlopen(comfy.server.base_url + "/nano_banana_bridge/jobs") as answer:
        summary = json.loads(answer.read())
    assert summary["jobs"] == [] and any(row["provider"] == "google" and row["calls"] >= 2 for row in summary["spend"]["days"])


def test_stop_cancels_the_batch_at_google_and_reports_an_interruption(comfy, provider):
    import time

    server, fake = provider
    fake.states = [RUNNING]  # batches created from now on never finish by themselves
    try:
        prompt_id = comfy.post_prompt(prompt_graph(comfy, "stop cat 1\nstop dog 2", delivery="batch"))
        deadline = time.monotonic() + 60
        while not any(b.display_name and b.polls >= 1 and "stop" in json.dumps(b.requests) for b in fake.batches.values()):
            assert time.monotonic() < deadline, comfy.server.log_tail()
            time.sleep(0.2)
        comfy.interrupt()
        entry = comfy.wait_for(prompt_id, timeout=60)
    finally:
        fake.states = [RUNNING, SUCCEEDED]
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events
    assert len(server.hits("POST", r"/batches/[\w-]+:cancel$")) == 1


def test_the_cancel_route_is_guarded_like_the_keys_routes(comfy):
    """POST /nano_banana_bridge/jobs/cancel through ComfyUI's server: the same write guard as the keys."""
    import urllib.error

    def cancel(body: bytes, headers: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(comfy.server.base_url + "/nano_banana_bridge/jobs/cancel", data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    status, answer = cancel(json.dumps({"id": "nano_banana_bridge/" + "0" * 64}).encode())
    assert status == 404 and "No such journaled job" in answer["error"]
    assert cancel(b"{" * 20_000)[0] == 400  # over the body limit
    assert cancel(b"not json")[0] == 400
    assert cancel(b"{}", {"Host": "evil.example:8188", "Origin": "http://evil.example:8188"})[0] == 403  # DNS rebinding
    assert cancel(b"{}", {"Content-Type": "text/plain"})[0] == 415
