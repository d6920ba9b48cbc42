"""A hostile provider, a hostile workflow and a planted journal: the key never reaches another
origin, and nothing a provider sends is read without a limit (issue 8, items 1, 4 and 8).

Two real servers on 127.0.0.1: `base` is the configured provider, `other` a different port (a
different origin) that must never see a request carrying the key.
"""

from __future__ import annotations

import base64
import time
import tracemalloc
from dataclasses import replace

import pytest
from banana_pack.providers import (
    CallContext,
    GenerationRequest,
    InvalidRequest,
    MalformedResponse,
    TimedOut,
    generate,
)
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import ProviderCall
from banana_pack.providers.engine import get_engine, transport
from banana_pack.providers.errors import BananaError, ConfigError
from helpers import png_bytes, point_at, run
from hostile import HostileServer, closes_when_idle, drip, endless, gzip_bomb, redirect, reply
from loopback import fixture

GOOGLE_KEY = "hostile-google-key-0123456789"
FAL_KEY = "hostile-fal-id:hostile-fal-secret-0123"
HK_KEY = "hk-hostile-openai-hk-key-0123456789"
GEN = r":generateContent$"
KEYS = (GOOGLE_KEY, FAL_KEY, HK_KEY)


@pytest.fixture
def base():
    srv = HostileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def other():
    srv = HostileServer().start()
    srv.route("GET", "", reply(200, raw=png_bytes(2, 2), headers={"Content-Type": "image/png"}))
    srv.route("POST", "", reply(200, fixture("gemini/success_single.json")))
    yield srv
    srv.stop()


@pytest.fixture
def google(base, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", GOOGLE_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", base.url)
    return base


@pytest.fixture
def fal(base, monkeypatch):
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    point_at(monkeypatch, "fal", base.url)
    return base


@pytest.fixture
def hk(base, monkeypatch):
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", HK_KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_BASE_URL", base.url + "/v1")
    return base


def carries_a_key(hit) -> bool:
    text = " ".join(hit.headers.values()) + hit.body.decode("latin-1")
    return any(key in text for key in KEYS) or "authorization" in hit.headers or "x-goog-api-key" in hit.headers


def gen(provider="google", model="Nano Banana", ctx=None, **kw):
    return run(generate(provider, model, GenerationRequest(prompt="a cat", **kw.pop("request", {})), ctx, **kw))


# -- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_an_api_redirect_to_another_port_is_not_followed(google, other, status):
    google.route("POST", GEN, redirect(status, other.url + "/steal"))
    with pytest.raises(ConfigError) as info:
        gen()
    assert other.hits == []  # neither the key nor the prompt went there
    assert "127.0.0.1" in str(info.value) and "redirect" in str(info.value) and info.value.status == status
    assert google.count("POST") == 1
    assert GOOGLE_KEY not in str(info.value)


def test_a_result_download_follows_a_redirect_and_never_carries_a_key(hk, other, monkeypatch):
    # `other` stands for a CDN on another host; on this machine it is a second loopback port, which a
    # download may reach only with the switch (tests/test_download_addresses.py: refused without it).
    monkeypatch.setenv("BANANA_ALLOW_PRIVATE_DOWNLOADS", "1")
    hk.route("POST", r"^/v1/images/generations$", reply(200, {"data": [{"url": hk.url + "/cdn/1.png"}]}))
    hk.route("GET", r"^/cdn/1\.png$", redirect(302, other.url + "/moved/1.png"))
    result = gen("openai_hk", "Nano Banana Pro")
    assert (result.images[0].width, result.images[0].height) == (2, 2)
    (fetched,) = other.hits
    assert fetched.path == "/moved/1.png" and not carries_a_key(fetched)
    assert not any(carries_a_key(hit) for hit in hk.hits if hit.method == "GET")


# -- a workflow's model_id_override ---------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "{other}/x",
        "{other}",
        "//{host}/x",
        "fal-ai/nano-banana/../../../x",
        "/fal-ai/nano-banana",
        "fal-ai/nano-banana?x=1",
        "fal-ai/nano-banana#x",
        "fal-ai/x@{host}",
        "fal-ai/nano banana",
    ],
)
def test_model_id_override_that_is_not_an_id_is_refused_before_any_request(fal, other, override):
    value = override.format(other=other.url, host=other.url.split("//", 1)[1])
    with pytest.raises(InvalidRequest) as info:
        gen("fal", model_id_override=value)
    assert "model_id_override" in str(info.value)
    assert other.hits == [] and fal.hits == []


def test_provider_call_refuses_to_send_the_key_to_another_origin(other, monkeypatch):
    spec = next(p for p in PRESETS if p.id == "fal")
    call = ProviderCall(engine=get_engine(), ctx=CallContext(), provider=spec, model=spec.models[0], api_key=FAL_KEY)
    with pytest.raises(InvalidRequest) as info:
        run(call.send("POST", other.url + "/fal-ai/nano-banana", json_body={"prompt": "p"}))
    assert other.hits == [] and "Refusing to send" in str(info.value) and info.value.sent is False


