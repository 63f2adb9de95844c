"""Settings: defaults, YAML file, environment, and their precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from conduit.config import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CONDUIT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert settings.server.port == 8000 and settings.server.host == "127.0.0.1"
    assert [m.name for m in settings.models] == ["smollm2", "gemma"]
    assert settings.resolved_database_url.endswith("data/conduit.db")


def test_yaml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conduit.yaml").write_text(yaml.safe_dump({"server": {"port": 9000, "log_level": "debug"}}))
    assert Settings().server.port == 9000
    monkeypatch.setenv("CONDUIT_SERVER__PORT", "9100")
    settings = Settings()
    assert settings.server.port == 9100 and settings.server.log_level == "debug"


def test_explicit_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "a"}, {"name": "b", "dtype": "float32"}]}))
    monkeypatch.setenv("CONDUIT_CONFIG", str(path))
    assert [m.name for m in Settings().models] == ["a", "b"]
    monkeypatch.setenv("CONDUIT_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_invalid_values_and_unknown_keys_rejected(tmp_path: Path) -> None:
    (tmp_path / "conduit.yaml").write_text(yaml.safe_dump({"server": {"port": 70000}}))
    with pytest.raises(ValidationError):
        Settings()
    (tmp_path / "conduit.yaml").write_text(yaml.safe_dump({"sevrer": {"port": 1}}))
    with pytest.raises(ValidationError):
        Settings()
    (tmp_path / "conduit.yaml").write_text(yaml.safe_dump({"models": [{"name": "x", "dtype": "int3"}]}))
    with pytest.raises(ValidationError):
        Settings()
