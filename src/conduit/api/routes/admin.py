"""Admin endpoints for tenants' API keys (the admin key only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from conduit.api.deps import admin, parse_body
from conduit.api.schemas import CreateKeyRequest
from conduit.errors import APIError
from conduit.store.keys import KeyInfo, KeyNotFound, KeyStore, parse_expiry

router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])


def key_json(key: KeyInfo) -> dict:
    return {
        "id": key.id,
        "object": "api_key",
        "tenant": key.tenant,
        "name": key.name,
        "hint": f"...{key.hint}",
        "status": key.status,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "limits": key.limits.model_dump() if key.limits else None,
        "budget": key.budget.model_dump() if key.budget else None,
    }


def _keys(request: Request) -> KeyStore:
    return request.app.state.keys


@router.post("/keys", status_code=201)
async def create_key(request: Request) -> dict:
    body = await parse_body(request, CreateKeyRequest)
    expires = parse_expiry(body.expires_at) if body.expires_at else None
    key, secret = _keys(request).create(body.tenant, body.name, expires, body.limits, body.budget)
    return {**key_json(key), "key": secret}


@router.get("/keys")
async def list_keys(request: Request, tenant: str | None = None) -> dict:
    return {"object": "list", "data": [key_json(k) for k in _keys(request).list(tenant)]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict:
    try:
        revoked = _keys(request).revoke(key_id)
        request.app.state.auth.forget(key_id)
        return key_json(revoked)
    except KeyNotFound:
        raise APIError(404, f"No API key with id '{key_id}'.", param="key_id", code="key_not_found") from None
