"""Semantic cache benchmark: lookup latency at 100,000 entries, HNSW (hnswlib) against brute force.

    python bench/semantic_cache.py [--entries 10000,100000] [--probes 40]

For each size, one namespace holds the filler plus the probes' stored questions. Filler: real
embeddings of a few hundred template questions, each copied many times with Gaussian jitter and
re-normalised (cosine ~0.86 to its source), so the vectors cluster the way real questions do
without embedding 100,000 texts. Probes use the real model end to end, three kinds:

- hit: a stored question asked in other words ("How do I install X?" / "How can I install X?");
- near-miss: its opposite ("How do I uninstall X?"): above the threshold, the verifier refuses it;
- miss: a question on a topic the cache has never seen.

Latency is `await cache.lookup(...)`, query embedding included (each query text is new to the
cache, so none is served from its recent-vector memo). Also reported: the embedding alone, the
index search alone, and the HNSW's top-1 agreement with brute force. Writes
bench/results/semantic_cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from conduit.backends.embeddings import LocalEmbedder
from conduit.cache.semantic import SemanticCache

NAMESPACE = "bench"
FILLER_TOPICS = ["invoice", "shipping label", "warranty claim", "gift card", "loyalty points",
                 "store hours", "return window", "delivery slot", "price match", "order history",
                 "billing address", "tax receipt", "coupon code", "size chart", "pickup point",
                 "payment plan"]
FILLER_TEMPLATES = ["Where can I see my {}?", "How is my {} calculated?", "Who handles the {}?",
                    "Why was my {} rejected?", "Can I transfer my {} to a friend?",
                    "What happens to my {} when I move abroad?", "Is the {} available on weekends?",
                    "How long is the {} valid?", "Can the {} be split across two accounts?",
                    "What documents do I need for the {}?", "Is there a fee for the {}?",
                    "How do I print the {}?", "Can I get the {} by email?",
                    "What is the deadline for the {}?", "Who do I contact about the {}?",
                    "Can I change the {} after checkout?"]
TOOLS = ["Docker", "Kubernetes", "PostgreSQL", "Redis", "nginx", "Terraform", "Ansible", "Jenkins",
         "Grafana", "Prometheus", "Elasticsearch", "RabbitMQ", "Kafka", "MongoDB", "MySQL",
         "Node.js", "Rust", "Go", "Java", "Scala", "Haskell", "Erlang", "Elixir", "Ruby", "PHP",
         "Perl", "Lua", "Julia", "Kotlin", "Swift", "Dart", "Flutter", "React", "Angular", "Vue",
         "Svelte", "Django", "Flask", "FastAPI", "Rails", "Spring", "Laravel", "Vim", "Emacs",
         "VS Code", "IntelliJ", "Eclipse", "Git", "Mercurial", "Subversion", "Helm", "Istio",
         "Consul", "Vault", "Nomad", "Packer", "Vagrant", "VirtualBox", "QEMU", "Wireshark"]
UNSEEN = ["a sourdough starter", "a bonsai tree", "a chess opening", "a marathon plan",
          "a watercolour sky", "a sailing knot", "a beehive", "a compost heap", "a violin bow",
          "a climbing harness", "a fishing reel", "a pottery wheel", "a telescope mount",
          "a kayak roll", "a knitting pattern", "a bread oven", "a tennis serve", "a herb garden",
          "a snowboard wax", "a camping stove", "a guitar string", "a jigsaw puzzle",
          "a paper kite", "a sewing machine", "a bird feeder", "a yoga mat", "a chess clock",
          "a wine cellar", "a surfboard fin", "a drum kit", "a dog leash", "a cat flap",
          "a rose bush", "a fish tank", "a tent peg", "a ski binding", "a darts board",
          "a piano pedal", "a hiking boot", "a lawn mower", "a fire pit", "a rowing machine",
          "a cheese board", "a bike chain", "a rain barrel", "a tea kettle", "a paddle board",
          "a flower press", "a candle wick", "a card trick", "a sandcastle", "a magic cube",
          "a hammock", "a bird bath", "a toboggan", "a hula hoop", "a skateboard deck",
          "a bread knife", "a cuckoo clock", "a picnic basket"]


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))]}


FILLER_TEXTS = [t.format(topic) for topic in FILLER_TOPICS for t in FILLER_TEMPLATES]


def filler(base: np.ndarray, entries: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    texts = FILLER_TEXTS
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(texts), entries)
    vectors = base[source] + 0.03 * rng.standard_normal((entries, base.shape[1]), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # A distinct number per question: any filler that reaches the verifier is a different question.
    questions = [f"{texts[s]} (case {i})" for i, s in enumerate(source)]
    return questions, vectors


async def timed_lookups(cache: SemanticCache, questions: list[str]) -> tuple[list[float], int]:
    samples, hits = [], 0
    for question in questions:
        start = time.perf_counter()
        hit = await cache.lookup(NAMESPACE, question)
        samples.append(time.perf_counter() - start)
        hits += hit is not None
    return samples, hits


async def run_index(kind: str, embedder: LocalEmbedder, questions: list[str], vectors: np.ndarray,
                    probes: dict[str, list[str]], stored: list[str]) -> dict:
    cache = SemanticCache(embedder, index=kind, max_entries=len(questions) + len(stored) + 1)
    start = time.perf_counter()
    cache._preload(NAMESPACE, questions, vectors, answers=[None] * len(questions))
    fill_s = time.perf_counter() - start
    store_samples = []
    for question in stored:
        start = time.perf_counter()
        await cache.store(NAMESPACE, question, answer=question)
        store_samples.append(time.perf_counter() - start)
    await timed_lookups(cache, [f"Warm-up question number {i} about lookups" for i in range(5)])
    result: dict = {"fill_s": fill_s, "entries": len(cache), "store": percentiles(store_samples)}
    for name, asked in probes.items():
        samples, hits = await timed_lookups(cache, asked)
        result[name] = {**percentiles(samples), "hit_rate": hits / len(asked)}
    index = cache._indexes[NAMESPACE]
    query_vectors = embedder.encode(probes["hit"])
    search = []
    for vector in query_vectors:
        start = time.perf_counter()
        index.nearest(vector, cache.candidates)
        search.append(time.perf_counter() - start)
    result["search_only"] = percentiles(search)
    result["top1"] = [index.nearest(v, 1)[0][0] for v in query_vectors]
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", default="10000,100000", help="sizes, comma-separated")
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()
    started = time.perf_counter()
    embedder = LocalEmbedder()
    load_start = time.perf_counter()
    embedder.encode(["load"])
    load_s = time.perf_counter() - load_start

    tools = TOOLS[: args.probes]
    stored = [f"How do I install {tool}?" for tool in tools]
    probes = {"hit": [f"How can I install {tool}?" for tool in tools],
              "near_miss": [f"How do I uninstall {tool}?" for tool in tools],
              "miss": [f"How do I look after {thing}?" for thing in UNSEEN[: args.probes]]}
    base = embedder.encode(FILLER_TEXTS).astype(np.float32)

    embed_samples = []
    for i in range(40):
        start = time.perf_counter()
        await embedder.aencode([f"How would I configure setting number {i} for my account?"])
        embed_samples.append(time.perf_counter() - start)

    sizes = [int(size) for size in args.entries.split(",")]
    by_size = {}
    for size in sizes:
        questions, vectors = filler(base, size - len(stored))
        results = {kind: await run_index(kind, embedder, questions, vectors, probes, stored)
                   for kind in ("hnsw", "exact")}
        results["hnsw_top1_agrees_with_exact"] = float(np.mean(
            [a == b for a, b in zip(results["hnsw"].pop("top1"), results["exact"].pop("top1"),
                                    strict=True)]))
        by_size[size] = results
    report = {
        "filler": f"real embeddings of {len(FILLER_TEXTS)} template questions, each repeated with "
                  "Gaussian jitter (sigma 0.03, cosine ~0.86 to its source), re-normalised",
        "probes": "real embeddings, through SemanticCache.lookup (query embedding included)",
        "probes_per_kind": len(tools),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "model_load_s": load_s,
        "embedding_only": percentiles(embed_samples),
        "entries": by_size,
        "runtime_s": time.perf_counter() - started,
    }
    print(f"filler: jittered real embeddings; probes: real model, {len(tools)} per kind; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"embedding alone: p50 {report['embedding_only']['p50_ms']:.1f} ms, "
          f"p95 {report['embedding_only']['p95_ms']:.1f} ms")
    print(f"{'entries':>8} {'index':<6}{'lookup':<12}{'p50 ms':>8}{'p95 ms':>8}{'hit rate':>10}")
    for size, results in by_size.items():
        for kind in ("hnsw", "exact"):
            for name in ("hit", "near_miss", "miss", "search_only", "store"):
                row = results[kind][name]
                rate = f"{row['hit_rate']:>10.0%}" if "hit_rate" in row else ""
                print(f"{size:>8} {kind:<6}{name:<12}"
                      f"{row['p50_ms']:>8.2f}{row['p95_ms']:>8.2f}{rate}")
        print(f"{size:>8} hnsw filled in {results['hnsw']['fill_s']:.1f} s; top-1 agrees with "
              f"brute force on {results['hnsw_top1_agrees_with_exact']:.0%} of hit probes")
    print(f"runtime {report['runtime_s']:.0f} s")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "semantic_cache.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
