"""``certpilot run`` in-process: an Alertmanager webhook call becomes a renewal that the job
loop runs at once (issue with the embedded local CA, write the files, verify), visible in
``/api/v1/jobs`` and ``/metrics``.

The real :class:`certpilot.app.Service` on 127.0.0.1:0 with a SQLite store in ``tmp_path``: it
scans a certificate file, the test posts a ``CertificateExpiringSoon`` alert for that file's
inventory ref with the bearer token from the service's environment, and the ``files`` deploy
target that writes the same file replaces it. That target has no endpoints and no reload
command: there is nothing to probe, which the executor counts as verified (said so in the
audit detail), so the whole run takes well under a second.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.domain.remedy import IssueRequest
from certpilot.settings import settings_from_mapping
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer

NAME = "www.hook.test"
TOKEN = "svc-hook-0d1e2f3a4b5c6d7e"
DEADLINE = 60.0

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = DEADLINE
) -> T:
    """Poll ``probe`` until it returns something other than ``None``, for at most ``timeout``
    seconds (no blind sleeps: a short pause between polls only)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await probe()
        if got is not None:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def alert_payload(ref: str, *, status: str = "firing") -> dict[str, Any]:
    """An Alertmanager 0.25 webhook body carrying one certpilot symptom alert."""
    labels = {
        "alertname": "CertificateExpiringSoon",
        "severity": "page",
        "source": "file",
        "ref": ref,
        "subject_CN": NAME,
        "instance": "127.0.0.1:9795",
        "job": "certpilot",
    }
    return {
        "receiver": "certpilot-webhook",
        "status": status,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": f"Certificate {NAME} expires in 6d 23h",
                    "runbook_url": "https://github.com/certpilot/certpilot/blob/main/docs/"
                    "runbooks.md#expiring-soon",
                },
                "startsAt": "2026-11-28T03:40:01.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local:9090/graph?g0.expr=certpilot_"
                "certificate_expires_in_seconds&g0.tab=1",
                "fingerprint": "7c2a41e0b95d3f18",
            }
        ],
        "groupLabels": {"alertname": "CertificateExpiringSoon"},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local:9093",
        "version": "4",
        "groupKey": '{}/{severity=~"page|ticket"}:{alertname="CertificateExpiringSoon"}',
        "truncatedAlerts": 0,
    }


@dataclass
class Running:
    service: Service
    stop: asyncio.Event
    task: asyncio.Task[None]
    session: aiohttp.ClientSession
    cert_path: Path
    first_serial: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.base + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.session.get(self.base + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def served_serial(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return format(cert.serial_number, "x")


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    ca_dir = tmp_path / "ca"
    issuer = LocalCAIssuer("local", LocalCAConfig(state_dir=ca_dir), clock=SystemClock())
    # 60 days of 60 left: not due, so only the alert asks for a renewal.
    first = await issuer.issue(IssueRequest(names=(NAME,), validity_days=60))
    root = tmp_path / "root.pem"
    root.write_bytes(issuer.root_pem())
    site = tmp_path / "site"
    site.mkdir()
    cert_path, key_path = site / "cert.pem", site / "key.pem"
    cert_path.write_bytes(first.chain_pem)
    key_path.write_bytes(first.key_pem)
    os.chmod(key_path, 0o600)
    settings = settings_from_mapping(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": 0},
            "scan": {"interval": "1h", "ca_files": [str(root)], "system_trust": False},
            "slo": {"evaluation_interval": "1h"},
            "targets": {"files": [str(cert_path)]},
            "remediation": {
                "interval": "1h",  # only the webhook's wake can run the job in time
                "verify_timeout": "10s",
                "issuers": {"local": {"kind": "local_ca", "state_dir": str(ca_dir)}},
                "targets": [
                    {
                        "name": "site",
                        "kind": "files",
                        "issuer": "local",
                        "cert_path": str(cert_path),
                        "key_path": str(key_path),
                    }
                ],
            },
        },
        "test",
    )
    service = Service(settings, SystemClock(), env={"CERTPILOT_WEBHOOK_TOKEN": TOKEN})
    service.shutdown_grace = 20.0
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="certpilot-run")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        running = Running(service, stop, task, session, cert_path, first.serial)

        async def port() -> int | None:
            if task.done():
                task.result()  # raises what stopped the service
                raise AssertionError("the service stopped before it listened")
            return service.port

        await eventually(port, "the HTTP server to listen")

        def answers(path: str) -> Callable[[], Awaitable[bool | None]]:
            async def probe() -> bool | None:
                assert not task.done(), "the service stopped"
                try:
                    async with session.get(running.base + path) as resp:
                        return True if resp.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            return probe

        await eventually(answers("/healthz"), "/healthz")
        await eventually(answers("/readyz"), "/readyz (the first scan)")
        try:
            yield running
        finally:
            stop.set()
            if not task.done():
                await asyncio.wait_for(asyncio.shield(task), timeout=DEADLINE)


