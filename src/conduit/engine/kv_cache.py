"""Attention over cached keys/values: the one seam the paged cache will replace.

The model calls only `attend(layer, q, k, v)`; the caller calls `reserve(n)` before each forward
to say where the step's tokens go. A paged cache with batching keeps that interface and swaps
the storage (block tables instead of one contiguous row per sequence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Preallocated keys/values for one sequence: [layers, 2, kv_heads, max_len, head_dim].

    kv_heads comes before positions so that a prefix `[:, :length]` is a plain strided view that
    attention reads without copying. Nothing grows per step: decode writes one slot per layer.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
    ):
        self.data = torch.empty(num_layers, 2, num_kv_heads, max_len, head_dim, dtype=dtype)
        self.keys = [self.data[i, 0] for i in range(num_layers)]
        self.values = [self.data[i, 1] for i in range(num_layers)]
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.max_len = max_len
        self.length = 0  # tokens stored, including the step in flight
        self._start = 0
        self._mask: torch.Tensor | None = None

    def reserve(self, num_tokens: int) -> None:
        """Claim slots for the next forward's tokens (positions length .. length+num_tokens-1)."""
        start, end = self.length, self.length + num_tokens
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} positions")
        self._start, self.length = start, end
        # Several new tokens after cached ones cannot use is_causal (it aligns the diagonal at 0).
        self._mask = None
        if num_tokens > 1 and start > 0:
            rows = torch.arange(start, end).unsqueeze(1)
            self._mask = torch.arange(end).unsqueeze(0) <= rows

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] for the reserved slots -> [T, heads * d]."""
        start, end, num_tokens = self._start, self.length, q.shape[0]
        keys, values = self.keys[layer], self.values[layer]
        keys[:, start:end] = k.transpose(0, 1)
        values[:, start:end] = v.transpose(0, 1)
        keys, values = keys[:, :end], values[:, :end]
        if num_tokens == 1:
            # Decode: the query heads sharing a kv head become that head's "query rows", so
            # grouped-query attention is one batched call with no mask and no repeated kv.
            group = self.num_heads // self.num_kv_heads
            out = _decode_attention(q.view(self.num_kv_heads, group, self.head_dim), keys, values)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1),
                keys,
                values,
                attn_mask=self._mask,
                is_causal=self._mask is None,
                enable_gqa=True,
            ).transpose(0, 1)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    # Two bmm calls beat the SDPA kernel for a handful of query rows on CPU (measured, float32).
    scores = torch.bmm(q * q.shape[-1] ** -0.5, keys.transpose(1, 2))
    return torch.bmm(scores.softmax(-1), values)


class PagedKVCache:
    """Keys/values of many sequences in fixed-size blocks: [layers, 2, kv_heads, blocks,
    block_size, head_dim] (zeroed: padded reads multiply garbage by 0, which must not be NaN).

    Before each forward the runner calls `prepare` with the batch's layout: decode tokens first
    (one query each), then prefill chunks (several queries each). Decodes run as one padded
    batch -- each sequence's blocks gathered whole-block at a time, masked past its length --
    and each prefill chunk runs its own causal attention over its gathered context.
    """

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim)
        self.data = torch.zeros(shape, dtype=dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.num_blocks, self.block_size = num_blocks, block_size
        self.slots = self.data.view(num_layers, 2, num_kv_heads, num_blocks * block_size, head_dim)

    @staticmethod
    def bytes_per_block(num_layers, num_kv_heads, head_dim, block_size, dtype=torch.float32):
        return 2 * num_layers * num_kv_heads * block_size * head_dim * dtype.itemsize

    def prepare(
        self,
        slot_mapping: torch.Tensor,
        decode_tables: torch.Tensor | None,
        decode_lengths: torch.Tensor | None,
        prefills: list[tuple[int, int, list[int], int]],
    ) -> None:
        """slot_mapping [T]: where each token's key/value goes. decode_tables [B, max_blocks]
        (padded with any valid id) and decode_lengths [B]: context of each decode, its token
        included. prefills: (first token row, number of rows, block table, context length)."""
        self._slot_mapping = slot_mapping
        self._num_decodes = 0 if decode_tables is None else decode_tables.shape[0]
        if self._num_decodes:
            self._decode_rows = self._rows(decode_tables.reshape(-1))
            width = decode_tables.shape[1] * self.block_size
            past_end = torch.arange(width).unsqueeze(0) >= decode_lengths.unsqueeze(1)
            bias = torch.zeros(past_end.shape).masked_fill_(past_end, float("-inf"))
            self._decode_bias = bias.view(1, self._num_decodes, 1, width)
            self._decode_width = width
        self._prefills = []
        for start, count, table, length in prefills:
            blocks = self._rows(torch.tensor(table[: -(-length // self.block_size)]))
            mask = None  # a chunk with no cached context before it is plain causal
            if length > count:
                rows = torch.arange(length - count, length).unsqueeze(1)
                mask = torch.arange(length).unsqueeze(0) <= rows
            self._prefills.append((start, count, blocks, length, mask))

    def _rows(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block ids -> rows of the [kv_heads * blocks, block_size * head_dim] view, head-major:
        one index_select of whole 4 KiB rows is ~3x faster than indexing the blocks axis."""
        heads = torch.arange(self.num_kv_heads).unsqueeze(1) * self.num_blocks
        return (heads + blocks.unsqueeze(0)).reshape(-1)

    def _gather(self, layer: int, kind: int, rows: torch.Tensor) -> torch.Tensor:
        table = self.data[layer, kind].view(-1, self.block_size * self.head_dim)
        return table.index_select(0, rows).view(self.num_kv_heads, -1, self.head_dim)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] in `prepare`'s order -> [T, heads * d]."""
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        key_slots, value_slots = self.slots[layer, 0], self.slots[layer, 1]
        key_slots.index_copy_(1, self._slot_mapping, k.transpose(0, 1))
        value_slots.index_copy_(1, self._slot_mapping, v.transpose(0, 1))
        out = torch.empty(q.shape[0], h * d)
        b = self._num_decodes
        if b:
            # Query heads sharing a kv head are that head's query rows: [kvh, B, group, d].
            qd = q[:b].view(b, kvh, h // kvh, d).transpose(0, 1) * d**-0.5
            ctx_k = self._gather(layer, 0, self._decode_rows).view(kvh, b, self._decode_width, d)
            ctx_v = self._gather(layer, 1, self._decode_rows).view(kvh, b, self._decode_width, d)
            scores = torch.matmul(qd, ctx_k.transpose(-1, -2)) + self._decode_bias
            attended = torch.matmul(scores.softmax(-1), ctx_v)  # [kvh, B, group, d]
            out[:b] = attended.permute(1, 0, 2, 3).reshape(b, h * d)
        for start, count, blocks, length, mask in self._prefills:
            ctx_k = self._gather(layer, 0, blocks)[:, :length]
            ctx_v = self._gather(layer, 1, blocks)[:, :length]
            attended = F.scaled_dot_product_attention(
                q[start : start + count].transpose(0, 1),
                ctx_k,
                ctx_v,
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=True,
            )
            out[start : start + count] = attended.transpose(0, 1).reshape(count, h * d)
        return out
