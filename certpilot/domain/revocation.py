"""Revocation by CRL (RFC 5280 sections 5 and 6.3), pure: bytes and an injected ``now`` in,
facts and problems out.

OCSP is on its way out of the public WebPKI (Let's Encrypt ended its OCSP service in 2025 and the
CA/Browser Forum made it optional), so CRLs are again how a relying party learns that a
certificate was revoked. The I/O half (fetching, caching, bounds) is ``scanner/crl.py``; this
module only

* reads a CRL into a :class:`CRLInfo` (:func:`parse_crl`),
* checks that the certificate's issuer signed it (:func:`verify_crl`),
* decides whether an observation's leaf is on it (:func:`assess` / :func:`check`), and
* says when it is past its ``nextUpdate`` (:func:`stale`).

Trust rule: a CRL may mark a certificate ``revoked`` only when it was fetched from one of that
certificate's own CRL distribution points, names the certificate's issuer (name and key id),
covers that kind of certificate (RFC 5280 section 5.2.5, issuing distribution point), and its
signature verifies with the key of an issuer certificate that in turn verifies the leaf's
signature. Anything else is "cannot tell", never "revoked".
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from certpilot.domain.chain import LinkCache
from certpilot.domain.errors import CertpilotError
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, ParsedCert, iso, parse_der, signed_by

_PEM_CRL = b"-----BEGIN X509 CRL-----"
_CRL_SIGNER_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)


class CRLParseError(CertpilotError):
    """Bytes fetched from a CRL distribution point are not a CRL."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        super().__init__(f"{url}: {message}")


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revokedCertificates entry (RFC 5280 section 5.1.2.6)."""

    serial: str  # lowercase hex, no leading zeros: the form of CertInfo.serial
    revoked_at: datetime
    reason: str  # ReasonFlags name ("key_compromise", ...); "unspecified" when absent


@dataclass(frozen=True, slots=True)
class CRLInfo:
    """The facts of one CRL, as fetched from ``url``.

    ``revoked_serials`` and ``entries`` hold only the entries that revoke a certificate of the
    CRL's own issuer: ``removeFromCRL`` entries of a delta CRL and, in an indirect CRL, entries
    for other issuers are left out. ``verified`` is set by whoever checked the signature
    (:func:`parse_crl` cannot: it has no issuer); :func:`assess` re-checks against the issuer in
    each observation anyway. ``idp_*`` mirror the issuing distribution point extension.
    """

    url: str
    issuer: str  # RFC 4514, the form of CertInfo.issuer
    issuer_key_id: str | None  # AKI keyIdentifier, lowercase hex
    this_update: datetime
    next_update: datetime | None
    revoked_serials: frozenset[str]
    entries: Mapping[str, RevokedEntry] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )
    crl_number: int | None = None
    delta: bool = False
    idp_urls: tuple[str, ...] = ()
    only_user_certs: bool = False
    only_ca_certs: bool = False
    only_attribute_certs: bool = False
    indirect: bool = False
    verified: bool = False
    sha256: str = ""  # of the DER
    size: int = 0  # DER bytes
    der: bytes = field(default=b"", repr=False, compare=False)

    def entry(self, serial: str) -> RevokedEntry | None:
        return self.entries.get(serial) if serial in self.revoked_serials else None


# ---------------------------------------------------------------------------------------------
# parsing


def _load(data: bytes) -> x509.CertificateRevocationList:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if _PEM_CRL in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)


def _rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:
        return repr(name)


def _extensions(crl: x509.CertificateRevocationList) -> dict[x509.ObjectIdentifier, object]:
    try:
        return {ext.oid: ext.value for ext in crl.extensions}
    except ValueError as e:
        raise ValueError(f"malformed CRL extensions: {e}") from e


def _entry_extensions(rc: x509.RevokedCertificate) -> dict[x509.ObjectIdentifier, object]:
    try:
        return {ext.oid: ext.value for ext in rc.extensions}
    except ValueError:
        # A damaged entry extension must not hide the revocation itself: the serial is on the
        # list, so the certificate is revoked; only the reason is unknown.
        return {}


def parse_crl(der_or_pem: bytes, url: str) -> CRLInfo:
    """Read a DER or PEM CRL fetched from ``url``; raise :class:`CRLParseError` if it is not one.

    Serials become lowercase hex without leading zeros (as :attr:`CertInfo.serial`). Cost grows
    with the number of entries (about a second per few hundred thousand): call it off the
    event loop for big CRLs.
    """
    try:
        crl = _load(der_or_pem)
        der = crl.public_bytes(serialization.Encoding.DER)
        exts = _extensions(crl)
        this_update = crl.last_update_utc
        next_update = crl.next_update_utc
        issuer = crl.issuer
        aki = exts.get(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        number = exts.get(ExtensionOID.CRL_NUMBER)
        idp = exts.get(ExtensionOID.ISSUING_DISTRIBUTION_POINT)
        idp_urls: list[str] = []
        if isinstance(idp, x509.IssuingDistributionPoint):
            for gn in idp.full_name or ():
                if isinstance(gn, x509.UniformResourceIdentifier):
                    idp_urls.append(gn.value)
        indirect = isinstance(idp, x509.IssuingDistributionPoint) and idp.indirect_crl
        entries: dict[str, RevokedEntry] = {}
        # RFC 5280 section 5.3.3: in an indirect CRL an entry without a certificateIssuer
        # extension belongs to the issuer of the entry before it (the CRL issuer at first).
        current_is_ours = True
        for rc in crl:
            rexts = _entry_extensions(rc)
            if indirect:
                ci = rexts.get(CRLEntryExtensionOID.CERTIFICATE_ISSUER)
                if isinstance(ci, x509.CertificateIssuer):
                    current_is_ours = any(
                        isinstance(gn, x509.DirectoryName) and gn.value == issuer for gn in ci
                    )
                if not current_is_ours:
                    continue
            reason_ext = rexts.get(CRLEntryExtensionOID.CRL_REASON)
            reason = (
                reason_ext.reason.name if isinstance(reason_ext, x509.CRLReason) else "unspecified"
            )
            if reason == x509.ReasonFlags.remove_from_crl.name:
                continue  # a delta CRL un-listing a held certificate: not a revocation
            serial = format(rc.serial_number, "x")
            entries[serial] = RevokedEntry(serial, rc.revocation_date_utc, reason)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CRLParseError(url, f"not a CRL: {_short(e)}") from e
    return CRLInfo(
        url=url,
        issuer=_rfc4514(issuer),
        issuer_key_id=(
            aki.key_identifier.hex()
            if isinstance(aki, x509.AuthorityKeyIdentifier) and aki.key_identifier
            else None
        ),
        this_update=this_update,
        next_update=next_update,
        revoked_serials=frozenset(entries),
        entries=MappingProxyType(entries),
        crl_number=number.crl_number if isinstance(number, x509.CRLNumber) else None,
        delta=ExtensionOID.DELTA_CRL_INDICATOR in exts,
        idp_urls=tuple(idp_urls),
        only_user_certs=isinstance(idp, x509.IssuingDistributionPoint)
        and idp.only_contains_user_certs,
        only_ca_certs=isinstance(idp, x509.IssuingDistributionPoint) and idp.only_contains_ca_certs,
        only_attribute_certs=isinstance(idp, x509.IssuingDistributionPoint)
        and idp.only_contains_attribute_certs,
        indirect=indirect,
        sha256=hashlib.sha256(der).hexdigest(),
        size=len(der),
        der=der,
    )


# ---------------------------------------------------------------------------------------------
# signature


def _as_certificate(issuer: CertInfo | ParsedCert | x509.Certificate) -> x509.Certificate | None:
    if isinstance(issuer, x509.Certificate):
        return issuer
    if isinstance(issuer, ParsedCert):
        return issuer.cert
    if not issuer.der:
        return None
    try:
        return parse_der(issuer.der).cert
    except CertpilotError:
        return None


def verify_crl(crl: bytes | CRLInfo, issuer: CertInfo | ParsedCert | x509.Certificate) -> bool:
    """True when ``issuer`` issued and signed the CRL (RFC 5280 section 6.3.3 (f), (g)).

    The CRL's issuer name must equal the certificate's subject; when the CRL carries an
    Authority Key Identifier and the certificate a Subject Key Identifier they must match (a
    re-keyed CA keeps its name); a Key Usage extension, when present, must allow ``cRLSign``;
    and the signature must verify with the certificate's key. Never raises: anything malformed
    is simply not verified.
    """
    cert = _as_certificate(issuer)
    if cert is None:
        return False
    try:
        parsed = _load(crl.der if isinstance(crl, CRLInfo) else crl)
        if parsed.issuer != cert.subject:
            return False
        crl_exts = _extensions(parsed)
        aki = crl_exts.get(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        try:
            cert_exts = {ext.oid: ext.value for ext in cert.extensions}
        except ValueError:
            return False
        ski = cert_exts.get(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        if (
            isinstance(aki, x509.AuthorityKeyIdentifier)
            and aki.key_identifier
            and isinstance(ski, x509.SubjectKeyIdentifier)
            and aki.key_identifier != ski.digest
        ):
            return False
        ku = cert_exts.get(ExtensionOID.KEY_USAGE)
        if isinstance(ku, x509.KeyUsage) and not ku.crl_sign:
            return False
        key = cert.public_key()
        if not isinstance(key, _CRL_SIGNER_KEYS):
            return False  # X25519/X448 keys cannot sign
        return parsed.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return False


class RevocationMemo:
    """A bounded memo of the signature checks :func:`assess` makes, owned by the caller.

    A fleet shares a few issuers and CRLs, and a large CRL costs a hash over megabytes to
    verify: each ``(CRL, issuer)`` pair and each ``(leaf, issuer)`` link is checked once. Both
    are pure functions of their inputs, so keeping the answers changes nothing but the time.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = max(1, size)
        self.links = LinkCache(size)
        self._crls: OrderedDict[tuple[str, str], bool] = OrderedDict()

    def crl_verified(self, crl: CRLInfo, issuer: ParsedCert) -> bool:
        key = (crl.sha256 or hashlib.sha256(crl.der).hexdigest(), issuer.info.fingerprint_sha256)
        hit = self._crls.get(key)
        if hit is not None:
            self._crls.move_to_end(key)
            return hit
        ok = verify_crl(crl, issuer)
        self._crls[key] = ok
        if len(self._crls) > self._size:
            self._crls.popitem(last=False)
        return ok


