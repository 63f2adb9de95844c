"""Database, migrations, key store and the request-log writer, against a real SQLite file."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from conduit.observability.request_log import RequestLogWriter, RequestRecord
from conduit.store.db import Database
from conduit.store.keys import KeyNotFound, KeyStore, parse_expiry
from conduit.store.tables import RequestLog


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'sub' / 'conduit.db'}")
    database.migrate()
    return database


def test_migrations_create_schema_idempotently(db: Database) -> None:
    db.migrate()  # a second run is a no-op
    tables = set(inspect(db.engine).get_table_names())
    assert {"tenants", "api_keys", "request_log", "request_traces", "feedback", "alembic_version"} <= tables
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0009"


def test_keys(db: Database) -> None:
    keys = KeyStore(db)
    info, secret = keys.create("acme", name="one")
    assert keys.verify(secret) == info and info.status == "active"
    assert keys.verify(secret + "x") is None
    assert keys.verify(secret.replace(info.id.removeprefix("key_"), "0" * 16)) is None
    assert keys.verify("garbage") is None
    other, _ = keys.create("acme")
    assert other.tenant_id == info.tenant_id  # the tenant is reused
    assert [k.id for k in keys.list("acme")] == [info.id, other.id]
    assert keys.revoke(info.id).status == "revoked"
    assert keys.verify(secret).status == "revoked"
    with pytest.raises(KeyNotFound):
        keys.revoke("key_unknown")
    with pytest.raises(ValueError):
        keys.create("   ")
    with pytest.raises(ValueError):
        keys.create("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # The secret itself is never stored.
    with db.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.execute(text("SELECT * FROM api_keys")))
    assert secret.split("-", 2)[2] not in dump


def test_parse_expiry() -> None:
    assert parse_expiry("2099-01-31") == datetime(2099, 1, 31, tzinfo=UTC)
    assert parse_expiry("2099-01-31T10:00:00+02:00").utcoffset() == timedelta(hours=2)
    for bad in ("tomorrow", "2000-01-01", "2099-13-01"):
        with pytest.raises(ValueError):
            parse_expiry(bad)


def test_request_log_close_writes_everything(db: Database) -> None:
    writer = RequestLogWriter(db, batch_size=7, flush_interval_s=60)
    for i in range(100):
        writer.record(RequestRecord(id=f"req-{i}", endpoint="chat.completions", status="ok",
                                    http_status=200, latency_ms=1.0))
    writer.close()
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(RequestLog)) == 100


def test_request_log_flushes_on_interval(db: Database) -> None:
    writer = RequestLogWriter(db, batch_size=256, flush_interval_s=0.05)
    writer.record(RequestRecord(id="req-x", endpoint="completions", status="error", http_status=400,
                                latency_ms=2.0, error_type="invalid_value"))
    try:
        for _ in range(100):
            with db.session() as session:
                row = session.get(RequestLog, "req-x")
            if row is not None:
                break
            time.sleep(0.05)
        assert row is not None and row.error_type == "invalid_value"
    finally:
        writer.close()
