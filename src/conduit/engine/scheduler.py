"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Every step has a token budget (max_num_batched_tokens). Running sequences go first -- a decode
costs one token, an unfinished prefill takes what is left of the budget (chunked prefill) --
so a long prompt never stalls the streams already running. Waiting sequences then join in
priority order (lower value first, then arrival) while the budget, the running cap
(max_num_seqs) and the free blocks allow. When a running sequence needs a block and none is
free, the lowest-priority newest running sequence is preempted: its blocks are freed and it
waits again, to be recomputed from its tokens (prompt and output so far).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

import torch

from conduit.engine.block_manager import BlockManager
from conduit.engine.sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_arrivals = itertools.count()


@dataclass(eq=False)
class Sequence:
    request_id: str
    index: int  # choice index within its request (n > 1)
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    priority: int = 0
    arrival: int = field(default_factory=lambda: next(_arrivals))
    token_ids: list[int] = field(init=False)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    prefix_matched: bool = False
    num_preemptions: int = 0

    def __post_init__(self):
        self.token_ids = list(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids) :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def order(self) -> tuple[int, int]:
        return self.priority, self.arrival


@dataclass
class ScheduledBatch:
    """Sequences and how many of their tokens this step computes, decodes first."""

    items: list[tuple[Sequence, int]]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
    ):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunked_prefill = enable_chunked_prefill
        self.waiting: list[Sequence] = []  # kept sorted by Sequence.order
        self.running: list[Sequence] = []  # in admission order

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)
        self.waiting.sort(key=lambda s: s.order)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is and free its blocks (finish or abort)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.prefix_matched = False
        self.blocks.release(seq.block_table)
        seq.block_hashes.clear()

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        items: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        # Running sequences, oldest first: they keep their place, the newest give way.
        queue = sorted(self.running, key=lambda s: s.order)
        while queue and budget > 0:
            seq = queue.pop(0)
            count = min(seq.num_uncomputed, budget)
            while not self.blocks.can_grow(seq.block_table, seq.num_computed + count):
                victim = max(queue, key=lambda s: s.order) if queue else seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
                queue.remove(victim)
            if seq.status is not Status.RUNNING:
                continue
            self.blocks.grow(seq.block_table, seq.num_computed + count)
            items.append((seq, count))
            budget -= count
        # Then waiting sequences join, unless someone was just preempted for lack of blocks.
        while self.waiting and budget > 0 and not preempted:
            if len(self.running) >= self.max_num_seqs:
                break
            seq = self.waiting[0]
            if not seq.prefix_matched:
                seq.block_table, seq.block_hashes = self.blocks.match_prefix(seq.token_ids)
                seq.num_computed = len(seq.block_table) * self.blocks.block_size
                seq.prefix_matched = True
            count = min(seq.num_uncomputed, budget)
            fits = self.blocks.can_grow(seq.block_table, seq.num_computed + count)
            if not fits or (count < seq.num_uncomputed and not self.chunked_prefill):
                # It waits. Its matched blocks go back (they stay cached): a waiting sequence
                # pinning blocks could starve the running ones into endless preemption.
                self.blocks.release(seq.block_table)
                seq.block_hashes, seq.num_computed, seq.prefix_matched = [], 0, False
                break
            self.blocks.record_prefix_lookup(len(seq.token_ids), seq.num_computed)
            self.waiting.pop(0)
            self.blocks.grow(seq.block_table, seq.num_computed + count)
            seq.status = Status.RUNNING
            self.running.append(seq)
            items.append((seq, count))
            budget -= count
        items.sort(key=lambda item: item[1] > 1)  # single-query items (decodes) first
        return ScheduledBatch(items, preempted)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_hashes.clear()
        seq.num_computed = 0
        seq.prefix_matched = False
        seq.num_preemptions += 1
        self.add(seq)

    def after_step(self, batch: ScheduledBatch) -> None:
        """Advance the computed counts and name the blocks that became full."""
        for seq, count in batch.items:
            seq.num_computed += count
            self.blocks.register_full_blocks(
                seq.block_table, seq.block_hashes, seq.token_ids, seq.num_computed
            )
