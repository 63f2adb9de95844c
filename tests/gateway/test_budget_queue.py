"""Budgets (hard stop, soft warning webhook, bounded overshoot under concurrency) and the
admission queue (priority order, full queue, wait timeout) through HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from conduit.errors import APIError
from conduit.gateway.admission import AdmissionQueue
from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream
from tests.gateway.test_limits import burst, chat, new_key

PRICES = {"input": 2.0, "cached_input": 1.0, "output": 10.0}
PER_REQUEST = (11 * 2.0 + 7 * 10.0) / 1e6  # the fake reports 11 prompt + 7 completion tokens


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], slow: FakeUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    hook = f"http://127.0.0.1:{upstreams['c'].port}/_webhook"
    models = [
        {"name": "priced", "deployments": [upstream(upstreams["a"])], "prices": PRICES},
        {"name": "queued", "deployments": [upstream(slow, max_in_flight=1)], "queue": {"max_size": 1}},
        {"name": "impatient", "deployments": [upstream(slow, max_in_flight=1)], "queue": {"max_wait_s": 0.2}},
    ]
    tenants = [
        {"name": "spender", "budget": {"usd": 5.5 * PER_REQUEST, "webhook_url": hook}},
        {"name": "crowd", "budget": {"usd": 10.5 * PER_REQUEST}, "limits": {"max_concurrent": 4}},
    ]
    server = start_gateway(tmp_path_factory.mktemp("budget"), {"models": models, "tenants": tenants})
    yield server
    server.stop()


def test_hard_budget_stops_spending_and_soft_threshold_calls_the_webhook(
    gateway: ServerProcess, upstreams: dict[str, FakeUpstream]
) -> None:
    key = new_key(gateway, "spender")
    codes = [chat(gateway, key, "priced").status_code for _ in range(8)]
    # Checked before each call: the sixth starts at 5 x cost < 5.5 x cost, the seventh finds it spent.
    assert codes == [200] * 6 + [429, 429]
    refused = chat(gateway, key, "priced").json()["error"]
    assert refused["type"] == "insufficient_quota" and refused["code"] == "insufficient_quota"
    deadline = time.monotonic() + 5
    hooks: list = []
    while time.monotonic() < deadline and not hooks:
        hooks = httpx.get(f"http://127.0.0.1:{upstreams['c'].port}/_webhooks").json()
        time.sleep(0.1)
    assert len(hooks) == 1  # once, when 80% was crossed
    assert hooks[0]["event"] == "budget_soft_limit" and hooks[0]["owner"] == "tenant"
    assert hooks[0]["spent_usd"] >= 0.8 * hooks[0]["budget_usd"]
    assert "budget_soft_limit" in gateway.log()


def test_key_budget(gateway: ServerProcess) -> None:
    key = new_key(gateway, "keyed-budget", budget={"usd": 1.5 * PER_REQUEST, "period": "day"})
    assert [chat(gateway, key, "priced").status_code for _ in range(3)] == [200, 200, 429]


def test_budget_overshoot_under_concurrency_is_bounded_by_in_flight_slots(gateway: ServerProcess) -> None:
    key = new_key(gateway, "crowd")

    async def worker(client: httpx.AsyncClient) -> int:
        done = 0
        while True:
            answer = await client.post(f"{gateway.url}/v1/chat/completions", headers=gateway.headers(key),
                                       json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
            if answer.status_code == 200:
                done += 1
            elif answer.json()["error"]["code"] == "insufficient_quota":
                return done

    async def crowd() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[worker(client) for _ in range(4)])

    served = sum(asyncio.run(crowd()))
    # 11 fit the budget; at most one more per in-flight slot (4) may have started before it was spent.
    assert 11 <= served <= 11 + 4


def test_queue_full_gets_429_and_waiters_are_served(gateway: ServerProcess) -> None:
    key = new_key(gateway, "queue-user")
    answers = asyncio.run(burst([(gateway.url, key)] * 3, model="queued"))
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    full = next(r for r in answers if r.status_code == 429)
    assert full.json()["error"]["code"] == "queue_full" and "retry-after" in full.headers
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'conduit:queue_depth{model_name="queued"} 0.0' in metrics
    assert 'conduit:queue_rejected_total{model_name="queued"} 1.0' in metrics
    assert 'conduit:queue_wait_seconds_count{model_name="queued"} 2.0' in metrics


def test_queue_wait_timeout_gets_503(gateway: ServerProcess) -> None:
    key = new_key(gateway, "queue-user")
    answers = asyncio.run(burst([(gateway.url, key)] * 2, model="impatient"))
    assert sorted(r.status_code for r in answers) == [200, 503]
    late = next(r for r in answers if r.status_code == 503)
    assert late.json()["error"]["code"] == "queue_timeout" and "retry-after" in late.headers


def test_bad_priority_header_is_a_400(gateway: ServerProcess) -> None:
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", headers={**gateway.headers(), "x-conduit-priority": "x"},
                        json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "x-conduit-priority"


def test_queue_serves_higher_priority_first_then_arrival_order() -> None:
    async def scenario() -> list[str]:
        queue = AdmissionQueue("m", slots=1, max_size=10, max_wait_s=5)
        order: list[str] = []

        async def request(name: str, priority: int) -> None:
            async with queue.slot(priority):
                order.append(name)
                await asyncio.sleep(0.01)

        async with queue.slot():  # hold the only slot while the others queue up
            tasks = []
            for name, priority in [("low", -1), ("normal-1", 0), ("high", 1), ("normal-2", 0)]:
                tasks.append(asyncio.create_task(request(name, priority)))
                await asyncio.sleep(0.01)
            assert queue.depth == 4
        await asyncio.gather(*tasks)
        assert queue.in_use == 0 and queue.depth == 0
        return order

    assert asyncio.run(scenario()) == ["high", "normal-1", "normal-2", "low"]


def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    async def scenario() -> None:
        queue = AdmissionQueue("m", slots=1, max_size=1, max_wait_s=5)
        async with queue.slot():
            waiter = asyncio.create_task(queue.slot().__aenter__())
            await asyncio.sleep(0.01)
            with pytest.raises(APIError):  # the queue (size 1) is full
                await queue.slot().__aenter__()
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        assert queue.in_use == 0 and queue.depth == 0

    asyncio.run(scenario())
