"""Drift of retrieval traffic per (collection, model): where the queries point, and how well
the index answers them, compared with the traffic the collection first saw.

Two signals, because each misses what the other sees. The centroid of the query embeddings
moves when users start asking about something else (a new product, a new language) even if
the index still finds good matches; the mean top-1 retrieval score drops when the questions
stay put but the documents stop answering them (a stale or badly re-ingested collection).

The first `window` queries of a key are its baseline; every `window` queries after that close a
window into a `DriftPoint`. Only running sums are kept, never the vectors themselves, and the
number of keys and of points per key are capped, so memory is bounded whatever the traffic.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class DriftPoint:
    """One closed window of a key, compared with that key's baseline."""

    collection: str
    model: str
    t: float  # when the window closed, epoch seconds
    centroid_distance: float  # 1 - cosine(window centroid, baseline centroid), in [0, 2]
    mean_top_score: float | None  # None when no query of the window reported a score
    baseline_top_score: float | None
    queries: int
    drifted: bool

    def as_json(self) -> dict[str, Any]:
        """The point as /admin/drift shows it: the key is already given by the series."""
        return {"t": self.t, "centroid_distance": self.centroid_distance,
                "mean_top_score": self.mean_top_score,
                "baseline_top_score": self.baseline_top_score,
                "queries": self.queries, "drifted": self.drifted}


@dataclass
class _Sums:
    """Running sums of a window: O(dim) memory however many queries it holds."""

    vector: np.ndarray
    queries: int = 0
    score_sum: float = 0.0
    scores: int = 0  # queries that reported a top score (a search may return nothing)

    def add(self, unit: np.ndarray, top_score: float | None) -> None:
        self.vector += unit
        self.queries += 1
        if top_score is not None:
            self.score_sum += top_score
            self.scores += 1

    def mean_score(self) -> float | None:
        return self.score_sum / self.scores if self.scores else None

    def to_json(self) -> dict[str, Any]:
        # The centroid rather than the sum, so a snapshot reads the way the docs describe it.
        centroid = self.vector / self.queries if self.queries else self.vector
        return {"centroid": [float(x) for x in centroid], "queries": self.queries,
                "mean_top_score": self.mean_score(), "scores": self.scores}

    @classmethod
    def from_json(cls, data: dict[str, Any], dim: int) -> _Sums:
        centroid = np.asarray(data["centroid"], dtype=np.float64)
        queries, scores = int(data["queries"]), int(data["scores"])
        mean = data["mean_top_score"]
        if centroid.shape != (dim,) or not np.all(np.isfinite(centroid)):
            raise ValueError(f"centroid must be {dim} finite numbers")
        if queries < 0 or not 0 <= scores <= queries or (scores and mean is None):
            raise ValueError("inconsistent query or score counts")
        return cls(centroid * queries, queries, float(mean) * scores if scores else 0.0, scores)


@dataclass
class _Key:
    dim: int
    baseline: _Sums
    current: _Sums
    points: deque[DriftPoint] = field(default_factory=deque)


