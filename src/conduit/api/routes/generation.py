"""POST /v1/chat/completions and /v1/completions: parse -> pipeline -> serialize."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from conduit.api.deps import authenticated, parse_body, request_context
from conduit.api.errors import record_failure
from conduit.api.schemas import ChatCompletionRequest, CompletionRequest
from conduit.api.sse import ClientDisconnected, EventStream, cancel_on_disconnect, sse
from conduit.backends import Delta, GenerateRequest
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.pipeline import RequestContext
from conduit.pipeline.pipeline import Pipeline

router = APIRouter()

# Not an HTTP status anyone receives (the client is gone); nginx's code for it, in the log.
CLIENT_CLOSED = 499


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, principal: Principal = Depends(authenticated)) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    ctx = request_context(request, "chat.completions", principal, body.model, body.stream)
    shape = _Shape(chat=True, id=ctx.id.replace("req-", "chatcmpl-"), model=body.model)
    return await _respond(request, ctx, shape, [body.generate_request()], body.stream, body.include_usage)


@router.post("/v1/completions")
async def completions(request: Request, principal: Principal = Depends(authenticated)) -> Response:
    body = await parse_body(request, CompletionRequest)
    ctx = request_context(request, "completions", principal, body.model, body.stream)
    shape = _Shape(chat=False, id=ctx.id.replace("req-", "cmpl-"), model=body.model)
    requests = [body.generate_request(prompt) for prompt in body.prompts()]
    return await _respond(request, ctx, shape, requests, body.stream, body.include_usage)


async def _respond(
    request: Request,
    ctx: RequestContext,
    shape: _Shape,
    requests: list[GenerateRequest],
    stream: bool,
    include_usage: bool,
) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    log = request.app.state.request_log
    deltas = _generate_all(pipeline, ctx, requests, stream)
    try:
        if not stream:
            choices = await cancel_on_disconnect(request, _collect(deltas))
            log.record(ctx.record("ok", 200))
            return JSONResponse(shape.completion(choices, shape.usage(ctx)), headers=_route_headers(ctx))
        # Wait for the first token before answering, so that errors found on the way
        # (unknown model, context too long) still get their own HTTP status.
        first = await cancel_on_disconnect(request, anext(deltas))
    except ClientDisconnected:
        log.record(ctx.record("client_disconnected", CLIENT_CLOSED))
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        await deltas.aclose()
        raise
    return EventStream(_events(request, ctx, shape, first, deltas, include_usage), headers=_route_headers(ctx))


def _route_headers(ctx: RequestContext) -> dict[str, str]:
    """Which model answered, why, and after how many tries."""
    return {"x-conduit-model": ctx.model or "", "x-conduit-route": ",".join(ctx.route),
            "x-conduit-attempts": str(len(ctx.attempts))}


async def _generate_all(
    pipeline: Pipeline, ctx: RequestContext, requests: list[GenerateRequest], stream: bool
) -> AsyncIterator[tuple[int, Delta]]:
    """Every prompt's deltas in turn, tagged with the prompt's index; usage summed over them."""
    prompt_tokens = completion_tokens = 0
    for index, request in enumerate(requests):
        last: Delta | None = None
        async for delta in pipeline.generate(ctx, request, stream):
            last = delta
            ctx.prompt_tokens = prompt_tokens + delta.prompt_tokens
            ctx.completion_tokens = completion_tokens + delta.completion_tokens
            yield index, delta
        if last is not None:
            prompt_tokens += last.prompt_tokens
            completion_tokens += last.completion_tokens


async def _collect(deltas: AsyncIterator[tuple[int, Delta]]) -> list[tuple[str, str | None]]:
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    async for index, delta in deltas:
        texts.setdefault(index, []).append(delta.text)
        finish[index] = delta.finish_reason or finish.get(index)
    return [("".join(texts[i]), finish[i]) for i in sorted(texts)]


async def _events(
    request: Request,
    ctx: RequestContext,
    shape: _Shape,
    first: tuple[int, Delta],
    deltas: AsyncIterator[tuple[int, Delta]],
    include_usage: bool,
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
            if delta.text:
                yield sse(shape.chunk(index, delta.text, None, include_usage))
            if delta.finish_reason is not None:
                yield sse(shape.chunk(index, "", delta.finish_reason, include_usage))
            item = await anext(deltas, None)
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
        if status:
            request.app.state.request_log.record(ctx.record(status, http_status))


@dataclass
class _Shape:
    """OpenAI's response objects for chat (`chat.completion`) or legacy completions (`text_completion`)."""

    chat: bool
    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def envelope(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def chunk(self, index: int, text: str | dict[str, str], finish: str | None, usage: bool) -> dict[str, Any]:
        if self.chat:
            delta = text if isinstance(text, dict) else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        chunk = {**self.envelope(), "choices": [choice]}
        if usage:
            chunk["usage"] = None
        return chunk

    def completion(self, choices: list[tuple[str, str | None]], usage: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            body = [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish} for i, (text, finish) in enumerate(choices)]
        else:
            body = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                    for i, (text, finish) in enumerate(choices)]
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.envelope(), "object": kind, "choices": body, "usage": usage}

    @staticmethod
    def usage(ctx: RequestContext) -> dict[str, int]:
        prompt, completion = ctx.prompt_tokens or 0, ctx.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
