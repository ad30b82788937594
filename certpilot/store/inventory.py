"""The inventory store: observations in, locations, certificates and events out.

:class:`Inventory` is the one object other rooms use. It speaks domain dataclasses
(``Observation`` in; ``InventoryItem``, ``Event``, ``Sighting``, ``ScanRun`` out) and hides
SQLAlchemy.

The hot path is :meth:`Inventory.record`: a periodic scan of 100k locations must go in within
about two seconds on a small machine. It works in bulk, in one transaction:

1. dedupe the batch (the last observation of a ``ref`` wins);
2. read every location's state digest (``location_scan.state``, one narrow pass, or keyed
   lookups for a small batch) and compare it with the observation's (:func:`_state_digest`);
3. *steady* locations (most of any periodic scan) write their narrow ``location_scan`` row
   (time and run) and nothing else. *Changed* ones get their previous state read, are
   rewritten, the certificates they start and stop presenting are worked out from the stored
   chain, and their events derived in pure code (:mod:`certpilot.store.changes`);
4. write with ``executemany``, each set sorted by its key, certificates first (foreign keys):
   new certificates, locations, scan rows, sightings that start (upsert) or end (closed at the
   previous scan), events (with ids reserved up front, so no ``RETURNING`` per row).

What a steady scan does not write is derived when read, exactly: a sighting that is still
current (its certificate is in the location's ``chain``) was last seen at the location's latest
scan, and a certificate was last seen at the latest of its sightings. The first version of this
store rewrote, on every scan of 100k locations, every location row (about 420 bytes each) and
the 200k sighting rows, and in a new hour every certificate row (DER included), all to say
"still there": 2.0 s per steady scan, 3.1 s in a new hour (benchmarks/RESULTS.md).

The statements are built with SQLAlchemy Core (the dialect's ``insert``, so SQLite and
PostgreSQL each get their own ``ON CONFLICT``), compiled once per inventory, and executed with
the driver's ``executemany`` on tuples already in the database's representation
(:mod:`certpilot.store.coltypes`): SQLAlchemy's per-row parameter processing costs about twice
what SQLite itself spends on the same rows. SQLite commits leave the WAL checkpoint to a
background thread (:class:`certpilot.store.engine.WalCheckpointer`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Engine,
    Row,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, ColumnElement, FromClause

from certpilot.domain.inventory import Event, EventKind, InventoryItem, ScanRun, Sighting
from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode
from certpilot.domain.sli import SLI_IDS, SLIEvent, SLISample
from certpilot.domain.x509 import CertInfo
from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.changes import (
    EventDraft,
    PriorLocation,
    canonical_codes,
    chain_fingerprints,
    chain_json,
    derive_events,
    parse_codes,
    presented,
)
from certpilot.store.coltypes import (
    UTCDateTime,
    json_names,
    json_text,
    require_aware,
    timestamp_encoder,
)
from certpilot.store.tables import (
    CERTIFICATE,
    EVENT,
    LOCATION,
    LOCATION_SCAN,
    SCAN_RUN,
    SIGHTING,
    SLI_COUNTER,
    SLI_EVENT,
    SLI_SAMPLE,
)

#: Rows per ``executemany`` call: large enough that per-call overhead vanishes, small enough
#: to bound the memory of one call's parameters.
CHUNK = 5000

# Key of the PostgreSQL advisory lock that serialises record() across replicas, as BEGIN
# IMMEDIATE does on SQLite ("certpilo" in ASCII, an arbitrary constant).
_PG_RECORD_LOCK: Final = 0x6365727470696C6F
#: A record() of at least this many locations drops its pages from the SQLite connection's
#: cache once committed (a scan chunk: see EngineBacked._write).
_LARGE_BATCH: Final = 500

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
# The parameters of a changed location's UPDATE, in the order the statement binds them.
_REWRITE_PARAMS: Final = (
    *(
        f"b_{name}"
        for name in _LOCATION_COLUMNS[1:]
        if name not in ("first_seen", "last_changed", "run_id")
    ),
    "b_keep",
    "b_last_changed",
    "b_run_id",
    "b_ref",
)
_SCAN_COLUMNS: Final = ("ref", "state", "last_scanned", "run_id")
_SIGHTING_COLUMNS: Final = ("ref", "fingerprint_sha256", "first_seen", "last_seen")
_EVENT_COLUMNS: Final = ("id", "at", "kind", "ref", "fingerprint_sha256", "code", "detail")


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    size = CHUNK  # read at call time, so tests can shrink it
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _normal_fingerprint(text: str) -> str:
    """A fingerprint as stored: lowercase hex without ``:`` separators."""
    return text.replace(":", "").strip().lower()


# A location's latest scan: its scan row's, or (a location stored by an older version, until
# its next scan) the location row's own.
_LAST_SCANNED: Final = func.coalesce(LOCATION_SCAN.c.last_scanned, LOCATION.c.last_scanned)
# Where the location's latest scan is read from (joined to LOCATION).
_WITH_SCAN: Final = (LOCATION_SCAN, LOCATION_SCAN.c.ref == LOCATION.c.ref)

# A sighting is current when the location's latest scan presented its certificate, i.e. when
# the location's chain (a JSON list of hex fingerprints, see changes.fingerprints_json) names
# it. Its last_seen is then the location's latest scan time: scans do not rewrite current
# sightings, they only close the ones that end (see Inventory.record).
_SIGHTING_IS_CURRENT: Final = type_coerce(LOCATION.c.chain, Text).like(
    literal('%"') + SIGHTING.c.fingerprint_sha256 + literal('"%')
)
_SIGHTING_LAST_SEEN: Final = type_coerce(
    case((_SIGHTING_IS_CURRENT, _LAST_SCANNED), else_=SIGHTING.c.last_seen),
    UTCDateTime(),
)


def _state_digest(
    obs: Observation, chain_json: str, problems_json: str, details: str, labels: str
) -> bytes:
    """A digest of everything a scan stores about a location but its time and run: equal
    digests mean the location is as it was (``location_scan.state``).

    The text hashed decodes uniquely: the two JSON lists hold no ``]`` inside (hex fingerprints,
    problem codes), the leaf flag is one character, sources are identifiers, the JSON texts
    escape NUL, and the free texts (target, error) are length-prefixed. The chain starts with
    the leaf whenever there is one (:func:`~certpilot.store.changes.presented`), so equal
    chains and flags mean equal leaves. BLAKE2b, 16 bytes: https://www.blake2.net/.
    """
    target = obs.target
    error = obs.error
    text = (
        f"{chain_json}{problems_json}{'1' if obs.leaf is None else '0'}{obs.source}"
        f"\0{details}\0{labels}\0{len(target)}:{target}"
    )
    if error is not None:
        text = f"{text}\0{len(error)}:{error}"
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


#: Read every location's state (or every fingerprint) in one pass instead of looking keys up
#: when a batch has at least this share of the table's rows.
_FULL_SCAN_FRACTION: Final = 0.25


def _driver_rows(conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query straight from the driver's cursor, as plain tuples.

    For the 100k-row reads of record(): SQLAlchemy's result rows cost about as much again as
    the query itself. Runs on the connection's DBAPI connection, inside its transaction.
    """
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