class DriftMonitor:
    """Drift of query embeddings and retrieval scores, per (collection, model).

    `observe` is called once per retrieval from the event loop and `series` from request
    handlers, possibly on other threads, so every access to the state goes through one lock.
    `on_drift` is called outside that lock, so a handler may read the monitor; it is called when
    a key starts drifting, not for every drifted window, so a lasting shift raises one event.
    """

    def __init__(self, window: int = 100, threshold: float = 0.2, score_drop: float = 0.15,
                 history: int = 288, on_drift: Callable[[DriftPoint], None] | None = None,
                 clock: Callable[[], float] = time.time, max_keys: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not 0.0 <= threshold <= 2.0:
            raise ValueError(f"threshold is a cosine distance in [0, 2], got {threshold}")
        if score_drop < 0:
            raise ValueError(f"score_drop must not be negative, got {score_drop}")
        if history < 1 or max_keys < 1:
            raise ValueError("history and max_keys must be at least 1")
        self.window = window
        self.threshold = threshold
        self.score_drop = score_drop
        self.history = history
        self.max_keys = max_keys
        self.on_drift = on_drift
        self.clock = clock
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()

    def observe(self, collection: str, model: str, embedding: np.ndarray,
                top_score: float | None) -> DriftPoint | None:
        """Count one query; return the point of the window it closed, if it closed one."""
        unit = _unit(embedding)
        if top_score is not None:
            top_score = float(top_score)
            if not math.isfinite(top_score):
                raise ValueError(f"top_score must be finite, got {top_score}")
        event = None
        with self._lock:
            key = self._key(collection, model, unit.shape[0])
            if key.baseline.queries < self.window:
                key.baseline.add(unit, top_score)
                return None
            key.current.add(unit, top_score)
            if key.current.queries < self.window:
                return None
            point = self._close(collection, model, key)
            if point.drifted and not (key.points and key.points[-1].drifted):
                event = point
            key.points.append(point)
        if event is not None and self.on_drift is not None:
            try:
                self.on_drift(event)
            except Exception:  # an operator hook must never fail the request that observed it
                log.exception("drift handler failed for %s/%s", collection, model)
        return point

    def series(self, collections: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The `data` of GET /admin/drift, sorted by (collection, model).

        `collections` restricts it to a tenant's own collections. A key still gathering its
        baseline is listed with no points, so an operator sees that it is monitored.
        """
        with self._lock:
            items = [(name, [p.as_json() for p in key.points])
                     for name, key in self._keys.items()
                     if collections is None or name[0] in collections]
        return [{"collection": c, "model": m, "points": points} for (c, m), points in sorted(items)]

    def forget(self, collection: str, model: str) -> bool:
        """Drop a key, so that its next queries form a new baseline (after an intended change
        such as re-ingesting the collection, whose drift is then no news)."""
        with self._lock:
            return self._keys.pop((collection, model), None) is not None

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot, so that a restart does not throw away the baselines."""
        with self._lock:
            keys = [{"collection": c, "model": m, "dim": key.dim,
                     "baseline": key.baseline.to_json(), "current": key.current.to_json(),
                     "points": [asdict(p) for p in key.points]}
                    for (c, m), key in self._keys.items()]
        return {"version": STATE_VERSION, "keys": keys}

    def load(self, state: dict[str, Any]) -> None:
        """Replace the whole state with a snapshot from `state()`; all or nothing.

        The monitor's own settings (window, threshold, caps) stay those of the constructor:
        the snapshot carries measurements, not configuration.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a drift state of version {STATE_VERSION}")
        keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()
        try:
            for item in state["keys"][-self.max_keys:]:  # the most recently seen ones
                collection, model = str(item["collection"]), str(item["model"])
                dim = int(item["dim"])
                if dim < 1:
                    raise ValueError(f"dimension must be positive, got {dim}")
                points = deque((DriftPoint(**p) for p in item["points"]), maxlen=self.history)
                keys[collection, model] = _Key(dim, _Sums.from_json(item["baseline"], dim),
                                               _Sums.from_json(item["current"], dim), points)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed drift state: {exc!r}") from exc
        with self._lock:
            self._keys = keys

    def _key(self, collection: str, model: str, dim: int) -> _Key:
        name = (collection, model)
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            key = _Key(dim, _Sums(np.zeros(dim)), _Sums(np.zeros(dim)),
                       deque(maxlen=self.history))
            self._keys[name] = key
        elif key.dim != dim:
            raise ValueError(f"embedding of dimension {dim} for collection {collection!r} and "
                             f"model {model!r}, whose queries so far have dimension {key.dim}")
        self._keys.move_to_end(name)
        return key

    def _close(self, collection: str, model: str, key: _Key) -> DriftPoint:
        window, baseline = key.current, key.baseline
        distance = _cosine_distance(window.vector, baseline.vector)
        score, base_score = window.mean_score(), baseline.mean_score()
        dropped = (score is not None and base_score is not None
                   and base_score - score > self.score_drop)
        key.current = _Sums(np.zeros(key.dim))
        return DriftPoint(collection, model, float(self.clock()), distance, score, base_score,
                          window.queries, distance > self.threshold or dropped)


def _unit(embedding: np.ndarray) -> np.ndarray:
    """L2-normalised, so that a long query does not weigh more in a centroid than a short one."""
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.ndim != 1 or vector.shape[0] == 0:
        raise ValueError(f"embedding must be a non-empty 1-d vector, got shape {vector.shape}")
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("embedding must be finite and non-zero")
    return vector / norm


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    # Unit vectors pointing every which way can sum to (almost) nothing: such a window has no
    # direction, which counts as orthogonal to the baseline rather than as a division by zero.
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-12 or nb < 1e-12:
        return 1.0
    return float(np.clip(1.0 - float(a @ b) / (na * nb), 0.0, 2.0))