# -- URLs in answers and in the journal -----------------------------------------------------------


def test_a_foreign_status_url_in_a_fal_answer_gets_no_key(fal, other):
    submit = fixture("fal/submit.json")
    for name in ("status_url", "response_url", "cancel_url"):
        submit[name] = submit[name].replace("https://queue.fal.run", other.url)
    fal.route("POST", r"^/fal-ai/nano-banana$", reply(200, submit))
    with pytest.raises(BananaError) as info:
        gen("fal")
    assert other.hits == []
    assert "Refusing to send" in str(info.value) and "127.0.0.1" in str(info.value)


def test_a_journaled_handle_on_a_foreign_origin_is_refused_before_any_key_is_sent(fal, other):
    handle = {
        "request_id": "planted",
        "endpoint": "fal-ai/nano-banana",
        "status_url": other.url + "/fal-ai/nano-banana/requests/planted/status",
        "response_url": other.url + "/fal-ai/nano-banana/requests/planted",
        "cancel_url": other.url + "/fal-ai/nano-banana/requests/planted/cancel",
        "count": 1,
    }
    with pytest.raises(InvalidRequest):
        gen("fal", ctx=CallContext(resume_task=handle))
    assert other.hits == [] and fal.hits == []


def test_result_urls_lose_their_user_info(hk):
    host = hk.url.split("//", 1)[1]
    hk.route("POST", r"^/v1/images/generations$", reply(200, {"data": [{"url": f"http://someone:secret-pass@{host}/cdn/1.png"}]}))
    hk.route("GET", r"^/cdn/1\.png$", reply(200, raw=png_bytes(3, 2), headers={"Content-Type": "image/png"}))
    result = gen("openai_hk", "Nano Banana Pro")
    (fetched,) = [hit for hit in hk.hits if hit.method == "GET"]
    assert "authorization" not in fetched.headers  # httpx would turn user:pass into Basic auth
    assert result.images[0].source_url == f"http://{host}/cdn/1.png"


# -- limits on what a provider sends --------------------------------------------------------------


