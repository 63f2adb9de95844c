"""The bundled embedder: the packed encoder gives sentence-transformers' vectors, one text or a batch."""

from __future__ import annotations

import numpy as np
import pytest

from conduit.backends import bert_packed
from conduit.backends.bert_packed import PackedBert
from conduit.backends.embeddings import LocalEmbedder

TEXTS = ["Hi", "How do I reset my password?", "ünïcödé — 東京 and an emoji 🎉",
         "Django's ORM: select_related or prefetch_related, and when to use which? " * 3,
         "a word repeated well past the model's 256-token input limit " * 60]


@pytest.fixture(scope="module")
def float32_model():
    embedder = LocalEmbedder(dtype="float32")
    return embedder._load()


@pytest.mark.parametrize("packed", [True, False], ids=["onednn-packed", "plain-linear"])
def test_packed_encoder_matches_sentence_transformers(float32_model, packed: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not packed:  # what a torch without oneDNN's packed linear runs
        monkeypatch.setattr(bert_packed, "_packed", lambda weight: None)
    encoder = PackedBert.from_sentence_transformer(float32_model)
    assert encoder is not None
    if not packed:
        assert all(layer.up.packed is None for layer in encoder.layers)
    reference = float32_model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, batch_size=1)
    for ours in (np.concatenate([encoder.encode([text]) for text in TEXTS]), encoder.encode(TEXTS)):
        assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert float(np.min(np.sum(ours * reference, axis=1))) > 0.99999


def test_a_batch_larger_than_one_forward_keeps_its_order(float32_model) -> None:
    encoder = PackedBert.from_sentence_transformer(float32_model)
    rng = np.random.default_rng(7)
    words = ["the", "model", "reads", "word", "pieces", "of", "every", "chunk", "and", "its", "section", "heading"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 120)))) for _ in range(2 * encoder.BATCH + 5)]
    reference = float32_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    ours = encoder.encode(texts)
    assert float(np.min(np.sum(ours * reference, axis=1))) > 0.99999
    assert encoder.encode([]).shape == (0, 384)


def test_a_model_without_mean_pooling_gets_no_fast_path(float32_model) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling

    cls_pooled = SentenceTransformer(modules=[float32_model[0], Pooling(384, pooling_mode="cls"), float32_model[2]],
                                     device="cpu")
    assert PackedBert.from_sentence_transformer(cls_pooled) is None


def test_one_text_and_a_batch_agree() -> None:
    embedder = LocalEmbedder()
    batch = embedder.encode(TEXTS)
    alone = np.concatenate([embedder.encode([text]) for text in TEXTS])
    assert float(np.min(np.sum(alone * batch, axis=1))) > 0.998
