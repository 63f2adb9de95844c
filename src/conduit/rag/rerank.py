"""Rerankers: reorder a retriever's top hits with a closer (and costlier) look at each one.

Three implementations of one protocol:

- `CrossEncoderReranker`: a sentence-transformers cross-encoder from a local directory
  (none is bundled; nothing is downloaded). The strongest, and the slowest.
- `SentenceMaxSimReranker`: the bundled all-MiniLM-L6-v2 embeds each sentence of a chunk;
  a chunk scores its best sentence's cosine with the query, so one relevant sentence in a
  long chunk is not averaged away. Costs one embedding batch of the candidates' sentences.
- `LexicalDenseReranker`: the hit's cosine similarity (already computed by retrieval) plus
  a bonus for the share of the query's words the chunk contains. Nearly free.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from conduit.rag.retrieve import Embedder, Hit
from conduit.rag.sparse import Tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@runtime_checkable
class Reranker(Protocol):
    def score(self, query: str, hits: Sequence[Hit], texts: Sequence[str]) -> np.ndarray:
        """One relevance score per hit (texts[i] is hits[i]'s text); higher is better."""
        ...


def rerank(reranker: Reranker, query: str, hits: Sequence[Hit], texts: Sequence[str],
           top_n: int | None = None) -> list[Hit]:
    """Hits reordered by the reranker (stable among equal scores), its score in `rerank_score`."""
    if len(hits) != len(texts):
        raise ValueError(f"{len(hits)} hits for {len(texts)} texts")
    if not hits:
        return []
    scores = np.asarray(reranker.score(query, hits, texts), np.float64)
    order = np.argsort(-scores, kind="stable")[:top_n]
    return [replace(hits[i], rerank_score=float(scores[i])) for i in order]


class CrossEncoderReranker:
    """Loads on first use from `model_dir`, a saved sentence-transformers CrossEncoder."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16,
                 max_length: int | None = 512) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"cross-encoder directory {self.model_dir} does not exist")
        self.batch_size, self.max_length = batch_size, max_length
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # -> sentence_transformers.CrossEncoder, imported lazily
        with self._lock:
            if self._model is None:
                from sentence_transformers import CrossEncoder

                self._model = CrossEncoder(str(self.model_dir), device="cpu",
                                           local_files_only=True, max_length=self.max_length)
        return self._model

    def score(self, query: str, hits: Sequence[Hit], texts: Sequence[str]) -> np.ndarray:
        pairs = [(query, text) for text in texts]
        return np.asarray(self._load().predict(pairs, batch_size=self.batch_size,
                                               show_progress_bar=False), np.float64).reshape(-1)


def sentences(text: str, min_words: int = 3) -> list[str]:
    """Sentences and lines of a text; fragments under `min_words` join the next one."""
    result, pending = [], ""
    for piece in _SENTENCE_END.split(text):
        pending = f"{pending} {piece}".strip() if pending else piece.strip()
        if len(pending.split()) >= min_words:
            result.append(pending)
            pending = ""
    if pending and result:
        result[-1] = f"{result[-1]} {pending}"
    elif pending:
        result.append(pending)
    return result


class SentenceMaxSimReranker:
    """Score = the best cosine between the query and one sentence of the chunk."""

    def __init__(self, embedder: Embedder, max_sentences: int = 12) -> None:
        self.embedder, self.max_sentences = embedder, max_sentences

    def score(self, query: str, hits: Sequence[Hit], texts: Sequence[str]) -> np.ndarray:
        per_text = [sentences(text)[:self.max_sentences] or [text] for text in texts]
        flat = [s for group in per_text for s in group]
        vectors = self.embedder.encode([query, *flat])  # one batch: the cost is per call
        sims = vectors[1:] @ vectors[0]
        bounds = np.cumsum([0] + [len(group) for group in per_text])
        return np.array([sims[lo:hi].max() for lo, hi in itertools.pairwise(bounds)])


class LexicalDenseReranker:
    """Score = cosine similarity + `weight` x the share of the query's words in the chunk.

    Dense similarity misses exact terms (names, error codes, flags); this puts chunks that
    contain them first among semantically close ones. Hits without a similarity count 0.
    """

    def __init__(self, weight: float = 0.3, tokenizer: Tokenizer | None = None) -> None:
        self.weight = weight
        self.tokenizer = tokenizer or Tokenizer()

    def score(self, query: str, hits: Sequence[Hit], texts: Sequence[str]) -> np.ndarray:
        words = set(self.tokenizer(query))
        coverage = [len(words & set(self.tokenizer(text))) / len(words) if words else 0.0
                    for text in texts]
        similarity = [hit.similarity if hit.similarity is not None else 0.0 for hit in hits]
        return np.asarray(similarity) + self.weight * np.asarray(coverage)