async def test_an_alert_is_renewed_deployed_and_measured(running: Running) -> None:
    r = running
    inventory = await r.get_json("/api/v1/inventory")
    refs = [i["ref"] for i in inventory["items"]]
    ref = f"file://{os.path.abspath(r.cert_path)}#0"
    assert ref in refs, refs
    [scanned] = [i for i in inventory["items"] if i["ref"] == ref]
    assert scanned["serial"] == r.first_serial
    assert (await r.get_json("/api/v1/jobs"))["jobs"] == []  # not due: nothing planned

    # The wrong token is turned away and creates nothing.
    async with r.session.post(
        r.base + "/hooks/alertmanager",
        json=alert_payload(ref),
        headers={"Authorization": "Bearer not-the-token"},
    ) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in await resp.text()
    assert (await r.get_json("/api/v1/jobs"))["jobs"] == []

    async with r.session.post(
        r.base + "/hooks/alertmanager",
        json=alert_payload(ref),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        body = await resp.json()
    assert TOKEN not in text
    assert body["counts"] == {"job_created": 1}
    [outcome] = body["alerts"]
    assert outcome["outcome"] == "job_created" and outcome["alertname"] == "CertificateExpiringSoon"
    job_id = outcome["job_id"]

    async def finished() -> dict[str, Any] | None:
        jobs = (await r.get_json("/api/v1/jobs"))["jobs"]
        [job] = [j for j in jobs if j["id"] == job_id]
        assert job["state"] not in {"failed", "rolled_back"}, job
        return job if job["state"] == "done" else None

    # The interval is an hour: only the webhook's wake gets this done within the deadline.
    job = await eventually(finished, f"job {job_id} to finish")
    assert job["requester"] == "alertmanager" and job["action"] == "renew"
    assert job["targets"] == ["site"] and job["verified"] == ["site"]
    assert job["issuer"] == "local" and job["key"].startswith("alert:7c2a41e0b95d3f18:")
    assert job["new_serial"] and job["new_serial"] != r.first_serial
    assert r.served_serial() == job["new_serial"]  # the file now holds the new certificate
    assert (os.stat(r.cert_path.parent / "key.pem").st_mode & 0o777) == 0o600

    async def measured() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        m = await r.metrics()
        return m if m.get(("certpilot_jobs", (("state", "done"),))) == 1 else None

    m = await eventually(measured, "certpilot_jobs{state=done} 1")
    assert m[("certpilot_issuance_latency_seconds_count", ())] == 1
    assert m[("certpilot_sli_events_total", (("result", "good"), ("sli", "renewal_success")))] == 1
    assert m[("certpilot_sli_events_total", (("result", "bad"), ("sli", "renewal_success")))] == 0
    assert m[("certpilot_jobs", (("state", "approved"),))] == 0

    # A re-delivery of the same alert finds the job it made.
    async with r.session.post(
        r.base + "/hooks/alertmanager",
        json=alert_payload(ref),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 200
        again = await resp.json()
    assert again["counts"] == {"job_exists": 1} and again["alerts"][0]["job_id"] == job_id


async def test_the_service_stops_cleanly(running: Running) -> None:
    async with running.session.post(
        running.base + "/hooks/alertmanager", json=alert_payload("file:///nowhere#0")
    ) as resp:
        assert resp.status == 401  # no Authorization header at all
    running.stop.set()
    await asyncio.wait_for(running.task, timeout=DEADLINE)
    assert running.task.exception() is None
    with pytest.raises(aiohttp.ClientConnectionError):
        async with running.session.get(running.base + "/healthz"):
            pass
