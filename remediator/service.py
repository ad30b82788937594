"""The remediator as the service, the CLI and the Alertmanager webhook use it: from "this
certificate needs something" to a job, under policy.

:class:`Remediation` holds the policy, the deploy targets in deploy order, the issuer each
target names, and the :class:`~remediator.executor.Executor`. It answers three questions:

* **Which targets hold a certificate?** Every target whose locations (the endpoints it serves,
  the files it writes) include one of the certificate's inventory refs, in configured order,
  so the first configured one is the canary (:meth:`Remediation.targets_for`).
* **What may happen?** :meth:`Remediation.request` gathers the facts the policy needs from the
  job store (past orders for the rate budgets, jobs in flight per rule, certificates that
  already have an open job), calls :func:`remediator.policy.decide`, and submits a job when
  the verdict allows one (``allow`` -> ``approved``, ``needs_approval`` ->
  ``pending_approval``; ``wait`` -> ``approved`` with ``next_attempt_at`` at the moment the
  policy gave). ``deny``, ``dry_run`` and ``not_due`` create nothing and are audited.
* **What is due?** :meth:`Remediation.plan` runs :func:`remediator.policy.plan_renewals` over
  the inventory and submits one job per planned renewal, each starting at its planned time:
  a mass event (a CA revoking 100 certificates) becomes jobs spread over as many budget
  windows as the CA's limits need, so the CA never has to answer 429.

Everything here is orchestration over the pure policy and the executor; the store calls run in
worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from certpilot.domain.audit import AuditAction, AuditDraft, AuditResult
from certpilot.domain.clock import Clock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.remedy import DeployTarget, IssuerError, RevocationReason
from certpilot.store.jobs import IN_FLIGHT_STATES, Job, JobStore, NewJob
from remediator.executor import Executor
from remediator.jobs import JobState, compromise_key, redeploy_key, renew_key, revoke_key
from remediator.policy import (
    Action,
    AriWindow,
    CertFacts,
    Decision,
    Facts,
    OrderRecord,
    PlannedRenewal,
    Policy,
    Request,
    Verdict,
    budget_wait,
    decide,
    plan_renewals,
)

log = logging.getLogger("certpilot.remediator")

#: Revocation reasons that mean the key is no longer safe: the certificate is replaced with a
#: new key at once (and the replacement counts for the ``compromise_replacement`` SLI).
COMPROMISED: frozenset[RevocationReason | None] = frozenset(
    {RevocationReason.KEY_COMPROMISE, RevocationReason.CA_COMPROMISE}
)

#: How far back job history counts as orders against the issuers' rate budgets (the longest
#: window a CA uses: Let's Encrypt's duplicate-certificate limit is 7 days).
ORDER_HISTORY = timedelta(days=7)

#: How long a certificate's ARI answer is kept when the CA sent no Retry-After.
ARI_RECHECK = timedelta(hours=6)

#: Open jobs: their certificate is "busy" (no second job for it).
OPEN_STATES: frozenset[str] = frozenset(
    {JobState.PENDING_APPROVAL, JobState.APPROVED, *IN_FLIGHT_STATES}
)


@runtime_checkable
class Locatable(Protocol):
    """A target that knows which inventory locations it writes besides the endpoints it
    serves (a files target: ``file://<cert path>#0``)."""

    def locations(self) -> Sequence[str]: ...


def target_locations(target: DeployTarget) -> frozenset[str]:
    """The inventory refs whose certificate ``target`` deploys."""
    refs = {ep.ref for ep in target.endpoints()}
    if isinstance(target, Locatable):
        refs.update(target.locations())
    return frozenset(refs)


@dataclass(frozen=True, slots=True)
class Requested:
    """What :meth:`Remediation.request` did: the policy's ``decision``, the job (new or the
    existing one with the same key) when one exists, and a line for people."""

    decision: Decision | None
    job: Job | None
    created: bool
    note: str
    replacement: Requested | None = None  # a key compromise's replacement renewal

    def to_dict(self) -> dict[str, object]:
        return {
            "created": self.created,
            "note": self.note,
            "decision": self.decision.to_dict() if self.decision else None,
            "job": self.job.to_dict() if self.job else None,
            "replacement": self.replacement.to_dict() if self.replacement else None,
        }


class Remediation:
    """Policy + targets + executor. ``targets`` are in deploy order; ``target_issuers`` maps a
    target name to the issuer it names (used when the policy's rule names none);
    ``default_issuer`` is the last resort (the only configured issuer, typically)."""

    def __init__(
        self,
        executor: Executor,
        policy: Policy,
        targets: Sequence[DeployTarget],
        *,
        target_issuers: Mapping[str, str] | None = None,
        default_issuer: str | None = None,
        horizon: timedelta = timedelta(0),
        chain_of: Callable[[str], str] | None = None,
        ari_fetch_limit: int = 100,
    ) -> None:
        self.chain_of = chain_of
        self.ari_fetch_limit = ari_fetch_limit
        self._ari: dict[str, tuple[datetime, AriWindow | None]] = {}
        self.executor = executor
        self.policy = policy
        self.targets = tuple(targets)
        self.target_issuers = dict(target_issuers or {})
        self.default_issuer = default_issuer
        self.horizon = horizon
        self._locations = {t.name: target_locations(t) for t in self.targets}
        # The last check before each order: the executor asks :meth:`admit`.
        executor.admission = self.admit

    @property
    def jobs(self) -> JobStore:
        return self.executor.jobs

    @property
    def clock(self) -> Clock:
        return self.executor.clock

    # ------------------------------------------------------------------ where and who

    def targets_for(self, refs: Iterable[str]) -> tuple[str, ...]:
        """Names of the targets that hold any of ``refs``, canary (first configured) first."""
        wanted = set(refs)
        return tuple(t.name for t in self.targets if self._locations[t.name] & wanted)

    def issuer_for(self, targets: Sequence[str], decided: str | None) -> str | None:
        """The policy's issuer, else the first target's configured one, else the default."""
        if decided:
            return decided
        for name in targets:
            if name in self.target_issuers:
                return self.target_issuers[name]
        return self.default_issuer

    async def facts(self, now: datetime) -> Facts:
        """What the policy needs from history: orders of the last 7 days (each renewal that
        reached its CA counts once, and each renewal still queued counts at its start), open
        jobs per rule, and the certificates with one."""
        since = now - ORDER_HISTORY
        # Open jobs of any age, and the recent ones (orders count for 7 days): not the history.
        open_jobs = await asyncio.to_thread(self.jobs.list, OPEN_STATES)
        recent = await asyncio.to_thread(self.jobs.list, updated_since=since)
        jobs = list({j.id: j for j in (*open_jobs, *recent)}.values())
        orders: list[OrderRecord] = []
        in_flight: Counter[str] = Counter()
        busy: set[str] = set()
        for job in jobs:
            if job.state in OPEN_STATES:
                # A pending revocation does not hold back a renewal (the replacement of a
                # compromised key must go out before the revocation is approved).
                if job.fingerprint and job.action != Action.REVOKE:
                    busy.add(job.fingerprint)
                # Concurrency counts jobs running or about to run, not ones queued for later.
                due = job.next_attempt_at is None or job.next_attempt_at <= now
                running = job.state in IN_FLIGHT_STATES or (job.state == JobState.APPROVED and due)
                if running and job.rule:
                    in_flight[job.rule] += 1
            if job.action != Action.RENEW or not job.issuer:
                continue
            if job.attempts == 0:
                # Queued, not ordered yet: it orders at its start, so it holds that slot of
                # the budget (else the next plan or request fills the same window again).
                if job.state in {JobState.PENDING_APPROVAL, JobState.APPROVED}:
                    at = max(job.next_attempt_at or now, now)
                    orders.append(OrderRecord(at=at, issuer=job.issuer, names=frozenset(job.names)))
                continue
            at = job.state_times.get(JobState.ISSUING, job.updated_at)
            if at >= since:  # each attempt was an order (counted at the last one: safe side)
                names = frozenset(job.names)
                orders += [OrderRecord(at=at, issuer=job.issuer, names=names)] * job.attempts
        return Facts(orders=tuple(orders), in_flight=dict(in_flight), busy=frozenset(busy))

    async def admit(self, job: Job) -> datetime | None:
        """Whether ``job`` may order from its CA now: the issuer's budgets against the orders
        actually sent (each attempt of each renewal counts; jobs only planned do not), else
        when it may (``None``: now)."""
        now = self.clock.now()
        since = now - ORDER_HISTORY
        jobs: list[Job] = await asyncio.to_thread(self.jobs.list, updated_since=since)
        orders: list[OrderRecord] = []
        for j in jobs:
            if j.action != Action.RENEW or j.attempts == 0 or j.issuer != job.issuer:
                continue
            at = j.state_times.get(JobState.ISSUING, j.updated_at)
            if at >= since:
                names = frozenset(j.names)
                orders += [OrderRecord(at=at, issuer=j.issuer, names=names)] * j.attempts
        return budget_wait(self.policy, job.issuer, job.names, orders, now)

    # ------------------------------------------------------------------------ requests

    async def request(
        self,
        action: Action,
        cert: CertFacts,
        *,
        requester: str,
        force: bool = False,
        issuer: str | None = None,
        reason: RevocationReason | None = None,
        chain_pem: str = "",
        key: str | None = None,
        not_before: datetime | None = None,
    ) -> Requested:
        """Ask for ``action`` on ``cert`` (see the module docstring). ``key`` overrides the
        idempotency key (the webhook uses the alert's); ``force`` skips the due check (an
        explicit ``certpilot renew NAME``, a revoked or broken certificate)."""
        now = self.clock.now()
        targets = self.targets_for(cert.refs)
        if key is None:
            key = _job_key(action, cert, targets)
        existing = await asyncio.to_thread(self.jobs.find, key)
        if existing is not None:
            return Requested(None, existing, False, f"job {existing.id} exists ({existing.state})")
        facts = await self.facts(now)
        if action != Action.REVOKE and cert.fingerprint and cert.fingerprint in facts.busy:
            open_job = await self._open_job_for(cert.fingerprint)
            if open_job is not None:
                return Requested(None, open_job, False, f"job {open_job.id} is already open for it")
        if issuer is None and not self.policy.select(cert).rule.issuers:
            # The rule leaves the issuer open: name the one that will be used, so its rate
            # budget is checked too.
            issuer = self.issuer_for(targets, None)
        decision = decide(
            Request(action, cert, requester=requester, issuer=issuer, force=force),
            facts,
            self.policy,
            now,
        )
        if decision.verdict in {Verdict.DENY, Verdict.DRY_RUN, Verdict.NOT_DUE}:
            await self._audit_refusal(action, cert, decision, requester)
            return Requested(decision, None, False, decision.summary())
        if action != Action.REVOKE and not targets:
            note = "no deploy target holds " + (", ".join(cert.refs) or ", ".join(cert.names))
            note += " (remediation.targets)"
            await self._audit_refusal(
                action, cert, decision, requester, result="no_target", why=note
            )
            return Requested(decision, None, False, note)
        start = not_before
        if decision.verdict == Verdict.WAIT:
            if decision.wait_until is None:  # only the concurrency limit: try again soon
                start = now + timedelta(minutes=1)
            else:
                start = max(decision.wait_until, start or now)
            decision = replace(decision, verdict=Verdict.ALLOW)
        chosen = self.issuer_for(targets, decision.issuer)
        if not chain_pem and cert.fingerprint and self.chain_of is not None:
            # The public certificate being replaced: a revocation revokes it, a renewal names
            # it in ARI's ``replaces``.
            chain_pem = await asyncio.to_thread(self.chain_of, cert.fingerprint)
        new = NewJob(
            key=key,
            action=action.value,
            names=_names(cert),
            targets=targets if action != Action.REVOKE else (),
            issuer=chosen or "",
            fingerprint=cert.fingerprint or "",
            ref=cert.refs[0] if cert.refs else "",
            requester=requester,
            reason=int(reason) if reason is not None else None,
            old_serial=cert.serial or "",
            subject_chain_pem=chain_pem,
            next_attempt_at=start if start is not None and start > now else None,
        )
        created = await self.executor.submit(new, decision, actor=requester)
        job = created.job
        note = f"job {job.id}: {job.state}"
        if job.next_attempt_at is not None:
            note += f", starts {job.next_attempt_at.isoformat()}"
        replacement = None
        if action == Action.REVOKE and reason in COMPROMISED and cert.fingerprint and targets:
            # Replace before revoking: the revocation waits for its approval, the replacement
            # (a new key) goes out under the renew rule at once, so revoking never leaves the
            # old, revoked certificate served.
            replacement = await self.request(
                Action.RENEW,
                cert,
                requester=requester,
                force=True,
                key=compromise_key(cert.fingerprint),
            )
            note += f"; replacement: {replacement.note}"
        return Requested(decision, job, created.created, note, replacement)

    async def _open_job_for(self, fingerprint: str) -> Job | None:
        jobs: list[Job] = await asyncio.to_thread(self.jobs.list, OPEN_STATES)
        return next(
            (j for j in jobs if j.fingerprint == fingerprint and j.action != Action.REVOKE), None
        )

    async def _audit_refusal(
        self,
        action: Action,
        cert: CertFacts,
        decision: Decision,
        requester: str,
        *,
        result: str | None = None,
        why: str | None = None,
    ) -> None:
        result = result or {
            Verdict.DENY: AuditResult.DENIED,
            Verdict.DRY_RUN: "dry_run",
            Verdict.NOT_DUE: "not_due",
        }.get(decision.verdict, decision.verdict.value)
        why = why or "; ".join(c.explanation for c in decision.failed) or decision.summary()
        await asyncio.to_thread(
            self.executor.audit.append,
            AuditDraft(
                at=self.clock.now(),
                actor=requester or "certpilot",
                action=AuditAction.POLICY_DECISION,
                subject=",".join(_names(cert)) or (cert.refs[0] if cert.refs else ""),
                rule=decision.rule,
                result=result,
                before=cert.fingerprint or "",
                detail={"action": action.value, "why": why, "verdict": decision.verdict.value},
            ),
        )

    # ------------------------------------------------------------------------ planning

    async def plan(self, items: Sequence[InventoryItem]) -> list[tuple[PlannedRenewal, Requested]]:
        """Plan the renewals due (within ``horizon``) and submit a job for each one that has
        somewhere to go; returns what was planned and what came of it."""
        now = self.clock.now()
        facts = await self.facts(now)
        managed = [it for it in items if self.targets_for([it.ref])]
        windows = await self._ari_windows(managed, now)
        if windows:
            facts = replace(facts, ari_windows=windows)
        plan = plan_renewals(
            managed,
            self.policy,
            facts,
            now,
            horizon=self.horizon,
            issuer_for=lambda cert: self.issuer_for(self.targets_for(cert.refs), None),
        )
        out: list[tuple[PlannedRenewal, Requested]] = []
        for p in plan:
            if p.verdict == Verdict.DRY_RUN:
                continue
            cert = _facts_for(p, managed)
            res = await self.request(
                Action.RENEW,
                cert,
                requester="schedule",
                force=True,  # the planner already decided it is due
                not_before=p.at,
            )
            out.append((p, res))
        return out

    async def _ari_windows(
        self, items: Sequence[InventoryItem], now: datetime
    ) -> dict[str, AriWindow]:
        """The CA's ARI windows (RFC 9773) of the managed certificates whose issuer offers
        them, cached per certificate until the CA's Retry-After (else 6 hours), at most
        ``ari_fetch_limit`` fetches per plan so a large fleet is spread over several plans."""
        if self.chain_of is None:
            return {}
        out: dict[str, AriWindow] = {}
        fetched = 0
        for it in items:
            fp = it.fingerprint_sha256
            if not fp:
                continue
            cached = self._ari.get(fp)
            if cached is not None and cached[0] > now:
                if cached[1] is not None:
                    out[fp] = cached[1]
                continue
            if fetched >= self.ari_fetch_limit:
                continue
            cert = CertFacts.from_item(it)
            rule = self.policy.select(cert).rule
            if not rule.use_ari:
                continue
            name = (
                rule.issuers[0]
                if rule.issuers
                else self.issuer_for(self.targets_for([it.ref]), None)
            )
            issuer = self.executor.issuers.get(name or "")
            if issuer is None:
                continue
            pem = await asyncio.to_thread(self.chain_of, fp)
            if not pem:
                continue
            fetched += 1
            try:
                got = await issuer.renewal_info(pem.encode("ascii"))
            except IssuerError as e:
                log.info("renewal info for %s: %s", it.ref, e.message)
                got = None
            window = (
                AriWindow(got.start, got.end, got.retry_after, got.explanation_url)
                if got is not None
                else None
            )
            until = got.retry_after if got is not None and got.retry_after else None
            self._ari[fp] = (until or now + ARI_RECHECK, window)
            if window is not None:
                out[fp] = window
        return out

    async def tick(self, items: Sequence[InventoryItem]) -> None:
        """One scheduler tick: plan, then run what is due."""
        await self.plan(items)
        await self.executor.run_due()


def names_item(item: InventoryItem, name: str) -> bool:
    """Whether ``name`` (a host, SAN, inventory ref, target or fingerprint prefix of at least
    8 hex digits) names ``item``: how the CLI, the bot and ``policy explain`` find things."""
    from certpilot.domain.chain import hostname_matches

    wanted = name.strip().lower()
    hexed = wanted.replace(":", "")
    is_hex = len(hexed) >= 8 and all(c in "0123456789abcdef" for c in hexed)
    fp = (item.fingerprint_sha256 or "").lower()
    return (
        wanted in {item.ref.lower(), item.target.lower(), (item.subject_cn or "").lower()}
        or any(h.lower() == wanted for h in CertFacts.from_item(item).hosts)
        or (is_hex and fp.startswith(hexed))
        or (bool(item.sans) and hostname_matches(wanted, item.sans))
    )


def certificates_named(items: Sequence[InventoryItem], name: str) -> list[CertFacts]:
    """One :class:`CertFacts` per distinct certificate ``name`` names, carrying every
    location that holds it (so every target that holds it is found)."""
    first: dict[str, InventoryItem] = {}
    for it in items:
        fp = it.fingerprint_sha256
        if fp and fp not in first and names_item(it, name):
            first[fp] = it
    out: list[CertFacts] = []
    for fp, it in first.items():
        refs = tuple(x.ref for x in items if x.fingerprint_sha256 == fp)
        out.append(replace(CertFacts.from_item(it), refs=refs))
    return out


def _names(cert: CertFacts) -> tuple[str, ...]:
    seen: list[str] = []
    for n in cert.names:
        if n and n.lower() not in {s.lower() for s in seen}:
            seen.append(n)
    return tuple(seen)


def _job_key(action: Action, cert: CertFacts, targets: Sequence[str]) -> str:
    fp = cert.fingerprint or ",".join(sorted(n.lower() for n in cert.names))
    if action == Action.RENEW:
        if cert.not_after is None:
            return f"renew:{fp}"
        return renew_key(fp, cert.not_after)
    if action == Action.REDEPLOY:
        return redeploy_key(fp, targets)
    return revoke_key(fp)


def _facts_for(p: PlannedRenewal, items: Sequence[InventoryItem]) -> CertFacts:
    """The planned certificate's facts with every ref the planner merged."""
    for it in items:
        if p.fingerprint is not None and it.fingerprint_sha256 == p.fingerprint:
            return replace(CertFacts.from_item(it), refs=p.refs)
    return CertFacts(names=p.names, fingerprint=p.fingerprint, not_after=p.not_after, refs=p.refs)


__all__ = [
    "ORDER_HISTORY",
    "Locatable",
    "Remediation",
    "Requested",
    "certificates_named",
    "names_item",
    "target_locations",
]
