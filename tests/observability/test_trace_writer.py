"""The request-log writer's traces: redacted before they are stored, expired after the retention
period, dropped (never the log rows) when the writer falls behind, never stored unredacted."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from conduit.observability.request_log import RequestLogWriter, RequestRecord
from conduit.observability.tracing import redactor
from conduit.store.db import Database
from conduit.store.tables import RequestLog, RequestTrace


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'conduit.db'}")
    database.migrate()
    return database


def _record(request_id: str) -> RequestRecord:
    return RequestRecord(id=request_id, endpoint="chat.completions", status="ok", http_status=200, latency_ms=1.0)


def _trace(text: str) -> dict:
    return {"stages": [], "prompt": [{"role": "user", "content": text}], "answer": text,
            "retrieval": {"query": text, "chunks": [{"text": text}]}}


def _ids(db: Database, table) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(table.id)))


def test_traces_are_redacted_before_they_are_written(db: Database) -> None:
    writer = RequestLogWriter(db, flush_interval_s=0.05, redact=redactor(lambda t: t.replace("secret", "<X>")))
    writer.record(_record("req-1"), _trace("the secret word"))
    writer.close()
    with db.session() as session:
        body = json.loads(session.scalar(select(RequestTrace.body)))
    assert "secret" not in json.dumps(body)
    assert body["prompt"][0]["content"] == body["answer"] == body["retrieval"]["query"] == "the <X> word"


def test_a_trace_that_cannot_be_redacted_is_not_kept(db: Database) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("recognizer failed")

    writer = RequestLogWriter(db, flush_interval_s=0.05, redact=redactor(broken))
    writer.record(_record("req-2"), _trace("anything"))
    writer.close()
    assert _ids(db, RequestLog) == {"req-2"} and _ids(db, RequestTrace) == set()


def test_expired_traces_are_deleted(db: Database) -> None:
    old, fresh = datetime.now(UTC) - timedelta(days=3), datetime.now(UTC)
    with db.session() as session:
        session.execute(insert(RequestTrace), [{"id": "req-old", "created_at": old, "body": "{}"},
                                               {"id": "req-new", "created_at": fresh, "body": "{}"}])
    writer = RequestLogWriter(db, flush_interval_s=0.05, trace_retention_days=2)
    writer.close()  # the writer expires traces when it starts
    assert _ids(db, RequestTrace) == {"req-new"}


def test_traces_dropped_when_the_writer_falls_behind(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = RequestLogWriter._write

    def slow_write(self, batch):
        release.wait(10)
        original(self, batch)

    monkeypatch.setattr(RequestLogWriter, "_write", slow_write)
    writer = RequestLogWriter(db, flush_interval_s=0.05, max_pending_traces=2)
    for i in range(5):
        writer.record(_record(f"req-{i}"), _trace("x"))
    release.set()
    writer.close()
    assert writer.traces_dropped == 3
    assert _ids(db, RequestLog) == {f"req-{i}" for i in range(5)}  # every log row kept
    assert _ids(db, RequestTrace) == {"req-0", "req-1"}
