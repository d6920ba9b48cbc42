"""One loopback server that answers as every preset at once, each under its own path prefix, the way
the provider does: its auth scheme and key, its model ids, its required fields and value domains,
its own error bodies, and asynchronous jobs that are queued, then running, then done.

`point_presets_at(server, setenv)` sets BANANA_<ID>_BASE_URL=<server>/<id> (plus keys and fast polls)
for every preset; `script_all(server)` installs the fakes and returns them (a `ProviderFakes`). Every
happy path answers with a PNG whose width encodes how many reference images the provider received,
so tests can check text-to-image and edits through the same node with only the provider widget
changed. What each fake checks, and the error it answers, is in the table `PROFILES` below; error
bodies are the providers' own (tests/fixtures/README.md names where each comes from).

Asynchronous jobs (fal, openai-hk's fal passthrough, EvoLink, APIMaster) answer `pending_polls`
status polls as queued and `running_polls` as running before they complete (defaults 1 and 1;
script_all(server, pending_polls=3, running_polls=2) to change). A result asked for early is the
provider's "still in progress" answer; `cancel` works until the job completes.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from banana_pack.providers.catalog import PRESETS, ProviderSpec
from banana_pack.providers.config import env_name
from loopback import LoopbackServer, Recorded, Reply, fixture
from vertex_fake import TokenEndpoint

PRESET_IDS = [spec.id for spec in PRESETS]
SPECS = {spec.id: spec for spec in PRESETS}


def key_for(owner: str) -> str:
    """The key point_presets_at gives a key owner (presets of one reseller share it), and the fakes expect."""
    return f"key-for-{owner}-0123456789"


def png(width: int, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (220, 180, 40)).save(buffer, "PNG")
    return buffer.getvalue()


# The output tokens Google bills per image (providers.md, model card table): Google's cost is these at
# the per-token price, which is what its list price per image rounds.
_IMAGE_TOKENS = {
    "gemini-2.5-flash-image": {None: 1290},
    "gemini-3-pro-image-preview": {None: 1120, "1K": 1120, "2K": 1120, "4K": 2000},
    "gemini-3.1-flash-image-preview": {None: 1120, "512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
}


def _gemini_usage(model_id: str, size: str | None) -> dict[str, Any]:
    tokens = _IMAGE_TOKENS.get(model_id, {}).get(size, 1290)
    return {"promptTokenCount": 12, "candidatesTokenCount": tokens, "totalTokenCount": tokens + 12, "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": tokens}]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def point_presets_at(server: LoopbackServer, setenv) -> None:
    for spec in PRESETS:
        setenv(env_name(spec.key_owner, "API_KEY"), key_for(spec.key_owner))
        setenv(env_name(spec.id, "BASE_URL"), f"{server.url}/{spec.id}")
        if "poll_first_delay" in spec.options:
            setenv(env_name(spec.id, "POLL_FIRST_DELAY"), "0.02")
            setenv(env_name(spec.id, "POLL_MAX_DELAY"), "0.05")
    setenv(env_name("evolink", "UPLOAD_URL"), f"{server.url}/evolink-files/upload/base64")
    # The uploads' deletion too (else it went to the real files-api.evolink.ai: retried for 5 s per run, off loopback).
    setenv(env_name("evolink", "FILE_DELETE_URL"), f"{server.url}/evolink-files/files/{{file_id}}")
    # Vertex: a service-account key made here, whose token endpoint is this server (vertex_fake.py).
    from vertex_fake import service_account_json

    setenv(env_name("vertex", "API_KEY"), service_account_json(f"{server.url}/vertex/token"))
    setenv(env_name("vertex", "LOCATION"), "us-central1")


def width_for(refs: int) -> int:
    return 16 + 8 * refs  # the answer's width tells how many references arrived


# -- what each provider checks and how it says no ---------------------------------------------------


class Rejected(Exception):
    """A fake's check failed: `reply` is the provider's own answer to that request."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"HTTP {reply.status}")
        self.reply = reply


def _google_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, json={"error": {"code": status, "message": message, "status": code}})


def _new_api_error(status: int, message: str, code: str = "", kind: str = "new_api_error") -> Reply:
    return Reply(status, json={"error": {"message": message, "type": kind, "param": "", "code": code}})


