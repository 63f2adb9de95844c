"""The synchronous engine core: requests in, one scheduled forward per `step()`, outputs out.

    core = EngineCore(load_model("smollm2"), EngineConfig())
    core.add_request("r1", prompt_ids, SamplingParams(max_tokens=32))
    while core.has_unfinished():
        for out in core.step(): ...

Detokenization and stop strings run here too, so an output's text is final. `n` > 1 forks
after the prompt is prefilled: the other choices are queued then and find the prompt's full
blocks in the prefix cache (only the last partial block is recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from conduit.engine.block_manager import BlockManager
from conduit.engine.kv_cache import PagedKVCache
from conduit.engine.llm import StopStringMatcher
from conduit.engine.loader import LoadedModel
from conduit.engine.runner import ModelRunner
from conduit.engine.sampling import SamplingParams, apply_penalties, make_generator, sample
from conduit.engine.scheduler import Scheduler, Sequence, Status


@dataclass
class EngineConfig:
    block_size: int = 16
    kv_cache_memory_gb: float = 1.0  # the CPU's KV-cache budget
    gpu_memory_utilization: float = 0.9  # on CUDA: the fraction of free memory the cache takes
    num_blocks: int | None = None  # overrides both budgets (tests)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    cuda_graphs: bool = True  # on CUDA: replay decode-only steps from graphs
    fused_kernels: bool = True  # on CUDA: norms, RoPE + cache write, SiLU x up as Triton kernels


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability (under the model's raw distribution) and alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class RequestOutput:
    """New tokens of one choice from one step. `finish_reason` is set on its last."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # stop | length
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class EngineStats:
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of blocks in use
    prefix_cache_queries: int = 0  # prompt tokens looked up
    prefix_cache_hits: int = 0  # of those, tokens found cached
    prompt_tokens: int = 0  # computed prompt tokens (prefix-cache hits excluded)
    generation_tokens: int = 0
    num_preemptions: int = 0


class _Choice:
    """Per-sequence output state: detokenizer, stop strings, stop ids, length limit."""

    def __init__(self, core: EngineCore, seq: Sequence):
        p = seq.params
        self.detokenizer = core.tokenizer.detokenizer()
        self.stops = StopStringMatcher(p.stop)
        self.stop_ids = set(p.stop_token_ids)
        if not p.ignore_eos:
            self.stop_ids |= core.tokenizer.eos_token_ids
        # A sequence must fit the cache alone, or preempting itself would never end.
        limit = min(core.max_model_len, core.block_manager.num_blocks * core.block_manager.block_size)
        self.max_new = min(p.max_tokens, limit - len(seq.prompt_ids))


