"""The embedded engine as a Backend: the model runs in a worker thread, off the event loop.

One generation runs at a time, in arrival order. (The engine issue replaces this thread with
its own process and continuous batching; the Backend interface stays the same.)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from conduit.backends.base import Delta, GenerateRequest
from conduit.config import Deployment
from conduit.engine import LLM, ContextLengthExceeded, SamplingParams
from conduit.errors import APIError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)


_DONE = object()


class EmbeddedBackend:
    def __init__(self, model: str, settings: Deployment) -> None:
        self.model = model
        self._settings = settings
        self._llm: LLM | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.max_model_len = 0

    @property
    def ready(self) -> bool:
        return self._llm is not None

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            raise APIError(503, f"Model '{self.model}' is still loading.", "service_unavailable",
                           code="model_loading", headers={"Retry-After": "5"})
        return self._llm

    async def start(self) -> None:
        """Load the model (seconds) in a thread, then start the worker."""
        s = self._settings
        llm = await asyncio.to_thread(LLM, s.source, dtype=s.dtype, max_model_len=s.max_model_len)
        self.max_model_len = llm.max_model_len
        self._llm = llm
        self._worker = threading.Thread(target=self._work, name=f"engine-{self.model}", daemon=True)
        self._worker.start()
        log.info("model %s loaded from %s (context %d)", self.model, s.source, llm.max_model_len)

    async def close(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._worker.join)

    def count_tokens(self, request: GenerateRequest) -> int:
        return len(self._encode(request))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        llm = self.llm
        prompt_ids = await asyncio.to_thread(self._encode, request)
        if len(prompt_ids) + 1 > llm.max_model_len:
            raise _context_error(len(prompt_ids), llm.max_model_len)
        s = request.sampling
        params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=s.seed,
            max_tokens=s.max_tokens or llm.max_model_len, stop=list(s.stop),
        )
        job = _Job(prompt_ids, params, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        completion_tokens = 0
        try:
            while True:
                item = await job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                completion_tokens += len(item.token_ids)
                yield Delta(item.text, len(prompt_ids), completion_tokens, item.finish_reason)
        finally:
            # Runs on normal end, on error, and when the consumer goes away (aclose/cancel):
            # the worker checks this flag before every decode step.
            job.cancelled.set()

    def _encode(self, request: GenerateRequest) -> list[int]:
        tokenizer = self.llm.tokenizer
        if request.messages is not None:
            text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)
            return tokenizer.encode(text)
        if isinstance(request.prompt, list):
            return list(request.prompt)
        return tokenizer.encode(request.prompt or "")

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            emit = lambda item, job=job: job.loop.call_soon_threadsafe(job.out.put_nowait, item)  # noqa: E731
            try:
                for delta in self.llm.stream(job.prompt_ids, job.params, should_stop=job.cancelled.is_set):
                    emit(delta)
            except ContextLengthExceeded as exc:
                emit(_context_error(exc.prompt_tokens, exc.max_model_len))
            except Exception as exc:  # surfaced to the request as a 500 with an error id
                emit(exc)
            emit(_DONE)


def _context_error(prompt_tokens: int, limit: int) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens (plus at least 1 to generate).",
        param="messages",
        code="context_length_exceeded",
    )
