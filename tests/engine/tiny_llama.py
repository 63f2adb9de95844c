"""Write a small random llama GGUF: untied head, mixed quant types, MHA != GQA, other rope base.

The tokenizer fields come from the bundled SmolLM2 file, so both tokenizers work on it.
q/k rows are written in llama.cpp's permuted order, as its converter does.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from conduit.engine.gguf_loader import GGUFModelFile

Q = gguf.GGMLQuantizationType


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_tiny_llama(
    path: Path, source: Path, hidden=128, layers=2, heads=4, kv_heads=2, ffn=256
) -> Path:
    src = GGUFModelFile(source)
    tokens = src.get("tokenizer.ggml.tokens")
    rng = np.random.default_rng(0)

    def randn(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(src.get("tokenizer.ggml.token_type"))
    w.add_token_merges(src.get("tokenizer.ggml.merges"))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(src.get("tokenizer.chat_template"))

    def tensor(name: str, data: np.ndarray, qtype=Q.F32):
        if qtype == Q.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    head_dim = hidden // heads
    tensor("token_embd.weight", randn(len(tokens), hidden, scale=0.5), Q.Q8_0)
    tensor("output.weight", randn(len(tokens), hidden), Q.Q8_0)  # untied
    tensor("output_norm.weight", 1 + randn(hidden, scale=0.1))
    for i in range(layers):
        p = f"blk.{i}."
        qtype = Q.Q4_0 if i % 2 == 0 else Q.Q4_1
        tensor(p + "attn_norm.weight", 1 + randn(hidden, scale=0.1))
        tensor(p + "ffn_norm.weight", 1 + randn(hidden, scale=0.1))
        tensor(p + "attn_q.weight", _permute(randn(heads * head_dim, hidden), heads), qtype)
        tensor(p + "attn_k.weight", _permute(randn(kv_heads * head_dim, hidden), kv_heads), qtype)
        tensor(p + "attn_v.weight", randn(kv_heads * head_dim, hidden), qtype)
        tensor(
            p + "attn_output.weight", randn(hidden, heads * head_dim), Q.Q8_0 if i == 0 else qtype
        )
        tensor(p + "ffn_gate.weight", randn(ffn, hidden), qtype)
        tensor(p + "ffn_up.weight", randn(ffn, hidden), Q.F32 if i == 1 else qtype)
        tensor(p + "ffn_down.weight", randn(hidden, ffn), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
