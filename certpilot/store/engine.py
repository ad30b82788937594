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
* ``synchronous=NORMAL``: a commit survives the process dying (see ``_on_connect``);
* a 64 MiB page cache, 256 MiB once a connection writes (a scan's pages stay cached);
* for the Inventory, WAL checkpoints in a background thread (:class:`WalCheckpointer`) instead
  of inside whichever commit crosses SQLite's threshold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from certpilot.domain.errors import StoreError

#: How long a SQLite writer waits for another one before failing with "database is locked".
#: Read when a connection opens (tests shorten it).
BUSY_TIMEOUT_MS = 5000

#: WAL size, in pages, at which a committing SQLite writer checkpoints by itself (SQLite's
#: default is 1000): a backstop for when the background :class:`WalCheckpointer` cannot keep up.
#: 262144 pages of 4 KiB is 1 GiB, more than a first import of 100k locations writes.
WAL_BACKSTOP_PAGES = 262_144

#: Page cache of a SQLite connection, in KiB (SQLite's default is 2 MiB). A cache the size of
#: the database would be a second copy of the file in this process (the OS's page cache holds
#: it already): 34 MB at 10,000 locations, 340 MB at 100,000, against a budget of 200 MiB per
#: process. What is read again within a transaction (index interior pages, the rows a scan
#: chunk updates) fits in 16 MiB; the rest costs a read from the OS's cache.
CACHE_KIB = 16_384

#: Execution option that makes the next SQLite transaction ``BEGIN IMMEDIATE``.
WRITE_OPTION = "certpilot_write"

SUPPORTED = "sqlite:///PATH, sqlite:// (in memory) or postgresql+psycopg://USER@HOST/DB"

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")

_log = logging.getLogger(__name__)


def redact(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create(url_text: str, *, background_checkpoints: bool = False) -> Engine:
    """An engine for ``url_text``; raises :class:`StoreError` for an unusable URL.

    Nothing is connected yet: the first connection (and its errors) happen in the caller.
    ``background_checkpoints``: the caller runs a :class:`WalCheckpointer` on this engine, so
    SQLite connections leave WAL checkpoints to it (up to :data:`WAL_BACKSTOP_PAGES`).
    """
    shown = redact(url_text)
    try:
        url = make_url(url_text)
    except ArgumentError as e:
        raise StoreError(shown, f"not a database URL; expected {SUPPORTED}") from e
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, background_checkpoints)
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


def _sqlite_engine(url: URL, background_checkpoints: bool) -> Engine:
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
            cursor.execute(f"PRAGMA cache_size=-{int(CACHE_KIB)}")  # see CACHE_KIB
            # NORMAL in WAL mode: a commit appends to the WAL without waiting for an fsync (the
            # WAL is synced before each checkpoint instead). A committed transaction survives
            # the process dying at any point, the requirement ("nothing lost when a process
            # dies"): the WAL is in the OS's cache and the next open replays it. Only an OS
            # crash or power loss can lose the last commits, and never corrupts the database.
            # https://www.sqlite.org/pragma.html#pragma_synchronous
            cursor.execute("PRAGMA synchronous=NORMAL")
            if background_checkpoints:
                # Its owner runs a WalCheckpointer: checkpoints happen in the background, not
                # inside the commit that crosses SQLite's threshold; a committing writer
                # checkpoints by itself only as a backstop.
                cursor.execute(f"PRAGMA wal_autocheckpoint={int(WAL_BACKSTOP_PAGES)}")
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


class WalCheckpointer:
    """Copies a SQLite file database's WAL back into the database file, in a background thread.

    SQLite's automatic checkpoint runs inside the commit that takes the WAL past its threshold,
    so a large write transaction pays for copying every page it wrote a second time (on the
    benchmark machine 0.4 s of a 100k-location scan with 10% changes, 0.7 s or more of a first
    import: benchmarks/RESULTS.md). Here the writer asks for a checkpoint after it commits and
    returns; one thread runs ``PRAGMA wal_checkpoint(PASSIVE)``, which never blocks readers or
    writers, on its own connection. This is the split SQLite's documentation suggests for
    applications that care about commit latency (https://www.sqlite.org/wal.html, section 6).
    Durability does not depend on it: a committed transaction is in the WAL, which every
    connection reads and the next open replays.

    The thread is started by a :meth:`request`, and ends after :data:`IDLE_SECONDS` without one
    (so an engine nobody closes is not kept alive by it) or at :meth:`close`.
    """

    #: How long the thread waits for the next request before it ends.
    IDLE_SECONDS = 60.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._pending = False
        self._running = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._busy_seconds = 0.0

    def request(self) -> None:
        """Ask for a checkpoint of everything committed so far; returns at once."""
        with self._cond:
            if self._closed:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="certpilot-wal-checkpoint", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def wait(self) -> float:
        """Wait until every requested checkpoint has run; return the seconds spent
        checkpointing since the previous call (for benchmarks)."""
        with self._cond:
            while (self._pending or self._running) and not self._closed:
                self._cond.wait()
            spent, self._busy_seconds = self._busy_seconds, 0.0
            return spent

    def close(self) -> None:
        """Stop the thread (after the checkpoint in progress, if any)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closed:
                    self._cond.wait_for(lambda: self._pending or self._closed, self.IDLE_SECONDS)
                if self._closed or not self._pending:
                    self._thread = None  # idle (or closed): the next request starts a new one
                    return
                self._pending = False
                self._running = True
            started = time.perf_counter()
            try:
                self._checkpoint()
            finally:
                with self._cond:
                    self._running = False
                    self._busy_seconds += time.perf_counter() - started
                    self._cond.notify_all()

    def _checkpoint(self) -> None:
        try:
            # The raw DBAPI connection is in autocommit mode (see _on_connect): the PRAGMA
            # runs outside any transaction, as a checkpoint must.
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    cursor.close()
            finally:
                connection.close()
        except Exception as e:
            # Retried by the next request (or the writer's backstop), and nothing is lost
            # meanwhile: the pages stay in the WAL. The message names no URL, so no password.
            _log.warning("SQLite WAL checkpoint failed: %s", _first_line_of(e))


def _first_line_of(error: BaseException) -> str:
    if isinstance(error, SQLAlchemyError):
        return _first_line(error)
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class EngineBacked:
    """What every store object (Inventory, AuditLog, JobStore) shares: the engine, a redacted
    URL for messages, one-transaction read and write scopes, and driver errors turned into
    :class:`StoreError`. Subclasses add their tables and queries."""

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by :func:`create`; subclasses are built with their ``open``."""
        self._engine = engine
        self._url = url
        self._shown_url = redact(url)
        self._dialect = engine.dialect.name
        # A ":memory:" database is one shared connection: calls must not interleave on it.
        self._lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if is_memory(engine.url) else contextlib.nullcontext()
        )

    def close(self) -> None:
        """Release every connection. The object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown_url!r})"

    @contextlib.contextmanager
    def _read(self, *, large: bool = False) -> Iterator[Connection]:
        """A read transaction. ``large``: the read touches most of the database (the whole
        inventory, for a scrape): on SQLite its pages are then dropped from the connection's
        page cache (``PRAGMA shrink_memory``), or a scrape every 15 s would keep a second copy
        of the database file (the OS caches it already) in this process: 20 MB at 10,000
        locations, 200 MB at 100,000."""
        with self._lock, self._guard(), self._engine.connect() as conn:
            with conn.begin():
                yield conn
            if large:
                self._release_pages(conn)

    @contextlib.contextmanager
    def _write(self, *, large: bool = False) -> Iterator[Connection]:
        """A write transaction. ``large``: it writes many pages (a scan chunk of thousands of
        locations), dropped from the SQLite connection's page cache once committed, as after
        a large read."""
        with self._lock, self._guard(), self._engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
            if large:
                self._release_pages(conn)

    def _release_pages(self, conn: Connection) -> None:
        if self._engine.dialect.name != "sqlite":
            return
        # On the driver's connection (autocommit, see _on_connect): through SQLAlchemy the
        # statement would open a transaction of its own, BEGIN IMMEDIATE on a writer's.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("PRAGMA shrink_memory")
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            raise describe(self._url, self._engine, e) from e
