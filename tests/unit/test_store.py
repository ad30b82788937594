"""The inventory store on real SQLite files, with real certificates from the embedded CA."""

from __future__ import annotations

import gc
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from certpilot.domain.errors import StoreError
from certpilot.domain.inventory import Event, EventKind
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, ParsedCert, parse_pem_bundle
from certpilot.localca import Issued, LocalCA
from certpilot.store import Inventory
from certpilot.store import engine as engine_module
from certpilot.store import inventory as inventory_module
from certpilot.store.changes import canonical_codes, parse_codes

NOW = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA("Store Test", NOW - timedelta(days=365))


def infos(issued: Issued) -> tuple[CertInfo, ...]:
    """Leaf then intermediates, parsed from PEM as a file scanner would."""
    parsed = parse_pem_bundle(issued.chain_pem(), "test")
    assert all(isinstance(p, ParsedCert) for p in parsed)
    return tuple(p.info for p in parsed if isinstance(p, ParsedCert))


def issue(ca: LocalCA, name: str, *, days: float = 90, age: float = 1) -> tuple[CertInfo, ...]:
    """A chain whose leaf was issued ``age`` days before NOW and expires ``days`` after it."""
    start = NOW - timedelta(days=age)
    return infos(ca.issue([name], NOW, not_before=start, lifetime=timedelta(days=age + days)))


def observe(
    ref: str,
    chain: tuple[CertInfo, ...] = (),
    *,
    at: datetime = NOW,
    problems: tuple[ProblemCode, ...] = (),
    source: str = "tls",
    error: str | None = None,
    labels: dict[str, str] | None = None,
) -> Observation:
    return Observation(
        source=source,
        ref=ref,
        target=ref.split("//", 1)[-1].split("#", 1)[0],
        observed_at=at,
        problems=tuple(Problem(c, f"{c.value} at {ref}") for c in problems),
        leaf=chain[0] if chain else None,
        chain=chain,
        error=error,
        labels=labels or {},
    )


def kinds(events: list[Event]) -> list[tuple[EventKind, ProblemCode | None]]:
    return [(e.kind, e.code) for e in events]


@pytest.fixture
def inv(store_url: str) -> Iterator[Inventory]:
    """Every test of the store runs on a SQLite file and on PostgreSQL."""
    inventory = Inventory.open(store_url)
    yield inventory
    inventory.close()


# ----------------------------------------------------------------------- events on record


def test_first_record_adds_location_certificates_and_events(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "shop.test", days=10)
    leaf, intermediate = chain
    ref = "tls://shop.test:443#shop.test"

    events = inv.record([observe(ref, chain, problems=(ProblemCode.EXPIRING,))], now=NOW)

    assert kinds(events) == [
        (EventKind.LOCATION_ADDED, None),
        (EventKind.FIRST_SEEN, None),
        (EventKind.PROBLEM_RAISED, ProblemCode.EXPIRING),
    ]
    assert [e.id for e in events] == [1, 2, 3]
    assert all(e.at == NOW and e.ref == ref for e in events)
    assert all(e.fingerprint_sha256 == leaf.fingerprint_sha256 for e in events)
    assert leaf.serial in events[1].detail
    assert events[2].detail == f"expiring at {ref}"
    # What was returned is what was stored.
    assert inv.events() == events
    # The intermediate the endpoint sent is stored too.
    assert inv.certificate_count() == 2
    assert inv.certificate_der(leaf.fingerprint_sha256) == leaf.der
    assert inv.certificate_der(intermediate.fingerprint_sha256.upper()) == intermediate.der
    assert inv.certificate_der("00" * 32) is None

    item = inv.item(ref)
    assert item is not None
    assert item.fingerprint_sha256 == leaf.fingerprint_sha256
    assert item.serial == leaf.serial
    assert item.subject == leaf.subject and item.subject_cn == "shop.test"
    assert item.issuer_cn == leaf.issuer_cn
    assert item.sans == ("shop.test",)
    assert item.not_before == leaf.not_before and item.not_after == leaf.not_after
    assert (item.key_type, item.key_bits) == ("EC", 256)
    assert item.signature_algorithm == leaf.signature_algorithm
    assert item.problems == (ProblemCode.EXPIRING,)
    assert item.first_seen == item.last_scanned == NOW
    assert inv.item("tls://nowhere:443#nowhere") is None


