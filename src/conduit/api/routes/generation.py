"""POST /v1/chat/completions and /v1/completions: parse -> pipeline -> serialize."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from conduit.api.deps import authenticated, parse_body, request_context
from conduit.api.errors import CLIENT_CLOSED, record_failure
from conduit.api.schemas import ChatCompletionRequest, CompletionRequest
from conduit.api.sse import (
    ClientDisconnected,
    EventStream,
    FastJSONResponse,
    cancel_on_disconnect,
    sse,
)
from conduit.backends import Delta, GenerateRequest, TokenLogprob
from conduit.errors import APIError
from conduit.gateway.admission import PRIORITIES
from conduit.gateway.gatekeeper import Gatekeeper, Pass
from conduit.pipeline import RequestContext
from conduit.pipeline.pipeline import Pipeline

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    principal = await authenticated(request)
    body = await parse_body(request, ChatCompletionRequest)
    ctx = request_context(request, "chat.completions", principal, body.model, body.stream)
    ctx.retrieval = body.retrieval
    ctx.prompt_version = _prompt_version(body)
    shape = _Shape(chat=True, id=ctx.id.replace("req-", "chatcmpl-"), model=body.model, logprobs=bool(body.logprobs))
    return await _respond(request, ctx, shape, [body.generate_request()], body.stream, body.include_usage)


async def completions(request: Request) -> Response:
    principal = await authenticated(request)
    body = await parse_body(request, CompletionRequest)
    ctx = request_context(request, "completions", principal, body.model, body.stream)
    shape = _Shape(chat=False, id=ctx.id.replace("req-", "cmpl-"), model=body.model,
                   logprobs=body.logprobs is not None)
    requests = [body.generate_request(prompt) for prompt in body.prompts()]
    return await _respond(request, ctx, shape, requests, body.stream, body.include_usage)


# Plain Starlette routes: the body is parsed by hand (OpenAI's API takes any Content-Type) and the
# caller is authenticated in the handler, so FastAPI's per-request dependency solving and response
# wrapping would buy nothing here: they were ~10% of the gateway's GIL-holding samples under load
# (py-spy, bench/gateway.py --profile), gone with these routes.
router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
router.add_route("/v1/completions", completions, methods=["POST"])


async def _respond(
    request: Request,
    ctx: RequestContext,
    shape: _Shape,
    requests: list[GenerateRequest],
    stream: bool,
    include_usage: bool,
) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    gatekeeper: Gatekeeper = request.app.state.gatekeeper
    recorder = request.app.state.recorder
    ctx.cache_control = _cache_control(request)
    ctx.priority = _priority(request)
    assert ctx.principal is not None and ctx.model is not None
    with ctx.stage("limits"):
        admitted = await gatekeeper.enter(
            ctx.principal, ctx.model, lambda: sum(pipeline.registry.count_prompt_tokens(r) for r in requests))
    deltas = _generate_all(pipeline, ctx, requests, stream)
    streaming = False
    try:
        if not stream:
            choices = await cancel_on_disconnect(request, _collect(deltas))
            extra = dict(ctx.annotations or {})
            if "_answer" in extra and choices:
                choices[0].text = [extra.pop("_answer")]

            async def record() -> None:
                # After the answer is sent: waking the log writer before would have it compete
                # with this response for the GIL (~1 ms of a cache hit's latency, measured).
                recorder.finish(ctx, "ok", 200)

            return FastJSONResponse({**shape.completion(choices, shape.usage(ctx)), **extra},
                                headers={**_route_headers(ctx), **admitted.headers},
                                background=BackgroundTask(record))
        # Wait for the first token before answering, so that errors found on the way
        # (unknown model, context too long) still get their own HTTP status.
        first = await cancel_on_disconnect(request, anext(deltas))
        streaming = True
    except ClientDisconnected:
        recorder.finish(ctx, "client_disconnected", CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        await deltas.aclose()
        raise
    finally:
        if not streaming:
            await _leave(gatekeeper, admitted, ctx)
    events = _events(request, ctx, shape, first, deltas, include_usage, lambda: _leave(gatekeeper, admitted, ctx))
    return EventStream(events, headers={**_route_headers(ctx), **admitted.headers})


async def _leave(gatekeeper: Gatekeeper, admitted: Pass, ctx: RequestContext) -> None:
    """Settle the request's limits and budget: tokens a model really ran, what it cost."""
    used: int | None
    if ctx.cache != "miss" or "deduplicated" in ctx.route:
        used = 0  # answered without running a model
    elif ctx.prompt_tokens is None:
        used = None  # failed before any usage was known: the prompt's charge stands
    else:
        used = ctx.prompt_tokens + ctx.completion_tokens
    await gatekeeper.leave(admitted, used, ctx.cost_usd)


def _priority(request: Request) -> int:
    value = request.headers.get("x-conduit-priority")
    if value is None:
        return 0
    if value in PRIORITIES:
        return PRIORITIES[value]
    raise APIError(400, "The x-conduit-priority header takes 'high', 'normal' or 'low'.",
                   param="x-conduit-priority", code="invalid_header")


def _prompt_version(body: ChatCompletionRequest) -> str | None:
    """What feedback is grouped by: the client's `metadata.prompt_version`, else a short hash of
    the system prompt (the same template text, the same version)."""
    given = (body.metadata or {}).get("prompt_version")
    if given:
        return given[:64]
    system = [m.content for m in body.messages if m.role in ("system", "developer")]
    if not system:
        return None
    return "sys-" + hashlib.sha256(json.dumps(system, default=str).encode()).hexdigest()[:8]


