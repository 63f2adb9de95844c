"""The embedded engines' KV-cache usage and queue lengths, sampled every few seconds for the
dashboard's charts (Prometheus keeps its own history from /metrics; this is for /admin/stats)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conduit.engine.async_engine import AsyncEngine


class EngineSampler:
    def __init__(self, engines: Callable[[], Iterable[tuple[str, AsyncEngine]]], interval_s: float = 5.0,
                 keep_s: float = 86_400) -> None:
        self.engines = engines
        self.interval_s = interval_s
        self._samples: deque[dict[str, Any]] = deque(maxlen=int(keep_s / interval_s) * 4)  # up to 4 engines
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def sample(self) -> None:
        now = time.time()
        for model, engine in self.engines():
            stats = engine.stats
            self._samples.append({"t": round(now, 3), "model": model, "kv_cache_usage": stats.kv_cache_usage,
                                  "running": stats.num_requests_running, "waiting": stats.num_requests_waiting})

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self._samples if s["t"] >= t]

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
