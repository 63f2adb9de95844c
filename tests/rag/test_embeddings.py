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


@pytest.fixture(scope="module")
def int8_embedder() -> LocalEmbedder:
    embedder = LocalEmbedder(dtype="int8")
    embedder.encode(["load"])
    if embedder.precision != "int8+bfloat16":
        pytest.skip("this torch has no oneDNN 8-bit linear kernels")
    return embedder


PARAPHRASES = [
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
    ("The database migration failed with a foreign key error.",
     "Running migrate stops on a foreign key constraint violation."),
    ("What is the capital of Japan?", "Which city is Japan's capital?"),
    ("The train to Berlin leaves at nine in the morning.", "A morning train departs for Berlin at 9 am."),
    ("How many calories are in a banana?", "What is the calorie count of one banana?"),
    ("The kernel panicked after loading the network driver.", "Loading the NIC driver caused a kernel panic."),
    ("Sort the list of users by their signup date.", "Order the users by the date they registered."),
    ("Upload the PDF and wait until indexing completes.", "After the PDF file is uploaded, its index gets built."),
]


def test_int8_vectors_stay_close_to_float32(float32_model, int8_embedder: LocalEmbedder,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    packed = int8_embedder._packed
    assert all(isinstance(getattr(layer, name), bert_packed._Int8Linear)
               for layer in packed.bulk_layers for name in ("qkv", "up", "down"))
    assert not any(isinstance(layer.qkv, bert_packed._Int8Linear) for layer in packed.layers)  # a query's
    pairs = [text for pair in PARAPHRASES for text in pair]
    texts = pairs + TEXTS * 2  # enough token rows for the 8-bit layers
    reference = float32_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    eight_bit_calls = []
    run = bert_packed._Int8Linear.__call__
    monkeypatch.setattr(bert_packed._Int8Linear, "__call__", lambda layer, x: eight_bit_calls.append(x) or run(layer, x))
    ours = int8_embedder.encode(texts)
    assert len(eight_bit_calls) == 3 * len(packed.bulk_layers)  # one batch: all but "Hi", which is too short
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    similarity = np.sum(ours * reference, axis=1)
    assert float(similarity.min()) > 0.995 and float(similarity.mean()) > 0.998
    # Search keeps its answers: each sentence's nearest other sentence is still its paraphrase.
    partner = np.arange(len(pairs)) ^ 1
    for vectors in (reference, ours):
        scores = vectors[: len(pairs)] @ vectors[: len(pairs)].T
        scores[np.arange(len(pairs)), np.arange(len(pairs))] = -1
        assert np.array_equal(scores.argmax(1), partner)


def test_int8_falls_back_to_bfloat16_without_the_kernels(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(bert_packed, "_int8_available", lambda: False)
    embedder = LocalEmbedder(dtype="int8")
    with caplog.at_level("WARNING"):
        vectors = embedder.encode(TEXTS)
    assert embedder.precision == "bfloat16" and "bfloat16 it is" in caplog.text
    assert embedder._packed.bulk_layers is None
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
