"""The verifying Certificate Transparency monitor: one :class:`Monitor` per log.

One :meth:`Monitor.step` does what certspotter does for a log, and reports each check as a
:class:`CTEvent` (the JSON lines ``certpilot ct watch --format json`` prints):

1. fetch the latest tree head; the source has checked its signature (``sth_verified``, or
   ``bad_signature``);
2. prove it consistent with the last verified head (persisted in the store, or the
   ``--trusted-sth``): ``consistency_verified`` or ``inconsistent``. A log whose tree shrank,
   changed its root at the same size or fails the proof is reported loudly and not read on;
3. download the new entries in windows (batches fetched concurrently, the next window fetched
   while this one is parsed); every leaf is hashed into a :class:`~ctwatch.tree.CompactRange`
   and parsed (``entry``; ``malformed_entry`` never stops the monitor). At the end of each
   window the range's root must match the signed root (at the head's size) or be proven a
   prefix of it (a consistency proof from the window's end): otherwise the log served entries
   its tree head does not commit to (``inconsistent``) and nothing of the window is believed;
4. for a verified window: match names against the watchlist, optionally prove each match's
   inclusion (``inclusion_verified`` / ``bad_inclusion``), hand the matches to ``on_matches``
   (which stores them) and only then save the new position (``next_index`` + compact range):
   a crash re-reads a window, never skips one.

Pure of storage and printing: state goes through :class:`StateStore`, events through ``emit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from certpilot.domain.clock import Clock
from ctwatch.match import Watchlist
from ctwatch.rfc6962 import (
    CTEntry,
    CTLogError,
    MalformedEntry,
    leaf_hash,
    parse_leaf,
    verify_consistency,
    verify_inclusion,
)
from ctwatch.source import (
    BadSignature,
    LogProtocolError,
    LogSource,
    LogUnavailable,
    RawEntry,
    TreeHead,
)
from ctwatch.tree import CompactRange, range_from_inclusion

log = logging.getLogger(__name__)

EventKind = Literal[
    "sth_verified",
    "consistency_verified",
    "entry",
    "inclusion_verified",
    "match",
    "bad_signature",
    "inconsistent",
    "bad_inclusion",
    "malformed_entry",
    "log_error",
]

#: Events that mean the log failed a check (``certpilot ct watch`` exits 1 after one).
FAILURES: frozenset[str] = frozenset(
    {"bad_signature", "inconsistent", "bad_inclusion", "malformed_entry"}
)


@dataclass(frozen=True, slots=True)
class CTEvent:
    """One thing the monitor checked or found, in log order."""

    kind: EventKind
    log: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "log": self.log, **self.fields}


@dataclass(frozen=True, slots=True)
class Match:
    """A watched name in a verified entry."""

    log: str
    index: int
    entry: CTEntry
    leaf_hash: bytes
    matches: tuple[tuple[str, str], ...]  # (name, pattern)
    inclusion: bool | None = None  # proven in the tree head (None: not asked)


# -- persisted state -------------------------------------------------------------------------


@dataclass(slots=True)
class LogState:
    """Where the monitor is in a log: the last verified head, the next entry to process and
    the compact range over the entries before it (``None`` until rebuilt after a start in the
    middle of the log)."""

    head: TreeHead | None = None
    next_index: int = 0
    compact: CompactRange | None = None


def head_to_json(head: TreeHead) -> dict[str, Any]:
    return {
        "tree_size": head.size,
        "root_hash": head.root_hash.hex(),
        "timestamp": head.timestamp_ms,
        "raw": dict(head.raw),
    }


def head_from_json(data: Mapping[str, Any]) -> TreeHead:
    """Inverse of :func:`head_to_json`; ``ValueError``/``KeyError``/``TypeError`` otherwise."""
    root = bytes.fromhex(str(data["root_hash"]))
    size, ts = data["tree_size"], data["timestamp"]
    if not isinstance(size, int) or not isinstance(ts, int) or len(root) != 32:
        raise ValueError("stored tree head is malformed")
    raw = data.get("raw") or {}
    return TreeHead(size, root, ts, raw=dict(raw) if isinstance(raw, Mapping) else {})


class StateStore(Protocol):
    def load(self, url: str) -> LogState | None: ...

    def save(self, url: str, state: LogState) -> None: ...


class MemoryState:
    """A :class:`StateStore` in memory (``certpilot ct watch`` without a database)."""

    def __init__(self) -> None:
        self._states: dict[str, LogState] = {}

    def load(self, url: str) -> LogState | None:
        s = self._states.get(url)
        return (
            LogState(s.head, s.next_index, s.compact.copy() if s.compact else None) if s else None
        )

    def save(self, url: str, state: LogState) -> None:
        self._states[url] = LogState(
            state.head, state.next_index, state.compact.copy() if state.compact else None
        )


# -- options and results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    batch_size: int = 256  # entries per get-entries call (logs cap it: often 256 or 1000)
    concurrency: int = 4  # get-entries calls in flight
    window: int = 4096  # entries between two checks against the signed tree
    verify_inclusion: bool = False
    start: Literal["beginning", "end"] = "beginning"  # where a log never read before starts
    from_index: int | None = None  # overrides the stored position
    to_index: int | None = None  # last entry to process (inclusive)
    emit_entries: bool = False  # an ``entry`` event per entry (the CLI's JSON lines)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one :meth:`Monitor.step` did."""

    head: TreeHead | None
    processed: int
    matches: int
    failures: int
    next_index: int
    error: str | None = None  # the log could not be read (not a verification failure)
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.error is None


