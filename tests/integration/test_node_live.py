"""The node inside a real ComfyUI, against a loopback Gemini server (google and apiyi presets).

Run with COMFYUI_PATH (and COMFYUI_PYTHON) set; see tests/integration/conftest.py.
"""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from loopback import LoopbackServer, Recorded, Reply, fixture

from .comfyui_harness import status_events, status_message

GOOGLE_KEY = "AIzaLIVE-google-key-4242424242"
APIYI_KEY = "sk-live-apiyi-key-1717171717"
NODE = "NanoBananaBridge"


def png(width: int, height: int, color=(200, 120, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def gemini_answer(req: Recorded) -> Reply:
    parts = req.json()["contents"][0]["parts"]
    prompt, refs = parts[0]["text"], len(parts) - 1
    if "refuse" in prompt:
        return Reply(json=fixture("gemini/finish_image_safety.json"))
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"] = [
        {"text": f"made: {prompt}"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png(64 + 8 * refs, 48)).decode()}},
    ]
    return Reply(json=body, delay=10 if "slow" in prompt else 1.2)


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", gemini_answer)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    env = {
        "BANANA_GOOGLE_API_KEY": GOOGLE_KEY,
        "BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta",
        "BANANA_APIYI_API_KEY": APIYI_KEY,
        "BANANA_APIYI_BASE_URL": provider.url + "/apiyi/v1beta",
    }
    server = comfyui_server_factory(extra_env=env)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(server.input_dir / "ref_a.png")
    Image.new("RGB", (30, 40), (10, 10, 200)).save(server.input_dir / "ref_b.png")
    client = server.client()
    yield client
    client.close()


def bridge(prompt: str, provider: str = "google", model: str = "Nano Banana Pro", **inputs) -> dict:
    values = {
        "prompt": prompt, "provider": provider, "model": model, "model.aspect_ratio": "auto",
        "seed": int(time.time() * 1000) % 100000, "count": 1, "prompt_per_line": False, "image_mode": "references",
        "on_failure": "fail", "size_policy": "resize", "system_prompt": "", "temperature": 1.0, "web_search": False,
        "upload_format": "auto", "use_cache": True, "save_to": "nano_banana_bridge", "model_id_override": "",
    }
    if model != "Nano Banana":
        values["model.resolution"] = "1K"
    values.update(inputs)
    return {"class_type": NODE, "inputs": values}


def save(node: str = "1") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": "nbb"}}


def test_node_schema_offers_providers_models_and_reference_slots(comfy):
    info = comfy.object_info(NODE)[NODE]
    required = info["input"]["required"]
    assert required["provider"][1]["options"][:2] == ["auto", "google"] and "apiyi" in required["provider"][1]["options"]
    options = {o["key"].split(" (")[0]: o["inputs"]["required"] for o in required["model"][1]["options"]}
    assert [o["key"] for o in required["model"][1]["options"]] == ["Nano Banana 2 (Gemini 3.1 Flash Image)", "Nano Banana Pro (Gemini 3 Pro Image)", "Nano Banana (Gemini 2.5 Flash Image)"]
    assert "resolution" not in options["Nano Banana"] and options["Nano Banana 2"]["resolution"][1]["options"][0] == "0.5K"
    assert options["Nano Banana Pro"]["images"][1]["template"]["names"][-1] == "image_14"
    assert "8:1" in options["Nano Banana 2"]["aspect_ratio"][1]["options"] and "8:1" not in options["Nano Banana Pro"]["aspect_ratio"][1]["options"]
    assert info["output_name"][:3] == ["images", "text", "report"]  # new outputs only ever go after these
    names = list(required) + list(info["input"].get("optional", {})) + [n for o in options.values() for n in o]
    assert not [n for n in names if "key" in n.lower() or "token" in n.lower()]  # no widget a key could be typed into


