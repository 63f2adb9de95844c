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
from conduit.api.routes import admin, generation, models
from conduit.backends import Backend
from conduit.backends.embedded import EmbeddedBackend
from conduit.config import Settings
from conduit.gateway.auth import Authenticator, ensure_admin_key
from conduit.observability.request_log import RequestLogWriter
from conduit.pipeline import Pipeline
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
        backends: dict[str, Backend] = {m.name: EmbeddedBackend(m) for m in settings.models}
        app.state.settings = settings
        app.state.started_at = int(time.time())
        app.state.keys = keys
        app.state.auth = Authenticator(admin_key, keys)
        app.state.pipeline = Pipeline(backends)
        app.state.load_errors = {}
        app.state.request_log = RequestLogWriter(
            db, settings.request_log.batch_size, settings.request_log.flush_interval_s
        )
        loading = asyncio.create_task(_load(backends, app.state.load_errors))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            for backend in backends.values():
                await backend.close()
            app.state.request_log.close()
            db.close()
            log.info("stopped; request log flushed")

    app = FastAPI(title="Conduit", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.server.max_body_bytes)
    for module in (models, generation, admin):
        app.include_router(module.router)
    return app


async def _load(backends: dict[str, Backend], errors: dict[str, str]) -> None:
    for name, backend in backends.items():
        try:
            await backend.start()
        except Exception as exc:  # one bad model must not take the others (or the server) down
            errors[name] = str(exc)
            log.exception("model %s failed to load", name)
