"""Remediation policy: which rule governs a certificate, and whether an action may run, and when.

A decision is a pure chain of checks over gathered inputs with an injected ``now``, the way
cert-manager's renewal policies are (DESIGN.md section 6.1): the caller gathers the facts (the
certificate, past orders, jobs in flight, the CA's ARI window) and these functions decide. No I/O,
no clock reads, nothing at import time; time zones arrive as ``tzinfo`` objects already resolved
by :mod:`remediator.policy_config`.

* :meth:`Policy.select` picks the rule: rules are tried in order, the first match wins, and a
  built-in default rule matches everything at the end.
* :func:`renewal_due` says when a certificate is due for renewal: by the fraction of its lifetime
  left, by absolute days left, or inside the CA's ARI window (RFC 9773) when it offers one.
* :func:`decide` runs every check for one request and returns a :class:`Decision` that says which
  rule applied, each check and its outcome, the verdict and, when waiting, until when.
* :func:`plan_renewals` schedules a whole fleet: most urgent first, within the issuers' rate
  budgets, the rules' concurrency limits and maintenance windows, so the CA never has to say 429.
* :func:`can_approve` says whether a person may approve a decision (a second person for
  revocation, by default).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right, insort
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum
from fnmatch import fnmatchcase
from types import MappingProxyType

from certpilot.domain.inventory import InventoryItem
from certpilot.domain.x509 import iso

# ----------------------------------------------------------------------------- vocabulary


class Action(StrEnum):
    RENEW = "renew"
    REDEPLOY = "redeploy"
    REVOKE = "revoke"


class Mode(StrEnum):
    """How a rule lets an action run."""

    AUTO = "auto"  # runs without a person (inside a maintenance window when any is configured)
    APPROVE = "approve"  # runs once an approver says yes
    DENY = "deny"  # never runs
    DRY_RUN = "dry-run"  # reported as if it ran; changes nothing


class Verdict(StrEnum):
    """The outcome of :func:`decide`. Values are a contract (JSON, audit log, bot)."""

    ALLOW = "allow"
    NEEDS_APPROVAL = "needs_approval"
    DENY = "deny"
    DRY_RUN = "dry_run"
    NOT_DUE = "not_due"
    WAIT = "wait"


WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_NO_LABELS: Mapping[str, str] = MappingProxyType({})
_NO_COUNTS: Mapping[str, int] = MappingProxyType({})

DEFAULT_ACTIONS: Mapping[Action, Mode] = MappingProxyType(
    {Action.RENEW: Mode.AUTO, Action.REDEPLOY: Mode.AUTO, Action.REVOKE: Mode.APPROVE}
)
DEFAULT_RENEW_FRACTION = 1.0 / 3.0

# Issuing actions order a new certificate from a CA and so count against its rate limits.
_ISSUING = frozenset({Action.RENEW})


def _utc(ts: datetime) -> str:
    return iso(ts.astimezone(UTC))


def _human(delta: timedelta) -> str:
    secs = delta.total_seconds()
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    if secs >= 2 * 86400:
        return f"{sign}{round(secs / 86400, 1):g}d"
    if secs >= 2 * 3600:
        return f"{sign}{round(secs / 3600, 1):g}h"
    if secs >= 60:
        return f"{sign}{secs / 60:.0f}m"
    return f"{sign}{secs:.0f}s"


def _unit(key: str, salt: str) -> float:
    """A deterministic point in [0, 1) per certificate, so a fleet spreads out the same way on
    every run and every replica (no random state to persist or agree on)."""
    digest = hashlib.sha256(f"certpilot:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def name_set(names: Iterable[str]) -> frozenset[str]:
    """The exact set of identifiers a CA counts duplicates by (case-insensitive)."""
    return frozenset(n.strip().lower().rstrip(".") for n in names if n.strip())


# ----------------------------------------------------------------------------- gathered facts


@dataclass(frozen=True, slots=True)
class CertFacts:
    """What the policy needs to know about one certificate at one location.

    ``names`` are the SANs (and the CN when it is not among them), ``hosts`` the location's own
    names (endpoint host and SNI), ``key_type`` as in :class:`~certpilot.domain.x509.CertInfo`
    (``RSA``, ``EC``, ``Ed25519``...). Every field but ``names`` may be unknown.
    """

    names: tuple[str, ...]
    source: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    not_before: datetime | None = None
    not_after: datetime | None = None
    key_type: str | None = None
    key_bits: int | None = None
    issuer: str | None = None
    fingerprint: str | None = None
    hosts: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    serial: str | None = None  # lowercase hex, when known (the job's "before")

    @property
    def key_spec(self) -> str | None:
        """``EC-256``, ``RSA-2048``, ``Ed25519``: the form rules list ``key_types`` in."""
        if self.key_type is None:
            return None
        if self.key_type in {"RSA", "EC", "DSA"} and self.key_bits:
            return f"{self.key_type}-{self.key_bits}"
        return self.key_type

    @property
    def key(self) -> str:
        """Stable identity for hashing: the fingerprint, else the name set."""
        return self.fingerprint or ",".join(sorted(name_set(self.names)))

    @property
    def identifiers(self) -> frozenset[str]:
        return name_set(self.names)

    @classmethod
    def from_item(cls, item: InventoryItem) -> CertFacts:
        names = list(item.sans)
        if item.subject_cn and item.subject_cn.lower() not in {n.lower() for n in names}:
            names.append(item.subject_cn)
        return cls(
            names=tuple(names),
            source=item.source,
            labels=item.labels,
            not_before=item.not_before,
            not_after=item.not_after,
            key_type=item.key_type,
            key_bits=item.key_bits,
            issuer=item.issuer_cn or item.issuer,
            fingerprint=item.fingerprint_sha256,
            hosts=_hosts_of(item.ref),
            refs=(item.ref,),
            serial=item.serial,
        )


def _hosts_of(ref: str) -> tuple[str, ...]:
    """The host and SNI of a ``tls://host:port#sni`` reference; nothing for files."""
    if not ref.startswith("tls://"):
        return ()
    hostport, _, sni = ref.removeprefix("tls://").partition("#")
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    out: list[str] = []
    for h in (host.strip("[]"), sni):
        if h and h not in out:
            out.append(h)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AriWindow:
    """A CA's ACME Renewal Information for one certificate (RFC 9773 section 4.2).

    ``retry_after`` is when the CA's ``Retry-After`` lets the client fetch it again: the window
    may move by then (a mass revocation moves it into the past).
    """

    start: datetime
    end: datetime
    retry_after: datetime | None = None
    explanation_url: str | None = None


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One past (or planned) certificate order: what a CA counts against its rate limits."""

    at: datetime
    issuer: str
    names: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", name_set(self.names))


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything gathered before deciding, besides the certificate itself.

    ``in_flight`` counts open jobs per rule name; ``ari`` is the window for the request's
    certificate in :func:`decide`, ``ari_windows`` the windows by fingerprint for
    :func:`plan_renewals`; ``busy`` the fingerprints that already have an open job.
    """

    orders: tuple[OrderRecord, ...] = ()
    in_flight: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS)
    ari: AriWindow | None = None
    ari_windows: Mapping[str, AriWindow] = field(default_factory=dict)
    busy: frozenset[str] = frozenset()

    def ari_for(self, cert: CertFacts) -> AriWindow | None:
        if self.ari is not None:
            return self.ari
        if cert.fingerprint is None:
            return None
        return self.ari_windows.get(cert.fingerprint)


