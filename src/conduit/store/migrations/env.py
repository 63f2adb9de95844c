"""Alembic environment: runs against the engine that `Database.migrate` hands in."""

from alembic import context

from conduit.store.tables import Base

engine = context.config.attributes["connection_engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
