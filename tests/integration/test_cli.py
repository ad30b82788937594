"""The certpilot command as a user runs it: exit codes, JSON contract, one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from certpilot.fleet import Fleet

CLI = [sys.executable, "-m", "certpilot.cli"]


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command in a subprocess (off the loop, so fleet servers keep serving)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return await asyncio.to_thread(
        subprocess.run, [*CLI, *args], capture_output=True, text=True, timeout=120, env=full_env
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("certpilot")]
    assert any(needle in ln for ln in lines), proc.stderr


async def test_scan_json_contract_and_exit_codes(fleet: Fleet) -> None:
    healthy = fleet.by_case("healthy")
    ok = await run_cli(
        "scan",
        f"{healthy.host}:{healthy.port}",
        "--resolve",
        f"{healthy.host}:{healthy.port}:127.0.0.1",
        "--ca-file",
        str(fleet.ca_file),
        "--format",
        "json",
    )
    assert ok.returncode == 0, ok.stderr
    (item,) = json.loads(ok.stdout)
    required = {
        "target",
        "host",
        "port",
        "address",
        "problems",
        "serial",
        "fingerprint_sha256",
        "subject",
        "issuer",
        "sans",
        "not_before",
        "not_after",
        "days_left",
        "key_type",
        "key_bits",
        "signature_algorithm",
        "tls_version",
        "chain",
        "error",
    }
    assert required <= set(item)
    assert item["problems"] == [] and item["error"] is None
    assert item["address"] == "127.0.0.1" and item["port"] == healthy.port
    assert item["serial"] == format(healthy.issued.cert.serial_number, "x")  # type: ignore[union-attr]
    assert item["not_after"].endswith("Z")
    assert [c["is_ca"] for c in item["chain"]] == [False, True]

    expired = fleet.by_case("expired")
    bad = await run_cli(
        "scan",
        f"{expired.host}:{expired.port}",
        f"{healthy.host}:{healthy.port}",
        "--resolve",
        f"{expired.host}:{expired.port}:127.0.0.1",
        "--resolve",
        f"{healthy.host}:{healthy.port}:127.0.0.1",
        "--ca-file",
        str(fleet.ca_file),
        "--format",
        "json",
    )
    assert bad.returncode == 1
    by_target = {i["target"]: i for i in json.loads(bad.stdout)}
    assert by_target[f"{expired.host}:{expired.port}"]["problems"] == ["expired"]


async def test_scan_table_output(fleet: Fleet) -> None:
    ep = fleet.by_case("incomplete-chain")
    proc = await run_cli(
        "scan",
        f"{ep.host}:{ep.port}",
        "--resolve",
        f"{ep.host}:{ep.port}:127.0.0.1",
        "--ca-file",
        str(fleet.ca_file),
    )
    assert proc.returncode == 1
    assert "incomplete_chain" in proc.stdout
    assert "1 items, 1 with problems" in proc.stdout


async def test_unreachable_targets_are_problems_not_errors(fleet: Fleet) -> None:
    ep = fleet.by_case("refused")
    proc = await run_cli("scan", f"127.0.0.1:{ep.port}", "--format", "json", "--timeout", "2s")
    assert proc.returncode == 1
    (item,) = json.loads(proc.stdout)
    assert item["problems"] == ["connection_refused"] and item["error"]
    assert item["serial"] is None


async def test_scan_files(tmp_path: Path, fleet: Fleet) -> None:
    proc = await run_cli("scan", f"file:{fleet.ca_file}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert len(items) == 3 and all(i["source"] == "file" for i in items)
    garbage = tmp_path / "junk.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    proc = await run_cli("scan", f"file:{garbage}", "--format", "json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["problems"] == ["malformed"]
    proc = await run_cli("scan", f"file:{tmp_path}/nothing-*.pem", "--format", "json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["problems"] == ["unreadable"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["scan", "host:99999"], "port must be 1-65535"),
        (["scan", "example.com", "--resolve", "example.com:443"], "--resolve"),
        (["scan", "example.com", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (["scan", "example.com", "--timeout", "soon"], "--timeout"),
        (["scan", "example.com", "--expiring-fraction", "3"], "--expiring-fraction"),
        (["inventory", "--problem", "bogus"], "unknown problem code"),
        (["config", "check", "/nonexistent.yaml"], "file not found"),
        (["frobnicate"], "invalid choice"),
    ],
)
async def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    proc = await run_cli(*args)
    assert_one_line_error(proc, needle)


async def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "ok.yaml"
    good.write_text("targets:\n  endpoints: [example.com]\n")
    proc = await run_cli("config", "check", str(good))
    assert proc.returncode == 0 and "ok (1 endpoints" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("scan:\n  concurency: 5\n")
    proc = await run_cli("config", "check", str(bad))
    assert_one_line_error(proc, "bad.yaml: scan.concurency: unknown field")
    example = Path(__file__).parents[2] / "examples" / "certpilot.yaml"
    proc = await run_cli("config", "check", str(example))
    assert proc.returncode == 0, proc.stderr


async def test_scan_into_inventory_then_list(tmp_path: Path, fleet: Fleet) -> None:
    db = f"sqlite:///{tmp_path / 'inv.db'}"
    targets = []
    resolves = []
    for case in ("healthy", "expiring", "expired"):
        ep = fleet.by_case(case)
        targets.append(f"{ep.host}:{ep.port}")
        resolves += ["--resolve", f"{ep.host}:{ep.port}:127.0.0.1"]
    proc = await run_cli("scan", *targets, *resolves, "--ca-file", str(fleet.ca_file), "--db", db)
    assert proc.returncode == 1, proc.stderr
    proc = await run_cli("inventory", "--db", db, "--format", "json")
    assert proc.returncode == 1
    items = json.loads(proc.stdout)
    assert len(items) == 3
    proc = await run_cli("inventory", "--db", db, "--expiring", "30", "--format", "json")
    assert {tuple(i["problems"]) for i in json.loads(proc.stdout)} == {("expiring",), ("expired",)}
    proc = await run_cli("inventory", "--db", db, "--problem", "expired", "--format", "json")
    assert [i["problems"] for i in json.loads(proc.stdout)] == [["expired"]]
    missing = await run_cli("inventory", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert_one_line_error(missing, "no inventory at")

    # The scan's probes are SLI events: 1 good, 2 bad (expiring, expired).
    proc = await run_cli("slo", "status", "--db", db, "--format", "json")
    assert proc.returncode == 1, proc.stderr  # the valid-ratio page fires
    by_slo = {s["slo"]: s for s in json.loads(proc.stdout)}
    valid = by_slo["cert-valid-ratio"]
    five = next(w for w in valid["windows"] if w["window"] == "5m")
    assert abs(five["error_ratio"] - 2 / 3) < 1e-9
    assert any(a["severity"] == "page" and a["firing"] for a in valid["alerts"])
    assert by_slo["cert-renewal-success"]["events_in_period"] in (0, None)
    table = await run_cli("slo", "status", "--db", db)
    assert "cert-valid-ratio" in table.stdout and "page" in table.stdout
