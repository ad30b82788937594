"""Pure parts of the CT monitor: classification, the compact range, log lists, Retry-After."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certpilot.domain.errors import ConfigError
from certpilot.localca import LocalCA
from ctwatch.classify import (
    PRECERT_SIGNING_EKU,
    Expectations,
    classify,
    facts_of,
    spki_sha256,
)
from ctwatch.fetch import MAX_RETRY_AFTER, retry_after_seconds
from ctwatch.loglist import parse_log_list
from ctwatch.rfc6962 import (
    CTEntry,
    encode_cert_chain,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    parse_leaf,
    root_from_leaves,
)
from ctwatch.tree import CompactRange, range_from_inclusion
from tests.support.ct_log import inclusion_path, make_precert, strip_poison

DER = serialization.Encoding.DER


def _x509_entry(cert: x509.Certificate, chain: list[x509.Certificate]) -> CTEntry:
    leaf = encode_x509_leaf(1, cert.public_bytes(DER))
    return parse_leaf(leaf, encode_cert_chain([c.public_bytes(DER) for c in chain]), 0)


@pytest.fixture
def issued(ca: LocalCA, now: datetime) -> x509.Certificate:
    return ca.issue(["www.ours.test"], now).cert


def _exp(ca: LocalCA, **kw: list[str]) -> Expectations:
    issuer = ca.issuer_cert.subject.rfc4514_string()
    return Expectations.build(allowed_issuers=[issuer], **kw)


def test_expected_by_serial_key_or_order_and_unexpected_otherwise(
    ca: LocalCA, issued: x509.Certificate
) -> None:
    entry = _x509_entry(issued, [ca.issuer_cert])
    serial = format(issued.serial_number, "x")
    key = spki_sha256(issued)
    assert classify(entry, _exp(ca, known_serials=[serial])).reason == (
        "serial known to the inventory"
    )
    v = classify(entry, _exp(ca, known_keys=[key.upper()]))
    assert v.expected is True and v.reason == "key known to the inventory"
    v = classify(entry, _exp(ca, ordered_serials=["00" + serial]))
    assert v.expected is True and v.reason == "ordered by certpilot"
    v = classify(entry, _exp(ca))
    assert v.expected is False and "did not order it" in v.reason
    assert v.spki_sha256 == key
    # An order for the names in flight: pending, not a page.
    v = classify(entry, _exp(ca, pending_names=["WWW.OURS.TEST."]))
    assert v.expected is None


def test_issuer_not_allowed_wins_over_a_known_key(ca: LocalCA, issued: x509.Certificate) -> None:
    entry = _x509_entry(issued, [ca.issuer_cert])
    exp = Expectations.build(allowed_issuers=["Some Other CA"], known_keys=[spki_sha256(issued)])
    v = classify(entry, exp)
    assert v.expected is False and "is not an allowed issuer" in v.reason
    # An allowed CN (case and spaces normalised) is enough.
    cn = ca.issuer_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    exp = Expectations.build(
        allowed_issuers=[f"  {str(cn).upper()} "], known_keys=[spki_sha256(issued)]
    )
    assert classify(entry, exp).expected is True


def test_precert_signed_by_a_precert_signing_certificate_counts_the_ca_behind_it(
    ca: LocalCA, now: datetime
) -> None:
    """RFC 6962 section 3.1: the issuer that counts is the precert signing cert's issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "PS")]))
        .issuer_name(ca.issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([PRECERT_SIGNING_EKU]), critical=True)
        .sign(ca.issuer_key, hashes.SHA256())
    )
    pre = make_precert(signer, key, ["p.ours.test"], now, now + timedelta(days=9))
    leaf = encode_precert_leaf(1, os.urandom(32), strip_poison(pre.tbs_certificate_bytes))
    extra = encode_precert_chain_entry(
        pre.public_bytes(DER), [signer.public_bytes(DER), ca.issuer_cert.public_bytes(DER)]
    )
    entry = parse_leaf(leaf, extra, 3)
    assert entry.issuer.startswith("CN=PS")  # the raw issuer
    f = facts_of(entry)
    assert f.issuer == ca.issuer_cert.subject.rfc4514_string()
    assert classify(entry, _exp(ca)).reason.startswith("neither")  # allowed, but unknown


