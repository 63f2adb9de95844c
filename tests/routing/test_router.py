"""The `auto` model: rules, classifier and cascade routing across tiers, over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import FakeUpstream, start_gateway, upstream

CODE = "Please debug this Python function: def add(a, b): return a - b"
GREETING = "Hi there, how are you today?"


def _config(upstreams: dict[str, FakeUpstream], router: dict) -> dict:
    return {
        "models": [
            {"name": "cheap", "deployments": [upstream(upstreams["a"])], "prices": {"input": 0.1, "output": 0.2}},
            {"name": "strong", "deployments": [upstream(upstreams["b"])], "prices": {"input": 5, "output": 15}},
        ],
        "router": {"tiers": ["cheap", "strong"], **router},
    }


def _ask(client: OpenAI, text: str, stream: bool = False) -> tuple[str, dict[str, str]]:
    messages = [{"role": "user", "content": text}]
    if stream:
        with client.chat.completions.with_streaming_response.create(model="auto", messages=messages,
                                                                    stream=True) as response:
            headers = dict(response.headers)
            content = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        return content, headers
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
    return raw.parse().choices[0].message.content, dict(raw.headers)


@pytest.mark.parametrize("stream", [False, True])
def test_rules_route_by_difficulty(upstreams: dict[str, FakeUpstream], tmp_path: Path, stream: bool) -> None:
    server = start_gateway(tmp_path, _config(upstreams, {"mode": "rules"}))
    try:
        client = server.client()
        assert [m.id for m in client.models.list()][0] == "auto"
        text, headers = _ask(client, GREETING, stream)
        assert "from a" in text
        assert headers["x-conduit-model"] == "cheap" and headers["x-conduit-route"] == "rules:simple"
        text, headers = _ask(client, CODE, stream)
        assert "from b" in text
        assert headers["x-conduit-model"] == "strong" and headers["x-conduit-route"] == "rules:code"
        row = server.wait_rows("route = 'rules:code'")[0]
        assert row["model"] == "strong" and row["deployment"] == "b" and row["attempts"] == 1
    finally:
        server.stop()


def test_classifier_routes_by_embedding(upstreams: dict[str, FakeUpstream], tmp_path: Path) -> None:
    examples = [{"text": t, "tier": 0} for t in ("hello!", "thanks a lot", "good morning", "what's up?")]
    examples += [{"text": t, "tier": 1} for t in (
        "Prove that there are infinitely many primes.",
        "Derive the closed form of the integral of x^2 e^x.",
        "Write a multithreaded web crawler in Rust with rate limiting.",
        "Analyse the trade-offs between consensus algorithms for a geo-replicated database.")]
    server = start_gateway(tmp_path, _config(upstreams, {"mode": "classifier", "examples": examples}))
    try:
        client = server.client()
        text, headers = _ask(client, "hey, good evening!")
        assert "from a" in text and headers["x-conduit-route"].startswith("classifier:tier0")
        text, headers = _ask(client, "Prove the Pythagorean theorem using similar triangles.")
        assert "from b" in text and headers["x-conduit-route"].startswith("classifier:tier1")
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_cascade_escalates_on_low_confidence(upstreams: dict[str, FakeUpstream], tmp_path: Path,
                                             stream: bool) -> None:
    server = start_gateway(tmp_path, _config(upstreams, {"mode": "cascade", "threshold": -1.0}))
    try:
        client = server.client()
        text, headers = _ask(client, "an easy one", stream)  # the fake answers with logprob -0.1
        assert "from a" in text
        assert headers["x-conduit-route"] == "cascade:cheap:accepted(logprob=-0.10)"
        text, headers = _ask(client, "a hard one", stream)  # logprob -3.0: escalate
        assert "from b" in text
        assert headers["x-conduit-route"] == "cascade:cheap:escalated(logprob=-3.00)"
        assert headers["x-conduit-model"] == "strong"
        assert headers["x-conduit-attempts"] == "2"
    finally:
        server.stop()


def test_logprobs_pass_through_from_upstream(upstreams: dict[str, FakeUpstream], tmp_path: Path) -> None:
    server = start_gateway(tmp_path, _config(upstreams, {"mode": "rules"}))
    try:
        client = server.client()
        reply = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "a hard one"}],
                                               logprobs=True)
        content = reply.choices[0].logprobs.content
        assert "".join(t.token for t in content) == reply.choices[0].message.content
        assert all(t.logprob == -3.0 for t in content)
        chunks = list(client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}],
                                                     logprobs=True, stream=True))
        streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        assert [t.logprob for t in streamed] == [-0.1] * len(streamed) and streamed
    finally:
        server.stop()


def test_cascade_self_check(upstreams: dict[str, FakeUpstream], tmp_path: Path) -> None:
    # The fake answers the grading question with "Hello from a! ...", which is not a "yes".
    server = start_gateway(tmp_path, _config(upstreams, {"mode": "cascade", "confidence": "self_check"}))
    try:
        text, headers = _ask(server.client(), "an easy one")
        assert "from b" in text
        assert headers["x-conduit-route"].startswith("cascade:cheap:escalated(self_check=hello")
        assert headers["x-conduit-attempts"] == "3"  # cheap answer, cheap self-check, strong answer
    finally:
        server.stop()
