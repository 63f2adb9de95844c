"""The Redis limit store: the same buckets, slots and budget totals, shared by every gateway
process that points at one Redis. Each operation is one Lua script, so it is atomic across
processes; time is Redis's own clock, so the gateways' clocks need not agree.
"""

from __future__ import annotations

import redis.asyncio as redis

from conduit.gateway.limit_store import REFILL_WINDOW_S, Bucket, Slots, Verdict

# KEYS: bucket keys, then slot keys. ARGV: window, bucket count, slot count, lease, lease ttl (s),
# then capacity and cost per bucket, then the limit per slot set.
# Returns {1, remaining...} or {0, refusing index (1-based into KEYS), retry-after seconds}.
# Numbers go back as strings: Redis truncates Lua numbers to integers.
_ACQUIRE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1e6
local window = tonumber(ARGV[1])
local nb, ns = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, ttl = ARGV[4], tonumber(ARGV[5])
local levels = {}
for i = 1, nb do
  local capacity, cost = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'updated')
  local tokens = tonumber(state[1]) or capacity
  local updated = tonumber(state[2]) or now
  local level = math.min(capacity, tokens + (now - updated) * capacity / window)
  if level < cost then
    return {0, i, tostring((cost - level) * window / capacity)}
  end
  levels[i] = level
end
for j = 1, ns do
  local key, limit = KEYS[nb + j], tonumber(ARGV[5 + 2 * nb + j])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= limit then
    return {0, nb + j, '1'}
  end
end
local result = {1}
for i = 1, nb do
  local left = levels[i] - tonumber(ARGV[5 + 2 * i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'updated', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(window * 2))
  result[#result + 1] = tostring(left)
end
for j = 1, ns do
  redis.call('ZADD', KEYS[nb + j], now + ttl, lease)
  redis.call('EXPIRE', KEYS[nb + j], math.ceil(ttl) + 1)
end
return result
"""


class RedisLimitStore:
    def __init__(self, url: str, prefix: str = "conduit:") -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)

    async def acquire(self, buckets: list[Bucket], slots: list[Slots], lease: str, lease_ttl_s: float) -> Verdict:
        keys = [self._prefix + b.key for b in buckets] + [self._prefix + s.key for s in slots]
        args: list[str | int | float] = [REFILL_WINDOW_S, len(buckets), len(slots), lease, lease_ttl_s]
        for bucket in buckets:
            args += [bucket.capacity, bucket.cost]
        args += [s.limit for s in slots]
        result = await self._acquire(keys=keys, args=args)
        if int(result[0]) == 1:
            return Verdict(True, remaining=tuple(float(x) for x in result[1:]))
        refusing = keys[int(result[1]) - 1].removeprefix(self._prefix)
        return Verdict(False, blocked_by=refusing, retry_after_s=float(result[2]))

    async def spend(self, amounts: list[tuple[str, float]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, amount in amounts:
                pipe.hincrbyfloat(self._prefix + key, "tokens", -amount)
            await pipe.execute()

    async def release(self, slots: list[str], lease: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in slots:
                pipe.zrem(self._prefix + key, lease)
            await pipe.execute()

    async def add_spend(self, key: str, usd: float, ttl_s: float) -> float:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(self._prefix + key, usd)
            pipe.expire(self._prefix + key, int(ttl_s) + 1, nx=True)
            total, _ = await pipe.execute()
        return float(total)

    async def get_spend(self, key: str) -> float | None:
        value = await self._redis.get(self._prefix + key)
        return None if value is None else float(value)

    async def init_spend(self, key: str, usd: float, ttl_s: float) -> float:
        await self._redis.set(self._prefix + key, repr(usd), nx=True, ex=int(ttl_s) + 1)
        return float(await self._redis.get(self._prefix + key) or usd)

    async def close(self) -> None:
        await self._redis.aclose()
