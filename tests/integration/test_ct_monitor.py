"""The verifying CT monitor (``ctwatch.monitor``) against the loopback RFC 6962 log over HTTP.

Each test drives :class:`Monitor` through the real client (``RFC6962Log`` + ``Fetcher``) and
checks the events it reports, the position it persists (``CTStore``, SQLite) and what it
refuses to believe: a bad tree head signature, an inconsistent log, entries that do not hash to
the signed root, a malformed entry (reported, then skipped), a forged audit path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.ctwatching import StoreState
from certpilot.domain.clock import FixedClock
from certpilot.localca import LocalCA
from certpilot.store.ct import CTStore
from ctwatch.fetch import Fetcher
from ctwatch.match import Watchlist
from ctwatch.monitor import CTEvent, Match, MemoryState, Monitor, MonitorOptions
from ctwatch.rfc6962_client import RFC6962Log
from ctwatch.source import TreeHead
from tests.support.ct_log import LoopbackCTLog, make_precert
from tests.support.tiled_log import LoopbackTiledLog

DER = serialization.Encoding.DER


class _Recorder:
    def __init__(self) -> None:
        self.events: list[CTEvent] = []
        self.matches: list[Match] = []

    def __call__(self, e: CTEvent) -> None:
        self.events.append(e)

    async def on_matches(self, found: Sequence[Match]) -> None:
        self.matches.extend(found)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[CTEvent]:
        return [e for e in self.events if e.kind == kind]


def _fill(
    log: LoopbackCTLog | LoopbackTiledLog, ca: LocalCA, now: datetime, names: list[list[str]]
) -> list[int]:
    chain = [c.public_bytes(DER) for c in ca.issue(["x.test"], now).chain]
    out: list[int] = []
    for n in names:
        if n[0].startswith("pre."):
            pre = make_precert(ca.issuer_cert, ca.issuer_key, n, now, now + timedelta(days=30))
            out.append(log.add_precert(pre.public_bytes(DER), ca.issuer_cert.public_bytes(DER)))
        else:
            out.append(log.add_x509(ca.issue(n, now).cert.public_bytes(DER), chain))
    return out


def _names(n: int, watched_every: int = 0) -> list[list[str]]:
    """Odd entries are precerts; every ``watched_every``-th name is under ``.watched.test``."""
    out: list[list[str]] = []
    for i in range(n):
        zone = "watched" if watched_every and i % watched_every == 0 else "other"
        out.append([f"{'pre.' if i % 2 else ''}h{i}.{zone}.test"])
    return out


@pytest.fixture
async def ct_log() -> AsyncIterator[LoopbackCTLog]:
    async with LoopbackCTLog(batch_limit=7) as log:
        yield log


def _monitor(
    log: LoopbackCTLog,
    rec: _Recorder,
    now: datetime,
    *,
    state: object | None = None,
    options: MonitorOptions | None = None,
    trusted: TreeHead | None = None,
    sleeps: list[float] | None = None,
) -> Monitor:
    async def sleep(s: float) -> None:
        if sleeps is not None:
            sleeps.append(s)

    source = RFC6962Log(log.url, log.public_key_der, fetcher=Fetcher(sleep=sleep))
    return Monitor(
        source,
        watchlist=lambda: Watchlist.from_patterns([".watched.test"]),
        emit=rec,
        state=state or MemoryState(),  # type: ignore[arg-type]
        clock=FixedClock(now),
        options=options or MonitorOptions(batch_size=5, concurrency=3, window=16),
        trusted=trusted,
        on_matches=rec.on_matches,
    )


async def test_reads_verifies_and_matches_every_entry(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime, tmp_path: Path
) -> None:
    idx = _fill(ct_log, ca, now, _names(50, watched_every=6))
    ct_log.publish()
    store = CTStore.open(f"sqlite:///{tmp_path / 'ct.db'}")
    state = StoreState(store, FixedClock(now))
    rec = _Recorder()
    m = _monitor(ct_log, rec, now, state=state)
    try:
        result = await m.step()
        assert result.ok and result.processed == 50 and result.next_index == 50
        assert rec.kinds()[0] == "sth_verified"
        assert "inconsistent" not in rec.kinds() and "malformed_entry" not in rec.kinds()
        watched = [i for i in idx if i % 6 == 0]
        assert [x.index for x in rec.matches] == watched
        assert [e.fields["index"] for e in rec.of("match")] == watched
        assert {x.entry.entry_type for x in rec.matches} == {"x509"}  # even i: x509
        assert rec.matches[0].entry.names == ("h0.watched.test",)

        # Persisted: the verified head, the position and the compact range.
        row = store.get(m.url)
        assert row is not None and row.next_index == 50
        assert row.head is not None and row.head["tree_size"] == 50
        loaded = state.load(m.url)
        assert loaded is not None and loaded.compact is not None
        assert loaded.compact.root() == ct_log.sth.root_hash

        # A new monitor (a restart) reads only the new entries, after a consistency proof from
        # the stored head.
        _fill(ct_log, ca, now, [["late.watched.test"], ["pre.x.other.test"]])
        ct_log.publish()
        rec2 = _Recorder()
        m2 = _monitor(ct_log, rec2, now, state=state)
        result = await m2.step()
        await m2.source.aclose()
        assert result.ok and result.processed == 2
        (cons,) = rec2.of("consistency_verified")
        assert (cons.fields["first"], cons.fields["second"]) == (50, 52)
        assert [x.index for x in rec2.matches] == [50]
    finally:
        await m.source.aclose()
        store.close()


async def test_bad_tree_head_signature_stops_everything(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(5, watched_every=1))
    ct_log.publish()
    ct_log.tamper_sth_signature()
    rec = _Recorder()
    state = MemoryState()
    m = _monitor(ct_log, rec, now, state=state)
    result = await m.step()
    await m.source.aclose()
    assert not result.ok and result.failures == 1
    assert rec.kinds() == ["bad_signature"]
    assert rec.matches == [] and state.load(m.url) is None
    paths = [p for p, _ in ct_log.requests]
    assert "/ct/v1/get-entries" not in paths


async def test_inconsistent_log_is_reported_and_not_read(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(9))
    ct_log.publish()
    state = MemoryState()
    rec = _Recorder()
    m = _monitor(ct_log, rec, now, state=state)
    assert (await m.step()).ok
    _fill(ct_log, ca, now, _names(4, watched_every=1))
    ct_log.publish()
    ct_log.tamper_consistency()
    rec2 = _Recorder()
    m2 = _monitor(ct_log, rec2, now, state=state)
    result = await m2.step()
    await m.source.aclose()
    await m2.source.aclose()
    assert not result.ok
    assert rec2.kinds() == ["sth_verified", "inconsistent"]
    assert rec2.of("inconsistent")[0].fields["first"] == 9
    stored = state.load(m.url)
    assert stored is not None and stored.next_index == 9 and stored.head is not None
    assert stored.head.size == 9  # the unproven head is not remembered
    assert rec2.matches == []


async def test_forged_heads_same_size_other_root_and_a_shrunk_tree(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    """A trusted head the log's key signed but the log does not extend: a split view."""
    _fill(ct_log, ca, now, _names(6))
    ct_log.publish()

    def forged(size: int, root: bytes) -> TreeHead:
        return TreeHead(size, root, 1)  # the CLI checks a trusted head's signature first

    for trusted, why in (
        (forged(6, b"\x01" * 32), "two different roots"),
        (forged(9, b"\x02" * 32), "shrank"),
        (forged(4, b"\x03" * 32), "does not verify"),
    ):
        rec = _Recorder()
        m = _monitor(ct_log, rec, now, trusted=trusted)
        result = await m.step()
        await m.source.aclose()
        assert not result.ok
        (bad,) = rec.of("inconsistent")
        assert why in bad.fields["error"]
        assert rec.of("match") == [] and "entry" not in rec.kinds()