def _fal_missing(field_name: str, body: Any) -> Reply:
    return Reply(422, json={"detail": [{"loc": ["body", field_name], "msg": "Field required", "type": "missing", "input": body}]})


def _fal_bad_value(field_name: str, value: Any, allowed: list[str]) -> Reply:
    expected = ", ".join(f"'{v}'" for v in allowed)
    return Reply(422, json={"detail": [{"loc": ["body", field_name], "msg": f"Input should be {expected}", "type": "literal_error", "input": value, "ctx": {"expected": expected}}]})


@dataclass(frozen=True)
class Profile:
    """How one preset's provider authenticates and refuses (sources: tests/fixtures/README.md)."""

    bad_key: Callable[[], Reply]
    unknown_model: Callable[[str], Reply]
    bad_field: Callable[[str, str], Reply]  # (field, what is wrong) -> the provider's validation error


_GOOGLE = Profile(
    bad_key=lambda: Reply(400, json=fixture("gemini/error_bad_key.json")),
    unknown_model=lambda model: _google_error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."),
    bad_field=lambda name, what: _google_error(400, "INVALID_ARGUMENT", f"Invalid value at '{name}': {what}"),
)
_NEW_API = Profile(  # APIYI and openai-hk run new-api gateways
    bad_key=lambda: Reply(401, json=fixture("openai_images/error_401_newapi.json")),
    unknown_model=lambda model: _new_api_error(503, f"No available channel for model {model} under group default (request id: 20260420120000123456789abcdef)", "model_not_found"),
    bad_field=lambda name, what: _new_api_error(400, f"Invalid value for '{name}': {what}", "invalid_value", "invalid_request_error"),
)
_FAL = Profile(
    bad_key=lambda: Reply(401, json=fixture("fal/error_401.json")),
    unknown_model=lambda model: Reply(404, json={"detail": f"Application '{model}' not found"}),
    bad_field=lambda name, what: _fal_missing(name, what) if what == "missing" else Reply(422, json={"detail": [{"loc": ["body", name], "msg": what, "type": "value_error"}]}),
)
_EVOLINK = Profile(
    bad_key=lambda: Reply(401, json=fixture("evolink/error_401.json")),
    unknown_model=lambda model: Reply(400, json={"error": {"code": 400, "message": f"Invalid model: {model}", "type": "invalid_request_error", "param": "model"}}),
    bad_field=lambda name, what: Reply(400, json={"error": {"code": 400, "message": f"Invalid {name} parameter: {what}", "type": "invalid_request_error", "param": name}}),
)
_APIMART = Profile(  # APIMaster's error bodies are UNVERIFIED (providers.md 10.3): APIMart's envelope
    bad_key=lambda: Reply(401, json={"error": {"code": 401, "message": "Invalid API key", "type": "authentication_error"}}),
    unknown_model=lambda model: Reply(400, json={"error": {"code": 400, "message": f"Unsupported model: {model}", "type": "invalid_request_error"}}),
    bad_field=lambda name, what: Reply(400, json={"error": {"code": 400, "message": f"Invalid {name}: {what}", "type": "invalid_request_error"}}),
)
_VYDRA = Profile(
    bad_key=lambda: Reply(401, json=fixture("vydra/error_401.json")),
    unknown_model=lambda model: Reply(404, json={"error": f"Model not found: {model}", "code": "MODEL_NOT_FOUND"}),
    bad_field=lambda name, what: Reply(400, json={"error": f"Invalid {name}: {what}", "code": "INVALID_INPUT"}),
)
PROFILES: dict[str, Profile] = {
    "google": _GOOGLE,
    "vertex": _GOOGLE,  # Vertex answers errors in the Gemini API's shape (google.rpc.Status)
    "vertex_express": _GOOGLE,
    "apiyi": _NEW_API,
    "apiyi_chat": _NEW_API,
    "openai_hk": _NEW_API,
    "openai_hk_chat": _NEW_API,
    "openai_hk_fal": _NEW_API,
    "fal": _FAL,
    "evolink": _EVOLINK,
    "apimaster": _APIMART,
    "vydra": _VYDRA,
}


# What each provider accepts, written from its documentation (providers.md sections 1, 2.3, 3.5, 5.4,
# 7.1, 7.2, 8), not from the pack's catalog, so a wrong id or value in the catalog is caught here.


