"""A fake OpenAI-compatible upstream for fault injection, run as its own process.

    python -m tests.fakes.upstream --port 9001 --name a --mode ok

Modes (also switchable at run time with POST /_control {"mode": ...}, or per request with
`"model": "fault:<mode>"`): ok, error500, rate429, hang, slow_first, drop_mid, bad_json, bad_sse,
wrong_type, bad_request, context_too_long; and scripted answers: cite (from the system prompt's
source [1] with citations, one unsupported and one to a missing source), quote (source [1]'s first two
sentences, cited), echo (the last user
message), leak (the system prompt), made_up (claims no source supports), json (broken JSON, then
valid JSON when told it was invalid), bad_json_always (unterminated JSON). GET /_stats returns how many requests it saw and the last one's body.
POST /_webhook records a JSON body, GET /_webhooks lists them (a budget webhook's receiver).
`"hard"` in the last message makes the answer's log-probabilities low (for the cascade).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ["Hello", " from", " {name}", "!", " All", " good", "."]


class State:
    mode = "ok"
    requests = 0
    delay_s = 2.0
    webhooks: list = []
    bodies: list = []  # the generation requests received, newest last


def app(name: str) -> Starlette:
    async def control(request: Request) -> Response:
        body = await request.json()
        State.mode = body.get("mode", State.mode)
        State.delay_s = body.get("delay_s", State.delay_s)
        return JSONResponse({"mode": State.mode})

    async def stats(request: Request) -> Response:
        return JSONResponse({"requests": State.requests, "mode": State.mode, "last_body": State.bodies[-1:]})

    async def webhook(request: Request) -> Response:
        State.webhooks.append(await request.json())
        return JSONResponse({"ok": True})

    async def webhooks(request: Request) -> Response:
        return JSONResponse(State.webhooks)

    async def embeddings(request: Request) -> Response:
        """Bag-of-words vectors (64 buckets of hashed words): texts sharing words come out close."""
        body = await request.json()
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        data = []
        for i, text in enumerate(texts):
            vector = [0.0] * 64
            for word in text.lower().split():
                vector[zlib.crc32(word.strip(".,?!").encode()) % 64] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def models(request: Request) -> Response:
        if State.mode in ("error500", "hang"):
            return JSONResponse({"error": {"message": "down"}}, status_code=500)
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def generate(request: Request) -> Response:
        State.requests += 1
        body = await request.json()
        State.bodies = [*State.bodies[-9:], body]
        mode = body["model"].removeprefix("fault:") if body["model"].startswith("fault:") else State.mode
        chat = request.url.path.endswith("/chat/completions")
        last = body["messages"][-1]["content"] if chat else body["prompt"]
        logprob = -3.0 if "hard" in str(last) else -0.1
        words = [w.format(name=name) for w in WORDS]
        if mode in _SCRIPTED:
            text = _SCRIPTED[mode](body["messages"] if chat else [{"role": "user", "content": last}])
            words = text.split(" ")
            words = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if mode == "error500":
            return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, status_code=500)
        if mode == "rate429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "1"})
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "wrong_type":
            return PlainTextResponse("<html>proxy error</html>", media_type="text/html")
        if mode == "bad_request":
            return JSONResponse({"error": {"message": "bad temperature", "param": "temperature",
                                           "code": "invalid_value"}}, status_code=400)
        if mode == "context_too_long":
            return JSONResponse({"error": {"message": "This model's maximum context length is 10 tokens.",
                                           "code": "context_length_exceeded"}}, status_code=400)

        async def events():
            if mode == "slow_first":
                await asyncio.sleep(State.delay_s)
            for i, word in enumerate(words):
                if mode == "drop_mid" and i == 3:
                    raise ConnectionResetError("dropped on purpose")
                if mode == "bad_json" and i == 2:
                    yield "data: {this is not json\n\n"
                    continue
                if mode == "bad_sse" and i == 2:
                    yield "data: [1, 2, 3]\n\n"
                    continue
                choice = ({"index": 0, "delta": {"content": word}, "finish_reason": None} if chat
                          else {"index": 0, "text": word, "finish_reason": None})
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": word, "logprob": logprob}]}
                yield f"data: {json.dumps({'id': 'x', 'object': 'chunk', 'created': int(time.time()), 'model': body['model'], 'choices': [choice]})}\n\n"
            done = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                    else {"index": 0, "text": "", "finish_reason": "stop"})
            yield f"data: {json.dumps({'id': 'x', 'choices': [done]})}\n\n"
            usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/_control", control, methods=["POST"]),
        Route("/_stats", stats),
        Route("/_webhook", webhook, methods=["POST"]),
        Route("/_webhooks", webhooks),
        Route("/v1/models", models),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ])


def _citing_answer(messages: list[dict]) -> str:
    """An answer that quotes the first sentence of source [1] with a citation, then makes an
    unsupported claim citing it, then cites a source that does not exist."""
    first = _first_source(messages).split("\n\n")[0].split(". ")[0].rstrip(".")
    return f"{first} [1]. Bananas are purple and sing at night [1]. See the appendix [9]."


def _first_source(messages: list[dict]) -> str:
    """The text of source [1] in the system prompt (the gateway's fenced retrieval context)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    source = system.split("\n[1]", 1)[1].split("\n", 1)[1] if "\n[1]" in system else ""
    return source.strip().removeprefix("<source>").strip()


def _quoting_answer(messages: list[dict]) -> str:
    """Source [1]'s first two sentences, each citing it: an answer its source supports."""
    sentences = _first_source(messages).split("\n\n")[0].split(". ")[:2]
    return " ".join(f"{s.strip().rstrip('.')} [1]." for s in sentences)


def _json_answer(messages: list[dict]) -> str:
    """JSON with a wrongly typed field first; valid once told what was wrong (the gateway's retry)."""
    if "invalid" in str(messages[-1].get("content")):
        return '{"city": "Oslo", "degrees": 8}'
    return '{"city": "Oslo", "degrees": "eight"}'


_SCRIPTED = {
    "cite": _citing_answer,
    "quote": _quoting_answer,
    # The last user message, word for word: shows what the upstream was sent.
    "echo": lambda messages: str(messages[-1].get("content")),
    # The system prompt, word for word: a model leaking its instructions.
    "leak": lambda messages: next((str(m["content"]) for m in messages if m["role"] == "system"), "no system"),
    "made_up": lambda messages: "Bananas are purple and sing at night [1]. The moon is made of cheese [1].",
    "json": _json_answer,
    "bad_json_always": lambda messages: '{"city": "Oslo", "degrees": "eight"',
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args()
    State.mode = args.mode
    uvicorn.run(app(args.name), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