class _Lookup:
    """A SELECT of rows by key, for many keys at once; rows come back as plain tuples.

    Every key goes in one parameter, so one statement serves any number of keys: on SQLite a
    JSON array (``key IN (SELECT value FROM json_each(?))``, compiled once and run on the
    driver), on PostgreSQL an array (``key IN (SELECT unnest(%s))``). Expanding ``IN`` lists
    of thousands of parameters went badly on PostgreSQL: once psycopg prepares the statement
    (its 5th execution), the server's generic plan compares every row of the table with every
    listed value, 8 s per 5000 fingerprints against 110k certificates.
    """

    def __init__(
        self,
        engine: Engine,
        key: ColumnElement[Any],
        *columns: ColumnElement[Any],
        from_: FromClause | None = None,
    ) -> None:
        base = select(*columns) if from_ is None else select(*columns).select_from(from_)
        self._sqlite_sql: str | None = None
        if engine.dialect.name == "sqlite":
            keys = func.json_each(bindparam("keys")).table_valued("value")
            by_json = base.where(key.in_(select(keys.c.value)))
            self._sqlite_sql = str(by_json.compile(dialect=engine.dialect))
        array = (
            func.unnest(bindparam("keys", type_=postgresql.ARRAY(Text)))
            .table_valued("value")
            .render_derived()  # AS anon_1(value): PostgreSQL names the column after the alias
        )
        self._stmt = base.where(key.in_(select(array.c.value)))

    def rows(self, conn: Connection, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        if self._sqlite_sql is not None:
            return _driver_rows(conn, self._sqlite_sql, (json_text(list(keys)),))
        return [tuple(row) for row in conn.execute(self._stmt, {"keys": list(keys)})]


def _rowid_bound(conn: Connection, table: Table) -> int:
    """An upper bound of a SQLite rowid table's row count, in O(log n): its largest rowid."""
    value = conn.exec_driver_sql(f"SELECT max(rowid) FROM {table.name}").scalar()  # noqa: S608
    return int(value or 0)


def _sorted(rows: list[tuple[Any, ...]], *key: int) -> list[tuple[Any, ...]]:
    """``rows`` sorted in place by their primary key (the values at positions ``key``).

    Writing in key order turns a batch's scattered B-tree probes into one ordered walk of the
    table and its key index: each page is read and dirtied once, in order, instead of being
    revisited (or evicted and read back) as the scanner's completion order dictates.
    """
    rows.sort(key=itemgetter(*key))
    return rows


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
        "changed_refs",
        "location_rows",
        "new_scan_rows",
        "pending",
        "rewrite_rows",
        "scan_rows",
        "seen",
        "started",
        "steady_rows",
        "stopped",
    )

    def __init__(self) -> None:
        # Changed locations as _plan found them, before their previous state is read:
        # (observation, presented, chain JSON, problems JSON, details, labels, when, run_id,
        # state digest).
        self.pending: list[tuple[Any, ...]] = []
        self.changed_refs: list[str] = []  # those of them stored before
        # (observation, problems JSON, previous state or None when the location is new)
        self.changed: list[tuple[Observation, str, PriorLocation | None]] = []
        self.location_rows: list[tuple[Any, ...]] = []  # new locations (_LOCATION_COLUMNS)
        self.rewrite_rows: list[tuple[Any, ...]] = []  # changed ones (_REWRITE_PARAMS)
        self.new_scan_rows: list[tuple[Any, ...]] = []  # of new locations (_SCAN_COLUMNS)
        self.steady_rows: list[tuple[Any, ...]] = []  # (when, run_id, ref)
        self.scan_rows: list[tuple[Any, ...]] = []  # changed, stored: (state, when, run_id, ref)
        self.started: list[tuple[Any, ...]] = []  # sighting upserts (_SIGHTING_COLUMNS)
        self.stopped: list[tuple[Any, ...]] = []  # (previous scan, ref, fingerprint)
        self.certs: dict[str, CertInfo] = {}  # started being presented somewhere
        self.seen: dict[str, Any] = {}  # fingerprint -> latest stored timestamp in the batch

    def see(self, fp: str, when: Any) -> None:
        if fp not in self.seen or when > self.seen[fp]:
            self.seen[fp] = when


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


