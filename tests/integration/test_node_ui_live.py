"""The node as a user meets it in a real ComfyUI: tooltips, the options node, readable errors, keys routes.

Against a loopback Gemini server (run with COMFYUI_PATH; see tests/integration/conftest.py).
"""

from __future__ import annotations

import html
import json
import stat
import urllib.request

import pytest

from loopback import LoopbackServer, Recorded, Reply, fixture

from .comfyui_harness import status_message
from .test_node_live import gemini_answer

NODE, OPTIONS = "NanoBananaBridge", "NanoBananaOptions"
KEY = "AIzaUI-live-key-31415926535897"
PRO = "Nano Banana Pro (Gemini 3 Pro Image)"


def models_list(req: Recorded) -> Reply:
    if req.headers.get("x-goog-api-key") != KEY:
        return Reply(status=400, json=fixture("gemini/error_bad_key.json"))
    return Reply(json={"models": [{"name": "models/gemini-3-pro-image-preview"}]})


@pytest.fixture(scope="module")
def provider():
    server = LoopbackServer().start()
    server.route("POST", r":generateContent$", gemini_answer)
    server.route("GET", r"/v1beta/models", models_list)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, provider):
    # No key in the environment: the keys route provides it.
    server = comfyui_server_factory(extra_env={"BANANA_GOOGLE_BASE_URL": provider.url + "/v1beta"})
    client = server.client()
    yield client
    client.close()


def post(comfy, path: str, body, content_type: str = "application/json", headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(comfy.server.base_url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def bridge(prompt: str, seed: int, **inputs) -> dict:
    values = {"prompt": prompt, "provider": "google", "model": PRO, "model.aspect_ratio": "auto", "model.resolution": "1K"}
    values.update(seed=seed, count=1, prompt_per_line=False, image_mode="references", **inputs)
    return {"class_type": NODE, "inputs": values}


def options_node(**changes) -> dict:
    values = {"on_failure": "fail", "size_policy": "resize", "system_prompt": "", "temperature": 1.0, "web_search": False}
    values.update(upload_format="auto", use_cache=False, save_to="nano_banana_bridge", model_id_override="", delivery="now", dry_run=False)
    values.update(changes)
    return {"class_type": OPTIONS, "inputs": values}


SAVE = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ui"}}


def tooltips_missing(node_info: dict) -> list[str]:
    missing = []

    def walk(inputs: dict, prefix: str = "") -> None:
        for name, spec in inputs.items():
            options = spec[1] if len(spec) > 1 else {}
            if not options.get("tooltip"):
                missing.append(prefix + name)
            for option in options.get("options") or []:
                if isinstance(option, dict):  # a DynamicCombo option's own inputs
                    walk(option["inputs"].get("required", {}), f"{prefix}{name}.")
                    walk(option["inputs"].get("optional", {}), f"{prefix}{name}.")
            template = options.get("template")
            if template:
                walk(template["input"].get("required", {}), f"{prefix}{name}.template.")

    walk(node_info["input"].get("required", {}))
    walk(node_info["input"].get("optional", {}))
    tips = node_info.get("output_tooltips") or [None] * len(node_info["output_name"])
    missing += [f"output {n}" for n, tip in zip(node_info["output_name"], tips, strict=True) if not tip]
    return missing


def test_every_input_and_output_has_a_tooltip(comfy):
    info = comfy.object_info()
    for node in (NODE, OPTIONS):
        assert tooltips_missing(info[node]) == [], node


def test_the_main_node_has_nine_widget_rows_and_one_text_box(comfy):
    info = comfy.object_info(NODE)[NODE]
    required = info["input"]["required"]
    first = required["model"][1]["options"][0]  # the default model
    assert first["key"] == "Nano Banana 2 (Gemini 3.1 Flash Image)"
    sub = first["inputs"]["required"]
    widgets = [n for n, s in required.items() if s[0] != "IMAGE"] + [n for n, s in sub.items() if s[0] not in ("IMAGE", "COMFY_AUTOGROW_V3")]
    text_boxes = [n for n in widgets if (required.get(n) or first["inputs"]["required"].get(n))[1].get("multiline")]
    control_rows = sum(1 for n in widgets if (required.get(n) or first["inputs"]["required"].get(n))[1].get("control_after_generate"))
    assert text_boxes == ["prompt"]
    assert len(widgets) - len(text_boxes) + control_rows <= 9, widgets
    assert info["input"]["optional"]["options"][0] == "NANO_BANANA_OPTIONS"
    assert comfy.object_info(OPTIONS)[OPTIONS]["output"] == ["NANO_BANANA_OPTIONS"]


def test_keys_route_is_write_only_and_mode_600_and_the_key_works_at_once(comfy, provider):
    status, body = post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": KEY})
    assert status == 200 and body["owner"]["source"] == "file" and KEY not in json.dumps(body)
    path = comfy.server.user_dir / "nano_banana_bridge" / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text())["google"] == KEY
    listing = comfy.get_json("/nano_banana_bridge/keys")
    assert KEY not in json.dumps(listing) and next(o for o in listing["owners"] if o["owner"] == "google")["source"] == "file"
    assert post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": KEY}, content_type="text/plain")[0] == 415
    # DNS rebinding: a page on another site whose name now points at 127.0.0.1, sending as its own origin.
    rebound = {"Host": "evil.example:8188", "Origin": "http://evil.example:8188"}
    assert post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": ""}, headers=rebound)[0] == 403
    assert json.loads(path.read_text())["google"] == KEY
    status, answer = post(comfy, "/nano_banana_bridge/keys/test", {"provider": "google"})
    assert status == 200 and answer["ok"] is True and "gemini-3-pro-image-preview" in answer["answer"]
    # The run right after uses the new key (no restart).
    entry = comfy.run({"1": bridge("a kite", 1), "2": SAVE})
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:1500]
    assert KEY not in comfy.server.log_text()


