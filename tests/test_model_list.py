"""Live model lists from each family that has one, cached with a time-to-live, and renamed ids."""

from __future__ import annotations

import pytest
from banana_pack.nodes.routes import models_summary
from banana_pack.providers import GenerationRequest, generate
from banana_pack.providers.model_list import forget_model_lists, list_models
from banana_pack.providers.vertex_auth import forget_tokens
from helpers import run
from loopback import Reply, fixture
from vertex_fake import TokenEndpoint, service_account_json

KEY = "AIzaTEST-models-key-0123456789"


@pytest.fixture(autouse=True)
def fresh():
    forget_model_lists()
    forget_tokens()
    yield
    forget_model_lists()
    forget_tokens()


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    page1 = {"models": [{"name": "models/gemini-2.5-flash"}, {"name": "models/gemini-3-pro-image-preview"}], "nextPageToken": "p/2+"}
    page2 = {"models": [{"name": "models/gemini-2.5-flash-image"}, {"name": "models/gemini-2.5-flash-image-preview"}]}
    server.route("GET", r"^/v1beta/models$", lambda req: Reply(json=page2 if "pageToken=p%2F2%2B" in req.query else page1))
    return server


def test_gemini_list_pages_and_marks_nano_banana_ids(google):
    result = run(list_models("google"))
    assert result["listed"] and result["error"] is None and not result["cached"]
    assert result["models"] == ["gemini-2.5-flash", "gemini-3-pro-image-preview", "gemini-2.5-flash-image", "gemini-2.5-flash-image-preview"]
    marks = {name: v["available"] for name, v in result["nano_banana"].items()}
    assert marks == {"Nano Banana": True, "Nano Banana Pro": True, "Nano Banana 2": False}
    assert result["renamed"] == {"gemini-2.5-flash-image-preview": "gemini-2.5-flash-image"}
    first, second = google.requests
    assert first.headers["x-goog-api-key"] == KEY and "pageSize=1000" in first.query and "pageToken=p%2F2%2B" in second.query


def test_the_list_is_cached_until_its_ttl_or_a_refresh(google, monkeypatch):
    run(list_models("google"))
    assert run(list_models("google"))["cached"] and len(google.requests) == 2
    run(list_models("google", refresh=True))
    assert len(google.requests) == 4
    monkeypatch.setenv("BANANA_MODEL_LIST_TTL", "0")
    run(list_models("google"))
    assert len(google.requests) == 6


def test_another_key_is_asked_again(google, monkeypatch):
    run(list_models("google"))
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY + "-other")
    assert not run(list_models("google"))["cached"]
    assert google.requests[-1].headers["x-goog-api-key"] == KEY + "-other"


def test_a_failed_lookup_is_reported_and_not_cached(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    server.route("GET", r"/models$", Reply(400, fixture("gemini/error_bad_key.json")))
    result = run(list_models("google"))
    assert not result["listed"] and "400" in result["error"] and KEY not in result["error"]
    server.route("GET", r"/models$", Reply(json={"models": [{"name": "models/gemini-3.1-flash-image-preview"}]}))
    assert run(list_models("google"))["nano_banana"]["Nano Banana 2"]["available"]


def test_openai_compatible_list(server, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", "hk-models-key-0123456789")
    monkeypatch.setenv("BANANA_OPENAI_HK_BASE_URL", server.url + "/v1")
    server.route("GET", r"^/v1/models$", Reply(json={"object": "list", "data": [{"id": "nano-banana-2-4k", "object": "model"}, {"id": "gpt-4o"}]}))
    result = run(list_models("openai_hk"))
    assert server.requests[0].headers["authorization"] == "Bearer hk-models-key-0123456789"
    marks = {name: v["available"] for name, v in result["nano_banana"].items()}
    assert marks == {"Nano Banana": False, "Nano Banana Pro": True, "Nano Banana 2": False}  # Pro's 4K id counts


def test_vertex_asks_model_by_model(server, monkeypatch, tmp_path):
    tokens = TokenEndpoint("ya29.models-token-0123456789")
    server.route("POST", r"^/token$", tokens)
    (tmp_path / "sa.json").write_text(service_account_json(f"{server.url}/token"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "sa.json"))
    monkeypatch.setenv("BANANA_VERTEX_BASE_URL", server.url + "/v1")
    server.route("GET", r"^/v1/publishers/google/models/gemini-", Reply(json={"name": "publishers/google/models/x"}))
    server.route("GET", r"^/v1/publishers/google/models/gemini-3\.1", Reply(404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}))
    result = run(list_models("vertex"))
    assert result["listed"] and {n: v["available"] for n, v in result["nano_banana"].items()} == {"Nano Banana": True, "Nano Banana Pro": True, "Nano Banana 2": False}
    gets = server.hits("GET", r"/publishers/")
    assert len(gets) == 3 and all(r.headers["authorization"] == "Bearer ya29.models-token-0123456789" for r in gets)


def test_families_without_a_list_say_so(server, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-key-0123456789")
    result = run(list_models("fal"))
    assert not result["listed"] and "no model list" in result["error"] and server.requests == []


def test_route_never_raises(server):
    result = run(models_summary("no_such_provider"))
    assert result["listed"] is False and "Unknown provider" in result["error"]
    missing = run(models_summary("google"))
    assert missing["listed"] is False and "No API key" in missing["error"]


def test_a_renamed_id_runs_as_its_successor_with_a_warning(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    server.route("POST", r":generateContent$", Reply(json=fixture("gemini/success_single.json")))
    result = run(generate("google", "Nano Banana", GenerationRequest(prompt="a cat"), model_id_override="gemini-2.5-flash-image-preview"))
    assert server.requests[0].path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    (warning,) = [w for w in result.warnings if "renamed" in w]
    assert "gemini-2.5-flash-image-preview" in warning and "gemini-2.5-flash-image was sent" in warning
