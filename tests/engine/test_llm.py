"""LLM.generate / LLM.stream behaviour: stops, seeds, lengths, context limits, abort."""

from __future__ import annotations

import pytest

from conduit.engine import LLM, ContextLengthExceeded, SamplingParams, resolve_model_path
from conduit.engine.gguf_loader import GGUFModelFile

CHAT = [{"role": "user", "content": "List five fruits, one per line."}]


@pytest.fixture(scope="module")
def chat_ids(llm):
    return llm.tokenizer.encode(llm.tokenizer.apply_chat_template(CHAT))


@pytest.fixture(scope="module")
def greedy(llm, chat_ids):
    """The unconstrained greedy answer the stop tests cut into."""
    out = llm.generate(chat_ids, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    assert len(out.text) > 40
    return out


@pytest.fixture(scope="module")
def small_llm():
    return LLM(max_model_len=64)


def collect(deltas):
    deltas = list(deltas)
    assert all(d.finish_reason is None for d in deltas[:-1])
    return deltas, "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids]


def test_public_attributes(llm):
    assert llm.model_name == "SmolLM2-135M-Instruct"
    assert llm.max_model_len == llm.config.context_length == 8192
    assert llm.tokenizer.vocab_size == llm.config.vocab_size


def test_generate_from_text_and_ids_agree(llm):
    params = SamplingParams(temperature=0, max_tokens=8)
    from_text = llm.generate("The capital of France is", params)
    from_ids = llm.generate(llm.tokenizer.encode("The capital of France is"), params)
    assert from_text == from_ids
    assert from_text.prompt_token_ids == llm.tokenizer.encode("The capital of France is")


def test_stream_matches_generate(llm, chat_ids, greedy):
    deltas, text, tokens = collect(
        llm.stream(chat_ids, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    )
    assert (text, tokens) == (greedy.text, greedy.token_ids)
    assert all(len(d.token_ids) == 1 for d in deltas)
    assert deltas[-1].finish_reason == "length" and len(tokens) == 48


def test_eos_stops_with_reason_stop(llm, chat_ids):
    out = llm.generate(chat_ids, SamplingParams(temperature=0, max_tokens=200))
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] in llm.tokenizer.eos_token_ids
    assert "<|im_end|>" not in out.text


@pytest.mark.parametrize("cut", [0.3, 0.6])
def test_stop_string_truncates_and_never_leaks_while_streaming(llm, chat_ids, greedy, cut):
    full = greedy.text
    at = int(len(full) * cut)
    stop = full[at : at + 4]  # usually spans a token boundary
    expected = full[: full.index(stop)]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, stop=["@@never@@", stop])
    deltas, text, _ = collect(llm.stream(chat_ids, params))
    assert text == expected and deltas[-1].finish_reason == "stop"
    # No prefix of the stream ever showed text beyond the cut.
    shown = ""
    for d in deltas:
        shown += d.text
        assert expected.startswith(shown)
    out = llm.generate(chat_ids, params)
    assert (out.text, out.finish_reason) == (expected, "stop")


def test_stop_token_ids(llm, chat_ids, greedy):
    stop_at = greedy.token_ids[5]
    out = llm.generate(
        chat_ids,
        SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, stop_token_ids=[stop_at]),
    )
    first = greedy.token_ids.index(stop_at)
    assert out.token_ids == greedy.token_ids[: first + 1]
    assert out.finish_reason == "stop"
    assert out.text == llm.tokenizer.decode(
        greedy.token_ids[:first]
    )  # the stop token's text is cut


def test_seeded_sampling_is_reproducible(llm, chat_ids):
    params = SamplingParams(
        temperature=1.0, top_p=0.95, top_k=50, seed=1234, max_tokens=24, ignore_eos=True
    )
    first, second = llm.generate(chat_ids, params), llm.generate(chat_ids, params)
    assert first.token_ids == second.token_ids
    others = {
        tuple(
            llm.generate(
                chat_ids, SamplingParams(temperature=1.0, seed=s, max_tokens=24, ignore_eos=True)
            ).token_ids
        )
        for s in (1, 2, 3)
    }
    assert len(others) > 1


def test_max_tokens_gives_length(llm, chat_ids):
    out = llm.generate(
        chat_ids, SamplingParams(temperature=0.8, seed=0, max_tokens=5, ignore_eos=True)
    )
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_context_length_exceeded(small_llm):
    assert small_llm.max_model_len == 64
    for n in (64, 65, 500):
        with pytest.raises(ContextLengthExceeded) as info:
            small_llm.stream([28] * n, SamplingParams())
        assert (info.value.prompt_tokens, info.value.max_model_len) == (n, 64)
        assert isinstance(info.value, ValueError)
    with pytest.raises(ContextLengthExceeded):
        small_llm.generate([28] * 64)


def test_max_tokens_capped_by_context(small_llm):
    out = small_llm.generate(
        [28] * 60, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    )
    assert len(out.token_ids) == 4 and out.finish_reason == "length"
    out = small_llm.generate(
        [28] * 63, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    )
    assert len(out.token_ids) == 1 and out.finish_reason == "length"


def test_should_stop_aborts_before_any_further_work(llm, chat_ids, monkeypatch):
    forwards = []
    real_forward = llm.model.forward
    monkeypatch.setattr(llm.model, "forward", lambda *a: forwards.append(1) or real_forward(*a))

    deltas = []
    for delta in llm.stream(
        chat_ids,
        SamplingParams(max_tokens=50, ignore_eos=True),
        should_stop=lambda: len(deltas) >= 3,
    ):
        deltas.append(delta)  # noqa: PERF402 - should_stop reads the list as it grows
    assert [d.finish_reason for d in deltas] == [None, None, None, "abort"]
    assert deltas[-1].token_ids == [] and len(forwards) == 3

    forwards.clear()
    deltas = list(llm.stream(chat_ids, SamplingParams(), should_stop=lambda: True))
    assert [(d.text, d.token_ids, d.finish_reason) for d in deltas] == [("", [], "abort")]
    assert forwards == []


def test_should_stop_is_checked_between_steps(llm, chat_ids):
    stream = llm.stream(
        chat_ids, SamplingParams(max_tokens=50, ignore_eos=True), should_stop=lambda: cancelled
    )
    cancelled = False
    assert next(stream).finish_reason is None
    assert next(stream).finish_reason is None
    cancelled = True
    assert next(stream).finish_reason == "abort"
    with pytest.raises(StopIteration):
        next(stream)


def test_invalid_requests(llm):
    with pytest.raises(ValueError):
        llm.stream([], SamplingParams())
    with pytest.raises(ValueError):
        llm.stream([llm.config.vocab_size], SamplingParams())
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_resolve_model_path(tmp_path, gguf_path):
    assert resolve_model_path("smollm2") == gguf_path and gguf_path.suffix == ".gguf"
    assert resolve_model_path(str(gguf_path)) == gguf_path
    with pytest.raises(FileNotFoundError):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        GGUFModelFile(not_gguf)


def test_non_llama_gguf_is_rejected(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny-gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        LLM(str(path))
