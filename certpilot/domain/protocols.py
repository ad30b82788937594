"""The small Protocols other rooms implement, in one place (DESIGN.md section 6.4)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from certpilot.domain.inventory import Event, InventoryItem, ScanRun
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.problems import ProblemCode


class Prober(Protocol):
    """Probes endpoints and says what each one serves. Wired in ``certpilot.app``.

    The remediator uses it to verify a deployment without importing ``scanner``.
    """

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]: ...


class ObservationSink(Protocol):
    """Where scan results go (the inventory store implements it)."""

    def record(
        self, observations: Sequence[Observation], *, now: datetime, run_id: int | None = None
    ) -> list[Event]: ...


class InventoryReader(Protocol):
    """Read side of the inventory, as HTTP handlers and metrics collectors need it."""

    def ping(self) -> None: ...

    def items(
        self,
        *,
        now: datetime,
        expiring_days: float | None = None,
        problem: ProblemCode | None = None,
        source: str | None = None,
    ) -> list[InventoryItem]: ...

    def events(
        self, *, since_id: int = 0, limit: int = 1000, ref: str | None = None
    ) -> list[Event]: ...

    def runs(self, limit: int = 20) -> list[ScanRun]: ...
