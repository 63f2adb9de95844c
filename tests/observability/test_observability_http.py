"""Metrics, traces, the request explorer, feedback, stats and drift through real traffic: a
Conduit server in front of a fake upstream, driven with the openai client, exporting spans to an
OTLP receiver running in this test process."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from openai import NotFoundError, OpenAI, RateLimitError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FakeUpstream, ServerProcess, free_port, start_gateway, upstream

EMAIL = "jane.doe@example.org"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class OtlpReceiver:
    """Collects the spans of OTLP/HTTP protobuf exports."""

    def __init__(self) -> None:
        self.spans: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 15) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no such span among {[s.name for s in self.spans]}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], receiver: OtlpReceiver,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {"models": [{"name": "echo", "deployments": [upstream(upstreams["a"], "echo")],
                          "prices": {"input": 1.0, "output": 2.0}}],
              "observability": {"metrics_top_tenants": 2, "drift_window": 10,
                                "otlp_endpoint": f"http://127.0.0.1:{receiver.port}/v1/traces"}}
    server = start_gateway(tmp_path_factory.mktemp("observe"), config)
    yield server
    server.stop()


def _key(gateway: ServerProcess, tenant: str) -> str:
    response = httpx.post(f"{gateway.url}/admin/keys", headers=gateway.headers(), json={"tenant": tenant})
    return response.json()["key"]


@pytest.fixture(scope="module")
def keys(gateway: ServerProcess) -> dict[str, str]:
    return {tenant: _key(gateway, tenant) for tenant in ("alpha", "beta", "gamma")}


def _ask(client: OpenAI, text: str, **extra) -> str:
    """The request id of a chat answered by the echo upstream."""
    completion = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}], **extra)
    return completion.id


def _get(gateway: ServerProcess, path: str, key: str | None = None, **params) -> httpx.Response:
    return httpx.get(f"{gateway.url}{path}", headers=gateway.headers(key), params=params, timeout=30)


def _detail(gateway: ServerProcess, request_id: str, key: str | None = None) -> dict:
    """A request's explorer entry, once the batched writer has stored it."""
    deadline = time.monotonic() + 10
    while True:
        response = _get(gateway, f"/admin/requests/{request_id}", key)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.1)


def _samples(gateway: ServerProcess) -> list:
    text = httpx.get(f"{gateway.url}/metrics").text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_follow_traffic(gateway: ServerProcess) -> None:
    client = gateway.client()
    before = _samples(gateway)
    _ask(client, "count me")
    for _ in client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "stream me"}],
                                            stream=True):
        pass
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="no-such-model-anywhere", messages=[{"role": "user", "content": "hi"}])
    after = _samples(gateway)

    def grew(name: str, **labels) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("conduit:requests_total", endpoint="chat.completions", model="echo", status="ok", code="200") == 2
    # A model name nobody configured is a label value anyone could invent: it is folded.
    assert grew("conduit:requests_total", model="unknown", status="error", code="404") == 1
    assert not [s for s in after if s.labels.get("model") == "no-such-model-anywhere"]
    assert grew("conduit:request_ttft_seconds_count", model="echo") == 1  # the streamed one
    assert grew("conduit:request_latency_seconds_count", endpoint="chat.completions", model="echo") == 2
    assert grew("conduit:output_tokens_total", model="echo") > 0
    assert grew("conduit:cost_usd_total", model="echo") > 0
    assert _value(after, "conduit:deployment_up", model="echo") == 1


def test_tenants_beyond_top_n_fold_into_other(gateway: ServerProcess, keys: dict[str, str]) -> None:
    for tenant in ("alpha", "beta", "gamma"):
        _ask(gateway.client(keys[tenant]), f"hello from {tenant}")
    tenants = {s.labels["tenant"] for s in _samples(gateway) if s.name == "conduit:input_tokens_total"}
    assert tenants - {"none"} == {"alpha", "beta", "other"}


