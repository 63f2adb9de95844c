"""The request pipeline. Stages run in DESIGN.md's order; today: exact cache lookup -> semantic
cache lookup -> retrieve + assemble prompt -> in-flight de-duplication -> route -> generate ->
citation check -> cache store.

Guards plug in here as their issue lands.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from conduit.backends import Delta, GenerateRequest
from conduit.cache import InflightGroup, cache_key, is_deterministic
from conduit.cache.exact import AnswerStore, CachedAnswer
from conduit.config import CacheSettings
from conduit.errors import APIError
from conduit.pipeline.context import RequestContext
from conduit.pipeline.retrieval import RetrievalStage, annotations
from conduit.routing.dispatch import Dispatcher
from conduit.routing.registry import Registry
from conduit.routing.router import Router

if TYPE_CHECKING:
    from conduit.cache.semantic import SemanticCache
    from conduit.gateway.auth import Principal


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None, cache: CacheSettings | None = None,
                 answers: AnswerStore | None = None, semantic: SemanticCache | None = None,
                 retrieval: RetrievalStage | None = None) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = Dispatcher(registry)
        self.cache_settings = cache or CacheSettings()
        self.answers = answers  # the exact cache; None when it is off
        self.semantic = semantic
        self.retrieval = retrieval
        self.inflight = InflightGroup()

    def models(self, principal: Principal | None) -> list[str]:
        """The model ids this caller may send: the router's name first, if there is one."""
        names = self.registry.visible(principal)
        if self.router is not None and all(self.registry.allowed(principal, t) for t in self.router.settings.tiers):
            names.insert(0, self.router.name)
        return names

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        spec = ctx.retrieval
        scope = None
        if spec is not None:
            if self.retrieval is None:
                raise APIError(400, "Retrieval is not available on this server.", param="retrieval")
            scope = {"retrieval": spec.model_dump(), "versions": await self.retrieval.versions(ctx, spec)}
        cacheable = self._cacheable(request)
        key = self._exact_key(ctx, request, stream, scope) if cacheable else None
        question = _question(request) if cacheable and self.semantic is not None else None
        namespace = _namespace(ctx, request, scope) if question is not None else ""
        if ctx.cache_control != "no-cache":
            hit = await self._lookup(key, namespace, question)
            if hit is not None:
                ctx.cache, answer = hit
                ctx.model, ctx.annotations = answer.model, answer.annotations
                ctx.note_route("cache")
                for delta in answer.deltas:
                    ctx.observe(delta)
                    yield delta
                return
        grounding = None
        if spec is not None and self.retrieval is not None:
            request, grounding = await self.retrieval.prepare(ctx, request, spec)
            if grounding.not_found is not None:
                ctx.model, ctx.annotations = request.model, annotations(None, grounding)
                ctx.note_route("not_found")
                answer = Delta(grounding.not_found, 0, 0, "stop")
                ctx.observe(answer)
                yield answer
                return
        leader = True
        if key is not None and self.cache_settings.deduplicate:
            leader = not self.inflight.joined(key)
            if not leader:
                ctx.model = request.model
                ctx.note_route("deduplicated")
            deltas = self.inflight.run(key, lambda: self._route(ctx, request, stream))
        else:
            deltas = self._route(ctx, request, stream)
        produced: list[Delta] = []
        try:
            async for delta in deltas:
                ctx.observe(delta)
                produced.append(delta)
                yield delta
        finally:
            await deltas.aclose()
        if grounding is not None and self.retrieval is not None:
            text = "".join(d.text for d in produced if d.index == 0)
            report = None if grounding.skipped else self.retrieval.check(grounding, text)
            ctx.annotations = annotations(report, grounding)
        if leader and ctx.cache_control != "no-store":
            answer = CachedAnswer(tuple(produced), ctx.model, ctx.annotations)
            if key is not None and self.answers is not None:
                await self.answers.put(key, answer)
            if question is not None and self.semantic is not None:
                read = frozenset(spec.vector_store_ids) if spec is not None else frozenset()
                await self.semantic.store(namespace, question, answer, read)

    async def _lookup(self, key: str | None, namespace: str, question: str | None) -> tuple[str, CachedAnswer] | None:
        if key is not None and self.answers is not None:
            answer = await self.answers.get(key)
            if answer is not None:
                return "hit", answer
        if question is not None and self.semantic is not None:
            similar = await self.semantic.lookup(namespace, question)
            if similar is not None:
                return "semantic-hit", similar.answer  # type: ignore[return-value]
        return None

    def _cacheable(self, request: GenerateRequest) -> bool:
        if self.answers is None and self.semantic is None and not self.cache_settings.deduplicate:
            return False
        return is_deterministic(request) or not self.cache_settings.exact.only_deterministic

    def _exact_key(self, ctx: RequestContext, request: GenerateRequest, stream: bool, scope: dict | None) -> str:
        tenant = ctx.principal.tenant_id if ctx.principal else None
        return cache_key(tenant, request, stream, scope)

    def _route(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        if self.router is not None and request.model == self.router.name:
            return self.router.generate(ctx, request, stream, self.dispatcher)
        ctx.note_route("direct")
        return self.dispatcher.generate(ctx, request, stream)


def _question(request: GenerateRequest) -> str | None:
    """The user's question, when the chat is a single question (system messages aside): in a longer
    conversation the same words can mean something else, so those are left to the exact cache."""
    if request.messages is None or request.sampling.n != 1 or request.logprobs:
        return None
    turns = [m for m in request.messages if m.get("role") != "system"]
    if len(turns) != 1 or turns[0].get("role") != "user" or not isinstance(turns[0].get("content"), str):
        return None
    return turns[0]["content"]


def _namespace(ctx: RequestContext, request: GenerateRequest, scope: dict | None) -> str:
    """Everything but the question that can change the answer: only questions asked in the same
    namespace are compared (retrieval settings and collection versions included)."""
    system = [m.get("content") for m in request.messages or [] if m.get("role") == "system"]
    tenant = ctx.principal.tenant_id if ctx.principal else None
    blob = json.dumps({"tenant": tenant, "model": request.model, "system": system, "scope": scope,
                       "sampling": asdict(request.sampling)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
