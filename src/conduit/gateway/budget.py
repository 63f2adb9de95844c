"""Budgets: dollars per calendar period (UTC) for a tenant and for a key.

Before a request: an account already at or over its budget gets 429 `insufficient_quota`.
After it: its cost is added to the running total; crossing `soft_fraction` of the budget logs a
`budget_soft_limit` event once and POSTs it to the webhook, if one is set.

Totals live in the limit store (so several gateways share them through Redis) and start, the
first time an account is seen in a period, from the request log's sum. A request is checked
before it runs and charged after, so concurrent requests can overshoot the budget by at most
the cost of the requests already in flight when it was reached: one request per in-flight slot.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from conduit.config import Budget, TenantSettings
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.gateway.limit_store import LimitStore
from conduit.observability.events import EventSink
from conduit.store.db import Database
from conduit.store.usage import spent


@dataclass(frozen=True)
class Account:
    owner: str  # "tenant" | "key"
    id: str
    budget: Budget
    webhook_url: str | None

    def period_start(self, now: datetime) -> datetime:
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.budget.period == "day":
            return day
        if self.budget.period == "week":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)

    def counter(self, now: datetime) -> str:
        return f"budget:{self.owner}:{self.id}:{self.budget.period}:{self.period_start(now):%Y-%m-%d}"


# A counter outlives its period by a margin, then expires on its own.
_COUNTER_TTL_S = 32 * 86400


class Budgets:
    def __init__(self, store: LimitStore, db: Database, tenants: list[TenantSettings],
                 key_webhook_url: str | None, events: EventSink) -> None:
        self._store = store
        self._db = db
        self._tenants = {t.name: t for t in tenants if t.budget is not None}
        self._key_webhook_url = key_webhook_url
        self._events = events

    def accounts(self, principal: Principal) -> list[Account]:
        found = []
        if principal.budget is not None and principal.key_id:
            found.append(Account("key", principal.key_id, principal.budget, self._key_webhook_url))
        tenant = self._tenants.get(principal.tenant or "")
        if tenant is not None and tenant.budget is not None and principal.tenant_id:
            found.append(Account("tenant", principal.tenant_id, tenant.budget, tenant.budget.webhook_url))
        return found

    async def check(self, accounts: list[Account]) -> None:
        now = datetime.now(UTC)
        for account in accounts:
            total = await self._total(account, now)
            if total >= account.budget.usd:
                raise APIError(
                    429, f"You exceeded your current quota: this {account.owner}'s budget of "
                    f"${account.budget.usd:g} per {account.budget.period} is spent.",
                    "insufficient_quota", code="insufficient_quota")

    async def charge(self, accounts: list[Account], usd: float) -> None:
        if usd <= 0:
            return
        now = datetime.now(UTC)
        for account in accounts:
            before = await self._total(account, now)
            after = await self._store.add_spend(account.counter(now), usd, _COUNTER_TTL_S)
            soft = account.budget.usd * account.budget.soft_fraction
            if before < soft <= after:
                self._warn(account, after, now)

    async def _total(self, account: Account, now: datetime) -> float:
        counter = account.counter(now)
        total = await self._store.get_spend(counter)
        if total is None:
            ids = {"tenant_id": account.id} if account.owner == "tenant" else {"key_id": account.id}
            logged = await asyncio.to_thread(spent, self._db, account.period_start(now), **ids)
            total = await self._store.init_spend(counter, logged, _COUNTER_TTL_S)
        return total

    def _warn(self, account: Account, total: float, now: datetime) -> None:
        event = {"event": "budget_soft_limit", "owner": account.owner, "id": account.id,
                 "spent_usd": round(total, 6), "budget_usd": account.budget.usd,
                 "period": account.budget.period, "period_start": account.period_start(now).isoformat()}
        self._events.emit(event, account.webhook_url)
