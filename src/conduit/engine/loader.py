"""Load a model for the engine: a llama or gemma3 GGUF, or random llama weights of a named shape
("dummy").

Dummy models are for benchmarks at sizes we have no file for: the tensors are random (seeded by
name, so two loads agree) and the tokenizer is the bundled SmolLM2's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import torch

from conduit.engine.gemma import GemmaModel
from conduit.engine.gguf_loader import Q4_TYPES, GGUFModelFile, ModelConfig, resolve_model_path
from conduit.engine.model import LlamaModel, int4_kernel_available
from conduit.engine.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Shapes of public llama-architecture models (hidden, ffn, layers, heads, kv heads, vocab).
DUMMY_PRESETS = {
    name: dict(zip(
        ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
         "vocab_size", "rope_theta"), shape, strict=True))
    for name, shape in {
        "smollm2-135m": (576, 1536, 30, 9, 3, 49152, 100000.0),
        "smollm2-360m": (960, 2560, 32, 15, 5, 49152, 100000.0),
        "llama3-1b": (2048, 8192, 16, 32, 8, 128256, 500000.0),
        "llama3-8b": (4096, 14336, 32, 32, 8, 128256, 500000.0),
    }.items()
}


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for "cpu", "cuda" / "cuda:N", or "auto" (the GPU when torch sees one)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU")
    return resolved


def auto_dtype(device: torch.device | str = "cpu") -> str:
    if torch.device(device).type == "cuda":
        return "bfloat16"
    # Measured on a 2-core AVX512-BF16 EPYC: bfloat16 decodes ~3x faster than float32 (77 vs
    # 24 tok/s with 4-bit weights; 41 dense), prefill ~1.6x. Without native bf16 math the
    # casts would cost more than the halved bytes save, so stay float32 there.
    cpu = torch.cpu
    native_bf16 = any(
        getattr(cpu, check, lambda: False)()
        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return "bfloat16" if native_bf16 else "float32"


@dataclass
class LoadedModel:
    model: LlamaModel | GemmaModel
    tokenizer: Tokenizer
    name: str
    max_model_len: int
    dtype: str
    quantization: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def load_model(
    source: str = "smollm2",
    dtype: str = "auto",
    max_model_len: int | None = None,
    quantization: str = "auto",
    load_format: str = "gguf",
    device: str = "cpu",
) -> LoadedModel:
    """device: "cpu", "cuda" (bfloat16, dense weights, the Triton decode kernel) or "auto" (CUDA
    when torch sees a GPU, for llama-architecture models; gemma3 runs on the CPU only)."""
    resolved = resolve_device(device)
    if quantization not in ("auto", "int4", "none"):
        raise ValueError(f"quantization must be 'auto', 'int4' or 'none', got {quantization!r}")
    if load_format == "dummy":
        tokenizer = Tokenizer(GGUFModelFile(resolve_model_path("smollm2")))
        file = DummyModelFile(source, vocab_size=tokenizer.vocab_size, device=resolved)
        tokenizer.cover(file.config.vocab_size)  # a larger preset vocabulary: ids past ours are empty text
        name = f"dummy-{source}" if source in DUMMY_PRESETS else "dummy"
    elif load_format == "gguf":
        file = GGUFModelFile(resolve_model_path(source))
        name = file.model_name
        tokenizer = Tokenizer(file)
        if file.config.architecture == "gemma3" and device == "auto":
            resolved = torch.device("cpu")
    else:
        raise ValueError(f"load_format must be 'gguf' or 'dummy', got {load_format!r}")
    on_cpu = resolved.type == "cpu"
    dtype = auto_dtype(resolved) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    limit = file.config.context_length
    if max_model_len is not None and not 1 < max_model_len <= limit:
        raise ValueError(f"max_model_len must be in 2..{limit} for this model, got {max_model_len}")
    if quantization == "int4" and (dtype != "bfloat16" or not int4_kernel_available() or not on_cpu):
        raise ValueError("quantization 'int4' needs dtype bfloat16 on the CPU (torch's CPU int4 kernel)")
    if quantization == "auto":
        int4 = on_cpu and dtype == "bfloat16" and int4_kernel_available()
        # Only Q4_0/Q4_1 weights stay 4-bit (Gemma's Q4_K_M file has none: all dequantized).
        int4 = int4 and any(file.quant_type(n) in Q4_TYPES for n in file.tensors)
        quantization = "int4+dense" if int4 else "none"
    if file.config.architecture == "gemma3":
        if not on_cpu:
            raise ValueError("gemma3 models run on the CPU only (device 'cpu')")
        model = GemmaModel(file, DTYPES[dtype], quantization, max_positions=max_model_len or limit)
    else:
        model = LlamaModel(file, DTYPES[dtype], quantization, max_positions=max_model_len or limit,
                           device=resolved)
    return LoadedModel(model, tokenizer, name, max_model_len or limit, dtype, quantization, resolved)


class _Shape:
    def __init__(self, *shape: int):
        self.shape = shape


class _DummyTensor:
    def __init__(self, *shape: int):
        self.data = _Shape(*shape)
        self.tensor_type = gguf.GGMLQuantizationType.F32


class DummyModelFile:
    """Quacks like GGUFModelFile for LlamaModel: config, tensor shapes and random weights.
    `spec`: a preset name (DUMMY_PRESETS), a JSON object of ModelConfig fields, or a path to one.
    The weights are drawn on `device`: an 8B shape is 32 GB of float32 to make on a CPU."""

    def __init__(self, spec: str, vocab_size: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        if spec in DUMMY_PRESETS:
            shape = dict(DUMMY_PRESETS[spec])
        elif spec.lstrip().startswith("{"):
            shape = json.loads(spec)
        elif Path(spec).is_file():
            shape = json.loads(Path(spec).read_text())
        else:
            raise ValueError(
                f"dummy model {spec!r}: use a preset ({', '.join(DUMMY_PRESETS)}) or JSON shape"
            )
        # The bundled tokenizer's ids must all be valid; a preset's larger vocabulary (Llama 3's
        # 128,256) is kept, so the embedding and LM head have the real model's size.
        shape["vocab_size"] = max(shape.get("vocab_size", 0), vocab_size)
        heads = shape["num_heads"]
        self.config = ModelConfig(
            architecture="llama",
            vocab_size=shape["vocab_size"],
            hidden_size=shape["hidden_size"],
            intermediate_size=shape["intermediate_size"],
            num_layers=shape["num_layers"],
            num_heads=heads,
            num_kv_heads=shape.get("num_kv_heads", heads),
            head_dim=shape.get("head_dim", shape["hidden_size"] // heads),
            rope_theta=float(shape.get("rope_theta", 10000.0)),
            rms_norm_eps=float(shape.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=int(shape.get("max_position_embeddings", 8192)),
            tie_word_embeddings=bool(shape.get("tie_word_embeddings", True)),
            bos_token_id=1,
            eos_token_id=2,
        )
        c = self.config
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.tensors = {"token_embd.weight": _DummyTensor(c.vocab_size, c.hidden_size),
                        "output_norm.weight": _DummyTensor(c.hidden_size)}
        if not c.tie_word_embeddings:
            self.tensors["output.weight"] = _DummyTensor(c.vocab_size, c.hidden_size)
        for i in range(c.num_layers):
            p = f"blk.{i}."
            self.tensors.update({
                p + "attn_norm.weight": _DummyTensor(c.hidden_size),
                p + "ffn_norm.weight": _DummyTensor(c.hidden_size),
                p + "attn_q.weight": _DummyTensor(q, c.hidden_size),
                p + "attn_k.weight": _DummyTensor(kv, c.hidden_size),
                p + "attn_v.weight": _DummyTensor(kv, c.hidden_size),
                p + "attn_output.weight": _DummyTensor(c.hidden_size, q),
                p + "ffn_gate.weight": _DummyTensor(c.intermediate_size, c.hidden_size),
                p + "ffn_up.weight": _DummyTensor(c.intermediate_size, c.hidden_size),
                p + "ffn_down.weight": _DummyTensor(c.hidden_size, c.intermediate_size),
            })

    def has(self, name: str) -> bool:
        return name in self.tensors

    def quant_type(self, name: str) -> gguf.GGMLQuantizationType:
        return self.tensors[name].tensor_type

    def dense(self, name: str) -> torch.Tensor:
        shape = self.tensors[name].data.shape
        generator = torch.Generator(self.device).manual_seed(sum(map(ord, name)) * 1000003 % (2**31))
        if len(shape) == 1:  # norm weights near 1
            return 1 + 0.02 * torch.randn(shape, generator=generator, device=self.device)
        return torch.randn(shape, generator=generator, device=self.device) * shape[1] ** -0.5
