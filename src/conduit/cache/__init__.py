from conduit.cache.exact import ExactCache, cache_key, is_deterministic
from conduit.cache.inflight import InflightGroup

__all__ = ["ExactCache", "InflightGroup", "cache_key", "is_deterministic"]
