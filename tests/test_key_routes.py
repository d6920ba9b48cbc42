"""Keys from the UI: write-only, loopback-only by default, never echoed, mode 600; the Test call."""

from __future__ import annotations

import json
import stat

import pytest

from banana_pack.nodes.key_routes import key_status, refuse_cross_origin, refuse_write, set_key, try_key
from banana_pack.providers.config import has_key, get_provider
from helpers import run
from loopback import Reply, fixture

JSON = {"Content-Type": "application/json", "Host": "127.0.0.1:8188"}
SECRET = "AIzaSyTEST-ui-key-0123456789abcdef"


def keys_file(config_dir):
    return config_dir / "keys.json"


def test_setting_a_key_writes_keys_json_mode_600_and_never_echoes_it(isolated_config):
    status, body = set_key({"provider": "google", "key": SECRET})
    assert status == 200 and body["owner"]["source"] == "file"
    assert SECRET not in json.dumps(body) and SECRET not in json.dumps(key_status())
    path = keys_file(isolated_config)
    assert json.loads(path.read_text()) == {"google": SECRET}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert has_key(get_provider("google"))  # used at once, no restart
    assert not [p for p in isolated_config.iterdir() if p.name.endswith(".tmp")]


def test_other_entries_survive_and_clearing_removes_only_one(isolated_config):
    keys_file(isolated_config).parent.mkdir(parents=True, exist_ok=True)
    keys_file(isolated_config).write_text(json.dumps({"fal": "fal-id:fal-secret", "note": 3}))
    set_key({"provider": "google", "key": SECRET})
    status, body = set_key({"provider": "google", "key": ""})
    assert status == 200 and body["message"].startswith("Cleared") and body["owner"]["source"] is None
    assert json.loads(keys_file(isolated_config).read_text()) == {"fal": "fal-id:fal-secret", "note": 3}


