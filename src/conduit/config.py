"""Typed settings: one tree from `conduit.yaml` and `CONDUIT_*` environment variables.

Precedence (highest first): keyword arguments, environment (`CONDUIT_SERVER__PORT=9000`),
the YAML file (`CONDUIT_CONFIG`, else `./conduit.yaml` when present), defaults.
Every field is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from conduit.safety.policy import GuardPolicy


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    drain_timeout_s: float = Field(30.0, ge=0, description="How long SIGTERM waits for in-flight requests.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(False, description="A line per HTTP request on stderr (uvicorn's access log). "
                             "Off: the request log already records every request, and writing the line took "
                             "~7% of the event loop's time on an exact-cache hit.")


class Prices(BaseModel):
    """US dollars per million tokens."""

    input: float = Field(0.0, ge=0)
    cached_input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class Timeouts(BaseModel):
    connect_s: float = Field(5.0, gt=0, description="Opening a connection to an upstream.")
    first_token_s: float = Field(60.0, gt=0, description="From sending the request to the first token.")
    between_tokens_s: float = Field(30.0, gt=0, description="Longest silence inside a stream.")
    total_s: float = Field(600.0, gt=0, description="One attempt, start to end.")


class EngineOptions(BaseModel):
    """The embedded engine's scheduler and KV cache (embedded deployments only)."""

    model_config = ConfigDict(extra="forbid")

    kv_cache_memory_gb: float = Field(1.0, gt=0, description="Memory for the paged KV cache (CPU).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="CUDA: the fraction of the "
                                          "memory free after loading that the KV cache may take.")
    cuda_graphs: bool = Field(True, description="CUDA: replay decode-only steps from CUDA graphs.")
    fused_kernels: bool = Field(True, description="CUDA: a layer's norms, RoPE + cache write and "
                                "SiLU x up as fused Triton kernels.")
    block_size: int = Field(16, ge=1, description="Tokens per KV-cache block.")
    max_num_seqs: int = Field(32, ge=1, description="Sequences running at once, at most.")
    max_num_batched_tokens: int = Field(512, ge=16, description="Tokens per engine step (the chunked-prefill budget).")
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True


class Deployment(BaseModel):
    """One place a logical model runs: the embedded engine or an OpenAI-compatible upstream."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["embedded", "openai"] = "embedded"
    id: str | None = Field(None, description="Name in logs and metrics; default: derived from the model.")
    # embedded
    source: str = Field("smollm2", description="embedded: 'smollm2' or 'gemma3-270m' (bundled) "
                        "or a GGUF path (llama or gemma3 architecture).")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="embedded: where the engine runs; "
                                                   "'auto' = CUDA when torch sees a GPU (llama models).")
    max_model_len: int | None = Field(None, ge=16, description="embedded: cap on the context length.")
    load_format: Literal["gguf", "dummy"] = Field("gguf", description="embedded: 'dummy' = random weights (benchmarks).")
    engine: EngineOptions = EngineOptions()
    # openai-compatible upstream
    base_url: str | None = Field(None, description="openai: e.g. http://vllm:8000/v1")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the key.")
    upstream_model: str | None = Field(None, description="openai: model name upstream; default: the logical name.")
    headers: dict[str, str] = Field(default_factory=dict, description="openai: extra request headers.")
    # both
    weight: float = Field(1.0, gt=0)
    max_in_flight: int | None = Field(None, ge=1, description="Concurrent requests at most; more wait.")
    timeouts: Timeouts = Timeouts()
    context_length: int | None = Field(None, ge=16, description="Default: the embedded model's, else unknown.")

    @model_validator(mode="after")
    def _upstream_needs_url(self) -> Deployment:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("an 'openai' deployment needs base_url")
        return self


class QueueSettings(BaseModel):
    """The admission queue in front of a model's deployments, used once all of them are at
    `max_in_flight`. Higher priorities leave first; equal ones in arrival order."""

    max_size: int = Field(128, ge=0, description="Requests waiting at most; more get 429.")
    max_wait_s: float = Field(30.0, gt=0, description="Longest wait for a slot; then 503.")


class RetryPolicy(BaseModel):
    attempts: int = Field(3, ge=1, description="Tries per deployment group, the first included.")
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)


class HealthSettings(BaseModel):
    failure_threshold: int = Field(3, ge=1, description="Consecutive failures that eject a deployment.")
    cooldown_s: float = Field(10.0, gt=0, description="How long an ejected deployment gets no traffic.")
    check_interval_s: float = Field(0.0, ge=0, description="Active health checks (GET /models); 0: off.")


Capability = Literal["chat", "completions", "embeddings", "logprobs", "json_schema"]


class ModelSettings(BaseModel):
    """A logical model: the name clients send, served by one or more deployments."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The id clients send as `model`.")
    deployments: list[Deployment] = Field(default_factory=list)
    # Shorthand for a single embedded deployment (what `models: [{name: x}]` means).
    source: str | None = None
    dtype: Literal["auto", "float32", "bfloat16"] | None = None
    max_model_len: int | None = Field(None, ge=16)
    capabilities: list[Capability] = Field(default_factory=lambda: ["chat", "completions"])
    prices: Prices = Prices()
    balancer: Literal["least_outstanding", "p2c_ewma", "weighted_round_robin"] = "least_outstanding"
    retry: RetryPolicy = RetryPolicy()
    health: HealthSettings = HealthSettings()
    fallbacks: list[str] = Field(default_factory=list, description="Models tried in order when this one fails.")
    context_fallback: str | None = Field(None, description="Model with a longer context, for long prompts.")
    deadline_s: float = Field(300.0, gt=0, description="Overall limit per request, retries included.")
    queue: QueueSettings = QueueSettings()
    guards: dict[str, Any] | None = Field(None, description="Overrides of `guards` for this model.")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model name must not be empty")
        return value

    @model_validator(mode="after")
    def _shorthand(self) -> ModelSettings:
        shorthand = {k: v for k, v in (("source", self.source), ("dtype", self.dtype),
                                        ("max_model_len", self.max_model_len)) if v is not None}
        if shorthand and self.deployments:
            raise ValueError("give either 'deployments' or the embedded shorthand (source/dtype/max_model_len)")
        if not self.deployments:
            self.deployments = [Deployment(backend="embedded", **shorthand)]
            # Cleared so that validating this object again (as pydantic-settings does) still passes.
            self.source = self.dtype = self.max_model_len = None
        return self


