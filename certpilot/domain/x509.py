"""X.509 facts, read with ``cryptography`` into plain frozen dataclasses.

Everything downstream (judging, the store, metrics, JSON) works on :class:`CertInfo`, never on
``cryptography`` objects, so the rest of the code does not care where a certificate came from.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from certpilot.domain.errors import CertificateParseError

# The body excludes '-' (base64 never has one), so a block with a damaged END line cannot
# swallow the next block.
# What cryptography raises for bytes that are not a certificate: ValueError mostly, and
# exceptions that are not ValueErrors (an unknown version, an unsupported algorithm).
_NOT_A_CERT = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)

_PEM_CERT = re.compile(
    rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----([^-]*)"
    rb"-----END (?:X509 |TRUSTED )?CERTIFICATE-----"
)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The facts certpilot reports about one certificate."""

    subject: str
    subject_cn: str
    issuer: str
    issuer_cn: str
    serial: str  # lowercase hex, no separators, no leading zeros (as cryptography and ACME CAs)
    fingerprint_sha256: str  # lowercase hex of SHA-256 over the DER
    spki_sha256: str  # lowercase hex of SHA-256 over the DER SubjectPublicKeyInfo
    not_before: datetime
    not_after: datetime
    key_type: str  # RSA, EC, Ed25519, Ed448, DSA, unknown
    key_bits: int
    signature_algorithm: str  # e.g. sha256WithRSAEncryption, ecdsa-with-SHA256
    signature_hash: str | None  # sha256, sha1, md5 ... None for EdDSA
    sans: tuple[str, ...]  # DNS names and IP addresses, in certificate order
    is_ca: bool
    self_issued: bool  # subject == issuer (signature checked separately)
    subject_key_id: str | None
    authority_key_id: str | None
    crl_urls: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ca_issuer_urls: tuple[str, ...] = ()
    der: bytes = field(default=b"", repr=False, compare=False)

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    def seconds_left(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds()

    def days_left(self, now: datetime) -> float:
        return self.seconds_left(now) / 86400.0

    def fraction_left(self, now: datetime) -> float:
        """Share of the validity period still ahead, clamped to [0, 1]."""
        life = self.lifetime_seconds
        if life <= 0:
            return 0.0
        return max(0.0, min(1.0, self.seconds_left(now) / life))

    def to_dict(self, now: datetime | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "subject": self.subject,
            "subject_cn": self.subject_cn,
            "issuer": self.issuer,
            "issuer_cn": self.issuer_cn,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "spki_sha256": self.spki_sha256,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "key_type": self.key_type,
            "key_bits": self.key_bits,
            "signature_algorithm": self.signature_algorithm,
            "sans": list(self.sans),
            "is_ca": self.is_ca,
        }
        if now is not None:
            out["days_left"] = round(self.days_left(now), 3)
        return out


def iso(ts: datetime) -> str:
    """ISO 8601 in UTC with a trailing Z, the form JSON consumers expect."""
    return ts.astimezone(tz=ts.tzinfo).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cn(name: x509.Name) -> str:
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:  # a malformed attribute: show what can be shown
        return repr(name)


def _key_facts(cert: x509.Certificate) -> tuple[str, int, bytes]:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        spki = cert.public_bytes(serialization.Encoding.DER)
        return "unknown", 0, spki
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, spki
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size, spki
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, spki
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456, spki
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, spki
    return "unknown", 0, spki


def _extensions(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, x509.ExtensionType]:
    """Every extension value by OID, read in one pass (``get_extension_for_oid`` scans the
    list each time). Duplicate or undecodable extensions make the lot unreadable: treated as
    absent here, judged elsewhere."""
    try:
        return {ext.oid: ext.value for ext in cert.extensions}
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return {}


def _sans(exts: dict[x509.ObjectIdentifier, x509.ExtensionType]) -> tuple[str, ...]:
    ext = exts.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if not isinstance(ext, x509.SubjectAlternativeName):
        return ()
    names: list[str] = []
    for gn in ext:
        if isinstance(gn, x509.DNSName):
            names.append(gn.value)
        elif isinstance(gn, x509.IPAddress):
            names.append(str(gn.value))
    return tuple(names)


def _urls(
    exts: dict[x509.ObjectIdentifier, x509.ExtensionType],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    crl: list[str] = []
    ocsp: list[str] = []
    ca_issuers: list[str] = []
    dps = exts.get(ExtensionOID.CRL_DISTRIBUTION_POINTS)
    if isinstance(dps, x509.CRLDistributionPoints):
        for dp in dps:
            for gn in dp.full_name or ():
                if isinstance(gn, x509.UniformResourceIdentifier):
                    crl.append(gn.value)
    aia = exts.get(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if isinstance(aia, x509.AuthorityInformationAccess):
        for ad in aia:
            if isinstance(ad.access_location, x509.UniformResourceIdentifier):
                if ad.access_method == AuthorityInformationAccessOID.OCSP:
                    ocsp.append(ad.access_location.value)
                elif ad.access_method == AuthorityInformationAccessOID.CA_ISSUERS:
                    ca_issuers.append(ad.access_location.value)
    return tuple(crl), tuple(ocsp), tuple(ca_issuers)


def cert_info(cert: x509.Certificate, der: bytes | None = None) -> CertInfo:
    """Extract the facts of one parsed certificate."""
    der = der if der is not None else cert.public_bytes(serialization.Encoding.DER)
    key_type, key_bits, spki = _key_facts(cert)
    try:
        sig_oid = cert.signature_algorithm_oid
        sig_name = getattr(sig_oid, "_name", None) or sig_oid.dotted_string
    except ValueError:
        sig_name = "unknown"
    try:
        h = cert.signature_hash_algorithm
        sig_hash = h.name if h is not None else None
    except UnsupportedAlgorithm:
        sig_hash = "unknown"
    exts = _extensions(cert)
    bc = exts.get(ExtensionOID.BASIC_CONSTRAINTS)
    ski = exts.get(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    aki = exts.get(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    crl, ocsp, ca_issuers = _urls(exts)
    return CertInfo(
        subject=_rfc4514(cert.subject),
        subject_cn=_cn(cert.subject),
        issuer=_rfc4514(cert.issuer),
        issuer_cn=_cn(cert.issuer),
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        spki_sha256=hashlib.sha256(spki).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_bits=key_bits,
        signature_algorithm=sig_name,
        signature_hash=sig_hash,
        sans=_sans(exts),
        is_ca=isinstance(bc, x509.BasicConstraints) and bc.ca,
        self_issued=cert.subject == cert.issuer,
        subject_key_id=ski.digest.hex() if isinstance(ski, x509.SubjectKeyIdentifier) else None,
        authority_key_id=(
            aki.key_identifier.hex()
            if isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier
            else None
        ),
        crl_urls=crl,
        ocsp_urls=ocsp,
        ca_issuer_urls=ca_issuers,
        der=der,
    )


@dataclass(frozen=True, slots=True)
class ParsedCert:
    """A certificate in both forms: facts for reporting, the object for signature checks."""

    info: CertInfo
    cert: x509.Certificate


def parse_der(der: bytes, origin: str = "<bytes>") -> ParsedCert:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
            return ParsedCert(cert_info(cert, der), cert)
    except _NOT_A_CERT as e:
        raise CertificateParseError(origin, f"not a DER certificate: {_short(e)}") from e


def looks_like_pem(data: bytes) -> bool:
    return b"-----BEGIN" in data


def parse_pem_bundle(
    data: bytes, origin: str = "<bytes>"
) -> list[ParsedCert | CertificateParseError]:
    """Every certificate block of a PEM bundle, in order.

    A block that does not parse becomes a :class:`CertificateParseError` in its place, so one bad
    block never hides the good ones next to it. Non-certificate blocks (keys, CSRs) are skipped.
    """
    out: list[ParsedCert | CertificateParseError] = []
    for i, m in enumerate(_PEM_CERT.finditer(data)):
        body = m.group(0)
        block_origin = f"{origin}#{i}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                cert = x509.load_pem_x509_certificate(body)
                info = cert_info(cert)
        except _NOT_A_CERT as e:
            out.append(
                CertificateParseError(block_origin, f"malformed PEM certificate: {_short(e)}")
            )
            continue
        out.append(ParsedCert(info, cert))
    return out


def parse_pkcs12(data: bytes, password: bytes | None, origin: str = "<bytes>") -> list[ParsedCert]:
    """The certificate and its CA chain from a PKCS#12 archive (leaf first)."""
    try:
        bundle = pkcs12.load_pkcs12(data, password)
    except _NOT_A_CERT as e:
        raise CertificateParseError(origin, f"cannot open PKCS#12: {_short(e)}") from e
    certs: list[x509.Certificate] = []
    if bundle.cert is not None:
        certs.append(bundle.cert.certificate)
    certs.extend(c.certificate for c in bundle.additional_certs)
    return [ParsedCert(cert_info(c), c) for c in certs]


def is_pkcs12(data: bytes) -> bool:
    """Cheap sniff: PKCS#12 is a DER SEQUENCE whose first element is INTEGER 3 (RFC 7292)."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    # skip the outer length
    i = 1
    if data[i] & 0x80:
        i += 1 + (data[i] & 0x7F)
    else:
        i += 1
    return data[i : i + 3] == b"\x02\x01\x03"


def signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key verifies ``child``'s signature and the names chain."""
    try:
        child.verify_directly_issued_by(issuer)
    except (UnsupportedAlgorithm, ValueError):
        # cryptography refuses SHA-1/MD5 here ("Unsupported signature algorithm"); a weak
        # signature is still a *valid* link (reported as weak_signature): check it by hand.
        return _verify_legacy(child, issuer)
    except (InvalidSignature, TypeError):
        return False
    return True


def _verify_legacy(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        h = child.signature_hash_algorithm
        key = issuer.public_key()
        if h is None:
            return False
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, padding.PKCS1v15(), h)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(h))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def load_trust_store(pems: Iterable[tuple[str, bytes]]) -> list[ParsedCert]:
    """Parse trust-anchor bundles, skipping blocks that are not certificates."""
    anchors: list[ParsedCert] = []
    for origin, data in pems:
        for item in parse_pem_bundle(data, origin):
            if isinstance(item, ParsedCert):
                anchors.append(item)
    return anchors


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_certificate_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1 certificate identifier: base64url(AKI keyIdentifier) "."
    base64url(DER bytes of the serial INTEGER's value), both unpadded.

    Raises ``ValueError`` when the certificate has no Authority Key Identifier.
    """
    try:
        aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no Authority Key Identifier (ARI needs one)") from None
    key_id = aki.key_identifier if isinstance(aki, x509.AuthorityKeyIdentifier) else None
    if not key_id:
        raise ValueError("certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    # DER INTEGER content octets: two's complement, minimal, so a leading 0x00 when the high
    # bit is set (RFC 9773 section 4.1, the example's serial 0x87... encodes as 00 87 ...).
    serial_der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return f"{_b64url(key_id)}.{_b64url(serial_der)}"


def ari_certificate_id_pem(chain_pem: bytes) -> str:
    """:func:`ari_certificate_id` of the first certificate in ``chain_pem`` (for
    ``IssueRequest.replaces``)."""
    blocks = _PEM_BLOCK.findall(chain_pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return ari_certificate_id(x509.load_pem_x509_certificate(blocks[0]))
