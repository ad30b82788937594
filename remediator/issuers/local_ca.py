"""The embedded local CA as an :class:`~certpilot.domain.remedy.Issuer`: internal mTLS and the
demo, with revocation published as a CRL (RFC 5280 section 5).

State lives in ``state_dir`` (0700)::

    root.pem  root.key          the root (key 0600)
    intermediate.pem/.key       the issuing CA (key 0600), unless ``intermediate`` is false
    index.json                  issued serials, revocations, the last CRL number
    crl.pem                     the CRL (or ``crl_path``), re-signed on every revocation

A first start creates the hierarchy; every later start loads it, so certificates issued before a
restart still chain and can still be revoked. Every operation runs in a worker thread (RSA key
generation and file writes must not block the loop) under one lock, so the index and the CRL
never interleave: a thread lock within the process and ``flock`` on ``state_dir/.lock``
across the processes sharing the directory (replicas starting together, each would otherwise
create a hierarchy of its own over the others' files), the index read again under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certpilot.domain.clock import Clock
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.localca import LocalCA
from remediator.issuers._common import (
    PrivateKey,
    config_from_mapping,
    describe,
    generate_key,
    key_to_pem,
    load_pem_chain,
    one_line,
    write_private,
    write_public,
)

log = logging.getLogger("certpilot.remediator.local_ca")

# RFC 5280 section 5.3.1 CRLReason -> cryptography's flags (8, removeFromCRL, is delta-only).
_REASON_FLAGS: dict[RevocationReason, x509.ReasonFlags] = {
    RevocationReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    RevocationReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, slots=True)
class LocalCAConfig:
    """Where the CA keeps its state and how it issues.

    ``validity_days`` is used when a request names none; a request above ``max_validity_days``
    is refused. A leaf never outlives its issuing CA: its lifetime is cut at the CA's notAfter
    (as OpenBao's ``leaf_not_after_behavior=truncate``) so no ``chain_expiring`` is minted.
    ``crl_next_update_hours`` is the CRL's nextUpdate distance: re-publish (``publish_crl``)
    before then, e.g. from the scheduler.
    """

    state_dir: Path
    ca_name: str = "certpilot Local CA"
    intermediate: bool = True
    crl_path: Path | None = None
    crl_next_update_hours: int = 24
    validity_days: int = 90
    max_validity_days: int = 397
    ca_validity_days: int = 3650

    def __post_init__(self) -> None:
        if not 1 <= self.validity_days <= self.max_validity_days:
            raise ValueError(
                f"validity_days must be 1..max_validity_days ({self.max_validity_days}), "
                f"got {self.validity_days}"
            )
        if self.crl_next_update_hours < 1:
            raise ValueError("crl_next_update_hours must be at least 1")
        if self.ca_validity_days < 2:
            raise ValueError("ca_validity_days must be at least 2")

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "local_ca issuer"
    ) -> LocalCAConfig:
        return config_from_mapping(cls, data, source=source)

    @property
    def crl_file(self) -> Path:
        return self.crl_path if self.crl_path is not None else self.state_dir / "crl.pem"


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: str
    revoked_at: datetime
    reason: RevocationReason
    not_after: datetime


class LocalCAIssuer:
    """Issues from a persisted :class:`certpilot.localca.LocalCA`; revocation -> CRL."""

    def __init__(self, name: str, config: LocalCAConfig, *, clock: Clock) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self._thread_lock = threading.Lock()
        self._index_path = config.state_dir / "index.json"
        self._index: dict[str, Any] = {}  # as stored, read again under _lock()
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock():
            self._ca = self._load_or_create()
            if not config.crl_file.exists():
                self._publish_crl_locked()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The CA's state to this thread alone, across processes too; the index as stored."""
        with self._thread_lock, (self.config.state_dir / ".lock").open("a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._index = self._load_index()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"LocalCAIssuer(name={self.name!r}, state_dir={str(self.config.state_dir)!r})"

    # -- the CA --------------------------------------------------------------------------------

    @property
    def ca(self) -> LocalCA:
        return self._ca

    def root_pem(self) -> bytes:
        """The trust anchor to distribute to clients."""
        return self._ca.root_pem()

    def issuing_certificate(self) -> x509.Certificate:
        return self._ca.issuer_cert

    def _load_or_create(self) -> LocalCA:
        d = self.config.state_dir
        root_pem, root_key = d / "root.pem", d / "root.key"
        int_pem, int_key = d / "intermediate.pem", d / "intermediate.key"
        if root_pem.exists() and root_key.exists():
            try:
                return self._restore(root_pem, root_key, int_pem, int_key)
            except (ValueError, TypeError, OSError) as e:
                raise IssuerError(self.name, f"cannot load CA from {d}: {one_line(e)}") from None
        now = self.clock.now()
        lifetime = timedelta(days=self.config.ca_validity_days)
        ca = LocalCA(
            self.config.ca_name,
            now,
            root_lifetime=lifetime,
            intermediate_lifetime=(lifetime - timedelta(days=1))
            if self.config.intermediate
            else None,
        )
        write_private(root_key, key_to_pem(ca.root_key))
        write_public(root_pem, ca.root_pem())
        if ca.intermediate is not None and ca.intermediate_key is not None:
            write_private(int_key, key_to_pem(ca.intermediate_key))
            write_public(int_pem, ca.intermediate.public_bytes(serialization.Encoding.PEM))
        log.info("%s: created local CA %r in %s", self.name, self.config.ca_name, d)
        return ca

    def _restore(self, root_pem: Path, root_key: Path, int_pem: Path, int_key: Path) -> LocalCA:
        for key_path in (root_key, int_key):
            if key_path.exists() and key_path.stat().st_mode & 0o077:
                log.warning("%s: %s was readable by others; fixed to 0600", self.name, key_path)
                key_path.chmod(0o600)
        # LocalCA's constructor always mints a new hierarchy; a restored one is assembled from
        # its parts (the attributes LocalCA.__init__ sets, nothing more).
        ca = LocalCA.__new__(LocalCA)
        root = x509.load_pem_x509_certificate(root_pem.read_bytes())
        ca.name = self.config.ca_name
        ca.root = root
        ca.root_key = _load_key(root_key)
        ca.intermediate = None
        ca.intermediate_key = None
        if int_pem.exists() and int_key.exists():
            ca.intermediate = x509.load_pem_x509_certificate(int_pem.read_bytes())
            ca.intermediate_key = _load_key(int_key)
        if ca.issuer_cert.public_key() != ca.issuer_key.public_key():
            raise ValueError("the CA key does not match its certificate")
        return ca

    # -- index ---------------------------------------------------------------------------------

    def _load_index(self) -> dict[str, Any]:
        if not self._index_path.exists():
            return {"crl_number": 0, "issued": {}, "revoked": {}}
        try:
            data: dict[str, Any] = json.loads(self._index_path.read_text())
        except (OSError, ValueError) as e:
            raise IssuerError(self.name, f"{self._index_path}: {one_line(e)}") from None
        data.setdefault("crl_number", 0)
        data.setdefault("issued", {})
        data.setdefault("revoked", {})
        return data

    def _save_index(self) -> None:
        write_public(self._index_path, json.dumps(self._index, indent=1, sort_keys=True).encode())

    def issued_serials(self) -> list[str]:
        with self._lock():
            return sorted(self._index["issued"])

    def revocations(self) -> dict[str, Revocation]:
        with self._lock():
            return {s: _revocation(s, r) for s, r in self._index["revoked"].items()}

    # -- Issuer protocol -----------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        return await asyncio.to_thread(self._issue_sync, request)

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        await asyncio.to_thread(self._revoke_sync, chain_pem, reason)

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None  # no ARI: renewal timing is policy's (fraction of lifetime left)

    async def publish_crl(self) -> Path:
        """Re-sign and write the CRL now (lastUpdate = now); returns its path."""
        return await asyncio.to_thread(self._publish_crl)

    # -- work (worker thread) ------------------------------------------------------------------

    def _issue_sync(self, request: IssueRequest) -> IssuedCertificate:
        if not request.names:
            raise IssuerError(self.name, "nothing to issue: no names in the request")
        days = request.validity_days or self.config.validity_days
        if not 1 <= days <= self.config.max_validity_days:
            raise IssuerError(
                self.name,
                f"validity {days} days is outside 1..{self.config.max_validity_days}",
            )
        try:
            key = generate_key(request.key_type)
        except ValueError as e:
            raise IssuerError(self.name, str(e)) from None
        now = self.clock.now()
        start = now - timedelta(minutes=5)  # clock skew between us and the relying parties
        lifetime = timedelta(days=days)
        ca_end = self._ca.issuer_cert.not_valid_after_utc
        if start + lifetime > ca_end:
            lifetime = ca_end - start
            log.warning("%s: leaf lifetime cut to the CA's notAfter %s", self.name, ca_end)
        if lifetime <= timedelta(0):
            raise IssuerError(self.name, "the issuing CA has expired")
        with self._lock():
            issued = self._ca.issue(
                list(request.names), now, lifetime=lifetime, not_before=start, key=key
            )
            cert = describe([issued.cert, *issued.chain], key_to_pem(key), self.name)
            self._index["issued"][cert.serial] = {
                "names": list(request.names),
                "not_after": issued.cert.not_valid_after_utc.isoformat(),
                "fingerprint_sha256": cert.fingerprint_sha256,
                "issued_at": now.isoformat(),
            }
            self._save_index()
        log.info("%s: issued serial %s for %s", self.name, cert.serial, ",".join(request.names))
        return cert

    def _revoke_sync(self, chain_pem: bytes, reason: RevocationReason) -> None:
        try:
            leaf = load_pem_chain(chain_pem)[0]
        except ValueError as e:
            raise IssuerError(self.name, f"cannot revoke: {one_line(e)}") from None
        serial = format(leaf.serial_number, "x")
        try:
            leaf.verify_directly_issued_by(self._ca.issuer_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise IssuerError(
                self.name, f"cannot revoke serial {serial}: not issued by this CA"
            ) from None
        with self._lock():
            if serial in self._index["revoked"]:
                log.info("%s: serial %s was already revoked", self.name, serial)
                return
            self._index["revoked"][serial] = {
                "revoked_at": self.clock.now().isoformat(),
                "reason": int(reason),
                "not_after": leaf.not_valid_after_utc.isoformat(),
            }
            self._save_index()
            self._publish_crl_locked()
        log.info("%s: revoked serial %s (%s)", self.name, serial, reason.name.lower())

    def _publish_crl(self) -> Path:
        with self._lock():
            return self._publish_crl_locked()

    def _publish_crl_locked(self) -> Path:
        now = self.clock.now()
        issuer = self._ca.issuer_cert
        number = int(self._index["crl_number"]) + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now)
            .next_update(now + timedelta(hours=self.config.crl_next_update_hours))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._ca.issuer_key.public_key()
                ),
                critical=False,
            )
        )
        for serial, data in sorted(self._index["revoked"].items()):
            rev = _revocation(serial, data)
            if rev.not_after < now - timedelta(days=1):
                continue  # RFC 5280 section 3.3: an expired certificate may leave the CRL
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(rev.revoked_at)
            )
            if rev.reason != RevocationReason.UNSPECIFIED:
                # RFC 5280 section 5.3.1: "the reason code CRL entry extension SHOULD be absent
                # instead of using the unspecified (0) reasonCode value".
                entry = entry.add_extension(x509.CRLReason(_REASON_FLAGS[rev.reason]), False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._ca.issuer_key, hashes.SHA256())
        path = self.config.crl_file
        path.parent.mkdir(parents=True, exist_ok=True)
        write_public(path, crl.public_bytes(serialization.Encoding.PEM))
        self._index["crl_number"] = number
        self._save_index()
        return path


def _revocation(serial: str, data: Mapping[str, Any]) -> Revocation:
    return Revocation(
        serial=serial,
        revoked_at=datetime.fromisoformat(str(data["revoked_at"])),
        reason=RevocationReason(int(data["reason"])),
        not_after=datetime.fromisoformat(str(data["not_after"])),
    )


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path.name}: CA key must be RSA or EC")
    return key


__all__ = ["LocalCAConfig", "LocalCAIssuer", "Revocation"]
