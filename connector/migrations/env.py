"""Alembic environment: migrations run on the connection that ``connector.storage`` passes in."""

from __future__ import annotations

from alembic import context

from qdspace.connector.qdm import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through connector.storage.migrate(), which passes a connection"
    )
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
