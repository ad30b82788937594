"""The Alertmanager webhook intake (remediator/webhook.py): payload parsing, the alert -> action
table, what becomes of each alert against a real job store and audit log, and the HTTP handler.

The issuer, deploy target and prober are fakes in the manner of tests/unit/test_jobs.py: a
target "serves" what it was last deployed with and the prober reports exactly that, so a job
the webhook made can run to ``done`` in milliseconds. The job store and the audit log are the
real ones on a temporary SQLite file.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from certpilot.domain.clock import FixedClock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import EndpointTarget, Observation
from certpilot.domain.remedy import (
    DeployReceipt,
    IssuedCertificate,
    IssueRequest,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.x509 import CertInfo, parse_pem_bundle
from certpilot.localca import LocalCA
from certpilot.store import AuditLog, JobStore
from remediator.executor import Executor
from remediator.jobs import alert_key
from remediator.policy import (
    Action,
    Match,
    Mode,
    Policy,
    Rule,
)
from remediator.service import Remediation
from remediator.webhook import (
    ALERT_ACTIONS,
    MAX_ALERTS,
    Alert,
    AlertIntake,
    AlertOutcome,
    BadPayload,
    action_for,
    make_handler,
    parse_payload,
)

T0 = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
STARTS = "2026-11-28T03:40:01.123456789Z"
STARTS_AT = datetime(2026, 11, 28, 3, 40, 1, 123456, tzinfo=UTC)
FP = "5f1a9c3e2b7d4a60"  # Alertmanager's alert fingerprint: 16 hex digits
WWW = "www.example.test"
FROZEN = "www.frozen.test"
REF = f"tls://{WWW}:443#{WWW}"
FROZEN_REF = f"tls://{FROZEN}:443#{FROZEN}"
TOKEN = "am-webhook-9f8e7d6c5b4a"


# ----------------------------------------------------------------------------- payloads


def am_alert(
    alertname: str = "CertificateExpiringSoon",
    *,
    status: str = "firing",
    fingerprint: str = FP,
    starts: str = STARTS,
    ends: str = "0001-01-01T00:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 posts it (labels as certpilot's symptom rules set)."""
    all_labels = {
        "alertname": alertname,
        "severity": "page",
        "source": "tls",
        "target": f"{WWW}:443",
        "subject_CN": WWW,
        "issuer_CN": "Test webhook CA",
        "owner": "web-team",
        "instance": "127.0.0.1:9795",
        "job": "certpilot",
        "ref": REF,
    }
    all_labels.update(labels)
    return {
        "status": status,
        "labels": {k: v for k, v in all_labels.items() if v != ""},
        "annotations": {
            "summary": f"Certificate {WWW} at {WWW}:443 expires in 6d 23h",
            "description": f"{REF} (issuer Test webhook CA, source tls) expires in 6d 23h "
            "and has not been renewed. Renew and deploy now, or an outage follows.",
            "runbook_url": "https://github.com/certpilot/certpilot/blob/main/docs/runbooks.md"
            "#expiring-soon",
            "dashboard_url": "http://grafana.local/d/certpilot-oncall",
        },
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus.local:9090/graph?g0.expr=certpilot_certificate_"
        "expires_in_seconds+%3E+0&g0.tab=1",
        "fingerprint": fingerprint,
    }


def am_payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """The whole webhook body (version 4), grouped as alerts/alertmanager.yml groups."""
    firing = any(a["status"] == "firing" for a in alerts)
    common = dict(alerts[0]["labels"]) if alerts else {}
    for a in alerts[1:]:
        common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
    return {
        "receiver": "certpilot-webhook",
        "status": "firing" if firing else "resolved",
        "alerts": list(alerts),
        "groupLabels": {"alertname": common.get("alertname", "")},
        "commonLabels": common,
        "commonAnnotations": {"dashboard_url": "http://grafana.local/d/certpilot-oncall"},
        "externalURL": "http://alertmanager.local:9093",
        "version": "4",
        "groupKey": '{}/{severity=~"page|ticket"}:{alertname="CertificateExpiringSoon"}',
        "truncatedAlerts": 0,
    }


