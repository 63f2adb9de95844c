"""Reading the request log for the request explorer: rows with their tenant's name and latest
feedback, one request's trace and feedback, feedback summaries, and the rows behind the
dashboard's charts. Every query takes the caller's tenant: a tenant's key sees only its own."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, or_, select

from conduit.store.db import Database
from conduit.store.tables import ApiKey, Feedback, RequestLog, RequestTrace, Tenant

COLUMNS = ("id", "created_at", "key_id", "endpoint", "model", "stream", "status", "http_status", "error_type",
           "prompt_tokens", "completion_tokens", "ttft_ms", "tpot_ms", "latency_ms", "finish_reason",
           "deployment", "route", "attempts", "cache", "cost_usd", "guard", "prompt_version")


@dataclass
class RequestFilter:
    tenant_id: str | None = None  # forced to the caller's for a tenant key
    tenant_name: str | None = None  # the admin's filter
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_latency_ms: float | None = None
    feedback: str | None = None  # up | down | none
    limit: int = 50
    before: str | None = None  # a request id: rows older than it


def utc(moment: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; they were written in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _latest_rating():
    return (select(Feedback.rating).where(Feedback.request_id == RequestLog.id)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc()).limit(1).scalar_subquery())


def _row(log: RequestLog, tenant: str | None, rating: str | None) -> dict[str, Any]:
    row = {name: getattr(log, name) for name in COLUMNS}
    row["created_at"] = utc(log.created_at).isoformat()
    return {**row, "tenant": tenant, "feedback": rating}


def _base(tenant_id: str | None) -> Select:
    rating = _latest_rating().label("rating")
    query = (select(RequestLog, Tenant.name, rating).outerjoin(Tenant, Tenant.id == RequestLog.tenant_id))
    if tenant_id is not None:
        query = query.where(RequestLog.tenant_id == tenant_id)
    return query


def list_requests(db: Database, f: RequestFilter) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; (rows, whether older ones remain)."""
    query = _base(f.tenant_id)
    rating = _latest_rating()
    if f.tenant_name is not None:
        query = query.where(Tenant.name == f.tenant_name)
    if f.model is not None:
        query = query.where(RequestLog.model == f.model)
    if f.status is not None:
        query = query.where(RequestLog.status == f.status)
    if f.since is not None:
        query = query.where(RequestLog.created_at >= f.since)
    if f.until is not None:
        query = query.where(RequestLog.created_at < f.until)
    if f.min_latency_ms is not None:
        query = query.where(RequestLog.latency_ms >= f.min_latency_ms)
    if f.feedback in ("up", "down"):
        query = query.where(rating == f.feedback)
    elif f.feedback == "none":
        query = query.where(rating.is_(None))
    with db.session() as session:
        if f.before is not None:
            cursor = session.get(RequestLog, f.before)
            if cursor is not None:
                query = query.where(or_(RequestLog.created_at < cursor.created_at,
                                        and_(RequestLog.created_at == cursor.created_at, RequestLog.id < cursor.id)))
        rows = session.execute(query.order_by(RequestLog.created_at.desc(), RequestLog.id.desc())
                               .limit(f.limit + 1)).all()
        found = [_row(log, tenant, rating) for log, tenant, rating in rows[:f.limit]]
    return found, len(rows) > f.limit


def get_request(db: Database, request_id: str, tenant_id: str | None) -> dict[str, Any] | None:
    """A request with its trace and feedback; None when it is not (or not yet) the caller's."""
    with db.session() as session:
        found = session.execute(_base(tenant_id).where(RequestLog.id == request_id)).first()
        if found is None:
            return None
        trace = session.get(RequestTrace, request_id)
        feedback = session.scalars(select(Feedback).where(Feedback.request_id == request_id)
                                   .order_by(Feedback.created_at, Feedback.id)).all()
        return {**_row(*found), "trace": json.loads(trace.body) if trace is not None else None,
                "feedback": [feedback_json(f) for f in feedback]}


def request_tenant(db: Database, request_id: str) -> tuple[bool, str | None]:
    """(exists, tenant id) of a logged request."""
    with db.session() as session:
        found = session.execute(select(RequestLog.tenant_id).where(RequestLog.id == request_id)).first()
    return (False, None) if found is None else (True, found[0])


