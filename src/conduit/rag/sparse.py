"""Sparse retrieval: BM25 over an inverted index that takes adds and deletes without a rebuild.

Why our own: bm25s (the fast static library) must re-index the whole corpus after any
change; bench/rag_index.py measures that against this index.

Layout, as in Lucene: postings live in immutable *segments* (term-major CSR: for each term,
the doc slots holding it and their term frequencies). An add builds one small segment from
the batch; segments are merged like a binary counter (the newest is merged into the one
before while it is at least as large), so there are O(log n) of them and each posting is
rewritten O(log n) times. A delete only clears the doc's `alive` bit; merges drop dead
postings. Document frequencies are not stored at all: they are counted at query time over
the live postings of the query's terms, so they are exact after any delete.

Searches copy a few references under a short lock and score outside it; writers prepare new
segments outside the lock too, so a big merge never stalls a search.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conduit.rag.snapshot import IndexCorrupt, read_manifest, write_files

FORMAT = 1
_WORD = re.compile(r"[^\W_]+")  # unicode letters and digits; "_" splits snake_case names

# Common English function words: they match nearly every chunk, so they only add noise.
_STOP_WORDS_TEXT = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


class Tokenizer:
    """Lowercase, split into unicode words, drop stop words, Snowball-stem (PyStemmer).

    Without PyStemmer installed it runs unstemmed; `name` records which, and an index saved
    with one tokenizer refuses to load with another.
    """

    def __init__(self, stem: bool = True) -> None:
        self._stemmer = None
        if stem:
            try:
                import Stemmer
            except ImportError:
                pass
            else:
                self._stemmer = Stemmer.Stemmer("english")
        self.name = "v1-" + ("snowball-english" if self._stemmer else "unstemmed")

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]
        return self._stemmer.stemWords(words) if self._stemmer else words


@dataclass(frozen=True)
class _Segment:
    """Postings of a set of docs: term `t` holds slots[term_ptr[t]:term_ptr[t + 1]]."""

    term_ptr: np.ndarray  # int64, one more than the number of terms known when it was built
    slots: np.ndarray  # int32 doc slots
    term_freqs: np.ndarray  # float32
    doc_count: int

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        if term + 1 >= len(self.term_ptr):
            return _EMPTY_SLOTS, _EMPTY_FREQS
        lo, hi = self.term_ptr[term], self.term_ptr[term + 1]
        return self.slots[lo:hi], self.term_freqs[lo:hi]

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        terms = np.repeat(np.arange(len(self.term_ptr) - 1), np.diff(self.term_ptr))
        return terms, self.slots, self.term_freqs


_EMPTY_SLOTS = np.zeros(0, np.int32)
_EMPTY_FREQS = np.zeros(0, np.float32)


def _build_segment(terms: np.ndarray, slots: np.ndarray, freqs: np.ndarray, term_count: int,
                   doc_count: int) -> _Segment:
    order = np.argsort(terms, kind="stable")
    term_ptr = np.zeros(term_count + 1, np.int64)
    np.cumsum(np.bincount(terms, minlength=term_count), out=term_ptr[1:])
    return _Segment(term_ptr, slots[order].astype(np.int32), freqs[order].astype(np.float32),
                    doc_count)


class SparseIndex:
    """BM25 over integer chunk ids, Lucene's variant: a term adds
    ln(1 + (N - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * length / avg_length)).
    Scores equal bm25s's method="lucene" (bench/rag_index.py checks); each distinct query
    term counts once."""

    def __init__(self, tokenizer: Tokenizer | None = None, k1: float = 1.2,
                 b: float = 0.75) -> None:
        self.tokenizer = tokenizer or Tokenizer()
        self.k1, self.b = k1, b
        self._lock = threading.Lock()  # guards the fields below; held only briefly
        self._write_lock = threading.Lock()  # one writer at a time
        self._terms: dict[str, int] = {}
        self._segments: tuple[_Segment, ...] = ()
        self._slot_ids = np.zeros(0, np.int64)  # slot -> chunk id (dead slots keep theirs)
        self._doc_lengths = np.zeros(0, np.float32)
        self._alive = np.zeros(0, bool)
        self._slot_count = 0
        self._slot_of: dict[int, int] = {}
        self._total_length = 0.0
        self.saved_meta: dict[str, object] = {}  # the manifest it was loaded from

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, chunk_id: int) -> bool:
        return chunk_id in self._slot_of

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._slot_of, np.int64, len(self._slot_of))

    def add(self, ids: Sequence[int], texts: Sequence[str]) -> None:
        """Index texts under chunk ids; an id already present is replaced."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if len(set(ids)) != len(ids):
            raise ValueError("the same id twice in one add")
        if len(ids) == 0:
            return
        counted = [Counter(self.tokenizer(text)) for text in texts]  # the slow part: no lock
        with self._write_lock:
            self._delete([i for i in ids if i in self._slot_of])
            terms, local_docs, freqs = [], [], []
            for doc, counts in enumerate(counted):
                for term, n in counts.items():
                    terms.append(self._terms.setdefault(term, len(self._terms)))
                    local_docs.append(doc)
                    freqs.append(n)
            first = self._slot_count
            lengths = np.array([sum(c.values()) for c in counted], np.float32)
            segment = _build_segment(np.array(terms, np.int64),
                                     np.array(local_docs, np.int64) + first,
                                     np.array(freqs, np.float32), len(self._terms), len(ids))
            with self._lock:
                self._reserve(first + len(ids))
                self._slot_ids[first:first + len(ids)] = ids
                self._doc_lengths[first:first + len(ids)] = lengths
                self._alive[first:first + len(ids)] = True
                self._slot_of.update((int(i), first + n) for n, i in enumerate(ids))
                self._slot_count += len(ids)
                self._total_length += float(lengths.sum())
                self._segments = (*self._segments, segment)
            self._merge_tail()

    def delete(self, ids: Iterable[int]) -> int:
        """Forget chunk ids (unknown ones are ignored); returns how many were present."""
        with self._write_lock:
            return self._delete(ids)

    def search(self, query: str, k: int, allowed_ids: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (chunk ids, BM25 scores), best first; only docs sharing a term with the query.

        `allowed_ids` restricts the result to those chunk ids (exactly: every doc is scored).
        """
        words = set(self.tokenizer(query))
        with self._lock:
            term_ids = [self._terms[w] for w in words if w in self._terms]
            segments, alive, lengths = self._segments, self._alive, self._doc_lengths
            slot_ids, slot_count = self._slot_ids, self._slot_count
            live_docs, total_length = len(self._slot_of), self._total_length
        if not term_ids or live_docs == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = np.zeros(slot_count, np.float32)
        average_length = total_length / live_docs
        for term in term_ids:
            parts = [segment.postings(term) for segment in segments]
            slots = np.concatenate([p[0] for p in parts])
            freqs = np.concatenate([p[1] for p in parts])
            live = alive[slots]
            slots, freqs = slots[live], freqs[live]
            if len(slots) == 0:
                continue
            idf = np.log1p((live_docs - len(slots) + 0.5) / (len(slots) + 0.5))
            length_norm = self.k1 * (1 - self.b + self.b * lengths[slots] / average_length)
            scores[slots] += idf * freqs / (freqs + length_norm)
        candidates = np.flatnonzero(scores)
        if allowed_ids is not None:
            candidates = candidates[np.isin(slot_ids[candidates], allowed_ids)]
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        return slot_ids[candidates].copy(), scores[candidates]

    def save(self, directory: str | Path, **meta: object) -> None:
        """Write live docs only (slots renumbered, one segment); `meta` goes into the manifest."""
        with self._write_lock:
            with self._lock:
                live = np.flatnonzero(self._alive[:self._slot_count])
                segments, slot_count = self._segments, self._slot_count
                ids, lengths = self._slot_ids[live], self._doc_lengths[live]
                terms = list(self._terms)
            renumber = np.full(slot_count, -1, np.int64)
            renumber[live] = np.arange(len(live))
            segment = self._merged(segments, renumber, len(terms), len(live))
            used = np.flatnonzero(np.diff(segment.term_ptr))  # drop terms only dead docs had
            term_ptr = np.zeros(len(used) + 1, np.int64)
            np.cumsum(np.diff(segment.term_ptr)[used], out=term_ptr[1:])

            def write_arrays(path: Path) -> None:
                with open(path, "wb") as f:
                    np.savez(f, ids=ids, lengths=lengths, term_ptr=term_ptr,
                             slots=segment.slots, term_freqs=segment.term_freqs)

            def write_terms(path: Path) -> None:
                path.write_text(json.dumps([terms[t] for t in used], ensure_ascii=False))

            write_files(Path(directory), {"postings.npz": write_arrays, "terms.json": write_terms},
                        {"kind": "bm25", "format": FORMAT, "tokenizer": self.tokenizer.name,
                         "k1": self.k1, "b": self.b, "count": len(ids), **meta})

    @classmethod
    def load(cls, directory: str | Path, tokenizer: Tokenizer | None = None) -> SparseIndex:
        """Raises `IndexCorrupt` if the files are incomplete or from another tokenizer."""
        directory = Path(directory)
        manifest = read_manifest(directory, "bm25", FORMAT)
        index = cls(tokenizer, manifest["k1"], manifest["b"])
        if manifest["tokenizer"] != index.tokenizer.name:
            raise IndexCorrupt(f"{directory}: built with tokenizer {manifest['tokenizer']}, "
                               f"this one is {index.tokenizer.name}")
        with np.load(directory / "postings.npz") as arrays:
            ids, lengths = arrays["ids"], arrays["lengths"]
            index._segments = (_Segment(arrays["term_ptr"], arrays["slots"],
                                        arrays["term_freqs"], len(ids)),)
        terms = json.loads((directory / "terms.json").read_text())
        index._terms = {term: n for n, term in enumerate(terms)}
        index._reserve(len(ids))
        index._slot_ids[:len(ids)], index._doc_lengths[:len(ids)] = ids, lengths
        index._alive[:len(ids)] = True
        index._slot_count = len(ids)
        index._slot_of = {int(i): n for n, i in enumerate(ids)}
        index._total_length = float(lengths.sum())
        index.saved_meta = manifest
        return index

    def _delete(self, ids: Iterable[int]) -> int:
        with self._lock:
            slots = [self._slot_of.pop(int(i)) for i in ids if int(i) in self._slot_of]
            self._alive[slots] = False
            self._total_length -= float(self._doc_lengths[slots].sum())
        return len(slots)

    def _reserve(self, slot_count: int) -> None:
        """Grow the per-slot arrays (caller holds the lock); searches keep the old ones."""
        if slot_count <= len(self._alive):
            return
        capacity = max(slot_count, 2 * len(self._alive), 1024)
        for name in ("_slot_ids", "_doc_lengths", "_alive"):
            old = getattr(self, name)
            grown = np.zeros(capacity, old.dtype)
            grown[:len(old)] = old
            setattr(self, name, grown)

    def _merge_tail(self) -> None:
        """Merge the newest segment into the previous one while it is at least as large."""
        while len(self._segments) >= 2 and \
                self._segments[-1].doc_count >= self._segments[-2].doc_count:
            pair = self._segments[-2:]
            merged = self._merged(pair, None, len(self._terms), sum(s.doc_count for s in pair))
            with self._lock:
                self._segments = (*self._segments[:-2], merged)

    def _merged(self, segments: Sequence[_Segment], renumber: np.ndarray | None,
                term_count: int, doc_count: int) -> _Segment:
        """One segment with the live postings of `segments`, slots mapped through `renumber`."""
        parts = [segment.triples() for segment in segments]
        terms = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        slots = np.concatenate([p[1] for p in parts]) if parts else _EMPTY_SLOTS
        freqs = np.concatenate([p[2] for p in parts]) if parts else _EMPTY_FREQS
        keep = self._alive[slots]
        terms, slots, freqs = terms[keep], slots[keep], freqs[keep]
        if renumber is not None:
            slots = renumber[slots]
        return _build_segment(terms, slots, freqs, term_count, doc_count)
