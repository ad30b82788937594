"""Remediation jobs on SQLite or PostgreSQL: create once per idempotency key, advance by
compare-and-set.

:class:`JobStore` keeps the ``remediation_job`` table of the inventory database (it is one of
``INVENTORY_TABLES``, so an inventory created by :class:`~certpilot.store.Inventory` already
has it). Like :class:`~certpilot.store.AuditLog` it opens its own engine from the same URL
(:func:`certpilot.store.engine.create`) and needs nothing of the Inventory's internals; the same
caveat applies: an in-memory ``sqlite://`` URL is a private database per engine.

What the store guarantees, and what it leaves to :mod:`remediator.jobs`:

* **Idempotency.** ``key`` is unique. :meth:`JobStore.create` with a key that exists returns the
  existing job (``created=False``) whatever its state, so an Alertmanager re-delivery, a second
  replica's scheduler or a double click never makes a second job.
* **Compare-and-set.** :meth:`JobStore.transition` moves a job from ``from_state`` (and, when
  given, ``version``) to ``to_state`` in one transaction: ``UPDATE ... WHERE id = ? AND state =
  ? AND version = ?``. When another process got there first the update matches no row and
  :class:`JobConflict` is raised, so two processes never both advance the same job. SQLite
  serialises writers with ``BEGIN IMMEDIATE`` (:mod:`certpilot.store.engine`); PostgreSQL
  re-checks the ``WHERE`` after waiting for the row lock, which makes the update atomic at
  READ COMMITTED (https://www.postgresql.org/docs/15/transaction-iso.html#XACT-READ-COMMITTED).
* **Vocabulary, not legality.** The store refuses unknown state names; *which* transitions are
  legal is the state machine's business (:data:`remediator.jobs.TRANSITIONS`), checked by the
  executor before it calls :meth:`JobStore.transition` (the core must not import a room).

Secrets: the issued certificate is stored as its public chain (``issued_chain_pem``) only. The
new private key is never written to this table: the executor keeps it in memory until a deploy
target has written it (0600) where it belongs. Receipts hold what a target needs to roll back
(paths, versions), never key material. ``last_error`` is one line, cleaned by the executor.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from sqlalchemy import Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from certpilot.domain.errors import CertpilotError, StoreError
from certpilot.domain.remedy import DeployReceipt
from certpilot.store import engine as engines
from certpilot.store import schema
from certpilot.store.tables import JOBS

#: Every state a job can be in, in lifecycle order (``certpilot_jobs{state}`` uses the same).
STATES: Final[tuple[str, ...]] = (
    "pending_approval",
    "approved",
    "issuing",
    "deploying",
    "verifying",
    "done",
    "failed",
    "rolled_back",
)
#: States a job may be created in.
INITIAL_STATES: Final = frozenset({"pending_approval", "approved"})
#: States in which some process is working on the job (what a restart must resume).
IN_FLIGHT_STATES: Final[tuple[str, ...]] = ("issuing", "deploying", "verifying")

ACTIONS: Final = frozenset({"renew", "redeploy", "revoke"})

_c = JOBS.c

#: Fields :meth:`JobStore.transition` and :meth:`JobStore.update` may change. ``id``, ``key``,
#: ``action``, ``state`` (the transition itself), ``version``, ``state_times`` and the creation
#: and update times are the store's.
CHANGEABLE: Final = frozenset(
    {
        "names",
        "fingerprint",
        "ref",
        "issuer",
        "targets",
        "requester",
        "rule",
        "approvers",
        "second_person",
        "approvals",
        "key_type",
        "validity_days",
        "reason",
        "attempts",
        "next_attempt_at",
        "last_error",
        "old_serial",
        "new_serial",
        "new_fingerprint",
        "subject_chain_pem",
        "issued_chain_pem",
        "receipts",
        "verified",
        "owner",
        "lease_until",
    }
)


class JobError(CertpilotError):
    """Base of the job store's errors; ``job_id`` names the job."""

    def __init__(self, job_id: int, message: str) -> None:
        super().__init__(f"job {job_id}: {message}")
        self.job_id = job_id
        self.message = message


class JobNotFound(JobError):
    def __init__(self, job_id: int) -> None:
        super().__init__(job_id, "no such job")


