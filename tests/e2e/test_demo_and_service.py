"""End to end as a user: `certpilot demo`, and `certpilot run` serving metrics for a fleet."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from certpilot.fleet import Fleet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_demo_classifies_every_endpoint(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "160"}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "certpilot.cli", "demo", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    for heading in (
        "1. a fleet of TLS endpoints",
        "2. scan into the inventory",
        "3. what certpilot found",
        "classification check",
        "5. Slack: the pages the bot would post",
        "#payments-oncall",
        "6. remediation",
        "policy decisions",
        "before -> after (rescanned)",
        "audit chain ok",
        "7. Certificate Transparency: an unexpected issuance caught",
        "hashed back to the signed root",
        "the monitor refused the window holding it",
        "certificates issued unexpectedly (seen in CT)",
    ):
        assert heading in out
    # Every renewal the policy allowed (or a person approved) is done; legacy stays dry-run.
    assert "not done" not in out
    assert out.count(" done ") >= 7 and "dry_run" in out
    for code in (
        "expired",
        "expiring",
        "incomplete_chain",
        "hostname_mismatch",
        "weak_key",
        "weak_signature",
        "chain_expiring",
        "self_signed",
        "untrusted_root",
        "not_yet_valid",
        "connection_refused",
        "timeout",
        "tls_error",
        "dns_error",
        "not_deployed",
        "unmanaged",
    ):
        assert code in out, code
    assert "✗" not in out
    # Exactly the two certificates nobody ordered are unexpected; the fleet's own are expected.
    assert out.count("UNEXPECTED") == 2
    assert "login.demo.certpilot.test" in out and "ordered by certpilot" in out
    assert (tmp_path / "inventory.db").exists()


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(seconds * 10)):
            assert proc.poll() is None, "certpilot run exited early"
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


async def test_run_serves_metrics_for_configured_targets(tmp_path: Path, fleet: Fleet) -> None:
    port = _free_port()
    endpoints = "\n".join(
        f"    - {{host: {ep.host}, port: {ep.port}, address: 127.0.0.1, "
        f"labels: {{owner: {ep.owner}}}}}"
        for ep in fleet.endpoints
    )
    cfg = tmp_path / "certpilot.yaml"
    cfg.write_text(
        f"""
store: {{url: "sqlite:///{tmp_path / "inv.db"}"}}
http: {{host: 127.0.0.1, port: {port}}}
scan: {{interval: 1h, timeout: 1s, ca_files: ["{fleet.ca_file}"], system_trust: false}}
targets:
  endpoints:
{endpoints}
  files:
    - "{fleet.ca_file}"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "certpilot.cli", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        await _wait_ready(f"{base}/readyz", proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            async with http.get(f"{base}/api/v1/inventory", params={"problem": "expired"}) as r:
                expired = await r.json()
        expired_ep = fleet.by_case("expired")
        assert "x509_cert_expired{" in text
        assert 'certpilot_problems{code="expired"} 1.0' in text
        assert 'certpilot_problems{code="incomplete_chain"} 1.0' in text
        assert 'x509_source_up{source="tls"} 1.0' in text
        assert 'x509_source_errors_total{reason="connection_refused",source="tls"} 1.0' in text
        assert f'endpoint="{expired_ep.host}:{expired_ep.port}"' in text
        assert [i["target"] for i in expired["items"]] == [f"{expired_ep.host}:{expired_ep.port}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
