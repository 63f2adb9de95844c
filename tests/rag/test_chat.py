"""Chat completions grounded in a vector store, through the openai client: sources in the prompt,
verified citations (non-stream and in the stream's last chunk), the not-found answer without a
model call, chit-chat without retrieval, and caches keyed on the collection's version."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

RAILS = b"Standard gauge track is 1435 millimetres between the rails. Broad gauge is wider than that."


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The scripted answer is one supported sentence in three: the grounding guard would replace
    # it with the fallback (tests/safety); here it only flags, so the citation check shows.
    config = {"models": [{"name": "citer", "deployments": [upstream(upstreams["c"], "cite")]}],
              "guards": {"grounding": {"action": "flag"}}}
    server = start_gateway(tmp_path_factory.mktemp("rag-chat"), config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> OpenAI:
    key = httpx.post(f"{gateway.url}/admin/keys", headers=gateway.headers(), json={"tenant": "rail"}).json()["key"]
    return gateway.client(key, timeout=120)


@pytest.fixture(scope="module")
def store(client: OpenAI) -> str:
    store = client.vector_stores.create(name="rail")
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=("rail.txt", io.BytesIO(RAILS)),
                                                      poll_interval_ms=100)
    assert done.status == "completed"
    return store.id


def _ask(client: OpenAI, store: str, question: str, **extra):  # noqa: ANN202 - the SDK's raw response
    return client.chat.completions.with_raw_response.create(
        model="citer", messages=[{"role": "user", "content": question}], temperature=0,
        extra_body={"retrieval": {"vector_store_ids": [store], **extra}})


def test_grounded_answer_with_checked_citations(client: OpenAI, store: str) -> None:
    raw = _ask(client, store, "What is the distance between the rails of standard gauge track?")
    body = json.loads(raw.text)
    answer = body["choices"][0]["message"]["content"]
    assert answer.startswith("Standard gauge track is 1435 millimetres between the rails [1].")
    assert "[9]" not in answer  # a citation of a source that does not exist is removed
    [citation] = body["citations"]
    assert citation["index"] == 1 and citation["file_id"].startswith("file-") and "1435" in citation["text"]
    assert citation["title"] and citation["chunk_id"] and 0 < citation["score"] <= 1
    check = body["retrieval"]
    assert check["status"] == "grounded" and check["removed_citations"] == [9]
    assert check["unsupported_sentences"] == ["Bananas are purple and sing at night [1]."]


def test_streamed_answer_ends_with_citations_before_done(client: OpenAI, store: str) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="citer", messages=[{"role": "user", "content": "How wide is standard gauge?"}], stream=True,
            extra_body={"retrieval": {"vector_store_ids": [store]}}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"] == [] and last["citations"][0]["index"] == 1
    assert last["retrieval"]["unsupported_sentences"]


def test_not_found_answers_without_a_model_call(client: OpenAI, store: str, upstreams: dict[str, FakeUpstream]) -> None:
    before = upstreams["c"].requests
    raw = _ask(client, store, "What is the recipe for lemon meringue pie?", min_score=0.6,
               not_found_message="Not in the rail documents.")
    body = json.loads(raw.text)
    assert body["choices"][0]["message"]["content"] == "Not in the rail documents."
    assert body["citations"] == [] and body["retrieval"]["status"] == "not_found"
    assert upstreams["c"].requests == before


def test_chit_chat_skips_retrieval(client: OpenAI, store: str) -> None:
    body = json.loads(_ask(client, store, "Hello there!", trigger="auto").text)
    assert body["retrieval"] == {"status": "skipped", "reason": "trigger"}


def test_cache_hit_keeps_citations_and_a_changed_collection_misses(client: OpenAI, store: str) -> None:
    question = "Is broad gauge wider than standard gauge?"
    assert _ask(client, store, question).headers["x-conduit-cache"] == "miss"
    hit = _ask(client, store, question)
    assert hit.headers["x-conduit-cache"] == "hit" and json.loads(hit.text)["citations"]
    client.vector_stores.files.upload_and_poll(vector_store_id=store, file=("more.txt", io.BytesIO(b"Narrow gauge.")),
                                               poll_interval_ms=100)
    assert _ask(client, store, question).headers["x-conduit-cache"] == "miss"


def test_unknown_or_foreign_store_is_404(gateway: ServerProcess, store: str) -> None:
    other = httpx.post(f"{gateway.url}/admin/keys", headers=gateway.headers(), json={"tenant": "road"}).json()["key"]
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", headers=gateway.headers(other), timeout=60,
                        json={"model": "citer", "messages": [{"role": "user", "content": "gauge?"}],
                              "retrieval": {"vector_store_ids": [store]}})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "retrieval.vector_store_ids"
