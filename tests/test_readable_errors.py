"""Errors a person can read: a short module name, and a first line with the stage and reason."""

from __future__ import annotations

import pytest

from banana_pack.nodes.batch import BatchFailed
from banana_pack.nodes.render import RenderInputs, _summary, render
from banana_pack.providers import errors
from banana_pack.providers.errors import (
    AuthError,
    BananaError,
    MissingKey,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    SafetyStage,
)
from helpers import run
from loopback import Reply, fixture

GEN_PATH = r":generateContent$"


def comfy_type_name(exc: BaseException) -> str:
    """How ComfyUI's execution.full_type_name names a node's exception in the error popup."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def test_every_pack_error_has_the_short_module_name_not_a_folder_path():
    assert comfy_type_name(SafetyRejected("x", stage="output_blocked")) == "nano_banana_bridge.errors.SafetyRejected"
    assert comfy_type_name(BatchFailed("x")) == "nano_banana_bridge.errors.BatchFailed"  # subclasses outside errors.py too
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, BananaError):
            assert value.__module__ == "nano_banana_bridge.errors", name


@pytest.mark.parametrize(
    "stage,reason,first",
    [
        (SafetyStage.OUTPUT_BLOCKED, "IMAGE_SAFETY", "Refused by Google: IMAGE_SAFETY (the generated image was blocked)"),
        (SafetyStage.PROMPT_BLOCKED, "PROHIBITED_CONTENT", "Refused by Google: PROHIBITED_CONTENT (the prompt or a reference image was blocked before generation)"),
        (SafetyStage.SOFT_REFUSAL, "STOP", "Refused by Google: STOP (the model answered in words instead of an image)"),
    ],
)
def test_a_refusal_starts_with_who_refused_and_why(stage, reason, first):
    exc = SafetyRejected("The provider said no.", stage=stage, reason=reason, provider="google", model="gemini-3-pro-image-preview", request_id="req-9")
    lines = str(exc).splitlines()
    assert lines[0] == first
    assert "[google/gemini-3-pro-image-preview] The provider said no. (request id req-9)" == lines[1]  # the details follow


def test_other_errors_lead_with_a_sentence_naming_the_provider():
    assert str(NoImageReturned("done", reason="MAX_TOKENS", provider="fal")).startswith("No image from fal.ai: MAX_TOKENS (the model finished without an image)")
    assert str(AuthError("bad key", provider="openai_hk", status=401)).startswith("Key rejected by openai-hk (HTTP 401)\n")
    assert str(QuotaOrRateLimited("slow down", provider="google", status=429)).startswith("Rate-limited by Google (HTTP 429)")
    assert str(QuotaOrRateLimited("empty", provider="google", status=402, exhausted=True)).startswith("Out of credits or quota at Google")
    # A message that is already the sentence leads by itself, without a "[provider]" prefix.
    assert str(MissingKey("No API key for 'fal.ai'.", provider="fal", hint="Set FAL_KEY.")) == "No API key for 'fal.ai'.\nSet FAL_KEY."


def test_the_headline_never_carries_a_key():
    from banana_pack.providers.redaction import register_secret

    register_secret("AIzaSECRETSECRETSECRET123")
    exc = SafetyRejected("x", stage="output_blocked", reason="AIzaSECRETSECRETSECRET123", provider="google")
    assert "AIzaSECRETSECRETSECRET123" not in exc.headline() and "AIzaSECRETSECRETSECRET123" not in str(exc)


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "readable-errors-key-123")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    return server


def refuse_some(req):
    prompt = req.json()["contents"][0]["parts"][0]["text"]
    if prompt.startswith("refuse"):
        return Reply(json=fixture("gemini/finish_image_safety.json"))
    return Reply(json=fixture("gemini/success_single.json"))


def test_a_real_refusal_over_http_reads_refused_by_google_first(google):
    google.route("POST", GEN_PATH, lambda req: Reply(json=fixture("gemini/finish_image_safety.json")))
    with pytest.raises(SafetyRejected) as info:
        run(render(RenderInputs(prompts=["refuse"], provider="google", model="Nano Banana Pro"), store_root=None))
    assert str(info.value).startswith("Refused by Google: IMAGE_SAFETY (the generated image was blocked)")


def test_a_failed_batch_leads_with_the_count_and_the_first_reason(google):
    google.route("POST", GEN_PATH, refuse_some)
    with pytest.raises(BatchFailed) as info:
        run(render(RenderInputs(prompts=["fine", "refuse this"], provider="google", model="Nano Banana Pro"), store_root=None))
    first = str(info.value).splitlines()[0]
    assert first.startswith("1 of 2 items did not produce an image (1 ok, 1 refused). First, item 2: Refused by Google: IMAGE_SAFETY")


class Sink:
    def __init__(self):
        self.lines = []

    def text(self, text, *, force=False):
        self.lines.append(text)

    def items_finished(self, finished, total):
        pass


def test_the_node_text_after_a_run_names_the_refusal_reason(google):
    google.route("POST", GEN_PATH, refuse_some)
    sink = Sink()
    run(render(RenderInputs(prompts=["fine", "refuse this"], provider="google", model="Nano Banana Pro", on_failure="skip"), store_root=None, progress=sink))
    assert sink.lines[-1].startswith("Done: 1 ok, 1 refused (IMAGE_SAFETY)")


def test_summary_lists_each_reason_once():
    report = {"counts": {"ok": 1, "failed": 2}, "items": [{"status": "ok"}, {"status": "failed", "reason": "timeout"}, {"status": "failed", "reason": "timeout"}]}
    assert _summary(report) == "Done: 1 ok, 2 failed (timeout)"
