"""A loopback certstream server for tests, in certstream-server-go's format.

The public certstream feeds are unreachable from this machine, so :mod:`ctwatch.certstream` is
tested against this one. It serves the three websocket endpoints of certstream-server-go
(``internal/web/server.go``, ``internal/models/certstream.go``):

=================  ==========================================================================
``/``              the lite stream: ``certificate_update`` without ``as_der`` and ``chain``
``/full-stream``   the full stream: with the leaf's ``as_der`` and the parsed ``chain``
``/domains-only``  ``{"message_type": "dns_entries", "data": [all_domains...]}``
=================  ==========================================================================

(with or without a trailing slash), plus ``<endpoint>/example.json`` answering the last message
sent in that endpoint's shape, as the Go server does. :func:`certificate_update` builds the
message the Go server would send for a real ``cryptography`` certificate (issue them with
:class:`certpilot.localca.LocalCA`, precertificates with :func:`tests.support.ct_log.make_precert`).

Like certstream-server-python, it also sends ``{"message_type": "heartbeat", "timestamp": ...}``
every ``heartbeat_interval`` seconds (None: never); the Go server sends websocket pings
instead. Nothing is buffered for clients that are not connected (a real feed has no replay),
so tests wait for :meth:`LoopbackCertstream.wait_clients` before sending.

Fault knobs: :meth:`drop_connections` (a close frame, or ``abort=True`` to cut the TCP
connection), :meth:`go_silent` / :meth:`resume` (no heartbeats), :meth:`send_garbage`,
:meth:`refuse` (answer the next upgrade requests 503, by count or for a while), and
:meth:`~tests.support.loopback.ThreadedServer.stop` / ``start`` (connection refused, then back
on the same port).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSCloseCode, WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from tests.support.loopback import ThreadedServer

Kind = Literal["lite", "full", "domains"]
PATHS: dict[str, Kind] = {"/": "lite", "/full-stream": "full", "/domains-only": "domains"}
DEFAULT_LOG_URL = "https://ct.loopback.test/2026h1"

#: Frames a misbehaving server might send: each must be counted as malformed, none may stop
#: the client. (Text unless bytes.)
GARBAGE: tuple[str | bytes, ...] = (
    "not json at all",
    '{"message_type": "certificate_update", "data": {"leaf_cert": {"all_domains": ["trunc',
    "[1, 2, 3]",
    '{"message_type": 42}',
    '{"message_type": "certificate_update", "data": "nope"}',
    '{"message_type": "certificate_update", "data": {"leaf_cert": {"all_domains": "x.test"}}}',
    '{"message_type": "certificate_update", "data": {"leaf_cert": {"not_after": 1e300}}}',
    b"\xff\xfe\x00garbage \xc3\x28",
)


# -- messages in certstream-server-go's format --------------------------------------------------

_NAME_FIELDS = (
    ("C", NameOID.COUNTRY_NAME),
    ("CN", NameOID.COMMON_NAME),
    ("L", NameOID.LOCALITY_NAME),
    ("O", NameOID.ORGANIZATION_NAME),
    ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("ST", NameOID.STATE_OR_PROVINCE_NAME),
)
_SIG_ALGS = {
    SignatureAlgorithmOID.RSA_WITH_SHA256: "sha256, rsa",
    SignatureAlgorithmOID.RSA_WITH_SHA384: "sha384, rsa",
    SignatureAlgorithmOID.RSA_WITH_SHA512: "sha512, rsa",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "sha1, rsa",
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: "ecdsa, sha256",
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: "ecdsa, sha384",
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: "ecdsa, sha512",
    SignatureAlgorithmOID.ED25519: "ed25519",
}
_KEY_USAGES = (
    ("digital_signature", "Digital Signature"),
    ("content_commitment", "Content Commitment"),
    ("key_encipherment", "Key Encipherment"),
    ("data_encipherment", "Data Encipherment"),
    ("key_agreement", "Key Agreement"),
    ("key_cert_sign", "Certificate Signing"),
    ("crl_sign", "CRL Signing"),
)


def colon_hex(data: bytes) -> str:
    """``AB:CD:...``: how the Go server prints fingerprints."""
    return ":".join(f"{b:02X}" for b in data)


def _subject(name: x509.Name) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, oid in _NAME_FIELDS:
        values = [str(a.value) for a in name.get_attributes_for_oid(oid)]
        out[key] = ",".join(values) if values else None
    if out["CN"] is None:
        out["CN"] = ""  # Go's pkix.Name.CommonName is a string, never nil
    out["aggregated"] = "".join(f"/{k}={out[k]}" for k, _ in _NAME_FIELDS if out[k] is not None)
    out["email_address"] = None
    return out


def _key_id(data: bytes | None) -> str:
    return "keyid:" + ":".join(f"{b:02x}" for b in data or b"")


def _extensions(cert: x509.Certificate) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.AuthorityKeyIdentifier):
            out["authorityKeyIdentifier"] = _key_id(value.key_identifier)
        elif isinstance(value, x509.SubjectKeyIdentifier):
            out["subjectKeyIdentifier"] = _key_id(value.digest)
        elif isinstance(value, x509.KeyUsage):
            out["keyUsage"] = ", ".join(t for attr, t in _KEY_USAGES if getattr(value, attr))
        elif isinstance(value, x509.BasicConstraints):
            out["basicConstraints"] = f"CA:{str(value.ca).upper()}"
        elif isinstance(value, x509.SubjectAlternativeName):
            parts = [f"DNS:{n}" for n in value.get_values_for_type(x509.DNSName)]
            parts += [f"email:{n}" for n in value.get_values_for_type(x509.RFC822Name)]
            parts += [f"IP Address:{n}" for n in value.get_values_for_type(x509.IPAddress)]
            out["subjectAltName"] = ", ".join(parts)
        elif isinstance(value, x509.AuthorityInformationAccess):
            out["authorityInfoAccess"] = ", ".join(f"URI:{d.access_location.value}" for d in value)
        elif ext.oid == ExtensionOID.PRECERT_POISON:
            out["ctlPoisonByte"] = True
    return out


def leaf_cert_json(cert: x509.Certificate, *, with_der: bool = True) -> dict[str, Any]:
    """The ``leaf_cert`` (or ``chain`` item) object certstream-server-go builds for ``cert``."""
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = list(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = []
    subject = _subject(cert.subject)
    cn = subject["CN"]
    if cn and not is_ca and cn not in domains:
        domains.append(cn)  # the Go server appends the CN, as certstream always did
    serial = f"{cert.serial_number:X}"
    sha1 = colon_hex(hashlib.sha1(der).digest())
    out: dict[str, Any] = {
        "all_domains": domains,
        "extensions": _extensions(cert),
        "fingerprint": sha1,
        "sha1": sha1,
        "sha256": colon_hex(hashlib.sha256(der).digest()),
        "not_after": int(cert.not_valid_after_utc.timestamp()),
        "not_before": int(cert.not_valid_before_utc.timestamp()),
        "serial_number": "0" + serial if len(serial) % 2 else serial,
        "signature_algorithm": _SIG_ALGS.get(cert.signature_algorithm_oid, "unknown"),
        "subject": subject,
        "issuer": _subject(cert.issuer),
        "is_ca": is_ca,
    }
    if with_der:
        out["as_der"] = base64.b64encode(der).decode("ascii")
    return out


def certificate_update(
    cert: x509.Certificate,
    *,
    chain: Sequence[x509.Certificate] = (),
    index: int = 0,
    log_url: str = DEFAULT_LOG_URL,
    log_name: str = "certpilot loopback log",
    seen: float | None = None,
    precert: bool | None = None,
) -> dict[str, Any]:
    """The full-stream ``certificate_update`` message for ``cert`` logged at ``index``.

    ``precert`` defaults to whether ``cert`` carries the CT poison extension. As in the Go
    server, a precertificate's ``ctlPoisonByte`` is not reported (it parses the TBS the log
    signed, which has no poison) and its ``as_der`` is the precertificate itself.
    """
    poisoned = any(e.oid == ExtensionOID.PRECERT_POISON for e in cert.extensions)
    is_precert = poisoned if precert is None else precert
    leaf = leaf_cert_json(cert)
    if is_precert:
        leaf["extensions"].pop("ctlPoisonByte", None)
    seen = time.time() if seen is None else seen
    return {
        "message_type": "certificate_update",
        "data": {
            "cert_index": index,
            "cert_link": f"{log_url}/ct/v1/get-entries?start={index}&end={index}",
            "chain": [leaf_cert_json(c) for c in chain],
            "leaf_cert": leaf,
            "seen": seen,
            "source": {"name": log_name, "url": log_url, "timestamp": seen, "type": "rfc6962"},
            "update_type": "PrecertLogEntry" if is_precert else "X509LogEntry",
        },
    }


def lite(message: Mapping[str, Any]) -> dict[str, Any]:
    """``message`` as the lite stream sends it: no ``chain``, no ``leaf_cert.as_der``."""
    data = dict(message["data"])
    data.pop("chain", None)
    leaf = dict(data["leaf_cert"])
    leaf.pop("as_der", None)
    data["leaf_cert"] = leaf
    return {**message, "data": data}


def domains_only(message: Mapping[str, Any]) -> dict[str, Any]:
    """``message`` as ``/domains-only`` sends it."""
    return {
        "data": list(message["data"]["leaf_cert"]["all_domains"]),
        "message_type": "dns_entries",
    }


def heartbeat(timestamp: float | None = None) -> dict[str, Any]:
    """A certstream-server-python heartbeat."""
    return {
        "message_type": "heartbeat",
        "timestamp": time.time() if timestamp is None else timestamp,
    }


def encode(message: Mapping[str, Any]) -> dict[Kind, str]:
    """The text each endpoint sends for a ``certificate_update`` ``message``."""
    return {
        "full": json.dumps(message, separators=(",", ":")),
        "lite": json.dumps(lite(message), separators=(",", ":")),
        "domains": json.dumps(domains_only(message), separators=(",", ":")),
    }


# -- the server ----------------------------------------------------------------------------------

_CLOSE = object()  # queue sentinel: close the websocket normally
_ABORT = object()  # queue sentinel: cut the connection


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    kind: Kind
    request: web.Request
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)


class LoopbackCertstream(ThreadedServer):
    """A certstream-server-go-like websocket server on ``ws://127.0.0.1:<port>/``."""

    server_name = "loopback certstream"

    def __init__(self, *, heartbeat_interval: float | None = 10.0) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.port = 0
        self._clients: set[_Client] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._silent = False
        self._stopping = False
        self._refuse_count = 0
        self._refuse_until = 0.0
        self._last: dict[Kind, str] = {}  # the last certificate_update, per endpoint
        #: Counters (read them from any thread).
        self.connections = 0  # websocket handshakes accepted, ever
        self.refused = 0  # upgrade requests answered 503
        self.sent = 0  # frames queued to clients (all kinds)
        self.heartbeats = 0  # heartbeat rounds sent
        self.pings = 0  # websocket pings received from clients
        self.paths: list[str] = []  # path of every upgrade request, in arrival order
        self.request_headers: list[dict[str, str]] = []  # headers of every upgrade request

    # -- addresses ---------------------------------------------------------------------------

    def ws_url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def url(self) -> str:
        return self.ws_url("/")

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def client_kinds(self) -> list[Kind]:
        return sorted(c.kind for c in list(self._clients))

    async def wait_clients(self, n: int = 1, *, timeout: float = 10.0) -> None:
        """Return once at least ``n`` clients are connected; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self._clients) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._clients)} of {n} certstream clients connected")
            await asyncio.sleep(0.005)

    async def wait_no_clients(self, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._clients:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._clients)} certstream clients still connected")
            await asyncio.sleep(0.005)

    # -- sending (from any thread) -----------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the loopback certstream server is not running")
        loop.call_soon_threadsafe(fn, *args)

    def send(self, message: Mapping[str, Any]) -> None:
        """Broadcast a ``certificate_update`` (from :func:`certificate_update`) in each
        endpoint's shape; any other message is sent as it is to every client."""
        self.send_many([message])

    def send_many(self, messages: Iterable[Mapping[str, Any]]) -> None:
        """:meth:`send` for many messages in one hop to the server's loop (keeps their order)."""
        batch: list[dict[Kind, str]] = []
        for m in messages:
            if m.get("message_type") == "certificate_update":
                batch.append(encode(m))
                self._last = batch[-1]
            else:
                text = json.dumps(m)
                batch.append({"full": text, "lite": text, "domains": text})
        self._call(self._broadcast, batch)

    def send_encoded(self, batch: Sequence[Mapping[Kind, str | bytes]]) -> None:
        """Broadcast pre-encoded frames (``{"lite": ..., "full": ..., "domains": ...}`` each,
        as :func:`encode` makes them): the fast path for benchmarks."""
        self._call(self._broadcast, batch)

    def send_raw(
        self, frame: str | bytes, *, kinds: Iterable[Kind] = ("lite", "full", "domains")
    ) -> None:
        """Send ``frame`` verbatim (a text frame, or binary for bytes) to clients of ``kinds``."""
        wanted = set(kinds)
        self._call(self._broadcast, [{k: frame for k in wanted}])

    def send_garbage(self, frames: Sequence[str | bytes] = GARBAGE) -> int:
        """Send every frame of ``frames`` to every client; returns how many frames each got."""
        self._call(self._broadcast, [{"lite": f, "full": f, "domains": f} for f in frames])
        return len(frames)

    def _broadcast(self, batch: Sequence[Mapping[Kind, str | bytes]]) -> None:
        for frames in batch:
            for client in self._clients:
                frame = frames.get(client.kind)
                if frame is not None:
                    client.queue.put_nowait(frame)
                    self.sent += 1

    # -- fault knobs -------------------------------------------------------------------------

    def drop_connections(self, *, abort: bool = False) -> None:
        """Close every client connection (a close frame "going away", or ``abort``: reset)."""
        self._call(self._drop, abort)

    def _drop(self, abort: bool) -> None:
        for client in self._clients:
            client.queue.put_nowait(_ABORT if abort else _CLOSE)

    def go_silent(self) -> None:
        """Stop heartbeats (connections stay open): the client must notice the gap."""
        self._silent = True

    def resume(self) -> None:
        self._silent = False

    def refuse(self, count: int | None = None, *, seconds: float | None = None) -> None:
        """Answer the next ``count`` upgrade requests (or all for ``seconds``) with 503."""
        if count is not None:
            self._refuse_count = count
        if seconds is not None:
            self._refuse_until = time.monotonic() + seconds

    def accept(self) -> None:
        """Stop refusing connections."""
        self._refuse_count = 0
        self._refuse_until = 0.0

    # -- HTTP and websocket handlers ----------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        kind = PATHS[path]
        self.paths.append(request.path)
        self.request_headers.append(dict(request.headers))
        if self._stopping:
            return web.Response(status=503, text="shutting down")
        if self._refuse_count > 0 or time.monotonic() < self._refuse_until:
            self._refuse_count = max(0, self._refuse_count - 1)
            self.refused += 1
            return web.Response(status=503, text="refusing connections")
        # Pings are answered by hand (_read_client) so that they can be counted.
        ws = web.WebSocketResponse(autoping=False, max_msg_size=4096)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": "Please use this url with a websocket client!"})
        await ws.prepare(request)
        client = _Client(ws, kind, request)
        self._clients.add(client)
        self.connections += 1
        reader = asyncio.ensure_future(self._read_client(client))
        try:
            while True:
                frame = await client.queue.get()
                if frame is _CLOSE:
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server going away")
                    break
                if frame is _ABORT:
                    if request.transport is not None:
                        request.transport.abort()
                    break
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                elif isinstance(frame, str):
                    await ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass  # the client went away while we were writing
        finally:
            self._clients.discard(client)
            reader.cancel()
        return ws

    async def _read_client(self, client: _Client) -> None:
        """Read what the client sends: answer (and count) pings, ignore the rest, and wake the
        writer when the client closes."""
        try:
            async for msg in client.ws:
                if msg.type is WSMsgType.PING:
                    self.pings += 1
                    await client.ws.pong(msg.data)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            client.queue.put_nowait(_CLOSE)

    async def _example(self, request: web.Request) -> web.Response:
        path = request.path[: -len("example.json")].rstrip("/") or "/"
        text = self._last.get(PATHS[path])
        return web.Response(text=text or "{}", content_type="application/json")

    async def _heartbeats(self) -> None:
        interval = self.heartbeat_interval
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            if self._silent:
                continue
            text = json.dumps(heartbeat())
            self.heartbeats += 1
            self._broadcast([{"lite": text, "full": text, "domains": text}])

    def _app(self) -> web.Application:
        app = web.Application()
        for path in PATHS:
            app.router.add_get(path, self._stream)
            base = path.rstrip("/")
            if base:
                app.router.add_get(base + "/", self._stream)
            app.router.add_get(base + "/example.json", self._example)
        return app

    async def _on_serve(self) -> None:
        self._clients = set()
        self._stopping = False
        if self.heartbeat_interval is not None:
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeats())

    def _before_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        async def shutdown() -> None:
            self._stopping = True  # clients that reconnect at once get 503 until we are gone
            if self._heartbeat_task is not None:
                self._heartbeat_task.cancel()
                self._heartbeat_task = None
            self._drop(abort=False)
            deadline = time.monotonic() + 2.0
            while self._clients and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
