"""Passive health: a circuit breaker per deployment (closed -> open -> half-open -> closed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"  # serving
    OPEN = "open"  # ejected: no traffic until the cooldown ends
    HALF_OPEN = "half_open"  # cooldown over: one probe request decides


class CircuitBreaker:
    def __init__(self, failure_threshold: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """May a request go here now? In half-open, only one probe at a time."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def on_start(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def on_success(self) -> None:
        self._state, self._failures, self._probing = BreakerState.CLOSED, 0, False

    def on_failure(self) -> None:
        self._failures += 1
        reopen = self.state is BreakerState.HALF_OPEN
        if reopen or self._failures >= self.failure_threshold:
            self._state, self._opened_at = BreakerState.OPEN, self._clock()
        self._probing = False

    def on_abandon(self) -> None:
        """The request ended without a verdict (the client left): free the probe slot."""
        self._probing = False
