"""Dense (hnswlib) and sparse (BM25) indexes and the ChunkIndex that keeps them together:
incremental adds and deletes, filtered search, save/load and crash recovery, threads."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from conduit.rag.dense import DenseIndex
from conduit.rag.index import ChunkIndex
from conduit.rag.snapshot import IndexCorrupt
from conduit.rag.sparse import SparseIndex, Tokenizer

DIM = 384


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: neighbourhoods like sentence embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM))
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, DIM)) * 0.08
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    sims = vectors @ query
    return ids[np.argsort(-sims, kind="stable")[:k]].tolist()


# ---------------------------------------------------------------- dense


def test_dense_finds_exact_neighbours_under_arbitrary_ids() -> None:
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 1_000_000  # rowids: sparse and large
    index = DenseIndex()
    index.add(ids, vectors)  # more than the initial capacity: the graph grows
    assert len(index) == 3000
    for q in range(0, 3000, 300):
        found, sims = index.search(vectors[q], 10)
        assert found.tolist() == exact_top(ids, vectors, vectors[q], 10)
        assert found[0] == ids[q] and sims[0] == pytest.approx(1.0, abs=1e-5)
        assert np.all(np.diff(sims) <= 1e-6)


def test_dense_incremental_adds_and_deletes_match_a_fresh_index() -> None:
    vectors = clustered(2000, seed=1)
    ids = np.arange(2000, dtype=np.int64)
    index = DenseIndex()
    for start in range(0, 2000, 250):
        index.add(ids[start:start + 250], vectors[start:start + 250])
    deleted = ids[::3]
    assert index.delete(deleted.tolist() + [99_999]) == len(deleted)  # unknown ids ignored
    index.add(ids[::6], vectors[::6])  # half the deleted ones come back (into freed slots)
    alive = np.ones(2000, bool)
    alive[::3] = False
    alive[::6] = True
    assert sorted(index.ids().tolist()) == ids[alive].tolist()
    for q in range(0, 2000, 97):
        found, _ = index.search(vectors[q], 20)
        assert not np.isin(found, ids[~alive]).any()
        expected = exact_top(ids[alive], vectors[alive], vectors[q], 20)
        assert len(set(found.tolist()) & set(expected)) >= 19


def test_dense_replacing_an_id_moves_it() -> None:
    vectors = clustered(200, seed=2)
    index = DenseIndex()
    index.add(range(200), vectors)
    index.add([5], vectors[150:151])  # id 5 now holds vector 150's contents
    found, _ = index.search(vectors[150], 2)
    assert set(found.tolist()) == {5, 150}
    assert 5 not in index.search(vectors[5], 3)[0].tolist()


@pytest.mark.parametrize("allowed_count", [3, 40, 900, 2500])
def test_dense_filtered_search_returns_k_allowed_results(allowed_count: int) -> None:
    vectors = clustered(3000, seed=3)
    ids = np.arange(3000, dtype=np.int64)
    index = DenseIndex(exact_scan_limit=500)  # 900 and 2500 take the graph path, 3 and 40 not
    index.add(ids, vectors)
    index.delete(range(0, 3000, 5))
    allowed = np.sort(np.random.default_rng(allowed_count).choice(3000, allowed_count, False))
    live_allowed = allowed[allowed % 5 != 0]
    for q in (1, 777, 2999):
        found, _ = index.search(vectors[q], 10, allowed)
        assert len(found) == min(10, len(live_allowed))
        assert np.isin(found, live_allowed).all()
        expected = exact_top(live_allowed, vectors[live_allowed], vectors[q], 10)
        assert len(set(found.tolist()) & set(expected)) >= len(expected) - 1


def test_dense_similarities_and_empty_cases() -> None:
    vectors = clustered(10, seed=4)
    index = DenseIndex()
    assert index.search(vectors[0], 5)[0].size == 0
    index.add(range(10), vectors)
    assert index.search(vectors[0], 50)[0].size == 10  # k above the count: all of them
    sims = index.similarities(vectors[0] * 3, [0, 4, 12345])
    assert sims[0] == pytest.approx(1.0, abs=1e-3)
    assert sims[1] == pytest.approx(float(vectors[4] @ vectors[0]), abs=1e-3)
    assert math.isnan(sims[2])


def test_dense_save_load_roundtrip_and_keeps_taking_changes(tmp_path: Path) -> None:
    vectors = clustered(1500, seed=5)
    index = DenseIndex()
    index.add(range(1500), vectors)
    index.delete(range(0, 1500, 2))
    index.save(tmp_path / "dense", watermark=42)
    loaded = DenseIndex.load(tmp_path / "dense")
    assert loaded.saved_meta["watermark"] == 42 and loaded.saved_meta["count"] == 750
    assert sorted(loaded.ids().tolist()) == list(range(1, 1500, 2))
    for q in (1, 301, 1499):
        assert loaded.search(vectors[q], 10)[0].tolist() == index.search(vectors[q], 10)[0].tolist()
    loaded.add([0], vectors[:1])
    loaded.delete([1])
    assert loaded.search(vectors[0], 1)[0].tolist() == [0]
    assert 1 not in loaded.search(vectors[1], 10)[0].tolist()


def test_dense_load_refuses_damaged_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(IndexCorrupt):
        DenseIndex.load(tmp_path / "nothing-here")
    index = DenseIndex()
    index.add(range(100), clustered(100))
    index.save(tmp_path / "dense")
    graph = tmp_path / "dense" / "graph.bin"
    graph.write_bytes(graph.read_bytes()[:-100])  # a save cut short
    with pytest.raises(IndexCorrupt):
        DenseIndex.load(tmp_path / "dense")


# ---------------------------------------------------------------- sparse

CORPUS = {
    10: "The kernel scheduler balances runnable tasks across CPUs.",
    11: "Tasks that sleep are removed from the run queue by the scheduler.",
    12: "Block devices queue I/O requests; the elevator merges adjacent requests.",
    13: "Memory barriers order loads and stores between CPUs.",
    14: "The OOM killer picks a task to kill when memory runs out.",
    15: "Network drivers use NAPI to poll for received packets.",
}


def test_tokenizer_lowercases_drops_stop_words_and_stems() -> None:
    tokenize = Tokenizer()
    assert tokenize("The Running DOGS are running") == ["run", "dog", "run"]
    assert tokenize("max_length of the café") == ["max", "length", "café"]
    assert Tokenizer(stem=False)("Running dogs") == ["running", "dogs"]


def test_bm25_scores_match_the_formula() -> None:
    index = SparseIndex(k1=1.2, b=0.75)
    index.add(list(CORPUS), list(CORPUS.values()))
    found, scores = index.search("scheduler tasks", 10)
    tokenize = Tokenizer()
    docs = {i: tokenize(t) for i, t in CORPUS.items()}
    avg = sum(map(len, docs.values())) / len(docs)

    def bm25(doc: list[str]) -> float:
        total = 0.0
        for term in ("schedul", "task"):
            df = sum(term in d for d in docs.values())
            tf = doc.count(term)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            total += idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(doc) / avg))
        return total

    expected = sorted(((bm25(d), i) for i, d in docs.items() if bm25(d) > 0), reverse=True)
    assert found.tolist() == [i for _, i in expected]
    assert scores.tolist() == pytest.approx([s for s, _ in expected], rel=1e-5)


def test_bm25_incremental_equals_fresh_build_after_deletes_and_replacements() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{n}" for n in range(300)]
    texts = {i: " ".join(rng.choice(words, rng.integers(3, 40))) for i in range(1200)}
    incremental = SparseIndex()
    for start in range(0, 1200, 37):  # many small batches: many merges
        batch = list(range(start, min(start + 37, 1200)))
        incremental.add(batch, [texts[i] for i in batch])
        incremental.delete(range(start, start + 37, 4))
    replaced = {i: texts[i + 1] for i in range(1, 1200, 50)}
    incremental.add(list(replaced), list(replaced.values()))
    survivors = {i: replaced.get(i, t) for i, t in texts.items() if i % 37 % 4 or i in replaced}
    fresh = SparseIndex()
    fresh.add(list(survivors), list(survivors.values()))
    assert sorted(incremental.ids().tolist()) == sorted(survivors)
    for query in ("w1 w2", "w17 w200 w299", "w5", "nothing"):
        a_ids, a_scores = incremental.search(query, 25)
        b_ids, b_scores = fresh.search(query, 25)
        assert a_scores.tolist() == pytest.approx(b_scores.tolist(), rel=1e-5)
        assert set(a_ids.tolist()) <= set(survivors)
        assert dict(zip(a_ids.tolist(), a_scores.tolist(), strict=True)) == \
            pytest.approx(dict(zip(b_ids.tolist(), b_scores.tolist(), strict=True)), rel=1e-5)


def test_bm25_deleted_never_returned_and_allowed_ids_are_exact() -> None:
    index = SparseIndex()
    index.add(list(CORPUS), list(CORPUS.values()))
    index.delete([10])
    assert 10 not in index.search("scheduler", 10)[0].tolist()
    assert index.search("scheduler", 10)[0].tolist() == [11]
    assert index.search("requests queue", 10, allowed_ids=np.array([11]))[0].tolist() == [11]
    assert index.search("requests queue", 10, allowed_ids=np.array([], np.int64))[0].size == 0
    assert index.search("the of and", 10)[0].size == 0  # only stop words


def test_bm25_save_load_roundtrip(tmp_path: Path) -> None:
    index = SparseIndex()
    index.add(list(CORPUS), list(CORPUS.values()))
    index.delete([12])
    index.save(tmp_path / "sparse", watermark=7)
    loaded = SparseIndex.load(tmp_path / "sparse")
    assert loaded.saved_meta["count"] == 5 and len(loaded) == 5
    for query in ("queue", "memory cpus", "packets"):
        a, b = index.search(query, 5), loaded.search(query, 5)
        assert a[0].tolist() == b[0].tolist()
        assert a[1].tolist() == pytest.approx(b[1].tolist())
    loaded.add([12], ["a brand new text about queues"])
    assert loaded.search("brand", 5)[0].tolist() == [12]
    with pytest.raises(IndexCorrupt):  # an index stemmed differently must be rebuilt
        SparseIndex.load(tmp_path / "sparse", Tokenizer(stem=False))


# ---------------------------------------------------------------- ChunkIndex


def _chunks(n: int, seed: int = 0,
            ) -> tuple[list[int], np.ndarray, list[str], list[int], list[dict]]:
    ids = list(range(100, 100 + n))
    texts = [f"chunk {i} about topic{i % 7} and subject{i % 11}" for i in ids]
    attributes = [{"lang": "en" if i % 2 else "fr", "year": 2000 + i % 20} for i in ids]
    return ids, clustered(n, seed), texts, [i // 10 for i in ids], attributes


def test_chunk_index_save_load_and_diff_recovery(tmp_path: Path) -> None:
    ids, vectors, texts, documents, attributes = _chunks(300)
    index = ChunkIndex()
    index.add(ids, vectors, texts, documents, attributes)
    assert sorted(index.delete_documents([10]).tolist()) == list(range(100, 110))
    index.watermark = 399
    index.save(tmp_path / "index")
    loaded = ChunkIndex.load(tmp_path / "index")
    assert loaded.watermark == 399 and len(loaded) == 290
    assert loaded.ids().tolist() == list(range(110, 400))
    # The database moved on after the save: chunks 400-409 added, 110-119 deleted.
    to_add, to_delete = loaded.diff(list(range(120, 410)))
    assert to_add.tolist() == list(range(400, 410)) and to_delete.tolist() == list(range(110, 120))
    loaded.dense.delete([200])  # a part that lost a chunk gets it re-added whole
    assert loaded.diff(list(range(110, 400)))[0].tolist() == [200]


def test_chunk_index_refuses_parts_of_different_saves(tmp_path: Path) -> None:
    ids, vectors, texts, documents, attributes = _chunks(50)
    index = ChunkIndex()
    index.add(ids, vectors, texts, documents, attributes)
    index.save(tmp_path / "a")
    index.delete([100])
    index.save(tmp_path / "b")
    (tmp_path / "a" / "sparse").rename(tmp_path / "a" / "old-sparse")
    (tmp_path / "b" / "sparse").rename(tmp_path / "a" / "sparse")
    with pytest.raises(IndexCorrupt):
        ChunkIndex.load(tmp_path / "a")


def test_chunk_index_concurrent_writers_and_searchers() -> None:
    ids, vectors, texts, documents, attributes = _chunks(2000, seed=9)
    index = ChunkIndex()
    index.add(ids[:1000], vectors[:1000], texts[:1000], documents[:1000], attributes[:1000])
    deleted: set[int] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for start in range(1000, 2000, 50):
                sl = slice(start, start + 50)
                index.add(ids[sl], vectors[sl], texts[sl], documents[sl], attributes[sl])
                gone = ids[start - 1000:start - 1000 + 25]
                index.delete(gone)
                deleted.update(gone)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            done.set()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                before = set(deleted)  # deleted before this search started
                q = vectors[rng.integers(0, 2000)]
                found, _ = index.dense.search(q, 10)
                hits, _ = index.sparse.search(f"topic{rng.integers(0, 7)}", 10)
                assert not before & set(found.tolist()) and not before & set(hits.tolist())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer)] + \
        [threading.Thread(target=searcher, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(index) == 2000 - len(deleted)
    assert index.ids().tolist() == sorted(set(ids) - deleted)