async def test_tampered_entry_fails_its_window_and_keeps_the_position(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(40, watched_every=4))
    ct_log.publish()
    ct_log.tamper_entry(21)  # in the second window of 16
    state = MemoryState()
    rec = _Recorder()
    m = _monitor(ct_log, rec, now, state=state)
    result = await m.step()
    assert not result.ok
    bad = rec.of("inconsistent")
    assert len(bad) == 1 and "prefix of the signed tree" in bad[0].fields["error"]
    # The first window verified (matches 0, 4, 8, 12 delivered, position 16); nothing of the
    # tampered window was believed.
    assert [x.index for x in rec.matches] == [0, 4, 8, 12]
    stored = state.load(m.url)
    assert stored is not None and stored.next_index == 16
    # Healed, the next step resumes at 16 and verifies everything after it.
    ct_log.heal()
    rec2 = _Recorder()
    m2 = _monitor(ct_log, rec2, now, state=state)
    result = await m2.step()
    await m.source.aclose()
    await m2.source.aclose()
    assert result.ok and result.processed == 24
    assert [x.index for x in rec2.matches] == [16, 20, 24, 28, 32, 36]


async def test_malformed_entries_are_reported_and_never_stop_the_monitor(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, [["a.watched.test"]])
    ct_log.add_raw(b"\x00\x00garbage", b"")  # not a MerkleTreeLeaf
    ct_log.add_raw(b"\x07", b"\x00\x00\x00")  # unknown version
    _fill(ct_log, ca, now, [["b.watched.test"]])
    ct_log.publish()
    rec = _Recorder()
    m = _monitor(ct_log, rec, now)
    result = await m.step()
    await m.source.aclose()
    assert result.failures == 2 and result.processed == 4 and result.next_index == 4
    assert [e.fields["index"] for e in rec.of("malformed_entry")] == [1, 2]
    assert [x.index for x in rec.matches] == [0, 3]  # the tree still verified end to end
    assert m.status.malformed == 2 and m.status.failures == {"malformed_entry": 2}