def test_compact_range_matches_the_tree_at_every_size_and_from_any_audit_path() -> None:
    for n in (1, 2, 3, 5, 8, 13, 31, 64, 65):
        leaves = [os.urandom(32) for _ in range(n)]
        cr = CompactRange()
        for i, leaf in enumerate(leaves):
            cr.append(leaf)
            assert cr.root() == root_from_leaves(leaves[: i + 1])
            assert len(cr.nodes) == (i + 1).bit_count()
        assert CompactRange.from_json(cr.to_json()) == cr
        root = root_from_leaves(leaves)
        for m in range(n):
            got = range_from_inclusion(m, leaves[m], n, inclusion_path(m, leaves), root)
            assert got is not None and got.root() == root_from_leaves(leaves[: m + 1])
            path = inclusion_path(m, leaves)
            if path:
                forged = [bytes(32), *path[1:]]
                assert range_from_inclusion(m, leaves[m], n, forged, root) is None


@pytest.mark.parametrize(
    "data",
    [
        {"size": 3, "nodes": ["00" * 32]},  # 3 leaves need 2 nodes
        {"size": 1, "nodes": ["00" * 31]},
        {"size": "1", "nodes": []},
        {"size": 1, "nodes": [1]},
        [],
    ],
)
def test_compact_range_rejects_malformed_json(data: object) -> None:
    with pytest.raises(ValueError):
        CompactRange.from_json(data)


def _loglist() -> dict[str, object]:
    key = base64.b64encode(b"\x30\x59" + bytes(89)).decode()
    return {
        "version": "3",
        "operators": [
            {
                "name": "Op",
                "logs": [
                    {"url": "https://a.test/2026/", "key": key, "state": {"usable": {}}},
                    {"url": "https://b.test/", "key": key, "state": {"retired": {}}},
                    {"url": "https://c.test/", "key": key, "state": {"rejected": {}}},
                    {"url": "https://d.test/", "key": key, "state": {"readonly": {}}},
                ],
                "tiled_logs": [
                    {
                        "monitoring_url": "https://mon.e.test/2026h1/",
                        "submission_url": "https://e.test/2026h1/",
                        "key": key,
                        "state": {"usable": {}},
                    }
                ],
            }
        ],
    }


def test_log_list_keeps_usable_logs_and_tiled_origins() -> None:
    logs = parse_log_list(_loglist(), "list.json")
    assert [(i.url, i.kind) for i in logs] == [
        ("https://a.test/2026/", "rfc6962"),
        ("https://d.test/", "rfc6962"),
        ("https://mon.e.test/2026h1/", "static"),
    ]
    assert logs[2].origin == "e.test/2026h1" and logs[0].origin is None
    assert logs[0].operator == "Op" and len(base64.b64decode(logs[0].log_id)) == 32


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("operators"), "list.json: operators: not a v3 log list"),
        (lambda d: d["operators"][0]["logs"][0].update(key="**"), "logs[0].key: not base64"),
        (lambda d: d["operators"][0]["logs"][0].update(url="ftp://x"), "logs[0].url"),
        (lambda d: d["operators"][0].update(logs={}), "operators[0].logs: not a list"),
    ],
)
def test_log_list_errors_name_the_field(mutate: object, needle: str) -> None:
    data = _loglist()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ConfigError) as e:
        parse_log_list(data, "list.json")
    assert needle in e.value.one_line()


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("100000") == MAX_RETRY_AFTER
    assert retry_after_seconds("Sat, 28 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Sat, 28 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
