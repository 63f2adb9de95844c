"""The exact cache in Redis, shared by every gateway process that points at it.

Entries are JSON under `<prefix><key>` with Redis's own TTL; a sorted set of last-use times
bounds their number (least recently used go first). Put and trim are one script, so concurrent
gateways never leave the set and the entries out of step.
"""

from __future__ import annotations

import time

import redis.asyncio as redis

from conduit.cache.exact import CachedAnswer

# KEYS: entry, recency set. ARGV: value, ttl (s), now, max entries.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  redis.call('DEL', unpack(oldest))
end
"""


class RedisExactCache:
    def __init__(self, url: str, max_entries: int, ttl_s: float, prefix: str = "conduit:cache:") -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._recency = prefix + "recency"
        self._put = self._redis.register_script(_PUT)

    async def get(self, key: str) -> CachedAnswer | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._prefix + key)
            pipe.zadd(self._recency, {self._prefix + key: time.time()}, xx=True)
            value, _ = await pipe.execute()
        return None if value is None else CachedAnswer.from_json(value)

    async def put(self, key: str, answer: CachedAnswer) -> None:
        await self._put(keys=[self._prefix + key, self._recency],
                        args=[answer.to_json(), max(1, round(self._ttl_s)), time.time(), self._max_entries])

    async def close(self) -> None:
        await self._redis.aclose()