class RouteExample(BaseModel):
    text: str
    tier: int = Field(ge=0, description="Index into `tiers`.")


class RouterSettings(BaseModel):
    """A logical model (default `auto`) that picks one of `tiers` per request."""

    model_config = ConfigDict(extra="forbid")

    name: str = "auto"
    tiers: list[str] = Field(min_length=2, description="Model names, cheapest first.")
    mode: Literal["rules", "classifier", "cascade"] = "rules"
    long_prompt_chars: int = Field(2000, ge=1, description="rules: a prompt longer than this is hard.")
    examples: list[RouteExample] = Field(default_factory=list, description="classifier: labelled prompts.")
    confidence: Literal["logprob", "self_check"] = Field(
        "logprob", description="cascade: mean token log-probability, or the cheap model grading itself.")
    threshold: float = Field(-1.0, description="cascade: escalate when mean log-probability is below this.")

    @model_validator(mode="after")
    def _classifier_needs_examples(self) -> RouterSettings:
        if self.mode == "classifier":
            if not self.examples:
                raise ValueError("the classifier router needs labelled 'examples'")
            if any(e.tier >= len(self.tiers) for e in self.examples):
                raise ValueError("an example's tier is not an index into 'tiers'")
        return self


class ExactCacheSettings(BaseModel):
    enabled: bool = True
    max_entries: int = Field(10_000, ge=1, description="Least recently used entries go first.")
    ttl_s: float = Field(3600.0, gt=0)
    only_deterministic: bool = Field(True, description="Cache only temperature-0 or seeded requests.")


class SemanticCacheSettings(BaseModel):
    enabled: bool = Field(False, description="Answer paraphrases of cached questions (loads the embedding model).")
    threshold: float | None = Field(None, gt=0, le=1, description="Cosine similarity needed; default: measured.")
    max_entries: int = Field(10_000, ge=1)
    ttl_s: float = Field(3600.0, gt=0)


class CacheSettings(BaseModel):
    store: Literal["memory", "redis"] = Field("memory", description="Where exact-cache entries live.")
    exact: ExactCacheSettings = ExactCacheSettings()
    semantic: SemanticCacheSettings = SemanticCacheSettings()
    deduplicate: bool = Field(True, description="Identical concurrent cacheable requests share one generation.")


