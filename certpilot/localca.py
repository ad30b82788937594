"""The embedded local CA: issues real certificates with ``cryptography`` for the demo fleet,
tests and (later) internal mTLS remediation.

It is deliberately able to make *bad* certificates too (weak keys, SHA-1, expired, not yet
valid, short-lived intermediates) because the demo and the tests must show every problem code
on real TLS handshakes. Keys never leave the process unless written with :func:`write_key`,
which creates files 0600.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "EC", bits: int = 256) -> PrivateKey:
    """``("EC", 256|384|521)`` or ``("RSA", bits)``. RSA below 2048 is allowed on purpose."""
    if kind.upper() == "RSA":
        # 65537 per RFC 4871 practice; small sizes only for weak-key fixtures.
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    curves: dict[int, ec.EllipticCurve] = {
        192: ec.SECP192R1(),
        256: ec.SECP256R1(),
        384: ec.SECP384R1(),
        521: ec.SECP521R1(),
    }
    return ec.generate_private_key(curves[bits])


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


@dataclass
class Issued:
    """A certificate with its private key and the chain that should be served with it."""

    cert: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate]  # intermediates to send after the leaf, not the root

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """Leaf then intermediates: what a server's certificate file holds."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [self.cert, *self.chain]
        )

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


class LocalCA:
    """A root (and optionally one intermediate) that signs leaf certificates.

    ``now`` is passed in, not read, so fixtures can mint certificates relative to a fixed clock.
    """

    def __init__(
        self,
        name: str,
        now: datetime,
        *,
        root_lifetime: timedelta = timedelta(days=3650),
        intermediate_lifetime: timedelta | None = timedelta(days=1825),
        intermediate_name: str | None = None,
        key_kind: str = "EC",
        key_bits: int = 256,
    ) -> None:
        self.name = name
        self.root_key = new_key(key_kind, key_bits)
        self.root = self._ca_cert(
            _name(f"{name} Root CA", name), self.root_key, None, None, now, root_lifetime, 1
        )
        self.intermediate: x509.Certificate | None = None
        self.intermediate_key: PrivateKey | None = None
        if intermediate_lifetime is not None:
            self.intermediate_key = new_key(key_kind, key_bits)
            self.intermediate = self._ca_cert(
                _name(intermediate_name or f"{name} Intermediate CA", name),
                self.intermediate_key,
                self.root,
                self.root_key,
                now,
                intermediate_lifetime,
                0,
            )

    @staticmethod
    def _ca_cert(
        subject: x509.Name,
        key: PrivateKey,
        issuer: x509.Certificate | None,
        issuer_key: PrivateKey | None,
        now: datetime,
        lifetime: timedelta,
        path_len: int,
    ) -> x509.Certificate:
        signer = issuer_key or key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer.public_key()  # type: ignore[arg-type]
                ),
                False,
            )
        return builder.sign(signer, hashes.SHA256())

    @property
    def issuer_cert(self) -> x509.Certificate:
        return self.intermediate if self.intermediate is not None else self.root

    @property
    def issuer_key(self) -> PrivateKey:
        return self.intermediate_key if self.intermediate_key is not None else self.root_key

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: list[str],
        now: datetime,
        *,
        lifetime: timedelta = timedelta(days=90),
        not_before: datetime | None = None,
        key: PrivateKey | None = None,
        key_kind: str = "EC",
        key_bits: int = 256,
        hash_alg: hashes.HashAlgorithm | None = None,
        common_name: str | None = None,
        serial: int | None = None,
    ) -> Issued:
        """Issue a server certificate for ``names`` valid from ``not_before`` (default 1 h ago)."""
        key = key or new_key(key_kind, key_bits)
        start = not_before if not_before is not None else now - timedelta(hours=1)
        cn = common_name or (names[0] if names else "certpilot")
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer_key.public_key()),
                False,
            )
        )
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        if isinstance(hash_alg, hashes.SHA1):
            cert = _sign_sha1(builder, self.issuer_key)
        else:
            cert = builder.sign(self.issuer_key, hash_alg or hashes.SHA256())  # type: ignore[arg-type]
        chain = [self.intermediate] if self.intermediate is not None else []
        return Issued(cert, key, chain)


_SHA256_RSA_OID = bytes.fromhex("06092a864886f70d01010b")  # 1.2.840.113549.1.1.11
_SHA1_RSA_OID = bytes.fromhex("06092a864886f70d010105")  # 1.2.840.113549.1.1.5


def _sign_sha1(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    """A SHA-1 signed certificate, for the weak-signature fixture only.

    cryptography refuses SHA-1 in ``CertificateBuilder.sign``, rightly. The two RSA signature
    OIDs have the same DER length, so: sign with SHA-256, swap the OID in both places, and
    re-sign the rewritten TBSCertificate with PKCS#1 v1.5 + SHA-1 (RFC 5280 section 4.1).
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("SHA-1 fixtures need an RSA issuer key")
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    der = der.replace(_SHA256_RSA_OID, _SHA1_RSA_OID)
    tbs = x509.load_der_x509_certificate(der).tbs_certificate_bytes
    sig = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (weak on purpose)
    return x509.load_der_x509_certificate(der[: -len(sig)] + sig)


def self_signed(
    names: list[str], now: datetime, *, lifetime: timedelta = timedelta(days=90)
) -> Issued:
    """A self-signed leaf (not a CA), as a careless ``openssl req -x509`` makes."""
    key = new_key()
    subject = _name(names[0] if names else "self-signed")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + lifetime)
        .add_extension(_san(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key, [])


def write_key(path: Path, pem: bytes) -> None:
    """Write a private key readable by its owner only (0600 from creation, no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    path.chmod(0o600)
