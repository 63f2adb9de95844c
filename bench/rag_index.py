"""RAG index benchmark: which ANN library, and is an incremental BM25 worth writing?

    python bench/rag_index.py [--n 100000] [--real 2000] [--quick]

1. ANN libraries (hnswlib, usearch f32/f16, FAISS HNSW; numpy exact as the peer) on n
   synthetic 384-d unit vectors (clustered, like sentence embeddings): build time, memory,
   single-query p50/p95 at k=10 and k=50, recall against exact search, and deletes (time,
   recall after, deleted ids returned). Each library runs in its own process so that its
   memory is its own (the resident memory its build adds).
2. Recall of the same libraries on real all-MiniLM-L6-v2 embeddings of Linux kernel
   documentation chunks (Debian's linux-doc-6.1; embeddings cached in bench/results/cache).
3. BM25: bm25s (static: re-indexes everything after any change) against our incremental
   conduit.rag.sparse.SparseIndex on the kernel chunks: cost of taking one batch of 100 new
   chunks, query latency, and agreement of the top 10 (same tokenizer and BM25 variant).
4. The whole hybrid search (query embedding + dense + sparse + fusion) at 30k and n chunks.

Writes bench/results/rag_index.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import html.parser
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
KERNEL_DOCS = Path("/usr/share/doc/linux-doc-6.1/html")
DIM, M, EF_CONSTRUCTION, EF_SEARCH = 384, 16, 100, 200  # DenseIndex's defaults
LIBRARIES = ["hnswlib", "usearch-f16", "faiss-hnsw", "numpy-exact"]
SLOW_LIBRARIES = ["usearch-f32"]  # builds ~3x slower than hnswlib; --all-libraries


# ---------------------------------------------------------------- data

class _BodyText(html.parser.HTMLParser):
    """Text blocks of a Sphinx page's main body (navigation and sidebars left out)."""

    BLOCKS = frozenset({"p", "li", "pre", "dd", "dt", "td", "h1", "h2", "h3", "h4", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth, self.skipping, self.blocks, self._text = 0, 0, [], []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if self.depth and tag == "div":
            self.depth += 1
        elif tag == "div" and (attributes.get("role") == "main"
                               or "body" in (attributes.get("class") or "").split()):
            self.depth = 1
        self.skipping += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.skipping -= tag in ("script", "style")
        if self.depth and tag in self.BLOCKS:
            self.flush()
        if self.depth and tag == "div":
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skipping:
            self._text.append(data)

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._text)).strip()
        self._text = []
        if text:
            self.blocks.append(text)


def kernel_chunks(limit: int = 10**9, size: int = 600) -> list[str]:
    """~`size`-character chunks of the kernel docs, blocks packed in page order."""
    if not KERNEL_DOCS.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Installing linux-doc-6.1 with apt-get...")
        subprocess.run(["apt-get", "update"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "linux-doc-6.1"], check=False,
                       capture_output=True)
    if not KERNEL_DOCS.exists():
        sys.exit(f"{KERNEL_DOCS} is missing: apt-get install linux-doc-6.1")
    chunks: list[str] = []
    for page in sorted(KERNEL_DOCS.rglob("*.html")):
        if {"_static", "_sources"} & set(page.parts) or page.name in ("genindex.html",
                                                                      "search.html"):
            continue
        parser = _BodyText()
        parser.feed(page.read_text(errors="replace"))
        parser.flush()
        current = ""
        for block in parser.blocks:
            if current and len(current) + len(block) > size:
                chunks.append(current)
                current = ""
            current = f"{current} {block}".strip()[:2 * size]
        if len(current) > 80:
            chunks.append(current)
        if len(chunks) >= limit:
            break
    return chunks[:limit]


