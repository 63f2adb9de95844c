"""The engine core: batched, chunked, prefix-cached and preempted runs give the same tokens
as one request at a time (float32, so the arithmetic per row is exact), and the sampler's
features work through it."""

from __future__ import annotations

import random

import pytest
import torch

from conduit.engine.core import EngineConfig, EngineCore
from conduit.engine.sampling import SamplingParams

GREEDY = {"temperature": 0, "max_tokens": 12, "ignore_eos": True}


def _run(loaded, prompts, config, params=None, priorities=None):
    core = EngineCore(loaded, config)
    for i, prompt in enumerate(prompts):
        p = params[i] if isinstance(params, list) else (params or SamplingParams(**GREEDY))
        core.add_request(str(i), prompt, p, priority=(priorities or [0] * len(prompts))[i])
    tokens = {str(i): [] for i in range(len(prompts))}
    while core.has_unfinished():
        for out in core.step():
            tokens[out.request_id] += out.token_ids
        core.block_manager.check_invariants()
    assert core.block_manager.num_free == core.block_manager.num_blocks  # all freed
    return [tokens[str(i)] for i in range(len(prompts))], core


@pytest.fixture(scope="module")
def loaded(llm_fp32):
    return llm_fp32.loaded


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(0)
    shared = [rng.randrange(100, 40000) for _ in range(40)]  # some prompts share a prefix
    out = []
    for i in range(16):
        length = rng.randrange(3, 90)
        body = [rng.randrange(100, 40000) for _ in range(length)]
        out.append((shared[: rng.randrange(17, 40)] + body) if i % 3 == 0 else body)
    return out


@pytest.fixture(scope="module")
def reference(loaded, prompts):
    return [_run(loaded, [p], EngineConfig(num_blocks=64))[0][0] for p in prompts]


def test_single_request_matches_llm(llm_fp32, loaded, prompts, reference):
    for prompt, tokens in list(zip(prompts, reference))[:2]:
        expected = llm_fp32.generate(prompt, SamplingParams(**GREEDY)).token_ids
        assert tokens == expected


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(num_blocks=256),
        EngineConfig(num_blocks=256, enable_prefix_caching=False),
        EngineConfig(num_blocks=256, max_num_batched_tokens=16, block_size=4),
        EngineConfig(num_blocks=256, max_num_batched_tokens=53, block_size=8),
        EngineConfig(num_blocks=256, max_num_seqs=5),
        EngineConfig(num_blocks=256, enable_chunked_prefill=False, max_num_batched_tokens=256),
    ],
    ids=["default", "no-prefix-cache", "chunk16", "chunk53", "max-seqs-5", "no-chunking"],
)
def test_16_concurrent_requests_match_single(loaded, prompts, reference, config):
    tokens, _ = _run(loaded, prompts, config)
    assert tokens == reference


def test_preemption_under_tiny_kv_budget_matches_single(loaded, prompts, reference):
    tokens, core = _run(loaded, prompts, EngineConfig(num_blocks=36, block_size=4,
                                                      max_num_batched_tokens=64))
    assert core.counters.num_preemptions > 0
    assert tokens == reference


def test_prefix_cache_hits_are_counted_in_tokens(loaded, prompts):
    repeated = [prompts[0]] * 3
    _, core = _run(loaded, repeated, EngineConfig(num_blocks=64, max_num_seqs=1))
    stats = core.stats()
    assert stats.prefix_cache_queries == 3 * len(prompts[0])
    full_blocks = (len(prompts[0]) - 1) // 16
    assert stats.prefix_cache_hits == 2 * full_blocks * 16


def test_seeded_sampling_is_independent_of_the_batch(loaded, prompts):
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    alone, _ = _run(loaded, [prompts[5]], EngineConfig(num_blocks=64), params=seeded)
    others = [SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True)] * 6
    batch, _ = _run(loaded, prompts[:6] + [prompts[5]], EngineConfig(num_blocks=256),
                    params=others + [seeded])
    assert batch[-1] == alone[0]


def test_abort_frees_blocks(loaded, prompts):
    core = EngineCore(loaded, EngineConfig(num_blocks=64, max_num_batched_tokens=16))
    core.add_request("a", prompts[1], SamplingParams(**GREEDY))
    core.add_request("b", prompts[2], SamplingParams(**GREEDY))
    core.step()
    core.step()
    assert core.block_manager.num_free < 64
    core.abort("a")
    core.abort("b")
    core.abort("unknown")  # ignored
    assert not core.has_unfinished()
    assert core.block_manager.num_free == 64
    assert core.step() == []


