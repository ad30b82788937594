"""The database schema's version, and upgrading it (alembic migrations in ``migrations/``).

Every store's ``open()`` calls :func:`upgrade` inside its write transaction: a database that is
current costs one read of ``alembic_version``; an empty one is created; an older one is brought
to :data:`HEAD`, on SQLite and PostgreSQL alike. Several processes may open the same database at
once (replicas starting together): PostgreSQL serialises them with an advisory lock held for the
transaction, SQLite with its write lock (``BEGIN IMMEDIATE``), so one upgrades and the others
find it done. Databases created before migrations existed are upgraded from the start: the
first migration creates only the tables they lack.

``certpilot db upgrade|current|history`` use :func:`upgrade`, :func:`current` and
:func:`history`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import column, func, inspect, select, table
from sqlalchemy.engine import Connection

from certpilot.domain.errors import StoreError
from certpilot.store import engine as engines

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("certpilot.store.schema")

#: The newest revision this version of certpilot knows: the last file in ``migrations/versions``
#: (a test checks that alembic agrees). Known without alembic, which is imported only to change
#: a schema: a service whose database is current never loads it (10 MiB of a process's memory).
HEAD = "0004"

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Advisory lock id for schema upgrades on PostgreSQL ("cpsc").
_PG_SCHEMA_LOCK = 0x63707363


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision this version of certpilot knows."""
    return HEAD


def current(conn: Connection) -> str | None:
    """The database's revision (``None``: never migrated): the one row of alembic's version
    table, read as alembic's ``MigrationContext.get_current_revision`` reads it."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    versions = conn.execute(select(table("alembic_version", column("version_num")))).scalars()
    found = list(versions)
    if len(found) > 1:
        raise StoreError(
            conn.engine.url.render_as_string(hide_password=True),
            f"the database's alembic_version table has {len(found)} rows ({', '.join(found)}); "
            "certpilot's migrations have one head",
        )
    return found[0] if found else None


def upgrade(conn: Connection, target: str = "head") -> tuple[str | None, str]:
    """Bring the database on ``conn`` (inside a write transaction) to ``target``; returns the
    revisions before and after. Raises what the database raises (the caller maps it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
    before = current(conn)
    wanted = head() if target == "head" else target
    if before == wanted:
        return before, wanted
    known = {s.revision for s in _script().walk_revisions()}
    if before is not None and before not in known:
        raise StoreError(
            conn.engine.url.render_as_string(hide_password=True),
            f"the database's schema is at revision {before}, which this certpilot does not "
            f"know (its newest is {wanted}): run a newer certpilot, or restore a backup",
        )
    from alembic import command

    command.upgrade(_config(conn), target)
    after = current(conn) or wanted
    log.info("database schema upgraded from %s to %s", before or "empty", after)
    return before, after


def downgrade(conn: Connection, target: str) -> tuple[str | None, str]:
    """Take the database on ``conn`` back to revision ``target`` (before upgrading to it with an
    older certpilot); returns the revisions before and after."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
    before = current(conn)
    from alembic import command

    command.downgrade(_config(conn), target)
    after = current(conn) or target
    log.info("database schema downgraded from %s to %s", before, after)
    return before, after


def history() -> list[tuple[str, str]]:
    """Every revision, oldest first, with its first docstring line."""
    out: list[tuple[str, str]] = []
    for s in reversed(list(_script().walk_revisions())):
        doc = (s.doc or "").strip().splitlines()
        out.append((s.revision, doc[0] if doc else ""))
    return out


class SchemaStore(engines.EngineBacked):
    """``certpilot db``: the schema of the database at a URL, without opening a store."""

    @classmethod
    def open(cls, url: str) -> SchemaStore:
        return cls(engines.create(url), url)

    def current(self) -> str | None:
        with self._read() as conn:
            return current(conn)

    def upgrade(self, target: str = "head") -> tuple[str | None, str]:
        with self._write() as conn:
            return upgrade(conn, target)

    def downgrade(self, target: str) -> tuple[str | None, str]:
        with self._write() as conn:
            return downgrade(conn, target)


__all__ = ["SchemaStore", "current", "downgrade", "head", "history", "upgrade"]
