"""Red team, round three, through a real ComfyUI: strings from a gateway's 2xx answers that used to
reach /history or a route unredacted, and a service-account key on the Batch Mode path.

Run with COMFYUI_PATH (see tests/integration/conftest.py). The service-account test also needs
google-auth importable by COMFYUI_PYTHON (or a folder holding it in COMFYUI_PYTHONPATH); else it is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_gemini_batch import PENDING, SUCCEEDED, FakeBatchMode
from helpers import png_bytes
from loopback import LoopbackServer, Recorded, Reply, fixture

from .comfyui_harness import status_message

GOOGLE_KEY = "AIzaLIVE-round3-echo-key-0123456789"
HK_KEY = "sk-live-round3-models-key-9876543210"
NODE = "NanoBananaBridge"


def echoing_gemini(req: Recorded) -> Reply:
    """A gateway that echoes the key it got inside the thought signatures of a good answer."""
    got = req.headers.get("x-goog-api-key", "")
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"] = [
        {"text": "done", "thoughtSignature": f"c2ln{got}"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(9, 5)).decode()}, "thoughtSignature": f"auth={got}"},
    ]
    return Reply(json=body)


def echoing_models(req: Recorded) -> Reply:
    got = req.headers.get("authorization", "").removeprefix("Bearer ")
    return Reply(json={"data": [{"id": "gemini-3-pro-image-preview"}, {"id": f"key-{got}"}, {"id": "y" * 195 + got}]})


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", echoing_gemini)
    server.route("GET", r"/models$", echoing_models)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    env = {
        "BANANA_GOOGLE_API_KEY": GOOGLE_KEY,
        "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta",
        "BANANA_OPENAI_HK_API_KEY": HK_KEY,
        "BANANA_OPENAI_HK_BASE_URL": provider.url + "/v1",
    }
    server = comfyui_server_factory(extra_env=env, extra_args=("--cache-none",))
    client = server.client()
    yield client
    client.close()


def everything_served(comfy) -> str:
    with urllib.request.urlopen(comfy.base_url + "/internal/logs", timeout=30) as resp:
        served_log = resp.read().decode("utf-8", "replace")
    text = json.dumps(comfy.history()) + comfy.server.log_text() + served_log
    return text + "".join(p.read_text(errors="ignore") for p in comfy.server.output_dir.rglob("*.json"))


def assert_no_key(text: str, *keys: str) -> None:
    for key in keys:
        for piece in (key, key[:10], key[-10:]):
            assert piece not in text, f"{piece!r} of a key in what ComfyUI serves"


def test_a_thought_signature_echoing_the_key_never_reaches_history(comfy, provider):
    """A stranger's workflow shows the conversation output with PreviewAny: /history then holds it."""
    graph = {
        "1": {"class_type": NODE, "inputs": {
            "prompt": "a fox", "provider": "google", "model": "Nano Banana Pro", "model.aspect_ratio": "auto", "model.resolution": "1K",
            "seed": 7, "count": 1, "prompt_per_line": False, "image_mode": "references",
        }},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}},
    }
    entry = comfy.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    (hit,) = provider.hits("POST", r":generateContent$")
    assert hit.headers["x-goog-api-key"] == GOOGLE_KEY  # the gateway got the key, and echoed it
    shown = entry["outputs"]["2"]["text"][0]
    assert "thought_signature" in shown and "***" in shown
    assert_no_key(everything_served(comfy), GOOGLE_KEY)


