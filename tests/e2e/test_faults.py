"""Faults survived (issue 8, item 4): real components fail under a running certpilot, which
keeps going, loses nothing and recovers on its own (DESIGN.md section 5).

Each test breaks one thing and then checks the same two promises concretely:

* **nothing lost**: every job ends in a state that matches the files on disk, none is
  duplicated; the inventory's events have contiguous ids and replay, per location, into exactly
  the state the inventory holds now (one ``location_added`` each, problems raised and cleared
  in turn, certificate changes recorded once); ``certpilot audit verify`` passes;
* **recovers on its own**: the same ``certpilot run`` process (same PID, never restarted)
  answers ``/healthz`` throughout and ``/readyz`` again within a bound, and its next scans and
  jobs go through.

The faults:

* ``test_postgresql_restart_mid_scan_*``: the store's PostgreSQL stops while a scan of 50 nginx
  endpoints and three misbehaving peers is running (an unfinished ``scan_run`` row is the
  proof), three endpoints change certificate while it is down, and it comes back.
* ``test_postgresql_restart_mid_job_*``: PostgreSQL stops while a renewal is deploying (a
  three-second reload); the job's next write fails. The job is resumed by the same process
  once its lease runs out and ends ``done``.
* ``test_pebble_restart_*``: the ACME CA goes away after the account exists; the renewal
  retries with growing backoff, and ends ``done`` once Pebble is back (a new process, which
  forgot the account and has a new root).
* ``test_openbao_restart_*``: the secrets store goes away: ``x509_source_up{source="openbao"}``
  is 0 and its items are kept, not forgotten; a dev server comes back empty and is re-seeded
  (the scanner's token is part of the seed, so no scan sees the half-seeded store).
* ``test_stalling_and_trickling_tls_peers_*``: the prober against peers that never answer, stop
  after the first bytes of a ServerHello, or trickle a real handshake a byte every 20 ms: each
  is a ``timeout`` within the configured deadline (a total deadline, not per read), the scan of
  the whole list takes about one timeout, and the good endpoints are all healthy.
* ``test_slowloris_*``: 120 connections trickle request headers into certpilot's HTTP port;
  ``/healthz`` and ``/metrics`` still answer within a second, and the server drops the slow
  connections by itself (``certpilot.http.IDLE_TIMEOUT``).
* ``test_disk_full_*``: a renewal whose ``files`` target is on a full filesystem: a 64 KiB
  tmpfs mounted for the test when running as root (else ENOSPC injected at the target's write
  boundary, ``remediator.targets.files._write_all``, in this process: the test says which).
  The job is ``rolled_back`` with one line naming the file, the old files are untouched, no
  temporary file is left; once space is freed, ``certpilot retry`` and the running service
  finish it.

Covered elsewhere, not repeated here: kill -9 in every remediation state
(``tests/e2e/test_kill9.py``), a DNS failure as a problem code
(``tests/integration/test_tls_scanner.py::test_dns_failure``, and a silent peer there:
``test_silent_peer_times_out_within_bound``), clock skew between replicas
(``tests/integration/test_cluster.py``), three replicas with the leader killed
(``tests/e2e/test_replicas.py``), Pebble down, 429 with Retry-After and badNonce
(``tests/integration/test_acme_issuer.py``), OpenBao sealed (``tests/integration/test_openbao.py``
and ``tests/integration/test_openbao_scanner.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
import sqlalchemy
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client.parser import text_string_to_metric_families

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.domain.model import EndpointTarget
from certpilot.domain.problems import ProblemCode
from certpilot.http import IDLE_TIMEOUT
from certpilot.localca import LocalCA, write_key
from certpilot.settings import load_settings
from certpilot.store.audit import AuditLog
from certpilot.store.jobs import Job, JobStore
from scanner.runner import Scanner, ScanOptions
from scanner.tls_endpoint import ProbeSettings
from tests.support.faulty_peers import (
    PartialTLSPeer,
    SilentPeer,
    SlowlorisClient,
    TricklePeer,
)
from tests.support.openbao import OpenBao
from tests.support.pebble import Pebble
from tests.support.postgres import PostgresCluster
from tests.support.services import NginxFleet, free_port, require_binary

CLI = [sys.executable, "-m", "certpilot.cli"]
#: Loopback only: no proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers -------------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "CERTPILOT_USER": "faults-test"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def audit_verify(config: Path) -> None:
    out = cli("audit", "verify", "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr


def wait_until(
    what: str, check: Callable[[], bool], seconds: float, *, on_timeout: Callable[[], str]
) -> float:
    """Poll ``check`` (errors count as "not yet") until true; returns the seconds it took."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < seconds:
        try:
            if check():
                return time.monotonic() - started
        except (OSError, ValueError, KeyError, AssertionError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {seconds:g}s waiting for {what} ({last})\n{on_timeout()}"
    )


