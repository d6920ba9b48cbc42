"""A gateway echoes the key back in forms a plain search misses; none of them leaves the pack.

Gateways and proxies echo request headers in error bodies and response headers, and on the way
the key is base64-encoded (`Authorization: Basic base64(user:key)`, at any of three byte
alignments and with any user name), upper- or lower-cased (proxies normalise header values),
escaped once more (a URL inside a URL, a JSON error quoted inside the gateway's own JSON), escaped
the way PHP, Go or an HTML error page escapes, or logged as a Python bytes repr (httpcore's DEBUG
lines). The fake gateway below answers with each form in the model's words, in a JSON error, in
a plain-text error and (if it is a form a header can carry) in a response header, through the real engine and node code; everything
the node returns, writes or logs is then searched for every 8-character run of the form.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import traceback
from typing import Callable
from urllib.parse import quote

import pytest

from banana_pack.nodes.key_routes import try_key
from banana_pack.nodes.render import RenderInputs, render, report_json
from banana_pack.providers.errors import BananaError
from banana_pack.providers.redaction import MARKER, redact, redact_data, register_secret
from helpers import ProgressLines, png_bytes, run
from loopback import Recorded, Reply, fixture

# Printable ASCII with the characters that URL, JSON, HTML and repr escaping rewrite.
KEY = "AIzaGw/Ech0+K3y=7:'q\"&<z\\Xq9TmB2vLr8Wd"
GEN_PATH = r":generateContent$"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def go_json(text: str) -> str:
    """Go's encoding/json: \\" and \\\\, and <, > and & as \\u003c, \\u003e, \\u0026."""
    return json.dumps(text)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def wrapped(text: str, width: int, sep: str) -> tuple[str, Callable[[int], int]]:
    """`text` broken into lines of `width` (MIME: 76, PEM: 64), and where each character went."""
    lines = sep.join(text[i : i + width] for i in range(0, len(text), width))
    return lines, lambda i: i + (i // width) * len(sep)


def mime(key: str, width: int = 76, sep: str = "\r\n") -> tuple[str, str]:
    """A gateway's debug dump: the request's headers, base64-encoded and wrapped, with a whole line
    inside the key's part (a long key: a fal key is 69 characters, its base64 over 90)."""
    for pad in range(width):
        data = f"Request headers:\r\nx-pad: {'x' * pad}\r\nauthorization: Key {key}\r\n".encode()
        start = len(data.split(key.encode())[0])
        first, last = start * 4 // 3 + 3, (start + len(key.encode())) * 4 // 3 - 3  # the characters that hold the key's bits alone
        if -(-first // width) * width + width <= last:
            break
    else:
        raise AssertionError("the key is too short to fill a line")
    lines, moved = wrapped(base64.b64encode(data).decode(), width, sep)
    return lines, lines[moved(first) : moved(last)]


def wrapped_echoes(key: str) -> dict[str, tuple[str, str]]:
    """Base64 wrapped over lines: MIME at 76 columns, PEM at 64, a folded header, a dump quoted in JSON."""
    return {
        "MIME base64, CRLF": mime(key),
        "PEM-width base64, LF": mime(key, 64, "\n"),
        "folded base64": mime(key, 76, "\r\n "),
        "wrapped base64, JSON-escaped breaks": mime(key, 76, "\\r\\n"),
    }


def hex_forms(key: str) -> dict[str, tuple[str, str]]:
    data = key.encode()
    forms = {
        "hex": data.hex(),
        "hex, upper case": data.hex().upper(),
        "hex, spaced": " ".join(f"{b:02x}" for b in data),
        "hex, colons": ":".join(f"{b:02X}" for b in data),
        "hex dump, xxd groups": " ".join(data.hex()[i : i + 4] for i in range(0, 2 * len(data), 4)),
        "hex, \\x escapes": "".join(f"\\x{b:02x}" for b in data),
        "hex, 0x bytes": " ".join(f"0x{b:02x}" for b in data),
        "percent-encoded bytes": "".join(f"%{b:02X}" for b in data),
    }
    forms = {name: (text, text) for name, text in forms.items()}
    forms["hex, after an odd digit"] = ("f" + data.hex(), data.hex())  # a contiguous run whose bytes start one digit in
    return forms


def echoes(key: str) -> dict[str, tuple[str, str]]:
    """name -> (what the gateway echoes, the part of it that is the key's alone).

    The evidence of a base64 form leaves out 3 characters at each end: they also hold bits of the
    user name or of what follows, and the user name is no secret.
    """

    def basic(text: str, encode=b64) -> tuple[str, str]:
        encoded = encode(text)
        user_part = len(text) - len(key)
        return f"Basic {encoded}", encoded[user_part * 4 // 3 + 3 : -4]

    return {
        # base64 at the key's three byte offsets (the user name's length + 1, modulo 3), and alone
        "basic, offset 1": basic(":" + key),
        "basic, offset 2": basic("u:" + key),
        "basic, offset 0": basic("uu:" + key),
        "basic, any user": basic("gateway-user@example.com:" + key),
        "base64 of the key": (b64(key), b64(key)[:-4]),
        "base64url": basic("u:" + key, lambda t: base64.urlsafe_b64encode(t.encode()).decode()),
        "basic, upper-cased": (basic(":" + key)[0].upper(), basic(":" + key)[1].upper()),
        # case
        "upper case": (key.upper(), key.upper()),
        "lower case": (key.lower(), key.lower()),
        # escapes beyond quote, quote_plus and plain JSON
        "percent-encoded twice": (quote(quote(key, safe=""), safe=""),) * 2,
        "JSON, PHP's \\/": (json.dumps(key)[1:-1].replace("/", "\\/"),) * 2,
        "JSON, Go's \\u0026": (go_json(key),) * 2,
        "JSON inside JSON": (json.dumps(json.dumps(key))[1:-1],) * 2,
        "HTML-escaped": (html.escape(key),) * 2,
        "bytes repr": (repr(key.encode())[2:-1],) * 2,
        # hex dumps
        **hex_forms(key),
    }


ECHOES = echoes(KEY)
# A key long enough that its base64 fills a whole wrapped line (a fal key, key id and secret, is 69
# characters): the line holds neither end of the key, which is all the search looked for.
LONG_KEY = "0f3c2d4e-1a2b-4c3d-9e8f-0123456789ab:Zq7Vx2Kp9Lm4Tn8RbWc3/Yd6Hs1Jf5Gt0Pa"
# name -> (the key, what the gateway echoes, the key's part of it)
CASES = {**{name: (KEY, *echo) for name, echo in ECHOES.items()}, **{f"long key, {name}": (LONG_KEY, *echo) for name, echo in wrapped_echoes(LONG_KEY).items()}}


def leaked(text: str, evidence: str) -> str | None:
    """The first 8-character run of `evidence` found in `text`."""
    return next((evidence[i : i + 8] for i in range(len(evidence) - 7) if evidence[i : i + 8] in text), None)


def assert_clean(where: str, text: str, evidence: str) -> None:
    run_found = leaked(text, evidence)
    assert run_found is None, f"{run_found!r} (of the echoed key) in {where}: {text[:600]}"


def in_header(echo: str) -> bool:
    """A proxy echoes a header value as it was sent or re-encoded, never JSON-escaped, on one line."""
    return "\\" not in echo and "\n" not in echo


def gateway_reply(echo: str):
    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        header = {"x-echo-authorization": echo} if in_header(echo) else {}
        if prompt.startswith("json error"):
            said = f"Invalid credentials. Request headers: Authorization: {echo}"
            return Reply(401, json={"error": {"code": 401, "message": said, "status": "UNAUTHENTICATED"}}, headers=header)
        if prompt.startswith("plain error"):
            return Reply(400, body=f"Bad request. You sent: Authorization: {echo} (check it)".encode(), content_type="text/plain", headers=header)
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"] = [
            {"text": f"The gateway saw: Authorization: {echo}."},
            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(4, 3)).decode()}},
        ]
        return Reply(json=body, headers=header)

    return handler


