"""The retrieve -> assemble-prompt stage, and the citation check after generation.

A chat request opts in with the extension field `retrieval` (the SDK's `extra_body`). The
stage searches the tenant's vector stores for the last user message, answers a configurable
"not found" message without any model call when the best match is too weak, and otherwise
rewrites the messages: sources numbered [1]..[N] in the system message, history trimmed to
the model's context. After generation the answer's citations are checked against the sources.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from conduit.backends import GenerateRequest
from conduit.config import RagSettings
from conduit.errors import APIError
from conduit.pipeline.context import RequestContext
from conduit.rag.citations import CitationReport, check_citations
from conduit.rag.context import Passage, Source, assemble, best_score, message_text
from conduit.rag.service import Collections
from conduit.rag.trigger import needs_retrieval
from conduit.routing.registry import Registry
from conduit.safety.policy import DocumentGuard

if TYPE_CHECKING:
    from conduit.observability.drift import DriftMonitor

DEFAULT_CONTEXT = 8192  # for upstream models whose context length is not configured


class RetrievalSpec(BaseModel):
    """The request's `retrieval` field; unset keys take the `rag` configuration's values."""

    model_config = ConfigDict(extra="forbid")

    vector_store_ids: list[str] = Field(min_length=1, max_length=10)
    top_k: int | None = Field(None, ge=1, le=50)
    mode: Literal["hybrid", "dense", "sparse"] | None = None
    filters: dict | None = None
    trigger: Literal["always", "auto", "never"] | None = None
    min_score: float | None = Field(None, ge=0, le=1)
    not_found_message: str | None = None


@dataclass
class Grounding:
    """What retrieval did for one request."""

    passages: list[Passage]
    not_found: str | None = None  # the answer to give instead of calling a model
    skipped: str | None = None  # why retrieval did not run: "trigger" (chit-chat)
    flagged: list[int] = field(default_factory=list)  # chunk ids scored as injections at ingestion
    dropped: bool = False  # and left out of the prompt


class RetrievalStage:
    def __init__(self, collections: Collections, settings: RagSettings, registry: Registry,
                 drift: DriftMonitor | None = None) -> None:
        self.collections = collections
        self.settings = settings
        self.registry = registry
        self.drift = drift  # fed each query's embedding and best score

    async def versions(self, ctx: RequestContext, spec: RetrievalSpec) -> dict[str, int]:
        """The stores' versions (for cache keys), after checking that the caller owns them."""
        tenant = ctx.principal.tenant_id if ctx.principal else None
        store = self.collections.store
        for store_id in spec.vector_store_ids:
            if await asyncio.to_thread(store.store, tenant, store_id) is None:
                raise APIError(404, f"No vector store found with id '{store_id}'.", param="retrieval.vector_store_ids",
                               code="not_found")
        return await asyncio.to_thread(store.versions, spec.vector_store_ids)

    async def prepare(self, ctx: RequestContext, request: GenerateRequest, spec: RetrievalSpec,
                      documents: DocumentGuard | None = None,
                      threshold: float = 1.0) -> tuple[GenerateRequest, Grounding]:
        """`documents`: the guard policy for chunks flagged as injections (score >= threshold)."""
        messages = request.messages or []
        question = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
        trigger = spec.trigger or self.settings.trigger
        if trigger == "never" or (trigger == "auto" and not needs_retrieval(question)):
            return request, Grounding([], skipped="trigger")
        mode, top_k = spec.mode or self.settings.mode, spec.top_k or self.settings.top_k
        ctx.query = question
        with ctx.stage("retrieve", mode=mode, top_k=top_k, vector_stores=list(spec.vector_store_ids)) as stage:
            results, vector = await asyncio.to_thread(self._search, spec, question, top_k, mode)
            sources = [Source.from_result(r) for r in results]
            stage.attributes.update(chunks=len(sources), best_score=round(best_score(sources), 4))
        ctx.retrieved = [_chunk_trace(s) for s in sources]
        if self.drift is not None and vector is not None:
            for store_id in spec.vector_store_ids:
                self.drift.observe(store_id, request.model, vector, best_score(sources) if sources else None)
        flagged = [] if documents is None or documents.action == "allow" else [
            s.chunk_id for s in sources if s.injection_score is not None and s.injection_score >= threshold]
        drop = bool(flagged) and documents is not None and documents.action == "drop"
        if drop:
            sources = [s for s in sources if s.chunk_id not in flagged]
        if not sources or best_score(sources) < (spec.min_score if spec.min_score is not None else self.settings.min_score):
            return request, Grounding([], not_found=spec.not_found_message or self.settings.not_found_message,
                                      flagged=flagged, dropped=drop)
        budget = self.registry.context_length(request.model) or DEFAULT_CONTEXT
        reserve = min(request.sampling.max_tokens or self.settings.reserve_for_answer, budget // 2)
        with ctx.stage("assemble", budget_tokens=budget) as stage:
            assembled = await asyncio.to_thread(assemble, messages, sources, budget_tokens=budget,
                                                count_tokens=lambda text: self._count(request.model, text),
                                                reserve_for_answer=reserve)
            stage.attributes.update(passages=len(assembled.passages), prompt_tokens=assembled.prompt_tokens,
                                    dropped_passages=assembled.dropped_passages)
        numbers = {source.chunk_id: p.number for p in assembled.passages for source in p.sources}
        for chunk in ctx.retrieved:
            chunk["index"] = numbers.get(chunk["chunk_id"])
        if not assembled.passages:
            return request, Grounding([], not_found=spec.not_found_message or self.settings.not_found_message)
        return replace(request, messages=assembled.messages), Grounding(assembled.passages, flagged=flagged,
                                                                        dropped=drop)

    def _search(self, spec: RetrievalSpec, question: str, top_k: int, mode: str) -> tuple[list, np.ndarray | None]:
        """The search, and the query's embedding for drift monitoring (computed once for both)."""
        vector = None
        if mode != "sparse":
            vector = self.collections.embedder.encode([question])[0]
        results = self.collections.search(spec.vector_store_ids, question, top_k, spec.filters, mode,
                                          query_vector=vector)
        return results, vector

    def check(self, grounding: Grounding, answer: str) -> CitationReport:
        return check_citations(answer, grounding.passages, threshold=self.settings.support_threshold)

    def _count(self, model: str, text: str) -> int:
        return self.registry.count_prompt_tokens(GenerateRequest(model=model, prompt=text))


def _chunk_trace(source: Source) -> dict:
    """A retrieved chunk as the request's trace keeps it; `index` is its source number in the
    prompt (None when it did not fit)."""
    return {"index": None, "chunk_id": source.chunk_id, "file_id": source.file_id, "title": source.filename,
            "section": " > ".join(source.section_path), "page": source.page, "score": round(source.score, 4),
            "text": source.text}


def annotations(report: CitationReport | None, grounding: Grounding) -> dict:
    """The response's extension fields: `citations` and the check of each cited sentence."""
    extra = _warnings(grounding)
    if grounding.not_found is not None:
        return {"citations": [], "retrieval": {"status": "not_found", **extra}}
    if grounding.skipped is not None:
        return {"citations": [], "retrieval": {"status": "skipped", "reason": grounding.skipped}}
    if report is None:  # the grounding guard replaced the answer
        return {"citations": [], "retrieval": {"status": "fallback", "passages": len(grounding.passages), **extra}}
    # "_answer": the text with citations of missing sources removed, for non-streamed responses.
    return {"_answer": report.text, "citations": report.citations,
            "retrieval": {"status": "grounded", "passages": len(grounding.passages),
                          "unsupported_sentences": [s.text for s in report.unsupported],
                          "removed_citations": report.removed_markers,
                          "sentences": [s.to_dict() for s in report.sentences], **extra}}


def _warnings(grounding: Grounding) -> dict:
    """Retrieved chunks that read like instructions to the model (indirect prompt injection)."""
    if not grounding.flagged:
        return {}
    what = "left out of the prompt" if grounding.dropped else "kept in the prompt"
    return {"warnings": [{"code": "injection_in_documents", "chunk_ids": grounding.flagged,
                          "message": f"{len(grounding.flagged)} retrieved chunk(s) look like prompt injections; "
                                     f"{what}."}]}
