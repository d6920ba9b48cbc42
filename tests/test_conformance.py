"""The providers' own Python clients are the reference for what a request and an answer look like.

For each protocol family the pack and the official client (google-genai, openai, fal-client) send the
same parameters to the same loopback fakes (tests/fake_providers.py); the requests are compared: URL
path, auth scheme and key, body fields and values. Differences that are intended are listed, with the
reason, in INTENDED_* below and removed by name before the comparison, so any other difference fails.
Every fixture the tests serve for Gemini, OpenAI Images and chat is parsed by that client's own types
(and served through the client itself), so a fixture the real client would reject cannot exist.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
from typing import Any

import fal_client
import fal_client.client
import openai
import pydantic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from openai.types import ImagesResponse
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

from banana_pack.nodes.batch import BatchSettings, expand_items, run_batch
from banana_pack.providers import CallContext, Cancelled, GenerationRequest, ImageInput, generate
from fake_providers import key_for, point_presets_at, script_all
from helpers import png_bytes, run
from loopback import FIXTURES, Recorded, Reply, fixture

PROMPT = "Put the cat from image 1 on the sofa from image 2"
REF_A, REF_B = png_bytes(6, 4, (200, 30, 30)), png_bytes(4, 6, (30, 30, 200))
REFS = (ImageInput(REF_A, "image/png", 6, 4), ImageInput(REF_B, "image/png", 4, 6))


@pytest.fixture
def fakes(server, monkeypatch):
    point_presets_at(server, monkeypatch.setenv)
    return script_all(server)


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def camel_keys(value: Any) -> Any:
    """Proto-JSON field names in one spelling: Google's parser accepts snake_case and camelCase alike."""
    if isinstance(value, dict):
        return {camel(k): camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


def inline_bytes(value: Any) -> Any:
    """inlineData.data as bytes: the pack writes standard base64, google-genai (pydantic) the URL-safe alphabet;
    proto JSON reads both, so the bytes are what must match."""
    if isinstance(value, dict):
        return {k: (base64.urlsafe_b64decode(v.replace("+", "-").replace("/", "_")) if k == "data" and "mimeType" in value else inline_bytes(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [inline_bytes(v) for v in value]
    return value


def same_gemini_body(body: dict[str, Any]) -> Any:
    return inline_bytes(camel_keys(body))


def drop(body: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """The body without the dotted paths listed as intended differences (a missing path is an error)."""
    body = json.loads(json.dumps(body))
    for path in paths:
        *parents, leaf = path.split(".")
        node = body
        for name in parents:
            node = node[int(name)] if isinstance(node, list) else node[name]
        del node[leaf]
    return body


def only(requests: list[Recorded], method: str, pattern: str) -> Recorded:
    (found,) = [r for r in requests if r.method == method and re.search(pattern, r.path)]
    return found


# -- Gemini generateContent: the pack against google-genai --------------------------------------------

# Differences between the pack's Gemini request and google-genai's, and why they are intended.
INTENDED_GEMINI = {
    "systemInstruction.role": "google-genai tags the system instruction with role 'user'; the REST docs omit it and the API ignores it there",
}
INTENDED_GEMINI_COUNT = (
    "count: Gemini's image models take one candidate (candidateCount is 1 on 3 Pro Image), so count N runs N calls "
    "with seed, seed+1, ... instead of candidateCount N"
)


def genai_client(server) -> genai.Client:
    # google-genai takes a base URL and an API version: the loopback's http URL works as is.
    return genai.Client(api_key=key_for("google"), http_options=genai_types.HttpOptions(base_url=f"{server.url}/google", api_version="v1beta"))


def genai_generate(server, seed: int) -> Recorded:
    before = len(server.requests)
    client = genai_client(server)  # held: a collected Client closes its HTTP client
    client.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents=[PROMPT, genai_types.Part.from_bytes(data=REF_A, mime_type="image/png"), genai_types.Part.from_bytes(data=REF_B, mime_type="image/png")],
        config=genai_types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=genai_types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
            seed=seed,
            temperature=0.7,
            system_instruction="Photorealistic, soft light.",
            tools=[genai_types.Tool(google_search=genai_types.GoogleSearch())],
        ),
    )
    (request,) = server.requests[before:]
    return request


def test_gemini_request_matches_google_genai(fakes, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"{fakes.url}/google/v1beta")  # where google-genai puts its version
    settings = BatchSettings(provider="google", model="Nano Banana Pro", aspect_ratio="16:9", resolution="2K", temperature=0.7, system_prompt="Photorealistic, soft light.", web_search=True)
    items = expand_items([PROMPT], list(REFS), count=2, seed=42)
    outcomes = run(run_batch(items, settings, store=None))
    assert [o.status for o in outcomes] == ["ok", "ok"]
    ours = sorted(fakes.server.hits("POST", ":generateContent$"), key=lambda r: r.json()["generationConfig"]["seed"])
    assert len(ours) == 2, INTENDED_GEMINI_COUNT
    for pack, seed in zip(ours, (42, 43)):
        official = genai_generate(fakes.server, seed)
        assert pack.path == official.path == "/google/v1beta/models/gemini-3-pro-image-preview:generateContent"
        assert pack.headers["x-goog-api-key"] == official.headers["x-goog-api-key"] == key_for("google")
        assert "authorization" not in pack.headers and "authorization" not in official.headers
        assert same_gemini_body(pack.json()) == same_gemini_body(drop(camel_keys(official.json()), INTENDED_GEMINI))


def test_gemini_text_to_image_defaults_match_google_genai(fakes, monkeypatch):
    """No optional parameter set: the pack adds nothing google-genai would not send."""
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"{fakes.url}/google/v1beta")
    run(generate("google", "Nano Banana", GenerationRequest(prompt="a banana")))
    client = genai_client(fakes.server)
    client.models.generate_content(
        model="gemini-2.5-flash-image", contents="a banana", config=genai_types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"])
    )
    pack, official = fakes.server.requests
    assert pack.path == official.path
    assert same_gemini_body(pack.json()) == same_gemini_body(official.json())


def test_pack_and_google_genai_read_the_fakes_answer_alike(fakes, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"{fakes.url}/google/v1beta")
    ours = run(generate("google", "Nano Banana Pro", GenerationRequest(prompt=PROMPT, images=REFS)))
    client = genai_client(fakes.server)
    theirs = client.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents=[PROMPT, genai_types.Part.from_bytes(data=REF_A, mime_type="image/png"), genai_types.Part.from_bytes(data=REF_B, mime_type="image/png")],
    )
    official_images = [part.inline_data.data for part in theirs.candidates[0].content.parts if part.inline_data and not part.thought]
    assert [im.data for im in ours.images] == official_images
    assert ours.usage["candidatesTokenCount"] == theirs.usage_metadata.candidates_token_count


# -- OpenAI Images: the pack (openai_hk) against openai --------------------------------------------

INTENDED_OPENAI_IMAGES = {
    "filename": "multipart file names are arbitrary (the pack writes reference-<n>.<ext>)",
    "seed, system prompt, web search": "OpenAI Images has no such fields: the pack warns and does not send them",
    "resolution": "openai-hk puts the tier in the model id (nano-banana-2-2k), so no resolution field is sent",
}


def openai_client(server, prefix: str, key_owner: str, version: str = "") -> openai.OpenAI:
    # openai takes any base URL: the loopback's http URL works as is.
    return openai.OpenAI(api_key=key_for(key_owner), base_url=f"{server.url}/{prefix}{version}", max_retries=0)


def form(request: Recorded) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """Fields and (name, content type, bytes) files of a multipart body, via the email parser."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + request.body)
    fields, files = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is None:
            fields[name] = part.get_content().strip() if isinstance(part.get_content(), str) else part.get_payload(decode=True).decode()
        else:
            files.append((name, part.get_content_type(), part.get_payload(decode=True)))
    return fields, files


def test_openai_images_generation_matches_openai(fakes):
    run(generate("openai_hk", "Nano Banana Pro", GenerationRequest(prompt=PROMPT, aspect_ratio="16:9", resolution="2K", seed=42)))
    openai_client(fakes.server, "openai_hk", "openai_hk").images.generate(model="nano-banana-2-2k", prompt=PROMPT, n=1, size="16x9", response_format="b64_json")
    pack, official = fakes.server.requests
    assert pack.path == official.path == "/openai_hk/images/generations"
    assert pack.headers["authorization"] == official.headers["authorization"] == f"Bearer {key_for('openai_hk')}"
    assert pack.json() == official.json()


def test_openai_images_edit_matches_openai(fakes):
    run(generate("openai_hk", "Nano Banana 2", GenerationRequest(prompt=PROMPT, images=REFS, aspect_ratio="3:2", resolution="4K")))
    openai_client(fakes.server, "openai_hk", "openai_hk").images.edit(
        model="gemini-3.1-flash-image-preview-4k", prompt=PROMPT, image=[("a.png", REF_A, "image/png"), ("b.png", REF_B, "image/png")], n=1, size="3x2", response_format="b64_json"
    )
    edits = fakes.server.hits("POST", r"/images/edits$")
    pack, official = edits
    assert pack.path == official.path and pack.headers["authorization"] == official.headers["authorization"]
    assert pack.headers["content-type"].startswith("multipart/form-data") and official.headers["content-type"].startswith("multipart/form-data")
    (pack_fields, pack_files), (official_fields, official_files) = form(pack), form(official)
    assert pack_fields == official_fields
    assert pack_files == official_files  # same part names (image[]), types and bytes, in order; file names differ (intended)


# -- chat completions: the pack against openai -------------------------------------------------------

INTENDED_CHAT = {
    "web search": "chat completions have no search field: the pack warns and does not send it",
    "modalities": "'image' is the image gateways' (OpenRouter's) extension; openai's typed params allow only text and audio",
}


def chat_gateway(config_dir: pathlib.Path, server, monkeypatch) -> None:
    """A custom openai-chat gateway with OpenRouter-style size controls, answering like OpenRouter."""
    config_dir.mkdir(parents=True, exist_ok=True)
    entry = {"id": "router", "protocol": "openai-chat", "base_url": f"{server.url}/router/api/v1", "auth": "bearer", "models": ["gemini-3-pro-image-preview"], "options": {"size_controls": "openrouter"}}
    (config_dir / "providers.json").write_text(json.dumps({"providers": [entry]}))
    monkeypatch.setenv("BANANA_ROUTER_API_KEY", key_for("router"))
    server.route("POST", r"^/router/api/v1/chat/completions$", Reply(json=fixture("chat/success_images_field.json")))


def test_chat_request_matches_openai(fakes, isolated_config, monkeypatch):
    chat_gateway(isolated_config, fakes.server, monkeypatch)
    run(generate("router", "Nano Banana Pro", GenerationRequest(prompt=PROMPT, images=REFS, aspect_ratio="16:9", resolution="2K", seed=42, temperature=0.7, system_prompt="Photorealistic, soft light.")))
    data_uris = [f"data:image/png;base64,{base64.b64encode(ref).decode()}" for ref in (REF_A, REF_B)]
    openai_client(fakes.server, "router", "router", "/api/v1").chat.completions.create(
        model="gemini-3-pro-image-preview",
        messages=[
            {"role": "system", "content": "Photorealistic, soft light."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}, *({"type": "image_url", "image_url": {"url": uri}} for uri in data_uris)]},
        ],
        stream=False,
        modalities=["image", "text"],  # type: ignore[list-item]  # OpenRouter's image modality
        seed=42,
        temperature=0.7,
        extra_body={"image_config": {"aspect_ratio": "16:9", "image_size": "2K"}},
    )
    pack, official = fakes.server.hits("POST", r"/chat/completions$")
    assert pack.path == official.path and pack.headers["authorization"] == official.headers["authorization"] == f"Bearer {key_for('router')}"
    assert pack.json() == official.json()


def test_chat_preset_without_size_controls_matches_openai(fakes):
    """APIYI's compat mode: no size fields, no sampling fields (its catalog entry), the key is APIYI's."""
    run(generate("apiyi_chat", "Nano Banana", GenerationRequest(prompt="a banana")))
    openai_client(fakes.server, "apiyi_chat", "apiyi").chat.completions.create(
        model="gemini-2.5-flash-image", messages=[{"role": "user", "content": [{"type": "text", "text": "a banana"}]}], stream=False, modalities=["image", "text"]  # type: ignore[list-item]
    )
    pack, official = fakes.server.requests
    assert pack.path == official.path and pack.headers["authorization"] == official.headers["authorization"]
    assert pack.json() == official.json()


# -- the fal queue: the pack against fal-client ------------------------------------------------------

INTENDED_FAL = {
    "status query": "the pack polls status with ?logs=1 (fal's queue docs); fal-client sends ?logs=true; fal reads both",
    "system prompt, temperature": "fal's Nano Banana endpoints have no such inputs: the pack warns and does not send them",
}


@pytest.fixture
def fal(fakes, monkeypatch):
    # fal-client builds queue URLs from the constant QUEUE_URL_FORMAT ("https://" + FAL_QUEUE_RUN_HOST + "/", the
    # host read from the environment at import), so the test points that constant at the loopback fake.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{fakes.url}/fal/")
    return fal_client.SyncClient(key=key_for("fal"))


def test_fal_submit_status_result_match_fal_client(fakes, fal):
    result = run(generate("fal", "Nano Banana 2", GenerationRequest(prompt=PROMPT, images=REFS, aspect_ratio="16:9", resolution="2K", seed=42, web_search=True, count=2)))
    assert len(result.images) == 2
    pack_requests = list(fakes.server.requests)
    fakes.server.requests.clear()
    # fal's input schema for fal-ai/nano-banana-2/edit, written from its model page, with the same parameters.
    arguments = {
        "prompt": PROMPT,
        "num_images": 2,
        "output_format": "png",
        "seed": 42,
        "aspect_ratio": "16:9",
        "resolution": "2K",
        "image_urls": [fal_client.encode(REF_A, "image/png"), fal_client.encode(REF_B, "image/png")],
        "enable_web_search": True,
    }
    handle = fal.submit("fal-ai/nano-banana-2/edit", arguments=arguments)
    statuses = [type(status).__name__ for status in handle.iter_events(with_logs=True, interval=0.01)]
    answer = handle.get()
    official_requests = list(fakes.server.requests)
    assert statuses == ["Queued", "InProgress", "Completed"]  # fal-client reads the fake's queue states
    assert [im["width"] for im in answer["images"]] == [32, 32]  # both references reached the fake

    submit_ours, submit_theirs = (only(reqs, "POST", r"/fal-ai/nano-banana-2/edit$") for reqs in (pack_requests, official_requests))
    assert submit_ours.path == submit_theirs.path == "/fal/fal-ai/nano-banana-2/edit"
    assert submit_ours.headers["authorization"] == submit_theirs.headers["authorization"] == f"Key {key_for('fal')}"
    assert submit_ours.json() == arguments == submit_theirs.json()
    # Status and result: the URLs fal returned (owner/app only, no /edit), same method, same auth.
    for method, pattern in (("GET", r"/requests/[\w-]+/status$"), ("GET", r"/requests/[\w-]+$")):
        ours = [r for r in pack_requests if r.method == method and re.search(pattern, r.path)]
        theirs = [r for r in official_requests if r.method == method and re.search(pattern, r.path)]
        assert ours and theirs
        assert {re.sub(r"requests/[\w-]+", "requests/ID", r.path) for r in ours} == {re.sub(r"requests/[\w-]+", "requests/ID", r.path) for r in theirs} == {
            re.sub(r"requests/[\w-]+", "requests/ID", "/fal/fal-ai/nano-banana-2/requests/x" + ("/status" if "status" in pattern else ""))
        }
        assert {r.headers["authorization"] for r in ours + theirs} == {f"Key {key_for('fal')}"}
    assert {r.query for r in pack_requests if r.path.endswith("/status")} == {"logs=1"}, INTENDED_FAL["status query"]


def test_fal_cancel_matches_fal_client(fakes, fal):
    ctx = CallContext(cancel_check=lambda: bool(fakes.jobs))  # the user stops once the job is queued
    with pytest.raises(Cancelled):
        run(generate("fal", "Nano Banana", GenerationRequest(prompt="a banana"), ctx))
    (ours,) = fakes.server.hits("PUT", r"/cancel$")
    handle = fal.submit("fal-ai/nano-banana", arguments={"prompt": "a banana", "num_images": 1, "output_format": "png"})
    handle.cancel()
    (theirs,) = [r for r in fakes.server.hits("PUT", r"/cancel$") if r is not ours]
    assert re.sub(r"requests/[\w-]+", "requests/ID", ours.path) == re.sub(r"requests/[\w-]+", "requests/ID", theirs.path) == "/fal/fal-ai/nano-banana/requests/ID/cancel"
    assert ours.headers["authorization"] == theirs.headers["authorization"]
    assert all(job.cancelled for job in fakes.jobs.values())


# -- every fixture, read by the official client -----------------------------------------------------


def fixtures_of(folder: str) -> list[str]:
    return sorted(p.name for p in (FIXTURES / folder).glob("*.json"))


def error_status(body: dict[str, Any], name: str) -> int:
    code = body["error"].get("code") if isinstance(body.get("error"), dict) else None
    return code if isinstance(code, int) else int(re.search(r"error_(\d{3})", name).group(1)) if re.search(r"error_(\d{3})", name) else 400


@pytest.mark.parametrize("name", fixtures_of("gemini"))
def test_every_gemini_fixture_is_read_by_google_genai(server, name):
    body = fixture(f"gemini/{name}")
    if name.startswith("request_"):
        for content in body["contents"]:
            genai_types.Content.model_validate(content)
        # generationConfig, safetySettings and tools are all GenerateContentConfig fields in google-genai.
        extra = {k: body[k] for k in ("safetySettings", "tools", "systemInstruction") if k in body}
        genai_types.GenerateContentConfig.model_validate({**body.get("generationConfig", {}), **extra})
        return
    if "error" in body:
        status = error_status(body, name)
        server.route("POST", r":generateContent$", Reply(status, json=body))
        client = genai_client(server)
        with pytest.raises(genai_errors.APIError) as info:
            client.models.generate_content(model="gemini-3-pro-image-preview", contents="x")
        assert info.value.code == status and info.value.message == body["error"]["message"] and info.value.status == body["error"]["status"]
        return
    genai_types.GenerateContentResponse.model_validate(body)  # strict: no unknown or mistyped field
    server.route("POST", r":generateContent$", Reply(json=body))
    client = genai_client(server)
    answer = client.models.generate_content(model="gemini-3-pro-image-preview", contents="x")
    assert answer.model_dump(exclude_none=True, by_alias=False).keys() >= {"candidates"} or body.get("promptFeedback")


OPENAI_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError, 429: openai.RateLimitError, 503: openai.InternalServerError}
OPENAI_IMAGE_ERROR_STATUS = {"error_content_policy.json": 400, "error_moderation.json": 400, "error_401_newapi.json": 401, "error_429_quota.json": 429, "error_503_no_channel.json": 503}


@pytest.mark.parametrize("name", fixtures_of("openai_images"))
def test_every_openai_images_fixture_is_read_by_openai(server, name):
    body = fixture(f"openai_images/{name}")
    client = openai.OpenAI(api_key="sk-test", base_url=server.url + "/v1", max_retries=0)
    if "error" in body:
        status = OPENAI_IMAGE_ERROR_STATUS.get(name) or error_status(body, name)
        server.route("POST", r"/images/generations$", Reply(status, json=body))
        with pytest.raises(OPENAI_ERRORS[status]) as info:
            client.images.generate(model="nano-banana", prompt="x")
        assert info.value.body == body["error"] and info.value.message.endswith(body["error"]["message"])
        return
    ImagesResponse.model_validate(body)
    server.route("POST", r"/images/generations$", Reply(json=body))
    answer = client.images.generate(model="nano-banana", prompt="x")
    assert [d.model_dump(exclude_none=True) for d in answer.data or []] == [{k: v for k, v in d.items() if v is not None} for d in body["data"]]


@pytest.mark.parametrize("name", fixtures_of("chat"))
def test_every_chat_fixture_is_read_by_openai(server, name):
    body = fixture(f"chat/{name}")
    client = openai.OpenAI(api_key="sk-test", base_url=server.url + "/v1", max_retries=0)
    if name.startswith("request_"):
        assert body["modalities"] == ["image", "text"], INTENDED_CHAT["modalities"]
        pydantic.TypeAdapter(CompletionCreateParamsNonStreaming).validate_python({k: v for k, v in body.items() if k != "modalities"})
        return
    if "error" in body:
        status = error_status(body, name)
        server.route("POST", r"/chat/completions$", Reply(status, json=body))
        with pytest.raises(OPENAI_ERRORS[status]) as info:
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
        assert info.value.body == body["error"]
        return
    ChatCompletion.model_validate(body)
    server.route("POST", r"/chat/completions$", Reply(json=body))
    answer = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
    assert answer.id == body["id"] and len(answer.choices) == len(body["choices"])