def parsed_alert(**kw: Any) -> Alert:
    return parse_payload(am_payload(am_alert(**kw))).alerts[0]


# ----------------------------------------------------------------------------- parse_payload


def test_a_real_alertmanager_payload_parses() -> None:
    body = am_payload(
        am_alert(),
        am_alert(
            "CertificateExpired",
            status="resolved",
            fingerprint="0a1b2c3d4e5f6071",
            starts="2026-11-27T22:00:00.5Z",
            ends="2026-11-28T03:55:01.987654321Z",
        ),
    )
    # It arrives as JSON: parse what the wire carries.
    p = parse_payload(json.loads(json.dumps(body)))
    assert (p.receiver, p.status, p.external_url) == (
        "certpilot-webhook",
        "firing",
        "http://alertmanager.local:9093",
    )
    assert p.group_key.startswith("{}/")
    assert p.common_labels["owner"] == "web-team"
    first, second = p.alerts
    assert first.name == "CertificateExpiringSoon" and first.status == "firing"
    assert first.labels["ref"] == REF and first.fingerprint == FP
    assert first.annotations["runbook_url"].endswith("#expiring-soon")
    # Nine fractional digits (Go's RFC3339Nano): read to the microsecond, in UTC.
    assert first.starts_at == STARTS_AT and first.starts_at.tzinfo is not None
    assert first.ends_at is None  # Go's zero time means "not set"
    assert first.key == alert_key(FP, STARTS_AT) == f"alert:{FP}:2026-11-28T03:40:01Z"
    assert second.status == "resolved"
    assert second.starts_at == datetime(2026, 11, 27, 22, 0, 0, 500000, tzinfo=UTC)
    assert second.ends_at == datetime(2026, 11, 28, 3, 55, 1, 987654, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T03:40:01Z", datetime(2026, 11, 28, 3, 40, 1, tzinfo=UTC)),
        ("2026-11-28T03:40:01.1Z", datetime(2026, 11, 28, 3, 40, 1, 100000, tzinfo=UTC)),
        # Alertmanager writes its own zone when TZ is set: fractions and an offset together.
        (
            "2026-11-28T04:40:01.123456789+01:00",
            datetime(2026, 11, 28, 3, 40, 1, 123456, tzinfo=UTC),
        ),
        ("2026-11-27T22:10:01.000000001-05:30", datetime(2026, 11, 28, 3, 40, 1, tzinfo=UTC)),
    ],
)
def test_times_in_every_shape_go_writes_parse_to_utc(text: str, expected: datetime) -> None:
    a = parsed_alert(starts=text, ends=text)
    assert a.starts_at == expected and a.ends_at == expected
    assert a.starts_at.utcoffset() == timedelta(0)


