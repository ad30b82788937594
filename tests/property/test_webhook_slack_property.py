"""Alertmanager webhook bodies (remediator/webhook.py) and Slack payloads (bot/slack_app.py).

Documented behaviour: :func:`parse_payload` raises :class:`BadPayload` naming the field; the
aiohttp handler answers 400 with a one-line ``error`` for any body that is not a valid
payload (never 500); the Slack decoders raise :class:`BadInteraction` naming the field; and
``/certs TEXT`` never raises, whatever the text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from bot.slack_app import (
    BadInteraction,
    BotContext,
    button_value,
    clicker,
    job_id_of,
    page_key_of,
    revoke_form,
    run_command,
)
from certpilot.domain.clock import FixedClock
from certpilot.settings import SlackSettings
from remediator.webhook import AlertIntake, BadPayload, Payload, make_handler, parse_payload
from tests.property.bad_input import (
    assert_one_line,
    check,
    json_values,
    mutated,
    mutated_tree,
    run,
    samples,
    text_leaves,
)

S = samples()
T = TypeVar("T")
TOKEN = "property-token"

# ---------------------------------------------------------------------------- Alertmanager


def _payload(data: Any) -> Payload | BadPayload:
    out = check("remediator.webhook.parse_payload", lambda: parse_payload(data), BadPayload)
    if isinstance(out, BadPayload):
        assert out.field and out.one_line().startswith(out.field + ": ")
    return out


@given(json_values)
def test_payload_arbitrary_json(data: Any) -> None:
    assert isinstance(_payload(data), Payload | BadPayload)


@given(mutated_tree(S.alertmanager))
def test_payload_mutated(data: Any) -> None:
    assert isinstance(_payload(data), Payload | BadPayload)


@given(mutated_tree(S.alertmanager, text_leaves))
def test_payload_awkward_strings(data: Any) -> None:
    assert isinstance(_payload(data), Payload | BadPayload)


_TIMES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text("0123456789-:.TZ+ ", max_size=40),
    st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,12})?(Z|[+-]\d\d:\d\d)", fullmatch=True),
)


@given(_TIMES, _TIMES | st.none())
def test_payload_times(starts: str, ends: str | None) -> None:
    body = json.loads(json.dumps(S.alertmanager))
    body["alerts"][0]["startsAt"] = starts
    body["alerts"][0]["endsAt"] = ends
    assert isinstance(_payload(body), Payload | BadPayload)


@given(st.datetimes(timezones=st.timezones(), allow_imaginary=False))
def test_payload_time_round_trip(at: datetime) -> None:
    body = json.loads(json.dumps(S.alertmanager))
    body["alerts"][0]["startsAt"] = text = at.isoformat()
    try:
        in_utc = at.astimezone(UTC)
    except OverflowError:
        in_utc = None  # not representable in UTC
    if in_utc is None or text.startswith("0001-01-01"):  # the latter is Go's zero time
        with pytest.raises(BadPayload):
            parse_payload(body)
        return
    got = parse_payload(body).alerts[0].starts_at
    assert got == in_utc


class _NoIntake(AlertIntake):
    """Intake that makes no jobs: the handler's parsing is under test, not the store."""

    def __init__(self) -> None:
        pass

    async def handle(self, payload: Payload) -> list[Any]:
        return []


@pytest.fixture(scope="module")
def post() -> Iterator[Callable[[bytes], tuple[int, Any]]]:
    """POST a body to the webhook handler on a real aiohttp server (one per module)."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/hooks/alertmanager", make_handler(_NoIntake(), lambda: TOKEN))
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app), loop=loop)
    loop.run_until_complete(client.start_server())

    async def send(body: bytes) -> tuple[int, Any]:
        resp = await client.post(
            "/hooks/alertmanager", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return resp.status, await resp.json(content_type=None)

    try:
        yield lambda body: loop.run_until_complete(send(body))
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def _http(post: Callable[[bytes], tuple[int, Any]], body: bytes) -> int:
    status, answer = run("remediator.webhook handler (HTTP)", lambda: post(body))
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert isinstance(answer, dict)
        error = answer["error"]
        assert isinstance(error, str) and error.splitlines() == [error] and len(error) < 4096
    return int(status)


@given(st.binary(max_size=600))
def test_handler_arbitrary_body(post: Callable[[bytes], tuple[int, Any]], body: bytes) -> None:
    assert _http(post, body) in (200, 400)


@given(
    mutated(json.dumps(S.alertmanager).encode(), max_ops=3)
    | json_values.map(lambda v: json.dumps(v).encode())
)
def test_handler_mutated_body(post: Callable[[bytes], tuple[int, Any]], body: bytes) -> None:
    assert _http(post, body) in (200, 400)


def test_handler_deeply_nested_body(post: Callable[[bytes], tuple[int, Any]]) -> None:
    for depth in (500, 5_000, 100_000):
        # Not a webhook payload at any depth: refused with a one-line 400, never a 500.
        assert _http(post, b"[" * depth + b"]" * depth) == 400
        assert _http(post, b'{"version": ' + b"[" * depth + b"]" * depth + b"}") == 400


# ---------------------------------------------------------------------------- Slack payloads


def _decode(body: Any) -> object:
    def all_of_it() -> tuple[str, str, int]:
        user = clicker(body)
        value = button_value(body)
        return user, page_key_of(value), job_id_of(value)

    return check("bot.slack_app action payload", all_of_it, BadInteraction, "slack payload")


def _view(view: Any) -> object:
    return check(
        "bot.slack_app revoke_form", lambda: revoke_form(view), BadInteraction, "slack payload"
    )


def _is_form(out: object) -> bool:
    """The revoke form's (page, fingerprint, reason), all strings, or the one refusal."""
    if isinstance(out, BadInteraction):
        return True
    return isinstance(out, tuple) and len(out) == 3 and all(isinstance(x, str) for x in out)


