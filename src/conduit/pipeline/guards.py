"""The guard stages around generation.

Input (before the cache): prompt-injection detection on what the user sent, PII block or
redaction, the system-prompt canary. Output (after generation, before the cache stores
anything): response_format validation with a retry, canary and PII leakage screening of the
stream, and the grounding check of retrieval answers. Every verdict lands in the request
context (`x-conduit-guard`, the request log), in the metrics, and flags raise a review event.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from conduit.backends import Delta, GenerateRequest
from conduit.errors import APIError
from conduit.observability.events import EventSink
from conduit.observability.guard_metrics import GuardStats
from conduit.pipeline.context import RequestContext
from conduit.rag.context import message_text
from conduit.safety.output import OutputScreen, canary_for, json_error, with_canary
from conduit.safety.policy import GuardPolicy

if TYPE_CHECKING:
    from conduit.safety.injection import InjectionDetector
    from conduit.safety.pii import PiiScanner, Vault

Generate = Callable[[GenerateRequest], AsyncIterator[Delta]]
_SCANNED_ROLES = ("user", "tool", "function")  # what outsiders write; system prompts are the operator's
_PII_SKIPPED_ROLES = ("system", "developer")
_INLINE_CHARS = 1000  # shorter messages are scored on the event loop (~0.3 ms), longer in a thread


@dataclass
class Screening:
    """The request as the model will see it, and what the output side needs to know."""

    request: GenerateRequest
    refused: bool = False
    vault: Vault | None = None  # placeholders to put back into the answer
    canary: str | None = None


class Guards:
    def __init__(self, policy: GuardPolicy, model_overrides: dict[str, dict | None],
                 tenant_overrides: dict[str, dict | None], detector: InjectionDetector | None,
                 pii: Callable[[Sequence[str]], PiiScanner], events: EventSink, stats: GuardStats,
                 canary_secret: bytes | None = None,
                 document_detector: InjectionDetector | None = None) -> None:
        self.base = policy
        self.model_overrides = model_overrides
        self.tenant_overrides = tenant_overrides
        self.detector = detector  # messages
        self.document_detector = document_detector  # chunks of documents, scored at ingestion
        self.pii = pii  # entities -> a scanner (built once per set: Presidio is slow to set up)
        self.events = events
        self.stats = stats
        self.canary_secret = canary_secret or secrets.token_bytes(32)
        self._policies: dict[tuple[str | None, str], GuardPolicy] = {}

    def policy(self, ctx: RequestContext, model: str) -> GuardPolicy:
        tenant = ctx.principal.tenant if ctx.principal else None
        key = (tenant, model)
        if key not in self._policies:
            self._policies[key] = self.base.merged(self.model_overrides.get(model),
                                                   self.tenant_overrides.get(tenant or ""))
        return self._policies[key]

    # -- input ------------------------------------------------------------------------------

    async def screen_input(self, ctx: RequestContext, request: GenerateRequest, policy: GuardPolicy) -> Screening:
        if policy.injection.action != "allow" and self.detector is not None:
            texts = _texts(request, _SCANNED_ROLES)
            if texts and await self._injection(ctx, texts, policy):
                return Screening(request, refused=True)
        vault = None
        if policy.pii.mode != "allow":
            request, vault, blocked = await self._pii_input(ctx, request, policy)
            if blocked:
                return Screening(request, refused=True)
        canary = None
        if policy.system_prompt.canary and request.messages is not None:
            canary = canary_for(self.canary_secret, ctx.principal.tenant_id if ctx.principal else None)
            request = replace(request, messages=with_canary(request.messages, canary))
        return Screening(request, vault=vault, canary=canary)

    async def _injection(self, ctx: RequestContext, texts: list[str], policy: GuardPolicy) -> bool:
        """Whether to refuse the request."""
        assert self.detector is not None
        detector, started = self.detector, time.perf_counter()
        if sum(map(len, texts)) <= _INLINE_CHARS:
            verdicts = [detector.check(t) for t in texts]
        else:
            verdicts = await asyncio.to_thread(lambda: [detector.check(t) for t in texts])
        self.stats.time("injection", time.perf_counter() - started)
        score = max(v.score for v in verdicts)
        threshold = policy.injection.threshold if policy.injection.threshold is not None else detector.threshold
        if score < threshold:
            self.note(ctx, "injection", "pass")
            return False
        action = policy.injection.action
        self.note(ctx, "injection", action, score=score, policy=policy)
        return action == "block"

    async def _pii_input(self, ctx: RequestContext, request: GenerateRequest,
                         policy: GuardPolicy) -> tuple[GenerateRequest, Vault | None, bool]:
        from conduit.safety.pii import Vault

        scanner, started = self.pii(policy.pii.entities), time.perf_counter()
        vault = Vault() if policy.pii.restore else None
        block = policy.pii.mode == "block"

        def scan() -> tuple[GenerateRequest, int]:
            found = 0

            def clean(text: str) -> str:
                nonlocal found
                if block:
                    found += len(scanner.find(text))
                    return text
                redacted, spans = scanner.redact(text, vault)
                found += len(spans)
                return redacted

            if request.messages is not None:
                messages = [m if m.get("role") in _PII_SKIPPED_ROLES else _map_text(m, clean) for m in request.messages]
                return replace(request, messages=messages), found
            if isinstance(request.prompt, str):
                return replace(request, prompt=clean(request.prompt)), found
            return request, found

        screened, found = await asyncio.to_thread(scan)
        self.stats.time("pii", time.perf_counter() - started)
        if not found:
            self.note(ctx, "pii", "pass")
            return request, None, False
        self.note(ctx, "pii", f"{policy.pii.mode}:{found}", outcome=policy.pii.mode)
        return (request, None, True) if block else (screened, vault, False)

    # -- output -----------------------------------------------------------------------------

    async def validated(self, ctx: RequestContext, request: GenerateRequest, policy: GuardPolicy,
                        generate: Generate) -> AsyncIterator[Delta]:
        """The answer of a response_format request, checked; a failing one is asked again with
        the error, then refused with a clear error. Buffered: a client must not see (and parse)
        JSON that is about to be replaced."""
        assert request.response_format is not None
        attempt, current = 0, request
        while True:
            deltas = [d async for d in generate(current)]
            text = "".join(d.text for d in deltas if d.index == 0)
            error = json_error(text, request.response_format)
            if error is None:
                self.note(ctx, "json_schema", "pass" if attempt == 0 else f"retry:{attempt}",
                          outcome="pass" if attempt == 0 else "retry")
                for delta in deltas:
                    yield delta
                return
            if attempt >= policy.json_schema.retries:
                self.note(ctx, "json_schema", "fail", outcome="block")
                raise APIError(502, f"The model's answer did not match response_format after {attempt + 1} "
                               f"attempt(s): {error}.", type="server_error", param="response_format",
                               code="invalid_model_output")
            attempt += 1
            feedback = [{"role": "assistant", "content": text},
                        {"role": "user", "content": f"That reply is invalid: {error}. Reply again with only "
                                                    "the corrected JSON."}]
            current = replace(request, messages=[*(request.messages or []), *feedback])

    async def screened(self, ctx: RequestContext, deltas: AsyncIterator[Delta], policy: GuardPolicy,
                       canary: str | None, stream: bool) -> AsyncIterator[Delta]:
        """The answer with canary echoes stopped and leaked PII redacted or stopped. A stopped
        choice ends with finish_reason `content_filter`: after the text already sent when
        streaming, else as the policy's refusal message instead of the answer."""
        scanner = self.pii(policy.pii.entities) if policy.pii.output != "allow" else None
        if scanner is None and canary is None:
            async for delta in deltas:
                yield delta
            return
        action = "block" if policy.pii.output == "block" else "redact"
        screens: dict[int, OutputScreen] = {}
        held: dict[int, list[Delta]] = {}  # not streaming: each choice's screened deltas until it ends
        last: dict[int, Delta] = {}
        started = time.perf_counter()
        try:
            async for delta in deltas:
                index = delta.index
                if index in last and last[index].finish_reason is not None:
                    continue  # stopped by a guard
                last[index] = delta
                screen = screens.setdefault(index, OutputScreen(canary, scanner, action))
                # Inline: a scan covers only the ~100 characters held back (well under a millisecond),
                # cheaper than a thread hop for every delta.
                out = screen.feed(delta.text)
                if out.blocked is None and delta.finish_reason is not None:
                    tail = screen.flush()
                    out = replace(tail, text=out.text + tail.text)
                if out.blocked is not None:
                    self.note(ctx, "system_prompt" if out.blocked == "system_prompt" else "output_pii", "block",
                              policy=policy)
                    last[index] = replace(delta, finish_reason="content_filter")
                    text = out.text if stream else policy.refusal_message
                    held.pop(index, None)
                    yield replace(delta, text=text, finish_reason="content_filter", token_logprobs=())
                    continue
                if stream:
                    yield replace(delta, text=out.text)
                    continue
                held.setdefault(index, []).append(replace(delta, text=out.text))
                if delta.finish_reason is not None:
                    yield _joined(held.pop(index))
            for index, delta in last.items():  # a choice the backend left without a finish
                if delta.finish_reason is None:
                    rest = screens[index].flush().text
                    yield _joined([*held.pop(index, []), replace(delta, text=rest, token_logprobs=())])
        finally:
            await deltas.aclose()
        self.stats.time("output", time.perf_counter() - started)
        leaked = sum(s.pii_found for s in screens.values())
        if scanner is not None and "output_pii" not in ctx.guards:
            self.note(ctx, "output_pii", f"redact:{leaked}" if leaked else "pass",
                      outcome="redact" if leaked else "pass")
        if canary is not None and "system_prompt" not in ctx.guards:
            self.note(ctx, "system_prompt", "pass")

    async def grounded(self, ctx: RequestContext, deltas: AsyncIterator[Delta], policy: GuardPolicy,
                       share: Callable[[str], float | None]) -> AsyncIterator[Delta]:
        """A retrieval answer whose sentences are mostly unsupported by the sources becomes the
        fallback answer. Buffered when it may be replaced (the client must not see it first)."""
        rule = policy.grounding
        if rule.action == "allow":
            async for delta in deltas:
                yield delta
            return
        produced: list[Delta] = []
        async for delta in deltas:
            produced.append(delta)
            if rule.action == "flag":
                yield delta
        supported = share("".join(d.text for d in produced if d.index == 0))
        if supported is None or supported >= rule.min_supported:
            self.note(ctx, "grounding", "pass")
            if rule.action == "fallback":
                for delta in produced:
                    yield delta
            return
        self.note(ctx, "grounding", f"{rule.action}:{supported:.2f}", outcome=rule.action, policy=policy)
        if rule.action == "fallback":
            last = produced[-1]
            yield Delta(rule.fallback_message, last.prompt_tokens, last.completion_tokens, "stop",
                        cached_prompt_tokens=last.cached_prompt_tokens)

    # -- verdicts ---------------------------------------------------------------------------

    def note(self, ctx: RequestContext, guard: str, verdict: str, *, outcome: str | None = None,
             score: float | None = None, policy: GuardPolicy | None = None) -> None:
        """Record a guard's verdict; `flag` (and blocks) raise a review event."""
        ctx.guards[guard] = verdict if score is None else f"{verdict}:{score:.2f}"
        outcome = outcome or verdict
        self.stats.count(guard, outcome)
        if outcome in ("flag", "block") and policy is not None:
            principal = ctx.principal
            event: dict[str, Any] = {"event": "guard_" + outcome, "guard": guard, "request_id": ctx.id,
                                     "tenant": principal.tenant if principal else None,
                                     "key_id": principal.key_id if principal else None, "model": ctx.model}
            if score is not None:
                event["score"] = round(score, 4)
            self.events.emit(event, policy.review_webhook_url if outcome == "flag" else None)


def _joined(deltas: list[Delta]) -> Delta:
    """One delta for a choice's held deltas: their text and log-probabilities, the last one's counts."""
    last = deltas[-1]
    return replace(last, text="".join(d.text for d in deltas),
                   logprobs=tuple(lp for d in deltas for lp in d.logprobs),
                   token_logprobs=tuple(t for d in deltas for t in d.token_logprobs))


def _texts(request: GenerateRequest, roles: tuple[str, ...]) -> list[str]:
    if request.messages is not None:
        return [text for m in request.messages if m.get("role") in roles and (text := message_text(m))]
    return [request.prompt] if isinstance(request.prompt, str) and request.prompt else []


def _map_text(message: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """The message with `change` applied to its text (a string or the text parts of a list)."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": change(content)}
    if isinstance(content, list):
        parts = [{**p, "text": change(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                 for p in content]
        return {**message, "content": parts}
    return message


def refusal(policy: GuardPolicy) -> Delta:
    return Delta(policy.refusal_message, 0, 0, "content_filter")
