"""Write a small random gemma3 GGUF as llama.cpp's converter would (norms stored as 1 + w, q/k
not permuted), with a sliding window small enough that short prompts cross it, and build
transformers' Gemma3ForCausalLM from any gemma3 GGUF's dequantized weights as the reference.

The tokenizer fields come from the bundled SmolLM2 file (the model code does not care which
vocabulary it embeds), so the file stays small.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from conduit.engine.gguf_loader import GGUFModelFile

Q = gguf.GGMLQuantizationType


def write_tiny_gemma(
    path: Path,
    source: Path,
    hidden=64,
    layers=4,
    heads=2,
    kv_heads=1,
    head_dim=32,
    ffn=128,
    window=16,
    pattern=2,
) -> Path:
    src = GGUFModelFile(source)
    tokens = src.get("tokenizer.ggml.tokens")
    rng = np.random.default_rng(0)

    def randn(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny-random-gemma3")
    w.add_block_count(layers)
    w.add_context_length(1024)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(1_000_000.0)
    w.add_rope_freq_base_swa(20_000.0)  # not gemma's 10k: the key must be read
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(window)
    w.add_sliding_window_pattern(pattern)  # layers 1, 3 global
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(src.get("tokenizer.ggml.token_type"))
    w.add_token_merges(src.get("tokenizer.ggml.merges"))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def tensor(name: str, data: np.ndarray, qtype=Q.F32):
        if qtype == Q.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str, size: int):
        tensor(name, 1 + randn(size, scale=0.3))  # stored as 1 + w, w around 0

    tensor("token_embd.weight", randn(len(tokens), hidden, scale=0.5), Q.Q8_0)  # tied head
    norm("output_norm.weight", hidden)
    for i in range(layers):
        p = f"blk.{i}."
        qtype = Q.Q5_0 if i % 2 == 0 else Q.Q8_0
        for name in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            norm(p + name + ".weight", hidden)
        norm(p + "attn_q_norm.weight", head_dim)
        norm(p + "attn_k_norm.weight", head_dim)
        tensor(p + "attn_q.weight", randn(heads * head_dim, hidden), qtype)
        tensor(p + "attn_k.weight", randn(kv_heads * head_dim, hidden), qtype)
        tensor(p + "attn_v.weight", randn(kv_heads * head_dim, hidden), Q.Q8_0)
        tensor(p + "attn_output.weight", randn(hidden, heads * head_dim), qtype)
        tensor(p + "ffn_gate.weight", randn(ffn, hidden), qtype)
        tensor(p + "ffn_up.weight", randn(ffn, hidden), Q.F32 if i == 1 else qtype)
        tensor(p + "ffn_down.weight", randn(hidden, ffn), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def hf_gemma3(file: GGUFModelFile):
    """transformers' Gemma3ForCausalLM (text only, float32, eager attention) with the GGUF's
    dequantized weights. Its RMSNorm multiplies by 1 + w, so w = the stored weight - 1."""
    import transformers

    c = file.config
    config = transformers.Gemma3TextConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        rms_norm_eps=1e-6,
        max_position_embeddings=c.max_position_embeddings,
        sliding_window=next(w for w in c.layer_windows if w),
        layer_types=["sliding_attention" if w else "full_attention" for w in c.layer_windows],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_local_theta},
            "full_attention": {"rope_type": "default", "rope_theta": c.rope_theta},
        },
        query_pre_attn_scalar=round(c.attention_scale**-2),
        final_logit_softcapping=c.final_logit_softcapping,
        attn_logit_softcapping=None,
        tie_word_embeddings=True,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=0,
        attn_implementation="eager",
    )
    with torch.device("meta"):  # no random init of 268M parameters (~10 s): all are assigned
        model = transformers.Gemma3ForCausalLM(config)
    state = {
        "model.embed_tokens.weight": file.dense("token_embd.weight"),
        "model.norm.weight": file.dense("output_norm.weight") - 1,
    }
    for i in range(c.num_layers):
        for ours, theirs in _NAMES.items():
            weight = file.dense(f"blk.{i}.{ours}.weight")
            state[f"model.layers.{i}.{theirs}.weight"] = (
                weight - 1 if ours.endswith("norm") else weight
            )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    # The buffers are not in a state dict: make them again, off the meta device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config)
    model.model.embed_tokens.embed_scale = torch.tensor(c.hidden_size**0.5)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def reference_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()
