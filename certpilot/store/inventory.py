"""The inventory store: observations in, locations, certificates and events out.

:class:`Inventory` is the one object other rooms use. It speaks domain dataclasses
(``Observation`` in; ``InventoryItem``, ``Event``, ``ScanRun`` out) and hides SQLAlchemy.

The hot path is :meth:`Inventory.record`: a periodic scan of 100k locations must go in within
about two seconds on a small machine. It works in bulk, in one transaction:

1. dedupe the batch (the last observation of a ``ref`` wins);
2. read the previous state of those locations in bulk (chunked ``IN`` lists, or one pass over
   the table when the batch covers most of it);
3. sort the batch: *steady* locations (same certificates, same problems as last time; most of
   any periodic scan) only move their timestamps; *changed* ones are upserted in full, their
   certificates checked against the stored ones and their events derived in pure code
   (:mod:`certpilot.store.changes`);
4. write with ``executemany``, certificates first (foreign keys): new certificates
   (``ON CONFLICT DO NOTHING``), ``last_seen`` of known ones, locations (upsert, or a narrow
   ``UPDATE`` when steady), sightings (upsert, or extend the current ones when steady), events
   (with ids reserved up front, so no ``RETURNING`` per row).

The statements are built with SQLAlchemy Core (the dialect's ``insert``, so SQLite and
PostgreSQL each get their own ``ON CONFLICT``), compiled once per inventory, and executed with
the driver's ``executemany`` on tuples already in the database's representation
(:mod:`certpilot.store.coltypes`): SQLAlchemy's per-row parameter processing costs about twice
what SQLite itself spends on the same rows.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any, Final

from sqlalchemy import (
    Engine,
    Row,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    case,
    func,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from certpilot.domain.inventory import Event, EventKind, InventoryItem, ScanRun
from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode
from certpilot.domain.sli import SLI_IDS, SLIEvent, SLISample
from certpilot.domain.x509 import CertInfo
from certpilot.store import engine as engines
from certpilot.store.changes import (
    EventDraft,
    PriorLocation,
    canonical_codes,
    derive_events,
    fingerprints_json,
    parse_codes,
    presented,
)
from certpilot.store.coltypes import json_text, require_aware, timestamp_encoder
from certpilot.store.tables import (
    CERTIFICATE,
    EVENT,
    INVENTORY_TABLES,
    LOCATION,
    SCAN_RUN,
    SIGHTING,
    SLI_COUNTER,
    SLI_EVENT,
    SLI_SAMPLE,
)

#: Rows per ``executemany`` call and values per ``IN (...)`` list. Well below SQLite's
#: 32766-variable limit and PostgreSQL's 65535, and large enough that per-call overhead vanishes.
CHUNK = 5000

# Key of the PostgreSQL advisory lock that serialises record() across replicas, as BEGIN
# IMMEDIATE does on SQLite ("certpilo" in ASCII, an arbitrary constant).
_PG_RECORD_LOCK: Final = 0x6365727470696C6F

_CERT_COLUMNS: Final = (
    "fingerprint_sha256",
    "serial",
    "spki_sha256",
    "subject",
    "subject_cn",
    "issuer",
    "issuer_cn",
    "sans",
    "not_before",
    "not_after",
    "key_type",
    "key_bits",
    "signature_algorithm",
    "is_ca",
    "der",
    "first_seen",
    "last_seen",
)
_LOCATION_COLUMNS: Final = (
    "ref",
    "source",
    "target",
    "fingerprint_sha256",
    "last_fingerprint_sha256",
    "chain",
    "problems",
    "problem_details",
    "error",
    "labels",
    "first_seen",
    "last_scanned",
    "last_changed",
    "run_id",
)
# What a steady location (same certificates, same problems) updates, then its key.
_STEADY_COLUMNS: Final = (
    "target",
    "problem_details",
    "error",
    "labels",
    "last_scanned",
    "run_id",
    "ref",
)
_SIGHTING_COLUMNS: Final = ("ref", "fingerprint_sha256", "first_seen", "last_seen")
_EVENT_COLUMNS: Final = ("id", "at", "kind", "ref", "fingerprint_sha256", "code", "detail")


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    size = CHUNK  # read at call time, so tests can shrink it
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _hour(value: object) -> object:
    """The UTC clock hour of a stored timestamp (SQLite text or a PostgreSQL datetime).

    A certificate's ``last_seen`` is refreshed by a steady location only when that location's
    scan falls in a new UTC hour, so it is at most an hour stale while the certificate stays
    deployed. Refreshing it on every scan would rewrite every certificate row (DER included,
    often 1-2 KiB) on every scan: the largest write of a steady-state record(). Exact
    per-location times are in ``sighting.last_seen`` and ``location.last_scanned``.
    """
    if isinstance(value, str):
        return value[:13]  # "YYYY-MM-DD HH"
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        return (utc.year, utc.month, utc.day, utc.hour)
    return value


#: Read the whole location table instead of IN lists when a batch is at least this share of it.
_FULL_SCAN_FRACTION: Final = 0.25


def _driver_rows(conn: Connection, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a parameterless query straight from the driver's cursor, as plain tuples.

    For the 100k-row reads of record(): SQLAlchemy's result rows cost about as much again as
    the query itself. Runs on the connection's DBAPI connection, inside its transaction.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _rowid_bound(conn: Connection, table: Table) -> int:
    """An upper bound of a SQLite rowid table's row count, in O(log n): its largest rowid."""
    value = conn.exec_driver_sql(f"SELECT max(rowid) FROM {table.name}").scalar()  # noqa: S608
    return int(value or 0)


