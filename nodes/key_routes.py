"""Keys from the UI: status per provider, a write-only route for the keys file, and a key test.

  GET  /nano_banana_bridge/keys        each key owner: where its key comes from (env / keys file / missing)
  POST /nano_banana_bridge/keys        {"provider": owner, "key": "..."} sets, {"key": ""} clears the keys-file entry
  POST /nano_banana_bridge/keys/test   {"provider": id}: the cheapest authenticated call, and the provider's answer

No route ever returns a key. Keys go to keys.json (mode 600) in the config folder, never into
ComfyUI's settings (served by /userdata). Writes and tests are accepted only from a loopback
client that names this machine in its Host header (localhost or a loopback address: a page using DNS
rebinding names its own site), unless BANANA_ALLOW_REMOTE_KEY_WRITES=1, and only as JSON from the
same origin (a web page on another site cannot send those without the browser asking first).

The handlers take plain values and return (HTTP status, JSON body), so they are tested without
a server; register_key_routes() adapts them to ComfyUI's aiohttp routes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ..providers.client import provider_call
from ..providers.config import KEYS_FILE, config_dir, display_path, env_name, get_provider, schema_providers
from ..providers.engine import CallContext, Response, get_engine
from ..providers.errors import BananaError, ConfigError
from ..providers.redaction import clip, redact, redact_data, register_secret
from .server_routes import json_answer, register_once

log = logging.getLogger("nano_banana_bridge")

ROUTE = "/nano_banana_bridge/keys"
TEST_ROUTE = "/nano_banana_bridge/keys/test"
REMOTE_WRITES_ENV = "BANANA_ALLOW_REMOTE_KEY_WRITES"
MAX_KEY_LENGTH = 4096
MAX_BODY = 16_384
TEST_TIMEOUT = 30.0
ANSWER_EXCERPT = 400
TEST_ANSWER_BYTES = 1 << 20  # an accepted answer is read this far (a gateway's long model list), not the engine's 128 MB

# The cheapest authenticated call per protocol family: (path on the base URL, statuses that mean
# "the key was accepted"). Gemini's models.list and the OpenAI-style GET /models cost nothing; fal's
# queue has no free listing, so ask for the status of a made-up request: a valid key gets 404
# "not found", a bad one 401/403. A provider can set its own in the catalog's options (key_test_path).
FAMILY_PROBES: dict[str, tuple[str, tuple[int, ...]]] = {
    "gemini": ("models?pageSize=1", ()),
    "openai_images": ("models", ()),
    "openai_chat": ("models", ()),
    "async_tasks": ("models", ()),
    "fal_queue": ("fal-ai/nano-banana/requests/00000000-0000-0000-0000-000000000000/status", (404,)),
    "vertex": ("publishers/google/models/gemini-2.5-flash-image", ()),  # a publisher model's card: free
    "vydra": ("account/rate-limits", ()),
}

_write_lock = threading.Lock()


# -- status -------------------------------------------------------------------------------------


def _file_keys() -> dict[str, Any] | None:
    """The keys file as a dict; {} when absent; None when it is not a JSON object (never echoed: it holds keys)."""
    path = config_dir() / KEYS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def key_status() -> dict[str, Any]:
    """Per key owner: its providers, the variables looked up, and where the key comes from. Never a key.

    A broken providers.json lists the built-in presets; a refused config folder is an `error` field.
    """
    owners: dict[str, dict[str, Any]] = {}
    try:
        file_keys = _file_keys()
        keys_file, error = display_path(config_dir() / KEYS_FILE), None
    except ConfigError as exc:
        file_keys, keys_file, error = {}, KEYS_FILE, exc.headline()
    for spec in schema_providers():
        owner = spec.key_owner
        entry = owners.get(owner)
        if entry is None:
            env_names = [env_name(owner, "API_KEY"), *spec.key_env]
            from_env = next((name for name in env_names if os.environ.get(name, "").strip()), None)
            stored = (file_keys or {}).get(owner)
            in_file = isinstance(stored, str) and bool(stored.strip())
            entry = owners[owner] = {
                "owner": owner,
                "providers": [],
                "env_names": env_names,
                "source": "env" if from_env else "file" if in_file else None,
                "env_name": from_env,
                "in_file": in_file,  # also true when an environment variable overrides it
                "key_help": spec.key_help,
            }
        entry["providers"].append({"id": spec.id, "display_name": spec.display_name, "family": spec.family})
    status = {"keys_file": keys_file, "keys_file_readable": file_keys is not None, "remote_writes": remote_writes_allowed(), "owners": list(owners.values())}
    if error:
        status["error"] = error
    return status


# -- who may write --------------------------------------------------------------------------------


def remote_writes_allowed() -> bool:
    return os.environ.get(REMOTE_WRITES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def names_this_machine(host: str | None) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, any port."""
    if not host:
        return False
    name = urlsplit(f"//{host.strip()}").hostname or ""
    # 0.0.0.0 in a browser's address bar reaches this machine too (Linux); no site can be named so.
    return name in ("localhost", "0.0.0.0", "::") or name.endswith(".localhost") or is_loopback(name)


