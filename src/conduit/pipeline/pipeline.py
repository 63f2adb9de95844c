"""The request pipeline. Stages run in DESIGN.md's order: input guards -> exact cache lookup ->
semantic cache lookup -> retrieve + assemble prompt -> in-flight de-duplication -> route ->
generate (+ response_format validation) -> output guards (canary, PII, grounding) -> citation
check -> cache store -> placeholders of redacted PII restored for this request.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conduit.backends import Delta, GenerateRequest
from conduit.cache import InflightGroup, cache_key, is_deterministic
from conduit.cache.exact import AnswerStore, CachedAnswer
from conduit.config import CacheSettings
from conduit.errors import APIError
from conduit.pipeline.context import RequestContext, Stage
from conduit.pipeline.guards import Guards, Screening, refusal
from conduit.pipeline.retrieval import Grounding, RetrievalStage, annotations
from conduit.rag.citations import grounded_share
from conduit.routing.dispatch import Dispatcher
from conduit.routing.registry import Registry
from conduit.routing.router import Router
from conduit.safety.pii import StreamRestorer

if TYPE_CHECKING:
    from conduit.cache.semantic import SemanticCache
    from conduit.gateway.auth import Principal
    from conduit.safety.policy import DocumentGuard, GuardPolicy


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None, cache: CacheSettings | None = None,
                 answers: AnswerStore | None = None, semantic: SemanticCache | None = None,
                 retrieval: RetrievalStage | None = None, guards: Guards | None = None) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = Dispatcher(registry)
        self.cache_settings = cache or CacheSettings()
        self.answers = answers  # the exact cache; None when it is off
        self.semantic = semantic
        self.retrieval = retrieval
        self.guards = guards
        self.inflight = InflightGroup()

    def models(self, principal: Principal | None) -> list[str]:
        """The model ids this caller may send: the router's name first, if there is one."""
        names = self.registry.visible(principal)
        if self.router is not None and all(self.registry.allowed(principal, t) for t in self.router.settings.tiers):
            names.insert(0, self.router.name)
        return names

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        policy = self.guards.policy(ctx, request.model) if self.guards is not None else None
        screening = Screening(request)
        if policy is not None and self.guards is not None:
            with ctx.stage("input_guards") as stage:
                screening = await self.guards.screen_input(ctx, request, policy)
                stage.attributes.update(ctx.guards)
            if screening.refused:
                ctx.model = request.model
                ctx.note_route("guard")
                answer = refusal(policy)
                ctx.observe(answer)
                yield answer
                return
        deltas = self._answer(ctx, screening, stream, policy)
        vault = screening.vault
        try:
            if vault is None or not len(vault):
                async for delta in deltas:
                    yield delta
                return
            # The cache holds the answer with placeholders; each request gets its own values back.
            restorers: dict[int, StreamRestorer] = {}
            async for delta in deltas:
                restorer = restorers.setdefault(delta.index, StreamRestorer(vault))
                text = restorer.feed(delta.text) + (restorer.flush() if delta.finish_reason is not None else "")
                yield replace(delta, text=text)
            if ctx.annotations and "_answer" in ctx.annotations:
                ctx.annotations["_answer"] = vault.restore(ctx.annotations["_answer"])
        finally:
            await deltas.aclose()

    async def _answer(self, ctx: RequestContext, screening: Screening, stream: bool,
                      policy: GuardPolicy | None) -> AsyncIterator[Delta]:
        """Cache lookup -> retrieve -> generate (de-duplicated) -> output guards -> cache store."""
        request, spec, scope = screening.request, ctx.retrieval, None
        if spec is not None:
            if self.retrieval is None:
                raise APIError(400, "Retrieval is not available on this server.", param="retrieval")
            scope = {"retrieval": spec.model_dump(), "versions": await self.retrieval.versions(ctx, spec)}
        cacheable = self._cacheable(request)
        key = self._exact_key(ctx, request, stream, scope) if cacheable else None
        question = _question(request) if cacheable and self.semantic is not None else None
        namespace = _namespace(ctx, request, scope) if question is not None else ""
        if ctx.cache_control != "no-cache" and (key is not None or question is not None):
            with ctx.stage("cache", exact=key is not None and self.answers is not None,
                           semantic=question is not None) as stage:
                hit = await self._lookup(key, namespace, question)
                stage.attributes["result"] = hit[0] if hit is not None else "miss"
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
            documents, threshold = self._document_policy(policy)
            request, grounding = await self.retrieval.prepare(ctx, request, spec, documents, threshold)
            if grounding.flagged and self.guards is not None and policy is not None:
                self.guards.note(ctx, "documents", f"{policy.documents.action}:{len(grounding.flagged)}",
                                 outcome=policy.documents.action, policy=policy)
            if grounding.not_found is not None:
                ctx.model, ctx.annotations = request.model, annotations(None, grounding)
                ctx.note_route("not_found")
                answer = Delta(grounding.not_found, 0, 0, "stop")
                ctx.observe(answer)
                yield answer
                return
        ctx.sent = _as_sent(request, screening.canary)
        leader = True
        if key is not None and self.cache_settings.deduplicate:
            leader = not self.inflight.joined(key)
            if not leader:
                ctx.model = request.model
                ctx.note_route("deduplicated")
            deltas = self.inflight.run(key, lambda: self._produce(ctx, request, stream, policy))
        else:
            deltas = self._produce(ctx, request, stream, policy)
        timing = _Timed(ctx, deltas)
        timed = timing.deltas()
        deltas = self._guard_output(ctx, timed, stream, policy, screening.canary, grounding)
        guarded = deltas is not timed
        produced: list[Delta] = []
        try:
            async for delta in deltas:
                ctx.observe(delta)
                produced.append(delta)
                yield delta
        finally:
            await deltas.aclose()
            if guarded:
                timing.guards_done()
        if grounding is not None and self.retrieval is not None:
            text = "".join(d.text for d in produced if d.index == 0)
            fallback = ctx.guards.get("grounding", "").startswith("fallback")
            report = None if grounding.skipped or fallback else self.retrieval.check(grounding, text)
            ctx.annotations = annotations(report, grounding)
        if leader and ctx.cache_control != "no-store":
            answer = CachedAnswer(tuple(produced), ctx.model, ctx.annotations)
            if key is not None and self.answers is not None:
                await self.answers.put(key, answer)
            if question is not None and self.semantic is not None:
                read = frozenset(spec.vector_store_ids) if spec is not None else frozenset()
                # Packed, like the exact cache's entries: out of the garbage collector's walks.
                await self.semantic.store(namespace, question, answer.packed(), read)

    def _produce(self, ctx: RequestContext, request: GenerateRequest, stream: bool,
                 policy: GuardPolicy | None) -> AsyncIterator[Delta]:
        """Generation, and for response_format requests its validation (with a retry)."""
        if request.response_format is not None and policy is not None and self.guards is not None:
            return self.guards.validated(ctx, request, policy, lambda r: self._route(ctx, r, stream))
        return self._route(ctx, request, stream)

    def _guard_output(self, ctx: RequestContext, deltas: AsyncIterator[Delta], stream: bool,
                      policy: GuardPolicy | None, canary: str | None,
                      grounding: Grounding | None) -> AsyncIterator[Delta]:
        if policy is None or self.guards is None:
            return deltas
        if canary is not None or policy.pii.output != "allow":
            deltas = self.guards.screened(ctx, deltas, policy, canary, stream)
        if grounding is not None and not grounding.skipped and self.retrieval is not None:
            retrieval, threshold = self.retrieval, self.retrieval.settings.support_threshold
            deltas = self.guards.grounded(ctx, deltas, policy, lambda text: grounded_share(
                retrieval.check(grounding, text), grounding.passages, threshold))
        return deltas

    def _document_policy(self, policy: GuardPolicy | None) -> tuple[DocumentGuard | None, float]:
        detector = self.guards.document_detector if self.guards is not None else None
        if policy is None or detector is None:
            return None, 1.0
        threshold = policy.documents.threshold
        return policy.documents, threshold if threshold is not None else detector.threshold

    async def _lookup(self, key: str | None, namespace: str, question: str | None) -> tuple[str, CachedAnswer] | None:
        if key is not None and self.answers is not None:
            answer = await self.answers.get(key)
            if answer is not None:
                return "hit", answer
        if question is not None and self.semantic is not None:
            similar = await self.semantic.lookup(namespace, question)
            if similar is not None:
                return "semantic-hit", CachedAnswer.unpacked(similar.answer)  # type: ignore[arg-type]
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
        with ctx.stage("route", reason="direct", model=request.model):
            return self.dispatcher.generate(ctx, request, stream)


