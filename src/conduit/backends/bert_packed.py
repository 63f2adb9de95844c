"""A BERT sentence encoder (all-MiniLM-L6-v2) as a few tensor ops over packed token rows.

Both of the embedder's jobs run here. A query (a search, a semantic-cache lookup) is one short
text on a request's time: sentence-transformers' batching and the transformers modules'
bookkeeping cost about as much as the model's arithmetic (10 ms there against 4.5 ms here for a
17-token question on one core of the 2-core machine; 6 ms of it without the pre-packed weights).
An ingest is thousands of chunks: the texts of a batch are laid end to end as one matrix of
token rows, so the linear layers, 60% of the time, never multiply padding, and attention runs
per text over its own rows (1.4x sentence-transformers' bfloat16 throughput on Django's
documentation, and closer to the float32 vectors).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class _Linear:
    """y = x W^T + b, with W pre-packed for oneDNN where torch has it: re-packed on every call,
    a 384 x 1536 bfloat16 weight costs a quarter of the product's time at 17 rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False) -> None:
        self.weight, self.bias, self.gelu = weight, bias, gelu
        self.packed = _packed(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu" if self.gelu else "none",
                                                      [], "none" if self.gelu else "")
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.gelu else y


def _packed(weight: torch.Tensor) -> torch.Tensor | None:
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        probe = torch.ones(2, weight.shape[1], dtype=weight.dtype)
        same = torch.allclose(torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], ""),
                              F.linear(probe, weight), rtol=1e-2, atol=1e-2)
        return packed if same else None
    except (RuntimeError, AttributeError):  # an older torch, or no oneDNN kernel for this dtype
        return None


class _Layer(NamedTuple):
    qkv: _Linear
    out: _Linear
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    up: _Linear  # with the GELU
    down: _Linear
    output_norm: tuple[torch.Tensor, torch.Tensor]


class PackedBert:
    BATCH = 32  # texts per forward: 16-32 measured best on the 2-core machine, 64 and up slower

    def __init__(self, tokenizer: Any, max_tokens: int, weights: dict[str, torch.Tensor],
                 layers: int, heads: int, eps: float) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.words = weights["embeddings.word_embeddings.weight"]
        self.positions = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self.embedding_norm = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.hidden = self.words.shape[1]
        self.heads = heads
        self.scale = (self.hidden // heads) ** -0.5
        self._no_bias = torch.zeros(())  # baddbmm's input, ignored with beta=0
        self.eps = eps
        self.layers = [_layer(weights, f"encoder.layer.{i}.") for i in range(layers)]

    @classmethod
    def from_sentence_transformer(cls, model: Any) -> PackedBert | None:
        """The fast path for `model`, or None when it is not a mean-pooled, normalised BERT."""
        from sentence_transformers.models import Normalize, Pooling, Transformer

        modules = list(model)
        if len(modules) != 3 or not isinstance(modules[0], Transformer) \
                or not isinstance(modules[1], Pooling) or not isinstance(modules[2], Normalize):
            return None
        pooling, bert = modules[1], modules[0].auto_model
        config = bert.config
        if not _mean_pooled(pooling.get_config_dict()) or config.model_type != "bert" \
                or config.hidden_act != "gelu" \
                or getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None
        weights = {name: tensor.detach() for name, tensor in bert.state_dict().items()}
        return cls(model.tokenizer, model.max_seq_length, weights, config.num_hidden_layers,
                   config.num_attention_heads, config.layer_norm_eps)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in the order given."""
        if not texts:
            return np.empty((0, self.hidden), dtype=np.float32)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        vectors = np.empty((len(texts), self.hidden), dtype=np.float32)
        # Texts of similar length together keep a batch's rows (and its attention loop) even.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.BATCH):
                batch = order[start:start + self.BATCH]
                lengths = [len(ids[i]) for i in batch]
                rows = torch.tensor([token for i in batch for token in ids[i]])
                vectors[batch] = self._encode(rows, lengths).numpy()
        return vectors

    def _encode(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        hidden, heads = self.hidden, self.heads
        positions = torch.cat([torch.arange(n) for n in lengths])
        x = self.words[ids] + self.positions[positions] + self.token_type
        x = F.layer_norm(x, (hidden,), *self.embedding_norm, self.eps)
        for layer in self.layers:
            qkv = layer.qkv(x).float().view(len(ids), 3, heads, -1)
            parts = torch.split(qkv, lengths) if len(lengths) > 1 else (qkv,)
            attended = torch.cat([self._attention(part) for part in parts]).to(x.dtype)
            x = F.layer_norm(layer.out(attended) + x, (hidden,), *layer.attention_norm, self.eps)
            x = F.layer_norm(layer.down(layer.up(x)) + x, (hidden,), *layer.output_norm, self.eps)
        pooled = torch.stack([rows.mean(0) for rows in torch.split(x.float(), lengths)])
        return F.normalize(pooled, dim=-1)

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """One text's self-attention over its rows, [n, 3, heads, d] -> [n, hidden].

        In float32 by hand: for a 12 x 17 x 17 attention SDPA's bfloat16 math path spends more on
        dtype round trips than on arithmetic (everything but the linear layers took 1.4-1.7 ms of a
        17-token question with it, 1.0 ms like this; same vectors, cosine 0.99998). On a padded
        batch, SDPA was no faster than this loop either."""
        n = len(qkv)
        q, k, v = qkv.permute(1, 2, 0, 3)
        scores = torch.baddbmm(self._no_bias, q, k.transpose(1, 2), beta=0.0, alpha=self.scale)
        return (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, self.hidden)


def _mean_pooled(pooling: dict[str, Any]) -> bool:
    """Plain mean pooling, in sentence-transformers' current config or its older flags."""
    if "pooling_mode" in pooling:
        return pooling["pooling_mode"] == "mean"
    others = ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    return bool(pooling.get("pooling_mode_mean_tokens")) and not any(
        pooling.get(f"pooling_mode_{other}") for other in others)


def _layer(weights: dict[str, torch.Tensor], prefix: str) -> _Layer:
    def get(name: str) -> torch.Tensor:
        return weights[prefix + name]

    attention = [f"attention.self.{part}" for part in ("query", "key", "value")]
    return _Layer(
        _Linear(torch.cat([get(f"{a}.weight") for a in attention]), torch.cat([get(f"{a}.bias") for a in attention])),
        _Linear(get("attention.output.dense.weight"), get("attention.output.dense.bias")),
        (get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias")),
        _Linear(get("intermediate.dense.weight"), get("intermediate.dense.bias"), gelu=True),
        _Linear(get("output.dense.weight"), get("output.dense.bias")),
        (get("output.LayerNorm.weight"), get("output.LayerNorm.bias")),
    )
