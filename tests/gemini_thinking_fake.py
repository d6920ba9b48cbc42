"""A loopback Gemini generateContent that thinks, signs and checks signatures like the real API.

- Gemini 3 image models (ids starting "gemini-3") sign the first text part and every image part
  of their answer with a fresh opaque thoughtSignature; 2.5 signs nothing.
- With thinkingConfig.includeThoughts, the answer starts with thought parts (text and an interim
  image, `thought: true`, unsigned), as Google documents.
- A request that sends back a Gemini 3 model turn whose text or image parts lack the signature
  this server gave (or carry another) gets the 400 INVALID_ARGUMENT the Gemini API documents:
  "Image part is missing a thought_signature in content position 2, part position 2." The
  documented stand-in "skip_thought_signature_validator" passes.
- thinkingLevel is refused on models that take none; safetySettings values are checked against
  Google's enums; tools google_search adds groundingMetadata.
Each answer's image is a PNG whose width counts the request's contents (so a test sees the history
arrived) and whose colour is fixed per call number.
"""

from __future__ import annotations

import base64
import io
import itertools
import re
import uuid

from loopback import LoopbackServer, Recorded, Reply
from PIL import Image

GEN_PATH = r"/models/[^/:]+:generateContent$"
SKIP = "skip_thought_signature_validator"
HARM_CATEGORIES = {"HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_CIVIC_INTEGRITY"}
THRESHOLDS = {"BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF", "HARM_BLOCK_THRESHOLD_UNSPECIFIED"}
LEVELS = {"gemini-3.1-flash-image-preview": {"MINIMAL", "HIGH"}}
SOURCES = [{"web": {"uri": "https://example.org/weather", "title": "Weather in Lisbon"}}, {"web": {"uri": "https://example.com/news", "title": "Lisbon news"}}]


def png(width: int, height: int = 8, color=(30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"error": {"code": status, "message": message, "status": code}})


class ThinkingGemini:
    """Script `server` as a Gemini API that thinks and signs; `issued` holds every signature given out."""

    def __init__(self, server: LoopbackServer, path: str = GEN_PATH) -> None:
        self.issued: set[str] = set()
        self.calls = itertools.count(1)
        server.route("POST", path, self.answer)

    def answer(self, req: Recorded) -> Reply:
        model = re.search(r"models/([^/:]+):generateContent", req.path).group(1)
        body = req.json()
        config = body.get("generationConfig") or {}
        thinking = config.get("thinkingConfig") or {}
        if "thinkingLevel" in thinking and thinking["thinkingLevel"] not in LEVELS.get(model, set()):
            return error(400, "INVALID_ARGUMENT", "Thinking level is not supported for this model.")
        for n, setting in enumerate(body.get("safetySettings") or []):
            for field, allowed in (("category", HARM_CATEGORIES), ("threshold", THRESHOLDS)):
                if setting.get(field) not in allowed:
                    return error(400, "INVALID_ARGUMENT", f"Invalid value at 'safety_settings[{n}].{field}', \"{setting.get(field)}\"")
        signs = model.startswith("gemini-3")
        contents = body.get("contents") or []
        if signs:
            for c, content in enumerate(contents, 1):
                if content.get("role") != "model":
                    continue
                seen_image = False
                for p, part in enumerate(content.get("parts") or [], 1):
                    is_image = "inline_data" in part or "inlineData" in part
                    needs = is_image or (not seen_image and "text" in part and p == 1)
                    seen_image = seen_image or is_image
                    signature = part.get("thoughtSignature", part.get("thought_signature"))
                    if needs and signature != SKIP and signature not in self.issued:
                        kind = "Image" if is_image else "Text"
                        return error(400, "INVALID_ARGUMENT", f"{kind} part is missing a thought_signature in content position {c}, part position {p}.")
        call = next(self.calls)
        parts: list[dict] = []
        if thinking.get("includeThoughts"):
            parts += [
                {"text": "**Planning the edit**\nKeeping the framing.", "thought": True},
                {"inlineData": {"mimeType": "image/png", "data": b64(png(5, 5, (255, 255, 0)))}, "thought": True},
            ]
        final = [
            {"text": f"Turn {call} done."},
            {"inlineData": {"mimeType": "image/png", "data": b64(png(10 + len(contents), 8, (call * 40 % 256, 60, 90)))}},
        ]
        if config.get("responseModalities") == ["IMAGE"]:
            final = final[1:]
        if signs:
            for part in final:
                signature = b64(uuid.uuid4().bytes + b"sig")
                self.issued.add(signature)
                part["thoughtSignature"] = signature
        candidate: dict = {"content": {"role": "model", "parts": parts + final}, "finishReason": "STOP", "index": 0}
        if body.get("tools"):
            candidate["groundingMetadata"] = {"webSearchQueries": ["weather lisbon today"], "groundingChunks": SOURCES, "searchEntryPoint": {"renderedContent": "<div>...</div>"}}
        usage = {"promptTokenCount": 10, "candidatesTokenCount": 1120, "totalTokenCount": 1300}
        return Reply(json={"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": f"resp-{call}"})
