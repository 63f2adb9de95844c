"""Where every finished request goes: its request-log row and trace, the gateway metrics, and
the OTLP exporter when one is configured."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from conduit.observability.request_log import RequestLogWriter
from conduit.observability.request_metrics import RequestMetrics
from conduit.observability.tracing import OPERATIONS, SpanExporter, trace_body

if TYPE_CHECKING:
    from conduit.config import ObservabilitySettings
    from conduit.pipeline.context import RequestContext

log = logging.getLogger(__name__)
RECENT = 10_000  # request ids remembered with their tenant: feedback may arrive before the row is written


class Recorder:
    def __init__(self, writer: RequestLogWriter, metrics: RequestMetrics, settings: ObservabilitySettings,
                 exporter: SpanExporter | None = None) -> None:
        self.writer = writer
        self.metrics = metrics
        self.settings = settings
        self.exporter = exporter
        self.recent: OrderedDict[str, str | None] = OrderedDict()

    def finish(self, ctx: RequestContext, status: str, http_status: int, error_type: str | None = None,
               error_id: str | None = None) -> None:
        record = ctx.record(status, http_status, error_type, error_id)
        traced = self.settings.traces and (ctx.endpoint in OPERATIONS or bool(ctx.stages))
        self.writer.record(record, trace_body(ctx, record, self.settings.trace_max_chars) if traced else None)
        self.metrics.observe(ctx, record)
        self.recent[ctx.id] = record.tenant_id
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        if self.exporter is not None:
            try:
                self.exporter.export(ctx, record)
            except Exception:  # telemetry must never fail a request
                log.exception("OTLP export of %s failed", ctx.id)

    def tenant_of(self, request_id: str) -> tuple[bool, str | None]:
        """(known, tenant id) of a request finished recently by this process."""
        if request_id in self.recent:
            return True, self.recent[request_id]
        return False, None

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
        self.writer.close()
