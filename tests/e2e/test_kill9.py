"""kill -9 in each job state (issue 4, item 4): ``certpilot run`` dies with a job in flight, is
started again, and finishes the job or rolls it back. Nothing is lost: the job, its receipts
and the audit chain are in the database before each step acts.

Each case parks a job in one state with something slow on the outside (a CA that accepts the
connection and never answers; a reload command that hangs; a reload that does nothing, so the
new certificate is never served), kills the whole process group with SIGKILL, checks the stored
state, fixes the outside world (as an operator would) and starts the service again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certpilot.domain.clock import SystemClock
from certpilot.domain.remedy import IssueRequest
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from tests.support.services import NginxFleet, free_port, require_binary

CLI = [sys.executable, "-m", "certpilot.cli"]
NAME = "kill9.remedy.test"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@dataclass
class World:
    work: Path
    fleet: NginxFleet
    root: Path
    db: str
    original_serial: str

    @property
    def port(self) -> int:
        return self.fleet.endpoint(NAME).port

    def served(self) -> str:
        out = cli(
            "scan", f"{NAME}:{self.port}", "--resolve", f"{NAME}:{self.port}:127.0.0.1",
            "--ca-file", str(self.root), "--no-system-trust", "--format", "json",
        )  # fmt: skip
        return str(json.loads(out.stdout)[0]["serial"])

    def config(self, case: str, *, issuer: dict[str, Any], reload: list[str], verify: str) -> Path:
        f = self.fleet
        ep = f.endpoint(NAME)
        base = [f.binary, "-p", f"{f.dir}/", "-c", str(f.conf_path), "-e", str(f.error_log)]
        doc = {
            "store": {"url": self.db},
            "http": {"host": "127.0.0.1", "port": free_port()},
            "scan": {"interval": "1h", "ca_files": [str(self.root)], "system_trust": False},
            "remediation": {
                "enabled": False,
                "interval": "1s",
                "issuers": {"ca": issuer},
                "targets": [
                    {
                        "name": "web",
                        "kind": "files",
                        "cert_path": str(ep.cert_path),
                        "key_path": str(ep.key_path),
                        "test_command": [*base, "-t"],
                        "reload_command": reload or [*base, "-s", "reload"],
                        "timeout": 120,
                        "endpoints": [{"host": NAME, "port": ep.port, "address": "127.0.0.1"}],
                    }
                ],
                "verify_timeout": verify,
            },
        }
        path = self.work / f"{case}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def jobs(self) -> list[dict[str, Any]]:
        out = cli("jobs", "--db", self.db, "--format", "json")
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    def job(self, job_id: int) -> dict[str, Any]:
        return next(j for j in self.jobs() if j["id"] == job_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    nginx = require_binary("nginx")
    work = tmp_path_factory.mktemp("kill9")
    issuer = LocalCAIssuer("ca", LocalCAConfig(state_dir=work / "ca"), clock=SystemClock())
    import asyncio

    first = asyncio.run(issuer.issue(IssueRequest(names=(NAME,))))
    root = work / "root.pem"
    root.write_bytes(issuer.root_pem())
    with NginxFleet(work / "nginx", [(NAME, first.chain_pem, first.key_pem)], binary=nginx) as f:
        w = World(work, f, root, f"sqlite:///{work / 'certpilot.db'}", first.serial)
        scan = cli(
            "scan", f"{NAME}:{w.port}", "--resolve", f"{NAME}:{w.port}:127.0.0.1",
            "--ca-file", str(root), "--no-system-trust", "--db", w.db,
        )  # fmt: skip
        assert scan.returncode == 0, scan.stdout + scan.stderr
        yield w


@contextlib.contextmanager
def service(world: World, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [*CLI, "run", "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group (start_new_session)
            proc.wait(10)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(what: str, check: Callable[[], bool], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def _queue(world: World, config: Path) -> int:
    out = cli("renew", NAME, "--queue", "--config", str(config), "--format", "json", "--again")
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = json.loads(out.stdout)["jobs"]
    assert job["state"] == "approved"
    return int(job["id"])


LOCAL_CA = {"kind": "local_ca", "state_dir": "CA"}


def _local(world: World) -> dict[str, Any]:
    return {**LOCAL_CA, "state_dir": str(world.work / "ca")}


@pytest.mark.parametrize("state", ["issuing", "deploying", "verifying"])
def test_kill9_in_flight_then_restart_finishes_or_rolls_back(
    world: World, blackhole: int, state: str, tmp_path: Path
) -> None:
    before = world.served()
    log = tmp_path / "certpilot.log"
    if state == "issuing":  # the CA accepts the TCP connection and never answers
        stuck = world.config(
            state,
            issuer={
                "kind": "acme",
                "directory_url": f"https://127.0.0.1:{blackhole}/dir",
                "state_dir": str(tmp_path / "acme"),
                "network_timeout": 120,
            },
            reload=[],
            verify="30s",
        )
    elif state == "deploying":  # the reload hangs
        stuck = world.config(state, issuer=_local(world), reload=["sleep", "120"], verify="30s")
    else:  # the reload does nothing: the new certificate is never served
        stuck = world.config(state, issuer=_local(world), reload=["true"], verify="120s")
    job_id = _queue(world, stuck)
    with service(world, stuck, log) as proc:
        wait_for(f"job {job_id} in {state}", lambda: world.job(job_id)["state"] == state, 60, log)
        time.sleep(0.5)  # well inside the step
        kill9(proc)
    parked = world.job(job_id)
    assert parked["state"] == state  # persisted as it was when the process died
    assert world.served() == before  # nothing half-done is served

    # The operator fixes the outside world (CA back, reload fixed) and starts it again.
    fixed = world.config(f"{state}-fixed", issuer=_local(world), reload=[], verify="5s")
    with service(world, fixed, log):
        terminal = {"done", "rolled_back", "failed"}
        wait_for(f"job {job_id} to end", lambda: world.job(job_id)["state"] in terminal, 90, log)
    end = world.job(job_id)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "PRIVATE KEY" not in text
    if state == "verifying":
        # Deployed but never served: the restart re-verifies what the receipt says was
        # deployed, sees the old certificate, and puts the previous files back.
        assert end["state"] == "rolled_back", end
        assert world.served() == before
        served_file = x509.load_pem_x509_certificate(
            world.fleet.endpoint(NAME).cert_path.read_bytes()
        )
        assert format(served_file.serial_number, "x") == before
    else:
        # Killed before anything was deployed (issuing), or mid-deploy before the receipt
        # (deploying): the new key died with the process, so the job issues again and ends done.
        assert end["state"] == "done", end
        assert world.served() == end["new_serial"] != before
    verify = cli("audit", "verify", "--db", world.db)
    assert verify.returncode == 0, verify.stdout


def test_kill9_with_jobs_waiting_loses_nothing(world: World, tmp_path: Path) -> None:
    log = tmp_path / "certpilot.log"
    cfg = world.config("waiting", issuer=_local(world), reload=[], verify="30s")
    inv = cli("inventory", "--db", world.db, "--format", "json")
    fp = json.loads(inv.stdout)[0]["fingerprint_sha256"]
    pend = cli("revoke", fp, "--reason", "superseded", "--config", str(cfg), "--format", "json")
    (revoke,) = json.loads(pend.stdout)["jobs"]
    assert revoke["state"] == "pending_approval"
    with service(world, cfg, log) as proc:
        time.sleep(2)
        kill9(proc)
    assert world.job(revoke["id"])["state"] == "pending_approval"
    cancel = cli("cancel", str(revoke["id"]), "--config", str(cfg), "--reason", "test over")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert world.job(revoke["id"])["state"] == "failed"
