"""In-flight de-duplication: identical concurrent requests share one generation.

The first request starts the generation in a task of its own; every identical request that
arrives meanwhile subscribes and receives the same deltas from the start. The generation is not
tied to any one client: it stops only when every subscriber has gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from conduit.backends import Delta


class _Shared:
    def __init__(self, source: AsyncIterator[Delta]) -> None:
        self.deltas: list[Delta] = []
        self.error: BaseException | None = None
        self.done = False
        self.subscribers = 0
        # Futures of subscribers waiting for the next delta: lighter than an asyncio.Condition,
        # which costs a lock round trip per delta on the path of every cacheable request.
        self._waiters: list[asyncio.Future] = []
        self._task = asyncio.create_task(self._pump(source))

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _pump(self, source: AsyncIterator[Delta]) -> None:
        try:
            async for delta in source:
                self.deltas.append(delta)
                self._wake()
        except asyncio.CancelledError:
            self.error = ConnectionAbortedError("every client of this generation left")
        except BaseException as exc:  # handed to every subscriber
            self.error = exc
        finally:
            await source.aclose()  # type: ignore[attr-defined]
            self.done = True
            self._wake()

    async def follow(self) -> AsyncIterator[Delta]:
        position = 0
        while True:
            if position < len(self.deltas):
                fresh = self.deltas[position:]
                position += len(fresh)
                for delta in fresh:
                    yield delta
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def cancel(self) -> None:
        self._task.cancel()


class InflightGroup:
    def __init__(self) -> None:
        self._running: dict[str, _Shared] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: str, start: Callable[[], AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
        """The deltas of the generation for `key`, started by `start()` unless one is running."""
        shared = self._running.get(key)
        if shared is None or shared.done:
            shared = _Shared(start())
            self._running[key] = shared
            shared._task.add_done_callback(lambda _: self._forget(key, shared))
        shared.subscribers += 1
        try:
            async for delta in shared.follow():
                yield delta
        finally:
            shared.subscribers -= 1
            if shared.subscribers == 0 and not shared.done:
                shared.cancel()

    def joined(self, key: str) -> bool:
        """Whether a request for `key` would join a running generation."""
        shared = self._running.get(key)
        return shared is not None and not shared.done

    def _forget(self, key: str, shared: _Shared) -> None:
        if self._running.get(key) is shared:
            del self._running[key]
