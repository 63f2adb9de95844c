"""Cost per request and usage reports, through HTTP and the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.cli.test_cli import conduit
from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

PRICES = {"input": 2.0, "cached_input": 1.0, "output": 10.0}  # the fake reports 11 prompt + 7 completion tokens


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [{"name": "priced", "deployments": [upstream(upstreams["a"])], "prices": PRICES},
              {"name": "free", "deployments": [upstream(upstreams["b"])]}]
    server = start_gateway(tmp_path_factory.mktemp("usage"), {"models": models})
    yield server
    server.stop()


def _key(server: ServerProcess, tenant: str) -> str:
    return httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant}).json()["key"]


def _chat(server: ServerProcess, key: str, model: str, **extra) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers(key), timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_cost_recorded_and_reported_per_tenant(gateway: ServerProcess) -> None:
    alpha, beta = _key(gateway, "alpha"), _key(gateway, "beta")
    for _ in range(3):
        assert _chat(gateway, alpha, "priced").status_code == 200
    assert _chat(gateway, alpha, "free").status_code == 200
    assert _chat(gateway, beta, "priced").status_code == 200
    # A cache hit costs nothing: no model ran.
    assert _chat(gateway, beta, "priced", temperature=0).headers["x-conduit-cache"] == "miss"
    assert _chat(gateway, beta, "priced", temperature=0).headers["x-conduit-cache"] == "hit"
    one = (11 * 2.0 + 7 * 10.0) / 1e6
    gateway.wait_rows("tenant_id IS NOT NULL", count=7)

    mine = httpx.get(f"{gateway.url}/v1/usage", params={"group_by": "tenant,model"},
                     headers=gateway.headers(alpha)).json()["data"]
    assert {(r["tenant"], r["model"]) for r in mine} == {("alpha", "priced"), ("alpha", "free")}  # only itself
    priced = next(r for r in mine if r["model"] == "priced")
    assert priced["requests"] == 3 and priced["prompt_tokens"] == 33 and priced["completion_tokens"] == 21
    assert priced["cost_usd"] == pytest.approx(3 * one)
    assert next(r for r in mine if r["model"] == "free")["cost_usd"] == 0

    everyone = httpx.get(f"{gateway.url}/v1/usage", params={"group_by": "tenant"},
                         headers=gateway.headers()).json()["data"]
    by_tenant = {r["tenant"]: r for r in everyone}
    assert by_tenant["beta"]["requests"] == 3 and by_tenant["beta"]["cost_usd"] == pytest.approx(2 * one)

    per_day = httpx.get(f"{gateway.url}/v1/usage", params={"group_by": "day,key", "start": "2000-01-01"},
                        headers=gateway.headers(beta)).json()["data"]
    assert len(per_day) == 1 and per_day[0]["day"] and per_day[0]["key"].startswith("key_")

    bad = httpx.get(f"{gateway.url}/v1/usage", params={"group_by": "planet"}, headers=gateway.headers())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"

    cli = conduit("usage", "--group-by", "tenant", "--tenant", "alpha", "--json",
                  env={"CONDUIT_DATA_DIR": str(gateway.data_dir)})
    assert cli.returncode == 0, cli.stderr
    assert '"requests": 4' in cli.stdout and "beta" not in cli.stdout
