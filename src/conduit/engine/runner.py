"""Model runner: turn a scheduled batch into one packed forward over the paged KV cache.

Tokens of all sequences are concatenated ([T], no batch axis, no padding in the matmuls);
the paged cache gets each token's slot and each sequence's block table. Only the last
token of a sequence whose tokens are now all computed is projected to logits.

On a GPU the cache holds the model's dtype (bfloat16), decodes read it through the Triton
kernel, and decode-only steps replay CUDA graphs (see cuda_graphs.py).
"""

from __future__ import annotations

import torch

from conduit.engine.cuda_graphs import DecodeGraphs
from conduit.engine.gemma import GemmaModel
from conduit.engine.kv_cache import PagedKVCache
from conduit.engine.model import LlamaModel
from conduit.engine.scheduler import ScheduledBatch, Sequence


class ModelRunner:
    """triton_decode: None = the Triton kernel on CUDA, the gather path on the CPU (True on the
    CPU runs it under TRITON_INTERPRET=1, for tests). graph_batch: the largest decode batch
    replayed from a CUDA graph (0: none; on the CPU the same buffers run eagerly). fused: the
    model's forward through the fused Triton kernels (None: where the model can, on CUDA)."""

    def __init__(self, model: LlamaModel | GemmaModel, num_blocks: int, block_size: int,
                 max_model_len: int | None = None, triton_decode: bool | None = None,
                 graph_batch: int = 0, fused: bool | None = None):
        c = model.config
        self.model = model
        self.fused = model.fusable if fused is None else fused
        self.block_size = block_size
        self.device = model.device
        on_gpu = self.device.type == "cuda"
        self.kv = PagedKVCache(
            c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
            num_blocks + (1 if graph_batch else 0),  # the last: graph padding's scratch block
            block_size,
            dtype=model.kv_dtype,
            windows=[c.layer_window(i) for i in range(c.num_layers)],
            device=self.device,
            triton_decode=triton_decode,
        )
        self.graphs = None
        if graph_batch:
            max_blocks = -(-(max_model_len or c.max_position_embeddings) // block_size)
            self.graphs = DecodeGraphs(model, self.kv, graph_batch, max_blocks, scratch_block=num_blocks,
                                       capture=on_gpu, fused=self.fused)

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
        if self.graphs is not None and not prefills and self.graphs.fits(len(decode_tables)):
            logits = self.graphs.run(input_ids, positions, slots, decode_tables, decode_lengths)
            if len(sample_rows) < len(input_ids):  # a one-token prefill chunk samples nothing yet
                logits = logits[torch.tensor(sample_rows, device=logits.device)]
            return samplers, logits
        device = self.device
        tables = None
        if decode_tables:
            width = max(map(len, decode_tables))
            tables = torch.tensor([t + [0] * (width - len(t)) for t in decode_tables], device=device)
        self.kv.prepare(
            torch.tensor(slots, device=device), tables, torch.tensor(decode_lengths, device=device), prefills
        )
        logits = self.model.forward(
            torch.tensor(input_ids, device=device),
            torch.tensor(positions, device=device),
            self.kv,
            logits_indices=torch.tensor(sample_rows, dtype=torch.long, device=device),
            fused=self.fused,
        )
        return samplers, logits
