"""The Nano Banana Bridge node: its V3 schema, built from the catalog, and its adapter to render().

The provider is a plain combo and the model a DynamicCombo whose options carry that model's
aspect ratios, resolutions and reference slots. Keeping the provider outside the model's
sub-inputs means switching provider (a shared workflow opened by someone with another key)
changes one value and keeps every other setting and every image link.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from comfy_api.latest import io

from ..providers.catalog import AUTO
from ..providers.client import AUTO_PROVIDER, unknown_provider
from ..providers.config import schema_providers
from ..providers.errors import BananaError
from ..providers.redaction import redact
from .catalog_view import MODEL_ORDER, model_capabilities, model_from_choice, model_label
from .comfy_glue import NodeProgress, current_prompt_id, output_dir, raise_interrupt
from .conversation import store_folder_of
from .option_specs import MAIN_INPUTS_BY_NAME, MAIN_INPUT_SPECS, SPECS_BY_NAME, resolve_options
from .options import Options, widget
from .render import Interrupted, RenderInputs, render, report_json, request_options

log = logging.getLogger("nano_banana_bridge")

NODE_ID = "NanoBananaBridge"
Conversation = io.Custom("NANO_BANANA_CONVERSATION")

IMAGE_TOOLTIP = "A reference image (or a batch: each image counts as one reference). Connect one and the next slot appears."
OPTIONS_TOOLTIP = (
    "Advanced settings from a Nano Banana Options node (failure policy, system prompt, temperature, web search, "
    "upload format, cache, save folder, model id). Not connected: the defaults."
)


def _model_option(name: str, cap: dict[str, Any]) -> io.DynamicCombo.Option:
    inputs: list = [
        io.Combo.Input(
            "aspect_ratio",
            options=cap["ratios"],
            default=AUTO,
            tooltip="auto: the provider decides (edits follow the input). match input: the supported ratio nearest the first reference image.",
        )
    ]
    if cap["resolutions"]:
        inputs.append(
            io.Combo.Input(
                "resolution",
                options=cap["resolutions"],
                default="1K" if "1K" in cap["resolutions"] else cap["resolutions"][0],
                tooltip="Output size tier (about 1K = 1024 px on the long side). Higher tiers cost more with most providers: see the badge.",
            )
        )
    inputs.append(
        io.Autogrow.Input(
            "images",
            template=io.Autogrow.TemplateNames(io.Image.Input("image", tooltip=IMAGE_TOOLTIP), names=[f"image_{i}" for i in range(1, cap["max_refs"] + 1)], min=0),
            tooltip=f"Reference images, up to {cap['max_refs']} in all: every image of a batch counts as one reference.",
        )
    )
    return io.DynamicCombo.Option(model_label(name), inputs)


class NanoBananaBridge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        caps = model_capabilities()
        providers = [AUTO_PROVIDER] + [spec.id for spec in schema_providers()]
        return io.Schema(
            node_id=NODE_ID,
            display_name="Nano Banana Bridge",
            category="image/Nano Banana Bridge",
            description=(
                "Google's Nano Banana image models through any provider you have a key for. Text to image, or edits with up to "
                "14 reference images. Several prompts (one per line, or a list input) and counts run concurrently; every image "
                "is saved on arrival to output/nano_banana_bridge/. Keys never enter the workflow: see the README."
            ),
            search_aliases=["nano banana", "gemini image", "gemini 3 pro image", "nano banana pro", "nano banana 2", "fal", "image edit"],
            is_input_list=True,
            inputs=[
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    placeholder="Describe the image, or the edit to make to the reference images.",
                    tooltip="What to make, or the edit to apply to the reference images. With prompt_per_line, each non-empty line is its own prompt.",
                ),
                io.Combo.Input(
                    "provider",
                    options=providers,
                    default=AUTO_PROVIDER,
                    tooltip="Who runs the model, with your key for them. auto: the first provider with a key that offers the model (BANANA_PROVIDER_ORDER sets the order).",
                ),
                io.DynamicCombo.Input(
                    "model",
                    options=[_model_option(name, caps[name]) for name in MODEL_ORDER],
                    tooltip=(
                        "Nano Banana 2 is the newest and cheapest per image at 1K; Pro follows long instructions and renders text best; "
                        "Nano Banana (2.5) is the oldest, with fixed size output. Aspect ratio and resolution carry over when you switch."
                    ),
                ),
                *(widget(spec) for spec in MAIN_INPUT_SPECS),
                Conversation.Input(
                    "conversation",
                    optional=True,
                    tooltip="Continue an earlier node's exchange: its prompts, references and images (with their thought signatures) are sent before this prompt. "
                    "Gemini-native providers; chat-mode providers as messages (best effort); others refuse.",
                ),
                Options.Input("options", optional=True, tooltip=OPTIONS_TOOLTIP),
            ],
            outputs=[
                io.Image.Output("images", tooltip="Every image that arrived, as one batch (sizes follow the options' size_policy). Each is also saved on arrival."),
                io.String.Output("text", tooltip="The model's words; for a refusal, its explanation."),
                io.String.Output("report", tooltip="JSON: one row per call with status, reason, request id, seed, cost, seconds and saved files."),
                # New outputs go last, so links saved in existing workflows keep their indexes.
                io.Image.Output(
                    "thought_image",
                    tooltip="First image of the model's thinking (options: include_thoughts; Pro and Nano Banana 2 on Gemini-native providers). "
                    "None: an empty 1024x1024 image, as ComfyUI's own Nano Banana 2 node gives.",
                ),
                Conversation.Output(
                    "conversation",
                    tooltip="This exchange (prompt, references, the model's image and thought signatures) for the next node's 'conversation' input: "
                    "'now make the sofa blue' keeps everything else. With several results, it continues from the first.",
                ),
            ],
            hidden=[io.Hidden.unique_id],
            accept_all_inputs=True,  # API prompts written before the options node pass its keys here
        )

    @classmethod
    def validate_inputs(cls, provider=None, model=None) -> bool | str:
        """A provider this install lacks (another user's custom gateway): what to do, at /prompt, before
        anything runs, instead of ComfyUI's bare "Value not in list" (naming `provider` here skips that check).

        `model` is not checked here: ComfyUI hands the DynamicCombo's nested values to every validate_inputs
        (a DynamicCombo has no list check to skip), and execute() names an unknown model choice."""
        for value in provider if isinstance(provider, list) else [provider]:
            if value is None:  # linked from another node: its value is checked when the node runs
                continue
            problem = unknown_provider(value) if isinstance(value, str) else f"provider must be a provider id such as 'auto', not {type(value).__name__}."
            if problem:
                return problem
        return True

    @classmethod
    async def execute(cls, **kw) -> io.NodeOutput:
        model, model_values = _model_choice(kw)
        if model is None:
            raise BananaError(
                f"Unknown model choice {_first(kw.get('model'))!r}.",
                hint=f"Pick one of: {', '.join(model_label(n) for n in MODEL_ORDER)} (API prompts: the 'model' input; the bare names work too).",
            )
        legacy = {name: _first(kw[name]) for name in SPECS_BY_NAME if name in kw}
        opts = resolve_options(_first(kw.get("options")), legacy)
        save_to = opts["save_to"].strip()
        store_root = _store_root(save_to)
        conversation = _first(kw.get("conversation"))
        inputs = RenderInputs(
            prompts=[p for p in kw.get("prompt") or [] if isinstance(p, str)],
            provider=_first(kw.get("provider"), AUTO_PROVIDER),
            model=model,
            aspect_ratio=_first(model_values[0].get("aspect_ratio"), AUTO),
            resolution=_first(model_values[0].get("resolution")),
            images=_images(model_values),
            image_mode=_main_input(kw, "image_mode"),
            prompt_per_line=bool(_main_input(kw, "prompt_per_line")),
            seed=int(_main_input(kw, "seed")),
            count=int(_main_input(kw, "count")),
            **request_options(opts),
            conversation=conversation,
            conversation_root=_store_root(store_folder_of(conversation) or "") if conversation is not None else None,
            store_folder=save_to,
        )
        progress = NodeProgress(cls.hidden.unique_id, total=1)
        try:
            out = await render(
                inputs, store_root=store_root, output_root=output_dir(), cancel_check=progress.cancel_requested, progress=progress, prompt_id=current_prompt_id()
            )
        except Interrupted:
            raise_interrupt()
        except BananaError as exc:
            progress.text(f"Failed: {exc.headline()}", force=True)  # stays on the node after the popup is closed
            raise  # already redacted
        except Exception as exc:
            if type(exc).__name__ == "InterruptProcessingException":
                raise
            # ComfyUI shows the message in /history and logs the chained causes: redact it, and drop the cause.
            log.debug("Nano Banana Bridge: %s", redact(traceback.format_exc()))
            raise BananaError(redact(f"{type(exc).__name__}: {exc}")) from None
        if out.images is None:
            # A dry run made no image. Blocking the image outputs (silently) means nothing downstream runs on
            # them: no placeholder can be saved or passed on as if it were a result.
            from comfy_execution.graph_utils import ExecutionBlocker

            return io.NodeOutput(ExecutionBlocker(None), redact(out.text), report_json(out.report), ExecutionBlocker(None), out.conversation)
        return io.NodeOutput(out.images, redact(out.text), report_json(out.report), out.thought_image, out.conversation)


def _store_root(save_to: str):
    """A save_to folder (or a conversation's) under ComfyUI's output folder; None when empty."""
    if not save_to:
        return None
    root = (output_dir() / save_to).resolve()
    if output_dir().resolve() not in root.parents and root != output_dir().resolve():
        raise BananaError(f"save_to must stay inside ComfyUI's output folder, got '{save_to[:200]}'.", hint="Use a relative folder name such as nano_banana_bridge.")
    return root


def _model_choice(kw: dict) -> tuple[str | None, list[dict]]:
    """The stable model name and the model's sub-inputs (one dict per list item).

    A prompt saved before the labels ("Nano Banana Pro" rather than "Nano Banana Pro (Gemini 3 Pro
    Image)") matches no DynamicCombo option, so ComfyUI hands its value over as a plain string and
    its sub-inputs as dotted keys ("model.aspect_ratio", "model.images.image_1"): read them there.
    """
    raw = kw.get("model")
    items = raw if isinstance(raw, list) else [raw]
    first = items[0] if items else None
    if isinstance(first, dict):
        return model_from_choice(_first(first.get("model"))), [v for v in items if isinstance(v, dict)]
    legacy: dict[str, Any] = {"images": {}}
    for key, value in kw.items():
        if key.startswith("model.images."):
            legacy["images"][key.rsplit(".", 1)[-1]] = value
        elif key.startswith("model.") and key.count(".") == 1:
            legacy[key.split(".", 1)[1]] = value
    return model_from_choice(first), [legacy]


def _main_input(kw: dict, name: str) -> Any:
    """One of the main node's plain inputs (MAIN_INPUT_SPECS), its declared default when absent."""
    return _first(kw.get(name), MAIN_INPUTS_BY_NAME[name].default)


def _first(value: Any, default: Any = None) -> Any:
    """is_input_list hands every input over as a list; widgets carry one value."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def _images(model_values: Any) -> list[list]:
    """Per connected reference slot, in slot order, its IMAGE batches (one per list item)."""
    values = model_values if isinstance(model_values, list) else [model_values]
    slots: dict[int, list] = {}
    for value in values:
        for name, slot in ((value or {}).get("images") or {}).items():
            number = int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 0
            slots.setdefault(number, []).extend(item for item in (slot if isinstance(slot, list) else [slot]) if item is not None)
    return [slots[n] for n in sorted(slots) if slots[n]]
