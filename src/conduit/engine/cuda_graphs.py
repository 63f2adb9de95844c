"""Decode steps replayed from CUDA graphs, one captured per batch size.

A decode step of a large model on a GPU is hundreds of small kernel launches per token; from
Python each costs microseconds, which at batch 1 is as long as the arithmetic. A graph replays
them all with one launch. The graph reads fixed buffers, so every step copies its batch into
them: token ids, positions, KV slots, block tables and context lengths, padded up to the next
captured size. Padding rows are harmless by construction: they write their key/value into a
scratch block that no sequence owns and attend over that one position.

Mixed steps (prefill chunks with decodes) run eagerly: their shapes change every step.
`capture=False` runs the same buffers eagerly, so the padding logic is testable without a GPU.
"""

from __future__ import annotations

import torch

from conduit.engine.kv_cache import PagedKVCache


def graph_sizes(max_batch: int) -> list[int]:
    """Batch sizes to capture: small powers of two, then every 8 up to max_batch (vLLM's)."""
    sizes = [n for n in (1, 2, 4) if n < max_batch] + list(range(8, max_batch + 8, 8))
    return [n for n in sizes if n < max_batch] + [max_batch]


class DecodeGraphs:
    def __init__(self, model, kv: PagedKVCache, max_batch: int, max_blocks: int, scratch_block: int,
                 capture: bool = True, fused: bool = False):
        self.model, self.kv, self.fused = model, kv, fused
        self.sizes = graph_sizes(max_batch)
        self.max_batch = max_batch
        device = kv.device
        self.scratch_slot = scratch_block * kv.block_size
        self.scratch_block = scratch_block
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slots = torch.full((max_batch,), self.scratch_slot, dtype=torch.long, device=device)
        self.tables = torch.full((max_batch, max_blocks), scratch_block, dtype=torch.int32, device=device)
        self.lengths = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.rows = torch.arange(max_batch, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        if capture:
            self._capture()

    def _forward(self, n: int) -> torch.Tensor:
        self.kv.prepare(self.slots[:n], self.tables[:n], self.lengths[:n], [])
        return self.model.forward(self.input_ids[:n], self.positions[:n], self.kv,
                                  logits_indices=self.rows[:n], fused=self.fused)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for n in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory
            self._forward(n)  # compiles the kernels and warms the allocator outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[n] = self._forward(n)
            pool = graph.pool()
            self.graphs[n] = graph
        torch.cuda.synchronize()

    def run(self, input_ids: list[int], positions: list[int], slots: list[int],
            tables: list[list[int]], lengths: list[int]) -> torch.Tensor:
        """Logits [len(input_ids), vocab] of one decode token per sequence. The tensor is the
        graph's output buffer: read it before the next step."""
        b = len(input_ids)
        n = next(size for size in self.sizes if size >= b)
        width = max(map(len, tables))
        device = self.input_ids.device
        staged = torch.tensor([input_ids, positions, slots, lengths], dtype=torch.long)
        table_rows = torch.tensor([t + [self.scratch_block] * (width - len(t)) for t in tables],
                                  dtype=torch.int32)
        # Rows past the batch may hold an earlier step's slots: reset them to the scratch block.
        self.input_ids[b:n] = 0
        self.positions[b:n] = 0
        self.slots[b:n] = self.scratch_slot
        self.lengths[b:n] = 1
        self.tables[b:n, 0] = self.scratch_block
        staged = staged.to(device, non_blocking=True)
        self.input_ids[:b].copy_(staged[0])
        self.positions[:b].copy_(staged[1])
        self.slots[:b].copy_(staged[2])
        self.lengths[:b].copy_(staged[3])
        self.tables[:b, :width].copy_(table_rows.to(device, non_blocking=True))
        if n in self.graphs:
            self.graphs[n].replay()
            return self.logits[n][:b]
        return self._forward(n)[:b]

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.max_batch