class JobConflict(JobError):
    """A compare-and-set lost: the job is no longer in ``expected`` (or at ``version``).

    ``actual`` is the state found; ``actual_version`` its version. Not a failure of the job:
    another process (or another step of this one) advanced it first.
    """

    def __init__(
        self,
        job_id: int,
        expected: str,
        actual: str,
        *,
        version: int | None = None,
        actual_version: int = 0,
        held_until: datetime | None = None,
    ) -> None:
        if held_until is not None:
            message = f"is leased until {held_until.isoformat()}: another process works on it"
        elif version is not None and expected == actual:
            message = f"changed since version {version} (now {actual_version})"
            message += ": another process advanced it"
        else:
            message = f"is {actual}, not {expected}: another process advanced it"
        super().__init__(job_id, message)
        self.expected = expected
        self.actual = actual
        self.version = version
        self.actual_version = actual_version


class Approval(NamedTuple):
    """Who approved a job, and when."""

    by: str
    at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """What :meth:`JobStore.create` stores for a new job.

    ``targets`` are deploy target names in deploy order: the first is the canary. ``approvers``
    and ``second_person`` are the policy decision's (``remediator.policy.Decision``), stored so
    an approval is checked against the rule as it was when the job was created.
    ``subject_chain_pem`` is the public chain of the certificate the job is about (what a revoke
    revokes); ``key_type`` / ``validity_days`` what to issue; ``reason`` a revocation's RFC 5280
    CRLReason code. ``next_attempt_at`` delays the first run (a stagger or a maintenance window).
    """

    key: str
    action: str
    names: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    issuer: str = ""
    fingerprint: str = ""
    ref: str = ""
    requester: str = ""
    rule: str = ""
    approvers: tuple[str, ...] = ()
    second_person: bool = False
    state: str = "approved"
    key_type: str = ""
    validity_days: int | None = None
    reason: int | None = None
    old_serial: str = ""
    subject_chain_pem: str = ""
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One stored job. Fields are as :class:`NewJob`'s, plus the progress:

    ``version`` counts every write (the compare-and-set token); ``attempts`` counts issuing
    attempts; ``next_attempt_at`` is when a job waiting in ``approved`` may run again (retry
    backoff, Retry-After); ``last_error`` one line; ``new_serial`` / ``new_fingerprint`` /
    ``issued_chain_pem`` the issued certificate (public parts only); ``receipts`` one per target
    deployed, in deploy order; ``verified`` the targets whose endpoints were seen serving the new
    certificate; ``state_times`` when the job last entered each state; ``owner`` and
    ``lease_until`` which executor works on it and until when its claim holds without renewal.
    """

    id: int
    key: str
    action: str
    state: str
    version: int
    names: tuple[str, ...]
    fingerprint: str
    ref: str
    issuer: str
    targets: tuple[str, ...]
    requester: str
    rule: str
    approvers: tuple[str, ...]
    second_person: bool
    approvals: tuple[Approval, ...]
    key_type: str
    validity_days: int | None
    reason: int | None
    attempts: int
    next_attempt_at: datetime | None
    last_error: str
    old_serial: str
    new_serial: str
    new_fingerprint: str
    subject_chain_pem: str = field(repr=False)
    issued_chain_pem: str = field(repr=False)
    receipts: tuple[DeployReceipt, ...]
    verified: tuple[str, ...]
    state_times: Mapping[str, datetime]
    owner: str
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def subject(self) -> str:
        """What the job is about, for people and the audit log: the names, else the ref."""
        return ",".join(self.names) or self.ref or self.fingerprint

    def receipt_for(self, target: str) -> DeployReceipt | None:
        return next((r for r in self.receipts if r.target == target), None)

    def to_dict(self) -> dict[str, object]:
        """JSON shape for ``/api/v1/jobs`` and ``certpilot jobs --format json`` (no PEM)."""

        def ts(value: datetime | None) -> str | None:
            return value.astimezone(UTC).isoformat() if value is not None else None

        return {
            "id": self.id,
            "key": self.key,
            "action": self.action,
            "state": self.state,
            "version": self.version,
            "names": list(self.names),
            "fingerprint_sha256": self.fingerprint,
            "ref": self.ref,
            "issuer": self.issuer,
            "targets": list(self.targets),
            "requester": self.requester,
            "rule": self.rule,
            "approvers": list(self.approvers),
            "requires_second_person": self.second_person,
            "approvals": [{"by": a.by, "at": ts(a.at)} for a in self.approvals],
            "attempts": self.attempts,
            "next_attempt_at": ts(self.next_attempt_at),
            "last_error": self.last_error,
            "old_serial": self.old_serial,
            "new_serial": self.new_serial,
            "new_fingerprint_sha256": self.new_fingerprint,
            "receipts": [
                {"target": r.target, "serial": r.serial, "state": dict(r.state)}
                for r in self.receipts
            ],
            "verified": list(self.verified),
            "state_times": {k: ts(v) for k, v in self.state_times.items()},
            "owner": self.owner,
            "lease_until": ts(self.lease_until),
            "created_at": ts(self.created_at),
            "updated_at": ts(self.updated_at),
        }


class JobCreated(NamedTuple):
    """:meth:`JobStore.create`'s answer: the job, and whether this call created it."""

    job: Job
    created: bool