# ----------------------------------------------------------------------------- policy model


@dataclass(frozen=True, slots=True)
class Match:
    """What a rule applies to. Empty lists match anything; all given lists must match.

    Patterns are shell globs (:func:`fnmatch.fnmatchcase` on lower-cased text), not TLS
    wildcards: ``*`` matches any characters *including dots*, so ``*.example.com`` matches
    ``www.example.com`` and ``a.b.example.com`` (and a certificate whose SAN is literally
    ``*.example.com``) but not ``example.com`` itself; list both to match both. ``names`` is
    tried against every SAN, the CN and the location's host and SNI: one hit is enough.
    """

    names: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()

    def test(self, cert: CertFacts) -> tuple[bool, str]:
        """(matches, why) where *why* names the criterion that decided."""
        why: list[str] = []
        if self.names:
            hit = _first_glob_hit(self.names, (*cert.names, *cert.hosts))
            if hit is None:
                shown = ", ".join((*cert.names, *cert.hosts)[:4]) or "no names"
                return False, f"no name ({shown}) matches {_list(self.names)}"
            why.append(f"name {hit[1]!r} matches {hit[0]!r}")
        for label, patterns, value in (
            ("source", self.sources, cert.source or None),
            ("owner", self.owners, cert.labels.get("owner")),
            ("env", self.environments, cert.labels.get("env")),
        ):
            if not patterns:
                continue
            if value is None:
                return False, f"no {label} {'label' if label != 'source' else ''}".rstrip()
            pat = next((p for p in patterns if fnmatchcase(value.lower(), p.lower())), None)
            if pat is None:
                return False, f"{label} {value!r} is not one of {_list(patterns)}"
            why.append(f"{label} {value!r} matches {pat!r}")
        return True, "; ".join(why) or "matches every certificate"


def _first_glob_hit(patterns: Sequence[str], names: Sequence[str]) -> tuple[str, str] | None:
    for pattern in patterns:
        p = pattern.lower()
        for name in names:
            if fnmatchcase(name.lower(), p):
                return pattern, name
    return None


