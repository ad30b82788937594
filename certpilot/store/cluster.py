"""Several certpilot processes on one database: membership, the leader lock, database time.

* :class:`ClusterStore` keeps the ``replica`` table: each replica upserts its row on every
  heartbeat, stamped with the **database's** clock (``CURRENT_TIMESTAMP`` on PostgreSQL), and
  the live members are the rows stamped within the TTL, compared in SQL against the same
  clock. Replicas whose own clocks disagree (skew, NTP steps) still agree on who is alive.
  :meth:`ClusterStore.db_now` reads that clock, for :class:`certpilot.cluster.DatabaseClock`.
* :class:`LeaderLock` is one process-wide exclusive lock: on PostgreSQL a session-level
  advisory lock (``pg_try_advisory_lock``) held by a dedicated connection, released by the
  server when that connection dies, so a replica killed with ``kill -9`` loses it at once; on
  SQLite an ``fcntl`` lock on a file next to the database (released by the kernel when the
  process dies); in memory, always held. Whoever holds it runs the singleton work (planning,
  SLO evaluation, paging, CT monitors).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, delete, func, insert, literal, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.tables import REPLICA

log = logging.getLogger("certpilot.store.cluster")

_r = REPLICA.c
#: Advisory lock id of the leader lock on PostgreSQL ("cpld").
PG_LEADER_LOCK = 0x63706C64


class ClusterStore(engines.EngineBacked):
    """The ``replica`` table (thread- and process-safe)."""

    @classmethod
    def open(cls, url: str) -> ClusterStore:
        engine = engines.create(url)
        store = cls(engine, url)
        try:
            with store._write() as conn:
                schema.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    def _now(self, conn: Connection) -> datetime:
        if self._dialect == "postgresql":
            value = conn.execute(select(func.now())).scalar_one()
            assert isinstance(value, datetime)
            return value.astimezone(UTC)
        # SQLite has no server: the one process's own clock is the database's clock.
        return datetime.now(UTC)

    @property
    def dialect(self) -> str:
        return self._dialect

    def db_now(self) -> datetime:
        """The database's current time (aware UTC)."""
        with self._read() as conn:
            return self._now(conn)

    def heartbeat(self, replica: str, *, host: str, pid: int, ttl: timedelta) -> builtins.list[str]:
        """Record that ``replica`` is alive (database time) and return the ids of the live
        replicas (seen within ``ttl``), sorted; rows unseen for ten TTLs are dropped."""
        with self._write() as conn:
            now = self._now(conn)
            done = conn.execute(
                update(REPLICA).where(_r.id == replica).values(heartbeat_at=now, host=host, pid=pid)
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(REPLICA).values(
                        id=replica, host=host, pid=pid, started_at=now, heartbeat_at=now
                    )
                )
            conn.execute(delete(REPLICA).where(_r.heartbeat_at < now - ttl * 10))
            rows = conn.execute(
                select(_r.id).where(_r.heartbeat_at >= now - ttl).order_by(_r.id)
            ).all()
        return [str(r[0]) for r in rows]

    def members(self, ttl: timedelta) -> builtins.list[dict[str, Any]]:
        """Every known replica with its age, newest heartbeat first (for the API)."""
        with self._read() as conn:
            now = self._now(conn)
            rows = conn.execute(select(REPLICA).order_by(_r.heartbeat_at.desc())).all()
        out = []
        for r in rows:
            m = r._mapping
            beat = m["heartbeat_at"]
            out.append(
                {
                    "id": m["id"],
                    "host": m["host"],
                    "pid": m["pid"],
                    "started_at": m["started_at"].isoformat(),
                    "heartbeat_age_seconds": round((now - beat).total_seconds(), 3),
                    "alive": now - beat <= ttl,
                }
            )
        return out

    def leave(self, replica: str) -> None:
        """Remove ``replica`` at a clean shutdown: its share moves at once, not after the TTL."""
        with self._write() as conn:
            conn.execute(delete(REPLICA).where(_r.id == replica))


class LeaderLock:
    """An exclusive lock per database, held while the process lives (see the module text)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._shown = engines.redact(url)
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None
        self._memory = False
        parsed = engines.create(url)  # validates the URL; for its dialect
        self._dialect = parsed.dialect.name
        if self._dialect == "sqlite":
            self._memory = engines.is_memory(parsed.url)
            db = parsed.url.database
            self._path = Path(f"{db}.leader") if db and not self._memory else None
            parsed.dispose()
        else:
            self._engine = parsed
            self._path = None

    @property
    def held(self) -> bool:
        if self._dialect == "sqlite":
            return self._memory or self._file is not None
        return self._conn is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; ``True`` while this process holds it. Also checks that a
        held PostgreSQL lock is still held (its connection alive); a lost one is released."""
        if self._dialect == "sqlite":
            return self._try_file()
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                log.warning("leader connection to %s lost; leadership released", self._shown)
                self._drop_conn()
        assert self._engine is not None
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as e:
            log.warning("leader lock: cannot connect to %s: %s", self._shown, type(e).__name__)
            return False
        try:
            got = conn.execute(select(func.pg_try_advisory_lock(literal(PG_LEADER_LOCK)))).scalar()
            conn.commit()
        except SQLAlchemyError:
            conn.close()
            return False
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _try_file(self) -> bool:
        if self._memory:
            return True
        if self._file is not None:
            return True
        assert self._path is not None
        f = self._path.open("a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        with contextlib.suppress(OSError):
            self._path.chmod(0o600)
        self._file = f
        return True

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(select(func.pg_advisory_unlock(literal(PG_LEADER_LOCK))))
                self._conn.commit()
            self._drop_conn()
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()


__all__ = ["PG_LEADER_LOCK", "ClusterStore", "LeaderLock"]
