"""Editing as a conversation: the node's logic (render) chained through the conversation value,
against the loopback Gemini that signs its answers and rejects continuations without them."""

from __future__ import annotations

import json

import pytest
import torch
from banana_pack.nodes.conversation import KIND
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.nodes.store import blob_path, read_blob
from banana_pack.providers import InvalidRequest
from gemini_thinking_fake import ThinkingGemini
from helpers import run

KEY = "AIzaTEST-conversation-key-0123456789"


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    ThinkingGemini(server)
    return server


def step(prompt, store_root, conversation=None, model="Nano Banana Pro", provider="google", images=None, **kw):
    inputs = RenderInputs(
        prompts=[prompt],
        provider=provider,
        model=model,
        images=images or [],
        conversation=conversation,
        conversation_root=store_root if conversation is not None else None,
        store_folder="nano_banana_bridge",
        **kw,
    )
    return run(render(inputs, store_root=store_root))


def photo() -> torch.Tensor:
    image = torch.zeros((1, 6, 8, 3))
    image[..., 0] = 0.8
    return image


def test_three_chained_edits_send_every_earlier_turn_with_its_signatures(google, tmp_path):
    root = tmp_path / "store"
    first = step("put a cat on the sofa", root, images=[[photo()]])
    conversation = first.conversation
    assert conversation["kind"] == KIND and [t["role"] for t in conversation["turns"]] == ["user", "model"]
    user, model = conversation["turns"]
    assert user["parts"][0] == {"text": "put a cat on the sofa"} and len(user["parts"]) == 2  # the photo, by hash
    assert all(read_blob(root, p["image"]) for t in conversation["turns"] for p in t["parts"] if "image" in p)
    signatures = [p["thought_signature"] for p in model["parts"]]
    assert len(signatures) == 2 and all(signatures)

    second = step("now make the sofa blue", root, conversation)
    third = step("and add a lamp", root, second.conversation)
    assert len(third.conversation["turns"]) == 6
    last = google.requests[-1].json()["contents"]
    assert [c["role"] for c in last] == ["user", "model", "user", "model", "user"]
    assert [p.get("thoughtSignature") for p in last[1]["parts"]] == signatures  # unchanged, two turns later
    assert last[0]["parts"][1]["inline_data"]["mime_type"] in ("image/jpeg", "image/png")  # the photo went along
    assert last[-1]["parts"] == [{"text": "and add a lamp"}]
    assert third.images.shape[2] == 10 + 5  # the fake saw five contents


def test_the_conversation_is_plain_small_data_without_the_key(google, tmp_path):
    out = step("a cat", tmp_path / "s")
    text = json.dumps(out.conversation)  # serialisable as is
    assert KEY not in text and "base64" not in text and len(text) < 2000
    assert json.loads(text) == out.conversation


def test_it_works_across_a_restart_through_the_result_store(google, tmp_path):
    root = tmp_path / "s"
    first = step("a cat", root)
    calls = len(google.requests)
    # A new process: the earlier node answers from its cache with the same conversation, no new call.
    again = step("a cat", root)
    assert len(google.requests) == calls and again.report["items"][0]["status"] == "cached"
    assert again.conversation == first.conversation
    step("now blue", root, json.loads(json.dumps(again.conversation)))
    assert [c["role"] for c in google.requests[-1].json()["contents"]] == ["user", "model", "user"]


def test_the_result_image_is_kept_once_the_saved_file_is_the_blob(google, tmp_path):
    root = tmp_path / "s"
    first = step("a cat", root)
    digest = first.conversation["turns"][1]["parts"][1]["image"]
    saved = [p for p in root.rglob("*") if p.is_file() and ".blobs" not in p.parts and p.suffix in (".png", ".jpg", ".jpeg", ".webp")]
    assert len(saved) == 1 and saved[0].stat().st_ino == blob_path(root, digest).stat().st_ino  # one file on disk, two names
    assert read_blob(root, digest) == saved[0].read_bytes()
    assert not list(blob_path(root, digest).parent.glob(".tmp-*"))


