"""The remediation job state machine, as data and pure functions (no I/O, no clock reads).

A job (stored by :class:`certpilot.store.jobs.JobStore`) moves through these states::

    pending_approval -> approved                  an approver said yes
    pending_approval -> failed                    cancelled or denied (or the alert resolved)
    approved  -> issuing                          run: order the certificate (or revoke it)
    approved  -> deploying                        run a redeploy of a certificate handed in
    approved  -> failed                           cancelled before it ran
    issuing   -> deploying                        issued; the key is in memory only
    issuing   -> done                             revoked
    issuing   -> approved                         issuer error: retry at next_attempt_at, or
                                                  a restart found it here (re-issue)
    issuing   -> failed                           max attempts reached, or a permanent error
    deploying -> verifying                        one target deployed (canary first)
    verifying -> deploying                        that target verified: the next one
    verifying -> done                             the last target verified
    deploying | verifying -> rolled_back          deploy or verify failed: deployed targets
                                                  rolled back, newest first
    deploying | verifying -> failed               ... and a rollback failed too (a person must
                                                  look), or the job cannot run at all
    deploying -> approved                         a restart found nothing deployed (re-issue)
    failed | rolled_back -> approved              a person retries

``failed`` and ``rolled_back`` may go back to ``approved`` when a person retries the job;
``done`` is final. :data:`TRANSITIONS` is the authority: :func:`check_transition` raises
:class:`IllegalTransition` for anything else, and the executor calls it before every
compare-and-set in the store.

Also here, because they are decisions over data: idempotency keys (:func:`renew_key`,
:func:`alert_key`, ...), the retry schedule (:func:`retry_delay`: Retry-After honoured, else
exponential backoff with jitter, capped), what a restart does with a job it finds in flight
(:func:`resume_plan`), whether a probe saw the new certificate (:func:`serves`), the
"continuously for a hold period" rule of verification (:class:`HoldTracker`) and one-line,
secret-free error text for ``last_error`` (:func:`error_line`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from certpilot.domain.errors import CertpilotError
from certpilot.domain.model import Observation
from certpilot.store.jobs import STATES, Job


class JobState(StrEnum):
    """Values are a contract: stored, in ``certpilot_jobs{state}``, in JSON and the audit log."""

    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    ISSUING = "issuing"
    DEPLOYING = "deploying"
    VERIFYING = "verifying"
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = JobState

#: Every legal move. ``issuing`` is also where a revocation talks to its CA.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        # approved by an approver; cancelled, denied (or the alert resolved) before it ran
        S.PENDING_APPROVAL: frozenset({S.APPROVED, S.FAILED}),
        # run: issue (renew, revoke), or deploy a certificate handed in (redeploy); cancelled
        S.APPROVED: frozenset({S.ISSUING, S.DEPLOYING, S.FAILED}),
        # issued -> deploy; revoked -> done; error -> approved again (retry later) or failed;
        # a restart finds it here -> approved (re-issue: the key died with the process)
        S.ISSUING: frozenset({S.DEPLOYING, S.DONE, S.APPROVED, S.FAILED}),
        # deployed on one target -> verify it; deploy failed -> rolled_back (or failed when
        # a rollback failed); a restart with nothing deployed -> approved (re-issue)
        S.DEPLOYING: frozenset({S.VERIFYING, S.ROLLED_BACK, S.FAILED, S.APPROVED}),
        # verified -> next target or done; timed out -> rolled_back (or failed)
        S.VERIFYING: frozenset({S.DEPLOYING, S.DONE, S.ROLLED_BACK, S.FAILED}),
        S.DONE: frozenset(),
        # a person retries
        S.FAILED: frozenset({S.APPROVED}),
        S.ROLLED_BACK: frozenset({S.APPROVED}),
    }
)

#: No process works on a job in these states (``done`` is final; the other two wait for a
#: person's retry).
TERMINAL: frozenset[JobState] = frozenset({S.DONE, S.FAILED, S.ROLLED_BACK})
#: A process works on the job: a restart must resume or roll these back.
IN_FLIGHT: frozenset[JobState] = frozenset({S.ISSUING, S.DEPLOYING, S.VERIFYING})


class IllegalTransition(CertpilotError):
    """A move :data:`TRANSITIONS` does not allow (a bug in the caller, not a race)."""

    def __init__(self, from_state: str, to_state: str) -> None:
        allowed = ", ".join(sorted(TRANSITIONS.get(_state(from_state), ()))) or "nothing"
        super().__init__(
            f"illegal job transition {from_state} -> {to_state} (from {from_state}: {allowed})"
        )
        self.from_state = from_state
        self.to_state = to_state


def _state(value: str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise ValueError(
            f"unknown job state {value!r}; expected one of {', '.join(STATES)}"
        ) from None


def can_transition(from_state: str, to_state: str) -> bool:
    return _state(to_state) in TRANSITIONS[_state(from_state)]


def check_transition(from_state: str, to_state: str) -> None:
    """Raise :class:`IllegalTransition` unless ``from_state -> to_state`` is in
    :data:`TRANSITIONS` (``ValueError`` for a name that is no state at all)."""
    if not can_transition(from_state, to_state):
        raise IllegalTransition(from_state, to_state)


# ----------------------------------------------------------------------- idempotency keys


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def renew_key(fingerprint: str, not_after: datetime) -> str:
    """One renewal per certificate: ``renew:<fingerprint>:<not_after>``. The scheduler, a
    person and an alert asking to renew the same certificate get the same job."""
    return f"renew:{fingerprint.lower()}:{_ts(not_after)}"


def redeploy_key(fingerprint: str, targets: Sequence[str]) -> str:
    """One redeploy of a certificate to a set of targets."""
    return f"redeploy:{fingerprint.lower()}:{','.join(targets)}"


def revoke_key(fingerprint: str) -> str:
    """A certificate is revoked once."""
    return f"revoke:{fingerprint.lower()}"


COMPROMISE_PREFIX = "compromise:"
#: A compromised certificate is "replaced in time" (SLI ``compromise_replacement``) when its
#: replacement is deployed and verified within this long of the revocation request.
COMPROMISE_REPLACEMENT_WITHIN = timedelta(hours=24)


def compromise_key(fingerprint: str) -> str:
    """The replacement renewal of a certificate whose key is compromised (one per
    certificate; its completion is a ``compromise_replacement`` SLI event)."""
    return f"{COMPROMISE_PREFIX}{fingerprint.lower()}"


def alert_key(fingerprint: str, starts_at: datetime) -> str:
    """An Alertmanager alert: its ``fingerprint`` and ``startsAt`` (a re-delivery of the same
    firing alert carries both unchanged; a new firing has a new ``startsAt``)."""
    return f"alert:{fingerprint}:{_ts(starts_at)}"


# ------------------------------------------------------------------------------ retries


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` (1-based)
    failed.

    When the CA said when to come back (HTTP 429/503 ``Retry-After``, RFC 9110 section
    10.2.3; ``0`` for a badNonce worth retrying at once, RFC 8555 section 6.5) that is the
    delay, exactly: it is a floor set by the server, so it is neither capped nor jittered
    down. Otherwise exponential backoff with "equal jitter": half of ``base * 2**(attempt-1)``
    (capped at ``cap``) plus a random share of the other half, so retries of a fleet spread
    out but never come sooner than half the schedule
    (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
    """
    if retry_after is not None:
        return max(0.0, float(retry_after))
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    r = (rng or random).random()
    return ceiling / 2.0 + r * ceiling / 2.0


