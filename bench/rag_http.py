"""Retrieval through the product's own path: `conduit ingest` of the cleaned Django docs, then
`POST /v1/vector_stores/{id}/search` over HTTP with the FAQ questions, against a `conduit serve`.

    python bench/rag_http.py [--max-pages N] [--rounds 3]

Prints ingest throughput (from the CLI's own summary) and search latency p50/p95 per retrieval
mode, with the server's memory; writes bench/results/rag_http.json. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import django_qa  # noqa: E402 - the bench's own helper, next to this file

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="Passes over the questions per mode.")
    args = parser.parse_args()

    django_qa.ensure_debian_package(django_qa.DJANGO_PACKAGE, django_qa.DJANGO_HTML)
    work = Path(tempfile.mkdtemp(prefix="rag-http-"))
    # A private copy: bench/rag.py may be reading its own at the same time.
    corpus = django_qa.build_corpus(django_qa.DJANGO_HTML, work / "corpus", args.max_pages)
    questions = [q.text for q in corpus.questions]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")},
           "CONDUIT_DATA_DIR": str(work), "CONDUIT_ADMIN_KEY": "cdk-admin-bench", "CONDUIT_SERVER__LOG_LEVEL": "warning",
           "CONDUIT_MODELS": json.dumps([{"name": "none", "deployments": [
               {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}])}
    conduit = [sys.executable, "-m", "conduit.cli"]

    started = time.perf_counter()
    ingest = subprocess.run([*conduit, "ingest", str(corpus.root), "--collection", "django"], env=env,
                            capture_output=True, text=True, check=True)
    ingest_s = time.perf_counter() - started
    summary = re.search(r"(\d+) file\(s\) ingested, (\d+) chunks", ingest.stderr)
    assert summary, ingest.stderr[-2000:]
    files, chunks = int(summary.group(1)), int(summary.group(2))

    port = free_port()
    server = subprocess.Popen([*conduit, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": "Bearer cdk-admin-bench"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            store = next(s for s in client.get("/v1/vector_stores").json()["data"] if s["name"] == "django")
            rows = []
            for mode in ("hybrid", "dense", "sparse"):
                body = lambda q: {"query": q, "max_num_results": 10, "ranking_options": {"ranker": mode}}  # noqa: E731
                client.post(f"/v1/vector_stores/{store['id']}/search", json=body(questions[0]))  # warm-up
                seconds = []
                for _ in range(args.rounds):
                    for question in questions:
                        t = time.perf_counter()
                        client.post(f"/v1/vector_stores/{store['id']}/search", json=body(question)).raise_for_status()
                        seconds.append(time.perf_counter() - t)
                ms = np.asarray(seconds) * 1000
                rows.append({"mode": mode, "queries": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                             "p95_ms": float(np.percentile(ms, 95))})
            memory = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    table = Table(title=f"conduit ingest + HTTP search: Django docs, {files} pages, {chunks:,} chunks "
                        f"(2-core CPU, load {os.getloadavg()[0]:.1f})")
    for column in ("mode", "queries", "search p50 ms", "search p95 ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["mode"], str(row["queries"]), f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}")
    console.print(table)
    console.print(f"ingest (parse, chunk, embed, commit, index): {ingest_s:.0f} s, {chunks / ingest_s:.1f} chunks/s, "
                  f"{files / ingest_s:.2f} pages/s; server RSS after searches {memory:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "rag_http.json"
    out.write_text(json.dumps({"pages": files, "chunks": chunks, "ingest_s": ingest_s,
                               "chunks_per_s": chunks / ingest_s, "search": rows, "server_rss_mb": memory,
                               "load_average": os.getloadavg()}, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
