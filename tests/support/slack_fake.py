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

The server runs in a thread with its own event loop (as :mod:`tests.support.k8s_fake` does), so
``with FakeSlack() as slack:`` in a sync test and ``async with FakeSlack() as slack:`` in an async
one behave the same, and a test's own loop never has to serve it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo

from aiohttp import web

DEFAULT_TOKEN = "xoxb-certpilot-fake-bot-token"
"""Shaped like a bot token but not like a real one (secret scanners match real ones)."""

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


class FakeSlack:
    """A fake ``https://slack.com/api/`` on ``http://127.0.0.1:<port>/api/``.

    ``token`` is the one bot token accepted. The workspace and the bot's identity (what
    ``auth.test`` reports and what posted messages carry) are the other keyword arguments.
    ``users`` maps user ids to ``users.info`` fields (at least ``name``; ``tz`` defaults to UTC)
    and ``usergroups`` maps usergroup ids (``S...``) to member user ids.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
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
        }

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give slack-sdk as ``base_url`` (it appends the method name)."""
        return f"{self.url}/api/"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> Self:
        """Serve (again, on the same port after a :meth:`stop`); returns once listening."""
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        runner_box: list[web.AppRunner] = []

        async def serve() -> None:
            runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            runner_box.append(runner)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as e:
                failure.append(e)
                sock.close()
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            try:
                loop.run_until_complete(runner_box[0].cleanup())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                sock.close()
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="slack-fake", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("fake Slack API did not start")
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop listening (state and the call log are kept); idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

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

    # -- server ----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", "/api/{method}", self._api)
        app.router.add_route("GET", "/api/{method}", self._api)
        app.router.add_route("POST", "/commands/{tail:.+}", self._response_url)
        app.router.add_route("POST", "/actions/{tail:.+}", self._response_url)
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
                if token != self.token:
                    raise SlackError("invalid_auth")
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


__all__ = ["DEFAULT_TOKEN", "Call", "FakeSlack", "SlackError"]
