"""The FastAPI application and its lifecycle.

Start: migrate the database, make sure an admin key exists, start the request-log writer,
then load models in the background (/healthz answers at once, /readyz once they are loaded).
Stop (SIGTERM): uvicorn stops accepting and drains in-flight requests; then the backends
close and the request log writes every queued row.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI

from conduit.api.errors import BodySizeLimit, install_error_handlers
from conduit.api.routes import admin, embeddings, generation, metrics, models, usage, vector_stores
from conduit.backends.embeddings import LocalEmbedder, OpenAIEmbedder, make_embedder
from conduit.cache import ExactCache
from conduit.cache.exact import AnswerStore
from conduit.config import Settings
from conduit.gateway.auth import Authenticator, ensure_admin_key
from conduit.gateway.budget import Budgets
from conduit.gateway.gatekeeper import Gatekeeper
from conduit.gateway.limit_store import LimitStore, MemoryLimitStore
from conduit.gateway.limits import Limiter
from conduit.observability.events import EventSink
from conduit.observability.guard_metrics import GuardStats
from conduit.observability.request_log import RequestLogWriter
from conduit.pipeline.guards import Guards
from conduit.pipeline.pipeline import Pipeline
from conduit.pipeline.retrieval import RetrievalStage
from conduit.rag.service import Collections, IngestJobs, make_reranker
from conduit.routing.registry import Registry
from conduit.routing.router import Router
from conduit.store.collections import CollectionStore
from conduit.store.db import Database
from conduit.store.keys import KeyStore
from conduit.store.redis_cache import RedisExactCache
from conduit.store.redis_limits import RedisLimitStore

if TYPE_CHECKING:
    from conduit.cache.semantic import SemanticCache

log = logging.getLogger("conduit")
Embedder = LocalEmbedder | OpenAIEmbedder


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url)
        await asyncio.to_thread(db.migrate)
        keys = KeyStore(db)
        admin_key, key_file = ensure_admin_key(
            settings.admin_key.get_secret_value() if settings.admin_key else None, settings.data_dir
        )
        if key_file is not None:
            log.info("admin key in %s", key_file.resolve())
        registry = Registry(settings)
        router = Router(settings.router) if settings.router else None
        app.state.settings = settings
        app.state.db = db
        app.state.started_at = int(time.time())
        app.state.keys = keys
        app.state.auth = Authenticator(admin_key, keys, settings.gateway.key_cache_ttl_s)
        answers = _answer_store(settings)
        embedder = make_embedder(settings.embeddings)  # one for retrieval, /v1/embeddings and the semantic cache
        torch.set_num_threads(settings.embeddings.server_threads)  # this process's torch: embeddings only
        rag = settings.rag
        events = EventSink(registry.client)
        guards = await asyncio.to_thread(_guards, settings, admin_key, events)
        app.state.guard_stats = guards.stats
        detector = guards.detector
        collections = Collections(CollectionStore(db, settings.data_dir / "files"), embedder,
                                  settings.data_dir / "indexes",
                                  reranker=make_reranker(rag.rerank, embedder, rag.cross_encoder_path),
                                  rerank_candidates=rag.rerank_candidates,
                                  injection_scorer=detector.score if detector is not None else None)
        semantic = _semantic_cache(settings, embedder)
        if semantic is not None:  # free the answers that read a collection as soon as it changes
            collections.listeners.append(semantic.invalidate_collection)
        app.state.pipeline = Pipeline(registry, router, settings.cache, answers, semantic,
                                      RetrievalStage(collections, settings.rag, registry), guards)
        limit_store = _limit_store(settings)
        budgets = Budgets(limit_store, db, settings.tenants, settings.gateway.budget_webhook_url, events)
        app.state.gatekeeper = Gatekeeper(Limiter(limit_store, settings.tenants), budgets)
        app.state.request_log = RequestLogWriter(
            db, settings.request_log.batch_size, settings.request_log.flush_interval_s
        )
        app.state.collections = collections
        app.state.ingest_jobs = IngestJobs(collections)
        resumed = await app.state.ingest_jobs.resume()
        if resumed:
            log.info("resuming the ingestion of %d file(s) a previous run left unfinished", resumed)
        await registry.start()
        # The classifier's embedding model takes seconds to load: not a reason to delay serving.
        training = asyncio.create_task(router.start()) if router is not None else None
        try:
            yield
        finally:
            if training is not None:
                training.cancel()
            await app.state.ingest_jobs.close()
            await asyncio.to_thread(collections.save)
            await events.close()
            await registry.close()
            await limit_store.close()
            if isinstance(answers, RedisExactCache):
                await answers.close()
            app.state.request_log.close()
            db.close()
            log.info("stopped; request log flushed")

    app = FastAPI(title="Conduit", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.server.max_body_bytes)
    for module in (models, generation, admin, usage, metrics, embeddings, vector_stores):
        app.include_router(module.router)
    return app


def _guards(settings: Settings, admin_key: str, events: EventSink) -> Guards:
    """The guard stage, with the PII recognizers built now for every policy that uses them
    (Presidio takes a while to set up: not on a request's time)."""
    from conduit.safety.injection import InjectionDetector

    @functools.cache
    def pii(entities: tuple[str, ...]):  # -> PiiScanner, imported only when used
        from conduit.safety.pii import PiiScanner

        return PiiScanner(entities)

    policies = [settings.guards.merged(owner.guards) for owner in [*settings.models, *settings.tenants]]
    for policy in [settings.guards, *policies]:
        if policy.pii.mode != "allow" or policy.pii.output != "allow":
            pii(tuple(policy.pii.entities))
    canary_secret = hashlib.sha256(b"conduit-canary:" + admin_key.encode()).digest()
    return Guards(settings.guards, {m.name: m.guards for m in settings.models},
                  {t.name: t.guards for t in settings.tenants}, InjectionDetector.load(),
                  lambda entities: pii(tuple(entities)), events, GuardStats(), canary_secret)


def _limit_store(settings: Settings) -> LimitStore:
    if settings.gateway.limit_store == "redis":
        return RedisLimitStore(settings.redis_url)
    return MemoryLimitStore()


def _answer_store(settings: Settings) -> AnswerStore | None:
    exact = settings.cache.exact
    if not exact.enabled:
        return None
    if settings.cache.store == "redis":
        return RedisExactCache(settings.redis_url, exact.max_entries, exact.ttl_s)
    return ExactCache(exact.max_entries, exact.ttl_s)


def _semantic_cache(settings: Settings, embedder: Embedder) -> SemanticCache | None:
    semantic = settings.cache.semantic
    if not semantic.enabled:
        return None
    from conduit.cache.semantic import SemanticCache

    options = {"threshold": semantic.threshold} if semantic.threshold is not None else {}
    return SemanticCache(embedder, max_entries=semantic.max_entries, ttl_s=semantic.ttl_s, **options)