def add_feedback(db: Database, request_id: str, tenant_id: str | None, rating: str,
                 comment: str | None) -> dict[str, Any]:
    row = Feedback(id=f"fb-{secrets.token_hex(12)}", request_id=request_id, tenant_id=tenant_id, rating=rating,
                   comment=comment, created_at=datetime.now(UTC))
    with db.session() as session:
        session.add(row)
        session.flush()
        return feedback_json(row)


def feedback_json(row: Feedback) -> dict[str, Any]:
    return {"id": row.id, "object": "feedback", "request_id": row.request_id, "rating": row.rating,
            "comment": row.comment, "created_at": utc(row.created_at).isoformat()}


def feedback_summary(db: Database, group_by: list[str], tenant_id: str | None) -> list[dict[str, Any]]:
    """Thumbs up and down per model and/or prompt version (each feedback counted once)."""
    columns = {"model": RequestLog.model, "prompt_version": RequestLog.prompt_version,
               "tenant": Tenant.name}
    keys = [columns[g].label(g) for g in group_by]
    up = func.sum(case((Feedback.rating == "up", 1), else_=0))
    down = func.sum(case((Feedback.rating == "down", 1), else_=0))
    query = (select(*keys, up, down).select_from(Feedback)
             .join(RequestLog, RequestLog.id == Feedback.request_id)
             .outerjoin(Tenant, Tenant.id == RequestLog.tenant_id)
             .group_by(*keys).order_by(*keys))
    if tenant_id is not None:
        query = query.where(RequestLog.tenant_id == tenant_id)
    with db.session() as session:
        rows = session.execute(query).all()
    width = len(group_by)
    out = []
    for row in rows:
        ups, downs = int(row[width] or 0), int(row[width + 1] or 0)
        out.append({**dict(zip(group_by, row[:width])), "up": ups, "down": downs,
                    "score": round(ups / (ups + downs), 4) if ups + downs else None})
    return out


def rows_since(db: Database, since: datetime, tenant_id: str | None, limit: int = 200_000) -> list[tuple]:
    """(created_at, status, latency_ms, ttft_ms, tpot_ms, completion_tokens, cost_usd, cache, guard,
    tenant name, stream) of generation requests since `since`, for the dashboard's charts."""
    query = (select(RequestLog.created_at, RequestLog.status, RequestLog.latency_ms, RequestLog.ttft_ms,
                    RequestLog.tpot_ms, RequestLog.completion_tokens, RequestLog.cost_usd, RequestLog.cache,
                    RequestLog.guard, Tenant.name, RequestLog.stream)
             .outerjoin(Tenant, Tenant.id == RequestLog.tenant_id)
             .where(RequestLog.created_at >= since)
             .where(RequestLog.endpoint.in_(("chat.completions", "completions")))
             .order_by(RequestLog.created_at.desc()).limit(limit))
    if tenant_id is not None:
        query = query.where(RequestLog.tenant_id == tenant_id)
    with db.session() as session:
        return [tuple(r) for r in session.execute(query).all()]


def tenants_overview(db: Database, tenant_id: str | None, since: datetime) -> list[dict[str, Any]]:
    """Each tenant's active keys, and its requests and spend since `since`."""
    keys = (select(func.count()).select_from(ApiKey)
            .where(ApiKey.tenant_id == Tenant.id, ApiKey.revoked_at.is_(None)).scalar_subquery())
    requests = (select(func.count()).select_from(RequestLog)
                .where(RequestLog.tenant_id == Tenant.id, RequestLog.created_at >= since).scalar_subquery())
    spent = (select(func.coalesce(func.sum(RequestLog.cost_usd), 0.0))
             .where(RequestLog.tenant_id == Tenant.id, RequestLog.created_at >= since).scalar_subquery())
    query = select(Tenant.id, Tenant.name, keys, requests, spent).order_by(Tenant.name)
    if tenant_id is not None:
        query = query.where(Tenant.id == tenant_id)
    with db.session() as session:
        return [{"id": tid, "tenant": name, "keys": int(k), "requests": int(r), "spent_usd": float(s)}
                for tid, name, k, r, s in session.execute(query).all()]