def test_a_refusal_reads_refused_by_google_first_with_a_short_type_name(comfy):
    post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": KEY})
    entry = comfy.run({"3": options_node(), "1": bridge("please refuse this", 2, options=["3", 0]), "2": SAVE})
    error = status_message(entry, "execution_error")
    assert error is not None
    assert error["exception_type"] == "nano_banana_bridge.errors.SafetyRejected"
    assert error["exception_message"].startswith("Refused by Google: IMAGE_SAFETY (the generated image was blocked)")


def test_options_from_the_options_node_reach_the_provider(comfy, provider):
    post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": KEY})
    before = len(provider.requests)
    options = options_node(system_prompt="Always draw kites.", temperature=0.4, save_to="nbb_options_test")
    entry = comfy.run({"3": options, "1": bridge("a kite with options", 3, options=["3", 0]), "2": SAVE})
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:1500]
    (req,) = provider.requests[before:]
    body = req.json()
    assert body["generationConfig"]["temperature"] == 0.4
    assert "Always draw kites." in json.dumps(body.get("systemInstruction") or body.get("system_instruction"))
    assert list((comfy.server.output_dir / "nbb_options_test").rglob("*.png"))


def test_httpx_request_lines_stay_out_of_the_log(comfy):
    assert "HTTP Request:" not in comfy.server.log_text()


def test_a_gateways_markup_shows_on_the_node_as_words(comfy, provider):
    """ComfyUI puts a node's progress text into the page as HTML (classic canvas, unsanitised) or as
    Markdown (Vue nodes); a gateway's message quoted there must arrive escaped, with nothing lost."""
    if not comfy.has_websocket:
        pytest.skip("websocket-client is not installed in the test environment")
    hostile = 'no <img src=x onerror="window.pwned=1"> ![seen](http://127.0.0.1:9/p.png)'

    def answer(req: Recorded) -> Reply:
        if "hostile" in req.json()["contents"][0]["parts"][0]["text"]:
            return Reply(status=400, json={"error": {"code": 400, "message": hostile, "status": "INVALID_ARGUMENT"}})
        return gemini_answer(req)

    provider.route("POST", r":generateContent$", answer)
    post(comfy, "/nano_banana_bridge/keys", {"provider": "google", "key": KEY})
    node = bridge("a hostile one\nanother hostile one", 5, options=["3", 0])
    node["inputs"]["prompt_per_line"] = True
    prompt_id = comfy.post_prompt({"3": options_node(on_failure="skip"), "1": node, "2": SAVE})
    assert comfy.wait_for(prompt_id)["status"]["status_str"] == "error"
    texts = comfy.progress_texts(prompt_id, node_id="1")
    assert texts and texts[-1].startswith("Failed: 2 of 2 items"), texts
    assert not [t for t in texts if "<" in t or "[" in t]
    assert hostile in html.unescape(texts[-1])
