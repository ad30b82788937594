"""The executor against the real things: nginx (tests/support/services.py), the embedded local CA
(``LocalCAIssuer``), the ``files`` deploy target with ``nginx -t`` and ``nginx -s reload``, and
the real TLS prober trusting only the local CA's root.

Issue 4, items 4 and 8: a renewal served after the job ends ``done``; a failing reload that
ends ``rolled_back`` with the old certificate still served; two targets, canary first, where
the second fails and both end rolled back; a reload that never happens (verification times
out); and a process "killed" in ``verifying`` (its task cancelled mid-probe, as a crash would
leave the job) that ``resume_all()`` finishes or rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import pytest

from certpilot.domain.clock import SystemClock
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.protocols import Prober
from certpilot.domain.remedy import IssueRequest
from certpilot.domain.sli import SLIEvent
from certpilot.store import AuditLog, JobStore, NewJob
from remediator.executor import Executor
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from remediator.targets.files import FilesTarget, FilesTargetConfig
from scanner.tls_endpoint import TlsProber
from scanner.trust import load_anchors
from tests.support.services import NginxFleet, require_binary

pytestmark = pytest.mark.service("nginx")

RENEW = "renew.exec.test"
RELOAD_FAILS = "reloadfails.exec.test"
CANARY = "canary.exec.test"
SECOND = "second.exec.test"
NO_RELOAD = "noreload.exec.test"
CRASH_OK = "crashok.exec.test"
CRASH_BACK = "crashback.exec.test"
NAMES = (RENEW, RELOAD_FAILS, CANARY, SECOND, NO_RELOAD, CRASH_OK, CRASH_BACK)

VERIFY_TIMEOUT = 3.0  # the cases that must time out wait this long; nginx reloads in < 0.5 s


class SignallingProber:
    """The real prober, plus an event set on the first probe: where a test "kills" a run."""

    def __init__(self, inner: TlsProber) -> None:
        self.inner = inner
        self.probing = asyncio.Event()

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]:
        self.probing.set()
        return await self.inner.probe(targets)


@dataclass
class Site:
    fleet: NginxFleet
    issuer: LocalCAIssuer
    prober: TlsProber
    db_url: str
    old: dict[str, str]  # server name -> serial nginx served at start
    old_chain: dict[str, bytes]  # ... and the chain file it was served from

    def nginx(self, *extra: str) -> tuple[str, ...]:
        f = self.fleet
        return (f.binary, "-p", f"{f.dir}/", "-c", str(f.conf_path), "-e", str(f.error_log), *extra)

    def target(self, name: str, *, reload: Sequence[str] | None = None) -> FilesTarget:
        ep = self.fleet.endpoint(name)
        config = FilesTargetConfig(
            cert_path=ep.cert_path,
            key_path=ep.key_path,
            test_command=self.nginx("-t"),
            reload_command=tuple(reload) if reload is not None else self.nginx("-s", "reload"),
            timeout=20.0,
            endpoints=(ep.target(),),
        )
        return FilesTarget(f"nginx:{name}", config)

    async def served(self, name: str) -> str | None:
        [obs] = await self.prober.probe([self.fleet.endpoint(name).target()])
        return obs.leaf.serial if obs.leaf is not None else None

    async def settles_on(self, name: str, serial: str, hold: float = 0.7) -> str | None:
        """The serial served once ``serial`` has been seen on every probe for ``hold``
        seconds, or the last one seen after 10 s (a reload is asynchronous)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        since: float | None = None
        while True:
            seen = await self.served(name)
            now = loop.time()
            since = (since or now) if seen == serial else None
            if (since is not None and now - since >= hold) or now > deadline:
                return seen
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    nginx = require_binary("nginx")
    work = tmp_path_factory.mktemp("executor-nginx")
    clock = SystemClock()
    issuer = LocalCAIssuer("local", LocalCAConfig(state_dir=work / "ca"), clock=clock)
    specs, old, old_chain = [], {}, {}
    for name in NAMES:
        cert = asyncio.run(issuer.issue(IssueRequest(names=(name,))))
        specs.append((name, cert.chain_pem, cert.key_pem))
        old[name], old_chain[name] = cert.serial, cert.chain_pem
    root = work / "root.pem"
    root.write_bytes(issuer.root_pem())
    prober = TlsProber(load_anchors([str(root)], use_system=False), clock)
    with NginxFleet(work / "nginx", specs, binary=nginx) as fleet:
        yield Site(fleet, issuer, prober, f"sqlite:///{work / 'certpilot.db'}", old, old_chain)


@dataclass
class Run:
    executor: Executor
    jobs: JobStore
    audit: AuditLog
    sli: list[SLIEvent]


@contextlib.asynccontextmanager
async def running(
    site: Site, targets: Sequence[FilesTarget], prober: Prober | None = None
) -> AsyncIterator[Run]:
    sli: list[SLIEvent] = []
    with JobStore.open(site.db_url) as jobs, AuditLog.open(site.db_url) as audit:
        ex = Executor(
            jobs,
            audit,
            {"local": site.issuer},
            {t.name: t for t in targets},
            prober or site.prober,
            SystemClock(),
            verify_timeout=VERIFY_TIMEOUT,
            verify_hold=0.7,
            instance="host-a",
            sli_sink=sli.extend,
        )
        yield Run(ex, jobs, audit, sli)


async def submit(run: Run, site: Site, name: str, targets: Sequence[FilesTarget]) -> int:
    created = await run.executor.submit(
        NewJob(
            key=f"renew:{name}",
            action="renew",
            names=(name,),
            targets=tuple(t.name for t in targets),
            issuer="local",
            ref=f"tls://{name}",
            requester="test",
            rule="integration",
            old_serial=site.old[name],
        )
    )
    return created.job.id


