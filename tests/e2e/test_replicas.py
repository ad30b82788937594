"""Three ``certpilot run`` replicas on one PostgreSQL database (issue 8, item 2).

The replicas scan 30 nginx endpoints and renew 8 expiring certificate files through the
embedded CA, each file a ``files`` deploy target whose reload command takes a second (so jobs
are in flight when a replica dies). Checked:

* membership converges on three replicas, exactly one of which leads;
* the endpoints are split: every endpoint is probed by exactly one replica (the union of the
  replicas' ``certpilot_probe_success`` series is the fleet, and they do not overlap);
* the leader is killed with SIGKILL while jobs run: another replica leads within seconds, the
  two survivors share all 30 endpoints once the dead one's heartbeat expires, and every job
  ends ``done``;
* no certificate is renewed twice: one job per file, and each file now holds the certificate
  its job recorded; the audit chain the replicas appended to verifies;
* the same with PostgreSQL restarted under the three replicas while renewals run (every
  connection and the leader's advisory lock cut): the same processes converge on one leader
  again, share the endpoints again, and finish every renewal exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from certpilot.localca import LocalCA, write_key
from tests.support.postgres import PostgresCluster
from tests.support.services import NginxFleet, free_port, require_binary

CLI = [sys.executable, "-m", "certpilot.cli"]
ENDPOINTS = 30
FILES = 8


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        body = r.read().decode()
    return json.loads(body) if path.startswith("/api") else body


def _probe_refs(port: int) -> set[str]:
    text = _get(port, "/metrics")
    return {
        s.labels["ref"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "certpilot_probe_success" and s.labels.get("source") == "tls"
    }


def wait_for(what: str, check: Callable[[], bool], seconds: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError) as e:  # a replica not listening yet
            last = e
        time.sleep(0.25)
    tails = "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
        for p in logs
    )
    raise AssertionError(f"timed out waiting for {what} ({last})\n{tails}")


class Replica:
    def __init__(self, name: str, config: Path, log: Path, port: int) -> None:
        self.name, self.config, self.log, self.port = name, config, log, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*CLI, "run", "--config", str(self.config)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def cluster(self) -> dict[str, Any]:
        return dict(_get(self.port, "/api/v1/cluster"))


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, pg_url: str
) -> Iterator[tuple[list[Replica], NginxFleet, Path]]:
    """Three replicas, started; ``request.param`` (indirect parametrisation): how long each
    file target's reload takes, in seconds (default 2), i.e. how long a job is in flight."""
    reload_seconds: int = getattr(request, "param", 2)
    # A job's lease is renewed by its transitions: it must outlast the slowest step.
    lease = f"{max(4, 2 * reload_seconds)}s"
    nginx = require_binary("nginx")
    now = datetime.now(UTC)
    ca = LocalCA("Fleet", now)
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    targets = []
    for i in range(FILES):
        # 30-day certificates with a day left: due for renewal under the default policy.
        issued = ca.issue(
            [f"f{i}.replicas.test"], now, lifetime=timedelta(days=30),
            not_before=now - timedelta(days=29),
        )  # fmt: skip
        cert, key = files_dir / f"f{i}.pem", files_dir / f"f{i}.key"
        cert.write_bytes(issued.chain_pem())
        write_key(key, issued.key_pem())
        targets.append(
            {
                "name": f"file{i}",
                "kind": "files",
                "issuer": "ca",
                "cert_path": str(cert),
                "key_path": str(key),
                # A slow reload: jobs are in flight a while.
                "reload_command": ["sleep", str(reload_seconds)],
            }
        )
    root = tmp_path / "roots.pem"
    with NginxFleet(tmp_path / "nginx", ENDPOINTS, binary=nginx, ca=ca, now=now) as fleet:
        root.write_bytes(ca.root_pem())
        endpoints = [
            {"host": ep.server_name, "port": ep.port, "address": "127.0.0.1"}
            for ep in fleet.endpoints
        ]
        out: list[Replica] = []
        for n in ("r1", "r2", "r3"):
            port = free_port()
            doc = {
                "store": {"url": pg_url},
                "http": {"host": "127.0.0.1", "port": port},
                "scan": {
                    "interval": "2s",
                    "ca_files": [str(root)],
                    "system_trust": False,
                    "timeout": "3s",
                },
                "slo": {"evaluation_interval": "1h"},
                "targets": {"endpoints": endpoints, "files": [str(files_dir / "*.pem")]},
                "remediation": {
                    "interval": "1s",
                    "verify_timeout": "2s",
                    "lease": lease,
                    "issuers": {"ca": {"kind": "local_ca", "state_dir": str(tmp_path / "issuer")}},
                    "targets": targets,
                },
                "cluster": {"heartbeat": "0.5s", "ttl": "2s", "instance": n},
            }
            config = tmp_path / f"{n}.yaml"
            config.write_text(yaml.safe_dump(doc))
            out.append(Replica(n, config, tmp_path / f"{n}.log", port))
        try:
            for r in out:
                r.start()
            yield out, fleet, root
        finally:
            for r in out:
                r.stop()


