"""`LLM`: load a GGUF, then generate or stream completions for one sequence at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from conduit.engine.gguf_loader import ModelConfig
from conduit.engine.loader import auto_dtype, load_model  # noqa: F401 (auto_dtype: re-export)
from conduit.engine.sampling import SamplingParams, make_generator, sample

FinishReason = Literal["stop", "length", "abort"]


class ContextLengthExceeded(ValueError):
    def __init__(self, prompt_tokens: int, max_model_len: int):
        super().__init__(
            f"Prompt has {prompt_tokens} tokens; with at least 1 to generate it "
            f"exceeds the context length of {max_model_len}."
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: FinishReason


@dataclass
class StreamDelta:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None


class LLM:
    """Single-stream generation.

    quantization (how Q4_0/Q4_1 GGUF weights are held; bfloat16 only, else "none"):
      "auto": 4-bit for decode plus a dense bfloat16 copy for prefill -- fastest, most memory;
      "int4": 4-bit only -- least memory, prefill ~2x slower;
      "none": every weight dequantized to `dtype`.
    """

    def __init__(
        self,
        model: str = "smollm2",
        dtype: str = "auto",
        max_model_len: int | None = None,
        num_threads: int | None = None,
        quantization: str = "auto",
        load_format: str = "gguf",
        device: str = "cpu",
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        loaded = load_model(model, dtype, max_model_len, quantization, load_format, device)
        self.device = loaded.device
        self.config: ModelConfig = loaded.model.config
        self.model_name = loaded.name
        self.max_model_len = loaded.max_model_len
        self.dtype = loaded.dtype
        self.quantization = loaded.quantization
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.loaded = loaded
        self._warm_up()

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None
    ) -> GenerationResult:
        if isinstance(prompt, str):
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            prompt_ids = list(prompt)
        text, token_ids, finish = [], [], "length"
        for delta in self.stream(prompt_ids, params or SamplingParams()):
            text.append(delta.text)
            token_ids += delta.token_ids
            finish = delta.finish_reason or finish
        return GenerationResult("".join(text), token_ids, prompt_ids, finish)

    def stream(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[StreamDelta]:
        """One delta per generated token; the last has finish_reason set. Validation happens
        here, before the first token, so a too-long prompt raises at the call."""
        prompt = list(prompt_token_ids)
        if not prompt:
            raise ValueError("The prompt is empty.")
        if len(prompt) + 1 > self.max_model_len:
            raise ContextLengthExceeded(len(prompt), self.max_model_len)
        if max(prompt) >= self.config.vocab_size or min(prompt) < 0:
            raise ValueError(f"Prompt token ids must be in 0..{self.config.vocab_size - 1}.")
        params = params or SamplingParams()
        return self._run(prompt, params, should_stop)

    def _run(
        self, prompt: list[int], params: SamplingParams, should_stop: Callable[[], bool] | None
    ) -> Iterator[StreamDelta]:
        max_new = min(params.max_tokens, self.max_model_len - len(prompt))
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.tokenizer.eos_token_ids
        generator = make_generator(params.seed)
        detokenizer = self.tokenizer.detokenizer()
        stops = StopStringMatcher(params.stop)
        # The last sampled token is never fed back, hence no slot for it.
        kv = self.model.new_kv_cache(len(prompt) + max_new - 1)
        device = self.device
        input_ids, positions = torch.tensor(prompt, device=device), torch.arange(len(prompt), device=device)
        for step in range(max_new):
            if should_stop is not None and should_stop():
                yield StreamDelta("", [], "abort")
                return
            kv.reserve(len(input_ids))
            logits = self.model.forward(input_ids, positions, kv).cpu()  # the generator is the CPU's
            token = sample(logits, params, generator)
            if token in stop_ids:  # its text is not part of the output
                text, _ = stops.push(detokenizer.flush(), final=True)
                yield StreamDelta(text, [token], "stop")
                return
            last = step == max_new - 1
            text, stopped = stops.push(
                detokenizer.push(token) + (detokenizer.flush() if last else ""), final=last
            )
            if stopped or last:
                yield StreamDelta(text, [token], "stop" if stopped else "length")
                return
            yield StreamDelta(text, [token])
            input_ids = torch.tensor([token], device=device)
            positions = torch.tensor([kv.length], device=device)

    def _warm_up(self) -> None:
        # The first call pays oneDNN/kernel setup (~0.1 s); keep that off the first request.
        kv = self.model.new_kv_cache(3)
        for ids in ([0, 0], [0]):
            kv.reserve(len(ids))
            self.model.forward(torch.tensor(ids, device=self.device),
                               torch.arange(kv.length - len(ids), kv.length, device=self.device), kv)


class StopStringMatcher:
    """Cuts generated text at the first stop string. Text that might be the start of a stop
    string is held back until it is ruled out, so nothing past a stop is ever emitted."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max(map(len, self.stops), default=0)
        self.text = ""
        self.sent = 0  # chars of self.text already emitted

    def push(self, delta: str, final: bool = False) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        start = max(0, len(self.text) - self.longest + 1)  # earlier matches were already caught
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            end, stopped = min(hits), True
        else:
            end, stopped = len(self.text) - (0 if final else self._held_back()), False
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out, stopped

    def _held_back(self) -> int:
        """Length of the longest unsent suffix that is a proper prefix of some stop string."""
        pending = len(self.text) - self.sent
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, pending), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
