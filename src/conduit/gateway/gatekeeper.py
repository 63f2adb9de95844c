"""The gateway's per-request controls after authentication: budget, then limits.

`enter` runs before the pipeline and either refuses the request (429/503) or hands back a
`Pass` whose headers go on the response; `leave` runs when the response is over, however it
ended: it frees the request's concurrency slots, charges the tokens it really used and adds its
cost to the budgets. The budget is checked first so that a request refused for money spends
none of its key's rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.gateway.budget import Account, Budgets
from conduit.gateway.limits import Grant, Limiter

log = logging.getLogger("conduit.gateway")


@dataclass
class Pass:
    grant: Grant | None = None
    accounts: list[Account] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return self.grant.headers if self.grant else {}


class Gatekeeper:
    def __init__(self, limiter: Limiter, budgets: Budgets) -> None:
        self.limiter = limiter
        self.budgets = budgets

    async def enter(self, principal: Principal, model: str, prompt_tokens: Callable[[], int]) -> Pass:
        if principal.is_admin:
            return Pass()
        try:
            accounts = self.budgets.accounts(principal)
            await self.budgets.check(accounts)
            grant = await self.limiter.admit(principal, model, prompt_tokens)
        except APIError:
            raise
        except Exception as exc:  # the limit store (Redis) is down: refuse rather than run unmetered
            log.exception("limit store unavailable")
            raise APIError(503, "Rate limits cannot be checked right now; try again shortly.",
                           "service_unavailable", code="limits_unavailable", headers={"Retry-After": "1"}) from exc
        return Pass(grant, accounts)

    async def leave(self, admitted: Pass, used_tokens: int | None, cost_usd: float) -> None:
        try:
            if admitted.grant is not None:
                await self.limiter.finish(admitted.grant, used_tokens)
            await self.budgets.charge(admitted.accounts, cost_usd)
        except Exception:  # the answer is already out; a failed tally must not turn it into an error
            log.exception("could not record the request's usage against its limits and budget")
