"""GET /metrics: the embedded engines' and the admission queues' metrics, Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from conduit.backends.embedded import EmbeddedBackend
from conduit.observability.engine_metrics import EngineCollector
from conduit.observability.gateway_metrics import QueueCollector
from conduit.observability.guard_metrics import GuardCollector

router = APIRouter()


def _engines(app):
    pipeline = getattr(app.state, "pipeline", None)
    if pipeline is None:
        return
    for name, group in pipeline.registry.groups.items():
        for deployment in group.deployments:
            backend = deployment.backend
            if isinstance(backend, EmbeddedBackend) and backend.engine is not None:
                yield name, backend.engine


def _queues(app):
    pipeline = getattr(app.state, "pipeline", None)
    for group in pipeline.registry.groups.values() if pipeline is not None else ():
        if group.queue is not None:
            yield group.queue


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(lambda: list(_engines(request.app))))
    registry.register(QueueCollector(lambda: list(_queues(request.app))))
    stats = getattr(request.app.state, "guard_stats", None)
    if stats is not None:
        registry.register(GuardCollector(stats))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
