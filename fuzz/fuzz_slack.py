"""Fuzz the Slack payload decoders and the ``/certs`` command (``bot/slack_app.py``).

Input: one mode byte, then: 0, an interactive ``block_actions`` body as JSON (the clicker,
the button's JSON value, its page key and job id); 1, a ``view_submission`` view as JSON (the
revoke modal); 2, the text of ``/certs TEXT`` run against an empty inventory with no
permissions configured. Input that is not JSON is skipped in modes 0 and 1 (Bolt decodes the
request before the listener sees it).

Documented: ``BadInteraction`` ("slack payload <field>: ...") from the decoders; ``/certs``
never raises.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import atheris

with atheris.instrument_imports(include=["bot", "certpilot", "remediator"]):
    from _harness import expect, main, mode

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

LOOP = asyncio.new_event_loop()


class _Audit:
    def append(self, draft: Any) -> None:
        pass


CTX = BotContext(
    settings=SlackSettings(),
    clock=FixedClock(datetime(2026, 6, 1, tzinfo=UTC)),
    remediation=cast(Any, SimpleNamespace(jobs=SimpleNamespace(list=lambda *a, **k: []))),
    pager=cast(Any, None),
    store=cast(Any, None),
    audit=cast(Any, _Audit()),
    items=lambda: [],
    slo_rows=lambda: [],
)


def _action(body: Any) -> tuple[str, str, int]:
    user = clicker(body)
    value = button_value(body)
    return user, page_key_of(value), job_id_of(value)


def test_one_input(data: bytes) -> None:
    which, rest = mode(data, 3)
    if which == 2:
        blocks = LOOP.run_until_complete(run_command(CTX, "U1", rest.decode("utf-8", "replace")))
        if not isinstance(blocks, list) or not blocks:
            raise AssertionError(f"/certs gave {blocks!r}")
        return
    try:
        obj = json.loads(rest)
    except (ValueError, RecursionError):
        return
    if which == 0:
        expect(lambda: _action(obj), BadInteraction, "slack payload")
    else:
        expect(lambda: revoke_form(obj), BadInteraction, "slack payload")


if __name__ == "__main__":
    main(test_one_input)
