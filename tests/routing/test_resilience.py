"""Retries, fallbacks, deadlines, ejection and load spreading against faulty upstream processes."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

FAST = {"connect_s": 2, "first_token_s": 1, "between_tokens_s": 1, "total_s": 10}
RETRY = {"attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.5}
FAULTS = ["error500", "rate429", "hang", "slow_first", "drop_mid", "bad_json", "bad_sse", "wrong_type"]


def _model(name: str, *deployments: dict, **extra) -> dict:
    return {"name": name, "deployments": list(deployments), "retry": RETRY, "balancer": "weighted_round_robin",
            **extra}


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    a, b, c, flip = (upstreams[n] for n in ("a", "b", "c", "flip"))
    models = [_model(f"{fault}-then-ok", upstream(a, fault, timeouts=FAST), upstream(b, timeouts=FAST))
              for fault in FAULTS]
    models += [_model(f"only-{fault}", upstream(a, fault, timeouts=FAST), deadline_s=8) for fault in FAULTS]
    models += [
        _model("bad-request", upstream(a, "bad_request"), upstream(b)),
        _model("drop-stream", upstream(a, "drop_mid"), health={"failure_threshold": 1000, "cooldown_s": 1}),
        _model("primary", upstream(a, "error500"), fallbacks=["backup"]),
        _model("backup", upstream(b)),
        _model("short", upstream(a, "context_too_long"), context_fallback="long"),
        _model("long", upstream(c)),
        _model("slowpoke", upstream(a, "hang", timeouts={**FAST, "first_token_s": 30}), deadline_s=1.5),
        _model("spread-wrr", upstream(a), upstream(b), upstream(c)),
        _model("spread-lor", upstream(a), upstream(b), upstream(c), balancer="least_outstanding"),
        _model("spread-p2c", upstream(a), upstream(b), upstream(c), balancer="p2c_ewma"),
        _model("eject", upstream(flip), upstream(b), health={"failure_threshold": 2, "cooldown_s": 1.5}),
        _model("active", upstream(flip, id="flip-active"), upstream(c),
               health={"failure_threshold": 1, "cooldown_s": 60, "check_interval_s": 0.3}),
    ]
    server = start_gateway(tmp_path_factory.mktemp("gateway"), {"models": models})
    yield server
    server.stop()


def _chat(gateway: ServerProcess, model: str, stream: bool = False, timeout: float = 30) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=gateway.headers(), timeout=timeout)


def _text(response: httpx.Response) -> str:
    """The answer, from a JSON body or from an event stream's content deltas."""
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {")]
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("fault", FAULTS)
def test_retried_onto_a_healthy_deployment(gateway: ServerProcess, fault: str) -> None:
    for stream in (False, True):
        started = time.monotonic()
        response = _chat(gateway, f"{fault}-then-ok", stream=stream)
        assert response.status_code == 200, response.text
        assert "Hello from b" in _text(response)
        if stream:
            assert response.text.rstrip().endswith("data: [DONE]")
        assert int(response.headers["x-conduit-attempts"]) <= 2
        assert time.monotonic() - started < 8


@pytest.mark.parametrize("fault", FAULTS)
def test_persistent_fault_is_a_clear_error(gateway: ServerProcess, fault: str) -> None:
    started = time.monotonic()
    response = _chat(gateway, f"only-{fault}")
    elapsed = time.monotonic() - started
    assert response.status_code in (429, 502, 503, 504), response.text
    error = response.json()["error"]
    assert error["message"] and error["code"]
    assert elapsed < 8 + 1  # the model's deadline, plus slack


def test_stream_dropped_after_first_token_ends_with_error_event(gateway: ServerProcess) -> None:
    response = _chat(gateway, "drop-stream", stream=True)
    assert response.status_code == 200  # the first tokens were already on their way
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert '"content":"Hello"' in events[1] or "Hello" in "".join(events[:3])
    assert '"error"' in events[-1] and "stream_interrupted" in events[-1]
    assert "[DONE]" not in events  # never a truncation that looks complete


def test_client_errors_are_not_retried(gateway: ServerProcess) -> None:
    response = _chat(gateway, "bad-request")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    rows = gateway.wait_rows("model = 'bad-request'")
    assert rows[-1]["attempts"] == 1


def test_fallback_chain(gateway: ServerProcess) -> None:
    response = _chat(gateway, "primary")
    assert response.status_code == 200 and "from b" in _text(response)
    assert response.headers["x-conduit-model"] == "backup"
    assert "fallback:backup" in response.headers["x-conduit-route"]


def test_retries_and_fallbacks_counted_in_metrics(gateway: ServerProcess) -> None:
    def counted(name: str) -> float:
        text = httpx.get(f"{gateway.url}/metrics").text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name and s.labels.get("model") == "primary")

    before = counted("conduit:fallbacks_total"), counted("conduit:retries_total")
    response = _chat(gateway, "primary")
    assert response.status_code == 200
    attempts = int(response.headers["x-conduit-attempts"])  # primary's tries (none if ejected) + backup's
    assert counted("conduit:fallbacks_total") - before[0] == 1
    assert counted("conduit:retries_total") - before[1] == max(attempts - 2, 0)


