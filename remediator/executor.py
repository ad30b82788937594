"""The executor: runs remediation jobs through issue -> deploy (canary first) -> verify by probing
-> done, or rolls back what it deployed.

One job, one :meth:`Executor.run`::

    approved -> issuing      issuer.issue(); the new key stays in this process's memory
             -> deploying    target 1 (the canary): deploy(), receipt stored
             -> verifying    probe target 1's endpoints until every one serves the new
                             certificate on every probe for ``verify_hold`` seconds
             -> deploying    target 2 ... (same)
             -> done         SLI events: renewal_success good, issuance_latency, and
                             complete_deployments good

* **Issuer errors** put the job back in ``approved`` with ``next_attempt_at``: the CA's
  Retry-After when it sent one (``IssuerError.retry_after``; 0 for badNonce), else exponential
  backoff with jitter, capped (:func:`remediator.jobs.retry_delay`). After ``max_attempts``
  attempts the job is ``failed``. :meth:`Executor.run_due` runs what is due.
* **A deploy that fails** (``DeployError``; the target restores its own files), or **a
  verification that times out**, rolls back every target deployed so far, newest first, from
  the stored receipts, and ends ``rolled_back`` with ``last_error`` naming the target and step
  (``failed`` when a rollback fails too: then a person must look). The audit log gets a
  ``not_deployed`` entry, the SLIs a bad ``complete_deployments``.
* **Revocation** (a job that starts in ``pending_approval``; :meth:`Executor.approve` applies
  :func:`remediator.policy.can_approve` with the approvers and second-person rule stored on the
  job): ``issuing`` (the revoke call) -> ``done``, retried like issuance.
* **Restart** (:meth:`Executor.resume_all`): see :func:`remediator.jobs.resume_plan` for each
  case; in short ``issuing`` -> ``approved`` (re-issue: the key is gone), ``deploying`` /
  ``verifying`` -> re-verify what the receipts say was deployed, then ``done`` when every
  target serves the new certificate, else roll back.

Every transition is a compare-and-set in the job store (two processes never advance the same
job: the loser gets :class:`~certpilot.store.jobs.JobConflict` and stops), checked against
:data:`remediator.jobs.TRANSITIONS` first, and appended to the audit log; every action on the
outside world (issue, deploy, rollback, revoke) gets a ``pending`` audit entry *before* it is
attempted, so an action whose entry cannot be written does not happen. Audit actors: the
person for submit, approve, cancel and retry; ``executor`` for the steps it runs (the
requester is in ``detail``).

Secrets: the new private key exists only in the :class:`IssuedCertificate` this process holds
between ``issue()`` and the last ``deploy()``; it is never stored, logged or put in an error.
Errors are reduced to one cleaned line (:func:`remediator.jobs.error_line`).

Store and audit calls are synchronous database work; they run in worker threads so the event
loop keeps serving probes and HTTP while SQLite fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from certpilot.domain.audit import AuditAction, AuditDraft, AuditResult
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertificateParseError, CertpilotError, StoreError
from certpilot.domain.protocols import Prober
from certpilot.domain.remedy import (
    CertificateHolder,
    DeployError,
    DeployReceipt,
    DeployTarget,
    IssuedCertificate,
    Issuer,
    IssueRequest,
    IssuerError,
    RevocationReason,
)
from certpilot.domain.sli import SLIEvent
from certpilot.domain.x509 import ari_certificate_id_pem, parse_pem_bundle
from certpilot.store.audit import AuditLog
from certpilot.store.jobs import (
    IN_FLIGHT_STATES,
    Approval,
    Job,
    JobConflict,
    JobCreated,
    JobError,
    JobStore,
    NewJob,
)
from remediator.jobs import (
    COMPROMISE_PREFIX,
    COMPROMISE_REPLACEMENT_WITHIN,
    HoldTracker,
    JobState,
    ResumeAction,
    VerifyStatus,
    check_transition,
    describe_served,
    error_line,
    resume_plan,
    retry_delay,
    serves,
)
from remediator.policy import Action, Decision, Mode, Principal, Verdict, can_approve

log = logging.getLogger("certpilot.remediator.executor")

S = JobState

#: The executor's audit actor for the steps it runs itself.
ACTOR: Final = "executor"

#: ``issuance_latency`` events are good at or under this many seconds (the SLO's threshold).
ISSUANCE_LATENCY_GOOD_SECONDS: Final = 300.0

SLISink = Callable[[Sequence[SLIEvent]], object]
#: Asked just before a job orders from its CA: ``None`` to go ahead, or when to try again
#: (the issuer's rate budget is full: ``remediator.service.Remediation.admit``).
Admission = Callable[[Job], Awaitable[datetime | None]]


class ApprovalDenied(JobError):
    """:meth:`Executor.approve` refused: ``reason`` says why (not an approver, same person)."""

    def __init__(self, job_id: int, reason: str) -> None:
        super().__init__(job_id, f"approval refused: {reason}")
        self.reason = reason


class JobStateError(JobError):
    """The job is not in a state the operation applies to (approve a done job, ...)."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one :meth:`Executor.run` (or resume) did.

    ``ran`` is false when there was nothing to do (not approved, not due yet, or another
    process holds the job: ``note`` says which). ``events`` are the SLI events to store with
    ``Inventory.record_sli_events`` (they were also given to the executor's ``sli_sink``).
    """

    job: Job
    events: tuple[SLIEvent, ...] = ()
    ran: bool = True
    note: str = ""


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Executor:
    """Runs jobs. ``issuers`` and ``targets`` are looked up by the names stored on each job;
    ``prober`` re-probes the endpoints a target serves (``scanner.tls_endpoint.TlsProber``,
    wired in ``certpilot.app``).

    ``verify_timeout`` bounds each target's verification; ``verify_hold`` is how long every
    endpoint must serve the new certificate on every probe (``verify_interval`` apart).
    ``lease`` is how long a job this executor works on stays claimed without a write (each
    transition renews it); ``instance`` names this executor in ``owner`` (default: the host
    name, so a restart on the same host resumes its own jobs at once, while another replica
    waits until the lease runs out). ``rng`` makes backoff jitter reproducible in tests.
    """

    def __init__(
        self,
        jobs: JobStore,
        audit: AuditLog,
        issuers: Mapping[str, Issuer],
        targets: Mapping[str, DeployTarget],
        prober: Prober,
        clock: Clock,
        *,
        verify_timeout: float | timedelta = 30.0,
        verify_hold: float | timedelta = 0.7,
        verify_interval: float | timedelta = 0.1,
        max_attempts: int = 5,
        backoff_base: float | timedelta = 2.0,
        backoff_cap: float | timedelta = timedelta(minutes=10),
        lease: float | timedelta = timedelta(minutes=5),
        instance: str | None = None,
        rng: random.Random | None = None,
        sli_sink: SLISink | None = None,
        admission: Admission | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.jobs = jobs
        self.audit = audit
        self.issuers = issuers
        self.targets = targets
        self.prober = prober
        self.clock = clock
        self.verify_timeout = _seconds(verify_timeout)
        self.verify_hold = _seconds(verify_hold)
        self.verify_interval = _seconds(verify_interval)
        self.max_attempts = max_attempts
        self.backoff_base = _seconds(backoff_base)
        self.backoff_cap = _seconds(backoff_cap)
        self.lease = _seconds(lease)
        if self.verify_timeout <= 0 or self.verify_hold < 0 or self.verify_interval < 0:
            raise ValueError("verify_timeout must be positive, verify_hold and interval >= 0")
        self.instance = instance or socket.gethostname()
        self.rng = rng or random.Random()
        self.sli_sink = sli_sink
        self.admission = admission
        # Jobs this executor is running or resuming right now (see resume_all).
        self._active: set[int] = set()

    # ------------------------------------------------------------------ jobs from people

    async def submit(
        self, new: NewJob, decision: Decision | None = None, *, actor: str | None = None
    ) -> JobCreated:
        """Create a job (or return the one with the same idempotency key) and audit it.

        With a policy ``decision``: ``allow`` creates it ``approved``, ``needs_approval``
        ``pending_approval`` with the decision's approvers and second-person rule stored on the
        job; any other verdict is refused (``ValueError``). The decision's rule, issuer, key
        type and validity fill what ``new`` leaves empty. Without a decision, a revocation
        always starts ``pending_approval`` and needs a second person (approvers as given in
        ``new``). Raises ``ValueError`` for a job that could never run (renew without issuer,
        names or targets; revoke without issuer or certificate).
        """
        if decision is not None:
            if decision.verdict not in {Verdict.ALLOW, Verdict.NEEDS_APPROVAL}:
                raise ValueError(f"the policy says {decision.summary()}: no job to create")
            if decision.action.value != new.action:
                raise ValueError(f"decision is for {decision.action}, job for {new.action}")
            pending = decision.verdict == Verdict.NEEDS_APPROVAL
            new = replace(
                new,
                state=S.PENDING_APPROVAL if pending else S.APPROVED,
                rule=new.rule or decision.rule,
                approvers=decision.approvers,
                second_person=decision.requires_second_person,
                issuer=new.issuer or decision.issuer or "",
                key_type=new.key_type or decision.key_type or "",
                validity_days=new.validity_days
                if new.validity_days is not None
                else (math.ceil(decision.validity_days) if decision.validity_days else None),
                requester=new.requester or decision.requester,
            )
        elif new.action == Action.REVOKE:
            # No policy consulted: the safe default, a second person (DESIGN.md section 5).
            new = replace(new, state=S.PENDING_APPROVAL, second_person=True)
        _check_new(new)
        now = self.clock.now()
        created = await asyncio.to_thread(self.jobs.create, new, now=now)
        job = created.job
        if created.created:
            await self._audit(
                job,
                actor=actor or job.requester or ACTOR,
                action=job.action,
                result=AuditResult.PENDING if job.state == S.PENDING_APPROVAL else "allowed",
                before=job.old_serial,
                state=job.state,
                key=job.key,
                targets=",".join(job.targets),
                issuer=job.issuer,
                requester=job.requester,
            )
            log.info("job %d: %s %s created (%s)", job.id, job.action, job.subject, job.state)
        return created

    async def approve(self, job_id: int, approver: str | Principal) -> Job:
        """Approve a job waiting in ``pending_approval``: ``can_approve`` semantics with the
        approvers and second-person rule stored on the job. Raises :class:`ApprovalDenied`
        (audited as a ``deny``) or :class:`JobStateError`."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        who = approver.id if isinstance(approver, Principal) else approver
        if job.state != S.PENDING_APPROVAL:
            raise JobStateError(job.id, f"is {job.state}, nothing to approve")
        decision = Decision(
            verdict=Verdict.NEEDS_APPROVAL,
            action=Action(job.action),
            rule=job.rule,
            mode=Mode.APPROVE,
            approvers=job.approvers,
            requires_second_person=job.second_person,
            reasons=(),
            requester=job.requester,
        )
        ok, why = can_approve(decision, job.requester, approver)
        await self._audit(
            job,
            actor=who,
            action=AuditAction.APPROVE if ok else AuditAction.DENY,
            result=AuditResult.ALLOWED if ok else AuditResult.DENIED,
            why=why,
            requester=job.requester,
        )
        if not ok:
            raise ApprovalDenied(job.id, why)
        now = self.clock.now()
        return await self._move(
            job, S.APPROVED, actor=who, approvals=(*job.approvals, Approval(who, now))
        )

    async def cancel(self, job_id: int, by: str, reason: str) -> Job:
        """Stop a job that has not started (``pending_approval`` or ``approved``): it ends
        ``failed`` with ``last_error`` saying who cancelled it and why (an Alertmanager alert
        that resolved, a person). A job in flight cannot be cancelled: it finishes or rolls
        back."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.state not in {S.PENDING_APPROVAL, S.APPROVED}:
            raise JobStateError(job.id, f"is {job.state}; only a job not started can be cancelled")
        line = error_line(f"cancelled by {by}: {reason}")
        return await self._move(job, S.FAILED, actor=by, last_error=line, why=line)

    async def retry(self, job_id: int, by: str) -> Job:
        """Send a ``failed`` or ``rolled_back`` job back to ``approved`` with fresh attempts
        (a person decided the cause is fixed). Progress of the last run is cleared; the audit
        log keeps it."""
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.state not in {S.FAILED, S.ROLLED_BACK}:
            raise JobStateError(job.id, f"is {job.state}; only failed or rolled back jobs retry")
        return await self._move(
            job,
            S.APPROVED,
            actor=by,
            attempts=0,
            next_attempt_at=None,
            receipts=(),
            verified=(),
            new_serial="",
            new_fingerprint="",
            issued_chain_pem="",
            why=f"retried by {by} after: {job.last_error}",
        )

    # ------------------------------------------------------------------------ running

    async def run(self, job_id: int, *, certificate: IssuedCertificate | None = None) -> RunOutcome:
        """Run ``job_id`` from ``approved`` as far as it goes now (see the module docstring).

        ``certificate`` is for a ``redeploy``: the certificate and key to deploy, read by the
        caller from where they are kept (there is nothing to issue). A job that is not
        ``approved``, not due yet, or taken by another process is left alone (``ran=False``).

        Job failures are outcomes, not exceptions. A database or audit-log failure
        (``StoreError``) propagates: the job is then left where it was, in flight, for
        :meth:`resume_all`; so is a cancelled run (``CancelledError``).
        """
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job.state != S.APPROVED:
            return RunOutcome(job, ran=False, note=f"job is {job.state}")
        now = self.clock.now()
        if job.next_attempt_at is not None and job.next_attempt_at > now:
            return RunOutcome(
                job, ran=False, note=f"not due until {job.next_attempt_at.isoformat()}"
            )
        mine = job.id not in self._active
        self._active.add(job.id)
        try:
            async with self._leased(job.id):
                outcome = await self._run(job, certificate)
        except JobConflict as e:
            log.info("job %d: %s", job.id, e.message)
            current = await asyncio.to_thread(self.jobs.get, job_id)
            return RunOutcome(current, ran=False, note=e.message)
        finally:
            if mine:
                self._active.discard(job.id)
        self._emit(outcome.events)
        return outcome

    async def run_due(self, *, limit: int | None = None) -> list[RunOutcome]:
        """Run every approved job whose time has come, one after another (jobs may share
        targets; a target deploys one certificate at a time)."""
        due = await asyncio.to_thread(self.jobs.due, self.clock.now(), limit=limit)
        return [await self.run(job.id) for job in due]

    async def _run(self, job: Job, certificate: IssuedCertificate | None) -> RunOutcome:
        if job.action == Action.REVOKE:
            return await self._run_revoke(job)
        missing = [t for t in job.targets if t not in self.targets]
        if not job.targets or missing:
            what = f"unknown deploy target {missing[0]!r}" if missing else "no deploy targets"
            return await self._fail(job, f"cannot run: {what}")
        if certificate is None and job.action == Action.REDEPLOY:
            certificate = await self._held(job)
            if certificate is None:
                return await self._fail(
                    job,
                    "cannot run: no target holds a certificate and key to redeploy "
                    f"({', '.join(job.targets)})",
                )
        if certificate is None:
            issuer = self.issuers.get(job.issuer)
            if issuer is None:
                return await self._fail(job, f"cannot run: unknown issuer {job.issuer!r}")
            if self.admission is not None:
                wait = await self.admission(job)
                if wait is not None:
                    job = await asyncio.to_thread(
                        self.jobs.update,
                        job.id,
                        job.state,
                        now=self.clock.now(),
                        version=job.version,
                        next_attempt_at=wait,
                    )
                    note = f"{job.issuer}'s rate budget is full until {wait.isoformat()}"
                    log.info("job %d: %s", job.id, note)
                    return RunOutcome(job, ran=False, note=note)
            job = await self._move(job, S.ISSUING, attempts=job.attempts + 1, next_attempt_at=None)
            await self._audit(
                job,
                action=job.action,
                result=AuditResult.PENDING,
                before=job.old_serial,
                step="issue",
                issuer=issuer.name,
                attempt=str(job.attempts),
            )
            try:
                certificate = await issuer.issue(
                    IssueRequest(
                        names=job.names,
                        key_type=job.key_type or "EC-256",
                        validity_days=job.validity_days,
                        replaces=_replaces(job),
                    )
                )
                serial, fingerprint = _leaf_ids(certificate)
            except Exception as e:  # CancelledError is not caught: resume re-issues
                return await self._issue_failed(job, e)
        else:
            try:
                serial, fingerprint = _leaf_ids(certificate)
            except CertificateParseError as e:
                return await self._fail(job, f"cannot run: {error_line(e)}")
        job = await self._move(
            job,
            S.DEPLOYING,
            new_serial=serial,
            new_fingerprint=fingerprint,
            issued_chain_pem=certificate.chain_pem.decode("ascii", "replace"),
            last_error="",
        )
        log.info("job %d: certificate serial %s ready for %s", job.id, serial, job.subject)
        return await self._deploy_all(job, certificate)

    async def _held(self, job: Job) -> IssuedCertificate | None:
        """What a redeploy pushes out: the certificate the first target that can say so holds
        now (the files on disk, the KV store's latest version)."""
        for name in job.targets:
            target = self.targets[name]
            if isinstance(target, CertificateHolder):
                try:
                    held = await target.current()
                except (DeployError, OSError) as e:
                    log.warning("job %d: cannot read %s: %s", job.id, name, error_line(e))
                    continue
                if held is not None:
                    return held
        return None

    async def _issue_failed(self, job: Job, error: Exception) -> RunOutcome:
        message = error_line(error)
        retry_after = error.retry_after if isinstance(error, IssuerError) else None
        if job.attempts >= self.max_attempts:
            line = error_line(f"issuing failed after {job.attempts} attempts: {message}")
            log.warning("job %d: %s", job.id, line)
            job = await self._move(job, S.FAILED, last_error=line)
            await self._audit(
                job, action=job.action, result=AuditResult.FAILED, before=job.old_serial, why=line
            )
            return RunOutcome(job, tuple(self._renewal_events(job, good=False, why="issue failed")))
        delay = retry_delay(
            job.attempts,
            base=self.backoff_base,
            cap=self.backoff_cap,
            retry_after=retry_after,
            rng=self.rng,
        )
        at = self.clock.now() + timedelta(seconds=delay)
        log.warning(
            "job %d: attempt %d failed (%s); next attempt in %.1fs",
            job.id,
            job.attempts,
            message,
            delay,
        )
        job = await self._move(job, S.APPROVED, next_attempt_at=at, last_error=message)
        await self._audit(
            job,
            action=job.action,
            result="retry",
            before=job.old_serial,
            why=message,
            attempt=str(job.attempts),
            retry_in=f"{delay:.1f}s",
            retry_after="" if retry_after is None else f"{retry_after:g}s",
            next_attempt_at=at.isoformat(),
        )
        return RunOutcome(job)

    async def _deploy_all(self, job: Job, cert: IssuedCertificate) -> RunOutcome:
        receipts: list[DeployReceipt] = list(job.receipts)
        verified: list[str] = list(job.verified)
        for position, name in enumerate(job.targets):
            target = self.targets[name]
            if job.state == S.VERIFYING:
                job = await self._move(job, S.DEPLOYING, verified=verified)
            role = "canary" if position == 0 else f"{position + 1} of {len(job.targets)}"
            await self._audit(
                job,
                action="deploy",
                result=AuditResult.PENDING,
                before=job.old_serial,
                after=job.new_serial,
                target=name,
                role=role,
            )
            try:
                receipt = await target.deploy(cert)
            except DeployError as e:
                return await self._roll_back(job, receipts, name, e.step, e.message)
            except Exception as e:  # an adapter bug: still roll back what was deployed
                return await self._roll_back(job, receipts, name, "deploy", error_line(e))
            receipts.append(receipt)
            job = await self._move(job, S.VERIFYING, receipts=receipts)
            await self._audit(
                job,
                action="deploy",
                result=AuditResult.OK,
                before=job.old_serial,
                after=job.new_serial,
                target=name,
                role=role,
            )
            ok, detail = await self._verify(target, job)
            await self._audit(
                job,
                action="verify",
                result=AuditResult.OK if ok else AuditResult.FAILED,
                after=job.new_serial,
                target=name,
                why=detail,
            )
            if not ok:
                return await self._roll_back(job, receipts, name, "verify", detail)
            verified.append(name)
        return await self._finish(job, verified)

    async def _finish(self, job: Job, verified: Sequence[str]) -> RunOutcome:
        job = await self._move(job, S.DONE, verified=verified, last_error="")
        await self._audit(
            job,
            action=job.action,
            result=AuditResult.OK,
            before=job.old_serial,
            after=job.new_serial,
            targets=",".join(verified),
        )
        log.info(
            "job %d: %s done, serial %s served on %s",
            job.id,
            job.action,
            job.new_serial,
            ", ".join(verified),
        )
        now = self.clock.now()
        events = [SLIEvent(now, "complete_deployments", True, _ref(job), detail=",".join(verified))]
        events += self._renewal_events(job, good=True)
        issued_at = job.state_times.get(S.ISSUING)
        if job.action == Action.RENEW and issued_at is not None:
            latency = max(0.0, (now - issued_at).total_seconds())
            events.append(
                SLIEvent(
                    now,
                    "issuance_latency",
                    latency <= ISSUANCE_LATENCY_GOOD_SECONDS,
                    _ref(job),
                    value=latency,
                    detail=f"serial {job.new_serial}",
                )
            )
        return RunOutcome(job, tuple(events))

    async def _roll_back(
        self,
        job: Job,
        receipts: Sequence[DeployReceipt],
        failed_target: str,
        step: str,
        message: str,
        *,
        unrecoverable: str = "",
    ) -> RunOutcome:
        """Roll back ``receipts`` newest first; end ``rolled_back`` (``failed`` when a rollback
        fails or ``unrecoverable`` names something that cannot be undone)."""
        error = error_line(f"{failed_target}: {step}: {message}")
        log.warning("job %d: not deployed: %s", job.id, error)
        await self._audit(
            job,
            action=job.action,
            result="not_deployed",
            before=job.old_serial,
            after=job.new_serial,
            problem="not_deployed",
            target=failed_target,
            step=step,
            why=error,
            rolling_back=",".join(r.target for r in reversed(receipts)),
        )
        failures: list[str] = []
        for receipt in reversed(receipts):
            await self._audit(
                job,
                action="rollback",
                result=AuditResult.PENDING,
                before=job.new_serial,
                after=job.old_serial,
                target=receipt.target,
            )
            target = self.targets.get(receipt.target)
            try:
                if target is None:
                    raise DeployError(receipt.target, "rollback", "target is not configured")
                await target.rollback(receipt)
            except Exception as e:
                line = error_line(e)
                failures.append(line)
                log.error("job %d: rollback of %s failed: %s", job.id, receipt.target, line)
                await self._audit(
                    job,
                    action="rollback",
                    result=AuditResult.FAILED,
                    target=receipt.target,
                    why=line,
                )
            else:
                await self._audit(
                    job,
                    action="rollback",
                    result=AuditResult.OK,
                    before=job.new_serial,
                    after=job.old_serial,
                    target=receipt.target,
                )
        notes = [error]
        if failures:
            notes.append("rollback failed: " + "; ".join(failures))
        if unrecoverable:
            notes.append(unrecoverable)
        end = S.FAILED if failures or unrecoverable else S.ROLLED_BACK
        job = await self._move(job, end, last_error=error_line("; ".join(notes)))
        now = self.clock.now()
        events = [SLIEvent(now, "complete_deployments", False, _ref(job), detail=error)]
        events += self._renewal_events(job, good=False, why=error)
        return RunOutcome(job, tuple(events))

    async def _run_revoke(self, job: Job) -> RunOutcome:
        issuer = self.issuers.get(job.issuer)
        if issuer is None:
            return await self._fail(job, f"cannot revoke: unknown issuer {job.issuer!r}")
        if not job.subject_chain_pem:
            return await self._fail(job, "cannot revoke: the job holds no certificate")
        try:
            reason = RevocationReason(job.reason or 0)
        except ValueError:
            return await self._fail(job, f"cannot revoke: unknown reason code {job.reason}")
        job = await self._move(job, S.ISSUING, attempts=job.attempts + 1, next_attempt_at=None)
        await self._audit(
            job,
            action=AuditAction.REVOKE,
            result=AuditResult.PENDING,
            before=job.old_serial,
            issuer=issuer.name,
            reason=reason.name.lower(),
            approved_by=",".join(a.by for a in job.approvals),
        )
        try:
            await issuer.revoke(job.subject_chain_pem.encode(), reason)
        except Exception as e:
            return await self._issue_failed(job, e)
        job = await self._move(job, S.DONE, last_error="")
        await self._audit(
            job,
            action=AuditAction.REVOKE,
            result=AuditResult.OK,
            before=job.old_serial,
            issuer=issuer.name,
            reason=reason.name.lower(),
        )
        log.info("job %d: revoked serial %s (%s)", job.id, job.old_serial, reason.name.lower())
        return RunOutcome(job)

    async def _fail(self, job: Job, message: str) -> RunOutcome:
        """End a job that cannot run at all (configuration: unknown issuer or target)."""
        line = error_line(message)
        log.error("job %d: %s", job.id, line)
        job = await self._move(job, S.FAILED, last_error=line, why=line)
        return RunOutcome(job, tuple(self._renewal_events(job, good=False, why=line)))

    # ------------------------------------------------------------------------ verification

    async def _verify(self, target: DeployTarget, job: Job) -> tuple[bool, str]:
        """Probe ``target``'s endpoints until each serves the job's new certificate on every
        probe for ``verify_hold`` seconds (:class:`~remediator.jobs.HoldTracker`), at most
        ``verify_timeout`` seconds. A target with no endpoints has nothing to probe and counts
        as verified (said so in the audit detail)."""
        endpoints = list(target.endpoints())
        if not endpoints:
            return True, "no endpoints to probe"
        loop = asyncio.get_running_loop()
        tracker = HoldTracker(hold=self.verify_hold, timeout=self.verify_timeout, start=loop.time())
        while True:
            remaining = tracker.deadline - loop.time()
            try:
                observations = await asyncio.wait_for(
                    self.prober.probe(endpoints), timeout=max(remaining, 1.0)
                )
                misses = [
                    describe_served(o)
                    for o in observations
                    if not serves(o, job.new_serial, job.new_fingerprint)
                ]
                if len(observations) != len(endpoints):
                    misses.append(f"{len(endpoints) - len(observations)} endpoint(s) unanswered")
            except TimeoutError:
                misses = ["probe timed out"]
            status = tracker.observe(loop.time(), not misses)
            if status == VerifyStatus.VERIFIED:
                return True, (
                    f"{len(endpoints)} endpoint(s) served serial {job.new_serial} on every probe "
                    f"for {self.verify_hold:g}s ({tracker.probes} probes)"
                )
            if status == VerifyStatus.TIMED_OUT:
                seen = "; ".join(misses[:3]) if misses else "served, but not yet for the hold"
                return False, (
                    f"serial {job.new_serial} not served continuously within "
                    f"{self.verify_timeout:g}s: {seen}"
                )
            await asyncio.sleep(self.verify_interval)

    async def _serves_now(self, target: DeployTarget, job: Job) -> bool:
        """One probe: does any endpoint of ``target`` serve the job's new certificate?"""
        endpoints = list(target.endpoints())
        if not endpoints or not job.new_serial:
            return False
        try:
            observations = await asyncio.wait_for(
                self.prober.probe(endpoints), timeout=self.verify_timeout
            )
        except TimeoutError:
            return False
        return any(serves(o, job.new_serial, job.new_fingerprint) for o in observations)

    # ------------------------------------------------------------------------ restart

    async def resume_all(self, *, others_only: bool = False) -> list[RunOutcome]:
        """Resume or roll back every job left in ``issuing``, ``deploying`` or ``verifying``
        (call on start, and periodically when several replicas share the store).

        A job claimed by another executor (``owner``) whose lease has not run out is left to
        it. With ``others_only`` (the periodic check of a running replica) so is every job this
        executor is running right now, and one it claimed itself is left until its lease runs
        out: that is a job a run of this process abandoned when a store write failed (the
        database restarted mid-job), resumed here without restarting the process. Per job
        (:func:`remediator.jobs.resume_plan`):

        * ``issuing`` -> ``approved`` at once: re-issue (the key died with the process);
          a revocation is asked again.
        * ``deploying`` with no receipt -> ``approved`` (nothing to undo; re-issue), unless the
          target whose deploy was interrupted already serves the new certificate: it cannot be
          rolled back without a receipt, so the job ends ``failed`` for a person.
        * ``deploying`` / ``verifying`` with receipts -> re-verify every receipted target. All
          targets deployed and serving the new certificate -> ``done``. Otherwise roll back what
          the receipts say (newest first) -> ``rolled_back`` (``failed`` when the interrupted
          target serves the new certificate, or a rollback fails).
        """
        found = await asyncio.to_thread(self.jobs.list, IN_FLIGHT_STATES)
        now = self.clock.now()
        out: list[RunOutcome] = []
        for job in found:
            if job.id in self._active:
                continue  # this process is working on it
            held = (
                job.owner
                and (job.owner != self.instance or others_only)
                and job.lease_until is not None
                and job.lease_until > now
            )
            if held:
                (log.debug if others_only else log.info)(
                    "job %d: %s by %s until %s; not resuming",
                    job.id,
                    job.state,
                    job.owner,
                    job.lease_until,
                )
                continue
            self._active.add(job.id)
            previous_owner = job.owner
            try:
                if job.owner != self.instance or others_only:
                    # A takeover: claim the job first, by a compare-and-set that also requires
                    # its lease to have run out (a renewal does not change the version).
                    now = self.clock.now()
                    job = await asyncio.to_thread(
                        self.jobs.update,
                        job.id,
                        job.state,
                        now=now,
                        version=job.version,
                        unleased_at=now,
                        owner=self.instance,
                        lease_until=now + timedelta(seconds=self.lease),
                    )
                async with self._leased(job.id):
                    outcome = await self._resume(job, previous_owner)
            except JobConflict as e:
                log.info("job %d: %s", job.id, e.message)
                continue
            finally:
                self._active.discard(job.id)
            self._emit(outcome.events)
            out.append(outcome)
        return out

    async def _resume(self, job: Job, previous_owner: str) -> RunOutcome:
        plan = resume_plan(job)
        log.warning("job %d: resuming after a restart: %s", job.id, plan.why)
        await self._audit(
            job,
            action="resume",
            result=AuditResult.PENDING,
            state=job.state,
            plan=plan.action.value,
            why=plan.why,
            previous_owner=previous_owner,
        )
        interrupted = self.targets.get(plan.interrupted) if plan.interrupted else None
        interrupted_serves = interrupted is not None and await self._serves_now(interrupted, job)
        stuck = (
            f"{plan.interrupted} serves serial {job.new_serial} but its deploy was interrupted "
            "before a receipt was stored: it cannot be rolled back automatically"
            if interrupted_serves
            else ""
        )
        if plan.action == ResumeAction.REISSUE:
            if stuck:
                return await self._roll_back(
                    job, (), plan.interrupted or "", "deploy", "interrupted", unrecoverable=stuck
                )
            job = await self._move(
                job,
                S.APPROVED,
                next_attempt_at=self.clock.now(),
                last_error=error_line(f"resumed after a restart: {plan.why}"),
                receipts=(),
                verified=(),
            )
            return RunOutcome(job)

        receipts = list(job.receipts)
        verified: list[str] = []
        for receipt in receipts:
            target = self.targets.get(receipt.target)
            if target is None:
                return await self._roll_back(
                    job, receipts, receipt.target, "verify after restart", "not configured"
                )
            ok, detail = await self._verify(target, job)
            await self._audit(
                job,
                action="verify",
                result=AuditResult.OK if ok else AuditResult.FAILED,
                after=job.new_serial,
                target=receipt.target,
                why=detail,
            )
            if not ok:
                return await self._roll_back(
                    job,
                    receipts,
                    receipt.target,
                    "verify after restart",
                    detail,
                    unrecoverable=stuck,
                )
            verified.append(receipt.target)
        if plan.undeployed:
            return await self._roll_back(
                job,
                receipts,
                plan.undeployed[0],
                "deploy",
                "interrupted by a restart before every target was deployed; the new key is lost",
                unrecoverable=stuck,
            )
        if job.state == S.DEPLOYING:
            job = await self._move(job, S.VERIFYING)
        return await self._finish(job, verified)

    # ------------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _leased(self, job_id: int) -> AsyncIterator[None]:
        """Keep this executor's lease on ``job_id`` alive while it works on it: every third of
        the lease, moved to a whole lease from now. Transitions renew it too, but one step (a
        slow reload, a long verification) may outlast it, and another replica would take the
        job over while it still runs. A failed renewal is logged; the next transition's
        compare-and-set decides who has the job."""

        async def keep() -> None:
            while True:
                await asyncio.sleep(max(0.05, self.lease / 3))
                until = self.clock.now() + timedelta(seconds=self.lease)
                try:
                    await asyncio.to_thread(
                        self.jobs.extend_lease, job_id, owner=self.instance, until=until
                    )
                except StoreError as e:
                    log.warning("job %d: lease not renewed: %s", job_id, e.message)

        task = asyncio.create_task(keep(), name=f"lease-{job_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _move(self, job: Job, to: JobState, *, actor: str = ACTOR, **changes: Any) -> Job:
        """Compare-and-set ``job`` from its state (and version) to ``to``; audit it."""
        check_transition(job.state, to)
        why = str(changes.pop("why", ""))
        now = self.clock.now()
        if to in (S.ISSUING, S.DEPLOYING, S.VERIFYING):
            changes.update(owner=self.instance, lease_until=now + timedelta(seconds=self.lease))
        else:
            changes["lease_until"] = None
        moved = await asyncio.to_thread(
            self.jobs.transition,
            job.id,
            job.state,
            to,
            now=now,
            version=job.version,
            **changes,
        )
        detail: dict[str, str] = {"attempt": str(moved.attempts)}
        if why:
            detail["why"] = error_line(why)
        elif moved.last_error and to in (S.APPROVED, S.FAILED, S.ROLLED_BACK):
            detail["why"] = moved.last_error
        await self._audit(
            moved,
            actor=actor,
            action=AuditAction.JOB_STATE,
            result=AuditResult.OK,
            before=job.state,
            after=to,
            **detail,
        )
        log.debug("job %d: %s -> %s", job.id, job.state, to)
        return moved

    async def _audit(
        self,
        job: Job,
        *,
        action: str,
        result: str,
        actor: str = ACTOR,
        before: str = "",
        after: str = "",
        **detail: str,
    ) -> None:
        entry = {"job": str(job.id)}
        entry.update({k: error_line(v) for k, v in detail.items() if v})
        if actor == ACTOR and job.requester:
            entry.setdefault("requester", job.requester)
        draft = AuditDraft(
            at=self.clock.now(),
            actor=actor,
            action=str(action),
            subject=job.subject,
            rule=job.rule,
            before=before,
            after=after,
            result=str(result),
            detail=entry,
        )
        await asyncio.to_thread(self.audit.append, draft)

    def _renewal_events(self, job: Job, *, good: bool, why: str = "") -> list[SLIEvent]:
        """``renewal_success`` for a renewal that ended; for the replacement of a compromised
        certificate also ``compromise_replacement``: good when it was verified served within
        24 h of the revocation request (a late, failed or rolled-back one is bad)."""
        if job.action != Action.RENEW:
            return []
        now = self.clock.now()
        events = [SLIEvent(now, "renewal_success", good, _ref(job), detail=why)]
        if job.key.startswith(COMPROMISE_PREFIX):
            took = now - job.created_at
            in_time = good and took <= COMPROMISE_REPLACEMENT_WITHIN
            detail = why or f"replaced after {took.total_seconds():.0f}s"
            events.append(
                SLIEvent(now, "compromise_replacement", in_time, _ref(job), detail=detail)
            )
        return events

    def _emit(self, events: Sequence[SLIEvent]) -> None:
        if events and self.sli_sink is not None:
            try:
                self.sli_sink(events)
            except CertpilotError as e:  # a store hiccup must not undo a finished job
                log.error("could not record %d SLI events: %s", len(events), e.one_line())


def _replaces(job: Job) -> str | None:
    """The ARI identifier of the certificate a renewal replaces (RFC 9773 section 5: the CA
    may then exempt the order from rate limits), when the job carries it and it has an AKI."""
    if job.action != Action.RENEW or not job.subject_chain_pem:
        return None
    try:
        return ari_certificate_id_pem(job.subject_chain_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None


def _ref(job: Job) -> str:
    return f"job:{job.id}"


def _leaf_ids(cert: IssuedCertificate) -> tuple[str, str]:
    """The leaf's serial and SHA-256 fingerprint, from the chain itself (what probes see)."""
    parsed = parse_pem_bundle(cert.chain_pem, "issued certificate")
    if not parsed:
        raise CertificateParseError("issued certificate", "no PEM certificate in the chain")
    leaf = parsed[0]
    if isinstance(leaf, CertificateParseError):
        raise leaf
    return leaf.info.serial, leaf.info.fingerprint_sha256


def _check_new(new: NewJob) -> None:
    if new.action in {Action.RENEW, Action.REDEPLOY} and not new.targets:
        raise ValueError(f"a {new.action} job needs at least one deploy target")
    if new.action == Action.RENEW and not (new.issuer and new.names):
        raise ValueError("a renew job needs an issuer and the names to issue")
    if new.action == Action.REVOKE and not (new.issuer and new.subject_chain_pem):
        raise ValueError("a revoke job needs the issuer and the certificate to revoke")


__all__ = [
    "ACTOR",
    "ISSUANCE_LATENCY_GOOD_SECONDS",
    "ApprovalDenied",
    "Executor",
    "JobStateError",
    "RunOutcome",
    "SLISink",
]
