"""Embedded inference engine: a llama- or gemma3-architecture GGUF run by our own torch code.

`LLM` generates for one sequence at a time; `EngineCore` batches many (paged KV cache, prefix
caching, chunked prefill, preemption); `AsyncEngine` runs that core in its own process.
Imports nothing from the rest of conduit.
"""

from conduit.engine.async_engine import AsyncEngine, EngineArgs, EngineDeadError
from conduit.engine.core import EngineConfig, EngineCore, EngineStats, RequestOutput, TokenLogprob
from conduit.engine.gguf_loader import ModelConfig, resolve_model_path
from conduit.engine.llm import LLM, ContextLengthExceeded, GenerationResult, StreamDelta
from conduit.engine.loader import load_model
from conduit.engine.sampling import SamplingParams
from conduit.engine.tokenizer import Tokenizer

__all__ = [
    "LLM",
    "AsyncEngine",
    "ContextLengthExceeded",
    "EngineArgs",
    "EngineConfig",
    "EngineCore",
    "EngineDeadError",
    "EngineStats",
    "GenerationResult",
    "ModelConfig",
    "RequestOutput",
    "SamplingParams",
    "StreamDelta",
    "TokenLogprob",
    "Tokenizer",
    "load_model",
    "resolve_model_path",
]
