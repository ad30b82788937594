"""Wiring of the Certificate Transparency monitor for ``certpilot run``, ``ct watch`` and the demo.

``ctwatch`` verifies logs and matches names; this module connects it to the rest:

* :func:`configured_logs` / :func:`open_source`: the logs of the ``ct:`` settings (and a v3 log
  list), each as an RFC 6962 or tiled :class:`~ctwatch.source.LogSource`;
* :class:`WatchlistFile`: the watched patterns, reloaded when the watch file changes;
* :class:`StoreState`: each monitor's position, in the inventory database (``ct_log``);
* :class:`ExpectationCache`: what counts as *ours* (the classification's
  :class:`~ctwatch.classify.Expectations`): keys and serials of certificates the inventory saw
  outside CT, serials the remediator ordered, names with an order in flight, allowed issuers;
* :class:`IssuanceRecorder`: each matched certificate becomes an inventory location of source
  ``ct`` (``ct://<issuer CN>/<serial>``, one per certificate however many logs hold it and
  whether precertificate or certificate), with the ``unexpected_issuance`` problem when nobody
  ordered it: the UnexpectedIssuance alert, the bot's pages and the ``expected_issuance`` SLI
  read it from there. Pending verdicts (an order in flight) are decided again on every refresh
  and become unexpected after ``ct.grace``;
* :class:`CTRuntime`: the monitors (and certstream feeds) as tasks of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from cryptography import x509

from certpilot.domain.clock import Clock
from certpilot.domain.errors import ConfigError
from certpilot.domain.inventory import EventKind
from certpilot.domain.model import Observation
from certpilot.domain.ownership import OwnerRule, assign_owners
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.sli import SLIEvent
from certpilot.domain.x509 import CertInfo, cert_info
from certpilot.obs import Metrics
from certpilot.settings import CTSettings
from certpilot.store import Inventory
from certpilot.store.ct import CTStore
from certpilot.store.jobs import JobStore
from ctwatch.certstream import CertstreamClient, FeedEntry
from ctwatch.classify import (
    Expectations,
    IssuanceFacts,
    Verdict,
    classify_facts,
    facts_of,
)
from ctwatch.fetch import Fetcher
from ctwatch.loglist import LogInfo, decode_key, load_log_list
from ctwatch.match import Watchlist, WatchlistError
from ctwatch.monitor import (
    CTEvent,
    LogState,
    Match,
    Monitor,
    MonitorOptions,
    StepResult,
    head_from_json,
    head_to_json,
)
from ctwatch.rfc6962_client import RFC6962Log
from ctwatch.source import LogSource
from ctwatch.tree import CompactRange

log = logging.getLogger("certpilot.ct")

SOURCE = "ct"
#: Jobs in these states may have an order at the CA right now.
_ORDERING_STATES = ("approved", "issuing", "deploying", "verifying")


# -- logs ------------------------------------------------------------------------------------


def configured_logs(ct: CTSettings, source: str) -> list[LogInfo]:
    """The ``ct.logs`` entries and every usable log of ``ct.log_list``, each URL once."""
    out: dict[str, LogInfo] = {}
    for i, lg in enumerate(ct.logs):
        key = decode_key(lg.key, f"ct.logs[{i}].key", source)
        out.setdefault(lg.url.rstrip("/"), LogInfo(lg.url, key, lg.kind))
    if ct.log_list:
        for info in load_log_list(ct.log_list):
            out.setdefault(info.url.rstrip("/"), info)
    return list(out.values())


def open_source(info: LogInfo, fetcher: Fetcher | None = None) -> LogSource:
    """The :class:`LogSource` for a log: RFC 6962 or static-ct-api (tiled)."""
    if info.kind == "static":
        from ctwatch.tiled import TiledLog  # only tiled setups load it

        return TiledLog(info.url, info.key_der, origin=info.origin, fetcher=fetcher)
    return RFC6962Log(info.url, info.key_der, fetcher=fetcher)


# -- watchlist -------------------------------------------------------------------------------


class WatchlistFile:
    """The watched patterns: ``patterns`` plus the lines of ``path`` (certspotter's watchlist
    format), rebuilt when the file's modification time or size changes. A file that turns
    invalid keeps the last good list (and logs why); an invalid list at start is a
    :class:`ConfigError` naming the file, line and pattern."""

    def __init__(self, patterns: Iterable[str] = (), path: str | Path | None = None) -> None:
        self._patterns = tuple(patterns)
        self._path = Path(path) if path is not None else None
        self._stamp: tuple[int, int] | None = None
        self._current = self._load(strict=True)

    def _stat(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self, *, strict: bool) -> Watchlist:
        try:
            base = Watchlist.from_patterns(self._patterns) if self._patterns else None
        except WatchlistError as e:
            raise ConfigError("ct.watch", f"[{e.lineno - 1}]", e.reason, e.pattern) from None
        lines: list[str] = []
        if self._path is not None:
            self._stamp = self._stat()
            try:
                lines = self._path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                if strict:
                    raise ConfigError(str(self._path), "", f"cannot read: {e}") from None
                raise
        try:
            if lines:
                return Watchlist.from_lines([*self._patterns, *lines])
            return base or Watchlist.from_patterns([])
        except WatchlistError as e:
            where = f"line {e.lineno - len(self._patterns)}"
            raise ConfigError(str(self._path), where, e.reason, e.pattern) from None

    def __call__(self) -> Watchlist:
        if self._path is not None and self._stat() != self._stamp:
            try:
                self._current = self._load(strict=False)
                log.info("watchlist reloaded: %d patterns", len(self._current))
            except (ConfigError, OSError, UnicodeDecodeError) as e:
                log.warning("watchlist not reloaded, keeping the last good one: %s", e)
                self._stamp = self._stat()
        return self._current


# -- state -----------------------------------------------------------------------------------


class StoreState:
    """Monitor positions in the ``ct_log`` table (a :class:`ctwatch.monitor.StateStore`)."""

    def __init__(self, store: CTStore, clock: Clock, kinds: Mapping[str, str] | None = None):
        self._store = store
        self._clock = clock
        self._kinds = dict(kinds or {})

    def load(self, url: str) -> LogState | None:
        row = self._store.get(url)
        if row is None:
            return None
        try:
            head = head_from_json(row.head) if row.head else None
            compact = CompactRange.from_json(row.compact) if row.compact else None
        except (ValueError, KeyError, TypeError) as e:
            # A corrupt row must not make the monitor trust nothing or everything: start over
            # from the stored position, rebuilding the range from a verified proof.
            log.warning("stored CT state of %s is unreadable (%s); re-anchoring", url, e)
            return LogState(None, row.next_index, None)
        return LogState(head, row.next_index, compact)

    def save(self, url: str, state: LogState) -> None:
        self._store.save(
            url,
            kind=self._kinds.get(url, "rfc6962"),
            head=head_to_json(state.head) if state.head else None,
            next_index=state.next_index,
            compact=state.compact.to_json() if state.compact else None,
            now=self._clock.now(),
        )


# -- expectations ----------------------------------------------------------------------------


@dataclass(slots=True)
class _CertFacts:
    serial: str
    spki: str
    issuer: str
    issuer_cn: str
    is_ca: bool


class ExpectationCache:
    """Builds :class:`Expectations` from the store; certificates are parsed once each."""

    def __init__(
        self, inventory: Inventory, jobs: JobStore | None, ct: CTSettings, clock: Clock
    ) -> None:
        self._inventory = inventory
        self._jobs = jobs
        self._ct = ct
        self._clock = clock
        self._facts: dict[str, _CertFacts] = {}

    def _known(self) -> list[_CertFacts]:
        fps = self._inventory.fingerprints_seen_outside([SOURCE])
        new = [fp for fp in fps if fp not in self._facts]
        for fp, der in self._inventory.certificates_der(new).items():
            try:
                info = cert_info(x509.load_der_x509_certificate(der), der)
            except ValueError:
                continue
            self._facts[fp] = _CertFacts(
                info.serial, info.spki_sha256, info.issuer, info.issuer_cn, info.is_ca
            )
        keep = set(fps)
        for fp in [f for f in self._facts if f not in keep]:
            del self._facts[fp]
        return list(self._facts.values())

    def refresh(self) -> Expectations:
        """What counts as ours now (reads the store: call it off the event loop)."""
        known = self._known()
        allowed: list[str] = list(self._ct.allowed_issuers)
        if self._ct.trust_inventory_issuers:
            for f in known:
                if not f.is_ca:
                    allowed += [f.issuer, f.issuer_cn]
        ordered: list[str] = []
        pending: list[str] = []
        if self._jobs is not None:
            since = self._clock.now() - timedelta(seconds=self._ct.grace)
            # An order may be at the CA: its precertificate can be logged before the job
            # stores the serial. A job that failed or rolled back recently may have had a
            # certificate issued whose serial it never stored.
            for job in self._jobs.list(_ORDERING_STATES):
                pending.extend(job.names)
            for job in self._jobs.list(["failed", "rolled_back"], updated_since=since):
                if not job.new_serial:
                    pending.extend(job.names)
            for job in self._jobs.list(["done", "rolled_back", "failed"]):
                if job.new_serial:
                    ordered.append(job.new_serial)
                leaf = _first_pem(job.issued_chain_pem)
                if leaf is not None and self._ct.trust_inventory_issuers:
                    allowed += [leaf.issuer, leaf.issuer_cn]
        return Expectations.build(
            allowed_issuers=allowed,
            known_keys=[f.spki for f in known],
            known_serials=[f.serial for f in known if not f.is_ca],
            ordered_serials=ordered,
            pending_names=pending,
        )


def _first_pem(pem: str) -> CertInfo | None:
    if not pem.strip():
        return None
    try:
        cert = x509.load_pem_x509_certificates(pem.encode())[0]
    except (ValueError, IndexError):
        return None
    return cert_info(cert)


# -- recording -------------------------------------------------------------------------------


def ct_ref(issuer_cn: str, issuer: str, serial: str) -> str:
    """One location per certificate: the precertificate and the certificate share issuer and
    serial, and so do the copies in several logs."""
    return f"ct://{quote(issuer_cn or issuer, safe='')}/{serial.lower()}"


def _verdict_word(expected: bool | None) -> str:
    return "pending" if expected is None else ("expected" if expected else "unexpected")


@dataclass(slots=True)
class RecordedIssuance:
    ref: str
    verdict: Verdict
    names: tuple[str, ...]
    log: str
    index: int | None


@dataclass(slots=True)
class IssuanceRecorder:
    """Matched certificates into the inventory (source ``ct``), classified."""

    inventory: Inventory
    clock: Clock
    ct: CTSettings
    owners: Sequence[OwnerRule] = ()
    default_owner: str | None = None
    metrics: Metrics | None = None
    on_recorded: Callable[[Sequence[RecordedIssuance]], None] | None = None

    def record_matches(self, matches: Sequence[Match], exp: Expectations) -> list[RecordedIssuance]:
        """Classify and store verified log matches (call off the event loop)."""
        out: list[tuple[Observation, RecordedIssuance, IssuanceFacts]] = []
        for m in matches:
            e = m.entry
            try:
                facts = facts_of(e)
                cert = x509.load_der_x509_certificate(e.cert_der)
                leaf = cert_info(cert, e.cert_der)
            except ValueError as err:
                log.warning("CT match %s#%d not recorded: %s", m.log, m.index, err)
                continue
            chain = tuple(_infos(e.chain))
            labels = {
                "ct_log": m.log,
                "ct_index": str(m.index),
                "ct_entry_type": e.entry_type,
                "ct_source": "log",
                "ct_verified_inclusion": "" if m.inclusion is None else str(m.inclusion).lower(),
                "ct_not_before": e.not_before.isoformat(),
            }
            out.append(self._observe(facts, leaf, chain, labels, m.log, m.index, exp))
        return self._store(out)

    def record_feed(
        self,
        *,
        facts: IssuanceFacts,
        der: bytes | None,
        feed: str,
        log_url: str,
        index: int | None,
        not_before: datetime | None,
        exp: Expectations,
    ) -> list[RecordedIssuance]:
        """A certstream match (unverified: labelled ``ct_source=certstream``)."""
        leaf: CertInfo | None = None
        if der:
            with contextlib.suppress(ValueError):
                leaf = cert_info(x509.load_der_x509_certificate(der), der)
        labels = {
            "ct_log": log_url,
            "ct_index": "" if index is None else str(index),
            "ct_source": "certstream",
            "ct_feed": feed,
            "ct_not_before": not_before.isoformat() if not_before else "",
        }
        return self._store([self._observe(facts, leaf, (), labels, log_url, index, exp)])

    def _observe(
        self,
        facts: IssuanceFacts,
        leaf: CertInfo | None,
        chain: tuple[CertInfo, ...],
        labels: dict[str, str],
        log_url: str,
        index: int | None,
        exp: Expectations,
        *,
        first_seen: datetime | None = None,
    ) -> tuple[Observation, RecordedIssuance, IssuanceFacts]:
        now = self.clock.now()
        verdict = classify_facts(facts, exp)
        overdue = first_seen is not None and now - first_seen >= timedelta(seconds=self.ct.grace)
        if verdict.expected is None and overdue:
            verdict = Verdict(
                False,
                f"no order explained it within {int(self.ct.grace)} s",
                verdict.issuer,
                verdict.issuer_cn,
                verdict.spki_sha256,
            )
        ref = ct_ref(facts.issuer_cn, facts.issuer, facts.serial)
        where = f"{log_url} entry {index}" if index is not None else log_url
        problems: tuple[Problem, ...] = ()
        if verdict.expected is False:
            problems = (
                Problem(
                    ProblemCode.UNEXPECTED_ISSUANCE,
                    f"issued by {facts.issuer_cn or facts.issuer} for "
                    f"{', '.join(facts.names[:5])}; seen in {where}; {verdict.reason}",
                ),
            )
        labels = {
            **labels,
            "ct_verdict": _verdict_word(verdict.expected),
            "ct_reason": verdict.reason,
            "ct_issuer": facts.issuer,
            "ct_issuer_cn": facts.issuer_cn,
            "ct_spki": facts.spki_sha256,
            "ct_serial": facts.serial,
            "ct_names": ",".join(facts.names),
        }
        obs = Observation(
            source=SOURCE,
            ref=ref,
            target=facts.names[0] if facts.names else ref,
            observed_at=now,
            problems=problems,
            leaf=leaf,
            chain=((leaf,) if leaf else ()) + chain,
            labels=labels,
        )
        return obs, RecordedIssuance(ref, verdict, facts.names, log_url, index), facts

    def _store(
        self, rows: Sequence[tuple[Observation, RecordedIssuance, IssuanceFacts]]
    ) -> list[RecordedIssuance]:
        if not rows:
            return []
        observations = assign_owners([o for o, _r, _f in rows], self.owners, self.default_owner)
        now = self.clock.now()
        # The expected_issuance SLI counts each certificate once, when its verdict is first
        # decided. Taken from the store, not from this process's memory: a restart, or the same
        # certificate seen in two logs followed by two replicas, must not count it again. A new
        # location is one the record itself reports added (atomic with it); a pending one is
        # decided when its stored verdict still says pending.
        pending = {
            rec.ref
            for _o, rec, _f in rows
            if rec.verdict.expected is not None and _stored_verdict(self.inventory, rec.ref)
        }
        events = self.inventory.record(observations, now=now)
        added = {e.ref for e in events if e.kind == EventKind.LOCATION_ADDED}
        sli: list[SLIEvent] = []
        counted: set[str] = set()
        for _o, rec, _f in rows:
            word = _verdict_word(rec.verdict.expected)
            if self.metrics is not None:
                self.metrics.observe_ct_issuance(word)
            decided_now = rec.ref in added or rec.ref in pending
            if rec.verdict.expected is not None and decided_now and rec.ref not in counted:
                counted.add(rec.ref)
                sli.append(
                    SLIEvent(
                        now,
                        "expected_issuance",
                        bool(rec.verdict.expected),
                        rec.ref,
                        detail=rec.verdict.reason,
                    )
                )
        if sli:
            increments = self.inventory.record_sli_events(sli)
            if self.metrics is not None:
                self.metrics.observe_sli(increments)
        recorded = [r for _o, r, _f in rows]
        if self.on_recorded is not None:
            self.on_recorded(recorded)
        return recorded

    def reconsider(self, exp: Expectations) -> list[RecordedIssuance]:
        """Decide again on stored pending and unexpected issuances: an order that finished
        makes one expected, a pending one past ``ct.grace`` becomes unexpected."""
        now = self.clock.now()
        rows: list[tuple[Observation, RecordedIssuance, IssuanceFacts]] = []
        for item in self.inventory.items(now=now, source=SOURCE):
            lab = item.labels
            was = lab.get("ct_verdict")
            if was not in ("pending", "unexpected"):
                continue
            facts = IssuanceFacts(
                names=tuple(n for n in lab.get("ct_names", "").split(",") if n),
                serial=lab.get("ct_serial", item.serial or ""),
                spki_sha256=lab.get("ct_spki", ""),
                issuer=lab.get("ct_issuer", item.issuer or ""),
                issuer_cn=lab.get("ct_issuer_cn", item.issuer_cn or ""),
            )
            verdict = classify_facts(facts, exp)
            if verdict.expected is None and now - item.first_seen < timedelta(
                seconds=self.ct.grace
            ):
                continue  # still pending, still within grace
            if _verdict_word(verdict.expected) == was and was == "unexpected":
                continue  # nothing new
            leaf = None
            der = (
                self.inventory.certificate_der(item.fingerprint_sha256)
                if item.fingerprint_sha256
                else None
            )
            if der is not None:
                with contextlib.suppress(ValueError):
                    leaf = cert_info(x509.load_der_x509_certificate(der), der)
            keep = {k: v for k, v in lab.items() if not k.startswith("ct_verdict")}
            index = lab.get("ct_index", "")
            rows.append(
                self._observe(
                    facts,
                    leaf,
                    (),
                    keep,
                    lab.get("ct_log", ""),
                    int(index) if index.isdigit() else None,
                    exp,
                    first_seen=item.first_seen,
                )
            )
        changed = [r for r in rows if r[1].verdict.expected is not None]
        return self._store(changed)


_CN = re.compile(r"(?:^|[/,]\s*)CN=([^/,]+)")


def feed_facts(entry: FeedEntry) -> IssuanceFacts:
    """What classification needs from a certstream entry: from its DER when the full stream
    sent it (exact issuer and key), else from the feed's fields (no key; the issuer's CN is
    read from its "aggregated" string, whose field order differs between servers)."""
    if entry.der:
        with contextlib.suppress(ValueError):
            cert = x509.load_der_x509_certificate(entry.der)
            info = cert_info(cert, entry.der)
            return IssuanceFacts(
                entry.names, info.serial, info.spki_sha256, info.issuer, info.issuer_cn
            )
    m = _CN.search(entry.issuer)
    cn = m.group(1).strip() if m else ""
    return IssuanceFacts(entry.names, entry.serial, "", entry.issuer, cn)


def _infos(chain: Sequence[bytes]) -> Iterable[CertInfo]:
    for der in chain:
        with contextlib.suppress(ValueError):
            yield cert_info(x509.load_der_x509_certificate(der), der)


# -- the service's runtime -------------------------------------------------------------------


def monitor_options(ct: CTSettings) -> MonitorOptions:
    return MonitorOptions(
        batch_size=ct.batch_size,
        concurrency=ct.concurrency,
        window=ct.window,
        verify_inclusion=ct.verify_inclusion,
        start=ct.start,
    )


def _stored_verdict(inventory: Inventory, ref: str) -> bool:
    """Whether the stored location ``ref`` exists with a verdict still pending."""
    item = inventory.item(ref)
    return item is not None and item.labels.get("ct_verdict") == _verdict_word(None)


@dataclass(slots=True)
class CTRuntime:
    """The CT monitors of ``certpilot run``: one task per log, a refresh task that rebuilds
    the expectations and decides pending issuances again."""

    ct: CTSettings
    clock: Clock
    inventory: Inventory
    store: CTStore
    jobs: JobStore | None
    metrics: Metrics | None
    recorder: IssuanceRecorder
    watchlist: WatchlistFile
    monitors: list[Monitor] = field(default_factory=list)
    expectations: Expectations = field(default_factory=Expectations)
    cache: ExpectationCache | None = None
    on_event: Callable[[CTEvent], None] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Set once the inventory holds a first full scan: judging CT matches against an empty
    #: inventory would call every one of our own certificates unexpected.
    inventory_ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether this replica follows the log or feed at this URL now: the replicas share the
    #: logs out (certpilot.cluster: rendezvous hashing over the live members).
    active: Callable[[str], bool] = lambda _url: True
    #: Whether this replica leads (re-judges stored issuances as expectations change).
    lead: Callable[[], bool] = lambda: True

    async def refresh(self) -> None:
        assert self.cache is not None
        self.expectations = await asyncio.to_thread(self.cache.refresh)
        await asyncio.to_thread(self.recorder.reconsider, self.expectations)

    async def on_matches(self, matches: Sequence[Match]) -> None:
        if self.cache is not None:
            self.expectations = await asyncio.to_thread(self.cache.refresh)
        await asyncio.to_thread(self.recorder.record_matches, matches, self.expectations)

    def _emit(self, event: CTEvent) -> None:
        if event.kind in ("bad_signature", "inconsistent", "bad_inclusion"):
            log.error("CT log %s failed verification: %s", event.log, event.to_json())
        elif event.kind == "log_error":
            log.warning("CT log %s: %s", event.log, event.fields.get("error"))
        if self.on_event is not None:
            self.on_event(event)

    def _observe(self, m: Monitor) -> Callable[[StepResult], None]:
        def observe(_result: StepResult) -> None:
            if self.metrics is None:
                return
            st = m.status
            self.metrics.observe_ct_log(
                m.url,
                tree_size=st.tree_size,
                next_index=st.next_index,
                head_timestamp_ms=st.head_timestamp_ms,
                last_entry_timestamp_ms=st.last_entry_timestamp_ms,
                up=st.up,
                entries=st.entries,
                matches=st.matches,
                failures=st.failures,
            )

        return observe

    def start(self, logs: Sequence[LogInfo], stop: asyncio.Event) -> None:
        sources = [(info, open_source(info)) for info in logs]
        state = StoreState(self.store, self.clock, {s.url: s.kind for _i, s in sources})
        self.cache = ExpectationCache(self.inventory, self.jobs, self.ct, self.clock)
        for info, source in sources:
            m = Monitor(
                source,
                watchlist=self.watchlist,
                emit=self._emit,
                state=state,
                clock=self.clock,
                options=monitor_options(self.ct),
                on_matches=self.on_matches,
            )
            self.monitors.append(m)
            self.tasks.append(asyncio.create_task(self._follow(m, stop), name=f"ct-{info.url}"))
        self.tasks.append(asyncio.create_task(self._refresh_loop(stop), name="ct-refresh"))

    async def _follow(self, m: Monitor, stop: asyncio.Event) -> None:
        await self.inventory_ready.wait()
        following = False

        def active() -> bool:
            nonlocal following
            now = self.active(m.url)
            if following and not now:
                log.info("CT log %s: another replica follows it now", m.url)
                if self.metrics is not None:
                    self.metrics.forget_ct_log(m.url)
            following = now
            return now

        await m.run(interval=self.ct.interval, stop=stop, on_step=self._observe(m), active=active)

    def start_feeds(self, stop: asyncio.Event) -> None:
        """One task per ``ct.certstream`` feed: matched entries are recorded (labelled
        ``ct_source=certstream``: a hint, never verified)."""
        for feed in self.ct.certstream:
            client = CertstreamClient(feed.url, heartbeat_timeout=feed.heartbeat_timeout)
            self.tasks.append(
                asyncio.create_task(self._follow_feed(client, stop), name=f"certstream-{feed.url}")
            )

    async def _follow_feed(self, client: CertstreamClient, stop: asyncio.Event) -> None:
        await self.inventory_ready.wait()
        last_metrics = 0.0
        loop = asyncio.get_running_loop()

        def observe() -> None:
            if self.metrics is not None:
                self.metrics.observe_ct_feed(
                    client.url,
                    connected=client.connected,
                    counts={
                        "messages": client.received,
                        "malformed": client.malformed,
                        "reconnects": client.reconnects,
                        "heartbeat_gaps": client.heartbeat_gaps,
                    },
                )

        stream = client.messages()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    await asyncio.gather(nxt, return_exceptions=True)
                    break
                msg = nxt.result()
                if not self.active(client.url):
                    continue  # another replica records the feed
                if loop.time() - last_metrics > 1.0:
                    last_metrics = loop.time()
                    observe()
                if not isinstance(msg, FeedEntry) or not self.watchlist().match_any(msg.names):
                    continue
                facts = feed_facts(msg)
                try:
                    await asyncio.to_thread(
                        self.recorder.record_feed,
                        facts=facts,
                        der=msg.der,
                        feed=client.url,
                        log_url=msg.log_url,
                        index=msg.index,
                        not_before=msg.not_before,
                        exp=self.expectations,
                    )
                except Exception:
                    log.exception("recording a certstream match failed")
        except StopAsyncIteration:
            pass
        finally:
            stopper.cancel()
            await stream.aclose()
            await client.aclose()
            observe()

    async def _refresh_loop(self, stop: asyncio.Event) -> None:
        await self.inventory_ready.wait()
        while not stop.is_set():
            try:
                if self.lead():
                    await self.refresh()
            except Exception:
                log.exception("CT expectations refresh failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(5.0, self.ct.interval))

    async def aclose(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for m in self.monitors:
            await m.source.aclose()


def open_ct(
    ct: CTSettings,
    clock: Clock,
    *,
    inventory: Inventory,
    store_url: str,
    jobs: JobStore | None,
    metrics: Metrics | None,
    owners: Sequence[OwnerRule] = (),
    default_owner: str | None = None,
    source: str = "config",
    on_recorded: Callable[[Sequence[RecordedIssuance]], None] | None = None,
) -> tuple[CTRuntime, list[LogInfo]]:
    """Build the runtime (not started) and the logs it will watch; :class:`ConfigError` for
    bad keys, log lists or watchlists."""
    logs = configured_logs(ct, source)
    watchlist = WatchlistFile(ct.watch, ct.watch_file)
    store = CTStore.open(store_url)
    recorder = IssuanceRecorder(
        inventory,
        clock,
        ct,
        owners=owners,
        default_owner=default_owner,
        metrics=metrics,
        on_recorded=on_recorded,
    )
    rt = CTRuntime(ct, clock, inventory, store, jobs, metrics, recorder, watchlist)
    return rt, logs


__all__ = [
    "SOURCE",
    "CTRuntime",
    "ExpectationCache",
    "IssuanceRecorder",
    "RecordedIssuance",
    "StoreState",
    "WatchlistFile",
    "configured_logs",
    "ct_ref",
    "monitor_options",
    "open_ct",
    "open_source",
]