def _mutate(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    body = am_payload(am_alert())
    change(body)
    return body


def _set_alert(key: str, value: object) -> Callable[[dict[str, Any]], object]:
    return lambda b: b["alerts"][0].__setitem__(key, value)


def _del_alert(key: str) -> Callable[[dict[str, Any]], object]:
    return lambda b: b["alerts"][0].pop(key)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([am_payload(am_alert())], "$"),
        ("version=4", "$"),
        (None, "$"),
        (_mutate(lambda b: b.__setitem__("version", "3")), "version"),
        (_mutate(lambda b: b.__setitem__("version", 4)), "version"),
        (_mutate(lambda b: b.pop("version")), "version"),
        (_mutate(lambda b: b.__setitem__("alerts", {"0": {}})), "alerts"),
        (_mutate(lambda b: b.pop("alerts")), "alerts"),
        (_mutate(lambda b: b["alerts"].__setitem__(0, "firing")), "alerts[0]"),
        (_mutate(_set_alert("status", "pending")), "alerts[0].status"),
        (_mutate(_del_alert("status")), "alerts[0].status"),
        (_mutate(_del_alert("fingerprint")), "alerts[0].fingerprint"),
        (_mutate(_set_alert("fingerprint", "")), "alerts[0].fingerprint"),
        (_mutate(_set_alert("fingerprint", 1234)), "alerts[0].fingerprint"),
        (_mutate(_set_alert("fingerprint", "f" * 65)), "alerts[0].fingerprint"),
        (_mutate(_set_alert("labels", {"alertname": "X", "port": 443})), "alerts[0].labels"),
        (_mutate(_set_alert("labels", ["alertname"])), "alerts[0].labels"),
        (_mutate(_set_alert("annotations", {"summary": None})), "alerts[0].annotations"),
        (_mutate(_set_alert("startsAt", "yesterday")), "alerts[0].startsAt"),
        (_mutate(_set_alert("startsAt", "2026-13-28T03:40:01Z")), "alerts[0].startsAt"),
        (_mutate(_set_alert("startsAt", "2026-11-28T03:40:01")), "alerts[0].startsAt"),
        (_mutate(_set_alert("startsAt", 1764301201)), "alerts[0].startsAt"),
        (_mutate(_del_alert("startsAt")), "alerts[0].startsAt"),
        (_mutate(_set_alert("endsAt", "soon")), "alerts[0].endsAt"),
        (_mutate(_set_alert("endsAt", 12345)), "alerts[0].endsAt"),
        (_mutate(lambda b: b.__setitem__("commonLabels", {"a": 1})), "commonLabels"),
    ],
)
def test_every_malformed_shape_names_its_field(body: object, field: str) -> None:
    with pytest.raises(BadPayload) as caught:
        parse_payload(body)
    assert caught.value.field == field
    assert caught.value.one_line().startswith(f"{field}: ")
    assert "\n" not in caught.value.one_line()


def test_more_alerts_than_the_limit_are_refused_as_a_whole() -> None:
    one = am_alert()
    at_limit = am_payload(*[dict(one, fingerprint=f"{i:016x}") for i in range(MAX_ALERTS)])
    assert len(parse_payload(at_limit).alerts) == MAX_ALERTS
    over = copy.deepcopy(at_limit)
    over["alerts"].append(dict(one))
    with pytest.raises(BadPayload, match=rf"alerts: {MAX_ALERTS + 1} alerts in one message"):
        parse_payload(over)


def test_a_later_bad_alert_is_named_by_its_index() -> None:
    body = am_payload(am_alert(), am_alert(fingerprint="0a1b2c3d4e5f6071"))
    body["alerts"][1]["status"] = "unknown"
    with pytest.raises(BadPayload) as caught:
        parse_payload(body)
    assert caught.value.field == "alerts[1].status"


# ----------------------------------------------------------------------------- action_for


@pytest.mark.parametrize(
    ("alertname", "action"),
    [
        ("CertificateExpiringSoon", Action.RENEW),
        ("CertificateExpiringRelative", Action.RENEW),
        ("CertificateExpired", Action.RENEW),
        ("CertificateRevoked", Action.RENEW),
        ("CertificateNotDeployed", Action.REDEPLOY),
        # A wrong chain needs a person; SLO burns and scanner health are left to people.
        ("CertificateChainProblem", None),
        ("CertpilotValidRatioBudgetBurn", None),
        ("ScannerSourceDown", None),
        ("Watchdog", None),
    ],
)
def test_action_by_alertname(alertname: str, action: Action | None) -> None:
    assert action_for(parsed_alert(alertname=alertname)) == action
    assert ALERT_ACTIONS.get(alertname) == action


@pytest.mark.parametrize(
    ("label", "action"),
    [
        ("redeploy", Action.REDEPLOY),
        (" Renew ", Action.RENEW),
        ("REVOKE", Action.REVOKE),
        ("none", None),  # a rule can opt out of certpilot's own table
        ("reboot", None),
        ("rm -rf /", None),
    ],
)
def test_the_certpilot_action_label_overrides_the_table(label: str, action: Action | None) -> None:
    alert = parsed_alert(alertname="CertificateExpiringSoon", certpilot_action=label)
    assert action_for(alert) == action
    custom = parsed_alert(alertname="HAProxyCertMismatch", certpilot_action=label)
    assert action_for(custom) == action


# ----------------------------------------------------------------------------- fakes


def _info(chain_pem: bytes) -> CertInfo:
    leaf = parse_pem_bundle(chain_pem)[0]
    assert not isinstance(leaf, Exception)
    return leaf.info


