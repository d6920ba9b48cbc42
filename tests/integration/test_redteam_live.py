"""Red team through a real ComfyUI: widget values that try to carry a destination or a key, a file
planted with ComfyUI's own upload route where the pack's dated folder goes, and ComfyUI's own log
at --verbose DEBUG with BANANA_DEBUG=1 (served to any page at /internal/logs) while a provider echoes the key.
Run with COMFYUI_PATH (see tests/integration/conftest.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from loopback import LoopbackServer, Recorded, Reply, fixture
from PIL import Image

from .comfyui_harness import PromptRejected, status_message

GOOGLE_KEY = "AIzaREDTEAM-live-key-0123456789"
FAL_KEY = "fal-redteam-live:key-9876543210"
NODE = "NanoBananaBridge"
FAL_APP = "fal-ai/nano-banana-pro"


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 230)).save(buffer, "PNG")
    return buffer.getvalue()


def gemini(req: Recorded) -> Reply:
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"] = [
        {"text": "done"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(11, 6)).decode()}},
    ]
    # A gateway that echoes the credentials it got, in a response header.
    return Reply(json=body, headers={"x-echo-auth": f"x-goog-api-key={req.headers.get('x-goog-api-key', '')}"})


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", gemini)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def foreign():
    server = LoopbackServer().start()
    server.route("POST", r".*", Reply(json={"request_id": "stolen"}))
    server.route("GET", r".*", Reply(json={"status": "COMPLETED"}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider, tmp_path_factory):
    env = {  # the default config folder, <ComfyUI>/user/nano_banana_bridge/: what users get
        "BANANA_GOOGLE_API_KEY": GOOGLE_KEY,
        "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta",
        "BANANA_FAL_BASE_URL": provider.url,
        "BANANA_DEBUG": "1",  # the pack's and httpx's loggers at DEBUG / INFO, as a user chasing a problem sets it
    }
    server = comfyui_server_factory(extra_env=env, extra_args=("--cache-none", "--verbose", "DEBUG"))
    (server.user_dir / "nano_banana_bridge" / "keys.json").write_text(json.dumps({"fal": FAL_KEY}))  # read per call
    client = server.client()
    yield client
    client.close()


def bridge(prompt: str, provider: str, seed: int, **overrides) -> dict:
    values = {
        "prompt": prompt, "provider": provider, "model": "Nano Banana Pro", "model.aspect_ratio": "auto", "model.resolution": "1K",
        "seed": seed, "count": 1, "prompt_per_line": False, "image_mode": "references", "on_failure": "fail", "size_policy": "resize",
        "system_prompt": "", "temperature": 1.0, "web_search": False, "upload_format": "auto", "use_cache": True,
        "save_to": "nano_banana_bridge", "model_id_override": "",
    }
    values.update(overrides)
    return {
        "1": {"class_type": NODE, "inputs": values},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }


def upload(comfy, subfolder: str, filename: str, data: bytes) -> dict:
    """What any web page that reaches ComfyUI can do: POST /upload/image, type=output, overwrite."""
    boundary = uuid.uuid4().hex
    fields = [("type", "output"), ("subfolder", subfolder), ("overwrite", "true")]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode() for k, v in fields)
    body += f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n".encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(comfy.base_url + "/upload/image", data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def no_key_anywhere(comfy) -> None:
    with urllib.request.urlopen(comfy.base_url + "/internal/logs", timeout=30) as resp:
        served_log = resp.read().decode("utf-8", "replace")
    everything = json.dumps(comfy.history()) + comfy.server.log_text() + served_log
    everything += "".join(p.read_text(errors="ignore") for p in comfy.server.output_dir.rglob("*.json"))
    for key in (GOOGLE_KEY, FAL_KEY):
        assert key not in everything and key[:12] not in everything and key[-10:] not in everything


def test_widget_values_cannot_send_a_key_elsewhere(comfy, provider, foreign):
    attempts = [
        ("fal", {"model_id_override": f"{foreign.url}/x"}),
        ("fal", {"model_id_override": f"//127.0.0.1:{foreign.url.rsplit(':', 1)[1]}/x"}),
        ("fal", {"model_id_override": f"fal-ai/x?next={foreign.url}"}),
        ("google", {"model_id_override": f"..%2f..%2f@127.0.0.1:{foreign.url.rsplit(':', 1)[1]}"}),
        ("google", {"model_id_override": "gemini-3-pro-image-preview/../../x"}),
        ("google", {"save_to": "../user/nano_banana_bridge"}),
        ("google", {"save_to": "/tmp"}),
    ]
    for seed, (provider_id, overrides) in enumerate(attempts, start=10):
        entry = comfy.run(bridge("a cat", provider_id, seed, **overrides))
        error = status_message(entry, "execution_error")
        assert error is not None, overrides
        assert ("model_id_override" in error["exception_message"]) or ("save_to" in error["exception_message"]), error["exception_message"]
    with pytest.raises(PromptRejected):  # a provider that is not in the list never reaches the node
        comfy.post_prompt(bridge("a cat", f"{foreign.url}", 20))
    time.sleep(0.2)
    assert foreign.requests == []
    assert provider.requests == []  # refused before anything was sent
    no_key_anywhere(comfy)


def test_prompt_patterns_are_text_not_templates(comfy, provider):
    patterns = "{key} {api_key} {0} %(key)s ${BANANA_GOOGLE_API_KEY} $FAL_KEY {{key}}"
    entry = comfy.run(bridge(f"draw {patterns}", "google", 30, system_prompt=f"sys {patterns}"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    (hit,) = provider.hits("POST", r":generateContent$")
    sent = hit.json()
    assert sent["contents"][0]["parts"][0]["text"] == f"draw {patterns}"  # sent verbatim, nothing filled in
    assert sent["systemInstruction"]["parts"][0]["text"] == f"sys {patterns}"
    assert hit.headers["x-goog-api-key"] == GOOGLE_KEY  # the key went where it belongs, in the header only
    no_key_anywhere(comfy)  # the gateway echoed it in a header, logged at DEBUG


def test_a_file_planted_where_todays_folder_goes_does_not_lose_the_paid_image(comfy, provider):
    store = comfy.server.output_dir / "redteam_store"
    today = dt.date.today().isoformat()
    answer = upload(comfy, "redteam_store", today, b"not a folder")
    assert answer["name"] == today and (store / today).is_file()
    assert not any(p.is_symlink() for p in comfy.server.output_dir.rglob("*"))  # the route writes files, never links
    before = len(provider.hits("POST", r":generateContent$"))
    entry = comfy.run(bridge("a planted day", "google", 40, save_to="redteam_store"))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    report = json.loads(entry["outputs"]["3"]["text"][0])
    (row,) = report["items"]
    (saved,) = row["files"]
    assert (comfy.server.output_dir / saved).is_file() and not saved.startswith(f"redteam_store/{today}/")
    assert (store / today).read_bytes() == b"not a folder"  # left as it was
    again = comfy.run(bridge("a planted day", "google", 40, save_to="redteam_store"))
    assert json.loads(again["outputs"]["3"]["text"][0])["items"][0]["status"] == "cached"
    assert len(provider.hits("POST", r":generateContent$")) == before + 1  # paid once


def test_the_config_folder_is_not_reachable_over_http(comfy):
    """keys.json and store.secret sit in <ComfyUI>/user/nano_banana_bridge/, beside the folders ComfyUI serves."""
    config = comfy.server.user_dir / "nano_banana_bridge"
    comfy.run(bridge("make the secret", "google", 50))
    assert (config / "keys.json").is_file() and (config / "store.secret").is_file()
    assert (config / "store.secret").stat().st_mode & 0o777 == 0o600
    secret = (config / "store.secret").read_bytes().strip().decode()
    paths = []
    for name in ("keys.json", "store.secret"):
        for form in (f"..%2Fnano_banana_bridge%2F{name}", f"..%252Fnano_banana_bridge%252F{name}", f"%2E%2E%2Fnano_banana_bridge%2F{name}"):
            paths.append(f"/api/userdata/{form}")
        paths += [
            f"/api/view?filename={name}&subfolder=../user/nano_banana_bridge&type=output",
            f"/api/view?filename=../user/nano_banana_bridge/{name}&type=output",
            f"/api/view?filename={name}&subfolder=..%2Fuser%2Fnano_banana_bridge&type=output",
        ]
    paths += ["/api/userdata?dir=..%2Fnano_banana_bridge&recurse=true", "/api/userdata?dir=../nano_banana_bridge"]
    headers = [{}, {"comfy-user": "nano_banana_bridge"}, {"comfy-user": "../nano_banana_bridge"}]
    for path in paths:
        for extra in headers:
            req = urllib.request.Request(comfy.base_url + path, headers=extra)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    body = resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")
            assert FAL_KEY not in body and secret not in body and "store.secret" not in body, (path, extra, body[:200])


def test_the_options_node_and_stray_api_keys_carry_no_destination(comfy, provider, foreign):
    """The same values through the Nano Banana Options node, as a literal dict, and as extra keys the
    main node accepts from old API prompts (accept_all_inputs): none sends anything anywhere."""
    port = foreign.url.rsplit(":", 1)[1]
    before = len(provider.requests)
    options = {"model_id_override": f"{foreign.url}/x", "save_to": "nano_banana_bridge"}
    with_node = bridge("a cat", "fal", 60)
    with_node["1"]["inputs"]["options"] = ["4", 0]
    with_node["4"] = {"class_type": "NanoBananaOptions", "inputs": dict(options)}
    literal = bridge("a cat", "fal", 61)
    literal["1"]["inputs"]["options"] = dict(options)
    stray = bridge("a cat", "google", 62)
    stray["1"]["inputs"].update({
        "base_url": foreign.url, "BANANA_GOOGLE_BASE_URL": foreign.url, "api_key": "x", "auth_hosts": ["127.0.0.1"],
        "model.images.image_1": "/etc/passwd", "model.aspect_ratio": f"http://127.0.0.1:{port}/",
    })
    for graph in (with_node, literal, stray):
        try:
            entry = comfy.run(graph)
        except PromptRejected:
            continue
        assert entry["status"]["status_str"] == "error", json.dumps(entry["status"])[:1500]
    time.sleep(0.2)
    assert foreign.requests == []
    assert len(provider.requests) == before  # each was refused before any request
    no_key_anywhere(comfy)
