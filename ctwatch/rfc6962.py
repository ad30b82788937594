"""RFC 6962 (Certificate Transparency v1) data structures and proofs, with no I/O.

Everything a CT monitor must check before it believes a log:

* Merkle tree hashes (RFC 6962 section 2.1): :func:`leaf_hash`, :func:`node_hash`,
  :func:`root_from_leaves`;
* audit (inclusion) and consistency proofs, verified with the algorithms of RFC 9162 sections
  2.1.3.2 and 2.1.4.2 (the same proofs as RFC 6962 section 2.1.1/2.1.2, written as iterative
  checks): :func:`verify_inclusion`, :func:`verify_consistency`;
* signed tree heads (RFC 6962 section 3.5 and 4.3): :class:`STH`, :func:`parse_sth_json`,
  :func:`sth_signed_data`, :func:`verify_sth`, :func:`log_id`;
* log entries (RFC 6962 section 3.4 and 4.6): :func:`parse_leaf` turns ``leaf_input`` +
  ``extra_data`` from ``get-entries`` into a :class:`CTEntry`.

Verification functions answer ``True``/``False`` and never raise on bad input: a log that sends
garbage is a log that failed verification. Parsers raise :class:`MalformedEntry` or
:class:`MalformedSTH` (both :class:`~certpilot.domain.errors.CertpilotError`) and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from certpilot.domain.errors import CertpilotError
from ctwatch.der import cert_fields

HASH_SIZE = 32
"""SHA-256 output size: every Merkle hash and the precert ``issuer_key_hash``."""

# RFC 5246 section 7.4.1.4.1 codes used by DigitallySigned (RFC 6962 section 2.1.4).
HASH_ALG_SHA256 = 4
SIG_ALG_RSA = 1
SIG_ALG_ECDSA = 3

# RFC 6962 section 3.4 / 3.5 enums.
_VERSION_V1 = 0
_LEAF_TIMESTAMPED_ENTRY = 0
_SIGTYPE_CERT_TIMESTAMP = 0
_SIGTYPE_TREE_HASH = 1
_ENTRY_X509 = 0
_ENTRY_PRECERT = 1

_MAX_SIZE = 2**64 - 1  # tree sizes and indexes are uint64 on the wire


# -- errors ----------------------------------------------------------------------------------


class CTLogError(CertpilotError):
    """Data received from a CT log is not what RFC 6962 says it must be."""


class MalformedEntry(CTLogError):
    """A ``get-entries`` entry that does not parse; ``index`` is its log index when known."""

    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"CT entry {self.index}" if self.index is not None else "CT entry"
        return f"{where}: {self.reason}"


class MalformedSTH(CTLogError):
    """A ``get-sth`` answer that does not parse (missing field, bad base64, bad length...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"signed tree head: {reason}")


