"""The FastAPI application and its lifecycle.

Start: migrate the database, make sure an admin key exists, start the request-log writer,
then load models in the background (/healthz answers at once, /readyz once they are loaded).
Stop (SIGTERM): uvicorn stops accepting and drains in-flight requests; then the backends
close and the request log writes every queued row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from conduit.api.errors import BodySizeLimit, install_error_handlers
from conduit.api.routes import admin, generation, metrics, models, usage
from conduit.config import Settings
from conduit.gateway.auth import Authenticator, ensure_admin_key
from conduit.observability.request_log import RequestLogWriter
from conduit.pipeline.pipeline import Pipeline
from conduit.routing.registry import Registry
from conduit.routing.router import Router
from conduit.store.db import Database
from conduit.store.keys import KeyStore

log = logging.getLogger("conduit")


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
        app.state.auth = Authenticator(admin_key, keys)
        app.state.pipeline = Pipeline(registry, router, settings.cache)
        app.state.request_log = RequestLogWriter(
            db, settings.request_log.batch_size, settings.request_log.flush_interval_s
        )
        await registry.start()
        # The classifier's embedding model takes seconds to load: not a reason to delay serving.
        training = asyncio.create_task(router.start()) if router is not None else None
        try:
            yield
        finally:
            if training is not None:
                training.cancel()
            await registry.close()
            app.state.request_log.close()
            db.close()
            log.info("stopped; request log flushed")

    app = FastAPI(title="Conduit", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.server.max_body_bytes)
    for module in (models, generation, admin, usage, metrics):
        app.include_router(module.router)
    return app
