"""A fleet of loopback TLS endpoints, one for every way a certificate goes wrong.

The demo shows it to people; the tests assert that the scanner classifies each endpoint exactly
as ``expected`` says. Every endpoint is a real TLS server on 127.0.0.1 with a real certificate
from :class:`certpilot.localca.LocalCA`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certpilot.domain.model import EndpointTarget
from certpilot.domain.problems import ProblemCode as P
from certpilot.localca import Issued, LocalCA, self_signed, write_key

DOMAIN = "demo.certpilot.test"


@dataclass
class FleetEndpoint:
    """One endpoint of the fleet and what a correct scanner must say about it."""

    case: str
    description: str
    expected: frozenset[P]
    host: str
    port: int = 0
    owner: str = "platform"
    issued: Issued | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    # What a scan that also reads the fleet's stores (Fleet.store_patterns) must say, when
    # that differs from ``expected`` (reconciliation: not_deployed, unmanaged).
    with_stores: frozenset[P] | None = None

    def expected_with_stores(self) -> frozenset[P]:
        return self.expected if self.with_stores is None else self.with_stores

    def target(self) -> EndpointTarget:
        return EndpointTarget(
            host=self.host, port=self.port, address="127.0.0.1", labels={"owner": self.owner}
        )


@dataclass
class Fleet:
    """Running servers; ``stop()`` closes them all."""

    endpoints: list[FleetEndpoint]
    ca_file: Path
    ca: LocalCA
    workdir: Path
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)
    _hang: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def store_patterns(self) -> list[str]:
        """The certificate stores of the fleet (file globs): every endpoint's files, and a
        store holding a renewal that was never deployed. The ``unmanaged`` endpoint's files
        are outside them on purpose."""
        return [str(self.workdir / "*.crt"), str(self.workdir / "store" / "*.pem")]

    def by_case(self, case: str) -> FleetEndpoint:
        return next(e for e in self.endpoints if e.case == case)

    def targets(self) -> list[EndpointTarget]:
        return [e.target() for e in self.endpoints]

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for t in self._hang:
            t.cancel()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 1)
        self._servers.clear()

    async def replace_certificate(self, case: str, issued: Issued) -> None:
        """Serve a new certificate at ``case``'s port (used by remediation and tests)."""
        ep = self.by_case(case)
        _write(ep, issued)
        idx = self.endpoints.index(ep)
        old = self._servers[idx]
        old.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.wait_closed(), 1)
        self._servers[idx] = await _tls_server(ep)


def _write(ep: FleetEndpoint, issued: Issued) -> None:
    assert ep.cert_path is not None and ep.key_path is not None
    ep.issued = issued
    ep.cert_path.write_bytes(issued.chain_pem())
    write_key(ep.key_path, issued.key_pem())


def _load_context(ep: FleetEndpoint) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Level 0 so that the weak-key and SHA-1 fixtures load at all: they exist to be reported.
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    assert ep.cert_path is not None and ep.key_path is not None
    ctx.load_cert_chain(ep.cert_path, ep.key_path)
    return ctx


