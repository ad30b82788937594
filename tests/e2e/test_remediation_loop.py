"""The whole loop once, with every real component (issue 4, item 8):

Prometheus scrapes ``certpilot run`` and evaluates certpilot's committed symptom rules; an
expiry alert fires; Alertmanager calls certpilot's ``/hooks/alertmanager`` with a bearer token;
certpilot renews through Pebble (ACME, http-01 on its built-in responder), writes nginx's files,
runs ``nginx -t`` and a reload, re-probes until the new certificate is served, and the alert
resolves (Alertmanager sends the resolution to the webhook too).

The scheduled planner is off (``remediation.enabled: false``) so the renewal can only come
through the webhook.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from certpilot.localca import LocalCA
from tests.support.pebble import Pebble
from tests.support.services import NginxFleet, free_port, free_ports, require_binary

pytestmark = pytest.mark.service("prometheus")

REPO = Path(__file__).resolve().parents[2]
NAME = "loop.test.internal"
TOKEN = "e2e-webhook-token-8f2c"  # a test token on loopback
T = TypeVar("T")


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def _wait(what: str, seconds: float, probe: Callable[[], T | None], stack: Stack) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{stack.tail()}")
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
            got = probe()
            if got is not None:
                return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:g}s waiting for {what}\n{stack.tail()}")


@dataclass
class Stack:
    work: Path
    certpilot_url: str
    prom_url: str
    am_url: str
    fleet: NginxFleet
    old_serial: str
    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name} (last {lines} lines) ---")
            out += text.splitlines()[-lines:]
        return "\n".join(out)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.work / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as fh:
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=self.work,
            )

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    nginx = require_binary("nginx")
    require_binary("pebble")
    work = tmp_path_factory.mktemp("remediation-loop")
    now = datetime.now(UTC)
    # What nginx serves at the start: 2 days left of 90, from a CA certpilot knows (so only
    # the expiry is wrong): CertificateExpiringSoon (page) and ...Relative (ticket) fire.
    old_ca = LocalCA("Old Internal CA", now)
    old = old_ca.issue([NAME], now, not_before=now - timedelta(days=88), lifetime=timedelta(90))
    (work / "old-ca.pem").write_bytes(old_ca.root_pem())
    token_file = work / "webhook-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with (
        Pebble(work / "pebble") as pebble,
        NginxFleet(work / "nginx", [(NAME, old.chain_pem(), old.key_pem())], binary=nginx) as fleet,
    ):
        (work / "pebble-root.pem").write_bytes(pebble.root_pem())
        cp_port, prom_port, am_port = free_ports(3)
        ep = fleet.endpoint(NAME)
        nginx_base = [fleet.binary, "-p", f"{fleet.dir}/", "-c", str(fleet.conf_path), "-e"]
        nginx_base.append(str(fleet.error_log))
        config = {
            "store": {"url": f"sqlite:///{work / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": cp_port},
            "scan": {
                "interval": "2s",
                "timeout": "3s",
                "ca_files": [str(work / "old-ca.pem"), str(work / "pebble-root.pem")],
                "system_trust": False,
            },
            "slo": {"evaluation_interval": "5s"},
            "remediation": {
                "enabled": False,  # no schedule: only the webhook can start the renewal
                "issuers": {
                    "pebble": {
                        "kind": "acme",
                        "directory_url": pebble.directory_url,
                        "state_dir": str(work / "acme"),
                        "ca_bundle": str(pebble.ca_bundle),
                        "http_host": "127.0.0.1",
                        "http_port": pebble.http_port,
                        "order_timeout": 60,
                        "network_timeout": 10,
                    }
                },
                "targets": [
                    {
                        "name": "web",
                        "kind": "files",
                        "issuer": "pebble",
                        "cert_path": str(ep.cert_path),
                        "key_path": str(ep.key_path),
                        "test_command": [*nginx_base, "-t"],
                        "reload_command": [*nginx_base, "-s", "reload"],
                        "endpoints": [{"host": NAME, "port": ep.port, "address": "127.0.0.1"}],
                    }
                ],
                "verify_timeout": "30s",
                "webhook": {"token_file": str(token_file)},
            },
        }
        (work / "certpilot.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (work / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(REPO / "alerts" / "certpilot-symptoms.rules.yml")],
                    "alerting": {
                        "alertmanagers": [
                            {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}
                        ]
                    },
                    "scrape_configs": [
                        {
                            "job_name": "certpilot",
                            "static_configs": [{"targets": [f"127.0.0.1:{cp_port}"]}],
                        }
                    ],
                }
            )
        )
        (work / "alertmanager.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "certpilot",
                        "group_by": ["ref"],
                        "group_wait": "1s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [
                        {
                            "name": "certpilot",
                            "webhook_configs": [
                                {
                                    "url": f"http://127.0.0.1:{cp_port}/hooks/alertmanager",
                                    "send_resolved": True,
                                    "http_config": {
                                        "authorization": {
                                            "type": "Bearer",
                                            "credentials_file": str(token_file),
                                        }
                                    },
                                }
                            ],
                        }
                    ],
                }
            )
        )
        s = Stack(
            work,
            f"http://127.0.0.1:{cp_port}",
            f"http://127.0.0.1:{prom_port}",
            f"http://127.0.0.1:{am_port}",
            fleet,
            format(old.cert.serial_number, "x"),
        )
        env = {k: v for k, v in os.environ.items() if k != "CERTPILOT_WEBHOOK_TOKEN"}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            s.spawn(
                "certpilot",
                [sys.executable, "-m", "certpilot.cli", "run", "--config", "certpilot.yaml"],
                env=env,
            )
            s.spawn(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
            )
            s.spawn(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
            )
            yield s
        finally:
            s.stop_all()


def _alerts(stack: Stack) -> list[dict[str, Any]]:
    data = _get_json(f"{stack.am_url}/api/v2/alerts?active=true&silenced=false&inhibited=false")
    return [a for a in data if a["labels"].get("ref", "").endswith(f"#{NAME}")]


def test_expiry_alert_renews_through_pebble_and_resolves(stack: Stack) -> None:
    # 1. The alert fires in Prometheus and reaches Alertmanager.
    fired = _wait(
        "CertificateExpiringSoon at Alertmanager",
        90,
        lambda: (
            [a for a in _alerts(stack) if a["labels"]["alertname"] == "CertificateExpiringSoon"]
            or None
        ),
        stack,
    )
    assert fired[0]["labels"]["severity"] == "page"

    # 2. Alertmanager calls the webhook; certpilot makes one job and runs it to done.
    def done_job() -> dict[str, Any] | None:
        jobs = _get_json(f"{stack.certpilot_url}/api/v1/jobs")["jobs"]
        mine = [j for j in jobs if j["requester"] == "alertmanager"]
        assert all(j["state"] not in {"failed", "rolled_back"} for j in mine), mine
        return next((j for j in mine if j["state"] == "done"), None)

    job = _wait("the webhook's renewal job to finish", 120, done_job, stack)
    assert job["key"].startswith("alert:") and job["issuer"] == "pebble"
    assert job["targets"] == ["web"] and job["verified"] == ["web"]
    assert job["new_serial"] != stack.old_serial
    jobs = _get_json(f"{stack.certpilot_url}/api/v1/jobs")["jobs"]
    # Two alerts fired for the same certificate (page and ticket): one job, not two.
    assert len([j for j in jobs if j["action"] == "renew"]) == 1

    # 3. The new certificate is what nginx serves, issued by Pebble.
    served = subprocess.run(
        [
            sys.executable,
            "-m",
            "certpilot.cli",
            "scan",
            f"{NAME}:{stack.fleet.endpoint(NAME).port}",
            "--resolve",
            f"{NAME}:{stack.fleet.endpoint(NAME).port}:127.0.0.1",
            "--ca-file",
            str(stack.work / "pebble-root.pem"),
            "--no-system-trust",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (item,) = json.loads(served.stdout)
    assert item["serial"] == job["new_serial"] and item["problems"] == [], item

    # 4. The next scan shows it; the alert resolves in Prometheus, then in Alertmanager, and
    # Alertmanager tells the webhook (which finds the job done and leaves it).
    _wait("the alerts to resolve", 90, lambda: True if not _alerts(stack) else None, stack)
    log = stack.logs["certpilot"]
    _wait(
        "the resolved notification at the webhook",
        60,
        lambda: True if "resolved: job_exists" in log.read_text(errors="replace") else None,
        stack,
    )
    metrics = urllib.request.urlopen(f"{stack.certpilot_url}/metrics", timeout=5).read().decode()
    assert 'certpilot_jobs{state="done"} 1.0' in metrics
    assert "certpilot_issuance_latency_seconds_count 1.0" in metrics
    # Nothing secret in the service's log.
    text = log.read_text(errors="replace")
    assert TOKEN not in text and "PRIVATE KEY" not in text
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "certpilot.cli",
            "audit",
            "verify",
            "--db",
            f"sqlite:///{stack.work / 'certpilot.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_webhook_refuses_requests_without_the_token(stack: Stack) -> None:
    body = json.dumps({"version": "4", "alerts": []}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        req = urllib.request.Request(
            f"{stack.certpilot_url}/hooks/alertmanager", data=body, headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
    _ = free_port  # (imported for symmetry with other e2e tests)
