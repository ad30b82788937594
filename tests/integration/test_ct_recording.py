"""CT matches into the inventory (SQLite): what counts as ours, pending orders, deciding again.

:class:`ExpectationCache` reads the real inventory and job store; :class:`IssuanceRecorder`
writes ``ct://`` locations. The remediator's race is played out: a CA logs the precertificate
of a renewal certpilot is running before the job stores the new serial.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.ctwatching import ExpectationCache, IssuanceRecorder, WatchlistFile, ct_ref
from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.model import Observation
from certpilot.domain.x509 import cert_info
from certpilot.localca import LocalCA
from certpilot.settings import CTSettings
from certpilot.store import Inventory, JobStore, NewJob
from ctwatch.monitor import Match
from ctwatch.rfc6962 import encode_cert_chain, encode_x509_leaf, leaf_hash, parse_leaf

DER = serialization.Encoding.DER


def _match(cert_der: bytes, chain: list[bytes], index: int = 5) -> Match:
    leaf = encode_x509_leaf(1_700_000_000_000, cert_der)
    entry = parse_leaf(leaf, encode_cert_chain(chain), index)
    return Match("https://log.test/", index, entry, leaf_hash(leaf), (("x", ".ours.test"),))


@pytest.fixture
def world(tmp_path: Path, now: datetime) -> tuple[Inventory, JobStore, FixedClock]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    return Inventory.open(url), JobStore.open(url), FixedClock(now)


def test_a_renewal_in_flight_is_pending_then_expected_once_the_job_stores_its_serial(
    world: tuple[Inventory, JobStore, FixedClock], ca: LocalCA, now: datetime
) -> None:
    inv, jobs, clock = world
    ct = CTSettings(grace=600.0)
    # The inventory knows our current certificate (so our CA is an allowed issuer).
    current = ca.issue(["www.ours.test"], now)
    inv.record(
        [
            Observation(
                "file",
                "file:///etc/site.pem",
                "/etc/site.pem",
                now,
                leaf=cert_info(current.cert),
                chain=(cert_info(current.cert),),
            )
        ],
        now=now,
    )
    created = jobs.create(
        NewJob(key="renew:www", action="renew", names=("www.ours.test",)), now=now
    )
    job = jobs.transition(created.job.id, "approved", "issuing", now=now)
    renewed = ca.issue(["www.ours.test"], now)  # the CA logs it before the job stores it

    cache = ExpectationCache(inv, jobs, ct, clock)
    rec = IssuanceRecorder(inv, clock, ct)
    chain = [c.public_bytes(DER) for c in renewed.chain]
    (got,) = rec.record_matches([_match(renewed.cert.public_bytes(DER), chain)], cache.refresh())
    assert got.verdict.expected is None and "in flight" in got.verdict.reason
    item = inv.item(got.ref)
    assert item is not None and item.problems == () and item.labels["ct_verdict"] == "pending"
    assert got.ref == ct_ref("Test Intermediate CA", "", renewed.serial_hex)

    # The job finishes and stores the serial: the next refresh makes it expected.
    clock.advance(timedelta(seconds=30))
    jobs.transition(job.id, "issuing", "done", now=clock.now(), new_serial=renewed.serial_hex)
    (again,) = rec.reconsider(cache.refresh())
    assert again.verdict.expected is True and again.verdict.reason == "ordered by certpilot"
    item = inv.item(got.ref)
    assert item is not None and item.labels["ct_verdict"] == "expected"
    assert rec.reconsider(cache.refresh()) == []  # decided: not touched again


def test_pending_past_grace_becomes_unexpected_and_a_known_key_clears_it(
    world: tuple[Inventory, JobStore, FixedClock], ca: LocalCA, now: datetime
) -> None:
    inv, jobs, clock = world
    ct = CTSettings(grace=60.0, allowed_issuers=("Test Intermediate CA",))
    created = jobs.create(
        NewJob(key="renew:api", action="renew", names=("api.ours.test",)), now=now
    )
    jobs.transition(created.job.id, "approved", "issuing", now=now)
    rogue = ca.issue(["api.ours.test"], now)
    cache = ExpectationCache(inv, jobs, ct, clock)
    rec = IssuanceRecorder(inv, clock, ct)
    (got,) = rec.record_matches([_match(rogue.cert.public_bytes(DER), [])], cache.refresh())
    assert got.verdict.expected is None
    assert rec.reconsider(cache.refresh()) == []  # within grace: still pending

    # The order is still "issuing" when the grace has passed: whatever it is doing, it did not
    # produce this certificate in time to explain it.
    clock.advance(timedelta(seconds=61))
    (late,) = rec.reconsider(cache.refresh())
    assert late.verdict.expected is False and "within 60 s" in late.verdict.reason
    item = inv.item(got.ref)
    assert item is not None and [c.value for c in item.problems] == ["unexpected_issuance"]
    (event,) = [e for e in inv.events(ref=got.ref) if e.kind == "problem_raised"]
    assert "api.ours.test" in event.detail and "https://log.test/ entry 5" in event.detail

    # A team's store turns out to hold it (same key): expected, the problem clears.
    inv.record(
        [
            Observation(
                "openbao",
                "openbao://bao/secret/api",
                "secret/api",
                clock.now(),
                leaf=cert_info(rogue.cert),
                chain=(cert_info(rogue.cert),),
            )
        ],
        now=clock.now(),
    )
    (cleared,) = rec.reconsider(cache.refresh())
    assert cleared.verdict.expected is True
    item = inv.item(got.ref)
    assert item is not None and item.problems == ()
    assert [e.kind for e in inv.events(ref=got.ref)][-1] == "problem_cleared"


def test_what_ct_recorded_never_vouches_for_itself(
    world: tuple[Inventory, JobStore, FixedClock], ca: LocalCA, now: datetime
) -> None:
    """A certificate known only from CT is not 'known to the inventory'."""
    inv, _jobs, clock = world
    ct = CTSettings(allowed_issuers=("Test Intermediate CA",))
    cert = ca.issue(["x.ours.test"], now)
    cache = ExpectationCache(inv, None, ct, clock)
    rec = IssuanceRecorder(inv, clock, ct)
    (first,) = rec.record_matches([_match(cert.cert.public_bytes(DER), [])], cache.refresh())
    assert first.verdict.expected is False
    (second,) = rec.record_matches([_match(cert.cert.public_bytes(DER), [], 9)], cache.refresh())
    assert second.verdict.expected is False
    assert inv.fingerprints_seen_outside(["ct"]) == []
    assert len(inv.items(now=clock.now(), source="ct")) == 1  # one location per certificate


def test_watchlist_file_reloads_and_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "watch"
    path.write_text(".a.test\n")
    wl = WatchlistFile(["b.test"], path)
    assert wl().match("x.a.test") == ".a.test" and wl().match("b.test") == "b.test"
    path.write_text(".a.test\n.c.test\n# more\n")
    assert wl().match("y.c.test") == ".c.test"
    path.write_text("bad..pattern\n")
    assert wl().match("y.c.test") == ".c.test"  # the last good list stays
    path.write_text("bad..pattern\n")
    with pytest.raises(ConfigError) as e:
        WatchlistFile([], path)
    assert e.value.one_line().startswith(f"{path}: line 1: ")
    with pytest.raises(ConfigError) as e:
        WatchlistFile(["ok.test", "no spaces.test"])
    assert "ct.watch: [1]" in e.value.one_line()


def test_each_certificate_counts_once_in_the_sli_across_recorders_and_restarts(
    world: tuple[Inventory, JobStore, FixedClock], ca: LocalCA, now: datetime
) -> None:
    """``expected_issuance`` counts a certificate once, when its verdict is first decided,
    however many recorders see it: the same precertificate in two logs followed by two
    replicas, or seen again by a restarted process (each a fresh ``IssuanceRecorder``). A
    pending one counts when it is decided, not before and not again."""
    inv, jobs, clock = world
    ct = CTSettings(grace=60.0, allowed_issuers=("Test Intermediate CA",))
    cache = ExpectationCache(inv, jobs, ct, clock)
    rogue = ca.issue(["evil.ours.test"], now)
    for log_index in (5, 9):  # two logs, two replicas: two recorders
        IssuanceRecorder(inv, clock, ct).record_matches(
            [_match(rogue.cert.public_bytes(DER), [], index=log_index)], cache.refresh()
        )
    assert inv.sli_counters()["expected_issuance"] == (0.0, 1.0)

    created = jobs.create(
        NewJob(key="renew:api", action="renew", names=("api.ours.test",)), now=now
    )
    jobs.transition(created.job.id, "approved", "issuing", now=now)
    inflight = ca.issue(["api.ours.test"], now)
    (got,) = IssuanceRecorder(inv, clock, ct).record_matches(
        [_match(inflight.cert.public_bytes(DER), [])], cache.refresh()
    )
    assert got.verdict.expected is None
    assert inv.sli_counters()["expected_issuance"] == (0.0, 1.0)  # pending: not yet
    clock.advance(timedelta(seconds=61))
    (late,) = IssuanceRecorder(inv, clock, ct).reconsider(cache.refresh())
    assert late.verdict.expected is False
    # Seen again in another log by yet another recorder: decided already, not counted again.
    IssuanceRecorder(inv, clock, ct).record_matches(
        [_match(inflight.cert.public_bytes(DER), [], index=11)], cache.refresh()
    )
    assert inv.sli_counters()["expected_issuance"] == (0.0, 2.0)
