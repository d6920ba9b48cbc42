"""One loopback server that answers as every preset at once, each under its own path prefix.

`point_presets_at(server, setenv)` sets BANANA_<ID>_BASE_URL=<server>/<id> (plus keys and fast polls)
for every preset; `script_all(server)` answers each family's happy path with a PNG whose width
encodes how many reference images the provider received, so tests can check text-to-image and
edits through the same node with only the provider widget changed.
"""

from __future__ import annotations

import base64
import io
import re
import uuid

from PIL import Image

from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.config import env_name
from loopback import LoopbackServer, Recorded, Reply
from vertex_fake import TokenEndpoint

PRESET_IDS = [spec.id for spec in PRESETS]


def png(width: int, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (220, 180, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def point_presets_at(server: LoopbackServer, setenv) -> None:
    for spec in PRESETS:
        setenv(env_name(spec.key_owner, "API_KEY"), f"key-for-{spec.key_owner}-0123456789")
        setenv(env_name(spec.id, "BASE_URL"), f"{server.url}/{spec.id}")
        if "poll_first_delay" in spec.options:
            setenv(env_name(spec.id, "POLL_FIRST_DELAY"), "0.02")
            setenv(env_name(spec.id, "POLL_MAX_DELAY"), "0.05")
    setenv(env_name("evolink", "UPLOAD_URL"), f"{server.url}/evolink-files/upload/base64")
    # Vertex: a service-account key made here, whose token endpoint is this server (vertex_fake.py).
    from vertex_fake import service_account_json

    setenv(env_name("vertex", "API_KEY"), service_account_json(f"{server.url}/vertex/token"))
    setenv(env_name("vertex", "LOCATION"), "us-central1")


def width_for(refs: int) -> int:
    return 16 + 8 * refs  # the answer's width tells how many references arrived


def script_all(server: LoopbackServer) -> None:
    url = server.url
    jobs: dict[str, int] = {}  # job id -> reference count, for the asynchronous families

    def image_url(refs: int) -> str:
        return f"{url}/files/{width_for(refs)}.png"

    def gemini(req: Recorded) -> Reply:
        refs = len(req.json()["contents"][0]["parts"]) - 1
        return Reply(json={"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": b64(png(width_for(refs)))}}]}, "finishReason": "STOP"}]})

    def images_generate(req: Recorded) -> Reply:
        return Reply(json={"created": 1, "data": [{"b64_json": b64(png(width_for(0)))}]})

    def images_edit(req: Recorded) -> Reply:
        refs = len(re.findall(rb'name="image(?:\[\])?"', req.body))
        return Reply(json={"created": 1, "data": [{"url": image_url(refs)}]})

    def chat(req: Recorded) -> Reply:
        content = req.json()["messages"][-1]["content"]
        refs = sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url") if isinstance(content, list) else 0
        return Reply(json={"choices": [{"message": {"role": "assistant", "content": f"Here it is ![img](data:image/png;base64,{b64(png(width_for(refs)))})"}, "finish_reason": "stop"}]})

    def fal_submit(req: Recorded) -> Reply:
        prefix, app = req.path.split("/", 2)[1], re.sub(r"/edit$", "", req.path.split("/", 2)[2])
        rid = uuid.uuid4().hex
        jobs[rid] = len(req.json().get("image_urls") or [])
        # fal answers with its own queue URLs; the passthrough's have to be rewritten onto its host.
        host = "https://queue.fal.run" if prefix == "openai_hk_fal" else f"{url}/{prefix}"
        base = f"{host}/{app}/requests/{rid}"
        return Reply(json={"status": "IN_QUEUE", "request_id": rid, "response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel", "queue_position": 0})

    def fal_status(req: Recorded) -> Reply:
        return Reply(json={"status": "COMPLETED", "logs": []})

    def fal_result(req: Recorded) -> Reply:
        rid = req.path.rstrip("/").rsplit("/", 1)[-1]
        return Reply(json={"images": [{"url": image_url(jobs[rid]), "content_type": "image/png"}], "description": ""})

    def evolink_create(req: Recorded) -> Reply:
        task = f"task-unified-{uuid.uuid4().hex[:8]}"
        jobs[task] = len(req.json().get("image_urls") or [])
        return Reply(json={"id": task, "object": "image.generation.task", "status": "pending", "progress": 0})

    def evolink_task(req: Recorded) -> Reply:
        task = req.path.rsplit("/", 1)[-1]
        return Reply(json={"id": task, "status": "completed", "progress": 100, "results": [image_url(jobs[task])]})

    def evolink_upload(req: Recorded) -> Reply:
        return Reply(json={"success": True, "data": {"file_url": f"{url}/files/uploaded-{uuid.uuid4().hex[:6]}.png"}})

    def apimart_submit(req: Recorded) -> Reply:
        task = f"task_{uuid.uuid4().hex[:10]}"
        jobs[task] = len(req.json().get("image_urls") or [])
        return Reply(json={"code": 200, "data": [{"status": "submitted", "task_id": task}]})

    def apimart_task(req: Recorded) -> Reply:
        task = req.path.rsplit("/", 1)[-1]
        return Reply(json={"code": 200, "data": {"id": task, "status": "completed", "progress": 100, "result": {"images": [{"url": [image_url(jobs[task])]}]}}})

    def vydra_edit(req: Recorded) -> Reply:
        refs = 1 if req.json().get("imageUrl") else 0
        return Reply(json={"imageUrl": image_url(refs), "mimeType": "image/png", "mode": "edit" if refs else "generate", "creditsCharged": 8, "durationMs": 900})

    def file(req: Recorded) -> Reply:
        name = req.path.rsplit("/", 1)[-1]
        width = int(name.split(".")[0]) if name.split(".")[0].isdigit() else 8
        return Reply(body=png(width), content_type="image/png")

    server.route("POST", r"^/(google|apiyi)/models/[^/]+:generateContent$", gemini)
    server.route("POST", r"^/(vertex/projects/sa-project/locations/us-central1|vertex_express)/publishers/google/models/[^/]+:generateContent$", gemini)
    server.route("POST", r"^/vertex/token$", TokenEndpoint())
    server.route("POST", r"^/openai_hk/images/generations$", images_generate)
    server.route("POST", r"^/openai_hk/images/edits$", images_edit)
    server.route("POST", r"^/(apiyi_chat|openai_hk_chat)/chat/completions$", chat)
    server.route("POST", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+(/edit)?$", fal_submit)
    server.route("GET", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+/requests/\w+/status$", fal_status)
    server.route("GET", r"^/(fal|openai_hk_fal)/fal-ai/[\w.-]+/requests/\w+$", fal_result)
    server.route("POST", r"^/evolink/images/generations$", evolink_create)
    server.route("GET", r"^/evolink/tasks/[\w-]+$", evolink_task)
    server.route("POST", r"^/evolink-files/upload/base64$", evolink_upload)
    server.route("DELETE", r"^/evolink-files/", Reply(json={"success": True}))
    server.route("POST", r"^/apimaster/images/generations/async$", apimart_submit)
    server.route("GET", r"^/apimaster/tasks/\w+$", apimart_task)
    server.route("POST", r"^/vydra/upload$", Reply(json={"url": f"{url}/files/ref.png", "filename": "ref.png", "size": 100, "type": "image/png"}))
    server.route("POST", r"^/vydra/models/nano-banana/edit$", vydra_edit)
    server.route("GET", r"^/files/", file)
