"""Loopback peers that misbehave, for the fault tests (``tests/e2e/test_faults.py``).

Servers a prober meets in the wild, each listening on ``127.0.0.1:<free port>``:

* :class:`SilentPeer` accepts the TCP connection and never sends a byte;
* :class:`PartialTLSPeer` answers a ClientHello with the first bytes of a TLS record (the
  start of a ServerHello, whose header announces more) and then stalls;
* :class:`TricklePeer` is a real TLS server whose handshake goes out ``chunk`` bytes every
  ``interval`` seconds: slowloris in reverse, a server that is slow to the prober. Its
  first flight is over a kilobyte, so at 1 byte per 20 ms it takes tens of seconds.

And a client, :class:`SlowlorisClient`, that opens ``connections`` connections to an HTTP port
and sends the header bytes of a request that never ends, one byte per connection every
``interval`` seconds, recording when the server drops each connection.

Every one runs in one thread of its own (a ``selectors`` loop over all its sockets), has a
bounded lifetime (``lifetime`` seconds, after which it closes everything by itself even when a
test forgets it), and is closed by its context manager (``with SilentPeer() as peer``) or
:meth:`stop`. Nothing but loopback sockets is touched; no process is started.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from certpilot.localca import LocalCA, write_key

#: Upper bound of a selector wait: how quickly a loop notices a stop request.
_TICK = 0.02

#: The first 11 bytes of a TLS 1.2 ServerHello record: handshake record (0x16), version 3.3,
#: length 90; message type ServerHello (0x02), length 86, server version 3.3. The client reads
#: the header and waits for the 79 bytes it promised, which never come.
SERVER_HELLO_PREFIX = bytes.fromhex("160303005a020000560303")


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    opened: float
    pending: bytearray = field(default_factory=bytearray)
    next_send: float = 0.0
    tls: ssl.SSLObject | None = None
    incoming: ssl.MemoryBIO | None = None
    outgoing: ssl.MemoryBIO | None = None
    answered: bool = False


class _Peer:
    """A listening socket on 127.0.0.1 and a thread serving every connection it accepts.

    Subclasses decide what happens when a client sends bytes (:meth:`_on_data`) and may queue
    bytes on ``conn.pending``; the loop sends them ``chunk`` bytes every ``interval`` seconds
    (``interval`` 0: as fast as the socket takes them).
    """

    name = "faulty-peer"

    def __init__(self, *, lifetime: float = 60.0, interval: float = 0.0, chunk: int = 1) -> None:
        if lifetime <= 0 or interval < 0 or chunk < 1:
            raise ValueError("lifetime must be positive, interval >= 0 and chunk >= 1")
        self.lifetime = lifetime
        self.interval = interval
        self.chunk = chunk
        self.port = 0
        #: Connections accepted so far, and bytes sent to clients (all connections).
        self.accepted = 0
        self.bytes_sent = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: dict[int, _Conn] = {}

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``, as ``certpilot scan`` takes it."""
        return f"127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"{self.name}:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close every socket (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self._close_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._listener is not None
        deadline = time.monotonic() + self.lifetime
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                for key, _events in sel.select(timeout=self._wait(now)):
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._readable(sel, key.data)
                self._send_due(sel, time.monotonic())
        finally:
            sel.close()
            self._close_all()

    def _wait(self, now: float) -> float:
        due = [c.next_send for c in self._conns.values() if c.pending]
        if not due:
            return _TICK
        return max(0.0, min(_TICK, min(due) - now))

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)
            self.accepted += 1
            self._on_accept(conn)

    def _readable(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(sel, conn)
            return
        try:
            self._on_data(conn, data)
        except (ssl.SSLError, OSError):
            self._drop(sel, conn)

    def _send_due(self, sel: selectors.BaseSelector, now: float) -> None:
        for conn in list(self._conns.values()):
            if not conn.pending or now < conn.next_send:
                continue
            size = len(conn.pending) if self.interval == 0 else self.chunk
            try:
                sent = conn.sock.send(bytes(conn.pending[:size]))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                self._drop(sel, conn)
                continue
            del conn.pending[:sent]
            self.bytes_sent += sent
            conn.next_send = now + self.interval

    def _drop(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        if self._listener is not None:
            self._listener.close()

    # -- behaviour -----------------------------------------------------------------------------

    def _on_accept(self, conn: _Conn) -> None:
        """A client connected."""

    def _on_data(self, conn: _Conn, data: bytes) -> None:
        """A client sent ``data``; the default reads and discards it."""


class SilentPeer(_Peer):
    """Accepts, reads whatever the client sends, and never sends a byte."""

    name = "silent-peer"


class PartialTLSPeer(_Peer):
    """Answers the client's first bytes (its ClientHello) with ``prefix``, the start of a TLS
    record that announces more, and then stalls: reads and discards, never sends again."""

    name = "partial-tls-peer"

    def __init__(self, prefix: bytes = SERVER_HELLO_PREFIX, *, lifetime: float = 60.0) -> None:
        super().__init__(lifetime=lifetime)
        if not prefix:
            raise ValueError("prefix must hold at least one byte")
        self.prefix = prefix

    def _on_data(self, conn: _Conn, data: bytes) -> None:
        if not conn.answered:
            conn.answered = True
            conn.pending += self.prefix


class TricklePeer(_Peer):
    """A real TLS server whose handshake bytes go out ``chunk`` at a time, ``interval`` seconds
    apart. ``chain_pem``/``key_pem`` default to a fresh leaf for ``server_name`` from a new
    :class:`LocalCA` (its root in :attr:`root_pem`).

    :attr:`flight_bytes` is the size of the first flight it queued for a client (ServerHello up
    to Finished in TLS 1.3): at ``interval`` seconds per ``chunk`` it would take
    :meth:`full_duration` seconds to deliver.
    """

    name = "trickle-peer"

    def __init__(
        self,
        *,
        interval: float = 0.02,
        chunk: int = 1,
        server_name: str = "trickle.faults.test",
        chain_pem: bytes | None = None,
        key_pem: bytes | None = None,
        lifetime: float = 60.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("a trickle needs a positive interval")
        super().__init__(lifetime=lifetime, interval=interval, chunk=chunk)
        self.server_name = server_name
        self.root_pem = b""
        if chain_pem is None or key_pem is None:
            now = datetime.now(UTC)
            ca = LocalCA("certpilot Faulty Peers", now)
            issued = ca.issue([server_name], now)
            chain_pem, key_pem = issued.chain_pem(), issued.key_pem()
            self.root_pem = ca.root_pem()
        self._chain_pem = chain_pem
        self._key_pem = key_pem
        self._ctx: ssl.SSLContext | None = None
        self.flight_bytes = 0

    def full_duration(self) -> float:
        """Seconds the first flight takes to trickle out (0 before any client connected)."""
        return self.flight_bytes / self.chunk * self.interval

    def start(self) -> Self:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="trickle-") as tmp:
            cert, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            cert.write_bytes(self._chain_pem)
            write_key(key, self._key_pem)
            ctx.load_cert_chain(cert, key)
        self._ctx = ctx
        return super().start()

    def _on_accept(self, conn: _Conn) -> None:
        assert self._ctx is not None
        conn.incoming, conn.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        conn.tls = self._ctx.wrap_bio(conn.incoming, conn.outgoing, server_side=True)

    def _on_data(self, conn: _Conn, data: bytes) -> None:
        assert conn.tls is not None and conn.incoming is not None and conn.outgoing is not None
        conn.incoming.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            conn.tls.do_handshake()
        out = conn.outgoing.read()
        if out:
            if not conn.answered:
                conn.answered = True
                self.flight_bytes = max(self.flight_bytes, len(out))
            conn.pending += out


@dataclass(eq=False)
class _SlowConn:
    sock: socket.socket
    opened: float
    closed: float | None = None
    answer: bytes = b""
    sent: int = 0
    lines: int = 0
    buffer: bytearray = field(default_factory=bytearray)


class SlowlorisClient:
    """Opens ``connections`` connections to ``host:port`` and trickles an endless request
    header into each: the request line and ``Host`` at once, then one byte of another header
    line per connection every ``interval`` seconds. The blank line that ends a header never
    comes.

    Per connection it records when the server closed it (EOF or reset) and the first bytes the
    server sent (``408``, ``400``, or nothing). :meth:`wait_dropped` waits until the server has
    dropped them all. The thread gives up after ``lifetime`` seconds and closes what is left.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 100,
        interval: float = 0.5,
        lifetime: float = 60.0,
        path: str = "/healthz",
    ) -> None:
        if connections < 1 or interval <= 0 or lifetime <= 0:
            raise ValueError("connections, interval and lifetime must be positive")
        self.host, self.port = host, port
        self.connections = connections
        self.interval = interval
        self.lifetime = lifetime
        self.head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
        self._conns: list[_SlowConn] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Connections that could not be opened at all (refused, backlog full).
        self.failed_to_open = 0

    # -- what happened -------------------------------------------------------------------------

    @property
    def opened(self) -> int:
        return len(self._conns)

    @property
    def dropped(self) -> int:
        """Connections the server has closed so far."""
        with self._lock:
            return sum(1 for c in self._conns if c.closed is not None)

    @property
    def open_now(self) -> int:
        return self.opened - self.dropped

    def drop_times(self) -> list[float]:
        """Seconds each dropped connection lived, from connect to the server's close."""
        with self._lock:
            return [c.closed - c.opened for c in self._conns if c.closed is not None]

    def answers(self) -> list[bytes]:
        """The first bytes the server sent on each connection that got any."""
        with self._lock:
            return [c.answer for c in self._conns if c.answer]

    def bytes_trickled(self) -> int:
        with self._lock:
            return sum(c.sent for c in self._conns)

    def wait_dropped(self, timeout: float) -> bool:
        """Wait until the server has dropped every connection; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.opened and self.dropped == self.opened:
                return True
            time.sleep(0.1)
        return bool(self.opened) and self.dropped == self.opened

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the slowloris client is already running")
        for _ in range(self.connections):
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2)
                sock.sendall(self.head)
            except OSError:
                self.failed_to_open += 1
                continue
            sock.setblocking(False)
            self._conns.append(_SlowConn(sock, time.monotonic()))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        for c in self._conns:
            c.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------------

    @staticmethod
    def _next_byte(conn: _SlowConn) -> bytes:
        """The next byte of an endless run of well-formed header lines (never a blank one)."""
        if not conn.buffer:
            conn.buffer += f"X-Slow-{conn.lines}: a\r\n".encode()
            conn.lines += 1
        return bytes(conn.buffer[:1])

    def _run(self) -> None:
        deadline = time.monotonic() + self.lifetime
        sel = selectors.DefaultSelector()
        for c in self._conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
        next_tick = time.monotonic() + self.interval
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                wait = max(0.0, min(_TICK * 5, next_tick - time.monotonic()))
                for key, _events in sel.select(timeout=wait):
                    self._readable(sel, key.data)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.interval
                    for c in self._conns:
                        if c.closed is None:
                            self._trickle(sel, c)
        finally:
            sel.close()
            for c in self._conns:
                c.sock.close()

    def _readable(self, sel: selectors.BaseSelector, conn: _SlowConn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            with self._lock:
                if len(conn.answer) < 64:
                    conn.answer += data[: 64 - len(conn.answer)]
            return
        self._closed(sel, conn)

    def _trickle(self, sel: selectors.BaseSelector, conn: _SlowConn) -> None:
        try:
            n = conn.sock.send(self._next_byte(conn))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self._closed(sel, conn)
            return
        with self._lock:
            del conn.buffer[:n]
            conn.sent += n

    def _closed(self, sel: selectors.BaseSelector, conn: _SlowConn) -> None:
        with self._lock:
            if conn.closed is None:
                conn.closed = time.monotonic()
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)


__all__ = [
    "SERVER_HELLO_PREFIX",
    "PartialTLSPeer",
    "SilentPeer",
    "SlowlorisClient",
    "TricklePeer",
]
