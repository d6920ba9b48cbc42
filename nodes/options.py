"""The "Nano Banana Options" node: the advanced settings, kept off the main node's canvas.

Its widgets are built from OPTION_SPECS (option_specs.py); its output is a plain dict on the
NANO_BANANA_OPTIONS socket, so it survives save/load and API-format prompts like any value.
To add an option, append a spec there; nothing here changes.
"""

from __future__ import annotations

from comfy_api.latest import io

from .option_specs import OPTION_SPECS, SOCKET_TYPE, OptionSpec, resolve_options

NODE_ID = "NanoBananaOptions"
Options = io.Custom(SOCKET_TYPE)


def widget(spec: OptionSpec) -> io.Input:
    """The ComfyUI widget a spec declares (the options node's, and the main node's plain inputs)."""
    kind = spec.kind
    if kind == "combo":
        return io.Combo.Input(spec.name, options=list(spec.choices), default=spec.default, tooltip=spec.tooltip, optional=spec.optional)
    if kind == "bool":
        return io.Boolean.Input(spec.name, default=spec.default, tooltip=spec.tooltip, optional=spec.optional)
    if kind == "int":
        return io.Int.Input(
            spec.name,
            default=spec.default,
            min=spec.minimum,
            max=spec.maximum,
            step=spec.step,
            control_after_generate=spec.control_after_generate or None,
            tooltip=spec.tooltip,
            optional=spec.optional,
        )
    if kind == "float":
        return io.Float.Input(spec.name, default=spec.default, min=spec.minimum, max=spec.maximum, step=spec.step, tooltip=spec.tooltip, optional=spec.optional)
    return io.String.Input(spec.name, default=spec.default, multiline=spec.multiline, tooltip=spec.tooltip, optional=spec.optional)


class NanoBananaOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Nano Banana Options",
            category="image/Nano Banana Bridge",
            description="Advanced settings for Nano Banana Bridge: connect to its 'options' input. Without it, the node uses these defaults.",
            search_aliases=["nano banana settings", "nano banana advanced"],
            inputs=[widget(spec) for spec in OPTION_SPECS],
            outputs=[Options.Output("options", tooltip="Connect to the 'options' input of a Nano Banana Bridge node.")],
        )

    @classmethod
    def execute(cls, **kw) -> io.NodeOutput:
        return io.NodeOutput(resolve_options(kw))
