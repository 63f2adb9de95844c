"""JSON on the hot path: orjson, several times faster than the standard library, with the
standard library as the fallback for what orjson refuses (integers past 64 bits, which a
client may put in a tool call's arguments or a JSON schema)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

loads = orjson.loads  # raises orjson.JSONDecodeError, a ValueError


def dumps(value: Any, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON; `sort_keys` for a canonical form (cache keys); `default` turns what
    JSON has no type for into something it has (as json.dumps's)."""
    try:
        options = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        return orjson.dumps(value, default=default, option=options)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
                          default=default).encode()