@pytest.fixture
def every_log_line(caplog, monkeypatch):
    """Every record at DEBUG, httpcore's header lines included (as ComfyUI --verbose DEBUG logs them)."""
    for name in ("httpx", "httpcore", "nano_banana_bridge"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    caplog.set_level(logging.DEBUG)
    return caplog


def google(server, monkeypatch, echo: str, key: str = KEY) -> None:
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", key)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.route("POST", GEN_PATH, gateway_reply(echo))


def inputs(prompts: str, on_failure: str = "fail") -> RenderInputs:
    return RenderInputs(prompts=[prompts], prompt_per_line=True, provider="google", model="Nano Banana Pro", resolution="1K", on_failure=on_failure)


@pytest.mark.parametrize("name", list(CASES))
def test_an_echoed_key_reaches_no_output_report_sidecar_status_or_log(name, server, monkeypatch, tmp_path, every_log_line):
    key, echo, evidence = CASES[name]
    google(server, monkeypatch, echo, key)
    sink = ProgressLines()
    out = run(render(inputs("draw a cat\njson error please\nplain error please", "flag"), store_root=tmp_path / "store", progress=sink))
    assert out.report["counts"] == {"ok": 1, "failed": 2}
    assert "The gateway saw" in out.text and "Invalid credentials" in report_json(out.report) and "Bad request" in report_json(out.report)
    assert_clean("the text output", out.text, evidence)
    assert_clean("the report output", report_json(out.report), evidence)
    assert_clean("the conversation output", json.dumps(out.conversation, default=str), evidence)
    assert_clean("the status text", "\n".join(sink.lines), evidence)
    files = [p for p in (tmp_path / "store").rglob("*.json") if p.is_file()]
    assert len(files) == 3  # a sidecar, a cache entry, the report
    for path in files:
        assert_clean(str(path.relative_to(tmp_path)), path.read_text(encoding="utf-8"), evidence)
    logged = "\n".join(record.getMessage() for record in every_log_line.records)
    if in_header(echo):
        assert "x-echo-authorization" in logged  # httpcore logged the echoing header: the search looks at the right lines
    assert_clean("the log", logged, evidence)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("prompt", ["json error", "plain error"])
def test_an_echoed_key_reaches_no_exception(name, prompt, server, monkeypatch, tmp_path, every_log_line):
    key, echo, evidence = CASES[name]
    google(server, monkeypatch, echo, key)
    with pytest.raises(BananaError) as info:
        run(render(inputs(prompt), store_root=tmp_path / "store"))
    exc = info.value
    assert ("Invalid credentials" if prompt == "json error" else "Bad request") in str(exc)
    assert_clean("the exception", str(exc), evidence)
    assert_clean("the exception's repr", repr(exc), evidence)
    # What ComfyUI logs and keeps in /history for a failed node: the traceback, with every chained cause.
    assert_clean("the formatted exception", "".join(traceback.format_exception(exc)), evidence)
    assert_clean("the log", "\n".join(record.getMessage() for record in every_log_line.records), evidence)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("status", [200, 401])
def test_the_keys_tab_test_button_shows_the_gateways_words_without_the_key(name, status, server, monkeypatch, every_log_line):
    """The Test button answers the browser with the provider's own words, accepted or not."""
    key, echo, evidence = CASES[name]
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", key)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url + "/v1beta")
    said = f"Request headers: Authorization: {echo}"
    answer_body = {"models": [], "debug": said} if status == 200 else {"error": {"code": status, "message": said, "status": "UNAUTHENTICATED"}}
    server.route("GET", r"/v1beta/models", Reply(status, json=answer_body))
    code, answer = run(try_key({"provider": "google"}))
    assert code == 200 and answer["status"] == status and "Request headers" in answer["answer"]
    assert_clean("the Test button's answer", f"{answer['answer']} {answer.get('url')}", evidence)  # as the browser shows it
    assert_clean("the log", "\n".join(record.getMessage() for record in every_log_line.records), evidence)


def test_a_basic_header_cut_by_the_error_summary_leaves_no_part_of_the_key(server, monkeypatch, tmp_path):
    """The engine keeps 300 characters of a non-JSON error body: the cut falls inside the base64."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    encoded = b64("u:" + KEY)
    body = "x" * 265 + f" Authorization: Basic {encoded} and more"  # the cut falls 18 characters into the base64
    server.route("POST", GEN_PATH, Reply(400, body=body.encode(), content_type="text/plain"))
    with pytest.raises(BananaError) as info:
        run(render(inputs("anything"), store_root=tmp_path))
    text = str(info.value)
    assert "x" * 50 in text and "Basic" in text  # the body is summarised, up to the cut...
    assert_clean("the exception", text, encoded[3:18])  # ...without the part of the key the cut left


# -- redact() itself, form by form ------------------------------------------------------------------

UNIT_KEY = "sk-unit/Echo+Key=42:'q\"&<z\\Mx7Rt3Wp9Kd"


def every_form(key: str) -> dict[str, tuple[str, str]]:
    """Every form and alignment redact() covers: the new ones, the old ones and the cut ones."""
    forms = dict(echoes(key))
    forms.update(
        {
            "raw": (key, key),
            "quote": (quote(key),) * 2,
            "quote, all": (quote(key, safe=""),) * 2,
            "quote, lower-case hex": (quote(key, safe="").lower(),) * 2,
            "JSON": (json.dumps(key)[1:-1],) * 2,
            "swapped case": (key.swapcase(),) * 2,
            # No encoder escapes letters, digits or -._~ (RFC 3986's unreserved characters); any may escape the rest.
            "\\u-escaped reserved characters": ("".join(c if c.isalnum() or c in "-._~" else f"\\u{ord(c):04x}" for c in key),) * 2,
        }
    )
    for offset, user in enumerate(["uu", "", "u"]):  # the key's byte offset is len(user) + 1
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(f"{user}:{key}".encode()).decode()
            skip = (len(user) + 1) * 4 // 3 + 2
            forms[f"{name} of user:key, offset {offset}"] = (encoded, encoded[skip:-3])
            forms[f"{name} of user:key, offset {offset}, head cut"] = (encoded[:30], encoded[skip:30])
            forms[f"{name} of user:key, offset {offset}, tail cut"] = (encoded[-30:], encoded[-30:-3])
    return forms


def test_redact_covers_every_echoed_form_and_alignment():
    register_secret(UNIT_KEY)
    for name, (echo, evidence) in every_form(UNIT_KEY).items():
        for text in (echo, f"said: {echo}.", f"Authorization: Basic {echo}\n", f"{echo}{echo}"):
            shown = redact(text)
            assert MARKER in shown, f"{name}: nothing redacted in {text!r}"
            assert leaked(shown, evidence) is None, f"{name}: {leaked(shown, evidence)!r} left in {shown!r}"
    # Cut pieces of the raw key and of its escaped forms still go from 8 characters.
    data = UNIT_KEY.encode()
    for piece in (UNIT_KEY[:8], UNIT_KEY[-8:], quote(UNIT_KEY, safe="")[:14], json.dumps(UNIT_KEY)[1:-1].upper()[-12:], data[:8].hex(), " ".join(f"{b:02x}" for b in data[-9:])):
        assert redact(f"cut: {piece}") == f"cut: {MARKER}", piece
    shown = redact_data({"h": [f"Basic {b64('u:' + UNIT_KEY)}"], "n": 1})
    assert shown["n"] == 1 and MARKER in shown["h"][0] and leaked(shown["h"][0], b64("u:" + UNIT_KEY)[5:-4]) is None
    # Wrapped base64 of a key long enough to fill a line, and a line break a few characters into a key's base64.
    long_key = LONG_KEY.replace("0f3c", "a9e1")
    register_secret(long_key)
    for name, (echo, evidence) in wrapped_echoes(long_key).items():
        for text in (echo, f"dump:\n{echo}\n-- end", f"{echo}{echo}"):
            shown = redact(text)
            assert leaked(shown, evidence) is None, f"{name}: {leaked(shown, evidence)!r} left in {shown!r}"
    user = "gateway-user:"  # 13 bytes: the key's part of the base64 starts at character 18
    encoded = b64(user + UNIT_KEY)
    for inside in range(1, 8):  # a piece too short to be found alone, before the break
        shown = redact(encoded[: 18 + inside] + "\r\n" + encoded[18 + inside :])
        assert shown.startswith(encoded[:16]) and shown.index(MARKER) <= 18, (inside, shown)


def test_redact_leaves_ordinary_text_alone():
    register_secret(UNIT_KEY)
    image = base64.b64encode(png_bytes(64, 48, (10, 200, 90))).decode()
    texts = [
        "The model could not draw a person in a public place. Try again with another prompt.",
        f"Basic {b64('someone:Zq7Vx2Kp9Lm4Tn8RbWc3')}",
        image,
        image.lower(),
        json.dumps({"error": {"message": "bad \"key\" / path \\ here & <there>", "url": "https://x.example/a%20b?c=d&e=%2F"}}),
        html.escape("<p>sk-unit is a prefix, &amp; so is sk-</p>"),
        "%2F%2f%252F \\u002f \\/ &amp;&#39; " * 20,
        "SK-UNIT is a prefix, and so is sk-",
        # hex that is not the key: digests, ids, a dump of other bytes; base64 wrapped over lines
        "sha256 " + hashlib.sha256(b"x").hexdigest() + " request 7d9e1f20-5c4b-4a39-8e7d-6f5a4b3c2d1e",
        " ".join(f"{b:02x}" for b in png_bytes(8, 8)),
        wrapped(image, 76, "\r\n")[0],
        wrapped(base64.b64encode(b"a lighthouse at dusk, " * 20).decode(), 64, "\n")[0],
        "A photograph of a lighthouse\nat dusk, with the beam\nsweeping over calm water\n" * 10,
    ]
    for text in texts:
        assert redact(text) == text, text[:80]