@dataclass(frozen=True)
class Accepts:
    ratios: tuple[str, ...]
    sizes: tuple[str, ...] = ()  # resolution values as the provider spells them; empty: the field is refused
    refs: int = 14


R10 = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
R14 = R10 + ("1:4", "4:1", "1:8", "8:1")
GEMINI_IDS = {  # providers.md 2.3
    "gemini-2.5-flash-image": Accepts(R10, (), 3),
    "gemini-3-pro-image-preview": Accepts(R10, ("1K", "2K", "4K"), 14),
    "gemini-3.1-flash-image-preview": Accepts(R14, ("512", "1K", "2K", "4K"), 14),
}
OPENAI_HK_IDS = {  # providers.md 1 and 3.5: the tier is in the id; `size` is the ratio as "16x9"
    name: Accepts(("4x3", "3x4", "16x9", "9x16", "2x3", "3x2", "1x1"))
    for name in ("nano-banana", "nano-banana-hd", "nano-banana-2", "nano-banana-2-2k", "nano-banana-2-4k",
                 "gemini-3.1-flash-image-preview", "gemini-3.1-flash-image-preview-2k", "gemini-3.1-flash-image-preview-4k")
}
FAL_IDS = {  # providers.md 5.4 (edit endpoints add "auto")
    "fal-ai/nano-banana": Accepts(R10), "fal-ai/nano-banana/edit": Accepts(R10 + ("auto",)),
    "fal-ai/nano-banana-pro": Accepts(R10 + ("auto",), ("1K", "2K", "4K")), "fal-ai/nano-banana-pro/edit": Accepts(R10 + ("auto",), ("1K", "2K", "4K")),
    "fal-ai/nano-banana-2": Accepts(R14 + ("auto",), ("0.5K", "1K", "2K", "4K")), "fal-ai/nano-banana-2/edit": Accepts(R14 + ("auto",), ("0.5K", "1K", "2K", "4K")),
}
EVOLINK_IDS = {  # providers.md 7.1
    "gemini-2.5-flash-image": Accepts(R10 + ("match_input_image",), (), 5),
    "gemini-3-pro-image-preview": Accepts(R10 + ("match_input_image",), ("1K", "2K", "4K"), 10),
    "gemini-3.1-flash-image-preview": Accepts(R14 + ("match_input_image",), ("0.5K", "1K", "2K", "4K"), 14),
}
APIMASTER_IDS = {name: Accepts(("auto",) + R10 + ("1:4", "4:1"), ("0.5K", "1K", "2K", "4K"), 14) for name in GEMINI_IDS}  # providers.md 7.2
ACCEPTS: dict[str, dict[str, Accepts]] = {
    "google": GEMINI_IDS, "apiyi": GEMINI_IDS, "apiyi_chat": GEMINI_IDS, "vertex": GEMINI_IDS, "vertex_express": GEMINI_IDS,
    "openai_hk": OPENAI_HK_IDS, "openai_hk_chat": OPENAI_HK_IDS,
    "fal": FAL_IDS, "openai_hk_fal": FAL_IDS,
    "evolink": EVOLINK_IDS, "apimaster": APIMASTER_IDS,
    "vydra": {"nano-banana": Accepts(R10, (), 1)},  # providers.md 8
}


def _plain_base64(text: Any) -> bool:
    if not isinstance(text, str) or not text or text.startswith("data:"):
        return False
    try:  # proto JSON reads the standard and the URL-safe alphabet (google-genai writes the latter)
        base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


def _data_uri_or_url(text: Any) -> bool:
    return isinstance(text, str) and (text.startswith(("http://", "https://")) or bool(re.match(r"^data:image/[\w.+-]+;base64,", text)))