def _is_action(out: object) -> bool:
    """The action's (user, page, job id), or the one refusal."""
    if isinstance(out, BadInteraction):
        return True
    return (
        isinstance(out, tuple)
        and len(out) == 3
        and isinstance(out[0], str)
        and isinstance(out[1], str)
        and isinstance(out[2], int)
    )


_BLOCK_ACTIONS = {
    "type": "block_actions",
    "user": {"id": "U123", "username": "alice", "team_id": "T1"},
    "trigger_id": "1.2.3",
    "channel": {"id": "C1", "name": "pki"},
    "container": {"type": "message", "channel_id": "C1", "message_ts": "1.2"},
    "actions": [
        {
            "type": "button",
            "action_id": "certpilot_approve",
            "block_id": "b",
            "value": json.dumps({"page": "page:1", "job": 12}),
        }
    ],
}
_VIEW = {
    "callback_id": "certpilot_revoke_confirm",
    "private_metadata": json.dumps({"page": "page:1", "fingerprint": "ab" * 32}),
    "state": {
        "values": {
            "reason": {
                "reason": {"type": "static_select", "selected_option": {"value": "superseded"}}
            }
        }
    },
}


@given(json_values)
def test_slack_arbitrary_payload(body: Any) -> None:
    # What comes back is the action's fields or the one refusal type, nothing else.
    assert _is_action(_decode(body))
    assert _is_form(_view(body))


@given(mutated_tree(_BLOCK_ACTIONS))
def test_slack_mutated_action(body: Any) -> None:
    assert _is_action(_decode(body))


@given(json_values.map(json.dumps) | st.text(max_size=60))
def test_slack_button_value_text(value: str) -> None:
    body = json.loads(json.dumps(_BLOCK_ACTIONS))
    body["actions"][0]["value"] = value
    out = _decode(body)
    assert _is_action(out)
    if not isinstance(out, BadInteraction):  # decoded: the value was a JSON object (or empty)
        said = json.loads(value) if value else {}
        assert isinstance(said, dict) and out[1] == said.get("page", "")  # type: ignore[index]


@given(mutated_tree(_VIEW))
def test_slack_mutated_view(view: Any) -> None:
    assert _is_form(_view(view))


def test_slack_round_trip() -> None:
    value = button_value(_BLOCK_ACTIONS)
    assert (clicker(_BLOCK_ACTIONS), page_key_of(value), job_id_of(value)) == ("U123", "page:1", 12)
    assert revoke_form(_VIEW) == ("page:1", "ab" * 32, "superseded")


class _Audit:
    def __init__(self) -> None:
        self.drafts: list[Any] = []

    def append(self, draft: Any) -> None:
        self.drafts.append(draft)


@pytest.fixture(scope="module")
def certs_command() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """``/certs TEXT`` against an empty inventory, no permissions (every action refused)."""
    loop = asyncio.new_event_loop()
    jobs = SimpleNamespace(list=lambda *a, **k: [])
    ctx = BotContext(
        settings=SlackSettings(),
        clock=FixedClock(S.now),
        remediation=cast(Any, SimpleNamespace(jobs=jobs)),
        pager=cast(Any, None),
        store=cast(Any, None),
        audit=cast(Any, _Audit()),
        items=lambda: [],
        slo_rows=lambda: [{"slo": "cert-valid-ratio", "alerts": [], "budget_remaining_ratio": 0.5}],
    )

    def run(text: str) -> list[dict[str, Any]]:
        return loop.run_until_complete(run_command(ctx, "U123", text))

    try:
        yield run
    finally:
        loop.close()


_VERBS = st.sampled_from(
    ["", "help", "status", "expiring", "show", "renew", "redeploy", "revoke", "slo", "jobs", "x"]
)
_WORDS = st.lists(
    st.sampled_from(["nan", "inf", "-1", "1e400", "30", "'", '"', "\\", "*", "keyCompromise"])
    | st.text(max_size=12),
    max_size=3,
)


@given(st.text(max_size=80) | st.tuples(_VERBS, _WORDS).map(lambda t: " ".join([t[0], *t[1]])))
def test_certs_command_never_raises(
    certs_command: Callable[[str], list[dict[str, Any]]], text: str
) -> None:
    blocks = run("bot.slack_app.run_command", lambda: certs_command(text))
    assert isinstance(blocks, list) and blocks


def test_certs_expiring_refuses_nan(certs_command: Callable[[str], list[dict[str, Any]]]) -> None:
    for days in ("nan", "-nan", "inf", "-1", "3651"):
        text = json.dumps(certs_command(f"expiring {days}"))
        assert "DAYS must be between 0 and 3650" in text, days


def test_bad_payload_messages_name_the_field() -> None:
    for body, field in (
        ({"version": "4", "alerts": [{"status": []}]}, "alerts[0].status"),
        ({"version": [[[[[[["deep"]]]]]]] * 100}, "version"),
    ):
        with pytest.raises(BadPayload) as e:
            parse_payload(body)
        assert_one_line(e.value, field)
