"""A gateway with scripted upstreams and one tenant per guard policy, driven with the openai client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

MODES = ("echo", "leak", "json", "bad_json_always", "made_up", "quote")
TENANTS = {
    "plain": None,
    "flagger": {"injection": {"action": "flag"}},
    "redactor": {"pii": {"mode": "redact"}},
    "restorer": {"pii": {"mode": "redact", "restore": True}},
    "blocker": {"pii": {"mode": "block"}},
    "leakwatch": {"pii": {"output": "redact"}},
    "leakblock": {"pii": {"output": "block"}},
    "canary": {"system_prompt": {"canary": True}},
    # The documents tests read the prompt back through the "leak" model: no grounding check there.
    "docs-drop": {"grounding": {"action": "allow"}},
    "docs-warn": {"documents": {"action": "warn"}, "grounding": {"action": "allow"}},
    "flag-grounding": {"grounding": {"action": "flag"}},
}


class Guarded:
    def __init__(self, server: ServerProcess, fake: FakeUpstream, keys: dict[str, str]) -> None:
        self.server, self.fake, self.keys = server, fake, keys

    def client(self, tenant: str) -> OpenAI:
        return self.server.client(self.keys[tenant], timeout=60)

    def upstream_saw(self) -> dict:
        """The last request body the upstream received."""
        return httpx.get(f"http://127.0.0.1:{self.fake.port}/_stats").json()["last_body"][0]

    def webhooks(self) -> list[dict]:
        return httpx.get(f"http://127.0.0.1:{self.fake.port}/_webhooks").json()


@pytest.fixture(scope="package")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    fake = FakeUpstream("guards")
    config = {
        "models": [{"name": mode, "deployments": [upstream(fake, mode)]} for mode in MODES],
        "guards": {"review_webhook_url": f"http://127.0.0.1:{fake.port}/_webhook", "injection": {"action": "block"}},
        "tenants": [{"name": name, **({"guards": policy} if policy else {})} for name, policy in TENANTS.items()],
        "cache": {"exact": {"enabled": False}, "deduplicate": False},
    }
    server = start_gateway(tmp_path_factory.mktemp("guards"), config)
    keys = {name: httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": name}).json()["key"]
            for name in TENANTS}
    yield Guarded(server, fake, keys)
    server.stop()
    fake.stop()
