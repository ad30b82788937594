"""In-memory stand-ins for what the remediator talks to, for tests that exercise policy,
planning and the bot without real servers: a deploy target whose hosts "serve" what was
deployed, and a prober that reports exactly that."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from certpilot.domain.clock import Clock
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.remedy import DeployReceipt, IssuedCertificate
from certpilot.domain.x509 import CertInfo, parse_pem_bundle


def leaf_info(chain_pem: bytes) -> CertInfo:
    """The first certificate of a PEM chain, parsed."""
    leaf = parse_pem_bundle(chain_pem)[0]
    assert not isinstance(leaf, Exception)
    return leaf.info


@dataclass
class ServingTarget:
    """Serves its hosts; a deploy changes what they serve (shared through ``serving``)."""

    name: str
    hosts: tuple[str, ...]
    serving: dict[str, CertInfo] = field(default_factory=dict)

    def endpoints(self) -> Sequence[EndpointTarget]:
        return tuple(EndpointTarget(h, 443) for h in self.hosts)

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        info = leaf_info(cert.chain_pem)
        for ep in self.endpoints():
            self.serving[ep.name] = info
        return DeployReceipt(self.name, info.serial, {})

    async def rollback(self, receipt: DeployReceipt) -> None:
        raise AssertionError("nothing is rolled back here")


class ServingProber:
    """Reports exactly what the targets serve, observed at ``clock.now()``."""

    def __init__(self, serving: Mapping[str, CertInfo], clock: Clock) -> None:
        self.serving = serving
        self.clock = clock

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]:
        return [
            Observation(
                source="tls",
                ref=t.ref,
                target=t.name,
                observed_at=self.clock.now(),
                leaf=self.serving.get(t.name),
            )
            for t in targets
        ]