class FakeIssuer:
    """Issues from a real in-memory CA, instantly."""

    def __init__(self, name: str, ca: LocalCA, clock: FixedClock) -> None:
        self.name = name
        self.ca = ca
        self.clock = clock
        self.issued: list[IssuedCertificate] = []

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        i = self.ca.issue(list(request.names), self.clock.now())
        info = _info(i.chain_pem())
        cert = IssuedCertificate(
            chain_pem=i.chain_pem(),
            key_pem=i.key_pem(),
            serial=info.serial,
            fingerprint_sha256=info.fingerprint_sha256,
            issuer_name=self.name,
        )
        self.issued.append(cert)
        return cert

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        raise AssertionError("nothing is revoked here")

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None


@dataclass
class FakeTarget:
    """Serves one certificate per endpoint; a deploy changes what every endpoint serves."""

    name: str
    hosts: tuple[str, ...]
    serving: dict[str, CertInfo]
    deployed: list[str] = field(default_factory=list)

    def endpoints(self) -> Sequence[EndpointTarget]:
        return tuple(EndpointTarget(h, 443) for h in self.hosts)

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        info = _info(cert.chain_pem)
        for ep in self.endpoints():
            self.serving[ep.name] = info
        self.deployed.append(info.serial)
        return DeployReceipt(self.name, info.serial, {})

    async def rollback(self, receipt: DeployReceipt) -> None:
        raise AssertionError("nothing is rolled back here")


class FakeProber:
    def __init__(self, serving: Mapping[str, CertInfo]) -> None:
        self.serving = serving

    async def probe(self, targets: Sequence[EndpointTarget]) -> list[Observation]:
        return [
            Observation(
                source="tls",
                ref=t.ref,
                target=t.name,
                observed_at=T0,
                leaf=self.serving.get(t.name),
            )
            for t in targets
        ]


def inventory_item(ca: LocalCA, ref: str, name: str, **labels: str) -> InventoryItem:
    """What a scan stored for ``ref``: a 90-day certificate with 6 days left."""
    issued = ca.issue([name], T0 - timedelta(days=84))
    info = _info(issued.chain_pem())
    return InventoryItem(
        ref=ref,
        source="tls",
        target=ref.removeprefix("tls://").partition("#")[0],
        fingerprint_sha256=info.fingerprint_sha256,
        serial=info.serial,
        subject=f"CN={name}",
        subject_cn=name,
        issuer="CN=Test webhook CA",
        issuer_cn="Test webhook CA",
        sans=(name,),
        not_before=info.not_before,
        not_after=info.not_after,
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=(),
        error=None,
        first_seen=T0 - timedelta(days=84),
        last_scanned=T0,
        labels=labels,
    )


@dataclass
class World:
    clock: FixedClock
    jobs: JobStore
    audit: AuditLog
    issuer: FakeIssuer
    web: FakeTarget
    executor: Executor
    remediation: Remediation
    intake: AlertIntake
    items: dict[str, InventoryItem]
    lookups: list[tuple[str, str]]

    async def send(self, *alerts: dict[str, Any]) -> list[AlertOutcome]:
        return await self.intake.handle(parse_payload(am_payload(*alerts)))