def _image_format(data: bytes) -> str | None:
    """The MIME type Pillow reads in these bytes, or None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return Image.MIME.get(im.format or "")
    except Exception:  # noqa: BLE001 - anything unreadable is "not an image"
        return None


def _multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, str | None, bytes]]:
    """(name, filename, content type, value) per part of a multipart/form-data body."""
    match = re.search(r"boundary=\"?([^\";]+)\"?", content_type or "")
    if not match:
        return []
    parts = []
    for chunk in body.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, value = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        text = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', text)
        filename = re.search(r'filename="([^"]*)"', text)
        ctype = re.search(r"(?im)^content-type:\s*(\S+)", text)
        parts.append((name.group(1) if name else "", filename.group(1) if filename else None, ctype.group(1) if ctype else None, value))
    return parts


@dataclass
class Job:
    refs: int
    count: int = 1
    polls: int = 0
    cancelled: bool = False
    model: str = ""


@dataclass
class ProviderFakes:
    server: LoopbackServer
    pending_polls: int = 1
    running_polls: int = 1
    jobs: dict[str, Job] = field(default_factory=dict)
    vertex_tokens: TokenEndpoint = field(default_factory=TokenEndpoint)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.server.url

    # -- the checks every provider makes ---------------------------------------------------------

    @staticmethod
    def preset_of(req: Recorded) -> ProviderSpec:
        return SPECS[req.path.split("/", 2)[1]]

    def check_auth(self, req: Recorded, spec: ProviderSpec) -> None:
        expected = key_for(spec.key_owner)
        if spec.auth == "google-service-account":  # Vertex: the access token this fake's token endpoint granted
            expected, spec = f"Bearer {self.vertex_tokens.token}", SPECS["google"]
            sent = req.headers.get("authorization")
        elif spec.auth == "x-goog-api-key":
            sent = req.headers.get("x-goog-api-key")
        else:
            scheme = "Key" if spec.auth == "key" else "Bearer"
            header = req.headers.get("authorization", "")
            sent = header[len(scheme) + 1:] if header.startswith(scheme + " ") else None
        if sent != expected:
            raise Rejected(PROFILES[spec.id].bad_key())

    def check_model(self, spec: ProviderSpec, model_id: Any) -> Accepts:
        if not isinstance(model_id, str) or not model_id:
            raise Rejected(PROFILES[spec.id].bad_field("model", "missing"))
        accepts = ACCEPTS[spec.id].get(model_id)
        if accepts is None:
            raise Rejected(PROFILES[spec.id].unknown_model(model_id))
        return accepts

    def require(self, spec: ProviderSpec, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise Rejected(PROFILES[spec.id].bad_field(name, what))

    def _guarded(self, handler: Callable[[Recorded, ProviderSpec], Reply], *, auth: bool = True) -> Callable[[Recorded], Reply]:
        def serve(req: Recorded) -> Reply:
            spec = self.preset_of(req)
            try:
                if auth:
                    self.check_auth(req, spec)
                return handler(req, spec)
            except Rejected as rejected:
                return rejected.reply

        return serve

    def _json(self, req: Recorded, spec: ProviderSpec) -> dict[str, Any]:
        try:
            body = req.json()
        except ValueError:
            body = None
        self.require(spec, isinstance(body, dict), "body", "not a JSON object")
        return body

    def image_url(self, refs: int) -> str:
        return f"{self.url}/files/{width_for(refs)}.png"

    # -- Gemini generateContent (google, apiyi) ----------------------------------------------------

    def gemini(self, req: Recorded, spec: ProviderSpec) -> Reply:
        model_id = req.path.rsplit("/", 1)[-1].split(":", 1)[0]
        offer = self.check_model(spec, model_id)
        body = self._json(req, spec)
        contents = body.get("contents")
        self.require(spec, isinstance(contents, list) and bool(contents), "contents", "contents is not specified")
        parts = contents[-1].get("parts") if isinstance(contents[-1], dict) else None
        self.require(spec, isinstance(parts, list) and bool(parts), "contents[0].parts", "parts is not specified")
        refs = 0
        for part in parts:
            blob = part.get("inline_data") or part.get("inlineData") if isinstance(part, dict) else None
            if blob is not None:
                mime = blob.get("mime_type") or blob.get("mimeType")
                self.require(spec, mime in ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"), "inline_data.mime_type", f"unsupported MIME type {mime!r}")
                self.require(spec, _plain_base64(blob.get("data")), "inline_data.data", "not plain base64 (no data: prefix)")
                refs += 1
        self.require(spec, refs <= offer.refs, "contents[0].parts", f"at most {offer.refs} images")
        config = body.get("generationConfig") or body.get("generation_config") or {}
        image_config = config.get("imageConfig") or config.get("image_config") or {}
        ratio = image_config.get("aspectRatio") or image_config.get("aspect_ratio")
        self.require(spec, ratio is None or ratio in offer.ratios, "generation_config.image_config.aspect_ratio", f"unsupported aspect ratio {ratio!r}")
        size = image_config.get("imageSize") or image_config.get("image_size")
        self.require(spec, size is None or size in offer.sizes, "generation_config.image_config.image_size", f"{size!r} is not supported by {model_id}")
        return Reply(json={
            "candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": b64(png(width_for(refs)))}, "thoughtSignature": "c2lnbmF0dXJl"}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": _gemini_usage(model_id, size),
            "modelVersion": model_id,
            "responseId": uuid.uuid4().hex[:22],
        })

    # -- OpenAI Images (openai_hk) -----------------------------------------------------------------

    def _images_fields(self, spec: ProviderSpec, fields: dict[str, Any]) -> None:
        offer = self.check_model(spec, fields.get("model"))
        self.require(spec, isinstance(fields.get("prompt"), str) and fields["prompt"].strip() != "", "prompt", "prompt is required")
        size = fields.get("size")  # openai-hk: the ratio as "16x9" (providers.md 3.5)
        self.require(spec, size is None or size in offer.ratios, "size", f"Invalid value: {size!r}. Supported values are: {', '.join(offer.ratios)}.")

    def images_generate(self, req: Recorded, spec: ProviderSpec) -> Reply:
        fields = self._json(req, spec)
        self._images_fields(spec, fields)
        n = int(fields.get("n") or 1)
        data = [{"b64_json": b64(png(width_for(0)))} for _ in range(n)]
        return Reply(json={"created": 1776000000, "data": data})

    def images_edit(self, req: Recorded, spec: ProviderSpec) -> Reply:
        self.require(spec, req.headers.get("content-type", "").startswith("multipart/form-data"), "content-type", "edits take multipart/form-data")
        parts = _multipart(req.body, req.headers.get("content-type", ""))
        fields = {name: value.decode() for name, filename, _, value in parts if filename is None}
        images = [(ctype, value) for name, filename, ctype, value in parts if filename is not None and name in ("image", "image[]")]
        self._images_fields(spec, fields)
        self.require(spec, bool(images), "image", "image is required")
        for ctype, value in images:
            self.require(spec, ctype in ("image/png", "image/jpeg", "image/webp") and _image_format(value) == ctype, "image", f"unsupported file type {ctype!r}")
        n = int(fields.get("n") or 1)
        return Reply(json={"created": 1776000000, "data": [{"url": self.image_url(len(images))} for _ in range(n)]})

    # -- chat completions (apiyi_chat, openai_hk_chat) ---------------------------------------------

    def chat(self, req: Recorded, spec: ProviderSpec) -> Reply:
        body = self._json(req, spec)
        model_id = body.get("model")
        self.check_model(spec, model_id)
        messages = body.get("messages")
        self.require(spec, isinstance(messages, list) and bool(messages), "messages", "messages is required")
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        self.require(spec, messages[-1].get("role") == "user" and content not in (None, "", []), "messages", "the last message must be the user's")
        refs = 0
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                self.require(spec, _data_uri_or_url((part.get("image_url") or {}).get("url")), "image_url", "a data: URL or an http(s) URL")
                refs += 1
        return Reply(json={
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": 1776000000,
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Here it is ![img](data:image/png;base64,{b64(png(width_for(refs)))})"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1290, "total_tokens": 1302},
        })

    # -- the fal queue (fal, openai_hk_fal) --------------------------------------------------------

    def fal_submit(self, req: Recorded, spec: ProviderSpec) -> Reply:
        endpoint = req.path.split("/", 2)[2]
        offer = self.check_model(spec, endpoint)
        body = self._json(req, spec)
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            raise Rejected(_fal_missing("prompt", body) if spec.id == "fal" else PROFILES[spec.id].bad_field("prompt", "missing"))
        editing = endpoint.endswith("/edit")
        urls = body.get("image_urls")
        if editing and not urls:
            raise Rejected(_fal_missing("image_urls", body))
        self.require(spec, all(_data_uri_or_url(u) for u in urls or []), "image_urls", "each must be a URL or a data URI")
        num = body.get("num_images", 1)
        self.require(spec, isinstance(num, int) and 1 <= num <= 4, "num_images", "Input should be less than or equal to 4")
        ratio = body.get("aspect_ratio")
        if ratio is not None and ratio not in offer.ratios:
            raise Rejected(_fal_bad_value("aspect_ratio", ratio, list(offer.ratios)))
        resolution = body.get("resolution")
        if resolution is not None and resolution not in offer.sizes:
            raise Rejected(_fal_bad_value("resolution", resolution, list(offer.sizes)))
        self.require(spec, body.get("output_format", "png") in ("jpeg", "png", "webp"), "output_format", "Input should be 'jpeg', 'png' or 'webp'")
        rid = str(uuid.uuid4())
        with self._lock:
            self.jobs[rid] = Job(refs=len(urls or []), count=num, model=endpoint)
        app = "/".join(endpoint.split("/")[:2])  # status/result/cancel name owner/app only (providers.md 5.1)
        # fal answers with its own queue URLs; a passthrough's have to be rewritten onto its host (5.8).
        host = "https://queue.fal.run" if spec.id == "openai_hk_fal" else f"{self.url}/{spec.id}"
        base = f"{host}/{app}/requests/{rid}"
        return Reply(json={"status": "IN_QUEUE", "request_id": rid, "response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel", "logs": None, "metrics": {}, "queue_position": 0})

    def _job(self, req: Recorded, spec: ProviderSpec, rid: str) -> Job:
        job = self.jobs.get(rid)
        if job is None:
            raise Rejected(Reply(404, json={"detail": f"Request {rid} not found"}) if spec.id == "fal" else _new_api_error(404, "Request not found"))
        return job

    def _phase(self, job: Job) -> str:
        if job.polls <= self.pending_polls:
            return "pending"
        if job.polls <= self.pending_polls + self.running_polls:
            return "running"
        return "done"

    def fal_status(self, req: Recorded, spec: ProviderSpec) -> Reply:
        rid = req.path.rstrip("/").split("/")[-2]
        with self._lock:
            job = self._job(req, spec, rid)
            job.polls += 1
            phase = "cancelled" if job.cancelled else self._phase(job)
        logs = [{"message": "Generating image with Gemini", "level": "INFO", "source": "user", "timestamp": "2026-04-20T12:00:03.512Z"}] if "logs=1" in req.query or "logs=true" in req.query.lower() else []
        base = f"{self.url}/{spec.id}/{'/'.join(job.model.split('/')[:2])}/requests/{rid}"
        if phase == "pending":
            return Reply(202, json={"status": "IN_QUEUE", "queue_position": max(0, self.pending_polls - job.polls), "response_url": base})
        if phase == "running":
            return Reply(202, json={"status": "IN_PROGRESS", "logs": logs, "response_url": base})
        return Reply(200, json={"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": 7.41}, "response_url": base})

    def fal_result(self, req: Recorded, spec: ProviderSpec) -> Reply:
        rid = req.path.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            job = self._job(req, spec, rid)
            if job.cancelled:
                return Reply(400, json={"detail": "Request was cancelled"})
            if self._phase(job) != "done":
                return Reply(400, json={"detail": "Request is still in progress"})
        images = [{"url": self.image_url(job.refs), "content_type": "image/png", "file_name": "nano-banana-output.png", "file_size": 1024, "width": width_for(job.refs), "height": 32} for _ in range(job.count)]
        return Reply(json={"images": images, "description": ""})

    def fal_cancel(self, req: Recorded, spec: ProviderSpec) -> Reply:
        rid = req.path.rstrip("/").split("/")[-2]
        with self._lock:
            job = self._job(req, spec, rid)
            if self._phase(job) == "done":
                return Reply(400, json={"status": "ALREADY_COMPLETED"})
            job.cancelled = True
        return Reply(202, json={"status": "CANCELLATION_REQUESTED"})

    # -- asynchronous task APIs (evolink, apimaster) -------------------------------------------------

    def _task_fields(self, spec: ProviderSpec, body: dict[str, Any], ratio_field: str) -> Job:
        self.check_model(spec, body.get("model"))
        self.require(spec, isinstance(body.get("prompt"), str) and body["prompt"].strip() != "", "prompt", "prompt is required")
        urls = body.get("image_urls") or []
        if spec.id == "evolink":  # EvoLink needs directly downloadable URLs (providers.md 7.1)
            self.require(spec, all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls), "image_urls", "must be directly downloadable URLs")
        else:
            self.require(spec, all(_data_uri_or_url(u) for u in urls), "image_urls", "must be URLs or data URIs")
        offer = ACCEPTS[spec.id][body["model"]]
        self.require(spec, len(urls) <= offer.refs, "image_urls", f"at most {offer.refs} images")
        ratio = body.get(ratio_field)
        self.require(spec, ratio is None or ratio in offer.ratios, ratio_field, f"{ratio!r} is not supported")
        resolution = body.get("resolution") or body.get("quality")
        self.require(spec, resolution is None or resolution in offer.sizes, "resolution", f"{resolution!r} is not supported")
        n = int(body.get("n") or 1)
        self.require(spec, 1 <= n <= 4, "n", "must be between 1 and 4")
        return Job(refs=len(urls), count=n, model=body["model"])

    def evolink_create(self, req: Recorded, spec: ProviderSpec) -> Reply:
        job = self._task_fields(spec, self._json(req, spec), "aspect_ratio")
        task = f"task-unified-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self.jobs[task] = job
        return Reply(json={"created": 1757165031, "id": task, "model": job.model, "object": "image.generation.task", "progress": 0, "status": "pending", "task_info": {"can_cancel": True, "estimated_time": 45}, "type": "image"})

    def evolink_task(self, req: Recorded, spec: ProviderSpec) -> Reply:
        task = req.path.rsplit("/", 1)[-1]
        with self._lock:
            job = self.jobs.get(task)
            if job is None:
                return Reply(404, json=fixture("evolink/error_404.json"))
            job.polls += 1
            phase = self._phase(job)
        common = {"created": 1757165031, "id": task, "model": job.model, "object": "image.generation.task", "type": "image"}
        if phase == "pending":
            return Reply(json={**common, "status": "pending", "progress": 0})
        if phase == "running":
            return Reply(json={**common, "status": "processing", "progress": 50})
        # One URL per image, as EvoLink's own (the same URL twice is one image, and the pack keeps it once).
        return Reply(json={**common, "status": "completed", "progress": 100, "results": [f"{self.image_url(job.refs)}?n={n}" for n in range(job.count)]})

    def evolink_upload(self, req: Recorded, spec: ProviderSpec) -> Reply:
        body = self._json(req, spec)
        self.require(spec, isinstance(body.get("base64_data"), str) and bool(body["base64_data"]), "base64_data", "missing")
        return Reply(json={"success": True, "data": {"file_id": f"file_{uuid.uuid4().hex[:8]}", "file_url": f"{self.url}/files/uploaded-{uuid.uuid4().hex[:6]}.png"}})

    def apimart_submit(self, req: Recorded, spec: ProviderSpec) -> Reply:
        job = self._task_fields(spec, self._json(req, spec), "size")
        task = f"task_{uuid.uuid4().hex[:10]}"
        with self._lock:
            self.jobs[task] = job
        return Reply(json={"code": 200, "data": [{"status": "submitted", "task_id": task}]})

    def apimart_task(self, req: Recorded, spec: ProviderSpec) -> Reply:
        task = req.path.rsplit("/", 1)[-1]
        self.require(spec, "model=" in req.query, "model", "the task query names the model (providers.md 7.2)")
        with self._lock:
            job = self.jobs.get(task)
            if job is None:
                return Reply(404, json={"error": {"code": 404, "message": "Task not found", "type": "not_found_error"}})
            job.polls += 1
            phase = self._phase(job)
        if phase == "pending":
            return Reply(json={"code": 200, "data": {"id": task, "status": "submitted", "progress": 0}})
        if phase == "running":
            return Reply(json={"code": 200, "data": {"id": task, "status": "in_progress", "progress": 35}})
        images = [{"url": [self.image_url(job.refs)], "expires_at": 1763175127} for _ in range(job.count)]
        return Reply(json={"code": 200, "data": {"id": task, "status": "completed", "progress": 100, "result": {"images": images}}})

    # -- Vydra -------------------------------------------------------------------------------------

    def vydra_upload(self, req: Recorded, spec: ProviderSpec) -> Reply:
        files = [p for p in _multipart(req.body, req.headers.get("content-type", "")) if p[0] == "file" and p[1] is not None]
        if not files:
            return Reply(400, json={"error": "No file provided"})
        if files[0][2] not in ("image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif"):
            return Reply(400, json={"error": "Invalid file type. Allowed: image/jpeg, image/jpg, image/png, image/webp, image/gif"})
        return Reply(json={"url": f"{self.url}/files/ref.png", "filename": "ref.png", "size": len(files[0][3]), "type": files[0][2], "key": "uploads/ref.png"})

    def vydra_edit(self, req: Recorded, spec: ProviderSpec) -> Reply:
        model_id = req.path.split("/")[-2]
        offer = self.check_model(spec, model_id)
        body = self._json(req, spec)
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            raise Rejected(Reply(400, json=fixture("vydra/error_400.json")))
        self.require(spec, body.get("imageUrl") is None or str(body["imageUrl"]).startswith(("http://", "https://")), "imageUrl", "must be a URL")
        self.require(spec, body.get("aspectRatio") is None or body["aspectRatio"] in offer.ratios, "aspectRatio", f"{body.get('aspectRatio')!r}")
        refs = 1 if body.get("imageUrl") else 0
        return Reply(json={"imageUrl": self.image_url(refs), "mimeType": "image/png", "mode": "edit" if refs else "generate", "creditsCharged": 8, "durationMs": 900})

    # -- results -----------------------------------------------------------------------------------

    @staticmethod
    def file(req: Recorded) -> Reply:
        name = req.path.rsplit("/", 1)[-1]
        width = int(name.split(".")[0]) if name.split(".")[0].isdigit() else 8
        return Reply(body=png(width), content_type="image/png")

    def install(self) -> "ProviderFakes":
        route, guarded = self.server.route, self._guarded
        route("POST", r"^/(google|apiyi)(/v1beta)?/models/[^/]+:generateContent$", guarded(self.gemini))
        route("POST", r"^/(vertex/projects/sa-project/locations/us-central1|vertex_express)/publishers/google/models/[^/]+:generateContent$", guarded(self.gemini))
        route("POST", r"^/vertex/token$", self.vertex_tokens)
        route("POST", r"^/openai_hk/images/generations$", guarded(self.images_generate))
        route("POST", r"^/openai_hk/images/edits$", guarded(self.images_edit))
        route("POST", r"^/(apiyi_chat|openai_hk_chat)/chat/completions$", guarded(self.chat))
        route("POST", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+(/edit)?$", guarded(self.fal_submit))
        route("GET", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+/requests/[\w-]+/status$", guarded(self.fal_status))
        route("GET", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+/requests/[\w-]+$", guarded(self.fal_result))
        route("PUT", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+/requests/[\w-]+/cancel$", guarded(self.fal_cancel))
        route("POST", r"^/evolink/images/generations$", guarded(self.evolink_create))
        route("GET", r"^/evolink/tasks/[\w-]+$", guarded(self.evolink_task))
        route("POST", r"^/evolink-files/upload/base64$", self._evolink_files(self.evolink_upload))
        route("DELETE", r"^/evolink-files/", self._evolink_files(lambda req, spec: Reply(json={"success": True})))
        route("POST", r"^/apimaster/images/generations/async$", guarded(self.apimart_submit))
        route("GET", r"^/apimaster/tasks/\w+$", guarded(self.apimart_task))
        route("POST", r"^/vydra/upload$", guarded(self.vydra_upload))
        route("POST", r"^/vydra/models/[\w.-]+/edit$", guarded(self.vydra_edit))
        route("GET", r"^/files/", self.file)
        return self

    def _evolink_files(self, handler: Callable[[Recorded, ProviderSpec], Reply]) -> Callable[[Recorded], Reply]:
        """EvoLink's file API lives on another host with the same Bearer key (providers.md 7.1)."""

        def serve(req: Recorded) -> Reply:
            spec = SPECS["evolink"]
            try:
                self.check_auth(req, spec)
                return handler(req, spec)
            except Rejected as rejected:
                return rejected.reply

        return serve


def script_all(server: LoopbackServer, *, pending_polls: int = 1, running_polls: int = 1) -> ProviderFakes:
    """Answer as every preset (see the module docstring); returns the fakes, whose `jobs` tests may inspect."""
    return ProviderFakes(server, pending_polls=pending_polls, running_polls=running_polls).install()
