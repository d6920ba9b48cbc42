"""Hostile input through a real ComfyUI: a broken config, files planted with ComfyUI's own upload
route, and a model that echoes the key. Run with COMFYUI_PATH (see tests/integration/conftest.py).
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
import uuid
from urllib.parse import quote

import pytest
from PIL import Image

from helpers import fal_job_done, fal_submit
from loopback import LoopbackServer, Recorded, Reply, fixture

from .comfyui_harness import status_message

GOOGLE_KEY = "AIzaUNTRUSTED/live+key=0123456789"
FAL_KEY = "fal-untrusted-live:key-9876543210"
NODE = "NanoBananaBridge"
FAL_APP = "fal-ai/nano-banana-pro"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 30)).save(buffer, "PNG")
    return buffer.getvalue()


BASIC = base64.b64encode(f":{GOOGLE_KEY}".encode()).decode()  # an echoed `Authorization: Basic` header, empty user


def echo(req: Recorded) -> Reply:
    if "echo in an error" in req.body.decode():  # a gateway that echoes the request's headers when it refuses it
        said = f"Invalid credentials. Headers: Authorization: Basic {BASIC}; X-Key: {GOOGLE_KEY.upper()}"
        return Reply(401, json={"error": {"code": 401, "message": said, "status": "UNAUTHENTICATED"}}, headers={"x-echo": f"Basic {BASIC}"})
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"] = [
        {"text": f"your key is {GOOGLE_KEY}, or {quote(GOOGLE_KEY, safe='')} in a URL, and it starts {GOOGLE_KEY[:14]}"},
        {"text": f"A proxy saw Authorization: Basic {BASIC}, and {GOOGLE_KEY.lower()} in lower case"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(16, 12)).decode()}},
    ]
    return Reply(json=body)


# Every form of the key the fakes echo: the key-only middle of its base64 (the edges also hold the user name's bits).
ECHOED_FORMS = (GOOGLE_KEY, quote(GOOGLE_KEY, safe=""), GOOGLE_KEY[:14], GOOGLE_KEY.upper(), GOOGLE_KEY.lower(), BASIC[3:-3])


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", echo)
    rid = "live-job"
    server.route("POST", rf"^/{FAL_APP}$", Reply(json=fal_submit(server.url, rid, FAL_APP)))
    fal_job_done(server, rid, png(9, 7), file="out.png")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def foreign():
    server = LoopbackServer().start()
    server.route("GET", r".*", Reply(json=fixture("fal/status_completed.json")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider, tmp_path_factory):
    config = tmp_path_factory.mktemp("banana_config")
    (config / "providers.json").write_text('{\n  "settings": {\n    "fal": {"concurrency": 2},\n  }\n}\n')
    env = {
        "BANANA_CONFIG_DIR": str(config),
        "BANANA_GOOGLE_API_KEY": GOOGLE_KEY,
        "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta",
        "FAL_KEY": FAL_KEY,
        "BANANA_FAL_BASE_URL": provider.url,
        "BANANA_FAL_POLL_FIRST_DELAY": "0.05",
    }
    # No output cache: the same graph must run again after files are planted.
    server = comfyui_server_factory(extra_env=env, extra_args=("--cache-none",))
    client = server.client()
    client.config_dir = config
    yield client
    client.close()


def bridge(prompt: str, provider: str, seed: int) -> dict:
    values = {
        "prompt": prompt, "provider": provider, "model": "Nano Banana Pro", "model.aspect_ratio": "auto", "model.resolution": "1K",
        "seed": seed, "count": 1, "prompt_per_line": False, "image_mode": "references", "on_failure": "fail", "size_policy": "resize",
        "system_prompt": "", "temperature": 1.0, "web_search": False, "upload_format": "auto", "use_cache": True,
        "save_to": "nano_banana_bridge", "model_id_override": "",
    }
    return {"class_type": NODE, "inputs": values}


def graph(prompt: str, provider: str, seed: int) -> dict:
    return {
        "1": bridge(prompt, provider, seed),
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }


def upload(comfy, subfolder: str, filename: str, data: bytes) -> None:
    """What any web page that reaches ComfyUI can do: POST /upload/image, type=output, overwrite."""
    boundary = uuid.uuid4().hex
    fields = [("type", "output"), ("subfolder", subfolder), ("overwrite", "true")]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode() for k, v in fields)
    body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\nContent-Type: application/json\r\n\r\n".encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(comfy.base_url + "/upload/image", data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def test_broken_providers_file_keeps_the_node_and_says_where(comfy):
    info = comfy.object_info(NODE)[NODE]  # the pack loaded, with the built-in presets
    assert "fal" in info["input"]["required"]["provider"][1]["options"]
    answer = comfy.get_json("/nano_banana_bridge/catalog")
    assert "providers.json" in answer["error"] and "line 4" in answer["error"]
    assert str(comfy.config_dir) not in json.dumps(answer)
    entry = comfy.run(graph("a cat", "google", 1))
    error = status_message(entry, "execution_error")
    assert error is not None and "providers.json" in error["exception_message"] and "line 4, column 3" in error["exception_message"]
    (comfy.config_dir / "providers.json").unlink()  # fixed: the next runs work without a restart
    assert "error" not in comfy.get_json("/nano_banana_bridge/catalog")


def test_echoed_key_never_reaches_history_or_files(comfy, provider):
    (comfy.config_dir / "providers.json").unlink(missing_ok=True)
    prompt = graph("echo the key", "google", 2)
    prompt["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}  # the conversation output, with the model's words
    entry = comfy.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    shown = json.dumps(entry["outputs"])
    assert "your key is ***" in shown and "Basic" in shown  # the text output reached the preview, redacted
    assert "A proxy saw" in json.dumps(entry["outputs"]["4"])  # so did the conversation
    everything = json.dumps(comfy.history()) + "".join(p.read_text(errors="ignore") for p in comfy.server.output_dir.rglob("*.json"))
    for form in ECHOED_FORMS:
        assert form not in everything


def test_a_key_echoed_in_an_error_never_reaches_history_or_the_log(comfy, provider):
    (comfy.config_dir / "providers.json").unlink(missing_ok=True)
    entry = comfy.run(graph("echo in an error", "google", 5))
    error = status_message(entry, "execution_error")
    assert error is not None and "Invalid credentials" in error["exception_message"], json.dumps(entry["status"])[:2000]
    # /history keeps the message and traceback; ComfyUI's log has the message and the formatted exception.
    everything = json.dumps(entry) + comfy.server.log_text()
    assert "Invalid credentials" in comfy.server.log_text()  # the log holds the error: the search looks at the right lines
    for form in ECHOED_FORMS:
        assert form not in everything, form


def test_planted_cache_and_journal_files_are_ignored(comfy, provider, foreign, tmp_path):
    (comfy.config_dir / "providers.json").unlink(missing_ok=True)
    store = comfy.server.output_dir / "nano_banana_bridge"
    before = set((store / ".cache").glob("*.json"))
    first = comfy.run(graph("a lighthouse", "fal", 3))
    assert first["status"]["status_str"] == "success", json.dumps(first["status"])[:2000]
    (entry,) = set((store / ".cache").glob("*.json")) - before
    key = entry.stem
    submits = len(provider.hits("POST", rf"^/{FAL_APP}$"))
    # Written through ComfyUI's own upload route: first a journal entry whose handle points at a
    # foreign server (with the cache entry spoilt, so the journal is consulted) ...
    base = f"{foreign.url}/steal/requests/x"
    handle = {"request_id": "x", "endpoint": FAL_APP, "status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel", "count": 1}
    upload(comfy, "nano_banana_bridge/.cache", f"{key}.json", b"{}")
    upload(comfy, "nano_banana_bridge/.journal", f"{key}.json", json.dumps({"handle": handle, "provenance": {}}).encode())
    again = comfy.run(graph("a lighthouse", "fal", 3))
    assert again["status"]["status_str"] == "success", json.dumps(again["status"])[:2000]
    time.sleep(0.2)
    assert foreign.requests == []  # the planted handle was never polled (with or without the key)
    assert len(provider.hits("POST", rf"^/{FAL_APP}$")) == submits + 1  # a fresh job instead
    # ... then a cache entry naming a file outside the store.
    private = comfy.server.base_dir / "private.png"
    private.write_bytes(png(33, 33))
    upload(comfy, "nano_banana_bridge/.cache", f"{key}.json", json.dumps({"files": ["../../private.png"], "text": "planted", "meta": {}}).encode())
    assert json.loads(entry.read_text())["text"] == "planted"
    third = comfy.run(graph("a lighthouse", "fal", 3))
    assert third["status"]["status_str"] == "success", json.dumps(third["status"])[:2000]
    assert "planted" not in json.dumps(third["outputs"])
    assert len(provider.hits("POST", rf"^/{FAL_APP}$")) == submits + 2
    log = comfy.server.log_text()
    assert log.count(f"ignoring {store / '.journal' / entry.name}") == 1 and log.count(f"ignoring {store / '.cache' / entry.name}") == 1  # once per file