class Limits(BaseModel):
    """Per-minute budgets refilled continuously (token buckets) and a cap on concurrent requests.
    None: no limit."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute.")
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")

    @property
    def limiting(self) -> bool:
        """Whether any limit is set (read per request: cheaper than comparing with `Limits()`)."""
        return bool(self.rpm or self.tpm or self.max_concurrent)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usd: float = Field(gt=0, description="Spending allowed per period, in US dollars.")
    period: Literal["day", "week", "month"] = Field("month", description="Calendar period, UTC.")
    soft_fraction: float = Field(0.8, gt=0, le=1, description="Share of the budget that raises a warning.")
    webhook_url: str | None = Field(None, description="POSTed a JSON event when the warning is raised.")


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The tenant's name, as given to `conduit keys create --tenant`.")
    models: list[str] | None = Field(None, description="Models its keys may use; default: all.")
    limits: Limits = Field(default_factory=Limits, description="For all of the tenant's keys together.")
    model_limits: dict[str, Limits] = Field(default_factory=dict, description="Per model, for all its keys.")
    budget: Budget | None = None
    guards: dict[str, Any] | None = Field(None, description="Overrides of `guards` for this tenant "
                                          "(over the model's).")


class EmbeddingSettings(BaseModel):
    """The embedding model for retrieval, the semantic cache and /v1/embeddings."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "openai"] = Field("local", description="local: the bundled all-MiniLM-L6-v2.")
    base_url: str | None = Field(None, description="openai: e.g. http://tei:8080/v1")
    model: str = Field("all-minilm-l6-v2", description="The name served and, for openai, sent upstream.")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the key.")
    dimensions: int | None = Field(None, ge=1, description="openai: the vectors' size (required).")
    dtype: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto", description="local: auto = bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX), "
        "with large batches' q|k|v, up and down projections in 8 bits where it also has VNNI (int8: "
        "~12-35% faster ingest, vectors within cosine ~0.999 of float32's on average, 0.995 at worst); "
        "bfloat16 = never 8 bits.")
    server_threads: int = Field(
        1, ge=1, description="local: torch threads in the server, which embeds one short query at a time "
        "(more threads fight over busy cores: 700 ms instead of 23 ms measured); `conduit ingest` uses all.")

    @model_validator(mode="after")
    def _upstream_needs_url_and_size(self) -> EmbeddingSettings:
        if self.backend == "openai" and (not self.base_url or not self.dimensions):
            raise ValueError("an 'openai' embedding backend needs base_url and dimensions")
        return self


class RagSettings(BaseModel):
    """Retrieval for chat completions that ask for it (`retrieval` in the request body)."""

    mode: Literal["hybrid", "dense", "sparse"] = Field("hybrid", description="How chunks are retrieved.")
    top_k: int = Field(5, ge=1, le=50, description="Chunks retrieved per question.")
    trigger: Literal["always", "auto", "never"] = Field(
        "auto", description="auto: skip retrieval for greetings and chit-chat.")
    min_score: float = Field(0.3, ge=0, le=1, description="Below this best similarity: the not-found answer.")
    not_found_message: str = Field(
        "I could not find this in the documents.", description="Answered, without a model call, when nothing "
        "relevant is found.")
    reserve_for_answer: int = Field(512, ge=16, description="Context tokens kept free for the answer.")
    rerank: Literal["none", "lexical", "maxsim", "cross_encoder"] = Field(
        "lexical", description="Reorder the retrieved candidates; lexical measured best (docs/rag.md#evaluation).")
    rerank_candidates: int = Field(30, ge=1, le=200, description="How many candidates the reranker sees.")
    cross_encoder_path: str | None = Field(None, description="A local sentence-transformers CrossEncoder directory.")
    support_threshold: float | None = Field(None, gt=0, le=1, description="Cited sentences need this support; "
                                            "default: measured.")


    @model_validator(mode="after")
    def _cross_encoder_needs_path(self) -> RagSettings:
        if self.rerank == "cross_encoder" and not self.cross_encoder_path:
            raise ValueError("rerank: cross_encoder needs cross_encoder_path")
        return self


