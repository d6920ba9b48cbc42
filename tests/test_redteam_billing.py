"""Never pay twice, per family: every preset's paid POST, answered the ways the billing table says
must not be resent, is sent exactly once (counted by the loopback server); polls and downloads,
which cost nothing, are retried without a second POST."""

from __future__ import annotations

import pytest
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import generate
from banana_pack.providers.errors import BananaError
from banana_pack.providers.outcome import GenerationRequest
from fake_providers import png, point_presets_at, script_all
from helpers import run
from loopback import Reply

# The request that costs money, per preset (text to image: no reference uploads).
PAID = {
    "google": r"^/google/models/[^/]+:generateContent$",
    "vertex": r"^/vertex/projects/[^/]+/locations/[^/]+/publishers/google/models/[^/]+:generateContent$",
    "vertex_express": r"^/vertex_express/publishers/google/models/[^/]+:generateContent$",
    "apiyi": r"^/apiyi/models/[^/]+:generateContent$",
    "apiyi_chat": r"^/apiyi_chat/chat/completions$",
    "openai_hk": r"^/openai_hk/images/generations$",
    "openai_hk_chat": r"^/openai_hk_chat/chat/completions$",
    "openai_hk_fal": r"^/openai_hk_fal/fal-ai/[\w.-]+$",
    "fal": r"^/fal/fal-ai/[\w.-]+$",
    "apimaster": r"^/apimaster/images/generations/async$",
    "evolink": r"^/evolink/images/generations$",
    "vydra": r"^/vydra/models/nano-banana/edit$",
}
ASYNC = {"fal", "openai_hk_fal", "evolink", "apimaster"}
POLLS = {"fal": r"^/fal/.*/status$", "evolink": r"^/evolink/tasks/", "apimaster": r"^/apimaster/tasks/"}
MAYBE_BILLED = {
    "504": Reply(504, body=b"<html>Gateway Time-out</html>", content_type="text/html"),
    "524": Reply(524, body=b"", content_type="text/html"),
    "502 without the provider's error": Reply(502, body=b"<html>Bad gateway</html>", content_type="text/html"),
    "connection lost after sending": Reply(drop=True),
    "200 not JSON": Reply(200, body=b'{"candidates": [', content_type="application/json"),
}


def test_every_preset_has_its_paid_request_listed():
    assert set(PAID) == {spec.id for spec in PRESETS}


@pytest.fixture
def presets(server, monkeypatch):
    from banana_pack.providers.engine.transport import HttpEngine

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))  # retries at once: only their count matters here
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    return server


def model_for(provider: str) -> str:
    spec = next(s for s in PRESETS if s.id == provider)
    return "Nano Banana Pro" if "Nano Banana Pro" in spec.model_names else spec.model_names[0]


def request() -> GenerationRequest:
    return GenerationRequest(prompt="a red kite", seed=1)


@pytest.mark.parametrize("provider", sorted(PAID))
def test_the_fakes_answer_each_preset_once(presets, provider):
    result = run(generate(provider, model_for(provider), request()))
    assert result.images and len(presets.hits("POST", PAID[provider])) == 1


@pytest.mark.parametrize("answer", sorted(MAYBE_BILLED))
@pytest.mark.parametrize("provider", sorted(PAID))
def test_a_paid_request_that_may_have_run_is_sent_once(presets, provider, answer):
    presets.route("POST", PAID[provider], MAYBE_BILLED[answer])
    with pytest.raises(BananaError) as caught:
        run(generate(provider, model_for(provider), request()))
    assert len(presets.hits("POST", PAID[provider])) == 1
    assert "may have been" in str(caught.value) + (caught.value.hint or ""), caught.value


@pytest.mark.parametrize("provider", sorted(POLLS))
def test_a_failing_poll_is_retried_without_a_second_submit(presets, provider):
    presets.route("GET", POLLS[provider], Reply(503, body=b"busy", content_type="text/plain"))  # never recovers
    with pytest.raises(BananaError):
        run(generate(provider, model_for(provider), request()))
    assert len(presets.hits("GET", POLLS[provider])) >= 2  # retried
    assert len(presets.hits("POST", PAID[provider])) == 1


@pytest.mark.parametrize("provider", sorted(PAID))
def test_a_failing_download_is_retried_without_a_second_generation(presets, provider):
    presets.route("GET", r"^/files/", [Reply(503, body=b"", content_type="text/plain"), Reply(503, body=b"", content_type="text/plain"), Reply(body=png(24), content_type="image/png")])
    try:
        run(generate(provider, model_for(provider), request()))
    except BananaError:
        pass
    assert len(presets.hits("POST", PAID[provider])) == 1