#: Renewals of *.frozen.test are never automatic (a change freeze).
POLICY = Policy(
    rules=(
        Rule(
            name="change-freeze",
            match=Match(names=("*.frozen.test",)),
            actions={Action.RENEW: Mode.DENY, Action.REDEPLOY: Mode.DENY},
        ),
    )
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(T0)
    ca = LocalCA("Test webhook CA", T0 - timedelta(days=365))
    serving: dict[str, CertInfo] = {}
    items = {
        REF: inventory_item(ca, REF, WWW, owner="web-team"),
        FROZEN_REF: inventory_item(ca, FROZEN_REF, FROZEN),
    }
    for it in items.values():
        serving[it.target] = _info(ca.issue([it.subject_cn or ""], T0).chain_pem())
    web = FakeTarget("web", (WWW, FROZEN), serving)
    other = FakeTarget("other", ("other.test",), serving)
    issuer = FakeIssuer("local", ca, clock)
    url = f"sqlite:///{tmp_path}/db"
    lookups: list[tuple[str, str]] = []

    def lookup(ref: str, fingerprint: str) -> InventoryItem | None:
        lookups.append((ref, fingerprint))
        if ref in items:
            return items[ref]
        return next((i for i in items.values() if i.fingerprint_sha256 == fingerprint), None)

    with JobStore.open(url) as jobs, AuditLog.open(url) as audit:
        executor = Executor(
            jobs,
            audit,
            {"local": issuer},
            {"web": web, "other": other},
            FakeProber(serving),
            clock,
            verify_timeout=1.0,
            verify_hold=0.0,
            verify_interval=0.0,
            instance="test-host",
            rng=random.Random(1),
        )
        remediation = Remediation(executor, POLICY, [other, web], default_issuer="local")
        intake = AlertIntake(remediation, lookup)
        yield World(clock, jobs, audit, issuer, web, executor, remediation, intake, items, lookups)


# ----------------------------------------------------------------------------- AlertIntake


async def test_a_firing_expiring_alert_creates_an_approved_job(world: World) -> None:
    [out] = await world.send(am_alert())
    assert (out.outcome, out.alert, out.fingerprint, out.status) == (
        "job_created",
        "CertificateExpiringSoon",
        FP,
        "firing",
    )
    assert out.job_id is not None
    job = world.jobs.get(out.job_id)
    assert job.state == "approved" and job.action == "renew"
    assert job.requester == "alertmanager"
    assert job.targets == ("web",)  # the target serving that ref, not "other"
    assert job.key == f"alert:{FP}:2026-11-28T03:40:01Z"
    assert job.ref == REF and job.names == (WWW,) and job.issuer == "local"
    assert job.fingerprint == world.items[REF].fingerprint_sha256
    assert world.lookups == [(REF, "")]
    created = [e for e in world.audit.entries() if e.action == "renew"]
    assert [(e.actor, e.result, e.detail["key"]) for e in created] == [
        ("alertmanager", "allowed", job.key)
    ]
    # The job runs to done like any other.
    ran = await world.executor.run(job.id)
    assert ran.job.state == "done" and world.web.deployed == [ran.job.new_serial]


async def test_a_redelivery_finds_the_job_it_made(world: World) -> None:
    [first] = await world.send(am_alert())
    [again] = await world.send(am_alert())  # repeat_interval, or a group change
    assert again.outcome == "job_exists" and again.job_id == first.job_id
    assert len(world.jobs.list()) == 1


async def test_a_new_firing_of_the_same_alert_gets_no_second_job_while_one_is_open(
    world: World,
) -> None:
    [first] = await world.send(am_alert())
    world.clock.advance(timedelta(hours=1))
    [refire] = await world.send(am_alert(starts="2026-11-28T04:45:00.000000001Z"))
    assert refire.outcome == "job_exists" and refire.job_id == first.job_id
    assert "already open" in refire.note
    assert len(world.jobs.list()) == 1


async def test_resolved_cancels_a_job_that_has_not_run(world: World) -> None:
    [first] = await world.send(am_alert())
    assert first.job_id is not None
    world.clock.advance(timedelta(minutes=3))
    [out] = await world.send(
        am_alert(status="resolved", ends="2026-11-28T04:03:01.5Z"),
    )
    assert (out.outcome, out.status, out.job_id) == ("cancelled", "resolved", first.job_id)
    job = world.jobs.get(first.job_id)
    assert job.state == "failed"
    assert "resolved" in job.last_error and "alertmanager" in job.last_error
    assert world.issuer.issued == []  # never ran
    # The certificate is free again: the next firing makes a new job.
    [refire] = await world.send(am_alert(starts="2026-11-28T05:00:00Z"))
    assert refire.outcome == "job_created" and refire.job_id != first.job_id


async def test_resolved_leaves_a_finished_job_alone(world: World) -> None:
    [first] = await world.send(am_alert())
    assert first.job_id is not None
    done = await world.executor.run(first.job_id)
    assert done.job.state == "done"
    [out] = await world.send(am_alert(status="resolved", ends="2026-11-28T04:10:00Z"))
    assert (out.outcome, out.job_id) == ("job_exists", first.job_id)
    assert "done" in out.note
    assert world.jobs.get(first.job_id).state == "done"


async def test_resolved_without_a_job_is_acknowledged(world: World) -> None:
    [out] = await world.send(am_alert(status="resolved", ends="2026-11-28T04:10:00Z"))
    assert (out.outcome, out.job_id) == ("ignored", None)
    assert world.jobs.list() == []


async def test_an_alert_for_a_certificate_not_in_the_inventory(world: World) -> None:
    gone = "tls://gone.example.test:443#gone.example.test"
    [by_ref, no_labels] = await world.send(
        am_alert(ref=gone),
        am_alert(fingerprint="0a1b2c3d4e5f6071", ref=""),
    )
    assert by_ref.outcome == "no_certificate" and gone in by_ref.note
    assert no_labels.outcome == "no_certificate"
    assert "no ref or fingerprint label" in no_labels.note
    assert world.jobs.list() == []


async def test_a_fingerprint_label_finds_the_certificate_without_a_ref(world: World) -> None:
    fp = world.items[REF].fingerprint_sha256 or ""
    alert = am_alert(ref="")
    alert["labels"]["fingerprint"] = fp
    [found] = await world.send(alert)
    assert found.outcome == "job_created"
    assert found.job_id is not None and world.jobs.get(found.job_id).targets == ("web",)
    assert world.lookups == [("", fp)]


async def test_slo_burn_alerts_are_left_to_people(world: World) -> None:
    burn = am_alert(
        "CertpilotValidRatioBudgetBurn",
        ref="",
        sloth_id="certpilot-cert-valid-ratio",
        sloth_service="certpilot",
        sloth_slo="cert-valid-ratio",
        sloth_severity="page",
    )
    [out] = await world.send(burn)
    assert (out.outcome, out.job_id) == ("ignored", None)
    assert world.lookups == []  # not even looked up
    assert world.jobs.list() == []


async def test_a_denying_rule_refuses_and_audits(world: World) -> None:
    [out] = await world.send(am_alert(ref=FROZEN_REF, subject_CN=FROZEN))
    assert (out.outcome, out.job_id) == ("refused", None)
    assert "deny" in out.note and "change-freeze" in out.note
    assert world.jobs.list() == []
    [decision] = [e for e in world.audit.entries() if e.action == "policy_decision"]
    assert (decision.actor, decision.result, decision.rule) == (
        "alertmanager",
        "denied",
        "change-freeze",
    )
    assert decision.subject == FROZEN and decision.detail["action"] == "renew"


async def test_one_message_with_mixed_alerts_and_an_intact_audit_chain(world: World) -> None:
    outcomes = await world.send(
        am_alert(),
        am_alert(ref=FROZEN_REF, fingerprint="0a1b2c3d4e5f6071"),
        am_alert("ScannerSourceDown", fingerprint="1a1b2c3d4e5f6071", ref=""),
        am_alert(
            "CertificateExpiringSoon", fingerprint="2a1b2c3d4e5f6071", certpilot_action="none"
        ),
    )
    assert [o.outcome for o in outcomes] == ["job_created", "refused", "ignored", "ignored"]
    [job] = world.jobs.list()
    await world.executor.run(job.id)
    await world.send(am_alert(status="resolved", ends="2026-11-28T04:10:00Z"))
    verdict = world.audit.verify()
    assert verdict.ok, verdict


# ----------------------------------------------------------------------------- make_handler


@dataclass
class Hook:
    client: TestClient[web.Request, web.Application]
    world: World
    token: list[str | None]
    wakes: list[int]

    async def post(
        self, body: bytes | object, *, auth: str | None = f"Bearer {TOKEN}"
    ) -> tuple[int, dict[str, Any], str, Mapping[str, str]]:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.client.post("/hooks/alertmanager", data=data, headers=headers)
        text = await resp.text()
        assert TOKEN not in text  # never echoed, whatever the answer
        return resp.status, json.loads(text), text, resp.headers


@pytest.fixture
async def hook(world: World) -> AsyncIterator[Hook]:
    token: list[str | None] = [TOKEN]
    wakes: list[int] = []
    app = web.Application()
    app.router.add_post(
        "/hooks/alertmanager",
        make_handler(world.intake, lambda: token[0], wake=lambda: wakes.append(1)),
    )
    async with TestClient(TestServer(app)) as client:
        yield Hook(client, world, token, wakes)


async def test_without_a_configured_token_the_hook_is_closed(hook: Hook) -> None:
    hook.token[0] = None
    status, body, _, _ = await hook.post(am_payload(am_alert()))
    assert status == 503 and "not configured" in body["error"]
    hook.token[0] = ""
    status, _, _, _ = await hook.post(am_payload(am_alert()), auth=None)
    assert status == 503
    assert hook.world.jobs.list() == [] and hook.wakes == []


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        TOKEN,  # no scheme
        f"Basic {TOKEN}",
        "Bearer",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer tøken",
    ],
)
async def test_a_missing_or_wrong_bearer_token_is_401(hook: Hook, auth: str | None) -> None:
    status, body, _, headers = await hook.post(am_payload(am_alert()), auth=auth)
    assert status == 401 and body == {"error": "unauthorized"}
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert hook.world.jobs.list() == [] and hook.wakes == []