async def test_rate_limits_are_retried_after_the_logs_retry_after(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(12, watched_every=5))
    ct_log.publish()
    ct_log.rate_limit(3, retry_after=2)
    sleeps: list[float] = []
    rec = _Recorder()
    m = _monitor(ct_log, rec, now, sleeps=sleeps)
    result = await m.step()
    await m.source.aclose()
    assert result.ok and result.processed == 12
    assert len(sleeps) == 3 and all(s >= 2 for s in sleeps)
    assert [x.index for x in rec.matches] == [0, 5, 10]


async def test_unreachable_log_is_an_error_not_a_verification_failure(now: datetime) -> None:
    async def sleep(_s: float) -> None:
        return None

    rec = _Recorder()
    source = RFC6962Log(
        "http://127.0.0.1:9/", b"key", fetcher=Fetcher(sleep=sleep, attempts=2, timeout=2)
    )
    m = Monitor(
        source,
        watchlist=lambda: Watchlist.from_patterns([]),
        emit=rec,
        state=MemoryState(),
        clock=FixedClock(now),
    )
    result = await m.step()
    await source.aclose()
    assert result.failures == 0 and result.error is not None and "2 attempts" in result.error
    assert rec.kinds() == ["log_error"] and not m.status.up


async def test_start_in_the_middle_anchors_on_a_verified_audit_path(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(30, watched_every=3))
    ct_log.publish()
    rec = _Recorder()
    m = _monitor(
        ct_log,
        rec,
        now,
        options=MonitorOptions(batch_size=4, window=8, from_index=13, to_index=22),
    )
    result = await m.step()
    assert result.ok and result.processed == 10 and result.next_index == 23
    assert [x.index for x in rec.matches] == [15, 18, 21]
    # The range before 13 came from entry 12's audit path; the end (22 < 29) was proven by a
    # consistency proof to the signed head.
    paths = [p for p, _ in ct_log.requests]
    assert "/ct/v1/get-proof-by-hash" in paths and "/ct/v1/get-sth-consistency" in paths

    # A log whose audit paths are forged cannot anchor a start.
    ct_log.tamper_audit_path()
    rec2 = _Recorder()
    m2 = _monitor(ct_log, rec2, now, options=MonitorOptions(from_index=7))
    result = await m2.step()
    await m.source.aclose()
    await m2.source.aclose()
    assert not result.ok and rec2.matches == [] and "entry" not in rec2.kinds()
    (bad,) = rec2.of("bad_inclusion")
    assert bad.fields["index"] == 6 and "does not verify" in bad.fields["error"]


async def test_verify_inclusion_proves_each_match(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(20, watched_every=7))
    ct_log.publish()
    rec = _Recorder()
    m = _monitor(ct_log, rec, now, options=MonitorOptions(verify_inclusion=True, window=64))
    result = await m.step()
    await m.source.aclose()
    assert result.ok
    assert [e.fields["index"] for e in rec.of("inclusion_verified")] == [0, 7, 14]
    assert all(x.inclusion is True for x in rec.matches)
    kinds = rec.kinds()
    assert kinds.index("match") < kinds.index("inclusion_verified")


