"""CRL fetching and caching for revocation checks (the I/O half of
:mod:`certpilot.domain.revocation`).

Scanners touch only what they were told: the URLs fetched here are the CRL distribution points
(RFC 5280 section 4.2.1.13) of certificates that a configured scan returned, nothing else, and
only ``http``/``https`` ones (``ldap://`` and ``file://`` points are ignored). Redirects are not
followed unless :attr:`CRLFetchSettings.follow_redirects` says so, since a redirect target is a
URL no certificate named.

Every fetch is bounded: at most :attr:`~CRLFetchSettings.max_bytes` of (decoded) body, after
which the download is aborted; :attr:`~CRLFetchSettings.timeout` seconds from connect to last
byte; :attr:`~CRLFetchSettings.concurrency` fetches at a time; one fetch per URL in flight
however many callers want it. A CRL is kept until its ``nextUpdate`` (or
:attr:`~CRLFetchSettings.default_max_age` when it has none) in an LRU bounded by
:attr:`~CRLFetchSettings.max_cached` lists and :attr:`~CRLFetchSettings.max_total_bytes`. A
failed fetch, or a CRL already past its ``nextUpdate`` when fetched, is not retried before
:attr:`~CRLFetchSettings.retry_interval`, so a broken distribution point is not hammered every
scan. The previous CRL stays in use while its successor cannot be had: a revocation on it is
still a revocation, and its staleness shows in :meth:`CRLCache.status`.

Failures are data: :attr:`CRLCache.errors` (URL -> last error), :attr:`CRLCache.error_counts`
(``(url, reason)`` -> count since start, for ``certpilot_crl_fetch_errors_total``), and
:meth:`CRLCache.status` (for ``certpilot_crl_next_update_timestamp_seconds`` and
``certpilot_crl_stale``). Nothing here raises for a bad server or a bad CRL.

Reasons (the ``reason`` label): ``timeout``, ``connection``, ``tls``, ``http_status``,
``too_large``, ``malformed`` (not a CRL), ``outdated`` (older than the cached one),
``untrusted`` (does not verify against the certificate's issuer).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import ssl
import threading
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

import aiohttp

from certpilot.domain.clock import Clock
from certpilot.domain.model import Observation
from certpilot.domain.revocation import (
    Assessment,
    CRLInfo,
    CRLParseError,
    RevocationMemo,
    assess,
    parse_crl,
    stale,
)

log = logging.getLogger("certpilot.scanner.crl")

SCHEMES = frozenset({"http", "https"})
REASONS = (
    "timeout",
    "connection",
    "tls",
    "http_status",
    "too_large",
    "malformed",
    "outdated",
    "untrusted",
)
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class CRLFetchSettings:
    """Bounds of the CRL fetcher. Times are seconds.

    ``max_age``, when set, refetches a CRL at least that often even when its ``nextUpdate`` is
    further away (CAs publish before nextUpdate; a week-long nextUpdate would otherwise hide a
    fresh revocation for a week). ``default_max_age`` applies to CRLs without ``nextUpdate``.
    """

    max_bytes: int = 10 * 1024 * 1024
    timeout: float = 10.0
    concurrency: int = 4
    max_cached: int = 256
    max_total_bytes: int = 256 * 1024 * 1024
    default_max_age: float = 24 * 3600.0
    max_age: float | None = None
    retry_interval: float = 300.0
    follow_redirects: bool = False
    user_agent: str = "certpilot-crl/0.1"

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_cached < 1:
            raise ValueError("max_cached must be at least 1")
        if self.max_total_bytes < self.max_bytes:
            raise ValueError("max_total_bytes must be at least max_bytes")
        if self.default_max_age <= 0 or (self.max_age is not None and self.max_age <= 0):
            raise ValueError("max ages must be positive")
        if self.retry_interval < 0:
            raise ValueError("retry_interval must not be negative")


@dataclass(frozen=True, slots=True)
class CRLStatus:
    """One cached CRL URL, for metrics and ``/api``.

    ``issuer`` is the CRL's issuer, or the issuer of the certificate that named the URL while
    no CRL has been had. ``stale`` is true past ``nextUpdate`` and also when no CRL could be
    fetched at all: either way revocation data for that issuer is not current.
    ``age_seconds`` is ``now - thisUpdate``.
    """

    url: str
    issuer: str
    this_update: datetime | None
    next_update: datetime | None
    fetched_at: datetime | None
    age_seconds: float | None
    stale: bool
    revoked: int
    verified: bool  # the CRL verified against a scanned certificate's issuer
    last_error: str | None
    last_error_reason: str | None


class _FetchError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


@dataclass(slots=True)
class _Entry:
    url: str
    issuer_hint: str
    crl: CRLInfo | None = None
    fetched_at: datetime | None = None
    attempted_at: datetime | None = None
    refresh_at: datetime | None = None  # None: fetch now
    error: str | None = None
    reason: str | None = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scheme_ok(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in SCHEMES and bool(parts.hostname)


def _has_issuer_candidate(o: Observation) -> bool:
    leaf = o.leaf
    if leaf is None:
        return False
    return any(c.subject == leaf.issuer and c.der for c in (*o.path, *o.chain))


class CRLCache:
    """Fetches and keeps the CRLs that scanned certificates point to; checks them.

    ``clock`` drives every expiry and retry decision (tests advance a
    :class:`~certpilot.domain.clock.FixedClock`). ``session`` may be given (it is then the
    caller's to close); otherwise sessions are made on first use and closed by :meth:`aclose`
    (or ``async with``): one that honours ``HTTP(S)_PROXY`` and one for loopback URLs that does
    not. ``ssl_context`` verifies ``https`` distribution points (default: system trust).
    """

    def __init__(
        self,
        clock: Clock,
        settings: CRLFetchSettings | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings or CRLFetchSettings()
        self.errors: dict[str, str] = {}
        self.error_counts: Counter[tuple[str, str]] = Counter()
        self.requests = 0  # HTTP requests started, for tests and debugging
        self._given_session = session
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        self._memo = RevocationMemo()
        self._memo_lock = threading.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for fetches in flight, then close the sessions this cache made."""
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.close()

    def __len__(self) -> int:
        return len(self._entries)

    # -- what to fetch -------------------------------------------------------------------------

    @staticmethod
    def needed(observations: Iterable[Observation]) -> dict[str, str]:
        """URL -> issuer name, for every ``http(s)`` CRL distribution point of a leaf whose
        issuer certificate is in its observation (without one no CRL could be trusted, so it
        is not fetched)."""
        out: dict[str, str] = {}
        for o in observations:
            leaf = o.leaf
            if leaf is None or not leaf.crl_urls or not _has_issuer_candidate(o):
                continue
            for url in leaf.crl_urls:
                if url not in out and _scheme_ok(url):
                    out[url] = leaf.issuer
        return out

    def _due(self, url: str, now: datetime) -> bool:
        entry = self._entries.get(url)
        return entry is None or entry.refresh_at is None or now >= entry.refresh_at

    # -- fetching ------------------------------------------------------------------------------

    async def crls_for(self, observations: Sequence[Observation]) -> dict[str, CRLInfo]:
        """The CRL of every distribution point these observations need (see :meth:`needed`),
        fetching those not cached or due; URLs without a usable CRL are absent. Never raises
        for network or CRL faults (they land in :attr:`errors`)."""
        urls = self.needed(observations)
        now = self.clock.now()
        waits: list[asyncio.Task[None]] = []
        for url, issuer in urls.items():
            entry = self._entries.get(url)
            if entry is None:
                entry = self._entries[url] = _Entry(url, issuer)
            self._entries.move_to_end(url)
            task = self._inflight.get(url)
            if task is None and self._due(url, now):
                task = asyncio.create_task(self._fetch(entry), name=f"crl-fetch {url}")
                self._inflight[url] = task
                task.add_done_callback(functools.partial(self._fetched, url))
            if task is not None:
                waits.append(task)
        if waits:
            for result in await asyncio.gather(*waits, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    log.error("CRL fetch failed unexpectedly", exc_info=result)
        out: dict[str, CRLInfo] = {}
        for url in urls:
            found = self._entries.get(url)
            if found is not None and found.crl is not None:
                out[url] = found.crl
        self._evict()
        return out

    def _fetched(self, url: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(url, None)

    def _evict(self) -> None:
        """Drop least recently used lists beyond ``max_cached`` or ``max_total_bytes`` (of DER;
        the parsed serials take a few times that again)."""
        s = self.settings
        total = sum(e.crl.size for e in self._entries.values() if e.crl is not None)
        while len(self._entries) > s.max_cached or (total > s.max_total_bytes and self._entries):
            url, gone = self._entries.popitem(last=False)
            self.errors.pop(url, None)
            if gone.crl is not None:
                total -= gone.crl.size

    async def _fetch(self, entry: _Entry) -> None:
        url = entry.url
        async with self._semaphore:
            entry.attempted_at = self.clock.now()
            try:
                data = await self._download(url)
                crl = await asyncio.to_thread(parse_crl, data, url)
            except _FetchError as e:
                self._failed(entry, e.reason, e.message)
                return
            except CRLParseError as e:
                self._failed(entry, "malformed", e.message)
                return
        now = self.clock.now()
        old = entry.crl
        if old is not None and crl.this_update < old.this_update:
            self._failed(
                entry,
                "outdated",
                f"served CRL thisUpdate {crl.this_update.isoformat()} is older than the "
                f"cached one ({old.this_update.isoformat()}); keeping the cached CRL",
            )
            return
        entry.crl = crl
        entry.fetched_at = now
        entry.error = entry.reason = None
        self.errors.pop(url, None)
        entry.refresh_at = self._refresh_time(crl, now)
        log.debug(
            "CRL %s: %d revoked, thisUpdate %s, nextUpdate %s",
            url,
            len(crl.revoked_serials),
            crl.this_update,
            crl.next_update,
        )

    def _refresh_time(self, crl: CRLInfo, now: datetime) -> datetime:
        s = self.settings
        due = (
            crl.next_update
            if crl.next_update is not None
            else now + timedelta(seconds=s.default_max_age)
        )
        if s.max_age is not None:
            due = min(due, now + timedelta(seconds=s.max_age))
        # Already past nextUpdate when fetched: the server has nothing newer; do not ask again
        # on every scan.
        return max(due, now + timedelta(seconds=s.retry_interval))

    def _failed(self, entry: _Entry, reason: str, message: str) -> None:
        now = self.clock.now()
        entry.error, entry.reason = message, reason
        entry.refresh_at = now + timedelta(seconds=self.settings.retry_interval)
        self._record_error(entry.url, reason, message)

    def _record_error(self, url: str, reason: str, message: str) -> None:
        self.errors[url] = message
        self.error_counts[(url, reason)] += 1
        log.warning("CRL %s: %s (%s)", url, message, reason)

    def _session(self, url: str) -> aiohttp.ClientSession:
        if self._given_session is not None:
            return self._given_session
        # Loopback needs no proxy; an HTTP_PROXY without NO_PROXY would otherwise catch it.
        trust_env = not _is_loopback(urllib.parse.urlsplit(url).hostname or "")
        session = self._sessions.get(trust_env)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                trust_env=trust_env,
                headers={"User-Agent": self.settings.user_agent},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.timeout),
            )
            self._sessions[trust_env] = session
        return session

    async def _download(self, url: str) -> bytes:
        s = self.settings
        self.requests += 1
        try:
            async with (
                asyncio.timeout(s.timeout),
                self._session(url).get(
                    url,
                    allow_redirects=s.follow_redirects,
                    max_redirects=3,
                    ssl=self._ssl,
                ) as resp,
            ):
                if resp.status != 200:
                    where = resp.headers.get("Location")
                    extra = f" to {where} (redirects are not followed)" if where else ""
                    raise _FetchError(
                        "http_status", f"HTTP {resp.status} {resp.reason or ''}".strip() + extra
                    )
                if resp.content_length is not None and resp.content_length > s.max_bytes:
                    raise _FetchError("too_large", _too_large(resp.content_length, s.max_bytes))
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    buf += chunk
                    if len(buf) > s.max_bytes:
                        # Leaving the block releases (closes) the connection: the rest is
                        # never read.
                        raise _FetchError("too_large", _too_large(len(buf), s.max_bytes, "+"))
                return bytes(buf)
        except TimeoutError:
            raise _FetchError("timeout", f"no complete answer within {s.timeout:g}s") from None
        except aiohttp.ClientSSLError as e:
            raise _FetchError("tls", f"TLS error: {_one_line(e)}") from None
        except aiohttp.TooManyRedirects:
            raise _FetchError("http_status", "too many redirects") from None
        except (aiohttp.ClientError, OSError) as e:
            raise _FetchError("connection", f"{type(e).__name__}: {_one_line(e)}") from None

    # -- checking ------------------------------------------------------------------------------

    async def check_all(
        self, observations: Sequence[Observation], now: datetime | None = None
    ) -> list[Observation]:
        """Every observation, in order, with ``revoked`` added where a trusted CRL lists its
        leaf (:func:`certpilot.domain.revocation.check`). CRLs that do not verify against the
        leaf's issuer are ignored, logged and counted (reason ``untrusted``); observations
        without an issuer certificate are returned unchanged."""
        crls = await self.crls_for(observations)
        at = now if now is not None else self.clock.now()
        if not crls:
            return list(observations)
        # Signature checks over big CRLs and many leaves are CPU work: off the event loop.
        results = await asyncio.to_thread(self._assess_all, observations, crls, at)
        untrusted: dict[str, str] = {}
        trusted: set[str] = set()
        out: list[Observation] = []
        for a in results:
            for url in a.untrusted:
                leaf = a.observation.leaf
                untrusted.setdefault(url, leaf.issuer if leaf is not None else "?")
            trusted.update(a.checked)
            if a.entry is not None:
                log.info(
                    "%s: serial %s is revoked (%s) per %s",
                    a.observation.ref,
                    a.entry.serial,
                    a.entry.reason,
                    a.url,
                )
            out.append(a.observation)
        for url, issuer in untrusted.items():
            message = f"CRL does not verify against the issuer certificate {issuer}; ignored"
            self._record_error(url, "untrusted", message)
            entry = self._entries.get(url)
            if entry is not None:
                entry.error, entry.reason = message, "untrusted"
                # Perhaps a wrong file on the server: look again sooner than nextUpdate.
                retry = self.clock.now() + timedelta(seconds=self.settings.retry_interval)
                if entry.refresh_at is None or entry.refresh_at > retry:
                    entry.refresh_at = retry
        for url in trusted - untrusted.keys():
            entry = self._entries.get(url)
            if entry is None:
                continue
            if entry.crl is not None and not entry.crl.verified and entry.crl is crls.get(url):
                entry.crl = replace(entry.crl, verified=True)
            if entry.reason == "untrusted":
                entry.error = entry.reason = None
                self.errors.pop(url, None)
        return out

    def _assess_all(
        self, observations: Sequence[Observation], crls: dict[str, CRLInfo], now: datetime
    ) -> list[Assessment]:
        with self._memo_lock:
            return [assess(o, crls, now, memo=self._memo) for o in observations]

    # -- reporting -----------------------------------------------------------------------------

    def status(self, now: datetime | None = None) -> list[CRLStatus]:
        """One row per cached URL, sorted by URL (see :class:`CRLStatus`)."""
        at = now if now is not None else self.clock.now()
        max_age = timedelta(seconds=self.settings.default_max_age)
        rows: list[CRLStatus] = []
        for url in sorted(self._entries):
            e = self._entries[url]
            crl = e.crl
            rows.append(
                CRLStatus(
                    url=url,
                    issuer=crl.issuer if crl is not None else e.issuer_hint,
                    this_update=crl.this_update if crl is not None else None,
                    next_update=crl.next_update if crl is not None else None,
                    fetched_at=e.fetched_at,
                    age_seconds=(at - crl.this_update).total_seconds() if crl is not None else None,
                    stale=crl is None or stale(crl, at, max_age=max_age),
                    revoked=len(crl.revoked_serials) if crl is not None else 0,
                    verified=crl is not None and crl.verified,
                    last_error=e.error,
                    last_error_reason=e.reason,
                )
            )
        return rows


def _too_large(size: int, limit: int, plus: str = "") -> str:
    return f"CRL larger than the {limit} byte limit ({size}{plus} bytes); download aborted"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


__all__ = ["REASONS", "CRLCache", "CRLFetchSettings", "CRLStatus"]
