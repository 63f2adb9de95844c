"""The relational schema. Alembic migrations in `migrations/` create and evolve it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    """A tenant's key. Only a SHA-256 of the secret is stored; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    hint: Mapped[str] = mapped_column(String(16), doc="Last characters of the secret, for display.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str | None] = mapped_column(String(8), doc="day | week | month")


class RequestLog(Base):
    """One row per API request, written in batches off the hot path."""

    __tablename__ = "request_log"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    key_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32), doc="ok | error | client_disconnected")
    http_status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_id: Mapped[str | None] = mapped_column(String(40))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    deployment: Mapped[str | None] = mapped_column(String(200))
    route: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int | None] = mapped_column(Integer)
    cache: Mapped[str | None] = mapped_column(String(16))
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    guard: Mapped[str | None] = mapped_column(String(200), doc="Guard verdicts, as in x-conduit-guard.")
    tpot_ms: Mapped[float | None] = mapped_column(Float, doc="Time per output token after the first (streams).")
    prompt_version: Mapped[str | None] = mapped_column(String(64))


class RequestTrace(Base):
    """What a request did, stage by stage (redacted JSON), kept for the retention period."""

    __tablename__ = "request_traces"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, doc="The request's id.")
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    body: Mapped[str] = mapped_column(Text)


class Feedback(Base):
    """A user's thumbs up or down on one answer."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    rating: Mapped[str] = mapped_column(String(8), doc="up | down")
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StoredFile(Base):
    """An uploaded file (OpenAI's `file` object); its bytes live in `data_dir/files/<id>`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    bytes: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(32))
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VectorStore(Base):
    """A tenant's collection of documents. `version` grows with every change to its chunks:
    caches that read the collection key on it, and indexes catch up to it."""

    __tablename__ = "vector_stores"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    name: Mapped[str | None] = mapped_column(String(500))
    chunking: Mapped[str] = mapped_column(Text, doc="ChunkingOptions as JSON")
    metadata_json: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VectorStoreFile(Base):
    """A file in a vector store: its ingestion status and the attributes its chunks are filtered by."""

    __tablename__ = "vector_store_files"

    vector_store_id: Mapped[str] = mapped_column(ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), doc="in_progress | completed | failed | cancelled")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    attributes_json: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(1000), doc="The path it was ingested from (CLI).")
    content_hash: Mapped[str | None] = mapped_column(String(64))
    usage_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChunkRow(Base):
    """A chunk of a file in a vector store, with its embedding: the source of truth the indexes
    are derived from (rebuilding them needs no model)."""

    __tablename__ = "chunks"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused: indexes know chunks by id

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(String(40), index=True)
    file_id: Mapped[str] = mapped_column(String(40), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    header: Mapped[str] = mapped_column(Text, doc="The section-path line embedded before the text.")
    token_count: Mapped[int] = mapped_column(Integer)
    section_path: Mapped[str] = mapped_column(Text, doc="JSON list: title > heading > subheading")
    page: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary, doc="float32, L2-normalised")
    injection_score: Mapped[float | None] = mapped_column(Float, doc="Prompt-injection score at ingestion.")
