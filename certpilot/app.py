"""The composition root of the long-running service: wires adapters in one AsyncExitStack.

``certpilot run`` builds a :class:`Service` from frozen settings; it owns the inventory store,
the scanner (and its worker pool), the metrics registry, the HTTP server and the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry

from certpilot.cluster import Cluster, DatabaseClock, replica_id
from certpilot.ctwatching import CTRuntime, RecordedIssuance, open_ct
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertpilotError
from certpilot.domain.inventory import Event, InventoryItem
from certpilot.domain.model import EndpointTarget, FileTarget, Observation, Target
from certpilot.domain.ownership import OwnerRule, assign_owners
from certpilot.domain.reconcile import Reconciler
from certpilot.domain.remedy import DeployTarget
from certpilot.domain.sli import SLIEvent
from certpilot.http import bound_port, build_app, serve
from certpilot.obs import Metrics, release_memory
from certpilot.paging import open_slack
from certpilot.remediate import (
    RemediationRuntime,
    open_remediation,
    read_token,
    stored_pem,
    webhook_token,
)
from certpilot.settings import Settings
from certpilot.store import Inventory
from remediator.webhook import AlertIntake, make_handler
from scanner.crl import CRLCache
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
    """One scan cycle. ``observations`` are empty when the cycle was asked not to keep them
    (``keep=False``: the service's cycles); ``items`` and ``codes`` are counted either way."""

    observations: list[Observation]
    events: list[Event]
    duration_seconds: float
    items: int = 0  # locations recorded
    problems: int = 0  # of which with a problem
    codes: Mapping[str, int] = field(default_factory=dict)  # problem code -> locations


class _CycleTally:
    """What a scan cycle keeps of the batches it records: counts, refs, the SLI events and
    the metrics' per-location rows, and the observations themselves only when asked."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.observations: list[Observation] = []
        self.events: list[Event] = []
        self.sli: list[SLIEvent] = []
        self.refs: set[str] = set()
        self.codes: Counter[str] = Counter()
        self.items = 0
        self.problems = 0
        self.by_source: dict[str, list[Observation]] = {}

    def add(self, batch: Sequence[Observation], events: Sequence[Event], at: datetime) -> None:
        self.events.extend(events)
        self.sli.extend(slo_service.scan_events(batch, at))
        self.items += len(batch)
        for o in batch:
            self.refs.add(o.ref)
            if o.problems:
                self.problems += 1
                self.codes.update(c.value for c in o.codes)
            # What the metrics need of a location, without its certificates.
            slim = replace(o, leaf=None, chain=(), path=()) if not self.keep else o
            self.by_source.setdefault(o.source, []).append(slim)
        if self.keep:
            self.observations.extend(batch)


async def scan_and_record(
    scanner: Scanner,
    inventory: Inventory,
    metrics: Metrics | None,
    targets: Sequence[Target],
    clock: Clock,
    *,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    issued: Iterable[str] = (),
    owners: Sequence[OwnerRule] = (),
    default_owner: str | None = None,
    crl_cache: CRLCache | None = None,
    stores: Sequence[StoreScan] = (),
    watched: Callable[[], Sequence[Observation]] | None = None,
    watched_names: Iterable[str] = (),
    store_prefixes: Iterable[str] = (),
    prune: bool = False,
    configured: Sequence[Target] | None = None,
    keep: bool = True,
) -> ScanResult:
    """One scan cycle: probe, reconcile stored vs served vs issued (``issued``: fingerprints
    certpilot issued), store, SLI events, update metrics.

    Certificates at rest (files, the ``stores``: OpenBao/Vault, Kubernetes, and what the store
    ``watched`` currently see) are read first, since reconciling a served certificate needs
    them all; endpoints are then probed and **recorded chunk by chunk** as the probe pool
    hands them on (one transaction per chunk, ``Inventory.record``), the stored ones last.
    Events come in the order endpoints, files, stores, as targets are given. With
    ``keep=False`` the cycle keeps only counts of what it recorded (a 10,000-endpoint fleet's
    observations are 30 MB), and the result's ``observations`` are empty.

    ``prune`` forgets locations the cycle shows are gone (:func:`stale_refs`; the service sets
    it, a one-shot ``certpilot scan --db`` does not). ``watched`` gives what the store watches
    currently see (:class:`WatchedStores`): recorded with the rest each cycle (so CRL checks,
    coverage and ``last_scanned`` stay current for watched stores too; the watches record
    changes at once in between). ``configured``: every configured target, when ``targets`` is
    only this replica's share (what is configured decides what is gone, not the share)."""
    started = time.perf_counter()
    run_id = await asyncio.to_thread(inventory.start_run, "scan", len(targets), clock.now())
    endpoints = [t for t in targets if isinstance(t, EndpointTarget)]
    files = [t for t in targets if isinstance(t, FileTarget)]
    stored: list[Observation] = []
    if files:
        stored += await scanner.scan_files(files, env if env is not None else os.environ, progress)
    for store in stores:  # OpenBao/Vault, Kubernetes: never raise, failures are observations
        stored += await store()
    context = list(watched()) if watched is not None else []
    stored += context
    reconciler = Reconciler(stored, issued=issued)
    tally = _CycleTally(keep)

    async def record(batch: list[Observation]) -> None:
        if crl_cache is not None:  # revoked: the issuers' CRLs (fetched, cached until nextUpdate)
            batch = await crl_cache.check_all(batch, clock.now())
        batch = reconciler.apply(assign_owners(batch, owners, default_owner))
        events = await asyncio.to_thread(inventory.record, batch, now=clock.now(), run_id=run_id)
        tally.add(batch, events, clock.now())

    async for chunk in scanner.probe_chunks(endpoints, progress):
        await record(chunk)
    if stored:
        await record(stored)
    del stored
    if watched is not None and context:
        # An object a watch deleted while this cycle ran was just recorded again: forget it.
        still = {o.ref for o in watched()}
        gone = [o.ref for o in context if o.ref not in still]
        if gone:
            tally.events += await asyncio.to_thread(inventory.remove, gone, now=clock.now())
    if prune:
        refs = await asyncio.to_thread(inventory.refs)
        failures = [o for obs in tally.by_source.values() for o in obs if o.error is not None]
        gone = stale_refs(
            refs,
            tally.refs,
            targets if configured is None else configured,
            stores=store_prefixes,
            watched=watched_names,
            failures=failures,
        )
        if gone:
            log.info("forgetting %d locations that are gone", len(gone))
            tally.events += await asyncio.to_thread(inventory.remove, gone, now=clock.now())
    await asyncio.to_thread(inventory.finish_run, run_id, clock.now(), tally.items, tally.problems)
    increments = await asyncio.to_thread(slo_service.record_events, inventory, tally.sli)
    duration = time.perf_counter() - started
    if metrics is not None:
        metrics.observe_sli(increments)
        if crl_cache is not None:
            metrics.observe_crls(crl_cache.status(clock.now()), crl_cache.error_counts)
        for kind in {"tls", "file"} | set(tally.by_source):
            metrics.observe_scan(kind, tally.by_source.get(kind, []), duration)
    result = ScanResult(
        tally.observations,
        tally.events,
        duration,
        items=tally.items,
        problems=tally.problems,
        codes=dict(tally.codes),
    )
    # The cycle's temporaries (the write batches) are freed now; hand the pages back instead of
    # keeping the peak until the next cycle.
    await asyncio.to_thread(release_memory)
    return result


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


StoreScan = Callable[[], Awaitable[list[Observation]]]


def stale_refs(
    stored: Sequence[str],
    seen: AbstractSet[str],
    targets: Sequence[Target],
    *,
    failures: Iterable[Observation] = (),
    stores: Iterable[str] = (),
    watched: Iterable[str] = (),
) -> list[str]:
    """Locations a scan cycle shows are gone, to forget (``Inventory.remove``):

    * endpoints no longer configured (``tls://`` refs not among this cycle's targets);
    * files no longer there (``file://`` refs this cycle's file targets did not yield);
    * OpenBao/Kubernetes items their store no longer holds, for each configured store
      (``stores``: ref prefixes such as ``openbao://bao/``) that answered as a whole this cycle
      (no store-level failure observation: a ref without ``#`` that carries an error); items of
      stores no longer configured; never for watched stores (``watched``: their prefixes), which
      forget deletions themselves.

    A store that failed keeps its items (they age, and the failure shows as
    ``x509_source_up`` 0) rather than losing them to an outage. ``seen``: the refs this cycle
    recorded; ``failures``: its observations that carry an error (at least)."""
    endpoints = {t.ref for t in targets if isinstance(t, EndpointTarget)}
    configured = tuple(stores)
    failed = {
        p
        for o in failures
        if o.error is not None and "#" not in o.ref
        for p in configured
        if (o.ref + "/").startswith(p)
    }
    skip = tuple(watched)
    gone: list[str] = []
    for ref in stored:
        if ref in seen:
            continue
        if ref.startswith("tls://"):
            if ref not in endpoints:
                gone.append(ref)
        elif ref.startswith("file://"):
            gone.append(ref)
        elif ref.startswith(("openbao://", "k8s://")):
            if ref.startswith(skip) and skip:
                continue
            owner = next((p for p in configured if ref.startswith(p)), None)
            if owner is None or owner not in failed:
                gone.append(ref)
    return gone


def store_scans(
    settings: Settings,
    clock: Clock,
    env: Mapping[str, str],
    *,
    source: str = "config",
    metrics: Metrics | None = None,
    skip_watched: bool = False,
) -> list[StoreScan]:
    """One scan per configured secrets store (``targets.openbao``, ``targets.kubernetes``);
    :class:`ConfigError` names ``targets.openbao[i].<field>`` for bad options. OpenBao PKI
    mounts' CRL freshness goes to ``certpilot_crl_*``. ``skip_watched``: leave out the
    Kubernetes sources with ``watch: true`` (the service follows them with
    :func:`watch_stores` instead of listing them every cycle)."""
    from scanner.k8s import KubernetesSource, scan_kubernetes
    from scanner.openbao import OpenBaoSource, scan_openbao

    policy = settings.judge.policy()
    out: list[StoreScan] = []
    for i, data in enumerate(settings.targets.openbao):
        bao = OpenBaoSource.from_mapping(data, source=source, field=f"targets.openbao[{i}]")

        async def scan_bao(bao: OpenBaoSource = bao) -> list[Observation]:
            res = await scan_openbao(bao, clock, env=env, policy=policy)
            if metrics is not None:
                now = clock.now()
                for mount, next_update in res.crl_next_update.items():
                    url = f"{bao.url.rstrip('/')}/v1/{mount}/crl"
                    metrics.crl_next_update.labels(url, mount).set(next_update.timestamp())
                    metrics.crl_stale.labels(url, mount).set(1.0 if next_update < now else 0.0)
            return list(res.observations)

        out.append(scan_bao)
    for i, data in enumerate(settings.targets.kubernetes):
        kube = KubernetesSource.from_mapping(data, source=source, field=f"targets.kubernetes[{i}]")
        if skip_watched and kube.watch:
            continue

        async def scan_kube(kube: KubernetesSource = kube) -> list[Observation]:
            return await scan_kubernetes(kube, clock, policy=policy, env=env)

        out.append(scan_kube)
    return out


class WatchedStores:
    """What the Kubernetes watches (``targets.kubernetes[i].watch: true``) currently see, by
    ref: kept by :func:`watch_stores`, read by each scan cycle (``scan_and_record(watched=)``)
    to reconcile the endpoints against without listing the clusters again."""

    def __init__(self) -> None:
        self.current: dict[str, Observation] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> list[Observation]:
        return list(self.current.values())

    def apply(self, observations: Sequence[Observation], removed: Sequence[str]) -> None:
        for o in observations:
            self.current[o.ref] = o
        for ref in removed:
            self.current.pop(ref, None)


def watch_stores(
    stack: AsyncExitStack,
    settings: Settings,
    clock: Clock,
    env: Mapping[str, str],
    inventory: Inventory,
    *,
    on_recorded: Callable[[], Awaitable[None]],
    source: str = "config",
    crl_cache: CRLCache | None = None,
) -> WatchedStores:
    """Follow every Kubernetes source with ``watch: true`` (LIST, then WATCH: see
    :func:`scanner.k8s.watch_kubernetes`) in background tasks, until ``stack`` closes.

    Each change goes the way a scan's observations go (CRL check, owners), then into the
    inventory: ``record`` the observations, ``remove`` the refs gone. ``on_recorded`` runs
    after a change that made inventory events (plan renewals, page). A change that cannot be
    recorded is logged and the watch goes on.
    """
    from scanner.k8s import KubernetesSource, watch_kubernetes

    policy = settings.judge.policy()
    owners = owner_rules(settings)
    watched = WatchedStores()
    halt = asyncio.Event()

    async def on_change(observations: list[Observation], removed: list[str]) -> None:
        try:
            if crl_cache is not None and observations:
                observations = await crl_cache.check_all(observations, clock.now())
            # No reconcile() here: it adds problems to served endpoints only, and a watch
            # reports stored certificates. The next scan cycle reconciles the endpoints
            # against what the watches see (WatchedStores.snapshot).
            observations = assign_owners(observations, owners, settings.ownership.default)
            watched.apply(observations, removed)
            events = await asyncio.to_thread(inventory.record, observations, now=clock.now())
            if removed:
                events += await asyncio.to_thread(inventory.remove, removed, now=clock.now())
        except Exception:
            log.exception("recording a kubernetes change failed")
            return
        if events:
            await on_recorded()

    async def follow(kube: KubernetesSource) -> None:
        try:
            await watch_kubernetes(
                kube, clock, policy=policy, env=env, on_change=on_change, stop=halt
            )
        except Exception:  # on_change never raises: a bug, but not the whole service's end
            log.exception("the watch of kubernetes %s ended", kube.name)

    for i, data in enumerate(settings.targets.kubernetes):
        kube = KubernetesSource.from_mapping(data, source=source, field=f"targets.kubernetes[{i}]")
        if kube.watch:
            watched.tasks.append(asyncio.create_task(follow(kube), name=f"watch-{kube.name}"))

    async def stop_watching() -> None:
        # Watches return promptly once halted (a change being recorded is finished first);
        # cancelled only if one does not.
        halt.set()
        if watched.tasks:
            _, late = await asyncio.wait(watched.tasks, timeout=10.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*watched.tasks, return_exceptions=True)

    stack.push_async_callback(stop_watching)
    return watched


def owner_rules(settings: Settings) -> list[OwnerRule]:
    return [
        OwnerRule(r.owner, names=r.names, refs=r.refs, sources=r.sources)
        for r in settings.ownership.rules
    ]


def scan_targets(settings: Settings, deploy_targets: Sequence[DeployTarget]) -> list[Target]:
    """What ``run`` scans: the configured endpoints and files, plus every endpoint a deploy
    target serves (a managed certificate is watched without being listed twice)."""
    out: list[EndpointTarget] = [*settings.endpoint_targets()]
    seen = {t.ref for t in out}
    for dt in deploy_targets:
        for ep in dt.endpoints():
            if ep.ref not in seen:
                seen.add(ep.ref)
                out.append(ep)
    return [*out, *settings.file_targets()]


def _lookup(inventory: Inventory, ref: str, fingerprint: str) -> InventoryItem | None:
    """The inventory item an alert names: by its ``ref`` label, else where the certificate with
    that fingerprint is currently presented as the leaf (``Inventory.sightings``)."""
    if ref:
        item = inventory.item(ref)
        if item is not None:
            return item
    if fingerprint:
        fp = fingerprint.lower().replace(":", "")
        for seen in inventory.sightings(fingerprint_sha256=fp):
            if not seen.current:
                continue
            item = inventory.item(seen.ref)
            if item is not None and (item.fingerprint_sha256 or "").lower() == fp:
                return item
    return None


class Service:
    """``certpilot run``: scheduled scans, store, metrics and HTTP until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        env: Mapping[str, str] | None = None,
        config_path: str | Path | None = None,
    ):
        self.settings = settings
        self.config_path = config_path
        self.clock = clock
        self.env = env if env is not None else dict(os.environ)
        self.registry = CollectorRegistry()
        self.ready = False
        self.port: int | None = None
        self._scan_lock = asyncio.Lock()
        self.shutdown_grace = 30.0
        self._slo_statuses: list[SLOStatus] = []
        self.cluster: Cluster | None = None

    def _readiness(self) -> tuple[bool, str]:
        return (True, "ok") if self.ready else (False, "first scan not finished")

    async def run(self, stop: asyncio.Event) -> None:
        async with AsyncExitStack() as stack:
            inventory = Inventory.open(self.settings.store.url)
            stack.callback(inventory.close)
            # Replicas on one database: membership, the endpoint shares, the leader; and the
            # clock every replica agrees on (the database's), for leases and timestamps.
            instance = self.settings.cluster.instance or socket.gethostname()
            # A second run() of the same Service wraps the original clock, not the last one.
            base = self.clock.base if isinstance(self.clock, DatabaseClock) else self.clock
            cluster = Cluster(
                self.settings.store.url,
                base,
                heartbeat=self.settings.cluster.heartbeat,
                ttl=self.settings.cluster.ttl,
                replica=replica_id(instance),
            )
            stack.callback(cluster.close)
            await cluster.tick()
            self.cluster = cluster
            self.clock = cluster.clock
            metrics = Metrics(self.registry, inventory, self.clock)
            scanner = Scanner(scan_options(self.settings), self.clock)
            stack.callback(scanner.close)
            crl_cache: CRLCache | None = None
            if self.settings.scan.crl_checks:
                crl_cache = await stack.enter_async_context(CRLCache(self.clock))
            rt = open_remediation(
                self.settings,
                self.clock,
                prober=scanner,
                inventory=inventory,
                metrics=metrics,
                config_path=self.config_path,
                instance=instance,
            )
            stack.callback(rt.close)
            wake = asyncio.Event()
            intake = AlertIntake(
                rt.remediation,
                lambda ref, fp: _lookup(inventory, ref, fp),
                chain_of=stored_pem(inventory),
            )

            def jobs_json(state: str | None, limit: int) -> list[dict[str, object]]:
                states = [state] if state else None
                return [j.to_dict() for j in rt.jobs.list(states, limit=limit, newest_first=True)]

            app = build_app(
                registry=self.registry,
                inventory=inventory,
                clock=self.clock,
                readiness=self._readiness,
                jobs=jobs_json,
                token=(
                    read_token(
                        self.settings.http.token_file, self.settings.http.token_env, self.env
                    )
                    if self.settings.http.token_file or self.settings.http.token_env
                    else None
                ),
                cluster=cluster.status,
            )
            slack = await open_slack(
                stack,
                self.settings,
                self.clock,
                self.env,
                rt=rt,
                inventory=inventory,
                slo_rows=lambda: [st.to_dict() for st in self._slo_statuses],
                wake=wake.set,
            )
            if slack is not None:
                app.router.add_post("/slack/events", slack.handler)
            app.router.add_post(
                "/hooks/alertmanager",
                make_handler(
                    intake,
                    webhook_token(self.settings, self.env),
                    wake=wake.set,
                    on_alerts=slack.on_alerts if slack is not None else None,
                ),
            )
            # Jobs a previous process left in flight: finish or roll back before anything new.
            for outcome in await rt.executor.resume_all():
                log.info("resumed job %d: %s %s", outcome.job.id, outcome.job.state, outcome.note)
            runner = await serve(app, self.settings.http.host, self.settings.http.port)
            stack.push_async_callback(runner.cleanup)
            self.port = bound_port(runner)
            targets = scan_targets(self.settings, rt.targets)
            stores = store_scans(
                self.settings,
                self.clock,
                self.env,
                source=str(self.config_path or "config"),
                metrics=metrics,
                skip_watched=True,
            )

            async def inventory_changed() -> None:
                wake.set()  # new inventory: plan renewals
                if slack is not None and cluster.is_leader:
                    try:
                        await slack.on_scan()
                    except Exception:
                        log.exception("paging after an inventory change failed")

            watched = watch_stores(
                stack,
                self.settings,
                self.clock,
                self.env,
                inventory,
                on_recorded=inventory_changed,
                source=str(self.config_path or "config"),
                crl_cache=crl_cache,
            )

            ct_rt: CTRuntime | None = None
            if self.settings.ct.enabled:
                loop = asyncio.get_running_loop()

                def ct_recorded(recorded: Sequence[RecordedIssuance]) -> None:
                    # Called from a worker thread: page on the loop.
                    if any(r.verdict.expected is False for r in recorded):
                        loop.call_soon_threadsafe(
                            lambda: asyncio.ensure_future(inventory_changed())
                        )

                ct_rt, ct_logs = open_ct(
                    self.settings.ct,
                    self.clock,
                    inventory=inventory,
                    store_url=self.settings.store.url,
                    jobs=rt.jobs,
                    metrics=metrics,
                    owners=owner_rules(self.settings),
                    default_owner=self.settings.ownership.default,
                    source=str(self.config_path or "config"),
                    on_recorded=ct_recorded,
                )
                # Each log and feed is followed by one replica (rendezvous hashing over the live
                # members: a member joining or leaving moves only its share).
                ct_rt.active = lambda url: cluster.owns(f"ct:{url}")
                ct_rt.lead = lambda: cluster.is_leader
                stack.callback(ct_rt.store.close)
                stack.push_async_callback(ct_rt.aclose)
                ct_rt.start(ct_logs, stop)
                ct_rt.start_feeds(stop)
                log.info(
                    "watching %d CT logs and %d certstream feeds",
                    len(ct_logs),
                    len(self.settings.ct.certstream),
                )

            kube = self.settings.targets.kubernetes
            store_prefixes = [
                *(f"openbao://{b.get('name', '')}/" for b in self.settings.targets.openbao),
                *(f"k8s://{k.get('name', '')}/" for k in kube),
            ]
            watched_prefixes = [f"k8s://{k.get('name', '')}/" for k in kube if k.get("watch")]

            async def cycle() -> None:
                if self._scan_lock.locked():
                    log.warning("previous scan still running; skipping this cycle")
                    return
                async with self._scan_lock:
                    try:
                        leader = cluster.is_leader
                        # This replica's share of the endpoints; files, secrets stores and
                        # forgetting what is gone are the leader's.
                        mine = [
                            t
                            for t in targets
                            if (cluster.owns(t.ref) if isinstance(t, EndpointTarget) else leader)
                        ]
                        issued = await asyncio.to_thread(rt.jobs.issued_fingerprints)
                        res = await scan_and_record(
                            scanner,
                            inventory,
                            metrics,
                            mine,
                            self.clock,
                            env=self.env,
                            issued=issued,
                            owners=owner_rules(self.settings),
                            default_owner=self.settings.ownership.default,
                            crl_cache=crl_cache,
                            stores=stores if leader else (),
                            watched=watched.snapshot if leader else None,
                            watched_names=watched_prefixes,
                            store_prefixes=store_prefixes,
                            prune=leader,
                            configured=targets,
                            keep=False,
                        )
                    except CertpilotError as e:  # the store is down: one line, retried next cycle
                        log.error("scan cycle failed: %s", e.one_line())
                        return
                    except Exception:
                        log.exception("scan cycle failed")
                        return
                    self.ready = True
                    if ct_rt is not None:
                        ct_rt.inventory_ready.set()
                    await inventory_changed()
                    log.info(
                        "scanned %d items in %.1fs: %d events; problems %s",
                        res.items,
                        res.duration_seconds,
                        len(res.events),
                        dict(res.codes) or "none",
                    )

            slo_set = slo_service.load_slos(self.settings.slo.specs)
            # Continue certpilot_sli_events_total from what is stored, so a restart is no reset.
            metrics.observe_sli(await asyncio.to_thread(inventory.sli_counters))
            # A sample before the first scan, so its events show up as a rate at once.
            await asyncio.to_thread(inventory.snapshot_sli, self.clock.now())

            async def slo_tick() -> None:
                metrics.observe_cluster(leader=cluster.is_leader, members=len(cluster.members))
                if not cluster.is_leader:
                    return  # coverage events and the evaluation are counted once, by the leader
                try:
                    self._slo_statuses = await slo_cycle(
                        inventory, metrics, slo_set, self.clock, self.settings
                    )
                    if slack is not None:
                        await slack.on_slo(self._slo_statuses)
                except CertpilotError as e:
                    log.error("SLO evaluation failed: %s", e.one_line())
                except Exception:
                    log.exception("SLO evaluation failed")

            async def page_tick() -> None:
                if slack is None or not cluster.is_leader:
                    return
                try:
                    await slack.pager.sync()
                except Exception:
                    log.exception("paging failed")

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
            if slack is not None:
                scheduler.add_job(
                    page_tick,
                    "interval",
                    seconds=self.settings.slack.page_interval,
                    max_instances=1,
                    coalesce=True,
                    id="pages",
                )
            scheduler.start()
            stack.callback(lambda: scheduler.shutdown(wait=False))
            cluster_task = asyncio.create_task(cluster.run(stop), name="cluster")
            jobs_task = asyncio.create_task(
                self._job_loop(rt, inventory, metrics, wake, stop), name="jobs"
            )
            await stop.wait()
            log.info("stopping")
            wake.set()
            try:
                # A job in flight finishes (or rolls back) if it can within the grace period;
                # otherwise it is cancelled and the next start resumes it.
                await asyncio.wait_for(jobs_task, timeout=self.shutdown_grace)
            except TimeoutError:
                log.warning("a job was still running at shutdown; the next start resumes it")
            async with self._scan_lock:
                pass
            await asyncio.wait_for(cluster_task, timeout=self.shutdown_grace)

    async def _job_loop(
        self,
        rt: RemediationRuntime,
        inventory: Inventory,
        metrics: Metrics,
        wake: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        """Plan renewals and run due jobs: every ``remediation.interval``, after each scan and
        when the webhook queued a job."""
        r = self.settings.remediation
        cluster = self.cluster
        while not stop.is_set():
            try:
                if r.enabled and self.ready and cluster is not None and cluster.is_leader:
                    items = await asyncio.to_thread(inventory.items, now=self.clock.now())
                    await rt.remediation.plan(items)
                if cluster is not None:
                    # A replica that died mid-job stops renewing its lease: take its jobs over.
                    for outcome in await rt.executor.resume_all(others_only=True):
                        log.info("took over job %d: %s", outcome.job.id, outcome.job.state)
                if not stop.is_set():
                    await rt.executor.run_due()
                metrics.observe_jobs(await asyncio.to_thread(rt.jobs.counts))
            except CertpilotError as e:
                log.error("remediation cycle failed: %s", e.one_line())
            except Exception:
                log.exception("remediation cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=r.interval)
            wake.clear()


__all__ = [
    "ScanResult",
    "Service",
    "WatchedStores",
    "scan_and_record",
    "scan_options",
    "scan_targets",
    "watch_stores",
]