def test_recording_the_same_state_again_yields_no_events(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "same.test")
    ref = "tls://same.test:443#same.test"
    problems = (ProblemCode.HOSTNAME_MISMATCH, ProblemCode.EXPIRING)
    inv.record([observe(ref, chain, problems=problems)], now=NOW)
    later = NOW + timedelta(minutes=5)

    # Same problems in another order are the same set.
    assert inv.record([observe(ref, chain, at=later, problems=problems[::-1])], now=later) == []
    # And again in a new hour.
    hour = NOW + timedelta(hours=1)
    assert inv.record([observe(ref, chain, at=hour, problems=problems)], now=hour) == []

    item = inv.item(ref)
    assert item is not None
    assert item.first_seen == NOW and item.last_scanned == hour
    assert item.problems == (ProblemCode.HOSTNAME_MISMATCH, ProblemCode.EXPIRING)
    assert len(inv.events()) == 4  # added, first seen, two raised: all from the first record


def test_a_changed_certificate_is_a_new_certificate_event(inv: Inventory, ca: LocalCA) -> None:
    old = issue(ca, "renew.test", days=5)
    new = issue(ca, "renew.test", days=90)
    ref = "tls://renew.test:443#renew.test"
    inv.record([observe(ref, old, problems=(ProblemCode.EXPIRING,))], now=NOW)
    later = NOW + timedelta(hours=2)

    events = inv.record([observe(ref, new, at=later)], now=later)

    assert kinds(events) == [
        (EventKind.FIRST_SEEN, None),
        (EventKind.NEW_CERTIFICATE, None),
        (EventKind.PROBLEM_CLEARED, ProblemCode.EXPIRING),
    ]
    changed = events[1]
    assert changed.fingerprint_sha256 == new[0].fingerprint_sha256
    assert old[0].fingerprint_sha256 in changed.detail
    assert new[0].fingerprint_sha256 in changed.detail
    assert old[0].serial in changed.detail and new[0].serial in changed.detail
    assert [e.id for e in events] == [4, 5, 6]

    item = inv.item(ref)
    assert item is not None
    assert item.fingerprint_sha256 == new[0].fingerprint_sha256
    assert item.not_after == new[0].not_after
    assert item.problems == ()
    # Both leaves and the one shared intermediate.
    assert inv.certificate_count() == 3


def test_problems_raised_and_cleared_per_code(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "flap.test")
    ref = "tls://flap.test:443#flap.test"
    inv.record([observe(ref, chain, problems=(ProblemCode.EXPIRING,))], now=NOW)

    t1 = NOW + timedelta(minutes=1)
    events = inv.record(
        [observe(ref, chain, at=t1, problems=(ProblemCode.HOSTNAME_MISMATCH,))], now=t1
    )
    assert kinds(events) == [
        (EventKind.PROBLEM_RAISED, ProblemCode.HOSTNAME_MISMATCH),
        (EventKind.PROBLEM_CLEARED, ProblemCode.EXPIRING),
    ]
    assert events[0].detail == f"hostname_mismatch at {ref}"

    t2 = NOW + timedelta(minutes=2)
    events = inv.record([observe(ref, chain, at=t2)], now=t2)
    assert kinds(events) == [(EventKind.PROBLEM_CLEARED, ProblemCode.HOSTNAME_MISMATCH)]

    assert [e.kind for e in inv.events(ref=ref)].count(EventKind.PROBLEM_CLEARED) == 2
    item = inv.item(ref)
    assert item is not None and item.problems == ()


def test_connection_refused_has_no_certificate_and_comes_back(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "down.test")
    ref = "tls://down.test:443#down.test"
    inv.record([observe(ref, chain)], now=NOW)

    t1 = NOW + timedelta(minutes=1)
    refused = observe(
        ref, at=t1, problems=(ProblemCode.CONNECTION_REFUSED,), error="connection refused"
    )
    events = inv.record([refused], now=t1)
    assert kinds(events) == [(EventKind.PROBLEM_RAISED, ProblemCode.CONNECTION_REFUSED)]
    assert events[0].fingerprint_sha256 is None
    item = inv.item(ref)
    assert item is not None
    assert item.fingerprint_sha256 is None and item.not_after is None and item.serial is None
    assert item.error == "connection refused"
    assert item.problems == (ProblemCode.CONNECTION_REFUSED,)

    # Back with the certificate it had before it went down: not a certificate change.
    t2 = NOW + timedelta(minutes=2)
    events = inv.record([observe(ref, chain, at=t2)], now=t2)
    assert kinds(events) == [(EventKind.PROBLEM_CLEARED, ProblemCode.CONNECTION_REFUSED)]
    item = inv.item(ref)
    assert item is not None and item.fingerprint_sha256 == chain[0].fingerprint_sha256
    assert item.error is None


