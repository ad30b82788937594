"""The remediation verbs as a user runs them, against real nginx and the embedded local CA:
``renew``, ``redeploy``, ``revoke`` + ``approve``, ``jobs``, ``renew --expiring``, one-line
errors. One certificate is served by two nginx instances (two deploy targets: the first
configured is the canary); the CLI issues, deploys to both, and re-probes until both serve it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certpilot.domain.clock import SystemClock
from certpilot.domain.remedy import IssueRequest
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from tests.support.services import NginxFleet, require_binary

CLI = [sys.executable, "-m", "certpilot.cli"]
NAME = "www.remedy.test"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=180, env=full, check=False
    )


@dataclass
class Site:
    work: Path
    config: Path
    db: str
    root: Path
    canary: NginxFleet
    main: NginxFleet
    ca_dir: Path

    def port(self, fleet: NginxFleet) -> int:
        return fleet.endpoint(NAME).port

    def served_serial(self, fleet: NginxFleet) -> str:
        out = cli(
            "scan",
            f"{NAME}:{self.port(fleet)}",
            "--resolve",
            f"{NAME}:{self.port(fleet)}:127.0.0.1",
            "--ca-file",
            str(self.root),
            "--no-system-trust",
            "--format",
            "json",
        )
        (item,) = json.loads(out.stdout)
        return str(item["serial"])

    def scan(self) -> None:
        """Scan both endpoints into the inventory (what certpilot run does on schedule)."""
        ports = [self.port(f) for f in (self.canary, self.main)]
        resolve = [a for p in ports for a in ("--resolve", f"{NAME}:{p}:127.0.0.1")]
        out = cli(
            "scan",
            *[f"{NAME}:{p}" for p in ports],
            *resolve,
            "--ca-file",
            str(self.root),
            "--no-system-trust",
            "--db",
            self.db,
        )
        assert out.returncode in {0, 1}, out.stderr


def _target(name: str, fleet: NginxFleet) -> dict[str, Any]:
    ep = fleet.endpoint(NAME)
    base = [fleet.binary, "-p", f"{fleet.dir}/", "-c", str(fleet.conf_path), "-e"]
    base.append(str(fleet.error_log))
    return {
        "name": name,
        "kind": "files",
        "cert_path": str(ep.cert_path),
        "key_path": str(ep.key_path),
        "test_command": [*base, "-t"],
        "reload_command": [*base, "-s", "reload"],
        "endpoints": [{"host": NAME, "port": ep.port, "address": "127.0.0.1"}],
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    nginx = require_binary("nginx")
    work = tmp_path_factory.mktemp("remediation-cli")
    ca_dir = work / "ca"
    issuer = LocalCAIssuer("local", LocalCAConfig(state_dir=ca_dir), clock=SystemClock())
    first = asyncio.run(issuer.issue(IssueRequest(names=(NAME,), validity_days=1)))
    root = work / "root.pem"
    root.write_bytes(issuer.root_pem())
    spec = [(NAME, first.chain_pem, first.key_pem)]
    with (
        NginxFleet(work / "canary", spec, binary=nginx) as canary,
        NginxFleet(work / "main", spec, binary=nginx) as main,
    ):
        db = f"sqlite:///{work / 'certpilot.db'}"
        config = work / "certpilot.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "store": {"url": db},
                    "scan": {"ca_files": [str(root)], "system_trust": False},
                    "remediation": {
                        "issuers": {"local": {"kind": "local_ca", "state_dir": str(ca_dir)}},
                        "targets": [_target("canary", canary), _target("main", main)],
                        "verify_timeout": "20s",
                    },
                }
            )
        )
        (work / "policy.yaml").write_text(
            yaml.safe_dump(
                {
                    "defaults": {
                        "approvers": ["alice", "bob"],
                        "renew_before_days": 2,  # the 1-day certificate is due at once
                        "stagger_jitter": "0m",
                    }
                }
            )
        )
        s = Site(work, config, db, root, canary, main, ca_dir)
        s.scan()
        yield s


def _jobs(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert "Traceback" not in out.stderr, out.stderr
    return list(json.loads(out.stdout)["jobs"])


def test_renew_expiring_plans_what_the_policy_says_is_due(site: Site) -> None:
    # The 1-day certificate both servers start with is due under "2 days before expiry".
    before = site.served_serial(site.main)
    out = cli("renew", "--expiring", "--config", str(site.config), "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = _jobs(out)
    assert job["requester"] == "schedule" and job["state"] == "done", job
    assert job["old_serial"] == "" or job["old_serial"] != job["new_serial"]
    assert site.served_serial(site.main) == job["new_serial"] != before
    # Rescanned, the new 90-day certificate is not due: nothing more to do, and it says so.
    site.scan()
    again = cli("renew", "--expiring", "--config", str(site.config), "--format", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    payload = json.loads(again.stdout)
    assert payload["jobs"] == [] and "nothing is due" in payload["notes"][0]


def test_renew_issues_deploys_canary_first_and_verifies(site: Site) -> None:
    site.scan()
    before = site.served_serial(site.main)
    out = cli("renew", NAME, "--config", str(site.config), "--format", "json", "--by", "carol")
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = _jobs(out)
    assert job["state"] == "done", job
    assert job["targets"] == ["canary", "main"]
    assert job["verified"] == ["canary", "main"]  # canary first
    assert job["requester"] == "carol" and job["rule"] == "default"
    new = job["new_serial"]
    assert new != before
    assert site.served_serial(site.canary) == new
    assert site.served_serial(site.main) == new
    # The key on disk is 0600; the audit chain holds the renewal and verifies.
    assert (site.main.endpoint(NAME).key_path.stat().st_mode & 0o777) == 0o600
    verify = cli("audit", "verify", "--db", site.db)
    assert verify.returncode == 0, verify.stdout
    listed = cli("audit", "list", "--db", site.db, "--format", "json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    done = [e for e in entries if e["action"] == "renew" and e["result"] == "ok"]
    assert done and done[-1]["after"] == new

    # Asked again for the same certificate: the same job, nothing issued twice.
    again = cli("renew", NAME, "--config", str(site.config), "--format", "json")
    assert again.returncode == 0
    assert [j["id"] for j in _jobs(again)] == [job["id"]]

    listed_jobs = cli("jobs", "--config", str(site.config), "--format", "json")
    assert job["id"] in [j["id"] for j in json.loads(listed_jobs.stdout)]
    table = cli("jobs", "--config", str(site.config))
    assert "done" in table.stdout and NAME in table.stdout


def test_redeploy_pushes_stored_certificate_that_was_never_served(site: Site) -> None:
    site.scan()
    served = site.served_serial(site.main)
    # A renewal someone wrote to the main server's files without reloading it: not deployed.
    issuer = LocalCAIssuer("local", LocalCAConfig(state_dir=site.ca_dir), clock=SystemClock())
    fresh = asyncio.run(issuer.issue(IssueRequest(names=(NAME,))))
    ep = site.main.endpoint(NAME)
    ep.cert_path.write_bytes(fresh.chain_pem)
    ep.key_path.write_bytes(fresh.key_pem)
    assert site.served_serial(site.main) == served
    out = cli("redeploy", NAME, "--config", str(site.config), "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = _jobs(out)
    assert job["action"] == "redeploy" and job["state"] == "done", job
    # The canary holds the certificate it was given last; the redeploy pushes what the first
    # target (the canary) holds to both, so both serve the same certificate again.
    canary_cert = x509.load_pem_x509_certificate(site.canary.endpoint(NAME).cert_path.read_bytes())
    assert job["new_serial"] == format(canary_cert.serial_number, "x")
    assert site.served_serial(site.main) == job["new_serial"]


def test_revoke_needs_a_second_person_then_the_ca_revokes(site: Site) -> None:
    site.scan()
    inv = cli("inventory", "--db", site.db, "--format", "json")
    items = [i for i in json.loads(inv.stdout) if i["ref"].endswith(f"#{NAME}")]
    fp = items[0]["fingerprint_sha256"]
    out = cli(
        "revoke", fp[:16], "--reason", "superseded", "--config", str(site.config),
        "--by", "alice", "--format", "json",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = _jobs(out)
    assert job["state"] == "pending_approval" and job["requires_second_person"]

    same = cli("approve", str(job["id"]), "--config", str(site.config), "--by", "alice")
    assert same.returncode == 1 and "second person" in same.stderr
    stranger = cli("approve", str(job["id"]), "--config", str(site.config), "--by", "mallory")
    assert stranger.returncode == 1 and "not among the approvers" in stranger.stderr

    ok = cli(
        "approve", str(job["id"]), "--config", str(site.config), "--by", "bob", "--run",
        "--format", "json",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (done,) = _jobs(ok)
    assert done["state"] == "done", done
    crl = x509.load_pem_x509_crl((site.ca_dir / "crl.pem").read_bytes())
    serial = int(items[0]["serial"], 16)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_unknown_name_and_bad_config_are_one_line_errors(site: Site) -> None:
    out = cli("renew", "nosuch.example", "--config", str(site.config))
    assert out.returncode == 1 and "not in the inventory" in out.stdout
    bad = site.work / "bad.yaml"
    doc = yaml.safe_load(site.config.read_text())
    doc["remediation"]["targets"][0]["kind"] = "ftp"
    bad.write_text(yaml.safe_dump(doc))
    err = cli("renew", NAME, "--config", str(bad))
    assert err.returncode == 2 and "Traceback" not in err.stderr
    assert "remediation.targets[0].kind" in err.stderr and "ftp" in err.stderr
    doc["remediation"]["targets"][0]["kind"] = "files"
    doc["remediation"]["targets"][0]["issuer"] = "nope"
    bad.write_text(yaml.safe_dump(doc))
    err = cli("jobs", "--config", str(bad))
    assert err.returncode == 2 and "unknown issuer 'nope'" in err.stderr
    missing = cli("approve", "9999", "--config", str(site.config))
    assert (
        missing.returncode == 2 and "9999" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_key_compromise_replaces_first_then_revokes_after_approval(site: Site) -> None:
    # A fresh certificate nobody has revoked yet.
    fresh = cli("renew", NAME, "--again", "--config", str(site.config), "--format", "json")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    site.scan()
    inv = cli("inventory", "--db", site.db, "--format", "json")
    items = [i for i in json.loads(inv.stdout) if i["ref"].endswith(f"#{NAME}")]
    fp, old_serial = items[0]["fingerprint_sha256"], items[0]["serial"]
    out = cli(
        "revoke", fp, "--reason", "keyCompromise", "--config", str(site.config),
        "--by", "alice", "--format", "json",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    revoke, replacement = _jobs(out)
    # The revocation waits for a second person; the replacement (a new key) is already served.
    assert revoke["action"] == "revoke" and revoke["state"] == "pending_approval"
    assert replacement["action"] == "renew" and replacement["state"] == "done", replacement
    assert replacement["key"] == f"compromise:{fp}"
    assert site.served_serial(site.canary) == replacement["new_serial"] != old_serial
    assert site.served_serial(site.main) == replacement["new_serial"]
    ok = cli("approve", str(revoke["id"]), "--config", str(site.config), "--by", "bob", "--run")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    crl = x509.load_pem_x509_crl((site.ca_dir / "crl.pem").read_bytes())
    revoked = crl.get_revoked_certificate_by_serial_number(int(old_serial, 16))
    assert revoked is not None
    # Replaced and verified within 24 h: one good compromise_replacement event.
    status = cli("slo", "status", "--db", site.db, "--format", "json")
    (slo,) = [s for s in json.loads(status.stdout) if s["sli"] == "compromise_replacement"]
    assert slo["events_in_period"] == 1.0 and slo["period_error_ratio"] == 0.0, slo
