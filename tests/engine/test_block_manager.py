"""Block manager and scheduler invariants, driven by hypothesis (no model needed)."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conduit.engine.block_manager import BlockManager, chain_hash
from conduit.engine.sampling import SamplingParams
from conduit.engine.scheduler import Scheduler, Sequence, Status


def _seq(rid: str, prompt: list[int], max_tokens: int, priority: int = 0) -> Sequence:
    return Sequence(rid, 0, prompt, SamplingParams(max_tokens=max_tokens), torch.Generator(),
                    priority)


def test_prefix_blocks_are_shared_and_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a_table, a_hashes = bm.match_prefix([1, 2, 3, 4, 5])
    assert a_table == []
    bm.grow(a_table, 5)
    bm.register_full_blocks(a_table, a_hashes, [1, 2, 3, 4, 5], 5)
    assert len(a_hashes) == 2
    b_table, _ = bm.match_prefix([1, 2, 3, 4, 9])
    assert b_table == a_table[:2]  # both full blocks shared
    assert bm.blocks[a_table[0]].ref_count == 2
    bm.record_prefix_lookup(5, 4)
    assert bm.prefix_hits == 4 and bm.prefix_queries == 5
    bm.release(b_table)
    bm.release(a_table)
    bm.check_invariants()
    assert bm.num_free == 4
    # Freed but still cached: a later identical prefix hits without recomputing.
    c_table, _ = bm.match_prefix([1, 2, 3, 4, 7])
    assert len(c_table) == 2
    bm.release(c_table)
    # Filling the pool evicts cached blocks, least recently freed first (uncached ones go first).
    d_table: list[int] = []
    bm.grow(d_table, 8)
    assert bm.cached == {}
    bm.release(d_table)
    bm.check_invariants()


def test_whole_prompt_hit_leaves_the_last_token_to_compute():
    bm = BlockManager(num_blocks=4, block_size=2)
    table, hashes = [], []
    bm.grow(table, 4)
    bm.register_full_blocks(table, hashes, [1, 2, 3, 4], 4)
    hit, _ = bm.match_prefix([1, 2, 3, 4])
    assert len(hit) == 1  # the second block holds the token whose logits we need


def test_hash_collision_is_a_miss():
    bm = BlockManager(num_blocks=4, block_size=2)
    table, hashes = [], []
    bm.grow(table, 2)
    bm.register_full_blocks(table, hashes, [1, 2], 2)
    # Forge a collision: the cached entry claims other tokens than the block holds.
    bm.blocks[table[0]].token_ids = (7, 7)
    assert chain_hash(None, [1, 2]) in bm.cached
    assert bm.match_prefix([1, 2, 3])[0] == []


@settings(max_examples=30, deadline=None)
@given(
    num_blocks=st.integers(4, 40),
    block_size=st.sampled_from([1, 2, 4, 16]),
    prefix_caching=st.booleans(),
    budget=st.integers(16, 80),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_requests_with_aborts_free_every_block(
    num_blocks, block_size, prefix_caching, budget, seed
):
    """1,000 random requests (shared prefixes, random lengths, random aborts) through the real
    scheduler with a fake model step; invariants hold after every step and at the end every
    block is free."""
    bm = BlockManager(num_blocks, block_size, prefix_caching)
    capacity = num_blocks * block_size
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=budget)
    rand = random.Random(seed)
    prefixes = [[rand.randrange(50) for _ in range(20)] for _ in range(3)]
    live: list[Sequence] = []
    for i in range(1000):
        length = rand.randrange(1, min(40, capacity))
        prompt = (rand.choice(prefixes) + [rand.randrange(50) for _ in range(40)])[:length]
        max_tokens = rand.randrange(1, max(2, min(10, capacity - length)))
        seq = _seq(str(i), prompt, max_tokens, priority=rand.randrange(3))
        scheduler.add(seq)
        live.append(seq)
        for _ in range(rand.randrange(0, 3)):
            _step(scheduler, live)
        if live and rand.random() < 0.2:  # abort something, wherever it is
            victim = live.pop(rand.randrange(len(live)))
            scheduler.finish(victim)
        bm.check_invariants()
        used = sum(1 for b in bm.blocks if b.ref_count > 0)
        assert used + bm.num_free == num_blocks
    for _ in range(10_000):
        if not scheduler.has_unfinished():
            break
        _step(scheduler, live)
    assert not scheduler.has_unfinished()
    bm.check_invariants()
    assert bm.num_free == num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)


def _step(scheduler: Scheduler, live: list[Sequence]) -> None:
    batch = scheduler.schedule()
    assert batch.num_tokens <= scheduler.max_num_batched_tokens
    assert len(scheduler.running) <= scheduler.max_num_seqs
    for seq, count in batch.items:
        assert seq.status is Status.RUNNING
        assert len(seq.block_table) * scheduler.blocks.block_size >= seq.num_computed + count
    scheduler.after_step(batch)
    for seq, _ in batch.items:
        if seq.num_computed == len(seq.token_ids):  # it samples a (fake) token
            seq.token_ids.append(7)
            if len(seq.output_ids) >= seq.params.max_tokens:
                scheduler.finish(seq)
                live.remove(seq)
