"""The semantic cache: an answer replayed for a question that means the same as a cached one.

A question is embedded (all-MiniLM-L6-v2, normalised, so cosine similarity is a dot product) and
looked up among the cached questions of its *namespace*. The caller builds the namespace from
everything besides the question that changes an answer: tenant, model, system prompt, sampling
parameters, retrieval collections and their versions. Namespaces never see each other's entries.

A candidate hits when its similarity reaches `threshold` **and** the verifier
(`conduit.cache.verify`) finds no rule by which the two questions differ. Similarity alone cannot
separate near-misses: on the tests' table, 61 of 97 near-misses (reversals, negations, other
numbers, opposite verbs) score >= 0.85, 19 >= 0.96, three >= 0.99; the verifier rejects all 97.

Threshold, measured on the 86 paraphrase and 97 near-miss pairs of tests/cache/test_semantic.py
(the real model): every paraphrase scores >= 0.862, the lowest one the verifier accepts is 0.864.
With verification the paraphrase hit rate is flat at 86% for any threshold <= 0.86 and falls
above it (0.88: 84%, 0.90: 81%, 0.94: 71%), with zero false hits at every threshold. The default
0.85 sits just under the paraphrase distribution: lower buys no hits and only widens what the
verifier alone must judge.

Index, measured by bench/semantic_cache.py on the 2-core dev machine (shared with other jobs,
load average 5-7 during the runs): at 100,000 entries in one namespace an HNSW search (hnswlib)
takes p50 0.5 ms / p95 0.8-1.5 ms; a numpy brute-force search takes p50 16-39 ms (7.5 ms at load
~3). Brute force alone exceeds a 10 ms lookup budget, so HNSW is the default. At 10,000 entries
both search in well under a millisecond when the machine is not saturated. HNSW is approximate
and clustered data is its hard case: with M=16, ef=64 only 55-67% of paraphrase probes found their
stored question among 100,000 clustered entries; M=32, ef_construction=200, ef=256 find 98-100%
(brute force: 100%) and still search in about half a millisecond.
Deletes are `mark_deleted`; the next insert reuses the slot (`replace_deleted`), so TTL expiry,
LRU eviction and invalidation never rebuild. "exact" (a preallocated matrix with a free list) is
the benchmark's baseline and an exact choice for small caches. The query's embedding, not the
search, dominates a lookup: about 10 ms on an idle core of this machine, much more under load.

Concurrency: embedding runs in the embedder's worker thread (`aencode`); index search and mutation
are synchronous (no await inside) and also hold a lock, so concurrent coroutines, and a thread
calling `invalidate_collection`, are safe.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

import numpy as np

from conduit.cache.verify import Analysis, analyse, why_different

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.85
_RECENT_VECTORS = 1024  # a miss's lookup and the store that follows it embed the question once


class Embedder(Protocol):
    dimensions: int

    async def aencode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class SemanticHit:
    answer: object        # whatever the caller stored (the pipeline stores a CachedAnswer)
    question: str         # the cached question that matched
    similarity: float


class VectorIndex(Protocol):
    """Inner-product nearest neighbours over unit vectors, keyed by the cache's entry keys."""

    def add(self, key: int, vector: np.ndarray) -> None: ...
    def remove(self, key: int) -> None: ...
    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]: ...
    def __len__(self) -> int: ...


class ExactIndex:
    """Brute force: one matrix product per query. Deleted rows are zeroed and their slots reused."""

    def __init__(self, dimensions: int, capacity: int = 64) -> None:
        self._vectors = np.zeros((capacity, dimensions), dtype=np.float32)
        self._keys = np.full(capacity, -1, dtype=np.int64)
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._high_water = 0  # slots below this have been used at least once

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, key: int, vector: np.ndarray) -> None:
        if self._free:
            slot = self._free.pop()
        else:
            if self._high_water == len(self._keys):
                self._grow()
            slot = self._high_water
            self._high_water += 1
        self._vectors[slot] = vector
        self._keys[slot] = key
        self._slot_of[key] = slot

    def remove(self, key: int) -> None:
        slot = self._slot_of.pop(key)
        self._vectors[slot] = 0.0
        self._keys[slot] = -1
        self._free.append(slot)

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, len(self))
        if k == 0:
            return []
        scores = self._vectors[: self._high_water] @ vector
        if self._free:  # a freed row scores 0, which would outrank a live negative score
            scores[self._keys[: self._high_water] < 0] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(int(self._keys[i]), float(scores[i])) for i in top]

    def _grow(self) -> None:
        capacity = len(self._keys) * 2
        vectors = np.zeros((capacity, self._vectors.shape[1]), dtype=np.float32)
        vectors[: len(self._keys)] = self._vectors
        keys = np.full(capacity, -1, dtype=np.int64)
        keys[: len(self._keys)] = self._keys
        self._vectors, self._keys = vectors, keys


