"""Gateway metrics per finished request, and the health of every deployment, for /metrics.

Label values are bounded whatever the traffic: a model name the registry does not know counts as
`unknown` (clients can send any string), and tenants past the first `top_tenants` seen by this
process count as `other`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from conduit.routing.health import BreakerState

if TYPE_CHECKING:
    from conduit.observability.request_log import RequestRecord
    from conduit.pipeline.context import RequestContext
    from conduit.routing.registry import ModelGroup

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
LIMITED = {"rate_limit_exceeded", "insufficient_quota", "queue_full", "queue_timeout"}  # limits, budgets, queues


class TenantLabels:
    """The first `top_n` tenants keep their own label; the rest fold into `other`."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        if tenant is None:
            return "none"
        if tenant in self._known:
            return tenant
        with self._lock:
            if len(self._known) < self.top_n:
                self._known.add(tenant)
                return tenant
        return "other"


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry, models: Callable[[], Collection[str]], top_tenants: int) -> None:
        self._models = models
        self.tenant = TenantLabels(top_tenants)

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(f"conduit:{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: list[str], buckets=LATENCY_BUCKETS) -> Histogram:
            return Histogram(f"conduit:{name}", doc, labels, buckets=buckets, registry=registry)

        self.requests = counter("requests", "Requests finished, by outcome.", ["endpoint", "model", "status", "code"])
        self.latency = histogram("request_latency_seconds", "Request latency at the gateway, end to end.",
                                 ["endpoint", "model"])
        self.ttft = histogram("request_ttft_seconds", "Streamed requests: arrival to first token.", ["model"])
        self.tpot = histogram("request_tpot_seconds", "Streamed requests: time per output token after the first.",
                              ["model"], TOKEN_BUCKETS)
        self.itl = histogram("request_inter_token_latency_seconds", "Streamed requests: time between deltas.",
                             ["model"], TOKEN_BUCKETS)
        self.input_tokens = counter("input_tokens", "Prompt tokens of answered requests.", ["model", "tenant"])
        self.output_tokens = counter("output_tokens", "Completion tokens of answered requests.", ["model", "tenant"])
        self.cost = counter("cost_usd", "Cost in US dollars at the models' prices.", ["model", "tenant"])
        self.cache = counter("cache_lookups", "Cacheable requests by what the cache did.", ["result"])
        self.limited = counter("rate_limited", "Requests refused by limits, budgets or admission queues.",
                               ["reason"])
        self.retries = counter("retries", "Extra attempts after a retryable failure, by the model asked for.",
                               ["model"])
        self.fallbacks = counter("fallbacks", "Moves to a fallback model, by the model asked for.", ["model"])

    def observe(self, ctx: RequestContext, record: RequestRecord) -> None:
        model = record.model if record.model in self._models() else "unknown"
        self.requests.labels(record.endpoint, model, record.status, str(record.http_status)).inc()
        self.latency.labels(record.endpoint, model).observe(record.latency_ms / 1000)
        if record.error_type in LIMITED:
            self.limited.labels(record.error_type).inc()
        if record.prompt_tokens is None:
            return
        tenant = self.tenant(ctx.principal.tenant if ctx.principal is not None else None)
        self.input_tokens.labels(model, tenant).inc(record.prompt_tokens)
        self.output_tokens.labels(model, tenant).inc(record.completion_tokens or 0)
        if record.cost_usd:
            self.cost.labels(model, tenant).inc(record.cost_usd)
        if record.cache is not None and ctx.route != ["guard"]:
            self.cache.labels(record.cache).inc()
        # By the model the client asked for: its failures are what sent the request elsewhere.
        asked = ctx.requested_model if ctx.requested_model in self._models() else "unknown"
        fallbacks = sum(1 for r in ctx.route if r.startswith(("fallback:", "context:")))
        if fallbacks:
            self.fallbacks.labels(asked).inc(fallbacks)
        retries = len(ctx.attempts) - 1 - fallbacks
        if retries > 0:
            self.retries.labels(asked).inc(retries)
        if ctx.stream and record.ttft_ms is not None:
            self.ttft.labels(model).observe(record.ttft_ms / 1000)
            if record.tpot_ms is not None:
                self.tpot.labels(model).observe(record.tpot_ms / 1000)
            itl = self.itl.labels(model)
            for gap in ctx.token_gaps:
                itl.observe(gap)


class DeploymentCollector(Collector):
    """Each deployment's health at scrape time: up (ready, circuit not open) and requests in flight."""

    def __init__(self, groups: Callable[[], Iterable[ModelGroup]]) -> None:
        self.groups = groups

    def collect(self):
        up = GaugeMetricFamily("conduit:deployment_up", "1 when the deployment is loaded and its circuit is not "
                               "open.", labels=["model", "deployment"])
        in_flight = GaugeMetricFamily("conduit:deployment_in_flight", "Requests in flight on the deployment.",
                                      labels=["model", "deployment"])
        for group in self.groups():
            for handle in group.deployments:
                labels = [group.name, handle.id]
                healthy = handle.backend.ready and handle.breaker.state is not BreakerState.OPEN
                up.add_metric(labels, 1.0 if healthy else 0.0)
                in_flight.add_metric(labels, handle.in_flight)
        yield from (up, in_flight)


class CallbackCounter(Collector):
    """A counter whose value lives elsewhere (read at scrape time)."""

    family = CounterMetricFamily

    def __init__(self, name: str, doc: str, value: Callable[[], float]) -> None:
        self.name, self.doc, self.value = name, doc, value

    def collect(self):
        yield self.family(self.name, self.doc, value=self.value())


class CallbackGauge(CallbackCounter):
    """A gauge whose value lives elsewhere (read at scrape time)."""

    family = GaugeMetricFamily
