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

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

# torch.quantize_per_tensor is deprecated with torch's quantised dtypes, but it is the one
# vectorised quantiser torch has (the decomposed op is 10x slower); in a torch without it,
# _int8_available() is False and the 8-bit layers stay off.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)


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


class _Quantized(NamedTuple):
    """Activations in 8 bits, value = scale * (values - zero_point), and in float32 the few
    channels whose range would have cost the rest their resolution."""

    values: torch.Tensor  # uint8
    scale: float
    zero_point: int
    outliers: torch.Tensor | None = None


class _Int8Linear:
    """y = x W^T + b with W in 8 bits per output channel, through oneDNN's u8 x s8 kernels: twice
    bfloat16's products per cycle on this VM (~800 against ~425 G/s).

    A float input is quantised on each call with one scale for the batch. BERT's activations have
    a few channels far larger than the rest; one scale for all of them would leave the others a
    handful of levels, so part of each channel's range moves into the weights (SmoothQuant, alpha
    0.75), from maxima seen on calibration text.

    With `output_range` the kernel writes 8 bits itself (after the GELU), on a fixed scale over
    that range, for the next 8-bit layer to read as they are: no pass over the 4x wider
    activations between the up and down projections. The GELU's output cannot be smoothed
    (it is not linear), so its outlier channels, one to three per layer and up to 5x the others,
    leave the 8 bits: this layer computes them in float32 (`float_outputs`) and the next one
    multiplies them in float32 (`float_inputs`), a few columns of its weight."""

    ALPHA = 0.75

    def __init__(self, linear: _Linear, input_max: torch.Tensor | None, out_dtype: torch.dtype = torch.bfloat16,
                 output_range: tuple[float, float] | None = None, float_outputs: torch.Tensor | None = None,
                 float_inputs: torch.Tensor | None = None) -> None:
        weight, bias = linear.weight.float(), linear.bias.float().clone()
        self.unsmooth = None
        if input_max is not None:
            smooth = (input_max.float().clamp(min=1e-5) ** self.ALPHA
                      / weight.abs().amax(0).clamp(min=1e-5) ** (1 - self.ALPHA))
            weight, self.unsmooth = weight * smooth, 1 / smooth
        self.outlier_layer = self.outlier_weight = None
        if float_outputs is not None:  # computed on the side; 8 bits of zeros (GELU(0) = 0) in the main product
            self.outlier_layer = _Linear(linear.weight.float()[float_outputs], bias[float_outputs], linear.gelu)
            weight[float_outputs], bias[float_outputs] = 0, 0
        if float_inputs is not None:
            self.outlier_weight = weight[:, float_inputs].T.to(out_dtype).contiguous()
            weight[:, float_inputs] = 0
        self.weight_scale = (weight.abs().amax(1) / 127).clamp(min=1e-8)
        self.weight = torch.ops.onednn.qlinear_prepack((weight / self.weight_scale[:, None]).round().to(torch.int8),
                                                       None)
        self.zero_points = torch.zeros(len(weight), dtype=torch.int64)
        self.bias = bias
        self.post_op = ("gelu", "none") if linear.gelu else ("none", "")
        self.out_dtype = out_dtype
        self.output: tuple[float, int, torch.dtype] | None = None  # an 8-bit output's scale and zero point
        if output_range is not None:
            low, high = min(output_range[0], 0.0), output_range[1]
            scale = max(high - low, 1e-6) / 255
            self.output = (scale, round(-low / scale), torch.uint8)

    def __call__(self, x: torch.Tensor | _Quantized) -> torch.Tensor | _Quantized:
        if isinstance(x, _Quantized):
            quantized = x
        else:
            quantized = _quantize(torch.mul(x, self.unsmooth))  # float32 whatever x is
        scale, zero_point, out_dtype = self.output or (1.0, 0, self.out_dtype)
        y = torch.ops.onednn.qlinear_pointwise(quantized.values, quantized.scale, quantized.zero_point, self.weight,
                                               self.weight_scale, self.zero_points, self.bias, scale, zero_point,
                                               out_dtype, self.post_op[0], [], self.post_op[1])
        if self.output is not None:
            outliers = None if self.outlier_layer is None else self.outlier_layer(x).to(x.dtype)
            return _Quantized(y, scale, zero_point, outliers)
        if quantized.outliers is not None:
            y.addmm_(quantized.outliers, self.outlier_weight)
        return y