class HnswIndex:
    """hnswlib's HNSW graph. Removal marks the element deleted; the next add reuses its slot."""

    def __init__(self, dimensions: int, capacity: int = 64, *, m: int = 32,
                 ef_construction: int = 200, ef_search: int = 256) -> None:
        import hnswlib  # only this index needs it

        self._index = hnswlib.Index(space="ip", dim=dimensions)
        self._index.init_index(max_elements=capacity, M=m, ef_construction=ef_construction,
                               allow_replace_deleted=True)
        self._index.set_ef(ef_search)
        self._index.set_num_threads(1)  # single-vector calls: extra threads are pure overhead
        self._ef_search = ef_search
        self._live = 0
        self._deleted = 0

    def __len__(self) -> int:
        return self._live

    def add(self, key: int, vector: np.ndarray) -> None:
        if self._deleted:
            self._deleted -= 1  # replace_deleted=True below takes over a deleted slot
        elif self._live == self._index.get_max_elements():
            self._index.resize_index(self._live * 2)
        self._index.add_items(vector[np.newaxis], np.array([key]), replace_deleted=True)
        self._live += 1

    def add_many(self, keys: np.ndarray, vectors: np.ndarray, threads: int = -1) -> None:
        """Bulk insert into fresh slots, on several threads: for preloading."""
        needed = self._live + self._deleted + len(keys)
        if needed > self._index.get_max_elements():
            self._index.resize_index(needed)
        self._index.set_num_threads(threads)
        self._index.add_items(vectors, keys)
        self._index.set_num_threads(1)
        self._live += len(keys)

    def remove(self, key: int) -> None:
        self._index.mark_deleted(key)
        self._live -= 1
        self._deleted += 1

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        k = min(k, self._live)
        if k == 0:
            return []
        try:
            labels, distances = self._index.knn_query(vector, k=k)
        except RuntimeError:  # fewer than k live elements reachable (after many deletions)
            try:
                labels, distances = self._index.knn_query(vector, k=1)
            except RuntimeError:
                return []
        # hnswlib's "ip" distance is 1 - dot product.
        return [(int(label), 1.0 - float(distance))
                for label, distance in zip(labels[0], distances[0], strict=True)]


_INDEXES: dict[str, Callable[..., VectorIndex]] = {"hnsw": HnswIndex, "exact": ExactIndex}


@dataclass
class _Entry:
    namespace: str
    question: str
    answer: object
    collections: frozenset[str]
    expires_at: float

    @cached_property
    def analysis(self) -> Analysis:  # only candidates above the threshold are ever analysed
        return analyse(self.question)