def test_n_choices_share_the_prompt(loaded, prompts):
    prompt = prompts[0]
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=8, ignore_eos=True)
    core = EngineCore(loaded, EngineConfig(num_blocks=64))
    core.add_request("r", prompt, params)
    choices: dict[int, list[int]] = {}
    finished = set()
    while core.has_unfinished():
        for out in core.step():
            choices.setdefault(out.index, []).extend(out.token_ids)
            if out.finish_reason:
                finished.add(out.index)
    assert finished == {0, 1, 2} and all(len(t) == 8 for t in choices.values())
    assert len({tuple(t) for t in choices.values()}) > 1  # seeds differ per choice
    # Choices 1 and 2 found the prompt's full blocks cached.
    assert core.block_manager.prefix_hits == 2 * ((len(prompt) - 1) // 16) * 16


def test_sampler_features(loaded):
    tok = loaded.tokenizer
    prompt = tok.encode("The capital of France is")

    def one(**kw):
        params = SamplingParams(**{"max_tokens": 6, **kw})
        tokens, _ = _run(loaded, [prompt], EngineConfig(num_blocks=32), params=params)
        return tokens[0]

    greedy = one(temperature=0)
    # logit_bias forbids the greedy token; stop_token_ids stops at (and includes) it.
    assert one(temperature=0, logit_bias={greedy[0]: -100})[0] != greedy[0]
    assert one(temperature=0, stop_token_ids=[greedy[1]]) == greedy[:2]
    # A huge repetition/frequency penalty never repeats a token it generated.
    for kw in ({"frequency_penalty": 100.0}, {"presence_penalty": 100.0}):
        out = one(temperature=0, max_tokens=12, ignore_eos=True, **kw)
        assert len(set(out)) == len(out)
    out = one(temperature=0, repetition_penalty=100.0, max_tokens=8, ignore_eos=True)
    assert not set(out) & set(prompt) and len(set(out)) == len(out)
    # min_p=1 keeps only the argmax: sampling becomes greedy; top_k=1 too.
    assert one(temperature=1.0, min_p=1.0, seed=3) == greedy
    assert one(temperature=1.0, top_k=1, seed=3) == greedy


def test_logprobs_and_stop_strings(loaded):
    tok = loaded.tokenizer
    prompt = tok.encode("1, 2, 3, 4,")
    core = EngineCore(loaded, EngineConfig(num_blocks=32))
    core.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=20, logprobs=3,
                                                 stop=[" 7"]))
    outs = []
    while core.has_unfinished():
        outs += core.step()
    text = "".join(o.text for o in outs)
    assert outs[-1].finish_reason == "stop" and " 7" not in text
    for o in outs:
        (lp,) = o.logprobs
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
        assert lp.top[0][0] == lp.token  # greedy picks the most likely token
        assert bytes(lp.bytes) == tok.token_bytes[o.token_ids[0]]


def test_priority_runs_first(loaded, prompts):
    core = EngineCore(loaded, EngineConfig(num_blocks=64, max_num_seqs=1))
    core.add_request("low", prompts[1], SamplingParams(**GREEDY), priority=5)
    core.add_request("high", prompts[2], SamplingParams(**GREEDY), priority=0)
    first = core.step()
    while not first:
        first = core.step()
    assert first[0].request_id == "high"


def test_dummy_load_format_runs_the_engine():
    from conduit.engine.loader import DUMMY_PRESETS, DummyModelFile, load_model

    shape = '{"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}'
    loaded = load_model(shape, dtype="float32", load_format="dummy", max_model_len=256)
    assert loaded.name == "dummy" and loaded.model.config.num_layers == 2
    tokens, _ = _run(loaded, [[5, 6, 7]], EngineConfig(num_blocks=8),
                     params=SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert len(tokens[0]) == 5
    big = DummyModelFile("llama3-8b", vocab_size=49152).config  # shapes only: nothing allocated
    assert big.num_layers == DUMMY_PRESETS["llama3-8b"]["num_layers"] == 32
    assert big.vocab_size == 128256  # Llama 3's, not the bundled tokenizer's 49,152


def test_dummy_vocabulary_larger_than_the_tokenizer():
    from conduit.engine.loader import load_model

    shape = ('{"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "num_heads": 4, '
             '"vocab_size": 60000}')
    loaded = load_model(shape, dtype="float32", load_format="dummy", max_model_len=64)
    assert loaded.model.config.vocab_size == loaded.tokenizer.vocab_size == 60000
    tokens, _ = _run(loaded, [[59999, 50000, 7]], EngineConfig(num_blocks=8),
                     params=SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(tokens[0]) == 4


def test_device_choice_is_validated():
    from conduit.engine.loader import load_model, resolve_device

    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            load_model("smollm2", device="cuda")
