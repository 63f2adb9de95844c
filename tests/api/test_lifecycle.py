"""Liveness, readiness, disconnects, server faults and graceful shutdown."""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from conduit.api.app import create_app
from conduit.backends import Delta, GenerateRequest
from conduit.config import ModelSettings, Settings
from tests.conftest import ADMIN_KEY, ServerProcess, free_port

ESSAY = [{"role": "user", "content": "Write a very long, detailed essay about the history of the Roman Empire."}]


def _new_key(server: ServerProcess, tenant: str) -> tuple[str, str]:
    created = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant}).json()
    return created["id"], created["key"]


def test_healthz_and_readyz(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"smollm2": "ready", "gemma": "ready"}


def test_stream_disconnect_stops_generation(server: ServerProcess) -> None:
    key_id, key = _new_key(server, "disconnect-stream")
    body = {"model": "smollm2", "messages": ESSAY, "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60) as response:
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 4:
                break
    row = server.wait_rows("key_id = ?", (key_id,))[0]
    assert row["status"] == "client_disconnected"
    assert row["completion_tokens"] < 100  # nothing kept generating for the departed client
    started = time.monotonic()
    quick = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers(), timeout=60,
                       json={"model": "smollm2", "messages": ESSAY, "max_tokens": 2})
    assert quick.status_code == 200
    assert time.monotonic() - started < 10  # the engine is free again


def test_non_stream_disconnect_stops_generation(server: ServerProcess) -> None:
    key_id, key = _new_key(server, "disconnect-plain")
    body = {"model": "smollm2", "messages": ESSAY, "max_tokens": 3000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                   timeout=httpx.Timeout(60, read=1.5))
    row = server.wait_rows("key_id = ?", (key_id,))[0]
    assert row["status"] == "client_disconnected"
    assert row["http_status"] == 499


class _ExplodingBackend:
    model = "broken"
    max_model_len = 100
    ready = True

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        raise RuntimeError("simulated backend fault")
        yield  # pragma: no cover - makes this an async generator


@contextmanager
def _serving(settings: Settings, model: str, backend: object) -> Iterator[str]:
    """The app on a free port in this process, with `model`'s deployment backed by `backend`."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        registry = app.state.pipeline.registry
        while not registry.loading.done():  # the real (missing) model has failed to load
            time.sleep(0.05)
        deployment = registry.groups[model].deployments[0]
        deployment.backend, deployment.load_error = backend, None
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_server_fault_is_500_with_logged_error_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY,
                        models=[ModelSettings(name="broken", source=str(tmp_path / "missing.gguf"))])
    with _serving(settings, "broken", _ExplodingBackend()) as url, caplog.at_level(logging.ERROR, logger="conduit.api"):
        response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                              json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    error_id = error["message"].split("error id: ")[1].rstrip(").")
    assert error_id.startswith("err-")
    assert any(error_id in record.getMessage() for record in caplog.records)
    assert "simulated backend fault" in caplog.text  # the traceback is in the log, not the response
    assert "simulated" not in response.text


class _LoadingBackend(_ExplodingBackend):
    ready = False  # started, model not loaded yet


def test_request_while_the_model_loads_is_503_model_loading(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY,
                        models=[ModelSettings(name="slow", source=str(tmp_path / "missing.gguf"))])
    with _serving(settings, "slow", _LoadingBackend()) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key=ADMIN_KEY, max_retries=0)
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
        ready = httpx.get(f"{url}/readyz")
    response = raised.value.response
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "model_loading" and "still loading" in error["message"]
    assert ready.status_code == 503 and ready.json()["models"] == {"slow": "loading"}


def test_sigterm_drains_in_flight_and_flushes_log(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "drain", env={"CONDUIT_REQUEST_LOG__FLUSH_INTERVAL_S": "30"})
    srv.wait_ready()
    body = {"model": "smollm2", "messages": ESSAY, "max_tokens": 24, "temperature": 0}
    first_chunk = threading.Event()

    def streamed() -> str:
        text = ""
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json={**body, "stream": True},
                          headers=srv.headers(), timeout=120) as response:
            for line in response.iter_lines():
                first_chunk.set()
                text += line
        return text

    def plain() -> str:
        return httpx.post(f"{srv.url}/v1/chat/completions", json=body, headers=srv.headers(), timeout=120).text

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(streamed), pool.submit(plain), pool.submit(plain), pool.submit(streamed)]
            assert first_chunk.wait(60)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        # uvicorn re-raises SIGTERM after its graceful shutdown, the conventional exit status.
        assert srv.proc.wait(60) in (0, -signal.SIGTERM)
        assert "stopped; request log flushed" in srv.log()
        for text in results:
            assert '"finish_reason":"length"' in text.replace(" ", "") or "[DONE]" in text, text
        assert sum("[DONE]" in r for r in results) == 2
        # The long flush interval means these rows were written by the shutdown flush.
        rows = srv.rows("endpoint = 'chat.completions'")
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    finally:
        srv.stop()
