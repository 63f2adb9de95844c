"""Dense retrieval: an HNSW graph (hnswlib) over unit vectors, keyed by integer chunk ids.

hnswlib was chosen by measurement against usearch and FAISS (bench/rag_index.py): fastest
queries at equal recall, and true incremental deletes, with the freed slots reused by
later adds (FAISS's HNSW cannot delete at all).

Filtered search must still find k results when k match: an exact scan over the allowed
vectors when they are few; otherwise an oversampled graph search, dropping disallowed
results; if that comes back short (a filter at odds with the query), the exact scan after
all. Exact scans read a float16 copy of the vectors kept here, because hnswlib hands vectors
back one by one (about 40 us each: 150 ms for 4,000); the copy costs 768 bytes a chunk.

Defaults: M=16, ef_construction=100, ef_search=200. Real MiniLM embeddings are harder than
synthetic ones: on 6,000 kernel-doc chunks, recall@10 was 0.977 / 0.9945 / 0.999 at
ef_search 64 / 128 / 200, for 0.08 / 0.14 / 0.20 ms a query.

hnswlib's add is not safe against a concurrent query, so one lock covers both; adds go in
small batches so that a search never waits for more than one of them.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import hnswlib
import numpy as np

from conduit.rag.snapshot import IndexCorrupt, read_manifest, write_files

FORMAT = 2  # 2: vectors.npz holds a float16 copy of the vectors
_ADD_BATCH = 64
_SCAN_BLOCK = 16384


class _VectorTable:
    """Unit vectors as float16 rows by chunk id; rows freed by deletes are reused."""

    def __init__(self, dim: int) -> None:
        self.matrix = np.zeros((0, dim), np.float16)
        self.row_of: dict[int, int] = {}
        self._free: list[int] = []

    def put(self, ids: np.ndarray, unit_vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        rows = []
        for chunk_id in ids.tolist():
            row = self.row_of.get(chunk_id)
            if row is None:  # a freed row, else the first never handed out
                row = self._free.pop() if self._free else len(self.row_of) + len(self._free)
                self.row_of[chunk_id] = row
            rows.append(row)
        if max(rows) >= len(self.matrix):
            grown = np.zeros((max(max(rows) + 1, 2 * len(self.matrix), 1024),
                              self.matrix.shape[1]), np.float16)
            grown[:len(self.matrix)] = self.matrix
            self.matrix = grown
        self.matrix[rows] = unit_vectors

    def remove(self, chunk_id: int) -> None:
        self._free.append(self.row_of.pop(chunk_id))

    def similarities(self, ids: list[int], query: np.ndarray) -> np.ndarray:
        if not ids:
            return np.zeros(0, np.float32)
        rows = [self.row_of[i] for i in ids]
        return self.matrix[rows].astype(np.float32) @ query


class DenseIndex:
    """Cosine similarity search; `search` returns (chunk ids, similarities), best first.

    A filter allowing at most `exact_scan_limit` chunks is answered by an exact scan.
    """

    def __init__(self, dim: int = 384, m: int = 16, ef_construction: int = 100,
                 ef_search: int = 200, exact_scan_limit: int = 8192) -> None:
        self.dim, self.m, self.ef_construction, self.ef_search = dim, m, ef_construction, ef_search
        self.exact_scan_limit = exact_scan_limit
        self._lock = threading.Lock()
        self._vectors = _VectorTable(dim)
        self._graph = self._new_graph(1024)
        self.saved_meta: dict[str, object] = {}

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space="cosine", dim=self.dim)
        graph.init_index(capacity, M=self.m, ef_construction=self.ef_construction,
                         allow_replace_deleted=True)
        graph.set_num_threads(1)
        return graph

    def __len__(self) -> int:
        return len(self._vectors.row_of)

    def __contains__(self, chunk_id: int) -> bool:
        return chunk_id in self._vectors.row_of

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._vectors.row_of, np.int64, len(self))

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Insert or replace vectors (normalised here) under chunk ids."""
        vectors = _unit(np.asarray(vectors, np.float32).reshape(-1, self.dim))
        labels = np.asarray(ids, np.int64)
        if len(labels) != len(vectors):
            raise ValueError(f"{len(labels)} ids for {len(vectors)} vectors")
        if len(np.unique(labels)) != len(labels):
            raise ValueError("the same id twice in one add")
        for start in range(0, len(labels), _ADD_BATCH):
            batch = labels[start:start + _ADD_BATCH]
            batch_vectors = vectors[start:start + _ADD_BATCH]
            with self._lock:
                needed = len(self) + len(batch)
                if needed > self._graph.get_max_elements():
                    self._graph.resize_index(max(needed, 2 * self._graph.get_max_elements()))
                self._graph.add_items(batch_vectors, batch, replace_deleted=True)
                self._vectors.put(batch, batch_vectors)

    def delete(self, ids: Iterable[int]) -> int:
        """Forget chunk ids (unknown ones are ignored); returns how many were present."""
        with self._lock:
            present = [i for i in map(int, ids) if i in self._vectors.row_of]
            for chunk_id in present:
                self._graph.mark_deleted(chunk_id)
                self._vectors.remove(chunk_id)
            return len(present)

    def similarities(self, query: np.ndarray, ids: Sequence[int]) -> np.ndarray:
        """Cosine similarity of the query to each id's vector; NaN for ids not held."""
        query = _unit(np.asarray(query, np.float32).reshape(self.dim))
        result = np.full(len(ids), np.nan, np.float32)
        with self._lock:
            held = [n for n, i in enumerate(ids) if int(i) in self._vectors.row_of]
            if held:
                result[held] = self._vectors.similarities([int(ids[n]) for n in held], query)
        return result

    def search(self, query: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (chunk ids, cosine similarities). With `allowed_ids`, only those ids, and
        still k of them whenever k of them are in the index."""
        query = _unit(np.asarray(query, np.float32).reshape(self.dim))
        with self._lock:
            live = len(self)
            if k <= 0 or live == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            if allowed_ids is None:
                return self._graph_search(query, min(k, live))
            allowed = np.asarray(allowed_ids, np.int64)
            # Expect len(allowed)/live of graph results to pass: ask for twice what that needs.
            wanted = math.ceil(2 * k * live / max(len(allowed), 1)) + 10
            if len(allowed) > self.exact_scan_limit and wanted <= max(1024, 4 * k):
                ids, sims = self._graph_search(query, min(wanted, live))
                keep = np.isin(ids, allowed)
                if keep.sum() >= k:
                    return ids[keep][:k], sims[keep][:k]
            return self._exact(query, k, allowed)

    def save(self, directory: str | Path, **meta: object) -> None:
        """Write the graph, the ids and their vectors; `meta` goes into the manifest.

        Searches wait only while the graph is written out, not for the checksums.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        snapshot = directory / ".graph.snapshot"
        with self._lock:
            ids = np.fromiter(self._vectors.row_of, np.int64, len(self))
            vectors = self._vectors.matrix[[self._vectors.row_of[i] for i in ids.tolist()]]
            self._graph.save_index(str(snapshot))

        def write_arrays(path: Path) -> None:
            with open(path, "wb") as f:
                np.savez(f, ids=ids, vectors=vectors)

        write_files(directory, {"graph.bin": lambda path: os.replace(snapshot, path),
                                "vectors.npz": write_arrays},
                    {"kind": "hnsw", "format": FORMAT, "dim": self.dim, "m": self.m,
                     "ef_construction": self.ef_construction, "count": len(ids), **meta})

    @classmethod
    def load(cls, directory: str | Path, ef_search: int = 200,
             exact_scan_limit: int = 8192) -> DenseIndex:
        """Raises `IndexCorrupt` if the files are incomplete or inconsistent."""
        directory = Path(directory)
        manifest = read_manifest(directory, "hnsw", FORMAT)
        index = cls(manifest["dim"], manifest["m"], manifest["ef_construction"], ef_search,
                    exact_scan_limit)
        with np.load(directory / "vectors.npz") as arrays:
            index._vectors.put(arrays["ids"], arrays["vectors"])
        graph = hnswlib.Index(space="cosine", dim=index.dim)
        try:
            graph.load_index(str(directory / "graph.bin"), allow_replace_deleted=True)
        except RuntimeError as e:
            raise IndexCorrupt(f"{directory}: {e}") from e
        graph.set_num_threads(1)
        index._graph = graph
        index.saved_meta = manifest
        return index

    def _graph_search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._graph.set_ef(max(self.ef_search, k))
        try:
            labels, distances = self._graph.knn_query(query, k=k, num_threads=1)
        except RuntimeError:  # the graph found fewer than k (tiny or heavily deleted index)
            return self._exact(query, k, np.fromiter(self._vectors.row_of, np.int64, len(self)))
        return labels[0].astype(np.int64), 1.0 - distances[0]

    def _exact(self, query: np.ndarray, k: int, allowed: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
        best_ids, best_sims = np.zeros(0, np.int64), np.zeros(0, np.float32)
        for start in range(0, len(allowed), _SCAN_BLOCK):  # bounds the float32 copy
            held = [i for i in allowed[start:start + _SCAN_BLOCK].tolist()
                    if i in self._vectors.row_of]
            best_ids = np.concatenate([best_ids, np.array(held, np.int64)])
            best_sims = np.concatenate([best_sims, self._vectors.similarities(held, query)])
            if len(best_ids) > k:
                top = np.argpartition(-best_sims, k - 1)[:k]
                best_ids, best_sims = best_ids[top], best_sims[top]
        order = np.argsort(-best_sims, kind="stable")
        return best_ids[order], best_sims[order]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
