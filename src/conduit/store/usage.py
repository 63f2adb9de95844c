"""Usage: requests, tokens and cost from the request log, grouped as asked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select

from conduit.store.db import Database
from conduit.store.tables import RequestLog, Tenant

GroupBy = Literal["tenant", "key", "model", "day"]


@dataclass(frozen=True)
class UsageRow:
    group: dict[str, str | None]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def usage(
    db: Database,
    group_by: list[GroupBy],
    tenant_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[UsageRow]:
    """Totals per group; `tenant_id` restricts to one tenant (what a tenant's key may see)."""
    columns = {
        "tenant": func.coalesce(Tenant.name, "(admin)"),
        "key": RequestLog.key_id,
        "model": RequestLog.model,
        "day": func.date(RequestLog.created_at),
    }
    keys = [columns[g].label(g) for g in group_by]
    query = (
        select(*keys, func.count(), func.coalesce(func.sum(RequestLog.prompt_tokens), 0),
               func.coalesce(func.sum(RequestLog.completion_tokens), 0),
               func.coalesce(func.sum(RequestLog.cost_usd), 0.0))
        .select_from(RequestLog)
        .outerjoin(Tenant, Tenant.id == RequestLog.tenant_id)
        .where(RequestLog.endpoint.in_(("chat.completions", "completions")))
        .group_by(*keys)
        .order_by(*keys)
    )
    if tenant_id is not None:
        query = query.where(RequestLog.tenant_id == tenant_id)
    if start is not None:
        query = query.where(RequestLog.created_at >= start)
    if end is not None:
        query = query.where(RequestLog.created_at < end)
    with db.session() as session:
        rows = session.execute(query).all()
    width = len(group_by)
    return [UsageRow({g: None if v is None else str(v) for g, v in zip(group_by, row[:width])},
                     int(row[width]), int(row[width + 1]), int(row[width + 2]), float(row[width + 3]))
            for row in rows]


def spent(db: Database, since: datetime, tenant_id: str | None = None, key_id: str | None = None) -> float:
    """Dollars spent since `since` by a tenant or a key: where a budget's running total starts."""
    query = select(func.coalesce(func.sum(RequestLog.cost_usd), 0.0)).where(RequestLog.created_at >= since)
    if tenant_id is not None:
        query = query.where(RequestLog.tenant_id == tenant_id)
    if key_id is not None:
        query = query.where(RequestLog.key_id == key_id)
    with db.session() as session:
        return float(session.scalar(query) or 0.0)
