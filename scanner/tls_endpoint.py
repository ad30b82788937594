"""TLS endpoint prober: connect, handshake, read the presented chain, judge it.

Design notes (why it looks like this):

* The chain is fetched with verification **off** and a permissive security level
  (``@SECLEVEL=0``), so that expired, untrusted, mis-chained and weak certificates can still be
  read; the chain is then judged in pure code (``certpilot.domain.judge``) against the trust
  anchors. Judging separately is what lets certpilot say *which* of a dozen things is wrong.
* The handshake runs on pyOpenSSL, i.e. on the OpenSSL that ``cryptography`` bundles, not on
  the stdlib ``ssl`` module: it has a public API for the peer's full chain (the stdlib has none
  before 3.13, https://github.com/python/cpython/issues/109109), and the bundled OpenSSL (4.x)
  decodes certificates and keys much faster than the system OpenSSL 3.0 the stdlib links on
  Debian 12 (benchmarks/RESULTS.md has the figures). The chain is taken as DER, not as
  ``cryptography`` objects (``as_cryptography=True``): that converts through DER anyway, and
  would fail the whole chain when one certificate is too malformed for ``cryptography``, where
  the DER path keeps every certificate before the bad one.
* One probe is a small callback-driven state machine on the event loop (``add_writer`` for a
  connect still in progress, ``add_reader`` while OpenSSL wants to read) that resolves one
  future, instead of asyncio's ``sslproto`` transport or a coroutine awaiting a future per
  readiness event: a probe needs nothing but the handshake, and that per-probe machinery was a
  noticeable share of CPU.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL, crypto

from certpilot.domain.chain import LinkCache, TrustAnchors
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertificateParseError
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_chain
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import ParsedCert, parse_der

# The key-exchange groups OpenSSL 3.0 offers by default (a key share for X25519 only). OpenSSL
# 3.5+ also offers X25519MLKEM768 and sends a second, 1.2 KB key share for it: an ML-KEM and an
# extra X25519 key generation per handshake (8-23 % of the client's handshake CPU, measured)
# that buys a certificate probe nothing. Listing it without a key share would be worse: servers
# that prefer it answer with a HelloRetryRequest (RFC 8446 section 4.1.4), a second round trip.
_GROUPS = b"X25519:P-256:X448:P-521:P-384:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How to probe: timeout covers resolve + connect + handshake of one target."""

    timeout: float = 5.0
    concurrency: int = 100
    policy: JudgePolicy = DEFAULT_POLICY


