"""Google's Batch Mode for the Gemini API: many generateContent requests as one job, at half price.

  POST models/{model}:batchGenerateContent  {"batch": {"displayName", "inputConfig": {"requests": {"requests": [
      {"request": GenerateContentRequest, "metadata": {"key": ...}}]}}}}       inline, under 20 MB in all
  or  {"batch": {"displayName", "inputConfig": {"fileName": "files/..."}}}    a JSONL file of {"key", "request"}
      lines, uploaded first through the Files API (resumable upload: start, then upload + finalize)
  GET  batches/{id}          an Operation: metadata (or response) holds state, batchStats and output
  POST batches/{id}:cancel
Results: output.inlinedResponses.inlinedResponses[] ({response} or {error}, with the metadata), or
output.responsesFile: a JSONL file of {"key", "response" | "error"} lines, downloaded from
/download/v1beta/{file}:download?alt=media. Each response is an ordinary generateContent answer and
is classified by gemini.parse_response, so refusals are the same typed errors as in direct calls.
Sources: https://ai.google.dev/gemini-api/docs/batch-mode, https://ai.google.dev/api/batch-mode,
google-genai batches.py / files.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..engine import IDEMPOTENT, SUBMIT, PollState, error_for_status, read_error_body
from ..errors import BananaError, MalformedResponse
from ..outcome import GenerationRequest
from . import gemini

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (f"BATCH_STATE_{s}" for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"))
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
_BATCH_NAME = re.compile(r"^batches/[A-Za-z0-9_-]{1,128}$")  # the provider's names are untrusted: no other path
_FILE_NAME = re.compile(r"^files/[A-Za-z0-9_-]{1,128}$")
# google.rpc.Code of a per-request error -> the HTTP status the same error has on a direct call.
_GRPC_TO_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}
RESULT_BYTES_PER_ITEM = 64 * 1024 * 1024  # a 4K PNG as base64 with text is well under this


@dataclass
class BatchState:
    name: str
    state: str
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    output: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def line(self) -> str:
        words = self.state.replace("BATCH_STATE_", "").lower()
        if not self.total:
            return f"Batch {words}"
        return f"Batch {words}: {self.succeeded + self.failed}/{self.total} answered ({self.failed} with an error), {self.pending} pending"


def valid_name(name: Any) -> str:
    if not isinstance(name, str) or not _BATCH_NAME.match(name):
        raise MalformedResponse(f"The batch name in the answer is not 'batches/<id>': {str(name)[:80]!r}.")
    return name


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object from an answer, or {} for anything else (the provider's answers are untrusted)."""
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return max(0, int(value))  # int64 counts arrive as strings
    except (TypeError, ValueError):
        return 0


def read_state(body: dict[str, Any]) -> BatchState:
    """A batch from GET batches/{id} (an Operation whose metadata is the batch) or from the create answer."""
    batch = {**body, **_obj(body.get("response")), **_obj(body.get("metadata"))}  # the batch's fields, wherever this answer put them
    stats, output = _obj(batch.get("batchStats")), _obj(batch.get("output"))
    state = str(batch.get("state") or PENDING)
    if body.get("done") and state not in TERMINAL:
        state = FAILED if body.get("error") else SUCCEEDED
    return BatchState(
        name=valid_name(body.get("name") or batch.get("name")),
        state=state,
        total=_int(stats.get("requestCount")),
        succeeded=_int(stats.get("successfulRequestCount")),
        failed=_int(stats.get("failedRequestCount")),
        pending=_int(stats.get("pendingRequestCount")),
        output=output,
        error=_obj(body.get("error")) or None,
    )


def build_entries(requests: list[tuple[str, GenerationRequest]]) -> list[tuple[str, dict[str, Any]]]:
    """(key, GenerateContentRequest body) per item; the key comes back with its answer."""
    return [(key, gemini.build_body(request)) for key, request in requests]


