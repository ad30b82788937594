"""The remediation policy: pure decisions with a fixed clock, its YAML, and `policy explain`."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from certpilot.cli import main
from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.model import Observation
from certpilot.domain.x509 import CertInfo, ParsedCert, parse_pem_bundle
from certpilot.localca import LocalCA
from certpilot.store import Inventory
from remediator.policy import (
    DEFAULT_POLICY,
    Action,
    AriWindow,
    CertFacts,
    Decision,
    Facts,
    IssuerBudget,
    MaintenanceWindow,
    Match,
    Mode,
    OrderRecord,
    Policy,
    Principal,
    RateLimit,
    Request,
    Rule,
    Verdict,
    can_approve,
    decide,
    name_set,
    plan_renewals,
    renewal_due,
)
from remediator.policy_config import load_policy, policy_from_mapping

# Wednesday 4 June 2025, noon UTC.
CLOCK = FixedClock(datetime(2025, 6, 4, 12, 0, tzinfo=UTC))
NOW = CLOCK.now()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SAT, SUN = 5, 6
WEEKDAYS = frozenset(range(5))


def cert(
    *names: str,
    left: float = 60.0,
    lifetime: float = 90.0,
    source: str = "tls",
    labels: dict[str, str] | None = None,
    fp: str | None = None,
    key: tuple[str, int] = ("EC", 256),
    hosts: tuple[str, ...] = (),
) -> CertFacts:
    """A certificate with ``left`` days of a ``lifetime``-day validity left at NOW."""
    names = names or ("shop.example.com",)
    not_after = NOW + timedelta(days=left)
    return CertFacts(
        names=names,
        source=source,
        labels=labels or {},
        not_before=not_after - timedelta(days=lifetime),
        not_after=not_after,
        key_type=key[0],
        key_bits=key[1],
        issuer="Test CA",
        fingerprint=fp or f"fp-{'-'.join(names)}-{left}",
        hosts=hosts,
    )


def renew(c: CertFacts, **kw: object) -> Request:
    return Request(Action.RENEW, c, requester="alice", **kw)  # type: ignore[arg-type]


def check(d: Decision, name: str) -> tuple[bool, str]:
    found = [c for c in d.reasons if c.name == name]
    assert found, f"no check {name} in {[c.name for c in d.reasons]}"
    return found[0].passed, found[0].explanation


def only(rule: Rule, **kw: object) -> Policy:
    return Policy(rules=(rule,), **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- rule matching


def test_name_globs_are_shell_globs_over_sans_cn_and_hosts() -> None:
    policy = only(Rule("web", Match(names=("*.example.com",))))

    def rule_of(c: CertFacts) -> str:
        return policy.select(c).rule.name

    assert rule_of(cert("www.example.com")) == "web"
    assert rule_of(cert("a.b.example.com")) == "web"  # `*` crosses dots, unlike a TLS wildcard
    assert rule_of(cert("*.example.com")) == "web"  # a wildcard SAN matches literally
    assert rule_of(cert("WWW.Example.COM")) == "web"  # case-insensitive
    assert rule_of(cert("example.com")) == "default"  # the apex is not a subdomain
    assert rule_of(cert("example.com.evil.net")) == "default"
    # Any one name is enough, and the location's host counts too.
    assert rule_of(cert("other.net", "api.example.com")) == "web"
    assert rule_of(cert("10.0.0.5", hosts=("lb.example.com",))) == "web"
    choice = policy.select(cert("www.example.com"))
    assert choice.why == "name 'www.example.com' matches '*.example.com'"
    assert choice.position == 1


def test_source_owner_and_env_all_must_match() -> None:
    rule = Rule("pay", Match(sources=("tls",), owners=("payments",), environments=("prod",)))
    policy = only(rule)
    good = {"owner": "payments", "env": "prod"}
    assert policy.select(cert(labels=good)).rule.name == "pay"
    assert policy.select(cert(labels=good, source="file")).rule.name == "default"
    assert policy.select(cert(labels={"owner": "payments", "env": "dev"})).rule.name == "default"
    miss = policy.select(cert(labels={"env": "prod"}))
    assert miss.rule.name == "default"
    assert miss.skipped == (("pay", "no owner label"),)
    assert policy.select(cert(labels=good)).why == (
        "source 'tls' matches 'tls'; owner 'payments' matches 'payments'; env 'prod' matches 'prod'"
    )


def test_first_match_wins_and_earlier_misses_are_explained() -> None:
    policy = Policy(
        rules=(
            Rule("files", Match(sources=("file",))),
            Rule("prod", Match(environments=("prod",))),
            Rule("shop", Match(names=("shop.*",))),
        )
    )
    choice = policy.select(cert("shop.example.com", labels={"env": "prod"}))
    assert (choice.rule.name, choice.position) == ("prod", 2)
    assert choice.skipped == (("files", "source 'tls' is not one of file"),)
    d = decide(renew(cert("shop.example.com", labels={"env": "prod"})), Facts(), policy, NOW)
    assert d.rule == "prod"
    assert check(d, "rule") == (True, "rule 'prod' (#2): env 'prod' matches 'prod'")
    nothing = policy.select(cert("x.net", labels={"env": "dev"}))
    assert (nothing.rule.name, nothing.position) == ("default", 4)
    assert [name for name, _ in nothing.skipped] == ["files", "prod", "shop"]


# ----------------------------------------------------------------------------- renewal triggers


def test_fraction_trigger_is_relative_to_the_lifetime() -> None:
    rule = Rule("r")  # default: a third of the lifetime left
    ninety = cert(left=31)
    due = renewal_due(ninety, rule, NOW)
    assert not due.due and due.trigger == "fraction"
    assert due.at == ninety.not_after - timedelta(days=30)  # type: ignore[operator]
    assert renewal_due(cert(left=29), rule, NOW).due
    # A 6-day certificate is due with 2 days left, not from birth.
    assert not renewal_due(cert(left=2.1, lifetime=6), rule, NOW).due
    assert renewal_due(cert(left=1.9, lifetime=6), rule, NOW).due
    d = decide(renew(ninety), Facts(), only(rule), NOW)
    assert d.verdict == Verdict.NOT_DUE
    assert d.wait_until == due.at == NOW + timedelta(days=1)


def test_days_trigger_and_the_earlier_trigger_wins() -> None:
    days_only = Rule("d", renew_before_fraction=None, renew_before_days=14)
    assert not renewal_due(cert(left=15), days_only, NOW).due
    due = renewal_due(cert(left=13), days_only, NOW)
    assert due.due and due.trigger == "days"
    both = Rule("b", renew_before_days=30)
    # 398-day certificate: a third is 132.7 days, earlier than 30 days, so the fraction wins.
    long = renewal_due(cert(left=140, lifetime=398), both, NOW)
    assert long.trigger == "fraction" and not long.due
    # 6-day certificate: 30 days left is before it was even issued, so the days trigger wins.
    short = renewal_due(cert(left=5, lifetime=6), both, NOW)
    assert short.trigger == "days" and short.due


def test_ari_window_replaces_the_lifetime_triggers_at_a_deterministic_point() -> None:
    rule = Rule("r")
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=3)
    ari = AriWindow(start, end)
    c = cert(left=40)  # not due by fraction for 10 more days; ARI comes first
    due = renewal_due(c, rule, NOW, ari)
    assert due.trigger == "ari" and not due.due
    assert start <= due.at < end
    assert renewal_due(c, rule, NOW, ari) == due  # same point on every evaluation
    assert renewal_due(c, rule, due.at, ari).due
    assert not renewal_due(c, rule, due.at - timedelta(seconds=1), ari).due
    # A fleet spreads out over the window instead of all renewing at its start.
    points = [renewal_due(cert(left=40, fp=f"fp{i}"), rule, NOW, ari).at for i in range(200)]
    assert len(set(points)) == 200
    assert min(points) - start < timedelta(hours=2) and end - max(points) < timedelta(hours=2)
    # A window already past (the CA revoked the certificate) means now.
    past = AriWindow(NOW - timedelta(days=2), NOW - timedelta(days=1))
    now_due = renewal_due(c, rule, NOW, past)
    assert now_due.due and "already past" in now_due.why
    # Rules can opt out; a window ending after expiry is ignored as nonsense.
    assert renewal_due(c, Rule("no", use_ari=False), NOW, ari).trigger == "fraction"
    late = AriWindow(NOW + timedelta(days=50), NOW + timedelta(days=60))
    assert renewal_due(c, rule, NOW, late).trigger == "fraction"
    # decide() takes the window from the facts, by request or by fingerprint.
    assert decide(renew(c), Facts(ari=past), only(rule), NOW).verdict == Verdict.ALLOW
    by_fp = Facts(ari_windows={c.fingerprint or "": past})
    assert decide(renew(c), by_fp, only(rule), NOW).verdict == Verdict.ALLOW


def test_ari_retry_after_is_honoured() -> None:
    rule = Rule("r")
    c = cert(left=40)
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=3)
    soon = AriWindow(start, end, retry_after=NOW + timedelta(hours=6))
    due = renewal_due(c, rule, NOW, soon)
    assert not due.due and due.recheck_at == NOW + timedelta(hours=6)
    assert "Retry-After" in due.why
    d = decide(renew(c), Facts(ari=soon), only(rule), NOW)
    assert d.verdict == Verdict.NOT_DUE
    assert d.wait_until == due.at and d.recheck_at == NOW + timedelta(hours=6)
    # A Retry-After later than the renewal point does not delay the renewal.
    later = AriWindow(start, end, retry_after=end + timedelta(days=1))
    assert renewal_due(c, rule, NOW, later).recheck_at == due.at


def test_stagger_is_deterministic_bounded_and_earlier() -> None:
    plain = Rule("plain")
    jitter = Rule("j", stagger_jitter=timedelta(minutes=30))
    offsets = []
    for i in range(100):
        c = cert(left=40, fp=f"fp{i}")
        trigger = renewal_due(c, plain, NOW).at
        staggered = renewal_due(c, jitter, NOW).at
        assert staggered == renewal_due(c, jitter, NOW).at  # same on every run and replica
        assert timedelta(0) <= trigger - staggered < timedelta(minutes=30)
        offsets.append(trigger - staggered)
    assert len(set(offsets)) == 100
    assert max(offsets) - min(offsets) > timedelta(minutes=20)


# ----------------------------------------------------------------------------- maintenance windows

NIGHTS = MaintenanceWindow(WEEKDAYS, time(22, 0), time(6, 0))  # Mon-Fri nights, UTC


def test_auto_actions_wait_for_a_maintenance_window() -> None:
    policy = only(Rule("w", maintenance_windows=(NIGHTS,)))
    due = cert(left=10)
    d = decide(renew(due), Facts(), policy, NOW)  # Wednesday noon
    assert d.verdict == Verdict.WAIT
    assert d.wait_until == datetime(2025, 6, 4, 22, 0, tzinfo=UTC)
    assert check(d, "maintenance_window")[0] is False
    assert "next opens 2025-06-04T22:00:00Z" in check(d, "maintenance_window")[1]
    inside = decide(renew(due), Facts(), policy, datetime(2025, 6, 4, 23, 0, tzinfo=UTC))
    assert inside.verdict == Verdict.ALLOW
    after_midnight = datetime(2025, 6, 5, 5, 59, tzinfo=UTC)  # Thursday: Wednesday's window
    assert decide(renew(due), Facts(), policy, after_midnight).verdict == Verdict.ALLOW
    closed = datetime(2025, 6, 5, 6, 0, tzinfo=UTC)
    assert decide(renew(due), Facts(), policy, closed).wait_until == datetime(
        2025, 6, 5, 22, 0, tzinfo=UTC
    )
    # Only auto actions wait: an approved job runs once approved.
    gated = only(Rule("w", actions={Action.RENEW: Mode.APPROVE}, maintenance_windows=(NIGHTS,)))
    assert decide(renew(due), Facts(), gated, NOW).verdict == Verdict.NEEDS_APPROVAL


def test_next_window_across_the_week_boundary() -> None:
    weekend = MaintenanceWindow(frozenset({SAT, SUN}), time(2, 0), time(5, 0))
    sunday_morning = datetime(2025, 6, 8, 6, 0, tzinfo=UTC)
    assert not weekend.contains(sunday_morning)
    assert weekend.next_start(sunday_morning) == datetime(2025, 6, 14, 2, 0, tzinfo=UTC)
    friday_night = datetime(2025, 6, 13, 23, 0, tzinfo=UTC)
    assert NIGHTS.contains(friday_night)
    assert NIGHTS.contains(datetime(2025, 6, 14, 5, 0, tzinfo=UTC))  # Friday's runs into Sat
    assert not NIGHTS.contains(datetime(2025, 6, 14, 23, 0, tzinfo=UTC))  # no Saturday window
    assert NIGHTS.next_start(datetime(2025, 6, 14, 7, 0, tzinfo=UTC)) == datetime(
        2025, 6, 16, 22, 0, tzinfo=UTC
    )
    sunday_late = MaintenanceWindow(frozenset({SUN}), time(23, 0), time(1, 0))
    assert sunday_late.contains(datetime(2025, 6, 9, 0, 30, tzinfo=UTC))  # Monday 00:30
    whole_days = MaintenanceWindow(frozenset({SAT}), time(0, 0), time(0, 0))
    assert whole_days.contains(datetime(2025, 6, 7, 23, 59, tzinfo=UTC))
    assert not whole_days.contains(datetime(2025, 6, 8, 0, 0, tzinfo=UTC))


def test_windows_in_a_named_time_zone_follow_local_time() -> None:
    berlin = MaintenanceWindow(frozenset({SAT}), time(2, 0), time(5, 0), ZoneInfo("Europe/Berlin"))
    # Summer (CEST, UTC+2): Saturday 02:00 in Berlin is Saturday 00:00 UTC.
    assert berlin.next_start(NOW) == datetime(2025, 6, 7, 0, 0, tzinfo=UTC)
    assert berlin.contains(datetime(2025, 6, 7, 2, 59, tzinfo=UTC))
    assert not berlin.contains(datetime(2025, 6, 7, 3, 0, tzinfo=UTC))
    # Winter (CET, UTC+1): the same wall-clock window is an hour later in UTC.
    january = datetime(2025, 1, 1, tzinfo=UTC)
    assert berlin.next_start(january) == datetime(2025, 1, 4, 1, 0, tzinfo=UTC)
    policy = only(Rule("b", maintenance_windows=(berlin,)))
    d = decide(renew(cert(left=10)), Facts(), policy, NOW)
    assert (d.verdict, d.wait_until) == (Verdict.WAIT, datetime(2025, 6, 7, 0, 0, tzinfo=UTC))
    assert "sat 02:00-05:00 Europe/Berlin" in check(d, "maintenance_window")[1]


# ----------------------------------------------------------------------------- rate budgets

LE = IssuerBudget(
    duplicate_certificates=RateLimit(5, timedelta(days=7)),
    new_orders=RateLimit(300, timedelta(hours=3)),
)


def le_policy(**rule: object) -> Policy:
    return Policy(rules=(Rule("le", issuers=("le",), **rule),), issuers={"le": LE})  # type: ignore[arg-type]


def test_sixth_duplicate_certificate_waits_until_the_first_leaves_the_window() -> None:
    c = cert("shop.example.com", "www.example.com", left=10)
    same = frozenset({"WWW.example.com", "shop.example.com"})  # same set, any case and order
    orders = tuple(OrderRecord(NOW - timedelta(days=6 - i), "le", same) for i in range(5))
    noise = (
        OrderRecord(NOW - timedelta(days=8), "le", same),  # outside the window
        OrderRecord(NOW - timedelta(hours=1), "le", frozenset({"shop.example.com"})),  # other set
        OrderRecord(NOW - timedelta(hours=1), "other-ca", same),  # other issuer
    )
    d = decide(renew(c), Facts(orders=orders + noise), le_policy(), NOW)
    assert d.verdict == Verdict.WAIT
    first = NOW - timedelta(days=6)
    assert d.wait_until == first + timedelta(days=7)
    passed, why = check(d, "rate_budget.duplicate_certificates")
    assert not passed
    assert why.startswith("5 of 5 per 7d used at le for these exact names: wait until")
    assert check(d, "rate_budget.new_orders")[0]
    # Then it fits: the oldest order no longer counts.
    assert d.wait_until is not None
    later = decide(renew(c), Facts(orders=orders), le_policy(), d.wait_until)
    assert later.verdict == Verdict.ALLOW
    # Four duplicates leave room for a fifth.
    assert decide(renew(c), Facts(orders=orders[1:]), le_policy(), NOW).verdict == Verdict.ALLOW


def test_new_orders_window() -> None:
    policy = Policy(
        rules=(Rule("r", issuers=("ca",)),),
        issuers={"ca": IssuerBudget(new_orders=RateLimit(3, timedelta(hours=3)))},
    )
    orders = tuple(
        OrderRecord(NOW - ago, "ca", frozenset({f"n{i}.example"}))
        for i, ago in enumerate((timedelta(hours=2), timedelta(hours=1), timedelta(minutes=30)))
    )
    d = decide(renew(cert(left=10)), Facts(orders=orders), policy, NOW)
    assert (d.verdict, d.wait_until) == (Verdict.WAIT, NOW + timedelta(hours=1))
    assert d.issuer == "ca"
    assert decide(renew(cert(left=10)), Facts(orders=orders[:2]), policy, NOW).verdict == (
        Verdict.ALLOW
    )


def test_rate_budget_and_maintenance_window_combine() -> None:
    # Over budget until Wednesday 13:00, but the window only opens at 22:00.
    policy = Policy(
        rules=(Rule("r", issuers=("ca",), maintenance_windows=(NIGHTS,)),),
        issuers={"ca": IssuerBudget(new_orders=RateLimit(1, timedelta(hours=1)))},
    )
    orders = (OrderRecord(NOW, "ca", frozenset({"a.example"})),)
    d = decide(renew(cert(left=10)), Facts(orders=orders), policy, NOW)
    assert d.wait_until == datetime(2025, 6, 4, 22, 0, tzinfo=UTC)


def test_mass_event_is_spread_into_hourly_batches_within_the_budget() -> None:
    """A CA revokes 100 certificates at once; the budget is 20 new orders per hour."""
    policy = Policy(
        rules=(Rule("fleet", issuers=("ca",)),),
        issuers={"ca": IssuerBudget(new_orders=RateLimit(20, timedelta(hours=1)))},
    )
    fleet = [cert(f"host{i:03d}.example.com", left=1 + i / 100) for i in range(100)]
    plan = plan_renewals(list(reversed(fleet)), policy, Facts(), NOW)
    assert len(plan) == 100
    batches = Counter(p.at for p in plan)
    assert sorted(batches) == [NOW + timedelta(hours=h) for h in range(5)]
    assert set(batches.values()) == {20}
    # No sliding hour ever holds more than 20 orders.
    starts = sorted(p.at for p in plan)
    for t in starts:
        assert sum(1 for s in starts if t - timedelta(hours=1) < s <= t) <= 20
    # Most urgent first: the first batch holds the 20 soonest to expire.
    first = {p.names[0] for p in plan if p.at == NOW}
    assert first == {f"host{i:03d}.example.com" for i in range(20)}
    assert all(p.verdict == Verdict.ALLOW and p.issuer == "ca" for p in plan)
    assert "held until" in plan[-1].why and "new_orders" in plan[-1].why
    # Orders already made this hour count too.
    recent = tuple(
        OrderRecord(NOW - timedelta(minutes=10), "ca", frozenset({f"old{i}"})) for i in range(5)
    )
    again = plan_renewals(fleet, policy, Facts(orders=recent), NOW)
    assert Counter(p.at for p in again)[NOW] == 15


def test_random_fleets_never_exceed_any_budget_or_concurrency() -> None:
    """Brute-force check of every sliding window over seeded random fleets and histories."""
    rng = random.Random(4)
    for _ in range(20):
        per_hour = RateLimit(rng.randint(1, 8), timedelta(minutes=rng.choice((30, 60, 90))))
        dupes = RateLimit(rng.randint(1, 3), timedelta(days=1))
        policy = Policy(
            rules=(Rule("r", issuers=("ca",), concurrency=rng.randint(1, 4)),),
            issuers={"ca": IssuerBudget(duplicate_certificates=dupes, new_orders=per_hour)},
        )
        names = [f"n{i}.example" for i in range(6)]  # few names: duplicates collide
        fleet = [cert(rng.choice(names), left=rng.uniform(-2, 40), fp=f"fp{i}") for i in range(40)]
        history = tuple(
            OrderRecord(NOW - timedelta(minutes=rng.uniform(0, 600)), "ca", frozenset({name}))
            for name in rng.choices(names, k=rng.randint(0, 10))
        )
        job = timedelta(minutes=rng.choice((5, 20)))
        plan = plan_renewals(
            fleet, policy, Facts(orders=history), NOW, horizon=timedelta(days=20), job_duration=job
        )
        assert plan
        events = [(o.at, o.names) for o in history] + [(p.at, name_set(p.names)) for p in plan]
        for p in plan:
            assert p.at >= max(NOW, p.due_at)
            assert sum(1 for at, _ in events if p.at - per_hour.per < at <= p.at) <= per_hour.limit
            mine = name_set(p.names)
            assert (
                sum(1 for at, n in events if n == mine and p.at - dupes.per < at <= p.at)
                <= dupes.limit
            )
            running = sum(1 for q in plan if q.at <= p.at < q.at + job)
            assert running <= (policy.rules[0].concurrency or 0)


def test_plan_keeps_duplicate_limit_and_skips_denied_busy_and_not_due() -> None:
    policy = Policy(
        rules=(
            Rule("frozen", Match(names=("frozen.*",)), actions={Action.RENEW: Mode.DENY}),
            Rule("le", issuers=("le",)),
        ),
        issuers={"le": LE},
    )
    same = frozenset({"dup.example.com"})
    orders = tuple(OrderRecord(NOW - timedelta(days=1), "le", same) for _ in range(5))
    items = [
        cert("dup.example.com", left=5),
        cert("frozen.example.com", left=5),
        cert("busy.example.com", left=5, fp="busy"),
        cert("fresh.example.com", left=80),
        cert("ok.example.com", left=5),
    ]
    plan = plan_renewals(items, policy, Facts(orders=orders, busy=frozenset({"busy"})), NOW)
    assert [(p.names[0], p.at) for p in plan] == [
        ("ok.example.com", NOW),
        ("dup.example.com", NOW + timedelta(days=6)),
    ]
    # Within a horizon, certificates due later are planned at their due moment.
    ahead = plan_renewals(items, policy, Facts(), NOW, horizon=timedelta(days=60))
    fresh = next(p for p in ahead if p.names[0] == "fresh.example.com")
    assert fresh.at == fresh.due_at == items[3].not_after - timedelta(days=30)  # type: ignore[operator]


def test_plan_renews_a_certificate_served_in_several_places_once() -> None:
    policy = Policy(rules=(Rule("files", Match(sources=("file",))),))
    a = CertFacts(
        names=("shop.example.com",),
        source="tls",
        not_before=NOW - timedelta(days=80),
        not_after=NOW + timedelta(days=10),
        fingerprint="same",
        refs=("tls://a:443#shop.example.com",),
    )
    b = CertFacts(
        names=a.names,
        source="file",
        not_before=a.not_before,
        not_after=a.not_after,
        fingerprint="same",
        refs=("file:///etc/shop.pem#0",),
    )
    plan = plan_renewals([a, b], policy, Facts(), NOW)
    assert len(plan) == 1
    assert plan[0].refs == ("tls://a:443#shop.example.com", "file:///etc/shop.pem#0")
    assert plan[0].rule == "files"  # the earliest rule any location matches


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_limit_in_decide_and_plan() -> None:
    policy = only(Rule("c", concurrency=2))
    due = cert(left=10)
    full = decide(renew(due), Facts(in_flight={"c": 2}), policy, NOW)
    assert (full.verdict, full.wait_until) == (Verdict.WAIT, None)
    assert check(full, "concurrency") == (
        False,
        "2 of 2 jobs in flight for rule 'c': wait until one finishes",
    )
    assert decide(renew(due), Facts(in_flight={"c": 1}), policy, NOW).verdict == Verdict.ALLOW
    assert decide(renew(due), Facts(in_flight={"other": 9}), policy, NOW).verdict == Verdict.ALLOW

    three = only(Rule("c", concurrency=3))
    fleet = [cert(f"h{i}.example", left=5 + i / 10) for i in range(7)]
    plan = plan_renewals(fleet, three, Facts(), NOW, job_duration=timedelta(minutes=10))
    assert Counter(p.at - NOW for p in plan) == {
        timedelta(0): 3,
        timedelta(minutes=10): 3,
        timedelta(minutes=20): 1,
    }
    busy = plan_renewals(
        fleet, three, Facts(in_flight={"c": 1}), NOW, job_duration=timedelta(minutes=10)
    )
    assert Counter(p.at - NOW for p in busy)[timedelta(0)] == 2


# ----------------------------------------------------------------------------- approvals


def test_revocation_needs_a_second_person_by_default() -> None:
    policy = Policy(default=Rule("default", approvers=("alice", "bob", "sre")))
    revoke = Request(Action.REVOKE, cert(left=40), requester="alice")
    d = decide(revoke, Facts(), policy, NOW)
    assert d.verdict == Verdict.NEEDS_APPROVAL
    assert d.requires_second_person and d.approvers == ("alice", "bob", "sre")
    assert check(d, "approval") == (
        False,
        "needs approval by alice, bob, sre, a second person (not the requester)",
    )
    assert "renewal_due" not in [c.name for c in d.reasons]  # revocation is never "not due"
    assert can_approve(d, "alice", "alice") == (
        False,
        "alice requested this revoke: a second person must approve",
    )
    assert can_approve(d, "alice", "bob") == (True, "bob may approve")
    assert can_approve(d, "alice", Principal("carol", frozenset({"sre"}))) == (
        True,
        "carol may approve (as member of sre)",
    )
    assert can_approve(d, Principal("alice"), Principal("alice", frozenset({"sre"})))[0] is False
    assert can_approve(d, "alice", "mallory") == (
        False,
        "mallory is not among the approvers (alice, bob, sre)",
    )
    # The built-in default lists no approvers: nobody can approve until the policy names some.
    bare = decide(revoke, Facts(), DEFAULT_POLICY, NOW)
    assert bare.verdict == Verdict.NEEDS_APPROVAL
    assert can_approve(bare, "alice", "bob") == (False, "rule 'default' lists no approvers")
    # A rule may waive the second person.
    solo = Policy(default=Rule("default", approvers=("alice",), second_person=frozenset()))
    assert can_approve(decide(revoke, Facts(), solo, NOW), "alice", "alice")[0]
    # Nothing to approve on a decision that does not ask for it.
    allowed = decide(renew(cert(left=10)), Facts(), policy, NOW)
    assert can_approve(allowed, "alice", "bob") == (
        False,
        "nothing to approve: the decision is allow",
    )


# ----------------------------------------------------------------------------- deny and dry-run


def test_deny_rules_and_disallowed_choices() -> None:
    policy = only(
        Rule(
            "strict",
            actions={Action.RENEW: Mode.AUTO, Action.REDEPLOY: Mode.AUTO},  # revoke not listed
            issuers=("le", "local-ca"),
            key_types=("EC-256", "RSA-3072"),
            max_validity_days=90,
        )
    )
    due = cert(left=10)
    revoke = decide(Request(Action.REVOKE, due, requester="bob"), Facts(), policy, NOW)
    assert (revoke.verdict, revoke.wait_until) == (Verdict.DENY, None)
    assert check(revoke, "mode") == (False, "revoke is deny under 'strict'")
    assert decide(renew(due, issuer="evil-ca"), Facts(), policy, NOW).verdict == Verdict.DENY
    bad_key = decide(renew(due, key_type="RSA-2048"), Facts(), policy, NOW)
    assert bad_key.verdict == Verdict.DENY
    assert check(bad_key, "key_type") == (False, "RSA-2048 is not allowed (EC-256, RSA-3072)")
    long = decide(renew(due, validity_days=397), Facts(), policy, NOW)
    assert check(long, "validity") == (False, "397 days requested, at most 90 allowed")
    assert long.verdict == Verdict.DENY
    # Deny beats not-due: a request that could never run says so, not "later".
    assert decide(renew(cert(left=80), issuer="evil-ca"), Facts(), policy, NOW).verdict == (
        Verdict.DENY
    )
    ok = decide(renew(due), Facts(), policy, NOW)
    assert (ok.verdict, ok.issuer, ok.key_type, ok.validity_days) == (
        Verdict.ALLOW,
        "le",
        "EC-256",
        90,
    )
    # A weak current key is replaced by the rule's first allowed type.
    weak = decide(renew(cert(left=10, key=("RSA", 1024))), Facts(), policy, NOW)
    assert weak.key_type == "EC-256"
    assert check(weak, "key_type")[1] == "current RSA-1024 is not allowed: the new key is EC-256"


def test_dry_run_reports_without_acting() -> None:
    policy = Policy(
        rules=(Rule("dry", actions={a: Mode.DRY_RUN for a in Action}, issuers=("ca",)),),
        issuers={"ca": IssuerBudget(new_orders=RateLimit(1, timedelta(hours=1)))},
    )
    assert decide(renew(cert(left=10)), Facts(), policy, NOW).verdict == Verdict.DRY_RUN
    assert decide(renew(cert(left=80)), Facts(), policy, NOW).verdict == Verdict.NOT_DUE
    forced = decide(renew(cert(left=80), force=True), Facts(), policy, NOW)
    assert forced.verdict == Verdict.DRY_RUN
    assert check(forced, "renewal_due") == (True, "forced by the requester")
    # Planned dry runs use no budget: both land now.
    plan = plan_renewals([cert("a.x", left=5), cert("b.x", left=6)], policy, Facts(), NOW)
    assert [(p.verdict, p.at) for p in plan] == [(Verdict.DRY_RUN, NOW), (Verdict.DRY_RUN, NOW)]


def test_redeploy_has_no_due_check_or_rate_budget() -> None:
    d = decide(Request(Action.REDEPLOY, cert(left=80)), Facts(), le_policy(), NOW)
    assert d.verdict == Verdict.ALLOW
    names = [c.name for c in d.reasons]
    assert names == ["rule", "mode", "approval", "maintenance_window", "concurrency"]
    assert d.to_dict()["verdict"] == "allow"


# ----------------------------------------------------------------------------- configuration


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_example_policy_loads_and_reads_as_documented() -> None:
    policy = load_policy(EXAMPLES / "policy.yaml")
    assert [r.name for r in policy.rules] == [
        "payments-prod",
        "prod-web",
        "internal-mtls",
        "legacy-appliances",
        "lab",
    ]
    web = policy.rules[1]
    assert web.concurrency == 5 and web.issuers == ("letsencrypt",)
    assert web.stagger_jitter == timedelta(minutes=30)  # from defaults
    assert web.approvers == ("U01SRELEAD", "S02PLATFORM")
    assert web.maintenance_windows[1].tz == ZoneInfo("Europe/Berlin")
    mtls = policy.rules[2]
    assert (mtls.renew_before_fraction, mtls.max_validity_days) == (0.5, 7)
    assert policy.rules[3].mode(Action.REVOKE) == Mode.DENY
    assert policy.rules[3].mode(Action.RENEW) == Mode.DRY_RUN
    assert policy.rules[4].second_person == frozenset()
    assert policy.rules[4].mode(Action.RENEW) == Mode.AUTO  # merged from defaults
    le = policy.issuers["letsencrypt"]
    assert le.duplicate_certificates == RateLimit(5, timedelta(days=7))
    assert le.new_orders == RateLimit(300, timedelta(hours=3))
    assert policy.default.renew_before_days is None  # 0 switches it off


def test_config_inherits_defaults_and_reads_yaml_12_scalars(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            """
defaults:
  renew_before_days: 20
  approvers: sre
  maintenance_windows:
    - {days: "sat,sun", start: 12:30, end: 24:00}
