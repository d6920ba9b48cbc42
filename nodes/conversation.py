"""Editing as a conversation in the graph: the NANO_BANANA_CONVERSATION socket's value.

The value is plain JSON-able data, small and key-free, so ComfyUI can cache it and a workflow can
carry it:

    {"kind": "nano_banana_conversation", "version": 1, "store": "<save_to folder>",
     "turns": [{"role": "user", "parts": [{"text": ...}, {"image": "<sha256>", "mime": "image/png"}]},
               {"role": "model", "provider": "google", "model_id": "...",
                "parts": [{"text": ..., "thought_signature": "..."}, {"image": "<sha256>", "mime": ..., "thought_signature": "..."}]}]}

Images are named by content hash and kept in the result store (store.put_blob), so a conversation
outlives the process: after a restart the earlier node answers from its cache with the same hashes.
Thought signatures are kept verbatim: Gemini 3 models require them back unchanged on later turns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..providers.errors import InvalidRequest
from ..providers.outcome import (
    GeneratedImage,
    ImageInput,
    NotAnImage,
    Turn,
    TurnPart,
    inspect_image,
)
from ..providers.redaction import redact
from .store import put_blob, read_blob

KIND = "nano_banana_conversation"
VERSION = 1
MAX_TURNS = 64
MAX_PARTS = 32  # per turn
MAX_TEXT = 100_000
MAX_SIGNATURE = 1_000_000
IMAGE_MIMES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")


def build_conversation(
    previous: dict[str, Any] | None,
    *,
    store_root: Path,
    store_folder: str,
    prompt: str,
    user_images: tuple[ImageInput, ...] | list[ImageInput],
    provider: str,
    model_id: str,
    model_text: str,
    model_parts: list[dict[str, Any]] | None,
    result_images: list[GeneratedImage],
    result_files: list[Path] | None = None,
) -> dict[str, Any]:
    """The conversation after one more exchange; writes its images into the store by hash
    (result_files: where the result images were saved, to link instead of writing them again)."""
    user_parts: list[dict[str, Any]] = [{"text": prompt}]
    user_parts += [{"image": put_blob(store_root, image.data), "mime": image.mime} for image in user_images]
    signed = model_parts is not None
    if model_parts is None:  # a protocol without turns of its own (or a result cached before): its words, then its images
        model_parts = ([{"text": model_text}] if model_text else []) + [{"image": n} for n in range(len(result_images))]
    parts: list[dict[str, Any]] = []
    for part in model_parts:
        if "image" in part:
            number = int(part["image"])
            source = result_files[number] if result_files and number < len(result_files) else None
            entry: dict[str, Any] = {"image": put_blob(store_root, result_images[number].data, source), "mime": result_images[number].mime}
        else:
            entry = {"text": redact(str(part.get("text") or ""))}  # the model's words may echo a key: the output is shown
        if part.get("thought_signature"):
            # Kept verbatim for the next turn, except a key a gateway echoed into it: the output reaches /history.
            entry["thought_signature"] = redact(str(part["thought_signature"]))
        parts.append(entry)
    turns = list((previous or {}).get("turns") or [])
    model_turn: dict[str, Any] = {"role": "model", "provider": provider, "model_id": model_id, "parts": parts}
    if not signed:
        model_turn["signed"] = False  # no signatures were captured: later requests send Google's stand-in
    turns += [{"role": "user", "parts": user_parts}, model_turn]
    return {"kind": KIND, "version": VERSION, "store": store_folder, "turns": turns}


def unsaved_conversation(reason: str) -> dict[str, Any]:
    """What the output carries when no conversation can be continued from this run."""
    return {"kind": KIND, "version": VERSION, "store": None, "turns": [], "unavailable": reason}


def _bad(what: str) -> InvalidRequest:
    return InvalidRequest(f"The conversation input is not usable: {what}.", hint="Connect the 'conversation' output of a Nano Banana Bridge node (or disconnect the input).")


def store_folder_of(conversation: Any) -> str | None:
    """The save_to folder the conversation's images are in (checked by the node like save_to)."""
    check_shape(conversation)
    folder = conversation.get("store")
    return folder if isinstance(folder, str) and folder.strip() else None


def check_shape(conversation: Any) -> None:
    if not isinstance(conversation, dict) or conversation.get("kind") != KIND:
        raise _bad("it is not a Nano Banana conversation")
    if conversation.get("version") != VERSION:
        raise _bad(f"version {str(conversation.get('version'))[:20]} is not {VERSION}")
    if conversation.get("unavailable"):
        raise InvalidRequest(f"The earlier node produced no conversation to continue: {str(conversation['unavailable'])[:300]}", hint="Fix the earlier node, then run again.")
    turns = conversation.get("turns")
    if not isinstance(turns, list) or not 0 < len(turns) <= MAX_TURNS:
        raise _bad(f"it must hold 1 to {MAX_TURNS} turns")


def load_history(conversation: Any, store_root: Path | None) -> tuple[Turn, ...]:
    """The conversation's turns with their images read back from the store (each checked against its hash)."""
    check_shape(conversation)
    if store_root is None:
        raise InvalidRequest("The conversation's images are not in any result store.", hint="Set save_to on the node that started the conversation (it was empty), and run it again.")
    turns: list[Turn] = []
    for number, raw in enumerate(conversation["turns"], 1):
        if not isinstance(raw, dict) or raw.get("role") not in ("user", "model"):
            raise _bad(f"turn {number} has no role user/model")
        raw_parts = raw.get("parts")
        if not isinstance(raw_parts, list) or len(raw_parts) > MAX_PARTS:
            raise _bad(f"turn {number} must hold a list of at most {MAX_PARTS} parts")
        parts = [_part(part, number, store_root) for part in raw_parts]
        # A model turn's model id: its signatures are valid there. None (unsigned, or a user turn): never sent as its own.
        model = raw.get("model_id") if raw["role"] == "model" and isinstance(raw.get("model_id"), str) and raw.get("signed", True) is not False else None
        turns.append(Turn(role=raw["role"], parts=tuple(parts), model=model))
    return tuple(turns)


def _part(raw: Any, turn: int, store_root: Path) -> TurnPart:
    if not isinstance(raw, dict):
        raise _bad(f"a part of turn {turn} is not an object")
    signature = raw.get("thought_signature")
    if signature is not None and (not isinstance(signature, str) or len(signature) > MAX_SIGNATURE):
        raise _bad(f"a thought signature in turn {turn} is not a string")
    if "image" in raw:
        digest, mime = raw.get("image"), raw.get("mime")
        if not isinstance(digest, str) or mime not in IMAGE_MIMES:
            raise _bad(f"an image of turn {turn} has no hash or an unknown type")
        data = read_blob(store_root, digest)
        if data is None:
            raise InvalidRequest(
                f"Image {digest[:12]} of turn {turn} of the conversation is missing from {store_root} (or was changed).",
                hint="Run the node that made that turn again (change one of its inputs so ComfyUI does not reuse its output); it saves the image anew.",
            )
        try:
            checked = inspect_image(data)
        except NotAnImage as exc:
            raise _bad(f"image {digest[:12]} is not a usable image ({exc})") from None
        return TurnPart(image=ImageInput(data, checked.mime, checked.width, checked.height), thought_signature=signature)
    text = raw.get("text")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise _bad(f"a text part of turn {turn} is not a string of at most {MAX_TEXT} characters")
    return TurnPart(text=text, thought_signature=signature)
