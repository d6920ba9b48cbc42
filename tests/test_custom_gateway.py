"""User-defined gateways from providers.json, one per synchronous family, end to end through generate()."""

from __future__ import annotations

import json

import pytest

from banana_pack.providers import ConfigError, GenerationRequest, ImageInput, InvalidRequest, MissingKey, generate
from banana_pack.providers.config import all_providers
from helpers import BLUE_PNG, YELLOW_PNG, YELLOW_PNG_B64, png_bytes, run
from loopback import Reply, fixture

KEYS = {"MYGEMINI": "AIza-custom-gemini-key-000", "MYIMAGES": "sk-custom-images-key-111", "MYCHAT": "sk-custom-chat-key-222"}
REF = ImageInput(YELLOW_PNG, "image/png", 1, 1)


def write(config_dir, data) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "providers.json").write_text(data if isinstance(data, str) else json.dumps(data))


def gateways(url: str) -> list[dict]:
    return [
        {
            "id": "mygemini",
            "display_name": "My Gemini proxy",
            "protocol": "gemini",
            "base_url": url + "/gem/v1beta",
            "auth": "x-goog-api-key",
            "models": ["gemini-3-pro-image-preview", {"id": "nb2-custom", "name": "Nano Banana 2", "max_refs": 2}],
        },
        {
            "id": "myimages",
            "display_name": "My images gateway",
            "protocol": "openai-images",
            "base_url": url + "/img/v1/",
            "auth": "bearer",
            "models": [{"id": "nano-banana-pro", "name": "Nano Banana Pro", "max_count": 4}, {"id": "flux-kontext", "name": "Kontext"}],
            # ai-nebula style: the ratio in `size` as "16:9", the tier in image_size, lower case here.
            "options": {"ratio_field": "size", "resolution_field": "image_size", "resolution_format": "lower", "response_format": "url"},
        },
        {
            "id": "mychat",
            "protocol": "openai-chat",
            "base_url": url + "/chat/v1",
            "models": ["gemini-3.1-flash-image-preview"],
            "options": {"size_controls": "extra_body_google"},
        },
    ]


@pytest.fixture
def custom(server, monkeypatch, isolated_config):
    write(isolated_config, {"providers": gateways(server.url)})
    for name, key in KEYS.items():
        monkeypatch.setenv(f"BANANA_{name}_API_KEY", key)
    return server


def gen(provider, model, **kw):
    return run(generate(provider, model, GenerationRequest(prompt=kw.pop("prompt", "a lighthouse"), **kw)))


