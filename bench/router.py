"""Router benchmark: traffic share per tier, cost against always-strong, and the router's latency.

    python bench/router.py

A mixed prompt set (chit-chat, short facts, code, maths, multi-step reasoning, long documents),
each labelled with the tier it needs. The rules router and the embedding classifier (trained on a
separate labelled set) route every prompt; cost uses the prices below with prompt tokens
estimated at 4 characters per token and a fixed answer length. Peer in the same run: always
using the strongest tier. Writes bench/results/router.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

from conduit.backends import GenerateRequest
from conduit.config import RouterSettings
from conduit.routing.router import Router

PRICES = {"cheap": (0.15, 0.60), "strong": (2.50, 10.00)}  # $ per million input / output tokens
ANSWER_TOKENS = 250

EASY = [
    "Hi! How are you?", "Thanks, that was helpful.", "Good morning!", "What's the capital of Italy?",
    "Who wrote Romeo and Juliet?", "Translate 'thank you' into Spanish.", "What day comes after Monday?",
    "Give me a synonym for happy.", "How many legs does a spider have?", "What colour is the sky?",
    "Tell me a fun fact about cats.", "What is the boiling point of water in Celsius?",
    "Recommend a good book for the weekend.", "What's the plural of mouse?", "Say hello in French.",
    "Is a tomato a fruit?", "What time zone is London in?", "Name three primary colours.",
    "Write a haiku about autumn.", "What does CPU stand for?",
]
HARD = [
    "Debug this Python: def mean(xs): return sum(xs) / len(xs) - it crashes on empty lists.",
    "Write a SQL query: SELECT the top 3 customers by revenue FROM orders joined with customers.",
    "Refactor this JavaScript function to use async/await instead of promise chains.",
    "Prove that the square root of 2 is irrational.",
    "Solve for x: 3x^2 - 12x + 9 = 0, and explain each step.",
    "Compute the derivative of sin(x) * e^x and the integral of x ln x.",
    "Explain why quicksort is O(n log n) on average but O(n^2) in the worst case.",
    "Compare Raft and Paxos and analyze the trade-offs for a geo-replicated database.",
    "Design a rate limiter for a distributed API gateway; justify your choices.",
    "What would happen if the Fed raised rates by 2% tomorrow? Reason step by step.",
    "Given a matrix A = [[2, 1], [1, 3]], find its eigenvalues.",
    "Write a regex that matches IPv4 addresses and explain its parts.",
    "Evaluate the pros and cons of microservices versus a modular monolith for a team of five.",
    "Here is a stack trace: Traceback (most recent call last): KeyError 'id'. What is wrong?",
    "Summarise the following contract and list every obligation of each party:\n" + "The Supplier shall deliver goods "
    "on time and the Buyer shall pay within thirty days of invoice. " * 40,
]
TRAIN = [
    ("hello there", 0), ("thank you so much", 0), ("what is the capital of Spain", 0), ("say hi in German", 0),
    ("how many days in a week", 0), ("tell me a joke", 0),
    ("Prove that there are infinitely many primes.", 1), ("Implement Dijkstra's algorithm in Go.", 1),
    ("Analyse the trade-offs between SQL and NoSQL databases for analytics.", 1),
    ("Find the integral of 1/(1+x^2) and explain.", 1), ("Fix this C++ segfault in my linked list code.", 1),
    ("Plan a migration of a monolith to Kubernetes, step by step.", 1),
]


def _request(text: str) -> GenerateRequest:
    return GenerateRequest(model="auto", messages=[{"role": "user", "content": text}])


def _cost(tier: str, prompt: str) -> float:
    price_in, price_out = PRICES[tier]
    return (len(prompt) / 4 * price_in + ANSWER_TOKENS * price_out) / 1e6


async def _evaluate(router: Router, prompts: list[tuple[str, int]]) -> dict:
    tiers = router.settings.tiers
    latencies, cost, correct, share = [], 0.0, 0, dict.fromkeys(tiers, 0)
    for text, label in prompts:
        started = time.perf_counter()
        tier, _ = await router.decide(_request(text))
        latencies.append((time.perf_counter() - started) * 1000)
        share[tiers[tier]] += 1
        cost += _cost(tiers[tier], text)
        correct += tier == label
    latencies.sort()
    return {
        "share": {k: v / len(prompts) for k, v in share.items()},
        "cost": cost,
        "agreement": correct / len(prompts),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


async def main() -> None:
    prompts = [(p, 0) for p in EASY] + [(p, 1) for p in HARD]
    tiers = ["cheap", "strong"]
    rules = Router(RouterSettings(tiers=tiers, mode="rules"))
    classifier = Router(RouterSettings(tiers=tiers, mode="classifier",
                                       examples=[{"text": t, "tier": k} for t, k in TRAIN]))
    await classifier.start()
    await classifier.decide(_request("warm up"))
    results = {"rules": await _evaluate(rules, prompts), "classifier": await _evaluate(classifier, prompts)}
    strongest = sum(_cost("strong", p) for p, _ in prompts)
    print(f"{len(prompts)} prompts ({len(EASY)} easy, {len(HARD)} hard); answers {ANSWER_TOKENS} tokens; "
          f"prices $/M in/out: {PRICES}")
    print(f"{'router':<12}{'cheap':>8}{'strong':>8}{'cost $':>10}{'vs strong':>11}{'agree':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'always-strong':<12}{0:>8.0%}{1:>8.0%}{strongest:>10.4f}{1:>11.0%}{len(HARD) / len(prompts):>8.0%}"
          f"{0:>9.3f}{0:>9.3f}")
    for name, r in results.items():
        print(f"{name:<12}{r['share']['cheap']:>8.0%}{r['share']['strong']:>8.0%}{r['cost']:>10.4f}"
              f"{r['cost'] / strongest:>11.0%}{r['agreement']:>8.0%}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "router.json").write_text(json.dumps({"always_strong_cost": strongest, **results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
