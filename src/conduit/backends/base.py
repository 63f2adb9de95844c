"""The Backend protocol: what the pipeline needs from anything that generates text.

Two implementations: the embedded engine (here) and OpenAI-compatible upstreams (routing issue).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1  # choices generated from one prompt
    top_logprobs: int | None = None  # None: no log-probabilities; 0..20: the chosen token's, plus that many alternatives


@dataclass(frozen=True)
class GenerateRequest:
    """Either chat `messages` (rendered with the model's template) or a raw `prompt`."""

    model: str
    sampling: Sampling = field(default_factory=Sampling)
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    logprobs: bool = False  # ask for the chosen tokens' log-probabilities (the cascade's confidence)
    response_format: dict[str, Any] | None = None  # OpenAI's, when not plain text: json_object | json_schema


@dataclass(frozen=True)
class TokenLogprob:
    """OpenAI's `logprobs.content[]` entry: a generated token and, optionally, its alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float], ...] = ()  # (token, logprob), most likely first


@dataclass(frozen=True)
class Delta:
    """A piece of generated text of choice `index`. A choice's last delta has `finish_reason` set."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # generated so far for this request (all choices), this delta included
    finish_reason: str | None = None  # stop | length | abort
    logprobs: tuple[float, ...] = ()  # of this delta's tokens, when asked for and available
    index: int = 0
    token_logprobs: tuple[TokenLogprob, ...] = ()  # OpenAI-format detail, when top_logprobs is set
    cached_prompt_tokens: int = 0  # of prompt_tokens, how many the backend served from its prefix cache


def estimate_tokens(request: GenerateRequest) -> int:
    """A prompt's size without its model's tokenizer: about four characters a token for English,
    plus a few tokens of chat framing per message. Limits reconcile with the real count later."""
    if request.messages is not None:
        chars = sum(len(str(m.get("content") or "")) for m in request.messages)
        return chars // 4 + 4 * len(request.messages) + 3
    if isinstance(request.prompt, list):
        return len(request.prompt)
    return len(request.prompt or "") // 4 + 1


class Backend(Protocol):
    model: str
    max_model_len: int

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Stream the generation. Closing the iterator early stops the work for it."""
        ...
