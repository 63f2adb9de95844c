"""What one request did, as the pipeline observed it; becomes its request-log row."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Self

from conduit.backends import Delta
from conduit.config import Prices
from conduit.gateway.auth import Principal
from conduit.observability.request_log import RequestRecord


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass
class Stage:
    """One timed step of the request (perf_counter seconds); becomes a span of its trace."""

    name: str
    start: float
    end: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    # A context manager itself (`with ctx.stage(...)`): a generator-based one costs several
    # times more, on every stage of every request.
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end = time.perf_counter()


@dataclass
class RequestContext:
    endpoint: str
    principal: Principal | None = None
    model: str | None = None
    stream: bool = False
    id: str = field(default_factory=lambda: new_id("req"))
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    route: list[str] = field(default_factory=list)  # why this model: "direct", "rules:code", "fallback:x"
    attempts: list[str] = field(default_factory=list)  # "deployment:outcome" per try
    deployment: str | None = None  # the one that answered
    cache_control: str | None = None  # the client's x-conduit-cache: no-cache | no-store
    cache: str = "miss"  # what the cache stage did: hit | miss
    prices: Prices | None = None  # of the model that answered
    cached_tokens: int = 0
    priority: int = 0  # in admission queues: higher leaves first
    retrieval: Any = None  # the request's RetrievalSpec, if it asked for documents
    annotations: dict | None = None  # extension fields for the response (citations)
    guards: dict[str, str] = field(default_factory=dict)  # guard -> verdict ("pass", "block:0.97", ...)
    created: float = field(default_factory=time.time)  # wall clock at `started`, for exported spans
    stages: list[Stage] = field(default_factory=list)
    token_gaps: list[float] = field(default_factory=list)  # seconds between a stream's deltas
    last_token_at: float | None = None
    prompt_version: str | None = None
    requested_model: str | None = None  # as the client named it (`model` becomes the one that answered)
    carrier: dict[str, str] | None = None  # the client's W3C trace context headers, if it sent them
    sent: Any = None  # the messages or prompt as sent to the model (after guards and retrieval)
    retrieved: list[dict] | None = None  # the chunks retrieval put in the prompt, with scores
    query: str | None = None  # what retrieval searched for
    answer: list[str] = field(default_factory=list)  # the text of choice 0, as produced

    def stage(self, name: str, **attributes: Any) -> Stage:
        """Time a step of the request: `with ctx.stage("cache") as s: ... s.attributes[...] = ...`."""
        return self.begin(name, **attributes)

    def begin(self, name: str, **attributes: Any) -> Stage:
        """A stage ended later by setting `end` (a generation that streams past this frame)."""
        stage = Stage(name, time.perf_counter(), attributes=attributes)
        self.stages.append(stage)
        return stage

    def note_route(self, reason: str) -> None:
        self.route.append(reason)

    def observe(self, delta: Delta) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        elif delta.completion_tokens > self.completion_tokens and self.last_token_at is not None:
            self.token_gaps.append(now - self.last_token_at)
        if delta.completion_tokens > self.completion_tokens or self.last_token_at is None:
            self.last_token_at = now
        if delta.index == 0 and delta.text:
            self.answer.append(delta.text)
        self.prompt_tokens = delta.prompt_tokens
        self.completion_tokens = delta.completion_tokens
        self.cached_tokens = max(self.cached_tokens, delta.cached_prompt_tokens)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def guard_header(self) -> str:
        """`x-conduit-guard`: each guard that ran and its verdict, e.g. `injection=pass;pii=redact:2`."""
        return ";".join(f"{guard}={verdict}" for guard, verdict in self.guards.items())

    @property
    def cost_usd(self) -> float:
        """What the answer cost at the answering model's prices. Nothing for cache hits and for
        requests that rode along on another's generation: no model ran for them."""
        if self.prices is None or self.cache == "hit" or "deduplicated" in self.route:
            return 0.0
        fresh = (self.prompt_tokens or 0) - self.cached_tokens
        p = self.prices
        return (fresh * p.input + self.cached_tokens * p.cached_input + self.completion_tokens * p.output) / 1e6

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first, as vLLM's TPOT: (last - first) / (tokens - 1)."""
        if self.first_token_at is None or self.last_token_at is None or self.completion_tokens < 2:
            return None
        return (self.last_token_at - self.first_token_at) * 1000 / (self.completion_tokens - 1)

    def record(
        self, status: str, http_status: int, error_type: str | None = None, error_id: str | None = None
    ) -> RequestRecord:
        now = time.perf_counter()
        principal = self.principal
        return RequestRecord(
            id=self.id,
            endpoint=self.endpoint,
            status=status,
            http_status=http_status,
            latency_ms=(now - self.started) * 1000,
            tenant_id=principal.tenant_id if principal else None,
            key_id=principal.key_id if principal else None,
            model=self.model,
            stream=self.stream,
            error_type=error_type,
            error_id=error_id,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens if self.prompt_tokens is not None else None,
            ttft_ms=(self.first_token_at - self.started) * 1000 if self.first_token_at else None,
            finish_reason=self.finish_reason,
            deployment=self.deployment,
            route=",".join(self.route) or None,
            attempts=len(self.attempts) or None,
            cache=self.cache if self.prompt_tokens is not None else None,
            cached_tokens=self.cached_tokens if self.prompt_tokens is not None else None,
            cost_usd=self.cost_usd if self.prompt_tokens is not None else None,
            guard=self.guard_header or None,
            tpot_ms=self.tpot_ms if self.stream else None,
            prompt_version=self.prompt_version,
        )
