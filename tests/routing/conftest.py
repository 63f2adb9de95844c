"""Fake upstreams and gateways as separate processes on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ServerProcess, free_port


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

    @property
    def requests(self) -> int:
        return httpx.get(f"http://127.0.0.1:{self.port}/_stats").json()["requests"]

    def stop(self) -> None:
        self.proc.kill()  # a "hang" request would hold a graceful stop for an hour
        self.proc.wait(10)


@pytest.fixture(scope="package")
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
