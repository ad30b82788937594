"""The Slack fake and the signing helpers, driven by the real slack-sdk clients and Bolt app.

Slack is unreachable here (DESIGN.md section 4), so these tests pin the two stand-ins the bot's
tests rely on: :class:`~tests.support.slack_fake.FakeSlack` must answer slack-sdk's
``AsyncWebClient`` and ``WebClient`` the way Slack does (shapes, errors, 429 with
``Retry-After``), and the bodies from :mod:`tests.support.slack_signing` must be accepted by a
real ``AsyncApp`` behind the aiohttp adapter exactly when Slack's would be.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.slack_fake import FakeSlack
from tests.support.slack_signing import (
    FORM,
    block_action_body,
    sign,
    signed_headers,
    slash_command_body,
    view_submission_body,
)

TOKEN = "xoxb-certpilot-test-token"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(
        token=TOKEN,
        users={"U1": {"name": "alice", "tz": "Europe/Berlin"}},
        usergroups={"S0APPROVERS": ["U1", "U2"]},
    ) as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.base_url)


# -- Web API through AsyncWebClient --------------------------------------------------------


async def test_auth_test(slack: FakeSlack, client: AsyncWebClient) -> None:
    r = await client.auth_test()
    assert r["ok"] is True
    assert r["user_id"] == slack.bot_user_id
    assert r["bot_id"] == slack.bot_id
    assert r["team_id"] == slack.team_id
    assert r["url"] == "https://certpilot.slack.com/"
    (call,) = slack.calls_to("auth.test")
    assert call.ok
    assert "authorization" not in {k.lower() for k in call.headers}


async def test_post_update_and_thread(slack: FakeSlack, client: AsyncWebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*expiring*"}}]
    first = await client.chat_postMessage(channel="C1", text="cert expiring", blocks=blocks)
    second = await client.chat_postMessage(channel="C1", text="another")
    ts = first["ts"]
    assert first["channel"] == "C1"
    assert first["message"]["text"] == "cert expiring"
    assert first["message"]["blocks"] == blocks
    assert first["message"]["bot_id"] == slack.bot_id
    assert ts == "1764300000.000100"
    assert float(second["ts"]) > float(ts)
    assert (
        slack.calls_to("chat.postMessage")[0].headers["Content-Type"].startswith("application/json")
    )

    updated = await client.chat_update(channel="C1", ts=ts, text="cert renewed")
    assert (updated["channel"], updated["ts"], updated["text"]) == ("C1", ts, "cert renewed")
    assert updated["message"]["blocks"] == blocks  # left out, so kept

    reply = await client.chat_postMessage(channel="C1", thread_ts=ts, text="by alice")
    assert reply["message"]["thread_ts"] == ts

    top = slack.messages("C1")
    assert [m["text"] for m in top] == ["cert renewed", "another"]
    assert top[0]["reply_count"] == 1
    assert top[0]["latest_reply"] == reply["ts"]
    assert [m["text"] for m in slack.thread("C1", ts)] == ["by alice"]
    assert slack.thread("C1", second["ts"]) == []


async def test_unknown_message_and_thread(slack: FakeSlack, client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel="C1", ts="1764300000.999900", text="x")
    assert e.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C1", thread_ts="1764300000.999900", text="x")
    assert e.value.response["error"] == "thread_not_found"
    assert slack.messages("C1") == []


async def test_post_to_a_user_lands_in_a_dm(slack: FakeSlack, client: AsyncWebClient) -> None:
    r = await client.chat_postMessage(channel="U1", text="your approval is needed")
    assert r["channel"].startswith("D")
    assert [m["text"] for m in slack.messages(r["channel"])] == ["your approval is needed"]
    await client.chat_update(channel=r["channel"], ts=r["ts"], text="approved")
    assert slack.messages("U1")[0]["text"] == "approved"


async def test_ephemeral_views_users_usergroups(slack: FakeSlack, client: AsyncWebClient) -> None:
    eph = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert eph["message_ts"]
    assert slack.ephemerals("C1")[0]["user"] == "U1"
    assert slack.messages("C1") == []

    view = {
        "type": "modal",
        "callback_id": "renew",
        "private_metadata": "cert-42",
        "title": {"type": "plain_text", "text": "Renew"},
        "blocks": [],
    }
    opened = await client.views_open(trigger_id="1.2.abc", view=view)
    assert opened["view"]["id"].startswith("V")
    assert opened["view"]["callback_id"] == "renew"
    assert opened["view"]["private_metadata"] == "cert-42"
    assert opened["view"]["state"] == {"values": {}}
    with pytest.raises(SlackApiError) as e:
        await client.views_open(trigger_id="", view=view)
    assert e.value.response["error"] == "invalid_arguments"

    members = await client.usergroups_users_list(usergroup="S0APPROVERS")
    assert members["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError) as e:
        await client.usergroups_users_list(usergroup="S0NOPE")
    assert e.value.response["error"] == "no_such_subteam"

    info = await client.users_info(user="U1")
    assert info["user"]["name"] == "alice"
    assert info["user"]["tz"] == "Europe/Berlin"
    assert info["user"]["tz_offset"] in (3600, 7200)
    with pytest.raises(SlackApiError) as e:
        await client.users_info(user="U404")
    assert e.value.response["error"] == "user_not_found"
    # slack-sdk sends these two as GETs with a query string.
    assert {c.http_method for c in slack.calls_to("users.info")} == {"GET"}


async def test_wrong_token_and_unknown_method(slack: FakeSlack) -> None:
    bad = AsyncWebClient(token="xoxb-someone-else", base_url=slack.base_url)
    with pytest.raises(SlackApiError) as e:
        await bad.chat_postMessage(channel="C1", text="hi")
    assert e.value.response.status_code == 200
    assert e.value.response["error"] == "invalid_auth"
    assert slack.messages("C1") == []

    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(base_url=slack.base_url).auth_test()
    assert e.value.response["error"] == "not_authed"

    with pytest.raises(SlackApiError) as e:
        await AsyncWebClient(token=TOKEN, base_url=slack.base_url).api_call("certs.renew")
    assert e.value.response["error"] == "unknown_method"


async def test_rate_limit_is_retried_by_the_handler(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    r = await client.chat_postMessage(channel="C1", text="after the limit")
    assert r["ok"] is True
    first, second = slack.calls_to("chat.postMessage")
    assert (first.status, first.error) == (429, "ratelimited")
    assert second.ok
    assert [m["text"] for m in slack.messages("C1")] == ["after the limit"]


async def test_rate_limit_without_handler_raises(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.rate_limit("chat.postMessage", times=1, retry_after=7)
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel="C1", text="x")
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    assert e.value.response["error"] == "ratelimited"
    assert (await client.chat_postMessage(channel="C1", text="x"))["ok"] is True


async def test_fail_knob(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.fail("chat.update", "cant_update_message", times=2)
    r = await client.chat_postMessage(channel="C1", text="x")
    for _ in range(2):
        with pytest.raises(SlackApiError) as e:
            await client.chat_update(channel="C1", ts=r["ts"], text="y")
        assert e.value.response["error"] == "cant_update_message"
    assert (await client.chat_update(channel="C1", ts=r["ts"], text="y"))["ok"] is True


async def test_wait_for_polls(slack: FakeSlack, client: AsyncWebClient) -> None:
    async def later() -> None:
        await asyncio.sleep(0.1)
        await client.chat_postMessage(channel="C1", text="one")
        await client.chat_postMessage(channel="C1", text="two")

    task = asyncio.create_task(later())
    calls = await slack.wait_for(
        "chat.postMessage", count=2, predicate=lambda c: c.params["channel"] == "C1"
    )
    await task
    assert [c.params["text"] for c in calls] == ["one", "two"]
    with pytest.raises(TimeoutError, match=r"chat\.update"):
        await slack.wait_for("chat.update", timeout=0.1)


# -- Web API through the sync WebClient (its own thread, no event loop in the test) ---------


def test_sync_client_json_and_form() -> None:
    with FakeSlack(token=TOKEN) as slack:
        client = WebClient(token=TOKEN, base_url=slack.base_url)
        assert client.auth_test()["user_id"] == slack.bot_user_id
        posted = client.chat_postMessage(channel="C9", text="hello")
        blocks = [{"type": "section", "text": {"type": "plain_text", "text": "form"}}]
        # Form-encoded, with blocks as JSON text: the fake decodes them.
        form = client.api_call(
            "chat.postMessage",
            params={"channel": "C9", "text": "form", "blocks": json.dumps(blocks)},
        )
        assert form["message"]["blocks"] == blocks
        call = slack.calls_to("chat.postMessage")[1]
        assert call.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
        assert call.params["blocks"] == blocks
        client.chat_update(channel="C9", ts=posted["ts"], text="hello again")
        client.chat_postMessage(channel="C9", thread_ts=posted["ts"], text="reply")
        assert [m["text"] for m in slack.messages("C9")] == ["hello again", "form"]
        assert [m["text"] for m in slack.thread("C9", posted["ts"])] == ["reply"]
        assert len(slack.wait_for_sync("chat.postMessage", count=3)) == 3
        with pytest.raises(SlackApiError) as e:
            WebClient(token="xoxb-wrong", base_url=slack.base_url).auth_test()
        assert e.value.response["error"] == "invalid_auth"
    assert not slack.running


# -- signing and bodies, against the real Bolt app -----------------------------------------


def test_sign_matches_slack_sdk() -> None:
    body = slash_command_body()
    headers = sign(SECRET, body, 1764300000)
    verifier = SignatureVerifier(SECRET)
    assert headers["X-Slack-Signature"] == verifier.generate_signature(
        timestamp="1764300000", body=body
    )
    assert headers["X-Slack-Request-Timestamp"] == "1764300000"


@dataclass
class Bot:
    """A Bolt app behind the aiohttp adapter, and what its listeners saw."""

    url: str
    session: aiohttp.ClientSession
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(self.url, data=body, headers=headers) as r:
            return r.status, await r.text()


@pytest.fixture
async def bot(slack: FakeSlack) -> AsyncIterator[Bot]:
    # The token rides on the client; passing token= as well only earns a Bolt warning.
    app = AsyncApp(
        client=AsyncWebClient(token=TOKEN, base_url=slack.base_url), signing_secret=SECRET
    )
    seen: list[dict[str, Any]] = []

    @app.command("/certs")
    async def certs(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack("pong")
        seen.append(command)
        if command["text"] == "later":
            await respond(text="renewal queued")

    @app.action("approve")
    async def approve(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        seen.append(body)
        await client.chat_update(
            channel=body["channel"]["id"],
            ts=body["message"]["ts"],
            text=f"approved by <@{body['user']['id']}>",
        )

    @app.view("renew")
    async def renew(ack: AsyncAck, view: dict[str, Any]) -> None:
        await ack()
        seen.append(view)

    async def endpoint(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", endpoint)
    server = test_utils.TestServer(web_app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Bot(str(server.make_url("/slack/events")), session, seen)
    finally:
        await server.close()


async def test_bolt_accepts_a_signed_command(slack: FakeSlack, bot: Bot) -> None:
    body = slash_command_body(text="status")
    status, text = await bot.post(body, signed_headers(SECRET, body))
    assert (status, text) == (200, "pong")
    assert bot.seen[0]["command"] == "/certs"
    assert bot.seen[0]["user_id"] == "U1"
    # With a token, Bolt checks it with auth.test on the first request.
    assert slack.calls_to("auth.test")[0].ok


async def test_bolt_refuses_a_wrong_signature(bot: Bot) -> None:
    body = slash_command_body()
    status, _ = await bot.post(body, signed_headers("not-the-secret", body))
    assert status == 401
    tampered = slash_command_body(text="revoke all")
    status, _ = await bot.post(tampered, signed_headers(SECRET, body))
    assert status == 401
    assert bot.seen == []


async def test_bolt_refuses_a_stale_timestamp(bot: Bot) -> None:
    body = slash_command_body()
    status, _ = await bot.post(body, signed_headers(SECRET, body, int(time.time()) - 6 * 60))
    assert status == 401
    assert bot.seen == []


async def test_command_respond_reaches_the_fake(slack: FakeSlack, bot: Bot) -> None:
    body = slash_command_body(text="later", response_url=slack.response_url())
    assert await bot.post(body, signed_headers(SECRET, body)) == (200, "pong")
    (call,) = await slack.wait_for("response_url")
    assert call.params["text"] == "renewal queued"


async def test_block_action_updates_the_message(
    slack: FakeSlack, client: AsyncWebClient, bot: Bot
) -> None:
    posted = await client.chat_postMessage(channel="C1", text="approve renewal?")
    body = block_action_body("approve", "cert-42", user_id="U1", message_ts=posted["ts"])
    headers = {"Content-Type": FORM, **sign(SECRET, body, int(time.time()))}
    assert (await bot.post(body, headers))[0] == 200
    await slack.wait_for("chat.update")
    assert slack.messages("C1")[0]["text"] == "approved by <@U1>"
    assert bot.seen[0]["actions"][0]["value"] == "cert-42"


async def test_view_submission(bot: Bot) -> None:
    body = view_submission_body(
        "renew", private_metadata="cert-42", values={"reason": {"reason_input": "key leaked"}}
    )
    status, _ = await bot.post(body, signed_headers(SECRET, body))
    assert status == 200
    (view,) = bot.seen
    assert view["private_metadata"] == "cert-42"
    assert view["state"]["values"]["reason"]["reason_input"]["value"] == "key leaked"