rules:
  - name: quick
    match: {names: "*.dev.example"}
    renew_before_fraction: 50%
    stagger_jitter: 5
    actions: {revoke: deny}
  - name: days-off
    renew_before_days: 0
    maintenance_windows: []
""",
        )
    )
    quick, off = policy.rules
    assert quick.match.names == ("*.dev.example",)
    assert quick.renew_before_fraction == 0.5 and quick.renew_before_days == 20
    assert quick.stagger_jitter == timedelta(minutes=5)  # a bare number is minutes
    assert quick.approvers == ("sre",)
    assert quick.mode(Action.REVOKE) == Mode.DENY and quick.mode(Action.RENEW) == Mode.AUTO
    window = quick.maintenance_windows[0]
    assert (window.start, window.end) == (time(12, 30), time(0, 0))  # 24:00 is midnight
    assert window.days == frozenset({SAT, SUN})
    assert off.renew_before_days is None and off.maintenance_windows == ()
    assert policy.default.renew_before_fraction == pytest.approx(1 / 3)


def test_policy_section_of_a_config_file() -> None:
    policy = policy_from_mapping(
        {"store": {"url": "sqlite:///x.db"}, "policy": {"rules": [{"name": "a"}]}}, "c.yaml"
    )
    assert [r.name for r in policy.rules] == ["a"]
    with pytest.raises(ConfigError) as e:
        policy_from_mapping({"policy": {"rules": [{"name": "a", "concurrency": 0}]}}, "c.yaml")
    assert str(e.value) == (
        "c.yaml: policy.rules[0].concurrency: Input should be greater than or equal to 1 (got 0)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - name: a\n  - name: b\n  - name: c\n    actions: {revoke: yes}\n",
            "rules[2].actions.revoke: expected one of auto, approve, deny, dry-run (got 'yes')",
        ),
        ("rules:\n  - name: a\n    colour: red\n", "rules[0].colour: unknown field (got 'red')"),
        ("rules:\n  - match: {names: x}\n", "rules[0].name: required field is missing"),
        (
            "issuers:\n  le:\n    rate_limits:\n      new_orders: {limit: 300, per: soon}\n",
            "issuers.le.rate_limits.new_orders.per: expected a duration such as 3h or 7d "
            "(got 'soon')",
        ),
        (
            "issuers:\n  le:\n    rate_limits:\n"
            "      duplicate_certificates: {limit: 0, per: 7d}\n",
            "issuers.le.rate_limits.duplicate_certificates.limit: Input should be greater than "
            "or equal to 1 (got 0)",
        ),
        (
            "rules:\n  - name: a\n    maintenance_windows:\n"
            "      - {days: [sat], start: '02:00', end: '05:00', tz: Mars/Olympus}\n",
            "rules[0].maintenance_windows[0].tz: unknown time zone: expected an IANA name such "
            "as Europe/Berlin (got 'Mars/Olympus')",
        ),
        (
            "defaults:\n  maintenance_windows:\n      - {days: [caturday], start: '02:00', "
            "end: '05:00'}\n",
            "defaults.maintenance_windows[0].days: expected weekdays such as [sat, sun], mon-fri "
            "or daily (got ['caturday'])",
        ),
        (
            "defaults:\n  maintenance_windows:\n"
            "      - {days: sat, start: '25:00', end: '05:00'}\n",
            'defaults.maintenance_windows[0].start: expected a time between "00:00" and '
            "\"24:00\" (got '25:00')",
        ),
        (
            "defaults:\n  key_types: [EC-256, RSA-1024]\n",
            "defaults.key_types: RSA keys under 2048 bits are weak; expected RSA-2048 or more "
            "(got ['EC-256', 'RSA-1024'])",
        ),
        (
            "rules:\n  - name: a\n    renew_before_fraction: 1.5\n",
            "rules[0].renew_before_fraction: expected a fraction of the lifetime between 0 and "
            "1, such as 1/3 or 33% (got 1.5)",
        ),
        (
            "rules:\n  - name: a\n  - name: a\n",
            "rules[1].name: duplicate rule name (got 'a')",
        ),
        (
            "rules:\n  - name: default\n",
            "rules[0].name: 'default' names the built-in last rule (got 'default')",
        ),
        (
            "rules:\n  - name: a\n    renew_before_fraction: 0\n",
            "rules[0].renew_before_fraction: renew_before_fraction and renew_before_days are "
            "both 0: nothing would trigger a renewal (got 0)",
        ),
        ("rulez: []\n", "rulez: unknown field (got [])"),
        ("- a\n- b\n", "expected a mapping at the top level (got 'list')"),
        (
            "rules: [\n",
            "line 2, column 1: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        (
            "rules:\n  - name: a\n    requires_second_person: maybe\n",
            "rules[0].requires_second_person: expected true, false or a list of actions (renew, "
            "redeploy, revoke) (got 'maybe')",
        ),
    ],
)
def test_config_errors_are_one_line_with_file_field_and_value(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_policy(path)
    assert str(e.value) == f"{path}: {message}"
    assert "\n" not in str(e.value)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_policy(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- policy explain

CLI_NOW = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)

EXPLAIN_POLICY = """
issuers:
  le: {rate_limits: {duplicate_certificates: {limit: 5, per: 7d}}}