class GatewaySettings(BaseModel):
    limit_store: Literal["memory", "redis"] = Field(
        "memory", description="'redis': several gateway processes enforce limits and budgets together.")
    key_cache_ttl_s: float = Field(
        10.0, ge=0, description="How long a verified key is trusted without the database (revocation delay "
        "in other processes).")
    budget_webhook_url: str | None = Field(None, description="Budget warnings of keys are POSTed here.")


class RequestLogSettings(BaseModel):
    batch_size: int = Field(256, ge=1, description="Rows written per database transaction at most.")
    flush_interval_s: float = Field(0.5, gt=0, description="Longest a row waits before being written.")


class ObservabilitySettings(BaseModel):
    traces: bool = Field(True, description="Keep each request's trace (stages, route, chunks, prompt, answer) "
                         "in the database for GET /admin/requests/{id}.")
    trace_retention_days: float = Field(7.0, gt=0, description="Traces older than this are deleted (hourly).")
    trace_max_chars: int = Field(20_000, ge=100, description="The prompt and the answer in a trace are cut to this.")
    redact_traces: bool = Field(True, description="Replace personal data (the PII guard's recognizers) in "
                                "stored traces, whatever the request's PII policy.")
    max_pending_traces: int = Field(2000, ge=1, description="Traces waiting to be written at most; beyond it new "
                                    "traces are dropped (conduit:traces_dropped_total), log rows never.")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint, e.g. "
                                      "http://127.0.0.1:4318/v1/traces; unset: no export.")
    otlp_headers: dict[str, str] = Field(default_factory=dict, description="Headers sent with each OTLP export.")
    service_name: str = Field("conduit", description="The service.name resource attribute of exported spans.")
    metrics_top_tenants: int = Field(20, ge=0, description="Tenants with their own metric labels (the first seen); "
                                     "the rest are counted under tenant='other'.")
    drift_window: int = Field(100, ge=10, description="Retrieval queries per drift window (the first window "
                              "of a collection and model is its baseline).")
    drift_threshold: float = Field(0.2, gt=0, le=2, description="Cosine distance between a window's query "
                                   "centroid and the baseline's that counts as drift.")
    drift_score_drop: float = Field(0.15, gt=0, description="Drop of the mean top retrieval score below the "
                                    "baseline's that counts as drift.")
    drift_webhook_url: str | None = Field(None, description="Drift events are POSTed here (and always logged).")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONDUIT_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("data"), description="Database, generated admin key, indexes.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    admin_key: SecretStr | None = Field(None, description="Admin API key; generated on first start if unset.")
    server: ServerSettings = ServerSettings()
    models: list[ModelSettings] = Field(default_factory=lambda: [
        ModelSettings(name="smollm2"),
        # A base model, for legacy completions only: it has no chat template.
        ModelSettings(name="gemma", source="gemma3-270m", capabilities=["completions"])])
    request_log: RequestLogSettings = RequestLogSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    tenants: list[TenantSettings] = Field(default_factory=list)
    router: RouterSettings | None = None
    cache: CacheSettings = CacheSettings()
    gateway: GatewaySettings = GatewaySettings()
    rag: RagSettings = RagSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    guards: GuardPolicy = GuardPolicy()
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used where a store is 'redis'.")

    @model_validator(mode="after")
    def _names_resolve(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        known = set(names)
        for m in self.models:
            for target in [*m.fallbacks, *([m.context_fallback] if m.context_fallback else [])]:
                if target not in known:
                    raise ValueError(f"model '{m.name}' falls back to unknown model '{target}'")
        for owner in [*self.models, *self.tenants]:
            self.guards.merged(owner.guards)  # a bad override fails at start, not on a request
        if self.router is not None:
            if self.router.name in known:
                raise ValueError(f"router name '{self.router.name}' is also a model's name")
            missing = [t for t in self.router.tiers if t not in known]
            if missing:
                raise ValueError(f"router tiers name unknown models: {missing}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'conduit.db').resolve()}"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for `conduit config show`."""
        data = self.model_dump(mode="json")
        if self.admin_key is not None:
            data["admin_key"] = "********"
        if self.database_url and "@" in self.database_url:
            scheme, _, rest = self.database_url.partition("://")
            data["database_url"] = f"{scheme}://********@{rest.rsplit('@', 1)[1]}"
        return data


def _config_file() -> Path | None:
    explicit = os.environ.get("CONDUIT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"CONDUIT_CONFIG points to {path}, which is not a file")
        return path
    default = Path("conduit.yaml")
    return default if default.is_file() else None