# -- Merkle tree hashes (RFC 6962 section 2.1) -------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (the ``MerkleTreeLeaf`` bytes)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an interior node (the prefixes stop second preimages)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def empty_root() -> bytes:
    """``MTH({})``: the root of the empty tree, SHA-256 of the empty string."""
    return hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` over already-hashed leaves, by the recursive definition of section 2.1.

    Recursion depth is ``log2(n)``; the work is ``O(n)``. Meant for tests and small trees.
    """
    n = len(leaf_hashes)
    if n == 0:
        return empty_root()
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_from_leaves(leaf_hashes[:k]), root_from_leaves(leaf_hashes[k:]))


def _is_hash(value: object) -> TypeGuard[bytes]:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_SIZE


def _is_size(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf hashing to ``leaf`` at ``index`` in the tree ``root``.

    RFC 9162 section 2.1.3.2, step by step. A proof of the wrong length, a hash of the wrong
    size or an index outside the tree is ``False``.
    """
    if not (_is_size(index) and _is_size(tree_size) and _is_hash(leaf) and _is_hash(root)):
        return False
    if index >= tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = bytes(leaf)
    for p in proof:
        if not _is_hash(p) or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(bytes(p), r)
            if not fn & 1:
                # fn is the last node of its level and has no right sibling: climb until it is
                # a right child (or reaches the left edge).
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, bytes(p))
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first_size: int,
    second_size: int,
    first_root: bytes,
    second_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """Whether ``proof`` shows the tree ``second_root`` extends the tree ``first_root``.

    RFC 9162 section 2.1.4.2, plus the two cases it leaves to the caller (as Trillian treats
    them): equal sizes need equal roots and an empty proof; any tree is consistent with the
    empty tree (whose root must be ``MTH({})``, :func:`empty_root`), with an empty proof.
    """
    if not (_is_size(first_size) and _is_size(second_size)):
        return False
    if not (_is_hash(first_root) and _is_hash(second_root)):
        return False
    if first_size > second_size:
        return False
    if first_size == second_size:
        return len(proof) == 0 and first_root == second_root
    if first_size == 0:
        return len(proof) == 0 and first_root == empty_root()
    if not proof or not all(_is_hash(p) for p in proof):
        return False
    path = [bytes(p) for p in proof]
    # Step 2: when first_size is a power of two the old root is a node of the new tree, and the
    # proof omits it.
    if first_size & (first_size - 1) == 0:
        path.insert(0, bytes(first_root))
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


# -- signed tree heads (RFC 6962 sections 3.5 and 4.3) -----------------------------------------


@dataclass(frozen=True, slots=True)
class STH:
    """A signed tree head as ``get-sth`` returns it (signature still unchecked)."""

    tree_size: int
    timestamp_ms: int
    root_hash: bytes
    signature: bytes  # the TLS-encoded DigitallySigned struct


def _b64(obj: Mapping[str, object], key: str) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedSTH(f"{key} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedSTH(f"{key} is not base64") from e


def _uint(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if not _is_size(value):
        raise MalformedSTH(f"{key} is missing or not a uint64")
    return value


def parse_sth_json(obj: object) -> STH:
    """The :class:`STH` in a decoded ``get-sth`` JSON answer (section 4.3); raises MalformedSTH."""
    if not isinstance(obj, Mapping):
        raise MalformedSTH("answer is not a JSON object")
    root = _b64(obj, "sha256_root_hash")
    if len(root) != HASH_SIZE:
        raise MalformedSTH(f"sha256_root_hash is {len(root)} bytes, not {HASH_SIZE}")
    signature = _b64(obj, "tree_head_signature")
    if not signature:
        raise MalformedSTH("tree_head_signature is empty")
    return STH(_uint(obj, "tree_size"), _uint(obj, "timestamp"), root, signature)


def sth_signed_data(sth: STH) -> bytes:
    """The ``TreeHeadSignature`` the log signs (section 3.5): v1, tree_hash, ts, size, root."""
    return (
        struct.pack(">BBQQ", _VERSION_V1, _SIGTYPE_TREE_HASH, sth.timestamp_ms, sth.tree_size)
        + sth.root_hash
    )


def log_id(public_key_der: bytes) -> bytes:
    """A log's ID: SHA-256 of its DER ``SubjectPublicKeyInfo`` (section 3.2)."""
    return hashlib.sha256(public_key_der).digest()


def encode_digitally_signed(signature_algorithm: int, signature: bytes) -> bytes:
    """``DigitallySigned`` with SHA-256 (RFC 5246 section 4.7): the inverse of the verifier."""
    return struct.pack(">BBH", HASH_ALG_SHA256, signature_algorithm, len(signature)) + signature


def verify_digitally_signed(data: bytes, digitally_signed: bytes, public_key_der: bytes) -> bool:
    """Whether ``digitally_signed`` is a valid SHA-256 ECDSA or RSA PKCS#1 v1.5 signature.

    The signature algorithm byte must match the key type (RFC 6962 section 2.1.4 allows only
    these two); any other hash, trailing bytes or an unreadable key is ``False``.
    """
    if len(digitally_signed) < 4:
        return False
    hash_alg, sig_alg, length = struct.unpack(">BBH", digitally_signed[:4])
    sig = digitally_signed[4:]
    if hash_alg != HASH_ALG_SHA256 or length != len(sig) or not sig:
        return False
    try:
        key = serialization.load_der_public_key(public_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    try:
        if sig_alg == SIG_ALG_ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
            return True
        if sig_alg == SIG_ALG_RSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def verify_sth(sth: STH, public_key_der: bytes) -> bool:
    """Whether the log holding ``public_key_der`` signed this tree head."""
    if not (_is_hash(sth.root_hash) and _is_size(sth.tree_size) and _is_size(sth.timestamp_ms)):
        return False
    return verify_digitally_signed(sth_signed_data(sth), sth.signature, public_key_der)


# -- log entries (RFC 6962 sections 3.4 and 4.6) -----------------------------------------------


EntryType = Literal["x509", "precert"]


@dataclass(frozen=True, slots=True)
class CTEntry:
    """One parsed log entry: the certificate (or precertificate) and what a monitor matches on.

    ``cert_der`` is the logged certificate for ``x509`` entries and the precertificate (with its
    poison extension, from ``extra_data``) for ``precert`` entries; ``chain`` is the issuer
    chain the submitter gave, leaf-side first. ``names`` are the DNS SANs and the subject CN,
    lowercased, deduplicated, in certificate order. ``sha256`` and ``serial`` are lowercase hex.
    """

    entry_type: EntryType
    timestamp_ms: int
    cert_der: bytes
    chain: tuple[bytes, ...]
    names: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime
    serial: str
    sha256: str
    issuer_key_hash: bytes | None = None  # precert entries only (section 3.2)
    tbs_certificate: bytes | None = None  # precert entries only: the TBS the log signed


class _Reader:
    """A cursor over TLS-encoded bytes (RFC 5246 section 4) that raises MalformedEntry."""

    def __init__(self, data: bytes, what: str, index: int | None) -> None:
        self.data = data
        self.pos = 0
        self.what = what
        self.index = index

    def fail(self, reason: str) -> MalformedEntry:
        return MalformedEntry(self.index, f"{self.what}: {reason}")

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"truncated in {field} (need {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")

    def vector(self, length_bytes: int, field: str) -> bytes:
        return self.take(self.uint(length_bytes, f"{field} length"), field)

    def cert_list(self, field: str) -> list[bytes]:
        """``ASN.1Cert certificate_chain<0..2^24-1>``: 3-byte total, then 3-byte-length certs."""
        inner = _Reader(self.vector(3, field), f"{self.what} {field}", self.index)
        certs: list[bytes] = []
        while not inner.done():
            cert = inner.vector(3, "certificate")
            if not cert:
                raise inner.fail("empty certificate")
            certs.append(cert)
        return certs

    def done(self) -> bool:
        return self.pos == len(self.data)

    def end(self) -> None:
        if not self.done():
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out.extend(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attr.value, str):
            out.append(attr.value)
    return _normal(out)


#: Issuer DER -> RFC 4514 string. Real logs have a few hundred issuers; bounded anyway.
_ISSUERS: dict[bytes, str] = {}
_ISSUERS_MAX = 4096


def _normal(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip().lower().rstrip(".") for n in names if n.strip()))


def _names_and_issuer(cert_der: bytes, cert: x509.Certificate) -> tuple[tuple[str, ...], str]:
    """The names and issuer of ``cert``: read from its DER by :mod:`ctwatch.der` when it can
    (the issuer string computed once per issuer), else through ``cryptography``."""
    fields = cert_fields(cert_der)
    if fields is None:
        return _names(cert), cert.issuer.rfc4514_string()
    issuer = _ISSUERS.get(fields.issuer_der)
    if issuer is None:
        issuer = cert.issuer.rfc4514_string()
        if len(_ISSUERS) >= _ISSUERS_MAX:
            _ISSUERS.clear()
        _ISSUERS[fields.issuer_der] = issuer
    return _normal((*fields.dns_names, *fields.common_names)), issuer


def _entry(
    index: int | None,
    entry_type: EntryType,
    timestamp_ms: int,
    cert_der: bytes,
    chain: list[bytes],
    issuer_key_hash: bytes | None = None,
    tbs: bytes | None = None,
) -> CTEntry:
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        # Touch every field we report: cryptography parses lazily, so errors surface here.
        names, issuer = _names_and_issuer(cert_der, cert)
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        serial = format(cert.serial_number, "x")
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as e:
        raise MalformedEntry(index, f"{entry_type} certificate does not parse: {e}") from e
    return CTEntry(
        entry_type=entry_type,
        timestamp_ms=timestamp_ms,
        cert_der=cert_der,
        chain=tuple(chain),
        names=names,
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        sha256=hashlib.sha256(cert_der).hexdigest(),
        issuer_key_hash=issuer_key_hash,
        tbs_certificate=tbs,
    )


def _chain(extra: bytes, pos: int) -> list[bytes] | None:
    """``certificate_chain<0..2^24-1>`` at ``pos``, ending exactly at the end; else None."""
    end = len(extra)
    if pos + 3 > end:
        return None
    q = pos + 3
    if q + int.from_bytes(extra[pos:q], "big") != end:
        return None
    certs: list[bytes] = []
    while q < end:
        if q + 3 > end:
            return None
        n = int.from_bytes(extra[q : q + 3], "big")
        q += 3
        if n == 0 or q + n > end:
            return None
        certs.append(extra[q : q + n])
        q += n
    return certs


_Split = tuple[EntryType, int, bytes, list[bytes], bytes | None, bytes | None]


def _fields(leaf: bytes, extra: bytes) -> _Split | None:
    """The fields of a well-formed entry by plain offsets (the common case, about three times
    cheaper than the cursor); ``None`` for anything unexpected, which the cursor then names.
    Returns ``(type, timestamp, certificate, chain, issuer_key_hash, tbs)``."""
    n = len(leaf)
    if n < 15 or leaf[0] != _VERSION_V1 or leaf[1] != _LEAF_TIMESTAMPED_ENTRY:
        return None
    timestamp = int.from_bytes(leaf[2:10], "big")
    entry_type = leaf[10] << 8 | leaf[11]
    if entry_type == _ENTRY_X509:
        length = int.from_bytes(leaf[12:15], "big")
        p = 15 + length
        if length == 0 or p + 2 > n or p + 2 + (leaf[p] << 8 | leaf[p + 1]) != n:
            return None
        chain = _chain(extra, 0)
        if chain is None:
            return None
        return "x509", timestamp, leaf[15:p], chain, None, None
    if entry_type == _ENTRY_PRECERT:
        if n < 47:
            return None
        length = int.from_bytes(leaf[44:47], "big")
        p = 47 + length
        if length == 0 or p + 2 > n or p + 2 + (leaf[p] << 8 | leaf[p + 1]) != n:
            return None
        if len(extra) < 3:
            return None
        pre_len = int.from_bytes(extra[0:3], "big")
        chain = _chain(extra, 3 + pre_len) if pre_len else None
        if chain is None:
            return None
        return "precert", timestamp, extra[3 : 3 + pre_len], chain, leaf[12:44], leaf[47:p]
    return None


def parse_leaf(leaf_input: bytes, extra_data: bytes, index: int | None = None) -> CTEntry:
    """Parse one ``get-entries`` entry (already base64-decoded) into a :class:`CTEntry`.

    ``leaf_input`` is a ``MerkleTreeLeaf`` (section 3.4): version v1, leaf type
    timestamped_entry, then a ``TimestampedEntry`` holding an ``ASN.1Cert`` (x509_entry) or an
    ``issuer_key_hash`` + ``TBSCertificate`` (precert_entry), then ``CtExtensions``.
    ``extra_data`` (section 4.6) is the certificate chain for x509 entries, and a
    ``PrecertChainEntry`` (the precertificate, then its chain) for precert entries.

    Raises :class:`MalformedEntry` (tagged with ``index``) for anything that does not parse,
    including trailing bytes and certificates cryptography rejects; never anything else.
    """
    if not isinstance(leaf_input, bytes | bytearray) or not isinstance(
        extra_data, bytes | bytearray
    ):
        raise MalformedEntry(index, "leaf_input and extra_data must be bytes")
    fast = _fields(bytes(leaf_input), bytes(extra_data))
    if fast is not None:  # well-formed framing (nearly every entry): no per-field cursor
        kind, stamp, der, certs, key_hash, tbs_der = fast
        return _entry(index, kind, stamp, der, certs, key_hash, tbs_der)
    # Something is off: the cursor walks it again to name what, where.
    leaf = _Reader(bytes(leaf_input), "leaf_input", index)
    version = leaf.uint(1, "version")
    if version != _VERSION_V1:
        raise leaf.fail(f"unknown version {version}")
    leaf_type = leaf.uint(1, "leaf_type")
    if leaf_type != _LEAF_TIMESTAMPED_ENTRY:
        raise leaf.fail(f"unknown leaf_type {leaf_type}")
    timestamp = leaf.uint(8, "timestamp")
    entry_type = leaf.uint(2, "entry_type")
    extra = _Reader(bytes(extra_data), "extra_data", index)
    if entry_type == _ENTRY_X509:
        cert = leaf.vector(3, "ASN.1Cert")
        if not cert:
            raise leaf.fail("empty certificate")
        leaf.vector(2, "extensions")
        leaf.end()
        chain = extra.cert_list("certificate_chain")
        extra.end()
        return _entry(index, "x509", timestamp, cert, chain)
    if entry_type == _ENTRY_PRECERT:
        issuer_key_hash = leaf.take(HASH_SIZE, "issuer_key_hash")
        tbs = leaf.vector(3, "TBSCertificate")
        if not tbs:
            raise leaf.fail("empty TBSCertificate")
        leaf.vector(2, "extensions")
        leaf.end()
        precert = extra.vector(3, "pre_certificate")
        if not precert:
            raise extra.fail("empty pre_certificate")
        chain = extra.cert_list("precertificate_chain")
        extra.end()
        return _entry(index, "precert", timestamp, precert, chain, issuer_key_hash, tbs)
    raise leaf.fail(f"unknown entry_type {entry_type}")


# -- encoders (the inverse of the parsers, for logs under test and round-trip checks) ---------


def _u24(data: bytes) -> bytes:
    if len(data) >= 1 << 24:
        raise ValueError("vector longer than 2^24-1 bytes")
    return len(data).to_bytes(3, "big") + data


def encode_x509_leaf(timestamp_ms: int, cert_der: bytes, extensions: bytes = b"") -> bytes:
    """The ``MerkleTreeLeaf`` for an x509_entry."""
    return (
        struct.pack(">BBQH", _VERSION_V1, _LEAF_TIMESTAMPED_ENTRY, timestamp_ms, _ENTRY_X509)
        + _u24(cert_der)
        + struct.pack(">H", len(extensions))
        + extensions
    )


def encode_precert_leaf(
    timestamp_ms: int, issuer_key_hash: bytes, tbs_der: bytes, extensions: bytes = b""
) -> bytes:
    """The ``MerkleTreeLeaf`` for a precert_entry."""
    if len(issuer_key_hash) != HASH_SIZE:
        raise ValueError("issuer_key_hash must be 32 bytes")
    return (
        struct.pack(">BBQH", _VERSION_V1, _LEAF_TIMESTAMPED_ENTRY, timestamp_ms, _ENTRY_PRECERT)
        + issuer_key_hash
        + _u24(tbs_der)
        + struct.pack(">H", len(extensions))
        + extensions
    )


def encode_cert_chain(chain: Sequence[bytes]) -> bytes:
    """``ASN.1Cert certificate_chain<0..2^24-1>``: x509 ``extra_data``."""
    return _u24(b"".join(_u24(c) for c in chain))


def encode_precert_chain_entry(precert_der: bytes, chain: Sequence[bytes]) -> bytes:
    """``PrecertChainEntry``: precert ``extra_data``."""
    return _u24(precert_der) + encode_cert_chain(chain)
