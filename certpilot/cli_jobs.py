"""The remediation verbs of the ``certpilot`` command: ``renew``, ``redeploy``, ``revoke``,
``jobs``, ``approve``, ``retry``, ``cancel``.

``renew``/``redeploy``/``revoke`` ask the policy (``certpilot policy explain`` shows the same
checks) and create a job; ``renew`` and ``redeploy`` then run it here, unless ``--queue`` leaves
it to ``certpilot run``. A job created here and one the service works on are the same row: two
processes never advance the same job (compare-and-set in the store), so running the CLI next to
the service is safe. Exit codes: 0 when every job asked for is done (or waits for an approval
or its start time), 1 when one failed, was refused or rolled back, 2 for usage and config
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from certpilot.domain.clock import Clock, SystemClock
from certpilot.domain.errors import UsageError
from certpilot.domain.inventory import InventoryItem
from certpilot.settings import Settings, load_settings

if TYPE_CHECKING:  # the store, the remediator and the scanner load when a verb runs
    from certpilot.remediate import RemediationRuntime
    from certpilot.store import Job

from certpilot.cli_common import EXIT_OK, EXIT_PROBLEMS
from certpilot.cli_common import console as _console
from certpilot.cli_common import require_db as _require_db
from certpilot.cli_common import store_url as _store_url

REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "key-compromise": 1,
    "caCompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
}
_REASON_CHOICES = ["unspecified", "keyCompromise", "affiliationChanged", "superseded",
                   "cessationOfOperation", "privilegeWithdrawn", "caCompromise"]  # fmt: skip


def default_actor() -> str:
    """Who the CLI acts as in the audit log: ``$CERTPILOT_USER``, else ``cli:<login>``."""
    env = os.environ.get("CERTPILOT_USER", "").strip()
    if env:
        return env
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def matches(item: InventoryItem, name: str) -> bool:
    from remediator.service import names_item

    return names_item(item, name)


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the remediation verbs to the ``certpilot`` subparsers."""

    def common(p: argparse.ArgumentParser, *, config_required: bool) -> None:
        p.add_argument(
            "--config",
            required=config_required,
            metavar="FILE",
            help="certpilot.yaml with remediation.issuers and remediation.targets",
        )
        p.add_argument("--format", choices=["table", "json"], default="table")
        p.add_argument(
            "--by", metavar="USER", help="who asks (audit log; default $CERTPILOT_USER or login)"
        )

    rn = sub.add_parser(
        "renew",
        help="renew certificates now, under policy: issue, deploy canary first, verify",
        description="Renew the certificate NAME names (a host, SAN, inventory ref or "
        "fingerprint), or with --expiring every certificate the policy says is due. The "
        "policy decides (certpilot policy explain NAME shows how); the job issues a new "
        "certificate, deploys it to the targets that hold the old one (the first configured "
        "is the canary), re-probes until the new certificate is served everywhere, and "
        "rolls back otherwise.",
    )
    rn.add_argument("names", nargs="*", metavar="NAME")
    rn.add_argument("--expiring", action="store_true", help="every certificate due for renewal")
    rn.add_argument("--issuer", metavar="NAME", help="issuer to use (must be allowed by policy)")
    rn.add_argument("--queue", action="store_true", help="create the jobs; certpilot run runs them")
    rn.add_argument(
        "--again",
        action="store_true",
        help="renew even if this certificate was renewed already (a new job)",
    )
    common(rn, config_required=True)

    rd = sub.add_parser(
        "redeploy",
        help="push the stored certificate out again (renewed but not served) and verify",
    )
    rd.add_argument("names", nargs="+", metavar="NAME")
    rd.add_argument("--queue", action="store_true", help="create the job; certpilot run runs it")
    common(rd, config_required=True)

    rv = sub.add_parser(
        "revoke",
        help="ask to revoke a certificate (a second person approves: certpilot approve JOB)",
    )
    rv.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA-256 fingerprint (prefix)")
    rv.add_argument("--reason", required=True, choices=_REASON_CHOICES)
    rv.add_argument("--issuer", metavar="NAME", help="the CA that issued it (default: policy)")
    common(rv, config_required=True)

    jb = sub.add_parser("jobs", help="list remediation jobs")
    jb.add_argument("--state", metavar="STATE", help="only jobs in STATE (e.g. pending_approval)")
    jb.add_argument("--limit", type=int, default=50, metavar="N")
    jb.add_argument("--id", type=int, metavar="JOB", help="one job, with every field")
    jb.add_argument("--db", metavar="URL", help="store URL (default: from --config)")
    jb.add_argument("--config", metavar="FILE")
    jb.add_argument("--format", choices=["table", "json"], default="table")

    for verb, text in (
        ("approve", "approve a job waiting for approval"),
        ("retry", "send a failed or rolled-back job back to run"),
        ("cancel", "cancel a job that has not started"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("job", type=int, metavar="JOB")
        if verb == "cancel":
            p.add_argument("--reason", default="cancelled from the command line")
        p.add_argument(
            "--run",
            action="store_true",
            help="run the job here now (needs --config); otherwise certpilot run runs it",
        )
        common(p, config_required=False)
        p.add_argument("--db", metavar="URL", help="store URL (default: from --config)")


# ------------------------------------------------------------------------------ handlers


def run(args: argparse.Namespace) -> int:
    if args.command == "jobs":
        return _jobs(args)
    return asyncio.run(_act(args))


def _jobs(args: argparse.Namespace) -> int:
    from certpilot.store import JobStore

    url = _store_url(args)
    _require_db(url)
    with JobStore.open(url) as store:
        if args.id is not None:
            jobs = [store.get(args.id)]
        else:
            try:
                states = [args.state] if args.state else None
                jobs = store.list(states, limit=args.limit, newest_first=True)
            except ValueError as e:
                raise UsageError("--state", str(e)) from None
    if args.format == "json":
        json.dump([j.to_dict() for j in jobs], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    out = _console()
    if args.id is not None:
        for k, v in jobs[0].to_dict().items():
            out.print(Text(f"{k:>24}: {v}"))
        return EXIT_OK
    out.print(job_table(jobs))
    out.print(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}")
    return EXIT_OK


_STATE_STYLE = {
    "done": "green",
    "failed": "bold red",
    "rolled_back": "red",
    "pending_approval": "yellow",
    "approved": "cyan",
}


def job_table(jobs: Sequence[Job], title: str | None = None) -> Table:
    """Jobs as a table (``certpilot jobs``, the demo)."""
    table = Table(title=title, title_justify="left")
    for col in ("job", "action", "subject", "state", "serial", "targets", "rule", "note"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        change = j.old_serial[:12] if j.old_serial else ""
        if j.new_serial:
            change = f"{change or '?'} -> {j.new_serial[:12]}"
        note = j.last_error
        if not note and j.state == "pending_approval":
            note = f"approvers: {', '.join(j.approvers) or 'none'}"
        if not note and j.next_attempt_at is not None and j.state == "approved":
            note = f"starts {j.next_attempt_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%SZ')}"
        table.add_row(
            Text(str(j.id)),
            Text(j.action),
            Text(j.subject),
            Text(j.state, _STATE_STYLE.get(j.state, "")),
            Text(change),
            Text(",".join(j.verified or j.targets)),
            Text(j.rule),
            Text(note),
        )
    return table


async def _act(args: argparse.Namespace) -> int:
    from certpilot.app import scan_options
    from certpilot.remediate import open_remediation
    from certpilot.store import Inventory
    from remediator.executor import ApprovalDenied, JobStateError
    from remediator.jobs import JobState
    from scanner.runner import Scanner

    clock: Clock = SystemClock()
    actor = args.by or default_actor()
    needs_runtime = args.command in {"renew", "redeploy", "revoke"} or args.run
    if needs_runtime and not args.config:
        raise UsageError("--config", f"certpilot {args.command} --run needs --config FILE")
    settings = load_settings(args.config) if args.config else Settings()
    url = getattr(args, "db", None) or settings.store.url
    if args.command in {"approve", "retry", "cancel"}:
        _require_db(url)
    if url != settings.store.url:
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": url})}
        )
    async with AsyncExitStack() as stack:
        inventory = Inventory.open(settings.store.url)
        stack.callback(inventory.close)
        scanner = Scanner(scan_options(settings), clock)
        stack.callback(scanner.close)
        rt = open_remediation(
            settings, clock, prober=scanner, inventory=inventory, config_path=args.config
        )
        stack.callback(rt.close)
        if args.command in {"approve", "retry", "cancel"}:
            try:
                if args.command == "approve":
                    job = await rt.executor.approve(args.job, actor)
                elif args.command == "retry":
                    job = await rt.executor.retry(args.job, actor)
                else:
                    job = await rt.executor.cancel(args.job, actor, args.reason)
            except (ApprovalDenied, JobStateError) as e:
                print(f"certpilot: {args.command}: {e.message}", file=sys.stderr)
                return EXIT_PROBLEMS
            jobs = [job]
            if args.run and job.state == JobState.APPROVED:
                jobs = [(await rt.executor.run(job.id)).job]
            code = _report(args, jobs, [])
            return EXIT_OK if args.command == "cancel" else code  # cancelled = "failed"
        items = await asyncio.to_thread(inventory.items, now=clock.now())
        return await _request(args, rt, items, actor, clock)


async def _request(
    args: argparse.Namespace,
    rt: RemediationRuntime,
    items: list[InventoryItem],
    actor: str,
    clock: Clock,
) -> int:
    from certpilot.domain.remedy import RevocationReason
    from remediator.jobs import JobState
    from remediator.policy import Action
    from remediator.service import Requested, certificates_named

    action = Action(args.command)
    notes: list[str] = []
    requested: list[tuple[str, Requested]] = []
    missing = 0
    if action == Action.RENEW and args.expiring:
        if args.names:
            raise UsageError("--expiring", "give NAMEs or --expiring, not both")
        for planned, res in await rt.remediation.plan(items):
            requested.append((",".join(planned.names), res))
        if not requested:
            notes.append("nothing is due for renewal under the policy")
    else:
        names = [args.fingerprint] if action == Action.REVOKE else args.names
        if not names:
            raise UsageError("NAME", f"certpilot {args.command} needs a NAME (or --expiring)")
        for name in names:
            found = certificates_named(items, name)
            if not found:
                notes.append(f"{name}: not in the inventory (scan it first: certpilot run)")
                missing += 1
                continue
            for cert in found:
                key = None
                if action == Action.RENEW and args.again:
                    key = f"renew:{cert.fingerprint}:again:{clock.now().isoformat()}"
                res = await rt.remediation.request(
                    action,
                    cert,
                    requester=actor,
                    force=True,
                    issuer=getattr(args, "issuer", None),
                    reason=RevocationReason(REASONS[args.reason])
                    if action == Action.REVOKE
                    else None,
                    key=key,
                )
                requested.append((name, res))
                if res.replacement is not None:  # a compromised key: replaced at once
                    requested.append((f"{name} (replacement)", res.replacement))
    jobs: list[Job] = []
    queue = bool(getattr(args, "queue", False))
    status = _console() if sys.stdout.isatty() and args.format == "table" else None
    refused = missing
    for label, res in requested:
        if res.job is None:
            refused += 1
            notes.append(f"{label}: {res.note}")
            continue
        job = res.job
        runs_here = job.action != Action.REVOKE and not queue
        if runs_here and job.state == JobState.APPROVED and job.next_attempt_at is None:
            if status is not None:
                with status.status(f"job {job.id}: {job.action} {job.subject} ..."):
                    job = (await rt.executor.run(job.id)).job
            else:
                job = (await rt.executor.run(job.id)).job
        elif not res.created:
            notes.append(f"{label}: {res.note}")
        jobs.append(job)
    return _report(args, jobs, notes, refused=refused)


def _report(
    args: argparse.Namespace, jobs: Sequence[Job], notes: Sequence[str], refused: int = 0
) -> int:
    bad = {"failed", "rolled_back"}
    code = EXIT_PROBLEMS if refused or any(j.state in bad for j in jobs) else EXIT_OK
    if args.format == "json":
        json.dump({"jobs": [j.to_dict() for j in jobs], "notes": list(notes)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    out = _console()
    if jobs:
        out.print(job_table(jobs))
    for n in notes:
        out.print(Text(n, "yellow"))
    return code


__all__ = ["add_parsers", "default_actor", "job_table", "matches", "run"]
