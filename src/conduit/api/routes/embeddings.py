"""POST /v1/embeddings: the configured embedding model (by default the bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends, Request

from conduit.api.deps import authenticated, parse_body
from conduit.api.schemas_retrieval import EmbeddingsRequest
from conduit.errors import APIError
from conduit.gateway.auth import Principal

router = APIRouter()
MAX_INPUTS = 2048


@router.post("/v1/embeddings")
async def embeddings(request: Request, principal: Principal = Depends(authenticated)) -> dict:
    body = await parse_body(request, EmbeddingsRequest)
    embedder = request.app.state.collections.embedder
    if body.model != embedder.model_name:
        raise APIError(404, f"The embedding model '{body.model}' does not exist; this server has "
                       f"'{embedder.model_name}'.", param="model", code="model_not_found")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_INPUTS or any(not t for t in texts):
        raise APIError(400, f"'input' takes 1 to {MAX_INPUTS} non-empty strings.", param="input", code="invalid_value")
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise APIError(400, f"'{embedder.model_name}' has {embedder.dimensions} dimensions only.", param="dimensions",
                       code="invalid_value")
    vectors = (await embedder.aencode(texts)).astype(np.float32)
    tokens = embedder.count_tokens(texts)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": embedder.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
