"""Exact cache and in-flight de-duplication, through HTTP with the openai client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from conduit.backends import Delta, TokenLogprob
from conduit.cache import ExactCache, InflightGroup
from conduit.cache.exact import CachedAnswer
from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [{"name": "fast", "deployments": [upstream(upstreams["c"])]},
              {"name": "slow", "deployments": [upstream(upstreams["c"], "slow_first")]}]
    server = start_gateway(tmp_path_factory.mktemp("cache"), {"models": models})
    yield server
    server.stop()


def _key(server: ServerProcess, tenant: str) -> str:
    return httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant}).json()["key"]


def _chat(server: ServerProcess, key: str | None = None, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "fast", "messages": MESSAGES, "temperature": 0, **body}
    return httpx.post(f"{server.url}/v1/chat/completions", json=payload, timeout=30,
                      headers={**server.headers(key), **(headers or {})})


def test_deterministic_requests_hit(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    key = _key(gateway, "cache-hit")
    before = upstreams["c"].requests
    first = _chat(gateway, key, max_tokens=11)
    assert first.headers["x-conduit-cache"] == "miss"
    second = _chat(gateway, key, max_tokens=11)
    assert second.headers["x-conduit-cache"] == "hit"
    assert upstreams["c"].requests == before + 1
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.headers["x-conduit-model"] == "fast"
    row = gateway.wait_rows("cache = 'hit'")[0]
    assert row["status"] == "ok"


def test_streams_are_replayed_as_streams(gateway: ServerProcess) -> None:
    key = _key(gateway, "cache-stream")
    client = gateway.client(key)
    args = {"model": "fast", "messages": MESSAGES, "seed": 5, "stream": True}
    first = list(client.chat.completions.create(**args))
    with client.chat.completions.with_streaming_response.create(**args) as response:
        assert response.headers["x-conduit-cache"] == "hit"
        second = list(response.parse())
    text = lambda chunks: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text(second) == text(first) and len(second) == len(first)


def test_non_deterministic_requests_are_not_cached(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    before = upstreams["c"].requests
    for _ in range(2):
        assert _chat(gateway, temperature=0.7).headers["x-conduit-cache"] == "miss"
    assert upstreams["c"].requests == before + 2


def test_cache_control_headers(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    key = _key(gateway, "cache-control")
    assert _chat(gateway, key, headers={"x-conduit-cache": "no-store"}, max_tokens=3).headers["x-conduit-cache"] == "miss"
    assert _chat(gateway, key, max_tokens=3).headers["x-conduit-cache"] == "miss"  # nothing was stored
    before = upstreams["c"].requests
    refreshed = _chat(gateway, key, headers={"x-conduit-cache": "no-cache"}, max_tokens=3)
    assert refreshed.headers["x-conduit-cache"] == "miss" and upstreams["c"].requests == before + 1
    assert _chat(gateway, key, max_tokens=3).headers["x-conduit-cache"] == "hit"
    bad = _chat(gateway, key, headers={"x-conduit-cache": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-conduit-cache"


def test_no_cross_tenant_hits(gateway: ServerProcess) -> None:
    first, second = _key(gateway, "tenant-one"), _key(gateway, "tenant-two")
    assert _chat(gateway, first, max_tokens=4).headers["x-conduit-cache"] == "miss"
    assert _chat(gateway, first, max_tokens=4).headers["x-conduit-cache"] == "hit"
    assert _chat(gateway, second, max_tokens=4).headers["x-conduit-cache"] == "miss"


@pytest.mark.parametrize("stream", [False, True])
def test_identical_concurrent_requests_share_one_generation(gateway: ServerProcess, upstreams: dict[str, FakeUpstream],
                                                            stream: bool) -> None:
    key = _key(gateway, f"dedup-{stream}")
    before = upstreams["c"].requests
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # the upstream takes 2 s to its first token
        responses = list(pool.map(lambda _: _chat(gateway, key, model="slow", stream=stream, max_tokens=9), range(6)))
    assert all(r.status_code == 200 for r in responses)
    assert upstreams["c"].requests == before + 1
    answers = {_content(r) for r in responses}
    assert len(answers) == 1 and "Hello from c" in answers.pop()
    routes = sorted(r.headers["x-conduit-route"] for r in responses)
    assert routes.count("deduplicated") == 5


def _content(response: httpx.Response) -> str:
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def _deltas(n: int, started: list[int], closed: list[int]) -> AsyncIterator[Delta]:
    async def run() -> AsyncIterator[Delta]:
        started.append(1)
        try:
            for i in range(n):
                await asyncio.sleep(0.01)
                yield Delta(f"t{i}", 1, i + 1, "stop" if i == n - 1 else None)
        finally:
            closed.append(1)
    return run()


def test_inflight_survives_the_leader_leaving_and_stops_when_all_leave() -> None:
    async def scenario() -> None:
        group, started, closed = InflightGroup(), [], []
        leader = group.run("k", lambda: _deltas(20, started, closed))
        assert (await anext(leader)).text == "t0"
        follower = group.run("k", lambda: _deltas(20, started, closed))
        assert (await anext(follower)).text == "t0"  # joined the running generation from its start
        await leader.aclose()  # the first client leaves; the other still gets everything
        assert [d.text async for d in follower] == [f"t{i}" for i in range(1, 20)]
        await asyncio.sleep(0)  # the finished generation unregisters in a done-callback
        assert started == [1] and closed == [1] and len(group) == 0

        started.clear(), closed.clear()
        only = group.run("j", lambda: _deltas(1000, started, closed))
        await anext(only)
        await only.aclose()  # the last subscriber leaves: the generation stops
        await asyncio.sleep(0.05)
        assert closed == [1] and len(group) == 0

    asyncio.run(scenario())


def test_exact_cache_lru_and_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("conduit.cache.exact.time.monotonic", lambda: now[0])
    cache = ExactCache(max_entries=2, ttl_s=10)
    answer = CachedAnswer((Delta("x", 1, 1, "stop"),), "m")

    async def scenario() -> None:
        await cache.put("a", answer)
        await cache.put("b", answer)
        assert await cache.get("a") == answer  # a is now the most recent
        await cache.put("c", answer)
        assert await cache.get("b") is None and await cache.get("a") == answer and await cache.get("c") == answer
        now[0] += 10
        assert await cache.get("a") is None and len(cache) == 1

    asyncio.run(scenario())


def test_cached_answers_are_stored_out_of_the_garbage_collectors_sight() -> None:
    detail = TokenLogprob("Hi", -0.5, (72, 105), (("Hi", -0.5), ("Hey", -1.2)))
    answer = CachedAnswer((Delta("Hi", 3, 1, None, (-0.5,), 0, (detail,), 2), Delta("", 3, 1, "stop")), "m",
                          {"citations": []})
    assert CachedAnswer.unpacked(answer.packed()) == answer
    plain = CachedAnswer((Delta("Hello", 12, 1), Delta(" world.", 12, 7, "stop")), "m")
    cache = ExactCache(max_entries=10, ttl_s=10)
    asyncio.run(cache.put("k", plain))
    gc.collect()  # a collection untracks tuples that hold only plain values
    assert not any(gc.is_tracked(entry) for entry in cache._entries.values())
    assert asyncio.run(cache.get("k")) == plain


def test_cached_answer_survives_json() -> None:
    detail = TokenLogprob("Hi", -0.5, (72, 105), (("Hi", -0.5), ("Hey", -1.2)))
    answer = CachedAnswer((Delta("Hi", 3, 1, None, (-0.5,), 0, (detail,), 2), Delta("", 3, 1, "stop")), "m")
    assert CachedAnswer.from_json(answer.to_json()) == answer


def test_cache_keys_are_canonical_and_take_any_json() -> None:
    from conduit.backends import GenerateRequest, Sampling
    from conduit.cache.exact import cache_key

    def request(schema: dict, **sampling) -> GenerateRequest:
        return GenerateRequest("m", Sampling(temperature=0, **sampling), MESSAGES,
                               response_format={"type": "json_schema", "json_schema": schema})

    schema = {"name": "n", "schema": {"type": "integer", "maximum": 10}}
    # The order of a client's keys does not matter; every value does.
    assert cache_key("t", request(schema), False) == cache_key("t", request(dict(reversed(schema.items()))), False)
    assert cache_key("t", request(schema), False) != cache_key("t", request(schema, stop=("\n",)), False)
    # Integers past 64 bits (which orjson refuses) still make a key, and a distinct one.
    huge = {"name": "n", "schema": {"type": "integer", "maximum": 2**70}}
    assert cache_key("t", request(huge), False) != cache_key("t", request({**huge, "schema": {"maximum": 2**70 + 1}}),
                                                             False)
