"""Gemma 3 270M served beside SmolLM2 by the default configuration, through the openai client:
legacy completions (plain and streamed, with Gemma's BOS added), and chat refused because the
model is configured for completions only."""

from __future__ import annotations

import openai
import pytest

from conduit.engine import Tokenizer, resolve_model_path
from conduit.engine.gguf_loader import GGUFModelFile

PROMPT = "The capital of France is the city of"


def test_both_models_are_listed(client):
    assert {"smollm2", "gemma"} <= {m.id for m in client.models.list().data}


def test_completion(client):
    reply = client.completions.create(model="gemma", prompt=PROMPT, max_tokens=8, temperature=0)
    assert reply.object == "text_completion" and reply.model == "gemma"
    assert "Paris" in reply.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    # The prompt was counted with the <bos> Gemma needs (without it, it answers noise).
    tokenizer = Tokenizer(GGUFModelFile(resolve_model_path("gemma3-270m")))
    assert reply.usage.prompt_tokens == len(tokenizer.encode(PROMPT, add_special_tokens=True))
    assert tokenizer.encode(PROMPT, add_special_tokens=True)[0] == tokenizer.bos_token_id


def test_stream_matches_non_stream(client):
    args = {"model": "gemma", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len(whole.choices[0].text) > 10


def test_chat_is_refused_for_a_completions_model(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemma", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert info.value.body["code"] == "unsupported_capability"


def test_the_chat_model_still_answers(client):
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
