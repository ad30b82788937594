"""remediator/service.py: which targets hold a certificate, what the policy lets happen to it,
and the planner's jobs against a real job store and audit log (temporary SQLite).

Issuer, targets and prober are fakes in the manner of tests/unit/test_jobs.py (a target serves
what it was last deployed with; the prober reports exactly that), except for the one real
:class:`~remediator.targets.files.FilesTarget` whose file locations map scanned files to it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from certpilot.domain.audit import AuditEntry
from certpilot.domain.clock import FixedClock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import (
    DeployTarget,
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.x509 import CertInfo, ari_certificate_id
from certpilot.localca import LocalCA
from certpilot.store import AuditLog, JobStore, NewJob
from remediator.executor import Executor
from remediator.jobs import renew_key
from remediator.policy import (
    DEFAULT_POLICY,
    Action,
    CertFacts,
    MaintenanceWindow,
    Mode,
    OrderRecord,
    Policy,
    Rule,
    Verdict,
)
from remediator.policy_config import load_policy
from remediator.service import ORDER_HISTORY, Remediation, target_locations
from remediator.targets.files import FilesTarget, FilesTargetConfig
from tests.support.remediation_fakes import ServingProber, ServingTarget, leaf_info

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)  # a Sunday
WWW = "www.example.test"
API = "api.example.test"


def ref_of(host: str) -> str:
    return EndpointTarget(host, 443).ref


# ----------------------------------------------------------------------------------- fakes


class BudgetedIssuer:
    """A CA that enforces ``limit`` new orders in any trailing ``per`` with a 429, like Let's
    Encrypt does; ``refused`` records every order it had to refuse."""

    def __init__(
        self, name: str, ca: LocalCA, clock: FixedClock, limit: int, per: timedelta
    ) -> None:
        self.name = name
        self.ca = ca
        self.clock = clock
        self.limit = limit
        self.per = per
        self.orders: list[datetime] = []
        self.refused: list[datetime] = []

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        now = self.clock.now()
        recent = [t for t in self.orders if now - self.per < t <= now]
        if len(recent) >= self.limit:
            self.refused.append(now)
            raise IssuerError(self.name, "429 rateLimited: too many new orders", retry_after=60)
        self.orders.append(now)
        i = self.ca.issue(list(request.names), now)
        info = leaf_info(i.chain_pem())
        return IssuedCertificate(
            chain_pem=i.chain_pem(),
            key_pem=i.key_pem(),
            serial=info.serial,
            fingerprint_sha256=info.fingerprint_sha256,
            issuer_name=self.name,
        )

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        raise AssertionError("nothing is revoked here")

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None


def item(
    ref: str,
    name: str,
    *,
    days_left: float = 10.0,
    lifetime: float = 90.0,
    at: datetime = T0,
    source: str = "tls",
    **labels: str,
) -> InventoryItem:
    """An inventory row: ``name``'s certificate at ``ref``, ``days_left`` of ``lifetime``."""
    not_after = at + timedelta(days=days_left)
    fp = hashlib.sha256(f"{name}|{not_after.isoformat()}".encode()).hexdigest()
    return InventoryItem(
        ref=ref,
        source=source,
        target=ref,
        fingerprint_sha256=fp,
        serial=fp[:16],
        subject=f"CN={name}",
        subject_cn=name,
        issuer="CN=Some CA",
        issuer_cn="Some CA",
        sans=(name,),
        not_before=not_after - timedelta(days=lifetime),
        not_after=not_after,
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=(),
        error=None,
        first_seen=at - timedelta(days=1),
        last_scanned=at,
        labels=labels,
    )


def facts_of(host: str, *, days_left: float = 10.0) -> CertFacts:
    return CertFacts.from_item(item(ref_of(host), host, days_left=days_left))


