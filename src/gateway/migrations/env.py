"""Alembic environment: always run on a connection handed in by the gateway.

``gateway.db.migrate`` opens the connection (async engine, ``run_sync``) and
passes it as ``config.attributes["connection"]``; the whole upgrade, with its
version row, commits in that one transaction.
"""

from __future__ import annotations

from alembic import context

from gateway.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
