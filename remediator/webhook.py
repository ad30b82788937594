"""Alertmanager webhook intake (``POST /hooks/alertmanager``, payload version 4).

Alertmanager's webhook receiver posts a group of alerts
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config). Each alert becomes,
through the policy, a runbook action on the certificate it names:

* **Which action**: the alert's ``certpilot_action`` label when it has one (``renew``,
  ``redeploy``, ``revoke``, ``none``), so any rule can ask for a fix; otherwise
  :data:`ALERT_ACTIONS` by ``alertname`` for certpilot's own symptom alerts
  (``certpilot rules generate``). Alerts with no action (SLO burn rates, scanner health) are
  acknowledged and left to people.
* **Which certificate**: the ``ref`` label (an inventory location, as every certpilot
  certificate series carries), else ``fingerprint``. The inventory says what the certificate
  is; the deploy targets that hold that location say where a new one goes.
* **Idempotent**: a firing alert's job key is ``alert:<fingerprint>:<startsAt>``
  (:func:`remediator.jobs.alert_key`): Alertmanager re-sends the same alert every
  ``repeat_interval`` and on every group change, and each re-delivery finds the job it made.
  A certificate that already has an open job (from the schedule or a person) gets no second.
* **Resolved** alerts cancel the job they made when it has not started (the problem went away
  or someone fixed it by hand); a job in flight finishes or rolls back on its own.

The HTTP handler authenticates, parses and stores jobs (a few milliseconds: nothing is lost if
the process dies after the 200), then wakes the job runner; issuing and deploying happen
asynchronously.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import reprlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from certpilot.domain.errors import CertpilotError
from certpilot.domain.inventory import InventoryItem
from certpilot.store.jobs import JobError
from remediator.jobs import JobState, alert_key
from remediator.policy import Action, CertFacts
from remediator.service import Remediation

log = logging.getLogger("certpilot.remediator.webhook")

#: certpilot's symptom alerts and what fixes them. ``CertificateChainProblem`` is not here:
#: a wrong chain or a hostname mismatch needs a person (a renewal with the same names would
#: not fix it); rules may still say ``certpilot_action: redeploy``.
ALERT_ACTIONS: Final[Mapping[str, Action]] = MappingProxyType(
    {
        "CertificateExpiringRelative": Action.RENEW,
        "CertificateExpiringSoon": Action.RENEW,
        "CertificateExpired": Action.RENEW,
        "CertificateRevoked": Action.RENEW,
        "CertificateNotDeployed": Action.REDEPLOY,
    }
)
ACTION_LABEL: Final = "certpilot_action"
REQUESTER: Final = "alertmanager"
MAX_ALERTS: Final = 1000
"""A group larger than this is refused (Alertmanager's ``max_alerts`` should cap it)."""


class BadPayload(CertpilotError):
    """The body is not an Alertmanager v4 webhook payload: ``field`` says where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Alert:
    status: str  # firing | resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def key(self) -> str:
        return alert_key(self.fingerprint, self.starts_at)


@dataclass(frozen=True, slots=True)
class Payload:
    receiver: str
    status: str
    group_key: str
    alerts: tuple[Alert, ...]
    external_url: str = ""
    common_labels: Mapping[str, str] = field(default_factory=dict)


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 40, 40


#: Seconds a caller has to send the whole body once its headers are in.
BODY_TIMEOUT = 10.0


def _brief(value: object) -> str:
    """A short ``repr`` of a value from the body (it may be huge or deeply nested)."""
    return _BRIEF.repr(value)


def _str_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadPayload(where, "expected an object of strings")
    return dict(value)


def _time(value: object, where: str, *, optional: bool = False) -> datetime | None:
    if optional and (value is None or value == ""):
        return None
    if not isinstance(value, str) or not value:
        raise BadPayload(where, "expected an RFC 3339 time")
    text = value.strip()
    if text.startswith("0001-01-01"):  # Go's zero time: "not set"
        return None
    # Go writes up to nine fractional digits; Python reads six.
    if "." in text:
        head, _, rest = text.partition(".")
        # Only the digits right after the dot: an offset such as "+01:00" has digits too.
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tail = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tail}"
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if at.tzinfo is None:
            raise BadPayload(where, "the time has no offset")
        return at.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: past year 9999 in UTC
        raise BadPayload(where, f"expected an RFC 3339 time, got {value[:40]!r}") from None


def parse_payload(data: Any) -> Payload:
    """Validate an Alertmanager webhook body (already JSON-decoded); :class:`BadPayload`
    names the first field that is wrong."""
    if not isinstance(data, dict):
        raise BadPayload("$", "expected a JSON object")
    version = data.get("version")
    if version != "4":
        raise BadPayload("version", f'expected "4", got {_brief(version)}')
    raw = data.get("alerts")
    if not isinstance(raw, list):
        raise BadPayload("alerts", "expected a list")
    if len(raw) > MAX_ALERTS:
        raise BadPayload("alerts", f"{len(raw)} alerts in one message, at most {MAX_ALERTS}")
    alerts: list[Alert] = []
    for i, a in enumerate(raw):
        where = f"alerts[{i}]"
        if not isinstance(a, dict):
            raise BadPayload(where, "expected an object")
        status = a.get("status")
        if not isinstance(status, str) or status not in {"firing", "resolved"}:
            raise BadPayload(
                f"{where}.status", f"expected firing or resolved, got {_brief(status)}"
            )
        fp = a.get("fingerprint")
        if not isinstance(fp, str) or not fp or len(fp) > 64:
            raise BadPayload(f"{where}.fingerprint", "expected Alertmanager's alert fingerprint")
        starts = _time(a.get("startsAt"), f"{where}.startsAt")
        if starts is None:  # Go's zero time: "not set", which an alert's start cannot be
            raise BadPayload(f"{where}.startsAt", "expected an RFC 3339 time, got the zero time")
        alerts.append(
            Alert(
                status=status,
                labels=MappingProxyType(_str_map(a.get("labels"), f"{where}.labels")),
                annotations=MappingProxyType(
                    _str_map(a.get("annotations"), f"{where}.annotations")
                ),
                starts_at=starts,
                ends_at=_time(a.get("endsAt"), f"{where}.endsAt", optional=True),
                fingerprint=fp,
            )
        )
    return Payload(
        receiver=str(data.get("receiver", "")),
        status=str(data.get("status", "")),
        group_key=str(data.get("groupKey", "")),
        alerts=tuple(alerts),
        external_url=str(data.get("externalURL", "")),
        common_labels=_str_map(data.get("commonLabels"), "commonLabels"),
    )


def action_for(alert: Alert) -> Action | None:
    """The runbook action an alert asks for, or ``None``."""
    wanted = alert.labels.get(ACTION_LABEL, "").strip().lower()
    if wanted:
        if wanted == "none":
            return None
        try:
            return Action(wanted)
        except ValueError:
            return None
    return ALERT_ACTIONS.get(alert.name)


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """What happened to one alert (the webhook's JSON answer lists these)."""

    alert: str
    fingerprint: str
    status: str
    outcome: str  # job_created | job_exists | cancelled | ignored | no_certificate | refused
    note: str
    job_id: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "alertname": self.alert,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "outcome": self.outcome,
            "note": self.note,
            "job_id": self.job_id,
        }


#: Finds the inventory item an alert names: (ref, fingerprint) -> item.
Lookup = Callable[[str, str], InventoryItem | None]


class AlertIntake:
    """Turns webhook payloads into jobs (see the module docstring). ``lookup`` reads the
    inventory; ``chain_of`` returns the stored PEM of a certificate by fingerprint (what a
    revocation revokes)."""

    def __init__(
        self,
        remediation: Remediation,
        lookup: Lookup,
        *,
        chain_of: Callable[[str], str] | None = None,
    ) -> None:
        self.remediation = remediation
        self.lookup = lookup
        self.chain_of = chain_of

    async def handle(self, payload: Payload) -> list[AlertOutcome]:
        out: list[AlertOutcome] = []
        for alert in payload.alerts:
            try:
                if alert.status == "resolved":
                    out.append(await self._resolved(alert))
                else:
                    out.append(await self._firing(alert))
            except (JobError, ValueError) as e:
                out.append(self._outcome(alert, "refused", str(e)))
        for o in out:
            log.info(
                "alert %s (%s) %s: %s: %s", o.alert, o.fingerprint, o.status, o.outcome, o.note
            )
        return out

    def _outcome(
        self, alert: Alert, outcome: str, note: str, job: int | None = None
    ) -> AlertOutcome:
        return AlertOutcome(alert.name, alert.fingerprint, alert.status, outcome, note, job)

    async def _firing(self, alert: Alert) -> AlertOutcome:
        action = action_for(alert)
        if action is None:
            return self._outcome(alert, "ignored", "no runbook action for this alert")
        ref = alert.labels.get("ref", "")
        fp = alert.labels.get("fingerprint", "")
        item = await asyncio.to_thread(self.lookup, ref, fp)
        if item is None:
            what = ref or fp or "no ref or fingerprint label"
            return self._outcome(alert, "no_certificate", f"not in the inventory: {what}")
        cert = CertFacts.from_item(item)
        chain = ""
        if action == Action.REVOKE and self.chain_of is not None and cert.fingerprint:
            chain = await asyncio.to_thread(self.chain_of, cert.fingerprint)
        res = await self.remediation.request(
            action,
            cert,
            requester=REQUESTER,
            force=True,
            key=alert.key,
            chain_pem=chain,
        )
        if res.job is None:
            return self._outcome(alert, "refused", res.note)
        return self._outcome(
            alert, "job_created" if res.created else "job_exists", res.note, res.job.id
        )

    async def _resolved(self, alert: Alert) -> AlertOutcome:
        job = await asyncio.to_thread(self.remediation.jobs.find, alert.key)
        if job is None:
            return self._outcome(alert, "ignored", "no job was made for this alert")
        if job.state in {JobState.PENDING_APPROVAL, JobState.APPROVED}:
            job = await self.remediation.executor.cancel(
                job.id, REQUESTER, f"alert {alert.name} resolved"
            )
            return self._outcome(alert, "cancelled", f"job {job.id} cancelled", job.id)
        return self._outcome(alert, "job_exists", f"job {job.id} is {job.state}", job.id)


TokenSource = Callable[[], str | None]


def make_handler(
    intake: AlertIntake,
    token: TokenSource,
    *,
    wake: Callable[[], None] | None = None,
    on_alerts: Callable[[Payload], Awaitable[None]] | None = None,
) -> Callable[[web.Request], Any]:
    """The aiohttp handler for ``POST /hooks/alertmanager``.

    ``token`` returns the expected bearer token (read from a file or the environment each
    time, so a rotated token file takes effect without a restart); ``None`` means none is
    configured and the hook answers 503: it never runs unauthenticated. Answers: 401 without
    the right ``Authorization: Bearer``, 400 naming the bad field, 200 with what became of
    each alert. ``wake`` tells the job runner there is work.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        expected = token()
        if not expected:
            return web.json_response(
                {"error": "the webhook token is not configured (remediation.webhook)"},
                status=503,
            )
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), expected.encode()
        ):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="certpilot"'},
            )
        try:
            # A client that sends its headers and then trickles the body must not hold the
            # handler (the server's idle timeout only covers the request head).
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            return web.json_response(
                {"error": f"body: not received within {BODY_TIMEOUT:g} s"}, status=408
            )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return web.json_response({"error": "body: expected JSON"}, status=400)
        try:
            payload = parse_payload(data)
        except BadPayload as e:
            return web.json_response({"error": e.one_line()}, status=400)
        outcomes = await intake.handle(payload)
        if wake is not None and any(o.outcome == "job_created" for o in outcomes):
            wake()
        if on_alerts is not None:  # the Slack pager: in the background, never delaying 200
            task = asyncio.create_task(_quietly(on_alerts(payload)))
            _background.add(task)
            task.add_done_callback(_background.discard)
        return web.json_response(summarize(outcomes))

    return handler


_background: set[asyncio.Task[None]] = set()


async def _quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("paging alerts failed")


def summarize(outcomes: Sequence[AlertOutcome]) -> dict[str, object]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    return {"alerts": [o.to_dict() for o in outcomes], "counts": counts}


__all__ = [
    "ALERT_ACTIONS",
    "Alert",
    "AlertIntake",
    "AlertOutcome",
    "BadPayload",
    "Payload",
    "TokenSource",
    "action_for",
    "make_handler",
    "parse_payload",
    "summarize",
]