@dataclass
class World:
    clock: FixedClock
    jobs: JobStore
    audit: AuditLog
    ca: LocalCA
    serving: dict[str, CertInfo]
    canary: ServingTarget
    main: ServingTarget

    def executor(self, targets: Sequence[DeployTarget] = (), **issuers: object) -> Executor:
        return Executor(
            self.jobs,
            self.audit,
            issuers,  # type: ignore[arg-type]
            {t.name: t for t in targets} or {"canary": self.canary, "main": self.main},
            ServingProber(self.serving, self.clock),
            self.clock,
            verify_timeout=1.0,
            verify_hold=0.0,
            verify_interval=0.0,
            instance="test-host",
            rng=random.Random(3),
        )

    def remediation(
        self,
        policy: Policy = DEFAULT_POLICY,
        targets: Sequence[DeployTarget] | None = None,
        *,
        target_issuers: Mapping[str, str] | None = None,
        default_issuer: str | None = "local",
        executor: Executor | None = None,
    ) -> Remediation:
        ts = list(targets) if targets is not None else [self.canary, self.main]
        return Remediation(
            executor or self.executor(ts),
            policy,
            ts,
            target_issuers=target_issuers,
            default_issuer=default_issuer,
        )

    def decisions(self) -> list[AuditEntry]:
        return [e for e in self.audit.entries() if e.action == "policy_decision"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(T0)
    serving: dict[str, CertInfo] = {}
    url = f"sqlite:///{tmp_path}/db"
    with JobStore.open(url) as jobs, AuditLog.open(url) as audit:
        yield World(
            clock,
            jobs,
            audit,
            LocalCA("Test service CA", T0 - timedelta(days=365)),
            serving,
            ServingTarget("canary", (WWW,), serving),
            ServingTarget("main", (WWW, API), serving),
        )


def rule(name: str = "r", **kw: object) -> Policy:
    """A policy whose only rule (matching everything) is ``name`` with ``kw``."""
    return Policy(rules=(Rule(name=name, **kw),))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ targets_for


def test_targets_for_lists_the_holders_canary_first(world: World, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    files = FilesTarget(
        "files",
        FilesTargetConfig(
            cert_path=site / "cert.pem", key_path=site / "key.pem", fullchain_path=site / "full.pem"
        ),
    )
    other = ServingTarget("other", ("other.test",))
    cert_ref = f"file://{site / 'cert.pem'}#0"
    full_ref = f"file://{site / 'full.pem'}#0"
    assert target_locations(files) == frozenset({cert_ref, full_ref})
    assert target_locations(world.main) == frozenset({ref_of(WWW), ref_of(API)})

    r = world.remediation(targets=[world.canary, files, world.main, other])
    assert r.targets_for([ref_of(WWW)]) == ("canary", "main")
    assert r.targets_for([ref_of(API), ref_of(WWW)]) == ("canary", "main")  # config order
    assert r.targets_for([ref_of(API)]) == ("main",)
    assert r.targets_for([cert_ref]) == ("files",)
    assert r.targets_for([full_ref]) == ("files",)
    assert r.targets_for([ref_of(WWW), cert_ref]) == ("canary", "files", "main")
    # The intermediate in the same file, another file, nothing: no holder.
    assert r.targets_for([f"file://{site / 'cert.pem'}#1"]) == ()
    assert r.targets_for([f"file://{site / 'key.pem'}#0"]) == ()
    assert r.targets_for([ref_of("nowhere.test")]) == ()
    assert r.targets_for([]) == ()
    # The first configured holder is the canary, whichever it is.
    flipped = world.remediation(targets=[world.main, world.canary])
    assert flipped.targets_for([ref_of(WWW)]) == ("main", "canary")


# ---------------------------------------------------------------------------------- request


async def test_a_due_renewal_under_auto_becomes_an_approved_job(world: World) -> None:
    r = world.remediation()
    cert = facts_of(WWW, days_left=10)
    res = await r.request(Action.RENEW, cert, requester="bob")
    assert res.created and res.decision is not None
    assert res.decision.verdict == Verdict.ALLOW and res.decision.rule == "default"
    job = res.job
    assert job is not None
    assert (job.state, job.action, job.requester, job.rule) == (
        "approved",
        "renew",
        "bob",
        "default",
    )
    assert job.targets == ("canary", "main") and job.issuer == "local"
    assert job.names == (WWW,) and job.ref == ref_of(WWW) and job.fingerprint == cert.fingerprint
    assert job.next_attempt_at is None
    assert cert.fingerprint is not None and cert.not_after is not None
    assert job.key == renew_key(cert.fingerprint, cert.not_after)
    assert res.note == f"job {job.id}: approved"
    [created] = [e for e in world.audit.entries() if e.action == "renew"]
    assert (created.actor, created.result) == ("bob", "allowed")
    assert world.decisions() == []  # an allowed request is audited by its job, not twice

    again = await r.request(Action.RENEW, cert, requester="carol")
    assert not again.created and again.job is not None and again.job.id == job.id
    assert again.decision is None and "exists" in again.note
    assert len(world.jobs.list()) == 1


async def test_approve_mode_waits_for_the_approvers(world: World) -> None:
    policy = rule("web-approve", actions={Action.RENEW: Mode.APPROVE}, approvers=("alice", "S0SRE"))
    res = await world.remediation(policy).request(
        Action.RENEW, facts_of(WWW, days_left=5), requester="bob"
    )
    assert res.decision is not None and res.decision.verdict == Verdict.NEEDS_APPROVAL
    assert res.job is not None and res.created
    assert res.job.state == "pending_approval" and res.job.rule == "web-approve"
    assert res.job.approvers == ("alice", "S0SRE") and not res.job.second_person
    [created] = [e for e in world.audit.entries() if e.action == "renew"]
    assert created.result == "pending"
    assert world.jobs.due(T0 + timedelta(days=1)) == []  # nothing runs before approval


@pytest.mark.parametrize(
    ("policy", "days_left", "verdict", "result"),
    [
        (rule("legacy", actions={Action.RENEW: Mode.DRY_RUN}), 5.0, "dry_run", "dry_run"),
        (rule("freeze", actions={Action.RENEW: Mode.DENY}), 5.0, "deny", "denied"),
        (rule("fresh"), 80.0, "not_due", "not_due"),  # 80 of 90 days left: not due
    ],
)
async def test_refusals_make_no_job_and_are_audited(
    world: World, policy: Policy, days_left: float, verdict: str, result: str
) -> None:
    cert = facts_of(WWW, days_left=days_left)
    res = await world.remediation(policy).request(Action.RENEW, cert, requester="bob")
    assert res.job is None and not res.created
    assert res.decision is not None and res.decision.verdict.value == verdict
    assert res.note == res.decision.summary()
    assert world.jobs.list() == []
    [entry] = world.decisions()
    assert (entry.actor, entry.result, entry.rule, entry.subject) == (
        "bob",
        result,
        policy.rules[0].name,
        WWW,
    )
    assert entry.before == cert.fingerprint
    assert entry.detail["action"] == "renew" and entry.detail["verdict"] == verdict
    assert entry.detail["why"]
    assert world.audit.verify().ok


async def test_outside_a_maintenance_window_the_job_waits_for_it(world: World) -> None:
    monday_night = MaintenanceWindow(frozenset({0}), time(2, 0), time(4, 0))
    policy = rule("windowed", maintenance_windows=(monday_night,))
    res = await world.remediation(policy).request(
        Action.RENEW, facts_of(WWW, days_left=5), requester="schedule"
    )
    opens = datetime(2025, 6, 2, 2, 0, tzinfo=UTC)  # the next Monday 02:00 after T0
    assert res.created and res.job is not None
    assert res.job.state == "approved" and res.job.next_attempt_at == opens
    assert res.note.endswith(f"starts {opens.isoformat()}")
    assert world.jobs.due(opens - timedelta(seconds=1)) == []
    assert [j.id for j in world.jobs.due(opens)] == [res.job.id]


async def test_not_before_and_a_window_take_the_later(world: World) -> None:
    monday_night = MaintenanceWindow(frozenset({0}), time(2, 0), time(4, 0))
    policy = rule("windowed", maintenance_windows=(monday_night,))
    later = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)  # inside the window, after it opens
    res = await world.remediation(policy).request(
        Action.RENEW, facts_of(WWW, days_left=5), requester="schedule", not_before=later
    )
    assert res.job is not None and res.job.next_attempt_at == later


@pytest.mark.parametrize(
    ("rule_issuers", "target_issuers", "default", "expected"),
    [
        (("acme",), {"canary": "bao", "main": "bao"}, "local", "acme"),  # the policy first
        ((), {"main": "bao"}, "local", "bao"),  # then the first holder that names one
        ((), {"canary": "vault", "main": "bao"}, "local", "vault"),
        ((), {"other": "bao"}, "local", "local"),  # then the default
    ],
)
async def test_issuer_fallback_order(
    world: World,
    rule_issuers: tuple[str, ...],
    target_issuers: dict[str, str],
    default: str,
    expected: str,
) -> None:
    r = world.remediation(
        rule("r", issuers=rule_issuers), target_issuers=target_issuers, default_issuer=default
    )
    res = await r.request(Action.RENEW, facts_of(WWW), requester="bob")
    assert res.job is not None and res.job.issuer == expected
    assert r.issuer_for(("canary", "main"), "explicit") == "explicit"


async def test_an_issuer_asked_for_must_be_one_the_rule_allows(world: World) -> None:
    r = world.remediation(rule("r", issuers=("acme", "bao")))
    ok = await r.request(Action.RENEW, facts_of(WWW), requester="bob", issuer="bao")
    assert ok.job is not None and ok.job.issuer == "bao"
    refused = await r.request(Action.RENEW, facts_of(API), requester="bob", issuer="vault")
    assert refused.job is None and refused.decision is not None
    assert refused.decision.verdict == Verdict.DENY
    assert [e.result for e in world.decisions()] == ["denied"]


async def test_without_any_issuer_the_request_is_refused(world: World) -> None:
    r = world.remediation(default_issuer=None)
    with pytest.raises(ValueError, match="needs an issuer"):
        await r.request(Action.RENEW, facts_of(WWW), requester="bob")
    assert world.jobs.list() == []


async def test_a_certificate_no_target_holds_gets_no_job(world: World) -> None:
    res = await world.remediation().request(
        Action.RENEW, facts_of("nowhere.test", days_left=3), requester="bob"
    )
    assert res.job is None and not res.created
    assert res.decision is not None and res.decision.verdict == Verdict.ALLOW
    assert "remediation.targets" in res.note and ref_of("nowhere.test") in res.note
    assert world.jobs.list() == []


async def test_a_certificate_with_an_open_job_gets_no_second(world: World) -> None:
    r = world.remediation()
    cert = facts_of(WWW, days_left=5)
    first = await r.request(Action.RENEW, cert, requester="schedule")
    other_key = await r.request(Action.RENEW, cert, requester="alertmanager", key="alert:x:1")
    assert first.job is not None and other_key.job is not None
    assert not other_key.created and other_key.job.id == first.job.id
    assert "already open" in other_key.note
    assert len(world.jobs.list()) == 1


# ------------------------------------------------------------------------------------- plan


FLEET = 100
BUDGET = 10
PER = timedelta(hours=1)


def _max_in_any_window(starts: Sequence[datetime], per: timedelta) -> int:
    """The most events in any half-open window ``(end - per, end]`` (a CA's trailing count);
    only windows ending at an event can hold a new maximum."""
    ordered = sorted(starts)
    return max(sum(1 for s in ordered if end - per < s <= end) for end in ordered)


def _max_in_any_window_from(starts: Sequence[datetime], per: timedelta) -> int:
    """The most events in any window ``[start, start + per)``."""
    ordered = sorted(starts)
    return max(sum(1 for s in ordered if start <= s < start + per) for start in ordered)


@pytest.fixture
def fleet_policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "defaults:\n"
        "  issuers: [local]\n"
        "  stagger_jitter: 0m\n"
        "issuers:\n"
        "  local:\n"
        "    rate_limits:\n"
        f"      new_orders: {{limit: {BUDGET}, per: 1h}}\n"
    )
    return load_policy(path)


