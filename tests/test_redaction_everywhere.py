"""A key never leaves the pack, in any form: outputs, reports, sidecars, status text, exceptions.

The fake provider is hostile: the model's words echo the key raw, percent-encoded (quote,
quote_plus), JSON-escaped, and cut off at either end of the text; an error body carries the key
where the pack truncates it. Everything the node returns or writes is then searched for every
form of the key and for pieces of it.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from banana_pack.nodes.render import RenderInputs, render, report_json
from banana_pack.providers.errors import BananaError
from banana_pack.providers.redaction import MARKER, clip, redact, redact_data, register_secret
from helpers import ProgressLines, png_bytes, run
from loopback import Recorded, Reply, fixture

# Printable ASCII with the characters that encoders and JSON rewrite.
KEY = 'AIzaEcho/Key+Pl=us"q\\z:0123456789abcdef'
GEN_PATH = r":generateContent$"


def forms(key: str) -> dict[str, str]:
    return {
        "raw": key,
        "quote": quote(key),
        "quote-all": quote(key, safe=""),
        "quote_plus": quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "head": key[:16],  # what a [:n] cut leaves
        "tail": key[-16:],
    }


def echo_text(key: str) -> str:
    f = forms(key)
    # Starts with the end of the key (a cut from the left), ends with its beginning (a cut from the right).
    return f"{f['tail']} raw {f['raw']} url {f['quote-all']} path {f['quote']} form {f['quote_plus']} json \"{f['json']}\" cut {f['head']}"


def assert_clean(where: str, text: str) -> None:
    for name, form in forms(KEY).items():
        assert form not in text, f"{name} form of the key in {where}: {text[:400]}"


@pytest.fixture
def echoing(server, monkeypatch):
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)

    def handler(req: Recorded) -> Reply:
        prompt = req.json()["contents"][0]["parts"][0]["text"]
        body = fixture("gemini/success_single.json")
        parts = [{"text": echo_text(KEY)}]
        if not prompt.startswith("refuse"):
            parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(4, 3)).decode()}})
        body["candidates"][0]["content"]["parts"] = parts
        return Reply(json=body)

    server.route("POST", GEN_PATH, handler)
    return server


def test_outputs_reports_sidecars_and_status_carry_no_form_of_the_key(echoing, tmp_path):
    sink = ProgressLines()
    inputs = RenderInputs(prompts=["draw 1\nrefuse 2\ndraw 3"], prompt_per_line=True, provider="google", model="Nano Banana Pro", resolution="1K", on_failure="flag")
    out = run(render(inputs, store_root=tmp_path / "store", progress=sink))
    assert MARKER in out.text and out.report["counts"] == {"ok": 2, "refused": 1}
    assert_clean("the text output", out.text)
    assert_clean("the report output", report_json(out.report))
    assert_clean("the report rows", repr(out.report["items"]))
    assert_clean("the status text", "\n".join(sink.lines))
    assert_clean("the conversation output", json.dumps(out.conversation))  # it carries the model's words
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.suffix == ".json"]
    assert len(files) == 5  # two sidecars, two cache entries, one report
    for path in files:
        assert_clean(str(path.relative_to(tmp_path)), path.read_text(encoding="utf-8"))
    # The cache still answers after redaction: its entries verify.
    again = run(render(inputs, store_root=tmp_path / "store"))
    assert again.report["counts"] == {"cached": 2, "refused": 1}
    assert_clean("the cached text output", again.text)


def test_a_refusal_echoing_the_key_raises_without_it(echoing, tmp_path):
    with pytest.raises(BananaError) as info:
        run(render(RenderInputs(prompts=["refuse this"], provider="google", model="Nano Banana Pro", resolution="1K"), store_root=tmp_path))
    assert "Model said" in str(info.value)
    assert_clean("the exception", str(info.value))
    assert_clean("the exception's repr", repr(info.value))
    assert_clean("the exception's model_text", json.dumps(redact_data({"t": info.value.model_text})))


def test_a_key_cut_by_the_error_summary_does_not_leak_its_first_part(server, monkeypatch, tmp_path):
    """The engine keeps 300 characters of a non-JSON error body: the key straddles that cut."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", KEY)
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    body = ("x" * 280 + f" key={KEY} and more text after it").encode()  # the cut falls 15 characters into the key
    server.route("POST", GEN_PATH, Reply(400, body=body, content_type="text/plain"))
    with pytest.raises(BananaError) as info:
        run(render(RenderInputs(prompts=["anything"], provider="google", model="Nano Banana Pro", resolution="1K"), store_root=tmp_path))
    text = str(info.value)
    assert "x" * 50 in text  # the body is summarised...
    assert KEY[:9] not in text  # ...without the part of the key the cut left


def test_redact_covers_encoded_and_cut_forms():
    key = "sk-unit/Test+Key=42:\"x\"\\y-abcdefghij"
    register_secret(key)
    for name, form in forms(key).items():
        text = f"before {form} after" if name not in ("head", "tail") else (f"cut: {form}" if name == "head" else f"{form} was cut")
        assert form not in redact(text), name
        assert MARKER in redact(text), name
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(key, safe=""))
    assert redact(f"percent {lower_hex} end") == f"percent {MARKER} end"  # lower-case hex is the same URL
    assert redact(f"cut with ellipsis: {key[:12]}...") == f"cut with ellipsis: {MARKER}..."
    # Redact first, then truncate: a cut through the key leaves nothing of it.
    message = "y" * 100 + key
    assert key[:6] not in clip(message, 110) and clip(message, 110).startswith("y" * 100 + MARKER[:10])
    assert redact_data({"a": [key, {"b": f"x{quote_plus(key)}"}], "n": 3}) == {"a": [MARKER, {"b": f"x{MARKER}"}], "n": 3}
    # Ordinary text is left alone, including short shared prefixes.
    assert redact("sk-unit is a prefix, and so is sk-") == "sk-unit is a prefix, and so is sk-"
