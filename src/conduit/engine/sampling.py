"""Sampling parameters and the sampler: temperature, top-k, top-p, per-request seeds."""

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
