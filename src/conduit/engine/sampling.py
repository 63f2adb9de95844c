"""Sampling parameters and the sampler: penalties, logit bias, temperature, top-k, top-p,
min-p, per-request seeds, log-probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or negative) => off
    seed: int | None = None
    max_tokens: int = 16
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_p: float = 0.0
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per occurrence in the generated tokens
    repetition_penalty: float = 1.0  # divides positive / multiplies negative logits of seen tokens
    logit_bias: dict[int, float] = field(default_factory=dict)
    n: int = 1  # choices from one prompt
    logprobs: int | None = None  # None: none; k: the chosen token's plus the top k alternatives

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.top_k = self.top_k or 0
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self.logit_bias = dict(self.logit_bias)

    @property
    def penalized(self) -> bool:
        return bool(
            self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1
            or self.logit_bias
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def make_generator(seed: int | None) -> torch.Generator:
    """A private RNG per request: a seeded request replays exactly, whatever else runs."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token id from float32 logits [vocab]."""
    if params.greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.min_p > 0:  # drop tokens less likely than min_p times the most likely one
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    top_k = params.top_k if 0 < params.top_k < logits.shape[-1] else 0
    if top_k:
        logits, token_ids = logits.topk(top_k)  # sorted, highest first
    elif params.top_p < 1:
        logits, token_ids = logits.sort(descending=True)
    else:
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
    probs = logits.softmax(-1)
    if params.top_p < 1:
        # Keep the smallest head whose mass reaches top_p (always at least the top token).
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= params.top_p, 0.0)
    return int(token_ids[torch.multinomial(probs, 1, generator=generator)])


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int]
) -> torch.Tensor:
    """vLLM's semantics: repetition over prompt and output, presence/frequency over output."""
    logits = logits.clone()
    if params.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / params.repetition_penalty, values * params.repetition_penalty
        )
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(output_ids).unique(return_counts=True)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.float()
    for token_id, bias in params.logit_bias.items():
        if 0 <= token_id < logits.shape[-1]:
            logits[token_id] += bias
    return logits