def synthetic(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around n/100 random topic centres, with as much noise as signal."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 10), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), count)]
        x = x + rng.standard_normal((count, DIM), dtype=np.float32) / np.sqrt(DIM)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(queries)


def real_embeddings(count: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of `count` kernel chunks, and of the first sentence of `queries`
    other chunks (question-length text); cached, since embedding is the slow part."""
    cache = RESULTS / "cache" / f"kernel_minilm_{count}_{queries}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return saved["base"], saved["queries"]
    from conduit.backends.embeddings import LocalEmbedder

    chunks = kernel_chunks()
    order = np.random.default_rng(0).permutation(len(chunks))
    base_texts = [chunks[i] for i in order[:count]]
    query_texts = [re.split(r"(?<=[.?!])\s", chunks[i])[0][:160]
                   for i in order[count:count + queries]]
    print(f"Embedding {count} + {queries} kernel chunks (cached afterwards)...", flush=True)
    embedder = LocalEmbedder()
    base, question = embedder.encode(base_texts), embedder.encode(query_texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, base=base, queries=question)
    return base, question


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ base.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), 1), 1)


# ---------------------------------------------------------------- ANN libraries

class _Library:
    """One ANN library behind the four calls the benchmark makes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.supports_delete = name != "faiss-hnsw"

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.name == "hnswlib":
            import hnswlib

            self.index = hnswlib.Index(space="cosine", dim=DIM)
            self.index.init_index(len(ids), M=M, ef_construction=EF_CONSTRUCTION,
                                  allow_replace_deleted=True)
            self.index.add_items(vectors, ids, num_threads=2)
        elif self.name.startswith("usearch"):
            from usearch.index import Index

            self.index = Index(ndim=DIM, metric="cos", dtype=self.name.split("-")[1],
                               connectivity=M, expansion_add=EF_CONSTRUCTION)
            self.index.add(ids, vectors, threads=2)
        elif self.name == "faiss-hnsw":
            import faiss

            faiss.omp_set_num_threads(2)
            self.graph = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
            self.graph.hnsw.efConstruction = EF_CONSTRUCTION
            self.index = faiss.IndexIDMap2(self.graph)
            self.index.add_with_ids(vectors, ids)
            faiss.omp_set_num_threads(1)  # single queries: OpenMP start-up only costs
        else:
            self.ids, self.vectors = ids, vectors.copy()

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        ef = max(EF_SEARCH, k)
        if self.name == "hnswlib":
            self.index.set_ef(ef)
            return self.index.knn_query(query, k=k, num_threads=1)[0][0].astype(np.int64)
        if self.name.startswith("usearch"):
            self.index.expansion_search = ef
            return self.index.search(query, k, threads=1).keys.astype(np.int64)
        if self.name == "faiss-hnsw":
            self.graph.hnsw.efSearch = ef
            return self.index.search(query[None], k)[1][0]
        sims = self.vectors @ query
        top = np.argpartition(-sims, k - 1)[:k]
        return self.ids[top[np.argsort(-sims[top])]]

    def delete(self, ids: np.ndarray) -> None:
        if self.name == "hnswlib":
            for i in ids.tolist():
                self.index.mark_deleted(i)
        elif self.name.startswith("usearch"):
            self.index.remove(ids)
        else:
            keep = ~np.isin(self.ids, ids)
            self.ids, self.vectors = self.ids[keep], self.vectors[keep]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _ann_run(name: str, data_path: str, ks: tuple[int, ...]) -> dict:
    """Everything measured for one library, in a fresh process."""
    data = np.load(data_path)
    base, queries = data["base"], data["queries"]
    ids = np.arange(len(base), dtype=np.int64) * 3 + 1  # sparse ids, like database rowids
    truth = {k: ids[exact_top(base, queries, k)] for k in ks}
    library = _Library(name)
    before = _rss_mib()
    start = time.perf_counter()
    library.build(ids, base)
    result: dict = {"build_s": time.perf_counter() - start,
                    "memory_mib": _rss_mib() - before, "deletes": library.supports_delete}
    for k in ks:
        latencies, recalls = [], []
        for query, expected in zip(queries, truth[k], strict=True):
            start = time.perf_counter()
            found = library.search(query, k)
            latencies.append(time.perf_counter() - start)
            recalls.append(len(np.intersect1d(found, expected)) / k)
        result[f"k{k}"] = {"p50_ms": 1e3 * float(np.percentile(latencies, 50)),
                           "p95_ms": 1e3 * float(np.percentile(latencies, 95)),
                           "recall": float(np.mean(recalls))}
    if library.supports_delete and "deletes" in data_path:
        gone = ids[::10]  # 10% of the index, spread over it
        start = time.perf_counter()
        library.delete(gone)
        result["delete_10pct_s"] = time.perf_counter() - start
        alive = np.ones(len(ids), bool)
        alive[::10] = False
        truth_after = ids[alive][exact_top(base[alive], queries, 10)]
        recalls, returned_deleted = [], 0
        for query, expected in zip(queries, truth_after, strict=True):
            found = library.search(query, 10)
            recalls.append(len(np.intersect1d(found, expected)) / 10)
            returned_deleted += int(np.isin(found, gone).sum())
        result["after_delete"] = {"recall_k10": float(np.mean(recalls)),
                                  "deleted_returned": returned_deleted}
    return result


def compare_ann(base: np.ndarray, queries: np.ndarray, label: str, ks: tuple[int, ...],
                deletes: bool, libraries: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / ("deletes.npz" if deletes else "data.npz"))
        np.savez(path, base=base, queries=queries)
        results = {}
        spawn = multiprocessing.get_context("spawn")
        for name in libraries:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                results[name] = pool.submit(_ann_run, name, path, ks).result()
    print(f"\n{label}: {len(base):,} vectors, {len(queries)} queries, M={M}, "
          f"ef_construction={EF_CONSTRUCTION}, ef_search=max({EF_SEARCH}, k)")
    header = f"{'library':<13}{'build s':>9}{'MiB':>7}"
    for k in ks:
        header += f"{f'k={k} p50 ms':>13}{'p95 ms':>8}{'recall':>8}"
    if deletes:
        header += f"{'del 10% s':>11}{'recall after':>14}{'dead seen':>11}"
    print(header)
    for name, r in results.items():
        row = f"{name:<13}{r['build_s']:>9.1f}{r['memory_mib']:>7.0f}"
        for k in ks:
            at_k = r[f"k{k}"]
            row += f"{at_k['p50_ms']:>13.2f}{at_k['p95_ms']:>8.2f}{at_k['recall']:>8.4f}"
        if deletes:
            after = r.get("after_delete")
            row += (f"{r['delete_10pct_s']:>11.2f}{after['recall_k10']:>14.4f}"
                    f"{after['deleted_returned']:>11d}" if after else f"{'(cannot delete)':>36}")
        print(row)
    return results


# ---------------------------------------------------------------- BM25

def _percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)),
            "p95_ms": 1e3 * float(np.percentile(seconds, 95)),
            "max_ms": 1e3 * float(np.max(seconds))}


