"""The prober's handshake against real loopback peers: protocol version, SNI, and one-line
errors for peers that are not (or stop being) TLS servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from certpilot.domain.clock import SystemClock
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import ProblemCode as P
from certpilot.localca import LocalCA, write_key
from scanner.tls_endpoint import ProbeSettings, TlsProber
from scanner.trust import load_anchors

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _probe(root: Path | None, target: EndpointTarget, timeout: float = 2.0) -> Observation:
    anchors = load_anchors([str(root)] if root else [], use_system=False)
    prober = TlsProber(anchors, SystemClock(), ProbeSettings(timeout=timeout), anchors_given=True)
    (obs,) = await prober.probe([target])
    return obs


@contextlib.asynccontextmanager
async def serve(handler: Handler, ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def _hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await r.read(1)
    w.close()


def _server_ctx(ca: LocalCA, tmp: Path, names: list[str]) -> ssl.SSLContext:
    issued = ca.issue(names, SystemClock().now())
    (tmp / "c.pem").write_bytes(issued.chain_pem())
    write_key(tmp / "k.pem", issued.key_pem())
    (tmp / "root.pem").write_bytes(ca.root_pem())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("TLSv1", "TLSv1"),  # legacy servers still handshake, so their certificates get judged
        ("TLSv1_2", "TLSv1.2"),
        ("TLSv1_3", "TLSv1.3"),
    ],
)
async def test_protocol_version_is_reported(
    ca: LocalCA, tmp_path: Path, version: str, expected: str
) -> None:
    ctx = _server_ctx(ca, tmp_path, ["v.test"])
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    async with serve(_hold, ctx) as port:
        obs = await _probe(
            tmp_path / "root.pem", EndpointTarget("v.test", port, address="127.0.0.1")
        )
    assert obs.healthy, obs.problems
    assert obs.tls_version == expected
    assert len(obs.chain) == 2 and len(obs.path) == 3


async def test_sni_is_sent_for_names_and_not_for_ip_literals(ca: LocalCA, tmp_path: Path) -> None:
    ctx = _server_ctx(ca, tmp_path, ["sni.test", "127.0.0.1"])
    seen: list[str | None] = []
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name)
    async with serve(_hold, ctx) as port:
        by_name = await _probe(
            tmp_path / "root.pem", EndpointTarget("sni.test", port, address="127.0.0.1")
        )
        by_ip = await _probe(tmp_path / "root.pem", EndpointTarget("127.0.0.1", port))
    assert by_name.healthy and by_ip.healthy, (by_name.problems, by_ip.problems)
    assert seen == ["sni.test", None]  # RFC 6066 section 3: no IP literals in SNI


async def test_plain_http_peer_is_a_one_line_tls_error() -> None:
    async def http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        with contextlib.suppress(Exception):
            await w.drain()
        w.close()

    async with serve(http) as port:
        obs = await _probe(None, EndpointTarget("127.0.0.1", port))
    assert obs.codes == (P.TLS_ERROR,)
    assert obs.error is not None and obs.error.startswith("TLS handshake failed: ")
    assert "\n" not in obs.error and obs.leaf is None


@pytest.mark.parametrize("reset", [False, True])
async def test_peer_closing_mid_handshake(reset: bool) -> None:
    async def close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.read(1)  # the ClientHello has arrived
        sock = w.get_extra_info("socket")
        if reset and sock is not None:  # SO_LINGER 0: close with RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()

    async with serve(close) as port:
        obs = await _probe(None, EndpointTarget("127.0.0.1", port))
    assert obs.codes == (P.TLS_ERROR,)
    assert obs.error == "peer closed the connection during the TLS handshake"


async def test_refused_and_silent_peers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    refused = await _probe(None, EndpointTarget("127.0.0.1", free))
    assert refused.codes == (P.CONNECTION_REFUSED,)
    assert refused.error == "connection refused by 127.0.0.1"

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await r.read(65536):
                pass
        w.close()

    async with serve(silent) as port:
        obs = await _probe(None, EndpointTarget("127.0.0.1", port), timeout=0.3)
    assert obs.codes == (P.TIMEOUT,)
    assert obs.error == "no answer within 0.3s (handshake)"


async def test_one_prober_many_probes_reuses_its_caches(ca: LocalCA, tmp_path: Path) -> None:
    """The parse cache and the link cache make repeated probes cheap, not different."""
    ctx = _server_ctx(ca, tmp_path, ["r.test"])
    anchors = load_anchors([str(tmp_path / "root.pem")], use_system=False)
    prober = TlsProber(anchors, SystemClock(), ProbeSettings(timeout=2, concurrency=4))
    async with serve(_hold, ctx) as port:
        results = await prober.probe([EndpointTarget("r.test", port, address="127.0.0.1")] * 8)
    assert all(o.healthy and o.trusted for o in results)
    assert len({o.leaf.fingerprint_sha256 for o in results if o.leaf}) == 1


def _extensions(client_hello: bytes) -> dict[int, bytes]:
    """Extensions of a ClientHello record (RFC 8446 section 4.1.2), by type."""
    p = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
    p += 1 + client_hello[p]  # legacy_session_id
    p += 2 + int.from_bytes(client_hello[p : p + 2], "big")  # cipher_suites
    p += 1 + client_hello[p]  # legacy_compression_methods
    end = p + 2 + int.from_bytes(client_hello[p : p + 2], "big")
    p += 2
    out: dict[int, bytes] = {}
    while p < end:
        kind, size = (
            int.from_bytes(client_hello[p : p + 2], "big"),
            int.from_bytes(client_hello[p + 2 : p + 4], "big"),
        )
        out[kind] = client_hello[p + 4 : p + 4 + size]
        p += 4 + size
    return out


async def test_client_hello_sends_one_x25519_key_share() -> None:
    """No post-quantum hybrid share (a second key generation per probe), as OpenSSL 3.0 did."""
    hellos: list[bytes] = []

    async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            header = await r.readexactly(5)
            hellos.append(header + await r.readexactly(int.from_bytes(header[3:5], "big")))
        w.close()

    async with serve(record) as port:
        obs = await _probe(None, EndpointTarget("hello.test", port, address="127.0.0.1"))
    assert obs.codes == (P.TLS_ERROR,)
    (hello,) = hellos
    ext = _extensions(hello)
    assert ext[0][5:] == b"hello.test"  # server_name: list length, type, name length, name
    shares = ext[51][2:]  # key_share: client_shares length, then (group, length, key) entries
    assert shares[:2] == b"\x00\x1d" and len(shares) == 4 + 32  # X25519 only
    groups = ext[10][2:]
    assert b"\x11\xec" not in [groups[i : i + 2] for i in range(0, len(groups), 2)]
