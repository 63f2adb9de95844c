"""Llama in plain torch: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied embeddings.

Activations are flat [tokens, features] (no batch axis), the layout a packed multi-sequence
batch will use. Attention and its cache live behind `KVCache.attend`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conduit.engine.gguf_loader import Q4_TYPES, GGUFModelFile
from conduit.engine.kv_cache import KVCache, PagedKVCache


def int4_kernel_available() -> bool:
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch, "_convert_weight_to_int4pack_for_cpu"
    )


def _onednn_linear_available(dtype: torch.dtype) -> bool:
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class DenseLinear:
    """y = x @ W.T. With oneDNN the weight is reordered once into its blocked layout: a
    single-row matmul then streams the weight ~2x faster than F.linear does (measured)."""

    def __init__(self, weight: torch.Tensor):
        self.prepacked = weight.device.type == "cpu" and _onednn_linear_available(weight.dtype)
        weight = weight.contiguous()
        self.weight = (
            torch.ops.mkldnn._reorder_linear_weight(weight, 1) if self.prepacked else weight
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepacked:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        return F.linear(x, self.weight)


class Int4Linear:
    """GGUF 4-bit blocks kept at 4 bits and run by torch's CPU int4 kernel (bfloat16 only;
    the kernel wants out_features % 16 == 0).

    Decode reads every weight once per token, so bytes moved set the speed: 4 bits beat 16.
    The nibbles are the file's own, so the only rounding is the block scales to bfloat16.
    The kernel's cost grows with every input row, though, so from DENSE_FROM_ROWS rows on
    (prefill, large batches) an optional dense copy is ~3x faster (measured crossover ~10).
    """

    GROUP_SIZE = 32  # GGUF Q4 block size
    DENSE_FROM_ROWS = 12

    def __init__(
        self,
        nibbles: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor,
        dtype: torch.dtype,
        keep_dense: bool,
    ):
        self.packed = torch._convert_weight_to_int4pack_for_cpu(nibbles, 2)
        # The kernel computes (nibble - 8) * scale + zero; GGUF has nibble * scale + min.
        zero = minimum + 8 * scale
        self.scales_and_zeros = (
            torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(dtype)
        )
        self.dense = None
        if keep_dense:  # same arithmetic as gguf's dequantize, so the same values
            rows = nibbles.shape[0]
            blocks = nibbles.view(rows, -1, self.GROUP_SIZE) * scale.unsqueeze(
                -1
            ) + minimum.unsqueeze(-1)
            self.dense = DenseLinear(blocks.view(rows, -1).to(dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and x.shape[0] >= self.DENSE_FROM_ROWS:
            return self.dense(x)
        return torch._weight_int4pack_mm_for_cpu(
            x, self.packed, self.GROUP_SIZE, self.scales_and_zeros
        )


def load_linear(file: GGUFModelFile, names: tuple[str, ...], dtype: torch.dtype, quantization: str,
                device: torch.device | str = "cpu"):
    """One matmul for the named weights stacked by rows (fused q|k|v, gate|up: fewer kernel
    launches per token). Q4_0/Q4_1 weights stay 4-bit under "int4"/"int4+dense" (see
    Int4Linear, CPU only); anything else is dequantized to `dtype` on `device`."""
    rows = sum(file.tensors[n].data.shape[0] for n in names)
    int4 = quantization in ("int4", "int4+dense")
    if int4 and rows % 16 == 0 and all(file.quant_type(n) in Q4_TYPES for n in names):
        parts = [file.q4(n) for n in names]
        return Int4Linear(
            *(torch.cat(p) for p in zip(*parts)),
            dtype=dtype,
            keep_dense=quantization == "int4+dense",
        )
    weights = [file.dense(n).to(device, dtype) for n in names]
    return DenseLinear(weights[0] if len(weights) == 1 else torch.cat(weights))


def check_quantization(dtype: torch.dtype, quantization: str, device: torch.device | str = "cpu") -> None:
    if quantization in ("int4", "int4+dense") and (
        dtype != torch.bfloat16 or not int4_kernel_available() or torch.device(device).type != "cpu"
    ):
        raise ValueError("int4 weights need dtype bfloat16 on the CPU (torch's CPU int4 kernel)")


class Layer:
    def __init__(self, attn_norm, qkv, o_proj, ffn_norm, gate_up, down):
        self.attn_norm, self.qkv, self.o_proj = attn_norm, qkv, o_proj
        self.ffn_norm, self.gate_up, self.down = ffn_norm, gate_up, down


class LlamaModel:
    """`dtype` is what the matmuls read and write (weights and their inputs). Everything between
    matmuls -- residual stream, norms, RoPE, attention -- stays float32: on this CPU those small
    ops are no faster in bfloat16 (attention is ~3x slower), and it avoids casts inside every
    norm. On a GPU (`device`) the runner's KV cache holds `dtype` and attention reads it so."""

    def __init__(
        self,
        file: GGUFModelFile,
        dtype: torch.dtype,
        quantization: str = "none",
        max_positions: int | None = None,
        device: torch.device | str = "cpu",
    ):
        """quantization: "none" dequantizes every weight to `dtype`; "int4" keeps Q4_0/Q4_1
        weights packed; "int4+dense" also keeps a dense copy for many-row inputs (prefill)."""
        c = self.config = file.config
        self.dtype = dtype
        self.device = device = torch.device(device)
        # On CUDA a batched (paged-cache) forward can run its elementwise steps as fused Triton
        # kernels (triton_fused.py): the runner asks for it (EngineConfig.fused_kernels).
        self.fusable = device.type == "cuda"
        # What the engine's paged cache holds: float32 on the CPU (see above), `dtype` on a GPU.
        self.kv_dtype = dtype if device.type == "cuda" else torch.float32
        check_quantization(dtype, quantization, device)

        def linear(*names: str):
            return load_linear(file, names, dtype, quantization, device)

        def vector(name: str) -> torch.Tensor:
            return file.dense(name).to(device)

        self.layers = []
        for i in range(c.num_layers):
            p = f"blk.{i}."
            self.layers.append(
                Layer(
                    attn_norm=vector(p + "attn_norm.weight"),
                    qkv=linear(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"),
                    o_proj=linear(p + "attn_output.weight"),
                    ffn_norm=vector(p + "ffn_norm.weight"),
                    gate_up=linear(p + "ffn_gate.weight", p + "ffn_up.weight"),
                    down=linear(p + "ffn_down.weight"),
                )
            )
        self.norm = vector("output_norm.weight")
        self.embed_tokens = file.dense("token_embd.weight").to(device, dtype)
        self.lm_head = linear("token_embd.weight" if c.tie_word_embeddings else "output.weight")
        rope_factors = file.dense("rope_freqs.weight").cpu() if file.has("rope_freqs.weight") else None
        self.cos, self.sin = (t.to(device) for t in rope_tables(
            c.head_dim, c.rope_theta, max_positions or c.max_position_embeddings, rope_factors
        ))
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim

    def new_kv_cache(self, max_len: int) -> KVCache:
        c = self.config
        return KVCache(
            c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, max_len, torch.float32,
            device=self.device,
        )

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv: KVCache,
        logits_indices: torch.Tensor | None = None,
        fused: bool = False,
    ) -> torch.Tensor:
        """input_ids/positions [T] -> float32 logits [vocab] of the last token, or
        [len(logits_indices), vocab] of those rows (a packed batch samples several).
        `fused`: through the Triton kernels, when `kv` is a PagedKVCache.

        The caller has reserved T slots in `kv` (anything with `attend`: one sequence's
        KVCache, or a PagedKVCache prepared for a batch); the tokens' keys/values go there.
        """
        if fused and isinstance(kv, PagedKVCache):
            return self._forward_fused(input_ids, positions, kv, logits_indices)
        c, eps, dtype = self.config, self.config.rms_norm_eps, self.dtype
        num_tokens = input_ids.shape[0]
        qk_heads = c.num_heads + c.num_kv_heads
        cos, sin = self.cos[positions], self.sin[positions]  # [T, 1, head_dim]
        hidden = F.embedding(input_ids, self.embed_tokens).float()
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, layer.attn_norm.shape, layer.attn_norm, eps)
            qkv = layer.qkv(x.to(dtype)).float()
            # q and k are rotated together: they sit side by side in the fused projection.
            qk = rope(
                qkv[:, : self.q_size + self.kv_size].view(num_tokens, qk_heads, c.head_dim),
                cos,
                sin,
            )
            q, k = qk.split([c.num_heads, c.num_kv_heads], dim=1)
            v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, c.num_kv_heads, c.head_dim)
            hidden = hidden + layer.o_proj(kv.attend(i, q, k, v).to(dtype))
            x = F.rms_norm(hidden, layer.ffn_norm.shape, layer.ffn_norm, eps)
            gate, up = layer.gate_up(x.to(dtype)).chunk(2, dim=-1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        # Only the positions sampled from need the (large) vocabulary projection.
        if logits_indices is not None and logits_indices.numel() == 0:
            return torch.empty(0, c.vocab_size, device=hidden.device)
        rows = hidden[-1:] if logits_indices is None else hidden[logits_indices]
        logits = self.lm_head(F.rms_norm(rows, self.norm.shape, self.norm, eps).to(dtype)).float()
        return logits[0] if logits_indices is None else logits

    def _forward_fused(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: PagedKVCache,
                       logits_indices: torch.Tensor | None) -> torch.Tensor:
        """`forward` in nine kernels per layer: each residual add is fused into the next norm, RoPE
        into the cache write, SiLU into the product with up. Same arithmetic, float32 residual."""
        from conduit.engine import triton_fused as fused

        c, eps, dtype = self.config, self.config.rms_norm_eps, self.dtype
        hidden = F.embedding(input_ids, self.embed_tokens).float()
        delta = None  # the last sublayer's output, added to `hidden` by the next norm
        for i, layer in enumerate(self.layers):
            x = fused.add_rms_norm(hidden, layer.attn_norm, eps, dtype, delta)
            q = fused.rope_write(layer.qkv(x), self.cos, self.sin, positions, kv.slot_mapping,
                                 kv.slots[i, 0], kv.slots[i, 1], c.num_heads, c.num_kv_heads, c.head_dim)
            x = fused.add_rms_norm(hidden, layer.ffn_norm, eps, dtype, layer.o_proj(kv.attend_written(i, q)))
            delta = layer.down(fused.silu_mul(layer.gate_up(x)))
        normed = fused.add_rms_norm(hidden, self.norm, eps, dtype, delta)
        rows = normed[-1:] if logits_indices is None else normed[logits_indices]
        logits = self.lm_head(rows).float()
        return logits[0] if logits_indices is None else logits


def rope_tables(
    head_dim: int, theta: float, max_positions: int, factors: torch.Tensor | float | None = None
):
    """cos and sign-folded sin for every position, shaped [max_positions, 1, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if factors is not None:  # llama3 scaling: per-frequency divisors; linear: one divisor
        inv_freq = inv_freq / factors
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    # rotate_half(x) * sin == roll(x, half) * [-sin, sin]: one roll instead of split/neg/cat.
    return torch.cat([cos, cos], -1).unsqueeze(1), torch.cat([-sin, sin], -1).unsqueeze(1)


def rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
