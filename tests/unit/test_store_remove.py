"""Inventory.remove: forgetting locations, on real SQLite files with certificates from the
embedded CA (helpers as in test_store.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from certpilot.domain.clock import FixedClock
from certpilot.domain.inventory import EventKind
from certpilot.domain.model import Observation
from certpilot.domain.x509 import CertInfo, ParsedCert, parse_pem_bundle
from certpilot.localca import LocalCA
from certpilot.obs import Metrics
from certpilot.store import Inventory
from certpilot.store.tables import LOCATION_SCAN, SIGHTING

NOW = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
KEPT = "k8s://c1/web/secret/kept#tls.crt"
GONE = "k8s://c1/web/secret/gone#tls.crt"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA("Remove Test", NOW - timedelta(days=365))


@pytest.fixture
def inv(store_url: str) -> Iterator[Inventory]:
    inventory = Inventory.open(store_url)
    yield inventory
    inventory.close()


def chain(ca: LocalCA, name: str) -> tuple[CertInfo, ...]:
    issued = ca.issue([name], NOW, not_before=NOW - timedelta(days=1))
    parsed = parse_pem_bundle(issued.chain_pem(), "test")
    return tuple(p.info for p in parsed if isinstance(p, ParsedCert))


def observe(ref: str, certs: tuple[CertInfo, ...], at: datetime) -> Observation:
    return Observation(
        source="k8s",
        ref=ref,
        target="k8s:c1",
        observed_at=at,
        leaf=certs[0],
        chain=certs,
    )


def rows(inv: Inventory, ref: str) -> tuple[int, int]:
    """White-box: the location_scan and sighting rows left for ``ref``."""
    with inv._engine.connect() as conn:
        scans = conn.execute(LOCATION_SCAN.select().where(LOCATION_SCAN.c.ref == ref)).all()
        sights = conn.execute(SIGHTING.select().where(SIGHTING.c.ref == ref)).all()
    return len(scans), len(sights)


def test_remove_forgets_one_location_and_says_so(inv: Inventory, ca: LocalCA) -> None:
    kept, gone = chain(ca, "kept.test"), chain(ca, "gone.test")
    t0, t1, t2 = NOW, NOW + timedelta(minutes=5), NOW + timedelta(minutes=10)
    inv.record([observe(KEPT, kept, t0), observe(GONE, gone, t0)], now=t0)
    inv.record([observe(KEPT, kept, t1), observe(GONE, gone, t1)], now=t1)  # steady
    registry = CollectorRegistry()
    Metrics(registry, inv, FixedClock(t2), scrape_cache_seconds=0)
    assert registry.get_sample_value("certpilot_item_info", {"ref": GONE, "owner": ""}) == 1.0

    events = inv.remove([GONE, "k8s://c1/web/secret/never#tls.crt", GONE], now=t2)

    assert [(e.kind, e.ref, e.fingerprint_sha256) for e in events] == [
        (EventKind.LOCATION_REMOVED, GONE, gone[0].fingerprint_sha256)
    ]
    assert events[0].at == t2
    assert events[0].to_dict()["kind"] == "location_removed"
    assert inv.events(since_id=events[0].id - 1) == events  # what was returned was stored
    assert [i.ref for i in inv.items(now=t2)] == [KEPT]
    assert inv.item(GONE) is None
    # Its sightings stay, closed at its last scan: what it presented is still answerable.
    assert rows(inv, GONE) == (0, 2)
    assert {
        (s.fingerprint_sha256, s.first_seen, s.last_seen, s.current)
        for s in inv.sightings(ref=GONE)
    } == {(c.fingerprint_sha256, t0, t1, False) for c in gone}
    # The certificates stay, last presented at the removed location's last scan.
    assert inv.certificate_der(gone[0].fingerprint_sha256) == gone[0].der
    assert inv.certificate_seen(gone[0].fingerprint_sha256) == (t0, t1)
    # The intermediate is still presented by the other location: still current there.
    assert inv.certificate_seen(gone[1].fingerprint_sha256) == (t0, t1)
    assert [s.current for s in inv.sightings(ref=KEPT)] == [True, True]
    # /metrics no longer exports it.
    assert registry.get_sample_value("certpilot_item_info", {"ref": GONE, "owner": ""}) is None
    assert registry.get_sample_value("certpilot_item_info", {"ref": KEPT, "owner": ""}) == 1.0
    assert registry.get_sample_value("certpilot_inventory_items", {"source": "k8s"}) == 1.0
    # Removing again (or nothing) is a no-op.
    assert inv.remove([GONE], now=t2) == []
    assert inv.remove([], now=t2) == []


def test_a_removed_ref_recorded_again_is_a_new_location(inv: Inventory, ca: LocalCA) -> None:
    certs = chain(ca, "back.test")
    t0, t1, t2 = NOW, NOW + timedelta(minutes=5), NOW + timedelta(minutes=10)
    inv.record([observe(GONE, certs, t0)], now=t0)
    inv.remove([GONE], now=t1, run_id=None)

    events = inv.record([observe(GONE, certs, t2)], now=t2)

    # A new location, holding a certificate already known (no first_seen event).
    assert [e.kind for e in events] == [EventKind.LOCATION_ADDED]
    item = inv.item(GONE)
    assert item is not None and item.first_seen == item.last_scanned == t2
    # The sighting kept from before the removal is current again: presented since t0.
    assert {(s.first_seen, s.last_seen, s.current) for s in inv.sightings(ref=GONE)} == {
        (t0, t2, True)
    }
    assert inv.certificate_seen(certs[0].fingerprint_sha256) == (t0, t2)
    assert [e.kind for e in inv.events(ref=GONE)] == [
        EventKind.LOCATION_ADDED,
        EventKind.FIRST_SEEN,
        EventKind.LOCATION_REMOVED,
        EventKind.LOCATION_ADDED,
    ]


def test_remove_refuses_a_naive_time(inv: Inventory) -> None:
    with pytest.raises(ValueError, match="now"):
        inv.remove([GONE], now=datetime(2025, 6, 1))
