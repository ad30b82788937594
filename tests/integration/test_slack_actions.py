"""The Slack app's commands and buttons against the real Bolt app, in-process.

Slack plays its part through signed requests (tests/support/slack_signing.py) posted to
``bot.slack_app.aiohttp_handler`` on an aiohttp test server; the app talks back to a loopback
fake of Slack's Web API (tests/support/slack_fake.py). Behind the app sits a real
:class:`~remediator.service.Remediation` (policy, executor, SQLite job store and audit chain)
with a fake CA (the embedded :class:`~certpilot.localca.LocalCA` plus a revocation log), a
target that serves whatever it was last deployed with, and a prober that reports exactly that
(as tests/unit/test_remediation_service.py does). The pager is the real one, posting to the
fake. The Silence button creates a silence in a real Alertmanager on loopback.

Handlers run after ``ack()`` has answered, so every assertion on what a click did polls with a
deadline (the fake's ``wait_for``, or :func:`eventually` for the stores).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from slack_sdk.web.async_client import AsyncWebClient

from bot.model import SignalSource
from bot.pager import Pager, WebPoster
from bot.signals import inventory_signals
from bot.slack_app import REASONS, BotContext, aiohttp_handler, build_app
from certpilot.domain.audit import AuditEntry
from certpilot.domain.clock import Clock, SystemClock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import EndpointTarget
from certpilot.domain.problems import ProblemCode
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.x509 import CertInfo
from certpilot.localca import LocalCA
from certpilot.paging import _silencer
from certpilot.settings import SlackPermissions, SlackSettings
from certpilot.store import AuditLog, Job, JobStore
from certpilot.store.slack import SlackStore, StoredPage
from remediator.executor import Executor
from remediator.policy import Policy, Rule
from remediator.service import Remediation
from tests.support.remediation_fakes import ServingProber, ServingTarget, leaf_info
from tests.support.services import free_port, require_binary
from tests.support.slack_fake import DEFAULT_TOKEN, FakeSlack
from tests.support.slack_signing import (
    block_action_body,
    signed_headers,
    slash_command_body,
    view_submission_body,
)

SECRET = "0b5f4c1d9e8a7f6e5d4c3b2a19081726"
CHANNEL = "#certs"
SLACK_CHANNEL_ID = "C0CERTS01"

WWW = "www.shop.test"  # expiring in 5 days: paged
API = "api.shop.test"  # healthy, 60 days left

REQUESTER = "U0REQUEST1"  # may renew, revoke, silence; listed as an approver too
APPROVER = "U0APPROVE1"  # a second person among the approvers
MEMBER = "U0MEMBER01"  # may renew through the S0OPS user group
STRANGER = "U0STRANGER"  # may do nothing but acknowledge
OPS_GROUP = "S0OPS"

T = TypeVar("T")


def ref_of(host: str) -> str:
    return EndpointTarget(host, 443).ref


# ----------------------------------------------------------------------------------- fakes


class RecordingIssuer:
    """The local CA as an issuer; revocations are recorded (chain, reason)."""

    name = "local"

    def __init__(self, ca: LocalCA, clock: Clock) -> None:
        self.ca = ca
        self.clock = clock
        self.issued: list[CertInfo] = []
        self.revoked: list[tuple[bytes, RevocationReason]] = []

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        i = self.ca.issue(list(request.names), self.clock.now())
        info = leaf_info(i.chain_pem())
        self.issued.append(info)
        return IssuedCertificate(
            chain_pem=i.chain_pem(),
            key_pem=i.key_pem(),
            serial=info.serial,
            fingerprint_sha256=info.fingerprint_sha256,
            issuer_name=self.name,
        )

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        self.revoked.append((chain_pem, reason))

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None


def inventory_item(info: CertInfo, host: str, problems: tuple[ProblemCode, ...]) -> InventoryItem:
    ref = ref_of(host)
    return InventoryItem(
        ref=ref,
        source="tls",
        target=ref,
        fingerprint_sha256=info.fingerprint_sha256,
        serial=info.serial,
        subject=info.subject,
        subject_cn=info.subject_cn,
        issuer=info.issuer,
        issuer_cn=info.issuer_cn,
        sans=info.sans,
        not_before=info.not_before,
        not_after=info.not_after,
        key_type=info.key_type,
        key_bits=info.key_bits,
        signature_algorithm=info.signature_algorithm,
        problems=problems,
        error=None,
        first_seen=info.not_before,
        last_scanned=datetime.now(UTC),
        labels={"owner": "shop"},
    )


SLO_ROWS: list[dict[str, Any]] = [
    {
        "slo": "renewal-success",
        "objective": 99.0,
        "budget_remaining_ratio": 0.42,
        "windows": [{"window": "5m", "burn_rate": 0.5}, {"window": "1h", "burn_rate": 0.25}],
        "alerts": [{"severity": "page", "firing": False}],
        "firing_severity": None,
    },
    {
        "slo": "serving-valid",
        "objective": 99.9,
        "budget_remaining_ratio": 0.0,
        "windows": [{"window": "5m", "burn_rate": 20.0}, {"window": "1h", "burn_rate": 15.0}],
        "alerts": [{"severity": "page", "firing": True}],
        "firing_severity": "page",
    },
]


# ----------------------------------------------------------------------------------- world


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 10.0
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class World:
    slack: FakeSlack
    http: TestClient[web.Request, web.Application]
    ctx: BotContext
    remediation: Remediation
    jobs: JobStore
    audit: AuditLog
    store: SlackStore
    pager: Pager
    issuer: RecordingIssuer
    serving: dict[str, CertInfo]
    items: list[InventoryItem]
    www: CertInfo
    woken: list[float]

    # -- requests as Slack sends them --------------------------------------------------

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        resp = await self.http.post(
            "/slack/events", data=body, headers=headers or signed_headers(SECRET, body)
        )
        return resp.status, await resp.text()

    async def command(self, text: str, user: str) -> dict[str, Any]:
        """``/certs TEXT`` typed by ``user``: the answer Bolt acked with (ephemeral)."""
        body = slash_command_body(text=text, user_id=user, channel_id=SLACK_CHANNEL_ID)
        status, raw = await self.post(body)
        assert status == 200, raw
        answer: dict[str, Any] = json.loads(raw)
        assert answer["response_type"] == "ephemeral"
        assert answer["blocks"] and answer["text"]
        return answer

    async def click(self, action_id: str, value: dict[str, Any], user: str) -> None:
        body = block_action_body(
            action_id, json.dumps(value), user_id=user, channel_id=SLACK_CHANNEL_ID
        )
        status, raw = await self.post(body)
        assert status == 200, raw

    async def submit_revoke(self, view: dict[str, Any], reason: str, user: str) -> None:
        """Submit the revocation modal ``view`` (as views.open opened it) with ``reason``."""
        values: dict[str, dict[str, str | dict[str, Any]]] = {
            "reason": {
                "reason": {
                    "type": "static_select",
                    "selected_option": {
                        "text": {"type": "plain_text", "text": reason},
                        "value": reason,
                    },
                }
            },
            "note": {"note": "key found in a public repository"},
        }
        body = view_submission_body(
            view["callback_id"], view["private_metadata"], values, user_id=user
        )
        status, raw = await self.post(body)
        assert status == 200, raw

    # -- the page ----------------------------------------------------------------------

    async def page(self) -> tuple[str, str]:
        """Page the inventory's problems; ``(page key, message ts)`` of the one page."""
        now = self.ctx.clock.now()
        problems = [it for it in self.items if it.problems]
        await self.pager.sync({SignalSource.INVENTORY: inventory_signals(problems, now)})
        (msg,) = self.slack.messages(CHANNEL)
        button = _button(msg, "certpilot_ack")
        assert button is not None
        key = str(json.loads(button["value"])["page"])
        return key, str(msg["ts"])

    def row(self, key: str) -> StoredPage:
        row = self.store.get(key)
        assert row is not None
        return row

    def thread_text(self, ts: str) -> str:
        return json.dumps(self.slack.thread(CHANNEL, ts))

    async def thread_says(self, ts: str, text: str, timeout: float = 10.0) -> None:
        async def probe() -> bool:
            return text in self.thread_text(ts)

        await eventually(probe, f"{text!r} in the thread", timeout)

    async def ephemeral_to(self, user: str, n: int = 1) -> str:
        """The ``n``-th ephemeral message to ``user`` (waits for it)."""
        calls = await self.slack.wait_for(
            "chat.postEphemeral", n, predicate=lambda c: c.params.get("user") == user
        )
        return str(calls[n - 1].params.get("text"))

    async def job(self, job_id: int, state: str | None = None) -> Job:
        async def probe() -> Job | None:
            job = await asyncio.to_thread(self.jobs.get, job_id)
            return job if state is None or job.state == state else None

        return await eventually(probe, f"job {job_id} in state {state}")

    def entries(self, actor: str | None = None) -> list[AuditEntry]:
        return [e for e in self.audit.entries() if actor is None or e.actor == actor]

    async def audited(self, actor: str, action: str, result: str | None = None) -> list[AuditEntry]:
        async def probe() -> list[AuditEntry]:
            return [
                e
                for e in await asyncio.to_thread(self.entries, actor)
                if e.action == action and (result is None or e.result == result)
            ]

        return await eventually(probe, f"audit entry {actor} {action} {result}")


