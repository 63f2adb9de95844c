"""Dispatch: run a request on a model's deployments with retries, fallbacks and a deadline.

Per model: up to `retry.attempts` tries, each on a deployment the balancer picks (preferring one
not tried yet), with exponential backoff and full jitter, honouring `Retry-After`. Only failures
of the upstream are retried (connection errors, timeouts, 429, 5xx, broken streams), never a
client's mistake. When a model's attempts run out, the next model of its `fallbacks` chain
takes over; a prompt too long for a model goes to its `context_fallback`. Nothing outlives the
first model's `deadline_s`.

Streams: a failure before the first token is retried transparently. After it, the client has
seen text, so the stream ends with an explicit error instead (non-streamed requests are
buffered per attempt and can always be retried).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from conduit.backends import Delta, GenerateRequest
from conduit.backends.openai_compat import UpstreamError
from conduit.errors import APIError, model_loading
from conduit.pipeline.context import RequestContext
from conduit.routing.registry import DeploymentHandle, ModelGroup, Registry


class StreamInterrupted(APIError):
    def __init__(self, cause: APIError) -> None:
        super().__init__(502, f"The stream was interrupted after it started: {cause.message}",
                         "upstream_error", code="stream_interrupted")


class Dispatcher:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool) -> AsyncIterator[Delta]:
        group = self.registry.group(request.model, ctx.principal)
        needed = "chat" if request.messages is not None else "completions"
        if needed not in group.settings.capabilities:
            raise APIError(400, f"The model '{group.name}' does not support {needed}.", param="model",
                           code="unsupported_capability")
        deadline = time.monotonic() + group.settings.deadline_s
        chain = [group.name, *group.settings.fallbacks]
        last_error: APIError | None = None
        position = 0
        while position < len(chain):
            group = self.registry.group(chain[position], ctx.principal)
            if position > 0:
                ctx.note_route(f"fallback:{group.name}")
            try:
                async for delta in self._on_model(ctx, group, replace(request, model=group.name), stream, deadline):
                    yield delta
                return
            except APIError as exc:
                last_error = exc
                if exc.code == "context_length_exceeded" and group.settings.context_fallback:
                    target = group.settings.context_fallback
                    ctx.note_route(f"context:{target}")
                    chain[position + 1:position + 1] = [target]  # try it next, then the rest
                elif not _retryable(exc):
                    raise
            position += 1
        assert last_error is not None
        raise last_error

    async def _on_model(self, ctx: RequestContext, group: ModelGroup, request: GenerateRequest, stream: bool,
                        deadline: float) -> AsyncIterator[Delta]:
        if group.queue is None:
            async for delta in self._attempts(ctx, group, request, stream, deadline):
                yield delta
            return
        async with group.queue.slot(ctx.priority):
            async for delta in self._attempts(ctx, group, request, stream, deadline):
                yield delta

    async def _attempts(self, ctx: RequestContext, group: ModelGroup, request: GenerateRequest, stream: bool,
                        deadline: float) -> AsyncIterator[Delta]:
        policy = group.settings.retry
        tried: set[str] = set()
        last_error: APIError | None = None
        for attempt in range(policy.attempts):
            handle = group.pick(tried)
            if handle is None:
                last_error = last_error or _unavailable(group)
                break
            tried.add(handle.id)
            sent_any = False
            try:
                async for delta in self._attempt(ctx, handle, request, stream, deadline):
                    sent_any = True
                    yield delta
                return
            except APIError as exc:
                if sent_any:
                    raise StreamInterrupted(exc) from None
                if not _retryable(exc):
                    raise
                last_error = exc
            pause = _backoff(policy.backoff_base_s, policy.backoff_max_s, attempt, last_error)
            if attempt + 1 < policy.attempts and group.pick(tried) is not None:
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
        assert last_error is not None
        raise last_error

    async def _attempt(self, ctx: RequestContext, handle: DeploymentHandle, request: GenerateRequest,
                       stream: bool, deadline: float) -> AsyncIterator[Delta]:
        """One try on one deployment; non-streamed answers are held back until complete."""
        started = time.monotonic()
        held: list[Delta] = []
        verdict = False
        ctx.model, ctx.deployment = request.model, handle.id
        ctx.prices = self.registry.groups[request.model].settings.prices
        # Counted when it starts: a stream's headers go out at its first token, mid-attempt.
        attempt = len(ctx.attempts)
        ctx.attempts.append(f"{handle.id}:running")
        with handle.track():
            generation = handle.backend.generate(request)
            try:
                if stream:
                    while True:
                        try:
                            async with _timer(deadline):  # no task per delta, unlike wait_for
                                delta = await anext(generation)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise _DeadlineExceeded() from None
                        yield delta
                else:  # nothing leaves before the end: one timer for the whole answer
                    try:
                        async with _timer(deadline):
                            held = [delta async for delta in generation]
                    except TimeoutError:
                        raise _DeadlineExceeded() from None
                handle.breaker.on_success()
                handle.observe_latency(time.monotonic() - started)
                verdict = True
                ctx.attempts[attempt] = f"{handle.id}:ok"
            except APIError as exc:
                ctx.attempts[attempt] = f"{handle.id}:{exc.code or exc.status}"
                if _counts_against_deployment(exc):
                    handle.breaker.on_failure()
                    verdict = True
                raise
            finally:
                if not verdict:
                    handle.breaker.on_abandon()
                await generation.aclose()
        for delta in held:
            yield delta


def _timer(deadline: float) -> asyncio.Timeout:
    """A timeout scope ending at `deadline` (time.monotonic()); _DeadlineExceeded if it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DeadlineExceeded()
    return asyncio.timeout(remaining)


class _DeadlineExceeded(APIError):
    def __init__(self) -> None:
        super().__init__(504, "The request did not finish within its deadline.", "timeout",
                         code="deadline_exceeded")


def _retryable(error: APIError) -> bool:
    if isinstance(error, _DeadlineExceeded | StreamInterrupted):
        return False
    return isinstance(error, UpstreamError) and error.retryable or error.status in (429, 502, 503, 504)


def _counts_against_deployment(error: APIError) -> bool:
    return isinstance(error, UpstreamError) and error.retryable


def _backoff(base: float, cap: float, attempt: int, error: APIError | None) -> float:
    pause = random.uniform(0, min(cap, base * 2**attempt))  # "full jitter"
    retry_after = getattr(error, "retry_after", None)
    return max(pause, min(retry_after, cap)) if retry_after else pause


def _unavailable(group: ModelGroup) -> APIError:
    if group.state() == "loading":  # a server just started: say so, rather than "unhealthy"
        return model_loading(group.name)
    return APIError(503, f"No healthy deployment of '{group.name}' is available.", "service_unavailable",
                    code="no_healthy_deployment", headers={"Retry-After": "1"})
