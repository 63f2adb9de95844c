"""Gemma 3 (text) in plain torch, beside model.py's llama: the same flat [tokens, features]
activations, the same matmul classes and the same KV cache seam (`kv.attend`). What differs:

- the embedding is scaled by sqrt(hidden) and tied to the LM head (262k rows for the 270M);
- RMSNorm multiplies by (1 + w); llama.cpp's converter stored 1 + w, so the file's weight is
  used as it is (checked against transformers, which adds the 1 itself);
- q and k are RMS-normalized per head before RoPE;
- four norms per layer: before and after attention, before and after the MLP, whose outputs
  are normalized before they join the residual stream;
- a GeGLU MLP (tanh-approximated gelu);
- local layers attend over a sliding window (the KV cache masks and reads only the window)
  with RoPE base 10k; every 6th layer is global, with RoPE base 1M.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from conduit.engine.gguf_loader import GGUFModelFile, dequantize
from conduit.engine.kv_cache import KVCache
from conduit.engine.model import check_quantization, load_linear, rope, rope_tables


class QuantizedEmbedding:
    """The embedding table kept as the file's blocks (Q8_0: 178 MB for 262k x 640, against 335
    in bfloat16), each looked-up row dequantized when used: the LM head already holds the table
    densely (prepacked for its matmul, so not indexable)."""

    def __init__(self, file: GGUFModelFile, name: str):
        t = file.tensors[name]
        self.blocks, self.qtype = torch.from_numpy(np.array(t.data)), t.tensor_type

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] -> float32 [T, hidden]: the same values as the dense table."""
        return dequantize(self.blocks[input_ids].numpy(), self.qtype)


class GemmaLayer:
    def __init__(self, file: GGUFModelFile, i: int, linear):
        p = f"blk.{i}."
        norm = file.dense  # float32, as stored: 1 + w
        self.attn_norm = norm(p + "attn_norm.weight")
        self.post_attn_norm = norm(p + "post_attention_norm.weight")
        self.ffn_norm = norm(p + "ffn_norm.weight")
        self.post_ffn_norm = norm(p + "post_ffw_norm.weight")
        self.q_norm = norm(p + "attn_q_norm.weight")
        self.k_norm = norm(p + "attn_k_norm.weight")
        self.qkv = linear(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
        self.o_proj = linear(p + "attn_output.weight")
        self.gate_up = linear(p + "ffn_gate.weight", p + "ffn_up.weight")
        self.down = linear(p + "ffn_down.weight")


class GemmaModel:
    """Same contract as LlamaModel: `dtype` is what the matmuls read and write; the residual
    stream, norms, RoPE, attention and KV cache stay float32."""

    def __init__(
        self,
        file: GGUFModelFile,
        dtype: torch.dtype,
        quantization: str = "none",
        max_positions: int | None = None,
    ):
        c = self.config = file.config
        self.dtype = dtype
        self.device = torch.device("cpu")  # the CPU path only: no fused kernels, a float32 cache
        self.fusable = False
        self.kv_dtype = torch.float32
        check_quantization(dtype, quantization)

        def linear(*names: str):
            return load_linear(file, names, dtype, quantization)

        self.layers = [GemmaLayer(file, i, linear) for i in range(c.num_layers)]
        self.norm = file.dense("output_norm.weight")
        self.embed_tokens = QuantizedEmbedding(file, "token_embd.weight")
        self.lm_head = linear("token_embd.weight" if c.tie_word_embeddings else "output.weight")
        self.embed_scale = math.sqrt(c.hidden_size)
        positions = max_positions or c.max_position_embeddings
        self.rope = {  # local layers: the sliding-window base; global ones: scaled positions
            True: rope_tables(c.head_dim, c.rope_local_theta or c.rope_theta, positions),
            False: rope_tables(c.head_dim, c.rope_theta, positions, c.rope_scaling_factor),
        }
        # The cache scales scores by head_dim ** -0.5; fold any other scale into q.
        self.q_scale = (c.attention_scale or c.head_dim**-0.5) * c.head_dim**0.5
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim

    def new_kv_cache(self, max_len: int) -> KVCache:
        c = self.config
        return KVCache(
            c.num_layers,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            max_len,
            torch.float32,
            windows=[c.layer_window(i) for i in range(c.num_layers)],
        )

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv,
        logits_indices: torch.Tensor | None = None,
        fused: bool = False,
    ) -> torch.Tensor:
        """As LlamaModel.forward: logits [vocab] of the last token, or of `logits_indices` rows."""
        if fused:
            raise ValueError("Gemma has no fused forward (fusable is False)")
        c, eps, dtype = self.config, self.config.rms_norm_eps, self.dtype
        num_tokens, d = input_ids.shape[0], c.head_dim
        tables = {
            local: (cos[positions], sin[positions]) for local, (cos, sin) in self.rope.items()
        }
        hidden = self.embed_tokens(input_ids) * self.embed_scale
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, layer.attn_norm.shape, layer.attn_norm, eps)
            qkv = layer.qkv(x.to(dtype)).float()
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = F.rms_norm(q.view(num_tokens, c.num_heads, d), (d,), layer.q_norm, eps)
            k = F.rms_norm(k.view(num_tokens, c.num_kv_heads, d), (d,), layer.k_norm, eps)
            cos, sin = tables[c.layer_window(i) is not None]
            q = rope(q, cos, sin)
            if self.q_scale != 1.0:
                q = q * self.q_scale
            attended = kv.attend(i, q, rope(k, cos, sin), v.view(num_tokens, c.num_kv_heads, d))
            out = layer.o_proj(attended.to(dtype)).float()
            hidden = hidden + F.rms_norm(out, layer.post_attn_norm.shape, layer.post_attn_norm, eps)
            x = F.rms_norm(hidden, layer.ffn_norm.shape, layer.ffn_norm, eps)
            gate, up = layer.gate_up(x.to(dtype)).chunk(2, dim=-1)
            out = layer.down(F.gelu(gate, approximate="tanh") * up).float()
            hidden = hidden + F.rms_norm(out, layer.post_ffn_norm.shape, layer.post_ffn_norm, eps)
        if logits_indices is not None and logits_indices.numel() == 0:
            return torch.empty(0, c.vocab_size)
        rows = hidden[-1:] if logits_indices is None else hidden[logits_indices]
        logits = self.lm_head(F.rms_norm(rows, self.norm.shape, self.norm, eps).to(dtype)).float()
        if c.final_logit_softcapping:
            logits = torch.tanh(logits / c.final_logit_softcapping) * c.final_logit_softcapping
        return logits[0] if logits_indices is None else logits