def test_a_location_never_reached_is_still_inventoried(inv: Inventory) -> None:
    ref = "tls://never.test:443#never.test"
    events = inv.record(
        [observe(ref, problems=(ProblemCode.DNS_ERROR,), error="no such host")], now=NOW
    )
    assert kinds(events) == [
        (EventKind.LOCATION_ADDED, None),
        (EventKind.PROBLEM_RAISED, ProblemCode.DNS_ERROR),
    ]
    assert inv.certificate_count() == 0
    [item] = inv.items(now=NOW)
    assert item.ref == ref and item.fingerprint_sha256 is None and item.sans == ()


def test_one_new_fingerprint_is_first_seen_once_per_batch(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "shared.test")
    batch = [observe(f"tls://10.0.0.{i}:443#shared.test", chain) for i in range(3)]
    events = inv.record(batch, now=NOW)
    assert [e.kind for e in events].count(EventKind.FIRST_SEEN) == 1
    assert [e.kind for e in events].count(EventKind.LOCATION_ADDED) == 3
    assert inv.certificate_count() == 2


def test_the_last_observation_of_a_ref_in_a_batch_wins(inv: Inventory, ca: LocalCA) -> None:
    first, second = issue(ca, "dup.test"), issue(ca, "dup.test")
    ref = "tls://dup.test:443#dup.test"
    events = inv.record([observe(ref, first), observe(ref, second)], now=NOW)
    assert kinds(events) == [(EventKind.LOCATION_ADDED, None), (EventKind.FIRST_SEEN, None)]
    assert events[1].fingerprint_sha256 == second[0].fingerprint_sha256
    item = inv.item(ref)
    assert item is not None and item.fingerprint_sha256 == second[0].fingerprint_sha256
    assert inv.record([], now=NOW) == []


def test_labels_target_and_error_follow_the_latest_scan(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "labels.test")
    ref = "file:///etc/ssl/labels.pem#0"
    inv.record([observe(ref, chain, source="file", labels={"team": "a"})], now=NOW)
    t1 = NOW + timedelta(minutes=1)
    relabelled = observe(ref, chain, at=t1, source="file", labels={"team": "b"})
    assert inv.record([relabelled], now=t1) == []
    item = inv.item(ref)
    assert item is not None
    assert dict(item.labels) == {"team": "b"}
    assert item.target == "/etc/ssl/labels.pem"
    assert item.source == "file"


def test_a_new_error_message_alone_is_stored_without_events(inv: Inventory) -> None:
    ref = "tls://flaky.test:443#flaky.test"
    problem = (ProblemCode.TIMEOUT,)
    inv.record([observe(ref, problems=problem, error="timed out after 5.0 s")], now=NOW)
    later = NOW + timedelta(minutes=5)
    again = observe(ref, at=later, problems=problem, error="timed out after 5.1 s")
    assert inv.record([again], now=later) == []
    item = inv.item(ref)
    assert item is not None
    assert item.error == "timed out after 5.1 s" and item.last_scanned == later


def test_the_state_digest_covers_every_location_column() -> None:
    """White-box guard: a steady location (equal state digest) writes only its scan time, so a
    column added to ``location`` must go into ``inventory._state_digest`` too, or scans would
    never update it. Then add it to the first set here."""
    from certpilot.store.tables import LOCATION

    in_digest = {
        "source",
        "target",
        "fingerprint_sha256",  # through the chain and the leaf flag
        "chain",
        "problems",
        "problem_details",
        "error",
        "labels",
    }
    key_times_and_history = {
        "ref",
        "first_seen",
        "last_scanned",
        "last_changed",
        "run_id",
        "last_fingerprint_sha256",
    }
    assert set(LOCATION.c.keys()) == in_digest | key_times_and_history


def sightings(inv: Inventory, ref: str) -> dict[str, tuple[datetime, datetime]]:
    """The sightings of ``ref`` as ``{fingerprint: (first_seen, last_seen)}``."""
    return {s.fingerprint_sha256: (s.first_seen, s.last_seen) for s in inv.sightings(ref=ref)}


def cert_last_seen(inv: Inventory, fingerprint: str) -> datetime:
    seen = inv.certificate_seen(fingerprint)
    assert seen is not None
    return seen[1]


