"""Retrieval through the product's own path: `conduit ingest` of the cleaned Django docs, then
`POST /v1/vector_stores/{id}/search` over HTTP with the FAQ questions, against a `conduit serve`.

    python bench/rag_http.py [--max-pages N] [--rounds 3] [--embeddings-dtype bfloat16]
    python bench/rag_http.py --corpus linux --chunk-size 128   # Debian's linux-doc-6.1: >100,000 chunks

For the Linux corpus (no question set) the queries are 100 section headings of its pages, as in
`bench/rag.py --corpus linux`. Prints ingest throughput (the ingest's wall time; files and chunks
counted in the database) and search latency p50/p95 per retrieval mode, with the server's memory;
writes bench/results/rag_http[_linux].json. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


def linux_corpus(root: Path, max_pages: int | None, copy: bool = True) -> tuple[Path, list[str]]:
    """The kernel's HTML pages as bench/rag.py selects them, copied (symlinks out of an ingested
    folder are refused), and section headings of a sample of them as queries."""
    import shutil

    import rag  # bench/rag.py, next to this file

    from conduit.rag.parse import parse_file

    files = rag.linux_files(max_pages)
    for path in files if copy else ():
        target = root / path.relative_to(rag.LINUX_HTML)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    sample = files[:: max(1, len(files) // 400)]
    documents = [(str(path), parse_file(path, root=rag.LINUX_HTML)) for path in sample]
    return root, rag.heading_queries(documents, 100)


def stored(data_dir: Path) -> tuple[int, int]:
    """(files ingested, chunks) in a data directory's database."""
    import sqlite3

    path = data_dir / "conduit.db"
    if not path.exists():
        return 0, 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            files = db.execute("SELECT count(*) FROM vector_store_files WHERE status = 'completed'").fetchone()[0]
            return files, db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return 0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="Passes over the questions per mode.")
    parser.add_argument("--corpus", choices=("django", "linux"), default="django")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="Tokens per chunk (conduit ingest's default: 200).")
    parser.add_argument("--max-chunks", type=int, default=None,
                        help="Stop the ingest once the store holds this many chunks (files ingested whole).")
    parser.add_argument("--embeddings-dtype", choices=("auto", "float32", "bfloat16", "int8"), default=None,
                        help="embeddings.dtype for the ingest and the server (default: the configuration's, auto).")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="The data directory of an earlier run: no ingest, only the searches.")
    args = parser.parse_args()

    work = args.reuse or Path(tempfile.mkdtemp(prefix="rag-http-"))
    if args.corpus == "linux":
        corpus_root, questions = linux_corpus(work / "corpus", args.max_pages, copy=args.reuse is None)
    else:
        django_qa.ensure_debian_package(django_qa.DJANGO_PACKAGE, django_qa.DJANGO_HTML)
        # A private copy: bench/rag.py may be reading its own at the same time. Reused: the
        # questions only, from a copy of their own.
        copy_to = work / "corpus" if args.reuse is None else Path(tempfile.mkdtemp(prefix="rag-http-q-"))
        corpus = django_qa.build_corpus(django_qa.DJANGO_HTML, copy_to, args.max_pages)
        corpus_root, questions = corpus.root, [q.text for q in corpus.questions]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")},
           "CONDUIT_DATA_DIR": str(work), "CONDUIT_ADMIN_KEY": "cdk-admin-bench", "CONDUIT_SERVER__LOG_LEVEL": "warning",
           "CONDUIT_MODELS": json.dumps([{"name": "none", "deployments": [
               {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}])}
    if args.embeddings_dtype:
        env["CONDUIT_EMBEDDINGS__DTYPE"] = args.embeddings_dtype
    conduit = [sys.executable, "-m", "conduit.cli"]

    ingest_s = float("nan")
    if args.reuse is None:
        started = time.perf_counter()
        chunking = ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
        ingest = subprocess.Popen([*conduit, "ingest", str(corpus_root), "--collection", args.corpus, *chunking],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while ingest.poll() is None:
            time.sleep(5)
            if args.max_chunks and stored(work)[1] >= args.max_chunks:
                ingest.terminate()  # files are committed one at a time: the store stays whole
        ingest_s = time.perf_counter() - started
        errors = ingest.stderr.read() if ingest.stderr else ""
        stopped = bool(args.max_chunks) and ingest.returncode == -signal.SIGTERM
        assert ingest.returncode == 0 or stopped, errors[-2000:]
    files, chunks = stored(work)

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
            store = next(s for s in client.get("/v1/vector_stores").json()["data"] if s["name"] == args.corpus)
            # A file an interrupted ingest left half-done is ingested again at start: not during the searches.
            while client.get(f"/v1/vector_stores/{store['id']}").json()["file_counts"]["in_progress"]:
                assert time.monotonic() < deadline + 600, "the interrupted file was not ingested again"
                time.sleep(1)
            files, chunks = stored(work)
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

    table = Table(title=f"conduit ingest + HTTP search: {args.corpus} docs, {files} pages, {chunks:,} chunks "
                        f"(2-core CPU, load {os.getloadavg()[0]:.1f})")
    for column in ("mode", "queries", "search p50 ms", "search p95 ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["mode"], str(row["queries"]), f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}")
    console.print(table)
    if args.reuse is None:
        console.print(f"ingest (parse, chunk, embed, commit, index): {ingest_s:.0f} s, "
                      f"{chunks / ingest_s:.1f} chunks/s, {files / ingest_s:.2f} pages/s")
    console.print(f"server RSS after searches {memory:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rag_http{'' if args.corpus == 'django' else '_' + args.corpus}.json"
    out.write_text(json.dumps({"corpus": args.corpus, "chunk_size": args.chunk_size, "pages": files,
                               "chunks": chunks, "ingest_s": None if args.reuse else ingest_s,
                               "chunks_per_s": None if args.reuse else chunks / ingest_s,
                               "search": rows, "server_rss_mb": memory,
                               "load_average": os.getloadavg()}, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
