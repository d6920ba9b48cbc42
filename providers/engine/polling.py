"""What a poll of an asynchronous job reports, and the status line shown while waiting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .context import Caller


@dataclass
class PollState:
    done: bool
    value: Any = None
    status: str = ""
    progress: float | None = None  # 0..100 when the provider reports it
    queue_position: int | None = None


def _poll_status_text(caller: Caller, state: PollState) -> str:
    text = state.status or "Working"
    if state.queue_position is not None:
        text += f", queue position {state.queue_position}"
    if state.progress is not None:
        text += f", {state.progress:.0f}%"
    return f"{caller.provider}: {text}"
