"""Files, vector stores and chunks: the source of truth retrieval indexes are derived from.

Every query is scoped by tenant (the admin key, tenant None, sees only what it created itself).
A file's chunks are replaced in one transaction together with its status and the store's
`version`, so a crash mid-ingest leaves either the old chunks or the new ones, never half.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Select, delete, func, select, update

from conduit.store.db import Database
from conduit.store.tables import ChunkRow, StoredFile, VectorStore, VectorStoreFile


@dataclass(frozen=True)
class NewChunk:
    position: int
    text: str
    header: str
    token_count: int
    section_path: tuple[str, ...]
    page: int | None
    injection_score: float | None = None  # the prompt-injection detector's, at ingestion


@dataclass(frozen=True)
class StoredChunk:
    id: int
    vector_store_id: str
    file_id: str
    position: int
    text: str
    header: str
    section_path: tuple[str, ...]
    page: int | None
    injection_score: float | None = None


class CollectionStore:
    def __init__(self, db: Database, files_dir: Path) -> None:
        self.db = db
        self.files_dir = files_dir

    # -- files --------------------------------------------------------------------------------

    def save_file(self, tenant_id: str | None, filename: str, data: bytes, purpose: str, content_hash: str) -> StoredFile:
        file_id = f"file-{secrets.token_hex(12)}"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        partial = self.files_dir / f".{file_id}.part"
        partial.write_bytes(data)
        os.replace(partial, self.files_dir / file_id)  # the bytes are whole before the row exists
        with self.db.session() as session:
            row = StoredFile(id=file_id, tenant_id=tenant_id, filename=filename, bytes=len(data), purpose=purpose,
                             content_hash=content_hash, created_at=datetime.now(UTC))
            session.add(row)
            session.flush()
            session.expunge(row)
        return row

    def replace_bytes(self, file_id: str, data: bytes, content_hash: str) -> None:
        """New content for a file (a re-ingested path that changed); its chunks change at commit."""
        partial = self.files_dir / f".{file_id}.part"
        partial.write_bytes(data)
        os.replace(partial, self.files_dir / file_id)
        with self.db.session() as session:
            session.execute(update(StoredFile).where(StoredFile.id == file_id)
                            .values(bytes=len(data), content_hash=content_hash))

    def _all(self, query: Select) -> list:
        """Every row of `query`, detached so that they outlive the session."""
        with self.db.session() as session:
            rows = list(session.scalars(query))
            session.expunge_all()
            return rows

    def _one(self, query: Select) -> Any:
        """The first row of `query` (a select of one mapped class), detached so that it outlives
        the session."""
        with self.db.session() as session:
            row = session.scalar(query)
            if row is not None:
                session.expunge(row)
            return row

    def file(self, tenant_id: str | None, file_id: str) -> StoredFile | None:
        return self._one(select(StoredFile).where(StoredFile.id == file_id, _owned(StoredFile, tenant_id)))

    def file_bytes(self, file_id: str) -> bytes:
        return (self.files_dir / file_id).read_bytes()

    def files_named(self, file_ids: set[str]) -> list[StoredFile]:
        return self._all(select(StoredFile).where(StoredFile.id.in_(file_ids)))

    def files(self, tenant_id: str | None) -> list[StoredFile]:
        return self._all(select(StoredFile).where(_owned(StoredFile, tenant_id)).order_by(StoredFile.created_at.desc()))

    def delete_file(self, tenant_id: str | None, file_id: str) -> list[str]:
        """Delete a file everywhere; returns the vector stores it was removed from."""
        with self.db.session() as session:
            stores = list(session.scalars(select(VectorStoreFile.vector_store_id)
                                          .where(VectorStoreFile.file_id == file_id)))
            for store_id in stores:
                _remove_from_store(session, store_id, file_id)
            session.execute(delete(StoredFile).where(StoredFile.id == file_id, _owned(StoredFile, tenant_id)))
        (self.files_dir / file_id).unlink(missing_ok=True)
        return stores

    # -- vector stores ------------------------------------------------------------------------

    def create_store(self, tenant_id: str | None, name: str | None, chunking: dict, metadata: dict | None) -> VectorStore:
        with self.db.session() as session:
            row = VectorStore(id=f"vs_{secrets.token_hex(12)}", tenant_id=tenant_id, name=name,
                              chunking=json.dumps(chunking), metadata_json=json.dumps(metadata or {}), version=0,
                              created_at=datetime.now(UTC))
            session.add(row)
            session.flush()
            session.expunge(row)
        return row

    def store(self, tenant_id: str | None, store_id: str) -> VectorStore | None:
        return self._one(select(VectorStore).where(VectorStore.id == store_id, _owned(VectorStore, tenant_id)))

    def store_by_name(self, tenant_id: str | None, name: str) -> VectorStore | None:
        return self._one(select(VectorStore).where(VectorStore.name == name, _owned(VectorStore, tenant_id))
                         .order_by(VectorStore.created_at))

    def stores(self, tenant_id: str | None) -> list[VectorStore]:
        return self._all(select(VectorStore).where(_owned(VectorStore, tenant_id))
                         .order_by(VectorStore.created_at.desc()))

    def all_stores(self) -> list[tuple[str, str | None]]:
        """(id, name) of every tenant's stores: for maintenance commands only."""
        with self.db.session() as session:
            return [tuple(r) for r in session.execute(select(VectorStore.id, VectorStore.name))]  # type: ignore[misc]

    def versions(self, store_ids: Sequence[str]) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(VectorStore.id, VectorStore.version).where(VectorStore.id.in_(store_ids)))
            return {store_id: version for store_id, version in rows}

    def delete_store(self, store_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(ChunkRow).where(ChunkRow.vector_store_id == store_id))
            session.execute(delete(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id))
            session.execute(delete(VectorStore).where(VectorStore.id == store_id))

    # -- a store's files ----------------------------------------------------------------------

    def attach(self, store_id: str, file_id: str, attributes: dict | None, source: str | None = None) -> VectorStoreFile:
        """Add a file to a store as in_progress (again, if it was there: its chunks stay until replaced)."""
        with self.db.session() as session:
            row = session.get(VectorStoreFile, (store_id, file_id))
            if row is None:
                row = VectorStoreFile(vector_store_id=store_id, file_id=file_id, usage_bytes=0,
                                      created_at=datetime.now(UTC))
                session.add(row)
            row.status, row.error_code, row.error_message = "in_progress", None, None
            row.attributes_json = json.dumps(attributes or {})
            row.source = source
            session.flush()
            session.expunge(row)
        return row

    def store_file(self, store_id: str, file_id: str) -> VectorStoreFile | None:
        return self._one(select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id,
                                                       VectorStoreFile.file_id == file_id))

    def store_files(self, store_id: str) -> list[VectorStoreFile]:
        return self._all(select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id)
                         .order_by(VectorStoreFile.created_at.desc()))

    def file_by_source(self, store_id: str, source: str) -> VectorStoreFile | None:
        return self._one(select(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id,
                                                       VectorStoreFile.source == source))

    def unfinished(self) -> list[tuple[str, str, str, str]]:
        """(store id, file id, filename, chunking JSON) of every file still in_progress."""
        with self.db.session() as session:
            rows = session.execute(
                select(VectorStoreFile.vector_store_id, VectorStoreFile.file_id, StoredFile.filename, VectorStore.chunking)
                .join(StoredFile, StoredFile.id == VectorStoreFile.file_id)
                .join(VectorStore, VectorStore.id == VectorStoreFile.vector_store_id)
                .where(VectorStoreFile.status == "in_progress"))
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def commit_chunks(self, store_id: str, file_id: str, content_hash: str, chunks: Sequence[NewChunk],
                      embeddings: np.ndarray) -> None:
        """Replace the file's chunks in the store and mark it completed, all in one transaction."""
        with self.db.session() as session:
            session.execute(delete(ChunkRow).where(ChunkRow.vector_store_id == store_id, ChunkRow.file_id == file_id))
            session.add_all([
                ChunkRow(vector_store_id=store_id, file_id=file_id, position=c.position, text=c.text, header=c.header,
                         token_count=c.token_count, section_path=json.dumps(list(c.section_path)), page=c.page,
                         injection_score=c.injection_score, embedding=np.asarray(vector, dtype=np.float32).tobytes())
                for c, vector in zip(chunks, embeddings)])
            session.execute(update(VectorStoreFile)
                            .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)
                            .values(status="completed", content_hash=content_hash,
                                    usage_bytes=sum(len(c.text.encode()) for c in chunks)))
            _bump(session, store_id)

    def fail(self, store_id: str, file_id: str, code: str, message: str) -> None:
        with self.db.session() as session:
            session.execute(update(VectorStoreFile)
                            .where(VectorStoreFile.vector_store_id == store_id, VectorStoreFile.file_id == file_id)
                            .values(status="failed", error_code=code, error_message=message[:2000]))

    def detach(self, store_id: str, file_id: str) -> bool:
        with self.db.session() as session:
            return _remove_from_store(session, store_id, file_id)

    # -- chunks -------------------------------------------------------------------------------

    def chunk_ids(self, store_id: str) -> np.ndarray:
        with self.db.session() as session:
            ids = session.scalars(select(ChunkRow.id).where(ChunkRow.vector_store_id == store_id))
            return np.fromiter(ids, dtype=np.int64)

    def chunks_for_index(self, ids: Sequence[int]) -> list[tuple[int, str, str, np.ndarray]]:
        """(id, file id, header + text, embedding) of these chunks."""
        found = []
        with self.db.session() as session:
            for start in range(0, len(ids), 900):  # SQLite's limit on bound parameters
                rows = session.execute(select(ChunkRow.id, ChunkRow.file_id, ChunkRow.header, ChunkRow.text,
                                              ChunkRow.embedding).where(ChunkRow.id.in_(list(ids[start:start + 900]))))
                found += [(i, f, h + t, np.frombuffer(e, dtype=np.float32)) for i, f, h, t, e in rows]
        return found

    def embeddings_by_text(self, file_id: str) -> dict[str, np.ndarray]:
        """The stored embeddings of a file's chunks, by the text that was embedded (header + text)."""
        with self.db.session() as session:
            rows = session.execute(select(ChunkRow.header, ChunkRow.text, ChunkRow.embedding)
                                   .where(ChunkRow.file_id == file_id))
            return {h + t: np.frombuffer(e, dtype=np.float32) for h, t, e in rows}

    def chunk_texts(self, store_id: str, unscored_only: bool = False) -> list[tuple[int, str]]:
        """(id, text) of the store's chunks; with `unscored_only`, of those without an injection score."""
        query = select(ChunkRow.id, ChunkRow.text).where(ChunkRow.vector_store_id == store_id)
        if unscored_only:
            query = query.where(ChunkRow.injection_score.is_(None))
        with self.db.session() as session:
            return [(i, t) for i, t in session.execute(query.order_by(ChunkRow.id))]

    def set_injection_scores(self, scores: dict[int, float]) -> None:
        if scores:  # one UPDATE by primary key, executed for every row, in one transaction
            with self.db.session() as session:
                session.execute(update(ChunkRow), [{"id": i, "injection_score": s} for i, s in scores.items()])

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        with self.db.session() as session:
            rows = session.scalars(select(ChunkRow).where(ChunkRow.id.in_(list(ids))))
            return {r.id: StoredChunk(r.id, r.vector_store_id, r.file_id, r.position, r.text, r.header,
                                      tuple(json.loads(r.section_path)), r.page, r.injection_score) for r in rows}

    def chunk_counts(self, store_id: str) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(ChunkRow.file_id, func.count()).where(ChunkRow.vector_store_id == store_id)
                                   .group_by(ChunkRow.file_id))
            return dict(rows.all())


def _owned(table: type[StoredFile] | type[VectorStore], tenant_id: str | None):  # noqa: ANN202 - a SQL condition
    return table.tenant_id.is_(None) if tenant_id is None else table.tenant_id == tenant_id


def _bump(session, store_id: str) -> None:  # noqa: ANN001 - a Session
    session.execute(update(VectorStore).where(VectorStore.id == store_id).values(version=VectorStore.version + 1))


def _remove_from_store(session, store_id: str, file_id: str) -> bool:  # noqa: ANN001 - a Session
    removed = session.execute(delete(VectorStoreFile).where(VectorStoreFile.vector_store_id == store_id,
                                                            VectorStoreFile.file_id == file_id)).rowcount
    session.execute(delete(ChunkRow).where(ChunkRow.vector_store_id == store_id, ChunkRow.file_id == file_id))
    _bump(session, store_id)
    return bool(removed)
