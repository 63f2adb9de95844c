"""The embedded engine as a Backend: the engine core runs in its own process (continuous
batching over a paged KV cache); this side tokenizes, checks the context length, and streams
the engine's outputs as Deltas. Closing a generation early aborts it in the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from conduit.backends.base import Delta, GenerateRequest, TokenLogprob, estimate_tokens
from conduit.config import Deployment
from conduit.engine import SamplingParams, Tokenizer
from conduit.engine.async_engine import AsyncEngine, EngineArgs
from conduit.engine.core import EngineConfig
from conduit.engine.gguf_loader import GGUFModelFile, resolve_model_path
from conduit.errors import APIError, model_loading

log = logging.getLogger(__name__)


class EmbeddedBackend:
    def __init__(self, model: str, settings: Deployment) -> None:
        self.model = model
        self._settings = settings
        self.engine: AsyncEngine | None = None
        self.tokenizer: Tokenizer | None = None
        self.max_model_len = 0

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise model_loading(self.model)
        return self.engine

    async def start(self) -> None:
        """Start the engine process and wait for its model to load (seconds)."""
        s, e = self._settings, self._settings.engine
        config = EngineConfig(
            block_size=e.block_size, kv_cache_memory_gb=e.kv_cache_memory_gb,
            gpu_memory_utilization=e.gpu_memory_utilization, cuda_graphs=e.cuda_graphs,
            fused_kernels=e.fused_kernels,
            max_num_seqs=e.max_num_seqs, max_num_batched_tokens=e.max_num_batched_tokens,
            enable_prefix_caching=e.enable_prefix_caching,
            enable_chunked_prefill=e.enable_chunked_prefill,
        )
        engine = AsyncEngine(EngineArgs(source=s.source, dtype=s.dtype,
                                        max_model_len=s.max_model_len,
                                        load_format=s.load_format, config=config,
                                        device=s.device))
        tokenizer_source = "smollm2" if s.load_format == "dummy" else s.source
        self.tokenizer, _ = await asyncio.gather(
            asyncio.to_thread(lambda: Tokenizer(GGUFModelFile(resolve_model_path(tokenizer_source)))),
            engine.start(),
        )
        self.max_model_len = engine.max_model_len
        self.engine = engine
        log.info("model %s loaded from %s (context %d)", self.model, s.source, self.max_model_len)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if request.response_format is not None:  # constrained decoding is a later issue
            raise APIError(400, "response_format json_object/json_schema needs an upstream deployment: the "
                           "embedded engine cannot constrain its output yet.", param="response_format",
                           code="unsupported_parameter")
        engine = self._engine()
        prompt_ids = await asyncio.to_thread(self._encode, request)
        if len(prompt_ids) + 1 > self.max_model_len:
            raise _context_error(len(prompt_ids), self.max_model_len)
        s = request.sampling
        want_logprobs = request.logprobs or s.top_logprobs is not None
        params = SamplingParams(
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, seed=s.seed,
            max_tokens=s.max_tokens or self.max_model_len, stop=list(s.stop),
            stop_token_ids=list(s.stop_token_ids), presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty, repetition_penalty=s.repetition_penalty,
            logit_bias=dict(s.logit_bias), n=s.n,
            logprobs=(s.top_logprobs or 0) if want_logprobs else None,
        )
        completion_tokens = 0
        outputs = engine.generate(prompt_ids, params)
        try:
            async for out in outputs:
                completion_tokens += len(out.token_ids)
                yield Delta(
                    out.text, len(prompt_ids), completion_tokens, out.finish_reason,
                    logprobs=tuple(lp.logprob for lp in out.logprobs),
                    index=out.index,
                    token_logprobs=tuple(TokenLogprob(lp.token, lp.logprob, lp.bytes, lp.top)
                                         for lp in out.logprobs)
                    if s.top_logprobs is not None else (),
                )
        finally:
            await outputs.aclose()  # aborts the request in the engine if it is unfinished

    def count_tokens(self, request: GenerateRequest) -> int:
        return len(self._encode(request)) if self.tokenizer is not None else estimate_tokens(request)

    def _encode(self, request: GenerateRequest) -> list[int]:
        tokenizer = self.tokenizer
        assert tokenizer is not None  # set in start() together with the engine generate() checked
        if request.messages is not None:
            text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)
            return tokenizer.encode(text)
        if isinstance(request.prompt, list):
            return list(request.prompt)
        # A plain prompt gets the BOS its model file asks for (Gemma does; SmolLM2 does not).
        return tokenizer.encode(request.prompt or "", add_special_tokens=True)


def _context_error(prompt_tokens: int, limit: int) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens (plus at least 1 to generate).",
        param="messages",
        code="context_length_exceeded",
    )
