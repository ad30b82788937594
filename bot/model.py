"""What the bot talks about: signals (something is wrong, or no longer), grouped into pages.

Pure data and pure functions (DESIGN.md section 6): no Slack, no I/O, no clock reads.

* A :class:`Signal` is one thing that fires or resolves: a certificate problem at a location
  (from the inventory's events), an SLO burning its budget (from the SLO engine), or an alert
  from Alertmanager (from the webhook). Its ``fingerprint`` deduplicates re-deliveries.
* :func:`root_cause` says what a signal shares with others: the issuing CA or intermediate,
  the ACME account, the source, the owner team, the domain. :func:`group_key` turns the
  signal's kind and that cause into a page's key, so 50 certificates expiring because one
  intermediate is being retired make one message, not 50.
* A :class:`Page` is one Slack message: a group of signals, what certpilot proposes, who may
  act, and the jobs started from it. Later changes edit the same message and reply in its
  thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Severity(StrEnum):
    PAGE = "page"
    TICKET = "ticket"
    INFO = "info"


class SignalSource(StrEnum):
    INVENTORY = "inventory"
    SLO = "slo"
    ALERTMANAGER = "alertmanager"


#: Problem codes a renewal fixes, and the ones a redeploy fixes: what a page proposes.
RENEW_FIXES = frozenset(
    {
        "expired",
        "expiring",
        "not_yet_valid",
        "self_signed",
        "untrusted_root",
        "weak_key",
        "weak_signature",
        "chain_expiring",
        "revoked",
        "CertificateExpiringSoon",
        "CertificateExpiringRelative",
        "CertificateExpired",
        "CertificateRevoked",
    }
)
REDEPLOY_FIXES = frozenset({"not_deployed", "incomplete_chain", "CertificateNotDeployed"})

#: Problems that page (wake someone) rather than ticket.
PAGING = frozenset(
    {
        "expired",
        "revoked",
        "not_deployed",
        "connection_refused",
        "tls_error",
        "timeout",
        "unexpected_issuance",  # a possible mis-issuance: as the UnexpectedIssuance rule, a page
    }
)


@dataclass(frozen=True, slots=True)
class Signal:
    """One firing (or resolved) thing.

    ``kind`` is what is wrong: a problem code (``expiring``), an alert name
    (``CertificateExpiringSoon``) or ``slo_burn``. ``subject`` is where (an inventory ref, an
    SLO name). ``labels`` carry what grouping and routing use: ``issuer_CN``, ``intermediate``,
    ``acme_account``, ``source``, ``owner``, ``host``, ``fingerprint`` (the certificate's),
    ``serial``, ``not_after`` and anything an alert had.
    """

    source: SignalSource
    fingerprint: str
    kind: str
    subject: str
    status: str  # firing | resolved
    severity: Severity
    since: datetime
    summary: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    runbook_url: str = ""

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    def resolved(self, at: datetime) -> Signal:
        return replace(self, status="resolved", since=at)


#: Root-cause dimensions, most specific first, with the label each reads. ``source`` is last:
#: in a fleet scanned by one source every problem shares it, which explains nothing.
CAUSES: tuple[tuple[str, str], ...] = (
    ("intermediate", "intermediate"),
    ("issuer", "issuer_CN"),
    ("acme_account", "acme_account"),
    ("owner", "owner"),
    ("domain", "host"),
    ("source", "source"),
)


def registrable_domain(host: str) -> str:
    """The last two labels of ``host`` (``a.b.example.com`` -> ``example.com``): close enough
    to group by without a public-suffix list (``co.uk`` hosts group one level too wide)."""
    parts = [p for p in host.strip(".").lower().split(".") if p]
    return ".".join(parts[-2:]) if len(parts) >= 2 else host.lower()


def root_cause(signal: Signal, peers: Sequence[Signal] = ()) -> tuple[str, str]:
    """The dimension ``signal`` is grouped by: the first of :data:`CAUSES` (most specific
    first) whose value it shares with another firing peer of the same kind, so certificates
    failing because one intermediate is retired group under it even across owner teams; when
    nothing is shared, the owner team, else the domain, else the subject."""
    same = [p for p in peers if p.kind == signal.kind and p.firing]
    for dim, label in CAUSES:
        value = _cause_value(signal, dim, label)
        if value and sum(1 for p in same if _cause_value(p, dim, label) == value) >= 2:
            return dim, value
    for dim, label in (("owner", "owner"), ("domain", "host")):
        value = _cause_value(signal, dim, label)
        if value:
            return dim, value
    return "subject", signal.subject


def _cause_value(signal: Signal, dim: str, label: str) -> str:
    value = signal.labels.get(label, "")
    return registrable_domain(value) if dim == "domain" and value else value


def group_key(signal: Signal, cause: tuple[str, str]) -> str:
    """``<kind>|<dimension>=<value>``: the page a signal belongs to."""
    return f"{signal.kind}|{cause[0]}={cause[1]}"


def proposal(kinds: Iterable[str]) -> str | None:
    """What certpilot proposes for a page of these kinds: ``renew``, ``redeploy`` or None."""
    kinds = set(kinds)
    if kinds & REDEPLOY_FIXES:
        return "redeploy"
    if kinds & RENEW_FIXES:
        return "renew"
    return None


@dataclass(frozen=True, slots=True)
class JobNote:
    """A job started from a page, as the page shows it."""

    id: int
    action: str
    state: str
    subject: str
    requester: str = ""
    new_serial: str = ""
    verified: tuple[str, ...] = ()
    last_error: str = ""
    approvers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    """One message: ``key`` (see :func:`group_key`), the signals in it (firing and resolved),
    what certpilot proposes, who may approve it, and the jobs started from it."""

    key: str
    kind: str
    cause: tuple[str, str]
    severity: Severity
    signals: tuple[Signal, ...]
    proposal: str | None = None
    approvers: tuple[str, ...] = ()
    jobs: tuple[JobNote, ...] = ()
    acknowledged_by: str = ""
    silenced_until: datetime | None = None

    @property
    def firing(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.firing)

    @property
    def resolved(self) -> bool:
        return bool(self.signals) and not self.firing

    @property
    def since(self) -> datetime:
        return min(s.since for s in self.signals)

    @property
    def runbook_url(self) -> str:
        return next((s.runbook_url for s in self.signals if s.runbook_url), "")

    @property
    def owner(self) -> str:
        owners = {s.labels.get("owner", "") for s in self.signals} - {""}
        return owners.pop() if len(owners) == 1 else ""


def build_pages(
    signals: Sequence[Signal],
    existing: Mapping[str, str] | None = None,
    *,
    approvers: Sequence[str] = (),
) -> list[Page]:
    """Group ``signals`` into pages. ``existing`` maps a signal fingerprint to the page key it
    was put in before, so a page keeps its signals (and its Slack message) as others come and
    go. The newest state of each fingerprint wins; a page's severity is the worst of its
    firing signals (of all, once resolved)."""
    latest: dict[str, Signal] = {}
    for s in signals:
        have = latest.get(s.fingerprint)
        if have is None or s.since >= have.since:
            latest[s.fingerprint] = s
    sigs = list(latest.values())
    prior = dict(existing or {})
    buckets: dict[str, list[Signal]] = {}
    causes: dict[str, tuple[str, str]] = {}
    for s in sigs:
        key = prior.get(s.fingerprint)
        if key is None:
            cause = root_cause(s, sigs)
            key = group_key(s, cause)
        else:
            dim, _, value = key.partition("|")[2].partition("=")
            cause = (dim, value)
        buckets.setdefault(key, []).append(s)
        causes.setdefault(key, cause)
    pages: list[Page] = []
    order = {Severity.PAGE: 0, Severity.TICKET: 1, Severity.INFO: 2}
    for key, members in buckets.items():
        members.sort(key=lambda s: (s.since, s.subject))
        live = [s for s in members if s.firing] or members
        severity = min((s.severity for s in live), key=lambda v: order[v])
        pages.append(
            Page(
                key=key,
                kind=members[0].kind,
                cause=causes[key],
                severity=severity,
                signals=tuple(members),
                proposal=proposal(s.kind for s in members),
                approvers=tuple(approvers),
            )
        )
    pages.sort(key=lambda p: (order[p.severity], p.since, p.key))
    return pages


__all__ = [
    "CAUSES",
    "JobNote",
    "Page",
    "Severity",
    "Signal",
    "SignalSource",
    "build_pages",
    "group_key",
    "proposal",
    "registrable_domain",
    "root_cause",
]
