"""Rate, token and concurrency limits per key, per tenant and per tenant and model.

Requests and tokens per minute are token buckets (full at the start, refilled continuously),
checked together with the concurrency caps in one atomic step. Tokens are charged twice: the
prompt, counted before the call, must fit; the completion is charged when it is known, and a
bucket that goes negative holds back the next request until it has refilled.

The response carries OpenAI's headers for the tightest bucket of each kind:
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. Over a limit: 429 with `Retry-After`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from conduit.config import Limits, TenantSettings
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.gateway.limit_store import REFILL_WINDOW_S, Bucket, LimitStore, Slots

# A lease outlives any request (the longest deadline); it only matters if a gateway dies.
LEASE_TTL_S = 900.0


@dataclass(frozen=True)
class _Scope:
    name: str  # "key:key_x", "tenant:ten_y", "tenant:ten_y:model:m"
    limits: Limits


@dataclass
class Grant:
    """What a request holds while it runs: give it back with `Limiter.finish`."""

    lease: str = ""  # names the request's concurrency slots; only drawn when it takes some
    slots: list[str] = field(default_factory=list)
    token_buckets: list[str] = field(default_factory=list)
    charged_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class Limiter:
    def __init__(self, store: LimitStore, tenants: list[TenantSettings]) -> None:
        self.store = store
        self._tenants = {t.name: t for t in tenants}

    def _scopes(self, principal: Principal, model: str) -> list[_Scope]:
        scopes = []
        if principal.limits is not None:
            scopes.append(_Scope(f"key:{principal.key_id}", principal.limits))
        tenant = self._tenants.get(principal.tenant or "")
        if tenant is not None:
            scopes.append(_Scope(f"tenant:{principal.tenant_id}", tenant.limits))
            if model in tenant.model_limits:
                scopes.append(_Scope(f"tenant:{principal.tenant_id}:model:{model}", tenant.model_limits[model]))
        return scopes

    async def admit(self, principal: Principal, model: str, count_prompt: Callable[[], int]) -> Grant:
        """Take a request's share of every limit that applies to it, or raise 429.
        `count_prompt` tokenizes the prompt; it runs only if a token limit applies."""
        grant = Grant()
        scopes = [s for s in self._scopes(principal, model) if s.limits.limiting]
        if principal.is_admin or not scopes:
            return grant
        prompt_tokens = count_prompt() if any(s.limits.tpm for s in scopes) else 0
        requests, tokens, slots = [], [], []
        for scope in scopes:
            if scope.limits.rpm:
                requests.append(Bucket(f"rl:{scope.name}:requests", scope.limits.rpm, 1))
            if scope.limits.tpm:
                if prompt_tokens > scope.limits.tpm:
                    raise APIError(429, f"Request too large: its {prompt_tokens} prompt tokens exceed the limit of "
                                   f"{scope.limits.tpm} tokens per minute.", "tokens", code="rate_limit_exceeded")
                tokens.append(Bucket(f"rl:{scope.name}:tokens", scope.limits.tpm, prompt_tokens))
            if scope.limits.max_concurrent:
                slots.append(Slots(f"rl:{scope.name}:concurrent", scope.limits.max_concurrent))
        if slots:
            grant.lease = secrets.token_hex(8)
        verdict = await self.store.acquire(requests + tokens, slots, grant.lease, LEASE_TTL_S)
        if not verdict.allowed:
            raise _over_limit(verdict.blocked_by or "", verdict.retry_after_s)
        grant.slots = [s.key for s in slots]
        grant.token_buckets = [b.key for b in tokens]
        grant.charged_tokens = prompt_tokens
        grant.headers = {**_headers("requests", requests, verdict.remaining[:len(requests)]),
                         **_headers("tokens", tokens, verdict.remaining[len(requests):])}
        return grant

    async def finish(self, grant: Grant, used_tokens: int | None) -> None:
        """Release the request's concurrency slots and charge what it really used."""
        if grant.slots:
            await self.store.release(grant.slots, grant.lease)
        if grant.token_buckets and used_tokens is not None and used_tokens != grant.charged_tokens:
            await self.store.spend([(key, used_tokens - grant.charged_tokens) for key in grant.token_buckets])


def _headers(kind: str, buckets: list[Bucket], remaining: tuple[float, ...]) -> dict[str, str]:
    if not buckets:
        return {}
    # The tightest bucket is the one a client must pace itself by.
    bucket, left = min(zip(buckets, remaining), key=lambda pair: pair[1] / pair[0].capacity)
    reset = (bucket.capacity - left) * REFILL_WINDOW_S / bucket.capacity
    return {f"x-ratelimit-limit-{kind}": str(bucket.capacity),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(left))),
            f"x-ratelimit-reset-{kind}": duration(reset)}


def duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes < 1:
        return f"{rest:.3g}s"
    return f"{int(minutes)}m{int(rest)}s"


def _over_limit(blocked_by: str, retry_after_s: float) -> APIError:
    scope, _, kind = blocked_by.removeprefix("rl:").rpartition(":")
    what = {"requests": "requests per minute", "tokens": "tokens per minute",
            "concurrent": "concurrent requests"}.get(kind, kind)
    owner = scope.split(":")[0]  # key | tenant
    wait = max(1, math.ceil(retry_after_s))
    return APIError(429, f"Rate limit reached for {what} on this {owner}. Please try again in {wait}s.",
                    kind, code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
