"""The dashboard's time series: request-log rows folded into fixed buckets (rates, percentiles,
tokens, cost per tenant, cache hits, guard blocks)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from conduit.store.requests import utc


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def series(rows: Sequence[tuple], since: float, now: float, bucket_s: int) -> dict[str, Any]:
    """`rows` as `store.requests.rows_since` gives them; every bucket from `since` to `now` is
    present (empty ones too), oldest first."""
    count = max(1, int((now - since) // bucket_s) + 1)
    start = since - since % bucket_s
    buckets: list[dict[str, Any]] = [{"t": int(start + i * bucket_s), "latency": [], "ttft": [], "tpot": [],
                                      "requests": 0, "errors": 0, "output_tokens": 0, "cost_usd": 0.0,
                                      "cache_hits": 0, "cacheable": 0, "guard_blocks": 0} for i in range(count)]
    tenant_cost: dict[tuple[int, str], float] = defaultdict(float)
    for created, status, latency, ttft, tpot, completion, cost, cache, guard, tenant, stream in rows:
        moment = utc(created).timestamp() if isinstance(created, datetime) else float(created)
        i = int((moment - start) // bucket_s)
        if not 0 <= i < count:
            continue
        b = buckets[i]
        b["requests"] += 1
        if status == "error":
            b["errors"] += 1
        b["latency"].append(latency)
        if stream and ttft is not None:
            b["ttft"].append(ttft)
        if tpot is not None:
            b["tpot"].append(tpot)
        b["output_tokens"] += completion or 0
        b["cost_usd"] += cost or 0.0
        if cache is not None:
            b["cacheable"] += 1
            b["cache_hits"] += cache != "miss"
        if guard and ("block" in guard or "=fallback" in guard):
            b["guard_blocks"] += 1
        if cost:
            tenant_cost[b["t"], tenant or "(admin)"] += cost
    out = []
    for b in buckets:
        out.append({"t": b["t"], "requests": b["requests"], "errors": b["errors"],
                    "rps": round(b["requests"] / bucket_s, 4),
                    "latency_p50_ms": _percentile(b["latency"], 50), "latency_p95_ms": _percentile(b["latency"], 95),
                    "latency_p99_ms": _percentile(b["latency"], 99),
                    "ttft_p50_ms": _percentile(b["ttft"], 50), "ttft_p95_ms": _percentile(b["ttft"], 95),
                    "tpot_p50_ms": _percentile(b["tpot"], 50), "tpot_p95_ms": _percentile(b["tpot"], 95),
                    "output_tokens": b["output_tokens"], "tokens_per_s": round(b["output_tokens"] / bucket_s, 3),
                    "cost_usd": round(b["cost_usd"], 8), "cache_hits": b["cache_hits"],
                    "cache_hit_rate": round(b["cache_hits"] / b["cacheable"], 4) if b["cacheable"] else None,
                    "guard_blocks": b["guard_blocks"]})
    totals = {name: sum(b[name] for b in out) for name in ("requests", "errors", "output_tokens", "cache_hits",
                                                           "guard_blocks")}
    totals["cost_usd"] = round(sum(b["cost_usd"] for b in out), 8)
    by_tenant = [{"t": t, "tenant": tenant, "cost_usd": round(cost, 8)}
                 for (t, tenant), cost in sorted(tenant_cost.items())]
    return {"series": out, "cost_by_tenant": by_tenant, "totals": totals}
