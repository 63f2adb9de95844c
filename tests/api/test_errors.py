"""Every client mistake gets a clear OpenAI-shaped error, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import ServerProcess

MESSAGES = [{"role": "user", "content": "hi"}]


def _post(server: ServerProcess, body: dict | str | bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    content = body if isinstance(body, str | bytes) else None
    return httpx.post(f"{server.url}{path}", headers={**server.headers(), "Content-Type": "application/json"},
                      json=None if content is not None else body, content=content, timeout=60)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_unknown_model_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user"}]}, "messages.[0]"),
        ({"messages": "hello"}, "messages"),
        ({"temperature": "hot"}, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 17}, "n"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"hello": 5}}, "logit_bias"),
        ({"logit_bias": {"42": 101}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        # The embedded engine cannot constrain its output yet (upstreams can: tests/safety).
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frobnicate": True}, "frobnicate"),
        ({"model": 42}, "model"),
    ],
)
def test_invalid_parameters_400(server: ServerProcess, patch: dict, param: str) -> None:
    response = _post(server, {"model": "smollm2", "messages": MESSAGES, **patch})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_missing_required_400(server: ServerProcess) -> None:
    error = _error(response := _post(server, {"model": "smollm2"}))
    assert response.status_code == 400
    assert error["param"] == "messages"
    error = _error(response := _post(server, {"messages": MESSAGES}))
    assert response.status_code == 400 and error["param"] == "model"


@pytest.mark.parametrize("raw", ['{"model": "smollm2", "messages": [', "not json at all", "", "[1, 2]"])
def test_malformed_json_400(server: ServerProcess, raw: str) -> None:
    response = _post(server, raw)
    assert response.status_code == 400, response.text
    _error(response)


def test_body_over_limit_413(server: ServerProcess) -> None:
    big = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}
    response = _post(server, big)
    assert response.status_code == 413
    assert _error(response)["code"] == "request_too_large"


def test_chunked_body_over_limit_413(server: ServerProcess) -> None:
    def chunks():
        yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}]}'

    response = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers(), content=chunks(),
                          timeout=60)
    assert response.status_code == 413
    _error(response)


def test_context_length_exceeded_400(client: OpenAI) -> None:
    long_text = "hello world " * 5000  # ~10k tokens, over SmolLM2's 8192
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": long_text}],
                                           stream=stream)
        assert info.value.body["code"] == "context_length_exceeded"


def test_unknown_path_and_method(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/v1/nothing-here", headers=server.headers())
    assert response.status_code == 404
    _error(response)
    response = httpx.get(f"{server.url}/v1/chat/completions", headers=server.headers())
    assert response.status_code == 405
    _error(response)


def test_completions_invalid(server: ServerProcess) -> None:
    response = _post(server, {"model": "smollm2", "prompt": ""}, path="/v1/completions")
    assert response.status_code == 400 and _error(response)["param"] == "prompt"
    response = _post(server, {"model": "smollm2", "prompt": "hi", "max_tokens": 0}, path="/v1/completions")
    assert response.status_code == 400 and _error(response)["param"] == "max_tokens"
