"""Choosing a deployment among the healthy ones of a model."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    id: str
    weight: float
    in_flight: int
    served: int
    ewma_s: float | None


class LeastOutstanding:
    """Fewest requests in flight per unit of weight; ties go to the least served so far.

    The tie-break matters at low load, where every deployment is idle: it spreads requests in
    proportion to weight instead of by chance.
    """

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        return min(candidates, key=lambda c: (c.in_flight / c.weight, c.served / c.weight))


class PowerOfTwoEwma:
    """Two candidates drawn by weight; the one with the lower expected wait wins.

    Expected wait is the latency EWMA times (in flight + 1): a fast but busy deployment can lose
    to a slower idle one. Deployments with no latency yet count as fastest, so they get measured.
    """

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        first, second = _two_by_weight(candidates)
        return min((first, second), key=lambda c: (c.ewma_s or 0.0) * (c.in_flight + 1))


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx does): spreads picks evenly in proportion to weight."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(self, candidates: Sequence[Candidate]) -> Candidate:
        total = sum(c.weight for c in candidates)
        for c in candidates:
            self._current[c.id] = self._current.get(c.id, 0.0) + c.weight
        chosen = max(candidates, key=lambda c: self._current[c.id])
        self._current[chosen.id] -= total
        return chosen


def _two_by_weight(candidates: Sequence[Candidate]) -> tuple[Candidate, Candidate]:
    first = random.choices(candidates, weights=[c.weight for c in candidates])[0]
    rest = [c for c in candidates if c is not first]
    second = random.choices(rest, weights=[c.weight for c in rest])[0]
    return first, second


Balancer = LeastOutstanding | PowerOfTwoEwma | WeightedRoundRobin

BALANCERS: dict[str, type[Balancer]] = {
    "least_outstanding": LeastOutstanding,
    "p2c_ewma": PowerOfTwoEwma,
    "weighted_round_robin": WeightedRoundRobin,
}
