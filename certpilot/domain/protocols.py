"""The small Protocols other rooms implement, in one place (DESIGN.md section 6.4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from certpilot.domain.model import EndpointTarget, Observation


class Prober(Protocol):
    """Probes endpoints and says what each one serves. Wired in ``certpilot.app``.

    The remediator uses it to verify a deployment without importing ``scanner``.
    """

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]: ...


class ObservationSink(Protocol):
    """Where scan results go (the inventory store implements it)."""

    def record(self, observations: Sequence[Observation]) -> object: ...
