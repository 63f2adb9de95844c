"""Guard verdicts and guard latency, counted in process and served on /metrics."""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from conduit.engine.async_engine import LatencyHistogram
from conduit.observability.engine_metrics import histogram_buckets

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class GuardStats:
    def __init__(self) -> None:
        self.verdicts: Counter[tuple[str, str]] = Counter()  # (guard, outcome) -> count
        self.seconds: dict[str, LatencyHistogram] = {}

    def count(self, guard: str, outcome: str) -> None:
        self.verdicts[guard, outcome] += 1

    def time(self, guard: str, seconds: float) -> None:
        if guard not in self.seconds:
            self.seconds[guard] = LatencyHistogram(_BUCKETS)
        self.seconds[guard].observe(seconds)


class GuardCollector(Collector):
    def __init__(self, stats: GuardStats) -> None:
        self.stats = stats

    def collect(self):
        verdicts = CounterMetricFamily("conduit:guard_verdicts", "Guard outcomes: pass, block, redact, flag...",
                                       labels=["guard", "outcome"])
        for (guard, outcome), count in sorted(self.stats.verdicts.items()):
            verdicts.add_metric([guard, outcome], count)
        seconds = HistogramMetricFamily("conduit:guard_seconds", "Time a guard took per request.", labels=["guard"])
        for guard, hist in sorted(self.stats.seconds.items()):
            seconds.add_metric([guard], histogram_buckets(hist), hist.total)
        yield from (verdicts, seconds)
