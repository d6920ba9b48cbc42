"""Every preset through the node in a real ComfyUI: the same graph, only the provider value changes."""

from __future__ import annotations

import io
import json
import subprocess

import pytest
from PIL import Image

from fake_providers import PRESET_IDS, point_presets_at, script_all, width_for
from loopback import LoopbackServer

from banana_pack.providers.catalog import PRESETS


@pytest.fixture(scope="module")
def fake():
    server = LoopbackServer().start()
    script_all(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, fake):
    env: dict[str, str] = {}
    point_presets_at(fake, env.__setitem__)
    server = comfyui_server_factory(extra_env=env)
    Image.new("RGB", (24, 16), (90, 30, 160)).save(server.input_dir / "subject.png")
    client = server.client()
    yield client
    client.close()


def graph(provider: str, model: str, with_reference: bool) -> dict:
    inputs = {
        "prompt": "a paper boat", "provider": provider, "model": model, "model.aspect_ratio": "auto",
        "seed": 3, "count": 1, "prompt_per_line": False, "image_mode": "references", "on_failure": "fail",
        "size_policy": "resize", "system_prompt": "", "temperature": 1.0, "web_search": False, "upload_format": "auto",
        "use_cache": False, "save_to": "nano_banana_bridge", "model_id_override": "",
    }
    if model != "Nano Banana":
        inputs["model.resolution"] = "1K"
    nodes = {"1": {"class_type": "NanoBananaBridge", "inputs": inputs}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": provider}}}
    if with_reference:
        nodes["3"] = {"class_type": "LoadImage", "inputs": {"image": "subject.png"}}
        inputs["model.images.image_1"] = ["3", 0]
    return nodes


def has_google_auth(comfy) -> bool:
    """Vertex service accounts need the optional google-auth package in ComfyUI's own Python."""
    probe = subprocess.run([comfy.server.python, "-c", "import google.auth.crypt, google.auth.jwt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("preset", PRESET_IDS)
def test_preset_text_to_image_and_edit(comfy, preset):
    model = next(s for s in PRESETS if s.id == preset).models[-1].name
    if preset == "vertex" and not has_google_auth(comfy):
        entry = comfy.run(graph(preset, model, with_reference=False))
        message = json.dumps(entry["status"])
        assert entry["status"]["status_str"] == "error" and "needs the google-auth package" in message and "pip install google-auth" in message
        return
    for refs in (0, 1):
        entry = comfy.run(graph(preset, model, with_reference=bool(refs)))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
        image = entry["outputs"]["2"]["images"][0]
        assert Image.open(io.BytesIO(comfy.view(image["filename"], image["subfolder"], image["type"]))).size[0] == width_for(refs)
