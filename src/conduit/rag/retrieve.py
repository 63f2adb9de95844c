"""Retrieval over a ChunkIndex: dense, sparse (BM25) or hybrid, with metadata filters.

Hybrid fuses the two ranked lists. Reciprocal-rank fusion (the default) uses ranks only:
score(d) = sum over retrievers of weight / (rrf_k + rank(d)), so neither retriever's score
scale matters. Score fusion min-max-normalises each retriever's scores over its own
candidates and adds them with the weights; it keeps "how much better" but trusts the scales.

Fused scores only order results. To decide "nothing relevant was found", use a hit's
`similarity`: the cosine similarity between the query's and the chunk's embeddings, filled
in for every hit of a dense or hybrid search, the ones only BM25 found included.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from conduit.rag.filters import Filter, validate
from conduit.rag.index import ChunkIndex

Mode = Literal["dense", "sparse", "hybrid"]
Fusion = Literal["rrf", "score"]


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float  # what the results are ordered by: fused, cosine or BM25, per the mode
    similarity: float | None  # query-chunk cosine similarity; None in sparse mode
    dense_rank: int | None = None  # 1-based rank in the dense list, None if not in it
    sparse_rank: int | None = None
    bm25: float | None = None
    rerank_score: float | None = None  # set by rerank.rerank


@dataclass(frozen=True)
class RetrievalOptions:
    mode: Mode = "hybrid"
    fusion: Fusion = "rrf"
    rrf_k: int = 60  # larger flattens the advantage of the top ranks
    dense_weight: float = 1.0
    sparse_weight: float = 1.0
    candidates: int = 50  # how deep each retriever's list goes before fusion


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[int]], weights: Mapping[str, float],
                           rrf_k: int = 60) -> list[tuple[int, float]]:
    """(id, fused score), best first; ties keep the order ids were first seen in."""
    fused: dict[int, float] = {}
    for name, ranking in rankings.items():
        for rank, chunk_id in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weights.get(name, 1.0) / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def score_fusion(scored: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                 weights: Mapping[str, float]) -> list[tuple[int, float]]:
    """Weighted sum of min-max normalised scores (0 where a retriever missed the id)."""
    fused: dict[int, float] = {}
    for name, (ids, scores) in scored.items():
        if len(ids) == 0:
            continue
        values = np.asarray(scores, np.float64)
        spread = values.max() - values.min()
        normalised = (values - values.min()) / spread if spread > 0 else np.ones_like(values)
        for chunk_id, value in zip(ids, normalised, strict=True):
            fused[int(chunk_id)] = fused.get(int(chunk_id), 0.0) + weights.get(name, 1.0) * value
    return sorted(fused.items(), key=lambda item: -item[1])


class Retriever:
    def __init__(self, index: ChunkIndex, embedder: Embedder,
                 options: RetrievalOptions | None = None) -> None:
        self.index, self.embedder = index, embedder
        self.options = options or RetrievalOptions()

    def search(self, query: str, k: int = 10, *, mode: Mode | None = None,
               filters: Filter | None = None, document_ids: Collection[int] | None = None,
               query_vector: np.ndarray | None = None) -> list[Hit]:
        """The k best chunks for `query` among those matching `filters` and `document_ids`.

        Pass `query_vector` if the query is already embedded. A malformed filter raises
        ValueError.
        """
        mode = mode or self.options.mode
        if filters is not None:
            validate(filters)
        allowed = None
        if filters is not None or document_ids is not None:
            allowed = self.index.attributes.matching_ids(filters, document_ids)
            if len(allowed) == 0:
                return []
        depth = k if mode != "hybrid" else max(k, self.options.candidates)
        vector = None
        if mode != "sparse":
            vector = query_vector if query_vector is not None else self.embedder.encode([query])[0]
        dense_ids, dense_sims = (self.index.dense.search(vector, depth, allowed)
                                 if vector is not None else (np.zeros(0, np.int64), None))
        sparse_ids, bm25 = (self.index.sparse.search(query, depth, allowed)
                            if mode != "dense" else (np.zeros(0, np.int64), None))
        dense_rank = {int(i): r for r, i in enumerate(dense_ids, start=1)}
        sparse_rank = {int(i): r for r, i in enumerate(sparse_ids, start=1)}
        if mode == "dense":
            ranked = list(zip(dense_ids.tolist(), dense_sims.tolist(), strict=True))
        elif mode == "sparse":
            ranked = list(zip(sparse_ids.tolist(), bm25.tolist(), strict=True))
        elif self.options.fusion == "rrf":
            ranked = reciprocal_rank_fusion(
                {"dense": dense_ids.tolist(), "sparse": sparse_ids.tolist()}, self._weights(),
                self.options.rrf_k)
        else:
            ranked = score_fusion({"dense": (dense_ids, dense_sims), "sparse": (sparse_ids, bm25)},
                                  self._weights())
        ranked = ranked[:k]
        similarity = self._similarities([i for i, _ in ranked], vector, dense_ids, dense_sims)
        bm25_of = {} if bm25 is None else dict(zip(sparse_ids.tolist(), bm25.tolist(), strict=True))
        return [Hit(chunk_id, float(score), similarity.get(chunk_id), dense_rank.get(chunk_id),
                    sparse_rank.get(chunk_id), bm25_of.get(chunk_id))
                for chunk_id, score in ranked]

    def _weights(self) -> dict[str, float]:
        return {"dense": self.options.dense_weight, "sparse": self.options.sparse_weight}

    def _similarities(self, ids: list[int], vector: np.ndarray | None, dense_ids: np.ndarray,
                      dense_sims: np.ndarray | None) -> dict[int, float]:
        if vector is None:
            return {}
        known = dict(zip(dense_ids.tolist(), dense_sims.tolist(), strict=True))
        missing = [i for i in ids if i not in known]  # hits only BM25 found
        if missing:
            sims = self.index.dense.similarities(vector, missing)
            known.update((i, s) for i, s in zip(missing, sims.tolist(), strict=True)
                         if not math.isnan(s))
        return {i: float(known[i]) for i in ids if i in known}
