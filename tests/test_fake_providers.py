"""The loopback fakes behave like the providers: they refuse a wrong key, scheme, model id or missing
field with the provider's own error, and their jobs are queued, then running, then done."""

from __future__ import annotations

import httpx
import pytest

from banana_pack.providers import AuthError, CallContext, GenerationRequest, ImageInput, InvalidRequest, UpstreamUnavailable, generate
from banana_pack.providers.catalog import PRESETS
from fake_providers import PRESET_IDS, key_for, point_presets_at, script_all
from helpers import png_bytes, run

SPECS = {spec.id: spec for spec in PRESETS}
# One request per preset that the provider accepts: (method, path after the prefix, JSON body).
VALID = {
    "google": ("POST", "models/gemini-3-pro-image-preview:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}),
    "apiyi": ("POST", "models/gemini-2.5-flash-image:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}),
    "apiyi_chat": ("POST", "chat/completions", {"model": "gemini-2.5-flash-image", "messages": [{"role": "user", "content": "a cat"}]}),
    "openai_hk": ("POST", "images/generations", {"model": "nano-banana", "prompt": "a cat"}),
    "openai_hk_chat": ("POST", "chat/completions", {"model": "nano-banana-2-4k", "messages": [{"role": "user", "content": "a cat"}]}),
    "openai_hk_fal": ("POST", "fal-ai/nano-banana", {"prompt": "a cat"}),
    "fal": ("POST", "fal-ai/nano-banana-pro", {"prompt": "a cat", "resolution": "2K"}),
    "evolink": ("POST", "images/generations", {"model": "gemini-3.1-flash-image-preview", "prompt": "a cat"}),
    "apimaster": ("POST", "images/generations/async", {"model": "gemini-3.1-flash-image-preview", "prompt": "a cat", "size": "4:1"}),
    "vydra": ("POST", "models/nano-banana/edit", {"prompt": "a cat"}),
    "vertex_express": ("POST", "publishers/google/models/gemini-3-pro-image-preview:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}),
}
# Vertex with a service account is checked separately: its credential is a token the fake granted.
KEYED_PRESETS = [p for p in PRESET_IDS if p in VALID]
WRONG_MODEL = {
    "google": ("POST", "models/gemini-2.0-flash-exp:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}, 404, "NOT_FOUND"),
    "apiyi": ("POST", "models/nano-banana:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}, 503, "No available channel"),
    "apiyi_chat": ("POST", "chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "a cat"}]}, 503, "No available channel"),
    "openai_hk": ("POST", "images/generations", {"model": "gemini-2.5-flash-image", "prompt": "a cat"}, 503, "No available channel"),
    "openai_hk_chat": ("POST", "chat/completions", {"model": "nano-banana-pro", "messages": [{"role": "user", "content": "a cat"}]}, 503, "No available channel"),
    "openai_hk_fal": ("POST", "fal-ai/nano-banana-3", {"prompt": "a cat"}, 503, "No available channel"),
    "fal": ("POST", "fal-ai/nano-banana-3", {"prompt": "a cat"}, 404, "not found"),
    "evolink": ("POST", "images/generations", {"model": "nano-banana", "prompt": "a cat"}, 400, "Invalid model"),
    "apimaster": ("POST", "images/generations/async", {"model": "nano-banana-2", "prompt": "a cat"}, 400, "Unsupported model"),
    "vydra": ("POST", "models/nano-banana-pro/edit", {"prompt": "a cat"}, 404, "MODEL_NOT_FOUND"),
    "vertex_express": ("POST", "publishers/google/models/gemini-2.0-flash-exp:generateContent", {"contents": [{"parts": [{"text": "a cat"}]}]}, 404, "NOT_FOUND"),
}
# The body without its required prompt: the provider's own validation error.
MISSING_PROMPT = {
    "google": ({"contents": []}, 400, "INVALID_ARGUMENT"),
    "fal": ({"num_images": 1}, 422, '"missing"'),
    "vydra": ({"aspectRatio": "1:1"}, 400, "Missing required field: prompt"),
    "evolink": ({"model": "gemini-3.1-flash-image-preview"}, 400, "invalid_request_error"),
    "openai_hk": ({"model": "nano-banana"}, 400, "prompt is required"),
}


@pytest.fixture
def fakes(server, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    return script_all(server)


def auth_headers(preset: str, key: str | None = None, scheme: str | None = None) -> dict[str, str]:
    spec = SPECS[preset]
    key = key_for(spec.key_owner) if key is None else key
    scheme = scheme or spec.auth
    if scheme == "x-goog-api-key":
        return {"x-goog-api-key": key}
    return {"Authorization": f"{'Key' if scheme == 'key' else 'Bearer'} {key}"}


def call(fakes, preset: str, method: str, path: str, body, headers) -> httpx.Response:
    return httpx.request(method, f"{fakes.url}/{preset}/{path}", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("preset", KEYED_PRESETS)
def test_each_fake_accepts_its_providers_request(fakes, preset):
    method, path, body = VALID[preset]
    assert call(fakes, preset, method, path, body, auth_headers(preset)).status_code == 200


@pytest.mark.parametrize("preset", KEYED_PRESETS)
def test_each_fake_refuses_a_wrong_key_and_a_wrong_scheme_with_its_own_error(fakes, preset):
    method, path, body = VALID[preset]
    wrong_key = call(fakes, preset, method, path, body, auth_headers(preset, key="not-the-key-0000"))
    other_scheme = {"x-goog-api-key": "bearer", "bearer": "key", "key": "bearer"}[SPECS[preset].auth]
    wrong_scheme = call(fakes, preset, method, path, body, auth_headers(preset, scheme=other_scheme))
    no_key = call(fakes, preset, method, path, body, {})
    expected = {"google": 400, "vertex_express": 400, "vydra": 401}.get(preset, 401)  # Google answers a bad key with 400 API_KEY_INVALID
    assert wrong_key.status_code == wrong_scheme.status_code == no_key.status_code == expected
    assert wrong_key.json() == wrong_scheme.json()
    if preset == "google":
        assert wrong_key.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_vertex_fake_takes_only_the_token_its_endpoint_granted(fakes):
    path = "vertex/projects/sa-project/locations/us-central1/publishers/google/models/gemini-3-pro-image-preview:generateContent"
    body = {"contents": [{"parts": [{"text": "a cat"}]}]}
    granted = httpx.post(f"{fakes.url}/{path}", json=body, headers={"Authorization": f"Bearer {fakes.vertex_tokens.token}"}, timeout=10)
    other = httpx.post(f"{fakes.url}/{path}", json=body, headers={"Authorization": "Bearer ya29.someone-elses-token"}, timeout=10)
    assert granted.status_code == 200
    assert other.status_code == 400 and other.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_presets_of_one_reseller_share_one_key(fakes):
    """openai_hk_chat answers to openai_hk's key and refuses a key of its own name's shape."""
    method, path, body = VALID["openai_hk_chat"]
    assert call(fakes, "openai_hk_chat", method, path, body, {"Authorization": f"Bearer {key_for('openai_hk')}"}).status_code == 200
    assert call(fakes, "openai_hk_chat", method, path, body, {"Authorization": f"Bearer {key_for('openai_hk_chat')}"}).status_code == 401


@pytest.mark.parametrize("preset", KEYED_PRESETS)
def test_each_fake_refuses_an_unknown_model_id_the_way_its_provider_does(fakes, preset):
    method, path, body, status, words = WRONG_MODEL[preset]
    answer = call(fakes, preset, method, path, body, auth_headers(preset))
    assert answer.status_code == status and words in answer.text


@pytest.mark.parametrize("preset", sorted(MISSING_PROMPT))
def test_each_fake_refuses_a_missing_required_field(fakes, preset):
    method, path, _ = VALID[preset]
    body, status, words = MISSING_PROMPT[preset]
    answer = call(fakes, preset, method, path, body, auth_headers(preset))
    assert answer.status_code == status and words in answer.text


@pytest.mark.parametrize(
    "preset, path, body, words",
    [
        ("google", "models/gemini-2.5-flash-image:generateContent", {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"imageConfig": {"imageSize": "2K"}}}, "image_size"),
        ("google", "models/gemini-3-pro-image-preview:generateContent", {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"imageConfig": {"imageSize": "2k"}}}, "image_size"),
        ("google", "models/gemini-3-pro-image-preview:generateContent", {"contents": [{"parts": [{"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": "data:image/png;base64,AAAA"}}]}]}, "plain base64"),
        ("openai_hk", "images/generations", {"model": "nano-banana", "prompt": "x", "size": "16:9"}, "Invalid value"),
        ("fal", "fal-ai/nano-banana/edit", {"prompt": "x"}, "image_urls"),
        ("fal", "fal-ai/nano-banana", {"prompt": "x", "aspect_ratio": "auto"}, "aspect_ratio"),
        ("evolink", "images/generations", {"model": "gemini-3-pro-image-preview", "prompt": "x", "image_urls": ["data:image/png;base64,AAAA"]}, "downloadable"),
        ("vydra", "models/nano-banana/edit", {"prompt": "x", "imageUrl": "data:image/png;base64,AAAA"}, "imageUrl"),
    ],
)
def test_fakes_check_the_values_their_provider_documents(fakes, preset, path, body, words):
    answer = call(fakes, preset, "POST", path, body, auth_headers(preset))
    assert 400 <= answer.status_code < 500 and words in answer.text


@pytest.mark.parametrize("preset, status_path", [("fal", "status"), ("evolink", None), ("apimaster", None)])
def test_jobs_are_queued_then_running_for_the_configured_number_of_polls(server, monkeypatch, preset, status_path):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server, pending_polls=3, running_polls=2)
    statuses: list[str] = []
    result = run(generate(preset, "Nano Banana 2", GenerationRequest(prompt="a castle"), CallContext(on_status=statuses.append)))
    assert len(result.images) == 1
    polls = [r for r in server.requests if r.method == "GET" and ("/status" in r.path if status_path else "/tasks/" in r.path)]
    assert len(polls) == 3 + 2 + 1  # pending, running, then the poll that sees it done
    words = {"fal": ("In queue", "Generating"), "evolink": ("pending", "processing"), "apimaster": ("submitted", "in progress")}[preset]
    seen = " | ".join(statuses).lower()
    assert words[0].lower() in seen and words[1].lower() in seen and seen.index(words[0].lower()) < seen.index(words[1].lower())


def test_fal_result_asked_early_is_still_in_progress_and_cancel_stops_the_job(fakes):
    method, path, body = VALID["fal"]
    submitted = call(fakes, "fal", method, path, body, auth_headers("fal")).json()
    early = httpx.get(submitted["response_url"], headers=auth_headers("fal"))
    assert early.status_code == 400 and "in progress" in early.text
    cancel = httpx.put(submitted["cancel_url"], headers=auth_headers("fal"))
    assert cancel.status_code == 202 and cancel.json()["status"] == "CANCELLATION_REQUESTED"
    assert fakes.jobs[submitted["request_id"]].cancelled


@pytest.mark.parametrize("preset", PRESET_IDS)
def test_the_pack_passes_every_fakes_checks_with_references(server, monkeypatch, preset):
    """Text-to-image and an edit, through generate(): every fake accepts what the pack sends."""
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    offer = SPECS[preset].model("Nano Banana")
    refs = tuple(ImageInput(png_bytes(6, 4), "image/png", 6, 4) for _ in range(min(2, offer.max_refs)))
    ratio = "match input" if "match input" in offer.aspect_ratios else None  # the chat presets have no ratio control
    for images in ((), refs):
        result = run(generate(preset, "Nano Banana", GenerationRequest(prompt="a castle", images=images, aspect_ratio=ratio if images else None)))
        assert len(result.images) == 1


def test_the_pack_reports_the_fakes_own_errors_as_typed_errors(server, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    with pytest.raises(InvalidRequest, match="not found"):
        run(generate("google", "Nano Banana", GenerationRequest(prompt="a cat"), model_id_override="gemini-9-image"))
    with pytest.raises(UpstreamUnavailable, match="No available channel"):
        run(generate("openai_hk", "Nano Banana", GenerationRequest(prompt="a cat"), model_id_override="nano-banana-9"))
    monkeypatch.setenv("FAL_KEY", "x")  # BANANA_FAL_API_KEY (the right one) wins over FAL_KEY
    monkeypatch.setenv("BANANA_FAL_API_KEY", "fal-wrong-key")
    with pytest.raises(AuthError, match="Invalid key authorization header"):
        run(generate("fal", "Nano Banana", GenerationRequest(prompt="a cat")))
