"""The few places the pack touches ComfyUI's runtime: interrupts, progress, folders.

ComfyUI's own top-level modules (comfy, server, folder_paths) are imported where they are used,
so everything else in nodes/ stays importable and testable without a running ComfyUI.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from pathlib import Path

from ..providers.redaction import redact

log = logging.getLogger("nano_banana_bridge")

# Two ways a running node stops, which the pack treats differently (see the README, "When a
# neighbour fails"):
# - The user pressed Interrupt: the /interrupt route sets comfy.model_management's flag. Our node
#   sees it within 0.2 s (the engine polls it) unless a synchronous node (a sampler) takes it first:
#   while such a node runs, the event loop is blocked, and that node's progress hook clears the flag
#   as it raises. Either way the interrupt was the user's: remote jobs are cancelled.
# - Another node of the prompt failed: the executor stops and asyncio.run() cancels every task
#   still pending, ours included. The flag is never set. Our paid jobs are left running, journaled.
# So a task cancellation alone is no interrupt. To see interrupts a sampler consumed, we count every
# time the flag is set (only the /interrupt route sets it to True) by wrapping the setter once.
_interrupts = 0
_interrupts_lock = threading.Lock()


def install_interrupt_observer() -> bool:
    """Count user interrupts from now on (idempotent). False when ComfyUI's flag is not there."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    original = getattr(mm, "interrupt_current_processing", None)
    if original is None:
        return False
    if getattr(original, "_banana_observer", False):
        return True

    def interrupt_current_processing(value=True):
        global _interrupts
        if value:
            with _interrupts_lock:
                _interrupts += 1
        return original(value)

    interrupt_current_processing._banana_observer = True  # type: ignore[attr-defined]
    mm.interrupt_current_processing = interrupt_current_processing
    return True


def interrupts_seen() -> int:
    return _interrupts


def interrupt_requested() -> bool:
    """Peek at ComfyUI's interrupt flag without clearing it (the engine polls this)."""
    import comfy.model_management

    return comfy.model_management.processing_interrupted()


def raise_interrupt() -> None:
    """Raise ComfyUI's own interrupt exception, so the UI reports 'interrupted', not an error."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    raise comfy.model_management.InterruptProcessingException()


def node_text(text: str) -> str:
    """Progress text as ComfyUI puts it into the page: the classic canvas as HTML, unsanitised
    (innerHTML of nl2br(linkifyHtml(text))), the Vue-nodes view as Markdown. It quotes providers'
    and models' words, so what either reads as markup is escaped (a tag, a Markdown link or image,
    the widget's [[label|url]] link), and each line ends in two spaces, Markdown's line break, so the
    Vue view keeps the lines the classic view shows."""
    return html.escape(text, quote=False).replace("[", "&#91;").replace("\n", "  \n")


class NodeProgress:
    """Progress text on the node (at most a few times a second) and a progress bar over items."""

    MIN_INTERVAL = 0.25

    def __init__(self, node_id: str | None, total: int) -> None:
        self.node_id = node_id
        self._last_text = ""
        self._last_sent = 0.0
        self.interrupted = False  # set when the progress bar's hook consumed ComfyUI's interrupt flag
        install_interrupt_observer()
        self._interrupts_at_start = interrupts_seen()
        self._bar = None
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(max(1, total), node_id=node_id)
        except Exception:  # noqa: BLE001 - progress display is optional
            log.debug("progress bar unavailable", exc_info=True)

    def text(self, text: str, *, force: bool = False) -> None:
        text = redact(text)
        now = time.monotonic()
        if text == self._last_text or (not force and now - self._last_sent < self.MIN_INTERVAL):
            return
        self._last_text, self._last_sent = text, now
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(node_text(text), self.node_id)
        except Exception:  # noqa: BLE001
            log.debug("progress text unavailable", exc_info=True)

    def items_finished(self, finished: int, total: int) -> None:
        if self._bar is not None:
            try:
                self._bar.update_absolute(finished, total)
            except Exception:  # noqa: BLE001 - progress display is optional
                log.debug("progress bar update failed", exc_info=True)
            except BaseException as exc:
                # ComfyUI's hook raises its interrupt here and clears the flag; remember it, so the
                # batch's cancel check still sees it and stops the remaining calls.
                if type(exc).__name__ != "InterruptProcessingException":
                    raise
                self.interrupted = True

    def cancel_requested(self) -> bool:
        """The user's interrupt: the flag, or one set since this node started that another node consumed."""
        return self.interrupted or interrupt_requested() or interrupts_seen() > self._interrupts_at_start


def current_prompt_id() -> str | None:
    """The id of the queued workflow now executing (the cost ledger's run), or None outside ComfyUI."""
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None and context.prompt_id:
            return str(context.prompt_id)
        from server import PromptServer  # older ComfyUI: the server remembers the prompt it is running

        return getattr(PromptServer.instance, "last_prompt_id", None)
    except Exception:  # noqa: BLE001 - no running ComfyUI (tests, scripts)
        return None


def output_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory())


def user_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_user_directory())


DEBUG_ENV = "BANANA_DEBUG"


def quiet_http_logs() -> None:
    """httpx logs one INFO line per request (every poll of a job included): keep it to warnings
    unless BANANA_DEBUG is set, in which case the pack's own logger goes to DEBUG as well."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("", "0", "false", "no", "off"):
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    else:
        logging.getLogger("nano_banana_bridge").setLevel(logging.DEBUG)
        logging.getLogger("httpx").setLevel(logging.INFO)


def served_dirs() -> tuple[Path, ...]:
    """The folders ComfyUI hands to web pages (/view, /upload): no secret may live there."""
    import folder_paths

    return tuple(Path(get()) for get in (folder_paths.get_output_directory, folder_paths.get_input_directory, folder_paths.get_temp_directory))