class Inventory(engines.EngineBacked):
    """The certificate inventory on SQLite or PostgreSQL.

    Open with :meth:`open`, close with :meth:`close` (or use it as a context manager). Every
    method is safe to call from several threads; each public call is one transaction, and a
    failure of the database surfaces as :class:`~certpilot.domain.errors.StoreError` with a
    one-line message (naive datetimes passed in are bugs and raise ``ValueError``).

    Times passed in must be timezone-aware; times returned are aware UTC.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by :func:`certpilot.store.engine.create`; use :meth:`open`."""
        super().__init__(engine, url)
        self._ts: Callable[[datetime], object] = timestamp_encoder(self._dialect)
        # A SQLite file's WAL is copied back into the database off the writers' path.
        self._checkpointer = (
            engines.WalCheckpointer(engine)
            if self._dialect == "sqlite" and not engines.is_memory(engine.url)
            else None
        )
        loc_c = LOCATION.c
        scan_c = LOCATION_SCAN.c
        # What decides whether a location is steady: its state digest (see _state_digest).
        self._every_state_sql = str(
            select(scan_c.ref, scan_c.state).compile(dialect=engine.dialect)
        )
        self._some_states = _Lookup(engine, scan_c.ref, scan_c.ref, scan_c.state)
        # The previous state of changed locations, as raw driver values (type_coerce to Text
        # skips the JSON and datetime processing): JSON texts are compared as text, and
        # last_scanned goes back to the database unchanged. PriorLocation's fields, by ref,
        # with the serial of the last leaf for a new_certificate event.
        cert_c = CERTIFICATE.c
        self._some_locations = _Lookup(
            engine,
            loc_c.ref,
            loc_c.ref,
            loc_c.source,
            loc_c.fingerprint_sha256,
            loc_c.last_fingerprint_sha256,
            type_coerce(loc_c.problems, Text),
            type_coerce(loc_c.chain, Text),
            type_coerce(_LAST_SCANNED, Text),
            cert_c.serial,
            from_=LOCATION.outerjoin(LOCATION_SCAN, scan_c.ref == loc_c.ref).outerjoin(
                CERTIFICATE, cert_c.fingerprint_sha256 == loc_c.last_fingerprint_sha256
            ),
        )
        self._every_fingerprint_sql = str(
            select(cert_c.fingerprint_sha256).compile(dialect=engine.dialect)
        )
        self._some_fingerprints = _Lookup(
            engine, cert_c.fingerprint_sha256, cert_c.fingerprint_sha256
        )

        insert = self._insert
        c = CERTIFICATE.c
        new_certs = insert(CERTIFICATE).on_conflict_do_nothing(
            index_elements=[c.fingerprint_sha256]
        )
        self._insert_certs = _Bulk(new_certs, engine, _CERT_COLUMNS)

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
        # A changed location that exists: every column but first_seen, by key (an upsert
        # would probe the key twice). last_changed is kept when the leaf and the problems
        # are (a chain-only change), which _plan_changes knows: "b_keep".
        rewrite = (
            update(LOCATION)
            .where(LOCATION.c.ref == bindparam("b_ref"))
            .values(
                {
                    **{
                        name: bindparam(f"b_{name}")
                        for name in _LOCATION_COLUMNS[1:]
                        if name not in ("first_seen", "last_changed")
                    },
                    "last_changed": case(
                        (bindparam("b_keep", type_=Boolean), LOCATION.c.last_changed),
                        else_=bindparam("b_last_changed"),
                    ),
                }
            )
        )
        self._rewrite_locations = _Bulk(rewrite, engine, _REWRITE_PARAMS)
        # Every scan of a stored location writes its scan row: the time and run when it is
        # steady (binding the unchanged digest again cost a third more), the state too when
        # it changed. A new location gets one (an upsert, in case an older version stored the
        # location without it).
        touch = (
            update(LOCATION_SCAN)
            .where(scan_c.ref == bindparam("b_ref"))
            .values(last_scanned=bindparam("b_last_scanned"), run_id=bindparam("b_run_id"))
        )
        self._touch_scans = _Bulk(touch, engine, ("b_last_scanned", "b_run_id", "b_ref"))
        scan = (
            update(LOCATION_SCAN)
            .where(scan_c.ref == bindparam("b_ref"))
            .values(
                state=bindparam("b_state"),
                last_scanned=bindparam("b_last_scanned"),
                run_id=bindparam("b_run_id"),
            )
        )
        self._backfill_scans = insert(LOCATION_SCAN).from_select(
            ["ref", "last_scanned", "run_id"],
            select(loc_c.ref, loc_c.last_scanned, loc_c.run_id).where(
                ~select(scan_c.ref).where(scan_c.ref == loc_c.ref).exists()
            ),
        )
        self._update_scans = _Bulk(scan, engine, ("b_state", "b_last_scanned", "b_run_id", "b_ref"))
        new_scan = insert(LOCATION_SCAN)
        self._insert_scans = _Bulk(
            new_scan.on_conflict_do_update(
                index_elements=[scan_c.ref],
                set_={name: new_scan.excluded[name] for name in _SCAN_COLUMNS[1:]},
            ),
            engine,
            _SCAN_COLUMNS,
        )

        sight = insert(SIGHTING)
        upsert_sightings = sight.on_conflict_do_update(
            index_elements=[SIGHTING.c.ref, SIGHTING.c.fingerprint_sha256],
            set_={"last_seen": sight.excluded.last_seen},
        )
        self._upsert_sightings = _Bulk(upsert_sightings, engine, _SIGHTING_COLUMNS)
        # A location stopped presenting a certificate: its sighting ends at the previous scan,
        # the last one that presented it. Current sightings are never written by a scan.
        close = (
            update(SIGHTING)
            .where(
                SIGHTING.c.ref == bindparam("b_ref"),
                SIGHTING.c.fingerprint_sha256 == bindparam("b_fp"),
            )
            .values(last_seen=bindparam("b_seen"))
        )
        self._close_sightings = _Bulk(close, engine, ("b_seen", "b_ref", "b_fp"))
        self._insert_events = _Bulk(insert(EVENT), engine, _EVENT_COLUMNS)

        # remove(): a certificate keeps, as its own last_seen, the last scan of a removed
        # location that presented it (its sighting is closed at that scan too).
        self._keep_cert_seen = _Bulk(
            update(CERTIFICATE)
            .where(c.fingerprint_sha256 == bindparam("b_fp"), c.last_seen < bindparam("b_after"))
            .values(last_seen=bindparam("b_seen")),
            engine,
            ("b_seen", "b_fp", "b_after"),
        )
        # Children first: sighting and location_scan rows name their location (foreign keys).
        # Sightings outlive their location (schema 0003): history stays answerable.
        self._delete_location = [
            _Bulk(table.delete().where(table.c.ref == bindparam("b_ref")), engine, ("b_ref",))
            for table in (LOCATION_SCAN, LOCATION)
        ]

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
        engine = engines.create(url, background_checkpoints=True)
        inventory = cls(engine, url)
        try:
            with inventory._write() as conn:
                schema.upgrade(conn)
                # Locations stored before location_scan existed get their scan row, with no
                # state: their next scan rewrites them once (nothing to do when none lack it).
                conn.execute(inventory._backfill_scans)
        except BaseException:
            engine.dispose()
            raise
        return inventory

    def close(self) -> None:
        """Release every connection. The inventory must not be used afterwards."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        super().close()

    def wait_checkpoint(self) -> float:
        """Wait until the background WAL checkpoint (SQLite files) has caught up with every
        commit so far, and return the seconds it spent checkpointing since the previous call.

        Writes never need this (a commit is durable once it returns); benchmarks use it to
        keep rounds apart and to report the checkpoint's cost. 0.0 on other databases.
        """
        return self._checkpointer.wait() if self._checkpointer is not None else 0.0

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
        * Timestamps: a location's ``first_seen``/``last_scanned``/``last_changed`` are the
          observation's ``observed_at``, exactly. A sighting (see :meth:`sightings`) runs from
          the first scan that presented the certificate at the location to the last one, exactly:
          while the location still presents it, that is the location's ``last_scanned``. A
          certificate's ``first_seen`` is the first time any location presented it, its
          ``last_seen`` the latest (see :meth:`certificate_seen`). Events are stamped ``now``
          (when the inventory learnt the change), so event time never goes backwards along
          event ids.
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
        with _gc_paused(len(latest)), self._write(large=len(latest) >= _LARGE_BATCH) as conn:
            if self._dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_RECORD_LOCK)))
            states = self._location_states(conn, list(latest))
            plan = self._plan(latest.values(), states, run_id)
            self._plan_changes(plan, self._prior_locations(conn, plan.changed_refs))
            known = self._stored_fingerprints(conn, list(plan.certs))
            drafts = self._derive(plan, known)
            self._write_certificates(conn, plan, known)
            self._insert_locations.run(conn, _sorted(plan.location_rows, 0))
            self._insert_scans.run(conn, _sorted(plan.new_scan_rows, 0))
            self._rewrite_locations.run(conn, _sorted(plan.rewrite_rows, -1))
            self._update_scans.run(conn, _sorted(plan.scan_rows, -1))
            self._touch_scans.run(conn, _sorted(plan.steady_rows, -1))
            self._upsert_sightings.run(conn, _sorted(plan.started, 0, 1))
            self._close_sightings.run(conn, _sorted(plan.stopped, 1, 2))
            return self._write_events(conn, drafts, at)

    def remove(
        self, refs: Sequence[str], *, now: datetime, run_id: int | None = None
    ) -> list[Event]:
        """Forget the locations ``refs`` in one transaction and return their events.

        Contract:

        * All or nothing, like :meth:`record` (and serialised with it on PostgreSQL).
        * Each stored location among ``refs`` is deleted with its scan row; refs not stored
          are ignored, a ref given twice counts once. Its sightings stay, closed at its last
          scan: ``sightings(ref=...)`` still answers what it presented.
        * One ``location_removed`` event per removed location, in the order of ``refs``,
          stamped ``now``, with the certificate the location held then (``None`` when its
          last scan found none). Events and certificates outlive the location: a certificate
          it presented keeps, as its last presentation (:meth:`certificate_seen`), the
          location's last scan, as when a location stops presenting a certificate in
          :meth:`record`.
        * Recording the ref again later adds it back as a new location (``location_added``).

        ``run_id``: the scan run that found the locations gone, if any. Events carry no run,
        so it is accepted for symmetry with :meth:`record` and not stored.
        """
        del run_id  # see the docstring: nothing to link it to once the location is gone
        require_aware(now, "now")
        at = now.astimezone(UTC)
        wanted = list(dict.fromkeys(refs))
        if not wanted:
            return []
        with self._write() as conn:
            if self._dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_RECORD_LOCK)))
            prior = self._prior_locations(conn, wanted)
            gone = [ref for ref in wanted if ref in prior]
            if not gone:
                return []
            # The sightings of these locations end at their last scan, the last one that
            # presented the certificates (values straight from the database, as record()
            # closes sightings with them); they stay, closed, as the location's history.
            seen: dict[str, Any] = {}
            closing: list[tuple[Any, str, str]] = []
            for ref in gone:
                p = prior[ref]
                for fp in chain_fingerprints(p.chain_json):
                    closing.append((p.last_scanned, ref, fp))
                    if fp not in seen or p.last_scanned > seen[fp]:
                        seen[fp] = p.last_scanned
            self._keep_cert_seen.run(conn, _sorted([(t, fp, t) for fp, t in seen.items()], 1))
            self._close_sightings.run(conn, _sorted(closing, 1, 2))
            keys = _sorted([(ref,) for ref in gone], 0)
            for delete in self._delete_location:
                delete.run(conn, keys)
            drafts = [
                EventDraft(
                    EventKind.LOCATION_REMOVED,
                    ref,
                    prior[ref].fingerprint,
                    detail=f"{prior[ref].source} location removed",
                )
                for ref in gone
            ]
            return self._write_events(conn, drafts, at)

    def _plan(
        self,
        batch: Iterable[Observation],
        states: Mapping[str, bytes | None],
        run_id: int | None,
    ) -> _Plan:
        """Sort the batch into steady locations (only the scan time and run moved: equal state
        digests) and changed ones, and build the rows of the steady ones.

        Steady locations are the common case of a periodic scan and get the cheapest write: their
        scan row (``location_scan``), and nothing else. Changed ones (a digest that differs, or
        none stored) are completed by :meth:`_plan_changes` once their previous state is read.
        """
        ts = self._ts
        plan = _Plan()
        steady = plan.steady_rows.append
        changed = plan.pending.append
        for obs in batch:
            chain = chain_json(obs)
            problems = obs.problems
            problems_json = json_text(canonical_codes(problems)) if problems else "[]"
            details = json_text([p.to_dict() for p in problems]) if problems else "[]"
            labels = json_text(dict(obs.labels)) if obs.labels else "{}"
            try:
                when = ts(obs.observed_at)  # raises ValueError for a naive datetime
            except ValueError as e:
                raise ValueError(f"observed_at of {obs.ref}: {e}") from None
            ref = obs.ref
            state = _state_digest(obs, chain, problems_json, details, labels)
            if states.get(ref) == state:
                steady((when, run_id, ref))
                continue
            changed(
                (obs, presented(obs), chain, problems_json, details, labels, when, run_id, state)
            )
            if ref in states:
                plan.changed_refs.append(ref)
        return plan

    def _plan_changes(self, plan: _Plan, prior: Mapping[str, PriorLocation]) -> None:
        """Build the rows of the changed locations of ``plan``: new locations, rewritten ones
        (with their scan rows), and the sightings that start (certificates now presented that
        were not) or end (presented at the previous scan, not any more), from the stored chain.
        A location whose only change is a message (error text, problem details, labels,
        target) is rewritten too, and yields no event."""
        for obs, infos, chain, problems_json, details, labels, when, run_id, state in plan.pending:
            ref = obs.ref
            p = prior.get(ref)
            plan.changed.append((obs, problems_json, p))
            leaf = obs.leaf
            fp = leaf.fingerprint_sha256 if leaf is not None else None
            last_fp = fp if fp is not None else (p.last_fingerprint if p is not None else None)
            if p is None:
                plan.location_rows.append(
                    (
                        ref,
                        obs.source,
                        obs.target,
                        fp,
                        last_fp,
                        chain,
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
                plan.new_scan_rows.append((ref, state, when, run_id))
            else:
                # last_changed moves only when the leaf or the set of problems did.
                keep = p.fingerprint == fp and p.problems_json == problems_json
                plan.rewrite_rows.append(
                    (
                        obs.source,
                        obs.target,
                        fp,
                        last_fp,
                        chain,
                        problems_json,
                        details,
                        obs.error,
                        labels,
                        when,
                        keep,
                        when,
                        run_id,
                        ref,
                    )
                )
                plan.scan_rows.append((state, when, run_id, ref))
            before = chain_fingerprints(p.chain_json) if p is not None else ()
            for info in infos:
                cfp = info.fingerprint_sha256
                if cfp in before:
                    continue  # still presented: its sighting stays current
                plan.started.append((ref, cfp, when, when))
                if cfp not in plan.certs:
                    plan.certs[cfp] = info
                plan.see(cfp, when)
            if before and p is not None:
                now_presented = {info.fingerprint_sha256 for info in infos}
                for cfp in before:
                    if cfp not in now_presented:
                        plan.stopped.append((p.last_scanned, ref, cfp))
        plan.pending.clear()

    def _derive(self, plan: _Plan, known: set[str]) -> list[EventDraft]:
        drafts: list[EventDraft] = []
        announced: set[str] = set()
        fresh = plan.certs
        for obs, problems_json, p in plan.changed:
            leaf_is_new = False
            if obs.leaf is not None:
                fp = obs.leaf.fingerprint_sha256
                # "first seen" once per fingerprint, even when several locations of this
                # batch present it. A leaf the location kept presenting is not in plan.certs:
                # its sighting proves it is stored.
                if fp in fresh and fp not in known and fp not in announced:
                    leaf_is_new = True
                    announced.add(fp)
            drafts.extend(
                derive_events(
                    obs,
                    problems_json,
                    p,
                    leaf_is_new=leaf_is_new,
                    old_serial=p.last_serial if p is not None else None,
                )
            )
        return drafts

    def _write_certificates(self, conn: Connection, plan: _Plan, known: set[str]) -> None:
        ts = self._ts
        fresh: list[tuple[Any, ...]] = []
        for fp, c in plan.certs.items():
            if fp in known:
                continue  # a location started presenting a stored certificate: nothing to write
            when = plan.seen[fp]
            fresh.append(
                (
                    fp,
                    c.serial,
                    c.spki_sha256,
                    c.subject,
                    c.subject_cn,
                    c.issuer,
                    c.issuer_cn,
                    json_names(c.sans),
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
        fresh.sort()  # by fingerprint: see _sorted
        self._insert_certs.run(conn, fresh)

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
        with self._read(large=True) as conn:
            rows = conn.execute(stmt).all()
        out = [_item(r) for r in rows]
        if code is not None:
            out = [i for i in out if code in i.problems]
        return out

    def refs(self, source: str | None = None) -> list[str]:
        """Every stored location ref (of ``source``), cheaply: what a scan cycle compares with
        what it saw to forget locations that are gone."""
        stmt = select(LOCATION.c.ref)
        if source is not None:
            stmt = stmt.where(LOCATION.c.source == source)
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute(stmt).all()]

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
        fp = _normal_fingerprint(fingerprint_sha256)
        stmt = select(CERTIFICATE.c.der).where(CERTIFICATE.c.fingerprint_sha256 == fp)
        with self._read() as conn:
            der = conn.execute(stmt).scalar_one_or_none()
        return bytes(der) if der is not None else None

    def fingerprints_seen_outside(self, sources: Iterable[str]) -> list[str]:
        """Fingerprints of the certificates some location of a source *not* in ``sources``
        presents or presented: a CT monitor asks "is this key or serial ours?" without counting
        the certificates it recorded itself (``sources=("ct",)``)."""
        stmt = (
            select(SIGHTING.c.fingerprint_sha256)
            .join(LOCATION, LOCATION.c.ref == SIGHTING.c.ref)
            .where(LOCATION.c.source.not_in(sorted(set(sources))))
            .distinct()
        )
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute(stmt).all()]

    def certificates_der(self, fingerprints: Sequence[str]) -> dict[str, bytes]:
        """The DER of each stored certificate among ``fingerprints`` (lowercase hex), read in
        chunks; unknown fingerprints are left out."""
        out: dict[str, bytes] = {}
        fps = list(dict.fromkeys(fingerprints))
        with self._read() as conn:
            for i in range(0, len(fps), 500):
                stmt = select(CERTIFICATE.c.fingerprint_sha256, CERTIFICATE.c.der).where(
                    CERTIFICATE.c.fingerprint_sha256.in_(fps[i : i + 500])
                )
                out.update((str(fp), bytes(der)) for fp, der in conn.execute(stmt).all())
        return out

    def sightings(
        self, *, ref: str | None = None, fingerprint_sha256: str | None = None
    ) -> list[Sighting]:
        """Where certificates were presented: the sightings of location ``ref``, of one
        certificate (hex fingerprint, any case, with or without ``:``), or both; every sighting
        when neither is given. Ordered by ref, then ``first_seen``, then fingerprint.

        "Where is this certificate deployed?" is ``sightings(fingerprint_sha256=fp)`` filtered
        on ``current``; "what did this endpoint serve?" is ``sightings(ref=ref)``.
        """
        s = SIGHTING.c
        stmt = select(
            s.ref, s.fingerprint_sha256, s.first_seen, _SIGHTING_LAST_SEEN, _SIGHTING_IS_CURRENT
        ).select_from(SIGHTING.outerjoin(LOCATION, LOCATION.c.ref == s.ref).outerjoin(*_WITH_SCAN))
        if ref is not None:
            stmt = stmt.where(s.ref == ref)
        if fingerprint_sha256 is not None:
            stmt = stmt.where(s.fingerprint_sha256 == _normal_fingerprint(fingerprint_sha256))
        stmt = stmt.order_by(s.ref, s.first_seen, s.fingerprint_sha256)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [Sighting(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def certificate_seen(self, fingerprint_sha256: str) -> tuple[datetime, datetime] | None:
        """When a stored certificate was first and last presented anywhere, or ``None``.

        The last time is exact: the latest scan of any location that presented it (derived
        from its sightings, so reading it costs one indexed pass over them).
        """
        fp = _normal_fingerprint(fingerprint_sha256)
        c = CERTIFICATE.c
        own = select(c.first_seen, c.last_seen).where(c.fingerprint_sha256 == fp)
        latest = (
            select(func.max(_SIGHTING_LAST_SEEN))
            .select_from(
                SIGHTING.outerjoin(LOCATION, LOCATION.c.ref == SIGHTING.c.ref).outerjoin(
                    *_WITH_SCAN
                )
            )
            .where(SIGHTING.c.fingerprint_sha256 == fp)
        )
        with self._read() as conn:
            row = conn.execute(own).first()
            if row is None:
                return None
            sighted = conn.execute(latest).scalar()
        first, last = row[0], row[1]
        return first, max(last, sighted) if sighted is not None else last

    # ------------------------------------------------------------------------- SLI events

    def record_sli_events(self, events: Sequence[SLIEvent]) -> dict[str, tuple[float, float]]:
        """Count SLI events in the cumulative counters and keep the bad ones, in one
        transaction.

        Every event is counted; only bad events are kept as rows (:meth:`sli_events`, the
        drill-down of a burning SLO: which location, which problem). Good ones are not: a
        healthy 10,000-endpoint fleet yields 10,000 good ``valid_ratio`` events per scan and as
        many ``coverage`` events per minute, 15 million rows a day that no one reads.

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
            if not e.good
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
        """Stored (bad) SLI events, newest first (the drill-down of a burning SLO)."""
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
    def _write(self, *, large: bool = False) -> Iterator[Connection]:
        with super()._write(large=large) as conn:
            yield conn
        if self._checkpointer is not None:
            self._checkpointer.request()  # committed: its pages can go to the database file

    def _location_states(self, conn: Connection, refs: Sequence[str]) -> dict[str, bytes | None]:
        """The state texts (see ``_every_state_sql``) of the stored locations among ``refs``,
        by ref; may hold other locations' too."""
        if self._dialect == "sqlite" and len(refs) >= _FULL_SCAN_FRACTION * _rowid_bound(
            conn, LOCATION
        ):
            # The batch covers much of the table (a full periodic scan): one sequential pass is
            # several times faster than as many B-tree probes from IN lists. Rows of refs not in
            # the batch are kept rather than filtered out: they are never looked up, and
            # filtering costs more than it saves.
            return dict(_driver_rows(conn, self._every_state_sql))
        return dict(self._some_states.rows(conn, refs))

    def _prior_locations(self, conn: Connection, refs: Sequence[str]) -> dict[str, PriorLocation]:
        make = PriorLocation._make
        return {row[0]: make(row[1:]) for row in self._some_locations.rows(conn, refs)}

    def _stored_fingerprints(self, conn: Connection, fps: Sequence[str]) -> set[str]:
        if self._dialect == "sqlite" and len(fps) >= _FULL_SCAN_FRACTION * _rowid_bound(
            conn, CERTIFICATE
        ):
            # As in _location_states: one pass (over the fingerprint index) beats probing it
            # for most of its entries, such as every certificate of a first import.
            return {row[0] for row in _driver_rows(conn, self._every_fingerprint_sql)}
        return {row[0] for row in self._some_fingerprints.rows(conn, fps)}

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
            type_coerce(_LAST_SCANNED, UTCDateTime()).label("last_scanned"),
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
            LOCATION.outerjoin(*_WITH_SCAN).outerjoin(
                CERTIFICATE, loc.fingerprint_sha256 == c.fingerprint_sha256
            )
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
