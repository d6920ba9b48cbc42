"""The node's price badge (web/js/nbb_logic.js, run by node) and the price in a real run's report agree.

The badge is computed from the same /nano_banana_bridge/catalog data the frontend reads; the run goes
through render() against a loopback Gemini server. Skipped where node is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from banana_pack.nodes.catalog_view import model_label
from banana_pack.nodes.render import EACH_IMAGE, RenderInputs, render
from banana_pack.nodes.routes import catalog_summary
from helpers import run
from loopback import Reply, fixture

NODE = shutil.which("node")
LOGIC = Path(__file__).resolve().parents[1] / "web" / "js" / "nbb_logic.js"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def badge(**settings) -> dict:
    script = (
        f"const {{ badgeFor }} = await import({json.dumps(LOGIC.as_uri())});"
        "let input = ''; for await (const chunk of process.stdin) input += chunk;"
        "process.stdout.write(JSON.stringify(badgeFor(JSON.parse(input))));"
    )
    done = subprocess.run([NODE, "--input-type=module", "-e", script], input=json.dumps({"catalog": catalog_summary(), **settings}), capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


# Google bills the tokens an answer reports: its list price per image is the documented image tokens
# (providers.md: 2000 for Pro at 4K, 1120 for Nano Banana 2 at 1K) at the per-token price, rounded to
# a tenth of a cent, plus a few prompt tokens. So the answers carry those tokens, and the report's
# cost (computed from them) agrees with the badge to within 1%.
IMAGE_TOKENS = {"4K": 2000, "1K": 1120}


def answer_with_tokens(req) -> Reply:
    body = fixture("gemini/success_single.json")
    tokens = IMAGE_TOKENS[req.json()["generationConfig"]["imageConfig"]["imageSize"]]
    body["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": tokens, "totalTokenCount": tokens + 12, "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": tokens}]}
    return Reply(json=body)


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "badge-test-key-1234567890")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.route("POST", r":generateContent$", answer_with_tokens)
    return server


def test_batch_of_prompt_lines_times_count(google):
    prompts = "a lighthouse\na windmill\n\na kite\na boat"
    shown = badge(providerId="google", model=model_label("Nano Banana Pro"), resolution="4K", count=2, promptText=prompts, promptPerLine=True, imageMode="references")
    out = run(render(RenderInputs(prompts=[prompts], provider="google", model="Nano Banana Pro", resolution="4K", count=2, prompt_per_line=True, use_cache=False), store_root=None))
    assert len(google.requests) == 8 == shown["images"]
    assert out.report["cost"] == pytest.approx(shown["total"], rel=0.01) and shown["text"].endswith("for 8 images")
    assert out.report["cost_unit"] == shown["unit"] == "usd"


def test_each_image_mode_is_per_input_image(google):
    shown = badge(providerId="auto", model=model_label("Nano Banana 2"), resolution="1K", count=1, promptText="make it night", promptPerLine=False, imageMode=EACH_IMAGE)
    subjects = torch.rand(3, 8, 8, 3)
    out = run(render(RenderInputs(prompts=["make it night"], provider="auto", model="Nano Banana 2", resolution="1K", images=[[subjects]], image_mode=EACH_IMAGE, use_cache=False), store_root=None))
    assert len(google.requests) == 3
    assert out.report["cost"] == pytest.approx(3 * shown["total"], rel=0.01) and "per input image" in shown["text"]


def test_no_key_and_unknown_price_are_said(monkeypatch, tmp_path):
    assert badge(providerId="auto", model=model_label("Nano Banana Pro"), count=1, promptText="x")["text"] == "no key"
    monkeypatch.setenv("FAL_KEY", "fal-id:secret")
    assert badge(providerId="google", model=model_label("Nano Banana Pro"), resolution="1K", count=1, promptText="x")["text"].startswith("no key · ~$")


def test_batch_mode_badge_is_the_estimate_the_spend_guard_holds(server, monkeypatch, isolated_config, tmp_path):
    """delivery "batch" on the options node: the badge shows Batch Mode's price, and a run limit just
    under that figure stops the run before anything is sent, while one just over lets it go."""
    from banana_pack.nodes.guard import SpendLimitReached

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "badge-test-key-1234567890")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    settings = dict(providerId="google", model=model_label("Nano Banana 2"), resolution="2K", count=1, promptText="a\nb\nc", promptPerLine=True, imageMode="references")
    now, batch = badge(**settings), badge(**settings, delivery="batch")
    assert batch["total"] == pytest.approx(now["total"] / 2) and batch["text"].endswith("for 3 images · Batch Mode")
    assert badge(**{**settings, "providerId": "fal"}, delivery="batch")["text"] == "fal.ai has no Batch Mode"
    run_inputs = RenderInputs(prompts=["a\nb\nc"], provider="google", model="Nano Banana 2", resolution="2K", prompt_per_line=True, delivery="batch", use_cache=False)
    monkeypatch.setenv("BANANA_SPEND_LIMIT_RUN", str(batch["total"] * 0.999))
    with pytest.raises(SpendLimitReached):
        run(render(run_inputs, store_root=tmp_path))
    assert server.requests == []
    monkeypatch.setenv("BANANA_SPEND_LIMIT_RUN", str(batch["total"] * 1.001))
    with pytest.raises(Exception) as passed_the_guard:  # no Batch Mode server here: the create call fails
        run(render(run_inputs, store_root=tmp_path))
    assert not isinstance(passed_the_guard.value, SpendLimitReached) and len(server.requests) >= 1