async def test_renewal_is_served_by_nginx_when_the_job_is_done(site: Site) -> None:
    target = site.target(RENEW)
    async with running(site, [target]) as run:
        job_id = await submit(run, site, RENEW, [target])
        out = await run.executor.run(job_id)

        assert out.job.state == "done", out.job.last_error
        assert out.job.new_serial != site.old[RENEW]
        assert await site.settles_on(RENEW, out.job.new_serial) == out.job.new_serial
        assert [(e.sli, e.good) for e in out.events] == [
            ("complete_deployments", True),
            ("renewal_success", True),
            ("issuance_latency", True),
        ]
        assert out.events[2].value is not None and 0.7 <= out.events[2].value < 30
        assert run.audit.verify().ok
        assert site.fleet.endpoint(RENEW).key_path.stat().st_mode & 0o777 == 0o600


async def test_failing_reload_ends_rolled_back_with_the_old_certificate_served(
    site: Site,
) -> None:
    target = site.target(RELOAD_FAILS, reload=["false"])
    async with running(site, [target]) as run:
        job_id = await submit(run, site, RELOAD_FAILS, [target])
        out = await run.executor.run(job_id)

        assert out.job.state == "rolled_back"
        assert out.job.last_error.startswith(f"nginx:{RELOAD_FAILS}: reload: ")
        assert await site.settles_on(RELOAD_FAILS, site.old[RELOAD_FAILS]) == site.old[RELOAD_FAILS]
        assert ("complete_deployments", False) in [(e.sli, e.good) for e in out.events]
        assert any(e.result == "not_deployed" for e in run.audit.latest(20))


async def test_canary_then_second_target_failing_rolls_back_both(site: Site) -> None:
    canary = site.target(CANARY)
    second = site.target(SECOND, reload=["false"])
    async with running(site, [canary, second]) as run:
        job_id = await submit(run, site, CANARY, [canary, second])
        out = await run.executor.run(job_id)

        assert out.job.state == "rolled_back"
        assert out.job.last_error.startswith(f"nginx:{SECOND}: reload: ")
        # The canary was deployed and verified first, then rolled back from its receipt.
        assert [r.target for r in out.job.receipts] == [canary.name]
        assert out.job.verified == (canary.name,)
        assert await site.settles_on(CANARY, site.old[CANARY]) == site.old[CANARY]
        assert await site.settles_on(SECOND, site.old[SECOND]) == site.old[SECOND]
        rollbacks = [
            (e.result, e.detail["target"]) for e in run.audit.latest(30) if e.action == "rollback"
        ]
        assert rollbacks == [("pending", canary.name), ("ok", canary.name)]


async def test_a_reload_that_never_happens_times_out_and_rolls_back(site: Site) -> None:
    target = site.target(NO_RELOAD, reload=["true"])  # files written, nginx never told
    async with running(site, [target]) as run:
        job_id = await submit(run, site, NO_RELOAD, [target])
        out = await run.executor.run(job_id)

        assert out.job.state == "rolled_back"
        assert out.job.last_error.startswith(f"nginx:{NO_RELOAD}: verify: serial ")
        assert f"serves serial {site.old[NO_RELOAD]}" in out.job.last_error
        assert await site.settles_on(NO_RELOAD, site.old[NO_RELOAD]) == site.old[NO_RELOAD]
        assert site.fleet.endpoint(NO_RELOAD).cert_path.read_bytes().startswith(b"-----BEGIN")


async def crash_while_verifying(run: Run, prober: SignallingProber, job_id: int) -> None:
    """Cancel the run at its first probe: the job stays in ``verifying`` with its receipt,
    and the new key is gone with the task, as after a kill -9."""
    task = asyncio.create_task(run.executor.run(job_id))
    await prober.probing.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    job = run.jobs.get(job_id)
    assert job.state == "verifying" and len(job.receipts) == 1


async def test_resume_after_a_crash_in_verifying_finishes_the_job(site: Site) -> None:
    target = site.target(CRASH_OK)
    prober = SignallingProber(site.prober)
    async with running(site, [target], prober) as run:
        job_id = await submit(run, site, CRASH_OK, [target])
        await crash_while_verifying(run, prober, job_id)
    # "Restart": a new executor on the same host, over the same database.
    async with running(site, [site.target(CRASH_OK)]) as run:
        [out] = await run.executor.resume_all()

        assert out.job.id == job_id and out.job.state == "done", out.job.last_error
        assert await site.settles_on(CRASH_OK, out.job.new_serial) == out.job.new_serial
        assert ("complete_deployments", True) in [(e.sli, e.good) for e in run.sli]
        assert run.audit.verify().ok


async def test_resume_after_a_crash_rolls_back_what_is_not_served(site: Site) -> None:
    target = site.target(CRASH_BACK, reload=["true"])  # deployed, but nginx never reloaded
    prober = SignallingProber(site.prober)
    async with running(site, [target], prober) as run:
        job_id = await submit(run, site, CRASH_BACK, [target])
        await crash_while_verifying(run, prober, job_id)
    async with running(site, [site.target(CRASH_BACK)]) as run:
        [out] = await run.executor.resume_all()

        assert out.job.state == "rolled_back"
        assert out.job.last_error.startswith(f"nginx:{CRASH_BACK}: verify after restart: ")
        assert await site.settles_on(CRASH_BACK, site.old[CRASH_BACK]) == site.old[CRASH_BACK]
        # The receipt's rollback put the old files back (and nginx -t + reload read them).
        ep = site.fleet.endpoint(CRASH_BACK)
        assert ep.cert_path.read_bytes() == site.old_chain[CRASH_BACK]