async def test_start_at_the_end_reads_only_what_comes_next(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(25, watched_every=2))
    ct_log.publish()
    state = MemoryState()
    rec = _Recorder()
    opts = MonitorOptions(start="end", batch_size=8)
    m = _monitor(ct_log, rec, now, state=state, options=opts)
    result = await m.step()
    assert result.ok and result.processed == 0 and result.next_index == 25
    _fill(ct_log, ca, now, [["new.watched.test"], ["x.other.test"], ["pre.n.watched.test"]])
    ct_log.publish()
    result = await m.step()
    await m.source.aclose()
    assert result.ok and result.processed == 3
    assert [x.index for x in rec.matches] == [25, 27]
    assert rec.matches[1].entry.entry_type == "precert"


async def test_a_failure_storing_matches_loses_nothing_and_skips_nothing(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    """The position is saved only after a window's matches are stored: when storing fails
    (the database is locked, the process dies), the window is read again."""
    _fill(ct_log, ca, now, _names(48, watched_every=5))
    ct_log.publish()
    state = MemoryState()
    stored: list[int] = []
    calls = 0

    async def flaky(found: Sequence[Match]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("database is locked")
        stored.extend(m.index for m in found)

    rec = _Recorder()
    m = _monitor(ct_log, rec, now, state=state)
    m._on_matches = flaky
    with pytest.raises(RuntimeError):
        await m.step()
    saved = state.load(m.url)
    assert saved is not None and saved.next_index == 16  # the first window only
    result = await m.step()  # the next cycle: from the saved position
    await m.source.aclose()
    assert result.ok and result.next_index == 48
    assert stored == list(range(0, 48, 5))  # every match once, in order


async def test_run_keeps_going_after_a_failure_and_backs_off(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    _fill(ct_log, ca, now, _names(10, watched_every=3))
    ct_log.publish()
    rec = _Recorder()
    m = _monitor(ct_log, rec, now)
    calls = 0

    async def flaky(found: Sequence[Match]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        rec.matches.extend(found)

    m._on_matches = flaky
    stop = asyncio.Event()
    results: list[bool] = []

    def on_step(r: object) -> None:
        results.append(getattr(r, "ok", False))
        if len(results) == 2:
            stop.set()

    await asyncio.wait_for(m.run(interval=0.01, stop=stop, on_step=on_step), timeout=30)
    await m.source.aclose()
    assert results == [False, True]
    assert [x.index for x in rec.matches] == [0, 3, 6, 9]


async def test_a_tiled_log_is_verified_and_followed_the_same_way(
    ca: LocalCA, now: datetime
) -> None:
    from ctwatch.tiled import TiledLog

    with LoopbackTiledLog() as tiled:
        _fill(tiled, ca, now, _names(300, watched_every=50))
        tiled.publish()
        state = MemoryState()
        rec = _Recorder()

        def monitor() -> Monitor:
            return Monitor(
                TiledLog(tiled.url, tiled.key_der),
                watchlist=lambda: Watchlist.from_patterns([".watched.test"]),
                emit=rec,
                state=state,
                clock=FixedClock(now),
                options=MonitorOptions(window=100, verify_inclusion=True),
                on_matches=rec.on_matches,
            )

        m = monitor()
        result = await m.step()
        await m.source.aclose()
        assert result.ok and result.processed == 300
        assert [x.index for x in rec.matches] == [0, 50, 100, 150, 200, 250]
        assert len(rec.of("inclusion_verified")) == 6
        _fill(tiled, ca, now, [["late.watched.test"], *_names(20)])
        tiled.publish()
        m = monitor()  # a restart: consistency from the stored checkpoint, via hash tiles
        result = await m.step()
        await m.source.aclose()
        assert result.ok and result.processed == 21
        assert rec.of("consistency_verified")[-1].fields["first"] == 300
        assert rec.matches[-1].index == 300

        tiled.tamper_entry(305)
        rec2 = _Recorder()
        m2 = Monitor(
            TiledLog(tiled.url, tiled.key_der),
            watchlist=lambda: Watchlist.from_patterns([".watched.test"]),
            emit=rec2,
            state=MemoryState(),
            clock=FixedClock(now),
            options=MonitorOptions(from_index=256),
        )
        result = await m2.step()
        await m2.source.aclose()
        assert not result.ok and rec2.of("inconsistent")
