"""Files and vector stores in OpenAI's API shape, and their search.

POST/GET /v1/files, GET/DELETE /v1/files/{id}; POST/GET /v1/vector_stores,
GET/DELETE /v1/vector_stores/{id}; POST/GET /v1/vector_stores/{id}/files,
GET/DELETE /v1/vector_stores/{id}/files/{file_id}; POST /v1/vector_stores/{id}/search.
Everything is the caller's tenant's: another tenant's id answers 404, exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from conduit.api.deps import authenticated, parse_body
from conduit.api.schemas_retrieval import AttachFile, CreateVectorStore, SearchRequest
from conduit.errors import APIError
from conduit.gateway.auth import Principal
from conduit.rag.chunk import ChunkingOptions
from conduit.rag.filters import validate
from conduit.rag.service import Collections, IngestJobs
from conduit.store.collections import CollectionStore
from conduit.store.tables import StoredFile, VectorStore, VectorStoreFile

router = APIRouter(prefix="/v1")
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def _collections(request: Request) -> Collections:
    return request.app.state.collections


def _store(request: Request) -> CollectionStore:
    return request.app.state.collections.store


# -- files --------------------------------------------------------------------------------------

@router.post("/files")
async def upload_file(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise APIError(400, "Send the file as the multipart field 'file'.", param="file", code="missing_file")
    if not isinstance(purpose, str) or not purpose:
        raise APIError(400, "Missing 'purpose' (for example 'assistants').", param="purpose", code="missing_purpose")
    data = await upload.read()
    row = await asyncio.to_thread(_store(request).save_file, principal.tenant_id, upload.filename or "upload",
                                  data, purpose, hashlib.sha256(data).hexdigest())
    return _file_json(row)


@router.get("/files")
async def list_files(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    rows = await asyncio.to_thread(_store(request).files, principal.tenant_id)
    return _page([_file_json(r) for r in rows])


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    return _file_json(await _own_file(request, principal, file_id))


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    await _own_file(request, principal, file_id)
    stores = await asyncio.to_thread(_store(request).delete_file, principal.tenant_id, file_id)
    for store_id in stores:
        await asyncio.to_thread(_collections(request).refresh, store_id)
    return {"id": file_id, "object": "file", "deleted": True}


# -- vector stores ------------------------------------------------------------------------------

@router.post("/vector_stores")
async def create_vector_store(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    body = await parse_body(request, CreateVectorStore)
    files = [await _own_file(request, principal, file_id) for file_id in body.file_ids]
    chunking = (body.chunking_strategy.options() if body.chunking_strategy else ChunkingOptions()).model_dump()
    row = await asyncio.to_thread(_store(request).create_store, principal.tenant_id, body.name, chunking, body.metadata)
    for stored in files:
        await _attach(request, row, stored, None)
    return await _store_json(request, row)


@router.get("/vector_stores")
async def list_vector_stores(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    rows = await asyncio.to_thread(_store(request).stores, principal.tenant_id)
    return _page([await _store_json(request, r) for r in rows])


@router.get("/vector_stores/{store_id}")
async def get_vector_store(store_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    return await _store_json(request, await _own_store(request, principal, store_id))


@router.delete("/vector_stores/{store_id}")
async def delete_vector_store(store_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    await _own_store(request, principal, store_id)
    await asyncio.to_thread(_store(request).delete_store, store_id)
    _collections(request).forget(store_id)
    return {"id": store_id, "object": "vector_store.deleted", "deleted": True}


@router.post("/vector_stores/{store_id}/files")
async def attach_file(store_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    body = await parse_body(request, AttachFile)
    store = await _own_store(request, principal, store_id)
    stored = await _own_file(request, principal, body.file_id)
    return await _attach(request, store, stored, body.attributes)


@router.get("/vector_stores/{store_id}/files")
async def list_store_files(store_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    await _own_store(request, principal, store_id)
    rows = await asyncio.to_thread(_store(request).store_files, store_id)
    return _page([_store_file_json(r) for r in rows])


@router.get("/vector_stores/{store_id}/files/{file_id}")
async def get_store_file(store_id: str, file_id: str, request: Request,
                         principal: Principal = Depends(authenticated)) -> dict:
    await _own_store(request, principal, store_id)
    row = await asyncio.to_thread(_store(request).store_file, store_id, file_id)
    if row is None:
        raise _not_found("file", file_id, "file_id")
    return _store_file_json(row)


@router.delete("/vector_stores/{store_id}/files/{file_id}")
async def detach_file(store_id: str, file_id: str, request: Request,
                      principal: Principal = Depends(authenticated)) -> dict:
    await _own_store(request, principal, store_id)
    if not await asyncio.to_thread(_store(request).detach, store_id, file_id):
        raise _not_found("file", file_id, "file_id")
    await asyncio.to_thread(_collections(request).refresh, store_id)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.post("/vector_stores/{store_id}/search")
async def search(store_id: str, request: Request, principal: Principal = Depends(authenticated)) -> dict:
    body = await parse_body(request, SearchRequest)
    await _own_store(request, principal, store_id)
    if body.filters is not None:
        try:
            validate(body.filters)
        except ValueError as exc:
            raise APIError(400, f"Invalid filters: {exc}", param="filters", code="invalid_value") from None
    ranking = body.ranking_options
    mode = ranking.ranker if ranking and ranking.ranker in ("dense", "sparse", "hybrid") else None
    results = await asyncio.to_thread(_collections(request).search, [store_id], body.text, body.max_num_results,
                                      body.filters, mode)
    threshold = ranking.score_threshold if ranking else 0.0
    data = [{"file_id": r.chunk.file_id, "filename": r.filename, "score": relevance(r.hit),
             "attributes": r.attributes,
             "content": [{"type": "text", "text": r.chunk.text}]}
            for r in results if relevance(r.hit) >= threshold]
    return {"object": "vector_store.search_results.page", "search_query": body.text, "data": data,
            "has_more": False, "next_page": None}


def relevance(hit: Any) -> float:
    """The score shown to clients: the query-chunk cosine similarity (0..1 in practice), or for
    BM25-only search the BM25 score squashed into 0..1. Results are ordered by the fused rank."""
    if hit.similarity is not None:
        return round(max(0.0, float(hit.similarity)), 6)
    bm25 = hit.bm25 or 0.0
    return round(bm25 / (bm25 + 10.0), 6)


# -- helpers ------------------------------------------------------------------------------------

async def _attach(request: Request, store: VectorStore, stored: StoredFile, attributes: dict | None) -> dict:
    row = await asyncio.to_thread(_store(request).attach, store.id, stored.id, attributes)
    jobs: IngestJobs = request.app.state.ingest_jobs
    jobs.submit(store.id, stored.id, stored.filename, ChunkingOptions.model_validate_json(store.chunking))
    return _store_file_json(row)


async def _own_file(request: Request, principal: Principal, file_id: str) -> StoredFile:
    row = await asyncio.to_thread(_store(request).file, principal.tenant_id, file_id)
    if row is None:
        raise _not_found("file", file_id, "file_id")
    return row


async def _own_store(request: Request, principal: Principal, store_id: str) -> VectorStore:
    row = await asyncio.to_thread(_store(request).store, principal.tenant_id, store_id)
    if row is None:
        raise _not_found("vector store", store_id, "vector_store_id")
    return row


def _not_found(what: str, ident: str, param: str) -> APIError:
    return APIError(404, f"No {what} found with id '{ident}'.", param=param, code="not_found")


def _page(data: list[dict]) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": False}


def _file_json(row: StoredFile) -> dict:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at.timestamp()),
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None}


async def _store_json(request: Request, row: VectorStore) -> dict:
    files = await asyncio.to_thread(_store(request).store_files, row.id)
    counts = {state: sum(f.status == state for f in files) for state in ("in_progress", "completed", "failed",
                                                                          "cancelled")}
    return {"id": row.id, "object": "vector_store", "created_at": int(row.created_at.timestamp()), "name": row.name,
            "usage_bytes": sum(f.usage_bytes for f in files), "file_counts": {**counts, "total": len(files)},
            "status": "in_progress" if counts["in_progress"] else "completed", "expires_after": None,
            "expires_at": None, "last_active_at": int(row.created_at.timestamp()),
            "metadata": json.loads(row.metadata_json or "{}")}


def _store_file_json(row: VectorStoreFile) -> dict:
    error = {"code": row.error_code, "message": row.error_message} if row.status == "failed" else None
    return {"id": row.file_id, "object": "vector_store.file", "usage_bytes": row.usage_bytes,
            "created_at": int(row.created_at.timestamp()),
            "vector_store_id": row.vector_store_id, "status": row.status, "last_error": error,
            "attributes": json.loads(row.attributes_json or "{}")}