class SemanticCache:
    """Per-namespace vector indexes over one global LRU with a TTL per entry."""

    def __init__(self, embedder: Embedder, *, threshold: float = DEFAULT_THRESHOLD,
                 max_entries: int = 10_000, ttl_s: float = 3600.0, verify: bool = True,
                 index: Literal["hnsw", "exact"] = "hnsw", candidates: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.verify = verify
        self.candidates = candidates  # neighbours tried: a near-miss may outrank the paraphrase
        self.rejections: Counter[str] = Counter()  # verifier rule -> candidates it turned down
        self._embedder = embedder
        self._new_index = _INDEXES[index]
        self._clock = clock
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._indexes: dict[str, VectorIndex] = {}
        self._by_question: dict[tuple[str, str], int] = {}
        self._by_collection: dict[str, set[int]] = {}
        self._expiry: deque[tuple[float, int]] = deque()  # store order = expiry order (one TTL)
        self._recent_vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, namespace: str, question: str) -> SemanticHit | None:
        if namespace not in self._indexes:
            return None  # nothing to compare with: skip the embedding
        with self._lock:
            same = self._by_question.get((namespace, question))
            if same is not None and self._entries[same].expires_at > self._clock():
                self._entries.move_to_end(same)  # the very same question: no embedding needed
                return SemanticHit(self._entries[same].answer, question, 1.0)
        vector = await self._embed(question)
        with self._lock:
            self._expire()
            index = self._indexes.get(namespace)
            if index is None:
                return None
            for key, similarity in index.nearest(vector, self.candidates):
                if similarity < self.threshold:
                    break
                entry = self._entries[key]
                if entry.expires_at <= self._clock():
                    self._remove(key)
                    continue
                if self.verify and entry.question != question:
                    reason = why_different(analyse(question), entry.analysis)
                    if reason is not None:
                        self.rejections[reason.split(":")[0]] += 1
                        log.debug("semantic near-miss %r ~ %r (%.3f): %s",
                                  question, entry.question, similarity, reason)
                        continue
                self._entries.move_to_end(key)
                return SemanticHit(entry.answer, entry.question, similarity)
        return None

    async def store(self, namespace: str, question: str, answer: object,
                    collections: frozenset[str] = frozenset()) -> None:
        vector = await self._embed(question)
        entry = _Entry(namespace, question, answer, frozenset(collections),
                       self._clock() + self.ttl_s)
        with self._lock:
            self._insert(entry, vector)

    def invalidate_collection(self, collection_id: str) -> int:
        """Drop every entry whose answer read `collection_id`; returns how many."""
        with self._lock:
            keys = list(self._by_collection.get(collection_id, ()))
            for key in keys:
                self._remove(key)
            return len(keys)

    def _preload(self, namespace: str, questions: list[str], vectors: np.ndarray,
                 answers: list[object]) -> None:
        """Insert many pre-embedded entries into a fresh namespace at once (benchmarks)."""
        with self._lock:
            if namespace in self._indexes:
                raise ValueError(f"namespace {namespace!r} is not empty")
            index = self._new_index(self._embedder.dimensions, len(questions))
            self._indexes[namespace] = index
            keys = np.fromiter((next(self._keys) for _ in questions), dtype=np.int64)
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if isinstance(index, HnswIndex):
                index.add_many(keys, vectors)
            else:
                for key, vector in zip(keys, vectors, strict=True):
                    index.add(int(key), vector)
            expires_at = self._clock() + self.ttl_s
            for key, question, answer in zip(keys.tolist(), questions, answers, strict=True):
                self._entries[key] = _Entry(namespace, question, answer, frozenset(), expires_at)
                self._by_question[(namespace, question)] = key
                self._expiry.append((expires_at, key))
            self._evict_over_size()

    async def _embed(self, question: str) -> np.ndarray:
        with self._lock:
            vector = self._recent_vectors.get(question)
            if vector is not None:
                self._recent_vectors.move_to_end(question)
                return vector
        vector = np.asarray((await self._embedder.aencode([question]))[0], dtype=np.float32)
        if vector.shape != (self._embedder.dimensions,):
            raise ValueError(f"embedder returned shape {vector.shape}, "
                             f"expected ({self._embedder.dimensions},)")
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        with self._lock:
            self._recent_vectors[question] = vector
            if len(self._recent_vectors) > _RECENT_VECTORS:
                self._recent_vectors.popitem(last=False)
        return vector

    def _insert(self, entry: _Entry, vector: np.ndarray) -> None:
        self._expire()
        previous = self._by_question.get((entry.namespace, entry.question))
        if previous is not None:
            self._remove(previous)
        key = next(self._keys)
        index = self._indexes.get(entry.namespace)
        if index is None:
            index = self._indexes[entry.namespace] = self._new_index(self._embedder.dimensions)
        index.add(key, vector)
        self._entries[key] = entry
        self._by_question[(entry.namespace, entry.question)] = key
        for collection in entry.collections:
            self._by_collection.setdefault(collection, set()).add(key)
        self._expiry.append((entry.expires_at, key))
        self._evict_over_size()

    def _evict_over_size(self) -> None:
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def _expire(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, key = self._expiry.popleft()
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                self._remove(key)
        if len(self._expiry) > 2 * len(self._entries) + 1024:  # keys already evicted pile up
            self._expiry = deque(sorted((e.expires_at, k) for k, e in self._entries.items()))

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        index = self._indexes[entry.namespace]
        index.remove(key)
        if len(index) == 0:
            del self._indexes[entry.namespace]  # an idle tenant's index should not linger
        if self._by_question.get((entry.namespace, entry.question)) == key:
            del self._by_question[(entry.namespace, entry.question)]
        for collection in entry.collections:
            keys = self._by_collection.get(collection)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_collection[collection]