def test_gemini_gateway_with_x_goog_api_key(custom):
    custom.route("POST", r"^/gem/v1beta/models/[^/]+:generateContent$", Reply(json=fixture("gemini/success_single.json")))
    result = gen("mygemini", "Nano Banana Pro", aspect_ratio="4:3", resolution="2K")
    assert [im.data for im in result.images] == [YELLOW_PNG] and result.provider == "mygemini"
    gen("mygemini", "Nano Banana 2", images=(REF,))
    first, second = custom.requests
    assert first.path == "/gem/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert second.path == "/gem/v1beta/models/nb2-custom:generateContent"
    assert first.headers["x-goog-api-key"] == KEYS["MYGEMINI"] and "authorization" not in first.headers
    assert first.json()["generationConfig"]["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "2K"}


def test_custom_model_keeps_its_own_reference_limit(custom):
    with pytest.raises(InvalidRequest) as info:
        gen("mygemini", "Nano Banana 2", images=(REF, REF, REF))
    assert "at most 2" in str(info.value) and custom.requests == []


def test_openai_images_gateway_text_to_image_with_its_field_names(custom):
    urls = [custom.url + "/cdn/1.png", custom.url + "/cdn/2.png"]
    custom.route("POST", r"^/img/v1/images/generations$", Reply(json={"created": 1, "data": [{"url": u} for u in urls]}))
    custom.route("GET", r"^/cdn/\d\.png$", Reply(body=png_bytes(16, 9), content_type="image/png"))
    result = gen("myimages", "Nano Banana Pro", aspect_ratio="16:9", resolution="2K", count=2)
    assert len(result.images) == 2 and result.warnings == []
    (post,) = custom.hits("POST", "generations")
    assert post.headers["authorization"] == f"Bearer {KEYS['MYIMAGES']}"
    assert post.json() == {"model": "nano-banana-pro", "prompt": "a lighthouse", "n": 2, "size": "16:9", "image_size": "2k", "response_format": "url"}


def test_openai_images_gateway_edit(custom):
    custom.route("POST", r"^/img/v1/images/edits$", Reply(json=fixture("openai_images/success_multi.json")))
    result = gen("myimages", "Nano Banana Pro", images=(REF, ImageInput(BLUE_PNG, "image/png", 1, 1)), count=2)
    assert [im.data for im in result.images] == [YELLOW_PNG, BLUE_PNG]
    (post,) = custom.requests
    assert post.headers["content-type"].startswith("multipart/form-data")
    assert post.body.count(b'name="image[]"') == 2 and post.body.count(b"Content-Type: image/png") == 2
    assert b'name="n"\r\n\r\n2\r\n' in post.body


def test_default_images_options_are_aspect_ratio_and_resolution(server, monkeypatch, isolated_config):
    write(isolated_config, {"providers": [{"id": "plain", "protocol": "openai-images", "base_url": server.url + "/plain", "models": ["gemini-3.1-flash-image-preview"]}]})
    monkeypatch.setenv("BANANA_PLAIN_API_KEY", "sk-plain-123456")
    server.route("POST", r"^/plain/images/generations$", Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("plain", "Nano Banana 2", aspect_ratio="1:8", resolution="0.5K")
    assert server.requests[0].json() == {
        "model": "gemini-3.1-flash-image-preview", "prompt": "a lighthouse", "n": 1, "aspect_ratio": "1:8", "resolution": "0.5K", "response_format": "b64_json",
    }


def test_unlisted_model_on_a_gateway_is_sent_with_relaxed_checks(custom):
    custom.route("POST", r"^/img/v1/images/generations$", Reply(json={"data": [{"b64_json": YELLOW_PNG_B64}]}))
    result = gen("myimages", "Kontext", aspect_ratio="21:9")
    assert result.model == "flux-kontext" and custom.requests[0].json()["size"] == "21:9"


def test_chat_gateway_with_default_bearer_and_extra_body(custom):
    custom.route("POST", r"^/chat/v1/chat/completions$", Reply(json=fixture("chat/success_images_multi.json")))
    result = gen("mychat", "Nano Banana 2", aspect_ratio="8:1", resolution="0.5K", images=(REF,))
    # Two images for the one asked: the first is used, the second dropped with a warning.
    assert [im.data for im in result.images] == [YELLOW_PNG] and any("returned 2 images for 1 asked" in w for w in result.warnings)
    (post,) = custom.requests
    assert post.headers["authorization"] == f"Bearer {KEYS['MYCHAT']}"
    body = post.json()
    assert body["model"] == "gemini-3.1-flash-image-preview" and body["extra_body"] == {"google": {"image_config": {"aspect_ratio": "8:1", "image_size": "0.5K"}}}
    assert body["messages"][-1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_gateway_key_from_the_keys_file_and_base_url_from_the_environment(server, monkeypatch, isolated_config):
    write(isolated_config, {"providers": gateways("https://unreachable.invalid")})
    (isolated_config / "keys.json").write_text(json.dumps({"mychat": "sk-from-keys-file-333"}))
    monkeypatch.setenv("BANANA_MYCHAT_BASE_URL", server.url + "/elsewhere")
    server.route("POST", r"^/elsewhere/chat/completions$", Reply(json=fixture("chat/success_markdown_datauri.json")))
    gen("mychat", "Nano Banana 2")
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-keys-file-333"


def test_missing_gateway_key_names_the_variable(custom, monkeypatch):
    monkeypatch.delenv("BANANA_MYIMAGES_API_KEY")
    with pytest.raises(MissingKey) as info:
        gen("myimages", "Nano Banana Pro")
    assert "BANANA_MYIMAGES_API_KEY" in str(info.value) and "My images gateway" in str(info.value)


def test_settings_override_presets_and_gateway_options(server, monkeypatch, isolated_config):
    settings = {"google": {"base_url": server.url + "/g/v1beta", "concurrency": 2}, "myimages": {"options": {"response_format": "b64_json", "send_n": False}}}
    write(isolated_config, {"providers": gateways(server.url), "settings": settings})
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "AIza-google-key-1234")
    monkeypatch.setenv("BANANA_MYIMAGES_API_KEY", KEYS["MYIMAGES"])
    specs = {s.id: s for s in all_providers()}
    assert specs["google"].concurrency == 2 and specs["myimages"].options["ratio_field"] == "size"
    server.route("POST", r"^/g/v1beta/models/", Reply(json=fixture("gemini/success_single.json")))
    server.route("POST", r"^/img/v1/images/generations$", Reply(json=fixture("openai_images/success_single_b64.json")))
    gen("google", "Nano Banana")
    gen("myimages", "Nano Banana Pro")
    assert server.requests[0].path == "/g/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert server.requests[1].json() == {"model": "nano-banana-pro", "prompt": "a lighthouse", "image_size": "1k", "response_format": "b64_json"}  # no n


def test_unknown_model_on_a_gateway_lists_its_models(custom):
    with pytest.raises(ConfigError) as info:
        gen("mychat", "Nano Banana Pro")
    assert "does not offer the model 'Nano Banana Pro'" in str(info.value) and "Nano Banana 2" in str(info.value)


# -- malformed providers.json: clear ConfigErrors ---------------------------------------------------


def entry(**changes):
    base = {"id": "bad", "protocol": "openai-images", "base_url": "https://example.invalid/v1", "models": ["gemini-2.5-flash-image"]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    "data, words",
    [
        ({"providers": [entry(protocol="openai-image")]}, ["unknown protocol", "openai-images", "openai-chat", "gemini", "fal-queue"]),
        ({"providers": [entry(base_url=None)]}, ["missing base_url", "Each entry needs id, protocol, base_url and models"]),
        ({"providers": [entry(protocol=None)]}, ["missing protocol"]),
        ({"providers": [entry(models=None)]}, ["missing models"]),
        ({"providers": [entry(auth="basic")]}, ["unknown auth 'basic'", "x-goog-api-key"]),
        ({"providers": [entry(id="google")]}, ["'google' is already taken"]),
        ('{"providers": [{"id": "bad",}]}', ["providers.json is not valid JSON: line 1, column", "JSON syntax"]),
        ('["not", "an", "object"]', ["must hold a JSON object"]),
    ],
    ids=["bad-protocol", "no-base-url", "no-protocol", "no-models", "bad-auth", "preset-id", "syntax", "not-an-object"],
)
def test_malformed_providers_file(server, monkeypatch, isolated_config, data, words):
    write(isolated_config, data)
    monkeypatch.setenv("BANANA_BAD_API_KEY", "sk-bad-123456")
    with pytest.raises(ConfigError) as info:
        gen("bad", "Nano Banana")
    assert all(word in str(info.value) for word in words), str(info.value)
    assert server.requests == []


@pytest.mark.parametrize(
    "data, words",
    [
        ({"providers": [entry(models=[{"name": "Nano Banana"}])]}, ["every model needs an 'id'"]),
        ({"providers": ["not an object"]}, ["must be a JSON object"]),
    ],
)
def test_malformed_model_entries_are_config_errors(server, monkeypatch, isolated_config, data, words):
    monkeypatch.setenv("BANANA_BAD_API_KEY", "sk-bad-123456")  # so a MissingKey (also a ConfigError) cannot pass for it
    write(isolated_config, data)
    with pytest.raises(ConfigError) as info:
        gen("bad", "Nano Banana")
    assert not isinstance(info.value, MissingKey)
    assert all(word in str(info.value) for word in words), str(info.value)
    assert server.requests == []


def test_the_same_entry_with_a_model_id_is_accepted(server, monkeypatch, isolated_config):
    """The control for the test above: the entry is valid once the model has its id."""
    monkeypatch.setenv("BANANA_BAD_API_KEY", "sk-bad-123456")
    server.route("POST", r"/images/generations$", Reply(json=fixture("openai_images/success_single_b64.json")))
    write(isolated_config, {"providers": [entry(base_url=server.url, models=[{"id": "nb-1", "name": "Nano Banana"}])]})
    result = gen("bad", "Nano Banana")
    assert len(result.images) == 1 and server.requests[0].json()["model"] == "nb-1"


@pytest.mark.parametrize(
    "protocol, options, words",
    [
        ("openai-chat", {"size_controls": "OpenRouter"}, ["'size_controls'", "openrouter, extra_body_google, none"]),
        ("openai-images", {"resolution_format": "pixels"}, ["'resolution_format'", "resolution_values"]),
        ("openai-images", {"extra_fields": "[1, 2]"}, ["'extra_fields'", "JSON object"]),
    ],
)
def test_bad_option_values_are_config_errors(server, monkeypatch, isolated_config, protocol, options, words):
    write(isolated_config, {"providers": [entry(protocol=protocol, base_url=server.url, models=["gemini-3-pro-image-preview"], options=options)]})
    monkeypatch.setenv("BANANA_BAD_API_KEY", "sk-bad-123456")
    with pytest.raises(ConfigError) as info:
        gen("bad", "Nano Banana Pro", resolution="2K")
    assert all(word in str(info.value) for word in words), str(info.value)
    assert server.requests == []
