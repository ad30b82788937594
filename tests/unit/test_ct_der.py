"""The monitor's fast paths agree with the reference paths they short-cut.

``ctwatch.der.cert_fields`` (names and issuer read from the DER) against ``cryptography``'s
view of the same certificates, for the shapes certificates come in: CN in and out of the SAN,
no SAN, IP and e-mail SANs, multi-valued RDNs, upper case and trailing dots, non-ASCII and
BMPString CNs (which must fall back), two SAN extensions (refused like cryptography does);
and ``parse_leaf``'s offset framing against its field-by-field cursor, entry by entry.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import ctwatch.rfc6962 as rfc6962
from certpilot.localca import LocalCA
from ctwatch.der import cert_fields
from ctwatch.rfc6962 import (
    encode_cert_chain,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    parse_leaf,
)
from tests.support.ct_log import make_precert, strip_poison

NOW = datetime(2026, 11, 1, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
DER = serialization.Encoding.DER


def _cert(subject: x509.Name, sans: list[x509.GeneralName] | None) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Issuer Ä CA")]))
        .public_key(KEY.public_key())
        .serial_number(12345)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=30))
    )
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    return b.sign(KEY, hashes.SHA256())


def _cn(value: str, tag: x509.name._ASN1Type | None = None) -> x509.NameAttribute:
    if tag is None:
        return x509.NameAttribute(NameOID.COMMON_NAME, value)
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _type=tag)


CASES = {
    "cn in san": _cert(
        x509.Name([_cn("www.example.com")]),
        [x509.DNSName("www.example.com"), x509.DNSName("example.com")],
    ),
    "cn not in san": _cert(x509.Name([_cn("Legacy.Example.com.")]), [x509.DNSName("a.test")]),
    "no san": _cert(x509.Name([_cn("only-cn.test")]), None),
    "no cn": _cert(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org")]),
        [x509.DNSName("*.wild.test")],
    ),
    "ip and email sans": _cert(
        x509.Name([_cn("mixed.test")]),
        [
            x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            x509.RFC822Name("ops@mixed.test"),
            x509.DNSName("MIXED.test"),
            x509.UniformResourceIdentifier("https://mixed.test/"),
        ],
    ),
    "multi-valued rdn": _cert(
        x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [_cn("one.test"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O")]
                ),
                x509.RelativeDistinguishedName([_cn("two.test")]),
            ]
        ),
        [],
    ),
    "printable cn": _cert(
        x509.Name([_cn("printable.test", x509.name._ASN1Type.PrintableString)]), None
    ),
    "utf8 non-ascii cn": _cert(
        x509.Name([_cn("bücher.test")]), [x509.DNSName("xn--bcher-kva.test")]
    ),
    "bmp cn (fallback)": _cert(
        x509.Name([_cn("bmp.test", x509.name._ASN1Type.BMPString)]), [x509.DNSName("b.test")]
    ),
}


def _reference(cert: x509.Certificate) -> tuple[tuple[str, ...], str]:
    return rfc6962._names(cert), cert.issuer.rfc4514_string()


@pytest.mark.parametrize("case", sorted(CASES))
def test_names_and_issuer_match_cryptography(case: str) -> None:
    cert = CASES[case]
    der = cert.public_bytes(DER)
    assert rfc6962._names_and_issuer(der, cert) == _reference(cert)
    fields = cert_fields(der)
    if case == "bmp cn (fallback)":
        assert fields is None  # handed to cryptography
    else:
        assert fields is not None
        assert fields.issuer_der == cert.issuer.public_bytes()


def test_a_duplicate_san_extension_is_not_read_fast() -> None:
    """Two SAN extensions: the fast reader declines, and cryptography refuses the entry."""
    cert = CASES["cn in san"]
    der = bytearray(cert.public_bytes(DER))
    bc_oid = bytes.fromhex("0603551d13")  # BasicConstraints -> rewrite it as a second SAN
    at = der.index(bc_oid)
    der[at : at + len(bc_oid)] = bytes.fromhex("0603551d11")
    assert cert_fields(bytes(der)) is None


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x80\x00\x00", b"\x31\x00", b"\xff" * 40])
def test_garbage_is_declined_not_raised(garbage: bytes) -> None:
    assert cert_fields(garbage) is None


def test_offset_framing_equals_the_cursor_entry_by_entry(
    ca: LocalCA, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [c.public_bytes(DER) for c in ca.issue(["x.test"], now).chain]
    entries: list[tuple[bytes, bytes]] = []
    for i in range(20):
        cert = ca.issue([f"h{i}.test", f"alt{i}.test"], now).cert.public_bytes(DER)
        entries.append(
            (
                encode_x509_leaf(i, cert, b"\x00\x01" if i % 3 else b""),
                encode_cert_chain(chain[: i % 2 + 1]),
            )
        )
        pre = make_precert(
            ca.issuer_cert, ca.issuer_key, [f"p{i}.test"], now, now + timedelta(days=9)
        )
        leaf = encode_precert_leaf(i, b"\x07" * 32, strip_poison(pre.tbs_certificate_bytes))
        entries.append((leaf, encode_precert_chain_entry(pre.public_bytes(DER), chain)))
    fast = [parse_leaf(leaf, extra, i) for i, (leaf, extra) in enumerate(entries)]
    monkeypatch.setattr(rfc6962, "_fields", lambda _leaf, _extra: None)
    slow = [parse_leaf(leaf, extra, i) for i, (leaf, extra) in enumerate(entries)]
    assert fast == slow
