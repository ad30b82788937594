"""Alembic's environment for certpilot's schema: always run with a connection handed in by
``certpilot.store.schema`` (``config.attributes["connection"]``), never from ``alembic.ini``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import certpilot.store.tables  # noqa: F401  (registers every table on SQLModel.metadata)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the alembic CLI
    raise RuntimeError("certpilot's migrations run through `certpilot db upgrade`")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by table rebuild
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