def test_a_changed_image_in_the_store_is_never_sent(google, tmp_path):
    root = tmp_path / "s"
    first = step("a cat", root)
    digest = first.conversation["turns"][1]["parts"][1]["image"]
    blob_path(root, digest).write_bytes(b"\x89PNG not the same")
    calls = len(google.requests)
    with pytest.raises(InvalidRequest, match=r"missing from .* \(or was changed\)"):
        step("now blue", root, first.conversation)
    assert len(google.requests) == calls


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "something else"},
        {"kind": KIND, "version": 1, "turns": "nope"},
        {"kind": KIND, "version": 1, "turns": [{"role": "system", "parts": []}]},
        {"kind": KIND, "version": 1, "turns": [{"role": "user", "parts": [{"image": "../../etc/passwd", "mime": "image/png"}]}]},
    ],
)
def test_a_malformed_conversation_is_a_clear_error(google, tmp_path, bad):
    with pytest.raises(InvalidRequest, match="conversation"):
        step("now blue", tmp_path / "s", bad)
    assert google.requests == []


def test_thought_image_output(google, tmp_path):
    out = step("a cat", tmp_path / "s", include_thoughts=True)
    assert out.thought_image.shape == (1, 5, 5, 3)
    assert out.report["items"][0]["thought_images"] == 1
    cached = step("a cat", tmp_path / "s", include_thoughts=True)
    assert cached.report["items"][0]["status"] == "cached" and cached.thought_image.shape == (1, 5, 5, 3)
    none = step("a dog", tmp_path / "s")
    assert none.thought_image.shape == (1, 1024, 1024, 4) and none.thought_image.abs().sum() == 0
    assert "thought_image is empty" not in none.text  # not asked for: nothing to say
    unsupported = step("a dog", tmp_path / "s", model="Nano Banana", include_thoughts=True)
    assert "does not take the include thoughts (best-effort)" in unsupported.text and "thought_image is empty" not in unsupported.text


def test_grounding_sources_in_text_and_report(google, tmp_path):
    out = step("a poster of today's weather", tmp_path / "s", web_search=True)
    (item,) = out.report["items"]
    assert item["sources"][0] == {"title": "Weather in Lisbon", "uri": "https://example.org/weather"}
    assert item["search_queries"] == ["weather lisbon today"]
    assert "https://example.com/news" in out.text


def test_unhonoured_options_are_refused_or_noted_by_the_one_rule(google, tmp_path):
    with pytest.raises(InvalidRequest, match="Thinking level HIGH is not available for Nano Banana"):
        step("a cat", tmp_path / "s", model="Nano Banana", thinking_level="HIGH")
    assert google.requests == []
    out = step("a cat", tmp_path / "s", model="Nano Banana", response_modalities="IMAGE")  # Gemini takes it: sent
    assert google.requests[-1].json()["generationConfig"]["responseModalities"] == ["IMAGE"] and "Note:" not in out.text


def test_without_a_store_the_conversation_says_why(google, tmp_path):
    out = step("a cat", None)
    assert out.conversation["turns"] == [] and "save_to" in out.conversation["unavailable"]
    with pytest.raises(InvalidRequest, match="save_to"):
        step("now blue", tmp_path / "s", out.conversation)


def test_a_turn_without_captured_signatures_is_sent_with_the_stand_in(google, tmp_path):
    """A result cached before signatures were kept (or from a chat provider) has none: the stand-in goes instead."""
    root = tmp_path / "s"
    first = step("a cat", root)
    model_turn = first.conversation["turns"][1]
    for part in model_turn["parts"]:
        part.pop("thought_signature")
    model_turn["signed"] = False
    out = step("now blue", root, first.conversation)
    sent = google.requests[-1].json()["contents"][1]["parts"]
    assert {p["thoughtSignature"] for p in sent} == {"skip_thought_signature_validator"}
    assert out.conversation["turns"][3].get("signed", True) is True
