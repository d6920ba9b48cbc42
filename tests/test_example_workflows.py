"""The example workflows: valid, core nodes besides ours, our node's widgets in schema order, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from banana_pack.nodes.catalog_view import model_capabilities, model_from_choice
from banana_pack.providers.catalog import PRESETS, STABLE_MODEL_NAMES

FOLDER = Path(__file__).resolve().parents[1] / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
CORE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "MarkdownNote", "Note", "BatchImagesNode"}


def test_the_examples_exist_with_thumbnails():
    names = {p.stem for p in WORKFLOWS}
    assert names == {"nano_banana_text_to_image", "nano_banana_multi_reference_edit", "nano_banana_batch_prompt_list", "nano_banana_edit_each_image", "nano_banana_conversation_edits"}
    assert all(p.with_suffix(".jpg").is_file() for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_is_a_runnable_graph_of_core_nodes_and_ours(path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    types = {node["type"] for node in workflow["nodes"]}
    assert "NanoBananaBridge" in types and types - {"NanoBananaBridge"} <= CORE_NODES
    for ours in [n for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"]:
        prompt, provider, choice, ratio = ours["widgets_values"][:4]
        model = model_from_choice(choice)  # a label ("Nano Banana Pro (Gemini 3 Pro Image)") or, in older files, the bare name
        assert prompt.strip() and provider in {"auto"} | {s.id for s in PRESETS} and model in STABLE_MODEL_NAMES
        assert ratio in model_capabilities()[model]["ratios"]
        assert any(link[1] == ours["id"] and link[5] == "IMAGE" for link in workflow["links"])  # its images go somewhere
    ids = {n["id"] for n in workflow["nodes"]}
    assert all(link[1] in ids and link[3] in ids for link in workflow["links"])


def test_conversation_example_chains_three_edits_of_one_photo():
    workflow = json.loads((FOLDER / "nano_banana_conversation_edits.json").read_text())
    bridges = {n["id"] for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"}
    chain = [(link[1], link[3]) for link in workflow["links"] if link[5] == "NANO_BANANA_CONVERSATION"]
    assert len(bridges) == 3 and len(chain) == 2 and {a for a, _ in chain} | {b for _, b in chain} == bridges
    assert all(link[2] == 4 for link in workflow["links"] if link[5] == "NANO_BANANA_CONVERSATION")  # the conversation output
    loaders = [n for n in workflow["nodes"] if n["type"] == "LoadImage"]
    assert [n["widgets_values"][0] for n in loaders] == ["example.png"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_carries_no_key_or_local_address(path):
    text = path.read_text()
    assert not re.search(r"AIza[0-9A-Za-z_-]{10,}|\bsk-[0-9A-Za-z]{10,}|\bhk-[0-9A-Za-z]{10,}|127\.0\.0\.1|localhost|/work/|/tmp/", text)
