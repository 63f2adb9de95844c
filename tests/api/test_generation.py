"""Chat and legacy completions through the official openai client over real HTTP."""

from __future__ import annotations

import pytest
from openai import OpenAI

HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_chat_non_stream(client: OpenAI, model_name: str) -> None:
    reply = client.chat.completions.create(model=model_name, messages=HELLO, temperature=0, max_tokens=24)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_matches_non_stream(client: OpenAI, model_name: str) -> None:
    args = dict(model=model_name, messages=HELLO, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client: OpenAI, model_name: str) -> None:
    chunks = list(client.chat.completions.create(model=model_name, messages=HELLO, max_tokens=4, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_max_tokens_gives_length(client: OpenAI, model_name: str) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    reply = client.chat.completions.create(model=model_name, messages=messages, temperature=0, max_tokens=7)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7
    reply = client.chat.completions.create(model=model_name, messages=messages, temperature=0,
                                           max_completion_tokens=5)
    assert reply.usage.completion_tokens == 5


def test_stop_string_truncates(client: OpenAI, model_name: str) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.chat.completions.create(model=model_name, messages=messages, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert "4" in text, text
    stopped = client.chat.completions.create(model=model_name, messages=messages, temperature=0, max_tokens=40,
                                             stop=["4"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index("4")]
    streamed = client.chat.completions.create(model=model_name, messages=messages, temperature=0, max_tokens=40,
                                              stop="4", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[: text.index("4")]


def test_seed_reproducible(client: OpenAI, model_name: str) -> None:
    args = dict(model=model_name, messages=[{"role": "user", "content": "Name a fruit."}],
                temperature=1.0, max_tokens=16, seed=1234)
    first = client.chat.completions.create(**args).choices[0].message.content
    second = client.chat.completions.create(**args).choices[0].message.content
    assert first == second


def test_system_and_multi_turn(client: OpenAI, model_name: str) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Arr, hello matey!"},
        {"role": "user", "content": [{"type": "text", "text": "Who are you?"}]},
    ]
    reply = client.chat.completions.create(model=model_name, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content


def test_completions(client: OpenAI, model_name: str) -> None:
    reply = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=6,
                                      temperature=0)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage.completion_tokens <= 6
    streamed = client.completions.create(model=model_name, prompt="The capital of France is", max_tokens=6,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_completions_several_prompts(client: OpenAI, model_name: str) -> None:
    reply = client.completions.create(model=model_name, prompt=["One, two,", "Red, green,"], max_tokens=3,
                                      temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    single = client.completions.create(model=model_name, prompt="Red, green,", max_tokens=3, temperature=0)
    assert reply.choices[1].text == single.choices[0].text
    assert reply.usage.prompt_tokens > single.usage.prompt_tokens


def test_models_list(client: OpenAI, model_name: str) -> None:
    assert [m.id for m in client.models.list()] == [model_name, "gemma"]
    assert client.models.retrieve(model_name).id == model_name


@pytest.mark.parametrize("text", ["Say: café 東京 🚀", "Répète: naïve façade 日本語"])
def test_stream_utf8_never_has_replacement_chars(client: OpenAI, model_name: str, text: str) -> None:
    stream = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": text}],
                                            max_tokens=48, temperature=0.8, seed=7, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert all("\ufffd" not in p for p in pieces)
