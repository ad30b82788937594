"""Remediation jobs: the state machine as data, the store's idempotency and compare-and-set,
retry scheduling, and the executor against fake issuers, targets and probers.

The fakes stand in for a CA, a server and a TLS probe: a target "serves" what it was last
deployed with (or rolled back to) and the prober reports exactly that, so every verification
and rollback path runs in milliseconds. tests/integration/test_executor_nginx.py runs the
same paths against a real nginx, the real local CA and the real TLS prober.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certpilot.domain.audit import AuditEntry
from certpilot.domain.clock import FixedClock
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.remedy import (
    DeployError,
    DeployReceipt,
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.sli import SLIEvent
from certpilot.domain.x509 import CertInfo, parse_pem_bundle
from certpilot.localca import LocalCA
from certpilot.obs import JOB_STATES
from certpilot.store import AuditLog, Inventory, JobConflict, JobNotFound, JobStore, NewJob
from certpilot.store.jobs import STATES, Job
from remediator.executor import ApprovalDenied, Executor, JobStateError, RunOutcome
from remediator.jobs import (
    TERMINAL,
    TRANSITIONS,
    HoldTracker,
    IllegalTransition,
    JobState,
    ResumeAction,
    VerifyStatus,
    alert_key,
    check_transition,
    error_line,
    renew_key,
    resume_plan,
    retry_delay,
)
from remediator.policy import Action, Decision, Mode, Principal, Verdict

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------------- fakes


def _info(chain_pem: bytes) -> CertInfo:
    leaf = parse_pem_bundle(chain_pem)[0]
    assert not isinstance(leaf, Exception)
    return leaf.info


class Server:
    """What every fake endpoint serves right now, by endpoint name."""

    def __init__(self) -> None:
        self.serving: dict[str, CertInfo] = {}
        # Per endpoint: infos to serve on the next probes before the real one (a flapping
        # reload: old and new workers both answering).
        self.flaps: dict[str, list[CertInfo]] = {}


class FakeIssuer:
    def __init__(self, name: str, ca: LocalCA, clock: FixedClock) -> None:
        self.name = name
        self.ca = ca
        self.clock = clock
        self.failures: list[Exception] = []
        self.issued: list[IssuedCertificate] = []
        self.revoked: list[tuple[bytes, RevocationReason]] = []
        self.takes = timedelta(0)

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        if self.failures:
            raise self.failures.pop(0)
        self.clock.advance(self.takes)
        i = self.ca.issue(list(request.names), self.clock.now())
        info = _info(i.chain_pem())
        cert = IssuedCertificate(
            chain_pem=i.chain_pem(),
            key_pem=i.key_pem(),
            serial=info.serial,
            fingerprint_sha256=info.fingerprint_sha256,
            issuer_name=self.name,
        )
        self.issued.append(cert)
        return cert

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.revoked.append((chain_pem, reason))

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None


@dataclass
class FakeTarget:
    """Deploys by changing what its endpoint serves; ``reloads=False`` writes but never
    reloads (verification then times out); ``fail_step`` makes deploy raise."""

    name: str
    server: Server
    log: list[str]
    fail_step: str | None = None
    reloads: bool = True
    rollback_fails: bool = False
    keys_seen: list[bytes] = field(default_factory=list)

    def endpoints(self) -> Sequence[EndpointTarget]:
        return (EndpointTarget(f"{self.name}.test", 443),)

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        self.log.append(f"deploy {self.name}")
        if self.fail_step is not None:
            raise DeployError(self.name, self.fail_step, "exit status 1")
        self.keys_seen.append(cert.key_pem)
        ep = self.endpoints()[0].name
        previous = self.server.serving.get(ep)
        if self.reloads:
            self.server.serving[ep] = _info(cert.chain_pem)
        return DeployReceipt(
            self.name, _info(cert.chain_pem).serial, {"prev": previous.serial if previous else ""}
        )

    async def rollback(self, receipt: DeployReceipt) -> None:
        self.log.append(f"rollback {self.name}")
        if self.rollback_fails:
            raise DeployError(self.name, "rollback", "previous version is missing")
        ep = self.endpoints()[0].name
        self.server.serving[ep] = self.server.serving["old:" + ep]


class FakeProber:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.probes = 0

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]:
        self.probes += 1
        out = []
        for t in targets:
            flaps = self.server.flaps.get(t.name)
            leaf = flaps.pop(0) if flaps else self.server.serving.get(t.name)
            out.append(
                Observation(source="tls", ref=t.ref, target=t.name, observed_at=T0, leaf=leaf)
            )
        return out


@dataclass
class World:
    clock: FixedClock
    ca: LocalCA
    server: Server
    issuer: FakeIssuer
    targets: dict[str, FakeTarget]
    log: list[str]
    jobs: JobStore
    audit: AuditLog
    sli: list[SLIEvent]
    url: str
    old: dict[str, CertInfo]

    def executor(self, **kw: object) -> Executor:
        options: dict[str, object] = {
            "verify_timeout": 0.5,
            "verify_hold": 0.05,
            "verify_interval": 0.005,
            "max_attempts": 3,
            "backoff_base": 2.0,
            "backoff_cap": 60.0,
            "instance": "test-host",
            "rng": random.Random(7),
            "sli_sink": self.sli.extend,
        }
        options.update(kw)
        return Executor(
            self.jobs,
            self.audit,
            {"local": self.issuer},
            self.targets,
            FakeProber(self.server),
            self.clock,
            **options,  # type: ignore[arg-type]
        )

    def add_target(self, name: str, **kw: object) -> FakeTarget:
        t = FakeTarget(name, self.server, self.log, **kw)  # type: ignore[arg-type]
        self.targets[name] = t
        ep = t.endpoints()[0].name
        old = self.ca.issue([f"{name}.test"], self.clock.now() - timedelta(days=80))
        info = _info(old.chain_pem())
        self.server.serving[ep] = self.server.serving["old:" + ep] = info
        self.old[name] = info
        return t

    def serves(self, target: str) -> str:
        return self.server.serving[f"{target}.test:443"].serial

    def entries(self) -> list[AuditEntry]:
        return self.audit.entries()


@pytest.fixture
def world(store_url: str) -> Iterator[World]:
    """Every job test runs on a SQLite file and on PostgreSQL."""
    clock = FixedClock(T0)
    ca = LocalCA("Test jobs CA", T0 - timedelta(days=100))
    url = store_url
    server = Server()
    with JobStore.open(url) as jobs, AuditLog.open(url) as audit:
        yield World(
            clock,
            ca,
            server,
            FakeIssuer("local", ca, clock),
            {},
            [],
            jobs,
            audit,
            [],
            url,
            {},
        )


def renew_job(world: World, targets: Sequence[str], key: str = "renew:abc:1") -> NewJob:
    return NewJob(
        key=key,
        action="renew",
        names=("www.example.test",),
        targets=tuple(targets),
        issuer="local",
        fingerprint="ab" * 32,
        ref="tls://www.example.test:443#www.example.test",
        requester="schedule",
        rule="expiring-auto",
        old_serial=world.old[targets[0]].serial if targets and targets[0] in world.old else "",
    )


def transitions(entries: Sequence[AuditEntry], job: Job) -> list[tuple[str, str]]:
    return [
        (e.before, e.after)
        for e in entries
        if e.action == "job_state" and e.detail.get("job") == str(job.id)
    ]


def sli(events: Sequence[SLIEvent], name: str) -> list[SLIEvent]:
    return [e for e in events if e.sli == name]


# ------------------------------------------------------------------------ state machine


def test_states_are_one_vocabulary_everywhere() -> None:
    assert tuple(JobState) == STATES == JOB_STATES
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[JobState.DONE] == frozenset()
    assert {JobState.DONE, JobState.FAILED, JobState.ROLLED_BACK} == TERMINAL


@pytest.mark.parametrize("source", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_only_transitions_in_the_table_are_legal(source: JobState, target: JobState) -> None:
    if target in TRANSITIONS[source]:
        check_transition(source, target)
    else:
        with pytest.raises(IllegalTransition, match=f"{source} -> {target}"):
            check_transition(source, target)


def test_unknown_states_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown job state 'cancelled'"):
        check_transition("approved", "cancelled")


def test_executor_refuses_an_illegal_move_before_touching_the_store(world: World) -> None:
    world.add_target("a")
    created = world.jobs.create(renew_job(world, ["a"]), now=T0)
    ex = world.executor()
    with pytest.raises(IllegalTransition):
        asyncio.run(ex._move(created.job, JobState.DONE))
    assert world.jobs.get(created.job.id).state == "approved"


# ------------------------------------------------------------------------------- store


def test_idempotency_key_returns_the_existing_job(world: World) -> None:
    world.add_target("a")
    first = world.jobs.create(renew_job(world, ["a"]), now=T0)
    again = world.jobs.create(renew_job(world, ["a"]), now=T0 + timedelta(hours=1))
    assert first.created and not again.created
    assert again.job.id == first.job.id
    assert len(world.jobs.list()) == 1
    other = world.jobs.create(renew_job(world, ["a"], key="renew:def:1"), now=T0)
    assert other.created and other.job.id != first.job.id


def test_idempotency_key_builders() -> None:
    na = datetime(2025, 9, 1, 0, 0, 0, 999, tzinfo=UTC)
    assert renew_key("AB12", na) == "renew:ab12:2025-09-01T00:00:00Z"
    starts = datetime(2025, 6, 1, 14, 0, tzinfo=UTC)
    assert alert_key("a1b2c3", starts) == "alert:a1b2c3:2025-06-01T14:00:00Z"


def test_store_round_trips_every_field(world: World) -> None:
    new = NewJob(
        key="revoke:ff",
        action="revoke",
        names=("a.test", "b.test"),
        issuer="local",
        fingerprint="ff" * 32,
        ref="file:///etc/ssl/a.pem",
        requester="alice",
        rule="revoke-needs-two",
        approvers=("secops",),
        second_person=True,
        state="pending_approval",
        reason=1,
        old_serial="1a2b",
        subject_chain_pem="-----BEGIN CERTIFICATE-----\n...",
        next_attempt_at=T0 + timedelta(minutes=5),
    )
    job = world.jobs.create(new, now=T0).job
    assert (job.action, job.state, job.names, job.approvers) == (
        "revoke",
        "pending_approval",
        ("a.test", "b.test"),
        ("secops",),
    )
    assert job.second_person and job.reason == 1 and job.version == 1
    assert job.next_attempt_at == T0 + timedelta(minutes=5)
    assert job.state_times == {"pending_approval": T0}
    receipt = DeployReceipt("a", "1c", {"cert.path": "/etc/ssl/a.pem"})
    moved = world.jobs.transition(
        job.id, "pending_approval", "approved", now=T0 + timedelta(seconds=1), receipts=[receipt]
    )
    assert moved.version == 2 and moved.receipts == (receipt,)
    assert moved.state_times["approved"] == T0 + timedelta(seconds=1)
    assert world.jobs.get(job.id) == moved
    assert moved.to_dict()["receipts"] == [
        {"target": "a", "serial": "1c", "state": {"cert.path": "/etc/ssl/a.pem"}}
    ]


def test_store_refuses_what_it_cannot_hold(world: World) -> None:
    with pytest.raises(ValueError, match="starts in"):
        world.jobs.create(NewJob(key="k", action="renew", state="done"), now=T0)
    with pytest.raises(ValueError, match="unknown action"):
        world.jobs.create(NewJob(key="k", action="reboot"), now=T0)
    job = world.jobs.create(NewJob(key="k", action="renew"), now=T0).job
    with pytest.raises(ValueError, match="cannot change job field 'key'"):
        world.jobs.transition(job.id, "approved", "issuing", now=T0, key="other")
    with pytest.raises(ValueError, match="unknown job state"):
        world.jobs.transition(job.id, "approved", "cancelled", now=T0)
    with pytest.raises(JobNotFound):
        world.jobs.get(999)


def _advance(
    url: str, job_id: int, who: str, barrier: threading.Barrier, results: list[str]
) -> None:
    with JobStore.open(url) as store:  # each thread its own engine, as two processes
        barrier.wait()
        try:
            store.transition(job_id, "approved", "issuing", now=T0, owner=who)
            results.append(f"won:{who}")
        except JobConflict as e:
            assert e.actual == "issuing" and e.expected == "approved"
            results.append("conflict")


def test_compare_and_set_lets_exactly_one_of_two_threads_through(world: World) -> None:
    url = world.url
    for round_ in range(5):
        job = world.jobs.create(NewJob(key=f"race-{round_}", action="renew"), now=T0).job
        barrier = threading.Barrier(2)
        results: list[str] = []
        threads = [
            threading.Thread(target=_advance, args=(url, job.id, who, barrier, results))
            for who in ("one", "two")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.split(":")[0] for r in results) == ["conflict", "won"]
        stored = world.jobs.get(job.id)
        assert stored.state == "issuing" and stored.version == 2
        assert f"won:{stored.owner}" in results


def test_version_makes_a_stale_writer_lose_even_in_the_same_state(world: World) -> None:
    job = world.jobs.create(NewJob(key="k", action="renew"), now=T0).job
    world.jobs.update(job.id, "approved", now=T0, version=job.version, last_error="x")
    with pytest.raises(JobConflict, match="changed since version 1"):
        world.jobs.update(job.id, "approved", now=T0, version=job.version, last_error="y")
    assert world.jobs.get(job.id).last_error == "x"


def test_due_lists_approved_jobs_whose_time_has_come(world: World) -> None:
    later = world.jobs.create(
        NewJob(key="later", action="renew", next_attempt_at=T0 + timedelta(minutes=10)), now=T0
    ).job
    now_ = world.jobs.create(NewJob(key="now", action="renew"), now=T0).job
    soon = world.jobs.create(
        NewJob(key="soon", action="renew", next_attempt_at=T0 - timedelta(minutes=1)), now=T0
    ).job
    world.jobs.create(NewJob(key="waits", action="renew", state="pending_approval"), now=T0)
    assert [j.id for j in world.jobs.due(T0)] == [now_.id, soon.id]
    assert [j.id for j in world.jobs.due(T0 + timedelta(hours=1))] == [now_.id, soon.id, later.id]
    assert world.jobs.counts()["approved"] == 3
    assert world.jobs.counts()["pending_approval"] == 1


def test_an_inventory_database_already_has_the_jobs_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    Inventory.open(url).close()
    with JobStore.open(url) as store:
        assert store.list() == []


# ------------------------------------------------------------------------------ retries


def test_retry_after_is_honoured_exactly_even_above_the_cap() -> None:
    assert retry_delay(1, base=2, cap=60, retry_after=120) == 120
    assert retry_delay(4, base=2, cap=60, retry_after=0) == 0  # badNonce: at once
    assert retry_delay(1, base=2, cap=60, retry_after=-5) == 0


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(600.0, 2.0 * 2 ** (attempt - 1))
        for _ in range(50):
            d = retry_delay(attempt, base=2, cap=600, rng=rng)
            assert ceiling / 2 <= d <= ceiling
    spread = {round(retry_delay(5, base=2, cap=600, rng=rng), 3) for _ in range(20)}
    assert len(spread) > 10  # jitter: a fleet does not retry in lockstep
    assert retry_delay(60, base=2, cap=600, rng=rng) <= 600


async def test_issuer_429_schedules_the_next_attempt_at_retry_after(world: World) -> None:
    world.add_target("a")
    world.issuer.failures = [IssuerError("local", "429 rateLimited", retry_after=42)]
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job

    first = await ex.run(job.id)
    assert first.job.state == "approved" and first.job.attempts == 1
    assert first.job.next_attempt_at == T0 + timedelta(seconds=42)
    assert first.job.last_error == "local: 429 rateLimited"
    assert first.events == ()  # not a finished renewal yet

    not_yet = await ex.run(job.id)
    assert not not_yet.ran and "not due" in not_yet.note
    assert await ex.run_due() == []

    world.clock.advance(timedelta(seconds=42))
    [done] = await ex.run_due()
    assert done.job.state == "done" and done.job.attempts == 2
    assert world.serves("a") == done.job.new_serial
    retry = [e for e in world.entries() if e.result == "retry"]
    assert retry[0].detail["retry_after"] == "42s" and retry[0].detail["retry_in"] == "42.0s"


async def test_backoff_grows_until_max_attempts_then_fails(world: World) -> None:
    world.add_target("a")
    world.issuer.failures = [IssuerError("local", f"CA down {i}") for i in range(3)]
    ex = world.executor(max_attempts=3)
    job = (await ex.submit(renew_job(world, ["a"]))).job
    delays = []
    outcome: RunOutcome | None = None
    for _ in range(3):
        before = world.clock.now()
        outcome = await ex.run(job.id)
        if outcome.job.state == "approved":
            assert outcome.job.next_attempt_at is not None
            delays.append((outcome.job.next_attempt_at - before).total_seconds())
            world.clock.advance(timedelta(seconds=delays[-1]))
    assert outcome is not None and outcome.job.state == "failed"
    assert 1 <= delays[0] <= 2 and 2 <= delays[1] <= 4
    assert outcome.job.last_error == "issuing failed after 3 attempts: local: CA down 2"
    [bad] = sli(outcome.events, "renewal_success")
    assert not bad.good and bad.ref == f"job:{job.id}"
    assert world.log == []  # nothing was ever deployed


# ----------------------------------------------------------------------------- executor


async def test_renewal_deploys_canary_first_verifies_each_target_and_finishes(
    world: World,
) -> None:
    world.add_target("canary")
    world.add_target("rest")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["canary", "rest"]))).job

    out = await ex.run(job.id)

    assert out.ran and out.job.state == "done"
    assert world.log == ["deploy canary", "deploy rest"]
    assert world.serves("canary") == world.serves("rest") == out.job.new_serial
    assert out.job.verified == ("canary", "rest")
    assert [r.target for r in out.job.receipts] == ["canary", "rest"]
    assert out.job.new_fingerprint == world.issuer.issued[0].fingerprint_sha256
    assert out.job.issued_chain_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert out.job.owner == "test-host" and out.job.lease_until is None
    assert transitions(world.entries(), out.job) == [
        ("approved", "issuing"),
        ("issuing", "deploying"),
        ("deploying", "verifying"),
        ("verifying", "deploying"),
        ("deploying", "verifying"),
        ("verifying", "done"),
    ]
    assert set(out.job.state_times) == {"approved", "issuing", "deploying", "verifying", "done"}
    # SLI events: returned and handed to the sink.
    assert [(e.sli, e.good) for e in out.events] == [
        ("complete_deployments", True),
        ("renewal_success", True),
        ("issuance_latency", True),
    ]
    assert out.events[2].value == 0.0
    assert world.sli == list(out.events)


async def test_every_step_is_audited_before_it_acts_and_the_chain_verifies(
    world: World,
) -> None:
    world.add_target("a")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job
    await ex.run(job.id)

    entries = world.entries()
    assert world.audit.verify().ok
    steps = [(e.action, e.result, e.detail.get("target", "")) for e in entries]
    assert steps[0] == ("renew", "allowed", "")  # the submission, by its requester
    assert entries[0].actor == "schedule"
    # The intent precedes the action: issue, deploy each get a pending entry first.
    issue_pending = steps.index(("renew", "pending", ""))
    assert steps.index(("job_state", "ok", "")) < issue_pending
    deploy_pending = steps.index(("deploy", "pending", "a"))
    assert deploy_pending < steps.index(("deploy", "ok", "a")) < steps.index(("verify", "ok", "a"))
    final = entries[-1]
    assert (final.action, final.result, final.before, final.after) == (
        "renew",
        "ok",
        world.old["a"].serial,
        world.jobs.get(job.id).new_serial,
    )
    assert all(e.rule == "expiring-auto" for e in entries)
    assert {e.actor for e in entries[1:]} == {"executor"}
    assert all(e.detail["job"] == str(job.id) for e in entries)
    assert all(e.detail.get("requester") == "schedule" for e in entries[1:])


async def test_the_private_key_is_never_stored_logged_or_audited(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    target = world.add_target("a")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job
    await ex.run(job.id)

    [key] = target.keys_seen
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")  # the target did get it
    body = key.split(b"\n")[1]
    stored = _everything_stored(world.url)
    assert "PRIVATE KEY" not in stored and body.decode() not in stored
    assert "PRIVATE KEY" not in caplog.text
    assert all("PRIVATE KEY" not in str(e.to_dict()) for e in world.entries())


async def test_verification_needs_the_new_serial_on_every_probe_for_the_hold(
    world: World,
) -> None:
    world.add_target("a")
    ex = world.executor(verify_hold=0.1, verify_interval=0.01, verify_timeout=2.0)
    job = (await ex.submit(renew_job(world, ["a"]))).job
    # After the reload, old and new workers both answer for a while: new, old, new, old...
    old = world.old["a"]
    real_deploy = world.targets["a"].deploy

    async def deploy_then_flap(cert: IssuedCertificate) -> DeployReceipt:
        receipt = await real_deploy(cert)
        new = world.server.serving["a.test:443"]
        world.server.flaps["a.test:443"] = [new, old, new, new, old] + [new] * 3 + [old]
        return receipt

    world.targets["a"].deploy = deploy_then_flap  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = await ex.run(job.id)
    assert out.job.state == "done"
    # The last flap is at probe 9; the hold starts after it.
    assert loop.time() - started >= 0.1 + 8 * 0.01
    [verify] = [e for e in world.entries() if e.action == "verify"]
    probes = re.search(r"\((\d+) probes\)", verify.detail["why"])
    assert probes is not None and int(probes.group(1)) >= 10


def test_hold_tracker() -> None:
    t = HoldTracker(hold=1.0, timeout=5.0, start=100.0)
    assert t.observe(100.0, True) == VerifyStatus.PENDING
    assert t.observe(100.6, False) == VerifyStatus.PENDING  # a miss restarts the hold
    assert t.observe(100.7, True) == VerifyStatus.PENDING
    assert t.observe(101.5, True) == VerifyStatus.PENDING
    assert t.observe(101.7, True) == VerifyStatus.VERIFIED
    late = HoldTracker(hold=1.0, timeout=2.0, start=0.0)
    assert late.observe(1.5, True) == VerifyStatus.PENDING
    assert late.observe(2.0, True) == VerifyStatus.TIMED_OUT
    assert HoldTracker(hold=0, timeout=1, start=0).observe(0.1, True) == VerifyStatus.VERIFIED


async def test_failed_deploy_on_the_only_target_ends_rolled_back(world: World) -> None:
    world.add_target("a", fail_step="reload")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job

    out = await ex.run(job.id)

    assert out.job.state == "rolled_back"
    assert out.job.last_error == "a: reload: exit status 1"
    assert world.log == ["deploy a"]  # nothing deployed: nothing of ours to roll back
    assert world.serves("a") == world.old["a"].serial
    assert [(e.sli, e.good) for e in out.events] == [
        ("complete_deployments", False),
        ("renewal_success", False),
    ]
    [nd] = [e for e in world.entries() if e.result == "not_deployed"]
    assert (nd.detail["target"], nd.detail["step"], nd.detail["problem"]) == (
        "a",
        "reload",
        "not_deployed",
    )
    assert world.audit.verify().ok


async def test_second_target_failing_rolls_back_the_canary(world: World) -> None:
    world.add_target("canary")
    world.add_target("b", fail_step="test")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["canary", "b"]))).job

    out = await ex.run(job.id)

    assert out.job.state == "rolled_back"
    assert world.log == ["deploy canary", "deploy b", "rollback canary"]
    assert world.serves("canary") == world.old["canary"].serial
    assert out.job.last_error == "b: test: exit status 1"
    rollbacks = [(e.result, e.detail["target"]) for e in world.entries() if e.action == "rollback"]
    assert rollbacks == [("pending", "canary"), ("ok", "canary")]


async def test_verification_timeout_rolls_back_every_target_newest_first(world: World) -> None:
    world.add_target("canary")
    world.add_target("b")
    world.add_target("c", reloads=False)  # writes the files, never reloads: old one served
    ex = world.executor(verify_timeout=0.2)
    job = (await ex.submit(renew_job(world, ["canary", "b", "c"]))).job

    out = await ex.run(job.id)

    assert out.job.state == "rolled_back"
    assert world.log == [
        "deploy canary",
        "deploy b",
        "deploy c",
        "rollback c",
        "rollback b",
        "rollback canary",
    ]
    assert out.job.last_error.startswith("c: verify: serial ")
    assert f"c.test:443 serves serial {world.old['c'].serial}" in out.job.last_error
    assert out.job.verified == ("canary", "b")  # verified, then rolled back with c
    assert all(world.serves(t) == world.old[t].serial for t in ("canary", "b", "c"))


async def test_a_rollback_that_fails_ends_failed_for_a_person(world: World) -> None:
    world.add_target("canary", rollback_fails=True)
    world.add_target("b", fail_step="write")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["canary", "b"]))).job
    out = await ex.run(job.id)
    assert out.job.state == "failed"
    assert out.job.last_error == (
        "b: write: exit status 1; rollback failed: canary: rollback: previous version is missing"
    )


async def test_issuance_latency_is_bad_above_five_minutes(world: World) -> None:
    world.add_target("a")
    world.issuer.takes = timedelta(minutes=6)
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job
    out = await ex.run(job.id)
    [lat] = sli(out.events, "issuance_latency")
    assert lat.value == 360.0 and not lat.good


async def test_two_executors_never_run_the_same_job(world: World) -> None:
    world.add_target("a")
    one, two = world.executor(instance="one"), world.executor(instance="two")
    job = (await one.submit(renew_job(world, ["a"]))).job
    a, b = await asyncio.gather(one.run(job.id), two.run(job.id))
    assert sorted([a.ran, b.ran]) == [False, True]
    assert len(world.issuer.issued) == 1
    assert world.jobs.get(job.id).state == "done"


async def test_unknown_issuer_or_target_fails_the_job_with_a_clear_line(world: World) -> None:
    ex = world.executor()
    job = world.jobs.create(
        NewJob(key="k", action="renew", names=("x.test",), issuer="local", targets=("nope",)),
        now=T0,
    ).job
    out = await ex.run(job.id)
    assert (out.job.state, out.job.last_error) == (
        "failed",
        "cannot run: unknown deploy target 'nope'",
    )


async def test_redeploy_deploys_the_certificate_handed_in(world: World) -> None:
    world.add_target("a")
    ex = world.executor()
    issued = world.ca.issue(["www.example.test"], T0)
    cert = IssuedCertificate(chain_pem=issued.chain_pem(), key_pem=issued.key_pem())
    job = (
        await ex.submit(NewJob(key="redeploy:x", action="redeploy", targets=("a",), names=()))
    ).job
    missing = await ex.run(job.id)
    assert (
        missing.job.state == "failed" and "no target holds a certificate" in missing.job.last_error
    )
    job2 = (
        await ex.submit(NewJob(key="redeploy:y", action="redeploy", targets=("a",), names=()))
    ).job
    out = await ex.run(job2.id, certificate=cert)
    assert out.job.state == "done" and out.job.new_serial == issued.serial_hex
    assert world.issuer.issued == []
    assert [e.sli for e in out.events] == ["complete_deployments"]


# ------------------------------------------------------------------- approval and revoke


def revoke_decision(requester: str) -> Decision:
    return Decision(
        verdict=Verdict.NEEDS_APPROVAL,
        action=Action.REVOKE,
        rule="revoke-two-person",
        mode=Mode.APPROVE,
        approvers=("secops", "dave"),
        requires_second_person=True,
        reasons=(),
        requester=requester,
    )


async def test_revocation_waits_for_a_second_person_then_revokes(world: World) -> None:
    ex = world.executor()
    victim = world.ca.issue(["leaked.example.test"], T0)
    new = NewJob(
        key="revoke:leaked",
        action="revoke",
        names=("leaked.example.test",),
        issuer="local",
        requester="alice",
        old_serial=victim.serial_hex,
        subject_chain_pem=victim.chain_pem().decode(),
        reason=int(RevocationReason.KEY_COMPROMISE),
    )
    job = (await ex.submit(new, revoke_decision("alice"))).job
    assert job.state == "pending_approval" and job.second_person
    assert job.approvers == ("secops", "dave")

    not_yet = await ex.run(job.id)
    assert not not_yet.ran and world.issuer.revoked == []

    with pytest.raises(ApprovalDenied, match="not among the approvers"):
        await ex.approve(job.id, "mallory")
    with pytest.raises(ApprovalDenied, match="a second person must approve"):
        await ex.approve(job.id, Principal("alice", frozenset({"secops"})))
    approved = await ex.approve(job.id, Principal("carol", frozenset({"secops"})))
    assert approved.state == "approved"
    assert [a.by for a in approved.approvals] == ["carol"]
    with pytest.raises(JobStateError):
        await ex.approve(job.id, "dave")

    out = await ex.run(job.id)
    assert out.job.state == "done"
    assert world.issuer.revoked == [(victim.chain_pem(), RevocationReason.KEY_COMPROMISE)]
    decisions = [(e.actor, e.action, e.result) for e in world.entries()][:4]
    assert decisions == [
        ("alice", "revoke", "pending"),
        ("mallory", "deny", "denied"),
        ("alice", "deny", "denied"),
        ("carol", "approve", "allowed"),
    ]
    revoke = [e for e in world.entries() if e.action == "revoke"]
    assert [e.result for e in revoke] == ["pending", "pending", "ok"]
    assert revoke[1].detail["approved_by"] == "carol"
    assert revoke[1].detail["reason"] == "key_compromise"
    assert world.audit.verify().ok


async def test_a_revocation_without_a_policy_decision_still_needs_approval(
    world: World,
) -> None:
    ex = world.executor()
    victim = world.ca.issue(["x.test"], T0)
    new = NewJob(
        key="revoke:x",
        action="revoke",
        issuer="local",
        requester="alice",
        approvers=("alice",),
        subject_chain_pem=victim.chain_pem().decode(),
    )
    job = (await ex.submit(new)).job
    assert job.state == "pending_approval" and job.second_person
    with pytest.raises(ApprovalDenied, match="second person"):
        await ex.approve(job.id, "alice")


async def test_cancel_and_retry(world: World) -> None:
    world.add_target("a")
    ex = world.executor()
    job = (await ex.submit(renew_job(world, ["a"]))).job
    cancelled = await ex.cancel(job.id, "alertmanager", "alert resolved")
    assert cancelled.state == "failed"
    assert cancelled.last_error == "cancelled by alertmanager: alert resolved"
    again = await ex.retry(job.id, "bob")
    assert again.state == "approved" and again.attempts == 0
    assert (await ex.run(job.id)).job.state == "done"
    with pytest.raises(JobStateError):
        await ex.cancel(job.id, "bob", "too late")


# ------------------------------------------------------------------------------- resume


def abandon(world: World, job: Job, state: str, *, receipts: int = 0, owner: str = "dead") -> Job:
    """Walk ``job`` to ``state`` the way a process that then died would have left it."""
    i = world.ca.issue(list(job.names), T0)
    info = _info(i.chain_pem())
    now = T0
    job = world.jobs.transition(job.id, "approved", "issuing", now=now, attempts=1, owner=owner)
    if state == "issuing":
        return job
    job = world.jobs.transition(
        job.id,
        "issuing",
        "deploying",
        now=now,
        new_serial=info.serial,
        new_fingerprint=info.fingerprint_sha256,
        issued_chain_pem=i.chain_pem().decode(),
    )
    done: list[DeployReceipt] = []
    for name in job.targets[:receipts]:
        world.server.serving[f"{name}.test:443"] = info  # deployed and reloaded
        done.append(DeployReceipt(name, info.serial, {"prev": world.old[name].serial}))
    if state == "verifying":
        job = world.jobs.transition(job.id, "deploying", "verifying", now=now, receipts=done)
    return job


async def test_resume_issuing_goes_back_to_approved_and_reissues(world: World) -> None:
    world.add_target("a")
    job = world.jobs.create(renew_job(world, ["a"]), now=T0).job
    abandon(world, job, "issuing")
    ex = world.executor()

    [out] = await ex.resume_all()

    assert out.job.state == "approved" and out.job.next_attempt_at == T0
    assert out.job.last_error.startswith("resumed after a restart: interrupted while issuing")
    [resume] = [e for e in world.entries() if e.action == "resume"]
    assert resume.detail["plan"] == "reissue" and resume.detail["previous_owner"] == "dead"
    assert (await ex.run(job.id)).job.state == "done"


async def test_resume_verifying_with_every_receipt_served_finishes(world: World) -> None:
    world.add_target("a")
    world.add_target("b")
    job = world.jobs.create(renew_job(world, ["a", "b"]), now=T0).job
    abandoned = abandon(world, job, "verifying", receipts=2)
    assert resume_plan(abandoned).action == ResumeAction.REVERIFY

    [out] = await world.executor().resume_all()

    assert out.job.state == "done" and out.job.verified == ("a", "b")
    assert world.log == []  # nothing redeployed, nothing rolled back
    assert ("complete_deployments", True) in [(e.sli, e.good) for e in out.events]


async def test_resume_verifying_not_served_rolls_back_what_the_receipts_say(
    world: World,
) -> None:
    world.add_target("a")
    job = world.jobs.create(renew_job(world, ["a"]), now=T0).job
    abandon(world, job, "verifying", receipts=1)
    world.server.serving["a.test:443"] = world.old["a"]  # the reload never happened

    [out] = await world.executor(verify_timeout=0.1).resume_all()

    assert out.job.state == "rolled_back"
    assert world.log == ["rollback a"]
    assert out.job.last_error.startswith("a: verify after restart: serial ")


async def test_resume_with_targets_never_deployed_rolls_back_the_canary(world: World) -> None:
    world.add_target("canary")
    world.add_target("b")
    job = world.jobs.create(renew_job(world, ["canary", "b"]), now=T0).job
    abandon(world, job, "verifying", receipts=1)  # died verifying the canary

    [out] = await world.executor().resume_all()

    assert out.job.state == "rolled_back"
    assert world.log == ["rollback canary"]
    assert "b: deploy: interrupted by a restart" in out.job.last_error
    assert world.serves("canary") == world.old["canary"].serial


async def test_resume_deploying_without_receipts_reissues(world: World) -> None:
    world.add_target("a")
    job = world.jobs.create(renew_job(world, ["a"]), now=T0).job
    abandon(world, job, "deploying")
    [out] = await world.executor().resume_all()
    assert out.job.state == "approved" and out.job.receipts == ()


async def test_resume_deploying_when_the_target_already_serves_it_needs_a_person(
    world: World,
) -> None:
    world.add_target("a")
    job = world.jobs.create(renew_job(world, ["a"]), now=T0).job
    abandoned = abandon(world, job, "deploying")
    # The deploy got as far as the reload; the receipt was never stored.
    world.server.serving["a.test:443"] = _info(abandoned.issued_chain_pem.encode())

    [out] = await world.executor().resume_all()

    assert out.job.state == "failed"
    assert "cannot be rolled back automatically" in out.job.last_error


async def test_resume_leaves_a_job_another_live_executor_holds(world: World) -> None:
    world.add_target("a")
    job = world.jobs.create(renew_job(world, ["a"]), now=T0).job
    job = world.jobs.transition(
        job.id,
        "approved",
        "issuing",
        now=T0,
        owner="other-host",
        lease_until=T0 + timedelta(minutes=5),
    )
    ex = world.executor()
    assert await ex.resume_all() == []
    world.clock.advance(timedelta(minutes=6))
    [out] = await ex.resume_all()
    assert out.job.state == "approved"


# ------------------------------------------------------------------------------- errors


def test_error_lines_are_one_line_and_hold_no_secrets() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----"
    text = error_line(RuntimeError(f"boom\nwith {key} and Authorization: Bearer abc.def token=xyz"))
    assert "\n" not in text and "MIGHAgEA" not in text
    assert "abc.def" not in text and "xyz" not in text
    assert "[bearer redacted]" in text and "token=[redacted]" in text
    assert error_line("k8s secret default/tls not found") == "k8s secret default/tls not found"
    assert error_line("postgresql://u:hunter2@db/x") == "postgresql://u:***@db/x"
    assert len(error_line("x" * 1000)) == 300
    assert error_line(ValueError()) == "ValueError"


def _everything_stored(url: str) -> str:
    """Every row of every table, as text (SQLite file or PostgreSQL alike)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            meta = sqlalchemy.MetaData()
            meta.reflect(conn)
            return "\n".join(
                repr(tuple(row)) for t in meta.sorted_tables for row in conn.execute(t.select())
            )
    finally:
        engine.dispose()
