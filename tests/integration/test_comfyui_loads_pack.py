"""Smoke test: ComfyUI imports the pack (under an arbitrary folder name) and lists its nodes."""

from __future__ import annotations

from .comfyui_harness import pack_import_lines

NODE_PREFIX = "NanoBananaBridge"


def test_pack_imports_without_failure(comfyui_server):
    server = comfyui_server.server
    log = server.log_text()
    lines = pack_import_lines(log, server.pack_name)
    assert lines, f"no import-time line for {server.pack_name}; did ComfyUI see the custom node?\n{server.log_tail()}"
    assert not any("IMPORT FAILED" in line for line in lines), "\n".join(lines) + "\n" + server.log_tail(120)
    assert f"Cannot import {server.custom_nodes_dir / server.pack_name}" not in log, server.log_tail(120)
    assert "Error while calling comfy_entrypoint" not in log, server.log_tail(120)


def test_object_info_lists_pack_nodes(comfyui_server):
    server = comfyui_server.server
    info = comfyui_server.object_info()
    ours = {name: d for name, d in info.items() if server.pack_name in str(d.get("python_module", ""))}
    assert ours, f"no node with python_module 'custom_nodes.{server.pack_name}'"
    assert all(d["python_module"] == f"custom_nodes.{server.pack_name}" for d in ours.values())
    assert any(name.startswith(NODE_PREFIX) for name in ours), sorted(ours)


def test_example_workflows_are_in_the_template_browser(comfyui_server):
    server = comfyui_server.server
    listing = comfyui_server.get_json("/workflow_templates")
    names = sorted(listing.get(server.pack_name, []))
    assert names == ["nano_banana_batch_mode", "nano_banana_batch_prompt_list", "nano_banana_conversation_edits", "nano_banana_edit_each_image", "nano_banana_multi_reference_edit", "nano_banana_text_to_image"]
    served = comfyui_server.get_json(f"/api/workflow_templates/{server.pack_name}/nano_banana_text_to_image.json")
    assert any(node["type"] == "NanoBananaBridge" for node in served["nodes"])
