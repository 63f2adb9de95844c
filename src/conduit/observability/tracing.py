"""A request's trace: its stages, stored in the database (redacted) and exported as OpenTelemetry
spans over OTLP when an endpoint is configured.

Stages are timed cheaply on the request's context while it runs (`ctx.stage(...)`); spans are
made only at the end, with the recorded start and end times, so a server without an OTLP
endpoint pays nothing for OpenTelemetry. Exported spans carry the GenAI semantic-convention
attributes and no message content; stored traces hold the prompt and answer, redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conduit.config import ObservabilitySettings
    from conduit.observability.request_log import RequestRecord
    from conduit.pipeline.context import RequestContext

log = logging.getLogger(__name__)
OPERATIONS = {"chat.completions": "chat", "completions": "text_completion", "embeddings": "embeddings"}


def trace_body(ctx: RequestContext, record: RequestRecord, max_chars: int) -> dict[str, Any]:
    """The stored trace of a finished request (still unredacted)."""
    end = ctx.started + record.latency_ms / 1000
    stages = [{"name": s.name, "start_ms": round((s.start - ctx.started) * 1000, 3),
               "duration_ms": round(((s.end or end) - s.start) * 1000, 3), "attributes": s.attributes}
              for s in sorted(ctx.stages, key=lambda s: s.start)]
    retrieval = None
    if ctx.retrieved is not None:
        retrieval = {"query": _cut(ctx.query, max_chars), "chunks": ctx.retrieved}
    return {"stages": stages,
            "route": {"model": ctx.model, "deployment": ctx.deployment, "reasons": ctx.route,
                      "attempts": ctx.attempts},
            "retrieval": retrieval, "prompt": _cut_prompt(ctx.sent, max_chars),
            "answer": _cut("".join(ctx.answer), max_chars), "guards": dict(ctx.guards),
            "cost_usd": record.cost_usd}


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def _cut_prompt(prompt: Any, limit: int) -> Any:
    if isinstance(prompt, str):
        return _cut(prompt, limit)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        return [{**m, "content": _cut(m["content"], limit)} if isinstance(m.get("content"), str) else m
                for m in prompt]
    return prompt  # token ids


def redactor(redact_text: Callable[[str], str]) -> Callable[[dict], dict]:
    """A function replacing personal data in every text of a trace body: prompt, answer, the
    retrieval query and the retrieved chunks (documents hold personal data too)."""

    def redact(body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            body["prompt"] = redact_text(prompt)
        elif isinstance(prompt, list):
            body["prompt"] = [{**m, "content": redact_text(m["content"])}
                              if isinstance(m, dict) and isinstance(m.get("content"), str) else m for m in prompt]
        if body.get("answer"):
            body["answer"] = redact_text(body["answer"])
        retrieval = body.get("retrieval")
        if retrieval:
            if retrieval.get("query"):
                retrieval["query"] = redact_text(retrieval["query"])
            for chunk in retrieval.get("chunks") or []:
                if chunk.get("text"):
                    chunk["text"] = redact_text(chunk["text"])
        return body

    return redact


class SpanExporter:
    """Turns finished requests into OpenTelemetry spans, exported in batches over OTLP/HTTP."""

    def __init__(self, settings: ObservabilitySettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, headers=settings.otlp_headers or None)
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self._tracer = self._provider.get_tracer("conduit")
        self._propagator = TraceContextTextMapPropagator()

    def export(self, ctx: RequestContext, record: RequestRecord) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        def at(moment: float) -> int:  # perf_counter seconds -> wall-clock nanoseconds
            return int((ctx.created + moment - ctx.started) * 1e9)

        parent = self._propagator.extract(ctx.carrier) if ctx.carrier else None
        operation = OPERATIONS.get(record.endpoint, record.endpoint)
        root = self._tracer.start_span(f"{operation} {ctx.model or ''}".strip(), context=parent,
                                       kind=trace.SpanKind.SERVER, start_time=at(ctx.started),
                                       attributes=_genai_attributes(ctx, record, operation))
        if record.status == "error":
            root.set_status(Status(StatusCode.ERROR, record.error_type or "error"))
        inside = trace.set_span_in_context(root)
        end = ctx.started + record.latency_ms / 1000
        for stage in ctx.stages:
            attributes = {f"conduit.{k}": _attribute(v) for k, v in stage.attributes.items() if v is not None}
            if stage.name == "generate":
                attributes.update(_genai_attributes(ctx, record, operation))
            span = self._tracer.start_span(stage.name, context=inside, start_time=at(stage.start),
                                           attributes=attributes)
            span.end(end_time=at(stage.end or end))
        root.end(end_time=at(end))

    def close(self) -> None:
        try:
            self._provider.shutdown()  # flushes what is queued
        except Exception:
            log.exception("OTLP exporter: shutdown failed")


def _genai_attributes(ctx: RequestContext, record: RequestRecord, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": "conduit",
                                  "gen_ai.response.id": ctx.id, "conduit.request.id": ctx.id,
                                  "http.response.status_code": record.http_status}
    if ctx.requested_model:
        attributes["gen_ai.request.model"] = ctx.requested_model
    if record.model:
        attributes["gen_ai.response.model"] = record.model
    if record.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = record.completion_tokens or 0
    if record.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [record.finish_reason]
    if record.tenant_id:
        attributes["conduit.tenant.id"] = record.tenant_id
    if record.cache:
        attributes["conduit.cache"] = record.cache
    if record.cost_usd is not None:
        attributes["conduit.cost_usd"] = record.cost_usd
    if record.error_type:
        attributes["error.type"] = record.error_type
    return attributes


def _attribute(value: Any) -> Any:
    """Span attributes take primitives and lists of them; anything else becomes text."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | bool | int | float) for v in value):
        return list(value)
    return str(value)
