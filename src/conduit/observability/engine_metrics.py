"""Prometheus view of the embedded engines, named like vLLM's metrics with a `conduit:` prefix.

A custom collector reads the latest stats snapshot each engine process sent to its front (and
the front's latency histograms) at scrape time: nothing is pushed, nothing is kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from conduit.engine.async_engine import AsyncEngine, LatencyHistogram

LABELS = ["model_name"]


class EngineCollector(Collector):
    def __init__(self, engines: Callable[[], Iterable[tuple[str, AsyncEngine]]]):
        self.engines = engines  # called per scrape: models load and unload at run time

    def collect(self):
        def gauge(name, doc):
            return GaugeMetricFamily(f"conduit:{name}", doc, labels=LABELS)

        def counter(name, doc):
            return CounterMetricFamily(f"conduit:{name}", doc, labels=LABELS)

        def histogram(name, doc):
            return HistogramMetricFamily(f"conduit:{name}", doc, labels=LABELS)

        running = gauge("num_requests_running", "Requests in the running batch.")
        waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        usage = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).")
        queries = counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        hits = counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        preemptions = counter("num_preemptions", "Sequences preempted for lack of KV blocks.")
        prompt = counter("prompt_tokens", "Prompt tokens computed (prefix-cache hits excluded).")
        generation = counter("generation_tokens", "Tokens generated.")
        ttft = histogram("time_to_first_token_seconds", "Time to first token.")
        itl = histogram("inter_token_latency_seconds", "Time between a request's outputs.")
        e2e = histogram("e2e_request_latency_seconds", "Request latency, end to end.")
        for model, engine in self.engines():
            s, labels = engine.stats, [model]
            running.add_metric(labels, s.num_requests_running)
            waiting.add_metric(labels, s.num_requests_waiting)
            usage.add_metric(labels, s.kv_cache_usage)
            queries.add_metric(labels, s.prefix_cache_queries)
            hits.add_metric(labels, s.prefix_cache_hits)
            preemptions.add_metric(labels, s.num_preemptions)
            prompt.add_metric(labels, s.prompt_tokens)
            generation.add_metric(labels, s.generation_tokens)
            for family, hist in ((ttft, engine.ttft), (itl, engine.itl), (e2e, engine.e2e)):
                family.add_metric(labels, histogram_buckets(hist), hist.total)
        yield from (running, waiting, usage, queries, hits, preemptions, prompt, generation,
                    ttft, itl, e2e)


def embedded_engines(groups: Iterable) -> Iterable[tuple[str, AsyncEngine]]:
    """(model name, engine) of every loaded embedded deployment among the registry's groups."""
    from conduit.backends.embedded import EmbeddedBackend

    for group in groups:
        for deployment in group.deployments:
            backend = deployment.backend
            if isinstance(backend, EmbeddedBackend) and backend.engine is not None:
                yield group.name, backend.engine


def histogram_buckets(hist: LatencyHistogram) -> list[tuple[str, float]]:
    return [(str(b), c) for b, c in zip(hist.buckets, hist.counts)] + [("+Inf", hist.count)]
