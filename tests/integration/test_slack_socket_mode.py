"""The bot's Bolt app over Socket Mode, against the loopback fake of Slack (Web API + websocket).

In Socket Mode Slack does not POST to the app: the app opens a websocket (``apps.connections.open``
with the app-level token, then the URL it answers) and Slack pushes envelopes down it; the app
acknowledges each one on the same socket, with the response (a slash command's answer) in the
ack's ``payload``. Nothing is signed, so the replay middleware in ``build_app`` (which keys on
``X-Slack-Signature``) must let every envelope through, identical ones included.

Here the real ``AsyncSocketModeHandler`` (slack-sdk's aiohttp client underneath, as
``certpilot.paging.open_slack`` uses it) connects to :class:`~tests.support.slack_fake.FakeSlack`;
the bot's context is real: a :class:`~remediator.service.Remediation` from
``certpilot.remediate.open_remediation`` over SQLite in ``tmp_path``, the real pager and store.
Everything the app does after an ack is polled for with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import render
from bot.pager import Pager, WebPoster
from bot.slack_app import BotContext, build_app
from certpilot.app import scan_options
from certpilot.domain.clock import SystemClock
from certpilot.domain.errors import ConfigError
from certpilot.paging import open_slack
from certpilot.remediate import RemediationRuntime, open_remediation
from certpilot.settings import Settings, settings_from_mapping
from certpilot.store import Inventory
from certpilot.store.slack import SlackStore
from scanner.runner import Scanner
from tests.support.slack_fake import DEFAULT_APP_TOKEN, DEFAULT_TOKEN, FakeSlack
from tests.support.slack_signing import block_action_body, slash_command_body

USER = "U0SOCKET01"
CHANNEL = "C0SOCKET01"
GONE = "This page is gone (resolved and forgotten)."
SLO_ROWS: list[dict[str, Any]] = [
    {"slo": "renewal-success", "budget_remaining_ratio": 0.5, "alerts": []},
]

T = TypeVar("T")


async def eventually(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something, failing with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (value := check()) is None:
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)
    return value


def settings_for(tmp_path: Path, fake: FakeSlack) -> Settings:
    return settings_from_mapping(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
            "scan": {"system_trust": False},
            "slack": {
                "enabled": True,
                "socket_mode": True,
                "api_url": fake.base_url,
                "default_channel": "#certpilot",
            },
        },
        "test",
    )


def command(text: str, fake: FakeSlack) -> bytes:
    """``/certs TEXT`` as Slack would send it (the fake puts its fields in the envelope)."""
    return slash_command_body(
        text=text, user_id=USER, channel_id=CHANNEL, team_id=fake.team_id, user_name="sam"
    )


@dataclass
class World:
    settings: Settings
    inventory: Inventory
    rt: RemediationRuntime


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def world(tmp_path: Path, slack: FakeSlack) -> Iterator[World]:
    settings = settings_for(tmp_path, slack)
    clock = SystemClock()
    with ExitStack() as stack:
        inventory = Inventory.open(settings.store.url)
        stack.callback(inventory.close)
        scanner = Scanner(scan_options(settings), clock)
        stack.callback(scanner.close)
        rt = open_remediation(settings, clock, prober=scanner, inventory=inventory)
        stack.callback(rt.close)
        yield World(settings, inventory, rt)


@pytest.fixture
async def handler(world: World, slack: FakeSlack) -> AsyncIterator[AsyncSocketModeHandler]:
    """The bot's app (built as ``open_slack`` builds it) behind a Socket Mode handler, not yet
    connected; closed at the end if the test did not close it."""
    clock = SystemClock()
    client = AsyncWebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
    store = SlackStore.open(world.settings.store.url)
    s = world.settings.slack
    ctx = BotContext(
        settings=s,
        clock=clock,
        remediation=world.rt.remediation,
        pager=Pager(store, WebPoster(client), s, clock, jobs=world.rt.jobs),
        store=store,
        audit=world.rt.audit,
        items=lambda: world.inventory.items(now=clock.now()),
        slo_rows=lambda: SLO_ROWS,
    )
    app = build_app(ctx, signing_secret="unused-in-socket-mode", client=client)
    h = AsyncSocketModeHandler(app, DEFAULT_APP_TOKEN)  # as certpilot.paging does
    try:
        yield h
    finally:
        if not h.client.closed:
            await h.close_async()  # type: ignore[no-untyped-call]
        store.close()


# -- the fake's Socket Mode, as slack-sdk sees it -----------------------------------------------


async def test_connections_open_takes_only_the_app_token(slack: FakeSlack) -> None:
    client = AsyncWebClient(base_url=slack.base_url)
    r = await client.apps_connections_open(app_token=DEFAULT_APP_TOKEN)
    url = urlsplit(str(r["url"]))
    assert (url.scheme, url.hostname, url.port) == ("ws", "127.0.0.1", slack.port)
    assert url.path == "/link/"
    query = parse_qs(url.query)
    assert query["app_id"] == [slack.app_id]
    assert query["ticket"][0]

    with pytest.raises(SlackApiError) as bot_token:
        await client.apps_connections_open(app_token=DEFAULT_TOKEN)
    assert bot_token.value.response["error"] == "not_allowed_token_type"
    with pytest.raises(SlackApiError) as wrong:
        await client.apps_connections_open(app_token="xapp-1-A0CPAPP01-wrong")
    assert wrong.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as app_token_elsewhere:
        await AsyncWebClient(token=DEFAULT_APP_TOKEN, base_url=slack.base_url).auth_test()
    assert app_token_elsewhere.value.response["error"] == "not_allowed_token_type"
    assert [c.error for c in slack.calls] == [
        None,
        "not_allowed_token_type",
        "invalid_auth",
        "not_allowed_token_type",
    ]


# -- the bot's app over Socket Mode ------------------------------------------------------------


async def test_commands_and_buttons_over_socket_mode(
    slack: FakeSlack, handler: AsyncSocketModeHandler
) -> None:
    await handler.connect_async()  # type: ignore[no-untyped-call]
    conn = await slack.wait_for_connection()
    assert conn.hello == {
        "type": "hello",
        "num_connections": 1,
        "debug_info": {
            "host": "applink-certpilot-fake",
            "build_number": 1,
            "approximate_connection_time": 18060,
        },
        "connection_info": {"app_id": slack.app_id},
    }
    (opened,) = slack.calls_to("apps.connections.open")
    assert opened.ok
    assert parse_qs(urlsplit(opened.response["url"]).query)["ticket"] == [conn.ticket]
    # slack-sdk pings right after connecting and judges the link by the pongs.
    ping = await eventually(
        lambda: next(iter(slack.socket_connections[0].pings), None), "the client's first ping"
    )
    assert ping.startswith(b"sdk-ping-pong:")

    # /certs help: the answer rides in the ack (no response_url, no Web API call).
    help_id = slack.socket_send("slash_commands", command("help", slack))
    (envelope,) = slack.socket_envelopes
    assert envelope.envelope_id == help_id
    assert envelope.accepts_response_payload is True
    assert envelope.payload["command"] == "/certs"
    assert envelope.payload["text"] == "help"
    ack = await slack.wait_for_ack(help_id)
    blocks = render.help_blocks()
    assert ack.known
    assert ack.connection == conn.id
    assert ack.payload == {
        "text": render.blocks_text(blocks),
        "response_type": "ephemeral",
        "blocks": blocks,
    }

    # The very same envelope body again (Slack signs nothing here): not taken for a replay.
    again_id = await slack.socket_send_async("slash_commands", command("help", slack))
    assert (await slack.wait_for_ack(again_id)).payload == ack.payload

    # /certs status reads the inventory (empty) and the SLO rows.
    status_id = await slack.socket_send_async("slash_commands", command("status", slack))
    status = await slack.wait_for_ack(status_id)
    assert status.payload is not None
    assert status.payload["response_type"] == "ephemeral"
    shown = json.dumps(status.payload["blocks"])
    assert "renewal-success" in shown
    assert "50% budget left" in shown

    # Acknowledge on a page the store does not know: a bare ack, then an ephemeral "gone".
    click = block_action_body(
        "certpilot_ack",
        json.dumps({"page": "no-such-page"}),
        user_id=USER,
        channel_id=CHANNEL,
        team_id=slack.team_id,
        button_text="Acknowledge",
    )
    click_id = await slack.socket_send_async("interactive", click)
    assert slack.socket_envelopes[-1].accepts_response_payload is False
    assert slack.socket_envelopes[-1].payload["type"] == "block_actions"
    click_ack = await slack.wait_for_ack(click_id)
    assert click_ack.payload is None
    assert click_ack.message == {"envelope_id": click_id}
    (posted,) = await slack.wait_for("chat.postEphemeral")
    assert posted.ok
    assert (posted.params["channel"], posted.params["user"]) == (CHANNEL, USER)
    assert posted.params["text"] == GONE
    assert [e["text"] for e in slack.ephemerals(CHANNEL)] == [GONE]

    # Every envelope was processed (acked once, in order) over the one connection.
    assert [a.envelope_id for a in slack.socket_acks] == [help_id, again_id, status_id, click_id]
    assert {a.connection for a in slack.socket_acks} == {conn.id}
    # Bolt checked the bot token once (auth.test); the socket needed one URL.
    assert [c.method for c in slack.calls if c.method != "chat.postEphemeral"] == [
        "apps.connections.open",
        "auth.test",
    ]

    await handler.close_async()  # type: ignore[no-untyped-call]
    closed = await slack.wait_for_disconnect(conn.id)
    assert closed.closed_by == "client"
    assert closed.close_code == 1000
    assert [c.open for c in slack.socket_connections] == [False]


async def test_reconnects_after_disconnect_and_server_close(
    slack: FakeSlack, handler: AsyncSocketModeHandler
) -> None:
    await handler.connect_async()  # type: ignore[no-untyped-call]
    first = await slack.wait_for_connection()

    # Slack's "disconnect" (a refresh): a fresh URL, a new socket, the old one closed by the app.
    assert slack.socket_disconnect("refresh_requested") == first.id
    second = await slack.wait_for_connection(2)
    assert second.ticket != first.ticket
    assert (await slack.wait_for_disconnect(first.id)).closed_by == "client"
    refreshed = slack.socket_send("slash_commands", command("help", slack))
    assert (await slack.wait_for_ack(refreshed)).connection == second.id

    # A Slack host going away (close 1001 from the server): slack-sdk reconnects on its own.
    slack.socket_close(second.id)
    gone = await slack.wait_for_disconnect(second.id)
    assert (gone.closed_by, gone.close_code) == ("server", 1001)
    third = await slack.wait_for_connection(3)
    after = await slack.socket_send_async("slash_commands", command("help", slack))
    assert (await slack.wait_for_ack(after)).connection == third.id
    assert len(slack.calls_to("apps.connections.open")) == 3

    await handler.close_async()  # type: ignore[no-untyped-call]
    assert (await slack.wait_for_disconnect(third.id)).closed_by == "client"


# -- certpilot.paging.open_slack in Socket Mode -------------------------------------------------


def slack_env(app_token: str | None = DEFAULT_APP_TOKEN) -> dict[str, str]:
    env = {"SLACK_BOT_TOKEN": DEFAULT_TOKEN, "SLACK_SIGNING_SECRET": "unused-in-socket-mode"}
    if app_token is not None:
        env["SLACK_APP_TOKEN"] = app_token
    return env


async def test_open_slack_connects_and_disconnects(slack: FakeSlack, world: World) -> None:
    async with AsyncExitStack() as stack:
        runtime = await open_slack(
            stack,
            world.settings,
            SystemClock(),
            slack_env(),
            rt=world.rt,
            inventory=world.inventory,
            slo_rows=lambda: SLO_ROWS,
            wake=lambda: None,
        )
        assert runtime is not None
        conn = await slack.wait_for_connection()
        status_id = await slack.socket_send_async("slash_commands", command("status", slack))
        status = await slack.wait_for_ack(status_id)
        assert status.payload is not None
        assert "renewal-success" in json.dumps(status.payload["blocks"])
    # Leaving the stack closes the socket (before the Web API session it uses).
    closed = await slack.wait_for_disconnect(conn.id)
    assert (closed.closed_by, closed.close_code) == ("client", 1000)
    assert len(slack.socket_connections) == 1


async def test_open_slack_needs_the_app_token(slack: FakeSlack, world: World) -> None:
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
            await open_slack(
                stack,
                world.settings,
                SystemClock(),
                slack_env(app_token=None),
                rt=world.rt,
                inventory=world.inventory,
                slo_rows=list,
                wake=lambda: None,
            )
    assert slack.calls == []


async def test_open_slack_does_not_wait_for_a_refused_connection(
    slack: FakeSlack, world: World
) -> None:
    """A wrong app token (or Slack out of reach) makes slack-sdk retry ``apps.connections.open``
    every ``ping_interval`` seconds, forever: the service must start anyway."""
    async with AsyncExitStack() as stack:
        # Without the fix in open_slack this await never returns; the deadline only turns a
        # hang into a failure.
        async with asyncio.timeout(30):
            runtime = await open_slack(
                stack,
                world.settings,
                SystemClock(),
                slack_env(app_token="xapp-1-A0CPAPP01-revoked"),
                rt=world.rt,
                inventory=world.inventory,
                slo_rows=list,
                wake=lambda: None,
            )
        assert runtime is not None
        (refused,) = await slack.wait_for("apps.connections.open")
        assert refused.error == "invalid_auth"
    assert slack.socket_connections == []
