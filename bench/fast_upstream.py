"""A fast fake OpenAI-compatible upstream, for gateway benchmarks.

    python bench/fast_upstream.py --port 9100 [--chunks 64]

A raw asyncio HTTP/1.1 server (keep-alive, no framework; uvloop when installed) that answers
POST /v1/chat/completions and /v1/completions with a fixed short answer and a `usage` block,
as one JSON object or, when the request says `"stream": true`, as a server-sent event stream
(role, `--chunks` content chunks, finish and usage chunks, then [DONE]). GET /v1/models lists one
model; GET /stats counts the connections accepted and the completions served. It never sleeps: a
gateway in front of it is measured, not the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, ClassVar, cast

ANSWER = "Hello from the fake upstream."
PROMPT_TOKENS = 12
MAX_HEADER_BYTES = 64 * 1024
CHUNKS = 1  # content events per streamed answer (--chunks): a real model sends one per token or so


def _pieces() -> list[str]:
    """The answer as CHUNKS pieces (the first holds the text, padding pieces are one space each)."""
    return [ANSWER] + [" "] * (CHUNKS - 1)


def _usage() -> dict[str, int]:
    completion = max(7, CHUNKS)
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}


def _json_body(model: str, chat: bool) -> bytes:
    envelope = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "created": int(time.time()), "model": model,
                "system_fingerprint": None}
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "".join(_pieces())},
                                  "logprobs": None, "finish_reason": "stop"}
        envelope["object"] = "chat.completion"
    else:
        choice = {"index": 0, "text": "".join(_pieces()), "logprobs": None, "finish_reason": "stop"}
        envelope["object"] = "text_completion"
    return json.dumps({**envelope, "choices": [choice], "usage": _usage()}, separators=(",", ":")).encode()


def _sse_body(model: str, chat: bool) -> bytes:
    envelope = {"id": "chatcmpl-fake" if chat else "cmpl-fake", "created": int(time.time()), "model": model,
                "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(delta: dict[str, str], text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": text}
        return {**envelope, "choices": [{**choice, "logprobs": None, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""}, "", None)] if chat else []
    events += [chunk({"content": piece}, piece, None) for piece in _pieces()]
    events += [chunk({}, "", "stop"), {**envelope, "choices": [], "usage": _usage()}]
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


def _response(status: str, content_type: str, body: bytes, keep_alive: bool) -> bytes:
    head = (f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
            f"{'' if keep_alive else 'connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode() + body


class _Answers:
    """Pre-rendered responses per (model, chat, stream): serving one is a dict lookup."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool, bool], bytes] = {}

    def get(self, model: str, chat: bool, stream: bool) -> bytes:
        key = (model, chat, stream)
        found = self._cache.get(key)
        if found is None:
            found = _sse_body(model, chat) if stream else _json_body(model, chat)
            if len(self._cache) < 64:
                self._cache[key] = found
        return found


class UpstreamProtocol(asyncio.Protocol):
    answers: ClassVar[_Answers] = _Answers()
    stats: ClassVar[dict[str, int]] = {"connections": 0, "requests": 0}  # GET /stats: a gateway's connection use

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    self._transport.close()
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            request_line, _, header_text = head.partition("\r\n")
            headers = {}
            for line in header_text.split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self._buffer) < end + 4 + length:
                return  # wait for the rest of the body
            body = bytes(self._buffer[end + 4:end + 4 + length])
            del self._buffer[:end + 4 + length]
            keep_alive = headers.get("connection", "").lower() != "close"
            self._transport.write(self._handle(request_line, body, keep_alive))
            if not keep_alive:
                self._transport.close()
                self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def _handle(self, request_line: str, body: bytes, keep_alive: bool) -> bytes:
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method == "POST" and path.endswith(("/chat/completions", "/completions")):
            self.stats["requests"] += 1
            try:
                request = json.loads(body)
                model, stream = str(request.get("model", "fake")), bool(request.get("stream", False))
            except (ValueError, AttributeError):
                error = b'{"error":{"message":"invalid JSON","type":"invalid_request_error"}}'
                return _response("400 Bad Request", "application/json", error, keep_alive)
            answer = self.answers.get(model, path.endswith("/chat/completions"), stream)
            kind = "text/event-stream" if stream else "application/json"
            return _response("200 OK", kind, answer, keep_alive)
        if method == "GET" and path == "/stats":
            return _response("200 OK", "application/json", json.dumps(self.stats).encode(), keep_alive)
        if method == "GET" and path.endswith("/models"):
            listing = b'{"object":"list","data":[{"id":"fake","object":"model","created":0,"owned_by":"bench"}]}'
            return _response("200 OK", "application/json", listing, keep_alive)
        return _response("404 Not Found", "application/json", b'{"error":{"message":"not found"}}', keep_alive)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024, reuse_address=True)
    print(f"fast upstream on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=1, help="Content events per streamed answer.")
    args = parser.parse_args()
    global CHUNKS
    CHUNKS = max(1, args.chunks)
    try:
        import uvloop  # optional: a faster event loop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