#: Batches at least this large run with the cyclic garbage collector paused (see _gc_paused).
_PAUSE_GC_FROM: Final = 10_000


@contextlib.contextmanager
def _gc_paused(size: int) -> Iterator[None]:
    """Pause Python's cyclic garbage collector during one large record().

    A 100k-observation record() allocates millions of tuples and strings and keeps hundreds of
    thousands alive until it commits. Those allocations keep triggering generation-2
    collections, and each walks every live object of the process (the caller's observations
    included): 15-20% of record()'s time on the benchmark machine. Nothing record() builds is
    cyclic, so reference counting still frees all of it; the collector resumes on exit, and is
    left alone when someone else already disabled it
    (https://docs.python.org/3/library/gc.html#gc.disable).
    """
    if size < _PAUSE_GC_FROM or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Plan:
    """The rows one record() writes, sorted into steady and changed locations."""

    __slots__ = (
        "certs",
        "changed",
        "extend_rows",
        "location_rows",
        "seen",
        "sighting_rows",
        "steady_rows",
        "touched",
    )

    def __init__(self) -> None:
        self.changed: list[tuple[Observation, str]] = []  # (observation, problems JSON)
        self.location_rows: list[tuple[Any, ...]] = []  # full upserts (_LOCATION_COLUMNS)
        self.steady_rows: list[tuple[Any, ...]] = []  # narrow updates (_STEADY_COLUMNS)
        self.sighting_rows: list[tuple[Any, ...]] = []  # upserts (_SIGHTING_COLUMNS)
        self.extend_rows: list[tuple[Any, ...]] = []  # (this scan, ref, previous scan)
        self.certs: dict[str, CertInfo] = {}  # presented by changed locations
        self.seen: dict[str, Any] = {}  # fingerprint -> latest stored timestamp in the batch
        self.touched: dict[str, Any] = {}  # fingerprint -> new certificate.last_seen

    def see(self, fp: str, when: Any) -> None:
        if fp not in self.seen or when > self.seen[fp]:
            self.seen[fp] = when

    def touch(self, fp: str, when: Any) -> None:
        if fp not in self.touched or when > self.touched[fp]:
            self.touched[fp] = when


class _Bulk:
    """A Core statement compiled once, run with the driver's ``executemany`` on plain tuples.

    ``params`` names the statement's parameters in the order the compiled SQL binds them (an
    UPDATE binds its SET values before its WHERE); callers build their tuples in that order.
    It is checked against the compiled statement here, once, so a mismatch fails at open()
    instead of writing values into the wrong columns.
    """

    def __init__(self, statement: ClauseElement, engine: Engine, params: Sequence[str]) -> None:
        compiled = statement.compile(dialect=engine.dialect, column_keys=list(params))
        positions = compiled.positiontup if isinstance(compiled, SQLCompiler) else None
        if positions is None or list(positions) != list(params):
            raise TypeError(f"bulk statement binds {positions}, not {list(params)}: {compiled}")
        self.sql = str(compiled)

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        for chunk in _chunks(rows):
            conn.exec_driver_sql(self.sql, list(chunk))