def test_trace_kept_redacted_and_exported(gateway: ServerProcess, receiver: OtlpReceiver) -> None:
    client = gateway.client(default_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    request_id = _ask(client, f"Please write to {EMAIL} about the invoice.", temperature=0)
    detail = _detail(gateway, request_id)
    assert detail["id"] == request_id.replace("chatcmpl-", "req-") and detail["model"] == "echo"
    trace = detail["trace"]
    names = [stage["name"] for stage in trace["stages"]]
    for stage in ("auth", "limits", "input_guards", "cache", "route", "generate"):
        assert stage in names
    for stage in trace["stages"]:
        assert stage["start_ms"] >= 0 and stage["duration_ms"] >= 0
        assert stage["start_ms"] + stage["duration_ms"] <= detail["latency_ms"] + 1
    assert trace["route"]["model"] == "echo" and trace["route"]["reasons"] == ["direct"]
    # The echo upstream repeats the address: neither the stored prompt nor the answer keeps it.
    assert "<EMAIL_ADDRESS>" in trace["prompt"][-1]["content"] and "<EMAIL_ADDRESS>" in trace["answer"]
    assert EMAIL not in _get(gateway, f"/admin/requests/{request_id}").text

    [root] = receiver.wait_for(lambda s: s.name == "chat echo" and s.trace_id.hex() == TRACE_ID)
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["gen_ai.operation.name"].string_value == "chat"
    assert attributes["gen_ai.request.model"].string_value == "echo"
    assert attributes["gen_ai.usage.input_tokens"].int_value > 0
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0
    assert [v.string_value for v in attributes["gen_ai.response.finish_reasons"].array_value.values] == ["stop"]
    assert root.parent_span_id.hex() == "00f067aa0ba902b7"  # joined the caller's trace
    children = receiver.wait_for(lambda s: s.parent_span_id == root.span_id and s.name == "generate")
    assert children[0].start_time_unix_nano >= root.start_time_unix_nano
    assert children[0].end_time_unix_nano <= root.end_time_unix_nano
    assert EMAIL not in str(receiver.spans)  # spans carry no message content


def test_explorer_is_scoped_to_the_tenant(gateway: ServerProcess) -> None:
    delta, epsilon = _key(gateway, "delta"), _key(gateway, "epsilon")
    mine = _ask(gateway.client(delta), "delta's question").replace("chatcmpl-", "req-")
    theirs = _ask(gateway.client(epsilon), "epsilon's question").replace("chatcmpl-", "req-")
    _detail(gateway, theirs)  # both written
    _detail(gateway, mine)
    listed = _get(gateway, "/admin/requests", delta, limit=500).json()["data"]
    assert mine in [r["id"] for r in listed] and theirs not in [r["id"] for r in listed]
    assert {r["tenant"] for r in listed} == {"delta"}
    assert _get(gateway, f"/admin/requests/{theirs}", delta).status_code == 404
    # A tenant's key cannot widen its view with the admin's filter.
    assert theirs not in [r["id"] for r in _get(gateway, "/admin/requests", delta, tenant="epsilon").json()["data"]]
    by_admin = _get(gateway, "/admin/requests", tenant="epsilon").json()["data"]
    assert [r["id"] for r in by_admin] == [theirs]
    who = _get(gateway, "/admin/whoami", delta).json()
    assert who["admin"] is False and who["tenant"] == "delta" and who["key_id"].startswith("key_")
    assert _get(gateway, "/admin/requests", status="nonsense").status_code == 400


def test_explorer_pages_and_filters(gateway: ServerProcess) -> None:
    key = _key(gateway, "zeta")
    ids = [_ask(gateway.client(key), f"page {i}").replace("chatcmpl-", "req-") for i in range(5)]
    _detail(gateway, ids[-1], key)  # waits for the row, without a failed call of this tenant's in the log
    first = _get(gateway, "/admin/requests", key, limit=3).json()
    assert first["has_more"] and [r["id"] for r in first["data"]] == ids[::-1][:3]
    rest = _get(gateway, "/admin/requests", key, limit=3, before=first["next_before"]).json()
    assert [r["id"] for r in rest["data"]] == ids[::-1][3:] and not rest["has_more"]
    assert _get(gateway, "/admin/requests", key, min_latency_ms=10**7).json()["data"] == []


def test_feedback_on_own_answers_only(gateway: ServerProcess) -> None:
    eta, theta = _key(gateway, "eta"), _key(gateway, "theta")
    client = gateway.client(eta)
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}])
    # At once: the request's row may still be on its way to the database.
    given = httpx.post(f"{gateway.url}/v1/feedback", headers=gateway.headers(eta),
                       json={"request_id": completion.id, "rating": "up", "comment": "spot on"})
    assert given.status_code == 201, given.text
    assert given.json()["rating"] == "up" and given.json()["request_id"].startswith("req-")
    refused = httpx.post(f"{gateway.url}/v1/feedback", headers=gateway.headers(theta),
                         json={"request_id": completion.id, "rating": "down"})
    assert refused.status_code == 404
    bad = httpx.post(f"{gateway.url}/v1/feedback", headers=gateway.headers(eta),
                     json={"request_id": completion.id, "rating": "meh"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
    detail = _detail(gateway, completion.id, eta)
    assert detail["feedback"][0]["comment"] == "spot on" and detail["prompt_version"].startswith("sys-")
    assert [r["id"] for r in _get(gateway, "/admin/requests", eta, feedback="up").json()["data"]] == [detail["id"]]
    summary = _get(gateway, "/admin/feedback/summary", eta).json()["data"]
    assert summary == [{"model": "echo", "prompt_version": detail["prompt_version"], "up": 1, "down": 0,
                        "score": 1.0}]
    assert _get(gateway, "/admin/feedback/summary", theta).json()["data"] == []


def test_stats_series(gateway: ServerProcess) -> None:
    key = _key(gateway, "iota")
    request_id = _ask(gateway.client(key), "for the charts")
    _detail(gateway, request_id, key)
    mine = _get(gateway, "/admin/stats", key, window_s=600, bucket_s=60).json()
    everyone = _get(gateway, "/admin/stats", window_s=600, bucket_s=60).json()
    assert mine["totals"]["requests"] == 1 < everyone["totals"]["requests"]
    assert len(mine["series"]) in (10, 11) and mine["engine"] == []
    assert sum(b["requests"] for b in mine["series"]) == 1
    assert {row["tenant"] for row in mine["cost_by_tenant"]} == {"iota"}
    latest = [b for b in everyone["series"] if b["requests"]][-1]
    assert latest["latency_p50_ms"] > 0 and latest["output_tokens"] > 0
    assert _get(gateway, "/admin/stats", window_s=10).status_code == 400


def test_drift_of_retrieval_queries(gateway: ServerProcess) -> None:
    key = _key(gateway, "kappa")
    client = gateway.client(key)
    store = client.vector_stores.create(name="trains")
    text = b"Standard gauge railway track is 1435 millimetres wide. Narrow gauge lines are cheaper to build."
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("rail.txt", io.BytesIO(text)),
                                                      poll_interval_ms=100)
    assert done.status == "completed"
    retrieval = {"retrieval": {"vector_store_ids": [store.id], "trigger": "always"}}
    rails = ["How wide is standard gauge track?", "Why build narrow gauge railways?", "What is railway gauge?",
             "Track width of standard gauge lines", "Are narrow gauge railways cheaper?"]
    cooking = ["How long should I boil an egg?", "Best recipe for banana bread", "How do I caramelise onions?",
               "What temperature to roast a chicken?", "How to make fresh pasta dough"]
    for question in rails * 2 + cooking * 2:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": question}],
                                       max_tokens=4, extra_body=retrieval)
    [series] = _get(gateway, "/admin/drift", key).json()["data"]
    assert series["collection"] == store.id and series["model"] == "echo"
    [point] = series["points"]
    assert point["drifted"] and point["queries"] == 10
    assert point["centroid_distance"] > 0.2
    assert _get(gateway, "/admin/drift", _key(gateway, "lambda")).json()["data"] == []  # not theirs
    deadline = time.monotonic() + 5
    while "drift_detected" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "drift_detected" in gateway.log()


def test_rate_limited_requests_counted(gateway: ServerProcess) -> None:
    key = httpx.post(f"{gateway.url}/admin/keys", headers=gateway.headers(),
                     json={"tenant": "mu", "limits": {"rpm": 1}}).json()["key"]
    before = _value(_samples(gateway), "conduit:rate_limited_total", reason="rate_limit_exceeded")
    client = gateway.client(key)
    _ask(client, "one")
    with pytest.raises(RateLimitError):
        _ask(client, "two")
    after = _value(_samples(gateway), "conduit:rate_limited_total", reason="rate_limit_exceeded")
    assert after - before == 1


def test_grafana_dashboard_reads_only_served_metrics(gateway: ServerProcess) -> None:
    from tests.observability.test_grafana import DASHBOARD, METRICS, metric_names

    served = set()
    for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text):
        served.add(family.name + "_total" if family.type == "counter" else family.name)
    assert METRICS <= served, METRICS - served
    exprs = re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', DASHBOARD.read_text())
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= served, used - served