def compare_bm25(texts: list[str], queries: list[str], batch: int = 100) -> dict:
    import bm25s

    from conduit.rag.sparse import SparseIndex, Tokenizer

    tokenize = Tokenizer()
    start = time.perf_counter()
    tokenized = [tokenize(t) for t in texts]
    tokenize_s = time.perf_counter() - start

    def bm25s_build(docs: list[list[str]]) -> tuple[bm25s.BM25, dict[str, int]]:
        vocabulary: dict[str, int] = {}
        ids = [[vocabulary.setdefault(w, len(vocabulary)) for w in doc] for doc in docs]
        model = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
        model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocabulary), show_progress=False)
        return model, vocabulary

    start = time.perf_counter()
    static, vocabulary = bm25s_build(tokenized)
    rebuild_s = time.perf_counter() - start  # what bm25s pays for every changed batch

    ours = SparseIndex(tokenize)
    batch_seconds = []
    for first in range(0, len(texts), batch):
        start = time.perf_counter()
        ours.add(list(range(first, min(first + batch, len(texts)))), texts[first:first + batch])
        batch_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    ours.delete(range(0, len(texts), 50))
    delete_s = time.perf_counter() - start
    ours.add(list(range(0, len(texts), 50)), texts[::50])  # back to the same contents

    ours_lat, static_lat, same_top, score_gap = [], [], 0, 0.0
    for query in queries:
        start = time.perf_counter()
        _, scores = ours.search(query, 10)
        ours_lat.append(time.perf_counter() - start)
        start = time.perf_counter()
        # Each distinct query term once, as SparseIndex counts them.
        terms = list(dict.fromkeys(vocabulary[w] for w in tokenize(query) if w in vocabulary))
        if not terms:
            continue
        _, found_scores = static.retrieve([terms], k=10, show_progress=False, n_threads=1)
        static_lat.append(time.perf_counter() - start)
        # Compared as scores: equal-scored chunks may come in either order.
        same_top += np.allclose(scores, found_scores[0][:len(scores)], rtol=1e-4)
        score_gap = max(score_gap, float(np.abs(scores - found_scores[0][:len(scores)]).max()))
    result = {
        "chunks": len(texts), "batch": batch, "tokenize_all_s": tokenize_s,
        "bm25s_rebuild_s": rebuild_s,
        "ours_add_batch": _percentiles_ms(batch_seconds), "ours_add_all_s": sum(batch_seconds),
        "ours_delete_2pct_s": delete_s,
        "ours_query": _percentiles_ms(ours_lat), "bm25s_query": _percentiles_ms(static_lat),
        "same_top10_share": same_top / max(len(static_lat), 1), "max_score_gap": score_gap,
        "segments": len(ours._segments),
    }
    print(f"\nBM25 on {len(texts):,} kernel-doc chunks, batches of {batch} new chunks "
          f"(tokenizing all: {tokenize_s:.1f} s, shared by both)")
    print(f"{'':<34}{'bm25s (rebuild)':>17}{'ours (incremental)':>20}")
    add = result["ours_add_batch"]
    print(f"{'take one batch of ' + str(batch) + ' chunks, ms':<34}{1e3 * rebuild_s:>17.0f}"
          f"{add['p50_ms']:>13.1f} p50 {add['p95_ms']:.0f} p95 {add['max_ms']:.0f} max")
    print(f"{'index everything, s':<34}{rebuild_s:>17.1f}{sum(batch_seconds):>20.1f}")
    print(f"{'delete 2% of chunks, ms':<34}{1e3 * rebuild_s:>17.0f}{1e3 * delete_s:>20.1f}")
    print(f"{'query p50 / p95, ms':<34}{result['bm25s_query']['p50_ms']:>9.2f} / "
          f"{result['bm25s_query']['p95_ms']:<5.2f}{result['ours_query']['p50_ms']:>12.2f} / "
          f"{result['ours_query']['p95_ms']:.2f}")
    print(f"same top 10 as bm25s: {100 * result['same_top10_share']:.0f}% of queries, "
          f"largest score difference {score_gap:.2g}")
    return result


