"""Remediation: issuance-to-verified latency, and a mass renewal under an issuer rate budget.

Everything is real and on loopback: Pebble 2.4 with pebble-challtestsrv
(``tests/support/pebble.py``: ``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_AUTHZREUSE=0``,
``PEBBLE_WFE_NONCEREJECT=0``; names resolve to 127.0.0.1), a private nginx
(``tests/support/services.py``, one port per ``server`` block), the ``files`` deploy target
(atomic writes, ``nginx -t``, ``nginx -s reload``), the TLS prober, and the job store and audit
log on a SQLite file (the audit log fsyncs every append).

**1. Latency** (``--runs``, default 30). Each run is one renew job through
:meth:`Executor.run`: issue (ACME order at Pebble, http-01 answered by the issuer's built-in
responder on Pebble's ``httpPort``; or the embedded local CA), write the files, ``nginx -t``,
``nginx -s reload``, then re-probe until the new certificate is served on every probe for
``verify_hold`` seconds (``--hold``, default 0.7; every variant also runs with hold 0 to
separate the hold from the work). From the job's ``state_times``: total (``done - issuing``)
and its split: issue (``issuing -> deploying``), deploy (``deploying -> verifying``) and verify
(``verifying -> done``). Wrappers around the issuer, the target's steps and the prober say where
the time inside each phase goes (the remainder is the executor's own store and audit work).
Reference points: a bare ACME order (``AcmeIssuer.issue`` alone) and a bare local-CA issue.
There is no peer tool that renews, deploys and verifies (certbot is not installed here; its
``renew`` does not verify by probing anyway), so the bare order is the yardstick: the ratio
says what deploy + verify cost on top of the order. The variants alternate run by run (the
machine is shared: drift hits them all alike), each run renews the certificate of its own
endpoint (the nginx has ``--runs`` + 1 server blocks), and the first order and job of each
issuer are an untimed warm-up (ACME account registration, imports, nginx's first reload).

**2. Mass renewal** (``--mass``, default 100). Every one of ``--mass`` endpoints of one nginx
(one ``server`` block and its own certificate files each) holds a certificate that must go now
(a CA mass revocation: ``not_after`` in an hour). ``Remediation.plan`` turns them into jobs
under a policy whose rule names the Pebble issuer and whose budget is
``new_orders: --budget-limit per --budget-per seconds`` (default 20 per 60 s, Let's Encrypt's
300 per 3 h scaled down), then ``executor.run_due()`` runs in a loop on the real clock until
every job is terminal. Reported: wall time (plan start -> last ``done``), jobs done, orders per
sliding window of the budget's length (``(e - per, e]``, the planner's own definition) counted
three ways: the job store's ``state_times['issuing']``, the issuer wrapper's calls, and Pebble's
own log (``Added order``, 1 s stamps: a count of orders whose stamps lie within ``per - 1`` s,
so a lower bound of the true maximum); 429s (any ``IssuerError`` with ``retry_after`` or
"rate limit" in it; Pebble has no rate limits, so this must be 0 and the windows are what show
the budget held); and throughput. The same certificates are then renewed again with no budget
(``--unconstrained``, default = ``--mass``) for the rate the executor reaches on its own.

    .venv/bin/python benchmarks/remediation.py --quick      # smoke: under 2 minutes
    .venv/bin/python benchmarks/remediation.py --json /tmp/remediation.json

Progress goes to stderr; markdown tables to stdout; ``--json FILE`` gets every figure and every
job's timings. Exit status 1 when a run is invalid (a job not done, a 429, a window over the
budget). Pebble, challtestsrv and nginx are stopped by PID by their harnesses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from benchmarks._common import cancel_on_sigterm, machine_info, remove_run_directory, tool_version
from certpilot.domain.clock import Clock, SystemClock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import ProblemCode
from certpilot.domain.remedy import (
    DeployReceipt,
    IssuedCertificate,
    Issuer,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.x509 import cert_info
from certpilot.store import AuditLog, JobStore, NewJob
from certpilot.store.jobs import Job
from remediator.executor import Executor
from remediator.issuers.acme_client import AcmeConfig, AcmeIssuer
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from remediator.policy import IssuerBudget, Policy, RateLimit, Rule
from remediator.service import Remediation
from remediator.targets.files import FilesTarget, FilesTargetConfig
from scanner.tls_endpoint import TlsProber
from scanner.trust import load_anchors
from tests.support.pebble import Pebble
from tests.support.services import NginxFleet, find_binary

TERMINAL = frozenset({"done", "failed", "rolled_back"})


def now() -> datetime:
    return datetime.now(UTC)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- instrumentation: what each collaborator of the executor spends -----------------------------


@dataclass
class IssueCall:
    start: datetime
    end: datetime
    ok: bool
    error: str = ""
    rate_limited: bool = False


class TimedIssuer:
    """An :class:`Issuer` that records every ``issue`` call (start, end, outcome)."""

    def __init__(self, inner: Issuer) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[IssueCall] = []

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        start = now()
        try:
            cert = await self.inner.issue(request)
        except IssuerError as e:
            text = str(e)
            limited = e.retry_after is not None or bool(
                re.search(r"rate.?limit", text, re.IGNORECASE)
            )
            self.calls.append(IssueCall(start, now(), False, text, limited))
            raise
        self.calls.append(IssueCall(start, now(), True))
        return cert

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        await self.inner.revoke(chain_pem, reason)

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return await self.inner.renewal_info(chain_pem)


class TimedFilesTarget(FilesTarget):
    """The files target, timing its whole deploy and its ``test`` and ``reload`` commands."""

    def __init__(self, name: str, config: FilesTargetConfig) -> None:
        super().__init__(name, config)
        self.last: dict[str, float] = {}

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        self.last = {}
        t0 = time.perf_counter()
        try:
            return await super().deploy(cert)
        finally:
            self.last["deploy"] = time.perf_counter() - t0
            self.last["write"] = (
                self.last["deploy"] - self.last.get("test", 0.0) - self.last.get("reload", 0.0)
            )

    async def _step(self, step: str, argv: Sequence[str]) -> None:
        t0 = time.perf_counter()
        try:
            await super()._step(step, argv)
        finally:
            self.last[step] = time.perf_counter() - t0


@dataclass
class ProbeRound:
    start: datetime
    end: datetime
    fingerprints: tuple[str, ...]


class TimedProber:
    """The TLS prober, recording each round: when, and which leaf each endpoint served."""

    def __init__(self, inner: TlsProber) -> None:
        self.inner = inner
        self.rounds: list[ProbeRound] = []

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]:
        start = now()
        out = await self.inner.probe(targets)
        fps = tuple(o.leaf.fingerprint_sha256 if o.leaf is not None else "" for o in out)
        self.rounds.append(ProbeRound(start, now(), fps))
        return out


# -- statistics ------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def dist(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 0.5), 4),
        "p95": round(pct(values, 0.95), 4),
        "max": round(max(values), 4) if values else float("nan"),
        "min": round(min(values), 4) if values else float("nan"),
        "mean": round(statistics.fmean(values), 4) if values else float("nan"),
    }


def secs(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def over_limit(times: Sequence[datetime], per: timedelta, limit: int) -> int:
    """How many events found more than ``limit`` events (themselves included) in the window
    ``(e - per, e]`` that ends at them: the orders a CA counting this way would refuse."""
    s = sorted(times)
    n, lo = 0, 0
    for hi, end in enumerate(s):
        while s[lo] <= end - per:
            lo += 1
        n += hi - lo + 1 > limit
    return n


def max_in_window(times: Sequence[datetime], per: timedelta) -> tuple[int, datetime | None]:
    """The most events in any sliding window ``(e - per, e]``; the count only rises at an event,
    so the window ends worth checking are the events themselves. Returns (count, end)."""
    s = sorted(times)
    best, at, lo = 0, None, 0
    for hi, end in enumerate(s):
        while s[lo] <= end - per:
            lo += 1
        if hi - lo + 1 > best:
            best, at = hi - lo + 1, end
    return best, at


_PEBBLE_STAMP = re.compile(r"^Pebble (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) Added order ")


def pebble_orders(log: Path, start: int, end: int | None = None) -> list[datetime]:
    """Order creations as Pebble logged them (``Added order ... to the db``), 1 s stamps."""
    with log.open("rb") as fh:
        fh.seek(start)
        data = fh.read() if end is None else fh.read(end - start)
    out: list[datetime] = []
    for line in data.decode("utf-8", "replace").splitlines():
        m = _PEBBLE_STAMP.match(line)
        if m:
            out.append(datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC))
    return out


def max_in_window_stamped(stamps: Sequence[datetime], per: timedelta) -> int:
    """For whole-second stamps: the most events whose stamps lie within ``per - 1`` s of each
    other. Their true times then lie within less than ``per``, inside one window ``(e - per,
    e]``: a lower bound of the true maximum."""
    return max_in_window(stamps, per - timedelta(seconds=1))[0] if stamps else 0


# -- shared set-up ---------------------------------------------------------------------------


def nginx_argv(fleet: NginxFleet, *extra: str) -> tuple[str, ...]:
    return (
        fleet.binary,
        "-p",
        f"{fleet.dir}/",
        "-c",
        str(fleet.conf_path),
        "-e",
        str(fleet.error_log),
        *extra,
    )


def files_target(fleet: NginxFleet, server_name: str) -> TimedFilesTarget:
    ep = fleet.endpoint(server_name)
    return TimedFilesTarget(
        f"nginx:{server_name}",
        FilesTargetConfig(
            cert_path=ep.cert_path,
            key_path=ep.key_path,
            test_command=nginx_argv(fleet, "-t"),
            reload_command=nginx_argv(fleet, "-s", "reload"),
            timeout=30.0,
            endpoints=(ep.target(),),
        ),
    )


def acme_issuer(pebble: Pebble, state_dir: Path, clock: Clock) -> AcmeIssuer:
    return AcmeIssuer(
        "pebble",
        AcmeConfig(
            directory_url=pebble.directory_url,
            state_dir=state_dir,
            ca_bundle=pebble.ca_bundle,
            email="bench@test.internal",
            http_host="127.0.0.1",
            http_port=pebble.http_port,
            order_timeout=60,
            network_timeout=10,
        ),
        clock=clock,
    )


async def mint(issuer: LocalCAIssuer, names: Sequence[str]) -> list[tuple[str, bytes, bytes]]:
    specs = []
    for name in names:
        cert = await issuer.issue(IssueRequest(names=(name,)))
        specs.append((name, cert.chain_pem, cert.key_pem))
    return specs


def trust_file(work: Path, pebble: Pebble, local: LocalCAIssuer) -> Path:
    """Pebble's root (new at every start) and the local CA's root: what the prober trusts."""
    path = work / "anchors.pem"
    path.write_bytes(pebble.root_pem(0) + b"\n" + local.root_pem())
    return path


# -- benchmark 1: latency ----------------------------------------------------------------------


VARIANTS = ("pebble", "local")


async def latency(
    args: argparse.Namespace, work: Path, pebble: Pebble, clock: Clock
) -> dict[str, Any]:
    n = args.runs
    local_ca = LocalCAIssuer("local", LocalCAConfig(state_dir=work / "lat-localca"), clock=clock)
    acme = acme_issuer(pebble, work / "lat-acme", clock)
    issuers = {"pebble": TimedIssuer(acme), "local": TimedIssuer(local_ca)}
    names = [f"lat{i:03d}.bench.test" for i in range(n)]
    warm = "warm.bench.test"
    specs = await mint(local_ca, [warm, *names])
    anchors = trust_file(work, pebble, local_ca)
    prober = TimedProber(TlsProber(load_anchors([str(anchors)], use_system=False), clock))
    fleet = NginxFleet(
        work / "lat-nginx", specs, worker_processes=args.nginx_workers, binary=args.nginx
    )
    url = f"sqlite:///{work / 'latency.db'}"
    records: list[dict[str, Any]] = []
    bare: dict[str, list[float]] = {"pebble": [], "local": []}
    holds = sorted({args.hold, 0.0}, reverse=True)
    with fleet, JobStore.open(url) as jobs, AuditLog.open(url) as audit:
        say(
            f"latency: nginx PID {fleet.pid}, {len(specs)} server blocks; "
            f"Pebble PID {pebble_pid(pebble)}"
        )
        targets = {t.name: t for t in (files_target(fleet, nm) for nm in [warm, *names])}
        executors = {
            h: Executor(
                jobs,
                audit,
                dict(issuers),
                dict(targets),
                prober,
                clock,
                verify_timeout=30.0,
                verify_hold=h,
                instance="bench",
            )
            for h in holds
        }
        counter = 0

        async def one_job(variant: str, hold: float, name: str, index: int) -> dict[str, Any]:
            nonlocal counter
            counter += 1
            target = targets[f"nginx:{name}"]
            created = await executors[hold].submit(
                NewJob(
                    key=f"lat:{variant}:{hold}:{index}:{counter}",
                    action="renew",
                    names=(name,),
                    targets=(target.name,),
                    issuer=variant,
                    ref=f"tls://{name}",
                    requester="bench",
                    rule="bench",
                )
            )
            issuer = issuers[variant]
            calls0 = len(issuer.calls)
            prober.rounds.clear()
            t0 = time.perf_counter()
            out = await executors[hold].run(created.job.id)
            wall = time.perf_counter() - t0
            return job_record(
                out.job, variant, hold, index, wall, issuer.calls[calls0:], target, prober
            )

        # Untimed warm-up: ACME account registration, the responder, nginx's first reloads.
        for variant in VARIANTS:
            await issuers[variant].inner.issue(IssueRequest(names=(warm,)))
            for hold in holds:
                rec = await one_job(variant, hold, warm, -1)
                if rec["state"] != "done":
                    raise RuntimeError(f"warm-up job {variant}: {rec['state']}: {rec['error']}")
        say("latency: warm-up done")

        for i, name in enumerate(names):
            # Rotate the order each run so no variant always follows the same one.
            plan: list[tuple[str, float | None]] = [(v, h) for v in VARIANTS for h in holds]
            plan += [(v, None) for v in VARIANTS]
            k = i % len(plan)
            for variant, hold in plan[k:] + plan[:k]:
                if hold is None:
                    t0 = time.perf_counter()
                    await issuers[variant].inner.issue(IssueRequest(names=(name,)))
                    bare[variant].append(time.perf_counter() - t0)
                    continue
                rec = await one_job(variant, hold, name, i)
                records.append(rec)
                if rec["state"] != "done":
                    say(f"  run {i} {variant} hold {hold}: {rec['state']}: {rec['error']}")
            last = [r for r in records if r["index"] == i]
            say(
                f"latency run {i + 1}/{n}: "
                + ", ".join(f"{r['variant']}/h{r['hold']:g} {r['total']:.2f}s" for r in last)
                + f"; bare pebble {bare['pebble'][-1]:.3f}s local {bare['local'][-1]:.3f}s"
            )
    return summarise_latency(records, bare, holds)


def pebble_pid(pebble: Pebble) -> str:
    p = pebble.proc.pid if pebble.proc is not None else None
    d = pebble.dns_proc.pid if pebble.dns_proc is not None else None
    return f"{p} (challtestsrv {d})"


def job_record(
    job: Job,
    variant: str,
    hold: float,
    index: int,
    wall: float,
    calls: Sequence[IssueCall],
    target: TimedFilesTarget,
    prober: TimedProber,
) -> dict[str, Any]:
    st = job.state_times
    rec: dict[str, Any] = {
        "variant": variant,
        "hold": hold,
        "index": index,
        "job": job.id,
        "state": job.state,
        "error": job.last_error,
        "run_wall": round(wall, 4),
    }
    if job.state != "done":
        return rec
    issuing, deploying, verifying, done = (
        st[s] for s in ("issuing", "deploying", "verifying", "done")
    )
    rec.update(
        total=secs(issuing, done),
        issue=secs(issuing, deploying),
        deploy=secs(deploying, verifying),
        verify=secs(verifying, done),
    )
    ok_calls = [c for c in calls if c.ok]
    rec["issuer_call"] = secs(ok_calls[-1].start, ok_calls[-1].end) if ok_calls else None
    rec["deploy_call"] = target.last.get("deploy")
    rec["write"] = target.last.get("write")
    rec["nginx_t"] = target.last.get("test")
    rec["reload"] = target.last.get("reload")
    rounds = [r for r in prober.rounds if r.start >= verifying]
    first = next(
        (
            r
            for r in rounds
            if r.fingerprints and all(f == job.new_fingerprint for f in r.fingerprints)
        ),
        None,
    )
    rec["probes"] = len(rounds)
    rec["probe_ms"] = (
        1000 * statistics.fmean(secs(r.start, r.end) for r in rounds) if rounds else None
    )
    rec["to_first_new"] = secs(verifying, first.end) if first is not None else None
    rec["missed_probes"] = sum(1 for r in rounds if first is not None and r.start < first.start)
    return rec


def summarise_latency(
    records: list[dict[str, Any]], bare: dict[str, list[float]], holds: Sequence[float]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        for hold in holds:
            rs = [r for r in records if r["variant"] == variant and r["hold"] == hold]
            ok = [r for r in rs if r["state"] == "done"]
            row: dict[str, Any] = {
                "variant": variant,
                "hold": hold,
                "runs": len(rs),
                "done": len(ok),
            }
            for key in (
                "total",
                "issue",
                "deploy",
                "verify",
                "issuer_call",
                "deploy_call",
                "write",
                "nginx_t",
                "reload",
                "to_first_new",
                "probes",
                "probe_ms",
                "run_wall",
            ):
                vals = [float(r[key]) for r in ok if r.get(key) is not None]
                row[key] = dist(vals) if vals else None
            # The executor's own work inside each phase: store transitions and audit appends.
            row["overhead"] = {
                "issue": dist([r["issue"] - r["issuer_call"] for r in ok if r["issuer_call"]]),
                "deploy": dist([r["deploy"] - r["deploy_call"] for r in ok if r["deploy_call"]]),
            }
            rows.append(row)
    ref = {v: dist(bare[v]) for v in VARIANTS if bare[v]}
    ratios: dict[str, float] = {}
    for row in rows:
        if row["total"] and row["variant"] in ref:
            ratios[f"{row['variant']}/hold{row['hold']:g}"] = round(
                row["total"]["p50"] / ref[row["variant"]]["p50"], 1
            )
    return {"rows": rows, "bare": ref, "ratio_total_p50_to_bare_p50": ratios, "jobs": records}


def latency_tables(res: dict[str, Any]) -> str:
    def ms(d: dict[str, float] | None, key: str = "p50") -> str:
        return "-" if d is None else f"{1000 * d[key]:.0f}"

    lines = [
        "| issuer | hold s | jobs done | total p50 ms | p95 | max | issue p50 / p95 "
        "| deploy p50 / p95 | verify p50 / p95 |",
        "|" + "---|" * 9,
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['variant']} | {r['hold']:g} | {r['done']}/{r['runs']} | {ms(r['total'])} "
            f"| {ms(r['total'], 'p95')} | {ms(r['total'], 'max')} "
            f"| {ms(r['issue'])} / {ms(r['issue'], 'p95')} "
            f"| {ms(r['deploy'])} / {ms(r['deploy'], 'p95')} "
            f"| {ms(r['verify'])} / {ms(r['verify'], 'p95')} |"
        )
    for v, d in res["bare"].items():
        what = "bare ACME order (`AcmeIssuer.issue`)" if v == "pebble" else "bare local CA issue"
        lines.append(f"| {what} | - | {d['n']} | {ms(d)} | {ms(d, 'p95')} | {ms(d, 'max')} | | | |")
    lines += [
        "",
        "Where the time goes (medians, ms): inside issue, deploy and verify.",
        "",
        "| issuer | hold s | issuer call | executor (issue) | files write | nginx -t "
        "| nginx -s reload | executor (deploy) | verify: to first new-serial probe "
        "| probes per verify | ms per probe |",
        "|" + "---|" * 11,
    ]
    for r in res["rows"]:
        if r["total"] is None:
            continue
        probes = r["probes"]["p50"] if r["probes"] else float("nan")
        lines.append(
            f"| {r['variant']} | {r['hold']:g} | {ms(r['issuer_call'])} "
            f"| {ms(r['overhead']['issue'])} | {ms(r['write'])} | {ms(r['nginx_t'])} "
            f"| {ms(r['reload'])} | {ms(r['overhead']['deploy'])} | {ms(r['to_first_new'])} "
            f"| {probes:g} | {r['probe_ms']['p50']:.1f} |"
        )
    ratios = ", ".join(f"{k} {v:g}x" for k, v in res["ratio_total_p50_to_bare_p50"].items())
    lines += ["", f"Total p50 / bare issue p50: {ratios}."]
    return "\n".join(lines)


# -- benchmark 2: mass renewal under a budget --------------------------------------------------


def inventory(fleet: NginxFleet, count: int, at: datetime) -> list[InventoryItem]:
    """What the scanner would have found: every endpoint's current leaf, revoked and about to
    be useless (``not_after`` in an hour, so every one is due now)."""
    items = []
    for ep in fleet.endpoints[:count]:
        leaf = x509.load_pem_x509_certificates(ep.cert_path.read_bytes())[0]
        info = cert_info(leaf)
        t = ep.target()
        items.append(
            InventoryItem(
                ref=t.ref,
                source="tls",
                target=t.name,
                fingerprint_sha256=info.fingerprint_sha256,
                serial=info.serial,
                subject=info.subject,
                subject_cn=info.subject_cn,
                issuer=info.issuer,
                issuer_cn=info.issuer_cn,
                sans=info.sans,
                not_before=at - timedelta(days=89),
                not_after=at + timedelta(hours=1),
                key_type=info.key_type,
                key_bits=info.key_bits,
                signature_algorithm=info.signature_algorithm,
                problems=(ProblemCode.REVOKED,),
                error=None,
                first_seen=at - timedelta(days=89),
                last_scanned=at,
            )
        )
    return items


async def mass_run(
    label: str,
    count: int,
    budget: RateLimit | None,
    fleet: NginxFleet,
    issuer: TimedIssuer,
    prober: TimedProber,
    pebble: Pebble,
    work: Path,
    clock: Clock,
    hold: float,
    timeout: float,
    window: timedelta,
) -> dict[str, Any]:
    url = f"sqlite:///{work / f'mass-{label}.db'}"
    targets = [files_target(fleet, ep.server_name) for ep in fleet.endpoints[:count]]
    rule = Rule(name="mass-revocation", issuers=(issuer.name,))
    policy = Policy(
        rules=(rule,),
        issuers={issuer.name: IssuerBudget(new_orders=budget)} if budget is not None else {},
    )
    calls0 = len(issuer.calls)
    log_start = pebble.log_path.stat().st_size
    with JobStore.open(url) as jobs, AuditLog.open(url) as audit:
        executor = Executor(
            jobs,
            audit,
            {issuer.name: issuer},
            {t.name: t for t in targets},
            prober,
            clock,
            verify_timeout=30.0,
            verify_hold=hold,
            instance="bench",
        )
        remediation = Remediation(executor, policy, targets, default_issuer=issuer.name)
        t_start = now()
        p0 = time.perf_counter()
        planned = await remediation.plan(inventory(fleet, count, t_start))
        plan_s = time.perf_counter() - p0
        planned_at = {res.job.id: p.at for p, res in planned if res.job is not None}
        created = sum(1 for _, res in planned if res.created)
        waves = sorted({round(secs(t_start, at)) for at in planned_at.values()})
        say(
            f"mass {label}: planned {len(planned)} ({created} jobs created) in {plan_s:.1f}s; "
            f"planned starts at +{waves} s"
        )
        p0 = time.perf_counter()
        deadline = p0 + timeout
        ran = 0
        while True:
            outcomes = await executor.run_due()
            ran += sum(1 for o in outcomes if o.ran)
            current = jobs.list()
            states: dict[str, int] = {}
            for j in current:
                states[j.state] = states.get(j.state, 0) + 1
            if outcomes:
                say(f"mass {label}: +{time.perf_counter() - p0:.0f}s {states}")
            if all(j.state in TERMINAL for j in current):
                break
            if time.perf_counter() > deadline:
                say(f"mass {label}: giving up after {timeout:.0f}s")
                break
            waiting = [j.next_attempt_at for j in current if j.state == "approved"]
            nxt = min((w for w in waiting if w is not None), default=None)
            pause = 0.05 if nxt is None else max(0.05, min(1.0, secs(now(), nxt)))
            await asyncio.sleep(pause)
        final = jobs.list()
    calls = issuer.calls[calls0:]
    ca_orders = pebble_orders(pebble.log_path, log_start)
    done = [j for j in final if j.state == "done"]
    issuing = [j.state_times["issuing"] for j in final if "issuing" in j.state_times]
    ends = [j.state_times["done"] for j in done]
    wall = secs(t_start, max(ends)) if ends else float("nan")
    per = budget.per if budget is not None else window
    store_max, store_at = max_in_window(issuing, per)
    calls_max, _ = max_in_window([c.start for c in calls], per)
    lags = [
        secs(planned_at[j.id], j.state_times["issuing"])
        for j in final
        if j.id in planned_at and "issuing" in j.state_times
    ]
    wave_lag: dict[str, float] = {}
    for w in waves:
        ls = [
            secs(planned_at[j.id], j.state_times["issuing"])
            for j in final
            if j.id in planned_at
            and "issuing" in j.state_times
            and round(secs(t_start, planned_at[j.id])) == w
        ]
        if ls:
            wave_lag[f"+{w}s"] = round(min(ls), 2)
    job_s = [secs(j.state_times["issuing"], j.state_times["done"]) for j in done]
    phases = {
        "issue": [secs(j.state_times["issuing"], j.state_times["deploying"]) for j in done],
        "deploy": [secs(j.state_times["deploying"], j.state_times["verifying"]) for j in done],
        "verify": [secs(j.state_times["verifying"], j.state_times["done"]) for j in done],
        "nginx_t": [t.last["test"] for t in targets if "test" in t.last],
        "reload": [t.last["reload"] for t in targets if "reload" in t.last],
    }
    res: dict[str, Any] = {
        "label": label,
        "certs": count,
        "budget": budget.describe() if budget is not None else None,
        "budget_limit": budget.limit if budget is not None else None,
        "window_s": per.total_seconds(),
        "plan_s": round(plan_s, 2),
        "planned_waves_s": waves,
        "wall_s": round(wall, 1),
        "jobs_done": len(done),
        "jobs_other": {
            s: sum(1 for j in final if j.state == s) for s in {j.state for j in final} - {"done"}
        },
        "errors": sorted({j.last_error for j in final if j.state != "done" and j.last_error}),
        "issue_calls": len(calls),
        "issue_failures": sum(1 for c in calls if not c.ok),
        "rate_limited_429": sum(1 for c in calls if c.rate_limited),
        "max_orders_in_window_store": store_max,
        "max_window_end": store_at.isoformat() if store_at else None,
        "max_orders_in_window_calls": calls_max,
        "orders_over_limit_store": over_limit(issuing, per, budget.limit) if budget else 0,
        "pebble_orders": len(ca_orders),
        "max_orders_in_window_pebble_log_lower_bound": max_in_window_stamped(ca_orders, per),
        "start_lag_s": dist(lags) if lags else None,
        "first_start_lag_per_wave_s": wave_lag,
        "job_s": dist(job_s) if job_s else None,
        "phases_s": {k: dist(v) for k, v in phases.items() if v},
        "certs_per_min": round(60 * len(done) / wall, 1) if ends else None,
    }
    res["budget_held"] = budget is None or (
        store_max <= budget.limit
        and calls_max <= budget.limit
        and res["max_orders_in_window_pebble_log_lower_bound"] <= budget.limit
    )
    say(
        f"mass {label}: {len(done)}/{count} done in {wall:.1f}s "
        f"({res['certs_per_min']} certs/min); max orders per {per.total_seconds():g}s window: "
        f"store {store_max}, issuer calls {calls_max}, Pebble log >= "
        f"{res['max_orders_in_window_pebble_log_lower_bound']}"
        + (f" (limit {budget.limit})" if budget is not None else "")
        + f"; 429s {res['rate_limited_429']}"
    )
    return res


async def mass(
    args: argparse.Namespace, work: Path, pebble: Pebble, clock: Clock
) -> list[dict[str, Any]]:
    local_ca = LocalCAIssuer("local", LocalCAConfig(state_dir=work / "mass-localca"), clock=clock)
    names = [f"m{i:04d}.fleet.test" for i in range(max(args.mass, args.unconstrained))]
    say(f"mass: minting {len(names)} initial certificates")
    specs = await mint(local_ca, names)
    anchors = trust_file(work, pebble, local_ca)
    prober = TimedProber(TlsProber(load_anchors([str(anchors)], use_system=False), clock))
    issuer = TimedIssuer(acme_issuer(pebble, work / "mass-acme", clock))
    fleet = NginxFleet(
        work / "mass-nginx",
        specs,
        worker_processes=args.nginx_workers,
        binary=args.nginx,
        start_timeout=60,
    )
    out: list[dict[str, Any]] = []
    with fleet:
        say(f"mass: nginx PID {fleet.pid}, {len(specs)} server blocks (one port each)")
        await issuer.issue(IssueRequest(names=("warm.fleet.test",)))  # account registration
        budget = RateLimit(args.budget_limit, timedelta(seconds=args.budget_per))
        out.append(
            await mass_run(
                "budget",
                args.mass,
                budget,
                fleet,
                issuer,
                prober,
                pebble,
                work,
                clock,
                args.hold,
                args.mass_timeout,
                budget.per,
            )
        )
        if args.unconstrained > 0:
            out.append(
                await mass_run(
                    "no-budget",
                    args.unconstrained,
                    None,
                    fleet,
                    issuer,
                    prober,
                    pebble,
                    work,
                    clock,
                    args.hold,
                    args.mass_timeout,
                    budget.per,
                )
            )
    return out


def mass_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | certs | budget | jobs done | wall s | certs/min | max orders per window "
        "(store / issuer calls / Pebble log >=) | 429s | planned waves (s after plan) "
        "| start lag s p50 / max | job s p50 / p95 |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        lag = r["start_lag_s"]
        job = r["job_s"]
        window = (
            f"{r['max_orders_in_window_store']} / {r['max_orders_in_window_calls']} / "
            f"{r['max_orders_in_window_pebble_log_lower_bound']} per {r['window_s']:g}s"
            + (f" (limit {r['budget_limit']})" if r["budget_limit"] is not None else "")
        )
        waves = ", ".join(str(w) for w in r["planned_waves_s"])
        lines.append(
            f"| {r['label']} | {r['certs']} | {r['budget'] or 'none'} "
            f"| {r['jobs_done']} | {r['wall_s']:.1f} | {r['certs_per_min']} | {window} "
            f"| {r['rate_limited_429']} | {waves} "
            f"| {lag['p50']:.2f} / {lag['max']:.2f} | {job['p50']:.2f} / {job['p95']:.2f} |"
            if lag and job
            else f"| {r['label']} | {r['certs']} | {r['budget'] or 'none'} | {r['jobs_done']} "
            f"| {r['wall_s']} | - | {window} | {r['rate_limited_429']} | {waves} | - | - |"
        )
    lines.append("")
    for r in rows:
        ph = r["phases_s"]
        if not ph:
            continue
        parts = [
            f"{k} {1000 * ph[k]['p50']:.0f}"
            for k in ("issue", "deploy", "nginx_t", "reload", "verify")
            if k in ph
        ]
        lines.append(f"- {r['label']}: job phases, p50 ms: " + ", ".join(parts))
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def machine(nginx: str) -> dict[str, Any]:
    return machine_info(
        nginx=tool_version([nginx, "-v"]),
        pebble=tool_version(["dpkg-query", "-W", "-f", "${Version}", "pebble"]),
        loadavg_start=os.getloadavg(),
    )


async def run(args: argparse.Namespace) -> int:
    nginx = find_binary("nginx")
    if nginx is None or find_binary("pebble") is None or find_binary("pebble-challtestsrv") is None:
        say("needs nginx, pebble and pebble-challtestsrv (apt-get install nginx pebble)")
        return 2
    args.nginx = nginx
    cancel_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the harnesses stop their daemons
    info = machine(nginx)
    clock = SystemClock()
    work = Path(tempfile.mkdtemp(prefix="certpilot-remediation-", dir=args.workdir))
    started = now()
    t0 = time.perf_counter()
    lat: dict[str, Any] | None = None
    mass_rows: list[dict[str, Any]] = []
    try:
        with Pebble(work / "pebble", nonce_reject=args.nonce_reject) as pebble:
            say(
                f"Pebble PID {pebble_pid(pebble)} on {pebble.directory_url}, "
                f"http-01 port {pebble.http_port}"
            )
            if args.runs > 0:
                lat = await latency(args, work, pebble, clock)
            if args.mass > 0:
                mass_rows = await mass(args, work, pebble, clock)
    finally:
        remove_run_directory(work, args.keep)  # private keys: do not leave them
    info["loadavg_end"] = os.getloadavg()
    elapsed = time.perf_counter() - t0

    valid = True
    print(
        f"Remediation benchmark, {started:%Y-%m-%dT%H:%MZ}, {elapsed:.0f} s; "
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['nginx']}, pebble {info['pebble']}, "
        f"nginx worker_processes {args.nginx_workers}"
    )
    if lat is not None:
        print()
        print(f"### Issuance to verified: {args.runs} runs per row")
        print()
        print(latency_tables(lat))
        valid &= all(r["done"] == r["runs"] for r in lat["rows"])
    if mass_rows:
        print()
        print("### Mass renewal")
        print()
        print(
            f"One nginx, {max(args.mass, args.unconstrained)} server blocks (one port each); "
            f"verify_hold {args.hold:g} s; `Remediation.plan` then `executor.run_due()` in a loop."
        )
        print()
        print(mass_table(mass_rows))
        for r in mass_rows:
            valid &= (
                r["jobs_done"] == r["certs"] and r["rate_limited_429"] == 0 and r["budget_held"]
            )
            if not r["budget_held"]:
                print(
                    f"\n**{r['label']}: budget exceeded**: "
                    f"{r['max_orders_in_window_store']} orders "
                    f"in the {r['window_s']:g}s window ending {r['max_window_end']} "
                    f"(limit {r['budget_limit']}); {r['orders_over_limit_store']} orders found "
                    f"the window ending at them over the limit; first start lag per planned wave: "
                    f"{r['first_start_lag_per_wave_s']}"
                )
    print(f"\nrun {'VALID' if valid else 'INVALID'}")
    summary = {
        "benchmark": "remediation",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(elapsed, 1),
        "machine": info,
        "params": {k: v for k, v in vars(args).items() if k not in {"json"}},
        "valid": valid,
        "latency": lat,
        "mass": mass_rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
        say(f"wrote {args.json}")
    return 0 if valid else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 10 runs, 30 certs, 10 per 20s")
    p.add_argument("--runs", type=int, default=None, help="latency runs per variant (30)")
    p.add_argument("--hold", type=float, default=0.7, help="verify_hold seconds (also run with 0)")
    p.add_argument("--mass", type=int, default=None, help="certificates renewed at once (100)")
    p.add_argument("--budget-limit", type=int, default=None, help="new orders per window (20)")
    p.add_argument("--budget-per", type=float, default=None, help="window seconds (60)")
    p.add_argument(
        "--unconstrained",
        type=int,
        default=None,
        help="certificates renewed again with no budget (default --mass; --quick 15; 0: skip)",
    )
    p.add_argument("--mass-timeout", type=float, default=900.0, help="seconds per mass run")
    p.add_argument("--nginx-workers", default="auto", help="nginx worker_processes")
    p.add_argument("--nonce-reject", type=int, default=0, help="PEBBLE_WFE_NONCEREJECT percent")
    p.add_argument("--json", help="write every figure and per-job timings here")
    p.add_argument("--workdir", default=None, help="parent of the run's private directory")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    p.add_argument("--verbose", action="store_true", help="certpilot's own INFO logs to stderr")
    args = p.parse_args(argv)
    quick = {"runs": 10, "mass": 30, "budget_limit": 10, "budget_per": 20.0, "unconstrained": 15}
    full = {"runs": 30, "mass": 100, "budget_limit": 20, "budget_per": 60.0}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.unconstrained is None:
        args.unconstrained = args.mass
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
