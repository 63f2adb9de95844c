"""RAG benchmark, in-process: ingest throughput, retrieval quality and search latency.

    python bench/rag.py [--corpus django|linux] [--max-pages N] [--cross-encoder DIR]
                        [--dtype auto|float32|bfloat16|int8] [--chunk-size N] [--no-cache]

django (default): Django's documentation (Debian's python-django-doc, installed if missing),
cleaned of everything that repeats the FAQ questions (bench/django_qa.py builds the copy in a
temporary folder and checks it for leaks). Queries are the FAQ questions; the relevance rule
is in django_qa's docstring. Measured:

1. ingest, stage by stage: parse (conduit.rag.parse) -> chunk (Chunker, default options)
   -> embed (LocalEmbedder, bundled all-MiniLM-L6-v2, texts sorted by length and encoded in
   batches) -> index (ChunkIndex: hnswlib + BM25 + attributes). Pages/s and chunks/s count
   everything, embedding included.
2. sparse, dense, hybrid (RetrievalOptions defaults), hybrid + each reranker, and the hybrid
   settings the sweep favours (marked "tuned": chosen on these same queries): recall@5/10,
   hit@5, MRR@10, nDCG@10 with a 95% bootstrap interval over queries and the paired
   difference to hybrid, and latency p50/p95 per query, query embedding included. The
   configurations take turns query by query, so all of them see the same background load.
3. a sweep of the hybrid settings (rrf_k, weights, candidates, score fusion).

linux: Debian's linux-doc-6.1 HTML (no QA set): ingest throughput, memory (RSS before and
after ingest, which includes the parsed pages and chunk texts this script keeps, and index
sizes on disk) and search latency with 100 section headings as queries. The default chunk
size gives ~76,000 chunks; `--chunk-size 128` gives ~132,000.

Each chunk is indexed (dense and BM25) and reranked with its `embedding_text` (heading path
+ text), as the service does. `measure_latency(search, queries)` times any
`search(query) -> sequence` callable, so an HTTP client can be timed the same way.

Embedding dominates ingest (minutes on 2 cores), so vectors are cached by text under
bench/results/cache/rag-embeddings-<embedder fingerprint>/ and a run resumes where the last
one stopped. When the cache served any chunk, the embedding rate is measured on 512 random
chunks embedded live and the ingest figures are projected from it (marked *).

Writes bench/results/rag.json (one key per corpus and option set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import django_qa  # bench/, the script's folder, is on sys.path
import numpy as np
from rich.console import Console
from rich.table import Table

from conduit.backends.embeddings import LocalEmbedder
from conduit.rag.chunk import Chunker, ChunkingOptions
from conduit.rag.document import ParsedDocument, SkipFile
from conduit.rag.index import ChunkIndex
from conduit.rag.parse import FoundFile, discover, parse_file
from conduit.rag.rerank import (
    CrossEncoderReranker,
    LexicalDenseReranker,
    Reranker,
    SentenceMaxSimReranker,
    rerank,
)
from conduit.rag.retrieve import Mode, RetrievalOptions, Retriever

RESULTS = Path(__file__).parent / "results"
LINUX_PACKAGE = "linux-doc-6.1"
LINUX_HTML = Path("/usr/share/doc/linux-doc-6.1/html")
LINUX_EXCLUDED = frozenset({"genindex.html", "search.html", "py-modindex.html"})
console = Console(width=160)
# The hybrid settings this benchmark's sweep favours (rrf_k=60 lets a chunk ranked ~20th by both
# retrievers beat one ranked 2nd by dense alone); rows of their own, marked as tuned here.
CANDIDATE = RetrievalOptions(rrf_k=10, sparse_weight=0.75)
CACHE = RESULTS / "cache"  # rag-embeddings-<fingerprint of the embedder>/ under it
RATE_SAMPLE = 512  # random chunks embedded live to measure the rate when the cache served any


# ---------------------------------------------------------------- machine and memory

def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                  if line.startswith("model name")), platform.processor())
    import torch

    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "load_average_start": os.getloadavg(),
            "note": "shared VM: other jobs ran at the same time; compare rows of one run"}


# ---------------------------------------------------------------- ingest

@dataclass(frozen=True, slots=True)
class ChunkRef:
    page: str  # relative to the corpus root
    start: int
    end: int
    text: str  # embedding_text: what was embedded and indexed


@dataclass
class IngestStats:
    pages: int = 0
    skipped: int = 0
    chunks: int = 0
    tokens: int = 0
    parse_s: float = 0.0
    chunk_s: float = 0.0
    embed_s: float = 0.0  # wall time of the embed stage (cache reads included)
    cached: int = 0  # chunk vectors read from the embedding cache
    embedded_live: int = 0  # chunks embedded by the model in this run
    embed_live_s: float = 0.0  # model time for them
    index_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    index_bytes: dict[str, int] = field(default_factory=dict)
    save_s: float = 0.0

    @property
    def embed_rate(self) -> float:
        """Chunks per second through the model, as measured on the live ones."""
        return self.embedded_live / self.embed_live_s if self.embed_live_s else 0.0

    @property
    def embed_projected_s(self) -> float:
        """Embed time without the cache: every chunk at the measured rate."""
        return self.chunks / self.embed_rate if self.embed_rate else 0.0

    @property
    def total_s(self) -> float:
        """Ingest time with every chunk embedded (projected where the cache served some)."""
        return self.parse_s + self.chunk_s + self.embed_projected_s + self.index_s

    def rates(self) -> dict[str, float | bool]:
        return {"pages_per_s": self.pages / self.total_s, "chunks_per_s": self.chunks / self.total_s,
                "embed_chunks_per_s": self.embed_rate, "total_s": self.total_s,
                "embed_projected_s": self.embed_projected_s,
                "embed_measured_on_all": self.cached == 0}


@dataclass
class Ingested:
    index: ChunkIndex
    refs: list[ChunkRef]
    documents: list[tuple[str, ParsedDocument]]
    stats: IngestStats


def ingest(files: Sequence[Path], root: Path, embedder: LocalEmbedder, batch_size: int = 256,
           cache: EmbeddingCache | None = None, chunker: Chunker | None = None) -> Ingested:
    """parse -> chunk -> embed -> index, each stage timed on its own."""
    stats = IngestStats(rss_before_mb=rss_mb())
    started = time.perf_counter()
    documents: list[tuple[str, ParsedDocument]] = []
    for path in files:
        try:
            documents.append((str(path.relative_to(root)), parse_file(path, root=root)))
        except SkipFile:
            stats.skipped += 1
    stats.pages = len(documents)
    stats.parse_s = time.perf_counter() - started

    started = time.perf_counter()
    chunker = chunker or Chunker()
    refs: list[ChunkRef] = []
    document_of: list[int] = []
    for first in range(0, len(documents), 64):
        batch = documents[first:first + 64]
        for offset, chunks in enumerate(chunker.chunk_many([doc for _, doc in batch])):
            page = batch[offset][0]
            for chunk in chunks:
                refs.append(ChunkRef(page, chunk.start_char, chunk.end_char, chunk.embedding_text))
                document_of.append(first + offset)
                stats.tokens += chunk.token_count
    stats.chunks = len(refs)
    stats.chunk_s = time.perf_counter() - started

    started = time.perf_counter()
    texts = [ref.text for ref in refs]
    vectors, stats.embedded_live, stats.embed_live_s = embed_all(texts, embedder, batch_size, cache)
    stats.embed_s = time.perf_counter() - started
    stats.cached = len(texts) - stats.embedded_live
    if stats.cached:  # the chunks left to embed are no fair sample (the cache fills longest first)
        sample = random.Random(0).sample(texts, min(RATE_SAMPLE, len(texts)))
        _, stats.embedded_live, stats.embed_live_s = embed_all(sample, embedder, batch_size, None)

    started = time.perf_counter()
    index = ChunkIndex(dim=vectors.shape[1])
    for first in range(0, len(refs), 2048):
        ids = list(range(first, min(first + 2048, len(refs))))
        index.add(ids, vectors[first:first + 2048], [refs[i].text for i in ids],
                  [document_of[i] for i in ids])
    stats.index_s = time.perf_counter() - started
    stats.rss_after_mb = rss_mb()
    return Ingested(index, refs, documents, stats)


class EmbeddingCache:
    """Vectors by sha256 of the text, in shard files written as embedding goes (resumable).

    One directory per embedder fingerprint (its vector for a probe sentence), so float32 and
    bfloat16 vectors, or two models, never mix.
    """

    def __init__(self, root: Path, embedder: LocalEmbedder) -> None:
        probe = np.round(embedder.encode(["conduit embedding cache probe"])[0], 3)
        self.fingerprint = hashlib.sha256(probe.astype(np.float32).tobytes()).hexdigest()[:12]
        self.directory = directory = root / f"rag-embeddings-{self.fingerprint}"
        self.vectors: dict[bytes, np.ndarray] = {}
        for shard in sorted(directory.glob("*.npz")):
            with np.load(shard) as data:
                # numpy's S32 drops trailing NUL bytes of a digest: pad them back
                keys = (bytes(key).ljust(32, b"\0") for key in data["keys"])
                self.vectors.update(zip(keys, data["vectors"]))

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode()).digest()

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        keys = [self.key(text) for text in texts]
        self.vectors.update(zip(keys, vectors))
        self.directory.mkdir(parents=True, exist_ok=True)
        name = self.directory / f"{time.time_ns()}.npz"
        np.savez(name, keys=np.array(keys, dtype="S32"), vectors=vectors.astype(np.float32))


def embed_all(texts: Sequence[str], embedder: LocalEmbedder, batch_size: int,
              cache: EmbeddingCache | None) -> tuple[np.ndarray, int, float]:
    """(vectors, how many the model embedded, its seconds for them). Longest first, in
    batches: similar lengths pad little, and progress shows."""
    vectors = np.zeros((len(texts), embedder.dimensions), np.float32)
    todo = list(range(len(texts)))
    if cache is not None:
        todo = []
        for i, text in enumerate(texts):
            found = cache.vectors.get(cache.key(text))
            if found is None:
                todo.append(i)
            else:
                vectors[i] = found
    order = sorted(todo, key=lambda i: -len(texts[i]))
    pending: list[int] = []
    model_s, shown = 0.0, 0.0
    for first in range(0, len(order), batch_size):
        chosen = order[first:first + batch_size]
        started = time.perf_counter()
        vectors[chosen] = embedder.encode([texts[i] for i in chosen])
        model_s += time.perf_counter() - started
        pending += chosen
        if cache is not None and (len(pending) >= 2048 or first + batch_size >= len(order)):
            cache.put([texts[i] for i in pending], vectors[pending])
            pending = []
        if model_s - shown > 60:
            shown = model_s
            done = first + len(chosen)
            console.print(f"  embedded {done:,}/{len(order):,} ({done / model_s:.1f}/s)")
    return vectors, len(order), model_s


def measure_index_size(index: ChunkIndex, stats: IngestStats) -> None:
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        index.save(directory)
        stats.save_s = time.perf_counter() - started
        for part in ("dense", "sparse", "attributes"):
            stats.index_bytes[part] = sum(f.stat().st_size for f in Path(directory, part).iterdir())


# ---------------------------------------------------------------- latency

@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    queries: int


def latency_of(seconds: Sequence[float]) -> Latency:
    ms = np.asarray(seconds) * 1000
    return Latency(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()), len(ms))


def timed_queries(search: Callable[[str], Sequence[object]], queries: Sequence[str],
                  warmup: int = 3) -> tuple[list[Sequence[object]], list[float]]:
    """Each query once, in order, after `warmup` untimed ones; (results, seconds per query)."""
    for query in queries[:warmup]:
        search(query)
    results, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        seconds.append(time.perf_counter() - started)
    return results, seconds


def measure_latency(search: Callable[[str], Sequence[object]], queries: Sequence[str],
                    warmup: int = 3) -> Latency:
    """p50/p95 of one search at a time (a sequential client), whatever `search` calls."""
    return latency_of(timed_queries(search, queries, warmup)[1])


def timed_interleaved(searches: dict[str, Callable[[str], Sequence[object]]], queries: Sequence[str],
                      warmup: int = 3) -> dict[str, tuple[list[Sequence[object]], list[float]]]:
    """Like `timed_queries` for several searches, taking turns query by query, so that every
    one of them runs under the same background load (this machine is shared)."""
    for query in queries[:warmup]:
        for search in searches.values():
            search(query)
    timed: dict[str, tuple[list[Sequence[object]], list[float]]] = {n: ([], []) for n in searches}
    for query in queries:
        for name, search in searches.items():
            started = time.perf_counter()
            result = search(query)
            timed[name][1].append(time.perf_counter() - started)
            timed[name][0].append(result)
    return timed


# ---------------------------------------------------------------- quality

@dataclass
class Quality:
    recall_5: float
    recall_10: float
    hit_5: float
    mrr_10: float
    ndcg_10: float
    ndcg_10_ci: tuple[float, float]
    per_query_ndcg: list[float]
    per_query_first_relevant: list[int | None]  # rank in the top 10


def judge(ranked: Sequence[int], question: django_qa.Question, refs: Sequence[ChunkRef],
          relevant_count: int) -> tuple[float, float, float, float, float]:
    """(recall@5, recall@10, hit@5, reciprocal rank@10, nDCG@10) of one ranked id list."""
    gains = [1.0 if django_qa.is_relevant(question, refs[i].page, refs[i].start, refs[i].end) else 0.0
             for i in ranked[:10]]
    found_5, found_10 = sum(gains[:5]), sum(gains)
    first = next((rank for rank, gain in enumerate(gains, start=1) if gain), None)
    dcg = sum(gain / np.log2(rank + 1) for rank, gain in enumerate(gains, start=1))
    ideal = sum(1 / np.log2(rank + 1) for rank in range(1, min(relevant_count, 10) + 1))
    return (found_5 / relevant_count, found_10 / relevant_count, float(found_5 > 0),
            1 / first if first else 0.0, dcg / ideal)


def quality(results: Sequence[Sequence[int]], questions: Sequence[django_qa.Question],
            refs: Sequence[ChunkRef], relevant_counts: Sequence[int]) -> Quality:
    rows = np.array([judge(ranked, q, refs, n)
                     for ranked, q, n in zip(results, questions, relevant_counts, strict=True)])
    means = rows.mean(axis=0)
    firsts = [round(1 / rr) if rr else None for rr in rows[:, 3]]
    return Quality(*map(float, means), bootstrap_ci(rows[:, 4]), rows[:, 4].tolist(), firsts)


def bootstrap_ci(values: np.ndarray, rounds: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    means = rng.choice(values, (rounds, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def relevant_counts(questions: Sequence[django_qa.Question], refs: Sequence[ChunkRef]) -> list[int]:
    by_page: dict[str, list[ChunkRef]] = {}
    for ref in refs:
        by_page.setdefault(ref.page, []).append(ref)
    counts = [sum(django_qa.is_relevant(q, r.page, r.start, r.end) for r in by_page.get(q.page, []))
              for q in questions]
    missing = [q.qid for q, n in zip(questions, counts) if n == 0]
    if missing:
        raise AssertionError(f"no chunk is relevant to {missing}: check the relevance rule")
    return counts


# ---------------------------------------------------------------- search configurations

Search = Callable[[str], list[int]]


def plain_search(retriever: Retriever, mode: Mode, k: int = 10) -> Search:
    return lambda query: [hit.chunk_id for hit in retriever.search(query, k, mode=mode)]


def reranked_search(retriever: Retriever, reranker: Reranker, refs: Sequence[ChunkRef],
                    depth: int, k: int = 10) -> Search:
    def search(query: str) -> list[int]:
        hits = retriever.search(query, depth, mode="hybrid")
        texts = [refs[hit.chunk_id].text for hit in hits]
        return [hit.chunk_id for hit in rerank(reranker, query, hits, texts, top_n=k)]
    return search


def rerankers(embedder: LocalEmbedder, cross_encoder: Path | None,
              depths: dict[str, int]) -> dict[str, tuple[Reranker, int]]:
    """Each reranker with how many hybrid hits it reorders."""
    chosen: dict[str, tuple[Reranker, int]] = {
        "lexical-dense": (LexicalDenseReranker(), depths["lexical-dense"]),
        "sentence-maxsim": (SentenceMaxSimReranker(embedder), depths["sentence-maxsim"])}
    if cross_encoder is not None:
        chosen["cross-encoder"] = (CrossEncoderReranker(cross_encoder), depths["cross-encoder"])
    return chosen


def rerank_depths(args: argparse.Namespace) -> dict[str, int]:
    return {"lexical-dense": args.rerank_depth, "sentence-maxsim": args.maxsim_depth,
            "cross-encoder": args.cross_encoder_depth}


@dataclass
class Row:
    name: str
    quality: Quality | None
    latency: Latency


def evaluate_django(data: Ingested, questions: Sequence[django_qa.Question], embedder: LocalEmbedder,
                    cross_encoder: Path | None, depths: dict[str, int]) -> list[Row]:
    counts = relevant_counts(questions, data.refs)
    retriever = Retriever(data.index, embedder)
    configs: dict[str, Callable[[str], Sequence[object]]] = {
        mode: plain_search(retriever, mode) for mode in ("sparse", "dense", "hybrid")}
    chosen = rerankers(embedder, cross_encoder, depths)
    for name, (reranker, depth) in chosen.items():
        configs[f"hybrid top {depth} + {name}"] = reranked_search(retriever, reranker, data.refs, depth)
    tuned = Retriever(data.index, embedder, CANDIDATE)
    configs["tuned: hybrid rrf_k=10, sparse 0.75"] = plain_search(tuned, "hybrid")
    lexical, _ = chosen["lexical-dense"]
    configs["tuned + top 20 lexical-dense"] = reranked_search(tuned, lexical, data.refs, 20)
    configs["query embedding alone"] = lambda query: embedder.encode([query])  # a peer, no results
    timed = timed_interleaved(configs, [q.text for q in questions])
    return [Row(name, None if name == "query embedding alone" else
                quality(results, questions, data.refs, counts), latency_of(seconds))
            for name, (results, seconds) in timed.items()]


@dataclass
class SweepRow:
    options: dict[str, object]
    ndcg_10: float
    mrr_10: float
    recall_10: float


def sweep(data: Ingested, questions: Sequence[django_qa.Question], embedder: LocalEmbedder) -> list[SweepRow]:
    """Hybrid settings around the defaults, queries embedded once (quality only)."""
    counts = relevant_counts(questions, data.refs)
    vectors = embedder.encode([q.text for q in questions])

    def score(options: RetrievalOptions) -> SweepRow:
        retriever = Retriever(data.index, embedder, options)
        results = [[h.chunk_id for h in retriever.search(q.text, 10, query_vector=v)]
                   for q, v in zip(questions, vectors, strict=True)]
        result = quality(results, questions, data.refs, counts)
        shown = {k: v for k, v in asdict(options).items() if k != "mode"}
        return SweepRow(shown, result.ndcg_10, result.mrr_10, result.recall_10)

    rows = []
    for rrf_k in (1, 10, 30, 60, 120):
        for dense_weight, sparse_weight in ((1, 1), (1, 0.5), (1, 0.75), (0.75, 1), (0.5, 1), (1, 0)):
            rows.append(score(RetrievalOptions(rrf_k=rrf_k, dense_weight=dense_weight,
                                               sparse_weight=sparse_weight)))
    best = max(rows, key=lambda row: row.ndcg_10).options
    for candidates in (10, 20, 100, 200):
        rows.append(score(RetrievalOptions(rrf_k=int(best["rrf_k"]), dense_weight=float(best["dense_weight"]),
                                           sparse_weight=float(best["sparse_weight"]), candidates=candidates)))
    for dense_weight, sparse_weight in ((1, 1), (1, 0.5), (1, 0.25), (0.5, 1)):
        for candidates in (20, 50):
            rows.append(score(RetrievalOptions(fusion="score", dense_weight=dense_weight,
                                               sparse_weight=sparse_weight, candidates=candidates)))
    return rows


# ---------------------------------------------------------------- corpora

def linux_files(max_pages: int | None) -> list[Path]:
    django_qa.ensure_debian_package(LINUX_PACKAGE, LINUX_HTML)
    files = [found.path for found in discover([LINUX_HTML]) if isinstance(found, FoundFile)
             and found.path.name not in LINUX_EXCLUDED
             and not found.path.relative_to(LINUX_HTML).parts[0].startswith("_")]
    if max_pages is not None and len(files) > max_pages:
        step = len(files) / max_pages
        files = [files[int(i * step)] for i in range(max_pages)]
    return files


def heading_queries(documents: Iterable[tuple[str, ParsedDocument]], count: int) -> list[str]:
    """Distinct section headings (latency queries for a corpus without a QA set)."""
    headings = sorted({section.section_path[-1] for _, doc in documents for section in doc.sections
                       if 2 <= len(section.section_path[-1].split()) <= 12})
    return random.Random(0).sample(headings, min(count, len(headings)))


# ---------------------------------------------------------------- report

def ingest_table(stats: IngestStats, title: str) -> Table:
    table = Table(title=title)
    for column in ("pages", "chunks", "tokens/chunk", "parse s", "chunk s", "embed s", "index s",
                   "total s", "pages/s", "chunks/s", "embed chunks/s"):
        table.add_column(column, justify="right")
    rates = stats.rates()
    projected = "" if rates["embed_measured_on_all"] else "*"
    table.add_row(f"{stats.pages:,}", f"{stats.chunks:,}", f"{stats.tokens / stats.chunks:.0f}",
                  f"{stats.parse_s:.1f}", f"{stats.chunk_s:.1f}", f"{stats.embed_projected_s:.1f}{projected}",
                  f"{stats.index_s:.1f}", f"{stats.total_s:.1f}{projected}",
                  f"{rates['pages_per_s']:.2f}{projected}", f"{rates['chunks_per_s']:.1f}{projected}",
                  f"{stats.embed_rate:.1f}")
    if projected:
        table.caption = (f"* projected: {stats.cached:,} vectors came from the cache; the embed rate "
                         f"was measured on {stats.embedded_live:,} random chunks embedded live")
    return table


def memory_table(stats: IngestStats) -> Table:
    table = Table(title="memory and index size")
    for column in ("RSS before MB", "RSS after MB", "dense MB", "sparse MB", "attributes MB", "save s"):
        table.add_column(column, justify="right")
    mb = {k: v / 2**20 for k, v in stats.index_bytes.items()}
    table.add_row(f"{stats.rss_before_mb:.0f}", f"{stats.rss_after_mb:.0f}", f"{mb['dense']:.1f}",
                  f"{mb['sparse']:.1f}", f"{mb['attributes']:.1f}", f"{stats.save_s:.1f}")
    return table


def paired_delta(a: Quality, b: Quality) -> tuple[float, float, float]:
    """Mean per-query nDCG@10 difference a - b and its 95% bootstrap interval (same queries)."""
    diff = np.asarray(a.per_query_ndcg) - np.asarray(b.per_query_ndcg)
    low, high = bootstrap_ci(diff)
    return float(diff.mean()), low, high


def results_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title)
    table.add_column("retrieval")
    hybrid = next((row.quality for row in rows if row.name == "hybrid"), None)
    quality_columns = ("recall@5", "recall@10", "hit@5", "MRR@10", "nDCG@10", "nDCG 95% CI",
                       "Δ nDCG vs hybrid, paired CI") if hybrid else ()
    for column in (*quality_columns, "p50 ms", "p95 ms"):
        table.add_column(column, justify="right")
    for row in rows:
        q = row.quality
        cells = ["-"] * len(quality_columns)
        if q and hybrid:
            delta, low, high = paired_delta(q, hybrid)
            cells = [f"{q.recall_5:.3f}", f"{q.recall_10:.3f}", f"{q.hit_5:.3f}", f"{q.mrr_10:.3f}",
                     f"{q.ndcg_10:.3f}", f"{q.ndcg_10_ci[0]:.2f}-{q.ndcg_10_ci[1]:.2f}",
                     "" if q is hybrid else f"{delta:+.3f} ({low:+.3f}, {high:+.3f})"]
        table.add_row(row.name, *cells, f"{row.latency.p50_ms:.1f}", f"{row.latency.p95_ms:.1f}")
    return table


def sweep_table(rows: Sequence[SweepRow], top: int = 12) -> Table:
    table = Table(title=f"hybrid settings, best {top} by nDCG@10 (defaults marked *)")
    for column in ("fusion", "rrf_k", "dense w", "sparse w", "candidates", "nDCG@10", "MRR@10", "recall@10"):
        table.add_column(column, justify="right")
    default = {k: v for k, v in asdict(RetrievalOptions()).items() if k != "mode"}
    ranked = sorted(rows, key=lambda row: -row.ndcg_10)
    shown = ranked[:top] + [row for row in ranked[top:] if row.options == default][:1]
    for row in shown:
        o = row.options
        mark = "*" if o == default else ""
        table.add_row(f"{o['fusion']}{mark}", str(o["rrf_k"]) if o["fusion"] == "rrf" else "-",
                      f"{o['dense_weight']:g}", f"{o['sparse_weight']:g}", str(o["candidates"]),
                      f"{row.ndcg_10:.3f}", f"{row.mrr_10:.3f}", f"{row.recall_10:.3f}")
    return table


def leakage_summary(report: django_qa.LeakageReport, questions: int) -> None:
    console.print(f"[bold]leakage check[/]: {len(report.slug_hits)} question slugs left in the "
                  f"cleaned HTML; {report.questions_found} of {questions} questions still appear "
                  f"verbatim ({len(report.occurrences)} places):")
    for occurrence in report.occurrences:
        console.print(f"  {occurrence.page} [{occurrence.where}]: …{occurrence.context}…",
                      markup=False, highlight=False)
    headings = [o for o in report.occurrences if o.where == "heading"]
    assert not report.slug_hits, f"question slugs left in the corpus: {report.slug_hits[:5]}"
    assert not headings, f"questions left as headings: {[(o.page, o.question) for o in headings]}"


def save(corpus: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "rag.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[corpus] = payload
    path.write_text(json.dumps(existing, indent=1, default=lambda o: asdict(o)))
    return path


# ---------------------------------------------------------------- main

def run_django(args: argparse.Namespace, embedder: LocalEmbedder) -> dict[str, object]:
    django_qa.ensure_debian_package(django_qa.DJANGO_PACKAGE, django_qa.DJANGO_HTML)
    # A private copy (another bench, rag_http.py, rebuilds bench/results/django-corpus).
    with tempfile.TemporaryDirectory(prefix="django-corpus-") as workdir:
        corpus = django_qa.build_corpus(django_qa.DJANGO_HTML, Path(workdir), args.max_pages)
        console.print(f"cleaned corpus: {len(corpus.files)} pages, {len(corpus.questions)} "
                      f"questions; removed {corpus.removed}")
        data = ingest(corpus.files, corpus.root, embedder, args.batch_size, cache(args, embedder),
                      chunker(args))
        report = django_qa.leakage_report(corpus, data.documents)
    measure_index_size(data.index, data.stats)
    leakage_summary(report, len(corpus.questions))
    console.print(ingest_table(data.stats, "ingest: Django docs (cleaned)"))
    console.print(memory_table(data.stats))
    rows = evaluate_django(data, corpus.questions, embedder, args.cross_encoder, rerank_depths(args))
    console.print(results_table(rows, f"retrieval: {len(corpus.questions)} Django FAQ questions, "
                                      f"{data.stats.chunks:,} chunks"))
    sweep_rows = sweep(data, corpus.questions, embedder)
    console.print(sweep_table(sweep_rows))
    by_name = {row.name: row.quality.ndcg_10 for row in rows if row.quality}
    if by_name["hybrid"] <= max(by_name["sparse"], by_name["dense"]):
        console.print("[yellow]hybrid nDCG@10 is not above both sparse and dense with the "
                      "default settings: see the sweep[/]")
    return {"ingest": {**asdict(data.stats), **data.stats.rates()},
            "questions": [{"qid": q.qid, "question": q.text, "span": q.span} for q in corpus.questions],
            "leakage": {"slug_hits": report.slug_hits,
                        "occurrences": [asdict(o) for o in report.occurrences]},
            "retrieval": [asdict(row) for row in rows], "sweep": [asdict(row) for row in sweep_rows],
            "cleaning_removed": corpus.removed}


def run_linux(args: argparse.Namespace, embedder: LocalEmbedder) -> dict[str, object]:
    files = linux_files(args.max_pages)
    console.print(f"corpus: {len(files)} pages under {LINUX_HTML}")
    data = ingest(files, LINUX_HTML, embedder, args.batch_size, cache(args, embedder), chunker(args))
    measure_index_size(data.index, data.stats)
    console.print(ingest_table(data.stats, "ingest: Linux kernel docs"))
    console.print(memory_table(data.stats))
    queries = heading_queries(data.documents, args.queries)
    retriever = Retriever(data.index, embedder)
    configs: dict[str, Callable[[str], Sequence[object]]] = {
        mode: plain_search(retriever, mode) for mode in ("sparse", "dense", "hybrid")}
    for name, (reranker, depth) in rerankers(embedder, args.cross_encoder, rerank_depths(args)).items():
        configs[f"hybrid top {depth} + {name}"] = reranked_search(retriever, reranker, data.refs, depth)
    configs["query embedding alone"] = lambda query: embedder.encode([query])
    rows = [Row(name, None, latency_of(seconds))
            for name, (_, seconds) in timed_interleaved(configs, queries).items()]
    console.print(results_table(rows, f"search latency: {len(queries)} heading queries, "
                                      f"{data.stats.chunks:,} chunks"))
    return {"ingest": {**asdict(data.stats), **data.stats.rates()},
            "latency": [asdict(row) for row in rows], "queries": len(queries)}


def chunker(args: argparse.Namespace) -> Chunker:
    return Chunker(ChunkingOptions(chunk_size=args.chunk_size) if args.chunk_size else None)


def cache(args: argparse.Namespace, embedder: LocalEmbedder) -> EmbeddingCache | None:
    return None if args.no_cache else EmbeddingCache(CACHE, embedder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("django", "linux"), default="django")
    parser.add_argument("--max-pages", type=int, help="subsample the corpus (the FAQ pages stay)")
    parser.add_argument("--cross-encoder", type=Path, help="a local sentence-transformers CrossEncoder dir")
    parser.add_argument("--rerank-depth", type=int, default=30, help="hybrid hits lexical-dense reorders")
    parser.add_argument("--maxsim-depth", type=int, default=10,
                        help="hybrid hits sentence-maxsim reorders (it embeds their sentences per query)")
    parser.add_argument("--cross-encoder-depth", type=int, default=20)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "int8"), default="auto",
                        help="LocalEmbedder dtype (auto: bfloat16 where the CPU has AVX512-BF16/AMX)")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"embed every chunk (default: reuse vectors cached in {CACHE})")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per embedder call")
    parser.add_argument("--chunk-size", type=int, help="ChunkingOptions.chunk_size (default: its "
                        "default, 200 word pieces; linux needs 128 for over 100,000 chunks)")
    parser.add_argument("--queries", type=int, default=100, help="latency queries (linux)")
    args = parser.parse_args()
    info = machine()
    embedder = LocalEmbedder(dtype=args.dtype)
    started = time.perf_counter()
    embedder.encode(["warm up"])
    info["model_load_s"] = time.perf_counter() - started
    info["embedder_dtype"] = embedder.precision  # what "auto" chose
    console.print(f"machine: {info['cpu']}, {info['cpus']} CPUs, torch threads {info['torch_threads']}, "
                  f"load average {info['load_average_start'][0]:.1f} ({info['note']}); "
                  f"embedder all-MiniLM-L6-v2 in {info['embedder_dtype']}")
    started = time.perf_counter()
    payload = (run_django if args.corpus == "django" else run_linux)(args, embedder)
    info["load_average_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - started
    info["max_pages"] = args.max_pages
    key = args.corpus + ("" if args.dtype == "auto" else f"-{args.dtype}") + (
        f"-max{args.max_pages}" if args.max_pages else "") + (
        f"-chunk{args.chunk_size}" if args.chunk_size else "")
    path = save(key, {"machine": info, **payload})
    console.print(f"run took {info['wall_s']:.0f} s; load average at the end "
                  f"{info['load_average_end'][0]:.1f}; wrote {path}")


if __name__ == "__main__":
    main()
