"""ProviderCall, what every protocol module gets: options, submits, polls, cleanup, results, model resolution."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from banana_pack.providers import AuthError, CallContext, Cancelled, ConfigError, MalformedResponse, SafetyRejected, UpstreamUnavailable
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import ProviderCall, resolve_model
from banana_pack.providers.engine import HttpEngine, PollState, get_engine
from helpers import BLUE_PNG_B64, YELLOW_PNG_B64, png_bytes, run
from loopback import LoopbackServer, Reply

FAL = next(p for p in PRESETS if p.id == "fal")


def make_call(base_url="http://127.0.0.1:9", ctx=None, **options) -> ProviderCall:
    spec = replace(FAL, base_url=base_url, options=options)
    return ProviderCall(engine=get_engine(), ctx=ctx or CallContext(), provider=spec, model=spec.models[0], api_key="test-key-0123456789")


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [("false", False), ("0", False), ("no", False), ("", False), ("true", True), ("Yes", True), ("1", True), (True, True), (False, False), (None, False)])
def test_flag_option_reads_environment_strings(raw, expected):
    assert make_call(flag=raw).flag_option("flag", default=not expected) is expected


@pytest.mark.parametrize("raw, expected", [("size", "size"), ("none", None), ("null", None), ("false", None), ("", None), (None, None)])
def test_text_option_can_be_switched_off(raw, expected):
    assert make_call(field=raw).text_option("field", "default") == expected


def test_text_option_default_when_absent():
    assert make_call().text_option("field", "default") == "default" and make_call().text_option("field") is None


def test_number_option():
    assert make_call(delay="0.25").number_option("delay", 1.0) == 0.25
    assert make_call(delay="").number_option("delay", 1.0) == 1.0 and make_call().number_option("delay", 2) == 2.0
    with pytest.raises(ConfigError) as info:
        make_call(delay="soon").number_option("delay", 1.0)
    assert "'delay'" in str(info.value) and "number" in str(info.value)


def test_dict_option():
    assert make_call(extra='{"quality": "high"}').dict_option("extra") == {"quality": "high"}
    assert make_call(extra={"n": 2}).dict_option("extra") == {"n": 2} and make_call().dict_option("extra") == {}
    for bad in ("[1, 2]", "{not json"):
        with pytest.raises(ConfigError):
            make_call(extra=bad).dict_option("extra")


# -- sending ---------------------------------------------------------------------------------------------


def test_send_raw_content_with_extra_headers_and_auth(server):
    server.route("POST", r"^/storage/upload$", Reply(json={"access_url": "https://cdn/x.png"}))
    call = make_call(server.url)
    response = run(call.send("POST", "storage/upload", content=b"raw image bytes", headers={"Content-Type": "image/png"}))
    (req,) = server.requests
    assert response.json()["access_url"] == "https://cdn/x.png" and req.body == b"raw image bytes"
    assert req.headers["content-type"] == "image/png" and req.headers["authorization"] == "Key test-key-0123456789"


def test_submit_once_never_resends_and_says_a_lost_answer_may_be_a_job(server):
    server.route("POST", r"^/job$", Reply(drop=True))
    with pytest.raises(UpstreamUnavailable) as info:
        run(make_call(server.url).submit_once("job", {"prompt": "x"}))
    assert len(server.requests) == 1 and "NOT sent again" in str(info.value)


def test_submit_once_refused_answer_has_no_lost_job_hint(server):
    server.route("POST", r"^/job$", Reply(401, {"detail": "bad key"}))
    with pytest.raises(AuthError) as info:
        run(make_call(server.url).submit_once("job", {}))
    assert "NOT sent again" not in str(info.value)


def test_submit_once_resends_what_provably_never_left(monkeypatch):
    """A refused connection sent nothing: the submit is sent again, and the second attempt is the one that arrives."""
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers: list[LoopbackServer] = []

    def backoff_then_listen(*args) -> float:
        if not servers:  # between the refused attempt and the next one, the provider comes up
            servers.append(LoopbackServer(port).start())
            servers[0].route("POST", r"^/job$", Reply(json={"request_id": "req-1"}))
        return 0.0

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(backoff_then_listen))
    try:
        response = run(make_call(f"http://127.0.0.1:{port}").submit_once("job", {"prompt": "x"}))
        assert response.json() == {"request_id": "req-1"}
        assert len(servers) == 1 and [r.json() for r in servers[0].requests] == [{"prompt": "x"}]  # resent once, arrived once
    finally:
        for srv in servers:
            srv.stop()


def test_submit_once_that_never_connects_says_it_never_left(monkeypatch):
    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *args: 0.0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UpstreamUnavailable) as info:
        run(make_call(f"http://127.0.0.1:{port}").submit_once("job", {}))
    assert info.value.sent is False and "NOT sent again" not in str(info.value) and "ConnectError" in str(info.value)


def test_error_in_answer_reads_a_status_in_the_body():
    call = make_call()
    assert isinstance(call.error_in_answer({"code": 401, "msg": "invalid token"}), AuthError)
    assert isinstance(call.error_in_answer({"error": {"code": 403, "message": "Input flagged", "metadata": {"reasons": ["violence"]}}}), SafetyRejected)
    plain = call.error_in_answer({"error": {"message": "upstream returned nothing", "code": ""}})
    assert isinstance(plain, MalformedResponse) and "HTTP 200 with an error" in str(plain)


# -- polling and cleanup ------------------------------------------------------------------------------------


def test_poll_is_paced_by_options_and_cancels_the_remote_job_detached(server):
    server.route("DELETE", r"^/jobs/1$", Reply(json={}, delay=0.3))
    checks: list[int] = []

    async def check():
        checks.append(1)
        return PollState(False)

    call = make_call(server.url, CallContext(cancel_check=lambda: len(checks) >= 3), poll_first_delay="0.01", poll_max_delay="0.01")
    with pytest.raises(Cancelled):
        run(call.poll(check, cancel=("DELETE", "jobs/1"), label="1"))
    assert len(checks) == 3
    (cancel,) = server.hits("DELETE", r"^/jobs/1$")
    assert cancel.headers["authorization"] == "Key test-key-0123456789"


def test_cleanup_runs_after_an_interrupt_and_never_fails(server):
    server.route("DELETE", r"^/files/1$", Reply(json={}, delay=0.3))
    server.route("DELETE", r"^/files/2$", Reply(500, {}))
    call = make_call(server.url, CallContext(cancel_check=lambda: True))

    async def scenario():
        await call.cleanup("DELETE", "files/1", "delete file 1")
        await call.cleanup("DELETE", "files/2", "delete file 2")  # a failure is logged, not raised

    run(scenario())
    assert len(server.hits("DELETE", r"^/files/1$")) == 1 and len(server.hits("DELETE", r"^/files/2$")) >= 1


# -- results ---------------------------------------------------------------------------------------------


def test_fetch_images_in_order_with_relative_urls(server):
    server.route("GET", r"^/out/a\.png$", Reply(body=png_bytes(3, 2), content_type="image/png", delay=0.2))
    call = make_call(server.url)
    images = run(call.fetch_images(["/out/a.png", YELLOW_PNG_B64, "data:image/png;base64," + BLUE_PNG_B64]))
    assert [(im.width, im.height) for im in images] == [(3, 2), (1, 1), (1, 1)]


def test_result_warns_when_fewer_images_than_asked():
    call = make_call()
    assert call.result([], asked=2).warnings == ["Asked for 2 images, fal.ai returned 0."]
    assert call.result([], asked=None).warnings == [] and call.result([], asked=0).warnings == []


# -- model resolution ----------------------------------------------------------------------------------------


def test_free_text_override_drops_the_catalog_endpoints():
    offer = resolve_model(FAL, "Nano Banana Pro", "fal-ai/nano-banana-pro-next")
    assert offer.model_id == "fal-ai/nano-banana-pro-next" and not offer.known
    assert offer.edit_model_id is None and dict(offer.ids_by_resolution) == {}
    assert offer.id_for("4K", editing=True) == "fal-ai/nano-banana-pro-next"
    assert offer.max_refs == 14  # the chosen model's capabilities are kept


def test_override_naming_a_catalog_id_keeps_its_edit_endpoint():
    offer = resolve_model(FAL, "Nano Banana", "fal-ai/nano-banana-pro")
    assert offer.known and offer.id_for(None, editing=True) == "fal-ai/nano-banana-pro/edit"