def _jobs(db_config: Path) -> list[dict[str, Any]]:
    res = subprocess.run(
        [*CLI, "jobs", "--config", str(db_config), "--format", "json", "--limit", "100"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode in (0, 1), res.stderr
    return list(json.loads(res.stdout))


@pytest.mark.service("nginx")
def test_three_replicas_share_scans_renew_once_and_survive_the_leader_dying(
    replicas: tuple[list[Replica], NginxFleet, Path], pg_url: str
) -> None:
    nodes, fleet, _root = replicas
    logs = [r.log for r in nodes]
    all_refs = {t.ref for t in fleet.targets()}

    def converged(group: list[Replica]) -> bool:
        views = [r.cluster() for r in group]
        return all(len(v["members"]) == len(group) for v in views) and (
            [v["leader"] for v in views].count(True) == 1
        )

    wait_for("three replicas, one leader", lambda: converged(nodes), 60, logs)

    def partitioned(group: list[Replica]) -> bool:
        shares = [_probe_refs(r.port) for r in group]
        union = set().union(*shares)
        return union == all_refs and sum(len(s) for s in shares) == len(all_refs)

    wait_for("every endpoint probed by exactly one replica", lambda: partitioned(nodes), 60, logs)

    # Renewals start (the leader plans; any replica runs them). Kill the leader while its own
    # job is in flight (its reload takes two seconds).
    leader = next(r for r in nodes if r.cluster()["leader"])
    engine = sqlalchemy.create_engine(pg_url)

    def in_flight(owner: str) -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM remediation_job WHERE owner = :o "
                        "AND state IN ('issuing', 'deploying', 'verifying')"
                    ),
                    {"o": owner},
                ).scalar_one()
            )

    wait_for(f"a job in flight on {leader.name}", lambda: in_flight(leader.name) > 0, 60, logs)
    survivors = [r for r in nodes if r is not leader]
    killed_at = time.monotonic()
    leader.kill9()
    assert in_flight(leader.name) == 1  # left behind, its lease running
    engine.dispose()
    wait_for("a new leader", lambda: converged(survivors), 30, logs)
    takeover = time.monotonic() - killed_at
    assert takeover < 15, f"takeover took {takeover:.1f}s"
    wait_for("the survivors probe every endpoint", lambda: partitioned(survivors), 60, logs)

    _renewed_once_each(survivors[0].config, logs)


def _renewed_once_each(config: Path, logs: list[Path]) -> None:
    """Every file renewed exactly once, holding the certificate its job recorded, and the
    audit chain the replicas appended to intact."""

    def all_done() -> bool:
        jobs = _jobs(config)
        return len(jobs) >= FILES and all(j["state"] == "done" for j in jobs)

    wait_for("every renewal done", all_done, 120, logs)
    jobs = _jobs(config)
    # Exactly one job per file: nothing renewed twice.
    by_target = [tuple(j["targets"]) for j in jobs if j["action"] == "renew"]
    assert sorted(by_target) == sorted((f"file{i}",) for i in range(FILES)), by_target
    targets = yaml.safe_load(config.read_text())["remediation"]["targets"]
    for j in jobs:
        (target,) = j["targets"]
        path = Path(targets[int(target.removeprefix("file"))]["cert_path"])
        served = x509.load_pem_x509_certificates(path.read_bytes())[0]
        assert format(served.serial_number, "x") == j["new_serial"]
    verify = subprocess.run(
        [*CLI, "audit", "verify", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.service("nginx")
@pytest.mark.service("postgresql")
@pytest.mark.parametrize("replicas", [5], indirect=True)  # 5 s reloads: jobs outlast the restart
def test_three_replicas_ride_out_a_postgresql_restart_with_jobs_in_flight(
    replicas: tuple[list[Replica], NginxFleet, Path], pg_cluster: PostgresCluster, pg_url: str
) -> None:
    """The database all three replicas share restarts while renewals are deploying: every
    connection (the leader's advisory lock too) is cut. The same processes carry on: one
    leader again, every endpoint probed by exactly one replica, every renewal done once."""
    nodes, fleet, _root = replicas
    logs = [r.log for r in nodes]
    all_refs = {t.ref for t in fleet.targets()}
    pids = [r.proc.pid for r in nodes if r.proc is not None]

    def converged() -> bool:
        views = [r.cluster() for r in nodes]
        return all(len(v["members"]) == len(nodes) for v in views) and (
            [v["leader"] for v in views].count(True) == 1
        )

    def partitioned() -> bool:
        shares = [_probe_refs(r.port) for r in nodes]
        return set().union(*shares) == all_refs and sum(map(len, shares)) == len(all_refs)

    wait_for("three replicas, one leader", converged, 60, logs)
    engine = sqlalchemy.create_engine(pg_url)
    try:

        def in_flight() -> bool:
            with engine.connect() as conn:
                n = conn.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM remediation_job "
                        "WHERE state IN ('issuing', 'deploying', 'verifying')"
                    )
                ).scalar_one()
            return int(n) > 0

        wait_for("renewals in flight", in_flight, 60, logs)
    finally:
        engine.dispose()
    pg_cluster.restart(down_for=3.0)
    wait_for("one leader again, three members", converged, 60, logs)
    wait_for("every endpoint probed by exactly one replica again", partitioned, 60, logs)
    _renewed_once_each(nodes[0].config, logs)
    assert [r.proc.pid for r in nodes if r.proc is not None] == pids
    assert all(r.proc is not None and r.proc.poll() is None for r in nodes)  # never restarted
