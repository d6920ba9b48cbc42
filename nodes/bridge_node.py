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

from ..providers.catalog import AUTO, STABLE_MODEL_NAMES
from ..providers.client import AUTO_PROVIDER
from ..providers.config import schema_providers
from ..providers.errors import BananaError
from ..providers.redaction import redact
from .catalog_view import model_capabilities, price_badge_expr
from .comfy_glue import NodeProgress, output_dir, raise_interrupt
from .render import EACH_IMAGE, REFERENCES, Interrupted, RenderInputs, render, report_json
from .store import STORE_FOLDER

log = logging.getLogger("nano_banana_bridge")

NODE_ID = "NanoBananaBridge"
SEED_MAX = 0xFFFFFFFFFFFFFFFF

SEED_TOOLTIP = (
    "Sent to providers that honour a seed (Google, APIYI native, fal); elsewhere it only makes ComfyUI run the node again. "
    "With count > 1, extra calls use seed+1, seed+2, ..."
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
        inputs.append(io.Combo.Input("resolution", options=cap["resolutions"], default="1K" if "1K" in cap["resolutions"] else cap["resolutions"][0]))
    inputs.append(
        io.Autogrow.Input(
            "images",
            template=io.Autogrow.TemplateNames(io.Image.Input("image"), names=[f"image_{i}" for i in range(1, cap["max_refs"] + 1)], min=0),
            tooltip=f"Reference images, up to {cap['max_refs']} in all: every image of a batch counts as one reference.",
        )
    )
    return io.DynamicCombo.Option(name, inputs)


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
                io.String.Input("prompt", multiline=True, default="", placeholder="Describe the image, or the edit to make to the reference images."),
                io.Combo.Input(
                    "provider",
                    options=providers,
                    default=AUTO_PROVIDER,
                    tooltip="Who runs the model, with your key for them. auto: the first provider with a key that offers the model (BANANA_PROVIDER_ORDER sets the order).",
                ),
                io.DynamicCombo.Input("model", options=[_model_option(name, caps[name]) for name in STABLE_MODEL_NAMES], tooltip="Nano Banana = Gemini 2.5 Flash Image; Pro = Gemini 3 Pro Image; 2 = Gemini 3.1 Flash Image."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=SEED_TOOLTIP),
                io.Int.Input("count", default=1, min=1, max=64, tooltip="Images per prompt: the provider's own n where it has one, else parallel calls."),
                io.Boolean.Input("prompt_per_line", default=False, tooltip="Each non-empty line of the prompt is its own prompt (a batch)."),
                io.Combo.Input(
                    "image_mode",
                    options=[REFERENCES, EACH_IMAGE],
                    default=REFERENCES,
                    tooltip="references: all connected images guide every call. each image: the prompt is applied to each image of image_1 separately (the other slots stay shared references).",
                ),
                io.Combo.Input(
                    "on_failure",
                    options=["fail", "skip", "flag"],
                    default="fail",
                    tooltip="When some items are refused or fail: fail the node (finished images stay saved), skip them, or keep going and list them at the top of the text output.",
                ),
                io.Combo.Input("size_policy", options=["resize", "pad", "crop"], default="resize", advanced=True, tooltip="Results of different sizes become one batch the size of the first: stretched, letterboxed or centre-cropped."),
                io.String.Input("system_prompt", multiline=True, default="", advanced=True, tooltip="Sent where the model honours a system instruction."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=2.0, step=0.05, advanced=True, tooltip="1.0 is the model's default and is not sent."),
                io.Boolean.Input("web_search", default=False, advanced=True, tooltip="Google Search grounding (Pro and Nano Banana 2, where the provider supports it)."),
                io.Combo.Input("upload_format", options=["auto", "png", "jpeg", "webp"], default="auto", advanced=True, tooltip="auto: JPEG q95 for opaque images (a quarter of PNG's size), PNG when there is transparency. png: lossless."),
                io.Boolean.Input("use_cache", default=True, advanced=True, tooltip="Answer an identical request (same provider, model, prompt, images, settings and seed) from the saved result, even after a restart."),
                io.String.Input("save_to", default=STORE_FOLDER, advanced=True, tooltip="Folder under ComfyUI's output directory for every result and its provenance. Empty: don't save (and no cache)."),
                io.String.Input("model_id_override", default="", advanced=True, tooltip="Send this model id instead of the catalog's (a newer or reseller-specific id); checks are relaxed."),
            ],
            outputs=[
                io.Image.Output("images"),
                io.String.Output("text", tooltip="The model's words; for a refusal, its explanation."),
                io.String.Output("report", tooltip="JSON: one row per call with status, reason, request id, seed, cost, seconds and saved files."),
            ],
            hidden=[io.Hidden.unique_id],
            price_badge=io.PriceBadge(expr=price_badge_expr(), depends_on=io.PriceBadgeDepends(widgets=["provider", "model", "model.resolution", "count"])),
        )

    @classmethod
    async def execute(cls, **kw) -> io.NodeOutput:
        model = _first(kw.get("model"))  # with is_input_list, the option dict's values are lists too
        if not isinstance(model, dict) or not _first(model.get("model")):
            raise BananaError("Unknown model choice.", hint=f"Pick one of: {', '.join(STABLE_MODEL_NAMES)} (API prompts: the 'model' input).")
        inputs = RenderInputs(
            prompts=[p for p in kw.get("prompt") or [] if isinstance(p, str)],
            provider=_first(kw.get("provider"), AUTO_PROVIDER),
            model=_first(model["model"]),
            aspect_ratio=_first(model.get("aspect_ratio"), AUTO),
            resolution=_first(model.get("resolution")),
            images=_images(kw.get("model")),
            image_mode=_first(kw.get("image_mode"), REFERENCES),
            prompt_per_line=bool(_first(kw.get("prompt_per_line"), False)),
            seed=int(_first(kw.get("seed"), 0)),
            count=int(_first(kw.get("count"), 1)),
            on_failure=_first(kw.get("on_failure"), "fail"),
            size_policy=_first(kw.get("size_policy"), "resize"),
            system_prompt=_first(kw.get("system_prompt"), "") or "",
            temperature=_temperature(_first(kw.get("temperature"), 1.0)),
            web_search=bool(_first(kw.get("web_search"), False)),
            upload_format=_first(kw.get("upload_format"), "auto"),
            use_cache=bool(_first(kw.get("use_cache"), True)),
            model_id_override=(_first(kw.get("model_id_override"), "") or "").strip(),
        )
        save_to = (_first(kw.get("save_to"), STORE_FOLDER) or "").strip()
        store_root = (output_dir() / save_to).resolve() if save_to else None
        if store_root is not None and output_dir().resolve() not in store_root.parents and store_root != output_dir().resolve():
            raise BananaError(f"save_to must stay inside ComfyUI's output folder, got '{save_to}'.", hint="Use a relative folder name such as nano_banana_bridge.")
        progress = NodeProgress(cls.hidden.unique_id, total=1)
        try:
            out = await render(inputs, store_root=store_root, output_root=output_dir(), cancel_check=progress.cancel_requested, progress=progress)
        except Interrupted:
            raise_interrupt()
        except BananaError:
            raise  # already redacted
        except Exception as exc:
            if type(exc).__name__ == "InterruptProcessingException":
                raise
            # ComfyUI shows the message in /history and logs the chained causes: redact it, and drop the cause.
            log.debug("Nano Banana Bridge: %s", redact(traceback.format_exc()))
            raise BananaError(redact(f"{type(exc).__name__}: {exc}")) from None
        return io.NodeOutput(out.images, redact(out.text), report_json(out.report))


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


def _temperature(value: float) -> float | None:
    return None if value is None or abs(float(value) - 1.0) < 1e-9 else float(value)
