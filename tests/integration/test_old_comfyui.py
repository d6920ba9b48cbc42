"""The version check against a real old ComfyUI API: comfy_api as ComfyUI 0.3.64 shipped it.

Opt-in like every integration test (COMFYUI_PATH, a git checkout that has the v0.3.64 tag): the
old comfy_api package and comfyui_version.py are taken from that tag with `git archive`, put
ahead of the checkout on sys.path, and the pack's entry is loaded by file location as ComfyUI
0.3.64's loader would; it must log one line, without a traceback, and register nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import PACK_DIR

OLD_TAG = "v0.3.64"

PROBE = """
import asyncio, importlib.util, json, logging, sys
sys.path[:0] = [OLD_API, COMFY]
records = []
class Collect(logging.Handler):
    def emit(self, record):
        records.append({"name": record.name, "level": record.levelname, "message": record.getMessage(), "traceback": bool(record.exc_info)})
logging.getLogger().addHandler(Collect()); logging.getLogger().setLevel(logging.INFO)
spec = importlib.util.spec_from_file_location("any_folder_name", PACK + "/__init__.py", submodule_search_locations=[PACK])
pack = importlib.util.module_from_spec(spec); sys.modules["any_folder_name"] = pack; spec.loader.exec_module(pack)
extension = asyncio.run(pack.comfy_entrypoint())
from comfy_api.latest import ComfyExtension
print("RESULT " + json.dumps({"extension": isinstance(extension, ComfyExtension), "nodes": len(asyncio.run(extension.get_node_list())),
      "web": pack.WEB_DIRECTORY, "records": [r for r in records if r["name"] == "nano_banana_bridge"]}))
"""


def test_pack_on_comfyui_0_3_64_logs_one_line_and_registers_nothing(tmp_path):
    comfy = os.environ.get("COMFYUI_PATH", "").strip()
    if not comfy:
        pytest.skip("set COMFYUI_PATH to run the integration tests")
    archive = subprocess.run(["git", "-C", comfy, "archive", OLD_TAG, "comfy_api", "comfyui_version.py"], capture_output=True, timeout=120, check=False)
    if archive.returncode != 0:
        pytest.skip(f"no {OLD_TAG} in {comfy}: {archive.stderr.decode(errors='replace')[:200]}")
    old_api = tmp_path / "old_api"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old_api, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # our own git archive
    python = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
    code = f"OLD_API, COMFY, PACK = {str(old_api)!r}, {comfy!r}, {str(PACK_DIR)!r}\n" + PROBE
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["extension"] and result["nodes"] == 0 and result["web"] is None
    (record,) = result["records"]
    assert record["level"] == "ERROR" and not record["traceback"]
    assert "needs ComfyUI 0.11.0 or newer, found 0.3.64" in record["message"] and "io.DynamicCombo" in record["message"]
    assert "Traceback" not in done.stderr
