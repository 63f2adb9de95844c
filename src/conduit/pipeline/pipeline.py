"""The request pipeline. Stages run in DESIGN.md's order; this issue has route -> generate.

Guards, caches, retrieval and prompt assembly plug in here as their issues land.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from conduit.backends import Backend, Delta, GenerateRequest
from conduit.errors import APIError
from conduit.pipeline.context import RequestContext


class Pipeline:
    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = backends

    def backend(self, model: str) -> Backend:
        backend = self.backends.get(model)
        if backend is None:
            raise APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
        if not backend.ready:
            raise APIError(503, f"Model '{model}' is still loading; retry shortly.", "service_unavailable",
                           code="model_loading", headers={"Retry-After": "5"})
        return backend

    async def generate(self, ctx: RequestContext, request: GenerateRequest) -> AsyncIterator[Delta]:
        ctx.model = request.model
        backend = self.backend(request.model)
        stream = backend.generate(request)
        try:
            async for delta in stream:
                ctx.observe(delta)
                yield delta
        finally:
            await stream.aclose()
