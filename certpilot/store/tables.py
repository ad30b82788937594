"""The inventory schema, as SQLModel tables.

These classes describe the schema (DDL, and a typed view for ad-hoc ORM use); the store itself
reads and writes them with SQLAlchemy Core through :data:`CERTIFICATE`, :data:`LOCATION`, ...,
and returns the domain dataclasses of ``certpilot.domain.inventory``, never these rows.

* ``certificate``: every certificate ever recorded (leaves and the chain certificates presented
  with them), keyed by the SHA-256 of its DER; immutable facts plus first/last seen (the row's
  ``last_seen`` is when it was stored; the exact value comes from its sightings, see
  ``Inventory.certificate_seen``).
* ``location``: where a certificate lives (an endpoint, a file item, a secret), keyed by the
  source's stable ``ref``; what it holds now and which problems it has now.
* ``location_scan``: per location, what every scan writes (its time, its run) and a digest of
  the rest, so a location found unchanged costs one narrow row (see :class:`LocationScanRow`).
* ``sighting``: every (location, certificate) pair ever seen, chain certificates included, so
  "where is this certificate deployed?" and "what did this endpoint serve last month?" are
  one indexed query each. A sighting is *current* while the location's ``chain`` names its
  certificate; its stored ``last_seen`` is then not maintained (scans do not rewrite it) and
  the location's ``last_scanned`` is the value (``Inventory.sightings``); when the location
  stops presenting the certificate, ``last_seen`` is set to the last scan that did.
* ``event``: the append-only change log, with ids that consumers page through (``since_id``).
* ``scan_run``: one row per scan (source, counts, start and finish).
* ``audit_entry``: the audit log, a hash chain (see :mod:`certpilot.domain.audit`).

Timestamps are :class:`~certpilot.store.coltypes.UTCDateTime`, JSON values
:class:`~certpilot.store.coltypes.JSONText` (see that module for why).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, Table, Text
from sqlmodel import Field, SQLModel

from certpilot.store.coltypes import JSONText, UTCDateTime

# This module deliberately has no `from __future__ import annotations`: SQLModel reads the
# field annotations at class creation to build the columns.


class CertificateRow(SQLModel, table=True):
    __tablename__ = "certificate"

    fingerprint_sha256: str = Field(primary_key=True, max_length=64)
    serial: str = Field(index=True)  # lowercase hex, as CertInfo.serial
    spki_sha256: str = Field(max_length=64)
    subject: str = Field(sa_type=Text)
    subject_cn: str
    issuer: str = Field(sa_type=Text)
    issuer_cn: str
    sans: list[str] = Field(default_factory=list, sa_type=JSONText)
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime, index=True)
    key_type: str
    key_bits: int
    signature_algorithm: str
    is_ca: bool
    der: bytes
    first_seen: datetime = Field(sa_type=UTCDateTime)
    # When the certificate was stored. Not refreshed by scans: rewriting 100k certificate rows
    # (DER included) to say "still deployed" was the largest write of a scan; the exact last
    # time is derived from the sightings (Inventory.certificate_seen).
    last_seen: datetime = Field(sa_type=UTCDateTime)


class ScanRunRow(SQLModel, table=True):
    __tablename__ = "scan_run"

    id: int | None = Field(default=None, primary_key=True)
    source: str
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    targets: int = 0
    observations: int = 0
    problems: int = 0


class LocationRow(SQLModel, table=True):
    __tablename__ = "location"

    ref: str = Field(primary_key=True)
    source: str = Field(index=True)
    target: str = Field(sa_type=Text)
    # What the location holds now; NULL when the last scan saw no certificate (refused, timeout).
    # Not indexed on purpose: fingerprints arrive in random order, and that index doubled the
    # cost of adding 100k locations; "where is this certificate?" is sighting's fingerprint index.
    fingerprint_sha256: str | None = Field(
        default=None, foreign_key="certificate.fingerprint_sha256", max_length=64
    )
    # The last leaf ever seen here, kept across failed scans, so an endpoint that was down and
    # comes back with the same certificate is not reported as a certificate change. No foreign
    # key: it is history, and must not stop a retired certificate from being pruned.
    last_fingerprint_sha256: str | None = Field(default=None, max_length=64)
    # Fingerprints of every certificate presented by the last scan, leaf first (empty when
    # none): the location's current sightings.
    chain: list[str] = Field(default_factory=list, sa_type=JSONText)
    # Distinct codes in severity order (see certpilot.domain.problems.SEVERITY_ORDER): a
    # canonical form, so comparing the stored text compares the sets.
    problems: list[str] = Field(default_factory=list, sa_type=JSONText)
    problem_details: list[dict[str, str]] = Field(default_factory=list, sa_type=JSONText)
    error: str | None = Field(default=None, sa_type=Text)
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSONText)
    first_seen: datetime = Field(sa_type=UTCDateTime)
    # The scan that last changed this row (a steady scan writes location_scan only; the
    # latest scan time is location_scan.last_scanned).
    last_scanned: datetime = Field(sa_type=UTCDateTime)
    # Last time the held certificate or the set of problems changed.
    last_changed: datetime = Field(sa_type=UTCDateTime)
    run_id: int | None = Field(default=None, foreign_key="scan_run.id")


class LocationScanRow(SQLModel, table=True):
    """The part of a location that every scan writes, apart from the rest of its row.

    A periodic scan finds most locations as they were, and then only their scan time moves:
    rewriting their whole ``location`` row (chain, fingerprints, messages: about 420 bytes) for
    that was most of a 100k-location scan's cost, and dirtied every page of the table. This row
    is about 90 bytes. ``state`` is a digest of everything else the location's last scan
    stored (see ``certpilot.store.inventory._state_digest``): equal digests mean the location
    is unchanged, so its row need not even be read. NULL (a location stored by an older
    version) never matches, so its next scan rewrites the location once.
    """

    __tablename__ = "location_scan"
    __table_args__ = {"sqlite_with_rowid": False}

    ref: str = Field(primary_key=True, foreign_key="location.ref")
    state: bytes | None = Field(default=None)
    # The latest scan of the location: InventoryItem.last_scanned (location.last_scanned and
    # location.run_id are those of the scan that last changed the location row).
    last_scanned: datetime = Field(sa_type=UTCDateTime)
    run_id: int | None = Field(default=None, foreign_key="scan_run.id")


class SightingRow(SQLModel, table=True):
    __tablename__ = "sighting"
    # A narrow table keyed by text: WITHOUT ROWID keeps one B-tree instead of two
    # (https://www.sqlite.org/withoutrowid.html, section 4). Ignored by PostgreSQL.
    __table_args__ = {"sqlite_with_rowid": False}

    # No foreign key on ref (schema 0003): a sighting outlives its location, as history.
    ref: str = Field(primary_key=True)
    fingerprint_sha256: str = Field(
        primary_key=True, foreign_key="certificate.fingerprint_sha256", index=True, max_length=64
    )
    first_seen: datetime = Field(sa_type=UTCDateTime)
    # The last scan that presented it, once it is no longer presented; while it is (the
    # location's chain names it), the location's last_scanned (see the module docstring).
    last_seen: datetime = Field(sa_type=UTCDateTime)


class EventRow(SQLModel, table=True):
    __tablename__ = "event"
    # AUTOINCREMENT: ids are never reused, even after the newest events are pruned, so a
    # consumer's `since_id` cursor cannot skip events (https://www.sqlite.org/autoinc.html).
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(max_length=32)
    ref: str = Field(index=True)  # no foreign key: history outlives a deleted location
    fingerprint_sha256: str | None = Field(default=None, max_length=64)
    code: str | None = Field(default=None, max_length=64)
    detail: str = Field(default="", sa_type=Text)


class SLIEventRow(SQLModel, table=True):
    """One SLI event (certpilot.domain.sli.SLIEvent): the drill-down behind the counters."""

    __tablename__ = "sli_event"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    sli: str = Field(max_length=64)
    good: bool
    ref: str = Field(default="", sa_type=Text)
    value: float | None = None
    detail: str = Field(default="", sa_type=Text)


class SLICounterRow(SQLModel, table=True):
    """Cumulative good/bad counts per SLI: the value ``certpilot_sli_events_total`` continues
    from after a restart, and what every sample snapshots."""

    __tablename__ = "sli_counter"

    sli: str = Field(primary_key=True, max_length=64)
    good_total: float = 0.0
    bad_total: float = 0.0


class SLISampleRow(SQLModel, table=True):
    """The counters as sampled at one instant, like a Prometheus scrape: the engine applies
    Prometheus's rate() to these, so its numbers agree with Prometheus's."""

    __tablename__ = "sli_sample"
    __table_args__ = {"sqlite_with_rowid": False}

    sli: str = Field(primary_key=True, max_length=64)
    at: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    good_total: float
    bad_total: float


class AuditRow(SQLModel, table=True):
    """One entry of the audit hash chain (certpilot.domain.audit.AuditEntry).

    ``seq`` is assigned by :class:`certpilot.store.audit.AuditLog` under the write lock, never by
    the database: the chain needs 1, 2, 3, ... without gaps, and the primary key refuses a
    second entry with the same ``seq`` (a forked chain) even if the lock were bypassed.
    """

    __tablename__ = "audit_entry"

    # BIGINT on PostgreSQL; on SQLite exactly INTEGER, so seq is the rowid.
    seq: int = Field(
        primary_key=True,
        sa_type=BigInteger().with_variant(Integer(), "sqlite"),
        sa_column_kwargs={"autoincrement": False},
    )
    at: datetime = Field(sa_type=UTCDateTime)
    actor: str = Field(sa_type=Text)
    action: str = Field(sa_type=Text)
    subject: str = Field(sa_type=Text)
    rule: str = Field(default="", sa_type=Text)
    before: str = Field(default="", sa_type=Text)
    after: str = Field(default="", sa_type=Text)
    result: str = Field(sa_type=Text)
    detail: dict[str, str] = Field(default_factory=dict, sa_type=JSONText)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


CERTIFICATE = _table(CertificateRow)
LOCATION = _table(LocationRow)
LOCATION_SCAN = _table(LocationScanRow)
SIGHTING = _table(SightingRow)
EVENT = _table(EventRow)
SCAN_RUN = _table(ScanRunRow)
SLI_EVENT = _table(SLIEventRow)
SLI_COUNTER = _table(SLICounterRow)
SLI_SAMPLE = _table(SLISampleRow)
AUDIT = _table(AuditRow)

#: Every table of the inventory, in dependency order (parents first).
INVENTORY_TABLES: tuple[Table, ...] = (
    CERTIFICATE,
    SCAN_RUN,
    LOCATION,
    LOCATION_SCAN,
    SIGHTING,
    EVENT,
    SLI_EVENT,
    SLI_COUNTER,
    SLI_SAMPLE,
    AUDIT,
)


class JobRow(SQLModel, table=True):
    """One remediation job (certpilot.store.jobs.Job): a persisted state machine whose
    transitions are compare-and-set updates on ``state`` and ``version``.

    ``key`` is the idempotency key (unique: a second create with it returns this job). The
    issued certificate is stored as its public chain only; the new private key is never
    written here (see certpilot.store.jobs).
    """

    __tablename__ = "remediation_job"
    # Job ids are never reused, even after the newest jobs are deleted.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_type=Text, unique=True)
    action: str = Field(max_length=32)
    state: str = Field(max_length=32, index=True)
    version: int = 1
    names: list[str] = Field(default_factory=list, sa_type=JSONText)
    fingerprint: str = Field(default="", max_length=64)
    ref: str = Field(default="", sa_type=Text)
    issuer: str = Field(default="", sa_type=Text)
    targets: list[str] = Field(default_factory=list, sa_type=JSONText)
    requester: str = Field(default="", sa_type=Text)
    rule: str = Field(default="", sa_type=Text)
    approvers: list[str] = Field(default_factory=list, sa_type=JSONText)
    second_person: bool = False
    approvals: list[dict[str, str]] = Field(default_factory=list, sa_type=JSONText)
    key_type: str = Field(default="", max_length=32)
    validity_days: int | None = None
    reason: int | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    last_error: str = Field(default="", sa_type=Text)
    old_serial: str = Field(default="", sa_type=Text)
    new_serial: str = Field(default="", sa_type=Text)
    new_fingerprint: str = Field(default="", max_length=64)
    subject_chain_pem: str = Field(default="", sa_type=Text)
    issued_chain_pem: str = Field(default="", sa_type=Text)
    receipts: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONText)
    verified: list[str] = Field(default_factory=list, sa_type=JSONText)
    state_times: dict[str, str] = Field(default_factory=dict, sa_type=JSONText)
    owner: str = Field(default="", sa_type=Text)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


JOBS = _table(JobRow)

# Appended rather than edited into the tuple above: the Inventory creates it with the rest.
INVENTORY_TABLES = (*INVENTORY_TABLES, JOBS)


class SlackPageRow(SQLModel, table=True):
    """One Slack message the bot posted for a group of signals (bot.model.Page): where it is
    (``channel``, ``ts``: the thread replies go under it), the signals it shows (JSON, so a
    restart edits the same message instead of posting a new one), and a ``digest`` of what was
    last rendered (an unchanged page is not sent again)."""

    __tablename__ = "slack_page"

    key: str = Field(primary_key=True, sa_type=Text)
    channel: str = Field(default="", sa_type=Text)
    ts: str = Field(default="", sa_type=Text)
    status: str = Field(default="firing", max_length=16, index=True)
    severity: str = Field(default="ticket", max_length=16)
    signals: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONText)
    jobs: list[Any] = Field(default_factory=list, sa_type=JSONText)
    digest: str = Field(default="", max_length=64)
    acknowledged_by: str = Field(default="", sa_type=Text)
    silenced_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    held_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class SlackRequestRow(SQLModel, table=True):
    """Signed Slack requests already handled (by their signature), kept for longer than
    Slack's 5-minute timestamp window: a captured request replayed inside that window is
    refused, on every replica."""

    __tablename__ = "slack_request"

    signature: str = Field(primary_key=True, max_length=80)
    at: datetime = Field(sa_type=UTCDateTime, index=True)


SLACK_PAGE = _table(SlackPageRow)
SLACK_REQUEST = _table(SlackRequestRow)


class CTLogRow(SQLModel, table=True):
    """Where the Certificate Transparency monitor is in one log (``ctwatch.monitor``).

    ``head`` is the last tree head whose signature and consistency with the previous one were
    verified (JSON: size, root, timestamp and the raw answer), so a restart checks the next head
    against it; ``next_index`` the first entry not yet processed and ``compact`` the compact
    Merkle range over the entries before it (``ctwatch.tree.CompactRange`` as JSON), so entries
    downloaded after a restart are still checked against the signed root. Written after the
    entries' findings are stored: a crash re-reads a window, it never skips one."""

    __tablename__ = "ct_log"

    url: str = Field(primary_key=True, sa_type=Text)
    kind: str = Field(default="rfc6962", max_length=16)
    head: dict[str, Any] | None = Field(default=None, sa_type=JSONText)
    next_index: int = Field(default=0, sa_type=BigInteger)
    compact: dict[str, Any] | None = Field(default=None, sa_type=JSONText)
    updated_at: datetime = Field(sa_type=UTCDateTime)


CT_LOG = _table(CTLogRow)


class ReplicaRow(SQLModel, table=True):
    """One running certpilot process sharing this database (``certpilot.cluster``).

    ``heartbeat_at`` is the *database's* time at the replica's last heartbeat, so replicas with
    skewed clocks still agree on who is alive; a replica unseen for the membership TTL is gone
    and its share of the scan work moves to the others."""

    __tablename__ = "replica"

    id: str = Field(primary_key=True, max_length=128)
    host: str = Field(default="", sa_type=Text)
    pid: int = 0
    started_at: datetime = Field(sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime, index=True)


REPLICA = _table(ReplicaRow)
