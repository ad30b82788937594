"""SLI events: the unit of work every SLO counts (schema documented in ``slo/spec.py``).

Rooms emit them (scanner cycle: ``valid_ratio``, ``discovery_coverage``; remediator:
``renewal_success``, ``issuance_latency``, ``complete_deployments``, ``compromise_replacement``);
the store keeps them and cumulative counters; ``slo`` evaluates them; ``/metrics`` exports them
as ``certpilot_sli_events_total{sli, result}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import Observation
from certpilot.domain.problems import GOVERNANCE_CODES

SLI_IDS: tuple[str, ...] = (
    "valid_ratio",
    "renewal_success",
    "compromise_replacement",
    "issuance_latency",
    "complete_deployments",
    "discovery_coverage",
    "expected_issuance",
)


@dataclass(frozen=True, slots=True)
class SLIEvent:
    """One counted unit of work. ``value`` carries a measurement when the SLI has one
    (issuance latency in seconds), ``ref`` the location or job it is about."""

    at: datetime
    sli: str
    good: bool
    ref: str = ""
    value: float | None = None
    detail: str = ""

    @property
    def result(self) -> str:
        return "good" if self.good else "bad"


@dataclass(frozen=True, slots=True)
class SLISample:
    """Cumulative counters of one SLI at one instant, as Prometheus would scrape them."""

    at: datetime
    sli: str
    good_total: float
    bad_total: float

    @property
    def total(self) -> float:
        return self.good_total + self.bad_total


#: Sources whose locations the discovery-coverage SLI counts.
COVERED_SOURCES: frozenset[str] = frozenset({"tls", "file", "openbao", "k8s"})
#: Sources that report certificates seen elsewhere (Certificate Transparency), not deployed:
#: no expiry series, not part of coverage or validity.
SEEN_ONLY_SOURCES: frozenset[str] = frozenset({"ct"})


def valid_ratio_events(observations: Iterable[Observation], at: datetime) -> list[SLIEvent]:
    """M1: one event per endpoint probe; good when the endpoint has no validity problem
    (governance findings such as ``unmanaged`` or ``not_deployed`` do not count).

    "No problem" includes "not expiring": the judge's expiring rule is the policy's share of
    lifetime, so a good event means a valid certificate with enough lifetime left.
    """
    out: list[SLIEvent] = []
    for o in observations:
        if o.source != "tls":
            continue
        detail = ",".join(c.value for c in o.codes)
        good = not [c for c in o.codes if c not in GOVERNANCE_CODES]
        out.append(SLIEvent(at, "valid_ratio", good, o.ref, detail=detail))
    return out


def coverage_events(
    items: Sequence[InventoryItem],
    at: datetime,
    max_age: timedelta = timedelta(minutes=15),
    *,
    sources: frozenset[str] = COVERED_SOURCES,
) -> list[SLIEvent]:
    """Discovery coverage: one event per known location (an endpoint, or a certificate kept in
    a file, OpenBao/Vault or Kubernetes); good when it was read within ``max_age`` (whatever
    the read found: validity is ``valid_ratio``'s business). Locations that are gone are
    forgotten by the scan cycle, so a stale one means a source that stopped answering."""
    out: list[SLIEvent] = []
    for it in items:
        if it.source not in sources:
            continue
        good = at - it.last_scanned <= max_age
        out.append(SLIEvent(at, "discovery_coverage", good, it.ref, detail="" if good else "stale"))
    return out