def test_environment_key_wins_and_the_status_says_so(isolated_config, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaENV-key-000000000000000")
    status, body = set_key({"provider": "google", "key": SECRET})
    assert status == 200 and "GEMINI_API_KEY is set in the environment" in body["message"]
    google = next(o for o in key_status()["owners"] if o["owner"] == "google")
    assert google["source"] == "env" and google["env_name"] == "GEMINI_API_KEY" and google["in_file"] is True
    assert "AIzaENV" not in json.dumps(key_status())


def test_presets_sharing_a_key_are_one_entry():
    owners = {o["owner"]: [p["id"] for p in o["providers"]] for o in key_status()["owners"]}
    assert owners["openai_hk"] == ["openai_hk", "openai_hk_chat", "openai_hk_fal"] and "openai_hk_chat" not in owners


@pytest.mark.parametrize(
    "body,says",
    [
        ({"provider": "nobody", "key": "x" * 20}, "Unknown provider"),
        ({"provider": "google", "key": "two words"}, "plain ASCII"),
        ({"provider": "google", "key": "k" * 5000}, "at most 4096"),
        ({"provider": "google", "key": 42}, "must be text"),
        (["google"], "Send"),
    ],
)
def test_bad_writes_are_refused_and_change_nothing(isolated_config, body, says):
    status, answer = set_key(body)
    assert status == 400 and says in answer["error"]
    assert not keys_file(isolated_config).exists()


def test_a_broken_keys_file_is_not_overwritten(isolated_config):
    keys_file(isolated_config).parent.mkdir(parents=True, exist_ok=True)
    keys_file(isolated_config).write_text('{"google": "AIza-half-written",')
    status, answer = set_key({"provider": "fal", "key": "fal-id:fal-secret"})
    assert status == 409 and "AIza-half-written" not in json.dumps(answer)
    assert keys_file(isolated_config).read_text() == '{"google": "AIza-half-written",'


@pytest.mark.parametrize("remote", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_may_write(remote):
    assert refuse_write(remote, JSON) is None


@pytest.mark.parametrize("remote", ["192.168.1.20", "10.0.0.5", "2001:db8::1", None, "not-an-ip"])
def test_remote_clients_may_not_write_unless_allowed(remote, monkeypatch):
    status, body = refuse_write(remote, JSON)
    assert status == 403 and "BANANA_ALLOW_REMOTE_KEY_WRITES" in body["error"]
    monkeypatch.setenv("BANANA_ALLOW_REMOTE_KEY_WRITES", "1")
    assert refuse_write(remote, JSON) is None


@pytest.mark.parametrize("host", ["127.0.0.1:8188", "localhost:8188", "LOCALHOST", "[::1]:8188", "127.0.0.2", "comfy.localhost:8188", "0.0.0.0:8188"])
def test_a_loopback_request_naming_this_machine_may_write(host):
    assert refuse_write("127.0.0.1", {**JSON, "Host": host, "Origin": f"http://{host}"}) is None


@pytest.mark.parametrize("host", ["evil.example:8188", "192.168.1.20:8188", "127.0.0.1.evil.example", "localhost.evil.example", "", None])
def test_dns_rebinding_is_refused_even_from_loopback_as_the_same_origin(host, monkeypatch):
    """A page on evil.example whose name was re-pointed at 127.0.0.1: loopback peer, Origin == Host."""
    headers = {"Content-Type": "application/json", **({"Host": host, "Origin": f"http://{host}"} if host is not None else {})}
    status, body = refuse_write("127.0.0.1", headers)
    assert status == 403 and "localhost or loopback" in body["error"]
    monkeypatch.setenv("BANANA_ALLOW_REMOTE_KEY_WRITES", "1")  # the documented way behind a reverse proxy
    assert refuse_write("127.0.0.1", headers) is None


def test_cross_site_and_non_json_requests_are_refused():
    assert refuse_write("127.0.0.1", {**JSON, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert refuse_write("127.0.0.1", {**JSON, "Origin": "https://evil.example"})[0] == 403
    assert refuse_write("127.0.0.1", {**JSON, "Origin": "http://127.0.0.1:8188"}) is None
    assert refuse_write("127.0.0.1", {**JSON, "Content-Type": "application/x-www-form-urlencoded"})[0] == 415


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({"Host": "127.0.0.1:8188"}, False),  # the pack's own panel: a same-origin read has no Origin
        ({"Host": "127.0.0.1:8188", "Origin": "http://127.0.0.1:8188", "Sec-Fetch-Site": "same-origin"}, False),
        ({"Host": "gpu-box:8188"}, False),  # ComfyUI on the LAN, read by its own page
        ({"Host": "127.0.0.1:8188", "Origin": "https://attacker.example", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Host": "127.0.0.1:8188", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Host": "localhost:8188", "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, True),
        ({"Host": "127.0.0.1:8188", "Origin": "null"}, True),  # a sandboxed frame
    ],
)
def test_reads_are_refused_to_another_site_or_origin(headers, refused):
    """Every GET of the pack goes through refuse_cross_origin: ComfyUI started with --enable-cors-header
    lets any site read any answer (tests/integration/test_redteam_keys_live.py runs it in ComfyUI)."""
    answer = refuse_cross_origin(headers)
    assert (answer is not None and answer[0] == 403) if refused else answer is None, answer


def test_the_status_route_never_carries_a_key(isolated_config, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "fal-env-id:fal-env-secret")
    set_key({"provider": "google", "key": SECRET})
    text = json.dumps(key_status())
    assert SECRET not in text and "fal-env-secret" not in text


# -- the Test button: the cheapest authenticated call, through the engine, against a loopback fake --


@pytest.fixture
def google(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    return server


def test_the_test_button_lists_models_with_the_key_and_shows_the_answer(google):
    google.route("GET", r"/v1beta/models", Reply(json={"models": [{"name": "models/gemini-3-pro-image-preview"}]}))
    set_key({"provider": "google", "key": SECRET})
    status, answer = run(try_key({"provider": "google"}))
    assert status == 200 and answer["ok"] is True and answer["status"] == 200
    assert "gemini-3-pro-image-preview" in answer["answer"] and SECRET not in json.dumps(answer)
    (hit,) = google.hits("GET", r"/v1beta/models")
    assert hit.headers.get("x-goog-api-key") == SECRET and "pageSize=1" in hit.query


def test_a_rejected_key_shows_the_providers_own_words_without_the_key(google):
    google.route("GET", r"/v1beta/models", Reply(status=400, json=fixture("gemini/error_bad_key.json")))
    set_key({"provider": "google", "key": SECRET})
    status, answer = run(try_key({"provider": "google"}))
    assert status == 200 and answer["ok"] is False and answer["status"] == 400
    said = fixture("gemini/error_bad_key.json")["error"]["message"]
    assert said[:30] in answer["answer"] and SECRET not in answer["answer"]


def test_testing_without_a_key_says_where_to_put_one(google):
    status, answer = run(try_key({"provider": "google"}))
    assert answer["ok"] is False and "No API key" in answer["answer"] and not google.hits("GET", r"/models")


def test_fal_is_tested_with_a_made_up_status_request(server, monkeypatch):
    monkeypatch.setenv("BANANA_FAL_BASE_URL", server.url)
    monkeypatch.setenv("FAL_KEY", "fal-id:fal-secret-123")
    server.route("GET", r"/requests/.*/status$", Reply(status=404, json={"detail": "Request not found"}))
    status, answer = run(try_key({"provider": "fal"}))
    assert answer["ok"] is True and answer["status"] == 404 and "Request not found" in answer["answer"]
    (hit,) = server.hits("GET", r"/status$")
    assert hit.headers.get("authorization") == "Key fal-id:fal-secret-123"


def test_unknown_provider_is_a_clear_error():
    status, answer = run(try_key({"provider": "nope"}))
    assert status == 400 and "Unknown provider" in answer["error"]


def test_a_broken_providers_file_still_lists_the_presets_and_paths_are_not_absolute(isolated_config):
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "providers.json").write_text("{ not json")
    status = key_status()
    assert {o["owner"] for o in status["owners"]} >= {"google", "fal"}
    assert not status["keys_file"].startswith("/")
    assert set_key({"provider": "google", "key": SECRET})[0] == 200