def _server_context(ep: FleetEndpoint) -> ssl.SSLContext:
    """The endpoint's context, which picks up new certificate files at the next handshake
    (like a server with hot reload), so a ``files`` deploy target with no reload command can
    redeploy a demo endpoint. The files are checked by modification time on each handshake;
    a half-written pair (a key that does not match yet) keeps the previous context."""
    assert ep.cert_path is not None and ep.key_path is not None
    cert_path, key_path = ep.cert_path, ep.key_path

    def stamp() -> tuple[int, int]:
        return (cert_path.stat().st_mtime_ns, key_path.stat().st_mtime_ns)

    current = {"stamp": stamp(), "ctx": _load_context(ep)}

    def pick(
        sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        try:
            now = stamp()
            if now != current["stamp"]:
                current["ctx"] = _load_context(ep)
                current["stamp"] = now
        except (OSError, ssl.SSLError):
            pass  # mid-write: serve what was loaded last
        fresh = current["ctx"]
        assert isinstance(fresh, ssl.SSLContext)
        sslobj.context = fresh

    outer = _load_context(ep)
    outer.sni_callback = pick
    return outer


async def _drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.read(65536)
    writer.close()


async def _tls_server(ep: FleetEndpoint) -> asyncio.base_events.Server:
    return await asyncio.start_server(
        _drain, "127.0.0.1", ep.port, ssl=_server_context(ep), reuse_address=True
    )


def _cn_of(issued: Issued) -> str:
    return str(issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_fleet(workdir: Path, now: datetime) -> Fleet:
    """Mint certificates relative to ``now`` and start one server per case."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any server)
    ca = LocalCA("certpilot Demo", now)
    short_ca = LocalCA(
        "certpilot Short-Lived",
        now,
        intermediate_lifetime=timedelta(days=20),
        intermediate_name="certpilot Short-Lived Intermediate",
    )
    rogue = LocalCA("Unknown Corp", now)
    legacy = LocalCA("certpilot Legacy RSA", now, key_kind="RSA", key_bits=2048)
    d = DOMAIN

    def issue(ca_: LocalCA, name: str, **kw: object) -> Callable[[], Issued]:
        return lambda: ca_.issue([name], now, **kw)  # type: ignore[arg-type]

    plan: list[tuple[str, str, set[P], str, Callable[[], Issued], bool]] = [
        (
            "healthy",
            "valid 90-day certificate, full chain",
            set(),
            "web",
            issue(ca, f"www.{d}"),
            True,
        ),
        (
            "short-lived",
            "6-day certificate with 5 days left: healthy (judged by lifetime share)",
            set(),
            "web",
            issue(ca, f"short.{d}", lifetime=timedelta(days=6), not_before=now - timedelta(days=1)),
            True,
        ),
        (
            "expiring",
            "90-day certificate with 10 days left",
            {P.EXPIRING},
            "payments",
            issue(ca, f"pay.{d}", not_before=now - timedelta(days=80)),
            True,
        ),
        (
            "expired",
            "expired 5 days ago",
            {P.EXPIRED},
            "payments",
            issue(ca, f"old.{d}", not_before=now - timedelta(days=95)),
            True,
        ),
        (
            "not-yet-valid",
            "valid from the day after tomorrow (clock or issuance mistake)",
            {P.NOT_YET_VALID},
            "web",
            issue(ca, f"future.{d}", not_before=now + timedelta(days=2)),
            True,
        ),
        (
            "self-signed",
            "self-signed leaf",
            {P.SELF_SIGNED},
            "internal",
            lambda: self_signed([f"self.{d}"], now),
            True,
        ),
        (
            "untrusted-root",
            "chain to a root nobody trusts",
            {P.UNTRUSTED_ROOT},
            "internal",
            issue(rogue, f"rogue.{d}"),
            True,
        ),
        (
            "incomplete-chain",
            "leaf sent without its intermediate",
            {P.INCOMPLETE_CHAIN},
            "web",
            issue(ca, f"nochain.{d}"),
            False,
        ),
        (
            "hostname-mismatch",
            "certificate for another name",
            {P.HOSTNAME_MISMATCH},
            "web",
            issue(ca, f"other.{d}"),
            True,
        ),
        (
            "weak-key",
            "RSA-1024 key",
            {P.WEAK_KEY},
            "legacy",
            issue(ca, f"weak.{d}", key_kind="RSA", key_bits=1024),
            True,
        ),
        (
            "weak-signature",
            "signed with SHA-1",
            {P.WEAK_SIGNATURE},
            "legacy",
            issue(legacy, f"sha1.{d}", hash_alg=hashes.SHA1()),  # noqa: S303 (on purpose)
            True,
        ),
        (
            "chain-expiring",
            "intermediate expires 20 days from now, long before the leaf",
            {P.CHAIN_EXPIRING},
            "internal",
            issue(short_ca, f"shortint.{d}"),
            True,
        ),
    ]
    plan += [
        (
            "not-deployed",
            "renewed into the store (store/stale-renewed.pem), never deployed: the old one "
            "is still served",
            set(),
            "web",
            issue(ca, f"stale.{d}", not_before=now - timedelta(days=40)),
            True,
        ),
        (
            "unmanaged",
            "served from files no scanned store holds: nothing renews it",
            set(),
            "web",
            issue(ca, f"orphan.{d}"),
            True,
        ),
    ]
    reconciled = {"not-deployed": P.NOT_DEPLOYED, "unmanaged": P.UNMANAGED}
    endpoints: list[FleetEndpoint] = []
    servers: list[asyncio.base_events.Server] = []
    for case, desc, expected, owner, make, with_chain in plan:
        issued = make()
        host = f"mismatch.{d}" if case == "hostname-mismatch" else _cn_of(issued)
        if not with_chain:
            issued.chain = []
        ep = FleetEndpoint(
            case,
            desc,
            frozenset(expected),
            host,
            owner=owner,
            cert_path=workdir / f"{case}.crt",
            key_path=workdir / f"{case}.key",
        )
        if case in reconciled:
            ep.with_stores = frozenset({reconciled[case]})
        if case == "unmanaged":
            (workdir / "unmanaged").mkdir(exist_ok=True)
            ep.cert_path = workdir / "unmanaged" / "orphan.crt"
            ep.key_path = workdir / "unmanaged" / "orphan.key"
        _write(ep, issued)
        if case == "not-deployed":
            (workdir / "store").mkdir(exist_ok=True)
            renewed = ca.issue([f"stale.{d}"], now)
            (workdir / "store" / "stale-renewed.pem").write_bytes(renewed.chain_pem())
        server = await _tls_server(ep)
        ep.port = int(server.sockets[0].getsockname()[1])
        servers.append(server)
        endpoints.append(ep)

    fleet = Fleet(endpoints, workdir / "trusted-roots.pem", ca, workdir, servers)
    fleet.ca_file.write_bytes(ca.root_pem() + short_ca.root_pem() + legacy.root_pem())

    # Endpoints where no certificate can be read at all.
    refused = FleetEndpoint(
        "refused",
        "nothing listens on the port",
        frozenset({P.CONNECTION_REFUSED}),
        f"down.{d}",
        port=_free_port(),
        owner="web",
    )
    endpoints.append(refused)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Read and ignore until the client gives up: never answers the ClientHello.
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    hanging = await asyncio.start_server(hang, "127.0.0.1", 0)
    servers.append(hanging)
    endpoints.append(
        FleetEndpoint(
            "timeout",
            "accepts TCP, never answers the TLS handshake",
            frozenset({P.TIMEOUT}),
            f"slow.{d}",
            port=int(hanging.sockets[0].getsockname()[1]),
            owner="web",
        )
    )

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            writer.write(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    plain = await asyncio.start_server(garbage, "127.0.0.1", 0)
    servers.append(plain)
    endpoints.append(
        FleetEndpoint(
            "not-tls",
            "plain HTTP where TLS was expected",
            frozenset({P.TLS_ERROR}),
            f"plain.{d}",
            port=int(plain.sockets[0].getsockname()[1]),
            owner="web",
        )
    )
    return fleet


def dns_failure_target() -> EndpointTarget:
    """A name that can never resolve (RFC 2606 reserves ``.invalid``)."""
    return EndpointTarget(host=f"nowhere.{DOMAIN}.invalid", port=443, labels={"owner": "web"})
