"""Broken configuration never removes the node, and says exactly what is wrong and where.

A providers.json with one trailing comma used to make the node's schema raise, and ComfyUI then
skipped the whole pack. Now the schema falls back to the built-in presets, a run raises a
ConfigError naming the file and line, and the frontend route answers JSON with an `error`.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from banana_pack.nodes import catalog_view, routes
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers import config
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.config import all_providers, api_key_for, get_provider, schema_providers
from banana_pack.providers.errors import ConfigError
from helpers import run

TRAILING_COMMA = '{\n  "settings": {\n    "google": {"concurrency": 2},\n  }\n}\n'


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")


def test_trailing_comma_keeps_the_schema_with_the_presets(isolated_config, caplog):
    write(isolated_config, "providers.json", TRAILING_COMMA)
    with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
        specs = schema_providers()
        caps = catalog_view.model_capabilities()
        badge = json.dumps(routes.catalog_answer())  # what the frontend's badge reads
    # What define_schema builds from: every preset and every stable model, as with no providers.json at all.
    assert [s.id for s in specs] == [s.id for s in PRESETS]
    assert set(caps) == {"Nano Banana", "Nano Banana Pro", "Nano Banana 2"} and caps["Nano Banana Pro"]["max_refs"] >= 14
    assert "google" in badge
    assert "providers.json" in caplog.text and "line 4" in caplog.text


def test_a_run_with_a_broken_providers_file_names_file_and_line(isolated_config, monkeypatch, tmp_path):
    write(isolated_config, "providers.json", TRAILING_COMMA)
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "config-test-key-123")
    inputs = RenderInputs(prompts=["a cat"], provider="google", model="Nano Banana Pro", resolution="1K")
    with pytest.raises(ConfigError) as info:
        run(render(inputs, store_root=tmp_path / "out"))
    text = str(info.value)
    assert "providers.json" in text and "line 4, column 3" in text and "trailing comma" in text
    assert str(isolated_config) not in text  # no absolute path in what reaches /history


@pytest.mark.parametrize("name", ["keys.json", "providers.json"])
def test_route_answers_json_with_an_error_field(isolated_config, monkeypatch, name):
    write(isolated_config, name, '{"google": "abc",}')
    monkeypatch.setenv("FAL_KEY", "fal-route-key-0001")
    answer = routes.catalog_answer()
    assert name in answer["error"] and "line 1" in answer["error"]
    assert [p["id"] for p in answer["providers"]][: len(PRESETS)] == [s.id for s in PRESETS]
    text = json.dumps(answer)
    assert str(isolated_config) not in text and "fal-route-key-0001" not in text
    assert answer["keys_file"] == "$BANANA_CONFIG_DIR/keys.json"
    fal = next(p for p in answer["providers"] if p["id"] == "fal")
    assert fal["has_key"] is True  # an environment key still counts with a broken keys.json


def test_route_never_raises(monkeypatch):
    def explode():
        raise RuntimeError("/home/someone/secret/place")

    monkeypatch.setattr(routes, "catalog_summary", explode)
    answer = routes.catalog_answer()
    assert answer["error"] and "/home/someone" not in json.dumps(answer)


def test_route_keeps_absolute_paths_out(isolated_config, tmp_path, monkeypatch):
    monkeypatch.delenv("BANANA_CONFIG_DIR")
    monkeypatch.setattr(config, "_comfy_user_dir", tmp_path / "ComfyUI" / "user")
    answer = routes.catalog_answer()
    assert answer["keys_file"] == "<ComfyUI>/user/nano_banana_bridge/keys.json" and "error" not in answer
    assert str(tmp_path) not in json.dumps(answer)


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    user, output = tmp_path / "ComfyUI" / "user", tmp_path / "ComfyUI" / "output"
    monkeypatch.setattr(config, "_comfy_user_dir", user)
    monkeypatch.setattr(config, "_comfy_served_dirs", (output,))
    return user, output


@pytest.mark.parametrize("inside", ["user/default", "user/default/nbb", "user/alice_1234", "output/keys"])
def test_config_folder_served_by_comfyui_is_refused(comfy_dirs, monkeypatch, inside):
    user, output = comfy_dirs
    folder = user.parent / inside
    write(folder, "keys.json", '{"google": "served-key-123456"}')
    monkeypatch.setenv("BANANA_CONFIG_DIR", str(folder))
    for action in (lambda: api_key_for(get_provider("google")), all_providers):
        with pytest.raises(ConfigError) as info:
            action()
        assert "serves" in str(info.value) and "served-key-123456" not in str(info.value)
    assert [s.id for s in schema_providers()] == [s.id for s in PRESETS]  # the node stays
    # Folders ComfyUI does not serve stay usable: the pack's own, a system user's, one outside ComfyUI.
    for fine in (user / "nano_banana_bridge", user / "__system_banana", user.parent.parent / "elsewhere"):
        write(fine, "keys.json", '{"google": "fine-key-123456"}')
        monkeypatch.setenv("BANANA_CONFIG_DIR", str(fine))
        assert api_key_for(get_provider("google")) == "fine-key-123456"


def test_plain_http_to_a_remote_host_is_warned_once(isolated_config, caplog):
    settings = {"settings": {"openai_hk": {"base_url": "http://gateway.example.invalid/v1"}, "google": {"base_url": "http://127.0.0.1:9/v1beta"}, "fal": {"base_url": "http://localhost:9"}}}
    write(isolated_config, "providers.json", json.dumps(settings))
    with caplog.at_level(logging.WARNING, logger="nano_banana_bridge"):
        all_providers()
        all_providers()
        schema_providers()
    warnings = [r.getMessage() for r in caplog.records if "http://" in r.getMessage()]
    assert len(warnings) == 1 and "gateway.example.invalid" in warnings[0] and "openai_hk" in warnings[0]


@pytest.mark.parametrize(
    "bad, part",
    [("fal-zw\u200bsecret-111", "secret-111"), ("fal-sp secret-222", "secret-222"), ("\u201cfal-secret-333\u201d", "fal-secret-333"), ("fal-nl-444\nsecret-444", "secret-444")],
)
def test_keys_that_are_not_printable_ascii_are_refused_at_load(isolated_config, monkeypatch, bad, part):
    write(isolated_config, "keys.json", json.dumps({"fal": bad}))
    with pytest.raises(ConfigError) as info:
        api_key_for(get_provider("fal"))
    text = str(info.value)
    assert "'fal'" in text and "$BANANA_CONFIG_DIR/keys.json" in text and part not in text
    monkeypatch.setenv("FAL_KEY", bad)
    with pytest.raises(ConfigError) as info:
        api_key_for(get_provider("fal"))
    assert "FAL_KEY" in str(info.value) and part not in str(info.value)


def test_nothing_is_sent_with_a_refused_key(server, isolated_config, monkeypatch, tmp_path):
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "AIza\u00e9-not-ascii-key")
    with pytest.raises(ConfigError):
        run(render(RenderInputs(prompts=["x"], provider="google", model="Nano Banana Pro", resolution="1K", images=[[torch.zeros(1, 4, 4, 3)]]), store_root=None))
    assert server.requests == []


GATEWAY = {"id": "gw", "protocol": "gemini", "base_url": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    "data",
    [
        {"providers": {"id": "gw"}},
        {"settings": ["google"]},
        {"settings": {"google": "fast"}},
        {"settings": {"google": {"options": [1, 2]}}},
        {"providers": [{**GATEWAY, "models": ["m"], "auth_hosts": 5}]},
    ],
    ids=["providers-not-list", "settings-not-object", "setting-not-object", "options-not-object", "auth-hosts-not-list"],
)
def test_values_of_the_wrong_type_are_config_errors_and_keep_the_node(isolated_config, data):
    write(isolated_config, "providers.json", json.dumps(data))
    with pytest.raises(ConfigError) as info:
        all_providers()
    assert "providers.json" in str(info.value)
    assert [s.id for s in schema_providers()] == [s.id for s in PRESETS]
    assert set(catalog_view.model_capabilities()) == {"Nano Banana", "Nano Banana Pro", "Nano Banana 2"}
    assert "error" in routes.catalog_answer()


def test_a_gateway_model_with_a_nonsense_limit_keeps_the_node(isolated_config):
    write(isolated_config, "providers.json", json.dumps({"providers": [{**GATEWAY, "models": [{"id": "m", "name": "Nano Banana Pro", "max_refs": "many"}]}]}))
    caps = catalog_view.model_capabilities()
    assert caps["Nano Banana Pro"]["max_refs"] == 14 and "google" in json.dumps(routes.catalog_answer())
