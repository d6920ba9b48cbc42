"""Inside a real ComfyUI: POST /nano_banana_bridge/auto names the provider a run with provider "auto"
really uses. Keys for fal and Google, fal first: a connected conversation moves "auto" to Google (fal
has no turns), and the run goes there; without it, "auto" is fal. The fal URL points at the loopback
server, which has no fal routes: a run sent to fal fails.

Run with COMFYUI_PATH (and COMFYUI_PYTHON) set; see tests/integration/conftest.py.
"""

from __future__ import annotations

import json

import pytest

from .test_conversation_live import bridge
from .test_node_ui_live import post

KEY = "AIzaLIVE-auto-pick-key-2718281828459"
FAL_KEY = "fal-live-auto-pick-key-1414213562"


@pytest.fixture(scope="module")
def provider(thinking_gemini):
    return thinking_gemini


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    env = {
        "BANANA_GOOGLE_API_KEY": KEY,
        "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta",
        "BANANA_FAL_API_KEY": FAL_KEY,
        "BANANA_FAL_BASE_URL": provider.url + "/fal",
        "BANANA_PROVIDER_ORDER": "fal,google",
    }
    client = comfyui_server_factory(extra_env=env).client()
    yield client
    client.close()


def test_the_route_names_the_provider_the_run_uses(comfy, provider):
    settings = {"model": "Nano Banana Pro (Gemini 3 Pro Image)", "aspect_ratio": "auto", "resolution": "1K", "references": 0}
    assert post(comfy, "/nano_banana_bridge/auto", settings) == (200, {"model": "Nano Banana Pro", "provider": "fal"})
    status, answer = post(comfy, "/nano_banana_bridge/auto", {**settings, "conversation": True})
    assert (status, answer) == (200, {"model": "Nano Banana Pro", "provider": "google"})
    assert KEY not in json.dumps(answer) and FAL_KEY not in json.dumps(answer)
    assert post(comfy, "/nano_banana_bridge/auto", settings, headers={"Origin": "https://elsewhere.example"})[0] == 403
    assert post(comfy, "/nano_banana_bridge/auto", settings, content_type="text/plain")[0] == 415

    before = len(provider.requests)
    graph = {
        "2": bridge("A paper boat on a pond.", provider="google"),
        "3": bridge("Now make the boat red.", provider="auto", conversation=["2", 4]),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = comfy.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    sent = provider.requests[before:]
    assert len(sent) == 2 and all(":generateContent" in r.path for r in sent)  # both went to Google, none to fal
    assert [c["role"] for c in sent[1].json()["contents"]] == ["user", "model", "user"]
