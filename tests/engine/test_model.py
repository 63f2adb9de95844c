"""Our llama against transformers' GGUF loader on the same file: logits and greedy tokens."""

from __future__ import annotations

import pytest
import torch

from conduit.engine import LLM, SamplingParams
from conduit.engine.gguf_loader import GGUFModelFile

PROMPTS = [
    "The capital of France is",
    "def quicksort(items):\n    if len(items) <= 1:\n        return items\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]
LONG_PROMPT = (
    "In the beginning the Universe was created. This has made a lot of people very angry and been "
    "widely regarded as a bad move. "
    * 12
    + "Meanwhile, in Tokyo (東京), 42 engineers shipped version 3.14.159 of the compiler 🚀. "
)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def reference_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([ids])).logits[0].float()


def prefill_then_decode(llm: LLM, ids: list[int], decode_steps: int) -> list[torch.Tensor]:
    """Logits after prefilling ids[:-decode_steps], then after each single-token step."""
    split = len(ids) - decode_steps
    kv = llm.model.new_kv_cache(len(ids))
    kv.reserve(split)
    out = [llm.model.forward(torch.tensor(ids[:split]), torch.arange(split), kv)]
    for pos in range(split, len(ids)):
        kv.reserve(1)
        out.append(llm.model.forward(torch.tensor([ids[pos]]), torch.tensor([pos]), kv))
    return out


@pytest.mark.parametrize("prompt", [*PROMPTS, LONG_PROMPT])
def test_float32_logits_match_transformers(llm_fp32, hf_model, prompt):
    ids = llm_fp32.tokenizer.encode(prompt)
    if prompt is LONG_PROMPT:
        assert len(ids) > 250
    steps = min(6, len(ids) // 2)
    ref = reference_logits(hf_model, ids)
    ours = prefill_then_decode(llm_fp32, ids, steps)
    positions = range(len(ids) - steps - 1, len(ids))
    for logits, pos in zip(ours, positions, strict=True):
        assert rel_err(logits, ref[pos]) < 1e-3, f"position {pos}"


def test_multi_token_step_after_cached_tokens(llm_fp32):
    # A chunked prefill exercises the explicit causal mask (new tokens after cached ones).
    ids = llm_fp32.tokenizer.encode(LONG_PROMPT)[:80]
    model = llm_fp32.model
    kv_once = model.new_kv_cache(80)
    kv_once.reserve(80)
    whole = model.forward(torch.tensor(ids), torch.arange(80), kv_once)
    kv = model.new_kv_cache(80)
    for start, end in [(0, 30), (30, 31), (31, 80)]:
        kv.reserve(end - start)
        chunked = model.forward(torch.tensor(ids[start:end]), torch.arange(start, end), kv)
    assert rel_err(chunked, whole) < 1e-5


def test_greedy_tokens_match_transformers_generate(llm_fp32, hf_model):
    for prompt in PROMPTS:
        ids = llm_fp32.tokenizer.encode(prompt)
        with torch.inference_mode():
            ref = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=32,
                do_sample=False,
            )[0, len(ids) :].tolist()
        ours = llm_fp32.generate(ids, SamplingParams(temperature=0, max_tokens=32)).token_ids
        assert ours == ref, prompt


def test_bfloat16_int4_logits_close(llm, hf_model):
    # bfloat16 rounds activations and block scales; it must still be the same model.
    assert llm.dtype == "bfloat16" and llm.quantization == "int4+dense"
    ids = llm.tokenizer.encode(PROMPTS[1])
    ref = reference_logits(hf_model, ids)
    ours = prefill_then_decode(llm, ids, 4)
    for logits, pos in zip(ours, range(len(ids) - 5, len(ids)), strict=True):
        assert rel_err(logits, ref[pos]) < 0.05
        assert int(logits.argmax()) == int(ref[pos].argmax())


def test_bfloat16_dense_logits_close(hf_model):
    llm = LLM(dtype="bfloat16", quantization="none", max_model_len=256)
    assert llm.quantization == "none"
    ids = llm.tokenizer.encode(PROMPTS[0])
    ref = reference_logits(hf_model, ids)
    ours = prefill_then_decode(llm, ids, 2)
    for logits, pos in zip(ours, range(len(ids) - 3, len(ids)), strict=True):
        assert rel_err(logits, ref[pos]) < 0.05


def test_config_from_gguf(gguf_path):
    c = GGUFModelFile(gguf_path).config
    assert (c.architecture, c.num_layers, c.hidden_size, c.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (9, 3, 64, 49152)
    assert c.rope_theta == 100000.0 and c.context_length == 8192 and c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, gguf_path):
    from tests.engine.tiny_llama import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_0.gguf", gguf_path)


def test_other_llama_gguf_matches_transformers(tiny_llama):
    """Untied output head, Q4_0/Q4_1/Q8_0/F32 mixed, 4 heads over 2 kv heads, head_dim 32."""
    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_llama.parent), gguf_file=tiny_llama.name, dtype=torch.float32
    ).eval()
    for kwargs, tolerance in [
        ({"dtype": "float32"}, 1e-3),
        ({"quantization": "int4"}, 0.05),
        ({}, 0.05),
    ]:
        llm = LLM(str(tiny_llama), **kwargs)
        assert llm.model_name == "tiny-llama" and not llm.config.tie_word_embeddings
        ids = llm.tokenizer.encode("A tiny random llama, written for this test: 🦙 42.")
        ref = reference_logits(hf_model, ids)
        ours = prefill_then_decode(llm, ids, 3)
        for logits, pos in zip(ours, range(len(ids) - 4, len(ids)), strict=True):
            assert rel_err(logits, ref[pos]) < tolerance
    assert llm.quantization == "int4+dense"
    assert type(llm.model.layers[0].qkv).__name__ == "Int4Linear"  # Q4_0
    assert type(llm.model.layers[0].o_proj).__name__ == "DenseLinear"  # Q8_0 stays dense
