"""TLS endpoint prober: connect, handshake, read the presented chain, judge it.

Design notes (why it looks like this):

* The chain is fetched with verification **off** and a permissive security level
  (``@SECLEVEL=0``), so that expired, untrusted, mis-chained and weak certificates can still be
  read; the chain is then judged in pure code (``certpilot.domain.judge``) against the trust
  anchors. Judging separately is what lets certpilot say *which* of a dozen things is wrong.
* Python 3.11 has no public API for the peer's full chain; ``SSLObject._sslobj`` exposes
  ``get_unverified_chain()`` (public as ``SSLSocket.get_unverified_chain`` from 3.13,
  https://github.com/python/cpython/issues/109109). That is the "small wrapper" below.
* The handshake runs on a non-blocking socket driven by ``loop.add_reader/add_writer`` instead
  of asyncio's ``sslproto`` transport: a probe needs nothing but the handshake, and skipping the
  transport's buffering and protocol machinery saves a noticeable share of per-probe CPU
  (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from certpilot.domain.chain import TrustAnchors
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertificateParseError
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_chain
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import ParsedCert, parse_der

_ENCODING_DER: int = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How to probe: timeout covers resolve + connect + handshake of one target."""

    timeout: float = 5.0
    concurrency: int = 100
    policy: JudgePolicy = DEFAULT_POLICY


