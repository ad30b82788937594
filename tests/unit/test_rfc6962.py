"""RFC 6962 hashes, proofs, tree heads and entries (``ctwatch.rfc6962``).

Proofs are checked against a reference written here straight from RFC 6962 section 2.1 (the
recursive ``MTH``, ``PATH`` and ``PROOF``/``SUBPROOF``), for every pair of sizes up to 20: each
valid proof verifies, and every single-bit change, wrong index, wrong size, truncated or
lengthened proof is rejected without raising.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from certpilot.domain.errors import CertpilotError
from certpilot.localca import LocalCA
from ctwatch.rfc6962 import (
    SIG_ALG_ECDSA,
    SIG_ALG_RSA,
    STH,
    MalformedEntry,
    MalformedSTH,
    encode_cert_chain,
    encode_digitally_signed,
    encode_precert_chain_entry,
    encode_x509_leaf,
    leaf_hash,
    node_hash,
    parse_leaf,
    parse_sth_json,
    root_from_leaves,
    sth_signed_data,
    verify_consistency,
    verify_inclusion,
    verify_sth,
)
from tests.support.ct_log import LoopbackCTLog, make_precert

N_MAX = 20

# -- the reference: RFC 6962 section 2.1, literally ---------------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return subproof(m, d, True)


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


DATA = [f"leaf {i}".encode() for i in range(N_MAX)]
ROOTS = [mth(DATA[:n]) for n in range(N_MAX + 1)]


def _flip(b: bytes, at: int) -> bytes:
    out = bytearray(b)
    out[at] ^= 0x80
    return bytes(out)


# -- hashes --------------------------------------------------------------------------------------


def test_hashes_and_roots_match_the_rfc() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    for n in range(N_MAX + 1):
        assert root_from_leaves([leaf_hash(x) for x in DATA[:n]]) == ROOTS[n]
    # RFC 6962 test vector (certificate-transparency-go merkle tests): empty tree root.
    assert ROOTS[0].hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# -- inclusion -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, N_MAX + 1))
def test_inclusion_every_leaf(n: int) -> None:
    root = ROOTS[n]
    for m in range(n):
        leaf = leaf_hash(DATA[m])
        p = path(m, DATA[:n])
        assert verify_inclusion(leaf, m, n, p, root), (m, n)
        # wrong index, wrong size, wrong leaf, wrong root
        for other in {m - 1, m + 1, n, 2 * n} - {m}:
            if other >= 0:
                assert not verify_inclusion(leaf, other, n, p, root), (m, n, other)
        # Another size is rejected when its path has another length; with the same length the
        # root alone binds the size (e.g. leaf 0 of 3 and of 4 share a path shape), which is
        # why a monitor only checks proofs against a signed tree head of that size.
        for size in {n - 1, n + 1, 2 * n} - {n}:
            if size > m and len(path(m, [b""] * size)) != len(p):
                assert not verify_inclusion(leaf, m, size, p, root), (m, n, size)
        assert not verify_inclusion(leaf_hash(b"other"), m, n, p, root)
        for at in (0, 17, 31):
            assert not verify_inclusion(leaf, m, n, p, _flip(root, at))
            assert not verify_inclusion(_flip(leaf, at), m, n, p, root)
        # every single-byte change in the proof
        for i in range(len(p)):
            for at in (0, 31):
                bad = [*p[:i], _flip(p[i], at), *p[i + 1 :]]
                assert not verify_inclusion(leaf, m, n, bad, root), (m, n, i)
        # proof too short / too long
        if p:
            assert not verify_inclusion(leaf, m, n, p[:-1], root)
        assert not verify_inclusion(leaf, m, n, [*p, p[0] if p else leaf], root)
        assert not verify_inclusion(leaf, m, n, [root, *p], root)


def test_inclusion_bad_input_never_raises() -> None:
    leaf, root = leaf_hash(DATA[0]), ROOTS[1]
    assert verify_inclusion(leaf, 0, 1, [], root)
    assert not verify_inclusion(leaf, -1, 1, [], root)
    assert not verify_inclusion(leaf, 0, 0, [], root)
    assert not verify_inclusion(leaf, 0, -5, [], root)
    assert not verify_inclusion(leaf[:31], 0, 1, [], root[:31])
    assert not verify_inclusion(leaf, 0, 2**64, [], root)
    assert not verify_inclusion(leaf, 0, 2, [b"short"], root)
    assert not verify_inclusion(leaf, 0, 2, ["x" * 32], root)  # type: ignore[list-item]
    assert not verify_inclusion(leaf, True, 2, [], root)


# -- consistency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, N_MAX + 1))
def test_consistency_every_pair(n: int) -> None:
    second = ROOTS[n]
    for m in range(1, n + 1):
        first = ROOTS[m]
        p = proof(m, DATA[:n])
        assert verify_consistency(m, n, first, second, p), (m, n)
        if m == n:
            assert p == []
            assert not verify_consistency(m, n, first, ROOTS[n - 1], p)
            assert not verify_consistency(m, n, first, second, [first])
            continue
        assert not verify_consistency(m, n, first, second, [])
        assert not verify_consistency(n, m, second, first, p)
        for at in (0, 31):
            assert not verify_consistency(m, n, _flip(first, at), second, p), (m, n)
            assert not verify_consistency(m, n, first, _flip(second, at), p), (m, n)
        for i in range(len(p)):
            for at in (0, 13, 31):
                bad = [*p[:i], _flip(p[i], at), *p[i + 1 :]]
                assert not verify_consistency(m, n, first, second, bad), (m, n, i)
        assert not verify_consistency(m, n, first, second, p[:-1]), (m, n)
        assert not verify_consistency(m, n, first, second, p[1:]), (m, n)
        assert not verify_consistency(m, n, first, second, [*p, p[-1]]), (m, n)
        assert not verify_consistency(m, n, first, second, [first, *p]), (m, n)
        # the proof is for (m, n): other sizes with the right roots of those sizes fail
        for m2 in {m - 1, m + 1} - {0, n, m}:
            assert not verify_consistency(m2, n, ROOTS[m2], second, p), (m, m2, n)
        if n + 1 <= N_MAX:
            assert not verify_consistency(m, n + 1, first, ROOTS[n + 1], p), (m, n)


def test_consistency_edge_cases() -> None:
    r0, r5 = ROOTS[0], ROOTS[5]
    assert verify_consistency(0, 5, r0, r5, [])  # everything extends the empty tree
    assert not verify_consistency(0, 5, r0, r5, [r5])
    assert not verify_consistency(0, 5, ROOTS[1], r5, [])  # not the empty tree's root
    assert verify_consistency(0, 0, r0, r0, [])
    assert verify_consistency(5, 5, r5, r5, [])
    assert not verify_consistency(5, 5, r5, ROOTS[4], [])
    assert not verify_consistency(6, 5, ROOTS[6], r5, [])
    assert not verify_consistency(-1, 5, r0, r5, [])
    assert not verify_consistency(1, 2**64, r0, r5, [r5])
    assert not verify_consistency(4, 5, ROOTS[4][:31], r5, proof(4, DATA[:5]))
    assert not verify_consistency(3, 5, ROOTS[3], r5, [b"\x00" * 31])
    assert not verify_consistency(3, 5, ROOTS[3], r5, [None])  # type: ignore[list-item]
    # power-of-two first sizes: the proof omits the old root (RFC 6962 section 2.1.2)
    for m in (1, 2, 4, 8, 16):
        assert ROOTS[m] not in proof(m, DATA[: m + 1])
        assert verify_consistency(m, m + 1, ROOTS[m], ROOTS[m + 1], proof(m, DATA[: m + 1]))


def test_reference_matches_loopback_log_proofs() -> None:
    from tests.support.ct_log import consistency_proof, inclusion_path

    hashes_ = [leaf_hash(x) for x in DATA]
    for n in range(1, N_MAX + 1):
        for m in range(n):
            assert inclusion_path(m, hashes_[:n]) == path(m, DATA[:n])
            if m:
                assert consistency_proof(m, hashes_[:n]) == proof(m, DATA[:n])


# -- signed tree heads ---------------------------------------------------------------------------


def _spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, sth: STH) -> STH:
    data = sth_signed_data(sth)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = encode_digitally_signed(SIG_ALG_ECDSA, key.sign(data, ec.ECDSA(hashes.SHA256())))
    else:
        sig = encode_digitally_signed(
            SIG_ALG_RSA, key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        )
    return STH(sth.tree_size, sth.timestamp_ms, sth.root_hash, sig)


def test_sth_signed_data_layout() -> None:
    sth = STH(7, 1_700_000_000_123, ROOTS[7], b"")
    data = sth_signed_data(sth)
    assert data == b"\x00\x01" + struct.pack(">QQ", 1_700_000_000_123, 7) + ROOTS[7]
    assert len(data) == 2 + 8 + 8 + 32


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_verify_sth(kind: str) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ecdsa"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    other = ec.generate_private_key(ec.SECP256R1())
    sth = _signed(key, STH(7, 1_700_000_000_123, ROOTS[7], b""))
    spki = _spki(key)
    assert verify_sth(sth, spki)
    assert not verify_sth(sth, _spki(other))
    assert not verify_sth(sth, b"not a key")
    # any change to what was signed
    assert not verify_sth(STH(8, sth.timestamp_ms, sth.root_hash, sth.signature), spki)
    assert not verify_sth(STH(7, sth.timestamp_ms + 1, sth.root_hash, sth.signature), spki)
    assert not verify_sth(STH(7, sth.timestamp_ms, ROOTS[6], sth.signature), spki)
    # any change to the DigitallySigned struct
    for at in range(len(sth.signature)):
        bad = STH(7, sth.timestamp_ms, sth.root_hash, _flip(sth.signature, at))
        assert not verify_sth(bad, spki), at
    assert not verify_sth(STH(7, sth.timestamp_ms, sth.root_hash, sth.signature + b"\0"), spki)
    assert not verify_sth(STH(7, sth.timestamp_ms, sth.root_hash, sth.signature[:3]), spki)
    # the algorithm byte must match the key
    wrong_alg = bytes([4, SIG_ALG_RSA if kind == "ecdsa" else SIG_ALG_ECDSA]) + sth.signature[2:]
    assert not verify_sth(STH(7, sth.timestamp_ms, sth.root_hash, wrong_alg), spki)


def test_parse_sth_json() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sth = _signed(key, STH(3, 1_700_000_000_000, ROOTS[3], b""))
    obj = {
        "tree_size": 3,
        "timestamp": 1_700_000_000_000,
        "sha256_root_hash": base64.b64encode(ROOTS[3]).decode(),
        "tree_head_signature": base64.b64encode(sth.signature).decode(),
    }
    parsed = parse_sth_json(obj)
    assert parsed == sth
    assert verify_sth(parsed, _spki(key))
    bads: list[object] = [
        [],
        {**obj, "tree_size": -1},
        {**obj, "tree_size": "3"},
        {**obj, "timestamp": None},
        {**obj, "sha256_root_hash": "!!"},
        {**obj, "sha256_root_hash": base64.b64encode(b"x" * 31).decode()},
        {**obj, "tree_head_signature": ""},
        {k: v for k, v in obj.items() if k != "tree_head_signature"},
    ]
    for bad in bads:
        with pytest.raises(MalformedSTH):
            parse_sth_json(bad)


# -- entries -------------------------------------------------------------------------------------


@pytest.fixture
def logged(ca: LocalCA, now: datetime) -> LoopbackCTLog:
    """A log (not started) with one x509 entry and one precert entry."""
    log = LoopbackCTLog()
    issued = ca.issue(["www.Example.com", "api.example.com"], now, common_name="WWW.example.com")
    log.add_x509(
        issued.cert.public_bytes(serialization.Encoding.DER),
        [c.public_bytes(serialization.Encoding.DER) for c in issued.chain],
    )
    pre = make_precert(
        ca.issuer_cert, ca.issuer_key, ["pre.example.com"], now, now + timedelta(days=30)
    )
    log.add_precert(
        pre.public_bytes(serialization.Encoding.DER),
        ca.issuer_cert.public_bytes(serialization.Encoding.DER),
    )
    log.publish()
    return log


def test_parse_x509_entry(logged: LoopbackCTLog, ca: LocalCA) -> None:
    entry = parse_leaf(logged.leaf_input(0), logged.extra_data(0), 0)
    assert entry.entry_type == "x509"
    assert entry.names == ("www.example.com", "api.example.com")
    assert entry.issuer == ca.issuer_cert.subject.rfc4514_string()
    assert entry.chain == (ca.issuer_cert.public_bytes(serialization.Encoding.DER),)
    assert entry.sha256 == hashlib.sha256(entry.cert_der).hexdigest()
    assert entry.not_before < entry.not_after
    assert entry.serial and entry.serial == entry.serial.lower()
    assert entry.issuer_key_hash is None
    assert abs(entry.timestamp_ms - logged.sth.timestamp_ms) < 60_000


def test_parse_precert_entry(logged: LoopbackCTLog, ca: LocalCA) -> None:
    entry = parse_leaf(logged.leaf_input(1), logged.extra_data(1), 1)
    assert entry.entry_type == "precert"
    assert entry.names == ("pre.example.com",)
    spki = ca.issuer_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert entry.issuer_key_hash == hashlib.sha256(spki).digest()
    assert entry.chain == (ca.issuer_cert.public_bytes(serialization.Encoding.DER),)
    assert entry.tbs_certificate is not None
    assert entry.tbs_certificate in logged.leaf_input(1)
    assert entry.sha256 == hashlib.sha256(entry.cert_der).hexdigest()


def _malformed(leaf: bytes, extra: bytes) -> MalformedEntry:
    with pytest.raises(MalformedEntry) as info:
        parse_leaf(leaf, extra, 42)
    assert isinstance(info.value, CertpilotError)
    assert info.value.index == 42
    return info.value


def test_malformed_entries(logged: LoopbackCTLog) -> None:
    x_leaf, x_extra = logged.leaf_input(0), logged.extra_data(0)
    p_leaf, p_extra = logged.leaf_input(1), logged.extra_data(1)
    # truncated anywhere
    for cut in (0, 1, 5, 11, 14, len(x_leaf) - 1):
        _malformed(x_leaf[:cut], x_extra)
    for cut in (0, 2, 40, len(p_leaf) - 1):
        _malformed(p_leaf[:cut], p_extra)
    for cut in (0, 2, 5, len(x_extra) - 1):
        _malformed(x_leaf, x_extra[:cut])
    for cut in (0, 2, 10, len(p_extra) - 1):
        _malformed(p_leaf, p_extra[:cut])
    # trailing bytes
    _malformed(x_leaf + b"\0", x_extra)
    _malformed(x_leaf, x_extra + b"\0")
    _malformed(p_leaf, p_extra + b"\0")
    # wrong version, leaf type, entry type
    assert "version" in _malformed(b"\x01" + x_leaf[1:], x_extra).reason
    assert "leaf_type" in _malformed(x_leaf[:1] + b"\x01" + x_leaf[2:], x_extra).reason
    assert "entry_type" in _malformed(x_leaf[:10] + b"\x00\x02" + x_leaf[12:], x_extra).reason
    # bad lengths: certificate length past the end, chain length inconsistent
    _malformed(x_leaf[:12] + b"\xff\xff\xff" + x_leaf[15:], x_extra)
    _malformed(x_leaf, b"\x00\x00\x05\x00\x00\x09abcde")
    # garbage certificates
    _malformed(encode_x509_leaf(1, b"not a certificate"), encode_cert_chain([]))
    _malformed(encode_x509_leaf(1, b""), encode_cert_chain([]))
    _malformed(p_leaf, encode_precert_chain_entry(b"\x30\x03\x02\x01\x01", []))
    # wrong types never escape as TypeError
    _malformed("text", b"")  # type: ignore[arg-type]
    # the x509 leaf with an empty chain is fine
    assert parse_leaf(x_leaf, encode_cert_chain([])).chain == ()


def test_malformed_entry_message() -> None:
    err = MalformedEntry(7, "leaf_input: truncated")
    assert err.one_line() == "CT entry 7: leaf_input: truncated"
    assert str(MalformedEntry(None, "x")) == "CT entry: x"


def test_strip_poison_gives_the_final_certificate_tbs(ca: LocalCA, now: datetime) -> None:
    """The precert leaf's TBS is the final certificate's TBS (RFC 6962 section 3.2)."""
    from cryptography import x509

    from tests.support.ct_log import strip_poison

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "a.test")]))
        .issuer_name(ca.issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), False)
    )
    final = builder.sign(ca.issuer_key, hashes.SHA256())
    pre = builder.add_extension(x509.PrecertPoison(), critical=True).sign(
        ca.issuer_key, hashes.SHA256()
    )
    assert strip_poison(pre.tbs_certificate_bytes) == final.tbs_certificate_bytes
    assert strip_poison(final.tbs_certificate_bytes) == final.tbs_certificate_bytes
