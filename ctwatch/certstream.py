"""A certstream websocket feed as a second, *unverified* Certificate Transparency source.

certstream servers (CaliDog's certstream-server in Elixir, its Python predecessor, and
d-Rickyy-b's certstream-server-go) read the CT logs and push every new entry to websocket
clients as JSON. It is a convenience feed: nothing in it is signed or provable (no tree heads,
no proofs, the server may drop entries for slow clients), so the monitor treats what it reports
as a hint, never as verified log contents. :mod:`ctwatch.source` is the verified path.

Messages (one JSON object per text frame)::

    {"message_type": "certificate_update", "data": {
        "update_type": "X509LogEntry" | "PrecertLogEntry",
        "leaf_cert": {"all_domains": [...], "subject": {"aggregated": "/CN=...", "CN": ...},
                      "issuer": {"aggregated": "/C=US/CN=R3/O=Let's Encrypt", "C": ..., ...},
                      "not_before": <unix s>, "not_after": <unix s>,
                      "serial_number": "04A1...", "fingerprint": "AB:CD:..." (SHA-1),
                      "sha256": "AB:CD:..." (newer Go server), "extensions": {...},
                      "as_der": "<base64>" (full stream only)},
        "chain": [...] (full stream only), "cert_index": N, "cert_link": "...",
        "seen": <unix s, float>, "source": {"url": "...", "name": "..."}}}
    {"message_type": "dns_entries", "data": ["example.com", ...]}      (/domains-only)
    {"message_type": "heartbeat", "timestamp": <unix s>}              (Python server)

certstream-server-go serves the lite stream (no ``as_der``, no ``chain``) on ``/``, the full
stream on ``/full-stream`` and ``dns_entries`` on ``/domains-only``; it keeps connections alive
with websocket ping frames rather than JSON heartbeats, and older versions drop a client that
sends no pings, so :class:`CertstreamClient` sends a ping every ``ping_interval`` seconds. The
Python server's precertificates say ``"PreCertEntry"``; it is accepted as ``"precert"`` too.

:func:`parse_message` is tolerant where the servers differ: a missing field is left out of the
:class:`FeedEntry` (``None`` or empty), but a field of the wrong type, an unknown
``update_type``, bad hex or base64 or an out-of-range number makes the whole message
:class:`MalformedMessage` (a :class:`~ctwatch.rfc6962.CTLogError`); it raises nothing else.

:class:`CertstreamClient` speaks the websocket with aiohttp and never gives up: after a close,
an error or a refused connection it reconnects with exponential backoff and jitter (reset by a
connection that delivered entries), treats ``heartbeat_timeout`` seconds without any frame as a
dead connection, and counts malformed messages instead of raising. Its counters
(:attr:`~CertstreamClient.connected`, ``reconnects``, ``heartbeat_gaps``, ``malformed``,
``received``, ``last_message_at``) are for metrics; ``on_event`` reports the same as it happens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from ctwatch.rfc6962 import CTLogError, EntryType

__all__ = [
    "CertstreamClient",
    "DomainsOnly",
    "EventKind",
    "FeedEntry",
    "Heartbeat",
    "MalformedMessage",
    "parse_message",
]

EventKind = Literal["connected", "disconnected", "heartbeat_gap", "malformed"]

USER_AGENT = "certpilot-ctwatch (+https://github.com/certpilot/certpilot)"
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a full-stream entry with its chain is ~10 KiB
_MAX_SERIAL_HEX = 128  # RFC 5280 allows 20 octets; be generous with non-conforming CAs
_MAX_INDEX = 2**64 - 1  # cert_index is a CT log index (uint64)
_HEX = "0123456789abcdef"
_UPDATE_TYPES: dict[str, EntryType] = {
    "X509LogEntry": "x509",
    "PrecertLogEntry": "precert",  # certstream-server-go, certstream-server (Elixir)
    "PreCertEntry": "precert",  # certstream-server-python
}
_SUBJECT_KEYS = ("C", "CN", "L", "O", "OU", "ST")  # certstream-server-go's "aggregated" order


class MalformedMessage(CTLogError):
    """A certstream message that is not what the format says; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"certstream message: {reason}")


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One ``certificate_update``: what the feed *claims* a CT log holds (not verified).

    ``names`` are ``all_domains`` lower-cased, trailing dots removed, deduplicated in order.
    ``serial`` and ``sha256`` are lowercase hex without colons (``serial`` without leading
    zeros, ``""`` when the feed gave none); ``sha256`` is computed from ``der`` when the full
    stream sent it (and must then agree with the feed's ``sha256``), else taken from the feed,
    else None. Times are UTC.
    """

    names: tuple[str, ...]
    issuer: str
    serial: str
    sha256: str | None
    not_before: datetime | None
    not_after: datetime | None
    entry_type: EntryType
    log_url: str
    index: int | None
    seen: datetime | None
    der: bytes | None = None
    log_name: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A ``heartbeat`` message (certstream-server-python sends one every 10 s)."""

    timestamp: datetime | None


@dataclass(frozen=True, slots=True)
class DomainsOnly:
    """A ``dns_entries`` message from ``/domains-only``: just the names (normalised)."""

    names: tuple[str, ...]


# -- parsing ---------------------------------------------------------------------------------

_loads = json.loads


def _what(value: object) -> str:
    """A JSON type name for error messages (never the value: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _fail(field: str, expected: str, value: object) -> MalformedMessage:
    return MalformedMessage(f"{field} is {_what(value)}, expected {expected}")


def _names(value: object, field: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise _fail(field, "an array of strings", value)
    try:
        lowered = [name.lower() for name in value]
    except (AttributeError, TypeError):
        bad = next(v for v in value if not isinstance(v, str))
        raise _fail(f"{field} item", "a string", bad) from None
    if len(lowered) == 1:
        name = lowered[0]
        if name[-1:] == ".":
            name = name.rstrip(".")
        return (name,) if name else ()
    out: dict[str, None] = {}
    for name in lowered:
        if name[-1:] == ".":
            name = name.rstrip(".")
        if name:
            out[name] = None
    return tuple(out)


def _time(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:
        raise _fail(field, "a number (unix seconds)", value)
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        raise MalformedMessage(f"{field} is out of range") from None


def _str(obj: Mapping[str, Any], key: str, field: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise _fail(field, "a string", value)
    return value


def _hex(value: str, field: str) -> str:
    """``value`` as lowercase hex without colons; MalformedMessage when it is not hex."""
    h = value.replace(":", "").lower() if ":" in value else value.lower()
    if h.strip(_HEX):
        raise MalformedMessage(f"{field} is not hexadecimal")
    return h


def _serial(value: object) -> str:
    if value is None or value == "":
        return ""
    if type(value) is not str:
        raise _fail("leaf_cert.serial_number", "a hex string", value)
    negative = value[:1] == "-"  # Go prints a (non-conforming) negative serial as "-1A"
    h = _hex(value[1:] if negative else value, "leaf_cert.serial_number")
    if not h or len(h) > _MAX_SERIAL_HEX:
        raise MalformedMessage(f"leaf_cert.serial_number has {len(h)} hex digits")
    h = h.lstrip("0") or "0"
    return "-" + h if negative and h != "0" else h


def _issuer(value: object) -> str:
    if value is None:
        return ""
    if type(value) is not dict:
        raise _fail("leaf_cert.issuer", "an object", value)
    aggregated = value.get("aggregated")
    if type(aggregated) is str:
        return aggregated
    if aggregated is not None:
        raise _fail("leaf_cert.issuer.aggregated", "a string", aggregated)
    parts = []
    for key in _SUBJECT_KEYS:
        part = value.get(key)
        if part is None:
            continue
        if type(part) is not str:
            raise _fail(f"leaf_cert.issuer.{key}", "a string", part)
        parts.append(f"/{key}={part}")
    return "".join(parts)


def _entry_type(data: Mapping[str, Any], leaf: Mapping[str, Any]) -> EntryType:
    update_type = data.get("update_type")
    if type(update_type) is str:
        kind = _UPDATE_TYPES.get(update_type)
        if kind is None:
            raise MalformedMessage(f"unknown update_type {update_type[:40]!r}")
        return kind
    if update_type is not None:
        raise _fail("data.update_type", "a string", update_type)
    ext = leaf.get("extensions")
    poisoned = type(ext) is dict and ext.get("ctlPoisonByte") is True
    return "precert" if poisoned else "x509"


def _sha256(leaf: Mapping[str, Any]) -> tuple[str | None, bytes | None]:
    der: bytes | None = None
    digest: str | None = None
    as_der = leaf.get("as_der")
    if as_der is not None and as_der != "":
        if type(as_der) is not str:
            raise _fail("leaf_cert.as_der", "a base64 string", as_der)
        try:
            der = base64.b64decode(as_der, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("leaf_cert.as_der is not base64") from None
        digest = hashlib.sha256(der).hexdigest()
    claimed = leaf.get("sha256")
    if claimed is not None and claimed != "":
        if type(claimed) is not str:
            raise _fail("leaf_cert.sha256", "a hex string", claimed)
        h = _hex(claimed, "leaf_cert.sha256")
        if len(h) != 64:
            raise MalformedMessage(f"leaf_cert.sha256 has {len(h)} hex digits, expected 64")
        if digest is not None and h != digest:
            raise MalformedMessage("leaf_cert.sha256 does not match leaf_cert.as_der")
        digest = h
    return digest, der


def _fallback_names(leaf: Mapping[str, Any]) -> tuple[str, ...]:
    """Older servers omit an empty ``all_domains``: the SAN extension text and subject CN."""
    names: list[str] = []
    ext = leaf.get("extensions")
    if ext is not None and type(ext) is not dict:
        raise _fail("leaf_cert.extensions", "an object", ext)
    san = ext.get("subjectAltName") if ext else None
    if type(san) is str:
        names.extend(p.strip()[4:] for p in san.split(",") if p.strip().startswith("DNS:"))
    subject = leaf.get("subject")
    if type(subject) is dict and type(subject.get("CN")) is str:
        names.append(subject["CN"])
    return _names(names, "leaf_cert.all_domains")


def _certificate_update(data: object) -> FeedEntry:
    if type(data) is not dict:
        raise _fail("certificate_update data", "an object", data)
    leaf = data.get("leaf_cert")
    if type(leaf) is not dict:
        raise _fail("data.leaf_cert", "an object", leaf)
    domains = leaf.get("all_domains")
    names = (
        _names(domains, "leaf_cert.all_domains") if domains is not None else _fallback_names(leaf)
    )
    sha256, der = _sha256(leaf)
    index = data.get("cert_index")
    if index is not None and (type(index) is not int or not 0 <= index <= _MAX_INDEX):
        if type(index) is int:
            raise MalformedMessage("data.cert_index is out of range")
        raise _fail("data.cert_index", "a non-negative integer", index)
    source = data.get("source")
    if source is None:
        log_url = log_name = ""
    elif type(source) is dict:
        log_url = _str(source, "url", "data.source.url")
        log_name = _str(source, "name", "data.source.name")
    else:
        raise _fail("data.source", "an object", source)
    return FeedEntry(
        names=names,
        issuer=_issuer(leaf.get("issuer")),
        serial=_serial(leaf.get("serial_number")),
        sha256=sha256,
        not_before=_time(leaf.get("not_before"), "leaf_cert.not_before"),
        not_after=_time(leaf.get("not_after"), "leaf_cert.not_after"),
        entry_type=_entry_type(data, leaf),
        log_url=log_url,
        index=index,
        seen=_time(data.get("seen"), "data.seen"),
        der=der,
        log_name=log_name,
    )


def parse_message(raw: str | bytes) -> FeedEntry | Heartbeat | DomainsOnly | None:
    """Parse one websocket frame. None for a message type this client does not use.

    Raises :class:`MalformedMessage` (with a one-line reason) for anything else that is not a
    well-formed certstream message, and nothing else: not JSON, not UTF-8, nested too deep,
    wrong types, out-of-range numbers, bad hex or base64.
    """
    try:
        obj = _loads(raw)
    except (ValueError, RecursionError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise MalformedMessage(f"not JSON ({reason})") from None
    if type(obj) is not dict:
        raise _fail("the message", "an object", obj)
    kind = obj.get("message_type")
    if kind == "certificate_update":
        return _certificate_update(obj.get("data"))
    if kind == "heartbeat":
        return Heartbeat(_time(obj.get("timestamp"), "heartbeat timestamp"))
    if kind == "dns_entries":
        return DomainsOnly(_names(obj.get("data"), "dns_entries data"))
    if type(kind) is not str:
        raise _fail("message_type", "a string", kind)
    return None


# -- the websocket client --------------------------------------------------------------------


class CertstreamClient:
    """Reads a certstream websocket at ``url`` (``ws://``, ``wss://``, or ``http(s)://``).

    ``messages()`` yields :class:`FeedEntry` (``/`` and ``/full-stream``) and
    :class:`DomainsOnly` (``/domains-only``) for as long as it is iterated, across reconnects.
    Backoff before reconnect ``k`` (counting from 0 since the last connection that delivered
    entries) is ``min(max_delay, base_delay * 2**k)`` times a random factor in ``[0.5, 1]``,
    waited with ``sleep`` (inject a fake one in tests). ``heartbeat_timeout`` seconds without
    any frame (entries, heartbeats, even malformed ones) count as a heartbeat gap: the
    connection is closed and reopened; None disables it (a quiet private server without
    heartbeats). ``ping_interval`` seconds between websocket pings we send (None: none).
    ``on_event(kind, detail)`` is called for "connected", "disconnected", "heartbeat_gap" and
    "malformed"; it must not raise. ``session`` is used as is (and not closed) when given.

    Counters: ``connected``; ``connections`` (successful handshakes); ``reconnects`` (connection
    attempts after the first); ``heartbeat_gaps``; ``malformed``; ``received`` (data frames);
    ``entries`` (items yielded); ``last_message_at`` (unix time of the last data frame);
    ``last_error`` (why the last connection ended or failed).
    """

    def __init__(
        self,
        url: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        heartbeat_timeout: float | None = 30.0,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        on_event: Callable[[EventKind, str], None] | None = None,
        ping_interval: float | None = 15.0,
        connect_timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"certstream URL must be ws://, wss://, http:// or https://: {url!r}")
        if heartbeat_timeout is not None and heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, not {heartbeat_timeout}")
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {base_delay}, {max_delay}")
        self.url = url
        self._sleep = sleep
        self._heartbeat_timeout = heartbeat_timeout
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._session = session
        self._own_session = session is None
        self._headers = dict(headers or {})
        self._on_event = on_event
        self._ping_interval = ping_interval
        self._connect_timeout = connect_timeout
        self._max_message_bytes = max_message_bytes
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed = False
        self._close_event = asyncio.Event()
        self.connected = False
        self.connections = 0
        self.reconnects = 0
        self.heartbeat_gaps = 0
        self.malformed = 0
        self.received = 0
        self.entries = 0
        self.last_message_at: float | None = None
        self.last_error: str | None = None

    # -- events and backoff ----------------------------------------------------------------

    def _event(self, kind: EventKind, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(kind, detail)

    def backoff(self, failures: int) -> float:
        """The delay before reconnecting after ``failures`` unproductive connections."""
        ceiling = min(self._max_delay, self._base_delay * 2.0 ** min(failures, 60))
        return ceiling * random.uniform(0.5, 1.0)

    async def _wait(self, delay: float) -> None:
        """``sleep(delay)``, cut short by :meth:`aclose`."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        closer = asyncio.ensure_future(self._close_event.wait())
        try:
            await asyncio.wait({sleeper, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, closer):
                task.cancel()
            await asyncio.gather(sleeper, closer, return_exceptions=True)
        if not sleeper.cancelled():
            sleeper.result()  # an injected sleep that failed: raise its error

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    # -- the stream ------------------------------------------------------------------------

    async def messages(self) -> AsyncGenerator[FeedEntry | DomainsOnly, None]:
        """Entries as they arrive, forever (until :meth:`aclose` or the caller stops).

        An async generator: ``break`` out of ``async for`` (or ``aclose()`` it) to stop at once
        and close the connection; one consumer at a time.
        """
        failures = 0
        first = True
        while not self._closed:
            if not first:
                delay = self.backoff(failures)
                failures += 1
                self._event("disconnected", f"{self.last_error}; reconnecting in {delay:.1f} s")
                await self._wait(delay)
                if self._closed:
                    break
                self.reconnects += 1
            first = False
            ws = await self._connect()
            if ws is None:
                continue
            delivered = False
            pinger = None
            if self._ping_interval is not None:
                pinger = asyncio.ensure_future(self._keepalive(ws, self._ping_interval))
            try:
                while not self._closed:
                    item = await self._next(ws)
                    if item is None:
                        break  # the connection is over (last_error says why)
                    delivered = True
                    yield item
            finally:
                if pinger is not None:
                    pinger.cancel()
                await self._disconnect(ws)
            if delivered:
                failures = 0

    async def _connect(self) -> aiohttp.ClientWebSocketResponse | None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await self._get_session().ws_connect(
                    self.url,
                    headers=self._headers,
                    autoping=True,
                    max_msg_size=self._max_message_bytes,
                    # no receive timeout here: the stream is watched by heartbeat_timeout
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self.last_error = f"connect failed: {_describe(e)}"
            return None
        self._ws = ws
        self.connected = True
        self.connections += 1
        self._event("connected", self.url)
        return ws

    async def _next(self, ws: aiohttp.ClientWebSocketResponse) -> FeedEntry | DomainsOnly | None:
        """The next entry on ``ws``; None when the connection ended (closed, error, gap)."""
        timeout = self._heartbeat_timeout
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        while not self._closed:
            try:
                msg = await ws.receive(timeout)
            except TimeoutError:
                self.heartbeat_gaps += 1
                self.last_error = f"no message for {timeout:g} s"
                self._event("heartbeat_gap", self.last_error)
                return None
            if msg.type is text or msg.type is binary:
                self.received += 1
                self.last_message_at = time.time()
                try:
                    item = parse_message(msg.data)
                except MalformedMessage as e:
                    self.malformed += 1
                    self._event("malformed", str(e))
                    continue
                if item is None or isinstance(item, Heartbeat):
                    continue
                self.entries += 1
                return item
            # CLOSE, CLOSING, CLOSED or ERROR: the connection is over.
            if msg.type is aiohttp.WSMsgType.ERROR:
                self.last_error = f"connection error: {_describe(msg.data)}"
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                reason = " ".join(str(msg.extra or "").split())[:120]
                self.last_error = (
                    f"closed by the server (code {msg.data}{', ' if reason else ''}{reason})"
                )
            else:
                self.last_error = "connection lost"
            return None
        return None

    @staticmethod
    async def _keepalive(ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        """Send a ping every ``interval`` s (older certstream-server-go needs them)."""
        while not ws.closed:
            await asyncio.sleep(interval)
            try:
                await ws.ping()
            except Exception:  # a closing connection: the receive loop sees it and reconnects
                return

    async def _disconnect(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.connected = False
        self._ws = None
        with contextlib.suppress(Exception):  # closing must not fail the stream
            await ws.close()

    async def aclose(self) -> None:
        """Stop: ``messages()`` ends (at its next step), the socket and own session close."""
        self._closed = True
        self._close_event.set()
        ws = self._ws
        if ws is not None:
            await self._disconnect(ws)
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


def _describe(error: object) -> str:
    text = " ".join(str(error).split())
    name = type(error).__name__
    return f"{name}: {text[:200]}" if text else name
