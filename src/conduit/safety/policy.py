"""Guard policy: which guards run, their thresholds and what they do.

One `GuardPolicy` in the configuration's `guards`; a model's `guards` and a tenant's `guards`
override parts of it (tenant over model over global), merged key by key, so a tenant that
only says `pii: {mode: redact}` keeps every other setting.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

PiiEntity = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
                    "SECRET"]  # = conduit.safety.pii.ENTITIES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InjectionGuard(_Strict):
    # Flag by default: the detector wrongly flags about 1 in 100 ordinary chat messages
    # (docs/benchmarks.md#guards), too many to refuse them unasked; `block` is one line away.
    action: Literal["block", "flag", "allow"] = Field(
        "flag", description="What a message scored as a prompt injection or jailbreak gets.")
    threshold: float | None = Field(None, ge=0, le=1, description="Score that counts as an injection; "
                                    "default: the shipped detector's operating point.")


class PiiGuard(_Strict):
    mode: Literal["allow", "redact", "block"] = Field(
        "allow", description="PII in the request: pass it on, replace it with placeholders before any "
        "model sees it, or refuse the request.")
    entities: list[PiiEntity] = Field(default_factory=lambda: list(get_args(PiiEntity)))
    restore: bool = Field(False, description="redact: put the original values back into the answer.")
    output: Literal["allow", "redact", "block"] = Field(
        "allow", description="PII in the answer (leaked from documents or made up).")


class DocumentGuard(_Strict):
    action: Literal["drop", "warn", "allow"] = Field(
        "drop", description="Retrieved chunks flagged as injections at ingestion: leave them out of the "
        "prompt, or keep them and say so in the response's `retrieval.warnings`.")
    threshold: float | None = Field(None, ge=0, le=1, description="Default: the document detector's operating point.")


class SystemPromptGuard(_Strict):
    canary: bool = Field(False, description="Add a secret marker to the system prompt and block answers "
                         "that repeat it.")


class SchemaGuard(_Strict):
    retries: int = Field(1, ge=0, le=3, description="response_format answers that fail validation are "
                         "asked again this many times, with the validation error.")


class GroundingGuard(_Strict):
    action: Literal["fallback", "flag", "allow"] = Field(
        "fallback", description="With retrieval: an answer mostly unsupported by its sources is replaced "
        "by `fallback_message` (or only flagged).")
    min_supported: float = Field(0.5, ge=0, le=1, description="Share of the answer's sentences that must "
                                 "be supported by the sources.")
    fallback_message: str = "I don't know from these documents."


class GuardPolicy(_Strict):
    injection: InjectionGuard = InjectionGuard()
    pii: PiiGuard = PiiGuard()
    documents: DocumentGuard = DocumentGuard()
    system_prompt: SystemPromptGuard = SystemPromptGuard()
    json_schema: SchemaGuard = SchemaGuard()
    grounding: GroundingGuard = GroundingGuard()
    refusal_message: str = Field("I can't help with that request.",
                                 description="The answer of a blocked request (finish_reason content_filter).")
    review_webhook_url: str | None = Field(None, description="Flagged requests are POSTed here for review.")

    def merged(self, *overrides: dict[str, Any] | None) -> GuardPolicy:
        """This policy with each override (a partial policy, as in the configuration) laid on top."""
        data = self.model_dump()
        for override in overrides:
            if override:
                data = _deep_merge(data, override)
        return GuardPolicy.model_validate(data)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