class EngineCore:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None):
        config = config or EngineConfig()
        self.config = config
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.name
        self.max_model_len = loaded.max_model_len
        num_blocks = config.num_blocks or kv_cache_blocks(loaded, config)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, config.enable_chunked_prefill)
        on_gpu = loaded.device.type == "cuda"
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, self.max_model_len,
                                  graph_batch=config.max_num_seqs if on_gpu and config.cuda_graphs else 0,
                                  fused=self.model.fusable and config.fused_kernels)
        self.requests: dict[str, list[Sequence]] = {}
        self.pending_forks: dict[str, list[Sequence]] = {}
        self.choices: dict[Sequence, _Choice] = {}
        self.counters = EngineStats()

    # ---- requests -------------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        priority: int = 0,
    ) -> None:
        prompt = list(prompt_token_ids)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        if not prompt:
            raise ValueError("The prompt is empty.")
        if len(prompt) + 1 > self.max_model_len:
            raise ValueError(f"Prompt has {len(prompt)} tokens; the context is {self.max_model_len}.")
        if max(prompt) >= self.model.config.vocab_size or min(prompt) < 0:
            raise ValueError(f"Prompt token ids must be in 0..{self.model.config.vocab_size - 1}.")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        if len(prompt) + 1 > capacity:
            raise ValueError(f"Prompt has {len(prompt)} tokens; the KV cache holds {capacity}.")
        if not self.config.enable_chunked_prefill and len(prompt) > self.config.max_num_batched_tokens:
            raise ValueError("Prompt longer than max_num_batched_tokens without chunked prefill.")
        seqs = []
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            seq = Sequence(request_id, index, prompt, params, make_generator(seed), priority)
            self.choices[seq] = _Choice(self, seq)
            seqs.append(seq)
        self.requests[request_id] = seqs
        self.scheduler.add(seqs[0])
        if len(seqs) > 1:
            self.pending_forks[request_id] = seqs[1:]

    def abort(self, request_id: str) -> None:
        """Drop a request wherever it is; its blocks are freed now. Unknown ids are ignored."""
        self.pending_forks.pop(request_id, None)
        for seq in self.requests.pop(request_id, []):
            if seq.status is not Status.FINISHED:
                self.scheduler.finish(seq)
            self.choices.pop(seq, None)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        s = self.counters
        s.num_requests_running = len({q.request_id for q in self.scheduler.running})
        s.num_requests_waiting = len(self.requests) - s.num_requests_running
        s.kv_cache_usage = self.block_manager.usage
        s.prefix_cache_queries = self.block_manager.prefix_queries
        s.prefix_cache_hits = self.block_manager.prefix_hits
        return EngineStats(**vars(s))

    # ---- the step -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        self.counters.num_preemptions += len(batch.preempted)
        if not batch.items:
            return []
        for seq, count in batch.items:
            self.counters.prompt_tokens += max(
                0, min(seq.num_computed + count, len(seq.prompt_ids)) - seq.num_computed
            )
        samplers, logits = self.runner.execute(batch)
        self.scheduler.after_step(batch)
        picked = _greedy_tokens(samplers, logits)
        rows = _host_rows(samplers, logits, picked)
        return [self._advance(seq, rows[i], picked[i]) for i, seq in enumerate(samplers)]

    def _advance(self, seq: Sequence, logits: torch.Tensor | None, token: int | None) -> RequestOutput:
        """`token`: already picked (plain greedy), else sampled here from the row (on the CPU)."""
        params, choice = seq.params, self.choices[seq]
        if token is None:
            processed = logits
            if params.penalized:
                processed = apply_penalties(logits, params, seq.prompt_ids, seq.output_ids)
            token = sample(processed, params, seq.generator)
        first = not seq.output_ids
        seq.token_ids.append(token)
        self.counters.generation_tokens += 1
        logprobs = [self._logprob(logits, token, params.logprobs)] if params.logprobs is not None else []
        if first and seq.index == 0:
            self._fork(seq.request_id)
        finish = None
        if token in choice.stop_ids:  # its text is not part of the output
            text, _ = choice.stops.push(choice.detokenizer.flush(), final=True)
            finish = "stop"
        else:
            last = len(seq.output_ids) >= choice.max_new
            text, stopped = choice.stops.push(
                choice.detokenizer.push(token) + (choice.detokenizer.flush() if last else ""),
                final=last,
            )
            finish = "stop" if stopped else "length" if last else None
        if finish is not None:
            self._finish(seq)
        return RequestOutput(seq.request_id, seq.index, text, [token], finish, logprobs)

    def _fork(self, request_id: str) -> None:
        for seq in self.pending_forks.pop(request_id, []):
            self.scheduler.add(seq)

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.choices.pop(seq, None)
        seqs = self.requests.get(seq.request_id, [])
        if all(s.status is Status.FINISHED for s in seqs) and seq.request_id not in self.pending_forks:
            del self.requests[seq.request_id]

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        logprobs = logits.log_softmax(-1)
        alternatives = ()
        if top:
            values, ids = logprobs.topk(top)
            alternatives = tuple((self._token_text(int(i)), _finite(float(v)))
                                 for v, i in zip(values, ids))
        raw = self.tokenizer.token_bytes[token]
        return TokenLogprob(self._token_text(token), _finite(float(logprobs[token])),
                            tuple(raw), alternatives)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.token_bytes[token].decode("utf-8", errors="replace")


def _greedy_tokens(samplers: list[Sequence], logits: torch.Tensor) -> list[int | None]:
    """The argmax of every plain greedy row in one call (one device sync on a GPU, not one per
    row); None for rows sampled one by one."""
    rows = [i for i, seq in enumerate(samplers) if seq.params.greedy and not seq.params.penalized]
    picked: list[int | None] = [None] * len(samplers)
    if rows:
        chosen = logits[rows].argmax(-1).tolist() if len(rows) < len(samplers) else logits.argmax(-1).tolist()
        for i, token in zip(rows, chosen):
            picked[i] = token
    return picked


def _host_rows(samplers: list[Sequence], logits: torch.Tensor, picked: list[int | None]) -> list[torch.Tensor | None]:
    """The rows still needed on the CPU (to sample with a request's generator, or for logprobs),
    copied off a GPU in one transfer; None for the rest."""
    needed = [i for i, seq in enumerate(samplers) if picked[i] is None or seq.params.logprobs is not None]
    rows: list[torch.Tensor | None] = [None] * len(samplers)
    if needed and logits.device.type != "cpu":
        for i, row in zip(needed, logits[needed].float().cpu()):
            rows[i] = row
    else:
        for i in needed:
            rows[i] = logits[i]
    return rows


def kv_cache_blocks(loaded: LoadedModel, config: EngineConfig) -> int:
    """Blocks the KV cache gets: `kv_cache_memory_gb` on the CPU; on CUDA, a fraction of the
    memory still free once the weights are loaded, less room for one step's activations."""
    c = loaded.model.config
    per_block = PagedKVCache.bytes_per_block(c.num_layers, c.num_kv_heads, c.head_dim,
                                             config.block_size, loaded.model.kv_dtype)
    if loaded.device.type != "cuda":
        return max(1, int(config.kv_cache_memory_gb * 2**30) // per_block)
    free, _ = torch.cuda.mem_get_info(loaded.device)
    # A prefill step's activations (float32 residual and norms, the fused projections, the
    # MLP's gate|up) and the sampled rows' logits, with a margin for the graphs and allocator.
    activations = config.max_num_batched_tokens * (8 * c.hidden_size + 4 * c.intermediate_size) * 4
    logits = config.max_num_seqs * c.vocab_size * 8
    budget = free * config.gpu_memory_utilization - activations - logits - 2**29
    if budget < per_block:
        raise ValueError(f"no GPU memory left for the KV cache ({free / 2**30:.1f} GiB free after the weights)")
    return int(budget // per_block)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -inf; OpenAI uses -9999 too
