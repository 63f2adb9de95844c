"""Attention over cached keys/values: the one seam the paged cache will replace.

The model calls only `attend(layer, q, k, v)`; the caller calls `reserve(n)` before each forward
to say where the step's tokens go. A paged cache with batching keeps that interface and swaps
the storage (block tables instead of one contiguous row per sequence).

Sliding-window layers (Gemma 3's local layers; `windows[layer]` set) see only the last `window`
positions: a query at position p attends to p - window + 1 .. p. They read just those positions
(whole blocks, masked at both ends); their cache slots outside the window are kept, not freed,
since the same blocks hold the whole-context layers' keys.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        windows: Sequence[int | None] = (),
        device: torch.device | str = "cpu",
    ):
        self.data = torch.empty(num_layers, 2, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.windows = list(windows) or [None] * num_layers
        self.keys = [self.data[i, 0] for i in range(num_layers)]
        self.values = [self.data[i, 1] for i in range(num_layers)]
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.max_len = max_len
        self.length = 0  # tokens stored, including the step in flight
        self._start = 0
        self._masks: dict[int | None, tuple[int, torch.Tensor | None]] = {}

    def reserve(self, num_tokens: int) -> None:
        """Claim slots for the next forward's tokens (positions length .. length+num_tokens-1)."""
        start, end = self.length, self.length + num_tokens
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} positions")
        self._start, self.length = start, end
        # Per window: the first position read, and the mask (None: plain causal from 0). Several
        # new tokens after cached ones cannot use is_causal (it aligns the diagonal at 0).
        self._masks = {w: _window_mask(start, end, w, self.data.device) for w in set(self.windows)}

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] for the reserved slots -> [T, heads * d]."""
        start, end, num_tokens = self._start, self.length, q.shape[0]
        keys, values = self.keys[layer], self.values[layer]
        keys[:, start:end] = k.transpose(0, 1)
        values[:, start:end] = v.transpose(0, 1)
        first, mask = self._masks[self.windows[layer]]
        keys, values = keys[:, first:end], values[:, first:end]
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
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=True,
            ).transpose(0, 1)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)


def _window_mask(
    start: int, end: int, window: int | None, device: torch.device | None = None
) -> tuple[int, torch.Tensor | None]:
    """Queries at positions start..end-1 over keys first..end-1: (first, boolean mask or None
    where plain causal attention from `first` = 0 is right)."""
    first = 0 if window is None else max(0, start - window + 1)
    if start == 0 and (window is None or end <= window):
        return first, None
    rows = torch.arange(start, end, device=device).unsqueeze(1)
    cols = torch.arange(first, end, device=device).unsqueeze(0)
    mask = cols <= rows
    if window is not None:
        mask &= cols > rows - window
    return first, mask


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    # Two bmm calls beat the SDPA kernel for a handful of query rows on CPU (measured, float32).
    scores = torch.bmm(q * q.shape[-1] ** -0.5, keys.transpose(1, 2))
    return torch.bmm(scores.softmax(-1), values)


class PagedKVCache:
    """Keys/values of many sequences in fixed-size blocks: [layers, 2, kv_heads, blocks,
    block_size, head_dim] (zeroed: padded reads multiply garbage by 0, which must not be NaN).

    Before each forward the runner calls `prepare` with the batch's layout: decode tokens first
    (one query each), then prefill chunks (several queries each). Each prefill chunk runs its
    own causal attention over its gathered context. Decodes run either as one padded batch --
    each sequence's blocks gathered whole-block at a time, masked past its length (the CPU
    path) -- or, with `triton_decode` (the default on CUDA), through a kernel that reads the
    blocks in place and needs no data-dependent shapes, so a CUDA graph can replay it.
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
        windows: Sequence[int | None] = (),
        device: torch.device | str = "cpu",
        triton_decode: bool | None = None,
    ):
        self.windows = list(windows) or [None] * num_layers
        self.device = torch.device(device)
        self.triton_decode = self.device.type == "cuda" if triton_decode is None else triton_decode
        self._decode_kernel = None
        if self.triton_decode:  # imported here: the CPU path needs no triton package
            from conduit.engine.triton_attention import paged_decode_attention

            self._decode_kernel = paged_decode_attention
        shape = (num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=self.device)
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
        self._decode_batch = (decode_tables, decode_lengths)
        gather_decodes = self._num_decodes and not self.triton_decode
        # What each kind of layer reads: per window (None = whole context), the decodes' rows,
        # mask bias and width, and each prefill chunk's (start, count, rows, first, mask).
        self._views = {
            window: (
                self._decode_view(decode_tables, decode_lengths, window)
                if gather_decodes
                else None,
                [self._prefill_view(*chunk, window) for chunk in prefills],
            )
            for window in set(self.windows)
        }

    def _decode_view(self, tables: torch.Tensor, lengths: torch.Tensor, window: int | None):
        bs = self.block_size
        first_block = torch.zeros_like(lengths)
        if window is not None:  # only the blocks holding the last `window` positions
            first_block = (lengths - window).clamp(min=0) // bs
        count = int(((lengths + bs - 1) // bs - first_block).max())
        index = first_block.unsqueeze(1) + torch.arange(count, device=self.device)  # [B, count]
        blocks = tables.gather(1, index.clamp(max=tables.shape[1] - 1))
        positions = (index.unsqueeze(-1) * bs + torch.arange(bs, device=self.device)).view(len(lengths), -1)
        masked = positions >= lengths.unsqueeze(1)  # past the end (and clamped padding)
        if window is not None:
            masked |= positions < (lengths - window).unsqueeze(1)
        bias = torch.zeros(masked.shape, device=self.device).masked_fill_(masked, float("-inf"))
        width = count * bs
        return self._rows(blocks.reshape(-1)), bias.view(1, len(lengths), 1, width), width

    def _prefill_view(self, start: int, count: int, table: list[int], length: int, window):
        """A chunk of `count` queries ending at position `length` - 1."""
        first, mask = _window_mask(length - count, length, window, self.device)
        first_block = first // self.block_size
        blocks = torch.tensor(table[first_block : -(-length // self.block_size)], device=self.device)
        blocks = self._rows(blocks)
        return start, count, blocks, first - first_block * self.block_size, length - first, mask

    def _rows(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block ids -> rows of the [kv_heads * blocks, block_size * head_dim] view, head-major:
        one index_select of whole 4 KiB rows is ~3x faster than indexing the blocks axis."""
        heads = torch.arange(self.num_kv_heads, device=self.device).unsqueeze(1) * self.num_blocks
        return (heads + blocks.unsqueeze(0)).reshape(-1)

    def _gather(self, layer: int, kind: int, rows: torch.Tensor) -> torch.Tensor:
        table = self.data[layer, kind].view(-1, self.block_size * self.head_dim)
        return table.index_select(0, rows).view(self.num_kv_heads, -1, self.head_dim)

    @property
    def slot_mapping(self) -> torch.Tensor:
        """Where this step's tokens go, as prepared: for kernels that write the cache themselves."""
        return self._slot_mapping

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] in `prepare`'s order -> [T, heads * d]."""
        key_slots, value_slots = self.slots[layer, 0], self.slots[layer, 1]
        key_slots.index_copy_(1, self._slot_mapping, k.transpose(0, 1).to(key_slots.dtype))
        value_slots.index_copy_(1, self._slot_mapping, v.transpose(0, 1).to(value_slots.dtype))
        return self.attend_written(layer, q)

    def attend_written(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """As `attend`, once this step's keys and values are in their slots -> [T, heads * d]."""
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        out = torch.empty(q.shape[0], h * d, device=q.device, dtype=q.dtype)
        b = self._num_decodes
        decode, prefills = self._views[self.windows[layer]]
        if b and self._decode_kernel is not None:
            tables, lengths = self._decode_batch
            self._decode_kernel(q[:b], self.data[layer, 0], self.data[layer, 1], tables, lengths,
                                d**-0.5, self.windows[layer], out=out[:b].view(b, h, d))
        elif b:
            rows, bias, width = decode
            # Query heads sharing a kv head are that head's query rows: [kvh, B, group, d].
            qd = q[:b].view(b, kvh, h // kvh, d).transpose(0, 1) * d**-0.5
            ctx_k = self._gather(layer, 0, rows).view(kvh, b, width, d)
            ctx_v = self._gather(layer, 1, rows).view(kvh, b, width, d)
            scores = torch.matmul(qd, ctx_k.transpose(-1, -2)) + bias
            attended = torch.matmul(scores.softmax(-1), ctx_v)  # [kvh, B, group, d]
            out[:b] = attended.permute(1, 0, 2, 3).reshape(b, h * d)
        for start, count, blocks, skip, length, mask in prefills:
            ctx_k = self._gather(layer, 0, blocks)[:, skip : skip + length]
            ctx_v = self._gather(layer, 1, blocks)[:, skip : skip + length]
            attended = F.scaled_dot_product_attention(
                q[start : start + count].transpose(0, 1).to(ctx_k.dtype),
                ctx_k,
                ctx_v,
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=True,
            )
            out[start : start + count] = attended.transpose(0, 1).reshape(count, h * d)
        return out
