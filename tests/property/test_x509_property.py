"""PEM, DER and PKCS#12 parsers (certpilot/domain/x509.py) and the file scanner
(scanner/files.py) on arbitrary and mutated bytes.

Documented behaviour: :func:`parse_der` and :func:`parse_pkcs12` raise
:class:`CertificateParseError` naming the origin; :func:`parse_pem_bundle` never raises and
puts a :class:`CertificateParseError` in place of each bad block; the file scanner never
raises and turns a bad file into an observation with a one-line ``error`` naming the path.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certpilot.domain.errors import CertificateParseError
from certpilot.domain.model import FileTarget
from certpilot.domain.x509 import ParsedCert, parse_der, parse_pem_bundle, parse_pkcs12
from scanner.files import scan_file_target
from tests.property.bad_input import assert_one_line, check, mutated, run, samples

S = samples()
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_KEY_LINE = S.key_pem.splitlines()[1].decode()  # never in a message


def _pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (label.encode(), body, label.encode())


# ---------------------------------------------------------------------------- DER


def _der(data: bytes) -> None:
    out = check(
        "x509.parse_der", lambda: parse_der(data, "cert.der"), CertificateParseError, "cert.der"
    )
    assert isinstance(out, ParsedCert | CertificateParseError)


@given(st.binary(max_size=2048))
def test_der_arbitrary_bytes(data: bytes) -> None:
    _der(data)


@given(st.one_of(mutated(S.leaf_der), mutated(S.rsa_leaf_der), mutated(S.ca_root_der)))
def test_der_mutated_certificate(data: bytes) -> None:
    _der(data)


# The DER OIDs (06 03 55 1d xx) of the extensions LocalCA writes and a few it does not: swapping
# one for another makes duplicate, unknown or mis-typed extensions that still parse as DER.
_EXT_OIDS = [bytes.fromhex("0603551d") + bytes([b]) for b in (14, 15, 17, 18, 19, 31, 32, 35, 37)]


@st.composite
def _swapped_extensions(draw: st.DrawFn) -> bytes:
    der = draw(st.sampled_from([S.leaf_der, S.ca_issuer_der]))
    present = [oid for oid in _EXT_OIDS if oid in der]
    old = draw(st.sampled_from(present))
    return der.replace(old, draw(st.sampled_from(_EXT_OIDS)), 1)


@given(_swapped_extensions())
def test_der_extension_oids_swapped(data: bytes) -> None:
    _der(data)
    _bundle(_pem(data))


_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: X.509 v3


@given(st.sampled_from([S.leaf_der, S.ca_root_der]), st.binary(min_size=1, max_size=3))
def test_der_version_field(der: bytes, version: bytes) -> None:
    assert _V3 in der
    field = bytes([0xA0, len(version) + 2, 0x02, len(version)]) + version
    data = der.replace(_V3, field, 1)
    _der(data)
    _bundle(_pem(data))


def test_der_round_trip() -> None:
    for der in (S.leaf_der, S.rsa_leaf_der, S.ca_root_der, S.ca_issuer_der):
        parsed = parse_der(der, "cert.der")
        assert parsed.info.der == der
        assert parse_pem_bundle(_pem(der))[0] == parsed


# ---------------------------------------------------------------------------- PEM


def _bundle(data: bytes) -> None:
    out = run("x509.parse_pem_bundle", lambda: parse_pem_bundle(data, "bundle.pem"))
    for i, item in enumerate(out):
        if isinstance(item, CertificateParseError):
            assert_one_line(item, f"bundle.pem#{i}")
        else:
            assert isinstance(item, ParsedCert)


@given(st.binary(max_size=2048))
def test_pem_arbitrary_bytes(data: bytes) -> None:
    _bundle(data)


@given(st.binary(max_size=1500).map(lambda b: _pem(b)))
def test_pem_block_around_arbitrary_der(data: bytes) -> None:
    _bundle(data)


@given(mutated(S.chain_pem + S.key_pem, max_ops=6))
def test_pem_mutated_bundle(data: bytes) -> None:
    _bundle(data)


@given(st.lists(st.sampled_from([S.leaf_der, S.rsa_leaf_der, S.ca_issuer_der]), max_size=4))
def test_pem_bundle_round_trip(ders: list[bytes]) -> None:
    data = b"junk before\n" + b"".join(_pem(d) for d in ders) + _pem(b"\x01", "PRIVATE KEY")
    parsed = parse_pem_bundle(data)
    assert [p.info.der for p in parsed if isinstance(p, ParsedCert)] == ders


# ---------------------------------------------------------------------------- PKCS#12


def _p12(data: bytes, password: bytes | None) -> None:
    out = check(
        "x509.parse_pkcs12",
        lambda: parse_pkcs12(data, password, "store.p12"),
        CertificateParseError,
        "store.p12",
    )
    assert isinstance(out, list | CertificateParseError)


@given(st.binary(max_size=2048), st.none() | st.binary(max_size=16))
def test_pkcs12_arbitrary_bytes(data: bytes, password: bytes | None) -> None:
    _p12(data, password)


@given(mutated(S.p12), st.sampled_from([S.p12_password, None, b"wrong"]))
def test_pkcs12_mutated_encrypted(data: bytes, password: bytes | None) -> None:
    _p12(data, password)


@given(mutated(S.p12_plain), st.sampled_from([None, b"x"]))
def test_pkcs12_mutated_plain(data: bytes, password: bytes | None) -> None:
    _p12(data, password)


def test_pkcs12_round_trip() -> None:
    certs = parse_pkcs12(S.p12, S.p12_password, "store.p12")
    assert [c.info.der for c in certs] == [S.leaf_der, S.ca_issuer_der]
    assert [c.info.der for c in parse_pkcs12(S.p12_plain, None)] == [S.leaf_der, S.ca_issuer_der]


# ---------------------------------------------------------------------------- file scanner


@pytest.fixture(scope="module")
def scan_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="certpilot-prop-") as d:
        yield Path(d)


def _scan(directory: Path, name: str, data: bytes) -> None:
    path = directory / name
    path.write_bytes(data)
    target = FileTarget(str(path), "PROP_P12_PASSWORD")
    env = {"PROP_P12_PASSWORD": S.p12_password.decode()}
    out = run("scanner.files.scan_file_target", lambda: scan_file_target(target, NOW, env=env))
    assert out, "every named file gives at least one observation"
    for obs in out:
        assert obs.ref.startswith(f"file://{path}#")
        if obs.leaf is None:
            assert obs.error is not None and obs.problems
            assert obs.error.splitlines() == [obs.error], obs.error
            assert str(path) in obs.error
            assert _KEY_LINE not in obs.error


_NAMES = st.sampled_from(["cert.pem", "cert.der", "store.p12", "bundle.crt", "noext"])


@given(_NAMES, st.binary(max_size=2048))
def test_scan_arbitrary_file(scan_dir: Path, name: str, data: bytes) -> None:
    _scan(scan_dir, name, data)


@given(
    _NAMES,
    st.one_of(
        mutated(S.chain_pem + S.key_pem, max_ops=6),
        mutated(S.leaf_der),
        mutated(S.p12),
        mutated(S.p12_plain),
    ),
)
def test_scan_mutated_file(scan_dir: Path, name: str, data: bytes) -> None:
    _scan(scan_dir, name, data)