def test_a_gzip_bomb_is_stopped_while_it_is_decompressed(google, monkeypatch):
    monkeypatch.setattr(transport, "MAX_ANSWER_BYTES", 4 * 1024 * 1024, raising=False)
    google.route("POST", GEN, gzip_bomb(64 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(MalformedResponse) as info:
            gen()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "limit" in str(info.value) and info.value.maybe_billed
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while refusing a 64 MiB bomb"
    assert google.count("POST") == 1


def test_a_gzip_bomb_error_body_is_read_to_64_kb_only(google):
    google.route("POST", GEN, gzip_bomb(64 * 1024 * 1024, status=400))
    tracemalloc.start()
    try:
        with pytest.raises(BananaError) as info:
            gen()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 400
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB for an error body"


def test_a_huge_error_body_is_not_read_whole_even_when_retried(base, monkeypatch):
    # A poll (idempotent, so retried): each attempt reads at most 64 KB of the error, then hangs up.
    spec = next(p for p in PRESETS if p.id == "fal")
    monkeypatch.setattr(transport.HttpEngine, "_backoff", staticmethod(lambda *args: 0.0))
    base.route("GET", r"^/status$", endless(500, 64 * 1024 * 1024))
    call = ProviderCall(engine=get_engine(), ctx=CallContext(), provider=replace(spec, base_url=base.url), model=spec.models[0], api_key=FAL_KEY)
    with pytest.raises(BananaError) as info:
        run(call.get("status"))
    attempts = base.count("GET", r"^/status$")
    assert attempts == 5 and info.value.status == 500
    # Loopback socket buffers hold a few MB per connection; the whole bodies would be 320 MB.
    assert base.bytes_sent < attempts * 12 * 1024 * 1024, f"{base.bytes_sent / 2**20:.0f} MiB sent"


def test_a_slow_drip_ends_at_the_attempts_deadline(google, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_TIMEOUT", "3")  # each byte arrives well inside one read timeout
    google.route("POST", GEN, drip(0.2, give_up_after=30))
    started = time.monotonic()
    with pytest.raises(TimedOut) as info:
        gen()
    assert time.monotonic() - started < 15  # the deadline is 6 s; the drip would last 30 s
    assert "deadline" in str(info.value) and info.value.maybe_billed
    assert google.count("POST") == 1


def test_inline_base64_image_has_the_download_size_limit(google, monkeypatch):
    monkeypatch.setattr(transport, "MAX_DOWNLOAD_BYTES", 4096, raising=False)
    big = base64.b64encode(png_bytes(64, 64, (1, 2, 3)) + bytes(8192)).decode()
    answer = fixture("gemini/success_single.json")
    answer["candidates"][0]["content"]["parts"] = [{"inlineData": {"mimeType": "image/png", "data": big}}]
    google.route("POST", GEN, reply(200, answer))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "4096-byte limit" in str(info.value)


def test_only_the_requested_number_of_images_is_used(hk):
    """The count asked for is the result; the extra images (paid for, kept apart and saved) are capped."""
    from banana_pack.providers.client import MAX_EXTRA_IMAGES

    urls = [{"url": f"{hk.url}/cdn/{i}.png"} for i in range(20)]
    hk.route("POST", r"^/v1/images/generations$", reply(200, {"data": urls}))
    hk.route("GET", r"^/cdn/", reply(200, raw=png_bytes(2, 2), headers={"Content-Type": "image/png"}))
    result = gen("openai_hk", "Nano Banana Pro")
    assert len(result.images) == 1 and len(result.extra_images) == MAX_EXTRA_IMAGES
    assert hk.count("GET", r"^/cdn/") == 1 + MAX_EXTRA_IMAGES
    assert any("returned 20 images for 1 asked" in w and f"{19 - MAX_EXTRA_IMAGES} more were ignored" in w for w in result.warnings)


def test_inline_images_beyond_the_count_are_dropped_too(google):
    answer = fixture("gemini/success_single.json")
    # Thirty distinct images (an image repeated in one turn counts once: see outcome.final_positions).
    answer["candidates"][0]["content"]["parts"] = [{"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(n + 1, 1)).decode()}} for n in range(30)]
    google.route("POST", GEN, reply(200, answer))
    result = gen()
    assert len(result.images) == 1 and any("returned 30 images for 1 asked" in w for w in result.warnings)
    assert [im.width for im in result.extra_images] == list(range(2, 10))  # the first extras, up to the cap


def test_a_workflow_naming_a_url_as_model_id_override_is_refused_by_the_node(fal, other, tmp_path):
    from banana_pack.nodes.render import RenderInputs, render

    inputs = RenderInputs(provider="fal", model="Nano Banana", prompts=["a cat"], model_id_override=other.url + "/x")
    with pytest.raises(InvalidRequest):
        run(render(inputs, store_root=tmp_path))
    assert other.hits == [] and fal.hits == []


# -- what still works ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_honest_compressed_answer_is_read(google, encoding):
    import gzip
    import json
    import zlib

    body = json.dumps(fixture("gemini/success_single.json")).encode()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    google.route("POST", GEN, reply(200, raw=packed, headers={"Content-Encoding": encoding}))
    assert len(gen().images) == 1
    (post,) = google.hits
    assert post.headers["accept-encoding"] == "gzip, deflate" and post.headers["x-goog-api-key"] == GOOGLE_KEY


def test_an_encoding_that_was_not_asked_for_is_refused(google):
    google.route("POST", GEN, reply(200, raw=b"\x1b\x00\x00", headers={"Content-Encoding": "br"}))
    with pytest.raises(MalformedResponse) as info:
        gen()
    assert "Content-Encoding" in str(info.value) and google.count("POST") == 1


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://queue.fal.run/fal-ai/x/requests/1/status", True),
        ("https://rest.fal.run/x", True),
        ("http://queue.fal.run/x", False),  # the allowlist is https only
        ("https://queue.fal.run:8443/x", False),
        ("https://fal.run.evil.example/x", False),
        ("https://evilfal.run/x", False),
        ("https://user:pw@evil.example/x", False),
        ("https://evil.example/queue.fal.run", False),
        ("ftp://queue.fal.run/x", False),
    ],
)
def test_the_fal_allowlist(url, allowed):
    from banana_pack.providers.engine import Credentials

    creds = Credentials(provider="fal", scheme="key", key=FAL_KEY, base_url="https://queue.fal.run", auth_hosts=("*.fal.run",))
    assert creds.allows(url) is allowed
    assert FAL_KEY not in repr(creds)


def test_a_connection_about_to_be_closed_for_idleness_is_not_reused(google):
    """Servers close idle keep-alive connections after a few seconds (Node and uvicorn after 5, httpx's
    own default expiry). A request sent on one as the close crosses it is lost before the provider
    answers, and the pack must then say it may have been billed instead of resending it: a false
    alarm for a re-queue that came at that moment. Here the close comes at 4.5 s (a server's 5 s, less
    the time a request spends on the wire): a connection idle that long is not reused."""
    import asyncio

    google.route("POST", GEN, closes_when_idle(4.5, reply(200, fixture("gemini/success_single.json"))))

    async def two_runs_apart():
        first = await generate("google", "Nano Banana Pro", GenerationRequest(prompt="a cat"))
        await asyncio.sleep(4.6)
        return first, await generate("google", "Nano Banana Pro", GenerationRequest(prompt="a dog"))

    first, second = run(two_runs_apart())
    assert first.images and second.images
    assert google.count("POST", GEN) == 2
