"""A loopback fake of the part of Slack's Web API that certpilot's bot calls.

Slack itself is unreachable from this machine (DESIGN.md section 4), so the bot talks to this
instead: point slack-sdk at it with ``AsyncWebClient(token=..., base_url=slack.base_url)`` (the
trailing slash matters, slack-sdk appends the method name) and every call lands here, is
answered with the shape the real API answers with, and is recorded for the test to assert on.

=========================  ==================================================================
method                     answers
=========================  ==================================================================
``auth.test``              ``url``, ``team``, ``user``, ``team_id``, ``user_id``, ``bot_id``
``chat.postMessage``       ``channel``, ``ts`` (fresh, increasing), ``message``;
                           ``thread_not_found`` for a ``thread_ts`` never posted
``chat.update``            ``channel``, ``ts``, ``text``, ``message``; ``message_not_found``
``chat.postEphemeral``     ``message_ts``
``views.open``             ``view`` with ``id``, ``hash``, ``state``, ``root_view_id``...
``usergroups.users.list``  ``users`` (:meth:`FakeSlack.set_usergroup`); ``no_such_subteam``
``users.info``             ``user`` with ``tz``, ``tz_offset``... (:meth:`FakeSlack.add_user`)
``apps.connections.open``  ``url`` of the Socket Mode websocket (app-level token only)
anything else              ``unknown_method`` (with ``req_method``, as Slack words it)
=========================  ==================================================================

As on the real API, every answer is HTTP 200 with ``ok`` true or false and an ``error`` code,
except a rate limit: HTTP 429 with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``
(slack-sdk's ``RateLimitErrorRetryHandler`` reads exactly that header). The token goes in
``Authorization: Bearer``; none at all is ``not_authed``, a wrong one ``invalid_auth``.

Parameters are accepted the three ways slack-sdk sends them: a JSON body (``chat.*`` and
``views.*``), a form body (the sync client's ``params``) and the query string (``users.info``
and ``usergroups.users.list`` are GETs in slack-sdk, so ``GET /api/<method>`` is served too).
Parameters that travel as JSON text inside a form (``blocks``, ``attachments``, ``view``,
``metadata``) are decoded, so a test sees a list of blocks whichever client sent it.

Besides the Web API, the fake answers ``response_url`` posts (what Bolt's ``respond()`` does):
:meth:`FakeSlack.response_url` mints one, a POST to it is recorded as method ``"response_url"``
and answered with the plain text ``ok`` that hooks.slack.com sends.

Test knobs: :meth:`FakeSlack.rate_limit` and :meth:`FakeSlack.fail` for the next calls to one
method; the request log :attr:`FakeSlack.calls` with :meth:`~FakeSlack.calls_to`; the state
Slack would show (:meth:`~FakeSlack.messages` after updates, :meth:`~FakeSlack.thread`,
:meth:`~FakeSlack.ephemerals`, :attr:`~FakeSlack.views`); and :meth:`FakeSlack.wait_for`,
because Bolt runs a listener's body after ``ack()`` has answered, so its calls arrive later.

Socket Mode (``slack-sdk``'s ``socket_mode`` clients, Bolt's ``SocketModeHandler``s) works as
on Slack: ``apps.connections.open`` takes the app-level token (``app_token``, ``xapp-...``; the
bot token there, or the app token anywhere else, is ``not_allowed_token_type``) and answers
``{"ok": true, "url": "ws://127.0.0.1:<port>/link/?ticket=...&app_id=..."}``. A websocket to
that URL is greeted with ``{"type": "hello", "num_connections", "debug_info",
"connection_info": {"app_id"}}``; the client's pings are answered with pongs carrying the same
data (slack-sdk measures liveness by them). The test pushes envelopes from its own thread with
:meth:`FakeSlack.socket_send` (``{"envelope_id", "payload", "type", "accepts_response_payload"}``;
``payload`` may be a body from :mod:`tests.support.slack_signing`, decoded as Slack would put it
in an envelope) and reads the app's acknowledgements (``{"envelope_id", "payload"?}``) from
:attr:`FakeSlack.socket_acks` or :meth:`FakeSlack.wait_for_ack`. An ack is only recorded: the
fake does not turn a slash command's ack payload into an ephemeral message.
:meth:`FakeSlack.socket_disconnect` sends Slack's ``disconnect`` message (the client reconnects
with a fresh URL), :meth:`FakeSlack.socket_close` drops the connection from the server's side,
and :attr:`FakeSlack.socket_connections` tells who connected, pinged and closed (and how).

The server runs in a thread with its own event loop (as :mod:`tests.support.k8s_fake` does), so
``with FakeSlack() as slack:`` in a sync test and ``async with FakeSlack() as slack:`` in an async
one behave the same, and a test's own loop never has to serve it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import itertools
import json
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from aiohttp import WSCloseCode, WSMsgType, web

from tests.support.loopback import ThreadedServer

DEFAULT_TOKEN = "xoxb-certpilot-fake-bot-token"
"""Shaped like a bot token but not like a real one (secret scanners match real ones)."""

DEFAULT_APP_TOKEN = "xapp-1-A0CPAPP01-certpilot-fake-app-token"
"""The app-level token ``apps.connections.open`` accepts (Socket Mode), shaped likewise."""

ENVELOPE_TYPES = ("slash_commands", "interactive", "events_api")
"""What Slack sends over a Socket Mode connection besides ``hello`` and ``disconnect``."""

_ACCEPTS_RESPONSE_PAYLOAD = frozenset({"view_submission", "block_suggestion"})
"""Interactions whose ack may carry a response (a modal's errors or update, select options)."""

_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
"""Methods that take the app-level token instead of the bot token."""

_SOCKET_HOST = "applink-certpilot-fake"
"""``debug_info.host`` in ``hello`` and ``disconnect`` messages."""

_T = TypeVar("_T")

TS_EPOCH = 1764300000
"""Seconds part of the first ``ts`` the fake hands out (late November 2025)."""

_JSON_PARAMS = {
    "blocks": "invalid_blocks_format",
    "attachments": "invalid_attachments",
    "view": "invalid_arguments",
    "metadata": "invalid_metadata_format",
}
"""Parameters that are JSON text when form-encoded, and the error Slack gives for bad JSON."""


def _truthy(value: Any) -> bool:
    """A boolean parameter: JSON ``true``, or ``"true"``/``"1"`` from a form (slack-sdk's)."""
    return value is True or value in ("true", "1")


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the fake saw it, and what it answered.

    ``params`` merges the query string and the body (JSON or form), with JSON-in-form parameters
    decoded and ``token`` removed; ``headers`` never hold ``Authorization``.
    """

    method: str
    """The Web API method (``chat.postMessage``), or ``"response_url"``."""
    params: dict[str, Any]
    headers: dict[str, str]
    at: datetime
    http_method: str = "POST"
    path: str = ""
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether Slack would have said yes (HTTP 200 and ``"ok": true``)."""
        return self.status == 200 and self.response.get("ok") is True

    @property
    def error(self) -> str | None:
        """The ``error`` code of a refused call."""
        error = self.response.get("error")
        return error if isinstance(error, str) else None


class SlackError(Exception):
    """An ``{"ok": false, "error": ...}`` answer, raised inside a method handler."""

    def __init__(
        self,
        error: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error": self.error, **self.extra}


def _missing(name: str) -> SlackError:
    """What Slack answers when a required argument is absent (wording from the live API)."""
    return SlackError(
        "invalid_arguments",
        response_metadata={"messages": [f"[ERROR] missing required field: {name}"]},
    )


@dataclass(slots=True)
class _Fault:
    status: int
    error: str
    retry_after: int | None


@dataclass(frozen=True, slots=True)
class SocketEnvelope:
    """One envelope the fake pushed over a Socket Mode connection."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    connection: int
    """:attr:`SocketConnection.id` of the connection it went over."""
    message: dict[str, Any]
    """The whole JSON message as sent."""
    at: datetime


@dataclass(frozen=True, slots=True)
class SocketAck:
    """One message the app sent back with an ``envelope_id``: its acknowledgement."""

    envelope_id: str
    payload: dict[str, Any] | None
    """The response the app put in the ack (a slash command's answer...); ``None`` when bare."""
    connection: int
    message: dict[str, Any]
    """The whole JSON message as received."""
    at: datetime
    known: bool = True
    """Whether the fake had sent an envelope with this id."""


@dataclass(frozen=True, slots=True)
class SocketConnection:
    """One Socket Mode websocket, as it stood when read (:attr:`FakeSlack.socket_connections`)."""

    id: int
    ticket: str
    opened_at: datetime
    hello: dict[str, Any]
    closed_at: datetime | None = None
    close_code: int | None = None
    """What the closing side sent (1000 when slack-sdk closes; 1006 when the peer vanished)."""
    closed_by: str | None = None
    """``"client"`` or ``"server"`` (:meth:`FakeSlack.socket_close`, :meth:`FakeSlack.stop`)."""
    pings: tuple[bytes, ...] = ()
    """The data of every ping the client sent (each answered with a pong carrying it)."""
    received: tuple[str, ...] = ()
    """Every text message from the client, acks or not, in arrival order."""

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(slots=True)
class _Socket:
    """A live or closed connection; ``ws`` is only touched on the fake's loop."""

    id: int
    ticket: str
    ws: web.WebSocketResponse
    opened_at: datetime
    hello: dict[str, Any] = field(default_factory=dict)
    ready: bool = False  # hello sent: envelopes may go
    closed_at: datetime | None = None
    close_code: int | None = None
    closed_by: str | None = None
    pings: list[bytes] = field(default_factory=list)
    received: list[str] = field(default_factory=list)

    def snapshot(self) -> SocketConnection:
        return SocketConnection(
            id=self.id,
            ticket=self.ticket,
            opened_at=self.opened_at,
            hello=copy.deepcopy(self.hello),
            closed_at=self.closed_at,
            close_code=self.close_code,
            closed_by=self.closed_by,
            pings=tuple(self.pings),
            received=tuple(self.received),
        )


@dataclass(slots=True)
class _State:
    """Everything handlers and the test thread share; guarded by ``FakeSlack._lock``."""

    calls: list[Call] = field(default_factory=list)
    faults: dict[str, deque[_Fault]] = field(default_factory=dict)
    # Top-level messages per channel in posting order, and every message (replies too) by key.
    channels: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    by_ts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replies: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    ephemerals: list[dict[str, Any]] = field(default_factory=list)
    views: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    # Socket Mode: tickets minted by apps.connections.open, connections, envelopes, acks.
    tickets: dict[str, datetime] = field(default_factory=dict)
    sockets: list[_Socket] = field(default_factory=list)
    envelopes: list[SocketEnvelope] = field(default_factory=list)
    acks: list[SocketAck] = field(default_factory=list)


class FakeSlack(ThreadedServer):
    """A fake ``https://slack.com/api/`` on ``http://127.0.0.1:<port>/api/``.

    ``token`` is the one bot token accepted, ``app_token`` the one app-level token (Socket
    Mode's ``apps.connections.open``). The workspace and the bot's identity (what
    ``auth.test`` reports and what posted messages carry) are the other keyword arguments.
    ``users`` maps user ids to ``users.info`` fields (at least ``name``; ``tz`` defaults to UTC)
    and ``usergroups`` maps usergroup ids (``S...``) to member user ids.
    """

    server_name = "fake Slack API"

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        team_id: str = "T0CERTPLT",
        team: str = "certpilot",
        team_domain: str = "certpilot",
        bot_user_id: str = "U0CPBOT01",
        bot_name: str = "certpilot",
        bot_id: str = "B0CPBOT01",
        app_id: str = "A0CPAPP01",
        scopes: tuple[str, ...] = (
            "chat:write",
            "commands",
            "users:read",
            "usergroups:read",
        ),
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.token = token
        self.app_token = app_token
        self.team_id = team_id
        self.team = team
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self.bot_id = bot_id
        self.app_id = app_id
        self.scopes = scopes
        self._lock = threading.Lock()
        self._state = _State()
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._socket_ids = itertools.count(1)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.add_user(bot_user_id, bot_name, is_bot=True, is_app_user=False)
        for user_id, fields in (users or {}).items():
            extra = dict(fields)
            name = str(extra.pop("name", user_id.lower()))
            tz = str(extra.pop("tz", "UTC"))
            self.add_user(user_id, name, tz=tz, **extra)
        for group_id, members in (usergroups or {}).items():
            self.set_usergroup(group_id, members)
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "views.open": self._views_open,
            "usergroups.users.list": self._usergroup_users,
            "users.info": self._users_info,
            "apps.connections.open": self._connections_open,
        }

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give slack-sdk as ``base_url`` (it appends the method name)."""
        return f"{self.url}/api/"

    # -- workspace setup -------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, *, tz: str = "UTC", **fields: Any) -> None:
        """A workspace member as ``users.info`` returns it; ``fields`` override any key
        (``real_name``, ``is_admin``, ``deleted``...). ``tz_label`` is the zone's abbreviation
        (Slack spells it out: "Central European Time"); ``tz_offset`` is its offset now."""
        now = datetime.now(ZoneInfo(tz))
        offset = now.utcoffset()
        real_name = str(fields.get("real_name", name.capitalize()))
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "color": "9f69e7",
            "real_name": real_name,
            "tz": tz,
            "tz_label": now.tzname() or tz,
            "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
            "profile": {
                "real_name": real_name,
                "real_name_normalized": real_name,
                "display_name": name,
                "display_name_normalized": name,
                "team": self.team_id,
            },
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": False,
            "is_app_user": False,
            "updated": int(time.time()),
        }
        user.update(fields)
        with self._lock:
            self._state.users[user_id] = user

    def set_usergroup(self, group_id: str, user_ids: list[str]) -> None:
        """Members of a usergroup (``S...``), as ``usergroups.users.list`` lists them."""
        with self._lock:
            self._state.usergroups[group_id] = list(user_ids)

    def response_url(self, kind: str = "commands") -> str:
        """A fresh ``response_url`` served by this fake (``kind``: ``commands`` for slash
        commands, ``actions`` for interactions), shaped like hooks.slack.com's."""
        return f"{self.url}/{kind}/{self.team_id}/{next(self._ids):013d}/{secrets.token_hex(12)}"

    # -- knobs -----------------------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls to ``method`` get HTTP 429, ``Retry-After: retry_after``
        and ``{"ok": false, "error": "ratelimited"}``, as Slack's rate limiter answers."""
        self._add_faults(method, _Fault(429, "ratelimited", retry_after), times)

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next ``times`` calls to ``method`` get ``{"ok": false, "error": error}``."""
        self._add_faults(method, _Fault(200, error, None), times)

    def _add_faults(self, method: str, fault: _Fault, times: int) -> None:
        with self._lock:
            self._state.faults.setdefault(method, deque()).extend([fault] * times)

    # -- what the test inspects ------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request so far, in arrival order (refused ones too)."""
        with self._lock:
            return list(self._state.calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def clear_calls(self) -> None:
        with self._lock:
            self._state.calls.clear()

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """The channel's top-level messages as they stand now (after ``chat.update``), oldest
        first; thread replies are not among them, as in ``conversations.history``. A user id
        names the bot's DM with that user."""
        with self._lock:
            key = self._dm(channel)
            return copy.deepcopy(self._state.channels.get(key, []))

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message (top-level or reply) as it stands now, or ``None``."""
        with self._lock:
            found = self._state.by_ts.get((self._dm(channel), ts))
            return copy.deepcopy(found) if found is not None else None

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The replies in the thread under message ``ts``, oldest first (without the parent,
        unlike ``conversations.replies``)."""
        with self._lock:
            return copy.deepcopy(self._state.replies.get((self._dm(channel), ts), []))

    def ephemerals(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral messages (``channel``, ``user``, ``ts``, ``text``, ``blocks``...)."""
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._state.ephemerals
                if channel is None or e["channel"] == channel
            ]

    @property
    def views(self) -> list[dict[str, Any]]:
        """Every view opened with ``views.open``, as the answer described it."""
        with self._lock:
            return copy.deepcopy(self._state.views)

    def _matching(self, method: str, predicate: Callable[[Call], bool] | None) -> list[Call]:
        return [c for c in self.calls_to(method) if predicate is None or predicate(c)]

    def _timeout(self, method: str, count: int, found: int, timeout: float) -> TimeoutError:
        seen = ", ".join(f"{c.method}:{c.error or 'ok'}" for c in self.calls) or "nothing"
        return TimeoutError(
            f"expected {count} matching {method} call(s) within {timeout}s, got {found}; "
            f"the fake saw: {seen}"
        )

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10.0,
        predicate: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """Poll until ``count`` calls to ``method`` (matching ``predicate``) have arrived and
        return them; :class:`TimeoutError` naming every call seen otherwise. Needed because Bolt
        answers Slack at ``ack()`` and runs the rest of a listener afterwards."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._matching(method, predicate)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise self._timeout(method, count, len(found), timeout)
            await asyncio.sleep(0.02)

    def wait_for_sync(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10.0,
        predicate: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """:meth:`wait_for` for sync tests (blocks the calling thread while polling)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._matching(method, predicate)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise self._timeout(method, count, len(found), timeout)
            time.sleep(0.02)

    # -- Socket Mode -----------------------------------------------------------------------

    @property
    def socket_connections(self) -> list[SocketConnection]:
        """Every Socket Mode connection so far (closed ones too), oldest first."""
        with self._lock:
            return [s.snapshot() for s in self._state.sockets]

    @property
    def socket_envelopes(self) -> list[SocketEnvelope]:
        """Every envelope pushed so far, in order."""
        with self._lock:
            return list(self._state.envelopes)

    @property
    def socket_acks(self) -> list[SocketAck]:
        """Every acknowledgement received so far, in arrival order."""
        with self._lock:
            return list(self._state.acks)

    def socket_send(
        self,
        envelope_type: str,
        payload: Mapping[str, Any] | bytes | str,
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        timeout: float = 10.0,
    ) -> str:
        """Push an envelope to the newest open connection (waiting up to ``timeout`` for one
        that has been greeted) and return its ``envelope_id``.

        ``envelope_type`` is one of :data:`ENVELOPE_TYPES`. ``payload`` is what goes in the
        envelope: a mapping as is, or the body Slack would POST in HTTP mode (from
        :mod:`tests.support.slack_signing`): a slash command's form fields become a mapping of
        strings, an interaction's ``payload=`` form field its decoded JSON, a JSON body (Events
        API) itself. ``accepts_response_payload`` defaults to what Slack sends: true for slash
        commands, modal submissions and select options, false otherwise. ``events_api``
        envelopes carry ``retry_attempt`` and ``retry_reason`` too.

        Blocks the calling thread until the message is written; from a coroutine running on the
        app's own loop while that loop still has to connect, use :meth:`socket_send_async`.
        """
        envelope = self._envelope(
            envelope_type, payload, accepts_response_payload, retry_attempt, retry_reason
        )
        self._on_loop(self._push(envelope, timeout), timeout)
        return str(envelope["envelope_id"])

    async def socket_send_async(
        self,
        envelope_type: str,
        payload: Mapping[str, Any] | bytes | str,
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        timeout: float = 10.0,
    ) -> str:
        """:meth:`socket_send` without blocking the calling event loop."""
        envelope = self._envelope(
            envelope_type, payload, accepts_response_payload, retry_attempt, retry_reason
        )
        await asyncio.wrap_future(self._submit(self._push(envelope, timeout)))
        return str(envelope["envelope_id"])

    def socket_disconnect(self, reason: str = "refresh_requested", timeout: float = 10.0) -> int:
        """Send Slack's ``{"type": "disconnect", "reason": ...}`` on the newest open connection
        and return its id. slack-sdk answers it by opening a new connection (a fresh
        ``apps.connections.open``) and closing this one. Slack's reasons: ``warning``,
        ``refresh_requested``, ``link_disabled``, ``too_many_websockets``."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": _SOCKET_HOST}}
        return self._on_loop(self._push(message, timeout), timeout)

    def socket_close(
        self,
        connection: int | None = None,
        code: int = WSCloseCode.GOING_AWAY,
        timeout: float = 10.0,
    ) -> None:
        """Close a connection (the newest open one by default) from the server's side, as a
        Slack host going away does; the close handshake completes before this returns."""
        self._on_loop(self._close(connection, code), timeout)

    async def wait_for_ack(self, envelope_id: str, timeout: float = 10.0) -> SocketAck:
        """Poll until the app has acknowledged ``envelope_id``; :class:`TimeoutError` naming
        what did arrive otherwise."""
        return await self._poll(lambda: self._ack(envelope_id), timeout, self._no_ack(envelope_id))

    def wait_for_ack_sync(self, envelope_id: str, timeout: float = 10.0) -> SocketAck:
        """:meth:`wait_for_ack` for sync tests (blocks the calling thread while polling)."""
        return self._poll_sync(lambda: self._ack(envelope_id), timeout, self._no_ack(envelope_id))

    async def wait_for_connection(self, count: int = 1, timeout: float = 10.0) -> SocketConnection:
        """Poll until ``count`` connections have been greeted with ``hello`` (closed ones
        count) and return the ``count``-th."""
        return await self._poll(lambda: self._nth_socket(count), timeout, self._no_socket(count))

    def wait_for_connection_sync(self, count: int = 1, timeout: float = 10.0) -> SocketConnection:
        """:meth:`wait_for_connection` for sync tests."""
        return self._poll_sync(lambda: self._nth_socket(count), timeout, self._no_socket(count))

    async def wait_for_disconnect(
        self, connection: int | None = None, timeout: float = 10.0
    ) -> SocketConnection:
        """Poll until connection ``connection`` (the newest by default) is closed, by either
        side, and return it as it ended."""
        return await self._poll(
            lambda: self._closed(connection), timeout, self._still_open(connection)
        )

    def wait_for_disconnect_sync(
        self, connection: int | None = None, timeout: float = 10.0
    ) -> SocketConnection:
        """:meth:`wait_for_disconnect` for sync tests."""
        return self._poll_sync(
            lambda: self._closed(connection), timeout, self._still_open(connection)
        )

    def _envelope(
        self,
        envelope_type: str,
        payload: Mapping[str, Any] | bytes | str,
        accepts_response_payload: bool | None,
        retry_attempt: int,
        retry_reason: str,
    ) -> dict[str, Any]:
        if envelope_type not in ENVELOPE_TYPES:
            raise ValueError(f"Slack sends no {envelope_type!r} envelopes ({ENVELOPE_TYPES})")
        body = _socket_payload(payload)
        accepts = accepts_response_payload
        if accepts is None:
            accepts = envelope_type == "slash_commands" or (
                envelope_type == "interactive" and body.get("type") in _ACCEPTS_RESPONSE_PAYLOAD
            )
        envelope: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "payload": body,
            "type": envelope_type,
            "accepts_response_payload": accepts,
        }
        if envelope_type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        return envelope

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the fake Slack is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def _on_loop(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return self._submit(coro).result(timeout + 5)

    def _live(self) -> list[_Socket]:
        with self._lock:
            return [s for s in self._state.sockets if s.ready and s.closed_at is None]

    async def _push(self, message: dict[str, Any], timeout: float) -> int:
        """On the fake's loop: write ``message`` to the newest greeted, open connection."""
        deadline = time.monotonic() + timeout
        while not (live := self._live()):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no open Socket Mode connection within {timeout}s "
                    f"({len(self.socket_connections)} closed)"
                )
            await asyncio.sleep(0.02)
        sock = live[-1]
        if "envelope_id" in message:
            envelope = SocketEnvelope(
                envelope_id=str(message["envelope_id"]),
                type=str(message["type"]),
                payload=message["payload"],
                accepts_response_payload=bool(message["accepts_response_payload"]),
                connection=sock.id,
                message=message,
                at=datetime.now(UTC),
            )
            with self._lock:
                self._state.envelopes.append(envelope)
        await sock.ws.send_str(json.dumps(message))
        return sock.id

    async def _close(self, connection: int | None, code: int) -> None:
        live = self._live()
        targets = [s for s in live if connection is None or s.id == connection][-1:]
        if not targets:
            raise LookupError(f"no open Socket Mode connection {connection or ''}".rstrip())
        await self._server_close(targets[0], code, b"closed by the fake")

    async def _server_close(self, sock: _Socket, code: int, message: bytes) -> None:
        with self._lock:
            if sock.closed_by is None:
                sock.closed_by, sock.close_code = "server", int(code)
        await sock.ws.close(code=code, message=message)

    async def _close_sockets(self, app: web.Application) -> None:
        """On shutdown: close every open connection (1001, as a Slack host going away)."""
        for sock in self._live():
            await self._server_close(sock, WSCloseCode.GOING_AWAY, b"server shutdown")

    def _ack(self, envelope_id: str) -> SocketAck | None:
        return next((a for a in self.socket_acks if a.envelope_id == envelope_id), None)

    def _no_ack(self, envelope_id: str) -> Callable[[float], str]:
        def why(timeout: float) -> str:
            acked = ", ".join(a.envelope_id for a in self.socket_acks) or "none"
            return f"no ack for envelope {envelope_id} within {timeout}s (acked: {acked})"

        return why

    def _nth_socket(self, count: int) -> SocketConnection | None:
        with self._lock:
            greeted = [s for s in self._state.sockets if s.ready]
            return greeted[count - 1].snapshot() if len(greeted) >= count else None

    def _no_socket(self, count: int) -> Callable[[float], str]:
        def why(timeout: float) -> str:
            opens = len(self.calls_to("apps.connections.open"))
            return (
                f"expected {count} Socket Mode connection(s) within {timeout}s, got "
                f"{len(self.socket_connections)} ({opens} apps.connections.open call(s))"
            )

        return why

    def _closed(self, connection: int | None) -> SocketConnection | None:
        with self._lock:
            socks = [s for s in self._state.sockets if connection is None or s.id == connection]
            if not socks or socks[-1].closed_at is None:
                return None
            return socks[-1].snapshot()

    def _still_open(self, connection: int | None) -> Callable[[float], str]:
        def why(timeout: float) -> str:
            which = "the newest connection" if connection is None else f"connection {connection}"
            return f"{which} was not closed within {timeout}s ({self.socket_connections})"

        return why

    @staticmethod
    async def _poll(
        found: Callable[[], _T | None], timeout: float, why: Callable[[float], str]
    ) -> _T:
        deadline = time.monotonic() + timeout
        while (value := found()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(why(timeout))
            await asyncio.sleep(0.02)
        return value

    @staticmethod
    def _poll_sync(
        found: Callable[[], _T | None], timeout: float, why: Callable[[float], str]
    ) -> _T:
        deadline = time.monotonic() + timeout
        while (value := found()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(why(timeout))
            time.sleep(0.02)
        return value

    # -- server ----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", "/api/{method}", self._api)
        app.router.add_route("GET", "/api/{method}", self._api)
        app.router.add_route("POST", "/commands/{tail:.+}", self._response_url)
        app.router.add_route("POST", "/actions/{tail:.+}", self._response_url)
        app.router.add_route("GET", "/link/", self._socket)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        try:
            params = await _read_params(request)
            token = _bearer(request.headers.get("Authorization", ""))
            body_token = params.pop("token", None)
            if token is None and isinstance(body_token, str):
                token = body_token  # Slack still takes it as a form field
            with self._lock:
                if method not in self._methods:
                    raise SlackError("unknown_method", req_method=method)
                if not token:
                    raise SlackError("not_authed")
                expected, other = self.token, self.app_token
                if method in _APP_TOKEN_METHODS:
                    expected, other = other, expected
                if token != expected:
                    raise SlackError("not_allowed_token_type" if token == other else "invalid_auth")
                faults = self._state.faults.get(method)
                if faults:
                    fault = faults.popleft()
                    retry = (
                        {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                    )
                    raise SlackError(fault.error, status=fault.status, headers=retry)
                status, body = 200, self._methods[method](params)
                extra_headers: dict[str, str] = {}
        except SlackError as e:
            status, body, extra_headers = e.status, e.body(), e.headers
        self._record(request, method, params, status, body)
        return web.Response(
            status=status,
            text=json.dumps(body),
            content_type="application/json",
            charset="utf-8",
            headers={
                "X-Slack-Req-Id": uuid.uuid4().hex,
                "X-OAuth-Scopes": ",".join(self.scopes),
                **extra_headers,
            },
        )

    async def _response_url(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            params = json.loads(raw or b"{}")
        except ValueError:
            params = {"_raw": raw.decode(errors="replace")}
        if not isinstance(params, dict):
            params = {"_raw": params}
        self._record(request, "response_url", params, 200, {"ok": True})
        return web.Response(text="ok", content_type="text/plain")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """``GET /link/?ticket=...``: a Socket Mode websocket (see the module docstring)."""
        ticket = request.query.get("ticket", "")
        with self._lock:
            known = ticket in self._state.tickets
        if not known:  # (Slack's exact refusal is not documented; a client just retries)
            return web.Response(status=401, text="invalid ticket")
        # autoping off: pings are answered here, so they can be recorded.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        with self._lock:
            sock = _Socket(next(self._socket_ids), ticket, ws, datetime.now(UTC))
            self._state.sockets.append(sock)
            live = sum(1 for s in self._state.sockets if s.ready and s.closed_at is None)
            sock.hello = {
                "type": "hello",
                "num_connections": live + 1,
                "debug_info": {
                    "host": _SOCKET_HOST,
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        try:
            await ws.send_str(json.dumps(sock.hello))
            with self._lock:
                sock.ready = True
            async for msg in ws:  # ends at the close handshake (answered by aiohttp)
                if msg.type == WSMsgType.TEXT:
                    self._socket_text(sock, str(msg.data))
                elif msg.type == WSMsgType.PING:
                    with self._lock:
                        sock.pings.append(bytes(msg.data))
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client vanished, or the server is stopping
        finally:
            with self._lock:
                sock.closed_at = datetime.now(UTC)
                if sock.closed_by is None:  # (after a server close, aiohttp reports the echo)
                    code = ws.close_code
                    sock.closed_by = "client"
                    sock.close_code = int(code) if code is not None else 1006
        return ws

    def _socket_text(self, sock: _Socket, data: str) -> None:
        """A message from the app: every one is kept; those with an ``envelope_id`` are acks."""
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        with self._lock:
            sock.received.append(data)
            if not isinstance(message, dict) or not isinstance(message.get("envelope_id"), str):
                return
            envelope_id = message["envelope_id"]
            payload = message.get("payload")
            self._state.acks.append(
                SocketAck(
                    envelope_id=envelope_id,
                    payload=payload if isinstance(payload, dict) else None,
                    connection=sock.id,
                    message=message,
                    at=datetime.now(UTC),
                    known=any(e.envelope_id == envelope_id for e in self._state.envelopes),
                )
            )

    def _record(
        self,
        request: web.Request,
        method: str,
        params: dict[str, Any],
        status: int,
        body: dict[str, Any],
    ) -> None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        call = Call(
            method=method,
            params=params,
            headers=headers,
            at=datetime.now(UTC),
            http_method=request.method,
            path=request.path,
            status=status,
            response=body,
        )
        with self._lock:
            self._state.calls.append(call)

    # -- methods (called with the lock held) -----------------------------------------------

    def _next_ts(self) -> str:
        """``1764300000.000100``, ``.000200``...: unique, increasing, the shape of Slack's."""
        micros = next(self._seq) * 100
        return f"{TS_EPOCH + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _dm(self, channel: str) -> str:
        """Posting to a user id posts in the bot's DM with that user (a ``D`` channel)."""
        return "D" + channel[1:] if channel[:1] in ("U", "W") else channel

    def _bot_profile(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "app_id": self.app_id,
            "name": self.bot_name,
            "deleted": False,
            "team_id": self.team_id,
        }

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        raw_channel = params.get("channel")
        if not raw_channel:
            raise SlackError("channel_not_found")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        channel = self._dm(str(raw_channel))
        state = self._state
        thread_ts = params.get("thread_ts") or None
        root: dict[str, Any] | None = None
        if thread_ts is not None:
            parent = state.by_ts.get((channel, str(thread_ts)))
            if parent is None:
                raise SlackError("thread_not_found")
            # Threads are one level deep: a reply to a reply joins its parent's thread.
            root = state.by_ts[(channel, parent.get("thread_ts", parent["ts"]))]
        ts = self._next_ts()
        message: dict[str, Any] = {
            "user": self.bot_user_id,
            "type": "message",
            "ts": ts,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": str(params.get("text") or ""),
            "team": self.team_id,
            "bot_profile": self._bot_profile(),
            "blocks": params.get("blocks") or [],
        }
        if params.get("attachments"):
            message["attachments"] = params["attachments"]
        if params.get("metadata"):
            message["metadata"] = params["metadata"]
        state.by_ts[(channel, ts)] = message
        if root is None:
            state.channels.setdefault(channel, []).append(message)
        else:
            root_ts = root["ts"]
            message["thread_ts"] = root_ts
            message["parent_user_id"] = root["user"]
            state.replies.setdefault((channel, root_ts), []).append(message)
            root["thread_ts"] = root_ts
            root["reply_count"] = root.get("reply_count", 0) + 1
            reply_users = root.setdefault("reply_users", [])
            if self.bot_user_id not in reply_users:
                reply_users.append(self.bot_user_id)
            root["reply_users_count"] = len(reply_users)
            root["latest_reply"] = ts
            if _truthy(params.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
                state.channels.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": copy.deepcopy(message)}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel:
            raise SlackError("channel_not_found")
        if not ts:
            raise SlackError("message_not_found")
        message = self._state.by_ts.get((str(channel), str(ts)))
        if message is None:
            raise SlackError("message_not_found")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        # Fields left out keep their old value (Slack documents this for attachments and
        # blocks); an empty list clears them.
        if "text" in params:
            message["text"] = str(params["text"] or "")
        if "blocks" in params:
            message["blocks"] = params["blocks"] or []
        if "attachments" in params:
            message["attachments"] = params["attachments"] or []
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message["text"],
            "message": copy.deepcopy(message),
        }

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, user = params.get("channel"), params.get("user")
        if not channel:
            raise SlackError("channel_not_found")
        if not user:
            raise SlackError("user_not_in_channel")
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            raise SlackError("no_text")
        ts = self._next_ts()
        entry: dict[str, Any] = {
            "channel": str(channel),
            "user": str(user),
            "ts": ts,
            "text": str(params.get("text") or ""),
            "blocks": params.get("blocks") or [],
        }
        if params.get("thread_ts"):
            entry["thread_ts"] = params["thread_ts"]
        self._state.ephemerals.append(entry)
        return {"ok": True, "message_ts": ts}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("trigger_id"):
            raise _missing("trigger_id")
        view = params.get("view")
        if not view:
            raise _missing("view")
        if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
            raise SlackError("invalid_arguments")
        view_id = f"V{next(self._ids):010d}"
        opened = {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": self.app_id,
            "external_id": view.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": self.bot_id,
        }
        self._state.views.append(opened)
        return {"ok": True, "view": copy.deepcopy(opened)}

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._state.tickets[ticket] = datetime.now(UTC)
        url = f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self.app_id}"
        return {"ok": True, "url": url}

    def _usergroup_users(self, params: dict[str, Any]) -> dict[str, Any]:
        group = params.get("usergroup")
        if not group:
            raise _missing("usergroup")
        members = self._state.usergroups.get(str(group))
        if members is None:
            raise SlackError("no_such_subteam")
        return {"ok": True, "users": list(members)}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._state.users.get(str(params.get("user") or ""))
        if user is None:
            raise SlackError("user_not_found")
        return {"ok": True, "user": copy.deepcopy(user)}


def _bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string plus body, whichever way slack-sdk encoded it (see the module docstring)."""
    params: dict[str, Any] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError as e:
                raise SlackError("invalid_json") from e
            if not isinstance(body, dict):
                raise SlackError("invalid_json")
            params.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
    for name, error in _JSON_PARAMS.items():
        value = params.get(name)
        if isinstance(value, str) and value:
            try:
                params[name] = json.loads(value)
            except ValueError as e:
                raise SlackError(error) from e
    return params


def _socket_payload(payload: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """An envelope's ``payload`` from a mapping, or from the body Slack would POST instead."""
    if isinstance(payload, Mapping):
        return copy.deepcopy(dict(payload))
    text = payload.decode() if isinstance(payload, bytes) else payload
    if text.lstrip().startswith("{"):
        body = json.loads(text)
    else:
        form = dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
        body = json.loads(form["payload"]) if set(form) == {"payload"} else form
    if not isinstance(body, dict):
        raise ValueError("an envelope payload is a JSON object")
    return body


__all__ = [
    "DEFAULT_APP_TOKEN",
    "DEFAULT_TOKEN",
    "ENVELOPE_TYPES",
    "Call",
    "FakeSlack",
    "SlackError",
    "SocketAck",
    "SocketConnection",
    "SocketEnvelope",
]