def refuse_cross_origin(headers: Mapping[str, str]) -> tuple[int, dict] | None:
    """Why a browser request from another site or origin is refused, on every route of the pack, or None.

    ComfyUI refuses those itself, except when started with --enable-cors-header: then it tells the
    browser that any site may read every answer (the jobs and spend, which keys are set) and send
    JSON. The pack's own pages are the same origin: their reads carry no Origin, their writes this one."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get("sec-fetch-site", "") == "cross-site":
        return 403, {"error": "Refused a request from another web site."}
    origin, host = lowered.get("origin"), lowered.get("host")
    if origin and host and urlsplit(origin).netloc.lower() != host.lower():
        return 403, {"error": "Refused a request from another origin."}
    return None


def refuse_write(remote: str | None, headers: Mapping[str, str]) -> tuple[int, dict] | None:
    """Why this request may not write or test keys, or None when it may."""
    remote_allowed = remote_writes_allowed()
    if not is_loopback(remote) and not remote_allowed:
        return 403, {"error": f"Keys can be set only from this machine (the request came from {remote or 'an unknown address'}). Set {REMOTE_WRITES_ENV}=1 to allow it."}
    lowered = {k.lower(): v for k, v in headers.items()}
    if not remote_allowed and not names_this_machine(lowered.get("host")):
        # DNS rebinding: a web page whose own name now resolves to 127.0.0.1 reaches this server
        # from loopback, as its own origin (so Origin equals Host); only the name gives it away.
        return 403, {"error": f"Keys can be set only at a localhost or loopback address (this request named '{lowered.get('host') or 'no host'}'). Behind a proxy, set {REMOTE_WRITES_ENV}=1."}
    refused = refuse_cross_origin(headers)
    if refused:
        return refused
    if not lowered.get("content-type", "").lower().startswith("application/json"):
        return 415, {"error": "Send JSON (Content-Type: application/json)."}
    return None


# -- writing --------------------------------------------------------------------------------------


def _owners() -> set[str]:
    return {spec.key_owner for spec in schema_providers()}


def _check_key(key: str) -> str | None:
    if len(key) > MAX_KEY_LENGTH:
        return f"That key is {len(key)} characters long; keys are at most {MAX_KEY_LENGTH}."
    if not all("!" <= ch <= "~" for ch in key):  # the rule config.py applies when it loads a key
        return "A key is plain ASCII without spaces, line breaks or other characters: paste only the key."
    return None


def _write_keys_file(data: dict[str, Any]) -> Path:
    """Replace keys.json atomically, readable only by its owner (mode 600) from the first byte."""
    path = config_dir() / KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{KEYS_FILE}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)
    return path


def set_key(body: Any) -> tuple[int, dict]:
    """Set or clear one owner's entry in the keys file; answer with that owner's status (never the key)."""
    if not isinstance(body, dict) or not isinstance(body.get("provider"), str):
        return 400, {"error": 'Send {"provider": "<key owner>", "key": "<key>"}; an empty key clears the entry.'}
    owner, key = body["provider"].strip().lower(), body.get("key")
    if owner not in _owners():
        return 400, {"error": f"Unknown provider '{owner[:40]}'. Known: {', '.join(sorted(_owners()))}."}
    if key is not None and not isinstance(key, str):
        return 400, {"error": "The key must be text."}
    key = (key or "").strip()
    problem = _check_key(key) if key else None
    if problem:
        return 400, {"error": problem}
    with _write_lock:
        try:
            data, shown = _file_keys(), display_path(config_dir() / KEYS_FILE)
        except ConfigError as exc:
            return 409, {"error": exc.headline()}
        if data is None:
            return 409, {"error": f"{shown} is not a JSON object; fix or delete it by hand (it was left as it is)."}
        if key:
            register_secret(key)
            data[owner] = key
        elif owner in data:
            del data[owner]
        else:
            return 200, _owner_status(owner, "No key was stored for it in the keys file.")
        try:
            _write_keys_file(data)
        except OSError as exc:
            return 500, {"error": f"Could not write {shown}: {exc.strerror or type(exc).__name__}."}
    log.info("Nano Banana Bridge: %s the keys-file entry for %s", "set" if key else "cleared", owner)
    return 200, _owner_status(owner, "Saved." if key else "Cleared.")


def _owner_status(owner: str, message: str) -> dict:
    entry = next(e for e in key_status()["owners"] if e["owner"] == owner)
    note = ""
    if entry["source"] == "env":
        note = f" {entry['env_name']} is set in the environment and takes precedence over the keys file."
    return {"message": message + note, "owner": entry}


# -- testing --------------------------------------------------------------------------------------


def _excerpt(response: Response) -> str:
    """The start of an accepted answer, for the page: read in its own charset as the engine reads an
    error page (a UTF-16 or UTF-7 echo of the key would pass redaction unread), redacted, then cut."""
    text = response.text()
    try:  # strings redacted before serialising: escaping them again could hide a key escaped twice already
        text = json.dumps(redact_data(json.loads(text)), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        text = " ".join(redact(text).split())  # redacted first: folded, a key's wrapped base64 no longer looks wrapped
    return clip(text, ANSWER_EXCERPT - 3)


async def try_key(body: Any) -> tuple[int, dict]:
    """The cheapest authenticated call for a provider, through the engine (which attaches the key only on its origin).

    Answers 200 with {"ok", "status", "answer"}: the provider's own words either way (redacted).
    """
    if not isinstance(body, dict) or not isinstance(body.get("provider"), str):
        return 400, {"error": 'Send {"provider": "<provider id>"}.'}
    try:
        spec = get_provider(body["provider"].strip())
    except BananaError as exc:
        return 400, {"error": exc.headline()}
    probe = spec.options.get("key_test_path") or FAMILY_PROBES.get(spec.family, (None, ()))[0]
    ok_statuses = () if spec.options.get("key_test_path") else FAMILY_PROBES.get(spec.family, (None, ()))[1]
    if not probe or not spec.models:
        return 200, {"ok": None, "status": None, "answer": f"No test call is known for {spec.display_name}; run a generation to check the key."}
    try:
        # provider_call settles the endpoint and the credential (Vertex: a service-account key becomes an access token).
        call = await asyncio.wait_for(provider_call(spec, spec.models[0], CallContext(), get_engine()), TEST_TIMEOUT)
        testing = call.get(str(probe), status=f"Testing the key for {spec.display_name}", ok_statuses=tuple(ok_statuses), max_bytes=TEST_ANSWER_BYTES)
        response = await asyncio.wait_for(testing, TEST_TIMEOUT)
    except BananaError as exc:
        if exc.status is not None and (200 <= exc.status < 300 or exc.status in ok_statuses):  # accepted; its answer was not readable
            return 200, {"ok": True, "status": exc.status, "answer": f"key accepted, but the answer is not shown: {redact(exc.message)}"}
        return 200, {"ok": False, "status": exc.status, "answer": redact(str(exc))}
    except asyncio.TimeoutError:
        return 200, {"ok": False, "status": None, "answer": f"No answer from {spec.display_name} within {TEST_TIMEOUT:.0f} s."}
    what = "key accepted" + (f" (HTTP {response.status} for a made-up request, as expected)" if response.status in ok_statuses else "")
    return 200, {"ok": True, "status": response.status, "answer": f"{what}: {_excerpt(response)}", "url": redact(call.url(str(probe)))}


# -- aiohttp glue ---------------------------------------------------------------------------------

async def guarded_read(web, request, answer: Callable[[], Any]):
    """A GET: refused to another site or origin (refuse_cross_origin); `answer()` (plain or async) gives the JSON."""
    refused = refuse_cross_origin(request.headers)
    if refused:
        return json_answer(web, *refused)
    result = answer()
    return json_answer(web, 200, await result if asyncio.iscoroutine(result) else result)


async def guarded_write(web, request, handler: Callable[[Any], Any]):
    """A POST that writes or spends: refused unless refuse_write allows it, with a JSON body of at
    most MAX_BODY bytes; `handler(body)` (plain or async) gives the (status, JSON) answer."""
    return await _json_post(web, request, handler, refuse_write(request.remote, request.headers), MAX_BODY)


async def guarded_query(web, request, handler: Callable[[Any], Any], max_body: int = MAX_BODY):
    """A POST that only reads (a question too large for a query string): refused to another site or
    origin like a GET, and taken only as JSON (which no page on another site sends without the
    browser asking first), with a body of at most `max_body` bytes; `handler(body)` gives (status, JSON)."""
    refused = refuse_cross_origin(request.headers)
    if not refused and not request.headers.get("Content-Type", "").lower().startswith("application/json"):
        refused = 415, {"error": "Send JSON (Content-Type: application/json)."}
    return await _json_post(web, request, handler, refused, max_body)


async def _json_post(web, request, handler: Callable[[Any], Any], refused: tuple[int, dict] | None, max_body: int):
    if refused:
        return json_answer(web, *refused)
    raw = await request.content.read(max_body + 1)
    try:
        if len(raw) > max_body:
            raise ValueError("too large")
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        return json_answer(web, 400, {"error": f"Send a JSON body of at most {max_body} bytes."})
    result = handler(body)
    return json_answer(web, *(await result if asyncio.iscoroutine(result) else result))


@register_once
def register_key_routes(routes, web) -> None:
    @routes.get(ROUTE)
    async def keys_status(request):
        return await guarded_read(web, request, key_status)

    @routes.post(ROUTE)
    async def keys_set(request):
        return await guarded_write(web, request, set_key)

    @routes.post(TEST_ROUTE)
    async def keys_test(request):
        return await guarded_write(web, request, try_key)
