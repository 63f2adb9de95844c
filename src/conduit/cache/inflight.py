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
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump(source))

    async def _pump(self, source: AsyncIterator[Delta]) -> None:
        try:
            async for delta in source:
                async with self._changed:
                    self.deltas.append(delta)
                    self._changed.notify_all()
        except asyncio.CancelledError:
            self.error = ConnectionAbortedError("every client of this generation left")
        except BaseException as exc:  # handed to every subscriber
            self.error = exc
        finally:
            await source.aclose()  # type: ignore[attr-defined]
            async with self._changed:
                self.done = True
                self._changed.notify_all()

    async def follow(self) -> AsyncIterator[Delta]:
        position = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: position < len(self.deltas) or self.done)
                fresh = self.deltas[position:]
                finished, error = self.done, self.error
            position += len(fresh)
            for delta in fresh:
                yield delta
            if finished and position == len(self.deltas):
                if error is not None:
                    raise error
                return

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