def _route_headers(ctx: RequestContext) -> dict[str, str]:
    """Which model answered, why, after how many tries, and whether the cache did."""
    headers = {"x-request-id": ctx.id, "x-conduit-model": ctx.model or "", "x-conduit-route": ",".join(ctx.route),
               "x-conduit-attempts": str(len(ctx.attempts)), "x-conduit-cache": ctx.cache}
    if ctx.guards:
        headers["x-conduit-guard"] = ctx.guard_header
    return headers


def _cache_control(request: Request) -> str | None:
    value = request.headers.get("x-conduit-cache")
    if value is None:
        return None
    if value not in ("no-cache", "no-store"):
        raise APIError(400, "The x-conduit-cache header takes 'no-cache' or 'no-store'.",
                       param="x-conduit-cache", code="invalid_header")
    return value


async def _generate_all(
    pipeline: Pipeline, ctx: RequestContext, requests: list[GenerateRequest], stream: bool
) -> AsyncIterator[tuple[int, Delta]]:
    """Every prompt's deltas in turn, tagged with their choice index (prompt x n + the delta's
    own); usage summed over the prompts."""
    prompt_tokens = completion_tokens = 0
    for number, request in enumerate(requests):
        last: Delta | None = None
        async for delta in pipeline.generate(ctx, request, stream):
            last = delta
            ctx.prompt_tokens = prompt_tokens + delta.prompt_tokens
            ctx.completion_tokens = completion_tokens + delta.completion_tokens
            yield number * request.sampling.n + delta.index, delta
        if last is not None:
            prompt_tokens += last.prompt_tokens
            completion_tokens += last.completion_tokens


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


async def _collect(deltas: AsyncIterator[tuple[int, Delta]]) -> list[_Choice]:
    choices: dict[int, _Choice] = {}
    async for index, delta in deltas:
        choice = choices.setdefault(index, _Choice())
        choice.text.append(delta.text)
        choice.logprobs.extend(delta.token_logprobs)
        choice.finish_reason = delta.finish_reason or choice.finish_reason
    return [choices[i] for i in sorted(choices)]


async def _events(
    request: Request,
    ctx: RequestContext,
    shape: _Shape,
    first: tuple[int, Delta],
    deltas: AsyncIterator[tuple[int, Delta]],
    include_usage: bool,
    leave: Callable[[], Awaitable[None]],
) -> AsyncIterator[str]:
    status, http_status = "client_disconnected", CLIENT_CLOSED
    try:
        item: tuple[int, Delta] | None = first
        started: set[int] = set()
        while item is not None:
            index, delta = item
            if index not in started and shape.chat:
                started.add(index)
                yield sse(shape.chunk(index, {"role": "assistant", "content": ""}, None, include_usage))
            if delta.text or delta.token_logprobs:
                yield sse(shape.chunk(index, delta.text, None, include_usage, delta.token_logprobs))
            if delta.finish_reason is not None:
                yield sse(shape.chunk(index, "", delta.finish_reason, include_usage))
            item = await anext(deltas, None)
        if ctx.annotations:  # citations, after the text and before [DONE]
            extra = {k: v for k, v in ctx.annotations.items() if not k.startswith("_")}
            yield sse({**shape.envelope(), "choices": [], **extra})
        if include_usage:
            yield sse({**shape.envelope(), "choices": [], "usage": shape.usage(ctx)})
        yield sse("[DONE]")
        status, http_status = "ok", 200
    except Exception as exc:
        # After the first byte the status line is sent: the failure travels as an explicit
        # error event (and there is no [DONE]), never as a stream that looks complete.
        error = exc if isinstance(exc, APIError) else APIError(500, "The stream failed on the server.", "server_error")
        record_failure(request, error)
        status = ""
        yield sse(error.body())
    finally:
        await deltas.aclose()
        await leave()
        if status:
            request.app.state.recorder.finish(ctx, status, http_status)


@dataclass
class _Shape:
    """OpenAI's response objects for chat (`chat.completion`) or legacy completions (`text_completion`)."""

    chat: bool
    id: str
    model: str
    logprobs: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def chunk(self, index: int, text: str | dict[str, str], finish: str | None, usage: bool,
              logprobs: tuple[TokenLogprob, ...] = ()) -> dict[str, Any]:
        detail = self.logprob_detail(logprobs) if logprobs else None
        if self.chat:
            delta = text if isinstance(text, dict) else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": detail, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text, "logprobs": detail, "finish_reason": finish}
        chunk = {**self.envelope(), "choices": [choice]}
        if usage:
            chunk["usage"] = None
        return chunk

    def completion(self, choices: list[_Choice], usage: dict[str, int]) -> dict[str, Any]:
        body = []
        for i, choice in enumerate(choices):
            text = "".join(choice.text)
            detail = self.logprob_detail(choice.logprobs) if self.logprobs else None
            if self.chat:
                body.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": detail, "finish_reason": choice.finish_reason})
            else:
                body.append({"index": i, "text": text, "logprobs": detail, "finish_reason": choice.finish_reason})
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.envelope(), "object": kind, "choices": body, "usage": usage}

    def logprob_detail(self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
        """Chat's `{"content": [...]}` or legacy completions' parallel lists."""
        if self.chat:
            content = [{"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in e.top]}
                       for e in entries]
            return {"content": content, "refusal": None}
        offsets, offset = [], 0
        for e in entries:
            offsets.append(offset)
            offset += len(e.token)
        return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}

    @staticmethod
    def usage(ctx: RequestContext) -> dict[str, int]:
        prompt, completion = ctx.prompt_tokens or 0, ctx.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
