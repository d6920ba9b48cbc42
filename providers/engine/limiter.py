"""A concurrency limit per provider, shared by every event loop and thread in the process."""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class ProcessLimiter:
    """A semaphore usable from any event loop; ComfyUI may run nodes on more than one."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._lock = threading.Lock()
        self._active = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()

    @property
    def active(self) -> int:
        return self._active

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self.limit and not self._waiters:
                self._active += 1
                return
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    raise
            if waiter[1].done() and not waiter[1].cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._active -= 1
                return
            loop, future = self._waiters.popleft()  # hand the slot straight to the next waiter

        def grant() -> None:
            if future.done():
                self.release()  # that waiter gave up meanwhile: pass the slot on
            else:
                future.set_result(None)

        try:
            loop.call_soon_threadsafe(grant)
        except RuntimeError:  # its loop is closed
            self.release()

    async def __aenter__(self) -> "ProcessLimiter":
        await self.acquire()
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


_limiters: dict[str, ProcessLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(provider_id: str, limit: int) -> ProcessLimiter:
    with _limiters_lock:
        current = _limiters.get(provider_id)
        if current is None or current.limit != max(1, int(limit)):
            if current is None or current.active == 0:
                current = _limiters[provider_id] = ProcessLimiter(limit)
        return current
