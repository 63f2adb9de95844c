"""The embedded backend over the engine process: streaming, n > 1, logprobs, early close aborts,
a dead engine fails requests at once, close() stops the process."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from conduit.backends.base import GenerateRequest, Sampling
from conduit.backends.embedded import EmbeddedBackend
from conduit.config import Deployment, EngineOptions
from conduit.engine.async_engine import EngineDeadError
from conduit.errors import APIError


def _backend(**engine) -> EmbeddedBackend:
    options = EngineOptions(kv_cache_memory_gb=0.05, **engine)
    return EmbeddedBackend("smollm2", Deployment(max_model_len=512, engine=options))


async def _collect(backend, request):
    return [d async for d in backend.generate(request)]


def test_backend_end_to_end():
    async def main():
        backend = _backend()
        await backend.start()
        try:
            assert backend.ready and backend.max_model_len == 512
            hello = [{"role": "user", "content": "Say hello."}]
            # Concurrent streams are batched by one engine.
            requests = [
                GenerateRequest("m", Sampling(max_tokens=8, temperature=0), messages=hello),
                GenerateRequest("m", Sampling(max_tokens=5, n=2, seed=1, top_logprobs=2),
                                prompt="Once upon a time", logprobs=True),
            ]
            greedy, multi = await asyncio.gather(*(_collect(backend, r) for r in requests))
            assert greedy[-1].finish_reason in ("stop", "length")
            assert greedy[-1].completion_tokens == len(greedy)
            assert {d.index for d in multi} == {0, 1}
            assert sum(d.finish_reason is not None for d in multi) == 2
            assert all(len(d.logprobs) == 1 and len(d.token_logprobs[0].top) == 2 for d in multi)
            # Too long a prompt fails before any generation.
            with pytest.raises(APIError) as err:
                await _collect(backend, GenerateRequest("m", prompt="hi " * 600))
            assert err.value.code == "context_length_exceeded"
            # Leaving early aborts the request in the engine: its blocks come back.
            stream = backend.generate(GenerateRequest("m", Sampling(max_tokens=400), prompt="Go"))
            await anext(stream)
            await stream.aclose()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if backend.engine.stats.kv_cache_usage == 0 and not backend.engine.stats.num_requests_running:
                    break
            await _collect(backend, GenerateRequest("m", Sampling(max_tokens=1), prompt="x"))
            stats = backend.engine.stats
            assert stats.kv_cache_usage == 0 and stats.num_requests_running == 0
            assert backend.engine.ttft.count >= 3 and backend.engine.e2e.count >= 2
            text = _metrics_text(backend)
            for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                         "prefix_cache_queries_total", "prefix_cache_hits_total",
                         "prompt_tokens_total", "generation_tokens_total",
                         "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_sum",
                         "e2e_request_latency_seconds_count"):
                assert f'conduit:{name}{{' in text, name
            assert 'model_name="smollm2"' in text
        finally:
            await backend.close()
        assert not backend.engine.process.is_alive()

    asyncio.run(main())


def test_killed_engine_fails_requests_promptly():
    async def main():
        backend = _backend()
        await backend.start()
        try:
            request = GenerateRequest("m", Sampling(max_tokens=400, temperature=0), prompt="Count:")
            task = asyncio.create_task(_collect(backend, request))
            await asyncio.sleep(0.5)
            os.kill(backend.engine.process.pid, signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(EngineDeadError):
                await asyncio.wait_for(task, 10)
            assert time.monotonic() - start < 5
            with pytest.raises(EngineDeadError):  # and later requests too, without hanging
                await asyncio.wait_for(_collect(backend, request), 5)
        finally:
            await backend.close()

    asyncio.run(main())


def _metrics_text(backend) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from conduit.observability.engine_metrics import EngineCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(lambda: [("smollm2", backend.engine)]))
    return generate_latest(registry).decode()
