"""The remediation part of ``certpilot demo``: fix the demo fleet under policy and show it.

Every fleet endpoint serves its certificate from files and picks up new files at the next
handshake (:mod:`certpilot.fleet`), so each one is a ``files`` deploy target with no reload
command. The embedded local CA (:mod:`remediator.issuers.local_ca`) issues; the scanner is the
prober that verifies. A demo policy shows each way a decision goes:

* ``web`` and ``internal`` endpoints: renew ``auto``;
* ``payments``: renew needs an approval by ``payments-lead`` (the demo approves, as a second
  person would in Slack or with ``certpilot approve``);
* ``legacy``: ``dry-run`` (reported, never touched).

Then everything is scanned again and the before/after table shows what changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from certpilot.domain.clock import Clock
from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode as P
from certpilot.fleet import Fleet
from certpilot.remediate import RemediationRuntime, sli_sink
from certpilot.store import AuditLog, Inventory, Job, JobStore
from remediator.executor import Executor
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from remediator.jobs import JobState
from remediator.policy import Action, CertFacts
from remediator.policy_config import load_policy
from remediator.service import Remediation, Requested
from remediator.targets.files import FilesTarget, FilesTargetConfig
from scanner.runner import Scanner

DEMO_POLICY = """\
# certpilot demo policy: certpilot policy explain NAME --policy THIS_FILE --db ...
defaults:
  actions: {renew: auto, redeploy: auto, revoke: approve}
  approvers: [alice, bob]
  stagger_jitter: 0m
rules:
  - name: payments-needs-approval
    match: {owners: [payments]}
    actions: {renew: approve}
    approvers: [payments-lead]
  - name: legacy-report-only
    match: {owners: [legacy]}
    actions: {renew: dry-run, redeploy: dry-run, revoke: deny}
"""

#: Problems a renewal with the same names fixes. A hostname mismatch is not one of them (the
#: certificate names another host: a person must decide), nor are reachability problems.
RENEWABLE = frozenset(
    {
        P.EXPIRED,
        P.EXPIRING,
        P.NOT_YET_VALID,
        P.SELF_SIGNED,
        P.UNTRUSTED_ROOT,
        P.INCOMPLETE_CHAIN,
        P.WEAK_KEY,
        P.WEAK_SIGNATURE,
        P.CHAIN_EXPIRING,
    }
)
APPROVER = "payments-lead"


def demo_issuer(state: Path, clock: Clock) -> LocalCAIssuer:
    """The embedded CA renewals come from; its root is written to ``state/remedy-ca.pem`` so
    the scanner can trust it from the first scan."""
    issuer = LocalCAIssuer(
        "local-ca", LocalCAConfig(state_dir=state / "remedy-ca", ca_name="certpilot Demo CA"),
        clock=clock,
    )  # fmt: skip
    (state / "remedy-ca.pem").write_bytes(issuer.root_pem())
    return issuer


def open_demo_remediation(
    fleet: Fleet,
    state: Path,
    db_url: str,
    issuer: LocalCAIssuer,
    scanner: Scanner,
    inventory: Inventory,
    clock: Clock,
) -> RemediationRuntime:
    policy_path = state / "policy.yaml"
    policy_path.write_text(DEMO_POLICY)
    targets = []
    for ep in fleet.endpoints:
        if ep.cert_path is None or ep.key_path is None or ep.case == "healthy":
            continue
        targets.append(
            FilesTarget(
                f"fleet:{ep.case}",
                FilesTargetConfig(
                    cert_path=ep.cert_path, key_path=ep.key_path, endpoints=(ep.target(),)
                ),
            )
        )
    jobs = JobStore.open(db_url)
    audit = AuditLog.open(db_url)
    executor = Executor(
        jobs,
        audit,
        {issuer.name: issuer},
        {t.name: t for t in targets},
        scanner,
        clock,
        verify_timeout=10.0,
        verify_hold=0.2,  # an in-process server: no old workers to drain, unlike nginx
        verify_interval=0.05,
        sli_sink=sli_sink(inventory, None),
    )
    remediation = Remediation(
        executor, load_policy(policy_path), targets, default_issuer=issuer.name
    )
    rt = RemediationRuntime(remediation, executor, jobs, audit, {issuer.name: issuer}, targets)
    rt.closers.callback(jobs.close)
    rt.closers.callback(audit.close)
    return rt


async def remediate(
    rt: RemediationRuntime,
    inventory: Inventory,
    before: Sequence[Observation],
    clock: Clock,
    console: Console,
) -> list[tuple[str, Requested]]:
    """Ask the policy for a renewal of every renewable problem, run what it allows, approve
    the payments jobs as the second person and run them too."""
    items = {it.ref: it for it in inventory.items(now=clock.now())}
    asked: list[tuple[str, Requested]] = []
    for obs in before:
        if obs.source != "tls" or not set(obs.codes) & RENEWABLE or obs.ref not in items:
            continue
        cert = CertFacts.from_item(items[obs.ref])
        res = await rt.remediation.request(Action.RENEW, cert, requester="demo", force=True)
        asked.append((obs.target, res))
    decisions = Table(title="policy decisions", title_justify="left")
    for col in ("endpoint", "problem", "rule", "decision", "job"):
        decisions.add_column(col)
    colour = {"allow": "green", "needs_approval": "yellow", "dry_run": "magenta", "deny": "red"}
    by_target = {o.target: o for o in before}
    for target, res in asked:
        d = res.decision
        verdict = d.verdict.value if d else "existing job"
        decisions.add_row(
            target,
            ", ".join(c.value for c in by_target[target].codes),
            d.rule if d else "",
            Text(verdict, colour.get(verdict, "")),
            f"{res.job.id} ({res.job.state})" if res.job else "-",
        )
    console.print(decisions)
    pending = [r.job for _, r in asked if r.job and r.job.state == JobState.PENDING_APPROVAL]
    for job in pending:
        await rt.executor.approve(job.id, APPROVER)
        console.print(
            Text.assemble(
                ("approved ", "yellow"),
                f"job {job.id} ({job.subject}) as {APPROVER}, a person the rule lists "
                "(Slack buttons or `certpilot approve` do the same)",
            )
        )
    runnable = [r.job for _, r in asked if r.job is not None]
    with console.status("renewing: issue -> deploy -> verify by probing ...") as status:
        for job in runnable:
            status.update(f"job {job.id}: {job.subject}: issue -> deploy -> verify ...")
            await rt.executor.run(job.id)
    return asked


def before_after(
    before: Sequence[Observation], after: Sequence[Observation], jobs: Sequence[Job]
) -> Table:
    """One row per endpoint that had a renewable problem: what it served before and after."""
    table = Table(title="before -> after (rescanned)", title_justify="left")
    for col in ("endpoint", "before", "serial", "after", "serial ", "job"):
        table.add_column(col)
    now_by_target = {o.target: o for o in after}
    job_by_ref = {j.ref: j for j in jobs}
    for b in before:
        if b.source != "tls" or not set(b.codes) & RENEWABLE:
            continue
        a = now_by_target.get(b.target)
        job = job_by_ref.get(b.ref)
        after_codes = ", ".join(c.value for c in a.codes) if a else "?"
        table.add_row(
            b.target,
            Text(", ".join(c.value for c in b.codes), "red"),
            (b.leaf.serial[:10] if b.leaf else "-"),
            Text(after_codes or "healthy", "green" if a and not a.codes else "red"),
            (a.leaf.serial[:10] if a and a.leaf else "-"),
            Text(f"{job.id} {job.state}", "green" if job.state == "done" else "yellow")
            if job
            else Text("-", "dim"),
        )
    return table
