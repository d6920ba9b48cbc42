"""Red team, round three: where else a key (or the credential behind it) could travel.

Each test plays a stranger who hands over a workflow, runs a gateway the user points at, or
plants files ComfyUI serves, and checks that the credential goes only where and as the pack
promises (SECURITY.md): to the provider's configured origin, in the form that origin needs, and
into no output, route answer or log.
"""

from __future__ import annotations

import json

import pytest

from banana_pack.nodes.jobs_routes import cancel_job, jobs_summary
from banana_pack.nodes.render import RenderInputs, render
from banana_pack.providers.errors import BananaError
from fake_gemini_batch import PENDING, SUCCEEDED, FakeBatchMode
from helpers import run
from vertex_fake import TokenEndpoint, service_account_json

CREATE = r":batchGenerateContent$"


pytestmark = pytest.mark.usefixtures("fresh_tokens")  # conftest.py: no access token outlives a test


# -- a service account's private key is exchanged for a token on every path, never sent itself ------


@pytest.fixture
def sa_gateway(server, monkeypatch, isolated_config):
    """A Gemini-protocol gateway (Vertex's generateContent, say) that authenticates with a service
    account, with Batch Mode on: the credential is a service-account key given inline as JSON."""
    token = TokenEndpoint()
    server.route("POST", r"^/token$", token)
    isolated_config.mkdir(parents=True, exist_ok=True)
    gateway = {
        "id": "sa_gateway",
        "protocol": "gemini",
        "auth": "google-service-account",
        "base_url": server.url,
        "models": ["gemini-3.1-flash-image-preview"],
        "options": {"batch_mode": True, "batch_max_wait": 20, "poll_first_delay": 0.02, "poll_max_delay": 0.05},
    }
    (isolated_config / "providers.json").write_text(json.dumps({"providers": [gateway]}))
    monkeypatch.setenv("BANANA_SA_GATEWAY_API_KEY", service_account_json(f"{server.url}/token"))
    server.token = token
    return server


def assert_only_the_token(server) -> None:
    """Every authenticated request carried the access token; none carried the service-account key."""
    authorised = [r for r in server.requests if "authorization" in {k.lower() for k in r.headers}]
    assert authorised, "no authenticated request was made"
    for request in authorised:
        header = next(v for k, v in request.headers.items() if k.lower() == "authorization")
        assert header == f"Bearer {server.token.token}", f"{request.method} {request.path} carried {header[:60]!r}..."
    for request in server.requests:
        assert "PRIVATE KEY" not in json.dumps(request.headers), f"{request.method} {request.path} carried the private key"


def batch_inputs(prompts: list[str]) -> RenderInputs:
    return RenderInputs(prompts=["\n".join(prompts)], prompt_per_line=True, provider="sa_gateway", model="Nano Banana 2", resolution="1K", delivery="batch")


def test_batch_mode_on_a_service_account_gateway_sends_a_token_never_the_private_key(sa_gateway, tmp_path):
    FakeBatchMode(sa_gateway, states=[PENDING, SUCCEEDED]).install()
    out = run(render(batch_inputs(["cat 4", "dog 7"]), store_root=tmp_path / "store"))
    assert [row["status"] for row in out.report["items"]] == ["ok", "ok"]
    assert len(sa_gateway.hits("POST", CREATE)) == 1 and sa_gateway.token.grants == 1
    assert_only_the_token(sa_gateway)


def test_the_jobs_panel_checks_and_cancels_a_service_account_batch_with_a_token(sa_gateway, tmp_path, monkeypatch):
    FakeBatchMode(sa_gateway, states=[PENDING]).install()
    monkeypatch.setenv("BANANA_SA_GATEWAY_BATCH_MAX_WAIT", "0.3")
    with pytest.raises(BananaError, match="still running"):
        run(render(batch_inputs(["cat 1"]), store_root=tmp_path / "store"))
    before = len(sa_gateway.requests)
    summary = run(jobs_summary(base=tmp_path))
    (job,) = summary["jobs"]
    assert job["kind"] == "batch" and "unavailable" not in job["status"]
    status, answer = run(cancel_job({"id": job["id"]}, base=tmp_path))
    assert status == 200, answer
    assert len(sa_gateway.requests) > before + 1  # the status check and the cancel reached the gateway
    assert_only_the_token(sa_gateway)