def _button(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    for block in message.get("blocks") or []:
        for el in block.get("elements") or []:
            if el.get("action_id") == action_id:
                return dict(el)
    return None


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = SystemClock()
    now = clock.now()
    ca = LocalCA("Shop Internal CA", now - timedelta(days=365))
    www_cert = ca.issue([WWW], now, not_before=now - timedelta(days=85), lifetime=timedelta(90))
    api_cert = ca.issue([API], now, not_before=now - timedelta(days=30), lifetime=timedelta(90))
    www, api = leaf_info(www_cert.chain_pem()), leaf_info(api_cert.chain_pem())
    chains = {
        www.fingerprint_sha256: www_cert.chain_pem().decode(),
        api.fingerprint_sha256: api_cert.chain_pem().decode(),
    }
    items = [
        inventory_item(www, WWW, (ProblemCode.EXPIRING,)),
        inventory_item(api, API, ()),
    ]
    serving = {f"{WWW}:443": www, f"{API}:443": api}
    settings = SlackSettings(
        enabled=True,
        default_channel=CHANNEL,
        permissions=SlackPermissions(
            renew=(REQUESTER, OPS_GROUP),
            revoke=(REQUESTER,),
            silence=(REQUESTER,),
            approve=(APPROVER,),
        ),
        silence_duration=3600.0,
    )
    # Revocation needs approval by REQUESTER or APPROVER (and a second person, the default).
    policy = Policy(rules=(Rule(name="shop", approvers=(REQUESTER, APPROVER)),))
    url = f"sqlite:///{tmp_path / 'certpilot.db'}"
    woken: list[float] = []
    async with FakeSlack(usergroups={OPS_GROUP: [MEMBER]}) as slack:
        client = AsyncWebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
        with JobStore.open(url) as jobs, AuditLog.open(url) as audit:
            store = SlackStore.open(url)
            try:
                issuer = RecordingIssuer(ca, clock)
                target = ServingTarget("web", (WWW, API), serving)
                executor = Executor(
                    jobs,
                    audit,
                    {"local": issuer},
                    {"web": target},
                    ServingProber(serving, clock),
                    clock,
                    verify_timeout=5.0,
                    verify_hold=0.0,
                    verify_interval=0.0,
                    instance="test-host",
                )
                remediation = Remediation(
                    executor,
                    policy,
                    [target],
                    default_issuer="local",
                    chain_of=lambda fp: chains.get(fp, ""),
                )
                pager = Pager(store, WebPoster(client), settings, clock, jobs=jobs)
                ctx = BotContext(
                    settings=settings,
                    clock=clock,
                    remediation=remediation,
                    pager=pager,
                    store=store,
                    audit=audit,
                    items=lambda: list(items),
                    slo_rows=lambda: list(SLO_ROWS),
                    wake=lambda: woken.append(time.monotonic()),
                )
                app = build_app(ctx, signing_secret=SECRET, client=client)
                web_app = web.Application()
                web_app.router.add_post("/slack/events", aiohttp_handler(app))
                async with TestClient(TestServer(web_app)) as http:
                    yield World(
                        slack, http, ctx, remediation, jobs, audit, store, pager, issuer,
                        serving, items, www, woken,
                    )  # fmt: skip
                    # Let listeners still running after their ack finish before the stores
                    # close (each test waits for what it asserts; this is only the tail).
                    await _drain()
            finally:
                store.close()


async def _drain() -> None:
    """Wait for Bolt's listener bodies still running after their ``ack()`` (Bolt starts each
    as a task running ``run_ack_function_asynchronously``)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        running = [
            t
            for t in asyncio.all_tasks()
            if not t.done()
            and "run_ack_function_asynchronously" in getattr(t.get_coro(), "__qualname__", "")
        ]
        if not running:
            return
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- Alertmanager


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def silences(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/silences", timeout=5) as resp:
            data: list[dict[str, Any]] = json.loads(resp.read())
        return data


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real Alertmanager on loopback (components.md recipe): one null receiver, fresh
    storage, no cluster listener; stopped by its PID."""
    binary = require_binary("prometheus-alertmanager")
    work = tmp_path_factory.mktemp("alertmanager")
    config = work / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    log = (work / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    am = Alertmanager(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"alertmanager exited; see {work / 'alertmanager.log'}"
            try:
                with urllib.request.urlopen(f"{am.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.05)
        yield am
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


# ------------------------------------------------------------------------------- commands


def _text(answer: dict[str, Any]) -> str:
    return json.dumps(answer["blocks"])


async def test_every_certs_subcommand_answers_ephemerally(world: World) -> None:
    help_ = _text(await world.command("help", REQUESTER))
    for usage in ("status", "expiring [DAYS]", "renew NAME", "revoke FINGERPRINT REASON"):
        assert usage in help_
    assert _text(await world.command("", REQUESTER)) == help_  # bare /certs: the help

    status = _text(await world.command("status", STRANGER))
    assert "certpilot status" in status
    assert "*locations*\\n2" in status and "*with problems*\\n1" in status
    assert "expiring: 1" in status
    assert "renewal-success*: 42% budget left" in status
    assert "serving-valid*: burning (page)" in status

    expiring = _text(await world.command("expiring 10", STRANGER))
    assert "Expiring within 10 days" in expiring
    assert WWW in expiring and API not in expiring
    assert API in _text(await world.command("expiring 90", STRANGER))
    bad_days = _text(await world.command("expiring 9999", STRANGER))
    assert "DAYS must be between 0 and 3650" in bad_days and "Usage" in bad_days

    show = _text(await world.command(f"show {WWW}", STRANGER))
    assert WWW in show and "expiring" in show and API not in show
    by_fp = _text(await world.command(f"show {world.www.fingerprint_sha256[:12]}", STRANGER))
    assert WWW in by_fp
    unknown = _text(await world.command("show nosuch.shop.test", STRANGER))
    assert "nosuch.shop.test is not in the inventory" in unknown and "Usage" in unknown
    assert "needs a HOST" in _text(await world.command("show", STRANGER))

    assert "Nothing to show" in _text(await world.command("jobs", STRANGER))

    slo = _text(await world.command("slo", STRANGER))
    assert "1 of 2 SLOs burning error budget too fast" in slo
    assert "renewal-success" in slo and "budget left 42.0%" in slo
    assert "serving-valid" in slo and "5m 20.0x" in slo

    # An allowed user renews: a job, listed in the answer, and the runner is woken.
    renew = _text(await world.command(f"renew {WWW}", REQUESTER))
    (job,) = world.jobs.list()
    assert (job.action, job.state, job.requester) == ("renew", "approved", f"slack:{REQUESTER}")
    assert "*Renew* www.shop.test: 1 job started" in renew
    assert f"job {job.id} renew {WWW}: approved" in renew
    assert world.woken
    assert f"job {job.id} renew {WWW}" in _text(await world.command("jobs", STRANGER))
    # Asking again finds the same job instead of making a second one.
    again = _text(await world.command(f"renew {WWW}", REQUESTER))
    assert f"job {job.id} renew {WWW}: approved" in again
    assert len(world.jobs.list()) == 1

    # A user without permission is refused, and that is audited with their Slack id.
    refused = _text(await world.command(f"renew {API}", STRANGER))
    assert "is not allowed to renew" in refused and "slack.permissions.renew" in refused
    assert len(world.jobs.list()) == 1
    (entry,) = world.entries(f"slack:{STRANGER}")
    assert (entry.action, entry.result, entry.subject) == ("renew", "denied", API)
    assert entry.detail["via"] == "slack"

    # Bad reasons are named with the list of good ones; nothing is created.
    fp = world.www.fingerprint_sha256
    bad = _text(await world.command(f"revoke {fp} badreason", REQUESTER))
    assert "unknown reason" in bad and "badreason" in bad
    for name in REASONS:
        assert name in bad
    assert "needs a FINGERPRINT and a REASON" in _text(await world.command("revoke", REQUESTER))
    assert "renew needs a NAME" in _text(await world.command("renew", REQUESTER))
    assert len(world.jobs.list()) == 1

    garbage = await world.command("frobnicate --now", REQUESTER)
    assert "unknown command" in _text(garbage) and "frobnicate" in _text(garbage)
    assert "Usage" in _text(garbage) and "/certs status" in _text(garbage)
    assert "unknown command" in garbage["text"]

    # A slash command answers in its HTTP response only: nothing was posted anywhere.
    assert world.slack.calls_to("chat.postMessage") == []
    assert world.slack.calls_to("chat.postEphemeral") == []
    assert world.audit.verify().ok


async def test_revoke_from_a_command_waits_for_approval(world: World) -> None:
    fp = world.www.fingerprint_sha256
    answer = _text(await world.command(f"revoke {fp[:16]} superseded", REQUESTER))
    (job,) = world.jobs.list()
    assert (job.action, job.state, job.reason) == ("revoke", "pending_approval", 4)
    assert job.second_person and job.approvers == (REQUESTER, APPROVER)
    assert "*Revoke*" in answer and "waiting for approval" in answer
    # Only the revoke permission counts: a member of the renew group may not revoke.
    refused = _text(await world.command(f"revoke {fp[:16]} superseded", MEMBER))
    assert "is not allowed to revoke" in refused
    assert len(world.jobs.list()) == 1


# ----------------------------------------------------------------------------------- RBAC


async def test_renew_permission_by_user_group(world: World) -> None:
    key, ts = await world.page()
    # A user outside the group is refused (command and button), audited both times.
    assert "is not allowed to renew" in _text(await world.command(f"renew {WWW}", STRANGER))
    await world.click("certpilot_renew", {"page": key}, STRANGER)
    assert "is not allowed to renew" in await world.ephemeral_to(STRANGER)
    denied = await world.audited(f"slack:{STRANGER}", "renew", "denied")
    assert len(denied) == 2 and {e.subject for e in denied} == {WWW, key}
    assert world.jobs.list() == []

    # A member of S0OPS is allowed: the click starts a job, attached to the page.
    await world.click("certpilot_renew", {"page": key}, MEMBER)
    assert "1 new job(s)" in await world.ephemeral_to(MEMBER)
    (job,) = world.jobs.list()
    assert (job.action, job.state, job.requester) == ("renew", "approved", f"slack:{MEMBER}")
    assert [e["id"] for e in world.row(key).jobs] == [job.id]
    await world.thread_says(ts, f"Renew requested by <@{MEMBER}>: 1 new job(s)")
    calls = world.slack.calls_to("usergroups.users.list")
    assert calls and all(c.params.get("usergroup") == OPS_GROUP for c in calls)

    # The runner (here: the test) runs it; the next sync reports the verified result.
    out = await world.remediation.executor.run(job.id)
    assert out.job.state == "done" and out.job.verified
    await world.pager.sync()
    await world.thread_says(ts, "Renewed and verified")
    assert out.job.new_serial[:8] in world.thread_text(ts)
    (renewed,) = await world.audited(f"slack:{MEMBER}", "renew", "allowed")
    assert renewed.detail["job"] == str(job.id)


# ------------------------------------------------------------------------ revoke and approve


async def _revoke_from_page(world: World, reason: str = "keyCompromise") -> tuple[str, str, Job]:
    """Page, click Revoke…, submit the modal: ``(page key, message ts, the revoke job)``."""
    key, ts = await world.page()
    page = world.slack.messages(CHANNEL)[0]
    assert _button(page, "certpilot_revoke") is not None
    await world.click("certpilot_revoke", {"page": key}, REQUESTER)
    (opened,) = await world.slack.wait_for("views.open")
    view = opened.params["view"]
    assert view["type"] == "modal" and view["callback_id"] == "certpilot_revoke_confirm"
    meta = json.loads(view["private_metadata"])
    assert meta == {"fingerprint": world.www.fingerprint_sha256, "page": key}
    options = [o["value"] for b in view["blocks"] for o in b.get("element", {}).get("options", [])]
    assert reason in options
    assert world.jobs.list() == []  # opening the modal does nothing yet

    await world.submit_revoke(world.slack.views[0], reason, REQUESTER)

    async def revoke_job() -> Job | None:
        jobs = await asyncio.to_thread(world.jobs.list)
        return next((j for j in jobs if j.action == "revoke"), None)

    job = await eventually(revoke_job, "the revoke job")
    await world.thread_says(ts, "Approval needed")
    return key, ts, job


def _approval_message(world: World, ts: str, job_id: int) -> dict[str, Any]:
    for reply in world.slack.thread(CHANNEL, ts):
        button = _button(reply, "certpilot_approve")
        if button is not None and json.loads(button["value"]) == {"job": job_id}:
            return reply
    raise AssertionError(f"no approval request for job {job_id} in the thread")


async def test_revoke_via_the_page_then_approval_by_a_second_person(world: World) -> None:
    key, ts, revoke = await _revoke_from_page(world, "keyCompromise")
    assert revoke.state == "pending_approval" and revoke.reason == 1
    assert revoke.requester == f"slack:{REQUESTER}" and revoke.second_person
    assert "BEGIN CERTIFICATE" in revoke.subject_chain_pem
    # keyCompromise: a replacement with a new key goes out at once, without approval.
    (replacement,) = [j for j in world.jobs.list() if j.action == "renew"]
    assert replacement.state == "approved" and replacement.key.startswith("compromise")
    assert {e["id"] for e in world.row(key).jobs} == {revoke.id, replacement.id}
    assert world.woken

    approval = _approval_message(world, ts, revoke.id)
    text = json.dumps(approval)
    assert "Approval needed" in text and "Reason: keyCompromise" in text
    deny = _button(approval, "certpilot_deny")
    assert deny is not None and json.loads(deny["value"]) == {"job": revoke.id}
    approve = _button(approval, "certpilot_approve")
    assert approve is not None and "confirm" in approve  # Slack asks before approving
    assert not any(  # the replacement needs no approval: no request for it
        json.loads(str((_button(r, "certpilot_approve") or {}).get("value") or "{}"))
        == {"job": replacement.id}
        for r in world.slack.thread(CHANNEL, ts)
    )
    submitted = await world.audited(f"slack:{REQUESTER}", "revoke", "pending")
    assert submitted[0].detail["job"] == str(revoke.id)

    value = {"job": revoke.id}
    # The requester may not approve their own revocation, though listed as an approver.
    await world.click("certpilot_approve", value, REQUESTER)
    said = await world.ephemeral_to(REQUESTER)
    assert said.startswith("Not approved") and "second person" in said
    (refused,) = await world.audited(f"slack:{REQUESTER}", "deny", "denied")
    assert "second person" in refused.detail["why"]
    assert (await world.job(revoke.id)).state == "pending_approval"

    # Someone not among the rule's approvers may not either.
    await world.click("certpilot_approve", value, STRANGER)
    said = await world.ephemeral_to(STRANGER)
    assert said.startswith("Not approved") and "not among the approvers" in said
    await world.audited(f"slack:{STRANGER}", "deny", "denied")
    assert (await world.job(revoke.id)).state == "pending_approval"
    assert world.issuer.revoked == []

    # The second person approves: the job is approved and runs when the runner wakes.
    await world.click("certpilot_approve", value, APPROVER)
    assert await world.ephemeral_to(APPROVER) == f"Approved job {revoke.id}; it runs now."
    approved = await world.job(revoke.id, "approved")
    assert [a.by for a in approved.approvals] == [f"slack:{APPROVER}"]
    await world.audited(f"slack:{APPROVER}", "approve", "allowed")

    out = await world.remediation.executor.run(replacement.id)
    assert out.job.state == "done" and out.job.verified
    out = await world.remediation.executor.run(revoke.id)
    assert out.job.state == "done"
    ((chain, reason),) = world.issuer.revoked
    assert reason == RevocationReason.KEY_COMPROMISE
    assert chain.decode() == revoke.subject_chain_pem

    await world.pager.sync()
    await world.thread_says(ts, "*Revoked*")
    await world.thread_says(ts, "Renewed and verified")
    # Clicking Approve again on a job that already ran says so.
    await world.click("certpilot_approve", value, APPROVER)
    assert "nothing to approve" in await world.ephemeral_to(APPROVER, 2)
    assert world.audit.verify().ok


async def test_deny_cancels_and_the_thread_says_so(world: World) -> None:
    _, ts, revoke = await _revoke_from_page(world, "superseded")
    # Not a key compromise: no replacement.
    assert [j.action for j in world.jobs.list()] == ["revoke"]
    assert "Reason: superseded" in json.dumps(_approval_message(world, ts, revoke.id))

    # A stranger may not deny either.
    await world.click("certpilot_deny", {"job": revoke.id}, STRANGER)
    assert "not allowed to approve" in await world.ephemeral_to(STRANGER)
    await world.audited(f"slack:{STRANGER}", "deny", "denied")
    assert (await world.job(revoke.id)).state == "pending_approval"

    await world.click("certpilot_deny", {"job": revoke.id}, APPROVER)
    assert await world.ephemeral_to(APPROVER) == f"Denied job {revoke.id}."
    failed = await world.job(revoke.id, "failed")
    assert f"cancelled by slack:{APPROVER}: denied in Slack" in failed.last_error
    (moved,) = [
        e for e in await world.audited(f"slack:{APPROVER}", "job_state") if e.after == "failed"
    ]
    assert moved.before == "pending_approval"

    await world.pager.sync()
    await world.thread_says(ts, "*Failed*: revoke")
    assert f"cancelled by slack:{APPROVER}" in world.thread_text(ts)
    assert world.issuer.revoked == []
    # A job that is over cannot be denied (or approved) again.
    await world.click("certpilot_deny", {"job": revoke.id}, APPROVER)
    assert "only a job not started can be cancelled" in await world.ephemeral_to(APPROVER, 2)
    await world.click("certpilot_deny", {"job": 9999}, APPROVER)
    assert await world.ephemeral_to(APPROVER, 3) == "Job 9999 does not exist."


async def test_revoke_modal_refused_without_permission(world: World) -> None:
    key, _ = await world.page()
    await world.click("certpilot_revoke", {"page": key}, STRANGER)
    assert "is not allowed to revoke" in await world.ephemeral_to(STRANGER)
    assert world.slack.calls_to("views.open") == []
    # A forged submission (the modal was never opened for them) is refused too.
    meta = json.dumps({"fingerprint": world.www.fingerprint_sha256, "page": key})
    view = {"callback_id": "certpilot_revoke_confirm", "private_metadata": meta}
    await world.submit_revoke(view, "keyCompromise", STRANGER)
    denied = await world.audited(f"slack:{STRANGER}", "revoke", "denied")
    assert len(denied) == 2
    assert world.jobs.list() == []


# ------------------------------------------------------------------------ acknowledge, silence


async def test_acknowledge(world: World) -> None:
    key, ts = await world.page()
    assert world.slack.calls_to("chat.update") == []
    await world.click("certpilot_ack", {"page": key}, STRANGER)  # everyone may acknowledge
    assert await world.ephemeral_to(STRANGER) == "Acknowledged."
    assert world.row(key).acknowledged_by == STRANGER
    await world.thread_says(ts, f"Acknowledged by <@{STRANGER}>")
    (update,) = await world.slack.wait_for("chat.update")  # the page message is edited
    assert update.params["ts"] == ts and update.params["channel"] == CHANNEL
    (msg,) = world.slack.messages(CHANNEL)
    assert f"Acknowledged by <@{STRANGER}>" in json.dumps(msg["blocks"])
    (entry,) = await world.audited(f"slack:{STRANGER}", "acknowledge", "ok")
    assert entry.subject == key

    # A page that is gone says so.
    await world.click("certpilot_ack", {"page": "expiring|nope=x"}, STRANGER)
    assert "This page is gone" in await world.ephemeral_to(STRANGER, 2)


def _silence_of(am: Alertmanager, user: str, key: str) -> dict[str, Any] | None:
    for s in am.silences():
        if s["createdBy"] == f"slack:{user}" and key in s.get("comment", ""):
            return s
    return None


async def test_silence_creates_an_alertmanager_silence(
    world: World, alertmanager: Alertmanager
) -> None:
    world.ctx.silence = _silencer(alertmanager.url, timedelta(hours=1), world.ctx.clock)
    key, ts = await world.page()

    # Not allowed: nothing is silenced anywhere.
    await world.click("certpilot_silence", {"page": key}, STRANGER)
    assert "is not allowed to silence" in await world.ephemeral_to(STRANGER)
    assert _silence_of(alertmanager, STRANGER, key) is None
    assert world.row(key).silenced_until is None

    before = datetime.now(UTC)
    await world.click("certpilot_silence", {"page": key}, REQUESTER)
    assert await world.ephemeral_to(REQUESTER) == "Silenced."
    silence = _silence_of(alertmanager, REQUESTER, key)
    assert silence is not None and silence["status"]["state"] == "active"
    (matcher,) = silence["matchers"]
    assert matcher["name"] == "ref" and matcher["isRegex"] is True
    assert matcher["isEqual"] is True
    assert matcher["value"] == r"tls://www\.shop\.test:443\#www\.shop\.test"
    ends = datetime.fromisoformat(silence["endsAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < ends - before < timedelta(minutes=61)

    until = world.row(key).silenced_until
    assert until is not None and timedelta(minutes=59) < until - before < timedelta(minutes=61)
    await world.thread_says(ts, f"Silenced by <@{REQUESTER}>")
    await world.thread_says(ts, f"Alertmanager silence {silence['id']}")
    await world.slack.wait_for(  # the edited page shows it
        "chat.update", predicate=lambda c: "Silenced for" in json.dumps(c.params["blocks"])
    )
    (entry,) = await world.audited(f"slack:{REQUESTER}", "silence", "ok")
    assert entry.detail["am"] == silence["id"]


async def test_silence_with_alertmanager_down_still_silences_the_page(world: World) -> None:
    world.ctx.silence = _silencer(
        f"http://127.0.0.1:{free_port()}", timedelta(hours=1), world.ctx.clock
    )
    key, ts = await world.page()
    await world.click("certpilot_silence", {"page": key}, REQUESTER)
    assert await world.ephemeral_to(REQUESTER) == "Silenced."
    assert world.row(key).silenced_until is not None
    await world.thread_says(ts, "Alertmanager silence not created")
    (entry,) = await world.audited(f"slack:{REQUESTER}", "silence", "ok")
    assert "not created" in entry.detail["am"]


# ---------------------------------------------------------------------------- replay, audit


async def test_a_replayed_request_is_refused(world: World) -> None:
    body = slash_command_body(text="status", user_id=REQUESTER)
    headers = signed_headers(SECRET, body)
    status, text = await world.post(body, headers)
    assert status == 200 and "certpilot status" in text
    assert (await world.post(body, headers))[0] == 401
    # ... and so is a click captured and sent again.
    key, _ = await world.page()
    click = block_action_body("certpilot_ack", json.dumps({"page": key}), user_id=STRANGER)
    click_headers = signed_headers(SECRET, click)
    assert (await world.post(click, click_headers))[0] == 200
    assert (await world.post(click, click_headers))[0] == 401
    await world.ephemeral_to(STRANGER)
    assert len(await world.audited(f"slack:{STRANGER}", "acknowledge")) == 1
    # A wrong signature never gets as far as the handlers.
    bad = dict(signed_headers(SECRET, body))
    bad["X-Slack-Signature"] = "v0=" + "0" * 64
    assert (await world.post(slash_command_body(text="status"), bad))[0] == 401


async def test_every_click_is_audited_with_the_slack_user(
    world: World, alertmanager: Alertmanager
) -> None:
    world.ctx.silence = _silencer(alertmanager.url, timedelta(hours=1), world.ctx.clock)
    key, _, revoke = await _revoke_from_page(world, "keyCompromise")
    clicks: list[tuple[str, str, str]] = []  # (action_id, user, audit action)

    async def click(action_id: str, value: dict[str, Any], user: str, action: str) -> None:
        n = len(await asyncio.to_thread(world.entries, f"slack:{user}"))
        await world.click(action_id, value, user)

        async def grew() -> bool:
            return len(await asyncio.to_thread(world.entries, f"slack:{user}")) > n

        await eventually(grew, f"an audit entry for {user}'s {action_id}")
        clicks.append((action_id, user, action))

    await click("certpilot_ack", {"page": key}, STRANGER, "acknowledge")
    await click("certpilot_silence", {"page": key}, STRANGER, "silence")  # refused
    await click("certpilot_silence", {"page": key}, REQUESTER, "silence")
    await click("certpilot_renew", {"page": key}, STRANGER, "renew")  # refused
    await click("certpilot_renew", {"page": key}, MEMBER, "renew")  # the replacement exists
    await click("certpilot_approve", {"job": revoke.id}, REQUESTER, "deny")  # second person
    await click("certpilot_approve", {"job": revoke.id}, STRANGER, "deny")
    await click("certpilot_deny", {"job": revoke.id}, STRANGER, "deny")
    await click("certpilot_approve", {"job": revoke.id}, APPROVER, "approve")

    entries = world.entries()
    for action_id, user, action in clicks:
        mine = [e for e in entries if e.actor == f"slack:{user}" and e.action == action]
        assert mine, f"{action_id} by {user} is not in the audit log as {action}"
    # Who submitted the revocation is there too, and every Slack actor is slack:U...
    assert [e for e in entries if e.actor == f"slack:{REQUESTER}" and e.action == "revoke"]
    slack_actors = {e.actor for e in entries if e.detail.get("via") == "slack"}
    assert slack_actors and all(a.startswith("slack:U") for a in slack_actors)
    assert not [e for e in entries if e.actor in {REQUESTER, APPROVER, STRANGER, MEMBER}]
    verdict = world.audit.verify()
    assert verdict.ok, verdict
