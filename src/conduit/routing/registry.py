"""The model registry: logical models, their deployments, and each deployment's live state."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from conduit.backends import Backend, GenerateRequest
from conduit.backends.base import estimate_tokens
from conduit.backends.embedded import EmbeddedBackend
from conduit.backends.openai_compat import OpenAICompatBackend, UpstreamSessions
from conduit.config import Deployment, ModelSettings, Settings
from conduit.errors import APIError
from conduit.gateway.admission import AdmissionQueue
from conduit.gateway.auth import Principal
from conduit.routing.balancer import BALANCERS, Balancer
from conduit.routing.health import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)
EWMA_ALPHA = 0.3
# An estimate not refreshed for this long has shrunk by 1/e: a deployment once seen as slow gets
# picked again and re-measured instead of being starved by one bad sample.
EWMA_DECAY_S = 2.0


@dataclass(eq=False)
class DeploymentHandle:
    id: str
    backend: Backend
    settings: Deployment
    breaker: CircuitBreaker
    in_flight: int = 0
    latency_ewma_s: float | None = None
    sampled_at: float = 0.0
    served: int = 0
    load_error: str | None = None

    @property
    def weight(self) -> float:
        return self.settings.weight

    def has_room(self) -> bool:
        limit = self.settings.max_in_flight
        return limit is None or self.in_flight < limit

    def usable(self) -> bool:
        return self.backend.ready and self.breaker.available() and self.has_room()

    @contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        self.served += 1
        self.breaker.on_start()
        try:
            yield
        finally:
            self.in_flight -= 1

    @property
    def ewma_s(self) -> float | None:
        """The latency estimate, decayed by how long it has gone without a new sample."""
        if self.latency_ewma_s is None:
            return None
        return self.latency_ewma_s * math.exp(-(time.monotonic() - self.sampled_at) / EWMA_DECAY_S)

    def observe_latency(self, seconds: float) -> None:
        previous = self.latency_ewma_s
        self.latency_ewma_s = seconds if previous is None else EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * previous
        self.sampled_at = time.monotonic()


@dataclass(eq=False)
class ModelGroup:
    settings: ModelSettings
    deployments: list[DeploymentHandle]
    balancer: Balancer = field(init=False)
    queue: AdmissionQueue | None = field(init=False)  # only when every deployment has a max_in_flight

    def __post_init__(self) -> None:
        self.balancer = BALANCERS[self.settings.balancer]()
        caps = [d.settings.max_in_flight for d in self.deployments]
        bounded = bool(caps) and all(cap is not None for cap in caps)
        queue = self.settings.queue
        self.queue = AdmissionQueue(self.name, sum(caps), queue.max_size, queue.max_wait_s) if bounded else None  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.settings.name

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> DeploymentHandle | None:
        """A usable deployment by the group's balancer, preferring ones not just tried."""
        usable = [d for d in self.deployments if d.usable()]
        fresh = [d for d in usable if d.id not in exclude] or usable
        return self.balancer.pick(fresh) if fresh else None  # type: ignore[return-value]

    def state(self) -> str:
        if all(d.load_error for d in self.deployments):
            return "failed"
        if not any(d.backend.ready for d in self.deployments):
            return "loading"
        return "ready"


class Registry:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self.upstream_sessions = UpstreamSessions()  # before the groups: their backends share it
        # For webhooks and other calls off the generation path.
        self.client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=100,
                                                                       max_keepalive_connections=20))
        self.groups: dict[str, ModelGroup] = {m.name: self._group(m) for m in settings.models}
        self._allowed = {t.name: set(t.models) for t in settings.tenants if t.models is not None}
        self._tasks: list[asyncio.Task] = []
        self.loading: asyncio.Task | None = None  # set by start(); done when every deployment has loaded or failed

    def _group(self, model: ModelSettings) -> ModelGroup:
        handles = []
        for index, deployment in enumerate(model.deployments):
            backend: Backend
            if deployment.backend == "embedded":
                backend = EmbeddedBackend(model.name, deployment)
            else:
                backend = OpenAICompatBackend(model.name, deployment, self.upstream_sessions)
            handle_id = deployment.id or f"{model.name}-{index}"
            breaker = CircuitBreaker(model.health.failure_threshold, model.health.cooldown_s)
            handles.append(DeploymentHandle(handle_id, backend, deployment, breaker))
        return ModelGroup(model, handles)

    def visible(self, principal: Principal | None) -> list[str]:
        """The logical models this caller may use, in configuration order."""
        return [name for name in self.groups if self.allowed(principal, name)]

    def allowed(self, principal: Principal | None, model: str) -> bool:
        if principal is None or principal.is_admin or principal.tenant not in self._allowed:
            return True
        return model in self._allowed[principal.tenant]

    def group(self, model: str, principal: Principal | None = None) -> ModelGroup:
        group = self.groups.get(model)
        # A model the tenant may not use looks exactly like one that does not exist.
        if group is None or not self.allowed(principal, model):
            raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return group

    def context_length(self, model: str) -> int | None:
        """The smallest context window among the model's deployments, where known."""
        group = self.groups.get(model)
        lengths = [h.settings.context_length or h.backend.max_model_len for h in group.deployments] if group else []
        known = [n for n in lengths if n]
        return min(known) if known else None

    def count_prompt_tokens(self, request: GenerateRequest) -> int:
        """The prompt's tokens by its model's tokenizer where we have it, else an estimate."""
        group = self.groups.get(request.model)
        for handle in group.deployments if group else ():
            count = getattr(handle.backend, "count_tokens", None)
            if count is not None:
                return count(request)
        return estimate_tokens(request)

    async def start(self) -> None:
        """Load embedded models in the background and start active health checks."""
        self.loading = asyncio.create_task(self._load_all())
        self._tasks.append(self.loading)
        for group in self.groups.values():
            interval = group.settings.health.check_interval_s
            if interval > 0:
                self._tasks.append(asyncio.create_task(self._check_health(group, interval)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for group in self.groups.values():
            for handle in group.deployments:
                await handle.backend.close()
        await self.upstream_sessions.close()
        await self.client.aclose()

    async def _load_all(self) -> None:
        for group in self.groups.values():
            for handle in group.deployments:
                try:
                    await handle.backend.start()
                except Exception as exc:  # one bad model must not take the others down
                    handle.load_error = str(exc)
                    log.exception("deployment %s of model %s failed to load", handle.id, group.name)

    async def _check_health(self, group: ModelGroup, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for handle in group.deployments:
                check = getattr(handle.backend, "check_health", None)
                if check is None:
                    continue
                healthy = await check()
                if healthy and handle.breaker.state is not BreakerState.CLOSED:
                    log.info("deployment %s recovered (active check)", handle.id)
                    handle.breaker.on_success()
                elif not healthy:
                    handle.breaker.on_failure()
