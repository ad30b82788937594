"""Fuzz the certstream message parser (``ctwatch.certstream.parse_message``).

Input: one websocket frame. Odd-length inputs are passed as bytes (a binary frame), even-length
ones decoded as UTF-8 text with replacement characters (a text frame): both kinds reach the
parser in production.

Documented: ``MalformedMessage`` ("certstream message: ...") and nothing else.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["ctwatch", "certpilot"]):
    from _harness import expect, main

    from ctwatch.certstream import (
        DomainsOnly,
        FeedEntry,
        Heartbeat,
        MalformedMessage,
        parse_message,
    )

KINDS = (FeedEntry, Heartbeat, DomainsOnly, type(None))


def test_one_input(data: bytes) -> None:
    frame: str | bytes = data if len(data) % 2 else data.decode("utf-8", "replace")
    out = expect(lambda: parse_message(frame), MalformedMessage, "certstream message")
    if not isinstance(out, KINDS):
        raise AssertionError(f"parse_message returned a {type(out).__name__}")


if __name__ == "__main__":
    main(test_one_input)