# ----------------------------------------------------------------------------- resume


class ResumeAction(StrEnum):
    """What a restart does with a job it finds in flight (see :func:`resume_plan`)."""

    REISSUE = "reissue"  # back to approved: issue again
    REVERIFY = "reverify"  # probe what the receipts say was deployed, then finish or roll back


@dataclass(frozen=True, slots=True)
class ResumePlan:
    action: ResumeAction
    why: str
    #: Targets without a receipt, in deploy order: never deployed, or (the first of them, in
    #: ``deploying``) interrupted in the middle of its deploy.
    undeployed: tuple[str, ...] = ()
    #: The target whose deploy may have been interrupted (no receipt), if any.
    interrupted: str | None = None


def resume_plan(job: Job) -> ResumePlan:
    """What to do with ``job`` found in ``issuing``, ``deploying`` or ``verifying`` when the
    process that ran it is gone.

    * ``issuing``: the issuer may or may not have issued; if it did, the new private key lived
      only in the dead process's memory (it is never stored). Re-issue: back to ``approved``.
      A certificate the lost attempt did get is orphaned (never deployed; it counts against
      the CA's rate budget once). A revocation in ``issuing`` is simply asked again (revoking
      twice is harmless).
    * ``deploying`` with no receipt: nothing is known to be deployed and the key is gone:
      re-issue, like ``issuing``. The executor first probes the target whose deploy was
      interrupted: if it already serves the new certificate (files written and reloaded, the
      process died before the receipt was stored), it cannot be rolled back without a receipt,
      so the job fails for a person to look at.
    * ``deploying`` / ``verifying`` with receipts: the key is gone too, but the receipted
      targets hold it. Re-verify those (probe until the new certificate is served
      continuously). When every target of the job has a receipt and serves it, the job is
      done. Otherwise (a target does not serve it, or targets were never deployed and cannot
      be now, the key being lost) roll back what the receipts say, newest first.
    """
    state = _state(job.state)
    if state not in IN_FLIGHT:
        raise ValueError(f"job {job.id} is {job.state}: nothing to resume")
    if state == S.ISSUING:
        return ResumePlan(
            ResumeAction.REISSUE, "interrupted while issuing; the new key was never stored"
        )
    deployed = {r.target for r in job.receipts}
    undeployed = tuple(t for t in job.targets if t not in deployed)
    # In verifying, the receipt of the target being verified is stored: no deploy was running.
    interrupted = undeployed[0] if undeployed and state == S.DEPLOYING else None
    if not job.receipts:
        return ResumePlan(
            ResumeAction.REISSUE,
            "interrupted before any target was deployed; the new key was never stored",
            undeployed,
            interrupted,
        )
    why = f"interrupted while {job.state}; re-verifying {len(job.receipts)} deployed target(s)"
    if undeployed:
        why += f", then rolling back: {len(undeployed)} target(s) never got the lost key"
    return ResumePlan(ResumeAction.REVERIFY, why, undeployed, interrupted)


