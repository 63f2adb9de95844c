"""Gemma 3 on a tiny random gemma3 GGUF (window 16, so short prompts cross it): the model against
transformers' Gemma3 built from the same weights, and the engine core's batched, chunked,
prefix-cached and preempted runs against one request at a time. The real 270M file is tested
in test_gemma_270m.py."""

from __future__ import annotations

import random

import pytest
import torch

from conduit.engine import LLM, SamplingParams
from conduit.engine.core import EngineConfig, EngineCore
from conduit.engine.gguf_loader import GGUFModelFile
from tests.engine.test_core import _run
from tests.engine.tiny_gemma import (
    hf_gemma3,
    reference_greedy,
    reference_logits,
    write_tiny_gemma,
)

WINDOW = 16


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, gguf_path):
    return write_tiny_gemma(tmp_path_factory.mktemp("gguf") / "tiny-gemma.Q8_0.gguf", gguf_path)


@pytest.fixture(scope="module")
def hf_model(tiny_gemma):
    pytest.importorskip("transformers")
    return hf_gemma3(GGUFModelFile(tiny_gemma))


@pytest.fixture(scope="module")
def llm(tiny_gemma) -> LLM:
    return LLM(str(tiny_gemma), dtype="float32")


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(1)
    shared = [rng.randrange(100, 40000) for _ in range(40)]
    out = []
    for i in range(12):
        length = rng.randrange(3, 14) if i % 4 == 1 else rng.randrange(3, 70)
        body = [rng.randrange(100, 40000) for _ in range(length)]
        out.append((shared[: rng.randrange(17, 40)] + body) if i % 3 == 0 else body)
    assert sum(len(p) > WINDOW for p in out) >= 6 and sum(len(p) <= WINDOW for p in out) >= 2
    return out


def test_config(tiny_gemma):
    c = GGUFModelFile(tiny_gemma).config
    assert c.architecture == "gemma3" and c.tie_word_embeddings
    assert c.layer_windows == (WINDOW, None, WINDOW, None)
    assert (c.rope_theta, c.rope_local_theta) == (1_000_000.0, 20_000.0)
    assert (c.head_dim, c.num_heads, c.num_kv_heads) == (32, 2, 1)
    assert c.attention_scale == 32**-0.5 and c.final_logit_softcapping is None


def prefill_then_decode(llm: LLM, ids: list[int], chunks: list[int]) -> list[torch.Tensor]:
    """Prefill in the given chunk sizes, then one token at a time: logits after each step."""
    kv = llm.model.new_kv_cache(len(ids))
    out, pos = [], 0
    for size in chunks + [1] * (len(ids) - sum(chunks)):
        kv.reserve(size)
        out.append(
            llm.model.forward(
                torch.tensor(ids[pos : pos + size]), torch.arange(pos, pos + size), kv
            )
        )
        pos += size
    return out


@pytest.mark.parametrize("length, chunks", [(10, [7]), (40, [30]), (57, [5, 20, 1, 24])])
def test_float32_logits_match_transformers(llm, hf_model, prompts, length, chunks):
    """Short, past the window, and chunked so that chunks start inside and beyond it."""
    ids = (prompts[0] * 3)[:length]
    ref = reference_logits(hf_model, ids)
    steps = prefill_then_decode(llm, ids, chunks)
    ends = [sum(chunks[: i + 1]) for i in range(len(chunks))] + list(
        range(sum(chunks) + 1, length + 1)
    )
    for logits, end in zip(steps, ends, strict=True):
        assert rel_err(logits, ref[end - 1]) < 1e-4, f"after position {end - 1}"


def test_greedy_tokens_match_transformers(llm, hf_model, prompts):
    for prompt in prompts[:4]:
        ours = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24)).token_ids
        assert ours == reference_greedy(hf_model, prompt, 24)


def test_engine_core_matches_transformers(llm, hf_model, prompts):
    """The paged cache's window (a decode batch, prefill chunks starting inside and past it)
    against the reference: the top-5 log-probabilities of every step, batched."""
    chosen = [p for p in prompts if len(p) > WINDOW][:3]
    core = EngineCore(
        llm.loaded, EngineConfig(num_blocks=128, block_size=4, max_num_batched_tokens=24)
    )
    for i, prompt in enumerate(chosen):
        core.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=20, logprobs=5))
    outputs: dict[str, list] = {str(i): [] for i in range(len(chosen))}
    while core.has_unfinished():
        for out in core.step():
            top = [value for _, value in out.logprobs[0].top]
            outputs[out.request_id].append((out.token_ids[0], torch.tensor(top)))
    for i, prompt in enumerate(chosen):
        tokens = [t for t, _ in outputs[str(i)]]
        assert tokens == reference_greedy(hf_model, prompt, 20)
        ref = reference_logits(hf_model, prompt + tokens).log_softmax(-1)
        for step, (_, top) in enumerate(outputs[str(i)]):
            expected = ref[len(prompt) - 1 + step].topk(5).values
            assert torch.allclose(top, expected, atol=1e-4), (i, step)


@pytest.fixture(scope="module")
def reference(llm, prompts):
    return [_run(llm.loaded, [p], EngineConfig(num_blocks=64))[0][0] for p in prompts]


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(num_blocks=256),
        EngineConfig(num_blocks=256, enable_prefix_caching=False),
        EngineConfig(num_blocks=256, max_num_batched_tokens=16, block_size=4),
        EngineConfig(num_blocks=256, max_num_batched_tokens=53, block_size=8, max_num_seqs=5),
        EngineConfig(num_blocks=40, block_size=4, max_num_batched_tokens=64),  # preempts
    ],
    ids=["default", "no-prefix-cache", "chunk16-block4", "chunk53-seqs5", "preemption"],
)
def test_batched_matches_single(llm, prompts, reference, config):
    tokens, core = _run(llm.loaded, prompts, config)
    assert tokens == reference
    if config.num_blocks == 40:
        assert core.counters.num_preemptions > 0


def test_bfloat16_logits_close(tiny_gemma, hf_model, prompts):
    llm = LLM(str(tiny_gemma), dtype="bfloat16")
    assert llm.quantization == "none"  # no Q4_0/Q4_1 weights: all dequantized
    ids = prompts[0][:30]
    ref = reference_logits(hf_model, ids)
    for logits, end in zip(prefill_then_decode(llm, ids, [27]), [27, 28, 29, 30], strict=True):
        assert rel_err(logits, ref[end - 1]) < 0.03
