"""Requests as Slack sends them to an app: signed, with realistic bodies.

Slack cannot reach this machine, so tests play Slack's part towards the real Bolt app: build the
body Slack would send (:func:`slash_command_body`, :func:`block_action_body`,
:func:`view_submission_body`), sign it with :func:`sign`, and POST it to the app's endpoint.

Signing follows https://docs.slack.dev/authentication/verifying-requests-from-slack/:
``X-Slack-Signature`` is ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{raw body}`` keyed with
the app's signing secret, and ``X-Slack-Request-Timestamp`` carries the timestamp. Bolt refuses
(401) a wrong signature and a timestamp more than five minutes away from its clock.

The bodies carry every field Slack sends today, in Slack's order, with ids shaped like real ones
(``U...``, ``C...``, ``T...``). Slash commands are form-encoded fields; interactions (button
clicks, modal submissions) are one form field, ``payload``, holding JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

FORM = "application/x-www-form-urlencoded"
"""The ``Content-Type`` of everything Slack posts to an app's request URL."""

DEFAULT_APP_ID = "A0CPAPP01"
DEFAULT_TOKEN = "verification-token-deprecated"
"""The legacy verification token Slack still puts in every body (Bolt ignores it)."""


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The two headers Slack signs a request with (version ``v0``)."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """:func:`sign` (at the current time unless given) plus the form ``Content-Type``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": FORM, **sign(secret, body, ts)}


def new_trigger_id() -> str:
    """A fresh ``trigger_id`` shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    return (
        f"{secrets.randbelow(10**13):013d}.{secrets.randbelow(10**12):012d}.{secrets.token_hex(16)}"
    )


def _response_url(kind: str, team_id: str) -> str:
    return (
        f"https://hooks.slack.com/{kind}/{team_id}/"
        f"{secrets.randbelow(10**13):013d}/{secrets.token_urlsafe(18)}"
    )


def _action_ts() -> str:
    return f"{time.time():.6f}"


def slash_command_body(
    command: str = "/certs",
    text: str = "status",
    user_id: str = "U1",
    user_name: str = "alice",
    channel_id: str = "C1",
    team_id: str = "T1",
    response_url: str | None = None,
    *,
    team_domain: str = "certpilot",
    channel_name: str = "certs",
    api_app_id: str = DEFAULT_APP_ID,
    trigger_id: str | None = None,
    token: str = DEFAULT_TOKEN,
) -> bytes:
    """The form body Slack posts when ``user_id`` types ``command text`` in ``channel_id``.

    ``response_url`` defaults to a hooks.slack.com one (nothing listens there: give
    ``FakeSlack.response_url()`` when the handler calls ``respond()``).
    """
    fields = {
        "token": token,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url or _response_url("commands", team_id),
        "trigger_id": trigger_id or new_trigger_id(),
    }
    return urlencode(fields).encode()


def _payload(payload: Mapping[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()


def _user(user_id: str, user_name: str, team_id: str) -> dict[str, str]:
    return {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id}


def block_action_body(
    action_id: str,
    value: str,
    user_id: str = "U1",
    channel_id: str = "C1",
    message_ts: str = "1764300000.000100",
    *,
    block_id: str = "actions",
    button_text: str = "Approve",
    user_name: str = "alice",
    team_id: str = "T1",
    team_domain: str = "certpilot",
    channel_name: str = "certs",
    message_text: str = "",
    message_blocks: list[dict[str, Any]] | None = None,
    bot_user_id: str = "U0CPBOT01",
    bot_id: str = "B0CPBOT01",
    response_url: str | None = None,
    trigger_id: str | None = None,
    api_app_id: str = DEFAULT_APP_ID,
    token: str = DEFAULT_TOKEN,
) -> bytes:
    """The body Slack posts when ``user_id`` clicks a button (``action_id``, ``value``) on the
    bot's message ``message_ts`` in ``channel_id``.

    ``message_blocks`` are the message's blocks as Slack echoes them back; by default one
    ``actions`` block holding the clicked button, which is what a real click comes from.
    """
    button = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": button_text, "emoji": True},
        "value": value,
    }
    blocks = (
        message_blocks
        if message_blocks is not None
        else [{"type": "actions", "block_id": block_id, "elements": [button]}]
    )
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id, user_name, team_id),
        "api_app_id": api_app_id,
        "token": token,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": {
            "user": bot_user_id,
            "type": "message",
            "ts": message_ts,
            "bot_id": bot_id,
            "app_id": api_app_id,
            "text": message_text,
            "team": team_id,
            "blocks": blocks,
        },
        "state": {"values": {}},
        "response_url": response_url or _response_url("actions", team_id),
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": button["text"],
                "value": value,
                "type": "button",
                "action_ts": _action_ts(),
            }
        ],
    }
    return _payload(payload)


def view_submission_body(
    callback_id: str,
    private_metadata: str = "",
    values: Mapping[str, Mapping[str, str | Mapping[str, Any]]] | None = None,
    user_id: str = "U1",
    *,
    user_name: str = "alice",
    team_id: str = "T1",
    team_domain: str = "certpilot",
    view_id: str = "V0000000001",
    title: str = "certpilot",
    bot_id: str = "B0CPBOT01",
    trigger_id: str | None = None,
    api_app_id: str = DEFAULT_APP_ID,
    token: str = DEFAULT_TOKEN,
) -> bytes:
    """The body Slack posts when ``user_id`` submits the modal ``callback_id``.

    ``values`` is ``{block_id: {action_id: value}}`` as it appears in ``view.state.values``: a
    string becomes a ``plain_text_input``'s state (``{"type": "plain_text_input", "value": s}``),
    a mapping is used as the state as is (for selects and the like). The view's blocks are
    ``input`` blocks matching ``values``, as the modal that was opened would have had.
    """
    state: dict[str, dict[str, Any]] = {}
    blocks: list[dict[str, Any]] = []
    for block_id, actions in (values or {}).items():
        state[block_id] = {}
        for action_id, v in actions.items():
            element_state = (
                {"type": "plain_text_input", "value": v} if isinstance(v, str) else dict(v)
            )
            state[block_id][action_id] = element_state
            blocks.append(
                {
                    "type": "input",
                    "block_id": block_id,
                    "label": {"type": "plain_text", "text": action_id, "emoji": True},
                    "optional": False,
                    "dispatch_action": False,
                    "element": {"type": element_state["type"], "action_id": action_id},
                }
            )
    payload: dict[str, Any] = {
        "type": "view_submission",
        "team": {"id": team_id, "domain": team_domain},
        "user": _user(user_id, user_name, team_id),
        "api_app_id": api_app_id,
        "token": token,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": blocks,
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": {"type": "plain_text", "text": title, "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {"type": "plain_text", "text": "Cancel", "emoji": True},
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": api_app_id,
            "external_id": "",
            "app_installed_team_id": team_id,
            "bot_id": bot_id,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return _payload(payload)


__all__ = [
    "FORM",
    "block_action_body",
    "new_trigger_id",
    "sign",
    "signed_headers",
    "slash_command_body",
    "view_submission_body",
]
