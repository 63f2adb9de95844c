"""The request pipeline. Stages run in DESIGN.md's order; today: route -> generate.

Guards, caches, retrieval and prompt assembly plug in here as their issues land.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from conduit.backends import Delta, GenerateRequest
from conduit.gateway.auth import Principal
from conduit.pipeline.context import RequestContext
from conduit.routing.dispatch import Dispatcher
from conduit.routing.registry import Registry
from conduit.routing.router import Router


class Pipeline:
    def __init__(self, registry: Registry, router: Router | None = None) -> None:
        self.registry = registry
        self.router = router
        self.dispatcher = Dispatcher(registry)

    def models(self, principal: Principal | None) -> list[str]:
        """The model ids this caller may send: the router's name first, if there is one."""
        names = self.registry.visible(principal)
        if self.router is not None and all(self.registry.allowed(principal, t) for t in self.router.settings.tiers):
            names.insert(0, self.router.name)
        return names

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        if self.router is not None and request.model == self.router.name:
            deltas = self.router.generate(ctx, request, stream, self.dispatcher)
        else:
            ctx.note_route("direct")
            deltas = self.dispatcher.generate(ctx, request, stream)
        try:
            async for delta in deltas:
                ctx.observe(delta)
                yield delta
        finally:
            await deltas.aclose()
