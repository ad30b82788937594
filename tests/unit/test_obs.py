"""certpilot.obs against a fake InventoryReader and a fresh registry per test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from certpilot import __version__
from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import StoreError
from certpilot.domain.inventory import Event, InventoryItem, ScanRun
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.obs import (
    X509_LABELS,
    Metrics,
    decimal_serial,
    dn_fields,
    endpoint_of,
    exposition,
    file_path_of,
    parse_rfc4514,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def item(
    ref: str,
    *,
    source: str = "tls",
    target: str | None = None,
    not_before: datetime | None = NOW - timedelta(days=60),
    not_after: datetime | None = NOW + timedelta(days=30),
    problems: Sequence[ProblemCode] = (),
    subject: str | None = "CN=shop.example.com,O=Acme,C=FR",
    issuer: str | None = "CN=Acme Issuing CA,OU=PKI,O=Acme,L=Paris,ST=IDF,C=FR",
    serial: str | None = "0a1b",
    labels: dict[str, str] | None = None,
) -> InventoryItem:
    has_cert = not_after is not None
    return InventoryItem(
        ref=ref,
        source=source,
        target=target or ref,
        fingerprint_sha256=("ab" * 32) if has_cert else None,
        serial=serial if has_cert else None,
        subject=subject if has_cert else None,
        subject_cn=dn_fields(subject)["CN"] if has_cert and subject else None,
        issuer=issuer if has_cert else None,
        issuer_cn=dn_fields(issuer)["CN"] if has_cert and issuer else None,
        sans=("shop.example.com",),
        not_before=not_before if has_cert else None,
        not_after=not_after,
        key_type="EC" if has_cert else None,
        key_bits=256 if has_cert else None,
        signature_algorithm="ecdsa-with-SHA256" if has_cert else None,
        problems=tuple(problems),
        error=None,
        first_seen=NOW - timedelta(days=1),
        last_scanned=NOW,
        labels=labels or {},
    )


class FakeInventory:
    def __init__(self, items: Sequence[InventoryItem] = ()) -> None:
        self.data = list(items)
        self.fail: Exception | None = None
        self.reads = 0

    def ping(self) -> None:
        if self.fail:
            raise self.fail

    def items(
        self,
        *,
        now: datetime,
        expiring_days: float | None = None,
        problem: ProblemCode | None = None,
        source: str | None = None,
    ) -> list[InventoryItem]:
        self.reads += 1
        if self.fail:
            raise self.fail
        return list(self.data)

    def events(
        self, *, since_id: int = 0, limit: int = 1000, ref: str | None = None
    ) -> list[Event]:
        return []

    def runs(self, limit: int = 20) -> list[ScanRun]:
        return []


def obs(ref: str, *codes: ProblemCode, source: str = "tls", duration: float = 0.5) -> Observation:
    return Observation(
        source=source,
        ref=ref,
        target=ref.removeprefix("tls://").partition("#")[0],
        observed_at=NOW,
        problems=tuple(Problem(c, c.value) for c in codes),
        duration_seconds=duration,
    )


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def inv() -> FakeInventory:
    return FakeInventory()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock) -> Metrics:
    return Metrics(registry, inv, clock, scrape_cache_seconds=5.0)


def samples(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for fam in registry.collect() for s in fam.samples if s.name == name]


# --- RFC 4514 and label helpers ------------------------------------------------------------


def test_rfc4514_basic_fields() -> None:
    assert dn_fields("O=Acme,CN=x") == {
        "CN": "x",
        "O": "Acme",
        "OU": "",
        "C": "",
        "ST": "",
        "L": "",
    }


def test_rfc4514_escaped_comma_does_not_split() -> None:
    fields = dn_fields(r"CN=shop,O=Acme\, Inc.,L=Paris\, 75001,C=FR")
    assert fields["O"] == "Acme, Inc."
    assert fields["L"] == "Paris, 75001"
    assert fields["CN"] == "shop"
    assert fields["C"] == "FR"


def test_rfc4514_other_escapes_and_multivalued_rdn() -> None:
    pairs = parse_rfc4514(r"CN=a\+b+OU=ops,O=\"Q\" \\ co\;\<x\>,ST=\C3\A9t\C3\A9,L=\#1")
    assert pairs == [
        ("CN", "a+b"),
        ("OU", "ops"),
        ("O", '"Q" \\ co;<x>'),
        ("ST", "été"),
        ("L", "#1"),
    ]


def test_rfc4514_conservative_on_garbage() -> None:
    assert parse_rfc4514(None) == []
    assert parse_rfc4514("") == []
    assert dn_fields("<Name(garbage)>") == dict.fromkeys(("CN", "O", "OU", "C", "ST", "L"), "")
    # Unknown types and BER hex values are kept as written, lower-case types upper-cased.
    assert parse_rfc4514("cn=x,1.2.3.4=#0403616263") == [("CN", "x"), ("1.2.3.4", "#0403616263")]


def test_rfc4514_round_trips_cryptography_output() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    tricky = 'Acme, Inc. +="<>;\\ '
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tricky),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "#ops"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Évry"),
            x509.NameAttribute(NameOID.COMMON_NAME, " spaced "),
        ]
    )
    assert dn_fields(name.rfc4514_string()) == {
        "CN": " spaced ",
        "O": tricky,
        "OU": "#ops",
        "C": "FR",
        "ST": "",
        "L": "Évry",
    }
    # Unescaped spaces around values (hand-written DNs) are not part of the value.
    assert dn_fields("CN=a, O=b , C=\\46R")["O"] == "b"
    assert dn_fields("CN=a, O=b , C=\\46R")["C"] == "FR"


def test_rfc4514_repeated_attribute_keeps_first_in_certificate_order() -> None:
    # RFC 4514 strings list RDNs last-to-first, so the last OU written is the certificate's first.
    assert dn_fields("CN=x,OU=second,OU=first,O=Acme")["OU"] == "first"


def test_ref_helpers() -> None:
    assert file_path_of("file:///etc/ssl/a#b.pem#3") == "/etc/ssl/a#b.pem"
    assert file_path_of("file:///etc/ssl/a.pem") == "/etc/ssl/a.pem"
    assert endpoint_of("tls://shop.example.com:443#shop.example.com") == "shop.example.com:443"
    assert endpoint_of("tls://[::1]:8443#localhost") == "[::1]:8443"
    assert endpoint_of("file:///a.pem#0") == ""
    assert decimal_serial("0a1b") == "2587"
    assert decimal_serial(None) == ""
    assert decimal_serial("zz") == "zz"


# --- inventory collector ------------------------------------------------------------------


def test_x509_label_schema_exact(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    inv.data = [
        item("tls://shop.example.com:443#shop.example.com", target="shop.example.com:443"),
        item("file:///etc/ssl/api.pem#0", source="file", subject=r"CN=api,O=Acme\, Inc."),
    ]
    expected = set(X509_LABELS)
    assert expected == {
        "serial_number",
        "subject_CN", "subject_O", "subject_OU", "subject_C", "subject_ST", "subject_L",
        "issuer_CN", "issuer_O", "issuer_OU", "issuer_C", "issuer_ST", "issuer_L",
        "filepath", "secret_namespace", "secret_name", "secret_key",
        "source", "endpoint",
    }  # fmt: skip
    for name in ("x509_cert_not_after", "x509_cert_not_before", "x509_cert_expired"):
        got = samples(registry, name)
        assert len(got) == 2
        assert all(set(s) == expected for s in got), name

    tls_labels = {
        "serial_number": "2587",
        "subject_CN": "shop.example.com",
        "subject_O": "Acme",
        "subject_OU": "",
        "subject_C": "FR",
        "subject_ST": "",
        "subject_L": "",
        "issuer_CN": "Acme Issuing CA",
        "issuer_O": "Acme",
        "issuer_OU": "PKI",
        "issuer_C": "FR",
        "issuer_ST": "IDF",
        "issuer_L": "Paris",
        "filepath": "",
        "secret_namespace": "",
        "secret_name": "",
        "secret_key": "",
        "source": "tls",
        "endpoint": "shop.example.com:443",
    }
    not_after = (NOW + timedelta(days=30)).timestamp()
    assert registry.get_sample_value("x509_cert_not_after", tls_labels) == not_after
    assert (
        registry.get_sample_value("x509_cert_not_before", tls_labels)
        == (NOW - timedelta(days=60)).timestamp()
    )

    file_labels = {
        **tls_labels,
        "subject_CN": "api",
        "subject_O": "Acme, Inc.",
        "subject_C": "",
        "filepath": "/etc/ssl/api.pem",
        "source": "file",
        "endpoint": "",
    }
    assert registry.get_sample_value("x509_cert_expired", file_labels) == 0.0


def test_expired_flag(metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory) -> None:
    inv.data = [
        item("tls://old:443#old", not_after=NOW - timedelta(seconds=1), subject="CN=old"),
        item("tls://edge:443#edge", not_after=NOW, subject="CN=edge"),
        item("tls://new:443#new", not_after=NOW + timedelta(seconds=1), subject="CN=new"),
    ]
    by_cn = {s["subject_CN"]: s for s in samples(registry, "x509_cert_expired")}
    assert registry.get_sample_value("x509_cert_expired", by_cn["old"]) == 1.0
    assert registry.get_sample_value("x509_cert_expired", by_cn["edge"]) == 1.0  # judge: now >= nA
    assert registry.get_sample_value("x509_cert_expired", by_cn["new"]) == 0.0


def test_certificate_series(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    inv.data = [item("tls://a:443#a", target="a:443", labels={"owner": "team-shop", "env": "prod"})]
    labels = {
        "ref": "tls://a:443#a",
        "source": "tls",
        "target": "a:443",
        "subject_CN": "shop.example.com",
        "issuer_CN": "Acme Issuing CA",
        "serial_number": "0a1b",
        "fingerprint": "ab" * 32,
    }
    g = registry.get_sample_value
    assert (
        g("certpilot_certificate_not_after_seconds", labels)
        == (NOW + timedelta(days=30)).timestamp()
    )
    assert (
        g("certpilot_certificate_not_before_seconds", labels)
        == (NOW - timedelta(days=60)).timestamp()
    )
    assert g("certpilot_certificate_expires_in_seconds", labels) == 30 * 86400
    assert g("certpilot_certificate_lifetime_left_ratio", labels) == pytest.approx(30 / 90)
    assert g("certpilot_item_info", {"ref": "tls://a:443#a", "owner": "team-shop"}) == 1.0
    # Free-form inventory labels never become metric labels.
    assert all("env" not in s for s in samples(registry, "certpilot_certificate_not_after_seconds"))
    assert g("certpilot_inventory_up") == 1.0


def test_problem_counts_include_zeros(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    inv.data = [
        item("tls://a:443#a", problems=[ProblemCode.EXPIRING, ProblemCode.SELF_SIGNED]),
        item("tls://b:443#b", problems=[ProblemCode.EXPIRING]),
        item("tls://c:443#c", not_after=None, problems=[ProblemCode.TIMEOUT]),
    ]
    g = registry.get_sample_value
    assert g("certpilot_problems", {"code": "expiring"}) == 2.0
    assert g("certpilot_problems", {"code": "self_signed"}) == 1.0
    assert g("certpilot_problems", {"code": "timeout"}) == 1.0
    for code in ProblemCode:
        assert g("certpilot_problems", {"code": code.value}) is not None, code
    assert g("certpilot_problems", {"code": "revoked"}) == 0.0
    assert (
        g(
            "certpilot_certificate_problem",
            {"ref": "tls://c:443#c", "source": "tls", "target": "tls://c:443#c", "code": "timeout"},
        )
        == 1.0
    )
    # An item without a certificate has no certificate series.
    assert all(
        s["ref"] != "tls://c:443#c"
        for s in samples(registry, "certpilot_certificate_not_after_seconds")
    )
    assert len(samples(registry, "x509_cert_not_after")) == 2
    assert g("certpilot_inventory_items", {"source": "tls"}) == 3.0


def test_empty_inventory_still_exports_zero_problem_counts(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    assert registry.get_sample_value("certpilot_inventory_up") == 1.0
    assert len(samples(registry, "certpilot_problems")) == len(ProblemCode)
    assert all(
        registry.get_sample_value("certpilot_problems", s) == 0.0
        for s in samples(registry, "certpilot_problems")
    )


def test_inventory_items_zero_for_scanned_source_without_items(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock
) -> None:
    inv.data = [item("tls://a:443#a")]
    metrics.observe_scan("file", [], 0.1)
    assert registry.get_sample_value("certpilot_inventory_items", {"source": "file"}) == 0.0
    assert registry.get_sample_value("certpilot_inventory_items", {"source": "tls"}) == 1.0


def test_inventory_failure_exports_up_zero_and_nothing_else(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock
) -> None:
    inv.data = [item("tls://a:443#a", problems=[ProblemCode.EXPIRING])]
    inv.fail = StoreError("sqlite:///x.db", "database is locked")
    text = generate_latest(registry).decode()  # must not raise
    assert registry.get_sample_value("certpilot_inventory_up") == 0.0
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert not any(
        n.startswith(("x509_cert_", "certpilot_certificate_", "certpilot_problems")) for n in names
    )
    assert "certpilot_inventory_items" not in names
    # Own series are unaffected.
    assert registry.get_sample_value("certpilot_build_info", {"version": __version__}) == 1.0

    inv.fail = None
    clock.advance(timedelta(seconds=6))
    assert registry.get_sample_value("certpilot_inventory_up") == 1.0
    assert registry.get_sample_value("certpilot_problems", {"code": "expiring"}) == 1.0


def test_scrape_cache_honoured(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock
) -> None:
    inv.data = [item("tls://a:443#a")]
    for _ in range(5):
        generate_latest(registry)
    assert inv.reads == 1
    inv.data = [item("tls://a:443#a"), item("tls://b:443#b")]
    clock.advance(timedelta(seconds=4.9))
    assert registry.get_sample_value("certpilot_inventory_items", {"source": "tls"}) == 1.0
    assert inv.reads == 1
    clock.advance(timedelta(seconds=0.1))  # 5 s after the read: expired
    assert registry.get_sample_value("certpilot_inventory_items", {"source": "tls"}) == 2.0
    assert inv.reads == 2
    clock.advance(timedelta(seconds=-60))  # a clock that went backwards invalidates the cache
    generate_latest(registry)
    assert inv.reads == 3


def test_cache_disabled(registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock) -> None:
    Metrics(registry, inv, clock, scrape_cache_seconds=0)
    generate_latest(registry)
    generate_latest(registry)
    assert inv.reads == 2


def test_naive_datetimes_are_read_as_utc(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    naive_after = (NOW + timedelta(days=1)).replace(tzinfo=None)
    inv.data = [replace(item("tls://a:443#a"), not_after=naive_after, not_before=None)]
    [labels] = samples(registry, "x509_cert_not_after")
    assert (
        registry.get_sample_value("x509_cert_not_after", labels)
        == (NOW + timedelta(days=1)).timestamp()
    )
    assert registry.get_sample_value("certpilot_inventory_up") == 1.0


def test_duplicate_x509_label_sets_are_exported_once(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    # One endpoint scanned under two SNI names, serving the same certificate.
    inv.data = [item("tls://a:443#a"), item("tls://a:443#www.a")]
    assert len(samples(registry, "x509_cert_not_after")) == 1
    assert len(samples(registry, "certpilot_certificate_not_after_seconds")) == 2
    generate_latest(registry)


def test_no_default_registry_and_double_registration_refused(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory, clock: FixedClock
) -> None:
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("certpilot_build_info", {"version": __version__}) is None
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry, inv, clock)


def test_help_text_on_every_family(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    inv.data = [item("tls://a:443#a")]
    metrics.observe_scan("tls", [obs("tls://a:443#a")], 1.0)
    for fam in registry.collect():
        if fam.name.startswith(("certpilot_", "x509_")):
            assert fam.documentation, fam.name


# --- pushed series ------------------------------------------------------------------------


def test_observe_scan_series(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_scan(
        "tls",
        [
            obs("tls://a:443#a", duration=0.25),
            obs("tls://b:443#b", ProblemCode.TIMEOUT, duration=5.0),
            obs("tls://c:443#c", ProblemCode.EXPIRED),
        ],
        7.5,
    )
    g = registry.get_sample_value
    a = {"source": "tls", "target": "a:443", "ref": "tls://a:443#a"}
    b = {"source": "tls", "target": "b:443", "ref": "tls://b:443#b"}
    c = {"source": "tls", "target": "c:443", "ref": "tls://c:443#c"}
    assert g("certpilot_probe_success", a) == 1.0
    assert g("certpilot_probe_success", b) == 0.0
    assert g("certpilot_probe_success", c) == 1.0  # expired, but a certificate was read
    assert g("certpilot_probe_duration_seconds", a) == 0.25
    assert g("certpilot_probe_duration_seconds", b) == 5.0
    assert g("certpilot_scan_runs_total", {"source": "tls"}) == 1.0
    assert g("certpilot_scan_observations_total", {"source": "tls"}) == 3.0
    assert g("certpilot_scan_duration_seconds_count", {"source": "tls"}) == 1.0
    assert g("certpilot_scan_duration_seconds_sum", {"source": "tls"}) == 7.5
    assert g("certpilot_scan_duration_seconds_bucket", {"source": "tls", "le": "10.0"}) == 1.0
    assert g("certpilot_scan_duration_seconds_bucket", {"source": "tls", "le": "5.0"}) == 0.0
    assert g("certpilot_scan_duration_seconds_bucket", {"source": "tls", "le": "0.1"}) == 0.0
    assert g("certpilot_scan_duration_seconds_bucket", {"source": "tls", "le": "600.0"}) == 1.0
    assert g("certpilot_scan_last_run_timestamp_seconds", {"source": "tls"}) == NOW.timestamp()
    assert g("x509_source_up", {"source": "tls"}) == 1.0
    assert g("x509_source_errors_total", {"source": "tls", "reason": "timeout"}) == 1.0
    # Every reachability reason starts at 0 so rate() sees the first error.
    assert g("x509_source_errors_total", {"source": "tls", "reason": "connection_refused"}) == 0.0
    assert g("x509_source_errors_total", {"source": "tls", "reason": "expired"}) is None


def test_stale_refs_removed_on_next_scan(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_scan("tls", [obs("tls://a:443#a"), obs("tls://b:443#b")], 1.0)
    metrics.observe_scan("file", [obs("file:///x.pem#0", source="file")], 1.0)
    metrics.observe_scan("tls", [obs("tls://b:443#b", ProblemCode.TLS_ERROR)], 1.0)
    g = registry.get_sample_value
    a = {"source": "tls", "target": "a:443", "ref": "tls://a:443#a"}
    b = {"source": "tls", "target": "b:443", "ref": "tls://b:443#b"}
    assert g("certpilot_probe_success", a) is None
    assert g("certpilot_probe_duration_seconds", a) is None
    assert g("certpilot_probe_success", b) == 0.0
    # Other sources keep their series: results replace the previous set *per source*.
    assert (
        len([s for s in samples(registry, "certpilot_probe_success") if s["source"] == "file"]) == 1
    )
    assert g("certpilot_scan_runs_total", {"source": "tls"}) == 2.0
    assert g("certpilot_scan_observations_total", {"source": "tls"}) == 3.0
    # Only unreachable targets this time: the source is down.
    assert g("x509_source_up", {"source": "tls"}) == 0.0
    assert g("x509_source_errors_total", {"source": "tls", "reason": "tls_error"}) == 1.0

    metrics.observe_scan("tls", [], 0.2)  # no targets any more: up, nothing per ref
    assert g("x509_source_up", {"source": "tls"}) == 1.0
    assert [s for s in samples(registry, "certpilot_probe_success") if s["source"] == "tls"] == []


def test_source_up_with_mixed_results_and_source_errors(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    g = registry.get_sample_value
    metrics.observe_scan(
        "file",
        [
            obs("file:///a.pem#0", ProblemCode.MALFORMED, source="file"),
            obs("file:///b.pem#0", source="file"),
        ],
        0.3,
    )
    assert g("x509_source_up", {"source": "file"}) == 1.0
    assert g("x509_source_errors_total", {"source": "file", "reason": "malformed"}) == 1.0

    metrics.observe_source_error("openbao", "sealed")
    metrics.observe_source_error("openbao", "sealed")
    assert g("x509_source_up", {"source": "openbao"}) == 0.0
    assert g("x509_source_errors_total", {"source": "openbao", "reason": "sealed"}) == 2.0
    assert g("certpilot_scan_runs_total", {"source": "openbao"}) == 0.0

    metrics.observe_scan("openbao", [obs("openbao://pki/a", source="openbao")], 0.1)
    assert g("x509_source_up", {"source": "openbao"}) == 1.0


def test_observation_with_two_reachability_codes_counts_each(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe_scan(
        "tls", [obs("tls://a:443#a", ProblemCode.TLS_ERROR, ProblemCode.TIMEOUT)], 1.0
    )
    g = registry.get_sample_value
    assert g("x509_source_errors_total", {"source": "tls", "reason": "tls_error"}) == 1.0
    assert g("x509_source_errors_total", {"source": "tls", "reason": "timeout"}) == 1.0


def test_build_info(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert registry.get_sample_value("certpilot_build_info", {"version": __version__}) == 1.0


def test_exposition_is_valid_text(
    metrics: Metrics, registry: CollectorRegistry, inv: FakeInventory
) -> None:
    inv.data = [
        item("tls://a:443#a", problems=[ProblemCode.EXPIRING]),
        item('file:///etc/ssl/we"ird\\path.pem#0', source="file", subject='CN=a\\"b\\,c'),
        replace(item("tls://n:443#n"), not_before=None),
    ]
    metrics.observe_scan("tls", [obs("tls://a:443#a")], 1.0)
    text = generate_latest(registry).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["x509_cert_not_after"].type == "gauge"
    assert fams["certpilot_scan_runs"].type == "counter"
    assert fams["certpilot_scan_duration_seconds"].type == "histogram"
    paths = {s.labels["filepath"] for s in fams["x509_cert_not_after"].samples}
    assert '/etc/ssl/we"ird\\path.pem' in paths
    # An item without notBefore still gets not_after but no not_before / ratio series.
    assert len(fams["x509_cert_not_before"].samples) == 2


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;q=0.5",
    ],
)
def test_streamed_exposition_is_byte_for_byte_the_encoders(
    monkeypatch: pytest.MonkeyPatch,
    metrics: Metrics,
    registry: CollectorRegistry,
    inv: FakeInventory,
    accept: str,
) -> None:
    """``exposition`` writes exactly what prometheus_client's own encoder writes for the whole
    registry (counters' ``_created`` samples, OpenMetrics' single ``# EOF`` included), though
    it encodes family by family and the inventory's large families in pieces."""
    import certpilot.obs as obs_module

    monkeypatch.setattr(obs_module, "_CHUNK_BYTES", 2048)  # several chunks from a small registry
    monkeypatch.setattr(obs_module, "_PIECE_ROWS", 7)  # large families encoded in pieces
    registry.unregister(metrics.process)  # its CPU seconds would differ between two encodings
    inv.data = [item(f"tls://h{i}:443#h{i}", serial=f"{i:x}") for i in range(40)]
    inv.data.append(item("tls://bad:443#bad", problems=[ProblemCode.EXPIRED]))
    metrics.observe_scan("tls", [obs("tls://a:443#a", ProblemCode.EXPIRED)], 1.0)
    content_type, chunks = exposition(registry, accept)
    parts = list(chunks)
    encoder, expected_type = choose_encoder(accept)
    assert content_type == expected_type
    assert len(parts) > 3
    body = b"".join(parts)
    assert body == encoder(registry)
    if accept.startswith("application/openmetrics-text"):
        assert body.count(b"# EOF\n") == 1 and body.endswith(b"# EOF\n")
    # The streamed families can be read more than once (each read makes the samples anew).
    fams = {f.name: f for f in registry.collect()}
    for name in ("certpilot_certificate_not_before_seconds", "x509_cert_expired"):
        once, again = list(fams[name].samples), list(fams[name].samples)
        assert once == again and len(once) == 41


def test_the_process_s_own_memory_and_cpu_are_exported(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """``process_resident_memory_bytes`` and friends: what docs/operations.md sizes by."""
    status = Path("/proc/self/status").read_text()
    rss_kib = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])
    exported = registry.get_sample_value("process_resident_memory_bytes")
    assert exported is not None and abs(exported / 1024 - rss_kib) < 0.2 * rss_kib
    fds = registry.get_sample_value("process_open_fds")
    assert fds is not None and fds >= 3
