"""The router/cascade: a logical model (default `auto`) that picks a tier per request.

- rules: cues in the prompt (length, code, maths, multi-step reasoning) raise its difficulty;
  the difficulty indexes the tiers, cheapest first.
- classifier: the prompt's embedding against the centroids of labelled examples per tier.
- cascade: answer with the cheapest tier, score the answer's confidence (mean token
  log-probability, or the cheap model grading its own answer), escalate below the threshold.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np

from conduit.backends import Delta, GenerateRequest, Sampling
from conduit.backends.embeddings import LocalEmbedder
from conduit.config import RouterSettings
from conduit.errors import APIError
from conduit.pipeline.context import RequestContext
from conduit.routing.dispatch import Dispatcher

CUES = {
    "code": re.compile(
        r"```|\bdef \w+\(|\bclass \w+|#include|\bfunction\s*\w*\(|=>|\bSELECT\b[\s\S]+\bFROM\b|Traceback"
        r"|\b(refactor|debug|stack trace|segfault|compile error|regex|python|javascript|rust|sql)\b", re.IGNORECASE),
    "math": re.compile(
        r"\d+\s*[-+*/^]\s*\d+\s*=|\\frac|\\int|\b(prove|proof|integral|derivative|equation|theorem"
        r"|solve for|probability|eigen\w*|matrix|polynomial)\b", re.IGNORECASE),
    "reasoning": re.compile(
        r"\b(step[- ]by[- ]step|explain why|analy[sz]e|compare|trade-?offs?|pros and cons|justify"
        r"|design an?|evaluate|critique|what would happen if)\b", re.IGNORECASE),
}
log = logging.getLogger(__name__)
SELF_CHECK = ("Question:\n{question}\n\nProposed answer:\n{answer}\n\n"
              "Is the proposed answer correct and complete? Reply with only 'yes' or 'no'.")


class Router:
    def __init__(self, settings: RouterSettings, embedder: LocalEmbedder | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self._embedder = embedder or (LocalEmbedder() if settings.mode == "classifier" else None)
        self._centroids: np.ndarray | None = None
        self._trained = asyncio.Event()

    async def start(self) -> None:
        """Embed the labelled examples (the classifier's training); other modes need nothing."""
        try:
            await self._train()
        except Exception:  # requests to the router get a clear 503; the rest of the server runs
            log.exception("router %s: training the classifier failed", self.name)
        finally:
            self._trained.set()

    async def _train(self) -> None:
        if self.settings.mode == "classifier":
            assert self._embedder is not None
            examples = self.settings.examples
            vectors = await self._embedder.aencode([e.text for e in examples])
            tiers = np.array([e.tier for e in examples])
            centroids = np.zeros((len(self.settings.tiers), vectors.shape[1]), dtype=np.float32)
            for tier in range(len(self.settings.tiers)):
                if (tiers == tier).any():
                    mean = vectors[tiers == tier].mean(axis=0)
                    centroids[tier] = mean / np.linalg.norm(mean)
            self._centroids = centroids

    async def decide(self, request: GenerateRequest) -> tuple[int, str]:
        """The tier index for this request and the reason, for `x-conduit-route`."""
        text = _question(request)
        if self.settings.mode == "classifier":
            await self._trained.wait()
            if self._centroids is None:
                raise APIError(503, "The router's classifier failed to load; see the server log.",
                               "service_unavailable", code="router_unavailable")
            assert self._embedder is not None
            vector = (await self._embedder.aencode([text]))[0]
            similarity = self._centroids @ vector
            tier = int(similarity.argmax())
            return tier, f"classifier:tier{tier}({similarity[tier]:.2f})"
        found = [name for name, pattern in CUES.items() if pattern.search(text)]
        if len(_all_text(request)) > self.settings.long_prompt_chars:
            found.append("long")
        tier = min(len(found), len(self.settings.tiers) - 1)
        return tier, "rules:" + ("+".join(found) or "simple")

    async def generate(self, ctx: RequestContext, request: GenerateRequest, stream: bool,
                       dispatcher: Dispatcher) -> AsyncIterator[Delta]:
        tiers = self.settings.tiers
        if self.settings.mode != "cascade":
            with ctx.stage("route", mode=self.settings.mode) as stage:
                tier, reason = await self.decide(request)
                stage.attributes.update(reason=reason, model=tiers[tier])
            ctx.note_route(reason)
            async for delta in dispatcher.generate(ctx, replace(request, model=tiers[tier]), stream):
                yield delta
            return
        for tier, model in enumerate(tiers[:-1]):
            answer = [d async for d in dispatcher.generate(ctx, replace(request, model=model, logprobs=True),
                                                           stream=False)]
            confident, score = await self._confident(ctx, request, model, answer, dispatcher)
            if confident:
                ctx.note_route(f"cascade:{model}:accepted({score})")
                for delta in answer:
                    yield delta
                return
            ctx.note_route(f"cascade:{model}:escalated({score})")
        async for delta in dispatcher.generate(ctx, replace(request, model=tiers[-1]), stream):
            yield delta

    async def _confident(self, ctx: RequestContext, request: GenerateRequest, model: str, answer: list[Delta],
                         dispatcher: Dispatcher) -> tuple[bool, str]:
        logprobs = [lp for d in answer for lp in d.logprobs]
        if self.settings.confidence == "logprob" and logprobs:
            mean = sum(logprobs) / len(logprobs)
            return mean >= self.settings.threshold, f"logprob={mean:.2f}"
        # Self-check (also when the tier cannot report log-probabilities).
        question = SELF_CHECK.format(question=_question(request), answer="".join(d.text for d in answer))
        check = GenerateRequest(model=model, messages=[{"role": "user", "content": question}],
                                sampling=Sampling(max_tokens=3, temperature=0.0))
        verdict = "".join([d.text async for d in dispatcher.generate(ctx, check, stream=False)]).strip().lower()
        return verdict.startswith("yes"), f"self_check={verdict[:8] or 'empty'}"


def _question(request: GenerateRequest) -> str:
    if request.messages:
        users = [m["content"] for m in request.messages if m.get("role") == "user"]
        return users[-1] if users else request.messages[-1]["content"]
    return request.prompt if isinstance(request.prompt, str) else ""


def _all_text(request: GenerateRequest) -> str:
    if request.messages:
        return "\n".join(m["content"] for m in request.messages)
    return _question(request)
