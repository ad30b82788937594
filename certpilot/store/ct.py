"""The Certificate Transparency monitor's position in each log (table ``ct_log``).

Stored as plain JSON (the monitor's tree head and compact range as it serialises them): the
store knows nothing of ``ctwatch``'s types. See :class:`~certpilot.store.tables.CTLogRow`.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update

from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.tables import CT_LOG

_c = CT_LOG.c


@dataclass(frozen=True, slots=True)
class StoredLogState:
    url: str
    kind: str
    head: dict[str, Any] | None
    next_index: int
    compact: dict[str, Any] | None
    updated_at: datetime


def _state(row: Row[Any]) -> StoredLogState:
    m = row._mapping
    return StoredLogState(
        url=m["url"],
        kind=m["kind"],
        head=m["head"],
        next_index=int(m["next_index"]),
        compact=m["compact"],
        updated_at=m["updated_at"],
    )


class CTStore(engines.EngineBacked):
    """Per-log monitor state in the inventory database (thread- and process-safe)."""

    @classmethod
    def open(cls, url: str) -> CTStore:
        engine = engines.create(url)
        store = cls(engine, url)
        try:
            with store._write() as conn:
                schema.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    def get(self, url: str) -> StoredLogState | None:
        with self._read() as conn:
            row = conn.execute(select(CT_LOG).where(_c.url == url)).first()
        return _state(row) if row is not None else None

    def all(self) -> builtins.list[StoredLogState]:
        with self._read() as conn:
            return [_state(r) for r in conn.execute(select(CT_LOG).order_by(_c.url)).all()]

    def save(
        self,
        url: str,
        *,
        kind: str,
        head: dict[str, Any] | None,
        next_index: int,
        compact: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        """Create or replace the state of the log at ``url``; never with an older position
        (``next_index`` lower than the stored one): when replicas briefly disagree about who
        follows a log (for up to a heartbeat ``ttl`` after a membership change) both may read
        the same window, and the slower one must not move the position back."""
        values: dict[str, Any] = {
            "kind": kind,
            "head": head,
            "next_index": next_index,
            "compact": compact,
            "updated_at": now,
        }
        with self._write() as conn:
            done = conn.execute(
                update(CT_LOG).where(_c.url == url, _c.next_index <= next_index).values(**values)
            )
            if done.rowcount == 0:
                exists = conn.execute(select(_c.url).where(_c.url == url)).first()
                if exists is None:
                    conn.execute(insert(CT_LOG).values(url=url, **values))


__all__ = ["CTStore", "StoredLogState"]
