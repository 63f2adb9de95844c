"""Authentication: who is calling, from the `Authorization: Bearer` header."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from conduit.errors import APIError
from conduit.store.keys import KeyStore

ADMIN_KEY_FILE = "admin_key"


@dataclass(frozen=True)
class Principal:
    tenant_id: str | None  # None for the admin key, which belongs to no tenant
    tenant: str | None
    key_id: str | None
    is_admin: bool = False


ADMIN = Principal(tenant_id=None, tenant=None, key_id="admin", is_admin=True)


def ensure_admin_key(configured: str | None, data_dir: Path) -> tuple[str, Path | None]:
    """The admin key: the configured one, else the one in data_dir, else a new one written 0600.

    Returns the key and the file that holds it (None when it came from configuration).
    """
    if configured:
        return configured, None
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text().strip(), path
    data_dir.mkdir(parents=True, exist_ok=True)
    key = f"cdk-admin-{secrets.token_urlsafe(32)}"
    # Create with 0600 from the start, so the secret is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, path


class Authenticator:
    def __init__(self, admin_key: str, keys: KeyStore) -> None:
        self._admin_key = admin_key.encode()
        self._keys = keys

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise _unauthorized("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise _unauthorized("Malformed Authorization header. Expected 'Bearer <key>'.")
        if hmac.compare_digest(presented.encode(), self._admin_key):
            return ADMIN
        key = self._keys.verify(presented)
        if key is None:
            raise _unauthorized("Incorrect API key provided.")
        if key.status != "active":
            raise _unauthorized(f"This API key has been {key.status}.")
        return Principal(tenant_id=key.tenant_id, tenant=key.tenant, key_id=key.id)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise APIError(403, "This endpoint needs the admin key.", "permission_error", code="forbidden")


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, "authentication_error", code="invalid_api_key")
