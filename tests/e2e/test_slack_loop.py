"""The Slack bot end to end (issue 5, item 6), with the real service and real components:

``certpilot run`` scans an nginx serving an expiring certificate and pages it, grouped, to a
loopback fake of Slack's Web API; a signed click on Renew (a real Bolt request through the
service's ``/slack/events``) renews through real Pebble, redeploys nginx, and the message's
thread reports the certificate the probe verified. An unauthorised click is refused and
audited; wrong signatures, stale timestamps and replays are refused; ``/certs`` answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.localca import LocalCA
from certpilot.settings import settings_from_mapping
from certpilot.store import AuditLog
from tests.support.pebble import Pebble
from tests.support.services import NginxFleet, require_binary
from tests.support.slack_fake import DEFAULT_TOKEN, FakeSlack
from tests.support.slack_signing import (
    block_action_body,
    signed_headers,
    slash_command_body,
)

NAME = "slack.test.internal"
SECRET = "8f14e45fceea167a5a36dedd4bea2543"
ALLOWED = "U0ALLOWED1"
STRANGER = "U0STRANGER"
CHANNEL = "#certs-web"


@dataclass
class World:
    work: Path
    pebble: Pebble
    fleet: NginxFleet
    old_serial: str
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    nginx = require_binary("nginx")
    require_binary("pebble")
    work = tmp_path_factory.mktemp("slack-loop")
    now = datetime.now(UTC)
    ca = LocalCA("Old Internal CA", now)
    old = ca.issue([NAME], now, not_before=now - timedelta(days=88), lifetime=timedelta(90))
    (work / "old-ca.pem").write_bytes(ca.root_pem())
    with (
        Pebble(work / "pebble") as pebble,
        NginxFleet(work / "nginx", [(NAME, old.chain_pem(), old.key_pem())], binary=nginx) as f,
    ):
        (work / "pebble-root.pem").write_bytes(pebble.root_pem())
        yield World(work, pebble, f, format(old.cert.serial_number, "x"), work / "old-ca.pem")


@dataclass
class Running:
    url: str
    slack: FakeSlack
    service: Service
    http: aiohttp.ClientSession

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(f"{self.url}/slack/events", data=body, headers=headers) as r:
            return r.status, await r.text()

    async def click(self, action_id: str, value: dict[str, Any], user: str) -> int:
        body = block_action_body(action_id, json.dumps(value), user_id=user, channel_id="C0WEB")
        status, _ = await self.post(body, signed_headers(SECRET, body))
        return status


@pytest.fixture
async def running(world: World) -> AsyncIterator[Running]:
    ep = world.fleet.endpoint(NAME)
    f = world.fleet
    base = [f.binary, "-p", f"{f.dir}/", "-c", str(f.conf_path), "-e", str(f.error_log)]
    settings = settings_from_mapping(
        {
            "store": {"url": f"sqlite:///{world.work / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": 0},
            "scan": {
                "interval": "3s",
                "ca_files": [str(world.root), str(world.work / "pebble-root.pem")],
                "system_trust": False,
            },
            "remediation": {
                "enabled": False,  # only a click renews
                "issuers": {
                    "pebble": {
                        "kind": "acme",
                        "directory_url": world.pebble.directory_url,
                        "state_dir": str(world.work / "acme"),
                        "ca_bundle": str(world.pebble.ca_bundle),
                        "http_host": "127.0.0.1",
                        "http_port": world.pebble.http_port,
                    }
                },
                "targets": [
                    {
                        "name": "web",
                        "kind": "files",
                        "cert_path": str(ep.cert_path),
                        "key_path": str(ep.key_path),
                        "test_command": [*base, "-t"],
                        "reload_command": [*base, "-s", "reload"],
                        "endpoints": [{"host": NAME, "port": ep.port, "address": "127.0.0.1"}],
                    }
                ],
            },
            "slack": {
                "enabled": True,
                "api_url": "PLACEHOLDER",
                "default_channel": "#certpilot",
                "routes": [{"channel": CHANNEL, "owners": []}],
                "permissions": {"renew": [ALLOWED], "approve": [ALLOWED]},
                "page_interval": "1s",
            },
        },
        "test",
    )
    with FakeSlack() as slack:
        settings = settings.model_copy(
            update={"slack": settings.slack.model_copy(update={"api_url": slack.base_url})}
        )
        env = {"SLACK_BOT_TOKEN": DEFAULT_TOKEN, "SLACK_SIGNING_SECRET": SECRET}
        service = Service(settings, SystemClock(), env=env)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            deadline = time.monotonic() + 30
            while service.port is None:
                assert not task.done(), task.exception() if task.done() else ""
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as http:
                yield Running(f"http://127.0.0.1:{service.port}", slack, service, http)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)


def _button(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    for block in message.get("blocks") or []:
        for el in block.get("elements") or []:
            if el.get("action_id") == action_id:
                return dict(el)
    return None


async def test_a_click_on_renew_renews_through_pebble_and_the_thread_reports_it(
    running: Running, world: World
) -> None:
    slack = running.slack
    # 1. The scan pages the expiring certificate to the routed channel, with a Renew button.
    await slack.wait_for(
        "chat.postMessage",
        timeout=60,
        predicate=lambda c: c.params.get("channel") == CHANNEL and not c.params.get("thread_ts"),
    )
    (page,) = [m for m in slack.messages(CHANNEL) if _button(m, "certpilot_renew")]
    renew = _button(page, "certpilot_renew")
    assert renew is not None
    value = json.loads(renew["value"])
    assert NAME in json.dumps(page["blocks"])

    # 2. A stranger's click is refused, told so, and audited.
    assert await running.click("certpilot_renew", value, STRANGER) == 200
    await slack.wait_for("chat.postEphemeral", timeout=20)
    assert "not allowed" in json.dumps(slack.ephemerals())
    with AuditLog.open(running.service.settings.store.url) as audit:
        refused = [e for e in audit.entries() if e.actor == f"slack:{STRANGER}"]
    assert refused and refused[-1].result == "denied"

    # 3. An allowed click renews through Pebble; the thread reports the verified serial.
    assert await running.click("certpilot_renew", value, ALLOWED) == 200

    def verified(c: Any) -> bool:
        return bool(c.params.get("thread_ts")) and "verified" in json.dumps(c.params).lower()

    (reply,) = await slack.wait_for("chat.postMessage", timeout=120, predicate=verified)
    async with running.http.get(f"{running.url}/api/v1/jobs") as r:
        jobs = (await r.json())["jobs"]
    (job,) = [j for j in jobs if j["requester"] == f"slack:{ALLOWED}"]
    assert job["state"] == "done" and job["new_serial"] != world.old_serial
    assert job["new_serial"][:8] in json.dumps(reply.params)
    with AuditLog.open(running.service.settings.store.url) as audit:
        assert audit.verify().ok


async def test_signatures_timestamps_and_replays(running: Running) -> None:
    body = slash_command_body(text="status", user_id=ALLOWED)
    headers = signed_headers(SECRET, body)
    status, text = await running.post(body, headers)
    assert status == 200 and "blocks" in text
    # The same request again (captured and replayed inside Slack's 5 minutes): refused.
    assert (await running.post(body, headers))[0] == 401
    # A wrong signature, and a timestamp older than 5 minutes: refused by Bolt.
    bad = dict(signed_headers(SECRET, body))
    bad["X-Slack-Signature"] = "v0=" + "0" * 64
    assert (await running.post(body, bad))[0] == 401
    old = signed_headers(SECRET, body, int(time.time()) - 6 * 60)
    assert (await running.post(body, old))[0] == 401
    # Unknown input gets a clear answer, not an error.
    junk = slash_command_body(text="frobnicate now", user_id=ALLOWED)
    status, text = await running.post(junk, signed_headers(SECRET, junk))
    assert status == 200 and "unknown command" in text
