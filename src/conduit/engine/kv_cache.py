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