# ---------------------------------------------------------------------------------------------
# deciding


def issuer_of(observation: Observation, memo: RevocationMemo | None = None) -> ParsedCert | None:
    """The certificate in the observation (validated ``path`` first, then ``chain``) that
    issued its leaf: subject equals the leaf's issuer, key id matches the leaf's AKI when both
    are known, and its key verifies the leaf's signature. ``None`` when there is none (a leaf
    scanned alone, a chain that does not link)."""
    leaf = observation.leaf
    if leaf is None or not leaf.der:
        return None
    seen: set[str] = set()
    leaf_pc: ParsedCert | None = None
    for cand in (*observation.path, *observation.chain):
        if cand.fingerprint_sha256 in seen or cand.subject != leaf.issuer or not cand.der:
            continue
        seen.add(cand.fingerprint_sha256)
        if (
            leaf.authority_key_id
            and cand.subject_key_id
            and leaf.authority_key_id != cand.subject_key_id
        ):
            continue
        if leaf_pc is None:
            try:
                leaf_pc = parse_der(leaf.der)
            except CertpilotError:
                return None
        try:
            issuer_pc = parse_der(cand.der)
        except CertpilotError:
            continue
        linked = (
            memo.links.signed_by(leaf_pc, issuer_pc)
            if memo is not None
            else signed_by(leaf_pc.cert, issuer_pc.cert)
        )
        if linked:
            return issuer_pc
    return None