# ---------------------------------------------------------------- whole search

def hybrid_latency(vectors: np.ndarray, texts: list[str], queries: list[str],
                   sizes: list[int]) -> dict:
    """One index grown to each size in turn; at each, every query is embedded, then searched
    without a filter and with one that keeps 1 document in 500."""
    import torch

    from conduit.backends.embeddings import LocalEmbedder
    from conduit.rag.index import ChunkIndex
    from conduit.rag.retrieve import Retriever

    # One thread per query embedding: on 2 shared cores, two torch threads contending with
    # other work took 700 ms for one short query instead of 23 ms (measured here).
    torch.set_num_threads(1)
    embedder = LocalEmbedder()
    embedder.encode(["warm up"])
    index, retriever, results = ChunkIndex(), None, {}
    print("\nWhole search: query embedding, then dense + BM25 + RRF (k=10, 50 candidates each)")
    print(f"{'chunks':>8}{'build s':>9}{'embed p50':>11}{'p95':>7}{'search p50':>12}{'p95':>7}"
          f"{'total p50':>11}{'p95':>7}{'filtered p50':>14}{'p95':>7}   (ms)")
    start = time.perf_counter()
    for size in sizes:
        for first in range(len(index), size, 1000):
            ids = list(range(first, min(first + 1000, size)))
            index.add(ids, vectors[first:first + len(ids)], [texts[i % len(texts)] for i in ids],
                      [i % 500 for i in ids], [{"team": f"t{i % 20}"} for i in ids])
        build_s = time.perf_counter() - start
        retriever = Retriever(index, embedder)
        embed, search, total, filtered = [], [], [], []
        for query in queries:
            started = time.perf_counter()
            vector = embedder.encode([query])[0]
            embedded = time.perf_counter()
            retriever.search(query, 10, query_vector=vector)
            searched = time.perf_counter()
            retriever.search(query, 10, query_vector=vector, document_ids=[7])
            embed.append(embedded - started)
            search.append(searched - embedded)
            total.append(searched - started)
            filtered.append(time.perf_counter() - searched)
        r = results[size] = {"build_s": build_s, "embed": _percentiles_ms(embed),
                             "search": _percentiles_ms(search), "total": _percentiles_ms(total),
                             "filtered_search": _percentiles_ms(filtered)}
        print(f"{size:>8,}{build_s:>9.1f}" + "".join(
            f"{r[part]['p50_ms']:>{width}.1f}{r[part]['p95_ms']:>7.1f}"
            for part, width in (("embed", 11), ("search", 12), ("total", 11),
                                ("filtered_search", 14))))
    return results


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="synthetic vectors")
    parser.add_argument("--real", type=int, default=2000, help="real embedded chunks")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--all-libraries", action="store_true", help=f"also {SLOW_LIBRARIES}")
    args = parser.parse_args()
    if args.quick:
        args.n, args.real, args.queries = 20_000, 500, 50
    started = time.perf_counter()
    report: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "python": platform.python_version()},
                    "params": {"n": args.n, "real": args.real, "queries": args.queries, "m": M,
                               "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH}}
    libraries = LIBRARIES + SLOW_LIBRARIES * args.all_libraries
    base, queries = synthetic(args.n, args.queries)
    report["ann_synthetic"] = compare_ann(base, queries, "ANN, synthetic", (10, 50),
                                          deletes=True, libraries=libraries)
    real_base, real_queries = real_embeddings(args.real, min(args.queries, 200))
    report["ann_real"] = compare_ann(real_base, real_queries, "ANN, real MiniLM embeddings",
                                     (10,), deletes=False, libraries=libraries)
    texts = kernel_chunks(limit=args.n)
    rng = np.random.default_rng(1)
    query_texts = [re.split(r"(?<=[.?!])\s", texts[i])[0][:120]
                   for i in rng.choice(len(texts), args.queries, replace=False)]
    report["bm25"] = compare_bm25(texts, query_texts)
    sizes = sorted({min(30_000, args.n), args.n})
    report["hybrid"] = hybrid_latency(base, texts, query_texts[:100], sizes)
    report["total_s"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rag_index.json").write_text(json.dumps(report, indent=2))
    print(f"\n{report['total_s']:.0f} s in all; wrote {RESULTS / 'rag_index.json'}")


if __name__ == "__main__":
    main()