class _Timed:
    """The `generate` stage around the model's deltas (from the first pull to the last delta) and,
    when output guards wrap them, the `output_guards` stage: from the model's end to the guarded
    stream's, with the time the guards' own code took on the way (they run inline per delta)."""

    def __init__(self, ctx: RequestContext, deltas: AsyncIterator[Delta]) -> None:
        self.ctx, self.model = ctx, deltas
        self.waited = 0.0  # seconds spent waiting for the model
        self.stage = None

    async def deltas(self) -> AsyncIterator[Delta]:
        stage = self.stage = self.ctx.begin("generate")
        try:
            while True:
                started = time.perf_counter()
                try:
                    delta = await anext(self.model)
                except StopAsyncIteration:
                    break
                finally:
                    self.waited += time.perf_counter() - started
                yield delta
        finally:
            stage.end = time.perf_counter()
            stage.attributes.update(model=self.ctx.model, deployment=self.ctx.deployment,
                                    completion_tokens=self.ctx.completion_tokens)
            await self.model.aclose()

    def guards_done(self) -> None:
        if self.stage is None or self.stage.end is None:
            return
        now = time.perf_counter()
        busy = (now - self.stage.start) - self.waited
        inline_ms = round(max(busy, 0.0) * 1000, 3)
        self.ctx.stages.append(Stage("output_guards", self.stage.end, now, {"inline_ms": inline_ms}))


def _as_sent(request: GenerateRequest, canary: str | None) -> Any:
    """The messages (or prompt) as the model gets them, for the trace; the canary stays secret."""
    if request.messages is None:
        return request.prompt
    if canary is None:
        return request.messages
    return [{**m, "content": m["content"].replace(canary, "<CANARY>")} if isinstance(m.get("content"), str) else m
            for m in request.messages]


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
                       "sampling": vars(request.sampling),
                       "response_format": request.response_format}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
