"""GET /v1/models, /healthz (liveness) and /readyz (models loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from conduit.api.deps import authenticated
from conduit.errors import APIError
from conduit.gateway.auth import Principal

router = APIRouter()


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "conduit"}


@router.get("/v1/models")
async def list_models(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    created = request.app.state.started_at
    names = request.app.state.pipeline.models(principal)
    return {"object": "list", "data": [_model_card(name, created) for name in names]}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    if model not in request.app.state.pipeline.models(principal):
        raise APIError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found")
    return _model_card(model, request.app.state.started_at)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    groups = request.app.state.pipeline.registry.groups
    models = {name: group.state() for name, group in groups.items()}
    ready = all(state == "ready" for state in models.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "models": models},
                        status_code=200 if ready else 503)
