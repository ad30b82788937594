"""Column types that make SQLite and PostgreSQL hold the same values the same way.

Two rules, both enforced here so the rest of the store never thinks about them:

* Timestamps are aware UTC datetimes in Python, always. SQLite has no timestamp type, so they are
  stored as fixed-width UTC text (the format SQLAlchemy's own SQLite ``DATETIME`` writes), which
  also makes ``ORDER BY`` and ``<`` comparisons on the text correct. PostgreSQL stores
  ``timestamptz``. Naive datetimes are refused on the way in: a naive value is a bug upstream,
  and guessing its zone would silently shift expiry dates.
* JSON is stored as compact text on both backends (not ``jsonb``), so one ``LIKE`` filter and one
  serialisation serve both and the hot path can pre-serialise values without a driver adapter.

The hot path of :meth:`certpilot.store.Inventory.record` bypasses SQLAlchemy's per-value
processors (they cost more than SQLite itself at 100k rows); it uses the ``*_db_value`` encoders
below, which produce exactly what the column types would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, Text, TypeDecorator, TypeEngine


def require_aware(value: datetime, what: str) -> datetime:
    """Return ``value`` unchanged, or raise ``ValueError`` when it is naive."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value


_SQLITE_FORMAT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_timestamp(value: datetime) -> str:
    """Aware datetime to the stored SQLite text: UTC, ``YYYY-MM-DD HH:MM:SS.ffffff``.

    Fixed width, so text order is time order; and the format SQLAlchemy's own SQLite
    ``DATETIME`` reads and writes, so the sqlite3 shell or a plain ``DateTime`` column sees
    ordinary values.
    """
    tz = value.tzinfo
    if tz is not UTC:
        if tz is None or value.utcoffset() is None:
            raise ValueError(f"timestamps must be timezone-aware, got naive {value!r}")
        value = value.astimezone(UTC)
    # SQLAlchemy's SQLite storage format (isoformat(" ", "microseconds") without the offset);
    # %-formatting the fields is a third faster than isoformat() and slicing, and strftime
    # several times slower: this runs for every observation of a 100k-location scan.
    return _SQLITE_FORMAT % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def sqlite_parse_timestamp(value: str) -> datetime:
    """Stored SQLite text back to an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def pg_timestamp(value: datetime) -> datetime:
    """Aware datetime as handed to psycopg for a ``timestamptz`` column."""
    if value.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware, got naive {value!r}")
    return value.astimezone(UTC)


def timestamp_encoder(dialect_name: str) -> Callable[[datetime], object]:
    """The function turning an aware datetime into the driver value for ``dialect_name``."""
    return sqlite_timestamp if dialect_name == "sqlite" else pg_timestamp


# One encoder, built once: json.dumps() with any non-default option builds a new encoder per
# call, which costs more than the encoding itself for small values.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def json_names(names: tuple[str, ...] | list[str]) -> str:
    """``json_text(list(names))``, built by hand when no name needs escaping (the usual DNS
    names and addresses): this runs for every new certificate of a batch."""
    if not names:
        return "[]"
    for name in names:
        if '"' in name or "\\" in name or not name.isprintable():
            return _ENCODER.encode(list(names))
    return '["' + '","'.join(names) + '"]'


def json_text(value: object) -> str:
    """Compact, key-sorted JSON, so equal values always serialise to equal text."""
    # The empty containers are by far the most common values (no problems, no labels).
    if isinstance(value, (list, tuple)) and not value:
        return "[]"
    if isinstance(value, dict) and not value:
        return "{}"
    return _ENCODER.encode(value)


class _SQLiteUTCText(sqlite.DATETIME):
    """Renders as ``DATETIME`` in DDL but passes values through: :class:`UTCDateTime` formats
    and parses them itself (the stock processors would reject or re-parse our text)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, on every backend.

    SQLite: stored as UTC text (see :func:`sqlite_timestamp`); naive values read back from
    older rows are taken as UTC. PostgreSQL: ``timestamp with time zone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            # sqlite.DATETIME's constructor is untyped in SQLAlchemy's stubs.
            return dialect.type_descriptor(_SQLiteUTCText())  # type: ignore[no-untyped-call]
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return sqlite_timestamp(value)
        return pg_timestamp(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return sqlite_parse_timestamp(value)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
        raise TypeError(f"unexpected timestamp value from the database: {value!r}")


class JSONText(TypeDecorator[Any]):
    """A JSON value stored as compact text (see the module docstring for why not ``jsonb``)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json_text(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(value)
