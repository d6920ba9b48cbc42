"""A workflow saved by one user, run by another who has a key for one provider only.

Every preset is answered by the loopback fakes; the user's key is the only thing that differs.
"""

from __future__ import annotations

import pytest
import torch

from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers import InvalidRequest
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import unknown_provider
from banana_pack.providers.config import env_name
from banana_pack.providers.errors import MissingKey
from fake_providers import key_for, point_presets_at, script_all
from helpers import run


def only_key(server, monkeypatch, owner: str | None) -> None:
    """Every preset pointed at the fakes, but a key for `owner` only (None: no key at all)."""
    point_presets_at(server, monkeypatch.setenv)
    for spec in PRESETS:
        monkeypatch.delenv(env_name(spec.key_owner, "API_KEY"), raising=False)
    if owner:
        monkeypatch.setenv(env_name(owner, "API_KEY"), key_for(owner))
    script_all(server)


def inputs(**kw) -> RenderInputs:
    kw.setdefault("provider", "auto")
    kw.setdefault("model", "Nano Banana 2")
    kw.setdefault("prompts", ["a paper boat"])
    return RenderInputs(**kw)


def provider_requests(server) -> list[str]:
    return [r.path for r in server.requests if not r.path.startswith("/files/")]


def test_auto_picks_the_keyed_provider_that_can_honour_the_settings(server, monkeypatch):
    """openai-hk's key serves three presets; its OpenAI Images one (first in the catalog) has no
    thinking level, its fal passthrough has: "auto" runs there instead of refusing."""
    only_key(server, monkeypatch, "openai_hk")
    out = run(render(inputs(thinking_level="HIGH"), store_root=None))
    assert [item["provider"] for item in out.report["items"]] == ["openai_hk_fal"]
    assert provider_requests(server) and all(path.startswith("/openai_hk_fal/") for path in provider_requests(server))


def test_auto_still_refuses_what_no_keyed_provider_can_do_before_sending(server, monkeypatch):
    only_key(server, monkeypatch, "fal")
    with pytest.raises(InvalidRequest) as caught:
        run(render(inputs(safety=(("HARM_CATEGORY_HARASSMENT", "BLOCK_NONE"),)), store_root=None))
    assert "fal.ai" in str(caught.value).splitlines()[0]  # the first keyed provider's refusal, naming where it works
    assert provider_requests(server) == []


def test_a_named_provider_without_a_key_points_to_the_one_the_user_has(server, monkeypatch):
    only_key(server, monkeypatch, "fal")
    with pytest.raises(MissingKey) as caught:
        run(render(inputs(provider="google", model="Nano Banana Pro", images=[[torch.rand(1, 8, 8, 3)]]), store_root=None))
    first, hint = str(caught.value).split("\n", 1)
    assert first == "No API key for 'Google Gemini API', the provider this node is set to."
    assert "You have a key for fal.ai (fal), which offers Nano Banana Pro: set provider to 'auto' (or 'fal')" in hint
    assert "Nano Banana keys tab" in hint and "BANANA_GOOGLE_API_KEY" in hint  # and how to add the named one's key
    assert provider_requests(server) == []


def test_batch_mode_without_a_google_key_says_to_deliver_now_elsewhere(server, monkeypatch):
    only_key(server, monkeypatch, "apiyi")
    with pytest.raises(MissingKey) as caught:
        run(render(inputs(provider="google", delivery="batch"), store_root=None))
    assert "set provider to 'auto' (or 'apiyi') to run it there and delivery to 'now'" in str(caught.value)


def test_a_named_provider_without_a_key_and_no_other_key_says_where_keys_go(server, monkeypatch):
    only_key(server, monkeypatch, None)
    with pytest.raises(MissingKey) as caught:
        run(render(inputs(provider="fal"), store_root=None))
    message = str(caught.value)
    assert "You have a key" not in message and "Nano Banana keys tab (key icon in ComfyUI's sidebar)" in message and "FAL_KEY" in message


def test_a_new_user_without_any_key_is_told_to_open_the_keys_tab(server, monkeypatch):
    only_key(server, monkeypatch, None)
    with pytest.raises(MissingKey) as caught:
        run(render(inputs(), store_root=None))
    first, hint = str(caught.value).split("\n", 1)
    assert first == "No API key is set for any provider."
    assert hint.startswith("Paste a key for a provider you have an account with in the Nano Banana keys tab (key icon in ComfyUI's sidebar)")


def test_keys_that_do_not_offer_the_model_are_named_with_what_they_offer(server, monkeypatch):
    only_key(server, monkeypatch, "vydra")
    with pytest.raises(MissingKey) as caught:
        run(render(inputs(model="Nano Banana Pro"), store_root=None))
    first, hint = str(caught.value).split("\n", 1)
    assert first == "None of the providers you have a key for offers 'Nano Banana Pro': Vydra (vydra)."
    assert hint.startswith("Choose a model they offer (Nano Banana), or add a key for a provider that offers Nano Banana Pro (google,")


def test_a_dry_run_of_a_named_provider_still_needs_no_key(server, monkeypatch):
    only_key(server, monkeypatch, "fal")
    out = run(render(inputs(provider="google", dry_run=True), store_root=None))
    assert out.images is None and out.report["dry_run"] is True and provider_requests(server) == []


def test_a_provider_only_the_author_had_is_named_with_what_to_do(server, monkeypatch, isolated_config):
    only_key(server, monkeypatch, "fal")
    message = unknown_provider("my_gateway")
    assert message.startswith("The provider 'my_gateway' is not set up on this ComfyUI: the workflow was saved with a provider from its author's setup")
    assert "Set provider to 'auto' or to a provider you have a key for (fal)" in message and "providers.json" in message
    assert len(unknown_provider("x" * 5000)) < 600  # the workflow's value is clipped
    assert unknown_provider("auto") is None and unknown_provider("fal") is None and unknown_provider("vydra") is None
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "providers.json").write_text('{"providers": [{"id": "my_gateway", "protocol": "gemini", "base_url": "https://gw.example.com/v1beta", "models": ["gemini-3-pro-image-preview"]}]}')
    assert unknown_provider("my_gateway") is None  # once added here, it runs
    (isolated_config / "providers.json").write_text('{"providers": [,]}')
    assert unknown_provider("my_gateway") is None  # a broken file: the run names it, with its line


def test_what_a_named_provider_cannot_do_is_said_before_its_missing_key(server, monkeypatch):
    """A key would not make it work: the refusal, not the key, is what the user must change."""
    only_key(server, monkeypatch, "google")
    with pytest.raises(InvalidRequest) as caught:
        run(render(inputs(provider="vydra", model="Nano Banana", thinking_level="HIGH"), store_root=None))
    assert "not available for Nano Banana on Vydra" in str(caught.value).splitlines()[0]
