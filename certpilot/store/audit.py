"""The audit log on SQLite or PostgreSQL: append-only, one hash chain, verified on demand.

:class:`AuditLog` stores the entries of :mod:`certpilot.domain.audit` in the ``audit_entry``
table of the inventory database (it is one of ``INVENTORY_TABLES``, so an inventory created by
:class:`~certpilot.store.Inventory` already has it). It opens its own engine from the same URL
(:func:`certpilot.store.engine.create`): the log needs nothing of the Inventory's internals,
and both see the same database file or server. One caveat follows: an in-memory ``sqlite://``
URL is a separate, private database per engine, so an AuditLog on ``sqlite://`` does not share
the Inventory's (fine for tests, useless for keeping records).

Appends never fork the chain. Reading the head, sealing the next entry and inserting it is one
transaction that holds the database's write lock from its first statement: ``BEGIN IMMEDIATE``
on SQLite (see :mod:`certpilot.store.engine`), a transaction-scoped advisory lock on PostgreSQL
(https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS). So two threads, two
processes or two replicas appending at once are serialised, and the primary key on ``seq``
would refuse a second entry N even if something bypassed the lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Engine, Row, Text, event, func, insert, select, type_coerce
from sqlalchemy.engine import Connection

from certpilot.domain.audit import (
    AuditDraft,
    AuditEntry,
    AuditVerdict,
    ChainHead,
    UnreadableEntry,
    seal,
    verify_chain,
)
from certpilot.domain.errors import StoreError
from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.coltypes import sqlite_parse_timestamp
from certpilot.store.tables import AUDIT

#: Rows per read while verifying or listing: bounded memory on a log of any length.
PAGE = 1000

# Key of the PostgreSQL advisory lock that serialises appends ("certaudt" in ASCII); distinct
# from the Inventory's record() lock, so scans and audit appends do not wait for each other.
_PG_AUDIT_LOCK: Final = 0x6365727461756474

_c = AUDIT.c
# ``at`` and ``detail`` come back raw and are decoded here, per row, so one tampered row (a
# timestamp that is not one, JSON that is not an object) is reported as that entry, instead of
# failing the whole read in a column type's result processor.
_COLUMNS: Final = (
    _c.seq,
    type_coerce(_c.at, Text).label("at"),
    _c.actor,
    _c.action,
    _c.subject,
    _c.rule,
    _c.before,
    _c.after,
    _c.result,
    type_coerce(_c.detail, Text).label("detail"),
    _c.prev_hash,
    _c.hash,
)


def _durable(dbapi_connection: Any, _record: Any) -> None:
    """``synchronous=FULL`` on the log's own SQLite connections, after the store's settings.

    In WAL mode, ``NORMAL`` may lose the last commits on power loss (not on a crash):
    https://www.sqlite.org/pragma.html#pragma_synchronous. A lost audit entry looks exactly
    like a removed one to a verifier holding its head, so appends pay the fsync per commit
    whatever the inventory's own setting is.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _decode_at(value: object) -> datetime:
    if isinstance(value, str):
        return sqlite_parse_timestamp(value)  # ValueError when it is not a timestamp
    if isinstance(value, datetime):  # PostgreSQL's timestamptz, via psycopg
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise ValueError(f"at is not a timestamp: {value!r}")


def _decode(row: Row[Any]) -> AuditEntry | UnreadableEntry:
    """One stored row as an entry, or as an :class:`UnreadableEntry` saying what is wrong."""
    try:
        detail = json.loads(row.detail) if isinstance(row.detail, str) else row.detail
        return AuditEntry(
            seq=row.seq,
            at=_decode_at(row.at),
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            rule=row.rule,
            before=row.before,
            after=row.after,
            result=row.result,
            detail=detail,
            prev_hash=row.prev_hash,
            hash=row.hash,
        )
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        return UnreadableEntry(int(row.seq), str(e).splitlines()[0] if str(e) else repr(e))


