"""The node's parameters are declared once and travel as one typed run request (issue 9, item 5).

RenderInputs extends RunSettings (the settings every call shares), BatchSettings extends the
same RunSettings, and each call's GenerationRequest takes the shared fields by name: these tests
fail when a field is restated, dropped on the way, or an option reaches nothing.
"""

from __future__ import annotations

from dataclasses import fields

from banana_pack.nodes.batch import BatchSettings, RunSettings
from banana_pack.nodes.option_specs import OPTION_SPECS, SAFETY_OPTION_PREFIX, generation_options, resolve_options
from banana_pack.nodes.render import RenderInputs
from banana_pack.providers.outcome import GenerationRequest, ImageInput


def _own(cls) -> set[str]:
    """The fields a class declares itself (not inherited)."""
    inherited = {f.name for base in cls.__mro__[1:] if hasattr(base, "__dataclass_fields__") for f in fields(base)}
    return {f.name for f in fields(cls)} - inherited


def test_no_field_is_declared_twice_across_the_run_request_classes():
    run, batch, render = {f.name for f in fields(RunSettings)}, _own(BatchSettings), _own(RenderInputs)
    assert not (run & batch) and not (run & render) and not (batch & render)
    assert {"provider", "model", "resolution", "safety"} <= run


def test_every_option_reaches_the_run_request():
    """Each option of the Nano Banana Options node is a RenderInputs field by name, or is converted into one."""
    converted_elsewhere = {"save_to"}  # the store folder: RenderInputs.store_folder and render's store_root
    request_fields = {f.name for f in fields(RenderInputs)}
    generation = set(generation_options(resolve_options({})))
    for spec in OPTION_SPECS:
        if spec.name.startswith(SAFETY_OPTION_PREFIX):
            assert "safety" in generation
            continue
        assert spec.name in request_fields or spec.name in converted_elsewhere, spec.name
    assert generation <= request_fields


def test_a_calls_request_carries_every_shared_setting():
    settings_values = dict(
        provider="google",
        model="Nano Banana Pro",
        aspect_ratio="16:9",
        resolution="2K",
        temperature=0.4,
        system_prompt="soft light",
        web_search=True,
        thinking_level="HIGH",
        include_thoughts=True,
        response_modalities="IMAGE",
        safety=(("HARM_CATEGORY_HARASSMENT", "BLOCK_NONE"),),
    )
    inputs = RenderInputs(prompts=["a ship"], seed=7, **settings_values)
    settings = inputs.settings("google", history=(), fallback=("apiyi",), failover_on_refusal=True)
    image = ImageInput(b"\x89PNG", "image/png", 1, 1)
    request = settings.request("a ship", (image,), seed=7, count=2)
    shared = {f.name for f in fields(GenerationRequest)} & {f.name for f in fields(RunSettings)}
    assert shared == {k for k in settings_values if k not in ("provider", "model")}
    for name in shared:
        assert getattr(request, name) == settings_values[name], name
    assert (request.prompt, request.images, request.seed, request.count) == ("a ship", (image,), 7, 2)
    assert (settings.fallback, settings.failover_on_refusal) == (("apiyi",), True)


def test_settings_normalise_what_the_widgets_leave_empty():
    settings = RenderInputs(prompts=["x"], provider="auto", model="Nano Banana", system_prompt="   ", model_id_override="").settings(
        "fal", history=(), fallback=(), failover_on_refusal=False
    )
    assert (settings.provider, settings.system_prompt, settings.model_id_override) == ("fal", None, None)


def test_the_main_nodes_plain_inputs_are_declared_once_with_their_saved_names():
    """Saved workflows and API prompts name these inputs: the names and defaults must not move."""
    from banana_pack.nodes.option_specs import MAIN_INPUT_SPECS, SPECS_BY_NAME

    assert [(s.name, s.default) for s in MAIN_INPUT_SPECS] == [("seed", 0), ("count", 1), ("prompt_per_line", False), ("image_mode", "references")]
    assert not {s.name for s in MAIN_INPUT_SPECS} & set(SPECS_BY_NAME)  # a name is a main input or an option, never both
    request_fields = {f.name for f in fields(RenderInputs)}
    assert {s.name for s in MAIN_INPUT_SPECS} <= request_fields
