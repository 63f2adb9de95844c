"""Collections: ingest files into a tenant's vector stores and search them.

Ingest: parse -> chunk -> embed (worker threads, off the event loop) -> one database transaction
that replaces the file's chunks and marks it completed -> the in-memory index. A file is
searchable only once that transaction committed; a crash before it leaves the previous state.

Indexes are derived from the chunk table, one per vector store, keyed by the store's `version`:
before a search the index catches up with any change another process (the `conduit ingest`
CLI) committed, and at start-up a saved index is loaded and caught up, or rebuilt from the
stored embeddings when it is missing or damaged (no model runs for that).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conduit.rag.chunk import Chunker, ChunkingOptions
from conduit.rag.document import ParsedDocument, SkipFile
from conduit.rag.filters import Filter
from conduit.rag.index import ChunkIndex
from conduit.rag.parse import parse_bytes
from conduit.rag.rerank import (
    CrossEncoderReranker,
    LexicalDenseReranker,
    Reranker,
    SentenceMaxSimReranker,
    rerank,
)
from conduit.rag.retrieve import Hit, Mode, RetrievalOptions, Retriever
from conduit.rag.snapshot import IndexCorrupt
from conduit.store.collections import CollectionStore, NewChunk, StoredChunk

log = logging.getLogger("conduit.rag")


def document_id(file_id: str) -> int:
    """The index's integer id of a file (56 bits of a hash: collisions are negligible)."""
    return int.from_bytes(hashlib.blake2b(file_id.encode(), digest_size=7).digest(), "big")


@dataclass(frozen=True)
class SearchResult:
    chunk: StoredChunk
    hit: Hit
    filename: str
    attributes: dict


class IngestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Collections:
    def __init__(self, store: CollectionStore, embedder, index_dir: Path,
                 retrieval: RetrievalOptions | None = None, max_file_bytes: int = 50 * 1024 * 1024,
                 reranker: Reranker | None = None, rerank_candidates: int = 30,
                 injection_scorer: Callable[[str], float] | None = None) -> None:
        self.store = store
        self.embedder = embedder
        self.index_dir = index_dir
        self.retrieval = retrieval or RetrievalOptions()
        self.max_file_bytes = max_file_bytes
        self.reranker = reranker
        self.rerank_candidates = rerank_candidates
        # Scores each chunk for hidden instructions (indirect prompt injection) at ingestion;
        # the score is stored with the chunk and retrieval applies the guard policy to it.
        self.injection_scorer = injection_scorer
        self._indexes: dict[str, ChunkIndex] = {}
        self._lock = threading.Lock()  # guards _indexes and catching up
        self._chunkers: dict[str, Chunker] = {}
        self.listeners: list[Callable[[str], object]] = []  # told the id of a store whose content changed

    # -- ingest -------------------------------------------------------------------------------

    def ingest(self, store_id: str, file_id: str, data: bytes, filename: str, chunking: ChunkingOptions) -> int:
        """Parse, chunk, embed and commit one file; returns its chunk count. Blocking: run it in
        a worker thread. Raises IngestError (and records the failure) for a bad file."""
        try:
            document = parse_bytes(data, filename, max_bytes=self.max_file_bytes)
        except SkipFile as exc:
            self.store.fail(store_id, file_id, exc.reason.value, exc.message)
            raise IngestError(exc.reason.value, exc.message) from None
        return self.ingest_document(store_id, file_id, document, chunking)

    def ingest_document(self, store_id: str, file_id: str, document: ParsedDocument, chunking: ChunkingOptions,
                        refresh: bool = True) -> int:
        """Chunk, embed and commit a parsed document. `refresh=False` leaves the index to a later
        `refresh`: a bulk ingest catches up once instead of diffing the whole store after each file."""
        chunks = self._chunker(chunking).chunk(document)
        if not chunks:
            self.store.fail(store_id, file_id, "no_text", "the file has no text to index")
            raise IngestError("no_text", "the file has no text to index")
        vectors = self._embed(file_id, [c.embedding_text for c in chunks])
        scores = [self.injection_scorer(c.text) if self.injection_scorer else None for c in chunks]
        rows = [NewChunk(c.index, c.text, c.embedding_text[:len(c.embedding_text) - len(c.text)], c.token_count,
                         c.section_path, c.page, score) for c, score in zip(chunks, scores)]
        self.store.commit_chunks(store_id, file_id, document.content_hash, rows, vectors)
        if refresh:
            self.refresh(store_id)
        return len(chunks)

    def _embed(self, file_id: str, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts`, reusing those of identical chunks already stored for the file:
        an edited document re-embeds only the chunks that changed."""
        known = self.store.embeddings_by_text(file_id)
        missing = sorted({t for t in texts if t not in known})
        if missing:
            known.update(zip(missing, self.embedder.encode(missing)))
        return np.stack([known[t] for t in texts])

    def _chunker(self, options: ChunkingOptions) -> Chunker:
        key = options.model_dump_json()
        if key not in self._chunkers:
            self._chunkers[key] = Chunker(options)
        return self._chunkers[key]

    # -- indexes ------------------------------------------------------------------------------

    def refresh(self, store_id: str) -> ChunkIndex:
        """The store's index, caught up with the database."""
        version = self.store.versions([store_id]).get(store_id, 0)
        with self._lock:
            index = self._indexes.get(store_id)
            if index is None:
                index = self._load(store_id)
                self._indexes[store_id] = index
            if index.watermark != version:
                changed = index.watermark >= 0  # not the first load of this index
                self._catch_up(store_id, index, version)
                if changed:
                    for listener in self.listeners:
                        listener(store_id)
            return index

    def _load(self, store_id: str) -> ChunkIndex:
        directory = self.index_dir / store_id
        if directory.exists():
            try:
                return ChunkIndex.load(directory)
            except IndexCorrupt as exc:
                log.warning("index of %s is unusable (%s); rebuilding it from the database", store_id, exc)
        return ChunkIndex(self.embedder.dimensions, watermark=-1)

    def _catch_up(self, store_id: str, index: ChunkIndex, version: int) -> None:
        to_add, to_delete = index.diff(self.store.chunk_ids(store_id))
        if len(to_delete):
            index.delete(to_delete.tolist())
        if len(to_add):
            rows = self.store.chunks_for_index(to_add.tolist())
            attributes = self._attributes(store_id, {file_id for _, file_id, _, _ in rows})
            index.add([r[0] for r in rows], np.stack([r[3] for r in rows]), [r[2] for r in rows],
                      [document_id(r[1]) for r in rows], [attributes[r[1]] for r in rows])
        index.watermark = version

    def _attributes(self, store_id: str, file_ids: set[str]) -> dict[str, dict]:
        found = {}
        for row in self.store.store_files(store_id):
            if row.file_id in file_ids:
                found[row.file_id] = {**json.loads(row.attributes_json or "{}"), "file_id": row.file_id}
        return found

    def rebuild(self, store_id: str) -> int:
        """Recreate the store's index from the database; returns its chunk count."""
        with self._lock:
            self._indexes.pop(store_id, None)
            shutil.rmtree(self.index_dir / store_id, ignore_errors=True)
        return len(self.refresh(store_id))

    def forget(self, store_id: str) -> None:
        with self._lock:
            self._indexes.pop(store_id, None)
            shutil.rmtree(self.index_dir / store_id, ignore_errors=True)

    def save(self) -> None:
        with self._lock:
            for store_id, index in self._indexes.items():
                index.save(self.index_dir / store_id)

    # -- search -------------------------------------------------------------------------------

    def search(self, store_ids: Sequence[str], query: str, k: int, filters: Filter | None = None,
               mode: Mode | None = None, query_vector: np.ndarray | None = None) -> list[SearchResult]:
        """The k best chunks over the stores (blocking: run it in a worker thread). `query_vector`:
        the query's embedding, when the caller has it already."""
        vector = query_vector
        if vector is None and (mode or self.retrieval.mode) != "sparse":
            vector = self.embedder.encode([query])[0]
        depth = max(k, self.rerank_candidates) if self.reranker is not None else k
        hits: list[tuple[str, Hit]] = []
        indexes = {store_id: self.refresh(store_id) for store_id in store_ids}
        for store_id, index in indexes.items():
            retriever = Retriever(index, self.embedder, self.retrieval)
            hits += [(store_id, h) for h in retriever.search(query, depth, mode=mode, filters=filters,
                                                             query_vector=vector)]
        hits.sort(key=lambda pair: -pair[1].score)
        hits = hits[:depth]
        chunks = self.store.chunks([h.chunk_id for _, h in hits])
        hits = [(s, h) for s, h in hits if h.chunk_id in chunks]
        if self.reranker is not None and hits:
            order = {h.chunk_id: s for s, h in hits}
            texts = [chunks[h.chunk_id].header + chunks[h.chunk_id].text for _, h in hits]
            hits = [(order[h.chunk_id], h) for h in rerank(self.reranker, query, [h for _, h in hits], texts)]
        hits = hits[:k]
        names = {f.id: f.filename for f in self.store.files_named({c.file_id for c in chunks.values()})}
        return [SearchResult(chunks[h.chunk_id], h, names.get(chunks[h.chunk_id].file_id, ""),
                             _file_attributes(indexes[store_id], h.chunk_id))
                for store_id, h in hits]


def _file_attributes(index: ChunkIndex, chunk_id: int) -> dict:
    """The attributes the chunk's file was attached with, as the index holds them for filtering
    (without the `file_id` the index adds for filters by file)."""
    record = index.attributes.get(chunk_id)
    return {k: v for k, v in record[1].items() if k != "file_id"} if record else {}


class IngestJobs:
    """Files being ingested in the background, a few at a time (the work is CPU-bound).

    A job that a shutdown interrupts leaves its file `in_progress`; `resume` at the next start
    ingests every such file again from its stored bytes, so nothing is lost."""

    def __init__(self, collections: Collections, concurrency: int = 1) -> None:
        self.collections = collections
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()

    def submit(self, store_id: str, file_id: str, filename: str, chunking: ChunkingOptions) -> None:
        task = asyncio.create_task(self._run(store_id, file_id, filename, chunking))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, store_id: str, file_id: str, filename: str, chunking: ChunkingOptions) -> None:
        async with self._slots:
            store = self.collections.store
            try:
                data = await asyncio.to_thread(store.file_bytes, file_id)
                await asyncio.to_thread(self.collections.ingest, store_id, file_id, data, filename, chunking)
            except IngestError as exc:
                log.info("file %s not indexed in %s: %s", file_id, store_id, exc.message)
            except FileNotFoundError:
                await asyncio.to_thread(store.fail, store_id, file_id, "not_found", "the file's content is gone")
            except Exception as exc:  # a bug must fail this file, not the server
                log.exception("ingesting %s into %s failed", file_id, store_id)
                await asyncio.to_thread(store.fail, store_id, file_id, "server_error", str(exc))

    async def resume(self) -> int:
        pending = await asyncio.to_thread(self.collections.store.unfinished)
        for store_id, file_id, filename, chunking in pending:
            self.submit(store_id, file_id, filename, ChunkingOptions.model_validate_json(chunking))
        return len(pending)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def make_reranker(kind: str, embedder, cross_encoder_path: str | None = None) -> Reranker | None:
    """The configured reranker (`rag.rerank`); None for "none"."""
    if kind == "lexical":
        return LexicalDenseReranker()
    if kind == "maxsim":
        return SentenceMaxSimReranker(embedder)
    if kind == "cross_encoder":
        assert cross_encoder_path is not None  # checked by the settings
        return CrossEncoderReranker(cross_encoder_path)
    return None
