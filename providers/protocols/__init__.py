"""One module per protocol family; the catalog's `family` names the module.

Every module implements one of two interfaces (typing.Protocol, checked by mypy for the modules
listed below and at run time by `family_for`):
  SyncFamily   generate(call, request) -> GenerationResult, for synchronous APIs;
  AsyncFamily  submit(call, request) -> handle, then wait(call, handle) -> GenerationResult, for
               asynchronous jobs: the handle is a JSON-serialisable dict, journaled before polling,
               so a later run attaches to the job instead of paying for it again.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..outcome import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    from ..client import ProviderCall

TaskHandle = dict[str, Any]  # what submit() returns and the journal keeps


@runtime_checkable
class SyncFamily(Protocol):
    async def generate(self, call: ProviderCall, request: GenerationRequest) -> GenerationResult: ...


@runtime_checkable
class AsyncFamily(Protocol):
    async def submit(self, call: ProviderCall, request: GenerationRequest) -> TaskHandle: ...

    async def wait(self, call: ProviderCall, handle: TaskHandle) -> GenerationResult: ...


def family_for(name: str) -> SyncFamily | AsyncFamily:
    """The protocol module for a family, as the interface it implements (asynchronous first)."""
    try:
        module = importlib.import_module(f".{name}", __package__)
    except ModuleNotFoundError:
        raise ConfigError(f"Unknown protocol family '{name}'.", hint="Check the provider's 'protocol' in providers.json.") from None
    if isinstance(module, AsyncFamily):
        return module
    if isinstance(module, SyncFamily):
        return module
    raise ConfigError(f"The protocol module '{name}' implements neither generate() nor submit()/wait().")


if TYPE_CHECKING:  # mypy checks each module against its interface
    from . import async_tasks, fal_queue, gemini, openai_chat, openai_images, vydra

    _synchronous: list[SyncFamily] = [gemini, openai_images, openai_chat, vydra]
    _asynchronous: list[AsyncFamily] = [fal_queue, async_tasks]
