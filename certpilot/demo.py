"""``certpilot demo``: the main job on embedded defaults, loopback only, no setup.

It starts a fleet of TLS endpoints (healthy ones and one for each way a certificate breaks),
scans them into a SQLite inventory, and prints what it found grouped by problem, checking that
each endpoint was classified as expected. Later capabilities (SLOs, remediation, Slack, CT) add
their steps to :data:`STEPS`-style sections below, so the demo grows with the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from certpilot import demo_ct, demo_remedy
from certpilot.app import scan_and_record, slo_cycle
from certpilot.cli_jobs import job_table
from certpilot.demo_slack import DemoPages
from certpilot.domain.clock import Clock
from certpilot.domain.model import FileTarget, Observation, Target
from certpilot.fleet import Fleet, dns_failure_target, start_fleet
from certpilot.http import bound_port, build_app, serve
from certpilot.obs import Metrics
from certpilot.report import grouped_report, scan_table, slo_table
from certpilot.settings import Settings
from certpilot.store import Inventory, JobStore
from scanner.runner import Scanner, ScanOptions
from scanner.tls_endpoint import ProbeSettings
from slo import service as slo_service

DEFAULT_STATE_DIR = ".certpilot-demo"


@dataclass
class DemoOptions:
    state_dir: Path | None = None
    serve: bool = False
    host: str = "127.0.0.1"
    port: int = 9795
    rescan_seconds: float = 30.0
    timeout: float = 2.0
    remediate: bool = True


def _section(console: Console, title: str) -> None:
    console.print()
    console.rule(Text(title, style="bold"), align="left")


def _check_table(fleet: Fleet, observations: list[Observation]) -> tuple[Table, int]:
    by_target = {o.target: o for o in observations}
    table = Table(title="classification check", title_justify="left")
    table.add_column("endpoint")
    table.add_column("case")
    table.add_column("expected")
    table.add_column("found")
    table.add_column("")
    wrong = 0
    for ep in fleet.endpoints:
        obs = by_target.get(ep.target().name)
        found = {c.value for c in obs.codes} if obs else {"(not scanned)"}
        expected = {c.value for c in ep.expected_with_stores()}
        ok = found == expected
        wrong += 0 if ok else 1
        table.add_row(
            ep.host,
            ep.case,
            ", ".join(sorted(expected)) or "none",
            ", ".join(sorted(found)) or "none",
            Text("✓", style="green") if ok else Text("✗", style="bold red"),
        )
    return table, wrong


async def run_demo(options: DemoOptions, clock: Clock, console: Console) -> int:
    """Run the demo; returns the process exit code (0 when every endpoint was judged right)."""
    state = options.state_dir or Path(DEFAULT_STATE_DIR)
    state.mkdir(parents=True, exist_ok=True)
    # Each run is a fresh fleet on new ports: start from an empty inventory so the report and
    # the `certpilot inventory` hints below describe this run only.
    for stale in ("inventory.db", "inventory.db-wal", "inventory.db-shm"):
        (state / stale).unlink(missing_ok=True)
    return await _demo(options, state, clock, console)


async def _demo(options: DemoOptions, state: Path, clock: Clock, console: Console) -> int:
    console.print(Text("certpilot demo", style="bold"), "- everything below runs on 127.0.0.1")
    _section(console, "1. a fleet of TLS endpoints")
    fleet = await start_fleet(state / "fleet", clock.now())
    try:
        console.print(
            f"Started {len(fleet.endpoints)} endpoints from an embedded local CA "
            f"(trusted roots in {fleet.ca_file}):"
        )
        for ep in fleet.endpoints:
            console.print(
                Text.assemble(
                    ("  • ", "dim"), (f"{ep.host}:{ep.port}", "bold"), f"  {ep.description}"
                )
            )
        console.print(
            Text.assemble(
                ("  • ", "dim"), ("nowhere…invalid:443", "bold"), "  a name that never resolves"
            )
        )

        _section(console, "2. scan into the inventory")
        db_url = f"sqlite:///{state / 'inventory.db'}"
        inventory = Inventory.open(db_url)
        registry = CollectorRegistry()
        metrics = Metrics(registry, inventory, clock)
        targets: list[Target] = [*fleet.targets(), dns_failure_target()]
        targets.append(FileTarget(str(fleet.ca_file)))
        # The fleet's certificate stores: compared with what is served (not_deployed,
        # unmanaged).
        targets += [FileTarget(p, labels={"owner": "web"}) for p in fleet.store_patterns]
        # Counters sampled at 0 before the first scan, as Prometheus would scrape them.
        inventory.snapshot_sli(clock.now())
        # The CA renewals will come from (section 5): trusted from the first scan on.
        issuer = demo_remedy.demo_issuer(state, clock)
        options_ = ScanOptions(
            probe=ProbeSettings(timeout=options.timeout),
            ca_files=(str(fleet.ca_file), str(state / "remedy-ca.pem")),
            use_system_trust=False,
        )
        with Scanner(options_, clock) as scanner:
            with Progress(
                TextColumn("scanning"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                disable=not console.is_terminal,
            ) as bar:
                task = bar.add_task("scan", total=len(targets))
                result = await scan_and_record(
                    scanner,
                    inventory,
                    metrics,
                    targets,
                    clock,
                    env={},
                    progress=lambda n: bar.advance(task, n),
                )
            console.print(
                f"Scanned {len(targets)} targets ({len(result.observations)} items) in "
                f"{result.duration_seconds:.1f}s into {db_url}: "
                f"{len(result.events)} inventory events recorded."
            )

            _section(console, "3. what certpilot found, grouped by problem")
            grouped_report(result.observations, console)
            console.print()
            console.print(scan_table(result.observations, title="all items, worst first"))

            check, wrong = _check_table(fleet, result.observations)
            console.print()
            console.print(check)
            if wrong:
                console.print(Text(f"{wrong} endpoint(s) misclassified", style="bold red"))

            _section(console, "4. SLOs: error budgets and burn rates")
            settings = Settings()
            slo_set = slo_service.load_slos(())
            statuses = await slo_cycle(inventory, metrics, slo_set, clock, settings)
            console.print(
                "Every probe is an SLI event (good = a valid certificate with enough lifetime "
                "left); burn rate = error ratio / error budget. A page fires when both the 1h "
                "and 5m burn rates exceed 14.4 (SRE workbook); here the fleet is broken on "
                "purpose, so it does:"
            )
            console.print(slo_table(statuses))
            console.print(
                Text(
                    "SLOs with no events yet (renewals, deployments) show '-': the remediator "
                    "feeds them.",
                    style="dim",
                )
            )

            _section(console, "5. Slack: the pages the bot would post (no Slack configured)")
            console.print(
                "Problems are grouped by root cause (a shared issuer or intermediate, the owner "
                "team, the domain) into one message each, routed by owner and severity "
                "(payments -> #payments-oncall, pages -> #certs-pages, the rest -> #certs), "
                "with what certpilot proposes and buttons for people allowed to act:"
            )
            pages = DemoPages(db_url, inventory, clock)
            await pages.sync(statuses)
            pages.show(console, limit=4)

            if options.remediate:
                _section(console, "6. remediation: renew under policy, deploy, verify by probing")
                console.print(
                    "Each broken endpoint a renewal can fix is asked of the policy "
                    f"({state / 'policy.yaml'}): auto for web and internal, an approval for "
                    "payments, dry-run for legacy. Each job issues from the embedded CA, writes "
                    "the endpoint's files (key 0600, previous version kept), and re-probes until "
                    "the new certificate is served, or rolls back."
                )
                rt = demo_remedy.open_demo_remediation(
                    fleet, state, db_url, issuer, scanner, inventory, clock
                )
                with rt:
                    await demo_remedy.remediate(rt, inventory, result.observations, clock, console)
                    after = await scan_and_record(
                        scanner, inventory, metrics, targets, clock, env={}
                    )
                    jobs = rt.jobs.list()
                    console.print(
                        demo_remedy.before_after(result.observations, after.observations, jobs)
                    )
                    console.print(job_table(jobs, title="jobs"))
                    verdict = rt.audit.verify()
                    console.print(verdict.one_line())
                    unfinished = [j for j in jobs if j.state != "done"]
                    if unfinished:
                        wrong += len(unfinished)
                        console.print(Text(f"{len(unfinished)} job(s) not done", style="bold red"))
                    statuses = await slo_cycle(inventory, metrics, slo_set, clock, settings)
                    console.print(slo_table(statuses))
                    console.print()
                    console.print(Text("Slack, after the fixes: edits and thread replies", "bold"))
                    await pages.sync(statuses)
                    pages.show(console, limit=6)
            _section(console, "7. Certificate Transparency: an unexpected issuance caught")
            job_store = JobStore.open(db_url)
            try:
                wrong += await demo_ct.ct_section(
                    inventory, job_store, issuer, metrics, clock, console
                )
            finally:
                job_store.close()
            await pages.sync()
            pages.show(console, limit=2)
            pages.close()

            _section(console, "next")
            console.print(f"  certpilot inventory --db {db_url}")
            console.print(f"  certpilot inventory --db {db_url} --problem expired --format json")
            console.print(f"  certpilot slo status --db {db_url}")
            console.print(f"  certpilot jobs --db {db_url}")
            console.print(f"  certpilot inventory --db {db_url} --source ct")
            console.print(f"  certpilot audit list --db {db_url}")
            console.print(
                f"  certpilot policy explain pay.demo.certpilot.test --policy "
                f"{state / 'policy.yaml'} --db {db_url}"
            )
            if not options.serve:
                console.print("  certpilot demo --serve    (keeps /metrics up for Prometheus)")
            else:
                await _serve(options, fleet, scanner, inventory, metrics, registry, clock, console)
        inventory.close()
        return 1 if wrong else 0
    finally:
        await fleet.stop()


async def _serve(
    options: DemoOptions,
    fleet: Fleet,
    scanner: Scanner,
    inventory: Inventory,
    metrics: Metrics,
    registry: CollectorRegistry,
    clock: Clock,
    console: Console,
) -> None:
    app = build_app(registry=registry, inventory=inventory, clock=clock)
    runner = await serve(app, options.host, options.port)
    port = bound_port(runner)
    console.print()
    console.print(
        Text.assemble(
            ("serving ", "bold"),
            f"http://{options.host}:{port}/metrics  /healthz  /readyz  /api/v1/inventory",
            f"  (rescanning every {options.rescan_seconds:g}s; Ctrl-C stops)",
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    targets: list[Target] = [*fleet.targets(), dns_failure_target()]
    targets += [FileTarget(p, labels={"owner": "web"}) for p in fleet.store_patterns]
    slo_set = slo_service.load_slos(())
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.rescan_seconds)
            if not stop.is_set():
                await scan_and_record(scanner, inventory, metrics, targets, clock, env={})
                await slo_cycle(inventory, metrics, slo_set, clock, Settings())
    finally:
        await runner.cleanup()