# -- strings from a 2xx answer that reach an output or a route unredacted ---------------------------

ECHO_KEY = "AIzaEchoedBack-0123456789abcdefXYZ"


def test_a_thought_signature_echoing_the_key_does_not_carry_it_into_the_conversation_output(server, monkeypatch, tmp_path):
    """The conversation output lands in /history (readable by any page that reaches ComfyUI):
    a gateway that echoes the request's key inside a thought signature must not put it there."""
    import base64

    from helpers import png_bytes
    from loopback import Reply, fixture

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    body = fixture("gemini/success_single.json")
    image = base64.b64encode(png_bytes(4, 3)).decode()
    body["candidates"][0]["content"]["parts"] = [
        {"text": "Here it is.", "thoughtSignature": f"c2lnLTE{ECHO_KEY}"},
        {"inlineData": {"mimeType": "image/png", "data": image}, "thoughtSignature": f"x-goog-api-key: {ECHO_KEY}"},
    ]
    server.route("POST", r":generateContent$", Reply(json=body))
    out = run(render(RenderInputs(prompts=["a cat"], provider="google", model="Nano Banana Pro", resolution="1K"), store_root=tmp_path / "store"))
    shown = json.dumps(out.conversation)
    assert "thought_signature" in shown  # the signatures are kept (they are sent back on the next turn)
    assert ECHO_KEY not in shown and ECHO_KEY[:12] not in shown


def test_the_models_route_does_not_show_a_key_a_gateway_echoes_in_a_model_id(server, monkeypatch):
    """GET /nano_banana_bridge/models answers any page that reaches ComfyUI (no write guard): the ids
    come from the gateway's answer and are redacted like every other provider string, before they are cut."""
    from loopback import Reply

    from banana_pack.nodes.routes import models_summary
    from banana_pack.providers.model_list import forget_model_lists

    forget_model_lists()
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_OPENAI_HK_BASE_URL", server.url)
    long_id = "x" * 190 + ECHO_KEY  # cut at 200 characters, the key's first 10 would survive a cut before redaction
    server.route("GET", r"/models$", Reply(json={"data": [{"id": "gemini-3-pro-image-preview"}, {"id": f"echo-{ECHO_KEY}"}, {"id": long_id}]}))
    try:
        answer = run(models_summary("openai_hk", refresh=True))
    finally:
        forget_model_lists()
    assert answer["listed"] and "gemini-3-pro-image-preview" in answer["models"]
    shown = json.dumps(answer)
    assert ECHO_KEY[:8] not in shown, shown[:400]


# -- logs: a traceback is redacted like the message it follows --------------------------------------


