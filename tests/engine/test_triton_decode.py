"""The CUDA path's decode attention: a Triton kernel that reads the paged KV cache in place, and
the fixed buffers that CUDA graphs replay. Without a GPU the kernel runs under Triton's
interpreter (see conftest), so CI checks the kernel code that a GPU compiles, in float32."""

from __future__ import annotations

import random

import pytest
import torch

from conduit.engine.core import EngineConfig, EngineCore
from conduit.engine.cuda_graphs import graph_sizes
from conduit.engine.runner import ModelRunner
from conduit.engine.sampling import SamplingParams
from tests.engine.tiny_gemma import write_tiny_gemma
from tests.engine.tiny_llama import write_tiny_llama

pytest.importorskip("triton")
from conduit.engine.triton_attention import paged_decode_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
# Engines on CPU tensors can run the kernels only under the interpreter, which is off with a GPU.
interpreted = pytest.mark.skipif(DEVICE == "cuda", reason="the CPU engine with Triton kernels runs interpreted")


def reference(q, key_cache, value_cache, tables, lengths, scale, window):
    """Each sequence's context gathered position by position, attention in float64."""
    batch, heads, dim = q.shape
    kv_heads, _, block_size, _ = key_cache.shape
    out = torch.empty(batch, heads, dim, dtype=torch.float64)
    for b in range(batch):
        n = int(lengths[b])
        positions = torch.arange(n)
        if window:
            positions = positions[positions >= n - window]
        blocks, slots = tables[b][positions // block_size].cpu(), positions % block_size
        k = key_cache.cpu()[:, blocks, slots].double()
        v = value_cache.cpu()[:, blocks, slots].double()
        queries = q[b].cpu().double().view(kv_heads, heads // kv_heads, dim)
        scores = queries @ k.transpose(1, 2) * scale
        out[b] = (scores.softmax(-1) @ v).reshape(heads, dim)
    return out


@pytest.mark.parametrize(
    "heads, kv_heads, head_dim, window, dtype",
    [
        (6, 2, 64, None, torch.float32),  # grouped-query, SmolLM2's head size
        (4, 4, 32, None, torch.float32),  # one query head per kv head
        (8, 2, 64, 20, torch.float32),  # a sliding window crossing blocks
        (4, 1, 256, 40, torch.float32),  # Gemma 3's shape
        pytest.param(32, 8, 128, None, torch.bfloat16, marks=gpu_only),  # Llama-3-8B's, bf16 cache
    ],
)
def test_kernel_matches_float64_reference(heads, kv_heads, head_dim, window, dtype):
    generator = torch.Generator().manual_seed(heads * 1000 + head_dim)
    block_size, num_blocks = 16, 64
    lengths = torch.tensor([1, 15, 16, 17, 70, 130, 200])  # block edges and several tiles

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE, dtype)

    key_cache, value_cache = randn(kv_heads, num_blocks, block_size, head_dim), randn(kv_heads, num_blocks, block_size, head_dim)
    tables = torch.stack([torch.randperm(num_blocks, generator=generator)[:13] for _ in lengths]).to(DEVICE)
    q = randn(len(lengths), heads, head_dim).float()
    out = torch.full_like(q, float("nan"))  # every element must be written
    paged_decode_attention(q, key_cache, value_cache, tables, lengths.to(DEVICE), head_dim**-0.5, window, out=out)
    expected = reference(q, key_cache, value_cache, tables, lengths, head_dim**-0.5, window)
    error = (out.cpu().double() - expected).norm() / expected.norm()
    # float32 (the kernel asks for IEEE products, not tf32) exact to rounding; bf16 operands ~1e-2.
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert error < tolerance


def test_graph_sizes_cover_every_batch():
    assert graph_sizes(1) == [1]
    assert graph_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from conduit.engine import resolve_model_path
    from conduit.engine.loader import load_model

    folder, source = tmp_path_factory.mktemp("gguf"), resolve_model_path("smollm2")
    llama = write_tiny_llama(folder / "tiny-llama.Q8_0.gguf", source)
    gemma = write_tiny_gemma(folder / "tiny-gemma.Q8_0.gguf", source)  # sliding window 16
    return {name: load_model(str(path), dtype="float32") for name, path in (("llama", llama), ("gemma", gemma))}


def _generate(core: EngineCore, prompts: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens per prompt, and the log-probabilities of all of them (a corrupted cache
    entry moves those long before it flips a token of a tiny random model)."""
    for i, prompt in enumerate(prompts):  # different lengths: batches shrink mid-run
        params = SamplingParams(temperature=0, max_tokens=4 + 5 * i % 11, ignore_eos=True, logprobs=0)
        core.add_request(str(i), prompt, params)
    tokens = {str(i): [] for i in range(len(prompts))}
    logprobs = {str(i): [] for i in range(len(prompts))}
    while core.has_unfinished():
        for out in core.step():
            tokens[out.request_id] += out.token_ids
            logprobs[out.request_id] += [lp.logprob for lp in out.logprobs]
    assert core.block_manager.num_free == core.block_manager.num_blocks
    ids = [str(i) for i in range(len(prompts))]
    return [tokens[i] for i in ids], torch.tensor([lp for i in ids for lp in logprobs[i]])


@interpreted
@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_engine_on_the_kernel_and_graph_buffers_matches_the_cpu_path(tiny_models, model):
    """Mixed steps take the kernel eagerly; decode-only steps of up to 6 sequences go through
    the graphs' padded buffers (eagerly on the CPU), whose padding writes only the scratch block."""
    loaded = tiny_models[model]
    rng = random.Random(3)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 60))] for _ in range(9)]
    config = EngineConfig(num_blocks=128, block_size=8, max_num_batched_tokens=48, max_num_seqs=6)
    expected, expected_logprobs = _generate(EngineCore(loaded, config), prompts)

    core = EngineCore(loaded, config)
    core.runner = runner = ModelRunner(loaded.model, 128, 8, loaded.max_model_len, triton_decode=True,
                                       graph_batch=6)
    padded_batches = []
    run = runner.graphs.run
    runner.graphs.run = lambda ids, *rest: padded_batches.append(len(ids)) or run(ids, *rest)
    tokens, logprobs = _generate(core, prompts)
    assert tokens == expected
    assert torch.allclose(logprobs, expected_logprobs, atol=1e-5)
    assert {3, 5} & set(padded_batches), padded_batches  # batches the buffers padded (to 4, 6)


