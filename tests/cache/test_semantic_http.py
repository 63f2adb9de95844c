"""The semantic cache through HTTP with the openai client: paraphrases hit (streamed too),
near-misses and other tenants do not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, FakeUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {"models": [{"name": "fast", "deployments": [upstream(upstreams["b"])]}],
              "cache": {"semantic": {"enabled": True}}}
    server = start_gateway(tmp_path_factory.mktemp("semantic"), config)
    yield server
    server.stop()


def _key(server: ServerProcess, tenant: str) -> str:
    return httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant}).json()["key"]


def _ask(server: ServerProcess, key: str, question: str, stream: bool = False) -> tuple[str, str]:
    """(x-conduit-cache, answer text)."""
    client = server.client(key)
    messages = [{"role": "user", "content": question}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="fast", messages=messages, temperature=0, stream=True) as response:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
            return response.headers["x-conduit-cache"], text
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=messages, temperature=0)
    return raw.headers["x-conduit-cache"], raw.parse().choices[0].message.content or ""


def test_paraphrase_hits_without_calling_the_model(gateway: ServerProcess, upstreams: dict[str, FakeUpstream]) -> None:
    key = _key(gateway, "sem")
    assert _ask(gateway, key, "How do I reset my password?")[0] == "miss"
    before = upstreams["b"].requests
    outcome, text = _ask(gateway, key, "How can I reset my password?")
    assert outcome == "semantic-hit" and text.startswith("Hello from b")
    assert _ask(gateway, key, "how can i reset my password", stream=True)[0] == "semantic-hit"
    assert upstreams["b"].requests == before
    row = gateway.wait_rows("cache = 'semantic-hit'", count=2)[0]
    assert row["cost_usd"] == 0


@pytest.mark.parametrize(("cached", "asked"), [
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("Why does my build work on Linux?", "Why doesn't my build work on Linux?"),
    ("What is the price for 5 users?", "What is the price for 50 users?"),
    ("What is the function of money?", "What is the function of TV?"),
])
def test_near_misses_do_not_hit(gateway: ServerProcess, cached: str, asked: str) -> None:
    key = _key(gateway, "near")
    assert _ask(gateway, key, cached)[0] == "miss"
    assert _ask(gateway, key, asked)[0] == "miss"


def test_no_hit_across_tenants(gateway: ServerProcess) -> None:
    assert _ask(gateway, _key(gateway, "first"), "What are the opening hours of the library?")[0] == "miss"
    assert _ask(gateway, _key(gateway, "second"), "What are the library's opening hours?")[0] == "miss"
