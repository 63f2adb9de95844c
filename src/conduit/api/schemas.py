"""OpenAI request bodies, validated; anything invalid becomes a 400 naming the `param`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conduit.backends import GenerateRequest, Sampling
from conduit.config import Budget, Limits
from conduit.pipeline.retrieval import RetrievalSpec
from conduit.store.keys import parse_expiry

Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Strict(BaseModel):
    # Unknown fields are rejected like OpenAI does, so a typo never silently does nothing.
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self

    def as_template_message(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        # The chat templates we ship know 'system', not OpenAI's newer 'developer'.
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and not (self.json_schema and isinstance(self.json_schema.get("schema"), dict)):
            raise ParamError("response_format", "response_format json_schema needs json_schema.schema, an object")
        return self


class _Sampled(_Strict):
    """Fields shared by chat and legacy completions."""

    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: int | None = Field(None, ge=0, description="Extension (vLLM's): keep the k most likely tokens.")
    min_p: float | None = Field(None, ge=0, le=1, description="Extension: drop tokens under min_p x the top probability.")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension: divide repeated tokens' logits.")
    stop_token_ids: list[int] | None = Field(None, description="Extension: stop at any of these token ids.")
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and not all(key.isdigit() for key in value):
            raise ValueError("keys must be token ids (as strings of digits)")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampled:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def sampling(self, max_tokens: int | None, top_logprobs: int | None = None) -> Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=self.top_p or 1.0,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
            seed=self.seed,
            stop=tuple(stops),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            n=self.n,
            top_logprobs=top_logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    retrieval: RetrievalSpec | None = Field(None, description="Extension: answer from these vector stores.")

    @model_validator(mode="after")
    def _chat_not_yet_supported(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("top_logprobs", "top_logprobs needs logprobs: true")
        if self.tools:
            raise _Unsupported("tools")
        return self

    def generate_request(self) -> GenerateRequest:
        return GenerateRequest(
            model=self.model,
            sampling=self.sampling(self.max_completion_tokens or self.max_tokens,
                                   (self.top_logprobs or 0) if self.logprobs else None),
            messages=[m.as_template_message() for m in self.messages],
            response_format=(self.response_format.model_dump(exclude_none=True)
                             if self.response_format is not None and self.response_format.type != "text" else None),
        )


class CompletionRequest(_Sampled):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for legacy completions
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(isinstance(p, str | list) and not p for p in value)):
            raise ValueError("prompt must not be empty")
        if value == "":
            raise ValueError("prompt must not be empty")
        return value

    @model_validator(mode="after")
    def _completion_not_yet_supported(self) -> CompletionRequest:
        if self.best_of not in (None, 1):
            raise _Unsupported("best_of")
        if self.suffix:
            raise _Unsupported("suffix")
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def generate_request(self, prompt: str | list[int]) -> GenerateRequest:
        return GenerateRequest(model=self.model, sampling=self.sampling(self.max_tokens, self.logprobs), prompt=prompt)


class ParamError(ValueError):
    """A check across fields that still blames one parameter (a 400 naming it)."""

    code = "invalid_value"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _Unsupported(ParamError):
    """A valid OpenAI parameter this server does not implement yet."""

    code = "unsupported_parameter"

    def __init__(self, param: str) -> None:
        super().__init__(param, f"'{param}' is not supported by this server yet")


class CreateKeyRequest(_Strict):
    tenant: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, max_length=200)
    expires_at: str | None = Field(None, description="ISO date or date-time; a date means its midnight UTC.")
    limits: Limits | None = None
    budget: Budget | None = None

    @field_validator("expires_at")
    @classmethod
    def _parse_expiry(cls, value: str | None) -> str | None:
        if value is not None:
            parse_expiry(value)  # raises ValueError with a clear message
        return value
