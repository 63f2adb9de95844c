"""The engine's sampler through the OpenAI API: n, logprobs, logit_bias, penalties, stop tokens."""

from __future__ import annotations

import math

from openai import OpenAI

QUESTION = [{"role": "user", "content": "Name three animals."}]


def test_n_choices(client: OpenAI, model_name: str) -> None:
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, n=3, temperature=1.0, seed=11,
                                           max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # sampled independently
    assert reply.usage.completion_tokens <= 36
    chunks = list(client.chat.completions.create(model=model_name, messages=QUESTION, n=2, temperature=0,
                                                 max_tokens=6, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)]
    assert texts[0] == texts[1]  # greedy: both choices identical
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 2


def test_chat_logprobs(client: OpenAI, model_name: str) -> None:
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=8,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(reply.choices[0].message.content[:5])
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)  # greedy picks the top
    chunks = list(client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=8,
                                                 logprobs=True, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_completion_logprobs_legacy_format(client: OpenAI, model_name: str) -> None:
    reply = client.completions.create(model=model_name, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_logit_bias_forces_a_token(client: OpenAI, model_name: str) -> None:
    probe = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=1,
                                           logprobs=True)
    first = probe.choices[0].logprobs.content[0].token
    # Ban the greedy first token: the answer must start differently.
    banned = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=1,
                                            logprobs=True, logit_bias=_bias_for(client, model_name, first, -100))
    assert banned.choices[0].logprobs.content[0].token != first


def _bias_for(client: OpenAI, model_name: str, token: str, bias: float) -> dict[str, float]:
    """A logit_bias entry for the model's first token id of `token`."""
    from conduit.engine import Tokenizer, resolve_model_path  # noqa: PLC0415 - the model's own ids
    from conduit.engine.gguf_loader import GGUFModelFile

    ids = Tokenizer(GGUFModelFile(resolve_model_path("smollm2"))).encode(token)
    return {str(ids[0]): bias}


def test_penalties_and_stop_token_ids(client: OpenAI, model_name: str) -> None:
    base = dict(model=model_name, messages=[{"role": "user", "content": "Repeat the word 'cat' many times."}],
                temperature=0, max_tokens=24)
    plain = client.chat.completions.create(**base).choices[0].message.content
    penalised = client.chat.completions.create(**base, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].message.content != plain
    assert client.chat.completions.create(**base, extra_body={"repetition_penalty": 1.5, "min_p": 0.1}).choices
    stopped = client.chat.completions.create(**base, extra_body={"stop_token_ids": [2]})
    assert stopped.choices[0].finish_reason in ("stop", "length")
