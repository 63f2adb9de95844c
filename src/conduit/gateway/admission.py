"""Admission control: a bounded priority queue in front of a model's deployments.

A model whose deployments all set `max_in_flight` has that many slots in all. A request takes a
slot at once when one is free and nobody waits; otherwise it joins the queue. A freed slot goes
straight to the best waiter (highest priority, then earliest), so a newcomer can never take it
from under a waiter. A full queue answers 429 and a wait longer than `max_wait_s` 503, both
with `Retry-After`; so the memory held by waiting requests is bounded by the queue's size.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conduit.engine.async_engine import LatencyHistogram
from conduit.errors import APIError

PRIORITIES = {"low": -1, "normal": 0, "high": 1}
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AdmissionQueue:
    def __init__(self, name: str, slots: int, max_size: int, max_wait_s: float) -> None:
        self.name = name
        self.slots = slots
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # (-priority, arrival, future)
        self._arrivals = itertools.count()
        self.wait_seconds = LatencyHistogram(_WAIT_BUCKETS)
        self.rejected = 0

    @property
    def depth(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self.in_use < self.slots and not self._waiters:
            self.in_use += 1
            self.wait_seconds.observe(0.0)
            return
        if len(self._waiters) >= self.max_size:
            self.rejected += 1
            raise APIError(429, f"Too many requests are waiting for '{self.name}'; try again shortly.",
                           "rate_limit_exceeded", code="queue_full", headers={"Retry-After": self._retry_after()})
        started = time.perf_counter()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (-priority, next(self._arrivals), future)
        heapq.heappush(self._waiters, entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.max_wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot in the same instant: pass it on
            else:
                future.cancel()
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.rejected += 1
            raise APIError(503, f"No capacity for '{self.name}' within {self.max_wait_s:g}s.", "service_unavailable",
                           code="queue_timeout", headers={"Retry-After": self._retry_after()}) from None
        self.wait_seconds.observe(time.perf_counter() - started)

    def _release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot changes hands; in_use stays
                return
        self.in_use -= 1

    def _retry_after(self) -> str:
        mean = self.wait_seconds.total / self.wait_seconds.count if self.wait_seconds.count else 1.0
        return str(max(1, math.ceil(mean)))
