"""Fuzz the Certificate Transparency parsers.

Input: one mode byte, then:

0. ``parse_leaf``: a 2-byte length, that many bytes of ``leaf_input``, the rest ``extra_data``
1. ``parse_sth_json`` on the rest decoded as JSON (input that is not JSON is skipped: JSON
   decoding is the HTTP client's, not the parser's)
2. ``parse_checkpoint`` and ``verify_checkpoint`` on the rest
3. ``parse_data_tile``: one width byte, the rest the tile
4. ``parse_hash_tile``: one width byte, the rest the tile
5. ``Watchlist.from_lines`` on the rest as text lines
6. ``parse_log_list`` on the rest decoded as JSON

Documented: MalformedEntry ("CT entry 7"), MalformedSTH, LogProtocolError / BadSignature
(naming the URL), WatchlistError ("watchlist line N"), ConfigError (naming the file).
"""

from __future__ import annotations

import json

import atheris

with atheris.instrument_imports(include=["ctwatch", "certpilot"]):
    from _harness import expect, main, mode

    from certpilot.domain.errors import ConfigError
    from ctwatch.loglist import parse_log_list
    from ctwatch.match import Watchlist, WatchlistError
    from ctwatch.rfc6962 import MalformedEntry, MalformedSTH, parse_leaf, parse_sth_json
    from ctwatch.source import BadSignature, LogProtocolError
    from ctwatch.tiled import parse_checkpoint, parse_data_tile, parse_hash_tile, verify_checkpoint
    from tests.property.bad_input import samples

SAMPLES = samples()

URL = "https://mon.example.test/2026h1/"


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def test_one_input(data: bytes) -> None:
    which, rest = mode(data, 7)
    if which == 0:
        n = int.from_bytes(rest[:2], "big")
        leaf, extra = rest[2 : 2 + n], rest[2 + n :]
        expect(lambda: parse_leaf(leaf, extra, 7), MalformedEntry, "CT entry 7")
    elif which == 1:
        obj = _json(rest)
        expect(lambda: parse_sth_json(obj), MalformedSTH, "signed tree head")
    elif which == 2:
        origin, key = SAMPLES.origin, SAMPLES.log_key_der
        expect(
            lambda: parse_checkpoint(rest, origin, url=URL),
            LogProtocolError,
            URL,
        )
        expect(
            lambda: verify_checkpoint(rest, origin, key, url=URL),
            (LogProtocolError, BadSignature),
            URL,
        )
    elif which in (3, 4):
        width = (rest[0] if rest else 0) or 1
        if which == 3:
            expect(lambda: parse_data_tile(rest[1:], 1, width, url=URL), LogProtocolError, URL)
        else:
            expect(lambda: parse_hash_tile(rest[1:], width, url=URL), LogProtocolError, URL)
    elif which == 5:
        lines = rest.decode("utf-8", "replace").splitlines(keepends=True)
        expect(lambda: Watchlist.from_lines(lines), WatchlistError, "watchlist line")
    else:
        obj = _json(rest)
        expect(lambda: parse_log_list(obj, "log_list.json"), ConfigError, "log_list.json")


if __name__ == "__main__":
    main(test_one_input)
