"""Shared fixtures: a real Conduit server on a loopback port, driven over HTTP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

ADMIN_KEY = "cdk-admin-test-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`conduit serve` in a subprocess with its own data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, admin_key: str | None = ADMIN_KEY) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = admin_key
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
        full_env.update({"CONDUIT_DATA_DIR": str(data_dir), "CONDUIT_SERVER__PORT": str(self.port),
                         "PYTHONUNBUFFERED": "1", **(env or {})})
        if admin_key:
            full_env["CONDUIT_ADMIN_KEY"] = admin_key
        self.log_path = data_dir / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conduit.cli", "serve"], env=full_env, cwd=data_dir,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def client(self, api_key: str | None = None, **kwargs) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key or self.admin_key, max_retries=0, **kwargs)

    def headers(self, api_key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key or self.admin_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def rows(self, where: str = "1=1", params: tuple = ()) -> list[dict]:
        """Request-log rows, read straight from the SQLite file."""
        return self.rows_of("request_log", where, params)

    def rows_of(self, table: str, where: str = "1=1", params: tuple = ()) -> list[dict]:
        with sqlite3.connect(self.data_dir / "conduit.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(f"SELECT * FROM {table} WHERE {where}", params)]

    def wait_rows(self, where: str, params: tuple = (), count: int = 1, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.rows(where, params)
            if len(rows) >= count:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"expected {count} request-log rows where {where} {params}, got {self.rows(where, params)}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("server"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def model_name() -> str:
    return "smollm2"


class FakeUpstream:
    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.upstream", "--port", str(self.port), "--name", name, "--mode", mode],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"fake upstream {name} did not start")

    def set_mode(self, mode: str) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_control", json={"mode": mode}).raise_for_status()

    @classmethod
    def slow(cls, name: str, delay_s: float) -> FakeUpstream:
        """One whose every answer waits `delay_s` before its first token."""
        fake = cls(name, mode="slow_first")
        httpx.post(f"http://127.0.0.1:{fake.port}/_control", json={"delay_s": delay_s}).raise_for_status()
        return fake

    @property
    def requests(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/_stats").json()["requests"]

    def stop(self) -> None:
        self.proc.kill()  # a "hang" request would hold a graceful stop for an hour
        self.proc.wait(10)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {name: FakeUpstream(name) for name in ("a", "b", "c", "flip")}
    yield fakes
    for fake in fakes.values():
        fake.stop()


def start_gateway(data_dir: Path, config: dict, env: dict[str, str] | None = None) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "conduit.yaml").write_text(yaml.safe_dump(config))
    gateway = ServerProcess(data_dir, env=env)
    gateway.wait_ready(timeout=120)
    return gateway


def upstream(fake: FakeUpstream, fault: str | None = None, **extra) -> dict:
    deployment = {"backend": "openai", "base_url": fake.url, "id": fake.name + (f"-{fault}" if fault else "")}
    if fault:
        deployment["upstream_model"] = f"fault:{fault}"
    return {**deployment, **extra}


class RedisServer:
    """A throwaway `redis-server` on a loopback port (Debian's package; `make test` installs it)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it (Debian package redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()
