"""A loopback fake of Google's Batch Mode: batchGenerateContent, batches/{id}, :cancel, and the Files API.

Each batch walks through a scripted list of states, one per GET (the last repeats). When it
reaches SUCCEEDED (or CANCELLED / EXPIRED with `partial` answers), the output holds one answer per
request: inline requests get inlinedResponses, a JSONL input file gets a responsesFile. Which
answer a request gets is decided from its prompt: "refuse..." is a soft refusal, "error..." a
per-request INVALID_ARGUMENT status, anything else an image whose width encodes the prompt's last
number (so tests can tell which image is which).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from helpers import png_bytes
from loopback import LoopbackServer, Recorded, Reply, fixture

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED = (f"BATCH_STATE_{s}" for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"))


def width_for(prompt: str) -> int:
    last = prompt.split()[-1]
    return int(last) + 1 if last.isdigit() else 3


def answer_for(request: dict[str, Any]) -> dict[str, Any]:
    prompt = request["contents"][0]["parts"][0]["text"]
    if prompt.startswith("refuse"):
        return {"response": fixture("gemini/refusal_text_only.json")}
    if prompt.startswith("error"):
        return {"error": {"code": 3, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT"}}
    body = fixture("gemini/success_single.json")
    body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(width_for(prompt), 2)).decode()
    body["responseId"] = f"resp-{uuid.uuid4().hex[:8]}"
    return {"response": body}


@dataclass
class FakeBatch:
    name: str
    model: str
    display_name: str
    requests: list[tuple[str | None, dict[str, Any]]]  # (key, GenerateContentRequest)
    from_file: bool
    states: list[str]
    partial: int = 0  # answers present when the batch ends early (cancelled / expired)
    polls: int = 0
    cancelled: bool = False
    error: dict[str, Any] | None = None

    @property
    def state(self) -> str:
        if self.cancelled:
            return CANCELLED
        return self.states[min(self.polls, len(self.states) - 1)]


@dataclass
class FakeBatchMode:
    server: LoopbackServer
    states: list[str] = field(default_factory=lambda: [PENDING, RUNNING, SUCCEEDED])
    partial: int = 0
    batch_error: dict[str, Any] | None = None
    drop_create_answers: int = 0  # create the batch, then lose this many answers (the connection drops)
    prefix: str = ""  # the base URL's path, e.g. "/v1beta" (the Files API adds /upload and /download before it)
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> FakeBatchMode:
        s, p = self.server, self.prefix
        s.route("POST", rf"^{p}/models/[^/]+:batchGenerateContent$", self.create)
        s.route("GET", rf"^{p}/batches/[\w-]+$", self.get)
        s.route("GET", rf"^{p}/batches$", self.list)
        s.route("POST", rf"^{p}/batches/[\w-]+:cancel$", self.cancel)
        s.route("POST", rf"^/upload{p}/files$", self.upload)
        s.route("GET", rf"^/download{p}/files/[\w-]+:download$", self.download)
        s.route("DELETE", rf"^{p}/files/[\w-]+$", Reply(json={}))
        return self

    # -- the batch API ------------------------------------------------------------------------------

    def create(self, req: Recorded) -> Reply:
        body = req.json()["batch"]
        model = req.path.split("/")[-1].split(":")[0]
        config = body["inputConfig"]
        if "fileName" in config:
            lines = [json.loads(line) for line in self.files[config["fileName"]].splitlines() if line.strip()]
            requests = [(line.get("key"), line["request"]) for line in lines]
            from_file = True
        else:
            requests = [((r.get("metadata") or {}).get("key"), r["request"]) for r in config["requests"]["requests"]]
            from_file = False
        name = f"batches/{uuid.uuid4().hex[:12]}"
        with self._lock:
            self.batches[name] = FakeBatch(name, model, body.get("displayName", ""), requests, from_file, list(self.states), self.partial, error=self.batch_error)
        if self.drop_create_answers > 0:
            self.drop_create_answers -= 1
            return Reply(drop=True)  # accepted (and billable) at Google; the answer never arrives
        return Reply(json=self.operation(self.batches[name], advance=False))

    def list(self, req: Recorded) -> Reply:
        return Reply(json={"operations": [self.operation(b, advance=False) for b in self.batches.values()]})

    def get(self, req: Recorded) -> Reply:
        name = req.path.removeprefix(self.prefix).lstrip("/")
        batch = self.batches.get(name)
        if batch is None:
            return Reply(404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}})
        return Reply(json=self.operation(batch, advance=True))

    def cancel(self, req: Recorded) -> Reply:
        name = req.path.removeprefix(self.prefix).lstrip("/").split(":")[0]
        self.batches[name].cancelled = True
        return Reply(json={})

    def operation(self, batch: FakeBatch, *, advance: bool) -> dict[str, Any]:
        with self._lock:
            state = batch.state
            if advance:
                batch.polls += 1
        total = len(batch.requests)
        answered = total if state == SUCCEEDED else min(batch.partial, total) if state in (CANCELLED, EXPIRED) else 0
        answers = [answer_for(request) for _, request in batch.requests[:answered]]
        failed = sum(1 for a in answers if "error" in a)
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "name": batch.name,
            "state": state,
            "batchStats": {"requestCount": str(total), "successfulRequestCount": str(answered - failed), "failedRequestCount": str(failed), "pendingRequestCount": str(total - answered)},
        }
        done = state in (SUCCEEDED, FAILED, CANCELLED, EXPIRED)
        if done and answers:
            if batch.from_file:
                file_id = f"files/out-{batch.name.split('/')[1]}"
                self.files[file_id] = b"".join(json.dumps({"key": key, **a}).encode() + b"\n" for (key, _), a in zip(batch.requests, answers))
                meta["output"] = {"responsesFile": file_id}
            else:
                meta["output"] = {"inlinedResponses": {"inlinedResponses": [{**a, "metadata": {"key": key}} for (key, _), a in zip(batch.requests, answers)]}}
        operation: dict[str, Any] = {"name": batch.name, "metadata": meta}
        if done:
            operation["done"] = True
            if state == FAILED and batch.error:
                operation["error"] = batch.error
            else:
                operation["response"] = {**meta, "@type": meta["@type"]}
        return operation

    # -- the Files API (resumable upload in one chunk, and downloads) ---------------------------------

    def upload(self, req: Recorded) -> Reply:
        if req.headers.get("x-goog-upload-command") == "start":
            upload_id = uuid.uuid4().hex[:10]
            return Reply(json={}, headers={"X-Goog-Upload-URL": f"{self.server.url}/upload{self.prefix}/files?upload_id={upload_id}", "X-Goog-Upload-Status": "active"})
        name = f"files/in-{uuid.uuid4().hex[:10]}"
        self.files[name] = req.body
        return Reply(json={"file": {"name": name, "mimeType": "application/jsonl", "sizeBytes": str(len(req.body))}}, headers={"X-Goog-Upload-Status": "final"})

    def download(self, req: Recorded) -> Reply:
        name = req.path.removeprefix(f"/download{self.prefix}/").split(":")[0]
        if name not in self.files:
            return Reply(404, {"error": {"code": 404, "message": "no such file", "status": "NOT_FOUND"}})
        return Reply(body=self.files[name], content_type="application/jsonl")
