"""Exact-cache hits over HTTP: latency of a request Conduit answers from its cache, with the cache
holding N entries, against the same request sent straight to the upstream and a cache miss.

    python bench/cache_hits.py [--entries 100000] [--rate 20] [--seconds 15]

The fast fake upstream and `conduit serve` (as in bench/gateway.py: a tenant key, the request log
on, the exact cache sized for N entries) run in their own processes. N distinct deterministic
chat requests fill the cache (closed loop, 32 connections); then an open loop at a fixed rate cycles
over the same prompts (every one a hit: the upstream's request counter must not move), then over
fresh prompts (misses), then straight at the upstream. Prints a table; writes
bench/results/cache_hits.json. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway  # noqa: E402 - the gateway benchmark's process helpers, next to this file

console = Console()


def upstream_requests(upstream: gateway.Target) -> int:
    return gateway._get_json(f"{upstream.base_url}/stats")["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=gateway.BENCH / "results" / "cache_hits.json")
    args = parser.parse_args()
    procs = gateway.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="conduit-bench-cache-"))
    try:
        upstream = gateway.start_upstream(procs, workdir, 1)
        conduit = gateway.start_conduit(procs, workdir, upstream, 1, None,
                                        f"cache: {{exact: {{max_entries: {args.entries + 1000}}}}}\n")
        console.print(f"filling the exact cache with {args.entries:,} answers...")
        started = time.perf_counter()
        fill = gateway._loadgen(conduit, "closed", 3600, 0, connections=32, distinct=args.entries, tag="hits",
                                count=args.entries)
        console.print(f"  {fill['requests']:,} requests in {time.perf_counter() - started:.0f} s")
        rows: dict[str, dict] = {}
        before = upstream_requests(upstream)
        rows["hit (Conduit, from its cache)"] = gateway._loadgen(
            conduit, "open", args.seconds, 2, rate=args.rate, distinct=args.entries, tag="hits")
        upstream_calls = upstream_requests(upstream) - before
        rows["miss (Conduit, to the upstream)"] = gateway._loadgen(conduit, "open", args.seconds, 2, rate=args.rate)
        rows["upstream direct"] = gateway._loadgen(upstream, "open", args.seconds, 2, rate=args.rate)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"Exact-cache hits at {args.rate:g} req/s, {args.entries:,} cached answers — "
                        f"{gateway.machine()}", title_justify="left")
    for column in ("path", "requests", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, result in rows.items():
        table.add_row(name, str(result["requests"]), f"{result['p50_ms']:.2f}", f"{result['p99_ms']:.2f}")
    console.print(table)
    console.print(f"upstream requests during the hit phase: {upstream_calls} (0: every one was a hit)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "machine": gateway.machine(), "entries": args.entries, "rate": args.rate,
                                    "upstream_requests_during_hits": upstream_calls, "results": rows}, indent=2))
    console.print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
