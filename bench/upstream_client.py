"""Upstream HTTP client benchmark: CPU per streamed request for httpx against aiohttp.

    python bench/upstream_client.py [--requests 3000] [--concurrency 20]

The gateway streams every upstream answer (bench/fast_upstream.py here, in its own process) and
reads it line by line with a timeout per line, as `backends/openai_compat.py` does. This measures
only the client's side of that: the process CPU time per request, on uvloop, each client run twice
in alternation so drift on a shared machine shows. Prints a table; writes
bench/results/upstream_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import uvloop
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


async def _measure(one, requests: int, concurrency: int) -> float:
    await asyncio.gather(*[one() for _ in range(concurrency)])  # warm the pool
    started = time.process_time()
    for _ in range(requests // concurrency):
        await asyncio.gather(*[one() for _ in range(concurrency)])
    return (time.process_time() - started) / requests * 1000


async def with_httpx(url: str, requests: int, concurrency: int) -> float:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200)) as client:
        async def one() -> None:
            async with client.stream("POST", url, json=BODY, timeout=httpx.Timeout(5.0)) as response:
                lines = response.aiter_lines()
                while True:
                    async with asyncio.timeout(5):
                        if await anext(lines, None) is None:
                            break

        return await _measure(one, requests, concurrency)


async def with_aiohttp(url: str, requests: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
        async def one() -> None:
            async with session.post(url, json=BODY, timeout=aiohttp.ClientTimeout(sock_connect=5)) as response:
                while True:
                    async with asyncio.timeout(5):
                        if not await response.content.readline():
                            break

        return await _measure(one, requests, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    upstream = subprocess.Popen([sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        runs: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
        for _ in range(2):
            runs["httpx"].append(uvloop.run(with_httpx(url, args.requests, args.concurrency)))
            runs["aiohttp"].append(uvloop.run(with_aiohttp(url, args.requests, args.concurrency)))
    finally:
        upstream.terminate()
        upstream.wait(10)
    table = Table(title=f"Client CPU per streamed request — {platform.processor() or platform.machine()}, "
                        f"Python {platform.python_version()}")
    table.add_column("client")
    table.add_column("run 1 ms", justify="right")
    table.add_column("run 2 ms", justify="right")
    for name, values in runs.items():
        table.add_row(f"{name} {getattr(sys.modules[name], '__version__', '')}", *(f"{v:.3f}" for v in values))
    Console().print(table)
    out = BENCH / "results" / "upstream_client.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"requests": args.requests, "concurrency": args.concurrency,
                               "cpu_ms_per_request": runs}, indent=2))


if __name__ == "__main__":
    main()
