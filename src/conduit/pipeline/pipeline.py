"""The request pipeline. Stages run in DESIGN.md's order; today: cache lookup -> route ->
generate -> cache store.

Guards, the semantic cache, retrieval and prompt assembly plug in here as their issues land.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from conduit.backends import Delta, GenerateRequest
from conduit.cache import ExactCache, InflightGroup, cache_key, is_deterministic
from conduit.cache.exact import CachedAnswer
from conduit.config import CacheSettings
from conduit.gateway.auth import Principal
from conduit.pipeline.context import RequestContext
from conduit.routing.dispatch import Dispatcher
from conduit.routing.registry import Registry
from conduit.routing.router import Router


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None,
                 cache: CacheSettings | None = None) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = Dispatcher(registry)
        self.cache_settings = cache or CacheSettings()
        exact = self.cache_settings.exact
        self.cache = ExactCache(exact.max_entries, exact.ttl_s) if exact.enabled else None
        self.inflight = InflightGroup()

    def models(self, principal: Principal | None) -> list[str]:
        """The model ids this caller may send: the router's name first, if there is one."""
        names = self.registry.visible(principal)
        if self.router is not None and all(self.registry.allowed(principal, t) for t in self.router.settings.tiers):
            names.insert(0, self.router.name)
        return names

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        key = self._cache_key(ctx, request, stream)
        if key is not None and self.cache is not None and ctx.cache_control != "no-cache":
            hit = self.cache.get(key)
            if hit is not None:
                ctx.cache, ctx.model = "hit", hit.model
                ctx.note_route("cache")
                for delta in hit.deltas:
                    ctx.observe(delta)
                    yield delta
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
        answer: list[Delta] = []
        try:
            async for delta in deltas:
                ctx.observe(delta)
                answer.append(delta)
                yield delta
        finally:
            await deltas.aclose()
        if key is not None and self.cache is not None and leader and ctx.cache_control != "no-store":
            self.cache.put(key, CachedAnswer(tuple(answer), ctx.model))

    def _cache_key(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> str | None:
        if self.cache is None and not self.cache_settings.deduplicate:
            return None
        if self.cache_settings.exact.only_deterministic and not is_deterministic(request):
            return None
        tenant = ctx.principal.tenant_id if ctx.principal else None
        return cache_key(tenant, request, stream)

    def _route(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        if self.router is not None and request.model == self.router.name:
            return self.router.generate(ctx, request, stream, self.dispatcher)
        ctx.note_route("direct")
        return self.dispatcher.generate(ctx, request, stream)