async def test_the_right_token_gets_counts_and_wakes_the_runner_once(hook: Hook) -> None:
    status, body, _, _ = await hook.post(
        am_payload(am_alert(), am_alert("Watchdog", fingerprint="0a1b2c3d4e5f6071", ref=""))
    )
    assert status == 200
    assert body["counts"] == {"job_created": 1, "ignored": 1}
    created, ignored = body["alerts"]
    assert created["alertname"] == "CertificateExpiringSoon" and created["fingerprint"] == FP
    assert created["status"] == "firing" and isinstance(created["job_id"], int)
    assert ignored == {
        "alertname": "Watchdog",
        "fingerprint": "0a1b2c3d4e5f6071",
        "status": "firing",
        "outcome": "ignored",
        "note": "no runbook action for this alert",
        "job_id": None,
    }
    assert hook.wakes == [1]
    # A re-delivery finds the job: nothing new to run, no wake.
    status, body, _, _ = await hook.post(am_payload(am_alert()), auth=f"bearer  {TOKEN} ")
    assert status == 200 and body["counts"] == {"job_exists": 1}
    assert hook.wakes == [1]


async def test_no_wake_when_nothing_was_created(hook: Hook) -> None:
    status, body, _, _ = await hook.post(am_payload(am_alert(ref=FROZEN_REF)))
    assert status == 200 and body["counts"] == {"refused": 1}
    status, body, _, _ = await hook.post(am_payload())
    assert status == 200 and body == {"alerts": [], "counts": {}}
    assert hook.wakes == []


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"not json", b"\xff\xfe\x00garbage", b'{"version": "4", "alerts": [}']
)
async def test_a_body_that_is_not_json_is_a_one_line_400(hook: Hook, raw: bytes) -> None:
    status, body, text, _ = await hook.post(raw)
    assert status == 400 and body == {"error": "body: expected JSON"}
    assert "\n" not in text.strip()


async def test_a_bad_payload_is_a_400_naming_the_field(hook: Hook) -> None:
    bad = am_payload(am_alert())
    bad["alerts"][0]["labels"]["port"] = 443
    status, body, text, _ = await hook.post(bad)
    assert status == 400
    assert body["error"].startswith("alerts[0].labels: ")
    assert "\n" not in text.strip()
    old = am_payload(am_alert())
    old["version"] = "3"
    status, body, _, _ = await hook.post(old)
    assert status == 400 and body["error"] == "version: expected \"4\", got '3'"
    assert hook.world.jobs.list() == [] and hook.wakes == []


async def test_a_body_trickled_after_the_headers_is_cut_off(
    hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers in, then the body never comes: 408 after the body timeout, nothing created."""
    import remediator.webhook as webhook

    monkeypatch.setattr(webhook, "BODY_TIMEOUT", 0.3)
    host, port = hook.client.server.host, hook.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"receiver": '
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")
    assert hook.world.jobs.list() == [] and hook.wakes == []