async def test_a_mass_event_is_worked_off_within_the_budget_without_a_429(
    world: World, fleet_policy: Policy
) -> None:
    # A CA revoked 100 certificates: all due now, 10 new orders per hour allowed.
    hosts = [f"h{i:03d}.fleet.test" for i in range(FLEET)]
    targets = [ServingTarget(f"t{i:03d}", (h,), world.serving) for i, h in enumerate(hosts)]
    items = [
        item(ref_of(h), h, days_left=5 + i / 1440) for i, h in enumerate(reversed(hosts))
    ]  # the last host expires first
    assert fleet_policy.budget("local") is not None
    issuer = BudgetedIssuer("local", world.ca, world.clock, BUDGET, PER)
    executor = world.executor(targets, local=issuer)
    r = world.remediation(fleet_policy, targets, executor=executor)

    planned = await r.plan(items)

    assert len(planned) == FLEET and all(res.created for _, res in planned)
    jobs = world.jobs.list()
    assert len(jobs) == FLEET and {j.state for j in jobs} == {"approved"}
    starts = [j.next_attempt_at or T0 for j in jobs]
    assert _max_in_any_window(starts, PER) == BUDGET
    assert _max_in_any_window_from(starts, PER) == BUDGET
    # ... in as few windows as the budget needs, and the most urgent first.
    assert min(starts) == T0 and max(starts) == T0 + (FLEET // BUDGET - 1) * PER
    expiry = {i.ref: i.not_after or T0 for i in items}
    by_expiry = sorted(jobs, key=lambda j: expiry[j.ref])
    firsts = [j.next_attempt_at or T0 for j in by_expiry]
    assert firsts == sorted(firsts)
    # Planning again (the next scan) finds every certificate busy: nothing new.
    assert await r.plan(items) == []
    assert len(world.jobs.list()) == FLEET

    # Run it the way the service does: whatever is due, as time passes.
    for _ in range(4 * FLEET // BUDGET):
        await executor.run_due()
        world.clock.advance(timedelta(minutes=15))
    assert issuer.refused == []  # never a 429
    assert len(issuer.orders) == FLEET
    assert _max_in_any_window(issuer.orders, PER) <= BUDGET
    assert {j.state for j in world.jobs.list()} == {"done"}


async def test_jobs_queued_by_an_earlier_plan_keep_their_budget_slots(
    world: World, fleet_policy: Policy
) -> None:
    # The next scan finds one more certificate due while the first 30 still wait for their
    # slots: it must queue behind them, not take a slot they were planned into.
    hosts = [f"h{i:03d}.fleet.test" for i in range(31)]
    targets = [ServingTarget(f"t{i:03d}", (h,), world.serving) for i, h in enumerate(hosts)]
    items = [item(ref_of(h), h, days_left=5) for h in hosts]
    r = world.remediation(fleet_policy, targets)
    assert len(await r.plan(items[:30])) == 30
    world.clock.advance(timedelta(minutes=1))
    [(_, res)] = await r.plan(items)
    assert res.created and res.job is not None
    assert res.job.next_attempt_at == T0 + 3 * PER
    starts = [j.next_attempt_at or T0 for j in world.jobs.list()]
    assert _max_in_any_window(starts, PER) == BUDGET
    # A request from a person or an alert queues behind them too.
    extra = facts_of("h999.fleet.test", days_left=5)
    targets.append(ServingTarget("t999", ("h999.fleet.test",), world.serving))
    r2 = world.remediation(fleet_policy, targets)
    asked = await r2.request(Action.RENEW, extra, requester="alertmanager", force=True)
    assert asked.job is not None and asked.job.next_attempt_at == T0 + 3 * PER
    starts = [j.next_attempt_at or T0 for j in world.jobs.list()]
    assert _max_in_any_window(starts, PER) == BUDGET


async def test_the_budget_of_an_issuer_the_rule_leaves_open_is_kept_too(
    world: World, tmp_path: Path
) -> None:
    # No rule names an issuer: the targets' configured (or the default) issuer is used, and
    # its budget holds for the plan and for a request alike.
    path = tmp_path / "policy.yaml"
    path.write_text(
        "defaults:\n  stagger_jitter: 0m\n"
        f"issuers:\n  local:\n    rate_limits:\n      new_orders: {{limit: {BUDGET}, per: 1h}}\n"
    )
    policy = load_policy(path)
    hosts = [f"o{i:03d}.fleet.test" for i in range(31)]
    targets = [ServingTarget(f"t{i:03d}", (h,), world.serving) for i, h in enumerate(hosts)]
    r = world.remediation(policy, targets, default_issuer=None,
                          target_issuers={t.name: "local" for t in targets})  # fmt: skip
    planned = await r.plan([item(ref_of(h), h, days_left=5) for h in hosts[:30]])
    assert len(planned) == 30
    starts = [j.next_attempt_at or T0 for j in world.jobs.list()]
    assert _max_in_any_window(starts, PER) == BUDGET and max(starts) == T0 + 2 * PER
    asked = await r.request(
        Action.RENEW, facts_of(hosts[30], days_left=5), requester="bob", force=True
    )
    assert asked.job is not None and asked.job.next_attempt_at == T0 + 3 * PER


async def test_plan_skips_what_no_target_holds_and_what_is_not_due(world: World) -> None:
    r = world.remediation()
    items = [
        item(ref_of(WWW), WWW, days_left=5),  # due, held by canary and main
        item(ref_of(API), API, days_left=80),  # held by main, not due
        item(ref_of("stray.test"), "stray.test", days_left=1),  # due, held by nobody
    ]
    planned = await r.plan(items)
    assert [(p.names, res.created) for p, res in planned] == [((WWW,), True)]
    [job] = world.jobs.list()
    assert job.requester == "schedule" and job.targets == ("canary", "main")


# ------------------------------------------------------------------------------------ facts


def _job(
    key: str,
    *,
    fingerprint: str,
    rule: str = "r1",
    action: str = "renew",
    issuer: str = "local",
    state: str = "approved",
    next_attempt_at: datetime | None = None,
) -> NewJob:
    return NewJob(
        key=key,
        action=action,
        names=(f"{key}.test", f"WWW.{key}.test."),
        targets=("canary",),
        issuer=issuer,
        fingerprint=fingerprint,
        rule=rule,
        state=state,
        next_attempt_at=next_attempt_at,
    )


def _walk(world: World, new: NewJob, states: Sequence[str], at: datetime) -> None:
    """Create ``new`` at ``at`` and move it through ``states`` at the same moment."""
    job = world.jobs.create(new, now=at).job
    for to in states:
        attempts = job.attempts + 1 if to == "issuing" else job.attempts
        job = world.jobs.transition(job.id, job.state, to, now=at, attempts=attempts)


async def test_facts_count_orders_busy_certificates_and_jobs_in_flight(world: World) -> None:
    day, hour = timedelta(days=1), timedelta(hours=1)
    # Issuing now, ordered a day ago: an order, busy, in flight.
    _walk(world, _job("a", fingerprint="aa"), ["issuing"], T0 - day)
    # Done 8 days ago: too old to count, not busy.
    _walk(world, _job("b", fingerprint="bb"), ["issuing", "deploying", "done"], T0 - 8 * day)
    # Done just inside the 7 days: an order.
    inside = T0 - ORDER_HISTORY + timedelta(minutes=1)
    _walk(world, _job("b2", fingerprint="b2"), ["issuing", "deploying", "done"], inside)
    # Approved a day ago, never attempted: busy, in flight, and it orders as soon as it runs.
    _walk(world, _job("c", fingerprint="cc"), [], T0 - day)
    # Queued for a later budget slot or window: busy, holds its slot, not in flight (yet).
    _walk(world, _job("c2", fingerprint="c2", next_attempt_at=T0 + 2 * hour), [], T0 - hour)
    # Waiting for approval: busy, not in flight; may be approved, so it holds a slot.
    _walk(world, _job("d", fingerprint="dd", rule="r2", state="pending_approval"), [], T0)
    # A redeploy in flight: busy, in flight, but no order (nothing was ordered from a CA).
    _walk(world, _job("e", fingerprint="ee", rule="r2", action="redeploy"), ["deploying"], T0)
    # Failed after an attempt two hours ago: an order (the CA saw it), not busy.
    _walk(world, _job("f", fingerprint="ff"), ["issuing", "failed"], T0 - 2 * hour)
    # Attempted but with no issuer recorded: nothing to count it against.
    _walk(world, _job("g", fingerprint="gg", issuer=""), ["issuing", "failed"], T0)
    # Rolled back after deploying: an order, not busy.
    _walk(world, _job("h", fingerprint="hh"), ["issuing", "deploying", "rolled_back"], T0)
    # Cancelled before it ran: never ordered, not busy.
    _walk(world, _job("i", fingerprint="ii"), ["failed"], T0 - hour)
    # An issuer error sent it back to wait (retry later): counted once, when it ordered.
    _walk(world, _job("j", fingerprint="jj"), ["issuing", "approved"], T0 - 3 * hour)

    facts = await world.remediation().facts(T0)

    assert sorted((o.at, o.issuer, tuple(sorted(o.names))) for o in facts.orders) == sorted(
        [
            (T0 - day, "local", ("a.test", "www.a.test")),
            (inside, "local", ("b2.test", "www.b2.test")),
            (T0, "local", ("c.test", "www.c.test")),
            (T0 + 2 * hour, "local", ("c2.test", "www.c2.test")),
            (T0, "local", ("d.test", "www.d.test")),
            (T0 - 2 * hour, "local", ("f.test", "www.f.test")),
            (T0, "local", ("h.test", "www.h.test")),
            (T0 - 3 * hour, "local", ("j.test", "www.j.test")),
        ]
    )
    assert all(isinstance(o, OrderRecord) for o in facts.orders)
    assert facts.busy == frozenset({"aa", "cc", "c2", "dd", "ee", "jj"})
    assert dict(facts.in_flight) == {"r1": 3, "r2": 1}


class AriIssuer(BudgetedIssuer):
    """A CA that offers ARI: every certificate's window is ``window``; counts the asks."""

    def __init__(self, world: World, window: RenewalWindow) -> None:
        super().__init__("local", world.ca, world.clock, 1000, timedelta(hours=1))
        self.window = window
        self.asked: list[bytes] = []

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        self.asked.append(chain_pem)
        return self.window


def _ari_remediation(world: World, issuer: AriIssuer, hosts: Sequence[str]) -> Remediation:
    pem = world.ca.issue(["any.test"], T0).chain_pem().decode()
    targets = [ServingTarget(f"t-{h}", (h,), world.serving) for h in hosts]
    return Remediation(
        world.executor(targets, local=issuer),
        DEFAULT_POLICY,
        targets,
        default_issuer="local",
        chain_of=lambda fp: pem,
        ari_fetch_limit=2,
    )


async def test_plan_renews_inside_the_cas_ari_window_and_caches_it(world: World) -> None:
    # 60 of 90 days left: not due by lifetime (1/3 = 30 days), but the CA's ARI window has
    # opened (a mass revocation moves it into the past): renew now.
    past = RenewalWindow(T0 - timedelta(hours=2), T0 - timedelta(hours=1),
                         retry_after=T0 + timedelta(hours=1))  # fmt: skip
    issuer = AriIssuer(world, past)
    hosts = ["a.ari.test", "b.ari.test", "c.ari.test"]
    r = _ari_remediation(world, issuer, hosts)
    items = [item(ref_of(h), h, days_left=60) for h in hosts]
    planned = await r.plan(items)
    # At most two fetches per plan: the third certificate waits for the next plan.
    assert len(issuer.asked) == 2 and len(planned) == 2
    assert all("ARI window" in p.why for p, _ in planned)
    planned = await r.plan(items)
    assert len(issuer.asked) == 3 and len(planned) == 1  # cached until Retry-After
    assert len(world.jobs.list()) == 3


async def test_an_ari_window_in_the_future_holds_the_renewal_back(world: World) -> None:
    later = RenewalWindow(T0 + timedelta(days=10), T0 + timedelta(days=11))
    issuer = AriIssuer(world, later)
    r = _ari_remediation(world, issuer, ["d.ari.test"])
    # 25 of 90 days left: due by lifetime, but the CA says "in 10 days": its window wins.
    assert await r.plan([item(ref_of("d.ari.test"), "d.ari.test", days_left=25)]) == []
    assert world.jobs.list() == []


async def test_a_renewal_names_the_certificate_it_replaces(world: World) -> None:
    # RFC 9773 section 5: newOrder carries "replaces" = the old certificate's ARI identifier.
    old = world.ca.issue(["e.ari.test"], T0)
    seen: list[str | None] = []

    class Recording(AriIssuer):
        async def issue(self, request: IssueRequest) -> IssuedCertificate:
            seen.append(request.replaces)
            return await super().issue(request)

    issuer = Recording(world, RenewalWindow(T0, T0 + timedelta(hours=1)))
    target = ServingTarget("t-e", ("e.ari.test",), world.serving)
    r = Remediation(
        world.executor([target], local=issuer),
        DEFAULT_POLICY,
        [target],
        default_issuer="local",
        chain_of=lambda fp: old.chain_pem().decode(),
    )
    res = await r.request(Action.RENEW, facts_of("e.ari.test"), requester="bob", force=True)
    assert res.job is not None and "BEGIN CERTIFICATE" in res.job.subject_chain_pem
    out = await r.executor.run(res.job.id)
    assert out.job.state == "done"
    assert seen == [ari_certificate_id(old.cert)]


async def test_the_budget_is_checked_again_when_a_job_orders(
    world: World, fleet_policy: Policy
) -> None:
    # The plan spaces waves exactly one window apart; the first wave starts 5 minutes late
    # (a busy executor, a restart). Without a check at order time the second wave would put
    # 20 orders in one hour; the gate holds it until the first wave's orders leave the window.
    hosts = [f"w{i:03d}.fleet.test" for i in range(2 * BUDGET)]
    targets = [ServingTarget(f"t{i:03d}", (h,), world.serving) for i, h in enumerate(hosts)]
    issuer = BudgetedIssuer("local", world.ca, world.clock, 10_000, PER)  # the CA never says 429
    executor = world.executor(targets, local=issuer)
    r = world.remediation(fleet_policy, targets, executor=executor)
    assert len(await r.plan([item(ref_of(h), h, days_left=5) for h in hosts])) == 2 * BUDGET
    world.clock.advance(timedelta(minutes=5))
    await executor.run_due()  # wave 1, late
    assert len(issuer.orders) == BUDGET
    world.clock.advance(PER - timedelta(minutes=5))  # wave 2's planned start
    held = await executor.run_due()
    assert len(issuer.orders) == BUDGET and held and not any(o.ran for o in held)
    assert all("rate budget is full" in o.note for o in held)
    world.clock.advance(timedelta(minutes=5))
    await executor.run_due()
    assert len(issuer.orders) == 2 * BUDGET
    assert _max_in_any_window(issuer.orders, PER) <= BUDGET
