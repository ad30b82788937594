"""The Slack bot's state: the messages it posted (one per page) and the requests it handled.

Pages are stored as plain JSON (the bot's ``Signal`` dicts): the store knows nothing of the
bot's model, the bot (de)serialises. See :class:`~certpilot.store.tables.SlackPageRow`.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.tables import SLACK_PAGE, SLACK_REQUEST

_p = SLACK_PAGE.c


@dataclass(frozen=True, slots=True)
class StoredPage:
    key: str
    channel: str
    ts: str
    status: str
    severity: str
    signals: tuple[dict[str, Any], ...]
    jobs: tuple[Any, ...]  # [{"id": job id, "state": last reported state}, ...]
    digest: str
    acknowledged_by: str
    silenced_until: datetime | None
    held_until: datetime | None
    updated_at: datetime


def _page(row: Row[Any]) -> StoredPage:
    m = row._mapping
    return StoredPage(
        key=m["key"],
        channel=m["channel"],
        ts=m["ts"],
        status=m["status"],
        severity=m["severity"],
        signals=tuple(m["signals"] or ()),
        jobs=tuple(m["jobs"] or ()),
        digest=m["digest"],
        acknowledged_by=m["acknowledged_by"],
        silenced_until=m["silenced_until"],
        held_until=m["held_until"],
        updated_at=m["updated_at"],
    )


#: Advisory lock id for the pager's pages on PostgreSQL ("cppg").
PG_PAGER_LOCK = 0x63707067


class SlackStore(engines.EngineBacked):
    """Pages and handled requests in the inventory database (thread- and process-safe)."""

    def __init__(self, engine: Engine, url: str) -> None:
        super().__init__(engine, url)

    @classmethod
    def open(cls, url: str) -> SlackStore:
        engine = engines.create(url)
        store = cls(engine, url)
        try:
            with store._write() as conn:
                schema.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    # ------------------------------------------------------------------------------ the lock

    def lock_pages(self) -> Callable[[], None]:
        """Wait until no other process sharing this database holds the pages, take them, and
        return the function that gives them back.

        The pager reads the stored pages, posts or edits in Slack and saves the result; two
        replicas doing that at once (Alertmanager's webhook and a Slack button reach whichever
        replica the load balancer picks) would both find a page missing and both post it. On
        PostgreSQL an advisory lock on a connection held meanwhile, on SQLite ``flock`` on
        ``<database>.pager``: either is released when its process dies. Blocking: call it from
        a worker thread."""
        if self._dialect == "sqlite":
            db = self._engine.url.database
            if engines.is_memory(self._engine.url) or not db:
                return lambda: None  # one process: the pager's own lock is enough
            path = Path(f"{db}.pager")
            f = path.open("a+b")
            try:
                with contextlib.suppress(OSError):
                    path.chmod(0o600)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except BaseException:
                f.close()
                raise

            def release_file() -> None:
                with contextlib.suppress(OSError):
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                f.close()

            return release_file
        with self._guard():
            conn = self._engine.connect()
            try:
                conn.execute(select(func.pg_advisory_lock(literal(PG_PAGER_LOCK))))
                conn.commit()
            except BaseException:
                conn.close()
                raise

        def release_pg() -> None:
            try:
                conn.execute(select(func.pg_advisory_unlock(literal(PG_PAGER_LOCK))))
                conn.commit()
            except SQLAlchemyError:
                pass  # a lost connection released the lock with its session
            finally:
                conn.close()

        return release_pg

    # ------------------------------------------------------------------------------ pages

    def get(self, key: str) -> StoredPage | None:
        with self._read() as conn:
            row = conn.execute(select(SLACK_PAGE).where(_p.key == key)).first()
        return _page(row) if row is not None else None

    def pages(self, *, status: str | None = None) -> builtins.list[StoredPage]:
        stmt = select(SLACK_PAGE).order_by(_p.updated_at)
        if status is not None:
            stmt = stmt.where(_p.status == status)
        with self._read() as conn:
            return [_page(r) for r in conn.execute(stmt).all()]

    def save(
        self,
        key: str,
        *,
        now: datetime,
        signals: Sequence[dict[str, Any]],
        status: str,
        severity: str,
        channel: str | None = None,
        ts: str | None = None,
        digest: str | None = None,
        jobs: Sequence[Any] | None = None,
        acknowledged_by: str | None = None,
        silenced_until: datetime | None = None,
        held_until: datetime | None = None,
        clear_hold: bool = False,
    ) -> StoredPage:
        """Create or update the page ``key``; ``None`` leaves a field as it is."""
        values: dict[str, Any] = {
            "signals": list(signals),
            "status": status,
            "severity": severity,
            "updated_at": now,
        }
        for name, value in (
            ("channel", channel),
            ("ts", ts),
            ("digest", digest),
            ("acknowledged_by", acknowledged_by),
            ("silenced_until", silenced_until),
            ("held_until", held_until),
        ):
            if value is not None:
                values[name] = value
        if clear_hold:
            values["held_until"] = None
        if jobs is not None:
            values["jobs"] = list(jobs)
        with self._write() as conn:
            done = conn.execute(update(SLACK_PAGE).where(_p.key == key).values(**values))
            if done.rowcount == 0:
                conn.execute(insert(SLACK_PAGE).values(key=key, **values))
            row = conn.execute(select(SLACK_PAGE).where(_p.key == key)).one()
        return _page(row)

    def patch(self, key: str, *, now: datetime, **values: Any) -> StoredPage | None:
        """Change some fields of an existing page (ack, silence, jobs)."""
        with self._write() as conn:
            conn.execute(update(SLACK_PAGE).where(_p.key == key).values(updated_at=now, **values))
            row = conn.execute(select(SLACK_PAGE).where(_p.key == key)).first()
        return _page(row) if row is not None else None

    def prune(self, before: datetime) -> None:
        """Forget resolved pages last touched before ``before``."""
        with self._write() as conn:
            conn.execute(delete(SLACK_PAGE).where(_p.status == "resolved", _p.updated_at < before))

    # ---------------------------------------------------------------------------- requests

    def first_time(self, signature: str, *, now: datetime, keep: timedelta) -> bool:
        """Record a handled request by its signature; ``False`` when it was seen before (a
        replay). Entries older than ``keep`` are dropped on the way."""
        with self._write() as conn:
            conn.execute(delete(SLACK_REQUEST).where(SLACK_REQUEST.c.at < now - keep))
            try:
                with conn.begin_nested():
                    conn.execute(insert(SLACK_REQUEST).values(signature=signature, at=now))
            except IntegrityError:
                return False
        return True


__all__ = ["SlackStore", "StoredPage"]
