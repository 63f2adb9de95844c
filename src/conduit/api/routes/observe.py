"""The operator's view: who am I, the dashboard's time series, the request explorer, feedback,
drift and tenants. The admin key sees every tenant; a tenant's key sees only its own (its
filters are forced to it, and another tenant's request answers 404 like a missing one)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from conduit.api.deps import authenticated, parse_body
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.gateway.budget import Account
from conduit.observability.stats import series
from conduit.store import requests as explorer
from conduit.store.usage import spent

router = APIRouter()
STATUSES = ("ok", "error", "client_disconnected")
RESPONSE_PREFIXES = ("chatcmpl-", "cmpl-")  # response ids are the request id under another prefix


def _scope(principal: Principal) -> str | None:
    """The tenant id every query is restricted to; None for the admin."""
    return None if principal.is_admin else principal.tenant_id


def request_id(value: str) -> str:
    for prefix in RESPONSE_PREFIXES:
        if value.startswith(prefix):
            return "req-" + value[len(prefix):]
    return value


def _moment(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(400, f"'{name}' must be an ISO date-time.", param=name, code="invalid_value") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("/admin/whoami")
async def whoami(principal: Principal = Depends(authenticated)) -> dict:
    return {"admin": principal.is_admin, "tenant": principal.tenant, "key_id": principal.key_id}


@router.get("/admin/stats")
async def stats(request: Request, window_s: int = 3600, bucket_s: int = 60,
                principal: Principal = Depends(authenticated)) -> dict:
    if not 60 <= window_s <= 31 * 86400:
        raise APIError(400, "window_s must be between 60 and 2678400.", param="window_s", code="invalid_value")
    if not 1 <= bucket_s <= window_s or window_s // bucket_s > 2000:
        raise APIError(400, "bucket_s must be at least 1, at most window_s, and give at most 2000 buckets.",
                       param="bucket_s", code="invalid_value")
    now = time.time()
    since = now - window_s
    rows = await asyncio.to_thread(explorer.rows_since, request.app.state.db,
                                   datetime.fromtimestamp(since, UTC), _scope(principal))
    body = series(rows, since, now, bucket_s)
    engine = request.app.state.engine_samples.since(since) if principal.is_admin else []
    return {"window_s": window_s, "bucket_s": bucket_s, "now": now, **body, "engine": engine}


@router.get("/admin/requests")
async def list_requests(request: Request, tenant: str | None = None, model: str | None = None,
                        status: str | None = None, since: str | None = None, until: str | None = None,
                        min_latency_ms: float | None = None, feedback: str | None = None, limit: int = 50,
                        before: str | None = None, principal: Principal = Depends(authenticated)) -> dict:
    if status is not None and status not in STATUSES:
        raise APIError(400, f"status takes one of {', '.join(STATUSES)}.", param="status", code="invalid_value")
    if feedback is not None and feedback not in ("up", "down", "none"):
        raise APIError(400, "feedback takes 'up', 'down' or 'none'.", param="feedback", code="invalid_value")
    if not 1 <= limit <= 500:
        raise APIError(400, "limit must be between 1 and 500.", param="limit", code="invalid_value")
    f = explorer.RequestFilter(tenant_id=_scope(principal), tenant_name=tenant if principal.is_admin else None,
                               model=model, status=status, since=_moment("since", since),
                               until=_moment("until", until), min_latency_ms=min_latency_ms, feedback=feedback,
                               limit=limit, before=request_id(before) if before else None)
    rows, more = await asyncio.to_thread(explorer.list_requests, request.app.state.db, f)
    return {"object": "list", "data": rows, "has_more": more, "next_before": rows[-1]["id"] if more else None}


@router.get("/admin/requests/{rid}")
async def get_request(rid: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    rid_, db, scope = request_id(rid), request.app.state.db, _scope(principal)
    found = await asyncio.to_thread(explorer.get_request, db, rid_, scope)
    known, tenant = request.app.state.recorder.tenant_of(rid_)
    if found is None and known and (scope is None or scope == tenant):
        # Finished a moment ago: its row is on the writer's queue. Wait for it, briefly.
        deadline = time.monotonic() + 2 * request.app.state.settings.request_log.flush_interval_s + 1
        while found is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            found = await asyncio.to_thread(explorer.get_request, db, rid_, scope)
    if found is None:
        raise APIError(404, f"No request found with id '{rid}'.", param="id", code="not_found")
    return found


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=4000)


@router.post("/v1/feedback", status_code=201)
async def feedback(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    body = await parse_body(request, FeedbackBody)
    rid = request_id(body.request_id)
    db = request.app.state.db
    known, tenant = request.app.state.recorder.tenant_of(rid)
    if not known:
        known, tenant = await asyncio.to_thread(explorer.request_tenant, db, rid)
    if not known or (not principal.is_admin and tenant != principal.tenant_id):
        raise APIError(404, f"No request found with id '{body.request_id}'.", param="request_id", code="not_found")
    return await asyncio.to_thread(explorer.add_feedback, db, rid, tenant, body.rating, body.comment)


@router.get("/admin/feedback/summary")
async def feedback_summary(request: Request, group_by: str = "model,prompt_version",
                           principal: Principal = Depends(authenticated)) -> dict:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    allowed = ("model", "prompt_version", "tenant")
    if not groups or any(g not in allowed for g in groups):
        raise APIError(400, f"group_by takes a comma-separated list of {', '.join(allowed)}.", param="group_by",
                       code="invalid_value")
    rows = await asyncio.to_thread(explorer.feedback_summary, request.app.state.db, groups, _scope(principal))
    return {"object": "list", "group_by": groups, "data": rows}


@router.get("/admin/drift")
async def drift(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    monitor = request.app.state.drift
    collections = None
    if not principal.is_admin:  # only the tenant's own collections
        store = request.app.state.collections.store
        collections = {s.id for s in await asyncio.to_thread(store.stores, principal.tenant_id)}
    return {"object": "list", "threshold": monitor.threshold, "score_drop": monitor.score_drop,
            "data": [s for s in monitor.series(collections) if s["points"]]}


@router.get("/admin/tenants")
async def tenants(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    settings = request.app.state.settings
    budgets = {t.name: t.budget for t in settings.tenants if t.budget is not None}
    now = datetime.now(UTC)
    month = now - timedelta(days=30)
    rows = await asyncio.to_thread(explorer.tenants_overview, request.app.state.db, _scope(principal), month)
    data = []
    for row in rows:
        budget = budgets.get(row["tenant"])
        entry = {**row, "budget": budget.model_dump(include={"usd", "period", "soft_fraction"}) if budget else None,
                 "period_start": month.isoformat()}
        if budget is not None:
            start = Account("tenant", row["id"], budget, None).period_start(now)
            entry["period_start"] = start.isoformat()
            spent_usd = await asyncio.to_thread(spent, request.app.state.db, start, row["id"])
            entry["spent_usd"] = round(spent_usd, 8)
        data.append(entry)
    return {"object": "list", "data": data}
