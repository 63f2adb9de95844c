"""The elementwise steps of a llama layer fused into three Triton kernels (the CUDA path).

At batch 1 a decode step is four matrix-vector products per layer, each reading its weights
once, and around them ~25 small ops (norms in float32, casts, RoPE's mul/roll/addcmul, the two
cache writes, SiLU, mul, adds). Each small op is a kernel launch of a few microseconds even
inside a CUDA graph, ~2 ms per token for a 32-layer model: a third of the time the weights take
to stream. Fused, a layer is nine kernels:

    add_rms_norm  residual += delta (float32), then RMSNorm and the cast for the next matmul
    rope_write    RoPE on q and k from the fused projection, k and v written to their cache slots
    silu_mul      SiLU(gate) * up from the fused gate|up projection

Same arithmetic as the torch path (float32 inside, one rounding at the end), so outputs agree
to rounding; tests run these under TRITON_INTERPRET=1 on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(hidden_ptr, delta_ptr, weight_ptr, out_ptr, cols, eps,
                         stride_hidden, stride_delta, stride_out,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < cols
    x = tl.load(hidden_ptr + row * stride_hidden + offsets, mask=inside, other=0.0)
    if HAS_DELTA:
        x += tl.load(delta_ptr + row * stride_delta + offsets, mask=inside, other=0.0).to(tl.float32)
        tl.store(hidden_ptr + row * stride_hidden + offsets, x, mask=inside)
    scale = 1.0 / tl.sqrt(tl.sum(x * x, 0) / cols + eps)
    weight = tl.load(weight_ptr + offsets, mask=inside, other=0.0)
    tl.store(out_ptr + row * stride_out + offsets, (x * scale * weight).to(out_ptr.dtype.element_ty),
             mask=inside)


def add_rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype,
                 delta: torch.Tensor | None = None) -> torch.Tensor:
    """hidden [T, H] float32 (updated in place by `delta` when given) -> RMSNorm(hidden) * weight
    in out_dtype."""
    rows, cols = hidden.shape
    out = torch.empty(rows, cols, dtype=out_dtype, device=hidden.device)
    if rows:
        _add_rms_norm_kernel[(rows,)](
            hidden, hidden if delta is None else delta, weight, out, cols, eps,
            hidden.stride(0), 0 if delta is None else delta.stride(0), out.stride(0),
            HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(cols),
        )
    return out


@triton.jit
def _rope_write_kernel(qkv_ptr, cos_ptr, sin_ptr, positions_ptr, slots_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
                       stride_qkv, stride_q_token, stride_table,
                       stride_k_head, stride_k_slot, stride_v_head, stride_v_slot,
                       HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                       DIM_PAD: tl.constexpr):
    token = tl.program_id(0)
    head = tl.program_id(1)  # query heads, then key heads (whose programs also copy v)
    dims = tl.arange(0, DIM_PAD)
    inside = dims < HEAD_DIM
    position = tl.load(positions_ptr + token)
    cos = tl.load(cos_ptr + position * stride_table + dims, mask=inside, other=0.0)
    signed_sin = tl.load(sin_ptr + position * stride_table + dims, mask=inside, other=0.0)
    row = qkv_ptr + token * stride_qkv + head * HEAD_DIM
    x = tl.load(row + dims, mask=inside, other=0.0).to(tl.float32)
    rolled = tl.load(row + (dims + HEAD_DIM // 2) % HEAD_DIM, mask=inside, other=0.0).to(tl.float32)
    rotated = x * cos + rolled * signed_sin  # rotate_half folded into the sign of sin
    if head < HEADS:
        tl.store(q_ptr + token * stride_q_token + head * HEAD_DIM + dims,
                 rotated.to(q_ptr.dtype.element_ty), mask=inside)
    else:
        kv_head = head - HEADS
        slot = tl.load(slots_ptr + token).to(tl.int64)
        tl.store(k_cache_ptr + kv_head * stride_k_head + slot * stride_k_slot + dims,
                 rotated.to(k_cache_ptr.dtype.element_ty), mask=inside)
        v = tl.load(qkv_ptr + token * stride_qkv + (HEADS + KV_HEADS + kv_head) * HEAD_DIM + dims,
                    mask=inside, other=0.0)
        tl.store(v_cache_ptr + kv_head * stride_v_head + slot * stride_v_slot + dims,
                 v.to(v_cache_ptr.dtype.element_ty), mask=inside)


def rope_write(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, positions: torch.Tensor,
               slots: torch.Tensor, key_slots: torch.Tensor, value_slots: torch.Tensor,
               heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """qkv [T, (heads + 2 kv_heads) * d] -> rotated q [T, heads, d] in qkv's dtype; rotated k
    and v go to key_slots/value_slots [kv_heads, slots, d] at `slots`. cos/signed_sin are the
    model's [positions, 1, d] tables (see model.rope_tables)."""
    tokens = qkv.shape[0]
    q = torch.empty(tokens, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if tokens:
        _rope_write_kernel[(tokens, heads + kv_heads)](
            qkv, cos, signed_sin, positions, slots, q, key_slots, value_slots,
            qkv.stride(0), q.stride(0), cos.stride(0),
            key_slots.stride(0), key_slots.stride(1), value_slots.stride(0), value_slots.stride(1),
            HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, DIM_PAD=triton.next_power_of_2(head_dim),
        )
    return q


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, cols, stride_in, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < cols
    gate = tl.load(gate_up_ptr + row * stride_in + offsets, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + cols + offsets, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offsets, (gate * tl.sigmoid(gate) * up).to(out_ptr.dtype.element_ty),
             mask=inside)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2 I] (gate | up) -> SiLU(gate) * up, [T, I] in the input's dtype."""
    rows, cols = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(rows, cols, dtype=gate_up.dtype, device=gate_up.device)
    if rows:
        block = 1024
        _silu_mul_kernel[(rows, triton.cdiv(cols, block))](gate_up, out, cols, gate_up.stride(0), out.stride(0),
                                                           BLOCK=block)
    return out
