"""Where limit and budget counters live: this process's memory, or Redis for several gateways.

Both stores implement the same three operations, each atomic:

- `acquire`: refill every token bucket for the time passed, and only if *all* of them hold
  their cost and every concurrency slot set has room, take the costs and add a lease to each
  slot set. A refusal changes nothing, so a request refused by its tenant's bucket does not eat
  into its key's.
- `spend`: add to (or refund) buckets after the fact: completion tokens are known only then.
- `release`: give a lease back. Leases expire on their own, so a crashed gateway's slots return.

Buckets hold `capacity` and refill at capacity per minute; a bucket may go negative when
spending is reconciled, which then delays the next request until it has refilled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

REFILL_WINDOW_S = 60.0


@dataclass(frozen=True)
class Bucket:
    key: str
    capacity: int  # per minute
    cost: float


@dataclass(frozen=True)
class Slots:
    key: str
    limit: int


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: tuple[float, ...] = ()  # per bucket, after taking the costs
    blocked_by: str | None = None  # the bucket or slot set that refused
    retry_after_s: float = 0.0


class LimitStore(Protocol):
    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, lease_ttl_s: float) -> Verdict: ...

    async def spend(self, amounts: list[tuple[str, float]]) -> None: ...

    async def release(self, slots: list[str], lease: str) -> None: ...

    async def add_spend(self, key: str, usd: float, ttl_s: float) -> float:
        """Add to a budget's running total; return the new total."""
        ...

    async def get_spend(self, key: str) -> float | None: ...

    async def init_spend(self, key: str, usd: float, ttl_s: float) -> float:
        """Set a budget's total unless another process already has; return the total."""
        ...

    async def close(self) -> None: ...


def refill(tokens: float, updated: float, capacity: int, now: float) -> float:
    return min(float(capacity), tokens + (now - updated) * capacity / REFILL_WINDOW_S)


def wait_for(tokens: float, cost: float, capacity: int) -> float:
    """Seconds until a bucket holding `tokens` can pay `cost`."""
    return max(0.0, (cost - tokens) * REFILL_WINDOW_S / capacity)


class MemoryLimitStore:
    """Counters in this process. Every operation runs without awaiting, so it is atomic."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)
        self._leases: dict[str, dict[str, float]] = {}  # slot key -> lease -> expires
        self._spend: dict[str, tuple[float, float]] = {}  # budget key -> (usd, expires)

    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, lease_ttl_s: float) -> Verdict:
        now = time.monotonic()
        levels = []
        for bucket in buckets:
            tokens, updated = self._buckets.get(bucket.key, (float(bucket.capacity), now))
            level = refill(tokens, updated, bucket.capacity, now)
            if level < bucket.cost:
                return Verdict(False, blocked_by=bucket.key, retry_after_s=wait_for(level, bucket.cost, bucket.capacity))
            levels.append(level)
        for group in slots:
            held = self._leases.setdefault(group.key, {})
            if len(held) >= group.limit:  # expired leases (a lost release) are only looked for when full
                for expired in [name for name, until in held.items() if until <= now]:
                    del held[expired]
            if len(held) >= group.limit:
                return Verdict(False, blocked_by=group.key, retry_after_s=1.0)
        for bucket, level in zip(buckets, levels):
            self._buckets[bucket.key] = (level - bucket.cost, now)
        for group in slots:
            self._leases[group.key][lease] = now + lease_ttl_s
        return Verdict(True, remaining=tuple(level - b.cost for b, level in zip(buckets, levels)))

    async def spend(self, amounts: list[tuple[str, float]]) -> None:
        for key, amount in amounts:
            tokens, updated = self._buckets.get(key, (0.0, time.monotonic()))
            self._buckets[key] = (tokens - amount, updated)

    async def release(self, slots: list[str], lease: str) -> None:
        for key in slots:
            self._leases.get(key, {}).pop(lease, None)

    async def add_spend(self, key: str, usd: float, ttl_s: float) -> float:
        total, expires = self._spend.get(key, (0.0, time.time() + ttl_s))
        self._spend[key] = (total + usd, expires)
        return total + usd

    async def get_spend(self, key: str) -> float | None:
        found = self._spend.get(key)
        if found is None or found[1] <= time.time():
            self._spend.pop(key, None)
            return None
        return found[0]

    async def init_spend(self, key: str, usd: float, ttl_s: float) -> float:
        current = await self.get_spend(key)
        if current is None:
            self._spend[key] = (usd, time.time() + ttl_s)
            return usd
        return current

    async def close(self) -> None:
        pass
