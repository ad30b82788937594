"""Read models of the inventory, as plain data so no room needs the store's ORM types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from certpilot.domain.problems import ProblemCode
from certpilot.domain.x509 import iso

_EMPTY: Mapping[str, str] = MappingProxyType({})


class EventKind(StrEnum):
    """What changed. Values are a contract (API, bot, SLO event schema)."""

    FIRST_SEEN = "first_seen"  # a certificate fingerprint never seen anywhere before
    NEW_CERTIFICATE = "new_certificate"  # a location now serves/holds a different certificate
    PROBLEM_RAISED = "problem_raised"
    PROBLEM_CLEARED = "problem_cleared"
    LOCATION_ADDED = "location_added"  # a location scanned for the first time
    LOCATION_REMOVED = "location_removed"  # a location forgotten (gone from its source)


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One location (endpoint, file item, secret) and what it currently holds."""

    ref: str
    source: str
    target: str
    fingerprint_sha256: str | None
    serial: str | None
    subject: str | None
    subject_cn: str | None
    issuer: str | None
    issuer_cn: str | None
    sans: tuple[str, ...]
    not_before: datetime | None
    not_after: datetime | None
    key_type: str | None
    key_bits: int | None
    signature_algorithm: str | None
    problems: tuple[ProblemCode, ...]
    error: str | None
    first_seen: datetime
    last_scanned: datetime
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    def days_left(self, now: datetime) -> float | None:
        if self.not_after is None:
            return None
        return (self.not_after - now).total_seconds() / 86400.0

    def to_dict(self, now: datetime) -> dict[str, object]:
        days = self.days_left(now)
        return {
            "ref": self.ref,
            "source": self.source,
            "target": self.target,
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": iso(self.not_before) if self.not_before else None,
            "not_after": iso(self.not_after) if self.not_after else None,
            "days_left": round(days, 3) if days is not None else None,
            "key_type": self.key_type,
            "key_bits": self.key_bits,
            "signature_algorithm": self.signature_algorithm,
            "problems": [c.value for c in self.problems],
            "error": self.error,
            "first_seen": iso(self.first_seen),
            "last_scanned": iso(self.last_scanned),
            "labels": dict(self.labels),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """Something that changed in the inventory, in the order it was recorded."""

    id: int
    at: datetime
    kind: EventKind
    ref: str
    fingerprint_sha256: str | None = None
    code: ProblemCode | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": iso(self.at),
            "kind": self.kind.value,
            "ref": self.ref,
            "fingerprint_sha256": self.fingerprint_sha256,
            "code": self.code.value if self.code else None,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Sighting:
    """A certificate presented at a location (as leaf or chain certificate), and when.

    ``first_seen`` is the first scan of the location that presented it, ``last_seen`` the
    latest; ``current`` says whether the location's latest scan still presents it (its
    ``last_seen`` is then that scan's time). A certificate presented again after a gap keeps one
    sighting, from its first presentation.
    """

    ref: str
    fingerprint_sha256: str
    first_seen: datetime
    last_seen: datetime
    current: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "fingerprint_sha256": self.fingerprint_sha256,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class ScanRun:
    id: int
    source: str
    started_at: datetime
    finished_at: datetime | None
    targets: int
    observations: int
    problems: int