def _list(items: Iterable[str]) -> str:
    return ", ".join(items)


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A weekly window: it opens at ``start`` on each of ``days`` (0 = Monday) in ``tz``.

    ``end`` at or before ``start`` means the window closes on the next day (``22:00``-``02:00``
    crosses midnight; ``00:00``-``00:00`` is the whole day). Times are wall-clock times in
    ``tz``, so a window stays at 02:00 local time across daylight-saving changes.
    """

    days: frozenset[int]
    start: time
    end: time
    tz: tzinfo = UTC

    def _spans(self, around: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Openings from the day before ``around`` to eight days after it, in UTC."""
        base = around.astimezone(self.tz).date()
        for offset in range(-1, 9):
            day = base + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, self.start, self.tz)
            end_day = day + timedelta(days=1) if self.end <= self.start else day
            closes = datetime.combine(end_day, self.end, self.tz)
            yield opens.astimezone(UTC), closes.astimezone(UTC)

    def contains(self, at: datetime) -> bool:
        return any(s <= at < e for s, e in self._spans(at))

    def next_start(self, after: datetime) -> datetime:
        """The first opening strictly after ``after``."""
        return min(s for s, _ in self._spans(after) if s > after)

    def describe(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` events in any sliding window of length ``per``."""

    limit: int
    per: timedelta

    def describe(self) -> str:
        return f"{self.limit} per {_human(self.per)}"


@dataclass(frozen=True, slots=True)
class IssuerBudget:
    """A CA's rate limits, kept by the planner before the CA enforces them with a 429.

    Let's Encrypt's, for instance: 5 duplicate certificates (the exact same set of names) per 7
    days, and new orders per account per 3 hours
    (https://letsencrypt.org/docs/rate-limits/).
    """

    duplicate_certificates: RateLimit | None = None
    new_orders: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule. See the README's *Remediation policy* section for each field.

    ``actions`` maps each action to its mode (an action not listed is denied);
    ``second_person`` lists the actions whose approval needs someone other than the requester;
    ``issuers`` and ``key_types`` are allowed values (empty: any; the first is the default
    choice); a ``renew_before_*`` of ``None`` disables that trigger.
    """

    name: str
    match: Match = field(default_factory=Match)
    actions: Mapping[Action, Mode] = field(default_factory=lambda: DEFAULT_ACTIONS)
    approvers: tuple[str, ...] = ()
    second_person: frozenset[Action] = frozenset({Action.REVOKE})
    issuers: tuple[str, ...] = ()
    key_types: tuple[str, ...] = ()
    max_validity_days: float | None = None
    renew_before_fraction: float | None = DEFAULT_RENEW_FRACTION
    renew_before_days: float | None = None
    use_ari: bool = True
    stagger_jitter: timedelta = timedelta(0)
    concurrency: int | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()

    def mode(self, action: Action) -> Mode:
        return self.actions.get(action, Mode.DENY)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "match": {
                "names": list(self.match.names),
                "sources": list(self.match.sources),
                "owners": list(self.match.owners),
                "environments": list(self.match.environments),
            },
            "actions": {a.value: self.mode(a).value for a in Action},
            "approvers": list(self.approvers),
            "requires_second_person": sorted(a.value for a in self.second_person),
            "issuers": list(self.issuers),
            "key_types": list(self.key_types),
            "max_validity_days": self.max_validity_days,
            "renew_before_fraction": self.renew_before_fraction,
            "renew_before_days": self.renew_before_days,
            "use_ari": self.use_ari,
            "stagger_jitter_seconds": self.stagger_jitter.total_seconds(),
            "concurrency": self.concurrency,
            "maintenance_windows": [w.describe() for w in self.maintenance_windows],
        }


DEFAULT_RULE = Rule(name="default")


@dataclass(frozen=True, slots=True)
class RuleChoice:
    """Which rule applies, why, and why each earlier rule did not."""

    rule: Rule
    position: int  # 1-based among the configured rules; len(rules) + 1 for the default
    why: str
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    default: Rule = DEFAULT_RULE
    issuers: Mapping[str, IssuerBudget] = field(default_factory=dict)

    def select(self, cert: CertFacts) -> RuleChoice:
        """First matching rule wins; the default rule catches the rest."""
        skipped: list[tuple[str, str]] = []
        for i, rule in enumerate(self.rules, start=1):
            ok, why = rule.match.test(cert)
            if ok:
                return RuleChoice(rule, i, why, tuple(skipped))
            skipped.append((rule.name, why))
        why = "no rule matched: the default rule applies" if self.rules else "the default rule"
        return RuleChoice(self.default, len(self.rules) + 1, why, tuple(skipped))

    def budget(self, issuer: str | None) -> IssuerBudget | None:
        return self.issuers.get(issuer) if issuer is not None else None


DEFAULT_POLICY = Policy()


# ----------------------------------------------------------------------------- renewal timing


@dataclass(frozen=True, slots=True)
class RenewalDue:
    """When a certificate is due: ``due`` now or not, from ``at``, and ``why``.

    ``trigger`` is ``fraction``, ``days``, ``ari`` or ``unknown``; ``recheck_at`` is when to
    look again when not due (earlier than ``at`` when the CA's ARI ``Retry-After`` comes first,
    because the window may move).
    """

    due: bool
    at: datetime
    why: str
    trigger: str
    recheck_at: datetime | None = None


def renewal_due(
    cert: CertFacts, rule: Rule, now: datetime, ari: AriWindow | None = None
) -> RenewalDue:
    """When ``cert`` is due for renewal under ``rule``.

    * With an ARI window (and ``rule.use_ari``), the CA's window replaces the lifetime triggers
      (RFC 9773 section 4.2): the renewal point is a deterministic per-certificate point inside
      ``[start, end)`` so a fleet spreads out over the window; a window already past means now.
      A window that ends after the certificate expires is ignored as nonsense.
    * Otherwise the earliest of the enabled triggers: ``renew_before_fraction`` of the lifetime
      left (default 1/3, so 90-day certificates renew at 30 days and 6-day ones at 2) and
      ``renew_before_days`` left; then ``stagger_jitter`` moves it up to that much *earlier*
      by a per-certificate offset, which spreads certificates issued together and never
      pushes a renewal toward expiry.
    """
    if cert.not_after is None:
        return RenewalDue(False, now, "no current certificate (expiry unknown)", "unknown")
    left = cert.not_after - now
    if ari is not None and rule.use_ari and ari.end <= cert.not_after:
        span = ari.end - ari.start
        at = ari.start + span * _unit(cert.key, "ari") if span > timedelta(0) else ari.start
        window = f"ARI window {_utc(ari.start)} .. {_utc(ari.end)}"
        if now >= at:
            why = f"{window}: this certificate's point {_utc(at)} has come"
            if ari.end <= now:
                why = f"{window} is already past: renew now"
            return RenewalDue(True, at, why, "ari")
        recheck = at
        why = f"{window}: this certificate's point is {_utc(at)}"
        if ari.retry_after is not None and now < ari.retry_after < at:
            recheck = ari.retry_after
            why += f"; fetch renewalInfo again after {_utc(ari.retry_after)} (Retry-After)"
        return RenewalDue(False, at, why, "ari", recheck)
    points: list[tuple[datetime, str, str]] = []
    if rule.renew_before_fraction is not None and cert.not_before is not None:
        lifetime = cert.not_after - cert.not_before
        at = cert.not_after - lifetime * rule.renew_before_fraction
        points.append(
            (at, "fraction", f"{rule.renew_before_fraction:.0%} of the lifetime left at {_utc(at)}")
        )
    if rule.renew_before_days is not None:
        at = cert.not_after - timedelta(days=rule.renew_before_days)
        points.append((at, "days", f"{rule.renew_before_days:g} days left at {_utc(at)}"))
    if not points:
        at = cert.not_after
        return RenewalDue(now >= at, at, f"no trigger applies: expiry {_utc(at)}", "unknown", at)
    at, trigger, why = min(points)
    if rule.stagger_jitter > timedelta(0):
        offset = rule.stagger_jitter * _unit(cert.key, "stagger")
        at -= offset
        why += f", staggered {_human(offset)} earlier for this certificate"
    expires = f"expires {_utc(cert.not_after)} ({_human(left)} left)"
    if now >= at:
        return RenewalDue(True, at, f"due: {why}; {expires}", trigger)
    return RenewalDue(False, at, f"not due until {_utc(at)}: {why}; {expires}", trigger, at)


# ----------------------------------------------------------------------------- sliding windows


class _Window:
    """Event times for one sliding-window limit, past and planned.

    A new event at ``t`` fits when every window ``(e - per, e]`` that would contain it, for
    ``e`` in ``[t, t + per)``, stays within the limit. The count only rises at event times, so
    ``e = t`` and the events in ``(t, t + per)`` are the only ends worth checking; planned
    events later than ``t`` are therefore respected too.
    """

    def __init__(self, limit: RateLimit, label: str) -> None:
        self.limit = limit
        self.label = label
        self.times: list[datetime] = []
        # earliest(t) only ever grows as events are added (the feasible set shrinks), so the
        # last answer for ``t`` is where the next search for ``t`` may start.
        self._hints: dict[datetime, datetime] = {}

    def add(self, at: datetime) -> None:
        insort(self.times, at)

    def count(self, end: datetime) -> int:
        return bisect_right(self.times, end) - bisect_right(self.times, end - self.limit.per)

    def _violation(self, t: datetime) -> datetime | None:
        """The first window end in ``[t, t + per)`` already full, if any."""
        full = self.limit.limit
        if self.count(t) >= full:
            return t
        i = bisect_right(self.times, t)
        stop = t + self.limit.per
        while i < len(self.times) and self.times[i] < stop:
            end = self.times[i]
            if self.count(end) >= full:
                return end
            i = bisect_right(self.times, end)  # next distinct time
        return None

    def fits(self, t: datetime) -> bool:
        return self._violation(t) is None

    def earliest(self, t: datetime) -> datetime:
        """The first moment at or after ``t`` an event fits: ``t`` itself, or when a counted
        event leaves the window."""
        at = max(t, self._hints.get(t, t))
        while (full := self._violation(at)) is not None:
            # No start in [at, full] fits: the window ending at ``full`` would still hold it.
            # The next chance is the first moment after ``full`` that an event leaves.
            at = self.times[bisect_right(self.times, full - self.limit.per)] + self.limit.per
        self._hints[t] = at
        return at


def _window_fit(windows: Sequence[MaintenanceWindow], t: datetime) -> datetime:
    if not windows or any(w.contains(t) for w in windows):
        return t
    return min(w.next_start(t) for w in windows)


def _earliest(
    t: datetime, windows: Sequence[MaintenanceWindow], limits: Sequence[_Window]
) -> datetime | None:
    """The first moment at or after ``t`` inside a window (when any) and within every limit."""
    for _ in range(10_000):
        start = t
        t = _window_fit(windows, t)
        for w in limits:
            t = w.earliest(t)
        if t == start:
            return t
    return None  # windows and limits never agree (a window shorter than every gap)


def _budget_windows(
    policy: Policy, issuer: str | None, names: frozenset[str], orders: Iterable[OrderRecord]
) -> list[_Window]:
    budget = policy.budget(issuer)
    if budget is None:
        return []
    out: list[_Window] = []
    orders = [o for o in orders if o.issuer == issuer]
    if budget.duplicate_certificates is not None:
        w = _Window(budget.duplicate_certificates, "duplicate_certificates")
        for o in orders:
            if o.names == names:
                w.add(o.at)
        out.append(w)
    if budget.new_orders is not None:
        w = _Window(budget.new_orders, "new_orders")
        for o in orders:
            w.add(o.at)
        out.append(w)
    return out


def budget_wait(
    policy: Policy,
    issuer: str | None,
    names: Iterable[str],
    orders: Iterable[OrderRecord],
    now: datetime,
) -> datetime | None:
    """The gate at the moment an order is about to be sent: ``None`` when one more order for
    ``names`` at ``issuer`` fits the issuer's budgets given the ``orders`` actually sent, else
    the first moment it will. The plan spaces jobs out; this catches what the plan cannot see
    (a wave that started late, retries, another replica's orders)."""
    windows = _budget_windows(policy, issuer, name_set(names), orders)
    if not windows:
        return None
    at = _earliest(now, (), windows)
    return None if at is not None and at <= now else (at or now + timedelta(hours=1))


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Request:
    """Someone (or something: ``alertmanager``, ``schedule``) asks for an action.

    ``issuer``, ``key_type`` (``EC-256``...) and ``validity_days`` are what the requester
    wants for a renewal (``None``: the rule's choice). ``force`` skips the due check, for an
    explicit ``certpilot renew NAME`` or a renewal a problem calls for (revoked, weak key).
    """

    action: Action
    cert: CertFacts
    requester: str = ""
    issuer: str | None = None
    key_type: str | None = None
    validity_days: float | None = None
    force: bool = False


@dataclass(frozen=True, slots=True)
class Check:
    """One link of the chain: its name, whether it let the action through, and why."""

    name: str
    passed: bool
    explanation: str

    def to_dict(self) -> dict[str, object]:
        return {"check": self.name, "passed": self.passed, "explanation": self.explanation}


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` concluded, with every check on the way.

    ``wait_until`` is set for ``wait`` (the earliest moment the action fits; ``None`` when only
    the concurrency limit holds it back, until a job finishes), for ``not_due`` (the due
    moment), and as information on ``needs_approval`` / ``dry_run``.
    """

    verdict: Verdict
    action: Action
    rule: str
    mode: Mode
    approvers: tuple[str, ...]
    requires_second_person: bool
    reasons: tuple[Check, ...]
    requester: str = ""
    wait_until: datetime | None = None
    recheck_at: datetime | None = None
    issuer: str | None = None
    key_type: str | None = None
    validity_days: float | None = None
    skipped_rules: tuple[tuple[str, str], ...] = ()

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.reasons if not c.passed)

    def summary(self) -> str:
        text = f"{self.action.value}: {self.verdict.value} (rule {self.rule})"
        if self.wait_until is not None:
            word = "until" if self.verdict in {Verdict.WAIT, Verdict.NOT_DUE} else "not before"
            text += f" {word} {_utc(self.wait_until)}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "action": self.action.value,
            "rule": self.rule,
            "mode": self.mode.value,
            "approvers": list(self.approvers),
            "requires_second_person": self.requires_second_person,
            "requester": self.requester,
            "wait_until": _utc(self.wait_until) if self.wait_until else None,
            "recheck_at": _utc(self.recheck_at) if self.recheck_at else None,
            "issuer": self.issuer,
            "key_type": self.key_type,
            "validity_days": self.validity_days,
            "checks": [c.to_dict() for c in self.reasons],
            "skipped_rules": [{"rule": r, "why": w} for r, w in self.skipped_rules],
        }


def _choose_issuer(rule: Rule, wanted: str | None) -> tuple[str | None, Check]:
    if wanted is not None:
        if rule.issuers and wanted not in rule.issuers:
            return wanted, Check(
                "issuer", False, f"{wanted} is not allowed ({_list(rule.issuers)})"
            )
        return wanted, Check("issuer", True, f"{wanted} as requested")
    if rule.issuers:
        return rule.issuers[0], Check("issuer", True, f"{rule.issuers[0]}, the rule's first")
    return None, Check("issuer", True, "any issuer: the target's configured one")


def _choose_key(rule: Rule, cert: CertFacts, wanted: str | None) -> tuple[str | None, Check]:
    allowed = {k.lower(): k for k in rule.key_types}
    if wanted is not None:
        if allowed and wanted.lower() not in allowed:
            return wanted, Check(
                "key_type", False, f"{wanted} is not allowed ({_list(rule.key_types)})"
            )
        return wanted, Check("key_type", True, f"{wanted} as requested")
    current = cert.key_spec
    if not allowed:
        return current, Check("key_type", True, f"any key type: keeps {current or 'the default'}")
    if current is not None and current.lower() in allowed:
        return allowed[current.lower()], Check("key_type", True, f"keeps {current} (allowed)")
    first = rule.key_types[0]
    was = f"current {current} is not allowed" if current else "current key unknown"
    return first, Check("key_type", True, f"{was}: the new key is {first}")


def _choose_validity(rule: Rule, wanted: float | None) -> tuple[float | None, Check]:
    cap = rule.max_validity_days
    if wanted is not None:
        if cap is not None and wanted > cap:
            return wanted, Check(
                "validity", False, f"{wanted:g} days requested, at most {cap:g} allowed"
            )
        return wanted, Check("validity", True, f"{wanted:g} days as requested")
    if cap is not None:
        return cap, Check("validity", True, f"at most {cap:g} days")
    return None, Check("validity", True, "the issuer's default validity")


def _window_check(rule: Rule, mode: Mode, now: datetime) -> tuple[Check, datetime | None]:
    windows = rule.maintenance_windows
    if not windows:
        return Check("maintenance_window", True, "no maintenance windows configured"), None
    shown = "; ".join(w.describe() for w in windows)
    if mode != Mode.AUTO:
        return Check("maintenance_window", True, f"applies to auto actions only ({shown})"), None
    if any(w.contains(now) for w in windows):
        return Check("maintenance_window", True, f"inside a window ({shown})"), None
    nxt = _window_fit(windows, now)
    return Check("maintenance_window", False, f"outside ({shown}): next opens {_utc(nxt)}"), nxt


def _budget_checks(
    policy: Policy, issuer: str | None, cert: CertFacts, facts: Facts, now: datetime
) -> tuple[list[Check], list[_Window]]:
    names = cert.identifiers
    windows = _budget_windows(policy, issuer, names, facts.orders)
    if not windows:
        what = f"issuer {issuer}" if issuer else "an unnamed issuer"
        return [Check("rate_budget", True, f"no rate budget configured for {what}")], []
    checks: list[Check] = []
    for w in windows:
        used = w.count(now)
        scope = (
            "for these exact names" if w.label == "duplicate_certificates" else "across all names"
        )
        head = f"{used} of {w.limit.describe()} used at {issuer} {scope}"
        if w.fits(now):
            checks.append(Check(f"rate_budget.{w.label}", True, head))
            continue
        until = w.earliest(now)
        checks.append(
            Check(
                f"rate_budget.{w.label}",
                False,
                f"{head}: wait until {_utc(until)}, when the oldest counted order leaves the "
                "window",
            )
        )
    return checks, windows


def decide(request: Request, facts: Facts, policy: Policy, now: datetime) -> Decision:
    """Run the chain of checks for ``request`` and say what may happen.

    The checks, in order: ``rule`` (which rule applies), ``mode``, ``renewal_due`` (renew,
    unless forced), ``issuer``, ``key_type`` and ``validity`` (renew), ``approval``,
    ``maintenance_window`` (auto actions), ``rate_budget.*`` (renew) and ``concurrency``. Every
    check is evaluated and reported; the verdict takes the strongest outcome, in this order:
    ``deny`` (mode deny, or a disallowed issuer, key or validity), ``not_due``, ``dry_run``,
    ``needs_approval``, ``wait`` (outside a window, over a rate budget or the concurrency
    limit), ``allow``.
    """
    cert = request.cert
    action = request.action
    choice = policy.select(cert)
    rule = choice.rule
    mode = rule.mode(action)
    checks: list[Check] = [
        Check("rule", True, f"rule {rule.name!r} (#{choice.position}): {choice.why}")
    ]
    checks.append(
        Check("mode", mode != Mode.DENY, f"{action.value} is {mode.value} under {rule.name!r}")
    )
    denied = mode == Mode.DENY
    due: RenewalDue | None = None
    issuer = key = validity = None
    limits: list[_Window] = []

    if action in _ISSUING:
        if request.force:
            checks.append(Check("renewal_due", True, "forced by the requester"))
        else:
            due = renewal_due(cert, rule, now, facts.ari_for(cert))
            checks.append(Check("renewal_due", due.due, due.why))
        issuer, c_issuer = _choose_issuer(rule, request.issuer)
        key, c_key = _choose_key(rule, cert, request.key_type)
        validity, c_validity = _choose_validity(rule, request.validity_days)
        checks += [c_issuer, c_key, c_validity]
        denied = denied or not (c_issuer.passed and c_key.passed and c_validity.passed)

    second = mode == Mode.APPROVE and action in rule.second_person
    if mode == Mode.APPROVE:
        who = _list(rule.approvers) if rule.approvers else "nobody (the rule lists no approvers)"
        extra = ", a second person (not the requester)" if second else ""
        checks.append(Check("approval", False, f"needs approval by {who}{extra}"))
    else:
        checks.append(Check("approval", True, f"not needed ({mode.value})"))

    c_window, window_wait = _window_check(rule, mode, now)
    checks.append(c_window)

    if action in _ISSUING:
        c_budget, limits = _budget_checks(policy, issuer, cert, facts, now)
        checks += c_budget

    in_flight = facts.in_flight.get(rule.name, 0)
    if rule.concurrency is None:
        checks.append(Check("concurrency", True, f"no limit ({in_flight} jobs in flight)"))
        busy = False
    else:
        busy = in_flight >= rule.concurrency
        checks.append(
            Check(
                "concurrency",
                not busy,
                f"{in_flight} of {rule.concurrency} jobs in flight for rule {rule.name!r}"
                + (": wait until one finishes" if busy else ""),
            )
        )

    windows = rule.maintenance_windows if mode == Mode.AUTO else ()
    start = _earliest(now, windows, limits)
    wait_until = start if start is not None and start > now else None
    if start is None:
        wait_until = window_wait

    verdict: Verdict
    if denied:
        verdict, wait_until = Verdict.DENY, None
    elif due is not None and not due.due:
        # The due moment, moved on to a window opening or a free budget slot if need be.
        verdict = Verdict.NOT_DUE
        known = cert.not_after is not None
        wait_until = (_earliest(due.at, windows, limits) or due.at) if known else None
    elif mode == Mode.DRY_RUN:
        verdict = Verdict.DRY_RUN
    elif mode == Mode.APPROVE:
        verdict = Verdict.NEEDS_APPROVAL
    elif wait_until is not None or busy:
        verdict = Verdict.WAIT
    else:
        verdict = Verdict.ALLOW
    return Decision(
        verdict=verdict,
        action=action,
        rule=rule.name,
        mode=mode,
        approvers=rule.approvers if mode == Mode.APPROVE else (),
        requires_second_person=second,
        reasons=tuple(checks),
        requester=request.requester,
        wait_until=wait_until,
        recheck_at=due.recheck_at if due is not None and not due.due else None,
        issuer=issuer,
        key_type=key,
        validity_days=validity,
        skipped_rules=choice.skipped,
    )


# ----------------------------------------------------------------------------- approvals


@dataclass(frozen=True, slots=True)
class Principal:
    """A person as the approval check sees them: an id and the groups they belong to."""

    id: str
    groups: frozenset[str] = frozenset()


def can_approve(
    decision: Decision, requester: str | Principal, approver: str | Principal
) -> tuple[bool, str]:
    """Whether ``approver`` may approve ``decision``, requested by ``requester``.

    The approver's id or one of their groups must be among the rule's approvers (a rule that
    lists none cannot be approved by anyone), and when the decision needs a second person
    (revocation, by default) the approver must not be the requester.
    """
    req = requester.id if isinstance(requester, Principal) else requester
    who = approver if isinstance(approver, Principal) else Principal(approver)
    if decision.verdict != Verdict.NEEDS_APPROVAL:
        return False, f"nothing to approve: the decision is {decision.verdict.value}"
    if not decision.approvers:
        return False, f"rule {decision.rule!r} lists no approvers"
    allowed = set(decision.approvers)
    hit = who.id if who.id in allowed else next(iter(sorted(who.groups & allowed)), None)
    if hit is None:
        return False, f"{who.id} is not among the approvers ({_list(decision.approvers)})"
    if decision.requires_second_person and who.id == req:
        return (
            False,
            f"{who.id} requested this {decision.action.value}: a second person must approve",
        )
    via = "" if hit == who.id else f" (as member of {hit})"
    return True, f"{who.id} may approve{via}"


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class PlannedRenewal:
    """One renewal the planner scheduled: start no earlier than ``at``."""

    fingerprint: str | None
    names: tuple[str, ...]
    refs: tuple[str, ...]
    rule: str
    verdict: Verdict  # allow, needs_approval or dry_run
    at: datetime
    due_at: datetime
    not_after: datetime | None
    issuer: str | None
    key_type: str | None
    why: str

    def to_dict(self) -> dict[str, object]:
        return {
            "fingerprint_sha256": self.fingerprint,
            "names": list(self.names),
            "refs": list(self.refs),
            "rule": self.rule,
            "verdict": self.verdict.value,
            "at": _utc(self.at),
            "due_at": _utc(self.due_at),
            "not_after": _utc(self.not_after) if self.not_after else None,
            "issuer": self.issuer,
            "key_type": self.key_type,
            "why": self.why,
        }


@dataclass(slots=True)
class _Candidate:
    cert: CertFacts
    choice: RuleChoice
    due: RenewalDue
    refs: list[str]


def _candidates(items: Sequence[CertFacts | InventoryItem], policy: Policy) -> list[_Candidate]:
    """One candidate per certificate: a certificate served at several locations is renewed
    once, under the first rule (in policy order) any of its locations matches."""
    by_key: dict[str, _Candidate] = {}
    for item in items:
        cert = CertFacts.from_item(item) if isinstance(item, InventoryItem) else item
        if cert.not_after is None:
            continue
        choice = policy.select(cert)
        key = cert.key
        have = by_key.get(key)
        if have is None:
            by_key[key] = _Candidate(cert, choice, _NOT_YET, list(cert.refs))
            continue
        have.refs += [r for r in cert.refs if r not in have.refs]
        if choice.position < have.choice.position:
            have.cert, have.choice = cert, choice
    return list(by_key.values())


_NOT_YET = RenewalDue(False, datetime.min.replace(tzinfo=UTC), "", "unknown")


def plan_renewals(
    items: Sequence[CertFacts | InventoryItem],
    policy: Policy,
    facts: Facts,
    now: datetime,
    *,
    horizon: timedelta = timedelta(0),
    job_duration: timedelta = timedelta(minutes=5),
    issuer_for: Callable[[CertFacts], str | None] | None = None,
) -> list[PlannedRenewal]:
    """Schedule the renewals due by ``now + horizon``, sorted by start time.

    Candidates are taken most urgent first (soonest expiry), and each gets the earliest start
    at or after its due moment (and ``now``) that keeps every limit: the issuer's rate budgets
    counting past orders *and* the renewals planned so far, the rule's concurrency (each job
    assumed to take ``job_duration``; jobs in flight count from ``now``), and, for ``auto``
    rules, a maintenance window. So a mass event is worked off in as many batches as the
    budgets need and never more than they allow. Denied rules, certificates with an open job
    (``facts.busy``) and certificates not due within the horizon are left out. Dry-run
    renewals are placed but use no budget; renewals waiting for approval use it (they may be
    approved), so the plan stays on the safe side.

    ``issuer_for`` names the issuer a certificate will get when its rule lists none (the deploy
    target's configured one), so that issuer's budget is kept too.

    Each planned start is stored on its job (``next_attempt_at``) and the jobs queued count as
    orders at their start in later plans (``remediator.service.Remediation.facts``), so
    successive plans never overfill a window.
    """
    limit_at = now + horizon
    budgets: dict[tuple[str, str, frozenset[str]], _Window] = {}
    slots: dict[str, _Window] = {}
    plan: list[PlannedRenewal] = []

    def windows_for(issuer: str | None, names: frozenset[str]) -> list[_Window]:
        budget = policy.budget(issuer)
        if budget is None or issuer is None:
            return []
        out: list[_Window] = []
        for label, limit, key in (
            ("duplicate_certificates", budget.duplicate_certificates, names),
            ("new_orders", budget.new_orders, frozenset[str]()),
        ):
            if limit is None:
                continue
            slot = (label, issuer, key)
            if slot not in budgets:
                w = _Window(limit, label)
                for o in facts.orders:
                    if o.issuer == issuer and (label == "new_orders" or o.names == names):
                        w.add(o.at)
                budgets[slot] = w
            out.append(budgets[slot])
        return out

    def slot_for(rule: Rule) -> list[_Window]:
        if rule.concurrency is None:
            return []
        if rule.name not in slots:
            w = _Window(RateLimit(rule.concurrency, job_duration), "concurrency")
            for _ in range(facts.in_flight.get(rule.name, 0)):
                w.add(now)
            slots[rule.name] = w
        return [slots[rule.name]]

    candidates = _candidates(items, policy)
    for c in candidates:
        c.due = renewal_due(c.cert, c.choice.rule, now, facts.ari_for(c.cert))
    far = datetime.max.replace(tzinfo=UTC)
    candidates.sort(key=lambda c: (c.cert.not_after or far, c.due.at, c.cert.key))
    for c in candidates:
        rule = c.choice.rule
        mode = rule.mode(Action.RENEW)
        if mode == Mode.DENY or c.due.at > limit_at:
            continue
        if c.cert.fingerprint is not None and c.cert.fingerprint in facts.busy:
            continue
        issuer, _ = _choose_issuer(rule, None)
        if issuer is None and issuer_for is not None:
            issuer = issuer_for(c.cert)
        key, _ = _choose_key(rule, c.cert, None)
        limits = windows_for(issuer, c.cert.identifiers) + slot_for(rule)
        windows = rule.maintenance_windows if mode == Mode.AUTO else ()
        earliest = max(now, c.due.at)
        at = _earliest(earliest, windows, limits)
        if at is None:
            continue
        verdict = {Mode.AUTO: Verdict.ALLOW, Mode.APPROVE: Verdict.NEEDS_APPROVAL}.get(
            mode, Verdict.DRY_RUN
        )
        why = c.due.why
        if at > earliest:
            why += f"; held until {_utc(at)} by {_holders(at, earliest, windows, limits)}"
        if verdict != Verdict.DRY_RUN:
            for w in limits:
                w.add(at)
        plan.append(
            PlannedRenewal(
                fingerprint=c.cert.fingerprint,
                names=c.cert.names,
                refs=tuple(c.refs),
                rule=rule.name,
                verdict=verdict,
                at=at,
                due_at=c.due.at,
                not_after=c.cert.not_after,
                issuer=issuer,
                key_type=key,
                why=why,
            )
        )
    plan.sort(key=lambda p: (p.at, p.not_after or far, p.fingerprint or ""))
    return plan


def _holders(
    at: datetime,
    earliest: datetime,
    windows: Sequence[MaintenanceWindow],
    limits: Sequence[_Window],
) -> str:
    names = [w.label for w in limits if not w.fits(earliest)]
    if windows and not any(w.contains(earliest) for w in windows):
        names.insert(0, "maintenance window")
    return ", ".join(names) or "limits"
