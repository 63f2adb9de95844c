"""The chunk index: dense vectors, BM25 postings and filter attributes of every chunk, kept
together under the database's chunk ids.

The database's chunk table is the source of truth; this index is derived from it and can be
rebuilt from it at any time. Recovering after a crash, or at start-up:

    try:
        index = ChunkIndex.load(directory)       # IndexCorrupt: missing or half-written
    except IndexCorrupt:
        index = ChunkIndex()                     # then add every chunk from the database
    to_add, to_delete = index.diff(chunk_ids_in_database)
    index.delete(to_delete); index.add(<the to_add chunks, from the database>)

`diff` compares id sets, so it also catches changes made after the last save; `watermark`
is an integer the caller may keep with the index (say, the highest chunk id or change
sequence it has applied) to find what is new without listing every id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from conduit.rag.dense import DenseIndex
from conduit.rag.filters import AttributeStore, Scalar
from conduit.rag.snapshot import IndexCorrupt
from conduit.rag.sparse import SparseIndex, Tokenizer


class ChunkIndex:
    """Add, replace and delete chunks; save and load them as one directory. Thread-safe:
    writers are serialised here, searches go straight to the parts (see retrieve.py)."""

    def __init__(self, dim: int = 384, tokenizer: Tokenizer | None = None,
                 dense: DenseIndex | None = None, sparse: SparseIndex | None = None,
                 attributes: AttributeStore | None = None, watermark: int = 0) -> None:
        self.dense = dense or DenseIndex(dim)
        self.sparse = sparse or SparseIndex(tokenizer)
        self.attributes = attributes or AttributeStore()
        self.watermark = watermark
        self._write_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.attributes)

    def ids(self) -> np.ndarray:
        """Sorted chunk ids held (those in all three parts)."""
        dense, sparse = self.dense.ids(), self.sparse.ids()
        return np.intersect1d(np.intersect1d(dense, sparse), self.attributes.matching_ids())

    def diff(self, source_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids to add, ids to delete) to make this index hold exactly `source_ids`."""
        source = np.unique(np.fromiter(source_ids, np.int64))
        anywhere = np.union1d(np.union1d(self.dense.ids(), self.sparse.ids()),
                              self.attributes.matching_ids())
        # A chunk missing from any part is re-added whole (add replaces the other parts).
        return np.setdiff1d(source, self.ids()), np.setdiff1d(anywhere, source)

    def add(self, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str],
            document_ids: Sequence[int],
            attributes: Sequence[Mapping[str, Scalar] | None] | None = None) -> None:
        """Index chunks; an id already present is replaced everywhere."""
        if not len(ids) == len(vectors) == len(texts) == len(document_ids):
            raise ValueError("ids, vectors, texts and document_ids differ in length")
        attributes = attributes if attributes is not None else [None] * len(ids)
        with self._write_lock:
            # Attributes first: a chunk that search can find always has its filter data.
            self.attributes.add(ids, document_ids, attributes)
            self.sparse.add(ids, texts)
            self.dense.add(ids, vectors)

    def delete(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        with self._write_lock:
            self.dense.delete(ids)
            self.sparse.delete(ids)
            self.attributes.delete(ids)

    def delete_documents(self, document_ids: Iterable[int]) -> np.ndarray:
        """Delete every chunk of these documents; returns their ids."""
        ids = self.attributes.matching_ids(document_ids=document_ids)
        self.delete(ids.tolist())
        return ids

    def save(self, directory: str | Path) -> None:
        """Write all three parts under one generation stamp, so that `load` can tell a
        complete save from parts of different saves."""
        directory = Path(directory)
        with self._write_lock:
            meta = {"generation": uuid.uuid4().hex, "watermark": self.watermark}
            self.attributes.save(directory / "attributes", **meta)
            self.sparse.save(directory / "sparse", **meta)
            self.dense.save(directory / "dense", **meta)

    @classmethod
    def load(cls, directory: str | Path, tokenizer: Tokenizer | None = None) -> ChunkIndex:
        """Raises `IndexCorrupt` unless all parts are complete and from the same save."""
        directory = Path(directory)
        try:
            attributes = AttributeStore.load(directory / "attributes")
            sparse = SparseIndex.load(directory / "sparse", tokenizer)
            dense = DenseIndex.load(directory / "dense")
        except (OSError, ValueError, KeyError) as e:  # listed files that do not parse
            raise IndexCorrupt(f"{directory}: {e}") from e
        parts = (attributes.saved_meta, sparse.saved_meta, dense.saved_meta)
        if len({(p["generation"], p["count"]) for p in parts}) != 1:
            raise IndexCorrupt(f"{directory}: its parts come from different saves")
        return cls(dense.dim, dense=dense, sparse=sparse, attributes=attributes,
                   watermark=int(attributes.saved_meta["watermark"]))
