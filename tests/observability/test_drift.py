"""DriftMonitor: the signals, the event discipline, bounded memory and snapshots."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from conduit.observability.drift import DriftMonitor, DriftPoint

DIM = 32
WINDOW = 50


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


def around(direction: np.ndarray, rng: np.random.Generator, n: int,
           spread: float = 0.6) -> np.ndarray:
    """n unit vectors scattered around a direction, like the queries of one topic."""
    dim = direction.shape[0]
    vectors = direction + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v


def feed(monitor: DriftMonitor, vectors: np.ndarray, score: float | None = 0.8,
         collection: str = "vs_a", model: str = "m",
         rng: np.random.Generator | None = None) -> list[DriftPoint]:
    rng = rng or np.random.default_rng(0)
    points = []
    for v in vectors:
        s = None if score is None else score + 0.02 * float(rng.standard_normal())
        point = monitor.observe(collection, model, v, s)
        if point is not None:
            points.append(point)
    return points


def test_same_distribution_does_not_drift() -> None:
    rng = np.random.default_rng(1)
    events: list[DriftPoint] = []
    monitor = DriftMonitor(window=WINDOW, on_drift=events.append, clock=Clock())
    points = feed(monitor, around(axis(0), rng, WINDOW * 11), rng=rng)
    assert len(points) == 10  # the first window is the baseline
    assert all(not p.drifted for p in points)
    assert max(p.centroid_distance for p in points) < 0.05
    assert all(p.queries == WINDOW for p in points)
    assert all(abs(p.mean_top_score - p.baseline_top_score) < 0.05 for p in points)
    assert events == []


def test_queries_moving_elsewhere_drift() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(window=WINDOW, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW * 2), rng=rng)
    points = feed(monitor, around(axis(1), rng, WINDOW), rng=rng)
    assert len(points) == 1 and points[0].drifted
    assert points[0].centroid_distance > 0.5
    # the scores did not change: the centroid alone said it
    assert abs(points[0].mean_top_score - points[0].baseline_top_score) < 0.05


def test_score_drop_alone_drifts() -> None:
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(window=WINDOW, score_drop=0.15, clock=Clock())
    queries = around(axis(0), rng, WINDOW * 4)
    feed(monitor, queries[:WINDOW * 2], score=0.8, rng=rng)
    small = feed(monitor, queries[WINDOW * 2:WINDOW * 3], score=0.7, rng=rng)  # a drop of 0.1
    large = feed(monitor, queries[WINDOW * 3:], score=0.5, rng=rng)
    assert not small[0].drifted
    assert large[0].drifted and large[0].centroid_distance < 0.05
    assert large[0].baseline_top_score == pytest.approx(0.8, abs=0.02)
    assert large[0].mean_top_score == pytest.approx(0.5, abs=0.02)


def test_unknown_scores_do_not_count_as_a_drop() -> None:
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(window=WINDOW, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW), score=0.9, rng=rng)
    [point] = feed(monitor, around(axis(0), rng, WINDOW), score=None, rng=rng)
    assert point.mean_top_score is None and point.baseline_top_score is not None
    assert not point.drifted


def test_one_event_per_drifting_run() -> None:
    rng = np.random.default_rng(5)
    events: list[DriftPoint] = []
    monitor = DriftMonitor(window=WINDOW, on_drift=events.append, clock=Clock())
    home, away = axis(0), axis(1)
    feed(monitor, around(home, rng, WINDOW * 2), rng=rng)  # baseline + one calm window
    run1 = feed(monitor, around(away, rng, WINDOW * 3), rng=rng)
    assert [p.drifted for p in run1] == [True, True, True]
    assert events == [run1[0]]
    calm = feed(monitor, around(home, rng, WINDOW * 2), rng=rng)
    assert [p.drifted for p in calm] == [False, False]
    assert len(events) == 1
    run2 = feed(monitor, around(away, rng, WINDOW * 2), rng=rng)
    assert events == [run1[0], run2[0]]
    assert events[1].t > events[0].t


def test_keys_are_independent_and_series_is_the_contract_shape() -> None:
    rng = np.random.default_rng(6)
    monitor = DriftMonitor(window=WINDOW, threshold=0.3, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW * 2), collection="vs_b", model="m", rng=rng)
    feed(monitor, around(axis(2), rng, WINDOW * 3), collection="vs_a", model="m", rng=rng)
    feed(monitor, around(axis(2), rng, WINDOW // 2), collection="vs_a", model="e", rng=rng)
    data = monitor.series()
    keys = [(d["collection"], d["model"]) for d in data]
    assert keys == [("vs_a", "e"), ("vs_a", "m"), ("vs_b", "m")]
    assert data[0]["points"] == []  # still gathering its baseline
    assert len(data[1]["points"]) == 2 and len(data[2]["points"]) == 1
    assert set(data[1]["points"][0]) == {"t", "centroid_distance", "mean_top_score",
                                         "baseline_top_score", "queries", "drifted"}
    assert [d["collection"] for d in monitor.series(["vs_b"])] == ["vs_b"]
    assert monitor.series([]) == []
    json.dumps({"object": "list", "threshold": monitor.threshold, "data": data})


def test_memory_is_bounded() -> None:
    rng = np.random.default_rng(7)
    monitor = DriftMonitor(window=5, history=3, max_keys=4, clock=Clock())
    for i in range(10):  # ten collections, one query each: only the four most recent are kept
        monitor.observe(f"vs_{i}", "m", around(axis(0), rng, 1)[0], 0.5)
    assert [d["collection"] for d in monitor.series()] == ["vs_6", "vs_7", "vs_8", "vs_9"]
    monitor.observe("vs_6", "m", around(axis(0), rng, 1)[0], 0.5)  # seen again: now the most recent
    monitor.observe("vs_new", "m", around(axis(0), rng, 1)[0], 0.5)
    assert [d["collection"] for d in monitor.series()] == ["vs_6", "vs_8", "vs_9", "vs_new"]

    points = feed(monitor, around(axis(0), rng, 5 * 20), collection="vs_9", rng=rng)
    assert len(points) == 19
    [series] = monitor.series(["vs_9"])
    assert [p["t"] for p in series["points"]] == [p.t for p in points[-3:]]
    # the state holds sums, not vectors: its size does not grow with the queries
    before = len(json.dumps(monitor.state()))
    feed(monitor, around(axis(0), rng, 5 * 20), collection="vs_9", rng=rng)
    assert len(json.dumps(monitor.state())) == pytest.approx(before, rel=0.05)


def test_state_round_trip() -> None:
    rng = np.random.default_rng(8)
    events: list[DriftPoint] = []
    monitor = DriftMonitor(window=WINDOW, on_drift=events.append, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW * 2), rng=rng)
    feed(monitor, around(axis(1), rng, WINDOW + 7), rng=rng)  # drifting, and a window half full
    feed(monitor, around(axis(3), rng, 20), collection="vs_z", rng=rng)  # baseline half full
    state = json.loads(json.dumps(monitor.state()))

    restored = DriftMonitor(window=WINDOW, on_drift=events.append, clock=Clock())
    restored.load(state)
    assert restored.series() == monitor.series()
    assert restored.state() == state
    # both continue alike: the half-full window closes after the same queries with the same figures
    more = around(axis(1), rng, WINDOW)
    a = feed(monitor, more, rng=np.random.default_rng(9))
    b = feed(restored, more, rng=np.random.default_rng(9))
    assert len(a) == len(b) == 1
    assert a[0].centroid_distance == pytest.approx(b[0].centroid_distance)
    assert a[0].mean_top_score == pytest.approx(b[0].mean_top_score)
    assert len(events) == 1  # still drifting after the restart: no second event

    kept = restored.series()
    with pytest.raises(ValueError):
        restored.load({"version": 99, "keys": []})
    with pytest.raises(ValueError):
        restored.load({"version": 1, "keys": [{"collection": "x"}]})
    assert restored.series() == kept  # a bad snapshot changes nothing


def test_invalid_input() -> None:
    monitor = DriftMonitor(window=3)
    monitor.observe("vs_a", "m", np.ones(DIM), 0.5)
    with pytest.raises(ValueError, match=r"dimension 16.*'vs_a'.*'m'.*dimension 32"):
        monitor.observe("vs_a", "m", np.ones(16), 0.5)
    monitor.observe("vs_a", "other", np.ones(16), 0.5)  # another model may embed differently
    with pytest.raises(ValueError):
        monitor.observe("vs_a", "m", np.zeros(DIM), 0.5)
    with pytest.raises(ValueError):
        monitor.observe("vs_a", "m", np.ones((2, DIM)), 0.5)
    with pytest.raises(ValueError):
        monitor.observe("vs_a", "m", np.ones(DIM), float("nan"))
    with pytest.raises(ValueError):
        DriftMonitor(window=0)


def test_forget_starts_a_new_baseline() -> None:
    rng = np.random.default_rng(10)
    monitor = DriftMonitor(window=WINDOW, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW), rng=rng)
    assert monitor.forget("vs_a", "m") and not monitor.forget("vs_a", "m")
    feed(monitor, around(axis(1), rng, WINDOW), rng=rng)  # the new baseline
    points = feed(monitor, around(axis(1), rng, WINDOW), rng=rng)
    assert not points[0].drifted


def test_a_failing_handler_does_not_fail_observe_and_may_read_the_monitor() -> None:
    rng = np.random.default_rng(11)
    seen: list[int] = []

    def handler(point: DriftPoint) -> None:
        seen.append(len(monitor.series()))  # re-entering the monitor must not deadlock
        raise RuntimeError("webhook down")

    monitor = DriftMonitor(window=WINDOW, on_drift=handler, clock=Clock())
    feed(monitor, around(axis(0), rng, WINDOW), rng=rng)
    points = feed(monitor, around(axis(1), rng, WINDOW), rng=rng)
    assert points[0].drifted and seen == [1]


def test_concurrent_observers_count_every_query() -> None:
    monitor = DriftMonitor(window=10)
    vectors = around(axis(0), np.random.default_rng(12), 400)

    def work(chunk: np.ndarray) -> None:
        for v in chunk:
            monitor.observe("vs_a", "m", v, 0.5)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in np.split(vectors, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [series] = monitor.series()
    assert len(series["points"]) == 39 and all(p["queries"] == 10 for p in series["points"])
