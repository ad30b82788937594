"""The ``certpilot`` command. Exit codes: 0 healthy, 1 problems found, 2 usage/config error."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from certpilot import __version__, cli_ct, cli_jobs
from certpilot.cli_common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    duration_arg,
    positive_int_arg,
)
from certpilot.cli_common import console as _console
from certpilot.cli_common import require_db as _require_db
from certpilot.cli_common import store_url as _store_url
from certpilot.domain.audit import AuditEntry, anchor
from certpilot.domain.clock import SystemClock
from certpilot.domain.errors import CertpilotError, ConfigError, UsageError
from certpilot.domain.judge import JudgePolicy
from certpilot.domain.problems import ProblemCode
from certpilot.settings import load_settings
from certpilot.targets import parse_resolve, parse_targets


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from e


def _problem(text: str) -> ProblemCode:
    try:
        return ProblemCode(text)
    except ValueError as e:
        codes = ", ".join(c.value for c in ProblemCode)
        raise argparse.ArgumentTypeError(f"unknown problem code {text!r} (one of: {codes})") from e


def _audit_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    try:
        if not sep or not seq.isdigit():
            raise ValueError("expected SEQ:HASH")
        return anchor((int(seq), digest))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e


def _timestamp(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="certpilot",
        description="Keep TLS certificates from ever taking a service down.",
    )
    p.add_argument("--version", action="version", version=f"certpilot {__version__}")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser(
        "scan",
        help="scan TLS endpoints and certificate files once",
        description="Scan targets once. TARGET is host[:port] (default 443), [v6addr]:port, "
        "or file:PATH_OR_GLOB. Exit 0 when every item is healthy, 1 when any has a problem.",
    )
    s.add_argument("targets", nargs="+", metavar="TARGET")
    s.add_argument(
        "--ca-file",
        action="append",
        default=[],
        metavar="PEM",
        help="trust these roots (repeatable); adds to the system store",
    )
    s.add_argument(
        "--no-system-trust",
        action="store_true",
        help="trust only --ca-file roots, not the system store",
    )
    s.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST:PORT:ADDR",
        help="connect to ADDR for HOST:PORT, like curl (repeatable)",
    )
    s.add_argument(
        "--sni", metavar="NAME", help="server name to send and check, for every endpoint"
    )
    s.add_argument("--timeout", type=duration_arg, default=5.0, help="per target (default 5s)")
    s.add_argument("--concurrency", type=positive_int_arg, default=100, help="default 100")
    s.add_argument(
        "--workers",
        type=int,
        default=0,
        help="probe processes (default: one per core for large lists)",
    )
    s.add_argument("--password-env", metavar="VAR", help="PKCS#12 passphrase from this variable")
    s.add_argument("--password-file", metavar="FILE", help="PKCS#12 passphrase from this file")
    s.add_argument(
        "--expiring-days",
        type=_float,
        default=None,
        help="expiring when fewer days left (default 30; 0 disables)",
    )
    s.add_argument(
        "--expiring-fraction",
        type=_float,
        default=None,
        help="expiring when less of the lifetime is left (default 0.333; 0 disables)",
    )
    s.add_argument("--db", metavar="URL", help="also record into this inventory store")
    s.add_argument("--format", choices=["table", "json"], default="table")

    i = sub.add_parser("inventory", help="list what the inventory holds")
    i.add_argument(
        "--db", metavar="URL", help="store URL (default: from --config or sqlite:///certpilot.db)"
    )
    i.add_argument("--config", metavar="FILE")
    i.add_argument(
        "--expiring", type=_float, metavar="DAYS", help="only items expiring within DAYS"
    )
    i.add_argument("--problem", type=_problem, metavar="CODE", help="only items with this problem")
    i.add_argument("--source", metavar="SOURCE", help="tls, file, ...")
    i.add_argument("--format", choices=["table", "json"], default="table")

    au = sub.add_parser("audit", help="the tamper-evident audit log")
    ausub = au.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=_Parser)
    ausub.required = True
    av = ausub.add_parser(
        "verify",
        help="check the audit hash chain; exit 1 naming the first edited or missing entry",
        description="Recompute the audit log's hash chain. Exit 0 when it is intact, 1 naming "
        "the first edited, missing or unlinked entry. Removing the newest entries leaves a "
        "valid shorter chain: pass a head printed by an earlier run with --expect-head to "
        "catch that (and a rewritten chain).",
    )
    al = ausub.add_parser("list", help="show the newest audit entries")
    for ap in (av, al):
        ap.add_argument(
            "--db",
            metavar="URL",
            help="store URL (default: from --config or sqlite:///certpilot.db)",
        )
        ap.add_argument("--config", metavar="FILE")
        ap.add_argument("--format", choices=["table", "json"], default="table")
    av.add_argument(
        "--expect-head",
        type=_audit_head,
        metavar="SEQ:HASH",
        help="a head recorded earlier (HASH: at least 16 hex digits)",
    )
    al.add_argument(
        "--limit", type=positive_int_arg, default=50, help="how many entries (default 50)"
    )

    so = sub.add_parser("slo", help="SLOs: error budgets and burn rates")
    sosub = so.add_subparsers(dest="slo_command", metavar="ACTION", parser_class=_Parser)
    sosub.required = True
    ss = sosub.add_parser("status", help="budgets and burn rates per SLO, from the inventory")
    ss.add_argument("--db", metavar="URL", help="store URL (default: from --config)")
    ss.add_argument("--config", metavar="FILE")
    ss.add_argument(
        "--slo-file",
        action="append",
        default=[],
        metavar="FILE",
        help="Sloth prometheus/v1 spec (repeatable; default: certpilot's presets)",
    )
    ss.add_argument("--format", choices=["table", "json"], default="table")
    sc = sosub.add_parser(
        "convert",
        help="convert SLO specs between Sloth prometheus/v1 and OpenSLO v1",
        description="Read FILE, a Sloth prometheus/v1 document or OpenSLO openslo/v1 SLO/SLI "
        "documents (detected), and write it as YAML in the other format (or --to). certpilot "
        "details OpenSLO cannot express (alerting, presets) travel in certpilot.io/ "
        "annotations, so a round trip is exact.",
    )
    sc.add_argument("file", type=Path, metavar="FILE")
    sc.add_argument(
        "--to", choices=["sloth", "openslo"], help="output format (default: the other one)"
    )
    sc.add_argument("--out", type=Path, metavar="FILE", help="write here (default: stdout)")

    c = sub.add_parser("config", help="configuration helpers")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    cc = csub.add_parser("check", help="validate a config file")
    cc.add_argument("file", nargs="?", metavar="FILE")
    cc.add_argument("--config", dest="config_opt", metavar="FILE")

    r = sub.add_parser("run", help="run the service: scheduled scans, inventory, /metrics")
    r.add_argument("--config", required=True, metavar="FILE")

    ru = sub.add_parser("rules", help="Prometheus rules and Alertmanager routing from SLO specs")
    rusub = ru.add_subparsers(dest="rules_command", metavar="ACTION", parser_class=_Parser)
    rusub.required = True
    rg = rusub.add_parser(
        "generate",
        help="write alerts/: SLO and symptom rules, alertmanager.yml",
        description="Write Sloth-compatible SLO rules, symptom rules and the Alertmanager "
        "config. Without --slo-file, the built-in certificate SLOs are used. With --check, "
        "write nothing and exit 1 when the files in --out differ from what would be written.",
    )
    rg.add_argument(
        "--slo-file",
        action="append",
        default=[],
        metavar="FILE",
        help="Sloth prometheus/v1 SLO spec (repeatable; default: certpilot's presets)",
    )
    rg.add_argument(
        "--out", type=Path, default=Path("alerts"), metavar="DIR", help="default alerts"
    )
    rg.add_argument("--check", action="store_true", help="only compare with the files in --out")

    db = sub.add_parser("db", help="the database schema: upgrade, current revision, history")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    dbsub.required = True
    for name, text in (
        ("upgrade", "bring the database's schema to this certpilot's (every start does it too)"),
        ("downgrade", "take the schema back to REVISION, before running an older certpilot"),
        ("current", "show the database's schema revision; exit 1 when an upgrade is due"),
        ("history", "list the schema revisions this certpilot knows"),
    ):
        one = dbsub.add_parser(name, help=text, description=text)
        if name == "downgrade":
            one.add_argument("revision", metavar="REVISION", help="as `certpilot db history`")
        if name != "history":
            one.add_argument("--db", metavar="URL", help="database URL (default: from --config)")
            one.add_argument("--config", metavar="FILE", help="certpilot.yaml (its store.url)")

    d = sub.add_parser("demo", help="see certpilot work on a loopback fleet, no setup")
    d.add_argument("--serve", action="store_true", help="keep the HTTP server up afterwards")
    d.add_argument(
        "--no-remediate",
        dest="remediate",
        action="store_false",
        help="stop after the SLOs: leave the fleet broken (e.g. to see it in Grafana)",
    )
    d.add_argument("--port", type=int, default=9795, help="HTTP port with --serve (0: any free)")
    d.add_argument(
        "--state-dir", type=Path, help="where the demo keeps its files (default: .certpilot-demo)"
    )
    d.add_argument(
        "--rescan",
        type=duration_arg,
        default=30.0,
        metavar="SECONDS",
        help="with --serve, pause between rescans (default 30s)",
    )

    g = sub.add_parser("dashboards", help="Grafana dashboards built from code")
    gsub = g.add_subparsers(dest="dashboards_command", metavar="ACTION", parser_class=_Parser)
    gsub.required = True
    gg = gsub.add_parser(
        "generate",
        help="write dashboards/*.json",
        description="Write certpilot's Grafana dashboards (classic JSON) into DIR. With "
        "--check, write nothing: exit 1 naming each file that differs from the generator.",
    )
    gg.add_argument(
        "--out", type=Path, default=Path("dashboards"), metavar="DIR", help="default: dashboards"
    )
    gg.add_argument("--check", action="store_true", help="compare instead of writing")

    po = sub.add_parser("policy", help="the remediation policy: which rule applies and why")
    posub = po.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=_Parser)
    posub.required = True
    pe = posub.add_parser(
        "explain",
        help="say which rule applies to NAME, each check and the verdict",
        description="Look NAME up in the inventory (a host, SAN, location ref or certificate "
        "fingerprint) and explain, for every location that holds it, which policy rule applies "
        "and why, each check of the action and its outcome. A NAME not in the inventory is "
        "explained by the name alone.",
    )
    pe.add_argument("name", metavar="NAME", help="host, SAN, inventory ref or fingerprint")
    pe.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file (default: policy.yaml next to --config, else the built-in defaults)",
    )
    pe.add_argument("--db", metavar="URL", help="store URL (default: from --config)")
    pe.add_argument("--config", metavar="FILE")
    pe.add_argument("--action", choices=["renew", "redeploy", "revoke"], default="renew")
    pe.add_argument(
        "--at", type=_timestamp, metavar="TIME", help="decide as of TIME (ISO 8601; default now)"
    )
    pe.add_argument("--format", choices=["table", "json"], default="table")
    cli_jobs.add_parsers(sub, _Parser)
    cli_ct.add_parsers(sub, _Parser)
    return p


def _policy(args: argparse.Namespace) -> JudgePolicy:
    base = JudgePolicy()
    frac = (
        base.expiring_fraction
        if args.expiring_fraction is None
        else (args.expiring_fraction or None)
    )
    days = base.expiring_days if args.expiring_days is None else (args.expiring_days or None)
    if frac is not None and not 0 < frac <= 1:
        raise UsageError("--expiring-fraction", f"must be between 0 and 1, got {frac}")
    return JudgePolicy(expiring_fraction=frac, expiring_days=days)


async def _scan(args: argparse.Namespace) -> int:
    from certpilot.app import scan_and_record
    from certpilot.domain.reconcile import reconcile
    from certpilot.report import scan_table
    from scanner.runner import Scanner, ScanOptions
    from scanner.tls_endpoint import ProbeSettings

    targets = parse_targets(
        args.targets,
        resolve=parse_resolve(args.resolve),
        sni=args.sni,
        password_env=args.password_env,
        password_file=args.password_file,
    )
    options = ScanOptions(
        probe=ProbeSettings(
            timeout=args.timeout, concurrency=args.concurrency, policy=_policy(args)
        ),
        ca_files=tuple(args.ca_file),
        use_system_trust=not args.no_system_trust,
        workers=args.workers,
    )
    clock = SystemClock()
    err = _console(stderr=True)
    show_progress = args.format == "table" and err.is_terminal and len(targets) > 1
    with (
        Scanner(options, clock) as scanner,
        Progress(
            TextColumn("scanning"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not show_progress,
        ) as bar,
    ):
        task = bar.add_task("scan", total=len(targets))

        def advance(n: int) -> None:
            bar.advance(task, n)

        if args.db:
            from certpilot.store import Inventory

            inventory = Inventory.open(args.db)
            try:
                # Sample the SLI counters around the scan, as a scrape would, so that
                # `certpilot slo status` has a rate to show for one-shot scans too.
                await asyncio.to_thread(inventory.snapshot_sli, clock.now())
                result = await scan_and_record(
                    scanner, inventory, None, targets, clock, progress=advance
                )
                await asyncio.to_thread(inventory.snapshot_sli, clock.now())
            finally:
                inventory.close()
            observations = result.observations
        else:
            observations = reconcile(await scanner.scan(targets, progress=advance))
    if args.format == "json":
        json.dump([o.to_dict() for o in observations], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = _console()
        out.print(scan_table(observations))
        bad = sum(1 for o in observations if o.problems)
        out.print(f"{len(observations)} items, {bad} with problems")
    return EXIT_PROBLEMS if any(o.problems for o in observations) else EXIT_OK


def _inventory(args: argparse.Namespace) -> int:
    from certpilot.report import inventory_table
    from certpilot.store import Inventory

    url = _store_url(args)
    _require_db(url)
    inventory = Inventory.open(url)
    try:
        now = SystemClock().now()
        items = inventory.items(
            now=now, expiring_days=args.expiring, problem=args.problem, source=args.source
        )
    finally:
        inventory.close()
    if args.format == "json":
        json.dump([it.to_dict(now) for it in items], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = _console()
        out.print(inventory_table(items, now))
        out.print(f"{len(items)} items")
    return EXIT_PROBLEMS if any(it.problems for it in items) else EXIT_OK


def _slo_status(args: argparse.Namespace) -> int:
    from certpilot.report import slo_table
    from certpilot.store import Inventory
    from slo import service as slo_service

    url = _store_url(args)
    _require_db(url)
    specs = list(args.slo_file)
    if not specs and args.config:
        specs = list(load_settings(args.config).slo.specs)
    slo_set = slo_service.load_slos(specs)
    inventory = Inventory.open(url)
    try:
        now = SystemClock().now()
        # A sample of the counters at "now", as a scrape would take: events recorded since
        # the last sample (CLI renewals, a service that stopped) count at once.
        inventory.snapshot_sli(now)
        statuses = slo_service.evaluate_all(slo_set, inventory, now)
    finally:
        inventory.close()
    if args.format == "json":
        json.dump([st.to_dict() for st in statuses], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = _console()
        out.print(slo_table(statuses))
        firing = [st.slo.name for st in statuses if st.firing_severity]
        out.print(f"{len(statuses)} SLOs, {len(firing)} burning their budget too fast")
    return EXIT_PROBLEMS if any(st.firing_severity for st in statuses) else EXIT_OK


def _slo_convert(args: argparse.Namespace) -> int:
    from slo.openslo import convert_file

    result = convert_file(args.file, args.to)
    for line in result.warnings:
        print(f"certpilot: warning: {line}", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(result.text)
        return EXIT_OK
    try:
        args.out.write_text(result.text, encoding="utf-8")
    except OSError as e:
        raise ConfigError("--out", "", f"cannot write: {e.strerror}", str(args.out)) from e
    print(
        f"wrote {args.out} ({result.target_format}, {len(result.slo_set.slos)} SLOs "
        f"from {result.source_format})"
    )
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from certpilot.store import AuditLog

    url = _store_url(args)
    _require_db(url)
    with AuditLog.open(url) as log:
        if args.audit_command == "verify":
            verdict = log.verify(args.expect_head)
        else:
            entries = log.latest(args.limit)
    if args.audit_command == "verify":
        if args.format == "json":
            json.dump(verdict.to_dict(), sys.stdout)
            sys.stdout.write("\n")
        else:
            print(verdict.one_line())
        return EXIT_OK if verdict.ok else EXIT_PROBLEMS
    if args.format == "json":
        for entry in entries:
            sys.stdout.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")
    else:
        out = _console()
        out.print(_audit_table(entries))
        out.print(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}")
    return EXIT_OK


def _audit_table(entries: Sequence[AuditEntry]) -> Table:
    table = Table(title_justify="left")
    for name in ("seq", "at (UTC)", "actor", "action", "subject", "rule", "change", "result"):
        table.add_column(name, justify="right" if name == "seq" else "left")
    for e in entries:
        change = f"{e.before} -> {e.after}" if e.before or e.after else ""
        result = Text(e.result, style="red" if e.result in {"denied", "failed"} else "")
        # Text, not str: entry fields are data (a Slack user's input) and must not be read
        # as rich markup.
        table.add_row(
            Text(str(e.seq)),
            Text(e.at.strftime("%Y-%m-%d %H:%M:%S")),
            Text(e.actor),
            Text(e.action),
            Text(e.subject),
            Text(e.rule),
            Text(change),
            result,
        )
    return table


def _config_check(args: argparse.Namespace) -> int:
    path = args.file or args.config_opt
    if not path:
        raise UsageError("config check", "name the file: certpilot config check FILE")
    from certpilot.remediate import build_issuers, build_targets, load_remediation_policy

    settings = load_settings(path)
    # Build what `run` would build, so an adapter's own checks (a bad reload argv, an unknown
    # issuer option, a policy file that does not parse) fail here, not at 3 a.m.
    issuers = build_issuers(settings.remediation, SystemClock(), str(path))
    deploy = build_targets(settings.remediation, str(path))
    load_remediation_policy(settings, path)
    from certpilot.app import store_scans

    stores = store_scans(settings, SystemClock(), os.environ, source=str(path))
    from certpilot.ctwatching import WatchlistFile, configured_logs
    from certpilot.store.engine import redact

    ct_logs = configured_logs(settings.ct, str(path))
    watched = len(WatchlistFile(settings.ct.watch, settings.ct.watch_file)())
    print(
        f"{path}: ok ({len(settings.targets.endpoints)} endpoints, "
        f"{len(settings.targets.files)} file patterns, {len(stores)} secrets stores, "
        f"{len(issuers)} issuers, {len(ct_logs)} CT logs watching {watched} patterns, "
        f"{len(deploy)} deploy targets, store {redact(settings.store.url)}, "
        f"http {settings.http.host}:{settings.http.port})"
    )
    return EXIT_OK


def _db(args: argparse.Namespace) -> int:
    from certpilot.store import schema
    from certpilot.store.engine import redact

    if args.db_command == "history":
        for rev, doc in schema.history():
            print(f"{rev}  {doc}")
        return EXIT_OK
    url = _store_url(args)
    if args.db_command == "current":
        _require_db(url)
    shown = redact(url)
    with schema.SchemaStore.open(url) as store:
        if args.db_command == "current":
            now_at = store.current()
            head = schema.head()
            state = "current" if now_at == head else f"upgrade due to {head}"
            print(f"{shown}: schema {now_at or 'none'} ({state})")
            return EXIT_OK if now_at == head else EXIT_PROBLEMS
        if args.db_command == "downgrade":
            _require_db(url)
            order = [rev for rev, _doc in schema.history()]
            now_at = store.current()
            if args.revision not in order:
                raise UsageError("REVISION", f"unknown revision {args.revision!r} ({order})")
            if now_at not in order or order.index(args.revision) >= order.index(now_at):
                raise UsageError(
                    "REVISION", f"{args.revision} is not older than the schema's {now_at}"
                )
            before, after = store.downgrade(args.revision)
            print(f"{shown}: schema downgraded from {before} to {after}")
            return EXIT_OK
        before, after = store.upgrade()
        if before == after:
            print(f"{shown}: schema {after}, already current")
        else:
            print(f"{shown}: schema upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    from certpilot.app import Service

    settings = load_settings(args.config)
    service = Service(settings, SystemClock(), config_path=args.config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await service.run(stop)
    return EXIT_OK


def _rules(args: argparse.Namespace) -> int:
    from slo import rules
    from slo.openslo import load_any
    from slo.spec import default_slos

    slo_sets = [load_any(f)[1] for f in args.slo_file] or [default_slos()]
    if args.check:
        stale = rules.check(slo_sets, args.out)
        for name in stale:
            print(f"{name}: differs from the generator (run: certpilot rules generate)")
        if stale:
            return EXIT_PROBLEMS
        print(f"{args.out}: up to date")
        return EXIT_OK
    for path in rules.generate(slo_sets, args.out):
        print(f"wrote {path}")
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from certpilot.demo import DemoOptions, run_demo

    if args.rescan <= 0:
        raise UsageError("--rescan", f"must be more than 0 seconds, got {args.rescan:g}")
    opts = DemoOptions(
        state_dir=args.state_dir,
        serve=args.serve,
        port=args.port,
        rescan_seconds=args.rescan,
        remediate=args.remediate,
    )
    return await run_demo(opts, SystemClock(), _console())


def _dashboards(args: argparse.Namespace) -> int:
    from slo.dashboards import check_dashboards, write_dashboards

    if args.check:
        drift = check_dashboards(args.out)
        for line in drift:
            print(f"certpilot: {line}", file=sys.stderr)
        if drift:
            print(
                "certpilot: run `certpilot dashboards generate` and commit the result",
                file=sys.stderr,
            )
            return EXIT_PROBLEMS
        print(f"{args.out}: dashboards up to date")
        return EXIT_OK
    for path in write_dashboards(args.out):
        print(f"wrote {path}")
    return EXIT_OK


def _policy_explain(args: argparse.Namespace) -> int:
    from rich.table import Table as RichTable
    from rich.text import Text as RichText

    from certpilot.domain.inventory import InventoryItem
    from certpilot.domain.x509 import iso
    from certpilot.store import Inventory
    from remediator.policy import DEFAULT_POLICY, Action, CertFacts, Facts, Request, decide
    from remediator.policy_config import default_policy_path, load_policy

    path = args.policy or default_policy_path(args.config)
    policy = load_policy(path) if path else DEFAULT_POLICY
    source = str(path) if path else "built-in defaults"
    now: datetime = args.at or SystemClock().now()
    url = _store_url(args)
    items: list[InventoryItem] = []
    # Without --db/--config and no inventory yet, a name can still be explained on its own.
    if args.db or args.config or Path(url.removeprefix("sqlite:///")).exists():
        _require_db(url)
        with Inventory.open(url) as inventory:
            items = inventory.items(now=now)

    def holds(it: InventoryItem) -> bool:
        return cli_jobs.matches(it, args.name)

    pairs: list[tuple[InventoryItem | None, CertFacts]] = [
        (it, CertFacts.from_item(it)) for it in items if holds(it)
    ] or [(None, CertFacts(names=(args.name,)))]
    action = Action(args.action)
    at = iso(now.astimezone(UTC))
    results = [
        (it, cert, decide(Request(action, cert, requester="cli"), Facts(), policy, now))
        for it, cert in pairs
    ]
    if args.format == "json":
        doc = {
            "name": args.name,
            "policy": source,
            "at": at,
            "action": action.value,
            "in_inventory": pairs[0][0] is not None,
            "results": [
                {
                    "ref": it.ref if it else None,
                    "certificate": it.to_dict(now) if it else {"names": list(cert.names)},
                    "rule": policy.select(cert).rule.to_dict(),
                    "decision": d.to_dict(),
                }
                for it, cert, d in results
            ],
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    out = _console()
    out.print(f"policy: {source}; as of {at}", soft_wrap=True)
    if pairs[0][0] is None:
        out.print(f"{args.name}: not in the inventory; explained by the name alone", soft_wrap=True)
    colour = {"allow": "green", "deny": "bold red", "wait": "yellow", "not_due": "cyan"}
    for it, cert, d in results:
        where = it.ref if it else args.name
        if cert.not_after is not None:
            out.print(
                f"{where}: {', '.join(cert.names[:4])}; {cert.key_spec or '?'}; "
                f"expires {iso(cert.not_after.astimezone(UTC))}; issuer {cert.issuer or '?'}",
                soft_wrap=True,
            )
        table = RichTable(title=where, title_justify="left")
        table.add_column("check", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("why", overflow="fold")
        for rule_name, why in d.skipped_rules:
            table.add_row(RichText(f"rule {rule_name}", "dim"), RichText("no match", "dim"), why)
        for c in d.reasons:
            mark = RichText("pass", "green") if c.passed else RichText("holds", "yellow")
            table.add_row(c.name, mark, c.explanation)
        out.print(table)
        out.print(RichText(d.summary(), colour.get(d.verdict.value, "magenta")), soft_wrap=True)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("info" if args.command == "run" else "warning")
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The scheduler logs every run of every job at INFO: noise next to certpilot's own lines.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "scan":
            return asyncio.run(_scan(args))
        if args.command == "inventory":
            return _inventory(args)
        if args.command == "config":
            return _config_check(args)
        if args.command == "slo":
            return _slo_convert(args) if args.slo_command == "convert" else _slo_status(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "rules":
            return _rules(args)
        if args.command == "demo":
            return asyncio.run(_demo(args))
        if args.command == "dashboards":
            return _dashboards(args)
        if args.command == "policy":
            return _policy_explain(args)
        if args.command in {"renew", "redeploy", "revoke", "jobs", "approve", "retry", "cancel"}:
            return cli_jobs.run(args)
        if args.command == "ct":
            return cli_ct.run(args)
        if args.command == "db":
            return _db(args)
    except CertpilotError as e:
        print(f"certpilot: error: {e.one_line()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("certpilot: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