@pytest.mark.parametrize("preset, key_header", [("google", ("x-goog-api-key", GOOGLE_KEY)), ("apiyi", ("authorization", f"Bearer {APIYI_KEY}"))])
def test_text_to_image_saves_and_leaks_no_key(comfy, provider, preset, key_header):
    before = len(provider.requests)
    entry = comfy.run({"1": bridge(f"a lighthouse via {preset}", provider=preset, **{"model.aspect_ratio": "16:9", "model.resolution": "2K"}), "2": save()})
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    (req,) = provider.requests[before:]
    assert req.headers[key_header[0]] == key_header[1]
    assert req.json()["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    image = entry["outputs"]["2"]["images"][0]
    data = comfy.view(image["filename"], image["subfolder"], image["type"])
    assert Image.open(io.BytesIO(data)).size == (64, 48)
    # The key is in the server's environment only: not in the PNG's metadata, /history or the saved files.
    everything = data.decode("latin-1") + json.dumps(comfy.history()) + "".join(
        p.read_text(errors="ignore") for p in comfy.server.output_dir.rglob("*.json")
    )
    assert GOOGLE_KEY not in everything and APIYI_KEY not in everything
    saved = list((comfy.server.output_dir / "nano_banana_bridge").rglob("*_google_*.png" if preset == "google" else "*_apiyi_*.png"))
    assert saved, "the provider's original bytes were not saved on arrival"


def test_multi_reference_edit_sends_every_image(comfy, provider):
    before = len(provider.requests)
    graph = {
        "3": {"class_type": "LoadImage", "inputs": {"image": "ref_a.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "ref_b.png"}},
        "1": bridge("put image 1 into image 2", model="Nano Banana 2", **{"model.aspect_ratio": "match input", "model.images.image_1": ["3", 0], "model.images.image_2": ["4", 0]}),
        "2": save(),
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    (req,) = provider.requests[before:]
    body = req.json()
    assert [p["inline_data"]["mime_type"] for p in body["contents"][0]["parts"][1:]] == ["image/jpeg", "image/jpeg"]
    assert body["generationConfig"]["imageConfig"]["aspectRatio"] == "4:3"  # nearest to image 1 (40x30)


def test_refusal_is_an_error_with_the_reason(comfy):
    entry = comfy.run({"1": bridge("please refuse this"), "2": save()})
    error = status_message(entry, "execution_error")
    assert error is not None, status_events(entry)
    message = error["exception_message"]
    assert "IMAGE_SAFETY" in message and "output_blocked" in message and "Unable to show the generated image" in message
    assert error["exception_type"].endswith("SafetyRejected")


def test_prompt_list_runs_concurrently_and_reports_every_item(comfy, provider):
    before = len(provider.requests)
    graph = {
        "1": bridge("one\ntwo\nplease refuse three\nfour", prompt_per_line=True, on_failure="skip", size_policy="pad"),
        "2": save(),
    }
    started = time.monotonic()
    entry = comfy.run(graph)
    elapsed = time.monotonic() - started
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    assert len(provider.requests) - before == 4
    assert elapsed < 4 * 1.2  # four 1.2 s calls ran at once, not one after another
    assert len(entry["outputs"]["2"]["images"]) == 3
    reports = sorted((comfy.server.output_dir / "nano_banana_bridge" / "reports").glob("*.json"))
    last = json.loads(reports[-1].read_text())
    assert [row["status"] for row in last["items"]] == ["ok", "ok", "refused", "ok"]


def test_core_list_node_feeds_several_prompts(comfy, provider):
    info = comfy.object_info()
    if "CreateList" not in info:
        pytest.skip("this ComfyUI has no CreateList node")
    before = len(provider.requests)
    strings = {
        "5": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red kite"}},
        "6": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a blue kite"}},
    }
    create = {"class_type": "CreateList", "inputs": {"inputs.input0": ["5", 0], "inputs.input1": ["6", 0]}}  # an Autogrow
    graph = {**strings, "7": create, "1": bridge(["7", 0]), "2": save()}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    prompts = sorted(r.json()["contents"][0]["parts"][0]["text"] for r in provider.requests[before:])
    assert prompts == ["a blue kite", "a red kite"]


def test_progress_text_while_waiting(comfy):
    if not comfy.has_websocket:
        pytest.skip("websocket-client is not installed in the test environment")
    prompt_id = comfy.post_prompt({"1": bridge("a quick one for progress"), "2": save()})
    entry = comfy.wait_for(prompt_id)
    assert entry["status"]["status_str"] == "success"
    texts = comfy.progress_texts(prompt_id, node_id="1")
    assert any("in flight" in t for t in texts), texts
    assert any(t.startswith("Done: 1 ok") for t in texts), texts


def test_interrupt_stops_within_a_second_and_is_an_interruption(comfy):
    prompt_id = comfy.post_prompt({"1": bridge("a slow one"), "2": save()})
    time.sleep(1.5)
    stopped_at = time.monotonic()
    comfy.interrupt()
    entry = comfy.wait_for(prompt_id, timeout=20)
    elapsed = time.monotonic() - stopped_at
    events = status_events(entry)
    assert "execution_interrupted" in events and "execution_error" not in events, events
    assert elapsed < 2.5


def test_missing_key_reads_like_an_instruction(comfy):
    entry = comfy.run({"1": bridge("anything", provider="fal"), "2": save()})
    error = status_message(entry, "execution_error")
    assert error is not None
    assert "FAL_KEY" in error["exception_message"] and "keys.json" in error["exception_message"]
