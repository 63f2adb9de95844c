"""Dependencies shared by the routes: who is calling, and the request's context."""

from __future__ import annotations

import time
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from conduit.api.errors import validation_error
from conduit.gateway.auth import Principal, require_admin
from conduit.pipeline import RequestContext
from conduit.pipeline.context import Stage

Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The JSON body as `model`, whatever the Content-Type says (as OpenAI's API does)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def authenticated(request: Request) -> Principal:
    # async, so that FastAPI does not hop to a worker thread for every request.
    started = time.perf_counter()
    principal = await request.app.state.auth.authenticate_async(request.headers.get("authorization"))
    request.state.principal = principal
    request.state.auth_timing = (started, time.perf_counter())
    return principal


async def admin(request: Request) -> Principal:
    principal = await authenticated(request)
    require_admin(principal)
    return principal


def request_context(
    request: Request, endpoint: str, principal: Principal, model: str | None = None, stream: bool = False
) -> RequestContext:
    ctx = RequestContext(endpoint=endpoint, principal=principal, model=model, stream=stream, requested_model=model)
    timing = getattr(request.state, "auth_timing", None)
    if timing is not None:  # the request started when its authentication did
        ctx.created -= ctx.started - timing[0]
        ctx.started = timing[0]
        ctx.stages.append(Stage("auth", timing[0], timing[1], {"tenant": principal.tenant, "key": principal.key_id}))
    if "traceparent" in request.headers:
        ctx.carrier = {name: request.headers[name] for name in ("traceparent", "tracestate") if name in request.headers}
    request.state.ctx = ctx
    return ctx
