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
        x = x.to(self.weight.dtype)
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


class _Int8Linear:
    """y = x W^T + b with W in 8 bits per output channel and x quantised on each call (one scale for
    the batch), through oneDNN's u8 x s8 kernels: twice bfloat16's products per cycle on this VM
    (~800 against ~425 G/s). BERT's activations have a few channels far larger than the rest; one
    scale for all of them would leave the others a handful of levels, so part of each channel's
    range moves into the weights (SmoothQuant, alpha 0.75), from maxima seen on calibration text."""

    ALPHA = 0.75

    def __init__(self, linear: _Linear, input_max: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> None:
        weight = linear.weight.float()
        smooth = (input_max.float().clamp(min=1e-5) ** self.ALPHA
                  / weight.abs().amax(0).clamp(min=1e-5) ** (1 - self.ALPHA))
        weight = weight * smooth
        self.weight_scale = (weight.abs().amax(1) / 127).clamp(min=1e-8)
        self.weight = torch.ops.onednn.qlinear_prepack((weight / self.weight_scale[:, None]).round().to(torch.int8),
                                                       None)
        self.zero_points = torch.zeros(len(weight), dtype=torch.int64)
        self.bias = linear.bias.float()
        self.unsmooth = 1 / smooth
        self.post_op = ("gelu", "none") if linear.gelu else ("none", "")
        self.out_dtype = out_dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.mul(x, self.unsmooth)  # float32 whatever x is: one pass
        low, high = torch.aminmax(x)
        scale = max(-float(low), float(high), 1e-6) / 127
        # Zero at 128; adding 128.5 and truncating rounds to the nearest level in two passes.
        quantised = torch.add(_ROUNDED_ZERO, x, alpha=1 / scale).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise(quantised, scale, 128, self.weight, self.weight_scale,
                                                  self.zero_points, self.bias, 1.0, 0, self.out_dtype,
                                                  self.post_op[0], [], self.post_op[1])


_ROUNDED_ZERO = torch.tensor(128.5)


class _InputRange:
    """A linear layer that notes the largest magnitude of each input channel it sees."""

    def __init__(self, linear: _Linear) -> None:
        self.linear, self.maximum = linear, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.float().abs().amax(0)
        self.maximum = seen if self.maximum is None else torch.maximum(self.maximum, seen)
        return self.linear(x)


def _int8_available() -> bool:
    try:
        probe = _Int8Linear(_Linear(torch.eye(16), torch.zeros(16)), torch.ones(16))
        x = torch.linspace(-1, 1, 32).view(2, 16)
        return torch.allclose(probe(x).float(), x, atol=0.02)
    except (RuntimeError, AttributeError):  # a torch without oneDNN's quantised linear
        return False


class _Layer(NamedTuple):
    qkv: _Linear
    out: _Linear
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    up: _Linear  # with the GELU
    down: _Linear
    output_norm: tuple[torch.Tensor, torch.Tensor]


class PackedBert:
    BATCH = 32  # texts per forward: 16-32 measured best on the 2-core machine, 64 and up slower
    BULK_ROWS = 128  # token rows from which the 8-bit layers are faster (a chunk, not a short query)

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
        self.bulk_layers: list[_Layer] | None = None  # 8-bit, for batches of BULK_ROWS and more (quantize)

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

    def quantize(self) -> bool:
        """Give large batches (an ingest's) 8-bit q|k|v and up projections, two thirds of the
        arithmetic, calibrated on CALIBRATION; vectors stay within cosine ~0.999 of float32's
        (docs/rag.md). The down projection, whose GELU input quantises worst, stays in bfloat16
        (the output projection gained nothing in 8 bits), and so do small batches (a query):
        quantising costs them more than it saves. False, and nothing changed, where torch lacks
        the kernels."""
        if not _int8_available():
            return False
        names = ("qkv", "up")
        layers = self.layers
        self.bulk_layers = None  # the calibration pass must take the recording layers, whatever its size
        self.layers = [layer._replace(**{name: _InputRange(getattr(layer, name)) for name in names})
                       for layer in layers]
        try:
            self.encode(list(CALIBRATION))
            # q|k|v in float32: attention reads it so, and the kernel writes it for free.
            self.bulk_layers = [layer._replace(qkv=_Int8Linear(layer.qkv, seen.qkv.maximum, torch.float32),
                                               up=_Int8Linear(layer.up, seen.up.maximum))
                                for layer, seen in zip(layers, self.layers, strict=True)]
        finally:
            self.layers = layers
        return True

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
        layers = self.bulk_layers if self.bulk_layers and len(ids) >= self.BULK_ROWS else self.layers
        for layer in layers:
            qkv = layer.qkv(x).float().view(len(ids), 3, heads, -1)
            parts = torch.split(qkv, lengths) if len(lengths) > 1 else (qkv,)
            attended = torch.cat([self._attention(part) for part in parts])
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


# Text for the 8-bit path's calibration: BERT's outlier channels are the same whatever it reads,
# so a few kinds of ordinary text (prose, a question, code, markup, numbers) show them.
CALIBRATION = (
    "Install the package, then run the migrations before you start the development server.",
    "How do I change the password of an account that was created by an administrator?",
    "def save(self, *args, **kwargs):\n    self.slug = slugify(self.title)\n    super().save(*args, **kwargs)",
    "## Configuration\n\nSet `DEBUG = False` in production and list the hosts in `ALLOWED_HOSTS`.",
    "The invoice of 12 March 2024 lists 3 items for a total of 1,249.50 EUR, VAT included.",
    "Thanks! That worked. Could you also explain why the cache was not cleared after the update?",
    "The kernel schedules threads on every CPU; interrupts are balanced unless irqbalance is off.",
    "<p>See the <a href=\"/docs/\">documentation</a> for the full list of options.</p>",
    "SELECT name, COUNT(*) FROM orders WHERE status = 'paid' GROUP BY name ORDER BY 2 DESC;",
    "Paris is the capital of France. The Seine runs through the city from east to west.",
    "Error: connection refused (errno 111) while contacting 10.0.0.12:5432 after 3 retries.",
    ("Templates inherit from a base layout: blocks are overridden, and the rest is kept as it is. "
     "A context processor adds variables to every template rendered with a request."),
)


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
