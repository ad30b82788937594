"""The data that flows between rooms: targets in, observations out (DESIGN.md section 1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from certpilot.domain.problems import Problem, ProblemCode, severity_rank
from certpilot.domain.x509 import CertInfo, iso

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EndpointTarget:
    """A TLS endpoint to probe.

    ``host`` is what the user named (and the SNI / hostname to check unless ``sni`` overrides
    it); ``address`` pins the IP to connect to, like curl's ``--resolve``.
    """

    host: str
    port: int
    sni: str | None = None
    address: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    @property
    def server_name(self) -> str:
        return self.sni if self.sni is not None else self.host

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def ref(self) -> str:
        """Stable source reference: ``tls://host:port#sni``."""
        return f"tls://{self.name}#{self.server_name}"


@dataclass(frozen=True, slots=True)
class FileTarget:
    """A path, glob or directory of certificate files."""

    pattern: str
    password_env: str | None = None
    password_file: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"file:{self.pattern}"


Target = EndpointTarget | FileTarget


@dataclass(frozen=True, slots=True)
class Observation:
    """What one scan of one item saw. Failures are problems here, not exceptions.

    ``chain`` holds every certificate presented (for TLS) or bundled with the item, leaf first;
    ``path`` the certificates the trust walk used, leaf first, anchor last when trusted.
    """

    source: str  # "tls", "file", later "openbao", "k8s", "ct"
    ref: str  # stable source reference, the inventory's location key
    target: str  # as the user named it
    observed_at: datetime
    problems: tuple[Problem, ...] = ()
    leaf: CertInfo | None = None
    chain: tuple[CertInfo, ...] = ()
    path: tuple[CertInfo, ...] = ()
    trusted: bool | None = None
    host: str | None = None
    port: int | None = None
    address: str | None = None
    sni: str | None = None
    tls_version: str | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    @property
    def codes(self) -> tuple[ProblemCode, ...]:
        return tuple(p.code for p in self.problems)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def worst(self) -> ProblemCode | None:
        if not self.problems:
            return None
        return min(self.codes, key=severity_rank)

    def to_dict(self) -> dict[str, object]:
        """The JSON contract of ``certpilot scan --format json`` (documented in the README)."""
        leaf = self.leaf
        now = self.observed_at
        return {
            "target": self.target,
            "source": self.source,
            "ref": self.ref,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "sni": self.sni,
            "problems": [p.code.value for p in self.problems],
            "problem_details": [p.to_dict() for p in self.problems],
            "serial": leaf.serial if leaf else None,
            "fingerprint_sha256": leaf.fingerprint_sha256 if leaf else None,
            "spki_sha256": leaf.spki_sha256 if leaf else None,
            "subject": leaf.subject if leaf else None,
            "issuer": leaf.issuer if leaf else None,
            "sans": list(leaf.sans) if leaf else [],
            "not_before": iso(leaf.not_before) if leaf else None,
            "not_after": iso(leaf.not_after) if leaf else None,
            "days_left": round(leaf.days_left(now), 3) if leaf else None,
            "lifetime_left_fraction": round(leaf.fraction_left(now), 4) if leaf else None,
            "key_type": leaf.key_type if leaf else None,
            "key_bits": leaf.key_bits if leaf else None,
            "signature_algorithm": leaf.signature_algorithm if leaf else None,
            "tls_version": self.tls_version,
            "trusted": self.trusted,
            "chain": [c.to_dict(now) for c in self.chain],
            "error": self.error,
            "observed_at": iso(self.observed_at),
            "duration_seconds": round(self.duration_seconds, 6),
            "labels": dict(self.labels),
        }
