"""Decode attention straight from the paged KV cache, as one Triton kernel (the CUDA path).

The CPU path gathers each sequence's blocks into a padded batch and runs two matmuls; on a GPU
that gather is a full copy of the context per layer and step, and its shapes depend on the
data, so it cannot sit in a CUDA graph. This kernel reads the blocks in place through the block
table instead: one program per (sequence, kv head) walks the sequence's positions a tile at a
time with an online softmax (flash-decoding without the split), and the query heads that share
the kv head are the rows of its matmuls, so grouped-query attention reads each key once.

Everything it needs is in tensors (block tables, context lengths), so a captured graph replays
it for any batch of the captured size. Sliding-window layers skip the tiles before the window.

Under TRITON_INTERPRET=1 the same kernel runs on CPU tensors (slowly): that is how CI checks it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    out_ptr, q_ptr, k_ptr, v_ptr, tables_ptr, lengths_ptr,
    scale, window,
    stride_q_seq, stride_q_head, stride_o_seq, stride_o_head,
    stride_k_head, stride_k_block, stride_k_slot,
    stride_v_head, stride_v_block, stride_v_slot,
    stride_table,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    length = tl.load(lengths_ptr + seq)
    # The first position a sliding-window layer sees (0 without a window), and its block's start.
    lowest = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    first = (lowest // BLOCK_SIZE) * BLOCK_SIZE

    rows = tl.arange(0, GROUP_PAD)  # query heads of this kv head (padded rows compute and drop)
    dims = tl.arange(0, DIM_PAD)
    row_ok = rows < GROUP
    dim_ok = dims < HEAD_DIM
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    offsets = tl.arange(0, TILE)
    for start in range(first, length, TILE):
        positions = start + offsets
        valid = (positions < length) & (positions >= lowest)
        blocks = tl.load(tables_ptr + seq * stride_table + positions // BLOCK_SIZE,
                         mask=positions < length, other=0).to(tl.int64)
        slots = positions % BLOCK_SIZE
        load_ok = valid[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + kv_head * stride_k_head + blocks[:, None] * stride_k_block
                    + slots[:, None] * stride_k_slot + dims[None, :], mask=load_ok, other=0.0)
        v = tl.load(v_ptr + kv_head * stride_v_head + blocks[:, None] * stride_v_block
                    + slots[:, None] * stride_v_slot + dims[None, :], mask=load_ok, other=0.0)
        scores = tl.dot(q.to(k.dtype), tl.trans(k), input_precision=PRECISION) * scale  # [GROUP_PAD, TILE]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, 1))
        weights = tl.exp(scores - new_best[:, None])
        rescale = tl.exp(best - new_best)
        total = total * rescale + tl.sum(weights, 1)
        acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=PRECISION)
        best = new_best

    out = acc / total[:, None]
    tl.store(out_ptr + seq * stride_o_seq + heads[:, None] * stride_o_head + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def paged_decode_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    tables: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per sequence over its cached context.

    q [B, heads, d]; key_cache/value_cache [kv_heads, blocks, block_size, d] (one layer's, last
    dim contiguous); tables [B, max_blocks] block ids; lengths [B] context lengths, the query's
    own position included (its key/value already written). Returns [B, heads, d] in q's dtype
    (or writes `out`)."""
    batch, heads, head_dim = q.shape
    kv_heads, _, block_size, _ = key_cache.shape
    group = heads // kv_heads
    if heads % kv_heads or key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("heads must be a multiple of kv_heads, with the head dim contiguous")
    out = torch.empty_like(q) if out is None else out
    if batch == 0:
        return out
    tile = max(64, block_size)
    if tile % block_size:
        raise ValueError(f"block_size {block_size} must divide {tile}")
    _paged_decode_kernel[(batch, kv_heads)](
        out, q, key_cache, value_cache, tables, lengths,
        scale, window or 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        DIM_PAD=max(16, triton.next_power_of_2(head_dim)), BLOCK_SIZE=block_size, TILE=tile,
        # A float32 cache gets exact float32 products, not tf32: it is for checking, not speed.
        PRECISION="ieee" if key_cache.dtype == torch.float32 else "tf32",
    )
    return out