@pytest.mark.parametrize("logger_name", ["nano_banana_bridge", "httpx", "httpcore.http11"])
def test_a_logged_traceback_carries_no_key(logger_name, monkeypatch):
    """The filter rewrote the message only: a traceback (log.exception, exc_info=True) was formatted
    later, by ComfyUI's handler, and reached the console and /internal/logs as it was."""
    import io
    import logging

    from banana_pack.providers.engine import transport  # noqa: F401 - installs the filter on these loggers
    from banana_pack.providers.redaction import register_secret

    register_secret(ECHO_KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(logging.getLogger(logger_name), "level", logging.DEBUG)
    monkeypatch.setattr(logging.getLogger(logger_name), "propagate", True)
    try:
        try:
            raise ValueError(f"Illegal header value b'Bearer {ECHO_KEY}'")
        except ValueError:
            logging.getLogger(logger_name).exception("the request failed")
            logging.getLogger(logger_name).warning("again, with the stack", exc_info=True, stack_info=True)
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "the request failed" in text and "ValueError: Illegal header value" in text and "again, with the stack" in text
    assert ECHO_KEY[:8] not in text and ECHO_KEY[-8:] not in text, text


# -- a credential in the base URL (a gateway behind basic auth) is a secret like the key ------------

GW_USER, GW_PASS = "gateway-user-5f3a", "Gw-Pa55word-7c1e9d"


def test_a_base_urls_user_and_password_never_reach_a_dry_run_report_or_an_error(server, monkeypatch, tmp_path):
    """A gateway behind basic auth is configured as https://user:pass@host/...: a stranger's workflow
    with dry_run on (the report lands in /history, and in the workflow of every image a PreviewAny
    feeds), or a gateway answer naming another host (the refusal lists the allowed origins), must not
    print that password."""
    from loopback import Reply, fixture

    host = server.url.split("//", 1)[1]
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", f"http://{GW_USER}:{GW_PASS}@{host}/v1beta")
    planned = run(render(RenderInputs(prompts=["a cat"], provider="google", model="Nano Banana Pro", resolution="1K", dry_run=True), store_root=tmp_path / "store"))
    shown = planned.text + json.dumps(planned.report)
    assert "generateContent" in shown and host in shown  # the planned request is shown...
    assert GW_PASS not in shown and GW_USER not in shown  # ...without the credential in its address

    monkeypatch.setenv("BANANA_FAL_API_KEY", "fal-key-for-the-refusal-0123")
    monkeypatch.setenv("BANANA_FAL_BASE_URL", f"http://{GW_USER}:{GW_PASS}@{host}")
    submit = fixture("fal/submit.json")
    for name in ("status_url", "response_url", "cancel_url"):
        submit[name] = submit[name].replace("https://queue.fal.run", "https://elsewhere.invalid")
    server.route("POST", r"^/fal-ai/nano-banana$", Reply(json=submit))
    with pytest.raises(BananaError) as refused:  # a single call fails with its own error, shown in /history
        run(render(RenderInputs(prompts=["a cat"], provider="fal", model="Nano Banana"), store_root=tmp_path / "store"))
    shown = str(refused.value)
    assert "Refusing to send" in shown and host in shown
    assert GW_PASS not in shown and GW_USER not in shown, shown
    reports = "".join(p.read_text() for p in (tmp_path / "store").rglob("*.json"))
    assert "Refusing to send" in reports and GW_PASS not in reports


# -- the config folder: never where ComfyUI serves files ---------------------------------------------


def test_the_default_config_folder_inside_a_served_folder_is_refused(tmp_path, monkeypatch):
    """ComfyUI started with --user-directory inside --output-directory (one mounted volume): the
    default config folder would sit where /view serves any file to any page. Only BANANA_CONFIG_DIR
    was checked; the default is now checked the same way, before a key is read from it."""
    from banana_pack.providers import config
    from banana_pack.providers.config import api_key_for, config_dir, get_provider
    from banana_pack.providers.errors import ConfigError

    output = tmp_path / "volume"
    user = output / "user"
    monkeypatch.delenv("BANANA_CONFIG_DIR")
    monkeypatch.setattr(config, "_comfy_user_dir", user)
    monkeypatch.setattr(config, "_comfy_served_dirs", (output,))
    folder = user / "nano_banana_bridge"
    folder.mkdir(parents=True)
    (folder / "keys.json").write_text('{"google": "served-default-key-123456"}')
    for action in (config_dir, lambda: api_key_for(get_provider("google")), config.store_secret):
        with pytest.raises(ConfigError) as info:
            action()
        assert "serves" in str(info.value) and "served-default-key" not in str(info.value)
    assert not (folder / "store.secret").exists()
    summary = run(jobs_summary(base=output))  # the jobs panel says so instead of failing
    assert "serves" in summary["spend"]["error"] and summary["spend"]["ledger"] is None
    # Beside the served folders, as ComfyUI lays them out by default, it is the folder it always was.
    monkeypatch.setattr(config, "_comfy_served_dirs", (tmp_path / "ComfyUI" / "output",))
    assert config_dir() == folder and api_key_for(get_provider("google")) == "served-default-key-123456"


# -- a preset pointed at another server loses the preset's extra key hosts ---------------------------


def test_evolink_pointed_at_another_gateway_never_sends_that_key_to_evolinks_file_api(server, monkeypatch, loopback_only, isolated_config):
    """BANANA_EVOLINK_BASE_URL points the preset at another gateway (a reseller, a proxy) with that
    gateway's key. The preset's allowlist (files-api.evolink.ai, for reference uploads) belongs to
    EvoLink, not to that gateway: an edit must not send the key there. Nothing is looked up or sent."""
    from banana_pack.providers import GenerationRequest, ImageInput, generate
    from banana_pack.providers.config import get_provider
    from helpers import YELLOW_PNG

    monkeypatch.setenv("BANANA_EVOLINK_API_KEY", "sk-reseller-key-0123456789")
    monkeypatch.setenv("BANANA_EVOLINK_BASE_URL", server.url + "/v1")
    with pytest.raises(BananaError, match="Refusing to send the 'evolink' key to files-api.evolink.ai") as refused:
        run(generate("evolink", "Nano Banana 2", GenerationRequest(prompt="edit it", images=(ImageInput(YELLOW_PNG, "image/png", 1, 1),))))
    assert "BANANA_EVOLINK_UPLOAD_URL" in str(refused.value)  # says how to give the gateway's own upload address
    assert loopback_only == [] and server.requests == []  # no lookup of EvoLink's host, nothing sent anywhere
    assert get_provider("evolink").auth_hosts == ()
    # The user can say that the gateway does use EvoLink's file API (providers.json settings), and the
    # preset on its own base URL keeps its allowlist.
    isolated_config.mkdir(parents=True, exist_ok=True)
    (isolated_config / "providers.json").write_text(json.dumps({"settings": {"evolink": {"auth_hosts": ["files-api.evolink.ai"]}}}))
    assert get_provider("evolink").auth_hosts == ("files-api.evolink.ai",)
    monkeypatch.delenv("BANANA_EVOLINK_BASE_URL")
    (isolated_config / "providers.json").unlink()
    assert get_provider("evolink").auth_hosts == ("files-api.evolink.ai",)
    monkeypatch.setenv("BANANA_FAL_BASE_URL", "https://queue.fal.run")  # its own host, written out: allowlist kept
    assert get_provider("fal").auth_hosts == ("*.fal.run",)


# -- the jobs panel acts on a failed-over job with the provider and key that accepted it --------------


def test_the_jobs_panel_cancels_a_failed_over_job_with_the_key_that_accepted_it(server, monkeypatch, tmp_path):
    """fal was asked, openai-hk's fal passthrough (its second key) accepted the job after a failover:
    the journal's provenance names fal, the handle names who served it. Cancelling with fal's key sent
    nothing (the cancel URL is not fal's) and failed; it goes to the passthrough, with that key."""
    from loopback import Reply

    from banana_pack.nodes.store import ResultStore

    monkeypatch.setenv("BANANA_FAL_API_KEY", "fal-asked-first-0123456789")
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY", "sk-hk-first-0123456789")
    monkeypatch.setenv("BANANA_OPENAI_HK_API_KEY_2", "sk-hk-second-0123456789")
    monkeypatch.setenv("BANANA_OPENAI_HK_FAL_BASE_URL", server.url)
    server.route("PUT", r"^/fal-ai/nano-banana/requests/r-1/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    root = tmp_path / "output" / "nano_banana_bridge"
    handle = {
        "request_id": "r-1", "endpoint": "fal-ai/nano-banana", "count": 1,
        "status_url": f"{server.url}/fal-ai/nano-banana/requests/r-1/status",
        "response_url": f"{server.url}/fal-ai/nano-banana/requests/r-1",
        "cancel_url": f"{server.url}/fal-ai/nano-banana/requests/r-1/cancel",
        "_served_by": "openai_hk_fal", "_key_slot": 2,
    }
    ResultStore(root).remember_task("e" * 64, handle, {"provider": "fal", "model_id": "fal-ai/nano-banana"})
    (job,) = run(jobs_summary(base=tmp_path / "output"))["jobs"]
    assert job["provider"] == "openai_hk_fal" and job["can_cancel"]
    status, answer = run(cancel_job({"id": job["id"]}, base=tmp_path / "output"))
    assert status == 200, answer
    (cancel,) = server.hits("PUT", r"/cancel$")
    assert cancel.headers["authorization"] == "Bearer sk-hk-second-0123456789"


# -- an error page in another character set -------------------------------------------------------


@pytest.mark.parametrize("charset, bom", [("utf-16", b""), ("utf-16-le", b""), ("", b"\xff\xfe"), ("latin-1", b"")])
def test_an_error_page_in_another_charset_does_not_carry_the_key_past_redaction(charset, bom, server, monkeypatch):
    """A gateway's plain-text error page, echoing the request, in UTF-16 (an IIS default) was read as
    UTF-8: every character of the key came out with a NUL between, which no redaction form matches, and
    the message showed it (readable once the NULs are dropped). The page is read in its declared
    charset (or by its byte-order mark)."""
    from banana_pack.providers import GenerationRequest, generate
    from loopback import Reply

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    text = f"Invalid credentials. You sent x-goog-api-key: {ECHO_KEY} (check it)"
    encoding = {"utf-16": "utf-16", "utf-16-le": "utf-16-le", "": "utf-16-le", "latin-1": "latin-1"}[charset]
    body = bom + text.encode(encoding)
    content_type = f"text/plain; charset={charset}" if charset else "text/plain"
    server.route("POST", r":generateContent$", Reply(400, body=body, content_type=content_type))
    with pytest.raises(BananaError) as failed:
        run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a cat")))
    shown = str(failed.value)
    assert "Invalid credentials" in shown  # the page was read, in its own charset
    for text_form in (shown, shown.replace("\x00", "")):
        assert ECHO_KEY[:8] not in text_form and ECHO_KEY[-8:] not in text_form, shown


@pytest.mark.parametrize("charset", ["idna", "undefined", "rot13", "no-such-charset"])
def test_an_error_page_in_a_charset_python_cannot_read_it_with_is_still_a_typed_error(charset, server, monkeypatch):
    """Python knows `idna` and `undefined` but neither decodes with errors="replace": the UnicodeError
    left the engine as itself, not as the provider's error with its status."""
    from banana_pack.providers import GenerationRequest, UpstreamUnavailable, generate
    from loopback import Reply

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    body = f"Upstream failed \xff for x-goog-api-key: {ECHO_KEY}".encode("latin-1")
    server.route("POST", r":generateContent$", Reply(501, body=body, content_type=f"text/plain; charset={charset}"))
    with pytest.raises(UpstreamUnavailable) as failed:
        run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a cat")))
    shown = str(failed.value)
    assert failed.value.status == 501 and "Upstream failed" in shown and ECHO_KEY[:8] not in shown


def utf7_spelled_out(text: str) -> bytes:
    """UTF-7 may write any character in its base64 form, letters and digits included (RFC 2152)."""
    import base64

    return b"+" + base64.b64encode(text.encode("utf-16-be")).rstrip(b"=") + b"-"


KEYS_TAB_ECHOES = {
    # name: (body, Content-Type)
    "JSON in UTF-16, no BOM": (json.dumps({"models": [], "debug": f"You sent x-goog-api-key: {ECHO_KEY}"}).encode("utf-16-le"), "application/json"),
    "JSON in UTF-32": (json.dumps({"models": [], "debug": f"You sent x-goog-api-key: {ECHO_KEY}"}).encode("utf-32"), "application/json"),
    "text, charset=utf-16": (f"You sent x-goog-api-key: {ECHO_KEY}".encode("utf-16"), "text/plain; charset=utf-16"),
    "text, charset=utf-16-le": (f"You sent x-goog-api-key: {ECHO_KEY}".encode("utf-16-le"), "text/plain; charset=utf-16-le"),
    "text, UTF-16 by its BOM": (b"\xfe\xff" + f"You sent x-goog-api-key: {ECHO_KEY}".encode("utf-16-be"), "text/plain"),
    "text, charset=utf-7": (b"You sent x-goog-api-key: " + utf7_spelled_out(ECHO_KEY), "text/plain; charset=utf-7"),
    "JSON, charset=utf-7": (b'{"models": [], "debug": "You sent x-goog-api-key: ' + utf7_spelled_out(ECHO_KEY) + b'"}', "application/json; charset=utf-7"),
    "text, charset=latin-1": (f"Vous avez envoyé x-goog-api-key: {ECHO_KEY}".encode("latin-1"), "text/plain; charset=iso-8859-1"),
}


@pytest.mark.parametrize("name", list(KEYS_TAB_ECHOES))
def test_the_keys_tab_test_answer_reads_the_body_in_its_own_charset_before_redacting(name, server, monkeypatch):
    """The Test button's answer reaches the page. It read an accepted answer's body as UTF-8 only: a
    UTF-16 or UTF-32 echo of the key came out with NULs between its characters, a UTF-7 one spelled in
    base64, and redaction matched neither (the page reads both back with one line of script)."""
    from banana_pack.nodes.key_routes import try_key
    from loopback import Reply

    body, content_type = KEYS_TAB_ECHOES[name]
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    server.route("GET", r"/v1beta/models", Reply(200, body=body, content_type=content_type))
    status, answer = run(try_key({"provider": "google"}))
    assert status == 200 and answer["ok"] is True and answer["status"] == 200
    shown = answer["answer"]
    readable = shown.replace("\x00", "")  # as a page reads it back
    assert ECHO_KEY[:8] not in readable and ECHO_KEY[-8:] not in readable, shown
    assert utf7_spelled_out(ECHO_KEY).decode()[1:12] not in shown, shown
    assert "x-goog-api-key" in shown and "\x00" not in shown  # the body was read, in its own charset


def test_the_keys_tab_test_answer_redacts_before_it_folds_lines(server, monkeypatch):
    """A plain-text answer is shown on one line: folding it first turned the line breaks of wrapped
    base64 into spaces, which redaction does not take for a wrapped line, and a line that held
    neither end of a long key was shown."""
    from banana_pack.nodes.key_routes import try_key
    from loopback import Reply
    from test_redaction_echoes import LONG_KEY, leaked, mime

    dump, evidence = mime(LONG_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", LONG_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    server.route("GET", r"/v1beta/models", Reply(200, body=f"Request dump:\r\n{dump}\r\n".encode(), content_type="text/plain"))
    status, answer = run(try_key({"provider": "google"}))
    assert answer["ok"] is True and "Request dump:" in answer["answer"]
    for line in evidence.split("\r\n"):
        assert leaked(answer["answer"], line) is None, answer["answer"]


def test_the_keys_tab_test_reads_an_accepted_answer_only_up_to_a_limit(server, monkeypatch):
    """An accepted answer is read up to key_routes.TEST_ANSWER_BYTES (the engine's default was 128 MB):
    over it, the key still counts as accepted, and nothing of the body is shown."""
    from banana_pack.nodes.key_routes import TEST_ANSWER_BYTES, try_key
    from loopback import Reply

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    huge = json.dumps({"models": [{"name": f"models/m{n}", "debug": "y" * 200} for n in range(TEST_ANSWER_BYTES // 200 + 10)]}).encode()
    server.route("GET", r"/v1beta/models", Reply(200, body=huge, content_type="application/json"))
    status, answer = run(try_key({"provider": "google"}))
    assert status == 200 and answer["ok"] is True and answer["status"] == 200
    assert "models/m0" not in answer["answer"] and f"{TEST_ANSWER_BYTES}-byte limit" in answer["answer"]


# -- a gateway on this machine is never reached through a proxy -------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_gateway_on_this_machine_gets_the_key_directly_never_through_an_http_proxy(host, server, monkeypatch):
    """HTTP_PROXY / ALL_PROXY set for the machine (a corporate proxy), and a gateway on this machine
    over plain http (new-api, one-api): httpx sent the request, key in its header, in clear text to the
    proxy, which cannot even reach this machine's loopback. Loopback is never proxied (as browsers do)."""
    from banana_pack.providers import GenerationRequest, generate
    from banana_pack.providers.engine import transport
    from loopback import LoopbackServer, Reply, fixture

    proxy = LoopbackServer().start()
    try:
        proxy.route("POST", r".*", Reply(502, {"error": {"message": "proxy: cannot reach that address"}}))
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(transport, "_engine", None)  # a client made under this environment
        monkeypatch.setenv("BANANA_GOOGLE_API_KEY", ECHO_KEY)
        monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url.replace("127.0.0.1", host) + "/v1beta")
        server.route("POST", r":generateContent$", Reply(json=fixture("gemini/success_single.json")))
        result = run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a cat")))
        assert len(result.images) == 1
        assert proxy.requests == [], [(r.method, r.path, sorted(r.headers)) for r in proxy.requests]
        (hit,) = server.hits("POST", r":generateContent$")
        assert hit.headers["x-goog-api-key"] == ECHO_KEY
    finally:
        proxy.stop()
