"""Tenants' keys: created by the admin, shown once, checked on every request."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from tests.conftest import ServerProcess


def _create_key(server: ServerProcess, tenant: str, **extra) -> dict:
    response = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json={"tenant": tenant, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def _chat(server: ServerProcess, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})


def test_missing_and_invalid_keys_401(server: ServerProcess) -> None:
    for key in (None, "cdk-0000-nope", "sk-something-else", "cdk-admin-test-secret-kex"):
        response = _chat(server, key)
        assert response.status_code == 401, (key, response.text)
        assert response.json()["error"]["type"] == "authentication_error"
    for header in ("Basic abc", "Bearer", "cdk-abc"):
        response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": header})
        assert response.status_code == 401, header
    with pytest.raises(openai.AuthenticationError):
        server.client("cdk-abcdef0123456789-wrong").models.list()


def test_tenant_key_lifecycle(server: ServerProcess) -> None:
    created = _create_key(server, "acme", name="ci")
    secret = created["key"]
    assert created["tenant"] == "acme" and created["status"] == "active"
    assert secret.endswith(created["hint"].removeprefix("..."))
    assert _chat(server, secret).status_code == 200

    listed = httpx.get(f"{server.url}/admin/keys", headers=server.headers(), params={"tenant": "acme"}).json()
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert secret not in str(listed)  # the secret is shown only once

    # A wrong secret for a real key id is refused.
    key_id = created["id"].removeprefix("key_")
    assert _chat(server, f"cdk-{key_id}-{'A' * 43}").status_code == 401

    revoked = httpx.delete(f"{server.url}/admin/keys/{created['id']}", headers=server.headers())
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    response = _chat(server, secret)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]
    assert httpx.delete(f"{server.url}/admin/keys/key_nope", headers=server.headers()).status_code == 404


def test_expired_key_401(server: ServerProcess) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    secret = _create_key(server, "shortlived", expires_at=expires)["key"]
    assert _chat(server, secret).status_code == 200
    time.sleep(2)
    response = _chat(server, secret)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_bad_key_requests_400(server: ServerProcess) -> None:
    for body in ({"tenant": ""}, {"tenant": "x", "expires_at": "not-a-date"}, {"tenant": "x", "expires_at": "2001-01-01"}):
        response = httpx.post(f"{server.url}/admin/keys", headers=server.headers(), json=body)
        assert response.status_code == 400, response.text


def test_tenant_key_cannot_use_admin_endpoints(server: ServerProcess) -> None:
    secret = _create_key(server, "globex")["key"]
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("DELETE", "/admin/keys/key_x")):
        response = httpx.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {secret}"},
                                 json={"tenant": "evil"})
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{server.url}/admin/keys").status_code == 401


def test_request_log_has_tenant_rows(server: ServerProcess) -> None:
    created = _create_key(server, "logged")
    assert _chat(server, created["key"]).status_code == 200
    rows = server.wait_rows("key_id = ?", (created["id"],))
    row = rows[0]
    assert row["status"] == "ok" and row["http_status"] == 200 and row["model"] == "smollm2"
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 2 and row["finish_reason"] == "length"
    assert row["ttft_ms"] > 0 and row["latency_ms"] >= row["ttft_ms"]
    assert row["tenant_id"].startswith("ten_")


def test_generated_admin_key_file_is_private(tmp_path) -> None:
    srv = ServerProcess(tmp_path / "fresh", admin_key=None)
    try:
        deadline = time.monotonic() + 60
        key_file = tmp_path / "fresh" / "admin_key"
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        srv.admin_key = key_file.read_text().strip()
        srv.wait_ready()
        assert httpx.get(f"{srv.url}/admin/keys", headers=srv.headers()).status_code == 200
        assert str(key_file) in srv.log()  # the server says where the key is
    finally:
        srv.stop()