def make_client_context() -> ssl.SSLContext:
    """A client context that completes a handshake with anything and verifies nothing.

    ``@SECLEVEL=0`` lets OpenSSL 3 accept RSA-1024 and SHA-1 so they can be *reported*;
    ``OP_NO_TICKET`` because a probe never resumes a session (and servers skip the ticket).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


class _ParseCache:
    """LRU of parsed certificates keyed by DER: a fleet shares a few intermediates, and a
    rescan sees mostly the same leaves, so parsing each DER once per process pays off."""

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._items: OrderedDict[bytes, ParsedCert] = OrderedDict()

    def get(self, der: bytes, origin: str) -> ParsedCert:
        hit = self._items.get(der)
        if hit is not None:
            self._items.move_to_end(der)
            return hit
        pc = parse_der(der, origin)
        self._items[der] = pc
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return pc


class _Failure(Exception):
    def __init__(self, code: ProblemCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class TlsProber:
    """Probes TLS endpoints with bounded concurrency. Implements ``certpilot.domain.Prober``."""

    def __init__(
        self,
        anchors: TrustAnchors,
        clock: Clock,
        settings: ProbeSettings | None = None,
        *,
        anchors_given: bool = False,
    ) -> None:
        self.anchors = anchors
        self.anchors_given = anchors_given
        self.clock = clock
        self.settings = settings or ProbeSettings()
        self._ctx = make_client_context()
        self._cache = _ParseCache()

    async def probe(
        self,
        targets: Sequence[EndpointTarget],
        progress: Callable[[int], None] | None = None,
    ) -> list[Observation]:
        """Probe every target; results in the order of ``targets``."""
        sem = asyncio.Semaphore(max(1, self.settings.concurrency))

        async def one(t: EndpointTarget) -> Observation:
            async with sem:
                obs = await self.probe_one(t)
            if progress is not None:
                progress(1)
            return obs

        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def probe_one(self, target: EndpointTarget) -> Observation:
        started = time.perf_counter()
        address: str | None = target.address
        tls_version: str | None = None
        ders: list[bytes] = []
        try:
            async with asyncio.timeout(self.settings.timeout):
                family, sockaddr = await self._resolve(target)
                address = str(sockaddr[0])
                ders, tls_version = await self._handshake(family, sockaddr, target.server_name)
        except _Failure as f:
            return self._failed(target, address, f.code, f.message, started)
        except TimeoutError:
            what = "handshake" if address else "resolve/connect"
            return self._failed(
                target,
                address,
                ProblemCode.TIMEOUT,
                f"no answer within {self.settings.timeout:g}s ({what})",
                started,
            )
        return self._judge(target, address, ders, tls_version, started)

    async def _resolve(self, target: EndpointTarget) -> tuple[int, tuple[Any, ...]]:
        literal = _ip_literal(target.address or target.host)
        if literal is not None:
            fam = socket.AF_INET6 if ":" in literal else socket.AF_INET
            return fam, (literal, target.port)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise _Failure(
                ProblemCode.DNS_ERROR, f"cannot resolve {target.host}: {e.strerror}"
            ) from e
        except UnicodeError as e:
            raise _Failure(ProblemCode.DNS_ERROR, f"invalid host name {target.host!r}") from e
        if not infos:
            raise _Failure(ProblemCode.DNS_ERROR, f"no address for {target.host}")
        fam, _, _, _, sockaddr = infos[0]
        return int(fam), tuple(sockaddr)

    async def _handshake(
        self, family: int, sockaddr: tuple[Any, ...], server_name: str
    ) -> tuple[list[bytes], str | None]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        tls: ssl.SSLSocket | None = None
        try:
            try:
                await loop.sock_connect(sock, sockaddr)
            except ConnectionRefusedError as e:
                raise _Failure(
                    ProblemCode.CONNECTION_REFUSED, f"connection refused by {sockaddr[0]}"
                ) from e
            except OSError as e:
                reason = errno.errorcode.get(e.errno or 0, "") or str(e)
                raise _Failure(
                    ProblemCode.CONNECTION_REFUSED, f"cannot connect to {sockaddr[0]}: {reason}"
                ) from e
            sni = server_name if _ip_literal(server_name) is None else None
            try:
                tls = self._ctx.wrap_socket(
                    sock, server_hostname=sni, do_handshake_on_connect=False
                )
            except (ssl.SSLError, ValueError) as e:
                raise _Failure(ProblemCode.TLS_ERROR, f"cannot start TLS: {e}") from e
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await _wait_fd(loop, tls.fileno(), write=False)
                except ssl.SSLWantWriteError:
                    await _wait_fd(loop, tls.fileno(), write=True)
                except ssl.SSLError as e:
                    raise _Failure(
                        ProblemCode.TLS_ERROR, f"TLS handshake failed: {_ssl_reason(e)}"
                    ) from e
                except (ConnectionResetError, BrokenPipeError) as e:
                    raise _Failure(
                        ProblemCode.TLS_ERROR, "peer closed the connection during the TLS handshake"
                    ) from e
                except OSError as e:
                    raise _Failure(ProblemCode.TLS_ERROR, f"TLS handshake failed: {e}") from e
            sslobj = tls._sslobj  # type: ignore[attr-defined]
            chain = sslobj.get_unverified_chain() or []
            ders = [c.public_bytes(_ENCODING_DER) for c in chain]
            if not ders:
                raise _Failure(ProblemCode.TLS_ERROR, "peer presented no certificate")
            return ders, tls.version()
        finally:
            (tls or sock).close()

    def _failed(
        self,
        target: EndpointTarget,
        address: str | None,
        code: ProblemCode,
        message: str,
        started: float,
    ) -> Observation:
        return Observation(
            source="tls",
            ref=target.ref,
            target=target.name,
            observed_at=self.clock.now(),
            problems=(Problem(code, message),),
            host=target.host,
            port=target.port,
            address=address,
            sni=target.server_name,
            error=message,
            duration_seconds=time.perf_counter() - started,
            labels=target.labels,
        )

    def _judge(
        self,
        target: EndpointTarget,
        address: str | None,
        ders: list[bytes],
        tls_version: str | None,
        started: float,
    ) -> Observation:
        now = self.clock.now()
        presented: list[ParsedCert] = []
        try:
            for i, der in enumerate(ders):
                presented.append(self._cache.get(der, f"{target.name} chain[{i}]"))
        except CertificateParseError as e:
            if not presented:
                return self._failed(
                    target,
                    address,
                    ProblemCode.TLS_ERROR,
                    f"unparseable certificate: {e.message}",
                    started,
                )
            # keep what parsed: the leaf is enough to judge most of it
        verdict = judge_chain(
            presented,
            now,
            self.anchors,
            hostname=target.server_name,
            policy=self.settings.policy,
            anchors_given=self.anchors_given,
        )
        return Observation(
            source="tls",
            ref=target.ref,
            target=target.name,
            observed_at=now,
            problems=verdict.problems,
            leaf=presented[0].info,
            chain=tuple(p.info for p in presented),
            path=tuple(p.info for p in verdict.path.path),
            trusted=verdict.path.trusted,
            host=target.host,
            port=target.port,
            address=address,
            sni=target.server_name,
            tls_version=tls_version,
            duration_seconds=time.perf_counter() - started,
            labels=target.labels,
        )


def _ssl_reason(e: ssl.SSLError) -> str:
    reason = getattr(e, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(e)
