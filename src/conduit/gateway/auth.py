"""Authentication: who is calling, from the `Authorization: Bearer` header."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from conduit.config import Budget, Limits
from conduit.errors import APIError
from conduit.store.keys import KeyInfo, KeyStore

ADMIN_KEY_FILE = "admin_key"


@dataclass(frozen=True)
class Principal:
    tenant_id: str | None  # None for the admin key, which belongs to no tenant
    tenant: str | None
    key_id: str | None
    is_admin: bool = False
    limits: Limits | None = None  # the key's own limits and budget (the tenant's are in the config)
    budget: Budget | None = None


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
    """Checks keys against the store, remembering verified ones for `cache_ttl_s` so that the
    database stays off the hot path. A key revoked here is forgotten at once; one revoked by
    another process stops working within `cache_ttl_s`."""

    MAX_CACHED = 100_000

    def __init__(self, admin_key: str, keys: KeyStore, cache_ttl_s: float = 10.0) -> None:
        self._admin_key = admin_key.encode()
        self._keys = keys
        self._cache_ttl_s = cache_ttl_s
        self._verified: dict[bytes, tuple[float, KeyInfo]] = {}  # digest -> (until, key)

    def forget(self, key_id: str) -> None:
        for digest, (_, key) in list(self._verified.items()):
            if key is not None and key.id == key_id:
                del self._verified[digest]

    def _lookup(self, presented: str) -> KeyInfo | None:
        if self._cache_ttl_s <= 0:
            return self._keys.verify(presented)
        # Cached under a digest of the whole key, so only the exact secret finds the entry.
        digest = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = self._keys.verify(presented)
        if key is not None:  # unknown keys are not cached: garbage must not fill memory
            if len(self._verified) >= self.MAX_CACHED:
                self._verified.clear()
            self._verified[digest] = (now + self._cache_ttl_s, key)
        return key

    async def authenticate_async(self, authorization: str | None) -> Principal:
        """`authenticate` without leaving the event loop when the key is the admin's or cached;
        a key not seen lately is checked against the database in a worker thread."""
        if self._cached(authorization):
            return self.authenticate(authorization)
        return await asyncio.to_thread(self.authenticate, authorization)

    def _cached(self, authorization: str | None) -> bool:
        presented = (authorization or "").partition(" ")[2].strip()
        if not presented or hmac.compare_digest(presented.encode(), self._admin_key):
            return True  # answered without the database
        found = self._verified.get(hashlib.sha256(presented.encode()).digest())
        return found is not None and found[0] > time.monotonic()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise _unauthorized("Missing API key. Send it as 'Authorization: Bearer <key>'.")
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise _unauthorized("Malformed Authorization header. Expected 'Bearer <key>'.")
        if hmac.compare_digest(presented.encode(), self._admin_key):
            return ADMIN
        key = self._lookup(presented)
        if key is None:
            raise _unauthorized("Incorrect API key provided.")
        if key.status != "active":
            raise _unauthorized(f"This API key has been {key.status}.")
        return Principal(tenant_id=key.tenant_id, tenant=key.tenant, key_id=key.id, limits=key.limits,
                         budget=key.budget)


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise APIError(403, "This endpoint needs the admin key.", "permission_error", code="forbidden")


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, "authentication_error", code="invalid_api_key")