def make_client_context() -> SSL.Context:
    """A client context that completes a handshake with anything and verifies nothing.

    ``@SECLEVEL=0`` lets OpenSSL accept RSA-1024 and SHA-1 so they can be *reported*; the
    minimum protocol version is the lowest this OpenSSL supports; ``OP_NO_TICKET`` because a
    probe never resumes a session (and servers skip the ticket).
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    ctx.set_min_proto_version(0)  # 0: the lowest version the library supports
    ctx.set_options(SSL.OP_NO_TICKET)
    # pyOpenSSL has no groups API: SSL_CTX_set1_curves_list from cryptography's bindings on the
    # context pyOpenSSL wraps. Should either go away, the library's default groups apply:
    # slower, not wrong.
    set_groups = getattr(Binding.lib, "SSL_CTX_set1_curves_list", None)
    raw_ctx = getattr(ctx, "_context", None)
    if set_groups is not None and raw_ctx is not None:
        set_groups(raw_ctx, _GROUPS)
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


def _ip_literal(host: str) -> str | None:
    host = host.strip("[]")
    # Fast path for names: an IP literal has a ':' (v6) or only digits and dots (v4).
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _sni(server_name: str) -> bytes | None:
    """The SNI to send (none for an IP literal, RFC 6066 section 3), IDNA-encoded as the stdlib
    ``ssl`` module does."""
    if _ip_literal(server_name) is not None:
        return None
    try:
        name = server_name.encode("idna")
    except UnicodeError as e:
        raise _Failure(ProblemCode.TLS_ERROR, f"cannot start TLS: {e}") from e
    if not name or name.startswith(b".") or b"\0" in name:
        raise _Failure(
            ProblemCode.TLS_ERROR, f"cannot start TLS: invalid server name {server_name!r}"
        )
    return name


def _connect_failure(address: str, e: OSError) -> _Failure:
    if e.errno == errno.ECONNREFUSED:
        return _Failure(ProblemCode.CONNECTION_REFUSED, f"connection refused by {address}")
    reason = errno.errorcode.get(e.errno or 0, "") or str(e)
    return _Failure(ProblemCode.CONNECTION_REFUSED, f"cannot connect to {address}: {reason}")


def _tls_failure(e: SSL.Error) -> _Failure:
    if isinstance(e, SSL.ZeroReturnError) or (
        isinstance(e, SSL.SysCallError)
        and e.args
        and e.args[0] in (-1, errno.ECONNRESET, errno.EPIPE)  # -1: "Unexpected EOF"
    ):
        return _Failure(
            ProblemCode.TLS_ERROR, "peer closed the connection during the TLS handshake"
        )
    if isinstance(e, SSL.SysCallError) and e.args and isinstance(e.args[0], int):
        return _Failure(ProblemCode.TLS_ERROR, f"TLS handshake failed: {os.strerror(e.args[0])}")
    return _Failure(ProblemCode.TLS_ERROR, f"TLS handshake failed: {_ssl_reason(e)}")


def _ssl_reason(e: SSL.Error) -> str:
    """The reason of the last OpenSSL error in the queue, as the stdlib ``ssl`` reports it."""
    queue = e.args[0] if e.args and isinstance(e.args[0], list) else []
    if queue and isinstance(queue[-1], tuple) and queue[-1][-1]:
        return str(queue[-1][-1]).lower().replace("_", " ")
    return str(e) or type(e).__name__


_Chain = tuple[list[bytes], str]

_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux
_TCP_ESTABLISHED = 1  # include/net/tcp_states.h


def _established(sock: socket.socket) -> bool:
    """True when a non-blocking connect has already completed.

    On loopback (and to a local peer) the TCP handshake is done before ``connect()`` returns
    EINPROGRESS: asking the kernel (``TCP_INFO``'s first byte is the state) saves a writer
    registration and a loop iteration per probe. Elsewhere, or when in doubt, wait as usual.
    """
    if _TCP_INFO is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] == _TCP_ESTABLISHED
    except OSError:
        return False


class _Handshake:
    """Connect and TLS-handshake one socket from event-loop callbacks.

    ``done`` resolves to the presented chain and the protocol version, or fails with
    :class:`_Failure` (refused, TLS error) or :class:`TimeoutError` at ``deadline``. The caller
    awaits ``done`` and then calls :meth:`close` whatever happened (cancellation included).
    """

    __slots__ = (
        "_address",
        "_conn",
        "_ctx",
        "_fd",
        "_loop",
        "_reading",
        "_server_name",
        "_sock",
        "_timer",
        "_writing",
        "done",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: SSL.Context,
        family: int,
        sockaddr: tuple[Any, ...],
        server_name: str,
        deadline: float,
    ) -> None:
        self._loop = loop
        self._ctx = ctx
        self._server_name = server_name
        self._address = str(sockaddr[0])
        self._conn: SSL.Connection | None = None
        self._reading = False
        self._writing = False
        # SOCK_NONBLOCK (Linux) makes the socket non-blocking at birth: one syscall fewer.
        self._sock = sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
        self._fd = sock.fileno()
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        self.done: asyncio.Future[_Chain] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = loop.call_at(deadline, self._expire)
        try:
            err = sock.connect_ex(sockaddr)
        except (OSError, OverflowError) as e:
            self._fail(_connect_failure(self._address, OSError(str(e))))
            return
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR):
            if _established(sock):
                self._start_tls()
            else:
                self._writing = True
                loop.add_writer(self._fd, self._connected)
        elif err:
            self._fail(_connect_failure(self._address, OSError(err, os.strerror(err))))
        else:
            self._start_tls()

    def close(self) -> None:
        """Stop watching the socket and close it; idempotent."""
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sock.close()

    def _unwatch(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _fail(self, exc: BaseException) -> None:
        self._unwatch()
        if not self.done.done():
            self.done.set_exception(exc)

    def _expire(self) -> None:
        self._timer = None
        self._fail(TimeoutError())

    def _connected(self) -> None:
        self._loop.remove_writer(self._fd)
        self._writing = False
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(_connect_failure(self._address, OSError(err, os.strerror(err))))
        else:
            self._start_tls()

    def _start_tls(self) -> None:
        try:
            sni = _sni(self._server_name)
            conn = self._conn = SSL.Connection(self._ctx, self._sock)
            if sni is not None:
                conn.set_tlsext_host_name(sni)
            conn.set_connect_state()
        except _Failure as f:
            self._fail(f)
            return
        except (SSL.Error, ValueError, TypeError) as e:
            self._fail(_Failure(ProblemCode.TLS_ERROR, f"cannot start TLS: {e}"))
            return
        self._step()

    def _step(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            if self._writing:
                self._loop.remove_writer(self._fd)
                self._writing = False
            if not self._reading:
                self._reading = True
                self._loop.add_reader(self._fd, self._step)
            return
        except SSL.WantWriteError:
            if self._reading:
                self._loop.remove_reader(self._fd)
                self._reading = False
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._step)
            return
        except SSL.Error as e:
            self._fail(_tls_failure(e))
            return
        except OSError as e:
            self._fail(_Failure(ProblemCode.TLS_ERROR, f"TLS handshake failed: {e}"))
            return
        except Exception as e:  # a bug: hand it to the awaiting coroutine, not the loop
            self._fail(e)
            return
        self._unwatch()
        try:
            ders = [
                crypto.dump_certificate(crypto.FILETYPE_ASN1, c)
                for c in conn.get_peer_cert_chain() or ()
            ]
            version = conn.get_protocol_version_name()
        except (SSL.Error, crypto.Error) as e:  # OpenSSL read a certificate it cannot re-encode
            self._fail(_Failure(ProblemCode.TLS_ERROR, f"unreadable certificate chain: {e}"))
            return
        if not ders:
            self._fail(_Failure(ProblemCode.TLS_ERROR, "peer presented no certificate"))
        elif not self.done.done():
            self.done.set_result((ders, version))


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
        # Verified issuer links: a fleet's intermediate -> root signature is checked once.
        self._links = LinkCache()

    async def probe(
        self,
        targets: Sequence[EndpointTarget],
        progress: Callable[[int], None] | None = None,
    ) -> list[Observation]:
        """Probe every target, at most ``settings.concurrency`` at once; results in the order
        of ``targets``."""
        results: list[Observation | None] = [None] * len(targets)
        pending = iter(enumerate(targets))

        async def lane() -> None:
            # Lanes share one iterator (the loop is single-threaded): a bounded pool of
            # coroutines instead of a task and a semaphore wait per target.
            for i, target in pending:
                results[i] = await self.probe_one(target)
                if progress is not None:
                    progress(1)

        lanes = min(max(1, self.settings.concurrency), len(targets))
        await asyncio.gather(*(lane() for _ in range(lanes)))
        out = [r for r in results if r is not None]
        assert len(out) == len(targets)
        return out

    async def probe_one(self, target: EndpointTarget) -> Observation:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout
        address: str | None = target.address
        try:
            literal = _ip_literal(target.address or target.host)
            family: int
            if literal is not None:
                family = socket.AF_INET6 if ":" in literal else socket.AF_INET
                sockaddr: tuple[Any, ...] = (literal, target.port)
            else:
                async with asyncio.timeout_at(deadline):
                    family, sockaddr = await self._resolve(target)
            address = str(sockaddr[0])
            hs = _Handshake(loop, self._ctx, family, sockaddr, target.server_name, deadline)
            try:
                ders, tls_version = await hs.done
            finally:
                hs.close()
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
            links=self._links,
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
