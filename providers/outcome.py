"""What a generation asks for and what it gives back, the same for every provider."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import sys
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Hashable, TypeVar

from PIL import Image

# Pillow refuses images over twice this many pixels and warns above it; we treat the warning as
# an error too, since no Nano Banana output is anywhere near it (4K is ~17 MP).
MAX_RESULT_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImageInput:
    """A reference image, already encoded for upload."""

    data: bytes
    mime: str
    width: int | None = None
    height: int | None = None

    # A batch sends the same references with every call: encode and hash each one once.
    @cached_property
    def _base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def base64(self) -> str:
        return self._base64

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{self.base64()}"

    @property
    def extension(self) -> str:
        return extension_for(self.mime)


@dataclass(frozen=True)
class TurnPart:
    """One part of an earlier turn of a conversation: text or an image, with the signature the model gave it."""

    text: str | None = None
    image: ImageInput | None = None
    thought_signature: str | None = None  # opaque; sent back unchanged (Gemini 3 validates it)


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "model"
    parts: tuple[TurnPart, ...]
    model: str | None = None  # a model turn: the model id that produced it (its signatures are only valid there)


@dataclass(frozen=True)
class GenerationRequest:
    """One call's worth of work, in the catalog's canonical vocabulary.

    aspect_ratio is "W:H", or None for the provider's default (follow the input, or 1:1);
    resolution is one of "0.5K", "1K", "2K", "4K", or None for the model's default.
    """

    prompt: str
    images: tuple[ImageInput, ...] = ()
    aspect_ratio: str | None = None
    resolution: str | None = None
    seed: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    web_search: bool = False
    count: int = 1
    # Generation options (catalog.GENERATION_OPTIONS says who honours each); None/empty: not sent.
    thinking_level: str | None = None  # "MINIMAL" or "HIGH"
    include_thoughts: bool = False
    response_modalities: str | None = None  # "IMAGE" or "IMAGE+TEXT"
    safety: tuple[tuple[str, str], ...] = ()  # (HARM_CATEGORY_..., BLOCK_...) pairs
    history: tuple[Turn, ...] = ()  # earlier turns of a conversation, oldest first

    def history_digest(self) -> str | None:
        """A stable hash of the history (texts, image hashes, signatures), for cache keys."""
        if not self.history:
            return None
        digest = hashlib.sha256()
        for turn in self.history:
            digest.update(f"<{turn.role} {turn.model}>".encode())
            for part in turn.parts:
                digest.update(repr((part.text, part.image.digest if part.image else None, part.thought_signature)).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime: str
    width: int | None = None
    height: int | None = None
    source_url: str | None = None  # where it was downloaded from, for provenance

    @property
    def extension(self) -> str:
        return extension_for(self.mime)


@dataclass
class GenerationResult:
    provider: str
    model: str
    images: list[GeneratedImage]
    text: str = ""
    finish_reason: str | None = None
    request_id: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    cost: float | None = None
    cost_unit: str | None = None  # "usd" or "credits"
    cost_source: str | None = None  # providers/costs.py: "provider", "tokens" or "list_price"
    seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    thought_images: list[GeneratedImage] = field(default_factory=list)  # interim drafts (include_thoughts), not results
    sources: list[dict[str, str]] = field(default_factory=list)  # search grounding: {"title", "uri"}
    search_queries: list[str] = field(default_factory=list)
    # The model's turn as a conversation continues it: [{"text"} | {"image": index into images}] each
    # with its "thought_signature" when the model gave one. None: this protocol has no multi-turn.
    model_parts: list[dict[str, Any]] | None = None
    # Images beyond the count asked for: paid with the same call, so saved with the result, but not
    # in the node's output (which has the count asked for).
    extra_images: list[GeneratedImage] = field(default_factory=list)


def format_sources(sources: list[dict[str, str]]) -> str:
    """Search-grounding sources as lines for the text output."""
    return "Sources:\n" + "\n".join(f"- {s.get('title') or s['uri']}: {s['uri']}" for s in sources)


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_mime(data: bytes) -> str | None:
    """The image type by magic bytes; providers' declared MIME types are sometimes wrong."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return None


def extension_for(mime: str) -> str:
    return {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp"}.get(
        mime, "bin"
    )


