"""The TLS prober against real loopback TLS servers: every problem code, IPv6, --resolve,
bad peers (plain text, silence, huge chains) and bounded concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.domain.clock import SystemClock
from certpilot.domain.model import EndpointTarget
from certpilot.domain.problems import ProblemCode as P
from certpilot.fleet import Fleet, dns_failure_target
from certpilot.localca import LocalCA, write_key
from scanner.runner import Scanner, ScanOptions
from scanner.tls_endpoint import ProbeSettings, TlsProber
from scanner.trust import load_anchors


def prober(ca_file: Path, timeout: float = 2.0, concurrency: int = 100) -> TlsProber:
    anchors = load_anchors([str(ca_file)], use_system=False)
    return TlsProber(
        anchors,
        SystemClock(),
        ProbeSettings(timeout=timeout, concurrency=concurrency),
        anchors_given=True,
    )


async def test_every_fleet_endpoint_is_classified_exactly(fleet: Fleet) -> None:
    results = await prober(fleet.ca_file).probe(fleet.targets())
    for ep, obs in zip(fleet.endpoints, results, strict=True):
        assert set(obs.codes) == set(ep.expected), (ep.case, obs.problems)
        assert obs.ref == f"tls://{ep.host}:{ep.port}#{ep.host}"
        if obs.leaf is not None:
            assert ep.issued is not None
            assert obs.leaf.serial == format(ep.issued.cert.serial_number, "x")
            assert obs.tls_version in {"TLSv1.2", "TLSv1.3"}
            assert len(obs.leaf.fingerprint_sha256) == 64
        else:
            assert obs.error


async def test_healthy_endpoint_facts(fleet: Fleet) -> None:
    ep = fleet.by_case("healthy")
    (obs,) = await prober(fleet.ca_file).probe([ep.target()])
    assert obs.healthy and obs.trusted
    assert obs.leaf is not None
    assert obs.leaf.sans == (ep.host,)
    assert obs.leaf.key_type == "EC" and obs.leaf.key_bits == 256
    assert obs.leaf.signature_algorithm == "ecdsa-with-SHA256"
    assert len(obs.chain) == 2 and obs.chain[1].is_ca
    assert len(obs.path) == 3  # leaf, intermediate, trusted root from --ca-file
    d = obs.to_dict()
    for key in (
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
    ):
        assert key in d
    assert str(d["not_after"]).endswith("Z")
    assert 80 < float(d["days_left"]) < 91  # type: ignore[arg-type]


async def test_without_ca_file_private_chain_is_untrusted(fleet: Fleet) -> None:
    anchors = load_anchors([], use_system=True)
    p = TlsProber(anchors, SystemClock(), ProbeSettings(timeout=2))
    (obs,) = await p.probe([fleet.by_case("healthy").target()])
    assert obs.codes == (P.UNTRUSTED_ROOT,)
    assert "--ca-file" in obs.problems[0].message


async def test_dns_failure() -> None:
    p = TlsProber(load_anchors([], use_system=False), SystemClock(), ProbeSettings(timeout=3))
    (obs,) = await p.probe([dns_failure_target()])
    assert obs.codes == (P.DNS_ERROR,)


async def test_resolve_pins_address_and_sni_is_checked(fleet: Fleet) -> None:
    ep = fleet.by_case("healthy")
    target = EndpointTarget(host=ep.host, port=ep.port, address="127.0.0.1")
    (obs,) = await prober(fleet.ca_file).probe([target])
    assert obs.address == "127.0.0.1" and obs.healthy
    wrong = EndpointTarget(host=ep.host, port=ep.port, address="127.0.0.1", sni="other.test")
    (obs2,) = await prober(fleet.ca_file).probe([wrong])
    assert obs2.codes == (P.HOSTNAME_MISMATCH,)


@contextlib.asynccontextmanager
async def tls_server(host: str, cert_pem: bytes, key_pem: bytes, tmp: Path) -> AsyncIterator[int]:
    (tmp / "c.pem").write_bytes(cert_pem)
    write_key(tmp / "k.pem", key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.read(1)
        w.close()

    server = await asyncio.start_server(handle, host, 0, ssl=ctx)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="no ::1 on this machine")
async def test_ipv6_endpoint(ca: LocalCA, tmp_path: Path) -> None:
    now = SystemClock().now()
    issued = ca.issue(["::1", "v6.test"], now)
    (tmp_path / "root.pem").write_bytes(ca.root_pem())
    async with tls_server("::1", issued.chain_pem(), issued.key_pem(), tmp_path) as port:
        (obs,) = await prober(tmp_path / "root.pem").probe([EndpointTarget("::1", port)])
        assert obs.healthy, obs.problems
        assert obs.address == "::1"
        assert obs.ref == f"tls://[::1]:{port}#::1"
        (by_name,) = await prober(tmp_path / "root.pem").probe(
            [EndpointTarget("v6.test", port, address="::1")]
        )
        assert by_name.healthy


async def test_huge_chain_is_reported_not_crashed(ca: LocalCA, tmp_path: Path) -> None:
    now = SystemClock().now()
    issued = ca.issue(["big.test"], now)
    # 120 unrelated CA certificates after the leaf: more than OpenSSL's default 100 KiB limit
    # for the Certificate message, or a long useless chain if it gets through.
    junk = b"".join(
        LocalCA(f"Junk {i}", now, intermediate_lifetime=None).root_pem() for i in range(120)
    )
    (tmp_path / "root.pem").write_bytes(ca.root_pem())
    async with tls_server(
        "127.0.0.1", issued.chain_pem() + junk, issued.key_pem(), tmp_path
    ) as port:
        (obs,) = await prober(tmp_path / "root.pem", timeout=5).probe(
            [EndpointTarget("big.test", port, address="127.0.0.1")]
        )
    assert obs.codes in {(P.TLS_ERROR,), ()}, obs.problems
    if obs.leaf is not None:
        assert len(obs.chain) == 122 and obs.trusted


async def test_silent_peer_times_out_within_bound(fleet: Fleet) -> None:
    ep = fleet.by_case("timeout")
    loop = asyncio.get_running_loop()
    start = loop.time()
    (obs,) = await prober(fleet.ca_file, timeout=0.5).probe([ep.target()])
    assert obs.codes == (P.TIMEOUT,)
    assert loop.time() - start < 2.0


async def test_concurrency_bound_is_respected(fleet: Fleet) -> None:
    """With concurrency 1, probes never overlap: count in-flight connections server-side."""
    in_flight = 0
    peak = 0

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        targets = [EndpointTarget(f"h{i}.test", port, address="127.0.0.1") for i in range(6)]
        await prober(fleet.ca_file, timeout=1, concurrency=1).probe(targets)
        assert peak == 1
        peak = 0
        await prober(fleet.ca_file, timeout=1, concurrency=3).probe(targets)
        assert peak == 3
    finally:
        server.close()


async def test_worker_pool_gives_same_answers(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scanner.runner

    monkeypatch.setattr(scanner.runner, "MAX_CHUNK", 2)  # chunks never larger, however many
    targets = fleet.targets() * 3  # repeated targets exercise chunking across 2 processes
    options = ScanOptions(
        probe=ProbeSettings(timeout=3.0),
        ca_files=(str(fleet.ca_file),),
        use_system_trust=False,
        workers=2,
    )
    with Scanner(options, SystemClock()) as scanner:
        done: list[int] = []
        results = await scanner.probe(targets, progress=done.append)
    assert sum(done) == len(targets) and max(done) == 2  # progress counts each chunk
    expected = [ep.expected for ep in fleet.endpoints] * 3
    assert [set(o.codes) for o in results] == [set(e) for e in expected]


async def test_a_cycle_records_the_pool_s_chunks_as_they_come_and_keeps_only_counts(
    fleet: Fleet, tmp_path: Path
) -> None:
    """``scan_and_record(keep=False)``, as the service runs it: endpoints are recorded chunk by
    chunk (several transactions, each at most a chunk) in target order, the inventory ends as
    with ``keep=True``, and the result holds counts, not observations."""
    from certpilot.app import scan_and_record
    from certpilot.store import Inventory

    targets = fleet.targets()
    options = ScanOptions(
        probe=ProbeSettings(timeout=3.0, concurrency=2),  # one probe per worker: small chunks
        ca_files=(str(fleet.ca_file),),
        use_system_trust=False,
        workers=2,
    )
    batches: list[list[str]] = []

    class Recording(Inventory):
        def record(self, observations, *, now, run_id=None):  # type: ignore[no-untyped-def]
            batches.append([o.ref for o in observations])
            return super().record(observations, now=now, run_id=run_id)

    clock = SystemClock()
    with Scanner(options, clock) as scanner:
        lean = Recording.open(f"sqlite:///{tmp_path / 'lean.db'}")
        full = Inventory.open(f"sqlite:///{tmp_path / 'full.db'}")
        try:
            res = await scan_and_record(scanner, lean, None, targets, clock, keep=False)
            kept = await scan_and_record(scanner, full, None, targets, clock)
            assert len(batches) > 2 and max(len(b) for b in batches) < len(targets)
            assert [r for b in batches for r in b] == [t.ref for t in targets]
            assert res.observations == [] and res.items == len(targets) == len(kept.observations)
            with_problems = [o for o in kept.observations if o.problems]
            assert res.problems == len(with_problems) > 0
            expected_codes: dict[str, int] = {}
            for o in with_problems:
                for c in o.codes:
                    expected_codes[c.value] = expected_codes.get(c.value, 0) + 1
            assert res.codes == expected_codes
            assert [e.kind for e in res.events] == [e.kind for e in kept.events]
            now = clock.now()
            assert [(i.ref, i.problems) for i in lean.items(now=now)] == [
                (i.ref, i.problems) for i in full.items(now=now)
            ]
        finally:
            lean.close()
            full.close()


async def test_short_lived_certificates_judged_by_lifetime(ca: LocalCA, tmp_path: Path) -> None:
    now = SystemClock().now()
    fresh = ca.issue(
        ["s.test"], now, lifetime=timedelta(days=6), not_before=now - timedelta(hours=12)
    )
    (tmp_path / "root.pem").write_bytes(ca.root_pem())
    async with tls_server("127.0.0.1", fresh.chain_pem(), fresh.key_pem(), tmp_path) as port:
        (obs,) = await prober(tmp_path / "root.pem").probe(
            [EndpointTarget("s.test", port, address="127.0.0.1")]
        )
    assert obs.healthy
    assert fresh.cert.public_bytes(serialization.Encoding.DER)
