"""Fuzz the Alertmanager webhook intake (``remediator/webhook.py``).

Input: one mode byte, then a request body. Mode 0: ``parse_payload`` on the body decoded as
JSON (bodies that are not JSON are skipped here: mode 1 covers them). Mode 1: the aiohttp
handler from ``make_handler`` on a mocked authenticated POST with the body: the answer must be
200 or 400, and a 400's ``error`` one line (never a 500).

Documented: ``BadPayload`` naming the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import atheris

with atheris.instrument_imports(include=["remediator", "certpilot"]):
    from _harness import MAX_MESSAGE, expect, main, mode
    from aiohttp.streams import StreamReader
    from aiohttp.test_utils import make_mocked_request

    from remediator.webhook import AlertIntake, BadPayload, Payload, make_handler, parse_payload

TOKEN = "fuzz-token"  # noqa: S105 (a test token)
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)


class _NoIntake(AlertIntake):
    def __init__(self) -> None:
        pass

    async def handle(self, payload: Payload) -> list[Any]:
        return []


HANDLER = make_handler(_NoIntake(), lambda: TOKEN)


async def _post(body: bytes) -> tuple[int, bytes]:
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=LOOP)
    stream.feed_data(body)
    stream.feed_eof()
    request = make_mocked_request(
        "POST",
        "/hooks/alertmanager",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        payload=stream,
        loop=LOOP,
    )
    response = await HANDLER(request)
    return response.status, response.body


def test_one_input(data: bytes) -> None:
    which, body = mode(data, 2)
    if which == 0:
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return
        out = expect(lambda: parse_payload(obj), BadPayload)
        if out is not None and not isinstance(out, Payload):
            raise AssertionError(f"parse_payload returned a {type(out).__name__}")
        return
    status, answer = LOOP.run_until_complete(_post(body))
    if status not in (200, 400):
        raise AssertionError(f"the webhook answered {status}: {answer[:300]!r}")
    if status == 400:
        error = json.loads(answer)["error"]
        if error.splitlines() != [error] or len(error) > MAX_MESSAGE:
            raise AssertionError(f"400 error is not one line: {error[:300]!r}")


if __name__ == "__main__":
    main(test_one_input)
