"""Engines for the inventory: URL checks, SQLite settings, and one-line errors.

SQLite is the zero-setup default and gets the settings a long-running service needs:

* WAL, so readers (``/metrics``, the API) never wait for a writing scan;
* ``busy_timeout`` 5000 ms, so a second writer waits instead of failing at once;
* foreign keys on (SQLite leaves them off per connection by default);
* transactions begun by us, not by the driver: Python's ``sqlite3`` opens them lazily before the
  first write, which would let another writer slip in between the reads and the writes of
  :meth:`Inventory.record`. Write transactions start with ``BEGIN IMMEDIATE`` instead, taking the
  write lock before reading the previous state. This is SQLAlchemy's documented pysqlite recipe:
  https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from certpilot.domain.errors import StoreError

#: How long a SQLite writer waits for another one before failing with "database is locked".
#: Read when a connection opens (tests shorten it).
BUSY_TIMEOUT_MS = 5000

#: Execution option that makes the next SQLite transaction ``BEGIN IMMEDIATE``.
WRITE_OPTION = "certpilot_write"

SUPPORTED = "sqlite:///PATH, sqlite:// (in memory) or postgresql+psycopg://USER@HOST/DB"

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create(url_text: str) -> Engine:
    """An engine for ``url_text``; raises :class:`StoreError` for an unusable URL.

    Nothing is connected yet: the first connection (and its errors) happen in the caller.
    """
    shown = redact(url_text)
    try:
        url = make_url(url_text)
    except ArgumentError as e:
        raise StoreError(shown, f"not a database URL; expected {SUPPORTED}") from e
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url)
        if backend == "postgresql":
            # "format" (%s) makes every statement positional on both backends, so the bulk
            # path can hand the driver plain tuples.
            return create_engine(url, paramstyle="format", pool_pre_ping=True)
    except NoSuchModuleError as e:
        raise StoreError(shown, f"no SQLAlchemy driver for {url.drivername!r}") from e
    except ImportError as e:
        raise StoreError(
            shown, f"database driver not installed ({e.name}); try pip install 'psycopg[binary]'"
        ) from e
    raise StoreError(shown, f"unsupported database {backend!r}; expected {SUPPORTED}")


def _sqlite_engine(url: URL) -> Engine:
    if is_memory(url):
        # One shared connection: every new connection to ":memory:" would be a new, empty
        # database. The Inventory serialises access to it with a lock.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: we emit BEGIN ourselves (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # 64 MiB page cache (default 2 MiB): a 100k-row scan touches tens of MiB of pages,
            # and a small cache spills dirty pages to the WAL more than once per transaction.
            cursor.execute("PRAGMA cache_size=-65536")
            # synchronous stays FULL (the default): one fsync per record() is cheap, and a
            # committed scan then survives power loss too, not only a process crash.
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def describe(url_text: str, engine: Engine, error: SQLAlchemyError) -> StoreError:
    """Turn a driver error into one clear line, naming the likely cause when it is known."""
    shown = redact(url_text)
    message = _first_line(error)
    url = engine.url
    if url.get_backend_name() == "sqlite" and not is_memory(url) and url.database:
        path = Path(url.database)
        parent = path.parent
        if "unable to open" in message:
            if not parent.exists():
                return StoreError(shown, f"cannot open {path}: directory {parent} does not exist")
            if not parent.is_dir():
                return StoreError(shown, f"cannot open {path}: {parent} is not a directory")
            if path.is_dir():
                return StoreError(shown, f"cannot open {path}: it is a directory")
            if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
                return StoreError(shown, f"cannot open {path}: permission denied")
            return StoreError(shown, f"cannot open {path}: {message}")
        if "readonly" in message.replace(" ", "") or "read-only" in message:
            return StoreError(shown, f"cannot write {path}: read-only database (check permissions)")
        if "not a database" in message:
            return StoreError(shown, f"{path} is not a SQLite database")
    return StoreError(shown, message)


def _first_line(error: SQLAlchemyError) -> str:
    # The DBAPI's own message, without SQLAlchemy's SQL echo and background link.
    orig = error.orig if isinstance(error, DBAPIError) else None
    text = str(orig) if orig is not None else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
