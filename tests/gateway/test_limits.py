"""Rate, token and concurrency limits through HTTP: exact under concurrency, in one process and in
two processes sharing Redis; OpenAI's x-ratelimit headers; 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FakeUpstream, RedisServer, ServerProcess, start_gateway, upstream

TENANTS = [
    {"name": "capped", "limits": {"rpm": 5}},
    {"name": "tokens", "limits": {"tpm": 40}},
    {"name": "serial", "limits": {"max_concurrent": 2}},
    {"name": "per-model", "model_limits": {"fast": {"rpm": 2}}},
]


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], slow: FakeUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [{"name": "fast", "deployments": [upstream(upstreams["a"])]},
              {"name": "other", "deployments": [upstream(upstreams["b"])]},
              {"name": "slow", "deployments": [upstream(slow)]}]
    server = start_gateway(tmp_path_factory.mktemp("limits"), {"models": models, "tenants": TENANTS})
    yield server
    server.stop()


def new_key(server: ServerProcess, tenant: str, **fields) -> str:
    response = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant, **fields})
    response.raise_for_status()
    return response.json()["key"]


def chat(server: ServerProcess, key: str, model: str = "fast", content: str = "hi") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers(key), timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


async def burst(urls_and_keys: list[tuple[str, str]], model: str = "fast") -> list[httpx.Response]:
    """All requests at once (each with its own connection), answers in order."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*[
            client.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                        json={"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]})
            for i, (url, key) in enumerate(urls_and_keys)])


def test_requests_per_minute_exact_under_concurrency(gateway: ServerProcess) -> None:
    key = new_key(gateway, "capped")
    answers = asyncio.run(burst([(gateway.url, key)] * 12))
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 7
    assert int(refused[0].headers["retry-after"]) >= 1
    assert refused[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per minute" in refused[0].json()["error"]["message"]
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"5"}
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == [0, 1, 2, 3, 4]
    assert all(r.headers["x-ratelimit-reset-requests"].endswith("s") for r in ok)


def test_limit_is_shared_by_the_tenants_keys(gateway: ServerProcess) -> None:
    first, second = new_key(gateway, "per-model"), new_key(gateway, "per-model")
    assert chat(gateway, first).status_code == 200
    assert chat(gateway, second).status_code == 200
    assert chat(gateway, first).status_code == 429  # the tenant's 2 per minute on "fast"
    assert chat(gateway, second, model="other").status_code == 200  # no limit on the other model


def test_tokens_per_minute_counts_prompt_before_and_completion_after(gateway: ServerProcess) -> None:
    key = new_key(gateway, "tokens")
    # The prompt is estimated at 7 tokens up front; the fake upstream then reports 11 + 7 used.
    first = chat(gateway, key)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "40"
    assert first.headers["x-ratelimit-remaining-tokens"] == "33"
    second = chat(gateway, key)
    assert second.status_code == 200
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 15  # 40 - 18 - 7, give or take refill
    third = chat(gateway, key)
    assert third.status_code == 429
    assert third.json()["error"]["type"] == "tokens" and "retry-after" in third.headers


def test_a_prompt_larger_than_the_token_limit_is_refused_outright(gateway: ServerProcess) -> None:
    answer = chat(gateway, new_key(gateway, "tokens"), content="word " * 400)
    assert answer.status_code == 429 and "Request too large" in answer.json()["error"]["message"]


def test_concurrency_cap_and_slots_come_back(gateway: ServerProcess) -> None:
    key = new_key(gateway, "serial")
    answers = asyncio.run(burst([(gateway.url, key)] * 4, model="slow"))
    assert sorted(r.status_code for r in answers) == [200, 200, 429, 429]
    refused = next(r for r in answers if r.status_code == 429)
    assert "concurrent requests" in refused.json()["error"]["message"]
    assert chat(gateway, key, model="slow").status_code == 200  # the slots were given back


def test_key_limits_set_at_creation(gateway: ServerProcess) -> None:
    key = new_key(gateway, "keyed", limits={"rpm": 3})
    listed = httpx.get(f"{gateway.url}/admin/keys", params={"tenant": "keyed"}, headers=gateway.headers()).json()
    assert listed["data"][0]["limits"] == {"rpm": 3, "tpm": None, "max_concurrent": None}
    assert [chat(gateway, key).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert chat(gateway, new_key(gateway, "keyed")).status_code == 200  # another key of the tenant is free


def test_revoked_key_stops_at_once_despite_the_key_cache(gateway: ServerProcess) -> None:
    response = httpx.post(f"{gateway.url}/admin/keys", headers=gateway.headers(), json={"tenant": "gone"}).json()
    assert chat(gateway, response["key"]).status_code == 200
    httpx.delete(f"{gateway.url}/admin/keys/{response['id']}", headers=gateway.headers()).raise_for_status()
    assert chat(gateway, response["key"]).status_code == 401


def test_two_gateways_share_limits_and_cache_through_redis(
    upstreams: dict[str, FakeUpstream], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared_db = tmp_path_factory.mktemp("shared") / "conduit.db"
    config = {"models": [{"name": "fast", "deployments": [upstream(upstreams["a"])]}],
              "tenants": [{"name": "shared", "limits": {"rpm": 6, "max_concurrent": 50}}],
              "gateway": {"limit_store": "redis"}, "cache": {"store": "redis"}, "redis_url": redis_server.url,
              "database_url": f"sqlite:///{shared_db}"}
    first = start_gateway(tmp_path_factory.mktemp("gw1"), config)
    second = start_gateway(tmp_path_factory.mktemp("gw2"), config)
    try:
        key = new_key(first, "shared")
        answers = asyncio.run(burst([(first.url, key), (second.url, key)] * 10))
        ok = [r for r in answers if r.status_code == 200]
        assert len(ok) == 6 and len(answers) - len(ok) == 14
        assert {r.status_code for r in answers} == {200, 429}
        # An answer cached by one gateway is a hit on the other, streamed as it was.
        other = new_key(first, "other")
        asked = {"model": "fast", "messages": [{"role": "user", "content": "shared?"}], "temperature": 0}
        answer = first.client(other).chat.completions.with_raw_response.create(**asked)
        assert answer.headers["x-conduit-cache"] == "miss"
        again = second.client(other).chat.completions.with_raw_response.create(**asked)
        assert again.headers["x-conduit-cache"] == "hit"
        assert again.parse().choices[0].message.content == answer.parse().choices[0].message.content
    finally:
        first.stop()
        second.stop()