class CertpilotRun:
    """``certpilot run --config`` in its own process group, stopped by its PID."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.port = int(yaml.safe_load(config.read_text())["http"]["port"])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*CLI, "run", "--config", str(self.config)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        return self

    def stop(self) -> None:
        """SIGTERM to its process group (its own: ``start_new_session``), SIGKILL after 30 s;
        a reload command it started is in that group too."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        mine = [line for line in text.splitlines() if "aiohttp.access" not in line]
        return "\n".join(mine[-lines:])

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return http_get(self.port, path, timeout)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, f"{path}: {status} {body[:300]}"
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200, text[:300]
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def wait(self, what: str, check: Callable[[], bool], seconds: float) -> float:
        def guarded() -> bool:
            if not self.alive:  # not an AssertionError: that would mean "not yet"
                raise RuntimeError(f"certpilot run exited\n{self.tail()}")
            return check()

        return wait_until(what, guarded, seconds, on_timeout=self.tail)

    def ready(self) -> bool:
        return self.get("/readyz", timeout=2)[0] == 200

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.json("/api/v1/jobs?limit=100")["jobs"])

    def job(self, job_id: int) -> dict[str, Any]:
        return next(j for j in self.jobs() if j["id"] == job_id)


def all_events(svc: CertpilotRun) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        page = svc.json(f"/api/v1/events?since_id={since}&limit=10000")
        events += page["events"]
        if page["count"] < page["limit"]:
            return events
        since = page["next_since_id"]


@dataclass
class _Location:
    added: int = 0
    removed: int = 0
    present: bool = False
    fingerprint: str | None = None
    problems: set[str] = field(default_factory=set)
    new_certificates: list[str] = field(default_factory=list)


def replay_events(
    events: list[dict[str, Any]], items: list[dict[str, Any]]
) -> dict[str, _Location]:
    """Check the event stream: ids contiguous and unique, every event legal for the state its
    location was in, each fingerprint first seen once; and replayed, it gives exactly the
    inventory's current locations, problems and certificates. Returns the replayed state."""
    ids = [e["id"] for e in events]
    assert ids, "no events at all"
    assert ids == list(range(ids[0], ids[0] + len(ids))), f"event ids not contiguous: {ids}"
    seen_fps: set[str] = set()
    state: dict[str, _Location] = {}
    for e in events:
        loc = state.setdefault(e["ref"], _Location())
        kind, fp, code = e["kind"], e["fingerprint_sha256"], e["code"]
        where = f"event {e['id']} {kind} {e['ref']}"
        if kind == "location_added":
            assert not loc.present, f"{where}: already present"
            loc.present, loc.added = True, loc.added + 1
            loc.fingerprint = fp or loc.fingerprint
        elif kind == "location_removed":
            assert loc.present, f"{where}: not present"
            loc.present, loc.removed = False, loc.removed + 1
            loc.problems.clear()
        elif kind == "first_seen":
            assert fp not in seen_fps, f"{where}: {fp} first seen twice"
            seen_fps.add(fp)
        elif kind == "new_certificate":
            assert loc.present and fp != loc.fingerprint, f"{where}: not a change"
            loc.fingerprint = fp
            loc.new_certificates.append(fp)
        elif kind == "problem_raised":
            assert loc.present and code not in loc.problems, f"{where}: {code} already raised"
            loc.problems.add(code)
        elif kind == "problem_cleared":
            assert code in loc.problems, f"{where}: {code} was not raised"
            loc.problems.discard(code)
        if kind in {"first_seen", "location_added"} and fp and loc.fingerprint is None:
            loc.fingerprint = fp
    current = {i["ref"]: i for i in items}
    present = {ref for ref, loc in state.items() if loc.present}
    assert present == set(current), (
        f"events say {sorted(present ^ set(current))} differ from the inventory"
    )
    for ref, item in current.items():
        loc = state[ref]
        assert loc.problems == set(item["problems"]), (ref, loc.problems, item["problems"])
        if item["fingerprint_sha256"] is not None and loc.fingerprint is not None:
            assert loc.fingerprint == item["fingerprint_sha256"], ref
    return state


def audit_of(url: str, job_id: int) -> list[Any]:
    with AuditLog.open(url) as audit:
        return [e for e in audit.entries() if e.detail.get("job") == str(job_id)]


