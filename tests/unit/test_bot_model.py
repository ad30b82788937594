"""The bot's pure model: root causes, grouping into pages, signal sources and merging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.model import Severity, Signal, SignalSource, build_pages, proposal, root_cause
from bot.signals import alert_signal, from_json, inventory_signals, merge, to_json
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.problems import ProblemCode

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def sig(
    fp: str,
    kind: str = "expiring",
    *,
    status: str = "firing",
    severity: Severity = Severity.TICKET,
    since: datetime = T0,
    **labels: str,
) -> Signal:
    return Signal(
        source=SignalSource.INVENTORY,
        fingerprint=fp,
        kind=kind,
        subject=f"tls://{fp}.example.com:443#{fp}.example.com",
        status=status,
        severity=severity,
        since=since,
        labels=labels,
    )


def test_a_shared_intermediate_groups_many_certificates_into_one_page() -> None:
    fleet = [sig(f"h{i}", issuer_CN="Old Intermediate", owner=f"team{i % 3}") for i in range(50)]
    other = sig("lonely", issuer_CN="Other CA", owner="payments", host="pay.example.net")
    pages = build_pages([*fleet, other])
    assert len(pages) == 2
    big = next(p for p in pages if len(p.signals) == 50)
    assert (
        big.cause == ("issuer", "Old Intermediate")
        and big.key == "expiring|issuer=Old Intermediate"
    )
    small = next(p for p in pages if len(p.signals) == 1)
    assert small.cause == ("owner", "payments")  # nothing shared: the owner team
    assert big.proposal == "renew"


def test_the_more_specific_cause_wins_a_tie() -> None:
    two = [sig(f"x{i}", intermediate="R3", issuer_CN="R3", owner="web") for i in range(2)]
    assert root_cause(two[0], two) == ("intermediate", "R3")


def test_a_page_keeps_its_signals_when_others_arrive() -> None:
    first = [sig("a", owner="web", host="a.example.com")]
    (page,) = build_pages(first)
    # Later a second certificate from the same issuer shows up: "a" stays in its page.
    later = [*first, sig("b", owner="web", issuer_CN="X"), sig("c", owner="ops", issuer_CN="X")]
    pages = build_pages(later, {"a": page.key})
    assert next(p for p in pages if p.key == page.key).signals[0].fingerprint == "a"


def test_severity_and_resolution() -> None:
    pages = build_pages(
        [
            sig("a", severity=Severity.PAGE, owner="web"),
            sig("b", owner="web"),
        ]
    )
    (page,) = pages
    assert page.severity == Severity.PAGE and not page.resolved
    (done,) = build_pages([s.resolved(T0) for s in page.signals])
    assert done.resolved and done.firing == ()


def test_proposals() -> None:
    assert proposal(["expired"]) == "renew"
    assert proposal(["incomplete_chain", "expired"]) == "redeploy"
    assert proposal(["hostname_mismatch"]) is None


def _item(ref: str, *codes: ProblemCode, days: float = 3.0) -> InventoryItem:
    return InventoryItem(
        ref=ref,
        source="tls",
        target=ref.removeprefix("tls://").partition("#")[0],
        fingerprint_sha256="ab" * 32,
        serial="0a",
        subject="CN=x",
        subject_cn="x.example.com",
        issuer="CN=R3",
        issuer_cn="R3",
        sans=("x.example.com",),
        not_before=T0 - timedelta(days=87),
        not_after=T0 + timedelta(days=days),
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=codes,
        error=None,
        first_seen=T0 - timedelta(days=87),
        last_scanned=T0,
        labels={"owner": "web", "secret": "do-not-copy"},
    )


def test_inventory_signals_page_urgent_problems_and_keep_only_known_labels() -> None:
    ref = "tls://x.example.com:443#x.example.com"
    (expiring,) = inventory_signals([_item(ref, ProblemCode.EXPIRING, days=3)], T0)
    assert expiring.severity == Severity.PAGE  # fewer than 7 days left
    (later,) = inventory_signals([_item(ref, ProblemCode.EXPIRING, days=20)], T0)
    assert later.severity == Severity.TICKET
    assert later.labels["host"] == "x.example.com" and later.labels["issuer_CN"] == "R3"
    assert "secret" not in later.labels and later.runbook_url.endswith("#expiring")
    assert from_json(to_json(later)) == later


def test_merge_resolves_what_a_snapshot_no_longer_holds_and_keeps_since() -> None:
    a, b = sig("a", since=T0), sig("b", since=T0)
    later = T0 + timedelta(minutes=5)
    merged = merge([a, b], {SignalSource.INVENTORY: [sig("a", since=later)]}, [], later)
    by_fp = {s.fingerprint: s for s in merged}
    assert by_fp["a"].firing and by_fp["a"].since == T0  # still firing: first since kept
    assert not by_fp["b"].firing and by_fp["b"].since == later


def test_alertmanager_signals_are_events() -> None:
    firing = alert_signal(
        fingerprint="f00",
        status="firing",
        labels={"alertname": "CertificateExpiringSoon", "severity": "page", "ref": "tls://h:443#h"},
        annotations={"summary": "expires", "runbook_url": "https://runbooks/x"},
        starts_at=T0,
        ends_at=None,
    )
    assert firing.severity == Severity.PAGE and firing.labels["host"] == "h"
    resolved = alert_signal(
        fingerprint="f00",
        status="resolved",
        labels=dict(firing.labels),
        annotations={},
        starts_at=T0,
        ends_at=T0 + timedelta(minutes=3),
    )
    merged = merge([firing], {}, [resolved], T0 + timedelta(minutes=3))
    assert [s.status for s in merged] == ["resolved"]
