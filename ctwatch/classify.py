"""Is a certificate seen in CT for a watched name one of ours? Pure; no I/O, no clock.

A matched certificate is **expected** when its issuer is allowed and either its public key or
its serial is known to the inventory, or certpilot's remediator ordered it (the job recorded
its serial). Otherwise it is an ``unexpected_issuance``: someone obtained a certificate for your
name that none of your systems holds and your automation did not order.

Two races are handled rather than paged on:

* CAs log the *precertificate* before they hand the certificate to the ACME client, so a
  renewal certpilot is running shows up in CT before the job stores the new serial. While an
  order for the same names is in flight (``pending_names``) the verdict is ``None`` (pending),
  and the caller decides again once the job has finished or a grace period has passed.
* A precertificate may be signed by a Precertificate Signing Certificate (RFC 6962 section
  3.1, extended key usage ``1.3.6.1.4.1.11129.2.4.4``) rather than by the CA itself: the
  issuer that counts is then that certificate's issuer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ctwatch.rfc6962 import CTEntry

PRECERT_SIGNING_EKU = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.4")


def _norm(value: str) -> str:
    return " ".join(value.strip().lower().split())


@dataclass(frozen=True, slots=True)
class Expectations:
    """What the inventory, the policy and the remediator know, as lookup sets.

    ``allowed_issuers`` holds issuer DNs (RFC 4514, as ``CTEntry.issuer``) and issuer CNs;
    compared case- and space-insensitively. ``known_keys`` are lowercase hex SHA-256 of DER
    SubjectPublicKeyInfo, ``known_serials`` / ``ordered_serials`` lowercase hex serials.
    """

    allowed_issuers: frozenset[str] = frozenset()
    known_keys: frozenset[str] = frozenset()
    known_serials: frozenset[str] = frozenset()
    ordered_serials: frozenset[str] = frozenset()
    pending_names: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        *,
        allowed_issuers: Iterable[str] = (),
        known_keys: Iterable[str] = (),
        known_serials: Iterable[str] = (),
        ordered_serials: Iterable[str] = (),
        pending_names: Iterable[str] = (),
    ) -> Expectations:
        return cls(
            frozenset(_norm(i) for i in allowed_issuers if i.strip()),
            frozenset(k.lower() for k in known_keys),
            frozenset(s.lower().lstrip("0") or "0" for s in known_serials),
            frozenset(s.lower().lstrip("0") or "0" for s in ordered_serials),
            frozenset(n.lower().rstrip(".") for n in pending_names),
        )

    def issuer_allowed(self, dn: str, cn: str) -> bool:
        return _norm(dn) in self.allowed_issuers or (bool(cn) and _norm(cn) in self.allowed_issuers)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``expected`` is ``None`` while an order for the names is still in flight."""

    expected: bool | None
    reason: str
    issuer: str  # the issuer that counts (the CA behind a precert signing certificate)
    issuer_cn: str
    spki_sha256: str


def _cn(name: x509.Name) -> str:
    for attr in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attr.value, str):
            return attr.value
    return ""


def _issuer_of(entry: CTEntry, cert: x509.Certificate) -> tuple[str, str]:
    """The issuer that counts: the certificate's, or, for a precertificate signed by a
    Precertificate Signing Certificate (first in the chain), that certificate's issuer."""
    if entry.entry_type == "precert" and entry.chain:
        try:
            signer = x509.load_der_x509_certificate(entry.chain[0])
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if PRECERT_SIGNING_EKU in eku:
                return signer.issuer.rfc4514_string(), _cn(signer.issuer)
        except (ValueError, x509.ExtensionNotFound, UnsupportedAlgorithm):
            pass
    return cert.issuer.rfc4514_string(), _cn(cert.issuer)


def spki_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo (as ``CertInfo.spki_sha256``)."""
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuanceFacts:
    """What classification looks at, from a log entry (:func:`facts_of`) or from what the
    inventory stored about an earlier match (to decide again later)."""

    names: tuple[str, ...]
    serial: str
    spki_sha256: str
    issuer: str  # the issuer that counts (the CA behind a precert signing certificate)
    issuer_cn: str


def facts_of(entry: CTEntry) -> IssuanceFacts:
    cert = x509.load_der_x509_certificate(entry.cert_der)  # parse_leaf already parsed it once
    issuer, issuer_cn = _issuer_of(entry, cert)
    try:
        key = spki_sha256(cert)
    except (ValueError, UnsupportedAlgorithm):
        key = ""
    return IssuanceFacts(entry.names, entry.serial, key, issuer, issuer_cn)


def classify_facts(f: IssuanceFacts, exp: Expectations) -> Verdict:
    """The verdict on one matched certificate (see the module text for the rules)."""
    serial = f.serial.lower().lstrip("0") or "0"

    def verdict(expected: bool | None, reason: str) -> Verdict:
        return Verdict(expected, reason, f.issuer, f.issuer_cn, f.spki_sha256)

    if not exp.issuer_allowed(f.issuer, f.issuer_cn):
        return verdict(False, f"issuer {f.issuer_cn or f.issuer!r} is not an allowed issuer")
    if serial in exp.ordered_serials:
        return verdict(True, "ordered by certpilot")
    if serial in exp.known_serials:
        return verdict(True, "serial known to the inventory")
    if f.spki_sha256 and f.spki_sha256 in exp.known_keys:
        return verdict(True, "key known to the inventory")
    if exp.pending_names & {n.lower() for n in f.names}:
        return verdict(None, "an order for these names is in flight")
    return verdict(False, "neither its key nor its serial is known, and certpilot did not order it")


def classify(entry: CTEntry, exp: Expectations) -> Verdict:
    return classify_facts(facts_of(entry), exp)


__all__ = [
    "PRECERT_SIGNING_EKU",
    "Expectations",
    "IssuanceFacts",
    "Verdict",
    "classify",
    "classify_facts",
    "facts_of",
    "spki_sha256",
]