def fingerprint(chain_pem: bytes) -> str:
    """SHA-256 of the leaf's DER, as the inventory shows it."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    return leaf.fingerprint(hashes.SHA256()).hex()


def serial_of_pem(chain_pem: bytes) -> str:
    return format(x509.load_pem_x509_certificates(chain_pem)[0].serial_number, "x")


def serial_of(path: Path) -> str:
    return serial_of_pem(path.read_bytes())


def _expiring(ca: LocalCA, name: str, now: datetime) -> tuple[bytes, bytes]:
    """A 30-day certificate with a day left (due for renewal under the default policy)."""
    issued = ca.issue([name], now, lifetime=timedelta(days=30), not_before=now - timedelta(days=29))
    return issued.chain_pem(), issued.key_pem()


def _reachable(directory: Path) -> None:
    """Let the ``postgres`` user traverse ``directory``'s parents again, as
    ``PostgresCluster`` did at start: another pytest session on this machine resets
    ``/tmp/pytest-of-<user>`` to 0700 when it starts, and then the server can neither
    checkpoint at shutdown nor start again."""
    if os.geteuid() != 0:
        return
    for parent in [directory, *directory.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, mode | stat.S_IXOTH)


@contextlib.contextmanager
def postgres_down(cluster: PostgresCluster) -> Iterator[None]:
    """Stop the shared cluster (fast shutdown: every backend is terminated) and, whatever
    happens in the block, start it again on the same port: later tests use it too."""
    _reachable(cluster.workdir)
    cluster.stop()
    try:
        yield
    finally:
        if cluster.pid is None:
            _reachable(cluster.workdir)
            cluster.start()


def _queue_renewal(config: Path, name: str, *, again: bool = False) -> int:
    args = ["renew", name, "--queue", "--config", str(config), "--format", "json"]
    out = cli(*args, *(["--again"] if again else []))
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = json.loads(out.stdout)["jobs"]
    assert job["state"] == "approved", job
    return int(job["id"])


# -- PostgreSQL restarts -------------------------------------------------------------------------

FLEET = 50
SCAN_TIMEOUT = 1.5


@pytest.mark.service("nginx")
@pytest.mark.service("postgresql")
def test_postgresql_restart_mid_scan_loses_no_event_and_recovers(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_url: str
) -> None:
    nginx = require_binary("nginx")
    now = datetime.now(UTC)
    ca = LocalCA("Faults Fleet", now)
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root_pem())
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(NginxFleet(tmp_path / "nginx", FLEET, binary=nginx, ca=ca))
        # Misbehaving peers in the fleet make each scan last a probe timeout: the restart
        # lands inside a scan, not between two.
        peers = [
            stack.enter_context(SilentPeer(lifetime=120)),
            stack.enter_context(PartialTLSPeer(lifetime=120)),
            stack.enter_context(TricklePeer(lifetime=120)),
        ]
        endpoints = [
            {"host": ep.server_name, "port": ep.port, "address": "127.0.0.1"}
            for ep in fleet.endpoints
        ] + [
            {"host": f"bad{i}.faults.test", "port": p.port, "address": "127.0.0.1"}
            for i, p in enumerate(peers)
        ]
        config = write_config(
            tmp_path / "certpilot.yaml",
            {
                "store": {"url": pg_url},
                "http": {"host": "127.0.0.1", "port": free_port()},
                "scan": {
                    "interval": "2s",
                    "timeout": f"{SCAN_TIMEOUT}s",
                    "ca_files": [str(root)],
                    "system_trust": False,
                },
                "slo": {"evaluation_interval": "1h"},
                "targets": {"endpoints": endpoints},
                "remediation": {"enabled": False},
                "cluster": {"heartbeat": "0.5s", "ttl": "3s", "instance": "faults"},
            },
        )
        svc = stack.enter_context(CertpilotRun(config, tmp_path / "certpilot.log"))
        pid = svc.pid
        svc.wait("the first scan (/readyz 200)", svc.ready, 60)
        swapped = {ep.server_name: ca.issue([ep.server_name], now) for ep in fleet.endpoints[:3]}
        engine = sqlalchemy.create_engine(pg_url, pool_pre_ping=True)
        stack.callback(engine.dispose)

        def unfinished_run() -> int | None:
            with engine.connect() as conn:
                row = conn.execute(
                    sqlalchemy.text(
                        "SELECT id FROM scan_run WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1"
                    )
                ).first()
            return int(row[0]) if row else None

        svc.wait("a scan in progress", lambda: unfinished_run() is not None, 15)
        interrupted = unfinished_run()
        assert interrupted is not None
        engine.dispose()
        with postgres_down(pg_cluster):
            down_at = time.monotonic()
            # While the store is away, three endpoints get new certificates.
            for name, issued in swapped.items():
                fleet.replace_certificate(name, issued.chain_pem(), issued.key_pem())
            fleet.reload()
            # Visible, and alive: /readyz says why, /healthz answers.
            svc.wait("/readyz 503 while PostgreSQL is down", lambda: not svc.ready(), 10)
            status, body = svc.get("/readyz")
            assert status == 503 and "inventory" in json.loads(body)["reason"], body
            assert svc.get("/healthz")[0] == 200
            time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        back = svc.wait("/readyz 200 after PostgreSQL is back", svc.ready, 20)

        ref = {name: fleet.endpoint(name).target().ref for name in swapped}

        def items() -> dict[str, dict[str, Any]]:
            return {i["ref"]: i for i in svc.json("/api/v1/inventory")["items"]}

        def runs_after() -> list[dict[str, Any]]:
            runs = svc.json("/api/v1/runs?limit=50")["runs"]
            return [r for r in runs if r["id"] > interrupted and r["finished_at"] is not None]

        new_fps = {ref[n]: fingerprint(i.chain_pem()) for n, i in swapped.items()}

        def recovered() -> bool:
            fresh = items()
            return len(runs_after()) >= 2 and all(
                fresh[r]["fingerprint_sha256"] == fp for r, fp in new_fps.items()
            )

        svc.wait("two scans recorded after the restart, with the new certificates", recovered, 30)

        # The interrupted scan stays visibly unfinished; the ones after it are complete.
        runs = {r["id"]: r for r in svc.json("/api/v1/runs?limit=100")["runs"]}
        assert runs[interrupted]["finished_at"] is None
        for run in runs_after():
            assert run["observations"] == FLEET + len(peers), run
            assert run["problems"] == len(peers), run
        # Events: contiguous, legal, and replaying into the inventory's state.
        current = list(items().values())
        state = replay_events(all_events(svc), current)
        assert all(loc.added == 1 and loc.removed == 0 for loc in state.values())
        for name in swapped:
            assert len(state[ref[name]].new_certificates) == 1, state[ref[name]]
        for i, peer in enumerate(peers):
            bad = EndpointTarget(f"bad{i}.faults.test", peer.port, address="127.0.0.1").ref
            assert state[bad].problems == {ProblemCode.TIMEOUT.value}, state[bad]
        assert len(current) == FLEET + len(peers)
        audit_verify(config)
        assert svc.alive and svc.pid == pid  # never restarted
        metrics = svc.metrics()
        assert metrics[("certpilot_scan_runs_total", (("source", "tls"),))] >= 3
        print(f"\n/readyz 200 again {back:.1f}s after PostgreSQL accepted connections")


@pytest.mark.service("postgresql")
def test_postgresql_restart_mid_job_resumes_the_job_in_the_same_process(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_url: str
) -> None:
    name = "pgjob.faults.test"
    now = datetime.now(UTC)
    ca = LocalCA("Faults Files", now)
    site = tmp_path / "site"
    site.mkdir()
    cert, key = site / "cert.pem", site / "key.pem"
    chain_pem, key_pem = _expiring(ca, name, now)
    cert.write_bytes(chain_pem)
    write_key(key, key_pem)
    config = write_config(
        tmp_path / "certpilot.yaml",
        {
            "store": {"url": pg_url},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "scan": {"interval": "1h", "system_trust": False},
            "slo": {"evaluation_interval": "1h"},
            "targets": {"files": [str(cert)]},
            "remediation": {
                "enabled": False,  # only the queued job runs
                "interval": "1s",
                "verify_timeout": "2s",
                "lease": "6s",
                "issuers": {"ca": {"kind": "local_ca", "state_dir": str(tmp_path / "issuer")}},
                "targets": [
                    {
                        "name": "site",
                        "kind": "files",
                        "issuer": "ca",
                        "cert_path": str(cert),
                        "key_path": str(key),
                        # A slow reload: the job is deploying for three seconds.
                        "reload_command": ["sleep", "3"],
                    }
                ],
            },
            "cluster": {"heartbeat": "0.5s", "ttl": "3s", "instance": "faults"},
        },
    )
    with CertpilotRun(config, tmp_path / "certpilot.log") as svc, JobStore.open(pg_url) as jobs:
        pid = svc.pid
        svc.wait("the first scan", svc.ready, 60)
        job_id = _queue_renewal(config, name)

        def state() -> str:
            return str(jobs.get(job_id).state)

        svc.wait(f"job {job_id} deploying", lambda: state() == "deploying", 30)
        with postgres_down(pg_cluster):
            # The reload ends while the store is away: the job's next write fails.
            time.sleep(4.5)
        svc.wait("/readyz 200 after PostgreSQL is back", svc.ready, 20)
        took = svc.wait(f"job {job_id} done", lambda: state() in {"done", "failed"}, 45)
        job: Job = jobs.get(job_id)
        assert job.state == "done", (job.state, job.last_error, svc.tail())
        # One job, re-issued once (the key of the first issue died with the failed run), and
        # the file holds what the job says it deployed.
        assert [j.id for j in jobs.list()] == [job_id]
        assert job.attempts == 2, job.attempts
        assert serial_of(cert) == job.new_serial
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert not [p for p in site.iterdir() if ".certpilot-tmp." in p.name]
        resumed = [e for e in audit_of(pg_url, job_id) if e.action == "resume"]
        assert len(resumed) == 1 and resumed[0].detail["plan"] == "reissue", resumed
        audit_verify(config)
        assert svc.alive and svc.pid == pid
        print(f"\njob {job_id} done {took:.1f}s after PostgreSQL came back")


# -- the CA and the secrets store restart ---------------------------------------------------------


@pytest.mark.service("pebble")
def test_pebble_restart_mid_renewal_retries_with_backoff_and_finishes(tmp_path: Path) -> None:
    require_binary("pebble")
    require_binary("pebble-challtestsrv")
    name = "acme.faults.test"  # pebble-challtestsrv resolves every name to 127.0.0.1
    now = datetime.now(UTC)
    site = tmp_path / "site"
    site.mkdir()
    cert, key = site / "cert.pem", site / "key.pem"
    chain_pem, key_pem = _expiring(LocalCA("Faults Before ACME", now), name, now)
    cert.write_bytes(chain_pem)
    write_key(key, key_pem)
    with Pebble(tmp_path / "pebble") as pebble:
        config = write_config(
            tmp_path / "certpilot.yaml",
            {
                "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
                "http": {"host": "127.0.0.1", "port": free_port()},
                "scan": {"interval": "1h", "system_trust": False},
                "slo": {"evaluation_interval": "1h"},
                "targets": {"files": [str(cert)]},
                "remediation": {
                    "enabled": False,
                    "interval": "1s",
                    "verify_timeout": "5s",
                    "max_attempts": 8,
                    "issuers": {
                        "pebble": {
                            "kind": "acme",
                            "directory_url": pebble.directory_url,
                            "state_dir": str(tmp_path / "acme"),
                            "ca_bundle": str(pebble.ca_bundle),
                            "http_host": "127.0.0.1",
                            "http_port": pebble.http_port,
                            "network_timeout": 3,
                            "order_timeout": 20,
                        }
                    },
                    "targets": [
                        {
                            "name": "site",
                            "kind": "files",
                            "issuer": "pebble",
                            "cert_path": str(cert),
                            "key_path": str(key),
                        }
                    ],
                },
            },
        )
        db = f"sqlite:///{tmp_path / 'certpilot.db'}"
        with CertpilotRun(config, tmp_path / "certpilot.log") as svc:
            pid = svc.pid
            svc.wait("the first scan", svc.ready, 60)
            # A first renewal while Pebble is up: the ACME account exists from then on.
            first = _queue_renewal(config, name)
            svc.wait(f"job {first} done", lambda: svc.job(first)["state"] == "done", 60)
            pebble.stop_pebble()
            try:
                job_id = _queue_renewal(config, name, again=True)
                svc.wait(
                    f"job {job_id} to fail twice while the CA is away",
                    lambda: (
                        svc.job(job_id)["attempts"] >= 2 and svc.job(job_id)["state"] == "approved"
                    ),
                    30,
                )
                waiting = svc.job(job_id)
                assert "CA unreachable" in waiting["last_error"], waiting
                assert waiting["next_attempt_at"] is not None
                assert svc.ready() and svc.get("/healthz")[0] == 200
            finally:
                # A new Pebble process: same ports, no accounts, a new root.
                pebble.start()
            took = svc.wait(
                f"job {job_id} done once Pebble is back",
                lambda: svc.job(job_id)["state"] in {"done", "failed", "rolled_back"},
                45,
            )
            job = svc.job(job_id)
            assert job["state"] == "done", job
            jobs = svc.jobs()
            assert sorted(j["id"] for j in jobs) == [first, job_id]  # nothing doubled
            # The file holds the job's certificate, issued by the Pebble that came back.
            leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
            assert format(leaf.serial_number, "x") == job["new_serial"]
            intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem())
            leaf.verify_directly_issued_by(intermediate)
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            # Backoff: each failed attempt is audited with its delay, which grows (2 s base,
            # equal jitter: attempt n waits between half and all of 2 * 2**(n-1) seconds).
            retries = [e for e in audit_of(db, job_id) if e.result == "retry"]
            assert len(retries) == job["attempts"] - 1 >= 2, retries
            for n, entry in enumerate(retries, start=1):
                delay = float(entry.detail["retry_in"].removesuffix("s"))
                ceiling = 2.0 * 2 ** (n - 1)
                assert ceiling / 2 - 0.05 <= delay <= ceiling + 0.05, (n, delay)
                assert "CA unreachable" in entry.detail["why"]
            audit_verify(config)
            assert svc.alive and svc.pid == pid
            assert "Traceback" not in svc.log.read_text(errors="replace")
            print(f"\njob {job_id} done {took:.1f}s after Pebble came back")


BAO_TOKEN_ENV = "CERTPILOT_FAULTS_BAO_TOKEN"
#: The scanner's own token, created by the seed: a dev server that restarted (and forgot
#: everything) refuses it until it is seeded again, so no scan reads a half-seeded store.
BAO_SCANNER_TOKEN = "certpilot-faults-scanner"


def _seed_openbao(bao: OpenBao, cert_pem: str) -> None:
    client = bao.client()
    client.secrets.kv.v2.create_or_update_secret(
        path="tls/web", secret={"certificate": cert_pem}, mount_point="secret"
    )
    client.auth.token.create(id=BAO_SCANNER_TOKEN, policies=["root"], ttl="1h")


@pytest.mark.service("openbao")
def test_openbao_restart_marks_the_source_down_keeps_its_items_and_recovers(
    tmp_path: Path,
) -> None:
    require_binary("bao")
    now = datetime.now(UTC)
    cert_pem = LocalCA("Faults KV", now).issue(["kv.faults.test"], now).cert_pem().decode()
    up = ("x509_source_up", (("source", "openbao"),))
    refused = (
        "x509_source_errors_total",
        (("reason", ProblemCode.CONNECTION_REFUSED.value), ("source", "openbao")),
    )
    with OpenBao(tmp_path / "bao") as bao:
        _seed_openbao(bao, cert_pem)
        config = write_config(
            tmp_path / "certpilot.yaml",
            {
                "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
                "http": {"host": "127.0.0.1", "port": free_port()},
                "scan": {"interval": "1s", "system_trust": False},
                "slo": {"evaluation_interval": "1h"},
                "targets": {
                    "openbao": [
                        {
                            "name": "bao",
                            "url": bao.url,
                            "kv": ["secret/tls/"],
                            "token_env": BAO_TOKEN_ENV,
                            "timeout": 2,
                        }
                    ]
                },
                "remediation": {"enabled": False},
            },
        )
        env = {BAO_TOKEN_ENV: BAO_SCANNER_TOKEN}
        with CertpilotRun(config, tmp_path / "certpilot.log", env=env) as svc:
            pid = svc.pid

            def kv_items() -> list[dict[str, Any]]:
                items = svc.json("/api/v1/inventory?source=openbao")["items"]
                return [i for i in items if "#" in i["ref"]]

            svc.wait("the KV item scanned", lambda: svc.metrics().get(up) == 1.0, 60)
            (item,) = kv_items()
            ref, fp = item["ref"], item["fingerprint_sha256"]
            assert fp == fingerprint(cert_pem.encode())

            bao.stop()
            down = svc.wait("x509_source_up 0", lambda: svc.metrics().get(up) == 0.0, 15)
            runs_then = svc.json("/api/v1/runs?limit=1")["runs"][0]["id"]
            svc.wait(
                "two more scans while OpenBao is down",
                lambda: svc.json("/api/v1/runs?limit=1")["runs"][0]["id"] >= runs_then + 2,
                15,
            )
            # Visible, not lost: the source is down and says why; its item stays, and the
            # service itself is healthy (the inventory answers).
            metrics = svc.metrics()
            assert metrics[up] == 0.0 and metrics.get(refused, 0.0) >= 1.0, metrics.get(refused)
            assert [i["ref"] for i in kv_items()] == [ref]
            assert svc.ready() and svc.get("/healthz")[0] == 200

            # A dev server comes back empty; the operator seeds it again. On the same port
            # (the configured URL): the harness's start() picks new ports, so its spawn and
            # readiness steps are used as they are.
            bao._spawn()
            bao._wait_ready()
            _seed_openbao(bao, cert_pem)
            back = svc.wait("x509_source_up 1 again", lambda: svc.metrics().get(up) == 1.0, 20)
            (again,) = kv_items()
            assert (again["ref"], again["fingerprint_sha256"], again["problems"]) == (ref, fp, [])

            state = replay_events(all_events(svc), svc.json("/api/v1/inventory")["items"])
            assert (state[ref].added, state[ref].removed, state[ref].new_certificates) == (
                1,
                0,
                [],
            ), state[ref]
            audit_verify(config)
            assert svc.alive and svc.pid == pid
            assert "Traceback" not in svc.log.read_text(errors="replace")
            print(f"\nsource down after {down:.1f}s, up again {back:.1f}s after OpenBao returned")


# -- peers that stall ------------------------------------------------------------------------------

GOOD = 20
PROBE_TIMEOUT = 2.0


@pytest.mark.service("nginx")
async def test_stalling_and_trickling_tls_peers_time_out_within_one_deadline(
    tmp_path: Path,
) -> None:
    nginx = require_binary("nginx")
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(NginxFleet(tmp_path / "nginx", GOOD, binary=nginx))
        assert fleet.ca_file is not None
        bad = {
            **{f"silent{i}": stack.enter_context(SilentPeer(lifetime=60)) for i in range(3)},
            **{f"partial{i}": stack.enter_context(PartialTLSPeer(lifetime=60)) for i in range(3)},
            **{
                f"trickle{i}": stack.enter_context(TricklePeer(interval=0.02, lifetime=60))
                for i in range(3)
            },
        }
        targets = fleet.targets() + [
            EndpointTarget(f"{name}.faults.test", peer.port, address="127.0.0.1")
            for name, peer in bad.items()
        ]
        options = ScanOptions(
            probe=ProbeSettings(timeout=PROBE_TIMEOUT, concurrency=100),
            ca_files=(str(fleet.ca_file),),
            use_system_trust=False,
            workers=1,
        )
        with Scanner(options, SystemClock()) as scanner:
            loop = asyncio.get_running_loop()
            started = loop.time()
            observations = await scanner.scan(targets)
            wall = loop.time() - started
        by_ref = {o.ref: o for o in observations}
        assert len(by_ref) == len(targets)
        for t in fleet.targets():
            o = by_ref[t.ref]
            assert o.codes == () and o.error is None, (t.ref, o.problems)
        for name, peer in bad.items():
            o = by_ref[EndpointTarget(f"{name}.faults.test", peer.port, address="127.0.0.1").ref]
            assert o.codes in {(ProblemCode.TIMEOUT,), (ProblemCode.TLS_ERROR,)}, (name, o.problems)
            assert o.duration_seconds <= PROBE_TIMEOUT + 0.5, (name, o.duration_seconds)
            assert o.error is not None and "\n" not in o.error
            assert peer.accepted >= 1, name
        for trickle in (p for p in bad.values() if isinstance(p, TricklePeer)):
            # It really trickled during the probe, and the whole handshake would have taken far
            # longer than the deadline: the deadline is total, not per read.
            assert trickle.bytes_sent > 10, trickle.bytes_sent
            assert trickle.full_duration() > 10 * PROBE_TIMEOUT, trickle.full_duration()
        # Probes run side by side: about one timeout for the whole list, not one per bad peer.
        assert PROBE_TIMEOUT * 0.9 <= wall < PROBE_TIMEOUT * 1.75, wall
        assert wall < len(bad) * PROBE_TIMEOUT / 4

        # The same through the CLI: exit 1, one line per bad peer, no traceback.
        good = fleet.endpoints[0]
        out = await asyncio.to_thread(
            cli,
            "scan",
            f"{good.server_name}:{good.port}", bad["silent0"].target, bad["trickle0"].target,
            "--resolve", f"{good.server_name}:{good.port}:127.0.0.1",
            "--ca-file", str(fleet.ca_file), "--no-system-trust",
            "--timeout", "1", "--format", "json",
        )  # fmt: skip
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
        rows = json.loads(out.stdout)
        codes = sorted(tuple(r["problems"]) for r in rows)
        assert codes == [(), ("timeout",), ("timeout",)], rows
    print(f"\n{len(targets)} endpoints, {len(bad)} stalling: scanned in {wall:.2f}s")


# -- slowloris against certpilot's own HTTP server ------------------------------------------------

SLOW_CONNECTIONS = 120


def test_slowloris_does_not_starve_the_http_server_and_is_dropped(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cert = tmp_path / "cert.pem"
    cert.write_bytes(LocalCA("Faults HTTP", now).issue(["http.faults.test"], now).chain_pem())
    config = write_config(
        tmp_path / "certpilot.yaml",
        {
            "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "scan": {"interval": "1h", "system_trust": False},
            "slo": {"evaluation_interval": "1h"},
            "targets": {"files": [str(cert)]},
            "remediation": {"enabled": False},
        },
    )
    with CertpilotRun(config, tmp_path / "certpilot.log") as svc:
        pid = svc.pid
        svc.wait("the first scan", svc.ready, 60)
        with SlowlorisClient(
            "127.0.0.1", svc.port, connections=SLOW_CONNECTIONS, interval=0.5, lifetime=90
        ) as slow:
            assert slow.opened == SLOW_CONNECTIONS and slow.failed_to_open == 0
            # While every slow connection is open and trickling, the probes and a scrape answer
            # quickly, on fresh connections.
            worst = 0.0
            for _ in range(5):
                for path in ("/healthz", "/metrics", "/readyz"):
                    started = time.monotonic()
                    status, body = svc.get(path, timeout=5)
                    took = time.monotonic() - started
                    assert status == 200, (path, status, body[:200])
                    assert took < 1.0, (path, took)
                    worst = max(worst, took)
                time.sleep(0.3)
            assert slow.open_now == SLOW_CONNECTIONS  # none answered or dropped yet
            assert slow.bytes_trickled() > SLOW_CONNECTIONS
            # The server drops them by itself: a request head must be complete in time.
            limit = IDLE_TIMEOUT + 10
            assert slow.wait_dropped(limit), (
                f"{slow.open_now} of {slow.opened} slow connections still open after {limit:g}s"
            )
            lived = slow.drop_times()
            assert min(lived) >= IDLE_TIMEOUT * 0.8, min(lived)
        assert svc.get("/healthz")[0] == 200
        assert svc.alive and svc.pid == pid
        assert "Traceback" not in svc.log.read_text(errors="replace")
    print(
        f"\nslowest answer {worst * 1000:.0f} ms; slow connections dropped after {max(lived):.1f}s"
    )


# -- a full disk under a files target -------------------------------------------------------------


@dataclass
class SmallDisk:
    """A directory that can be filled up. ``how`` is ``"tmpfs"`` (a 64 KiB tmpfs mounted on
    it; :meth:`fill` writes a filler file until the kernel says ENOSPC) or ``"injected"``
    (mounting is not allowed here: while full, the files target's writes into it fail with
    ENOSPC at ``remediator.targets.files._write_all``, in this process)."""

    path: Path
    how: str
    full: bool = False

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self) -> None:
        if self.how == "tmpfs":
            with self.filler.open("wb", buffering=0) as f:
                for size in (65536, 4096, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * size)
            probe = self.path / ".probe"
            with pytest.raises(OSError) as err, probe.open("wb", buffering=0) as f:
                f.write(b"x")
            assert err.value.errno == errno.ENOSPC
            probe.unlink()
        self.full = True

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()
        self.full = False


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    site = tmp_path / "site"
    site.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() == 0 and mount is not None:
        res = subprocess.run(
            [mount, "-t", "tmpfs", "-o", "size=64k,mode=0755", "certpilot-faults", str(site)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode == 0:
            try:
                yield SmallDisk(site, "tmpfs")
            finally:
                umount = shutil.which("umount") or "umount"
                done = subprocess.run([umount, str(site)], capture_output=True, timeout=30)
                if done.returncode != 0:  # still busy: detach it now, freed when unused
                    subprocess.run([umount, "-l", str(site)], capture_output=True, timeout=30)
            return
    import remediator.targets.files as files_target

    disk = SmallDisk(site, "injected")
    real_write_all = files_target._write_all

    def write_all(fd: int, data: bytes) -> None:
        if disk.full and os.readlink(f"/proc/self/fd/{fd}").startswith(f"{site}/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(files_target, "_write_all", write_all)
    yield disk


async def test_disk_full_on_a_files_target_rolls_back_keeps_the_old_files_then_retries(
    tmp_path: Path, small_disk: SmallDisk
) -> None:
    name = "disk.faults.test"
    now = datetime.now(UTC)
    site = small_disk.path
    cert, key = site / "cert.pem", site / "key.pem"
    chain_pem, key_pem = _expiring(LocalCA("Faults Disk", now), name, now)
    cert.write_bytes(chain_pem)
    write_key(key, key_pem)
    db = f"sqlite:///{tmp_path / 'certpilot.db'}"
    config = write_config(
        tmp_path / "certpilot.yaml",
        {
            "store": {"url": db},
            "http": {"host": "127.0.0.1", "port": 0},
            "scan": {"interval": "1h", "system_trust": False},
            "slo": {"evaluation_interval": "1h"},
            "targets": {"files": [str(cert)]},
            "remediation": {
                "enabled": False,
                "interval": "1s",
                "verify_timeout": "5s",
                "issuers": {"ca": {"kind": "local_ca", "state_dir": str(tmp_path / "issuer")}},
                "targets": [
                    {
                        "name": "site",
                        "kind": "files",
                        "issuer": "ca",
                        "cert_path": str(cert),
                        "key_path": str(key),
                    }
                ],
            },
        },
    )
    # The real service, in this process (so the injected variant reaches its writes).
    service = Service(load_settings(config), SystemClock(), config_path=config)
    service.shutdown_grace = 20.0
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="certpilot-run")

    async def eventually(what: str, check: Callable[[], bool], seconds: float = 45) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            if task.done():
                task.result()
                raise AssertionError("the service stopped")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
            await asyncio.sleep(0.1)

    def no_temp_files() -> bool:
        return not [p.name for p in site.iterdir() if ".certpilot-tmp." in p.name]

    try:
        with JobStore.open(db) as jobs:
            await eventually("the first scan", lambda: service.ready and service.port is not None)
            assert service.port is not None
            small_disk.fill()
            job_id = await asyncio.to_thread(_queue_renewal, config, name)
            await eventually(
                f"job {job_id} to end",
                lambda: jobs.get(job_id).state in {"rolled_back", "failed", "done"},
            )
            job = jobs.get(job_id)
            # Ended, with one line naming the file and the cause; nothing else touched.
            assert job.state in {"rolled_back", "failed"}, (job.state, job.last_error)
            line = job.last_error
            assert "\n" not in line and os.path.realpath(cert) in line, line
            assert "No space left on device" in line, line
            assert (cert.read_bytes(), key.read_bytes()) == (chain_pem, key_pem)
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert no_temp_files(), sorted(p.name for p in site.iterdir())
            await asyncio.to_thread(audit_verify, config)
            status, _ = await asyncio.to_thread(http_get, service.port, "/readyz")
            assert status == 200

            # Space is freed; a person retries; the running service finishes the job.
            small_disk.free()
            out = await asyncio.to_thread(cli, "retry", str(job_id), "--config", str(config))
            assert out.returncode == 0, out.stdout + out.stderr
            await eventually(
                f"job {job_id} done after the retry",
                lambda: jobs.get(job_id).state in {"done", "rolled_back", "failed"},
            )
            job = jobs.get(job_id)
            assert job.state == "done", (job.state, job.last_error)
            assert [j.id for j in jobs.list()] == [job_id]
            assert serial_of(cert) == job.new_serial
            leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
            assert format(leaf.serial_number, "x") != serial_of_pem(chain_pem)
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert no_temp_files(), sorted(p.name for p in site.iterdir())
            results = [(e.action, e.result) for e in audit_of(db, job_id)]
            assert ("renew", "not_deployed") in results and ("renew", "ok") in results, results
            await asyncio.to_thread(audit_verify, config)
            assert not task.done()  # the same service, never restarted
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    print(f"\nfull disk: {small_disk.how}")
