"""One rule for options a provider cannot honour, the same for every preset and model.

A value the offer cannot honour is refused before anything is sent, naming the allowed values;
a best-effort option (a flag in the catalog's OPTION_RULES, or in an offer's `best_effort`) is
dropped with a note instead. Checked for every preset and model, then end to end through the
node's render() against the loopback fakes (nothing reaches the provider).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers.catalog import (
    AUTO,
    OPTION_RULES,
    PRESETS,
    RATIOS_14,
    RESOLUTIONS_ALL,
    option_rule,
)
from banana_pack.providers.client import check_request
from banana_pack.providers.errors import InvalidRequest
from banana_pack.providers.outcome import GenerationRequest, Turn, TurnPart
from fake_providers import point_presets_at, script_all
from helpers import run

OFFERS = [(spec, offer) for spec in PRESETS for offer in spec.models]
IDS = [f"{spec.id}/{offer.name}" for spec, offer in OFFERS]
# Values a user can pick in the node for each checked option.
CANDIDATES = {
    "aspect_ratio": RATIOS_14,
    "resolution": RESOLUTIONS_ALL,
    "system_prompt": ("Always photorealistic.",),
    "web_search": (True,),
    "temperature": (0.4, 0.0),
    "seed": (7, 0),
    "thinking_level": ("MINIMAL", "HIGH", "MEDIUM"),
    "include_thoughts": (True,),
    "response_modalities": ("IMAGE",),
    "safety": ((("HARM_CATEGORY_HARASSMENT", "BLOCK_NONE"),),),
    "history": ((Turn("user", (TurnPart(text="a cat"),)), Turn("model", (TurnPart(text="here"),), model="x")),),
}


def test_every_rule_has_candidates_and_a_capability():
    assert {rule.option for rule in OPTION_RULES} == set(CANDIDATES)
    for spec, offer in OFFERS:
        for rule in OPTION_RULES:
            assert hasattr(offer, rule.capability), (spec.id, rule.option)


@pytest.mark.parametrize("spec, offer", OFFERS, ids=IDS)
def test_each_option_is_honoured_refused_or_dropped_never_silently_changed(spec, offer):
    for rule in OPTION_RULES:
        allowed = rule.allowed(offer)
        for value in CANDIDATES[rule.option]:
            request = GenerationRequest(prompt="x", **{rule.option: value})
            honoured = allowed is None or value in allowed
            if honoured:
                sent, warnings = check_request(spec, offer, request)
                if rule.option == "resolution" and not offer.resolutions:
                    assert sent.resolution is None and warnings == []  # the fixed size: nothing to send
                else:
                    # Sent; the only note allowed is that the provider does not document it (history on chat presets).
                    assert getattr(sent, rule.option) == value and all("does not document" in w for w in warnings), (rule.option, value, warnings)
            elif rule.is_best_effort(offer):
                sent, warnings = check_request(spec, offer, request)
                assert getattr(sent, rule.option) is None  # dropped, never sent
                assert (any("best-effort" in w for w in warnings)) == rule.note
            else:
                with pytest.raises(InvalidRequest) as info:
                    check_request(spec, offer, request)
                message = str(info.value)
                assert offer.name in message and spec.display_name in message
                if allowed:  # names what it accepts instead
                    assert all(str(v) in message for v in allowed if v != AUTO or rule.option == "aspect_ratio"), message
                else:
                    assert f"{rule.option} off" in message or f"{rule.option} empty" in message or (rule.turn_off and rule.turn_off in message)


def test_apiyi_chat_treats_resolution_like_the_aspect_ratio():
    """The issue's case: 2K was dropped with a warning while 16:9 was refused; both are refused now."""
    spec = next(s for s in PRESETS if s.id == "apiyi_chat")
    offer = spec.model("Nano Banana Pro")
    for field, value in (("aspect_ratio", "16:9"), ("resolution", "2K")):
        with pytest.raises(InvalidRequest) as info:
            check_request(spec, offer, GenerationRequest(prompt="x", **{field: value}))
        assert "google" in str(info.value)  # and says who offers it
    sent, warnings = check_request(spec, offer, GenerationRequest(prompt="x", aspect_ratio=AUTO, resolution="1K"))
    assert sent.aspect_ratio is None and sent.resolution is None and warnings == []


def test_best_effort_is_data_an_offer_can_extend():
    spec = next(s for s in PRESETS if s.id == "fal")
    offer = spec.model("Nano Banana")
    request = GenerationRequest(prompt="x", system_prompt="Be bold.")
    with pytest.raises(InvalidRequest):
        check_request(spec, offer, request)
    lenient = replace(offer, best_effort=("system_prompt",))
    sent, warnings = check_request(spec, lenient, request)
    assert sent.system_prompt is None and any("system prompt (best-effort)" in w for w in warnings)
    assert option_rule("seed").best_effort and option_rule("temperature").best_effort
    assert not any(option_rule(name).best_effort for name in ("aspect_ratio", "resolution", "system_prompt", "web_search"))


def test_unlisted_model_ids_are_sent_unchecked_with_a_note():
    spec = next(s for s in PRESETS if s.id == "apiyi_chat")
    offer = replace(spec.model("Nano Banana"), known=False)
    sent, warnings = check_request(spec, offer, GenerationRequest(prompt="x", aspect_ratio="16:9", resolution="4K"))
    assert sent.aspect_ratio == "16:9" and sent.resolution == "4K" and len(warnings) == 2


@pytest.mark.parametrize(
    "provider, changes, allowed",
    [
        ("apiyi_chat", {"resolution": "2K"}, "choose 1K"),
        ("apiyi_chat", {"aspect_ratio": "16:9"}, "Choose one of: auto"),
        ("openai_hk_chat", {"aspect_ratio": "3:2"}, "Choose one of: auto"),
        ("vydra", {"resolution": "4K"}, "choose 1K"),
        ("openai_hk", {"aspect_ratio": "21:9"}, "Choose one of: auto, match input, 1:1"),
        ("fal", {"web_search": True}, "Turn web_search off"),
        ("fal", {"system_prompt": "Be bold."}, "Leave system_prompt empty"),
        ("evolink", {"resolution": "0.5K"}, "Choose one of: 1K, 2K, 4K"),
    ],
)
def test_render_refuses_before_any_request(server, monkeypatch, tmp_path, provider, changes, allowed):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    model = "Nano Banana" if provider == "vydra" else "Nano Banana Pro"
    inputs = RenderInputs(prompts=["one", "two"], provider=provider, model=model, **changes)
    with pytest.raises(InvalidRequest) as info:
        run(render(inputs, store_root=tmp_path))
    assert allowed in str(info.value)
    assert server.requests == []  # refused before sending: nothing reached the provider, nothing was paid


def test_render_drops_best_effort_options_with_a_note(server, monkeypatch, tmp_path):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    out = run(render(RenderInputs(prompts=["one"], provider="apiyi_chat", model="Nano Banana Pro", resolution="1K", seed=5, temperature=0.3), store_root=tmp_path))
    body = server.requests[0].json()
    assert "temperature" not in body and "seed" not in body
    assert "temperature (best-effort)" in out.text and out.report["items"][0]["status"] == "ok"
