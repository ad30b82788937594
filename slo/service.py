"""The slo room's service functions: what the app, the CLI, the demo and the bot call.

They glue the pure engine to the inventory: derive SLI events from a scan, store them, take
counter samples, and evaluate every SLO from the stored samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from certpilot.domain.model import Observation
from certpilot.domain.sli import SLIEvent, coverage_events, valid_ratio_events
from certpilot.obs import SLOGauges
from certpilot.store import Inventory
from slo.engine import CounterSeries, SLOStatus, evaluate, validate_slo
from slo.openslo import load_any
from slo.spec import SLI_WINDOWS, SLOSet, default_slos, window_seconds


def load_slos(paths: Sequence[str], service: str = "certpilot") -> SLOSet:
    """The SLOs to evaluate: the spec files given (Sloth or OpenSLO), or certpilot's presets.

    Every SLO's burn-rate windows are checked; a set that can never fire is a ConfigError.
    """
    if not paths:
        slo_set = default_slos(service)
        for s in slo_set.slos:
            validate_slo(s, "default SLOs")
        return slo_set
    slos = []
    first: SLOSet | None = None
    for p in paths:
        _, loaded, _warnings = load_any(p)  # Sloth prometheus/v1 or OpenSLO v1
        first = first or loaded
        for s in loaded.slos:
            validate_slo(s, p)
            slos.append(s)
    assert first is not None
    return SLOSet(first.service, tuple(slos), first.labels)


def record_events(
    inventory: Inventory, events: Sequence[SLIEvent]
) -> dict[str, tuple[float, float]]:
    """Store SLI events; returns ``{sli: (good, bad)}`` increments for the Prometheus counter."""
    return inventory.record_sli_events(events)


def scan_events(observations: Sequence[Observation], at: datetime) -> list[SLIEvent]:
    """The SLI events one scan cycle produces (M1 valid ratio)."""
    return valid_ratio_events(observations, at)


def coverage_tick(inventory: Inventory, at: datetime, max_age: timedelta) -> list[SLIEvent]:
    """Discovery coverage events for every known location (endpoints and stored
    certificates), as of ``at``."""
    return coverage_events(inventory.items(now=at), at, max_age)


def evaluate_all(
    slo_set: SLOSet, inventory: Inventory, now: datetime, *, eval_interval: float = 60.0
) -> list[SLOStatus]:
    """Evaluate every SLO from the stored counter samples of its SLI.

    Only preset SLOs (``sli`` set) have in-process data; a user's SLO over other metrics is
    evaluated by Prometheus alone (its rules are generated all the same) and is skipped here.
    """
    out: list[SLOStatus] = []
    cache: dict[str, CounterSeries] = {}
    for slo in slo_set.slos:
        if slo.sli is None:
            continue
        if slo.sli not in cache:
            since = now - timedelta(seconds=window_seconds(slo.period) + 3600)
            cache[slo.sli] = CounterSeries.from_samples(inventory.sli_samples(slo.sli, since))
        out.append(evaluate(slo, cache[slo.sli], now, eval_interval=eval_interval))
    return out


def gauges(status: SLOStatus) -> SLOGauges:
    """Plain numbers for ``certpilot.obs.Metrics.observe_slo``."""
    windows = {w.window: (w.error_ratio, w.burn_rate) for w in status.windows}
    firing: dict[str, bool] = {}
    for a in status.alerts:
        firing[a.severity] = firing.get(a.severity, False) or a.firing
    return SLOGauges(
        sloth_id=status.slo.id,
        service=status.slo.service,
        slo=status.slo.name,
        objective_ratio=status.slo.objective_ratio,
        windows=windows,
        budget_remaining_ratio=status.budget_remaining_ratio,
        period_burn_rate=status.period_burn_rate,
        firing=firing,
    )


__all__ = [
    "SLI_WINDOWS",
    "coverage_tick",
    "evaluate_all",
    "gauges",
    "load_slos",
    "record_events",
    "scan_events",
]
