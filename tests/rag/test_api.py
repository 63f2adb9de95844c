"""Files and vector stores through HTTP with the official openai client: upload every format,
search, delete, bad files, tenant isolation, embeddings, and a kill -9 in the middle of an ingest."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import ServerProcess, start_gateway
from tests.rag.pdf_maker import make_pdf
from tests.rag.test_parse import BAD_FILES

DOCUMENTS = {
    "volcano.txt": b"Volcanoes erupt when magma rises through the crust. Basalt lava flows are runny.",
    "garden.md": b"# Gardening\n\n## Tomatoes\n\nTomatoes need six hours of direct sun and deep watering.\n",
    "rail.html": b"<html><head><title>Railways</title></head><body><nav>Home | Up</nav><main><h1>Railways</h1>"
                 b"<h2>Gauge</h2><p>Standard gauge track is 1435 millimetres between the rails.</p></main></body></html>",
    "moon.pdf": make_pdf([["Lunar notes"], ["The Moon orbits Earth every 27.3 days in a synchronous rotation."]]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # No chat model is needed here: an unused upstream keeps start-up fast.
    config = {"models": [{"name": "none", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}]}
    srv = start_gateway(tmp_path_factory.mktemp("rag"), config)
    yield srv
    srv.stop()


def _tenant_client(server: ServerProcess, tenant: str) -> OpenAI:
    key = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant}).json()["key"]
    return server.client(key)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return _tenant_client(server, "readers")


@pytest.fixture(scope="module")
def store(client: OpenAI) -> str:
    store = client.vector_stores.create(name="notes")
    for name, data in DOCUMENTS.items():
        done = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(name, io.BytesIO(data)),
                                                          poll_interval_ms=100)
        assert done.status == "completed", (name, done.last_error)
    return store.id


def test_every_format_is_searchable(client: OpenAI, store: str) -> None:
    for query, expected in [("how often does the moon orbit the earth", "moon.pdf"),
                            ("distance between railway rails", "rail.html"),
                            ("how much sun do tomatoes need", "garden.md"),
                            ("what makes volcanoes erupt", "volcano.txt")]:
        results = client.vector_stores.search(store, query=query, max_num_results=2).data
        assert results[0].filename == expected, (query, [r.filename for r in results])
        assert 0 < results[0].score <= 1 and results[0].content[0].text
    html = client.vector_stores.search(store, query="railway gauge").data[0]
    assert "Home | Up" not in html.content[0].text  # navigation removed
    listed = client.vector_stores.retrieve(store)
    assert listed.file_counts.completed == 4 and listed.status == "completed"


def test_filters_and_attributes(client: OpenAI, store: str) -> None:
    upload = client.files.create(file=("tagged.txt", io.BytesIO(b"Volcanic ash grounds aircraft.")), purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=store, file_id=upload.id,
                                               attributes={"topic": "aviation", "year": 2010}, poll_interval_ms=100)
    only = client.vector_stores.search(store, query="volcano", filters={"type": "eq", "key": "topic", "value": "aviation"})
    assert [r.filename for r in only.data] == ["tagged.txt"] and only.data[0].attributes["year"] == 2010
    newer = client.vector_stores.search(store, query="volcano", filters={"type": "gt", "key": "year", "value": 2015})
    assert newer.data == []
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(store, query="volcano", filters={"type": "near", "key": "x", "value": 1})


def test_deleted_file_vanishes_from_search(client: OpenAI, store: str) -> None:
    upload = client.files.create(file=("owls.txt", io.BytesIO(b"Owls hunt at night with silent feathers.")),
                                 purpose="assistants")
    client.vector_stores.files.create_and_poll(vector_store_id=store, file_id=upload.id, poll_interval_ms=100)
    assert client.vector_stores.search(store, query="owls hunting at night").data[0].filename == "owls.txt"
    client.vector_stores.files.delete(upload.id, vector_store_id=store)
    assert "owls.txt" not in [r.filename for r in client.vector_stores.search(store, query="owls hunting").data]
    client.files.delete(upload.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


@pytest.mark.parametrize("case", [c for c in BAD_FILES if c != "over the size limit"])
def test_bad_files_fail_with_their_reason(client: OpenAI, store: str, case: str) -> None:
    name, data, reason = BAD_FILES[case]
    done = client.vector_stores.files.upload_and_poll(vector_store_id=store, file=(name, io.BytesIO(data)),
                                                      poll_interval_ms=100)
    assert done.status == "failed" and done.last_error.code == reason.value and done.last_error.message


def test_other_tenants_get_404(server: ServerProcess, client: OpenAI, store: str) -> None:
    intruder = _tenant_client(server, "intruders")
    with pytest.raises(openai.NotFoundError):
        intruder.vector_stores.retrieve(store)
    with pytest.raises(openai.NotFoundError):
        intruder.vector_stores.search(store, query="volcano")
    file_id = client.vector_stores.files.list(store).data[0].id
    with pytest.raises(openai.NotFoundError):
        intruder.files.retrieve(file_id)
    assert store not in [s.id for s in intruder.vector_stores.list().data]


def test_embeddings_endpoint(client: OpenAI) -> None:
    result = client.embeddings.create(model="all-minilm-l6-v2", input=["first text", "second text"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384 and result.usage.prompt_tokens > 4
    as_base64 = client.embeddings.create(model="all-minilm-l6-v2", input="first text")  # the SDK decodes base64
    as_floats = client.embeddings.create(model="all-minilm-l6-v2", input="first text", encoding_format="float")
    assert as_base64.data[0].embedding == pytest.approx(as_floats.data[0].embedding, abs=1e-6)
    # One text takes the single-text path (pooled in float32), a batch sentence-transformers' (bfloat16):
    # the same direction either way.
    alone, in_batch = np.array(as_floats.data[0].embedding), np.array(result.data[0].embedding)
    assert float(alone @ in_batch) > 0.999
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_an_openai_compatible_embedding_upstream(upstreams: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = {"models": [{"name": "none", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}],
              "embeddings": {"backend": "openai", "base_url": upstreams["a"].url, "model": "bag-of-words",
                             "dimensions": 64}}
    srv = start_gateway(tmp_path_factory.mktemp("upstream-embeddings"), config)
    try:
        client = srv.client()
        vectors = client.embeddings.create(model="bag-of-words", input=["red apples", "green pears"])
        assert len(vectors.data[1].embedding) == 64
        store = client.vector_stores.create(name="fruit")
        for name, text in [("apples.txt", b"Red apples grow on trees."), ("boats.txt", b"Sailing boats need wind.")]:
            client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(name, io.BytesIO(text)),
                                                       poll_interval_ms=100)
        found = client.vector_stores.search(store.id, query="boats wind", ranking_options={"ranker": "dense"})
        assert found.data[0].filename == "boats.txt"
    finally:
        srv.stop()


def test_kill_9_mid_ingest_leaves_no_half_document_and_resumes(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = {"models": [{"name": "none", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}]}
    data_dir = tmp_path_factory.mktemp("crash")
    srv = start_gateway(data_dir, config)
    big = "\n\n".join(f"Paragraph {i} tells about topic {i % 97} and the figure {i * 7}." for i in range(6000)).encode()
    client = srv.client()
    store = client.vector_stores.create(name="crash")
    upload = client.files.create(file=("big.txt", io.BytesIO(big)), purpose="assistants")
    client.vector_stores.files.create(vector_store_id=store.id, file_id=upload.id)
    time.sleep(1.0)  # parsing and embedding are under way
    srv.stop(signal.SIGKILL)
    chunks = srv.rows_of("chunks", "file_id = ?", (upload.id,))
    status = srv.rows_of("vector_store_files", "file_id = ?", (upload.id,))[0]["status"]
    assert (status, len(chunks)) == ("in_progress", 0) or status == "completed" and len(chunks) > 100

    again = ServerProcess(data_dir)  # the same data directory and conduit.yaml
    try:
        again.wait_ready()
        deadline = time.monotonic() + 300
        while again.client().vector_stores.files.retrieve(upload.id, vector_store_id=store.id).status == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert again.client().vector_stores.files.retrieve(upload.id, vector_store_id=store.id).status == "completed"
        hit = again.client().vector_stores.search(store.id, query="the figure 4207").data[0]
        assert hit.filename == "big.txt"
    finally:
        again.stop()
