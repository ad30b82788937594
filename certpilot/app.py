"""The composition root of the long-running service: wires adapters in one AsyncExitStack.

``certpilot run`` builds a :class:`Service` from frozen settings; it owns the inventory store,
the scanner (and its worker pool), the metrics registry, the HTTP server and the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from certpilot.domain.clock import Clock
from certpilot.domain.inventory import Event
from certpilot.domain.model import Observation, Target
from certpilot.http import bound_port, build_app, serve
from certpilot.obs import Metrics
from certpilot.settings import Settings
from certpilot.store import Inventory
from scanner.runner import Progress, Scanner, ScanOptions
from scanner.tls_endpoint import ProbeSettings
from slo import service as slo_service
from slo.engine import SLOStatus
from slo.spec import SLOSet

log = logging.getLogger("certpilot.app")


def scan_options(settings: Settings) -> ScanOptions:
    return ScanOptions(
        probe=ProbeSettings(
            timeout=settings.scan.timeout,
            concurrency=settings.scan.concurrency,
            policy=settings.judge.policy(),
        ),
        ca_files=settings.scan.ca_files,
        use_system_trust=settings.scan.system_trust,
        workers=settings.scan.workers,
    )


@dataclass(frozen=True)
class ScanResult:
    observations: list[Observation]
    events: list[Event]
    duration_seconds: float


async def scan_and_record(
    scanner: Scanner,
    inventory: Inventory,
    metrics: Metrics | None,
    targets: Sequence[Target],
    clock: Clock,
    *,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """One scan cycle: probe, store (one transaction), SLI events, update metrics."""
    started = time.perf_counter()
    run_id = await asyncio.to_thread(inventory.start_run, "scan", len(targets), clock.now())
    observations = await scanner.scan(targets, env=env, progress=progress)
    events = await asyncio.to_thread(inventory.record, observations, now=clock.now(), run_id=run_id)
    problems = sum(1 for o in observations if o.problems)
    await asyncio.to_thread(inventory.finish_run, run_id, clock.now(), len(observations), problems)
    sli = slo_service.scan_events(observations, clock.now())
    increments = await asyncio.to_thread(slo_service.record_events, inventory, sli)
    duration = time.perf_counter() - started
    if metrics is not None:
        metrics.observe_sli(increments)
        by_source: dict[str, list[Observation]] = {}
        for o in observations:
            by_source.setdefault(o.source, []).append(o)
        for kind in {"tls", "file"} | set(by_source):
            metrics.observe_scan(kind, by_source.get(kind, []), duration)
    return ScanResult(observations, events, duration)


async def slo_cycle(
    inventory: Inventory,
    metrics: Metrics | None,
    slo_set: SLOSet,
    clock: Clock,
    settings: Settings,
) -> list[SLOStatus]:
    """One SLO tick: coverage events, a counter sample, evaluation, gauges, retention."""
    now = clock.now()
    cov = await asyncio.to_thread(
        slo_service.coverage_tick,
        inventory,
        now,
        timedelta(seconds=settings.slo.coverage_max_age),
    )
    increments = await asyncio.to_thread(slo_service.record_events, inventory, cov)
    await asyncio.to_thread(inventory.snapshot_sli, now)
    statuses = await asyncio.to_thread(
        slo_service.evaluate_all,
        slo_set,
        inventory,
        now,
        eval_interval=settings.slo.evaluation_interval,
    )
    await asyncio.to_thread(inventory.prune_sli, now - timedelta(seconds=settings.slo.retention))
    if metrics is not None:
        metrics.observe_sli(increments)
        for st in statuses:
            metrics.observe_slo(slo_service.gauges(st))
    return statuses


class Service:
    """``certpilot run``: scheduled scans, store, metrics and HTTP until ``stop`` is set."""

    def __init__(self, settings: Settings, clock: Clock, *, env: Mapping[str, str] | None = None):
        self.settings = settings
        self.clock = clock
        self.env = env if env is not None else dict(os.environ)
        self.registry = CollectorRegistry()
        self.ready = False
        self.port: int | None = None
        self._scan_lock = asyncio.Lock()

    def _readiness(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, "first scan not finished")

    async def run(self, stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            inventory = Inventory.open(self.settings.store.url)
            stack.callback(inventory.close)
            metrics = Metrics(self.registry, inventory, self.clock)
            scanner = Scanner(scan_options(self.settings), self.clock)
            stack.callback(scanner.close)
            app = build_app(
                registry=self.registry,
                inventory=inventory,
                clock=self.clock,
                readiness=self._readiness,
            )
            runner = await serve(app, self.settings.http.host, self.settings.http.port)
            stack.push_async_callback(runner.cleanup)
            self.port = bound_port(runner)
            targets: list[Target] = [
                *self.settings.endpoint_targets(),
                *self.settings.file_targets(),
            ]

            async def cycle() -> None:
                if self._scan_lock.locked():
                    log.warning("previous scan still running; skipping this cycle")
                    return
                async with self._scan_lock:
                    try:
                        res = await scan_and_record(
                            scanner, inventory, metrics, targets, self.clock, env=self.env
                        )
                    except Exception:
                        log.exception("scan cycle failed")
                        return
                    self.ready = True
                    counts = Counter(c.value for o in res.observations for c in o.codes)
                    log.info(
                        "scanned %d items in %.1fs: %d events; problems %s",
                        len(res.observations),
                        res.duration_seconds,
                        len(res.events),
                        dict(counts) or "none",
                    )

            slo_set = slo_service.load_slos(self.settings.slo.specs)
            # Continue certpilot_sli_events_total from what is stored, so a restart is no reset.
            metrics.observe_sli(await asyncio.to_thread(inventory.sli_counters))
            # A sample before the first scan, so its events show up as a rate at once.
            await asyncio.to_thread(inventory.snapshot_sli, self.clock.now())

            async def slo_tick() -> None:
                try:
                    await slo_cycle(inventory, metrics, slo_set, self.clock, self.settings)
                except Exception:
                    log.exception("SLO evaluation failed")

            scheduler = AsyncIOScheduler(timezone="UTC")
            scheduler.add_job(
                slo_tick,
                "interval",
                seconds=self.settings.slo.evaluation_interval,
                max_instances=1,
                coalesce=True,
                id="slo",
            )
            scheduler.add_job(
                cycle,
                "interval",
                seconds=self.settings.scan.interval,
                next_run_time=self.clock.now(),
                max_instances=1,
                coalesce=True,
                id="scan",
            )
            scheduler.start()
            stack.callback(lambda: scheduler.shutdown(wait=False))
            await stop.wait()
            log.info("stopping")
            async with self._scan_lock:
                pass


__all__ = ["ScanResult", "Service", "scan_and_record", "scan_options"]