def test_sightings_keep_when_each_certificate_was_presented(inv: Inventory, ca: LocalCA) -> None:
    old = issue(ca, "sight.test")
    new = issue(ca, "sight.test")
    leaf, intermediate = old[0].fingerprint_sha256, old[1].fingerprint_sha256
    renewed = new[0].fingerprint_sha256
    ref = "tls://sight.test:443#sight.test"
    t = [NOW + timedelta(minutes=m) for m in (0, 5, 10, 15, 20)]

    inv.record([observe(ref, old, at=t[0])], now=t[0])
    inv.record([observe(ref, old, at=t[1])], now=t[1])  # steady: both sightings extended
    assert sightings(inv, ref) == {leaf: (t[0], t[1]), intermediate: (t[0], t[1])}

    refused = observe(ref, at=t[2], problems=(ProblemCode.CONNECTION_REFUSED,))
    inv.record([refused], now=t[2])  # nothing presented: nothing extended
    assert sightings(inv, ref) == {leaf: (t[0], t[1]), intermediate: (t[0], t[1])}

    inv.record([observe(ref, old, at=t[3])], now=t[3])  # back
    inv.record([observe(ref, new, at=t[4])], now=t[4])  # renewed: the old leaf stays at t3
    assert sightings(inv, ref) == {
        leaf: (t[0], t[3]),
        intermediate: (t[0], t[4]),
        renewed: (t[4], t[4]),
    }
    item = inv.item(ref)
    assert item is not None and item.last_scanned == t[4]


def test_sightings_say_which_are_current(inv: Inventory, ca: LocalCA) -> None:
    old = issue(ca, "where.test")
    new = issue(ca, "where.test")
    leaf, intermediate = old[0].fingerprint_sha256, old[1].fingerprint_sha256
    a, b = "tls://a.where.test:443#where.test", "tls://b.where.test:443#where.test"
    t = [NOW + timedelta(minutes=m) for m in (0, 5, 10)]
    inv.record([observe(a, old, at=t[0]), observe(b, old, at=t[0])], now=t[0])
    inv.record([observe(a, old, at=t[1]), observe(b, new, at=t[1])], now=t[1])
    inv.record([observe(a, old, at=t[2]), observe(b, new, at=t[2])], now=t[2])

    # "Where is this certificate deployed?": only a still presents the old leaf.
    where = inv.sightings(fingerprint_sha256=leaf.upper())
    assert [(s.ref, s.current, s.first_seen, s.last_seen) for s in where] == [
        (a, True, t[0], t[2]),
        (b, False, t[0], t[0]),
    ]
    assert [(s.ref, s.current) for s in inv.sightings(fingerprint_sha256=intermediate)] == [
        (a, True),
        (b, True),
    ]
    [one] = inv.sightings(ref=b, fingerprint_sha256=new[0].fingerprint_sha256)
    assert (one.first_seen, one.last_seen, one.current) == (t[1], t[2], True)
    assert one.to_dict()["current"] is True
    assert len(inv.sightings()) == 5
    assert inv.sightings(ref="tls://nowhere:443#x") == []


def test_certificate_last_seen_is_its_latest_presentation(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "seen.test")
    renewed = issue(ca, "seen.test")
    fp = chain[0].fingerprint_sha256
    ref = "tls://seen.test:443#seen.test"
    start = datetime(2025, 6, 1, 12, 10, tzinfo=UTC)
    for minutes in (0, 20, 40):  # exact at every scan, without rewriting the certificate
        at = start + timedelta(minutes=minutes)
        inv.record([observe(ref, chain, at=at)], now=at)
        assert inv.certificate_seen(fp) == (start, at)
    # A location that starts presenting it brings it up to date at once.
    other = start + timedelta(minutes=70)
    inv.record([observe("tls://other.test:443#seen.test", chain, at=other)], now=other)
    assert cert_last_seen(inv, fp) == other
    # Replaced everywhere: it stays at the last scan that presented it.
    later = start + timedelta(minutes=90)
    inv.record(
        [
            observe(ref, renewed, at=later),
            observe("tls://other.test:443#seen.test", renewed, at=later),
        ],
        now=later,
    )
    assert cert_last_seen(inv, fp) == other
    assert cert_last_seen(inv, renewed[0].fingerprint_sha256) == later
    assert inv.certificate_seen("00" * 32) is None


def last_changed(inv: Inventory, ref: str) -> datetime:
    """White-box: location.last_changed (no read API for it yet)."""
    from certpilot.store.tables import LOCATION

    with inv._engine.connect() as conn:
        query = LOCATION.select().where(LOCATION.c.ref == ref)
        return conn.execute(query).one().last_changed  # type: ignore[no-any-return]


