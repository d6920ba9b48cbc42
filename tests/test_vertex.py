"""Vertex AI as a provider family: endpoints, the service-account token exchange (a key made in the
test, a token endpoint on loopback that verifies the signed assertion), express mode, refusals."""

from __future__ import annotations

import builtins
import json
import traceback
import uuid

import pytest
from banana_pack.providers import (
    AuthError,
    BananaError,
    ConfigError,
    GenerationRequest,
    SafetyRejected,
    generate,
)
from banana_pack.providers.config import get_provider
from banana_pack.providers.protocols.vertex import prepare
from gemini_thinking_fake import ThinkingGemini
from helpers import run
from loopback import Reply, fixture
from vertex_fake import GEN_PATH, TokenEndpoint, service_account_json

TOKEN = "ya29.loopback-access-token-0123456789"


pytestmark = pytest.mark.usefixtures("fresh_tokens")  # conftest.py: no access token outlives a test


@pytest.fixture
def vertex(server, monkeypatch, tmp_path):
    server.tokens = TokenEndpoint(TOKEN)
    server.route("POST", r"^/token$", server.tokens)
    key_file = tmp_path / "sa.json"
    key_file.write_text(service_account_json(f"{server.url}/token", project_id="sa-project"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("BANANA_VERTEX_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("BANANA_VERTEX_PROJECT", "my-project")
    monkeypatch.setenv("BANANA_VERTEX_LOCATION", "global")
    return server


def gen(provider="vertex", model="Nano Banana Pro", **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a lighthouse"), **kw)))


def test_service_account_token_then_global_endpoint(vertex):
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    result = gen()
    token_req, gen_req = vertex.requests
    assert token_req.path == "/token" and "authorization" not in token_req.headers
    (claims,) = vertex.tokens.claims
    assert claims["iss"] == "banana@sa-project.iam.gserviceaccount.com" and claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert gen_req.path == "/v1/projects/my-project/locations/global/publishers/google/models/gemini-3-pro-image-preview:generateContent"
    assert gen_req.headers["authorization"] == f"Bearer {TOKEN}" and "x-goog-api-key" not in gen_req.headers
    assert gen_req.json()["contents"][0]["parts"] == [{"text": "a lighthouse"}]
    assert len(result.images) == 1 and result.provider == "vertex"


def test_the_token_is_reused_until_it_expires(vertex):
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    gen()
    gen(model="Nano Banana 2")
    assert vertex.tokens.grants == 1 and len(vertex.hits("POST", GEN_PATH)) == 2


def test_project_falls_back_to_the_keys_project(vertex, monkeypatch):
    monkeypatch.delenv("BANANA_VERTEX_PROJECT")
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    gen()
    assert vertex.hits("POST", GEN_PATH)[0].path.startswith("/v1/projects/sa-project/locations/global/")


def test_regional_location_uses_the_regional_host():
    spec = get_provider("vertex")
    regional = prepare(type(spec)(**{**spec.__dict__, "options": {**spec.options, "location": "europe-west4"}}))
    assert regional.base_url == "https://europe-west4-aiplatform.googleapis.com/v1"
    assert prepare(spec).base_url == "https://aiplatform.googleapis.com/v1"  # global


@pytest.mark.parametrize("location", ["evil.example/x#", "us-central1.evil.example", "Us Central", "a/b"])
def test_a_location_that_is_not_a_region_name_never_becomes_a_host(location):
    """The location is spliced into the token's destination host: only a region name is accepted."""
    spec = get_provider("vertex")
    with pytest.raises(ConfigError, match="not a region name"):
        prepare(type(spec)(**{**spec.__dict__, "options": {**spec.options, "location": location}}))


def test_a_project_that_is_not_a_project_id_is_refused_before_sending(vertex, monkeypatch):
    monkeypatch.setenv("BANANA_VERTEX_PROJECT", "p/../../other")
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    with pytest.raises(ConfigError, match="not a project id"):
        gen(model="Nano Banana")
    assert not vertex.hits("POST", GEN_PATH)


def test_regional_path_on_a_configured_base_url(vertex, monkeypatch):
    monkeypatch.setenv("BANANA_VERTEX_LOCATION", "us-central1")
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    gen(model="Nano Banana")
    assert vertex.hits("POST", GEN_PATH)[0].path == "/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash-image:generateContent"


def test_refusals_read_as_on_the_gemini_api(vertex):
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/finish_image_safety.json")))
    with pytest.raises(SafetyRejected) as caught:
        gen()
    assert caught.value.reason == "IMAGE_SAFETY"


def test_generation_options_and_signatures_work_on_vertex(vertex):
    ThinkingGemini(vertex, GEN_PATH)
    result = gen(model="Nano Banana 2", thinking_level="HIGH", include_thoughts=True, safety=(("HARM_CATEGORY_HATE_SPEECH", "BLOCK_ONLY_HIGH"),))
    body = vertex.hits("POST", GEN_PATH)[0].json()
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH", "includeThoughts": True}
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}]
    assert result.thought_images and all(p.get("thought_signature") for p in result.model_parts)


def test_a_refused_key_is_an_auth_error_without_the_key(vertex):
    vertex.tokens.refuse = True
    with pytest.raises(AuthError) as caught:
        gen()
    text = str(caught.value) + (caught.value.hint or "")
    assert "banana@sa-project" in text and "PRIVATE KEY" not in text
    assert "invalid_grant: Invalid JWT Signature." in text  # the endpoint's code and its words (error_description)
    assert vertex.hits("POST", GEN_PATH) == []


def test_a_bad_credential_is_a_clear_config_error(vertex, monkeypatch, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"type": "authorized_user", "refresh_token": "secret-refresh-token-123"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="not a service-account key") as caught:
        gen()
    assert "secret-refresh-token" not in str(caught.value) and "GOOGLE_APPLICATION_CREDENTIALS" in caught.value.hint
    assert vertex.requests == []


def test_missing_google_auth_says_what_to_install(vertex, monkeypatch):
    real_import = builtins.__import__

    def no_google_auth(name, *args, **kwargs):
        if name.startswith("google.auth"):
            raise ImportError("No module named 'google.auth'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_google_auth)
    with pytest.raises(ConfigError, match="google-auth") as caught:
        gen()
    assert "pip install google-auth" in caught.value.hint and "vertex_express" in caught.value.hint
    assert vertex.requests == []


def test_express_mode_uses_the_api_key_and_no_project(server, monkeypatch):
    monkeypatch.setenv("BANANA_VERTEX_EXPRESS_API_KEY", "AQ.express-key-0123456789")
    monkeypatch.setenv("BANANA_VERTEX_EXPRESS_BASE_URL", server.url + "/v1")
    server.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    gen(provider="vertex_express")
    (req,) = server.requests
    assert req.path == "/v1/publishers/google/models/gemini-3-pro-image-preview:generateContent"
    assert req.headers["x-goog-api-key"] == "AQ.express-key-0123456789" and "authorization" not in req.headers


def test_no_project_anywhere_is_a_clear_error(vertex, monkeypatch, tmp_path):
    monkeypatch.delenv("BANANA_VERTEX_PROJECT")
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    info = json.loads(service_account_json(f"{vertex.url}/token"))
    del info["project_id"]
    (tmp_path / "noproj.json").write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "noproj.json"))
    with pytest.raises(ConfigError, match="No Google Cloud project") as caught:
        gen()
    assert "BANANA_VERTEX_PROJECT" in caught.value.hint
    assert vertex.hits("POST", GEN_PATH) == []


def test_the_key_test_button_exchanges_the_service_account_for_a_token(vertex):
    """The keys panel's Test goes through the same token exchange: the key file itself is never sent as a token."""
    from banana_pack.nodes.key_routes import try_key

    vertex.route("GET", r"/publishers/google/models/", Reply(json={"name": "publishers/google/models/gemini-2.5-flash-image"}))
    status, answer = run(try_key({"provider": "vertex"}))
    assert status == 200 and answer["ok"] is True
    (probe,) = vertex.hits("GET", r"/publishers/google/models/")
    assert probe.headers["authorization"] == f"Bearer {TOKEN}" and vertex.tokens.grants == 1
    assert "PRIVATE KEY" not in json.dumps([r.headers for r in vertex.requests])


def test_the_key_file_path_is_not_a_secret_but_its_private_key_is(vertex, tmp_path):
    """Redacting the path would hide every path sharing its prefix (the output folder included)."""
    from banana_pack.providers.redaction import redact

    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    gen()
    key_file = tmp_path / "sa.json"
    private_key = json.loads(key_file.read_text())["private_key"]
    assert redact(f"saved in {tmp_path}/output") == f"saved in {tmp_path}/output"
    assert "PRIVATE KEY" not in redact(f"oops: {private_key}")


# -- the assertion and the access token are secrets too -----------------------------------------------


class EchoingTokenEndpoint:
    """A token endpoint (or a gateway in front of one) that echoes the form it was sent in its error."""

    def __init__(self, status: int, shape: str) -> None:
        self.status, self.shape, self.sent = status, shape, []

    def __call__(self, req):
        from urllib.parse import parse_qs

        assertion = parse_qs(req.body.decode())["assertion"][0]
        self.sent.append(assertion)
        said = f"Bad request: grant_type=jwt-bearer&assertion={assertion}"
        if self.shape == "text":
            return Reply(self.status, body=said.encode(), content_type="text/plain")
        if self.shape == "oauth":  # RFC 6749's error answer, as Google's token endpoint writes it
            return Reply(self.status, {"error": "invalid_grant", "error_description": said})
        return Reply(self.status, {"error": {"code": self.status, "message": said, "status": "INVALID_ARGUMENT"}})


@pytest.mark.parametrize("status", [400, 501])  # the AuthError it becomes, and the engine's own error
@pytest.mark.parametrize("shape", ["text", "google", "oauth"])
def test_a_token_endpoint_echoing_the_signed_assertion_does_not_show_it(vertex, status, shape, caplog):
    """The assertion is a bearer credential for an hour: whoever holds it gets access tokens for the account."""
    endpoint = EchoingTokenEndpoint(status, shape)
    vertex.route("POST", r"^/token$", endpoint)
    with pytest.raises(BananaError) as caught:
        gen()
    (assertion,) = set(endpoint.sent)
    signature = assertion.rsplit(".", 1)[1]
    shown = "\n".join([str(caught.value), repr(caught.value), "".join(traceback.format_exception(caught.value))] + [r.getMessage() for r in caplog.records])
    assert "Bad request" in str(caught.value)  # the endpoint's words are shown...
    assert signature[:8] not in shown and signature[-8:] not in shown and signature[100:120] not in shown  # ...without the signature


def test_a_token_answer_that_is_not_json_never_shows_the_access_token(vertex):
    """Some OAuth servers answer form-encoded: the "expected JSON" error quoted the body, token and all."""
    vertex.route("POST", r"^/token$", Reply(200, body=f"access_token={TOKEN}&expires_in=3599&token_type=Bearer".encode(), content_type="application/x-www-form-urlencoded"))
    with pytest.raises(BananaError) as caught:
        gen()
    text = str(caught.value)
    assert "token endpoint" in text and "JSON" in text
    assert "loopback-access-token" not in text and "loopback-access-token" not in "".join(traceback.format_exception(caught.value))
    assert vertex.hits("POST", GEN_PATH) == []


class ShortLivedTokens(TokenEndpoint):
    """Hands out a new token per grant, already expired (past redaction's grace): every call gets a new one."""

    def __call__(self, req):
        reply = super().__call__(req)
        if reply.status != 200:
            return reply
        self.handed_out.append(f"ya29.{uuid.uuid4().hex}{uuid.uuid4().hex}")
        return Reply(json={"access_token": self.handed_out[-1], "expires_in": -1000, "token_type": "Bearer"})


def test_expired_tokens_leave_the_redaction_search_live_ones_and_keys_stay(vertex):
    """A service account gets a new token and a new signed assertion every hour: registered forever,
    they made every redaction (every log line) slower all day long. An expired one is dropped when the
    next secret is registered; the live ones, and keys, stay."""
    from banana_pack.providers.redaction import MARKER, redact, register_secret

    tokens = ShortLivedTokens()
    tokens.handed_out = []
    vertex.route("POST", r"^/token$", tokens)
    vertex.route("POST", GEN_PATH, Reply(json=fixture("gemini/success_single.json")))
    key = "AIza-permanent-key-also-seen-as-a-token-42"
    register_secret(key)
    register_secret(key, expires_at=0)  # the same text later registered as expiring: a key stays a key
    for _ in range(3):
        gen()
    first, second, last = tokens.handed_out
    assert redact(f"old: {first} {second}") == f"old: {first} {second}"  # expired, dropped
    assert redact(f"live: {last}") == f"live: {MARKER}"  # the newest stays until the next registration
    assert redact(key) == MARKER
    signatures = [r.body.decode().rsplit(".", 1)[1] for r in vertex.hits("POST", r"^/token$")]
    assert len(signatures) == 3 and all(redact(s) == MARKER for s in signatures)  # assertions live an hour
