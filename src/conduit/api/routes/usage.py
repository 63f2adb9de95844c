"""GET /v1/usage: requests, tokens and cost grouped by tenant, key, model and day."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Request

from conduit.api.deps import authenticated
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.store.usage import usage

router = APIRouter()
GROUPS = ("tenant", "key", "model", "day")


@router.get("/v1/usage")
async def get_usage(request: Request, group_by: str = "tenant,model,day", start: str | None = None,
                    end: str | None = None, principal: Principal = Depends(authenticated)) -> dict:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise APIError(400, f"group_by takes a comma-separated list of {', '.join(GROUPS)}.", param="group_by",
                       code="invalid_value")
    bounds = {name: _moment(name, value) for name, value in (("start", start), ("end", end))}
    # The admin sees everything; a tenant's key only its own tenant.
    tenant = None if principal.is_admin else principal.tenant_id
    rows = await asyncio.to_thread(usage, request.app.state.db, groups, tenant, bounds["start"], bounds["end"])
    return {"object": "list", "group_by": groups, "data": [
        {**row.group, "requests": row.requests, "prompt_tokens": row.prompt_tokens,
         "completion_tokens": row.completion_tokens, "cost_usd": round(row.cost_usd, 8)} for row in rows]}


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise APIError(400, f"'{name}' must be an ISO date or date-time.", param=name, code="invalid_value") from None
