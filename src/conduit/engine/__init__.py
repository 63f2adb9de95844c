"""Embedded inference engine: a llama-architecture GGUF run by our own torch code.

Imports nothing from the rest of conduit.
"""

from conduit.engine.gguf_loader import ModelConfig, resolve_model_path
from conduit.engine.llm import LLM, ContextLengthExceeded, GenerationResult, StreamDelta
from conduit.engine.sampling import SamplingParams
from conduit.engine.tokenizer import Tokenizer

__all__ = [
    "LLM",
    "ContextLengthExceeded",
    "GenerationResult",
    "ModelConfig",
    "SamplingParams",
    "StreamDelta",
    "Tokenizer",
    "resolve_model_path",
]