def test_last_changed_moves_with_the_leaf_or_the_problems_only(inv: Inventory, ca: LocalCA) -> None:
    leaf, intermediate = issue(ca, "moves.test")
    other_intermediate = issue(LocalCA("Store Test 2", NOW - timedelta(days=365)), "x.test")[1]
    assert other_intermediate.fingerprint_sha256 != intermediate.fingerprint_sha256
    ref = "tls://moves.test:443#moves.test"
    t = [NOW + timedelta(minutes=m) for m in range(5)]
    inv.record([observe(ref, (leaf, intermediate), at=t[0])], now=t[0])
    inv.record([observe(ref, (leaf, intermediate), at=t[1])], now=t[1])  # steady
    assert last_changed(inv, ref) == t[0]
    # Another intermediate sent (a chain-only change): its sightings change, not last_changed.
    inv.record([observe(ref, (leaf, other_intermediate), at=t[2])], now=t[2])
    assert last_changed(inv, ref) == t[0]
    assert sightings(inv, ref)[intermediate.fingerprint_sha256] == (t[0], t[1])
    expiring = observe(ref, (leaf, other_intermediate), at=t[3], problems=(ProblemCode.EXPIRING,))
    inv.record([expiring], now=t[3])
    assert last_changed(inv, ref) == t[3]
    item = inv.item(ref)
    assert item is not None and item.last_scanned == t[3] and item.first_seen == t[0]


def test_locations_stored_before_location_scan_existed_are_taken_over(
    tmp_path: Path, ca: LocalCA
) -> None:
    url = f"sqlite:///{tmp_path / 'older.db'}"
    chain = issue(ca, "older.test")
    ref = "tls://older.test:443#older.test"
    with Inventory.open(url) as first:
        first.record([observe(ref, chain, problems=(ProblemCode.EXPIRING,))], now=NOW)
    # As an older certpilot left it: locations, no scan rows, no schema version (it predates
    # migrations; the first one creates the missing table, the open backfills its rows).
    raw = sqlite3.connect(tmp_path / "older.db")
    raw.execute("DROP TABLE location_scan")
    raw.execute("DROP TABLE alembic_version")
    raw.commit()
    raw.close()
    with Inventory.open(url) as again:
        item = again.item(ref)
        assert item is not None and item.last_scanned == NOW
        later = NOW + timedelta(minutes=5)
        same = observe(ref, chain, at=later, problems=(ProblemCode.EXPIRING,))
        assert again.record([same], now=later) == []
        item = again.item(ref)
        assert item is not None and item.last_scanned == later and item.first_seen == NOW
        assert sightings(again, ref)[chain[0].fingerprint_sha256] == (NOW, later)
        assert again.record([observe(ref, chain, at=later)], now=later) == [again.events()[-1]]
        assert again.events()[-1].kind == EventKind.PROBLEM_CLEARED


def test_wal_is_checkpointed_in_the_background(tmp_path: Path, ca: LocalCA) -> None:
    path = tmp_path / "checkpointed.db"
    chain = issue(ca, "wal.test")
    with Inventory.open(f"sqlite:///{path}") as inventory:
        inventory.record([observe("tls://wal.test:443#wal.test", chain)], now=NOW)
        assert inventory.wait_checkpoint() >= 0.0
        # The database file alone (without its WAL) now holds the committed location.
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        other = sqlite3.connect(copy)
        try:
            assert other.execute("SELECT count(*) FROM location").fetchone() == (1,)
        finally:
            other.close()


# ---------------------------------------------------------------------------------- items


def test_items_filters_and_order(inv: Inventory, ca: LocalCA) -> None:
    expired = issue(ca, "expired.test", days=-3, age=90)
    soon = issue(ca, "soon.test", days=5)
    healthy = issue(ca, "healthy.test", days=80)
    chain_only = issue(ca, "chain.test", days=60)
    filed = issue(ca, "file.test", days=200)
    batch = [
        observe("tls://soon.test:443#soon.test", soon, problems=(ProblemCode.EXPIRING,)),
        observe("tls://refused.test:443#refused.test", problems=(ProblemCode.CONNECTION_REFUSED,)),
        observe("tls://healthy.test:443#healthy.test", healthy),
        observe("tls://expired.test:443#expired.test", expired, problems=(ProblemCode.EXPIRED,)),
        observe(
            "tls://chain.test:443#chain.test", chain_only, problems=(ProblemCode.CHAIN_EXPIRING,)
        ),
        observe("file:///etc/ssl/file.pem#0", filed, source="file"),
    ]
    inv.record(batch, now=NOW)

    everything = inv.items(now=NOW)
    assert [i.ref for i in everything] == [
        "tls://expired.test:443#expired.test",
        "tls://soon.test:443#soon.test",
        "tls://chain.test:443#chain.test",
        "tls://healthy.test:443#healthy.test",
        "file:///etc/ssl/file.pem#0",
        "tls://refused.test:443#refused.test",  # no certificate: last
    ]

    within_week = inv.items(now=NOW, expiring_days=7)
    assert [i.subject_cn for i in within_week] == ["expired.test", "soon.test"]
    assert [i.subject_cn for i in inv.items(now=NOW, expiring_days=0)] == ["expired.test"]

    assert [i.subject_cn for i in inv.items(now=NOW, problem=ProblemCode.EXPIRED)] == [
        "expired.test"
    ]
    # "expiring" must not match "chain_expiring".
    assert [i.subject_cn for i in inv.items(now=NOW, problem=ProblemCode.EXPIRING)] == ["soon.test"]
    assert [i.subject_cn for i in inv.items(now=NOW, problem=ProblemCode.CHAIN_EXPIRING)] == [
        "chain.test"
    ]
    assert inv.items(now=NOW, problem=ProblemCode.REVOKED) == []

    assert [i.ref for i in inv.items(now=NOW, source="file")] == ["file:///etc/ssl/file.pem#0"]
    assert [
        i.subject_cn
        for i in inv.items(now=NOW, source="tls", expiring_days=30, problem=ProblemCode.EXPIRING)
    ] == ["soon.test"]

    soon_item = within_week[1]
    days = soon_item.days_left(NOW)
    assert days is not None and 4.99 < days < 5.01


