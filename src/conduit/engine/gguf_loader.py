"""Read a llama- or gemma3-architecture GGUF: its config, its tokenizer fields and its weights.

Weights come out in Hugging Face layout (rows = output features, q/k rows in "rotate_half"
order), so the model code and the reference implementation agree index for index. Gemma's norm
weights stay as the file stores them, 1 + w (llama.cpp's converter adds the 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from conduit.engine import bundled

BUNDLED_MODEL = bundled.SMOLLM2
ARCHITECTURES = ("llama", "gemma3")

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
    # Gemma 3; the defaults are llama's behaviour.
    layer_windows: tuple[int | None, ...] = ()  # per layer: sliding window, None = whole context
    rope_local_theta: float | None = None  # RoPE base of the sliding-window layers
    rope_scaling_factor: float = 1.0  # linear position scaling of the whole-context layers
    attention_scale: float | None = None  # None: head_dim ** -0.5
    final_logit_softcapping: float | None = None

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    def layer_window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None


def resolve_model_path(spec: str) -> Path:
    """'smollm2' / 'gemma3-270m' -> the GGUF a package ships (see `bundled`); anything else ->
    a file path."""
    if spec in bundled.MODELS:
        return bundled.MODELS[spec]()
    path = Path(spec).expanduser()
    if not path.is_file():
        names = " or ".join(repr(name) for name in bundled.MODELS)
        raise FileNotFoundError(
            f"Model file not found: {spec!r} (expected {names} or a GGUF path)."
        )
    return path.resolve()


def dequantize(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> torch.Tensor:
    """Rows of GGUF blocks -> a new float32 tensor, with gguf's numpy dequantizer, given the
    whole tensor at once (its own loop takes 16 rows per call: most of the time went there).
    Q8_0 (Gemma's 262k x 640 embedding) is done in torch: the same products, ~4x faster."""
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        blocks = torch.from_numpy(np.array(data)).view(data.shape[0], -1, 34)
        scale = blocks[..., :2].contiguous().view(torch.float16).float()
        values = blocks[..., 2:].contiguous().view(torch.int8).float()
        return (values * scale).view(data.shape[0], -1)
    quant = getattr(gguf.quants, qtype.name, None)
    if quant is not None and hasattr(quant, "dequantize_rows"):
        quant.init_grid()  # the lookup tables of the IQ types; a no-op for the rest
        array = quant.dequantize_rows(np.asarray(data))
    else:
        array = gguf.quants.dequantize(data, qtype)
    if not array.flags.writeable or array.dtype != np.float32:  # a view of the read-only file
        array = np.array(array, dtype=np.float32)
    return torch.from_numpy(array)


class _Reader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of its memory map. Parsing slices the map once per
    vocabulary string (~250k times); np.memmap's Python-level slice hooks made that 2.3 s of a
    2.6 s open. The view shares the same mapping, so nothing is read eagerly.

    Arrays are parsed in bulk: gguf's reader makes one part per element (Gemma's 262k scores
    and token types took ~2 s). A numeric array becomes a single part, so `contents()` of the
    whole field is unchanged but `contents(i)` and `len(field.data)` are not per element."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray)

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        itype, count, offs = gguf.GGUFValueType(int(raw_itype[0])), int(alen[0]), orig_offs + 12
        parts: list[np.ndarray] = [raw_itype, alen]
        types = [gguf.GGUFValueType.ARRAY, itype]
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is not None:
            values = self._get(offs, nptype, count)
            return 12 + int(values.nbytes), [*parts, values], [2], types
        if itype != gguf.GGUFValueType.STRING:  # nested arrays: rare and small
            return super()._get_field_parts(orig_offs, raw_type)
        data, order = self.data, "<" if self.byte_order == "I" else ">"
        length_type = np.dtype(np.uint64).newbyteorder(order)
        for _ in range(count):  # [length, bytes] per string, as gguf's reader lays them out
            length = data[offs : offs + 8].view(length_type)
            end = offs + 8 + int(length[0])
            parts += (length, data[offs + 8 : end])
            offs = end
        return offs - orig_offs, parts, list(range(3, len(parts), 2)), types


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
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"{self.path.name}: architecture {arch!r} is not supported "
                f"(only {', '.join(map(repr, ARCHITECTURES))})."
            )
        self.architecture = arch
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
        arch = self.architecture
        hidden = int(self.get(f"{arch}.embedding_length"))
        heads = int(self.get(f"{arch}.attention.head_count"))
        head_dim = int(self.get(f"{arch}.attention.key_length", hidden // heads))
        rope_dim = int(self.get(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise ValueError(f"{self.path.name}: partial rotary embeddings are not supported.")
        scaling = self.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in (("none", "llama3") if arch == "llama" else ("none", "linear")):
            raise ValueError(
                f"{self.path.name}: rope scaling "
                f"{self.get(f'{arch}.rope.scaling.type')!r} is not supported."
            )
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = self.get(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
        if vocab is None:
            vocab = int(self.tensors["token_embd.weight"].shape[1])
        bos, eos = self.get("tokenizer.ggml.bos_token_id"), self.get("tokenizer.ggml.eos_token_id")
        layers = int(self.get(f"{arch}.block_count"))
        gemma = self._gemma_config(layers, hidden, heads, head_dim) if arch == "gemma3" else {}
        return ModelConfig(
            architecture=arch,
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(self.get(f"{arch}.feed_forward_length")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(self.get(f"{arch}.attention.head_count_kv", heads)),
            head_dim=head_dim,
            rope_theta=float(self.get(f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(self.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            max_position_embeddings=int(self.get(f"{arch}.context_length", 2048)),
            tie_word_embeddings="output.weight" not in self.tensors,
            bos_token_id=None if bos is None else int(bos),
            eos_token_id=None if eos is None else int(eos),
            **gemma,
        )

    def _gemma_config(self, layers: int, hidden: int, heads: int, head_dim: int) -> dict:
        """Gemma 3's extras. Keys this file lacks take llama.cpp's defaults for gemma3: every 6th
        layer global, the rest a sliding window; local RoPE base 10000; attention scaled by
        head_dim (the 27B, 62 layers, by hidden / heads)."""
        arch = "gemma3"
        if self.get(f"{arch}.attn_logit_softcapping") is not None:
            raise ValueError(f"{self.path.name}: attention logit softcapping is not supported.")
        window = self.get(f"{arch}.attention.sliding_window")
        pattern = self.get(f"{arch}.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # one flag per layer: true = sliding window
            sliding = [bool(p) for p in pattern]
        else:
            sliding = [(i + 1) % int(pattern) != 0 for i in range(layers)]
        scale = self.get(f"{arch}.attention.scale")
        if scale is None:
            scale = (hidden // heads if layers == 62 else head_dim) ** -0.5
        softcap = self.get(f"{arch}.final_logit_softcapping")
        return {
            "layer_windows": tuple(int(window) if window and s else None for s in sliding),
            "rope_local_theta": float(self.get(f"{arch}.rope.freq_base_swa", 10000.0)),
            "rope_scaling_factor": float(self.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0),
            "attention_scale": float(scale),
            "final_logit_softcapping": None if softcap is None else float(softcap),
        }

    def has(self, name: str) -> bool:
        return name in self.tensors

    def quant_type(self, name: str) -> gguf.GGMLQuantizationType:
        return self.tensors[name].tensor_type

    def dense(self, name: str) -> torch.Tensor:
        """Dequantized float32 tensor in HF layout ([out, in] for matrices)."""
        t = self.tensors[name]
        weight = dequantize(t.data, t.tensor_type)
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
        # (Gemma's q/k are written as they are: its RoPE is the rotate_half kind in llama.cpp too.)
        if self.architecture != "llama":
            return None
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