class JobStore(engines.EngineBacked):
    """Remediation jobs in the inventory database.

    Open with :meth:`open`, close with :meth:`close` (or use it as a context manager). Safe to
    use from several threads and processes at once. Database failures raise
    :class:`~certpilot.domain.errors.StoreError` with a one-line message.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine made by :func:`certpilot.store.engine.create`; use :meth:`open`."""
        super().__init__(engine, url)

    # ----------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str) -> JobStore:
        """Open the jobs of the database at ``url`` (same URLs as
        :meth:`certpilot.store.Inventory.open`), creating the table when missing."""
        engine = engines.create(url)
        store = cls(engine, url)
        try:
            with store._write() as conn:
                schema.upgrade(conn)
        except BaseException:
            engine.dispose()
            raise
        return store

    # ------------------------------------------------------------------------------ writing

    def create(self, new: NewJob, *, now: datetime) -> JobCreated:
        """Store ``new`` unless a job with its ``key`` exists; return the job either way.

        Raises ``ValueError`` for an unknown action, a state other than ``pending_approval`` or
        ``approved``, or an empty key.
        """
        if not new.key:
            raise ValueError("a job needs an idempotency key")
        if new.action not in ACTIONS:
            raise ValueError(f"unknown action {new.action!r}; expected one of {sorted(ACTIONS)}")
        if new.state not in INITIAL_STATES:
            raise ValueError(
                f"a job starts in {' or '.join(sorted(INITIAL_STATES))}, not {new.state!r}"
            )
        _aware(now, "now")
        row = {
            "key": new.key,
            "action": new.action,
            "state": new.state,
            "version": 1,
            "names": list(new.names),
            "fingerprint": new.fingerprint,
            "ref": new.ref,
            "issuer": new.issuer,
            "targets": list(new.targets),
            "requester": new.requester,
            "rule": new.rule,
            "approvers": list(new.approvers),
            "second_person": new.second_person,
            "approvals": [],
            "key_type": new.key_type,
            "validity_days": new.validity_days,
            "reason": new.reason,
            "attempts": 0,
            "next_attempt_at": new.next_attempt_at,
            "last_error": "",
            "old_serial": new.old_serial,
            "new_serial": "",
            "new_fingerprint": "",
            "subject_chain_pem": new.subject_chain_pem,
            "issued_chain_pem": "",
            "receipts": [],
            "verified": [],
            "state_times": {new.state: now.astimezone(UTC).isoformat()},
            "owner": "",
            "lease_until": None,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._write() as conn:
                existing = conn.execute(select(JOBS).where(_c.key == new.key)).first()
                if existing is not None:
                    return JobCreated(_decode(existing), False)
                key = conn.execute(insert(JOBS).values(**row)).inserted_primary_key
                assert key is not None
                job_id = int(key[0])
                created = conn.execute(select(JOBS).where(_c.id == job_id)).one()
                return JobCreated(_decode(created), True)
        except StoreError as e:
            # PostgreSQL: two processes inserted the same key at once and the unique index let
            # one through; the other reads the winner's job. (SQLite never gets here: the
            # select above already ran under BEGIN IMMEDIATE's write lock.)
            found = self.find(new.key) if isinstance(e.__cause__, IntegrityError) else None
            if found is None:
                raise
            return JobCreated(found, False)

    def transition(
        self,
        job_id: int,
        from_state: str,
        to_state: str,
        *,
        now: datetime,
        version: int | None = None,
        unleased_at: datetime | None = None,
        **changes: Any,
    ) -> Job:
        """Move ``job_id`` from ``from_state`` to ``to_state`` and apply ``changes``, as one
        compare-and-set; return the job as stored.

        ``version``, when given, must also match (the stricter check the executor uses: a job
        can pass through the same state twice). ``unleased_at``, when given, requires the job's
        lease to have run out by then (a takeover: :meth:`extend_lease` moves the lease without
        a new version, so the version alone would not see a holder still at work). Raises
        :class:`JobConflict` when the job is no longer where the caller saw it (or is leased),
        :class:`JobNotFound` when it does not exist,
        ``ValueError`` for unknown states or fields. Entering a state stamps
        ``state_times[to_state] = now``. Legality of the move is not checked here: see
        :func:`remediator.jobs.check_transition`.
        """
        for s in (from_state, to_state):
            if s not in STATES:
                raise ValueError(f"unknown job state {s!r}; expected one of {', '.join(STATES)}")
        _aware(now, "now")
        values = _encode_changes(changes)
        with self._write() as conn:
            current = conn.execute(
                select(_c.state, _c.version, _c.state_times, _c.lease_until).where(_c.id == job_id)
            ).first()
            if current is None:
                raise JobNotFound(job_id)
            leased = current.lease_until
            if unleased_at is not None and leased is not None and leased > unleased_at:
                raise JobConflict(
                    job_id, from_state, current.state, version=version, held_until=leased
                )
            if current.state != from_state or (version is not None and current.version != version):
                raise JobConflict(
                    job_id,
                    from_state,
                    current.state,
                    version=version,
                    actual_version=int(current.version),
                )
            times = dict(current.state_times or {})
            if to_state != from_state:
                times[to_state] = now.astimezone(UTC).isoformat()
            where = and_(_c.id == job_id, _c.state == from_state, _c.version == current.version)
            if unleased_at is not None:  # and still unleased when written (no renewal between)
                where = and_(where, or_(_c.lease_until.is_(None), _c.lease_until <= unleased_at))
            result = conn.execute(
                update(JOBS)
                .where(where)
                .values(
                    state=to_state,
                    version=_c.version + 1,
                    state_times=times,
                    updated_at=now,
                    **values,
                )
            )
            if result.rowcount != 1:  # PostgreSQL: changed between our read and our write
                actual = conn.execute(
                    select(_c.state, _c.version, _c.lease_until).where(_c.id == job_id)
                ).one()
                renewed = unleased_at is not None and actual.lease_until is not None
                raise JobConflict(
                    job_id,
                    from_state,
                    actual.state,
                    version=version,
                    actual_version=int(actual.version),
                    held_until=actual.lease_until
                    if renewed and actual.lease_until > unleased_at
                    else None,
                )
            return _decode(conn.execute(select(JOBS).where(_c.id == job_id)).one())

    def update(
        self,
        job_id: int,
        state: str,
        *,
        now: datetime,
        version: int | None = None,
        unleased_at: datetime | None = None,
        **changes: Any,
    ) -> Job:
        """Change fields of a job that stays in ``state`` (a receipt, a takeover), with the
        same compare-and-set as :meth:`transition`."""
        return self.transition(
            job_id, state, state, now=now, version=version, unleased_at=unleased_at, **changes
        )

    def extend_lease(self, job_id: int, *, owner: str, until: datetime) -> bool:
        """Move the lease of an in-flight job ``owner`` holds to ``until`` (its executor is
        still working on a long step); ``False`` when the job is no longer ``owner``'s or in
        flight. Not a change of the job: neither its version nor ``updated_at`` moves, so the
        owner's next compare-and-set still holds and nothing reports the job as changed."""
        _aware(until, "until")
        with self._write() as conn:
            done = conn.execute(
                update(JOBS)
                .where(
                    _c.id == job_id,
                    _c.owner == owner,
                    _c.state.in_(IN_FLIGHT_STATES),
                    _c.lease_until.is_not(None),
                )
                .values(lease_until=until)
            )
        return bool(done.rowcount)

    # ------------------------------------------------------------------------------ reading

    def get(self, job_id: int) -> Job:
        """The job with ``job_id``; :class:`JobNotFound` when there is none."""
        with self._read() as conn:
            row = conn.execute(select(JOBS).where(_c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _decode(row)

    def find(self, key: str) -> Job | None:
        """The job with idempotency key ``key``, if any."""
        with self._read() as conn:
            row = conn.execute(select(JOBS).where(_c.key == key)).first()
        return _decode(row) if row is not None else None

    def list(
        self,
        states: Iterable[str] | None = None,
        *,
        limit: int | None = None,
        newest_first: bool = False,
        updated_since: datetime | None = None,
    ) -> builtins.list[Job]:
        """Jobs in any of ``states`` (all when ``None``) and, with ``updated_since``, written
        at or after it; oldest first unless ``newest_first``."""
        stmt = select(JOBS)
        if updated_since is not None:
            _aware(updated_since, "updated_since")
            stmt = stmt.where(_c.updated_at >= updated_since)
        if states is not None:
            wanted = builtins.list(states)
            unknown = [s for s in wanted if s not in STATES]
            if unknown:
                raise ValueError(f"unknown job state {unknown[0]!r}")
            stmt = stmt.where(_c.state.in_(wanted))
        stmt = stmt.order_by(_c.id.desc() if newest_first else _c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [_decode(r) for r in rows]

    def due(self, now: datetime, *, limit: int | None = None) -> builtins.list[Job]:
        """Approved jobs whose ``next_attempt_at`` has come (or was never set): what to run
        now, those waiting longest first."""
        _aware(now, "now")
        stmt = (
            select(JOBS)
            .where(
                _c.state == "approved",
                or_(_c.next_attempt_at.is_(None), _c.next_attempt_at <= now),
            )
            .order_by(_c.next_attempt_at.is_not(None), _c.next_attempt_at, _c.id)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [_decode(r) for r in rows]

    def issued_fingerprints(self) -> builtins.list[str]:
        """Fingerprints of every certificate a finished job put in place (what reconciliation
        must not call ``unmanaged``); one narrow query, not the jobs themselves."""
        stmt = select(_c.new_fingerprint).where(_c.state == "done", _c.new_fingerprint != "")
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute(stmt).all()]

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present (the ``certpilot_jobs{state}`` gauge)."""
        with self._read() as conn:
            rows = conn.execute(select(_c.state, func.count()).group_by(_c.state)).all()
        out = dict.fromkeys(STATES, 0)
        for state, n in rows:
            out[str(state)] = int(n)
        return out

    # ---------------------------------------------------------------------------- plumbing


# -------------------------------------------------------------------------------- encoding


def _aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")


def _encode_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - CHANGEABLE)
    if unknown:
        raise ValueError(f"cannot change job field {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name in {"names", "targets", "approvers", "verified"}:
            out[name] = [str(v) for v in value]
        elif name == "approvals":
            out[name] = [
                {"by": a.by, "at": a.at.astimezone(UTC).isoformat()} for a in _approvals(value)
            ]
        elif name == "receipts":
            out[name] = [_receipt_json(r) for r in value]
        elif name in {"next_attempt_at", "lease_until"} and value is not None:
            _aware(value, name)
            out[name] = value
        else:
            out[name] = value
    return out


def _approvals(value: Iterable[Approval | tuple[str, datetime]]) -> builtins.list[Approval]:
    return [Approval(*a) for a in value]


def _receipt_json(receipt: DeployReceipt) -> dict[str, Any]:
    return {"target": receipt.target, "serial": receipt.serial, "state": dict(receipt.state)}


def _receipt(data: Mapping[str, Any]) -> DeployReceipt:
    state = {str(k): str(v) for k, v in dict(data.get("state") or {}).items()}
    return DeployReceipt(
        target=str(data["target"]),
        serial=str(data.get("serial", "")),
        state=MappingProxyType(state),
    )


def _times(data: Mapping[str, str] | None) -> Mapping[str, datetime]:
    out = {k: datetime.fromisoformat(v).astimezone(UTC) for k, v in (data or {}).items()}
    return MappingProxyType(out)


def _tuple(value: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


def _decode(row: Row[Any]) -> Job:
    return Job(
        id=int(row.id),
        key=row.key,
        action=row.action,
        state=row.state,
        version=int(row.version),
        names=_tuple(row.names),
        fingerprint=row.fingerprint,
        ref=row.ref,
        issuer=row.issuer,
        targets=_tuple(row.targets),
        requester=row.requester,
        rule=row.rule,
        approvers=_tuple(row.approvers),
        second_person=bool(row.second_person),
        approvals=tuple(
            Approval(str(a["by"]), datetime.fromisoformat(str(a["at"])).astimezone(UTC))
            for a in row.approvals or ()
        ),
        key_type=row.key_type,
        validity_days=row.validity_days,
        reason=row.reason,
        attempts=int(row.attempts),
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        old_serial=row.old_serial,
        new_serial=row.new_serial,
        new_fingerprint=row.new_fingerprint,
        subject_chain_pem=row.subject_chain_pem,
        issued_chain_pem=row.issued_chain_pem,
        receipts=tuple(_receipt(r) for r in row.receipts or ()),
        verified=_tuple(row.verified),
        state_times=_times(row.state_times),
        owner=row.owner,
        lease_until=row.lease_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


__all__ = [
    "ACTIONS",
    "CHANGEABLE",
    "INITIAL_STATES",
    "IN_FLIGHT_STATES",
    "STATES",
    "Approval",
    "Job",
    "JobConflict",
    "JobCreated",
    "JobError",
    "JobNotFound",
    "JobStore",
    "NewJob",
]
