"""The example workflows: valid, core nodes besides ours, our node's widgets in schema order, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from banana_pack.nodes.catalog_view import model_capabilities
from banana_pack.providers.catalog import PRESETS, STABLE_MODEL_NAMES

FOLDER = Path(__file__).resolve().parents[1] / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
CORE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "MarkdownNote", "Note", "BatchImagesNode"}
OURS = {"NanoBananaBridge", "NanoBananaOptions"}


def test_the_examples_exist_with_thumbnails():
    names = {p.stem for p in WORKFLOWS}
    assert names == {"nano_banana_text_to_image", "nano_banana_multi_reference_edit", "nano_banana_batch_prompt_list", "nano_banana_edit_each_image", "nano_banana_batch_mode"}
    assert all(p.with_suffix(".jpg").is_file() for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_is_a_runnable_graph_of_core_nodes_and_ours(path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    types = {node["type"] for node in workflow["nodes"]}
    assert "NanoBananaBridge" in types and types - OURS <= CORE_NODES
    (ours,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"]
    prompt, provider, model, ratio = ours["widgets_values"][:4]
    model = model.split(" (")[0]  # the frontend saves the model's label, "Nano Banana 2 (Gemini 3.1 Flash Image)"
    assert prompt.strip() and provider in {"auto"} | {s.id for s in PRESETS} and model in STABLE_MODEL_NAMES
    assert ratio in model_capabilities()[model]["ratios"]
    ids = {n["id"] for n in workflow["nodes"]}
    assert all(link[1] in ids and link[3] in ids for link in workflow["links"])
    assert any(link[1] == ours["id"] for link in workflow["links"])  # its images go somewhere


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_carries_no_key_or_local_address(path):
    text = path.read_text()
    assert not re.search(r"AIza[0-9A-Za-z_-]{10,}|\bsk-[0-9A-Za-z]{10,}|\bhk-[0-9A-Za-z]{10,}|127\.0\.0\.1|localhost|/work/|/tmp/", text)


def test_batch_mode_example_delivers_through_batch_mode_with_a_fixed_seed():
    workflow = json.loads((FOLDER / "nano_banana_batch_mode.json").read_text())
    from banana_pack.nodes.option_specs import OPTION_SPECS

    (options,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaOptions"]
    values = dict(zip([spec.name for spec in OPTION_SPECS], options["widgets_values"]))
    assert values["delivery"] == "batch" and values["dry_run"] is False and values["save_to"]
    (ours,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"]
    assert ours["widgets_values"][1] == "google"  # Batch Mode is the Gemini API's
    assert ours["widgets_values"][6] == "fixed"  # a re-queue must be the same run to attach to its batch
    assert any(link[1] == options["id"] and link[3] == ours["id"] for link in workflow["links"])
