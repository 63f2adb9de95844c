"""Circuit breaker and balancers, with a controlled clock and made-up deployments."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from conduit.routing.balancer import LeastOutstanding, PowerOfTwoEwma, WeightedRoundRobin
from conduit.routing.health import BreakerState, CircuitBreaker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        breaker.on_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    breaker.on_success()  # success resets the count
    for _ in range(3):
        breaker.on_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.available()
    clock.now = 9.9
    assert not breaker.available()
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
    breaker.on_start()
    assert not breaker.available()  # one probe at a time
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN  # a failed probe re-opens at once
    clock.now = 20.0
    breaker.on_start()
    breaker.on_abandon()  # the client left: the probe slot is free again
    assert breaker.available()
    breaker.on_start()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.available()


@dataclass
class Fake:
    id: str
    weight: float = 1.0
    in_flight: int = 0
    served: int = 0
    ewma_s: float | None = None


def test_weighted_round_robin_is_exact() -> None:
    fakes = [Fake("a", 1), Fake("b", 2), Fake("c", 3)]
    balancer = WeightedRoundRobin()
    picks = Counter(balancer.pick(fakes).id for _ in range(600))
    assert picks == {"a": 100, "b": 200, "c": 300}


def test_least_outstanding_prefers_idle_then_least_served() -> None:
    busy, idle = Fake("busy", in_flight=3), Fake("idle", in_flight=1)
    assert LeastOutstanding().pick([busy, idle]) is idle
    fakes = [Fake("a"), Fake("b"), Fake("c")]
    balancer = LeastOutstanding()
    for _ in range(30):
        chosen = balancer.pick(fakes)
        chosen.served += 1
    assert [f.served for f in fakes] == [10, 10, 10]


def test_p2c_prefers_lower_expected_wait() -> None:
    fast, slow = Fake("fast", ewma_s=0.01), Fake("slow", ewma_s=1.0)
    balancer = PowerOfTwoEwma()
    assert all(balancer.pick([fast, slow]) is fast for _ in range(20))
    fast.in_flight = 500  # busy enough that the slow one is the shorter wait
    assert balancer.pick([fast, slow]) is slow
