"""Request bodies of the files, vector-store and embeddings endpoints, in OpenAI's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conduit.rag.chunk import MODEL_MAX_TOKENS, SPECIAL_TOKENS, ChunkingOptions

MAX_CHUNK_TOKENS = MODEL_MAX_TOKENS - SPECIAL_TOKENS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StaticChunking(_Strict):
    max_chunk_size_tokens: int = Field(200, ge=16, le=MAX_CHUNK_TOKENS,
                                       description="At most the embedding model's input size.")
    chunk_overlap_tokens: int = Field(30, ge=0)

    @model_validator(mode="after")
    def _overlap_at_most_half(self) -> StaticChunking:
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens // 2:
            raise ValueError("chunk_overlap_tokens must not exceed half of max_chunk_size_tokens")
        return self


class ChunkingStrategy(_Strict):
    """`auto` (structure-aware, 200 tokens, 30 overlap), `static` (OpenAI's sizes), or
    `conduit` with every option of ChunkingOptions."""

    type: Literal["auto", "static", "conduit"] = "auto"
    static: StaticChunking | None = None
    conduit: ChunkingOptions | None = None

    def options(self) -> ChunkingOptions:
        if self.type == "static":
            static = self.static or StaticChunking()
            return ChunkingOptions(chunk_size=static.max_chunk_size_tokens, chunk_overlap=static.chunk_overlap_tokens)
        if self.type == "conduit":
            return self.conduit or ChunkingOptions()
        return ChunkingOptions()


class CreateVectorStore(_Strict):
    name: str | None = Field(None, max_length=500)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    chunking_strategy: ChunkingStrategy | None = None
    expires_after: dict[str, Any] | None = None  # accepted for compatibility; stores do not expire here


class AttachFile(_Strict):
    file_id: str
    attributes: dict[str, str | int | float | bool] | None = Field(None, max_length=16)


class RankingOptions(_Strict):
    ranker: Literal["auto", "default-2024-11-15", "none", "hybrid", "dense", "sparse"] = "auto"
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class SearchRequest(_Strict):
    query: str | list[str]
    filters: dict[str, Any] | None = None
    max_num_results: int = Field(10, ge=1, le=50)
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False

    @property
    def text(self) -> str:
        return self.query if isinstance(self.query, str) else " ".join(self.query)


class EmbeddingsRequest(_Strict):
    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
