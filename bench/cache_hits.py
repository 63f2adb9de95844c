"""Cache hits over HTTP: latency of a request Conduit answers from its cache, with the cache
holding N entries, against the same request sent straight to the upstream and a cache miss.

    python bench/cache_hits.py [--entries 100000] [--rate 20] [--seconds 15] [--semantic]

The fast fake upstream and `conduit serve` (as in bench/gateway.py: a tenant key, the request log
on, the exact cache sized for N entries) run in their own processes. N distinct deterministic
chat requests fill the cache (closed loop, 32 connections); then an open loop at a fixed rate cycles
over the same prompts (every one a hit: the upstream's request counter must not move), then over
fresh prompts (misses), then straight at the upstream.

`--semantic` turns the semantic cache on as well (sized for N) and fills both caches with N
generated questions ("How do I export my invoices on macOS?"); the semantic probes ask the same
questions in other words ("How can I ..."), so the exact cache misses, the question is embedded and
the nearest cached question verified; the count of `x-conduit-cache: semantic-hit` answers is
reported. Misses are then questions the cache has never seen (embedded too).
Prints a table; writes bench/results/cache_hits.json (or cache_hits_semantic.json). Loopback only.
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
    parser.add_argument("--semantic", action="store_true", help="the semantic cache too; reworded questions")
    parser.add_argument("--conduit-src", default=None, help="serve Conduit from this src/ (another tree)")
    parser.add_argument("--config", default="", help="more YAML for conduit.yaml (top-level keys)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or gateway.BENCH / "results" / f"cache_hits{'_semantic' if args.semantic else ''}.json"
    cache_config = f"exact: {{max_entries: {args.entries + 1000}}}"
    questions = {"questions": "asked"} if args.semantic else {"tag": "hits"}
    if args.semantic:
        cache_config += f", semantic: {{enabled: true, max_entries: {args.entries + 1000}}}"
    procs = gateway.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="conduit-bench-cache-"))
    try:
        upstream = gateway.start_upstream(procs, workdir, 1)
        conduit = gateway.start_conduit(procs, workdir, upstream, 1, args.conduit_src,
                                        f"cache: {{{cache_config}}}\n{args.config}\n")
        console.print(f"filling the cache with {args.entries:,} answers...")
        started = time.perf_counter()
        fill = gateway._loadgen(conduit, "closed", 7200, 0, connections=32, distinct=args.entries,
                                count=args.entries, **questions)
        console.print(f"  {fill['requests']:,} requests in {time.perf_counter() - started:.0f} s; the server "
                      f"settled (request log written) {gateway.wait_quiet(conduit.pid):.0f} s later")
        rows: dict[str, dict] = {}
        before = upstream_requests(upstream)
        rows["hit (Conduit, exact cache)"] = gateway._loadgen(
            conduit, "open", args.seconds, 2, rate=args.rate, distinct=args.entries, **questions)
        if args.semantic:
            rows["hit (Conduit, semantic cache: reworded)"] = gateway._loadgen(
                conduit, "open", args.seconds, 2, rate=args.rate, distinct=args.entries, questions="reworded")
        upstream_calls = upstream_requests(upstream) - before
        fresh = {"questions": "asked", "offset": args.entries} if args.semantic else {}
        rows["miss (Conduit, to the upstream)"] = gateway._loadgen(conduit, "open", args.seconds, 2,
                                                                  rate=args.rate, **fresh)
        rows["upstream direct"] = gateway._loadgen(upstream, "open", args.seconds, 2, rate=args.rate)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"Cache hits at {args.rate:g} req/s, {args.entries:,} cached answers — "
                        f"{gateway.machine()}", title_justify="left")
    for column in ("path", "requests", "p50 ms", "p99 ms", "x-conduit-cache"):
        table.add_column(column, justify="left" if column in ("path", "x-conduit-cache") else "right")
    for name, result in rows.items():
        answered = ", ".join(f"{k} {v}" for k, v in sorted(result.get("cache", {}).items()))
        table.add_row(name, str(result["requests"]), f"{result['p50_ms']:.2f}", f"{result['p99_ms']:.2f}",
                      answered)
    console.print(table)
    console.print(f"upstream requests during the hit phases: {upstream_calls} (0: every one was a hit)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "machine": gateway.machine(), "entries": args.entries, "rate": args.rate,
                                    "semantic": args.semantic,
                                    "upstream_requests_during_hits": upstream_calls, "results": rows}, indent=2))
    console.print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