def test_fused_kernels_match_torch():
    from conduit.engine import triton_fused as fused
    from conduit.engine.model import rope, rope_tables

    generator = torch.Generator().manual_seed(11)
    tokens, hidden_size, heads, kv_heads, head_dim, slots = 7, 96, 6, 2, 32, 40

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(DEVICE)

    hidden, delta, weight = randn(tokens, hidden_size), randn(tokens, hidden_size), randn(hidden_size)
    expected_hidden = hidden + delta
    normed = fused.add_rms_norm(hidden, weight, 1e-5, torch.float32, delta)
    assert torch.allclose(hidden, expected_hidden)  # the residual, updated in place
    assert torch.allclose(normed, torch.nn.functional.rms_norm(expected_hidden, (hidden_size,), weight, 1e-5),
                          atol=1e-5)

    cos, sin = (t.to(DEVICE) for t in rope_tables(head_dim, 10000.0, 64))
    qkv, positions = randn(tokens, (heads + 2 * kv_heads) * head_dim), torch.tensor([0, 5, 9, 17, 33, 34, 63]).to(DEVICE)
    where = torch.randperm(slots, generator=generator)[:tokens].to(DEVICE)
    key_slots, value_slots = torch.zeros(kv_heads, slots, head_dim, device=DEVICE), torch.zeros(kv_heads, slots, head_dim, device=DEVICE)
    q = fused.rope_write(qkv, cos, sin, positions, where, key_slots, value_slots, heads, kv_heads, head_dim)
    qk = rope(qkv[:, : (heads + kv_heads) * head_dim].view(tokens, heads + kv_heads, head_dim), cos[positions], sin[positions])
    assert torch.allclose(q, qk[:, :heads], atol=1e-5)
    assert torch.allclose(key_slots[:, where].transpose(0, 1), qk[:, heads:], atol=1e-5)
    assert torch.allclose(value_slots[:, where].transpose(0, 1), qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim))

    gate_up = randn(tokens, 2 * 1500)  # more than one 1,024-wide block per row
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.allclose(fused.silu_mul(gate_up), torch.nn.functional.silu(gate) * up, atol=1e-5)


@interpreted
def test_engine_with_fused_kernels_matches_the_torch_forward(tiny_models):
    loaded = tiny_models["llama"]
    rng = random.Random(4)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 60))] for _ in range(7)]
    config = EngineConfig(num_blocks=128, block_size=8, max_num_batched_tokens=48, max_num_seqs=5)
    expected, expected_logprobs = _generate(EngineCore(loaded, config), prompts)
    core = EngineCore(loaded, config)
    core.runner = ModelRunner(loaded.model, 128, 8, loaded.max_model_len, triton_decode=True, graph_batch=5,
                              fused=True)
    tokens, logprobs = _generate(core, prompts)
    assert tokens == expected
    assert torch.allclose(logprobs, expected_logprobs, atol=1e-4)


@gpu_only
def test_cuda_engine_graphs_match_eager_and_single_requests():
    from conduit.engine.loader import load_model

    shape = '{"hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 8, "num_kv_heads": 2}'
    assert load_model(shape, load_format="dummy", max_model_len=64, device="cuda").dtype == "bfloat16"
    # float32, so that batch size and graphs change no rounding that could flip a near-tied token
    # of random weights; bfloat16's own check is the fused-forward test below.
    loaded = load_model(shape, load_format="dummy", max_model_len=512, device="cuda", dtype="float32")
    assert loaded.quantization == "none"
    rng = random.Random(5)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 200))] for _ in range(12)]
    graphs, _ = _generate(EngineCore(loaded, EngineConfig(max_num_seqs=16)), prompts)
    eager, _ = _generate(EngineCore(loaded, EngineConfig(max_num_seqs=16, cuda_graphs=False)), prompts)
    single = [_generate(EngineCore(loaded, EngineConfig(max_num_seqs=16)), [p])[0][0] for p in prompts[:3]]
    assert graphs == eager
    assert graphs[:3] == single


@gpu_only
def test_cuda_fused_forward_matches_the_torch_forward():
    """bfloat16, so a rounding apart: compared on the logits of one 40-token prefill."""
    from conduit.engine.loader import load_model

    shape = '{"hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 8, "num_kv_heads": 2}'
    model = load_model(shape, load_format="dummy", max_model_len=512, device="cuda").model
    runner = ModelRunner(model, 64, 16, 512)
    ids = torch.randint(100, 40000, (40,), generator=torch.Generator().manual_seed(2)).cuda()
    rows = torch.arange(40, device="cuda")

    def logits(fused: bool) -> torch.Tensor:
        runner.kv.prepare(rows, None, None, [(0, 40, [0, 1, 2], 40)])
        return model.forward(ids, rows, runner.kv, logits_indices=rows, fused=fused)

    fused, plain = logits(True), logits(False)
    assert (fused - plain).norm() / plain.norm() < 2e-2