def _quantize(x: torch.Tensor) -> _Quantized:
    """One scale for the whole tensor, zero at 128. torch's own quantiser is one vectorised pass
    (the float ops it replaces took four); its bytes are read as a plain uint8 tensor, uncopied."""
    low, high = torch.aminmax(x)
    scale = max(-float(low), float(high), 1e-6) / 127
    quantised = torch.quantize_per_tensor(x, scale, 128, torch.quint8)
    values = torch.empty(0, dtype=torch.uint8).set_(quantised.untyped_storage(), 0, x.shape, x.stride())
    return _Quantized(values, scale, 128)


class _InputRange:
    """A linear layer that notes the largest magnitude of each input channel it sees, and the
    smallest input overall."""

    def __init__(self, linear: _Linear) -> None:
        self.linear, self.maximum, self.low = linear, None, float("inf")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.float().abs().amax(0)
        self.maximum = seen if self.maximum is None else torch.maximum(self.maximum, seen)
        self.low = min(self.low, float(x.min()))
        return self.linear(x)


def _int8_available() -> bool:
    """Whether this torch has every 8-bit kernel the bulk layers use, with the results they expect."""
    try:
        identity, channel = _Linear(torch.eye(16), torch.zeros(16)), torch.tensor([3])
        first = _Int8Linear(identity, torch.ones(16), output_range=(-1.0, 1.0), float_outputs=channel)
        second = _Int8Linear(identity, None, torch.float32, float_inputs=channel)
        x = torch.linspace(-1, 1, 32).view(2, 16)
        return torch.allclose(second(first(x)), x, atol=0.02)
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
    BULK_MIN_TOKENS = 8  # word pieces of a text for them: a mean over fewer averages out less 8-bit error
    # The 8-bit GELU output: GELU_OUTLIERS channels, those of the largest values in calibration, pass
    # in float32, and the 8 bits span the rest's calibrated range times GELU_HEADROOM. Measured on
    # 2,000 chunks each of Django's and Linux's documentation against float32 (worst cosine):
    # 4 and 1.0 gave 0.9952 and 0.9929 (text beyond the calibrated range), 8 and 1.25 0.9979 and
    # 0.9948, 8 and 2.0 0.9973 and coarser steps; a range measured per batch was no closer.
    GELU_OUTLIERS = 8
    GELU_HEADROOM = 1.25

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
        # baddbmm's input, ignored with beta=0, in each dtype attention runs in
        self._no_bias = {dtype: torch.zeros((), dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
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
        """Give large batches (an ingest's) 8-bit q|k|v, up and down projections, 90% of the
        linear layers' arithmetic, calibrated on CALIBRATION; vectors stay within cosine ~0.999
        of float32's on average, 0.995 at worst (docs/rag.md). The output projection gained
        nothing in 8 bits and stays in bfloat16, and so do small batches (a query) and short
        texts: quantising costs them more than it saves. False, and nothing changed, where torch
        lacks the kernels."""
        if not _int8_available():
            return False
        names = ("qkv", "up", "down")
        layers = self.layers
        self.bulk_layers = None  # the calibration pass must take the recording layers, whatever its size
        self.layers = [layer._replace(**{name: _InputRange(getattr(layer, name)) for name in names})
                       for layer in layers]
        try:
            self.encode(list(CALIBRATION))
            self.bulk_layers = [self._quantized(layer, seen) for layer, seen in zip(layers, self.layers, strict=True)]
        finally:
            self.layers = layers
        return True

    def _quantized(self, layer: _Layer, seen: _Layer) -> _Layer:
        # q|k|v in bfloat16, which attention reads (the kernel writes it for free). The up
        # projection hands the down projection 8 bits over the GELU's calibrated range, less the
        # GELU_OUTLIERS channels of the largest values, which pass in float32.
        gelu = seen.down
        order = gelu.maximum.argsort(descending=True)
        outliers, rest = order[:self.GELU_OUTLIERS], order[self.GELU_OUTLIERS:]
        gelu_range = (gelu.low, gelu.maximum[rest].max().item() * self.GELU_HEADROOM)
        return layer._replace(
            qkv=_Int8Linear(layer.qkv, seen.qkv.maximum),
            up=_Int8Linear(layer.up, seen.up.maximum, output_range=gelu_range, float_outputs=outliers),
            down=_Int8Linear(layer.down, None, float_inputs=outliers))

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text, in the order given."""
        if not texts:
            return np.empty((0, self.hidden), dtype=np.float32)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        vectors = np.empty((len(texts), self.hidden), dtype=np.float32)
        # Texts of similar length together keep a batch's rows (and its attention loop) even;
        # short ones apart, as they never take the 8-bit layers.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        short = sum(len(ids[i]) < self.BULK_MIN_TOKENS for i in order)
        with torch.inference_mode():
            for part in (order[:short], order[short:]):
                for start in range(0, len(part), self.BATCH):
                    batch = part[start:start + self.BATCH]
                    lengths = [len(ids[i]) for i in batch]
                    rows = torch.tensor([token for i in batch for token in ids[i]])
                    vectors[batch] = self._encode(rows, lengths).numpy()
        return vectors

    def _encode(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        hidden, heads = self.hidden, self.heads
        positions = torch.cat([torch.arange(n) for n in lengths])
        x = self.words[ids] + self.positions[positions] + self.token_type
        x = F.layer_norm(x, (hidden,), *self.embedding_norm, self.eps)
        bulk = self.bulk_layers and len(ids) >= self.BULK_ROWS and min(lengths) >= self.BULK_MIN_TOKENS
        layers = self.bulk_layers if bulk else self.layers
        for layer in layers:
            # The 8-bit q|k|v writes bfloat16 for attention; otherwise attention runs in float32
            qkv = layer.qkv(x).to(torch.bfloat16 if bulk else torch.float32).view(len(ids), 3, heads, -1)
            parts = torch.split(qkv, lengths) if len(lengths) > 1 else (qkv,)
            attended = torch.cat([self._attention(part) for part in parts])
            x = F.layer_norm(layer.out(attended) + x, (hidden,), *layer.attention_norm, self.eps)
            x = F.layer_norm(layer.down(layer.up(x)) + x, (hidden,), *layer.output_norm, self.eps)
        pooled = torch.stack([rows.mean(0) for rows in torch.split(x.float(), lengths)])
        return F.normalize(pooled, dim=-1)

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """One text's self-attention over its rows, [n, 3, heads, d] -> [n, hidden], in qkv's dtype
        with the softmax in float32.

        By hand: for a 12 x 17 x 17 attention SDPA's bfloat16 math path spends more on dtype round
        trips than on arithmetic (everything but the linear layers took 1.4-1.7 ms of a 17-token
        question with it, 1.0 ms like this in float32; same vectors, cosine 0.99998), and on a
        padded batch or through its flash kernel SDPA was no faster than this loop. In bfloat16
        (the 8-bit path's) the two products take half float32's time at ~190 rows."""
        n = len(qkv)
        q, k, v = qkv.permute(1, 2, 0, 3)
        scores = torch.baddbmm(self._no_bias[qkv.dtype], q, k.transpose(1, 2), beta=0.0, alpha=self.scale)
        weights = scores.softmax(-1, dtype=torch.float32).to(qkv.dtype)
        return (weights @ v).transpose(0, 1).reshape(n, self.hidden)


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