class Inventory:
    """The certificate inventory on SQLite or PostgreSQL.

    Open with :meth:`open`, close with :meth:`close` (or use it as a context manager). Every
    method is safe to call from several threads; each public call is one transaction, and a
    failure of the database surfaces as :class:`~certpilot.domain.errors.StoreError` with a
    one-line message (naive datetimes passed in are bugs and raise ``ValueError``).

    Times passed in must be timezone-aware; times returned are aware UTC.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by :func:`certpilot.store.engine.create`; use :meth:`open`."""
        self._engine = engine
        self._url = url
        self._shown_url = engines.redact(url)
        self._dialect = engine.dialect.name
        self._ts: Callable[[datetime], object] = timestamp_encoder(self._dialect)
        # A ":memory:" database is one shared connection: calls must not interleave on it.
        self._lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if engines.is_memory(engine.url) else contextlib.nullcontext()
        )
        # The previous state of locations, as raw driver values (type_coerce to Text skips the
        # JSON and datetime processing): JSON texts are compared as text, and last_scanned goes
        # back to the database unchanged.
        loc_c = LOCATION.c
        every_location = select(
            loc_c.ref,
            loc_c.source,
            loc_c.fingerprint_sha256,
            loc_c.last_fingerprint_sha256,
            type_coerce(loc_c.problems, Text),
            type_coerce(loc_c.chain, Text),
            type_coerce(loc_c.last_scanned, Text),
        )
        self._every_location_sql = str(every_location.compile(dialect=engine.dialect))
        self._some_locations = every_location.where(
            loc_c.ref.in_(bindparam("refs", expanding=True))
        )

        insert = self._insert
        c = CERTIFICATE.c
        new_certs = insert(CERTIFICATE).on_conflict_do_nothing(
            index_elements=[c.fingerprint_sha256]
        )
        self._insert_certs = _Bulk(new_certs, engine, _CERT_COLUMNS)
        # Never moves last_seen backwards (a late batch of older observations).
        touch = (
            update(CERTIFICATE)
            .where(c.fingerprint_sha256 == bindparam("b_fp"), c.last_seen < bindparam("b_seen"))
            .values(last_seen=bindparam("b_seen"))
        )
        self._touch_certs = _Bulk(touch, engine, ("b_seen", "b_fp", "b_seen"))

        loc = insert(LOCATION)
        ex = loc.excluded
        same_state = and_(
            LOCATION.c.fingerprint_sha256.is_not_distinct_from(ex.fingerprint_sha256),
            LOCATION.c.problems == ex.problems,
        )
        upsert_locations = loc.on_conflict_do_update(
            index_elements=[LOCATION.c.ref],
            set_={
                **{name: ex[name] for name in _LOCATION_COLUMNS[1:] if name != "first_seen"},
                # SET expressions see the row as it was: last_changed moves only when the
                # certificate or the set of problems did (not for a chain-only change).
                "last_changed": case((same_state, LOCATION.c.last_changed), else_=ex.last_changed),
            },
        )
        self._insert_locations = _Bulk(upsert_locations, engine, _LOCATION_COLUMNS)
        steady = (
            update(LOCATION)
            .where(LOCATION.c.ref == bindparam("b_ref"))
            .values({name: bindparam(f"b_{name}") for name in _STEADY_COLUMNS[:-1]})
        )
        self._update_locations = _Bulk(steady, engine, [f"b_{n}" for n in _STEADY_COLUMNS])

        sight = insert(SIGHTING)
        upsert_sightings = sight.on_conflict_do_update(
            index_elements=[SIGHTING.c.ref, SIGHTING.c.fingerprint_sha256],
            set_={"last_seen": sight.excluded.last_seen},
        )
        self._upsert_sightings = _Bulk(upsert_sightings, engine, _SIGHTING_COLUMNS)
        extend = (
            update(SIGHTING)
            .where(
                SIGHTING.c.ref == bindparam("b_ref"),
                SIGHTING.c.last_seen == bindparam("b_previous"),
            )
            .values(last_seen=bindparam("b_seen"))
        )
        self._extend_sightings = _Bulk(extend, engine, ("b_seen", "b_ref", "b_previous"))
        self._insert_events = _Bulk(insert(EVENT), engine, _EVENT_COLUMNS)

    # ----------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str) -> Inventory:
        """Open (and create if needed) the inventory at ``url``.

        ``url`` is ``sqlite:///PATH`` (a file, created if missing), ``sqlite://`` (in memory,
        gone on close) or ``postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB``. The schema is
        created when missing. Raises :class:`StoreError` when the database cannot be opened or
        written (bad URL, missing directory, permissions, server down); its message never
        contains the password.
        """
        engine = engines.create(url)
        inventory = cls(engine, url)
        try:
            with inventory._write() as conn:
                # create_all for now; schema changes become migrations in a later issue.
                CERTIFICATE.metadata.create_all(conn, tables=list(INVENTORY_TABLES))
        except BaseException:
            engine.dispose()
            raise
        return inventory

    def close(self) -> None:
        """Release every connection. The inventory must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Inventory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Inventory({self._shown_url!r})"

    def ping(self) -> None:
        """Run ``SELECT 1``; raise :class:`StoreError` when the database is unusable."""
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()

    # ---------------------------------------------------------------------------- scan runs

    def start_run(self, source: str, targets: int, at: datetime) -> int:
        """Record the start of a scan of ``targets`` targets from ``source``; return its id."""
        require_aware(at, "at")
        stmt = (
            self._insert(SCAN_RUN)
            .values(source=source, targets=targets, started_at=at, observations=0, problems=0)
            .returning(SCAN_RUN.c.id)
        )
        with self._write() as conn:
            run_id = conn.execute(stmt).scalar_one()
        return int(run_id)

    def finish_run(self, run_id: int, at: datetime, observations: int, problems: int) -> None:
        """Record the end of scan ``run_id``. Raises ``ValueError`` for an unknown id."""
        require_aware(at, "at")
        stmt = (
            update(SCAN_RUN)
            .where(SCAN_RUN.c.id == run_id)
            .values(finished_at=at, observations=observations, problems=problems)
        )
        with self._write() as conn:
            if conn.execute(stmt).rowcount != 1:
                raise ValueError(f"no scan run with id {run_id}")

    def runs(self, limit: int = 20) -> list[ScanRun]:
        """The ``limit`` most recent scan runs, newest first."""
        stmt = select(SCAN_RUN).order_by(SCAN_RUN.c.id.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [
            ScanRun(
                id=r.id,
                source=r.source,
                started_at=r.started_at,
                finished_at=r.finished_at,
                targets=r.targets,
                observations=r.observations,
                problems=r.problems,
            )
            for r in rows
        ]

    # ------------------------------------------------------------------------------ writing

    def record(
        self, observations: Sequence[Observation], *, now: datetime, run_id: int | None = None
    ) -> list[Event]:
        """Store a batch of observations in one transaction and return what changed.

        Contract:

        * All or nothing: either every observation is stored with its events, or (on any error)
          none is.
        * One location per ``ref``: when a batch holds several observations of one ref, the
          last one wins. Observations of different refs are independent.
        * Record batches in the order they were observed: the latest recorded state of a
          location is its current state.
        * Timestamps: a location's ``first_seen``/``last_scanned``/``last_changed`` and a
          sighting's ``first_seen``/``last_seen`` are the observation's ``observed_at``, exactly.
          A certificate's ``first_seen`` too; its ``last_seen`` (seen anywhere) is exact when a
          location starts presenting it, and otherwise refreshed once per UTC hour (see
          :func:`_hour` for why). Events are stamped ``now`` (when the inventory learnt
          the change), so event time never goes backwards along event ids.
        * Certificates: the leaf and every chain certificate are stored once each and sighted at
          the location; ``path`` (the trust walk, which may add an anchor the peer did not
          send) is not stored.
        * Events, numbered in the returned order: per observation in batch order,
          ``location_added``, ``first_seen``, ``new_certificate``, ``problem_raised``...,
          ``problem_cleared``... (see :func:`certpilot.store.changes.derive_events`).
          Recording the same state again yields no events.

        ``run_id`` links the locations to a scan run from :meth:`start_run`.
        """
        require_aware(now, "now")
        at = now.astimezone(UTC)
        latest: dict[str, Observation] = {}
        for obs in observations:
            latest[obs.ref] = obs  # observed_at is checked where it is encoded, in _plan()
        if not latest:
            return []
        with _gc_paused(len(latest)), self._write() as conn:
            if self._dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_RECORD_LOCK)))
            prior = self._prior_locations(conn, list(latest))
            plan = self._plan(latest.values(), prior, run_id)
            known = self._stored_fingerprints(conn, list(plan.certs))
            drafts = self._derive(conn, plan, prior, known)
            self._write_certificates(conn, plan, known)
            self._insert_locations.run(conn, plan.location_rows)
            self._update_locations.run(conn, plan.steady_rows)
            self._upsert_sightings.run(conn, plan.sighting_rows)
            self._extend_sightings.run(conn, plan.extend_rows)
            return self._write_events(conn, drafts, at)

    def _plan(
        self,
        batch: Iterable[Observation],
        prior: Mapping[str, PriorLocation],
        run_id: int | None,
    ) -> _Plan:
        """Sort the batch into steady locations (same certificates, same problems: only times
        and messages move) and changed ones, and build the rows for both.

        Steady locations are the common case of a periodic scan and get the cheapest writes:
        a narrow UPDATE of the location, and the sightings it presented at its previous scan
        (exactly those whose ``last_seen`` equals that scan's time) extended to this one.
        """
        ts = self._ts
        plan = _Plan()
        for obs in batch:
            infos = presented(obs)
            chain_json = fingerprints_json(infos)
            problems_json = json_text(canonical_codes(obs.problems)) if obs.problems else "[]"
            details = json_text([p.to_dict() for p in obs.problems]) if obs.problems else "[]"
            labels = json_text(dict(obs.labels)) if obs.labels else "{}"
            try:
                when = ts(obs.observed_at)  # raises ValueError for a naive datetime
            except ValueError as e:
                raise ValueError(f"observed_at of {obs.ref}: {e}") from None
            fp = obs.leaf.fingerprint_sha256 if obs.leaf is not None else None
            p = prior.get(obs.ref)
            if (
                p is not None
                and p.fingerprint == fp
                and p.problems_json == problems_json
                and p.chain_json == chain_json
                and p.source == obs.source
            ):
                plan.steady_rows.append(
                    (obs.target, details, obs.error, labels, when, run_id, obs.ref)
                )
                plan.extend_rows.append((when, obs.ref, p.last_scanned))
                previous = p.last_scanned
                # Slicing the text inline: this runs for every steady location.
                if (
                    when[:13] != previous[:13]
                    if isinstance(when, str) and isinstance(previous, str)
                    else _hour(when) != _hour(previous)
                ):
                    for info in infos:
                        plan.touch(info.fingerprint_sha256, when)
                continue
            plan.changed.append((obs, problems_json))
            last_fp = fp if fp is not None else (p.last_fingerprint if p is not None else None)
            plan.location_rows.append(
                (
                    obs.ref,
                    obs.source,
                    obs.target,
                    fp,
                    last_fp,
                    chain_json,
                    problems_json,
                    details,
                    obs.error,
                    labels,
                    when,
                    when,
                    when,
                    run_id,
                )
            )
            for info in infos:
                cfp = info.fingerprint_sha256
                plan.sighting_rows.append((obs.ref, cfp, when, when))
                if cfp not in plan.certs:
                    plan.certs[cfp] = info
                plan.see(cfp, when)
        return plan

    def _derive(
        self,
        conn: Connection,
        plan: _Plan,
        prior: Mapping[str, PriorLocation],
        known: set[str],
    ) -> list[EventDraft]:
        replaced = {
            p.last_fingerprint
            for obs, _ in plan.changed
            if obs.leaf is not None
            and (p := prior.get(obs.ref)) is not None
            and p.last_fingerprint is not None
            and p.last_fingerprint != obs.leaf.fingerprint_sha256
        }
        old_serials = self._serials(conn, sorted(replaced)) if replaced else {}
        drafts: list[EventDraft] = []
        announced: set[str] = set()
        for obs, problems_json in plan.changed:
            leaf_is_new = False
            if obs.leaf is not None:
                fp = obs.leaf.fingerprint_sha256
                # "first seen" once per fingerprint, even when several locations of this
                # batch present it.
                if fp not in known and fp not in announced:
                    leaf_is_new = True
                    announced.add(fp)
            p = prior.get(obs.ref)
            old = p.last_fingerprint if p is not None else None
            drafts.extend(
                derive_events(
                    obs,
                    problems_json,
                    p,
                    leaf_is_new=leaf_is_new,
                    old_serial=old_serials.get(old) if old is not None else None,
                )
            )
        return drafts

    def _write_certificates(self, conn: Connection, plan: _Plan, known: set[str]) -> None:
        ts = self._ts
        fresh: list[tuple[Any, ...]] = []
        for fp, c in plan.certs.items():
            when = plan.seen[fp]
            if fp in known:
                # Presented at a location that changed: its last_seen is brought up to date.
                plan.touch(fp, when)
                continue
            fresh.append(
                (
                    fp,
                    c.serial,
                    c.spki_sha256,
                    c.subject,
                    c.subject_cn,
                    c.issuer,
                    c.issuer_cn,
                    json_text(list(c.sans)),
                    ts(c.not_before),
                    ts(c.not_after),
                    c.key_type,
                    c.key_bits,
                    c.signature_algorithm,
                    c.is_ca,
                    c.der,
                    when,
                    when,
                )
            )
        self._insert_certs.run(conn, fresh)
        self._touch_certs.run(conn, [(when, fp, when) for fp, when in plan.touched.items()])

    def _write_events(
        self, conn: Connection, drafts: Sequence[EventDraft], at: datetime
    ) -> list[Event]:
        if not drafts:
            return []
        ids = self._reserve_event_ids(conn, len(drafts))
        when = self._ts(at)
        rows = [
            (
                event_id,
                when,
                d.kind.value,
                d.ref,
                d.fingerprint,
                d.code.value if d.code is not None else None,
                d.detail,
            )
            for event_id, d in zip(ids, drafts, strict=True)
        ]
        self._insert_events.run(conn, rows)
        # Positional: keyword construction of 200k frozen dataclasses is measurably slower.
        return [
            Event(event_id, at, d.kind, d.ref, d.fingerprint, d.code, d.detail)
            for event_id, d in zip(ids, drafts, strict=True)
        ]

    def _reserve_event_ids(self, conn: Connection, count: int) -> Sequence[int]:
        """``count`` fresh, increasing event ids, taken before inserting in bulk.

        Explicit ids let the events go in with ``executemany`` and still come back numbered
        (``INSERT ... RETURNING`` costs more per row than all the rest of record()). Both
        branches run under record()'s write lock, so nobody else takes ids meanwhile.
        """
        if self._dialect == "sqlite":
            # AUTOINCREMENT's high-water mark, so pruned ids are never handed out again;
            # inserting explicit ids above it moves it forward.
            top = conn.exec_driver_sql(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event'), 0),"
                " coalesce((SELECT max(id) FROM event), 0))"
            ).scalar_one()
            first = int(top) + 1
            return range(first, first + count)
        series = func.generate_series(1, count).table_valued("n")
        stmt = select(func.nextval(func.pg_get_serial_sequence("event", "id"))).select_from(series)
        return sorted(int(v) for v in conn.execute(stmt).scalars())

    # ------------------------------------------------------------------------------ reading

    def items(
        self,
        *,
        now: datetime,
        expiring_days: float | None = None,
        problem: ProblemCode | None = None,
        source: str | None = None,
    ) -> list[InventoryItem]:
        """Current locations, filtered, soonest expiry first.

        * ``expiring_days``: only locations whose current leaf's ``not_after`` is at most that
          many days after ``now`` (so already-expired ones are included); locations without a
          current certificate (unreachable) are excluded.
        * ``problem``: only locations currently having that problem code.
        * ``source``: only locations from that source (``tls``, ``file``, ...).

        Sorted by ``not_after`` ascending (locations without a certificate last), then ``ref``.
        """
        require_aware(now, "now")
        stmt = self._items_query()
        if source is not None:
            stmt = stmt.where(LOCATION.c.source == source)
        if expiring_days is not None:
            limit = now + timedelta(days=expiring_days)
            stmt = stmt.where(CERTIFICATE.c.not_after <= limit)
        code: ProblemCode | None = None
        if problem is not None:
            code = ProblemCode(problem)
            # Codes are stored as a JSON list of strings: the quoted code matches only whole
            # codes ('"expiring"' is not inside '"chain_expiring"'). Checked again below.
            pattern = f'%"{code.value}"%'
            stmt = stmt.where(type_coerce(LOCATION.c.problems, Text).like(pattern))
        stmt = stmt.order_by(CERTIFICATE.c.not_after.asc().nulls_last(), LOCATION.c.ref)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        out = [_item(r) for r in rows]
        if code is not None:
            out = [i for i in out if code in i.problems]
        return out

    def item(self, ref: str) -> InventoryItem | None:
        """The location ``ref`` as currently stored, or ``None``."""
        stmt = self._items_query().where(LOCATION.c.ref == ref)
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return _item(row) if row is not None else None

    def events(
        self, *, since_id: int = 0, limit: int = 1000, ref: str | None = None
    ) -> list[Event]:
        """Events with ``id > since_id`` in id order, at most ``limit``; only ``ref``'s if given.

        Ids only grow, so a consumer pages with the last id it has seen.
        """
        stmt = select(EVENT).where(EVENT.c.id > since_id)
        if ref is not None:
            stmt = stmt.where(EVENT.c.ref == ref)
        stmt = stmt.order_by(EVENT.c.id).limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        kinds = {k.value: k for k in EventKind}
        codes = {c.value: c for c in ProblemCode}
        return [
            Event(
                id=r.id,
                at=r.at,
                kind=kinds[r.kind],
                ref=r.ref,
                fingerprint_sha256=r.fingerprint_sha256,
                code=codes.get(r.code) if r.code is not None else None,
                detail=r.detail,
            )
            for r in rows
            # An event kind from a newer certpilot is skipped, not a crash of every reader.
            if r.kind in kinds
        ]

    def certificate_count(self) -> int:
        """How many distinct certificates (leaves and chain certificates) are stored."""
        stmt = select(func.count()).select_from(CERTIFICATE)
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def certificate_der(self, fingerprint_sha256: str) -> bytes | None:
        """The DER of a stored certificate, or ``None``.

        The fingerprint is hex, in any case, with or without ``:`` separators.
        """
        fp = fingerprint_sha256.replace(":", "").strip().lower()
        stmt = select(CERTIFICATE.c.der).where(CERTIFICATE.c.fingerprint_sha256 == fp)
        with self._read() as conn:
            der = conn.execute(stmt).scalar_one_or_none()
        return bytes(der) if der is not None else None

    # ------------------------------------------------------------------------- SLI events

    def record_sli_events(self, events: Sequence[SLIEvent]) -> dict[str, tuple[float, float]]:
        """Store SLI events and add them to the cumulative counters, in one transaction.

        Returns the increments per SLI as ``{sli: (good, bad)}`` so the caller can advance its
        Prometheus counters by exactly what was stored.
        """
        if not events:
            return {}
        for e in events:
            require_aware(e.at, "SLIEvent.at")
        inc: dict[str, list[float]] = {}
        for e in events:
            pair = inc.setdefault(e.sli, [0.0, 0.0])
            pair[0 if e.good else 1] += 1.0
        rows = [
            {
                "at": e.at,
                "sli": e.sli,
                "good": e.good,
                "ref": e.ref,
                "value": e.value,
                "detail": e.detail,
            }
            for e in events
        ]
        c = SLI_COUNTER.c
        with self._write() as conn:
            for chunk in _chunks(rows):
                conn.execute(self._insert(SLI_EVENT), list(chunk))
            for sli, (good, bad) in sorted(inc.items()):
                ins = self._insert(SLI_COUNTER).values(sli=sli, good_total=good, bad_total=bad)
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[c.sli],
                        set_={
                            "good_total": c.good_total + ins.excluded.good_total,
                            "bad_total": c.bad_total + ins.excluded.bad_total,
                        },
                    )
                )
        return {sli: (g, b) for sli, (g, b) in inc.items()}

    def sli_counters(self) -> dict[str, tuple[float, float]]:
        """Cumulative ``{sli: (good_total, bad_total)}``."""
        with self._read() as conn:
            rows = conn.execute(select(SLI_COUNTER)).all()
        return {r.sli: (float(r.good_total), float(r.bad_total)) for r in rows}

    def snapshot_sli(self, at: datetime) -> list[SLISample]:
        """Append one sample of every SLI counter at ``at`` (like a scrape) and return them.

        Every SLI of ``certpilot.domain.sli.SLI_IDS`` is sampled, at 0 before its first event.
        """
        require_aware(at, "at")
        with self._write() as conn:
            rows = conn.execute(select(SLI_COUNTER)).all()
            counts = {r.sli: (float(r.good_total), float(r.bad_total)) for r in rows}
            # Every known SLI is sampled, at 0 before its first event, as Prometheus scrapes
            # the pre-initialised counters: the first events then show up as a rate.
            for sli in SLI_IDS:
                counts.setdefault(sli, (0.0, 0.0))
            samples = [SLISample(at, sli, g, b) for sli, (g, b) in sorted(counts.items())]
            if samples:
                ins = self._insert(SLI_SAMPLE)
                conn.execute(
                    ins.on_conflict_do_nothing(index_elements=[SLI_SAMPLE.c.sli, SLI_SAMPLE.c.at]),
                    [
                        {
                            "sli": x.sli,
                            "at": x.at,
                            "good_total": x.good_total,
                            "bad_total": x.bad_total,
                        }
                        for x in samples
                    ],
                )
        return samples

    def sli_samples(self, sli: str, since: datetime) -> list[SLISample]:
        """Samples of ``sli`` taken at or after ``since``, oldest first."""
        require_aware(since, "since")
        c = SLI_SAMPLE.c
        stmt = select(c.at, c.good_total, c.bad_total).where(c.sli == sli, c.at >= since)
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(c.at)).all()
        return [SLISample(r.at, sli, float(r.good_total), float(r.bad_total)) for r in rows]

    def sli_events(
        self,
        *,
        sli: str | None = None,
        since: datetime | None = None,
        good: bool | None = None,
        limit: int = 1000,
    ) -> list[SLIEvent]:
        """Stored SLI events, newest first (the drill-down of a burning SLO)."""
        c = SLI_EVENT.c
        stmt = select(SLI_EVENT)
        if sli is not None:
            stmt = stmt.where(c.sli == sli)
        if since is not None:
            stmt = stmt.where(c.at >= since)
        if good is not None:
            stmt = stmt.where(c.good == good)
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(c.id.desc()).limit(limit)).all()
        return [SLIEvent(r.at, r.sli, bool(r.good), r.ref, r.value, r.detail) for r in rows]

    def prune_sli(self, before: datetime) -> None:
        """Drop SLI events and samples older than ``before`` (counters are kept)."""
        require_aware(before, "before")
        with self._write() as conn:
            conn.execute(SLI_EVENT.delete().where(SLI_EVENT.c.at < before))
            conn.execute(SLI_SAMPLE.delete().where(SLI_SAMPLE.c.at < before))

    # ----------------------------------------------------------------------------- internals

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        return postgresql.insert(table)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock, self._guard(), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._lock, self._guard(), self._engine.connect() as conn:
            conn.execution_options(**{engines.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            raise engines.describe(self._url, self._engine, e) from e

    def _prior_locations(self, conn: Connection, refs: Sequence[str]) -> dict[str, PriorLocation]:
        out: dict[str, PriorLocation] = {}
        make = PriorLocation._make
        if self._dialect == "sqlite" and len(refs) >= _FULL_SCAN_FRACTION * _rowid_bound(
            conn, LOCATION
        ):
            # The batch covers much of the table (a full periodic scan): one sequential pass is
            # several times faster than as many B-tree probes from IN lists.
            wanted = set(refs)
            for row in _driver_rows(conn, self._every_location_sql):
                if row[0] in wanted:
                    out[row[0]] = make(row[1:])
            return out
        for chunk in _chunks(refs):
            for row in conn.execute(self._some_locations, {"refs": list(chunk)}).all():
                out[row[0]] = make(row[1:])
        return out

    def _stored_fingerprints(self, conn: Connection, fps: Sequence[str]) -> set[str]:
        stmt = select(CERTIFICATE.c.fingerprint_sha256).where(
            CERTIFICATE.c.fingerprint_sha256.in_(bindparam("fps", expanding=True))
        )
        out: set[str] = set()
        for chunk in _chunks(fps):
            out.update(conn.execute(stmt, {"fps": list(chunk)}).scalars().all())
        return out

    def _serials(self, conn: Connection, fps: Sequence[str]) -> dict[str, str]:
        stmt = select(CERTIFICATE.c.fingerprint_sha256, CERTIFICATE.c.serial).where(
            CERTIFICATE.c.fingerprint_sha256.in_(bindparam("fps", expanding=True))
        )
        out: dict[str, str] = {}
        for chunk in _chunks(fps):
            out.update(
                {fp: serial for fp, serial in conn.execute(stmt, {"fps": list(chunk)}).all()}
            )
        return out

    @staticmethod
    def _items_query() -> Select[Any]:
        c = CERTIFICATE.c
        loc = LOCATION.c
        return select(
            loc.ref,
            loc.source,
            loc.target,
            loc.fingerprint_sha256,
            loc.problems,
            loc.error,
            loc.labels,
            loc.first_seen,
            loc.last_scanned,
            c.serial,
            c.subject,
            c.subject_cn,
            c.issuer,
            c.issuer_cn,
            c.sans,
            c.not_before,
            c.not_after,
            c.key_type,
            c.key_bits,
            c.signature_algorithm,
        ).select_from(
            LOCATION.outerjoin(CERTIFICATE, loc.fingerprint_sha256 == c.fingerprint_sha256)
        )


def _item(r: Row[Any]) -> InventoryItem:
    labels = r.labels if isinstance(r.labels, dict) else {}
    return InventoryItem(
        ref=r.ref,
        source=r.source,
        target=r.target,
        fingerprint_sha256=r.fingerprint_sha256,
        serial=r.serial,
        subject=r.subject,
        subject_cn=r.subject_cn,
        issuer=r.issuer,
        issuer_cn=r.issuer_cn,
        sans=tuple(r.sans or ()),
        not_before=r.not_before,
        not_after=r.not_after,
        key_type=r.key_type,
        key_bits=r.key_bits,
        signature_algorithm=r.signature_algorithm,
        problems=tuple(parse_codes(r.problems)),
        error=r.error,
        first_seen=r.first_seen,
        last_scanned=r.last_scanned,
        labels=MappingProxyType({str(k): str(v) for k, v in labels.items()}),
    )
