"""The scanner against a real nginx on loopback: chains as nginx serves them, and a redeploy.

nginx (not a Python TLS server) is what users run, so this is where "full chain", "leaf without
its intermediate" and "expired leaf" must come out exactly right, and where a certificate swap
followed by ``nginx -s reload`` must be seen by a re-probe (the remediator's verify step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certpilot.domain.clock import SystemClock
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import ProblemCode
from certpilot.localca import Issued, LocalCA
from scanner.runner import Scanner, ScanOptions, warm_up
from tests.support.services import NginxFleet, require_binary

pytestmark = pytest.mark.service("nginx")

FULL = "full.nginx.test"
NOCHAIN = "nochain.nginx.test"
EXPIRED = "expired.nginx.test"
ROTATE = "rotate.nginx.test"
MISMATCH = "mismatch.nginx.test"


@dataclass
class Deployed:
    fleet: NginxFleet
    ca: LocalCA
    ca_file: Path
    issued: dict[str, Issued]
    now: datetime


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    nginx = require_binary("nginx")
    now = datetime.now(UTC)
    ca = LocalCA("certpilot nginx test", now)
    issued = {
        FULL: ca.issue([FULL], now),
        NOCHAIN: ca.issue([NOCHAIN], now),
        # 90-day leaf that started 95 days ago: expired 5 days ago, intermediate still valid.
        EXPIRED: ca.issue([EXPIRED], now, not_before=now - timedelta(days=95)),
        ROTATE: ca.issue([ROTATE], now),
        MISMATCH: ca.issue([MISMATCH], now),
    }
    issued[NOCHAIN].chain = []  # the classic mistake: cert.pem instead of fullchain.pem
    work = tmp_path_factory.mktemp("nginx")
    ca_file = work / "root.pem"
    ca_file.write_bytes(ca.root_pem())
    specs = [(name, i.chain_pem(), i.key_pem()) for name, i in issued.items()]
    with NginxFleet(work / "nginx", specs, binary=nginx) as fleet:
        yield Deployed(fleet, ca, ca_file, issued, now)


async def probe(d: Deployed, name: str, *, port: int | None = None) -> Observation:
    options = ScanOptions(ca_files=(str(d.ca_file),), use_system_trust=False)
    target = EndpointTarget(
        host=name, port=port or d.fleet.endpoint(name).port, address="127.0.0.1"
    )
    with Scanner(options, SystemClock()) as scanner:
        [obs] = await scanner.probe([target])
    return obs


def serial_of(issued: Issued) -> str:
    return format(issued.cert.serial_number, "x")


async def test_full_chain_is_healthy(deployed: Deployed) -> None:
    obs = await probe(deployed, FULL)
    assert set(obs.codes) == set(), obs.problems
    assert obs.error is None
    assert len(obs.chain) == 2  # leaf + intermediate, as served
    assert len(obs.path) == 3  # ... + the root from the CA file
    assert obs.trusted is True
    assert obs.leaf is not None
    assert obs.leaf.serial == serial_of(deployed.issued[FULL])
    assert obs.leaf.serial == obs.leaf.serial.lower()
    assert obs.chain[1].subject_cn == "certpilot nginx test Intermediate CA"
    assert obs.tls_version == "TLSv1.3"
    assert obs.address == "127.0.0.1"
    assert obs.sni == FULL


async def test_leaf_without_intermediate_is_incomplete_chain(deployed: Deployed) -> None:
    obs = await probe(deployed, NOCHAIN)
    assert set(obs.codes) == {ProblemCode.INCOMPLETE_CHAIN}, obs.problems
    assert len(obs.chain) == 1
    assert obs.trusted is False
    assert obs.leaf is not None
    assert obs.leaf.serial == serial_of(deployed.issued[NOCHAIN])
    assert obs.tls_version == "TLSv1.3"


async def test_expired_leaf_is_expired_and_nothing_else(deployed: Deployed) -> None:
    obs = await probe(deployed, EXPIRED)
    assert set(obs.codes) == {ProblemCode.EXPIRED}, obs.problems
    assert len(obs.chain) == 2
    assert obs.trusted is True
    assert obs.leaf is not None
    assert obs.leaf.serial == serial_of(deployed.issued[EXPIRED])
    assert obs.leaf.not_after < deployed.now
    assert obs.tls_version == "TLSv1.3"


async def test_all_endpoints_in_one_scan_keep_order(deployed: Deployed) -> None:
    names = [FULL, NOCHAIN, EXPIRED]
    options = ScanOptions(ca_files=(str(deployed.ca_file),), use_system_trust=False)
    with Scanner(options, SystemClock()) as scanner:
        observations = await scanner.probe([deployed.fleet.endpoint(n).target() for n in names])
    assert [o.host for o in observations] == names
    assert [set(o.codes) for o in observations] == [
        set(),
        {ProblemCode.INCOMPLETE_CHAIN},
        {ProblemCode.EXPIRED},
    ]


async def test_worker_pool_gives_the_same_verdicts(deployed: Deployed) -> None:
    """The spawn pool (what large fleets use) pickles targets and observations both ways."""
    names = [FULL, NOCHAIN, EXPIRED]
    options = ScanOptions(ca_files=(str(deployed.ca_file),), use_system_trust=False, workers=2)
    with Scanner(options, SystemClock()) as scanner:
        warm_up(scanner, 2)
        observations = await scanner.probe([deployed.fleet.endpoint(n).target() for n in names])
    assert [o.host for o in observations] == names
    assert [set(o.codes) for o in observations] == [
        set(),
        {ProblemCode.INCOMPLETE_CHAIN},
        {ProblemCode.EXPIRED},
    ]
    assert [o.leaf.serial if o.leaf else None for o in observations] == [
        serial_of(deployed.issued[n]) for n in names
    ]
    assert [len(o.chain) for o in observations] == [2, 1, 2]


async def wait_for_serial(d: Deployed, name: str, serial: str) -> Observation:
    """Re-probe until ``serial`` is served: ``nginx -s reload`` returns before workers swap."""
    obs = await probe(d, name)
    for _ in range(50):
        if obs.leaf is not None and obs.leaf.serial == serial:
            break
        await asyncio.sleep(0.1)
        obs = await probe(d, name)
    return obs


async def test_redeploy_and_reload_serves_new_serial(deployed: Deployed) -> None:
    fleet = deployed.fleet
    master = fleet.pid
    before = await probe(deployed, ROTATE)
    assert before.leaf is not None
    assert before.leaf.serial == serial_of(deployed.issued[ROTATE])

    renewed = deployed.ca.issue([ROTATE], datetime.now(UTC))
    assert serial_of(renewed) != before.leaf.serial
    fleet.replace_certificate(ROTATE, renewed.chain_pem(), renewed.key_pem())
    fleet.reload()

    after = await wait_for_serial(deployed, ROTATE, serial_of(renewed))
    assert after.leaf is not None
    assert after.leaf.serial == serial_of(renewed), "nginx never served the new certificate"
    assert set(after.codes) == set(), after.problems
    assert len(after.chain) == 2
    assert fleet.pid == master  # a reload, not a restart
    deployed.issued[ROTATE] = renewed


async def test_reload_with_mismatched_key_fails_and_keeps_old_certificate(
    deployed: Deployed,
) -> None:
    fleet = deployed.fleet
    old = deployed.issued[MISMATCH]
    wrong = deployed.ca.issue([MISMATCH], datetime.now(UTC))
    fleet.replace_certificate(MISMATCH, wrong.chain_pem(), old.key_pem())
    try:
        with pytest.raises(RuntimeError, match="nginx -t failed"):
            fleet.reload()
    finally:
        fleet.replace_certificate(MISMATCH, old.chain_pem(), old.key_pem())
    obs = await probe(deployed, MISMATCH)
    assert obs.leaf is not None
    assert obs.leaf.serial == serial_of(old)
    assert set(obs.codes) == set()


async def test_sni_names_on_one_port(deployed: Deployed, tmp_path: Path) -> None:
    names = [FULL, NOCHAIN, EXPIRED]
    specs = [(n, deployed.issued[n].chain_pem(), deployed.issued[n].key_pem()) for n in names]
    with NginxFleet(tmp_path / "sni", specs, sni_ports=1, binary=deployed.fleet.binary) as sni:
        assert len(sni.ports) == 1
        got = [await probe(deployed, n, port=sni.ports[0]) for n in names]
    assert [o.leaf.serial if o.leaf else None for o in got] == [
        serial_of(deployed.issued[n]) for n in names
    ]
    assert [set(o.codes) for o in got] == [
        set(),
        {ProblemCode.INCOMPLETE_CHAIN},
        {ProblemCode.EXPIRED},
    ]