class NotAnImage(ValueError):
    """Bytes that are not a supported image, or one too large to decode safely.

    `data` is what the provider sent, when there were bytes: paid for, so the caller saves them.
    """

    def __init__(self, message: str, data: bytes | None = None, declared_mime: str | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.declared_mime = declared_mime


UNKNOWN_MIME = "application/octet-stream"  # saved with the extension .bin


def inspect_image(data: bytes, declared_mime: str | None = None, source_url: str | None = None) -> GeneratedImage:
    """Check magic bytes and header dimensions without decoding pixels.

    Raises NotAnImage for non-images and for decompression bombs (header claims too many pixels).
    """
    mime = sniff_mime(data)
    if mime is None:
        head = data[:16]
        raise NotAnImage(
            f"expected image bytes, got {len(data)} bytes starting {head!r}"
            + (f" (declared {declared_mime})" if declared_mime else ""),
            data,
            declared_mime,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise NotAnImage(f"image too large to decode safely: {exc}", data, declared_mime) from None
    except Exception as exc:  # truncated or corrupt header
        raise NotAnImage(f"{mime} bytes could not be read: {exc}", data, declared_mime) from None
    if width * height > MAX_RESULT_PIXELS:
        raise NotAnImage(f"image too large to decode safely: {width}x{height}", data, declared_mime)
    return GeneratedImage(data=data, mime=mime, width=width, height=height, source_url=source_url)


_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(?:;[\w=-]+)*?;base64,(?P<data>.*)$", re.S)


def decode_base64_payload(payload: str, max_bytes: int | None = None) -> bytes:
    """Decode base64 that may carry a `data:...;base64,` prefix or line breaks (resellers add both).

    With max_bytes, a payload that would decode to more is refused before decoding.
    """
    payload = payload.strip()  # the same object when there is nothing to strip
    match = _DATA_URI.match(payload) if payload.startswith("data:") else None
    text = match.group("data") if match else payload
    if max_bytes is not None and len(text) // 4 * 3 > max_bytes:  # before any copy; whitespace only makes it smaller
        text = "".join(text.split())
        if len(text) // 4 * 3 > max_bytes:
            raise NotAnImage(f"inline image over the {max_bytes}-byte limit (about {len(text) // 4 * 3} bytes)")
    if sys.version_info >= (3, 11):  # binascii's strict_mode
        try:
            # Strict C decoding first: a clean payload (Google's always is) is not copied to drop
            # whitespace, which for a 4K image is megabytes of work on the event loop.
            return binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotAnImage(f"invalid base64 image payload ({len(payload)} chars): {exc}") from None


# Markdown images and bare URLs inside model text: gateways put results there instead of inline data.
# The text is the provider's (or the model's, which a workflow's prompt steers): no part of a pattern
# may scan past the start of the next candidate, or "![![![..." / "http://http://..." takes
# quadratic time on the event loop (100 KB of text held ComfyUI for a minute).
MARKDOWN_IMAGE = re.compile(
    r"!\[[^\[\]]{0,1000}\]\(\s*(data:image/[a-zA-Z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+|https?://[^)\[\]\s]+)\s*\)"
)
BARE_IMAGE_URL = re.compile(r"https?://[^\s)\"'<>]+\.(?:png|jpe?g|webp)(?:\?[^\s)\"'<>]*)?", re.I)
_URL_RUN = re.compile(r"https?://[^\s)\"'<>]+", re.IGNORECASE)  # non-overlapping runs: each is tried once, from its start


def image_refs_in_text(text: str) -> tuple[list[str], str]:
    """Image references (data URIs or URLs) found in text, and the text with them removed."""
    refs = [m.strip() for m in MARKDOWN_IMAGE.findall(text)]
    rest = MARKDOWN_IMAGE.sub("", text)
    bare = [m.group(0) for m in (BARE_IMAGE_URL.match(run.group(0)) for run in _URL_RUN.finditer(rest)) if m]
    refs.extend(bare)
    for url in bare:
        rest = rest.replace(url, "")
    return refs, rest.strip()


Ref = TypeVar("Ref", bound=Hashable)


def final_positions(turn: list[Ref], keep_last: bool, linked: frozenset[int] = frozenset()) -> list[int]:
    """The positions in `turn` of its results (a Gemini candidate's images, a chat choice's), in order.

    Google marks its interim drafts `thought: true` and the protocol skips them. Some gateways
    (APIYI, providers.md 2.4) send the drafts as ordinary image parts before the final one: a
    preset that does sets the option keep_images "last", and only the turn's last image is a
    result. Everywhere, an image sent twice in one turn is one result, at its last position.

    keep_last keeps the last image the provider sent as one (inline data, a file part, an images[]
    entry), not a link in the model's text after it (`linked`): the text is the model's, a prompt
    steers it, and a link there must not push the paid image out. Only a turn with nothing but
    links keeps its last link.
    """
    if keep_last:
        sent = [n for n in range(len(turn)) if n not in linked]
        return [(sent or list(range(len(turn))))[-1]] if turn else []
    last_position = {ref: n for n, ref in enumerate(turn)}
    return [n for n, ref in enumerate(turn) if last_position[ref] == n]


def spare_positions(turn: list[Ref], kept: list[int], linked: frozenset[int] = frozenset()) -> list[int]:
    """The turn's other images, each once, in the order they take a kept one's place when it cannot
    be fetched: the provider's own images latest first (the draft nearest the final), then the links
    in its text. They were paid for with the turn: a failed download must not lose all of them."""
    seen = {turn[n] for n in kept}
    latest_first = list(reversed(range(len(turn))))
    spares = []
    for n in [n for n in latest_first if n not in linked] + [n for n in latest_first if n in linked]:
        if turn[n] not in seen:
            seen.add(turn[n])
            spares.append(n)
    return spares