rules:
  - name: files
    match: {sources: [file]}
    actions: {renew: dry-run}
  - name: prod-web
    match: {names: ["*.example.com"], environments: [prod]}
    issuers: [le]
    maintenance_windows:
      - {days: mon-fri, start: "22:00", end: "06:00"}
"""


def leaf_and_chain(ca: LocalCA, name: str, left: float, lifetime: float) -> tuple[CertInfo, ...]:
    start = CLI_NOW - timedelta(days=lifetime - left)
    issued = ca.issue([name], CLI_NOW, not_before=start, lifetime=timedelta(days=lifetime))
    parsed = parse_pem_bundle(issued.chain_pem(), "test")
    return tuple(p.info for p in parsed if isinstance(p, ParsedCert))


@pytest.fixture
def inventory_url(tmp_path: Path) -> str:
    ca = LocalCA("Policy Test", CLI_NOW - timedelta(days=365))
    url = f"sqlite:///{tmp_path / 'inventory.db'}"
    shop = leaf_and_chain(ca, "shop.example.com", left=10, lifetime=90)
    api = leaf_and_chain(ca, "api.example.com", left=80, lifetime=90)
    observations = [
        Observation(
            source="tls",
            ref="tls://shop.example.com:443#shop.example.com",
            target="shop.example.com:443",
            observed_at=CLI_NOW,
            leaf=shop[0],
            chain=shop,
            labels={"env": "prod"},
        ),
        Observation(
            source="file",
            ref="file:///etc/ssl/shop.pem#0",
            target="file:/etc/ssl/shop.pem",
            observed_at=CLI_NOW,
            leaf=shop[0],
            chain=shop,
        ),
        Observation(
            source="tls",
            ref="tls://api.example.com:443#api.example.com",
            target="api.example.com:443",
            observed_at=CLI_NOW,
            leaf=api[0],
            chain=api,
            labels={"env": "prod"},
        ),
    ]
    with Inventory.open(url) as inventory:
        inventory.record(observations, now=CLI_NOW)
    return url


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", *args, "--at", CLI_NOW.isoformat()])
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_explain_json_for_every_location_holding_the_name(
    tmp_path: Path, inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, EXPLAIN_POLICY)
    code, out, _ = explain(
        capsys, "shop.example.com", "--db", inventory_url, "--policy", str(policy), "--format",
        "json",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert doc["policy"] == str(policy) and doc["in_inventory"] is True
    assert doc["at"] == "2025-06-04T12:00:00Z" and doc["action"] == "renew"
    by_ref = {r["ref"]: r for r in doc["results"]}
    assert set(by_ref) == {
        "tls://shop.example.com:443#shop.example.com",
        "file:///etc/ssl/shop.pem#0",
    }
    served = by_ref["tls://shop.example.com:443#shop.example.com"]["decision"]
    assert served["rule"] == "prod-web" and served["verdict"] == "wait"
    assert served["wait_until"] == "2025-06-04T22:00:00Z"  # Wednesday's window
    assert served["issuer"] == "le"
    assert served["skipped_rules"] == [{"rule": "files", "why": "source 'tls' is not one of file"}]
    checks = {c["check"]: c for c in served["checks"]}
    assert checks["renewal_due"]["passed"] is True
    assert checks["maintenance_window"]["passed"] is False
    assert checks["rate_budget.duplicate_certificates"]["explanation"].startswith("0 of 5 per")
    stored = by_ref["file:///etc/ssl/shop.pem#0"]
    assert stored["decision"]["rule"] == "files" and stored["decision"]["verdict"] == "dry_run"
    assert stored["rule"]["actions"]["renew"] == "dry-run"
    assert stored["certificate"]["sans"] == ["shop.example.com"]


def test_policy_explain_table_by_fingerprint_and_action(
    tmp_path: Path, inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Inventory.open(inventory_url) as inventory:
        item = inventory.item("tls://api.example.com:443#api.example.com")
    assert item is not None and item.fingerprint_sha256 is not None
    policy = write(tmp_path, EXPLAIN_POLICY)
    args = ("--db", inventory_url, "--policy", str(policy))
    code, out, _ = explain(capsys, item.fingerprint_sha256[:12], *args)
    assert code == 0
    assert "tls://api.example.com:443#api.example.com" in out
    # Due at 30 days left, Thursday 24 July 12:00, and then the next window opens at 22:00.
    assert "renew: not_due (rule prod-web) until 2025-07-24T22:00:00Z" in out
    assert f"policy: {policy}; as of 2025-06-04T12:00:00Z" in out
    assert "renewal_due" in out and "holds" in out
    code, out, _ = explain(capsys, "api.example.com", "--action", "revoke", *args)
    assert code == 0
    assert "revoke: needs_approval (rule prod-web)" in out
    assert "second person" in out


def test_policy_explain_finds_policy_yaml_next_to_the_config(
    tmp_path: Path, inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, f"store:\n  url: {inventory_url}\n", "certpilot.yaml")
    write(tmp_path, EXPLAIN_POLICY)
    code, out, _ = explain(capsys, "shop.example.com", "--config", str(config), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["policy"] == str(tmp_path / "policy.yaml")
    assert {r["decision"]["rule"] for r in doc["results"]} == {"prod-web", "files"}
    # Without a policy file, the built-in defaults apply.
    (tmp_path / "policy.yaml").unlink()
    code, out, _ = explain(capsys, "shop.example.com", "--config", str(config), "--format", "json")
    doc = json.loads(out)
    assert doc["policy"] == "built-in defaults"
    assert {r["decision"]["verdict"] for r in doc["results"]} == {"allow"}


def test_policy_explain_unknown_name_and_bad_policy(
    tmp_path: Path, inventory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, EXPLAIN_POLICY)
    code, out, _ = explain(
        capsys, "www.example.com", "--db", inventory_url, "--policy", str(policy), "--format",
        "json",
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 0 and doc["in_inventory"] is False
    assert doc["results"][0]["decision"]["skipped_rules"][1] == {
        "rule": "prod-web",
        "why": "no env label",
    }
    bad = write(tmp_path, "rules:\n  - name: a\n    actions: {revoke: yes}\n", "bad.yaml")
    code, out, err = explain(
        capsys, "shop.example.com", "--db", inventory_url, "--policy", str(bad)
    )
    assert code == 2 and out == ""
    assert err == (
        f"certpilot: error: {bad}: rules[0].actions.revoke: expected one of auto, approve, "
        "deny, dry-run (got 'yes')\n"
    )
