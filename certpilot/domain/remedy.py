"""Types the remediator's adapters share: what an issuer is asked and returns, what a deploy
target does. Pure data and Protocols (DESIGN.md section 6.4); adapters live in ``remediator/``,
one file each, found in a lookup table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from certpilot.domain.errors import CertpilotError
from certpilot.domain.model import EndpointTarget

_EMPTY: Mapping[str, str] = MappingProxyType({})


class RevocationReason(IntEnum):
    """RFC 5280 section 5.3.1 CRLReason codes (the ones ACME and OpenBao accept)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10


@dataclass(frozen=True, slots=True)
class IssueRequest:
    """What to issue. ``key_type`` is ``EC-256``, ``EC-384``, ``RSA-2048``, ``RSA-3072`` ...;
    ``replaces`` is the ARI certificate identifier of the certificate being renewed (RFC 9773
    section 5), ``profile`` an ACME profile name when the CA offers profiles."""

    names: tuple[str, ...]
    key_type: str = "EC-256"
    validity_days: int | None = None
    replaces: str | None = None
    profile: str | None = None
    preferred_chain: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A freshly issued certificate. ``key_pem`` is secret: never logged, written 0600."""

    chain_pem: bytes  # leaf first, then intermediates (what a server's certificate file holds)
    key_pem: bytes = field(repr=False)
    serial: str = ""  # lowercase hex
    fingerprint_sha256: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    issuer_name: str = ""  # which configured issuer made it


@dataclass(frozen=True, slots=True)
class RenewalWindow:
    """ARI suggested window (RFC 9773 section 4.2) and when to ask again."""

    start: datetime
    end: datetime
    retry_after: datetime | None = None
    explanation_url: str | None = None


class Issuer(Protocol):
    """A CA certpilot can order from (ACME, the embedded local CA, OpenBao PKI)."""

    name: str

    async def issue(self, request: IssueRequest) -> IssuedCertificate: ...

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None: ...

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None: ...


@dataclass(frozen=True, slots=True)
class DeployReceipt:
    """What a deploy did, enough to roll it back. ``state`` is adapter-private data
    (previous file paths, KV version, Secret resourceVersion); never secrets."""

    target: str
    serial: str
    state: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


class DeployTarget(Protocol):
    """Where a certificate goes (files + reload, OpenBao KV, Kubernetes Secret)."""

    name: str

    def endpoints(self) -> Sequence[EndpointTarget]:
        """Endpoints that serve what this target holds: re-probed after a deploy."""
        ...

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt: ...

    async def rollback(self, receipt: DeployReceipt) -> None: ...


@runtime_checkable
class CertificateHolder(Protocol):
    """A deploy target that can say what it holds now (the files on disk, the latest KV
    version, the Secret's data): what ``certpilot redeploy`` pushes out again when a renewed
    certificate was stored but never served. ``None`` when it holds nothing usable."""

    async def current(self) -> IssuedCertificate | None: ...


class IssuerError(CertpilotError):
    """An issuer failed. ``retry_after`` is set when the CA said when to come back (HTTP 429
    Retry-After, or a badNonce worth retrying at once: 0)."""

    def __init__(self, issuer: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{issuer}: {message}")
        self.issuer = issuer
        self.message = message
        self.retry_after = retry_after


class DeployError(CertpilotError):
    """A deploy target failed (write, config test, reload, timeout)."""

    def __init__(self, target: str, step: str, message: str) -> None:
        super().__init__(f"{target}: {step}: {message}")
        self.target = target
        self.step = step
        self.message = message
