"""The example workflows: valid, core nodes besides ours, our nodes' widgets in schema order, no secrets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from banana_pack.nodes.catalog_view import (
    model_capabilities,
    model_from_choice,
    model_label,
)
from banana_pack.nodes.option_specs import OPTION_SPECS
from banana_pack.providers.catalog import PRESETS

FOLDER = Path(__file__).resolve().parents[1] / "example_workflows"
REQUIRED_OPTIONS = [spec.name for spec in OPTION_SPECS if not spec.optional]
WORKFLOWS = sorted(FOLDER.glob("*.json"))
CORE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "PreviewAny", "MarkdownNote", "Note", "BatchImagesNode"}


def test_the_examples_exist_with_thumbnails():
    names = {p.stem for p in WORKFLOWS}
    assert names == {"nano_banana_text_to_image", "nano_banana_multi_reference_edit", "nano_banana_batch_prompt_list", "nano_banana_edit_each_image", "nano_banana_conversation_edits", "nano_banana_batch_mode"}
    assert all(p.with_suffix(".jpg").is_file() for p in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_is_a_runnable_graph_of_core_nodes_and_ours(path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    types = {node["type"] for node in workflow["nodes"]}
    assert "NanoBananaBridge" in types and types - {"NanoBananaBridge", "NanoBananaOptions"} <= CORE_NODES
    bridges = [n for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"]
    for ours in bridges:  # one, or a chain of them (the conversation example)
        prompt, provider, model_choice, ratio = ours["widgets_values"][:4]
        model = model_from_choice(model_choice)
        assert model_choice == model_label(model)  # saved with the current label
        assert prompt.strip() and provider in {"auto"} | {s.id for s in PRESETS}
        assert ratio in model_capabilities()[model]["ratios"]
        # The clean layout: prompt, provider, model (+ratio, resolution), seed (+control), count, prompt_per_line, image_mode.
        rows = 9 + (1 if model_capabilities()[model]["resolutions"] else 0)
        assert len(ours["widgets_values"]) == rows and ours["widgets_values"][-1] in ("references", "each image")
        assert any(link[1] == ours["id"] and link[5] == "IMAGE" for link in workflow["links"])  # its images go somewhere
    ids_of_bridges = {n["id"] for n in bridges}
    for options in (n for n in workflow["nodes"] if n["type"] == "NanoBananaOptions"):
        # Optional options (added later) come last; a file saved before them has only the earlier values.
        values = dict(zip((spec.name for spec in OPTION_SPECS), options["widgets_values"]))
        assert len(REQUIRED_OPTIONS) <= len(options["widgets_values"]) <= len(OPTION_SPECS)
        assert all(spec.coerce(values[spec.name]) == values[spec.name] for spec in OPTION_SPECS if spec.name in values)
        assert any(link[1] == options["id"] and link[3] in ids_of_bridges and link[5] == "NANO_BANANA_OPTIONS" for link in workflow["links"])
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


def test_batch_mode_example_delivers_through_batch_mode_with_a_fixed_seed():
    workflow = json.loads((FOLDER / "nano_banana_batch_mode.json").read_text())
    (options,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaOptions"]
    values = dict(zip([spec.name for spec in OPTION_SPECS], options["widgets_values"]))
    assert values["delivery"] == "batch" and values["dry_run"] is False and values["save_to"]
    (ours,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaBridge"]
    assert ours["widgets_values"][1] == "google"  # Batch Mode is the Gemini API's
    assert ours["widgets_values"][6] == "fixed"  # a re-queue must be the same run to attach to its batch
    assert any(link[1] == options["id"] and link[3] == ours["id"] for link in workflow["links"])


def test_the_batch_example_flags_failures_through_the_options_node():
    workflow = json.loads((FOLDER / "nano_banana_batch_prompt_list.json").read_text())
    (options,) = [n for n in workflow["nodes"] if n["type"] == "NanoBananaOptions"]
    assert dict(zip((spec.name for spec in OPTION_SPECS), options["widgets_values"]))["on_failure"] == "flag"


def test_the_readme_api_example_matches_the_nodes():
    readme = (FOLDER.parent / "README.md").read_text()
    section = readme[readme.index("## Headless use"):]
    prompt = json.loads(re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1))
    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["LoadImage"]["image"] == "example.png"  # ships in ComfyUI's input/ folder
    assert set(REQUIRED_OPTIONS) <= set(by_type["NanoBananaOptions"]) <= {spec.name for spec in OPTION_SPECS}
    bridge = by_type["NanoBananaBridge"]
    assert model_from_choice(bridge["model"]) and bridge["model"] == model_label(model_from_choice(bridge["model"]))
    assert not {spec.name for spec in OPTION_SPECS} & set(bridge)  # the clean layout: options come through the socket
    assert bridge["options"][0] in prompt and prompt[bridge["options"][0]]["class_type"] == "NanoBananaOptions"
