"""GET /metrics: the engine's Prometheus metrics move with real traffic."""

from __future__ import annotations

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess


def _samples(server: ServerProcess) -> dict[str, float]:
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {s.name: s.value for family in text_string_to_metric_families(response.text) for s in family.samples
            if s.labels.get("model_name") == "smollm2" and "le" not in s.labels}


def test_engine_metrics_follow_traffic(server: ServerProcess, client: OpenAI) -> None:
    before = _samples(server)
    for name in ("conduit:num_requests_running", "conduit:num_requests_waiting", "conduit:kv_cache_usage_perc"):
        assert name in before
    prompt = [{"role": "user", "content": "Metrics test: say something short."}]
    reply = client.chat.completions.create(model="smollm2", messages=prompt, max_tokens=5, temperature=0.9)
    client.chat.completions.create(model="smollm2", messages=prompt, max_tokens=5, temperature=0.9)  # same prefix
    after = _samples(server)
    generated = after["conduit:generation_tokens_total"] - before["conduit:generation_tokens_total"]
    assert generated >= reply.usage.completion_tokens + 1
    # Prefill tokens computed, as vLLM counts them: the second prompt came mostly from the prefix cache.
    computed = after["conduit:prompt_tokens_total"] - before["conduit:prompt_tokens_total"]
    cached = after["conduit:prefix_cache_hits_total"] - before["conduit:prefix_cache_hits_total"]
    assert cached >= 16 and computed + cached == 2 * reply.usage.prompt_tokens
    assert after["conduit:time_to_first_token_seconds_count"] == before["conduit:time_to_first_token_seconds_count"] + 2
    assert after["conduit:e2e_request_latency_seconds_count"] >= before["conduit:e2e_request_latency_seconds_count"] + 2


def test_loaded_heap_is_exempt_from_garbage_collection(server: ServerProcess) -> None:
    """What the server loaded at start (models, tokenizers, recognizers) is frozen: full
    collections no longer walk it, so they stay short and rare."""
    response = httpx.get(f"{server.url}/metrics")
    samples = {s.name: s.value for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert samples["conduit:heap_frozen_objects"] > 50_000
    assert "python_gc_collections_total" in samples