@dataclass(slots=True)
class MonitorStatus:
    """Live figures for metrics (``certpilot_ct_*``)."""

    tree_size: int = 0
    next_index: int = 0
    head_timestamp_ms: int = 0
    last_entry_timestamp_ms: int = 0
    entries: int = 0
    matches: int = 0
    malformed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    up: bool = False
    last_error: str = ""

    @property
    def backlog(self) -> int:
        return max(0, self.tree_size - self.next_index)


class _Failed(Exception):
    """Stop the step: a check failed (its event was emitted)."""


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# -- the monitor -----------------------------------------------------------------------------


class Monitor:
    """Reads one log: ``step()`` once (``--once``) or ``run()`` forever."""

    def __init__(
        self,
        source: LogSource,
        *,
        watchlist: Callable[[], Watchlist],
        emit: Callable[[CTEvent], None],
        state: StateStore,
        clock: Clock,
        options: MonitorOptions | None = None,
        trusted: TreeHead | None = None,
        on_matches: Callable[[Sequence[Match]], Awaitable[None]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.source = source
        self._watchlist = watchlist
        self._emit = emit
        self._state = state
        self._clock = clock
        self.options = options or MonitorOptions()
        self._trusted = trusted
        self._on_matches = on_matches
        self._progress = progress or (lambda _done, _total: None)
        self.status = MonitorStatus()
        self._from_index = self.options.from_index  # used by the first step only

    @property
    def url(self) -> str:
        return self.source.url

    def _event(self, kind: EventKind, **fields: Any) -> None:
        if kind in FAILURES:
            self.status.failures[kind] = self.status.failures.get(kind, 0) + 1
        self._emit(CTEvent(kind, self.url, fields))

    # -- one pass ------------------------------------------------------------------------------

    async def step(self) -> StepResult:
        """Verify the latest head, read and check every entry up to it (or ``to_index``)."""
        failures_before = sum(self.status.failures.values())
        state = self._state.load(self.url) or LogState()
        processed = matches = 0
        head: TreeHead | None = None
        try:
            head = await self._verified_head(state)
            state.head = head
            start = self._start_index(state, head)
            self._from_index = None
            if start != state.next_index:
                state.next_index, state.compact = start, None
            end = head.size
            if self.options.to_index is not None:
                end = min(end, self.options.to_index + 1)
            if start < end and state.compact is None:
                state.compact = await self._rebuild_range(start, head)
            processed, matches = await self._read(state, head, end)
            self._state.save(self.url, state)
        except _Failed:
            pass
        except LogUnavailable as e:
            self.status.up = False
            self.status.last_error = e.reason
            self._emit(CTEvent("log_error", self.url, {"error": str(e)}))
            return self._result(head, state, processed, matches, failures_before, str(e), e)
        self.status.up = True
        return self._result(head, state, processed, matches, failures_before, None, None)

    def _result(
        self,
        head: TreeHead | None,
        state: LogState,
        processed: int,
        matches: int,
        failures_before: int,
        error: str | None,
        exc: LogUnavailable | None,
    ) -> StepResult:
        return StepResult(
            head=head,
            processed=processed,
            matches=matches,
            failures=sum(self.status.failures.values()) - failures_before,
            next_index=state.next_index,
            error=error,
            retry_after=exc.retry_after if exc is not None else None,
        )

    async def _verified_head(self, state: LogState) -> TreeHead:
        try:
            head = await self.source.head()
        except BadSignature as e:
            self._event("bad_signature", error=e.reason)
            raise _Failed from None
        except LogProtocolError as e:
            self._event("bad_signature", error=f"malformed tree head: {e.reason}")
            raise _Failed from None
        self.status.tree_size = head.size
        self.status.head_timestamp_ms = head.timestamp_ms
        self._event(
            "sth_verified",
            tree_size=head.size,
            timestamp=head.timestamp_ms,
            time=_utc(head.timestamp_ms),
            root_hash=head.root_hash.hex(),
        )
        previous = state.head or self._trusted
        if previous is not None:
            await self._check_consistency(previous, head)
        return head

    async def _check_consistency(self, old: TreeHead, new: TreeHead) -> None:
        def fail(reason: str) -> None:
            self._event(
                "inconsistent",
                first=old.size,
                second=new.size,
                first_root=old.root_hash.hex(),
                second_root=new.root_hash.hex(),
                error=reason,
            )
            raise _Failed

        if new.size < old.size:
            fail(f"the tree shrank from {old.size} to {new.size} entries")
        if new.size == old.size:
            if new.root_hash != old.root_hash:
                fail(f"two different roots for the same size {new.size}")
            return
        if old.size == 0:
            proof: Sequence[bytes] = ()
        else:
            try:
                proof = await self.source.consistency_proof(old.size, new.size)
            except LogProtocolError as e:
                fail(f"no consistency proof: {e.reason}")
                return
        if not verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof):
            fail("consistency proof does not verify")
        self._event(
            "consistency_verified",
            first=old.size,
            second=new.size,
            first_root=old.root_hash.hex(),
            second_root=new.root_hash.hex(),
        )

    def _start_index(self, state: LogState, head: TreeHead) -> int:
        if self._from_index is not None:
            return min(self._from_index, head.size)
        if state.next_index == 0 and state.compact is None and self.options.start == "end":
            return head.size
        return state.next_index

    async def _rebuild_range(self, start: int, head: TreeHead) -> CompactRange:
        """The compact range over ``[0, start)``: empty at 0, else from the verified audit
        path of entry ``start - 1`` in ``head``."""
        if start == 0:
            return CompactRange()
        try:
            (raw,) = (await self.source.entries(start - 1, start))[:1]
            lh = leaf_hash(raw.leaf_input)
            path = await self.source.inclusion_proof(start - 1, lh, head.size)
        except (LogProtocolError, ValueError) as e:
            self._event("bad_inclusion", index=start - 1, error=f"cannot anchor the start: {e}")
            raise _Failed from None
        rebuilt = range_from_inclusion(start - 1, lh, head.size, path, head.root_hash)
        if rebuilt is None:
            self._event(
                "bad_inclusion",
                index=start - 1,
                error="audit path of the entry before the start does not verify",
            )
            raise _Failed
        return rebuilt

    # -- entries -------------------------------------------------------------------------------

    async def _fetch(self, start: int, end: int) -> list[RawEntry]:
        """Entries ``[start, end)`` in order: batches in flight at once, short answers refetched."""
        size = max(1, self.options.batch_size)
        sem = asyncio.Semaphore(max(1, self.options.concurrency))

        async def batch(b_start: int, b_end: int) -> list[RawEntry]:
            out: list[RawEntry] = []
            pos = b_start
            async with sem:
                while pos < b_end:
                    got = await self.source.entries(pos, b_end)
                    if not got:
                        raise LogProtocolError(self.url, f"no entries at {pos}")
                    for i, e in enumerate(got):
                        if e.index != pos + i:
                            raise LogProtocolError(self.url, f"entry {pos + i} out of order")
                    out.extend(got[: b_end - pos])
                    pos += min(len(got), b_end - pos)
            return out

        # Batches end on multiples of the batch size: logs page (and tiled logs store) their
        # entries on such boundaries, so an unaligned start costs one short batch, not a
        # second request for every batch.
        bounds = [start, *range((start // size + 1) * size, end, size), end]
        parts = await asyncio.gather(*(batch(a, b) for a, b in itertools.pairwise(bounds)))
        return [e for part in parts for e in part]

    async def _read(self, state: LogState, head: TreeHead, end: int) -> tuple[int, int]:
        assert state.compact is not None or state.next_index >= end
        window = max(1, self.options.window)
        total = max(0, end - state.next_index)
        processed = matched = 0
        nxt: asyncio.Task[list[RawEntry]] | None = None
        pos = state.next_index
        try:
            while pos < end:
                w_end = min(pos + window, end)
                current = nxt or asyncio.ensure_future(self._fetch(pos, w_end))
                nxt = None
                proof_task = (
                    asyncio.ensure_future(self.source.consistency_proof(w_end, head.size))
                    if w_end < head.size
                    else None
                )
                try:
                    try:
                        raws = await current
                    except LogProtocolError as e:
                        self._event("inconsistent", index=pos, error=f"get-entries: {e.reason}")
                        raise _Failed from None
                    if w_end < end:  # overlap the next download with this window's hashing
                        nxt = asyncio.ensure_future(self._fetch(w_end, min(w_end + window, end)))
                    assert state.compact is not None
                    compact = state.compact.copy()
                    found = self._process(raws, compact)
                    await self._verify_window(compact, head, w_end, proof_task)
                finally:
                    if proof_task is not None and not proof_task.done():
                        proof_task.cancel()
                        await asyncio.gather(proof_task, return_exceptions=True)
                for m in found:
                    self._emit_match(m)
                if self.options.verify_inclusion and found:
                    found = await self._prove(found, head)
                if found and self._on_matches is not None:
                    await self._on_matches(found)
                state.compact, state.next_index = compact, w_end
                self._state.save(self.url, state)
                self.status.next_index = w_end
                processed += len(raws)
                matched += len(found)
                pos = w_end
                self._progress(processed, total)
        finally:
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
        self.status.next_index = state.next_index
        return processed, matched

    def _process(self, raws: Sequence[RawEntry], compact: CompactRange) -> list[Match]:
        watch = self._watchlist()
        emit_entries = self.options.emit_entries
        found: list[Match] = []
        last_ts = 0
        for raw in raws:
            lh = leaf_hash(raw.leaf_input)
            compact.append(lh)
            try:
                entry = parse_leaf(raw.leaf_input, raw.extra_data, raw.index)
            except MalformedEntry as e:
                self.status.malformed += 1
                self._event("malformed_entry", index=raw.index, error=e.reason)
                continue
            last_ts = entry.timestamp_ms
            if emit_entries:
                self._event(
                    "entry",
                    index=raw.index,
                    entry_type=entry.entry_type,
                    sha256=entry.sha256,
                    names=list(entry.names),
                    issuer=entry.issuer,
                    serial=entry.serial,
                    not_after=entry.not_after.isoformat().replace("+00:00", "Z"),
                )
            hits = watch.match_any(entry.names)
            if hits:
                found.append(Match(self.url, raw.index, entry, lh, tuple(hits)))
        self.status.entries += len(raws)
        if last_ts:
            self.status.last_entry_timestamp_ms = last_ts
        return found

    async def _verify_window(
        self,
        compact: CompactRange,
        head: TreeHead,
        w_end: int,
        proof_task: asyncio.Future[Sequence[bytes]] | None,
    ) -> None:
        root = compact.root()
        if proof_task is None:
            ok = root == head.root_hash
            how = "the entries do not hash to the signed root"
        else:
            try:
                proof = await proof_task
            except LogProtocolError as e:
                self._event("inconsistent", index=w_end - 1, error=f"no proof: {e.reason}")
                raise _Failed from None
            ok = verify_consistency(w_end, head.size, root, head.root_hash, proof)
            how = f"the entries up to {w_end} are not a prefix of the signed tree"
        if not ok:
            self._event(
                "inconsistent",
                index=w_end - 1,
                tree_size=head.size,
                root_hash=head.root_hash.hex(),
                computed_root=root.hex(),
                error=how,
            )
            raise _Failed

    async def _prove(self, found: Sequence[Match], head: TreeHead) -> list[Match]:
        sem = asyncio.Semaphore(max(1, self.options.concurrency))

        async def one(m: Match) -> Match:
            async with sem:
                try:
                    path = await self.source.inclusion_proof(m.index, m.leaf_hash, head.size)
                    ok = verify_inclusion(m.leaf_hash, m.index, head.size, path, head.root_hash)
                    why = "audit path does not verify"
                except LogProtocolError as e:
                    ok, why = False, e.reason
            if ok:
                self._event("inclusion_verified", index=m.index, tree_size=head.size)
            else:
                self._event("bad_inclusion", index=m.index, tree_size=head.size, error=why)
            return replace(m, inclusion=ok)

        return list(await asyncio.gather(*(one(m) for m in found)))

    def _emit_match(self, m: Match) -> None:
        self.status.matches += 1
        e = m.entry
        self._event(
            "match",
            index=m.index,
            entry_type=e.entry_type,
            sha256=e.sha256,
            names=list(e.names),
            matched=sorted({p for _n, p in m.matches}),
            issuer=e.issuer,
            serial=e.serial,
            not_before=e.not_before.isoformat().replace("+00:00", "Z"),
            not_after=e.not_after.isoformat().replace("+00:00", "Z"),
        )

    # -- forever -------------------------------------------------------------------------------

    async def run(
        self,
        *,
        interval: float,
        stop: asyncio.Event,
        max_backoff: float = 600.0,
        on_step: Callable[[StepResult], None] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        """Step every ``interval`` seconds until ``stop``; after a failure wait longer (doubling,
        at most ``max_backoff``, at least the log's Retry-After). While ``active`` says no (this
        replica does not lead), wait without reading."""
        delay = interval
        while not stop.is_set():
            if active is not None and not active():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                continue
            try:
                result = await self.step()
            except CTLogError as e:  # anything a source raises that step() does not map
                log.warning("CT log %s: %s", self.url, e)
                result = StepResult(None, 0, 0, 0, self.status.next_index, error=str(e))
            except Exception as e:  # the store or on_matches failed: retry, from the saved state
                log.exception("CT log %s: reading failed", self.url)
                self.status.up = False
                result = StepResult(None, 0, 0, 0, self.status.next_index, error=str(e))
            if on_step is not None:
                on_step(result)
            if result.ok:
                delay = interval
            else:
                delay = min(max_backoff, max(delay * 2, result.retry_after or 0.0, interval))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


__all__ = [
    "FAILURES",
    "CTEvent",
    "LogState",
    "Match",
    "MemoryState",
    "Monitor",
    "MonitorOptions",
    "MonitorStatus",
    "StateStore",
    "StepResult",
    "head_from_json",
    "head_to_json",
]