def test_context_length_fallback(gateway: ServerProcess) -> None:
    response = _chat(gateway, "short")
    assert response.status_code == 200 and "from c" in _text(response)
    assert response.headers["x-conduit-model"] == "long"
    assert "context:long" in response.headers["x-conduit-route"]
    assert response.headers["x-conduit-attempts"] == "2"


def test_deadline_bounds_the_request(gateway: ServerProcess) -> None:
    for stream in (False, True):
        started = time.monotonic()
        response = _chat(gateway, "slowpoke", stream=stream)
        assert time.monotonic() - started < 3
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"


@pytest.mark.parametrize("model", ["spread-wrr", "spread-lor", "spread-p2c"])
def test_equal_weights_spread_load(gateway: ServerProcess, model: str) -> None:
    def one(_: int) -> str:
        return _text(_chat(gateway, model)).split("from ")[1][0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = Counter(pool.map(one, range(240)))
    assert set(served) == {"a", "b", "c"}
    for count in served.values():
        if model == "spread-p2c":
            # p2c follows measured latency, which a loaded machine makes noisy: it must not
            # starve anyone (the decaying EWMA brings an unpicked deployment back), but evenness
            # is not its job. Clean-clone runs saw 122 / 87 / 31 of 240, and under a quarter of an
            # even share once in 25 runs: the bound is a tenth, still far from starvation.
            assert count >= 80 * 0.10, served
        else:
            assert abs(count - 80) <= 80 * 0.10, served


def test_ejection_and_recovery(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    flip = upstreams["flip"]
    flip.set_mode("error500")
    try:
        for _ in range(4):  # every request still succeeds, through the healthy deployment
            assert _chat(gateway, "eject").status_code == 200
        ejected_at = flip.requests
        for _ in range(6):
            assert "from b" in _text(_chat(gateway, "eject"))
        assert flip.requests == ejected_at  # ejected: no traffic at all
        flip.set_mode("ok")
        time.sleep(1.6)  # the cooldown
        served = Counter(_text(_chat(gateway, "eject")).split("from ")[1][0] for _ in range(6))
        assert served["f"] >= 2  # recovered: the half-open probe succeeded, traffic is back
    finally:
        flip.set_mode("ok")


def test_active_health_check_recovers_without_traffic(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    flip = upstreams["flip"]
    flip.set_mode("error500")
    try:
        for _ in range(3):
            assert "from c" in _text(_chat(gateway, "active"))  # flip fails once and is ejected
        flip.set_mode("ok")
        time.sleep(1.0)  # several check intervals; the 60 s cooldown alone would keep it out
        served = {_text(_chat(gateway, "active")).split("from ")[1][0] for _ in range(4)}
        assert "f" in served
    finally:
        flip.set_mode("ok")


def test_chaos_every_request_accounted_for(gateway: ServerProcess) -> None:
    models = [f"{f}-then-ok" for f in FAULTS] + [f"only-{f}" for f in FAULTS] + ["primary", "short", "slowpoke"]
    before = len(gateway.rows())
    jobs = [(m, s) for m in models for s in (False, True)]

    def run(job: tuple[str, bool]) -> tuple[str, bool, int, float]:
        started = time.monotonic()
        response = _chat(gateway, *job)
        if response.status_code != 200:
            assert response.json()["error"]["code"], (job, response.text)
        return *job, response.status_code, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    late = [r for r in results if r[3] > 8 + 2]
    assert not late, late  # none outlives its deadline (8 s), allowing 2 s for a loaded machine
    rows = gateway.wait_rows("1=1", count=before + len(jobs))
    assert len(rows) == before + len(jobs)


def test_tenant_allow_list(upstreams: dict[str, FakeUpstream], tmp_path: Path) -> None:
    config = {"models": [_model("open", upstream(upstreams["a"])), _model("secret", upstream(upstreams["b"]))],
              "tenants": [{"name": "limited", "models": ["open"]}]}
    server = start_gateway(tmp_path, config)
    try:
        key = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": "limited"}).json()["key"]
        client = server.client(key)
        assert [m.id for m in client.models.list()] == ["open"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="secret", messages=[{"role": "user", "content": "hi"}])
        assert "from a" in client.chat.completions.create(
            model="open", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
        assert {m.id for m in server.client().models.list()} == {"open", "secret"}  # the admin sees all
    finally:
        server.stop()
