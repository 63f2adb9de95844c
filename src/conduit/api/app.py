"""The FastAPI application and its lifecycle.

Start: migrate the database, make sure an admin key exists, start the request-log writer,
then load models in the background (/healthz answers at once, /readyz once they are loaded).
Stop (SIGTERM): uvicorn stops accepting and drains in-flight requests; then the backends
close and the request log writes every queued row.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import torch
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, GCCollector

from conduit.api.errors import BodySizeLimit, install_error_handlers
from conduit.api.heap import freeze_after, tune_collector
from conduit.api.routes import (
    admin,
    embeddings,
    generation,
    metrics,
    models,
    observe,
    ui,
    usage,
    vector_stores,
)
from conduit.backends.embeddings import LocalEmbedder, OpenAIEmbedder, make_embedder
from conduit.cache import ExactCache
from conduit.cache.exact import AnswerStore
from conduit.config import ObservabilitySettings, Settings
from conduit.gateway.auth import Authenticator, ensure_admin_key
from conduit.gateway.budget import Budgets
from conduit.gateway.gatekeeper import Gatekeeper
from conduit.gateway.limit_store import LimitStore, MemoryLimitStore
from conduit.gateway.limits import Limiter
from conduit.observability.drift import DriftMonitor
from conduit.observability.engine_metrics import EngineCollector, embedded_engines
from conduit.observability.events import EventSink
from conduit.observability.gateway_metrics import QueueCollector
from conduit.observability.guard_metrics import GuardCollector, GuardStats
from conduit.observability.recorder import Recorder
from conduit.observability.request_log import RequestLogWriter
from conduit.observability.request_metrics import (
    CallbackCounter,
    CallbackGauge,
    DeploymentCollector,
    RequestMetrics,
)
from conduit.observability.samples import EngineSampler
from conduit.observability.tracing import SpanExporter, redactor
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
        document_detector = guards.document_detector
        collections = Collections(CollectionStore(db, settings.data_dir / "files"), embedder,
                                  settings.data_dir / "indexes",
                                  reranker=make_reranker(rag.rerank, embedder, rag.cross_encoder_path),
                                  rerank_candidates=rag.rerank_candidates,
                                  injection_scorer=document_detector.score if document_detector else None)
        semantic = _semantic_cache(settings, embedder)
        if semantic is not None:  # free the answers that read a collection as soon as it changes
            collections.listeners.append(semantic.invalidate_collection)
        obs = settings.observability
        loads: list[asyncio.Task] = []  # background loads; the heap is frozen again when they end
        drift = _drift_monitor(settings, events)
        app.state.drift = drift
        app.state.pipeline = Pipeline(registry, router, settings.cache, answers, semantic,
                                      RetrievalStage(collections, settings.rag, registry, drift), guards)
        limit_store = _limit_store(settings)
        budgets = Budgets(limit_store, db, settings.tenants, settings.gateway.budget_webhook_url, events)
        app.state.gatekeeper = Gatekeeper(Limiter(limit_store, settings.tenants), budgets)
        writer = RequestLogWriter(db, settings.request_log.batch_size, settings.request_log.flush_interval_s,
                                  redact=_trace_redactor(obs, loads), max_pending_traces=obs.max_pending_traces,
                                  trace_retention_days=obs.trace_retention_days)
        metrics_registry = CollectorRegistry(auto_describe=False)

        def known_models() -> set[str]:
            return {*registry.groups, *([router.name] if router is not None else [])}

        def engines() -> list:
            return list(embedded_engines(registry.groups.values()))

        request_metrics = RequestMetrics(metrics_registry, known_models, obs.metrics_top_tenants)
        metrics_registry.register(EngineCollector(engines))
        metrics_registry.register(QueueCollector(lambda: [g.queue for g in registry.groups.values() if g.queue]))
        metrics_registry.register(GuardCollector(guards.stats))
        metrics_registry.register(DeploymentCollector(lambda: list(registry.groups.values())))
        metrics_registry.register(CallbackCounter("conduit:traces_dropped", "Traces not kept: the writer was "
                                                  "behind by max_pending_traces.", lambda: writer.traces_dropped))
        metrics_registry.register(CallbackGauge("conduit:heap_frozen_objects", "Objects exempt from garbage "
                                                "collection (loaded at start, see conduit.api.heap).",
                                                gc.get_freeze_count))
        GCCollector(registry=metrics_registry)  # python_gc_collections_total{generation} and friends
        app.state.metrics_registry = metrics_registry
        exporter = SpanExporter(obs) if obs.otlp_endpoint else None
        app.state.recorder = Recorder(writer, request_metrics, obs, exporter)
        sampler = EngineSampler(engines)
        app.state.engine_samples = sampler
        app.state.collections = collections
        app.state.ingest_jobs = IngestJobs(collections)
        resumed = await app.state.ingest_jobs.resume()
        if resumed:
            log.info("resuming the ingestion of %d file(s) a previous run left unfinished", resumed)
        await registry.start()
        sampler.start()
        # The classifier's embedding model takes seconds to load: not a reason to delay serving.
        training = asyncio.create_task(router.start()) if router is not None else None
        tune_collector()
        loads += [t for t in (registry.loading, training) if t is not None]
        settling = asyncio.create_task(freeze_after(*loads))
        try:
            yield
        finally:
            settling.cancel()
            gc.unfreeze()  # what this app leaves behind can be collected (tests run many apps in one process)
            if training is not None:
                training.cancel()
            await sampler.close()
            await app.state.ingest_jobs.close()
            await asyncio.to_thread(collections.save)
            await asyncio.to_thread(_save_drift, drift, settings.data_dir)
            await events.close()
            await registry.close()
            await limit_store.close()
            if isinstance(answers, RedisExactCache):
                await answers.close()
            app.state.recorder.close()
            db.close()
            log.info("stopped; request log flushed")

    # FastAPI's own OpenTelemetry hook is off: Conduit exports its spans itself (observability.otlp),
    # and the hook's per-request check of the global providers read the environment on every request.
    app = FastAPI(title="Conduit", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.server.max_body_bytes)
    # The proxied routes first: a request is matched against the routes in this order.
    for module in (generation, models, embeddings, admin, observe, usage, metrics, vector_stores, ui):
        app.include_router(module.router)
    return app


def _guards(settings: Settings, admin_key: str, events: EventSink) -> Guards:
    """The guard stage, with the PII recognizers built now for every policy that uses them
    (Presidio takes a while to set up: not on a request's time)."""
    from conduit.safety.injection import DOCUMENTS_ARTIFACT, MEMO_ENTRIES, InjectionDetector

    @functools.cache
    def pii(entities: tuple[str, ...]):  # -> PiiScanner, imported only when used
        from conduit.safety.pii import PiiScanner

        return PiiScanner(entities)

    policies = [settings.guards.merged(owner.guards) for owner in [*settings.models, *settings.tenants]]
    for policy in [settings.guards, *policies]:
        if policy.pii.mode != "allow" or policy.pii.output != "allow":
            pii(tuple(policy.pii.entities))
    canary_secret = hashlib.sha256(b"conduit-canary:" + admin_key.encode()).digest()
    # Input guards run before the cache lookup: a cached request's message should find its
    # verdict remembered too, or every exact-cache hit pays for scoring it again.
    exact = settings.cache.exact
    memo_entries = max(MEMO_ENTRIES, exact.max_entries if exact.enabled else 0)
    return Guards(settings.guards, {m.name: m.guards for m in settings.models},
                  {t.name: t.guards for t in settings.tenants}, InjectionDetector.load(memo_entries=memo_entries),
                  lambda entities: pii(tuple(entities)), events, GuardStats(), canary_secret,
                  InjectionDetector.load(DOCUMENTS_ARTIFACT))


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


def _trace_redactor(obs: ObservabilitySettings, loads: list[asyncio.Task]):
    """Personal data out of stored traces, with the PII guard's recognizers. Presidio takes seconds
    to load: it is loaded now in a worker thread (a task added to `loads`), and the writer waits
    for it only if a trace comes first."""
    if not obs.traces or not obs.redact_traces:
        return None
    from conduit.safety.pii import default_scanner

    loads.append(asyncio.create_task(asyncio.to_thread(default_scanner)))
    return redactor(lambda text: default_scanner().redact(text)[0])


def _drift_monitor(settings: Settings, events: EventSink) -> DriftMonitor:
    obs = settings.observability

    def on_drift(point) -> None:
        events.emit({"event": "drift_detected", "collection": point.collection, "model": point.model,
                     "centroid_distance": round(point.centroid_distance, 4),
                     "mean_top_score": point.mean_top_score, "baseline_top_score": point.baseline_top_score},
                    obs.drift_webhook_url)

    drift = DriftMonitor(window=obs.drift_window, threshold=obs.drift_threshold, score_drop=obs.drift_score_drop,
                         on_drift=on_drift)
    path = settings.data_dir / "drift.json"
    if path.is_file():
        try:
            drift.load(json.loads(path.read_text()))
        except (OSError, ValueError):
            log.warning("drift: could not read %s; starting new baselines", path)
    return drift


def _save_drift(drift: DriftMonitor, data_dir) -> None:
    path = data_dir / "drift.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(drift.state()))
    partial.replace(path)
