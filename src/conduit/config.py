"""Typed settings: one tree from `conduit.yaml` and `CONDUIT_*` environment variables.

Precedence (highest first): keyword arguments, environment (`CONDUIT_SERVER__PORT=9000`),
the YAML file (`CONDUIT_CONFIG`, else `./conduit.yaml` when present), defaults.
Every field is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    drain_timeout_s: float = Field(30.0, ge=0, description="How long SIGTERM waits for in-flight requests.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ModelSettings(BaseModel):
    """One model served by the embedded engine."""

    name: str = Field(description="The id clients send as `model`.")
    source: str = Field("smollm2", description="'smollm2' (bundled) or a path to a llama GGUF file.")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    max_model_len: int | None = Field(None, ge=16, description="Cap on context length; default: the model's.")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model name must not be empty")
        return value


class RequestLogSettings(BaseModel):
    batch_size: int = Field(256, ge=1, description="Rows written per database transaction at most.")
    flush_interval_s: float = Field(0.5, gt=0, description="Longest a row waits before being written.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONDUIT_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("data"), description="Database, generated admin key, indexes.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    admin_key: SecretStr | None = Field(None, description="Admin API key; generated on first start if unset.")
    server: ServerSettings = ServerSettings()
    models: list[ModelSettings] = Field(default_factory=lambda: [ModelSettings(name="smollm2")])
    request_log: RequestLogSettings = RequestLogSettings()

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

    def model(self, name: str) -> ModelSettings | None:
        return next((m for m in self.models if m.name == name), None)

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