def test_the_models_route_answers_a_rebinding_page_without_the_key(comfy, provider):
    """GET /nano_banana_bridge/models has no write guard: a DNS-rebinding page (its own name in Host)
    gets the answer, so the gateway's model ids must come back redacted."""
    request = urllib.request.Request(
        comfy.base_url + "/nano_banana_bridge/models?provider=openai_hk&refresh=1",
        headers={"Host": f"rebind.attacker.example:{comfy.base_url.rsplit(':', 1)[1]}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert answer["listed"] and "gemini-3-pro-image-preview" in answer["models"]
    assert any(provider.hits("GET", r"/v1/models$"))
    assert_no_key(json.dumps(answer), HK_KEY)
    assert_no_key(everything_served(comfy), HK_KEY)


# -- a service-account gateway in Batch Mode --------------------------------------------------------


def _google_auth_env() -> dict[str, str] | None:
    """The environment under which COMFYUI_PYTHON imports google-auth, or None."""
    python = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
    extra = os.environ.get("COMFYUI_PYTHONPATH", "").strip()
    env = {**os.environ, **({"PYTHONPATH": extra} if extra else {})}
    done = subprocess.run([python, "-c", "import google.auth, cryptography"], env=env, capture_output=True, timeout=120)
    return ({"PYTHONPATH": extra} if extra else {}) if done.returncode == 0 else None


def test_batch_mode_on_a_service_account_gateway_sends_only_a_token(comfyui_server_factory):
    from vertex_fake import TokenEndpoint, service_account_json

    auth_env = _google_auth_env()
    if auth_env is None:
        pytest.skip("google-auth is not importable by COMFYUI_PYTHON (set COMFYUI_PYTHONPATH to a folder holding it)")
    gateway = LoopbackServer().start()
    try:
        token = TokenEndpoint()
        gateway.route("POST", r"^/token$", token)
        FakeBatchMode(gateway, states=[PENDING, SUCCEEDED]).install()
        server = comfyui_server_factory(extra_env={**auth_env, "BANANA_SA_GATEWAY_API_KEY": service_account_json(f"{gateway.url}/token")})
        providers = {"providers": [{
            "id": "sa_gateway", "protocol": "gemini", "auth": "google-service-account", "base_url": gateway.url,
            "models": ["gemini-3.1-flash-image-preview"],
            "options": {"batch_mode": True, "batch_max_wait": 60, "poll_first_delay": 0.05, "poll_max_delay": 0.2},
        }]}
        config = Path(server.user_dir) / "nano_banana_bridge"
        config.mkdir(parents=True, exist_ok=True)
        (config / "providers.json").write_text(json.dumps(providers))  # read per call
        client = server.client()
        graph = {
            "1": {"class_type": NODE, "inputs": {
                "prompt": "cat 4\ndog 7", "provider": "sa_gateway", "model": "Nano Banana 2", "model.aspect_ratio": "auto",
                "model.resolution": "1K", "seed": 3, "count": 1, "prompt_per_line": True, "image_mode": "references",
                "delivery": "batch",  # an option given on the main node, as API prompts written before the options node do
            }},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
        }
        entry = client.run(graph, timeout=180)
        client.close()
        error = status_message(entry, "execution_error")
        assert error is None, error
        assert len(gateway.hits("POST", r":batchGenerateContent$")) == 1 and token.grants >= 1
        authorised = [r for r in gateway.requests if "authorization" in r.headers]
        assert authorised
        for request in authorised:
            assert request.headers["authorization"] == f"Bearer {token.token}", (request.method, request.path, request.headers["authorization"][:60])
        assert not any("PRIVATE KEY" in json.dumps(r.headers) for r in gateway.requests)
    finally:
        gateway.stop()


def test_a_user_folder_inside_the_output_folder_never_serves_the_keys(comfyui_server_factory, tmp_path_factory):
    """One mounted volume: --output-directory /vol and --user-directory /vol/user. ComfyUI's /view then
    serves <user>/nano_banana_bridge/ to any page; the pack must not keep keys.json or store.secret there."""
    volume = tmp_path_factory.mktemp("volume")
    (volume / "user").mkdir()
    server = comfyui_server_factory(extra_args=("--output-directory", str(volume), "--user-directory", str(volume / "user")))
    config = volume / "user" / "nano_banana_bridge"
    client = server.client()
    try:
        # What a user does next: save a key with the Keys tab (from this machine, as JSON, same origin).
        body = json.dumps({"provider": "google", "key": GOOGLE_KEY}).encode()
        request = urllib.request.Request(client.base_url + "/nano_banana_bridge/keys", data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                saved = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            saved = exc.code, json.loads(exc.read())
        assert saved[0] != 200 and "serves" in json.dumps(saved[1]), saved
        graph = {"1": {"class_type": NODE, "inputs": {
            "prompt": "a fox", "provider": "google", "model": "Nano Banana Pro", "model.aspect_ratio": "auto", "model.resolution": "1K",
            "seed": 8, "count": 1, "prompt_per_line": False, "image_mode": "references",
        }}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}
        entry = client.run(graph, timeout=120)
        error = status_message(entry, "execution_error")
        assert error is not None and "serves" in error["exception_message"], error
        for name in ("keys.json", "store.secret"):
            assert not (config / name).exists(), name
            view = f"{client.base_url}/view?filename={name}&subfolder=user/nano_banana_bridge&type=output"
            try:
                with urllib.request.urlopen(view, timeout=30) as resp:
                    served = resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError:
                served = ""
            assert GOOGLE_KEY not in served
    finally:
        client.close()


# -- ComfyUI started with --enable-cors-header: every site may read every answer ---------------------


@pytest.mark.parametrize("path", ["/nano_banana_bridge/jobs?status=0", "/nano_banana_bridge/keys", "/nano_banana_bridge/catalog", "/nano_banana_bridge/models?provider=google"])
def test_with_cors_enabled_another_site_reads_none_of_the_packs_routes(path, cors_comfy):
    """--enable-cors-header drops ComfyUI's own cross-site refusal and answers every request with
    Access-Control-Allow-Origin, so a page on any site read the spend, the jobs and which keys are set
    (and made the models route call the provider with the key). The pack's routes refuse another
    site or origin themselves; its own pages (same origin, no Origin header on a read) still read them."""

    def get(headers: dict) -> tuple[int, dict, dict]:
        request = urllib.request.Request(cors_comfy.base_url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read() or b"{}")

    status, headers, answer = get({"Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"})
    assert headers.get("Access-Control-Allow-Origin") == "*"  # ComfyUI lets the browser hand the answer over...
    assert status == 403 and set(answer) == {"error"}, answer  # ...so the pack answers nothing
    assert get({"Origin": "http://localhost:1234"})[0] == 403  # another origin on this machine (Sec-Fetch-Site: same-site)
    status, _, answer = get({})  # the pack's own panel
    assert status == 200, answer


@pytest.fixture(scope="module")
def cors_comfy(comfyui_server_factory):
    server = comfyui_server_factory(extra_env={"BANANA_GOOGLE_API_KEY": GOOGLE_KEY, "BANANA_GOOGLE_BASE_URL": "http://127.0.0.1:9/v1beta"}, extra_args=("--enable-cors-header", "*"))
    return server
