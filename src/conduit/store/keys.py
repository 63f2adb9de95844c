"""Tenants and API keys.

A key reads `cdk-<key id>-<secret>`. The id finds the row; the secret is checked against its
stored SHA-256 with a constant-time comparison. The secret is random (256 bits), so a fast
hash is enough: there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from conduit.config import Budget, Limits
from conduit.store.db import Database
from conduit.store.tables import ApiKey, Tenant

KEY_PREFIX = "cdk"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str
    tenant: str
    name: str | None
    hint: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: Limits | None = None  # the key's own, on top of its tenant's
    budget: Budget | None = None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


class KeyNotFound(LookupError):
    pass


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, tenant: str, name: str | None = None, expires_at: datetime | None = None,
               limits: Limits | None = None, budget: Budget | None = None) -> tuple[KeyInfo, str]:
        """Create a key (and the tenant if new). Returns the key and its secret, shown only now."""
        limits = limits or Limits()
        if not tenant.strip():
            raise ValueError("tenant name must not be empty")
        if expires_at is not None:
            expires_at = _aware(expires_at)
            if expires_at <= datetime.now(UTC):
                raise ValueError("expires_at must be in the future")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._db.session() as session:
            row = session.scalar(select(Tenant).where(Tenant.name == tenant))
            if row is None:
                row = Tenant(id=f"ten_{secrets.token_hex(8)}", name=tenant)
                session.add(row)
                session.flush()
            key = ApiKey(
                id=f"key_{key_id}",
                tenant_id=row.id,
                name=name,
                secret_hash=_digest(secret),
                hint=secret[-4:],
                expires_at=expires_at,
                rpm_limit=limits.rpm,
                tpm_limit=limits.tpm,
                max_concurrent=limits.max_concurrent,
                budget_usd=budget.usd if budget else None,
                budget_period=budget.period if budget else None,
            )
            session.add(key)
            session.flush()
            info = _info(key, row)
        return info, f"{KEY_PREFIX}-{key_id}-{secret}"

    def tenant_id(self, name: str) -> str | None:
        with self._db.session() as session:
            return session.scalar(select(Tenant.id).where(Tenant.name == name))

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        query = select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id).order_by(ApiKey.created_at)
        if tenant is not None:
            query = query.where(Tenant.name == tenant)
        with self._db.session() as session:
            return [_info(key, row) for key, row in session.execute(query)]

    def revoke(self, key_id: str) -> KeyInfo:
        with self._db.session() as session:
            found = session.execute(
                select(ApiKey, Tenant).join(Tenant, ApiKey.tenant_id == Tenant.id).where(ApiKey.id == key_id)
            ).first()
            if found is None:
                raise KeyNotFound(key_id)
            key, tenant = found
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
            return _info(key, tenant)

    def verify(self, presented: str) -> KeyInfo | None:
        """The key whose secret `presented` is, whatever its status; None if none matches."""
        parts = presented.split("-", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        _, key_id, secret = parts
        with self._db.session() as session:
            found = session.execute(
                select(ApiKey, Tenant)
                .join(Tenant, ApiKey.tenant_id == Tenant.id)
                .where(ApiKey.id == f"key_{key_id}")
            ).first()
        # Compare a digest even for unknown ids so timing does not tell which ids exist.
        stored = found[0].secret_hash if found else _digest("")
        if not hmac.compare_digest(_digest(secret), stored) or found is None:
            return None
        return _info(*found)


def parse_expiry(text: str) -> datetime:
    """'2027-01-31' (midnight UTC) or an ISO date-time; must lie in the future."""
    try:
        moment = _aware(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO date (YYYY-MM-DD) or date-time") from None
    if moment <= datetime.now(UTC):
        raise ValueError(f"expiry {moment.isoformat()} is not in the future")
    return moment


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _info(key: ApiKey, tenant: Tenant) -> KeyInfo:
    limits = Limits(rpm=key.rpm_limit, tpm=key.tpm_limit, max_concurrent=key.max_concurrent)
    budget = Budget(usd=key.budget_usd, period=key.budget_period or "month") if key.budget_usd else None
    return KeyInfo(
        id=key.id,
        tenant_id=tenant.id,
        tenant=tenant.name,
        name=key.name,
        hint=key.hint,
        created_at=_aware(key.created_at),
        expires_at=_aware(key.expires_at) if key.expires_at else None,
        revoked_at=_aware(key.revoked_at) if key.revoked_at else None,
        limits=None if limits == Limits() else limits,
        budget=budget,
    )