# ------------------------------------------------------------------------- verification


def serves(observation: Observation, serial: str, fingerprint: str = "") -> bool:
    """Whether a probe saw the new certificate: the same SHA-256 fingerprint when it is known,
    else the same serial (two CAs may reuse a serial; a fingerprint is unique)."""
    leaf = observation.leaf
    if leaf is None:
        return False
    if fingerprint:
        return leaf.fingerprint_sha256 == fingerprint.lower()
    return bool(serial) and leaf.serial == serial.lower()


def describe_served(observation: Observation) -> str:
    """One short phrase for what an endpoint served: ``serial 1a2b`` or its error."""
    where = observation.target or observation.ref
    if observation.leaf is not None:
        return f"{where} serves serial {observation.leaf.serial}"
    reason = observation.error or ",".join(observation.codes) or "no certificate"
    return f"{where}: {reason}"


class VerifyStatus(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    TIMED_OUT = "timed_out"


class HoldTracker:
    """The verification rule: every endpoint serves the new certificate on every probe for
    ``hold`` seconds in a row, within ``timeout`` seconds of ``start``.

    Why a hold and not one good probe: for a moment after ``nginx -s reload`` the old and the
    new generation of workers both accept connections (about 100 ms on nginx 1.22), so one probe
    may see the new certificate and the next the old one. Any probe that misses restarts the
    hold. Times are monotonic seconds (the event loop's clock), passed in.
    """

    def __init__(self, *, hold: float, timeout: float, start: float) -> None:
        if hold < 0 or timeout <= 0:
            raise ValueError("hold must be >= 0 and timeout > 0")
        self.hold = hold
        self.deadline = start + timeout
        self.since: float | None = None
        self.probes = 0

    def observe(self, at: float, all_served: bool) -> VerifyStatus:
        self.probes += 1
        if all_served:
            self.since = at if self.since is None else self.since
            if at - self.since >= self.hold:
                return VerifyStatus.VERIFIED
        else:
            self.since = None
        return VerifyStatus.TIMED_OUT if at >= self.deadline else VerifyStatus.PENDING


# ------------------------------------------------------------------------------ errors

_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# "Authorization: Bearer xyz", and "token=xyz" / "password: xyz" (not "secret foo not found").
_AUTH = re.compile(
    r"\b(Bearer|Basic)\s+\S+|\b(\w*(?:token|passw(?:or)?d|secret|api[_-]?key))\s*[:=]\s*\S+",
    re.IGNORECASE,
)


def _redact_auth(m: re.Match[str]) -> str:
    if m.group(1):
        return f"[{m.group(1).lower()} redacted]"
    return f"{m.group(2)}=[redacted]"


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")

#: ``last_error`` and audit details are kept this short: one line a person reads.
MAX_ERROR = 300


def error_line(error: BaseException | str, *, limit: int = MAX_ERROR) -> str:
    """``error`` as one line with anything credential-like removed, at most ``limit`` chars.

    Private-key PEM blocks, ``Bearer``/``Basic`` values, ``token=``/``password:`` values and URL
    passwords are replaced: the text ends up in the jobs table, the audit log (append-only, so
    a leaked secret could never be removed) and chat messages.
    """
    text = str(error) if isinstance(error, BaseException) else error
    if isinstance(error, BaseException) and not text:
        text = type(error).__name__
    text = _PEM_PRIVATE.sub("[private key redacted]", text)
    text = _AUTH.sub(_redact_auth, text)
    text = _URL_PASSWORD.sub(r"\1***@", text)
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = [
    "IN_FLIGHT",
    "MAX_ERROR",
    "TERMINAL",
    "TRANSITIONS",
    "HoldTracker",
    "IllegalTransition",
    "JobState",
    "ResumeAction",
    "ResumePlan",
    "VerifyStatus",
    "alert_key",
    "can_transition",
    "check_transition",
    "describe_served",
    "error_line",
    "redeploy_key",
    "renew_key",
    "resume_plan",
    "retry_delay",
    "revoke_key",
    "serves",
]