# ---------------------------------------------------------------------------- datetimes


def test_aware_datetimes_round_trip_as_utc(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "tz.test")
    paris = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 0, 0, 654321, tzinfo=paris)  # 12:00:00.654321 UTC
    ref = "tls://tz.test:443#tz.test"
    events = inv.record([observe(ref, chain, at=local)], now=local)

    item = inv.item(ref)
    assert item is not None
    for value in (item.first_seen, item.last_scanned, item.not_before, item.not_after):
        assert value is not None and value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
    assert item.first_seen == local
    assert item.first_seen.microsecond == 654321
    assert item.first_seen.hour == 12
    stored = inv.events()
    assert stored == events
    assert stored[0].at == local and stored[0].at.utcoffset() == timedelta(0)

    run = inv.start_run("tls", 3, local)
    [scan] = inv.runs()
    assert scan.id == run and scan.started_at == local and scan.started_at.tzinfo is not None


def test_naive_datetimes_are_refused(inv: Inventory, ca: LocalCA) -> None:
    chain = issue(ca, "naive.test")
    naive = datetime(2025, 6, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        inv.record([observe("tls://naive.test:443#naive.test", chain)], now=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        inv.record([observe("tls://naive.test:443#naive.test", chain, at=naive)], now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        inv.items(now=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        inv.start_run("tls", 1, naive)
    assert inv.items(now=NOW) == []


# ------------------------------------------------------------------ durability and errors


def test_a_file_database_keeps_everything_when_reopened(tmp_path: Path, ca: LocalCA) -> None:
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    chain = issue(ca, "kept.test", days=20)
    ref = "tls://kept.test:443#kept.test"
    with Inventory.open(url) as first:
        run = first.start_run("tls", 1, NOW)
        events = first.record([observe(ref, chain)], now=NOW, run_id=run)
        first.finish_run(run, NOW + timedelta(seconds=3), observations=1, problems=0)

    with Inventory.open(url) as again:
        again.ping()
        assert again.events() == events
        assert [i.ref for i in again.items(now=NOW)] == [ref]
        assert again.certificate_count() == 2
        [scan] = again.runs()
        assert scan.id == run and scan.finished_at == NOW + timedelta(seconds=3)
        assert (scan.targets, scan.observations, scan.problems) == (1, 1, 0)
        # Event ids continue where they stopped.
        later = NOW + timedelta(days=1)
        more = again.record([observe(ref, issue(ca, "kept.test"), at=later)], now=later)
        assert more and more[0].id == events[-1].id + 1


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "pragmas.db"
    # White-box: the connection settings the store's guarantees rest on.
    with Inventory.open(f"sqlite:///{path}") as inventory, inventory._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_a_locked_database_is_a_store_error_and_readers_are_not_blocked(
    tmp_path: Path, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "locked.db"
    chain = issue(ca, "locked.test")
    ref = "tls://locked.test:443#locked.test"
    with Inventory.open(f"sqlite:///{path}") as inventory:
        inventory.record([observe(ref, chain)], now=NOW)
        other = sqlite3.connect(path, isolation_level=None)  # another process's writer
        try:
            other.execute("BEGIN IMMEDIATE")
            later = NOW + timedelta(minutes=1)
            with pytest.raises(StoreError, match="database is locked"):
                inventory.record([observe(ref, chain, at=later)], now=later)
            # WAL: reading goes on while someone else writes.
            assert [i.ref for i in inventory.items(now=NOW)] == [ref]
            inventory.ping()
            other.execute("ROLLBACK")
            assert inventory.record([observe(ref, chain, at=later)], now=later) == []
        finally:
            other.close()
        item = inventory.item(ref)
        assert item is not None and item.last_scanned == NOW + timedelta(minutes=1)


def test_missing_directory_is_a_one_line_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'inventory.db'}"
    with pytest.raises(StoreError) as caught:
        Inventory.open(url)
    error = caught.value
    assert error.url == url
    assert "does not exist" in error.message
    assert str(tmp_path / "no" / "such" / "dir") in error.message
    assert "\n" not in str(error)


def test_a_directory_in_place_of_the_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        Inventory.open(f"sqlite:///{tmp_path}")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the pages you are looking for\n" * 200)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Inventory.open(f"sqlite:///{path}")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "not a database URL"),
        ("mysql://user@localhost/db", "unsupported database 'mysql'"),
        ("sqlite+nosuchdriver:///x.db", "no SQLAlchemy driver"),
    ],
)
def test_unusable_urls_are_store_errors(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected):
        Inventory.open(url)


def test_a_password_never_appears_in_a_store_error() -> None:
    # Port 1 on loopback refuses at once; without psycopg installed the driver is missing.
    # Either way the error must not show the password.
    with pytest.raises(StoreError) as caught:
        Inventory.open("postgresql+psycopg://certpilot:s3cr3t-pw@127.0.0.1:1/inventory")
    assert "s3cr3t-pw" not in str(caught.value)
    assert "s3cr3t-pw" not in caught.value.url


def test_a_failed_record_stores_nothing(
    inv: Inventory, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Also a "large" batch, to check the garbage collector is resumed after a failure.
    monkeypatch.setattr(inventory_module, "_PAUSE_GC_FROM", 2)
    chain = issue(ca, "atomic.test")
    batch = [observe(f"tls://atomic{i}.test:443#atomic.test", chain) for i in range(3)]
    # A scan run that does not exist violates a foreign key at the location write, after the
    # certificates went in: the whole batch must roll back.
    with pytest.raises(StoreError):
        inv.record(batch, now=NOW, run_id=999)
    assert gc.isenabled()
    assert inv.items(now=NOW) == []
    assert inv.events() == []
    assert inv.certificate_count() == 0
    # And the store is still usable.
    assert len(inv.record(batch, now=NOW)) == 3 + 1


def test_scan_runs(inv: Inventory) -> None:
    first = inv.start_run("tls", 10, NOW)
    second = inv.start_run("file", 2, NOW + timedelta(minutes=1))
    inv.finish_run(first, NOW + timedelta(seconds=30), observations=10, problems=2)
    runs = inv.runs()
    assert [r.id for r in runs] == [second, first]
    assert runs[0].finished_at is None and runs[0].source == "file"
    assert runs[1].finished_at == NOW + timedelta(seconds=30)
    assert (runs[1].observations, runs[1].problems) == (10, 2)
    assert [r.id for r in inv.runs(limit=1)] == [second]
    with pytest.raises(ValueError, match="no scan run"):
        inv.finish_run(12345, NOW, 0, 0)


def test_events_page_by_id_and_filter_by_ref(inv: Inventory, ca: LocalCA) -> None:
    batch = [
        observe(f"tls://page{i}.test:443#page{i}.test", issue(ca, f"page{i}.test"))
        for i in range(4)
    ]
    events = inv.record(batch, now=NOW)
    assert len(events) == 8
    assert inv.events(limit=3) == events[:3]
    assert inv.events(since_id=events[2].id, limit=3) == events[3:6]
    assert inv.events(since_id=events[-1].id) == []
    only = inv.events(ref=batch[2].ref)
    assert [e.ref for e in only] == [batch[2].ref] * 2


def test_in_memory_store_is_shared_across_threads(ca: LocalCA) -> None:
    chain = issue(ca, "memory.test")
    with Inventory.open("sqlite://") as inventory:
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                inventory.record([observe(f"tls://m{i}.test:443#memory.test", chain)], now=NOW)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(inventory.items(now=NOW)) == 4
        assert inventory.certificate_count() == 2
        inventory.ping()


# ------------------------------------------------------------------------------ in bulk


def synthetic(leaf: CertInfo, i: int, generation: int = 0) -> CertInfo:
    """A distinct certificate built from a real one (only the facts the store keys on)."""
    return replace(
        leaf,
        fingerprint_sha256=f"{generation:04x}{i:060x}",
        serial=format((generation << 32) + i + 1, "x"),
        subject_cn=f"bulk{i}.test",
        not_after=leaf.not_after + timedelta(minutes=i),
    )


@pytest.mark.parametrize("chunk", [5000, 300])
def test_bulk_record_of_2000_locations(
    inv: Inventory, ca: LocalCA, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 forces several chunks for the IN lists and executemany batches.
    monkeypatch.setattr(inventory_module, "CHUNK", chunk)
    leaf, intermediate = issue(ca, "bulk.test", days=40)
    n = 2000

    def batch(at: datetime, renewed: frozenset[int] = frozenset()) -> list[Observation]:
        out = []
        for i in range(n):
            gen = 1 if i in renewed else 0
            problems = (ProblemCode.EXPIRING,) if i % 10 == 0 and gen == 0 else ()
            out.append(
                observe(
                    f"tls://bulk{i}.test:443#bulk{i}.test",
                    (synthetic(leaf, i, gen), intermediate),
                    at=at,
                    problems=problems,
                )
            )
        return out

    events = inv.record(batch(NOW), now=NOW)
    counts = {k: [e.kind for e in events].count(k) for k in EventKind}
    assert counts == {
        EventKind.LOCATION_ADDED: n,
        EventKind.FIRST_SEEN: n,
        EventKind.PROBLEM_RAISED: n // 10,
        EventKind.PROBLEM_CLEARED: 0,
        EventKind.NEW_CERTIFICATE: 0,
        EventKind.LOCATION_REMOVED: 0,
    }
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert inv.certificate_count() == n + 1
    items = inv.items(now=NOW)
    assert len(items) == n
    assert [i.subject_cn for i in items[:2]] == ["bulk0.test", "bulk1.test"]  # not_after order
    assert len(inv.items(now=NOW, problem=ProblemCode.EXPIRING)) == n // 10

    # The same state again: nothing happened.
    t1 = NOW + timedelta(minutes=5)
    assert inv.record(batch(t1), now=t1) == []

    # 10% renewed (the ones with a problem), in a new hour.
    t2 = NOW + timedelta(hours=1)
    renewed = frozenset(range(0, n, 10))
    events = inv.record(batch(t2, renewed), now=t2)
    counts = {k: [e.kind for e in events].count(k) for k in EventKind}
    assert counts == {
        EventKind.LOCATION_ADDED: 0,
        EventKind.FIRST_SEEN: n // 10,
        EventKind.PROBLEM_RAISED: 0,
        EventKind.PROBLEM_CLEARED: n // 10,
        EventKind.NEW_CERTIFICATE: n // 10,
        EventKind.LOCATION_REMOVED: 0,
    }
    assert inv.certificate_count() == n + 1 + n // 10
    assert inv.items(now=NOW, problem=ProblemCode.EXPIRING) == []
    assert all(i.last_scanned == t2 for i in inv.items(now=NOW))

    # A small batch (a few refs of a large table) reads its previous state with IN lists.
    t3 = NOW + timedelta(hours=2)
    everything = batch(t3, renewed)
    assert inv.record(everything[:5], now=t3) == []
    touched, untouched = inv.item(everything[0].ref), inv.item(everything[6].ref)
    assert touched is not None and touched.last_scanned == t3
    assert untouched is not None and untouched.last_scanned == t2


# ------------------------------------------------------------------------- pure helpers


def test_problem_sets_have_one_canonical_stored_form() -> None:
    a = [Problem(ProblemCode.WEAK_KEY, "a"), Problem(ProblemCode.EXPIRED, "b")]
    b = [Problem(ProblemCode.EXPIRED, "c"), Problem(ProblemCode.WEAK_KEY, "d")] * 2
    assert canonical_codes(a) == canonical_codes(b) == ["expired", "weak_key"]
    assert parse_codes('["expired","from_the_future","weak_key"]') == [
        ProblemCode.EXPIRED,
        ProblemCode.WEAK_KEY,
    ]
    assert parse_codes("not json") == []
    assert parse_codes(["tls_error"]) == [ProblemCode.TLS_ERROR]


def test_a_large_read_or_write_drops_its_pages_without_another_transaction(
    tmp_path: Path,
) -> None:
    """``_read(large=True)`` / ``_write(large=True)`` (a scrape's whole-inventory read, a scan
    chunk's record) release the SQLite connection's page cache on the driver's connection: no
    second transaction, so no extra ``BEGIN IMMEDIATE`` and write lock after a write."""
    from sqlalchemy import event

    inv = Inventory.open(f"sqlite:///{tmp_path / 'pages.db'}")
    try:
        sent: list[str] = []
        event.listen(
            inv._engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: sent.append(stmt)
        )
        with inv._write(large=True):
            pass
        with inv._read(large=True):
            pass
        assert sent == ["BEGIN IMMEDIATE", "BEGIN"]
        # And every connection's page cache is bounded (engine.CACHE_KIB), writers' too.
        conn = inv._engine.raw_connection()
        try:
            used = conn.execute("PRAGMA cache_size").fetchone()  # type: ignore[attr-defined]
            assert used == (-engine_module.CACHE_KIB,)
        finally:
            conn.close()
    finally:
        inv.close()
