"""The text the node shows on itself (ComfyUI's progress text) carries a provider's and a model's words
(refusal reasons, error messages), and ComfyUI puts it into the page as markup: the classic canvas as
HTML, unsanitised (its TextPreviewWidget sets innerHTML to nl2br(linkifyHtml(text)), frontend 1.43), the
Vue-nodes view as Markdown. A hostile gateway's reason must show as the words it is, never run.
"""

from __future__ import annotations

import html
import sys
import types

import pytest

from banana_pack.nodes.comfy_glue import NodeProgress
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers import BananaError
from helpers import run
from loopback import Reply

HOSTILE = 'no <img src=x onerror="fetch(`/nano_banana_bridge/keys`)"> ![seen](http://127.0.0.1:9/pixel.png) [[go|http://127.0.0.1:9/]]'


@pytest.fixture
def shown(monkeypatch):
    """ComfyUI's server module, as far as progress text goes: what the node sends to the page."""
    sent: list[str] = []
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(send_progress_text=lambda text, node_id: sent.append(text)))
    monkeypatch.setitem(sys.modules, "server", server)
    return sent


@pytest.fixture
def gateway(server, monkeypatch):
    """A Gemini gateway that rejects every request with markup in its message."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "node-text-key-0123456789")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.route("POST", r":generateContent$", Reply(status=400, json={"error": {"code": 400, "message": HOSTILE, "status": "INVALID_ARGUMENT"}}))
    return server


def test_a_gateways_markup_in_a_failure_reaches_the_node_as_text(shown, gateway):
    progress = NodeProgress("1", total=2)
    inputs = RenderInputs(provider="google", model="Nano Banana Pro", prompts=["one", "two"], on_failure="skip")
    with pytest.raises(BananaError) as failure:
        run(render(inputs, store_root=None, progress=progress))
    # The node's last words on a failed run (nodes/bridge_node.py): the headline, which for a batch
    # quotes the first item's failure in full, the gateway's message included.
    progress.text(f"Failed: {failure.value.headline()}", force=True)
    for text in shown:
        # Nothing either view reads as a tag, a Markdown link or image, or the widget's [[label|url]] link.
        assert "<" not in text and ">" not in text and "[" not in text, text
    # What the page shows (entities decoded, Markdown line ends dropped) is the gateway's message, word for word.
    assert HOSTILE in html.unescape(shown[-1])


def test_lines_stay_lines_in_both_views(shown):
    progress = NodeProgress("1", total=1)
    progress.text("Done: 1 ok\nThis run so far: $0.13; today: $0.40", force=True)
    # Two spaces end a Markdown line (the Vue view); the classic view's <br /> is unaffected by them.
    assert shown == ["Done: 1 ok  \nThis run so far: $0.13; today: $0.40"]
