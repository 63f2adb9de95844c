"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, prefix caching.

Only ids and counts live here; the tensors are in `PagedKVCache`. A full block is named by a
chained hash of (parent block's hash, its token ids), so equal prefixes map to equal blocks and
are shared by reference count. A freed block keeps its contents and hash until it is reused:
the free list is an LRU, so the least recently freed cached block is evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Tokens
from dataclasses import dataclass


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and registered in the prefix cache
    token_ids: tuple[int, ...] = ()  # what the hash stands for: checked on every hit


def chain_hash(parent: int | None, token_ids: Tokens[int]) -> int:
    # Python's int/tuple hashes are not salted per process, so hashes agree across restarts.
    return hash((parent, tuple(token_ids)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # hash -> block id
        # Prefix-cache counters, in tokens: prompt tokens looked up / found already computed.
        self.prefix_queries = 0
        self.prefix_hits = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1 - len(self.free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, token_ids: Tokens[int]) -> tuple[list[int], list[int]]:
        """Take references on the longest cached run of full blocks that prefixes `token_ids`,
        leaving at least the last token to compute (its logits are needed).
        Returns (block ids, their hashes)."""
        if not self.enable_prefix_caching:
            return [], []
        usable = (len(token_ids) - 1) // self.block_size
        table: list[int] = []
        hashes: list[int] = []
        parent = None
        for i in range(usable):
            chunk = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            h = chain_hash(parent, chunk)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != chunk:  # miss or collision
                break
            table.append(block_id)
            hashes.append(h)
            parent = h
        for block_id in table:
            self._ref(block_id)
        return table, hashes

    def record_prefix_lookup(self, num_tokens: int, num_cached: int) -> None:
        """Counted once per admitted sequence, not per retry while it waits."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_tokens
            self.prefix_hits += num_cached

    def can_grow(self, table: list[int], num_tokens: int) -> bool:
        """Whether a table can cover `num_tokens` tokens with the blocks free now."""
        return self.blocks_needed(num_tokens) - len(table) <= len(self.free)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append fresh blocks to `table` (in place) until it covers `num_tokens` tokens."""
        missing = self.blocks_needed(num_tokens) - len(table)
        if missing > len(self.free):
            raise RuntimeError("out of KV-cache blocks")  # callers check can_grow first
        for _ in range(missing):
            block_id, _ = self.free.popitem(last=False)  # least recently freed
            block = self.blocks[block_id]
            if block.hash is not None:  # evict it from the prefix cache
                if self.cached.get(block.hash) == block_id:
                    del self.cached[block.hash]
                block.hash, block.token_ids = None, ()
            block.ref_count = 1
            table.append(block_id)

    def register_full_blocks(
        self, table: list[int], hashes: list[int], token_ids: Tokens[int], num_computed: int
    ) -> None:
        """Name the blocks that `num_computed` computed tokens have filled (extends `hashes`)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(hashes), num_computed // bs):
            chunk = tuple(token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(hashes[-1] if hashes else None, chunk)
            hashes.append(h)
            block = self.blocks[table[i]]
            if block.hash is None and h not in self.cached:
                block.hash, block.token_ids = h, chunk
                self.cached[h] = block.id

    def release(self, table: list[int]) -> None:
        """Drop one reference per block; blocks nobody holds go to the free LRU, tail first,
        so a sequence's last blocks (the least shareable) are the first evicted."""
        for block_id in reversed(table):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} released more often than taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is None:
                    self.free[block_id] = None
                    self.free.move_to_end(block_id, last=False)  # reuse uncached blocks first
                else:
                    self.free[block_id] = None
        table.clear()

    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def check_invariants(self) -> None:
        """For tests: every block is either free (ref 0) or referenced, never both."""
        for block in self.blocks:
            assert block.ref_count >= 0
            assert (block.ref_count == 0) == (block.id in self.free), block
        for h, block_id in self.cached.items():
            assert self.blocks[block_id].hash == h
