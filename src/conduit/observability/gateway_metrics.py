"""Prometheus view of the admission queues: depth, wait times and refusals per model."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from conduit.gateway.admission import AdmissionQueue
from conduit.observability.engine_metrics import histogram_buckets

LABELS = ["model_name"]


class QueueCollector(Collector):
    def __init__(self, queues: Callable[[], Iterable[AdmissionQueue]]):
        self.queues = queues  # called per scrape

    def collect(self):
        depth = GaugeMetricFamily("conduit:queue_depth", "Requests waiting for a slot.", labels=LABELS)
        in_use = GaugeMetricFamily("conduit:queue_slots_in_use", "Slots taken of the model's total.", labels=LABELS)
        rejected = CounterMetricFamily("conduit:queue_rejected", "Requests refused: queue full or wait too long.",
                                       labels=LABELS)
        wait = HistogramMetricFamily("conduit:queue_wait_seconds", "Time from arrival to a slot.", labels=LABELS)
        for queue in self.queues():
            labels = [queue.name]
            depth.add_metric(labels, queue.depth)
            in_use.add_metric(labels, queue.in_use)
            rejected.add_metric(labels, queue.rejected)
            wait.add_metric(labels, histogram_buckets(queue.wait_seconds), queue.wait_seconds.total)
        yield from (depth, in_use, rejected, wait)
