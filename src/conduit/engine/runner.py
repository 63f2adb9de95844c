"""Model runner: turn a scheduled batch into one packed forward over the paged KV cache.

Tokens of all sequences are concatenated ([T], no batch axis, no padding in the matmuls);
the paged cache gets each token's slot and each sequence's block table. Only the last
token of a sequence whose tokens are now all computed is projected to logits.
"""

from __future__ import annotations

import torch

from conduit.engine.gemma import GemmaModel
from conduit.engine.kv_cache import PagedKVCache
from conduit.engine.model import LlamaModel
from conduit.engine.scheduler import ScheduledBatch, Sequence


class ModelRunner:
    def __init__(self, model: LlamaModel | GemmaModel, num_blocks: int, block_size: int):
        c = model.config
        self.model = model
        self.block_size = block_size
        self.kv = PagedKVCache(
            c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, num_blocks, block_size,
            windows=[c.layer_window(i) for i in range(c.num_layers)],
        )

    def execute(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        """Run the batch; return the sequences that sample now and their logits [n, vocab]."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lengths: list[int] = []
        prefills: list[tuple[int, int, list[int], int]] = []
        sample_rows: list[int] = []
        samplers: list[Sequence] = []
        for seq, count in batch.items:  # single-query items come first (the scheduler's order)
            start, end, table = seq.num_computed, seq.num_computed + count, seq.block_table
            row = len(input_ids)
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            if count == 1:
                decode_tables.append(table)
                decode_lengths.append(end)
            else:
                prefills.append((row, count, table, end))
            if end == len(seq.token_ids):
                sample_rows.append(len(input_ids) - 1)
                samplers.append(seq)
        tables = None
        if decode_tables:
            width = max(map(len, decode_tables))
            tables = torch.tensor([t + [0] * (width - len(t)) for t in decode_tables])
        self.kv.prepare(
            torch.tensor(slots), tables, torch.tensor(decode_lengths), prefills
        )
        logits = self.model.forward(
            torch.tensor(input_ids),
            torch.tensor(positions),
            self.kv,
            logits_indices=torch.tensor(sample_rows, dtype=torch.long),
        )
        return samplers, logits