class AuditLog(engines.EngineBacked):
    """The audit hash chain in the inventory database.

    Open with :meth:`open`, close with :meth:`close` (or use it as a context manager). Safe to
    use from several threads and processes at once. Database failures raise
    :class:`~certpilot.domain.errors.StoreError` with a one-line message; invalid drafts raise
    ``ValueError`` when the :class:`~certpilot.domain.audit.AuditDraft` is built.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by :func:`certpilot.store.engine.create`; use :meth:`open`."""
        super().__init__(engine, url)

    # ----------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str) -> AuditLog:
        """Open the audit log of the database at ``url`` (same URLs as
        :meth:`certpilot.store.Inventory.open`), creating its table when missing."""
        engine = engines.create(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _durable)
        log = cls(engine, url)
        try:
            with log._write() as conn:
                schema.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return log

    # ------------------------------------------------------------------------------ writing

    def append(self, draft: AuditDraft) -> AuditEntry:
        """Seal ``draft`` as the next entry of the chain and store it; return the entry.

        One transaction under the write lock: read the head, seal, insert. Raises
        :class:`StoreError` when the database fails, or when the stored head is not a valid
        entry to chain onto (run ``certpilot audit verify``): an action whose audit entry
        cannot be written should not go ahead unrecorded.
        """
        return self.extend([draft])[0]

    def extend(self, drafts: Iterable[AuditDraft]) -> list[AuditEntry]:
        """Append several drafts, in order, in one transaction (all or none)."""
        batch = list(drafts)
        if not batch:
            return []
        with self._write() as conn:
            self._lock_appends(conn)
            row = conn.execute(select(_c.seq, _c.hash).order_by(_c.seq.desc()).limit(1)).first()
            prev: ChainHead | None = ChainHead(int(row.seq), row.hash) if row else None
            sealed: list[AuditEntry] = []
            for draft in batch:
                seq = prev.seq + 1 if prev is not None else 1
                try:
                    entry = seal(draft, prev, seq)
                except ValueError as e:
                    raise StoreError(
                        self._shown_url,
                        f"cannot append to the audit chain: {e} (run: certpilot audit verify)",
                    ) from e
                sealed.append(entry)
                prev = entry.head
            conn.execute(insert(AUDIT), [_row(e) for e in sealed])
        return sealed

    # ------------------------------------------------------------------------------ reading

    def head(self) -> ChainHead | None:
        """The newest entry's ``seq`` and stored ``hash``, or ``None`` for an empty log.

        Record it somewhere else (a log line, a ticket, another system) to pass later as
        ``expected_head`` to :meth:`verify`: that is what catches removed newest entries and
        a rewritten chain (see :mod:`certpilot.domain.audit`).
        """
        with self._read() as conn:
            row = conn.execute(select(_c.seq, _c.hash).order_by(_c.seq.desc()).limit(1)).first()
        return ChainHead(int(row.seq), str(row.hash)) if row else None

    def entries(self, since_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq`` greater than ``since_seq``, oldest first, at most ``limit``.

        Raises :class:`StoreError` naming the first stored row that does not decode as an
        entry (:meth:`verify` reports such rows instead of raising).
        """
        stmt = select(*_COLUMNS).where(_c.seq > since_seq).order_by(_c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return self._readable(_decode(r) for r in rows)

    def latest(self, limit: int) -> list[AuditEntry]:
        """The ``limit`` newest entries, oldest first (what ``certpilot audit list`` shows)."""
        stmt = select(*_COLUMNS).order_by(_c.seq.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return self._readable(_decode(r) for r in reversed(rows))

    def count(self) -> int:
        """How many entries are stored (whether or not they verify)."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(AUDIT)).scalar_one())

    def verify(self, expected_head: tuple[int, str] | None = None) -> AuditVerdict:
        """Check the whole stored chain with :func:`~certpilot.domain.audit.verify_chain`.

        Reads the log in pages of :data:`PAGE` rows, so memory stays flat on any length.
        ``expected_head`` is an anchor recorded earlier (see :meth:`head`); it may carry a hash
        prefix of at least 16 hex digits. Raises ``ValueError`` for a malformed anchor.
        """
        return verify_chain(self._scan(), expected_head)

    def _scan(self) -> Iterator[AuditEntry | UnreadableEntry]:
        # Keyset pages (seq > last): a gap in seq still shows, as the next row read.
        last = 0
        page = select(*_COLUMNS).order_by(_c.seq).limit(PAGE)
        while True:
            stmt = page.where(_c.seq > last)
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            for r in rows:
                yield _decode(r)
            if len(rows) < PAGE:
                return
            last = int(rows[-1].seq)

    def _readable(self, items: Iterable[AuditEntry | UnreadableEntry]) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        for item in items:
            if isinstance(item, UnreadableEntry):
                raise StoreError(
                    self._shown_url,
                    f"audit entry {item.seq} is unreadable ({item.reason}); "
                    "run: certpilot audit verify",
                )
            out.append(item)
        return out

    # ---------------------------------------------------------------------------- plumbing

    def _lock_appends(self, conn: Connection) -> None:
        """Take the append lock for the rest of ``conn``'s transaction. SQLite: nothing to do,
        the transaction began with ``BEGIN IMMEDIATE`` and already holds the write lock."""
        if self._dialect == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_PG_AUDIT_LOCK)))


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "rule": entry.rule,
        "before": entry.before,
        "after": entry.after,
        "result": entry.result,
        "detail": dict(entry.detail),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