def inline_body(display_name: str, entries: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {"batch": {"displayName": display_name, "inputConfig": {"requests": {"requests": [{"request": body, "metadata": {"key": key}} for key, body in entries]}}}}


def file_body(display_name: str, file_name: str) -> dict[str, Any]:
    return {"batch": {"displayName": display_name, "inputConfig": {"fileName": file_name}}}


def jsonl(entries: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(json.dumps({"key": key, "request": body}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for key, body in entries)


def _service_url(call, prefix: str, path: str) -> str:
    """The Files API's upload and download endpoints: {origin}/{prefix}{base path}/{path}."""
    parts = urlsplit(call.provider.base_url)
    return f"{parts.scheme}://{parts.netloc}/{prefix}{parts.path.rstrip('/')}/{path.lstrip('/')}"


async def upload_jsonl(call, data: bytes, display_name: str) -> str:
    """Upload the requests file (resumable protocol, one chunk); returns its name, files/{id}."""
    start = await call.send(
        "POST",
        _service_url(call, "upload", "files"),
        json_body={"file": {"displayName": display_name, "mimeType": "application/jsonl", "sizeBytes": str(len(data))}},
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        },
        policy=IDEMPOTENT,  # an upload is not billed: safe to repeat
        status="Uploading the batch's requests",
    )
    upload_url = start.headers.get("x-goog-upload-url")
    if not upload_url:
        raise MalformedResponse("The Files API gave no upload URL (X-Goog-Upload-URL).", provider=call.provider.id)
    done = await call.send(
        "POST",
        upload_url,  # the engine attaches the key only if this is on the provider's own origin
        content=data,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0", "Content-Type": "application/jsonl"},
        policy=SUBMIT,
        status="Uploading the batch's requests",
    )
    body = done.json_object()
    name = (body.get("file") or {}).get("name") if isinstance(body.get("file"), dict) else body.get("name")
    if not isinstance(name, str) or not _FILE_NAME.match(name):
        raise MalformedResponse(f"The Files API answered without a file name ('files/<id>'): {str(name)[:80]!r}.", provider=call.provider.id)
    return name


async def prepare_input(call, display_name: str, entries: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], str | None]:
    """The create request's body: inline requests, or (beyond the inline limit) a JSONL file uploaded first."""
    body = inline_body(display_name, entries)
    size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
    if size <= call.number_option("batch_inline_bytes", 20_000_000):
        return body, None
    input_file = await upload_jsonl(call, jsonl(entries), display_name)
    return file_body(display_name, input_file), input_file


async def create(call, model_id: str, body: dict[str, Any]) -> str:
    """Create the batch job, once (a lost answer is never resent); returns its name, batches/{id}."""
    response = await call.submit_once(f"models/{model_id}:batchGenerateContent", body)
    return read_state(response.json_object()).name


async def find_by_display_name(call, display_name: str, pages: int = 5) -> str | None:
    """The batch created under this display name, if Google lists one (after a create whose answer was lost)."""
    token = ""
    for _ in range(pages):
        response = await call.get(f"batches?pageSize=100{'&pageToken=' + token if token else ''}", status="Looking for the batch")
        body = response.json_object()
        for operation in body.get("operations") or []:
            if not isinstance(operation, dict):
                continue
            if _obj(operation.get("metadata")).get("displayName") == display_name:
                return valid_name(operation.get("name"))
        next_token = body.get("nextPageToken")
        token = next_token if isinstance(next_token, str) and re.fullmatch(r"[\w.=-]{1,512}", next_token) else ""
        if not token:
            return None
    return None


async def get_state(call, name: str, items: int = 1) -> BatchState:
    # A finished batch's answer carries every inline result: its limit grows with the items.
    response = await call.send("GET", valid_name(name), policy=IDEMPOTENT, status="Checking the batch", max_bytes=RESULT_BYTES_PER_ITEM * max(1, items))
    return read_state(response.json_object())


def poll_state(state: BatchState) -> PollState:
    answered = state.succeeded + state.failed
    progress = 100.0 * answered / state.total if state.total else None
    return PollState(done=state.done, value=state, status=state.line(), progress=progress)


async def cancel(call, name: str) -> None:
    await call.send("POST", f"{valid_name(name)}:cancel", json_body={}, policy=IDEMPOTENT, status="Cancelling the batch")


async def answers(call, state: BatchState, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each request's answer by key: {"response": ...} or {"error": ...}. Missing keys have no answer yet."""
    output = state.output
    inline = output.get("inlinedResponses")
    found: dict[str, dict[str, Any]] = {}
    if isinstance(inline, dict) and isinstance(inline.get("inlinedResponses"), list):
        for index, row in enumerate(inline["inlinedResponses"]):
            if not isinstance(row, dict):
                continue
            meta = _obj(row.get("metadata"))
            key = meta.get("key") if isinstance(meta.get("key"), str) else (keys[index] if index < len(keys) else None)
            if key in keys:
                found[key] = row  # answers come in request order; the metadata key, when echoed, wins
        return found
    file_name = output.get("responsesFile")
    if isinstance(file_name, str) and _FILE_NAME.match(file_name):
        response = await call.send(
            "GET",
            _service_url(call, "download", f"{file_name}:download?alt=media"),
            policy=IDEMPOTENT,
            status="Downloading the batch's results",
            max_bytes=RESULT_BYTES_PER_ITEM * max(1, len(keys)),
        )
        for line in response.content.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a damaged line loses only its own item, which is then reported as unanswered
            if isinstance(row, dict) and row.get("key") in keys:
                found[row["key"]] = row
    return found


def item_error(call, error: Any, request_id: str | None = None) -> BananaError:
    """A per-request error (a google.rpc.Status) as the typed error a direct call would have raised."""
    status = error if isinstance(error, dict) else {"message": str(error)}
    code = status.get("code")
    http = _GRPC_TO_HTTP.get(code, 500) if isinstance(code, int) else 500
    return error_for_status(http, read_error_body({"error": status}), call.caller, request_id=request_id)


async def parse_answer(call, row: dict[str, Any]):
    """One answer: a GenerationResult, or the typed error (refusal, invalid request, ...) it carries."""
    if isinstance(row.get("response"), dict):
        return await gemini.parse_response(call, row["response"])
    raise item_error(call, row.get("error"))