def covers(crl: CRLInfo, leaf: CertInfo) -> bool:
    """Whether ``crl`` is the right list for ``leaf``: same issuer (name, and key id when both
    are known) and a scope that includes it (RFC 5280 section 5.2.5). Says nothing about the
    signature."""
    if crl.issuer != leaf.issuer:
        return False
    if crl.issuer_key_id and leaf.authority_key_id and crl.issuer_key_id != leaf.authority_key_id:
        return False
    if crl.only_attribute_certs:
        return False
    if crl.only_ca_certs and not leaf.is_ca:
        return False
    if crl.only_user_certs and leaf.is_ca:
        return False
    # A partitioned CRL names its partition; it must be one the certificate points to.
    return not crl.idp_urls or any(u in crl.idp_urls for u in leaf.crl_urls)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What :func:`assess` found for one observation.

    ``observation`` is the input, with a ``revoked`` problem added when ``entry`` is set.
    ``untrusted`` lists the CRL URLs whose CRL covered the leaf but did not verify against its
    issuer (the caller logs and counts them); ``no_issuer`` is true when CRLs were available
    but no issuer certificate was, so nothing could be decided.
    """

    observation: Observation
    url: str | None = None
    entry: RevokedEntry | None = None
    untrusted: tuple[str, ...] = ()
    no_issuer: bool = False
    checked: tuple[str, ...] = ()  # URLs of trusted CRLs that were consulted


def assess(
    observation: Observation,
    crls: Mapping[str, CRLInfo],
    now: datetime,
    *,
    memo: RevocationMemo | None = None,
) -> Assessment:
    """Look the leaf's serial up on the CRLs from its own distribution points.

    Only URLs the leaf names are consulted (``crls`` may hold others). An observation that
    already has a ``revoked`` problem is returned as is. A stale CRL still counts (a revocation
    does not expire; the problem message says the list is stale).
    """
    leaf = observation.leaf
    if leaf is None or not leaf.crl_urls or ProblemCode.REVOKED in observation.codes:
        return Assessment(observation)
    candidates = [
        crls[u] for u in dict.fromkeys(leaf.crl_urls) if u in crls and covers(crls[u], leaf)
    ]
    if not candidates:
        return Assessment(observation)
    issuer = issuer_of(observation, memo)
    if issuer is None:
        return Assessment(observation, no_issuer=True)
    untrusted: list[str] = []
    checked: list[str] = []
    for crl in candidates:
        ok = memo.crl_verified(crl, issuer) if memo is not None else verify_crl(crl, issuer)
        if not ok:
            untrusted.append(crl.url)
            continue
        checked.append(crl.url)
        entry = crl.entry(leaf.serial)
        if entry is None:
            continue
        problem = Problem(ProblemCode.REVOKED, _message(leaf, crl, entry, now))
        return Assessment(
            replace(observation, problems=(*observation.problems, problem)),
            url=crl.url,
            entry=entry,
            untrusted=tuple(untrusted),
            checked=tuple(checked),
        )
    return Assessment(observation, untrusted=tuple(untrusted), checked=tuple(checked))


def check(
    observation: Observation,
    crls: Mapping[str, CRLInfo],
    now: datetime,
    *,
    memo: RevocationMemo | None = None,
) -> Observation:
    """``observation`` with a ``revoked`` problem when a trusted CRL lists its leaf, else the
    same object unchanged. See :func:`assess` for the details and for why it did not."""
    return assess(observation, crls, now, memo=memo).observation


def _message(leaf: CertInfo, crl: CRLInfo, entry: RevokedEntry, now: datetime) -> str:
    text = (
        f"serial {leaf.serial} revoked at {iso(entry.revoked_at)} "
        f"(reason {entry.reason}) per CRL {crl.url}"
    )
    if stale(crl, now) and crl.next_update is not None:
        text += f" (CRL stale since {iso(crl.next_update)})"
    return text


def stale(crl: CRLInfo, now: datetime, *, max_age: timedelta | None = None) -> bool:
    """True when ``now`` is at or past the CRL's ``nextUpdate``; a CRL without one (RFC 5280
    section 5.1.2.5 requires it, some CAs omit it) is stale only when ``max_age`` is given and
    its ``thisUpdate`` is older than that."""
    if crl.next_update is not None:
        return now >= crl.next_update
    return max_age is not None and now - crl.this_update >= max_age


def crl_urls(observations: Iterable[Observation]) -> list[str]:
    """Every distinct CRL URL the observations' leaves name, in first-seen order."""
    out: dict[str, None] = {}
    for o in observations:
        if o.leaf is not None:
            for u in o.leaf.crl_urls:
                out.setdefault(u)
    return list(out)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


__all__ = [
    "Assessment",
    "CRLInfo",
    "CRLParseError",
    "RevocationMemo",
    "RevokedEntry",
    "assess",
    "check",
    "covers",
    "crl_urls",
    "issuer_of",
    "parse_crl",
    "stale",
    "verify_crl",
]
