"""Two nodes chained through the conversation socket inside a real ComfyUI, against a loopback
Gemini that signs its answers and rejects a continuation without the signatures (as the API does).

Run with COMFYUI_PATH (and COMFYUI_PYTHON) set; see tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from .comfyui_harness import status_message

KEY = "AIzaLIVE-conversation-key-5151515151"
NODE = "NanoBananaBridge"


@pytest.fixture(scope="module")
def provider(thinking_gemini):
    return thinking_gemini


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    server = comfyui_server_factory(extra_env={"BANANA_GOOGLE_API_KEY": KEY, "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta"})
    example = Path(server.comfyui_path) / "input" / "example.png"
    if example.is_file():
        shutil.copy(example, server.input_dir / "example.png")
    else:
        Image.new("RGB", (64, 48), (120, 90, 40)).save(server.input_dir / "example.png")
    client = server.client()
    yield client
    client.close()


def bridge(prompt: str, model: str = "Nano Banana Pro", **inputs) -> dict:
    values = {
        "prompt": prompt, "provider": "google", "model": model, "model.aspect_ratio": "auto", "model.resolution": "1K",
        "seed": int(time.time() * 1000) % 100000, "count": 1, "prompt_per_line": False, "image_mode": "references",
    }
    values.update(inputs)
    return {"class_type": NODE, "inputs": values}


def test_schema_has_the_conversation_socket_and_new_outputs_last(comfy):
    info = comfy.object_info(NODE)[NODE]
    assert info["output_name"] == ["images", "text", "report", "thought_image", "conversation"]
    assert info["output"][3:] == ["IMAGE", "NANO_BANANA_CONVERSATION"]
    assert info["input"]["optional"]["conversation"][0] == "NANO_BANANA_CONVERSATION"
    options = comfy.object_info("NanoBananaOptions")["NanoBananaOptions"]["input"]
    # Optional widgets: API prompts written before these options existed still validate.
    assert {"thinking_level", "include_thoughts", "response_modalities", "safety_harassment"} <= set(options["optional"])


def test_two_nodes_chained_through_the_conversation(comfy, provider):
    before = len(provider.requests)
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": bridge("Put a small red hat on the subject.", **{"model.images.image_1": ["1", 0]}),
        "3": bridge("Now make the hat blue; keep everything else.", conversation=["2", 4]),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "nbb_conv"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
    }
    entry = comfy.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    first, second = provider.requests[before:]
    # The fake signs every answer; the second request must carry the first answer's signatures unchanged.
    contents = second.json()["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    answer_parts = contents[1]["parts"]
    first_answer_signatures = [p.get("thoughtSignature") for p in answer_parts]
    assert all(s in provider.fake.issued for s in first_answer_signatures) and len(first_answer_signatures) == 2
    assert contents[0]["parts"][0]["text"] == "Put a small red hat on the subject." and "inline_data" in contents[0]["parts"][1]
    assert contents[2]["parts"] == [{"text": "Now make the hat blue; keep everything else."}]
    assert first.json()["contents"][0]["parts"][0]["text"].startswith("Put a small red hat")
    # The continued node's image is the one the fake made for three contents.
    saved = entry["outputs"]["4"]["images"][0]
    assert Image.open(comfy.server.output_dir / saved["subfolder"] / saved["filename"]).size == (13, 8)
    # No key anywhere ComfyUI keeps what ran.
    everything = json.dumps(comfy.history()) + "".join(p.read_text(errors="ignore") for p in comfy.server.output_dir.rglob("*.json"))
    assert KEY not in everything


def test_a_conversation_into_a_provider_without_turns_is_refused(comfy, provider):
    before = len(provider.requests)
    graph = {
        "2": bridge("A lighthouse at dusk."),
        "3": bridge("Now at dawn.", conversation=["2", 4], provider="openai_hk"),
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = comfy.run(graph, timeout=120)
    error = status_message(entry, "execution_error")
    assert error is not None and error["node_id"] == "3"
    assert "conversation (multi-turn editing) is not available" in error["exception_message"] and "Disconnect the conversation input" in error["exception_message"]
    assert len(provider.requests) - before <= 1  # only the first node's call (or none, if cached)


def test_generation_options_from_the_options_node_reach_gemini_and_thought_image_comes_out(comfy, provider):
    info = comfy.object_info("NanoBananaOptions")["NanoBananaOptions"]["input"]
    values = {name: spec[1].get("default") for name, spec in info["required"].items()}
    values.update(thinking_level="HIGH", include_thoughts=True, safety_harassment="BLOCK_ONLY_HIGH", use_cache=False)
    before = len(provider.requests)
    graph = {
        "9": {"class_type": "NanoBananaOptions", "inputs": values},
        "2": bridge("A kite over the sea.", model="Nano Banana 2", options=["9", 0]),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 3], "filename_prefix": "nbb_thought"}},
    }
    entry = comfy.run(graph, timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    (request,) = provider.requests[before:]
    body = request.json()
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH", "includeThoughts": True}
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    saved = entry["outputs"]["4"]["images"][0]
    assert Image.open(comfy.server.output_dir / saved["subfolder"] / saved["filename"]).size == (5, 5)  # the fake's interim draft
