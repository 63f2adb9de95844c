"""Dependencies shared by the routes: who is calling, and the request's context."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from conduit.api.errors import validation_error
from conduit.gateway.auth import Principal, require_admin
from conduit.pipeline import RequestContext

Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The JSON body as `model`, whatever the Content-Type says (as OpenAI's API does)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def authenticated(request: Request) -> Principal:
    # async, so that FastAPI does not hop to a worker thread for every request.
    principal = await request.app.state.auth.authenticate_async(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


async def admin(request: Request) -> Principal:
    principal = await authenticated(request)
    require_admin(principal)
    return principal


def request_context(
    request: Request, endpoint: str, principal: Principal, model: str | None = None, stream: bool = False
) -> RequestContext:
    ctx = RequestContext(endpoint=endpoint, principal=principal, model=model, stream=stream)
    request.state.ctx = ctx
    return ctx
