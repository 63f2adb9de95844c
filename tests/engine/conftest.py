"""Engine fixtures. Models are loaded once per test session: loading is the slow part."""

from __future__ import annotations

import os

import pytest
import torch

from conduit.engine import LLM, resolve_model_path

os.environ.setdefault(
    "HF_HUB_OFFLINE", "1"
)  # the reference reads the same local GGUF, never the hub

# Without a GPU, the CUDA path's Triton kernel runs under Triton's interpreter (on CPU tensors).
# Read when the kernel is defined, so before anything imports conduit.engine.triton_attention.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def gguf_path():
    return resolve_model_path("smollm2")


@pytest.fixture(scope="session")
def llm() -> LLM:
    """The default configuration: dtype auto (bfloat16, 4-bit weights on this CPU)."""
    return LLM()


@pytest.fixture(scope="session")
def llm_fp32() -> LLM:
    return LLM(dtype="float32")


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    )


@pytest.fixture(scope="session")
def hf_model(gguf_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    return model.eval()
