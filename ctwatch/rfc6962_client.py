"""An RFC 6962 log over HTTP (section 4), as a :class:`~ctwatch.source.LogSource`.

``get-sth`` answers are parsed and their signature checked against the configured key before a
:class:`~ctwatch.source.TreeHead` leaves this module; ``get-entries``, ``get-sth-consistency``
and ``get-proof-by-hash`` answers are checked for shape (base64, sizes, the leaf index asked
for) and handed to the monitor, which verifies them. Retries and back-off are
:class:`~ctwatch.fetch.Fetcher`'s.

Written by hand: the maintained Python CT clients are either Google's archived
``certificate-transparency`` package (Python 2 era, not on this machine's package lists) or
blocking ``requests`` wrappers without verification.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from ctwatch.fetch import Fetcher
from ctwatch.rfc6962 import HASH_SIZE, MalformedSTH, parse_sth_json, verify_sth
from ctwatch.source import BadSignature, LogKind, LogProtocolError, RawEntry, TreeHead


def _b64(url: str, value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise LogProtocolError(url, f"{what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LogProtocolError(url, f"{what} is not base64") from None


def _hashes(url: str, value: object, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise LogProtocolError(url, f"{what} is missing or not a list")
    out = [_b64(url, v, what) for v in value]
    if any(len(h) != HASH_SIZE for h in out):
        raise LogProtocolError(url, f"{what} holds a hash that is not {HASH_SIZE} bytes")
    return out


class RFC6962Log:
    """One RFC 6962 log: ``url`` is its base (``https://ct.example/2026h1/``), ``key_der`` its
    DER SubjectPublicKeyInfo (from the log list or ``--log-key``)."""

    def __init__(self, url: str, key_der: bytes, *, fetcher: Fetcher | None = None) -> None:
        self._url = url.rstrip("/") + "/"
        self._key = key_der
        self._own = fetcher is None
        self._fetch = fetcher or Fetcher()

    @property
    def url(self) -> str:
        return self._url

    @property
    def kind(self) -> LogKind:
        return "rfc6962"

    def _endpoint(self, name: str) -> str:
        return f"{self._url}ct/v1/{name}"

    async def head(self) -> TreeHead:
        url = self._endpoint("get-sth")
        answer = await self._fetch.get_json(url)
        try:
            sth = parse_sth_json(answer)
        except MalformedSTH as e:
            raise LogProtocolError(self._url, f"get-sth: {e}") from None
        if not verify_sth(sth, self._key):
            raise BadSignature(self._url)
        return TreeHead(sth.tree_size, sth.root_hash, sth.timestamp_ms, raw=dict(answer))

    async def entries(self, start: int, end: int) -> Sequence[RawEntry]:
        if start >= end:
            return []
        answer = await self._fetch.get_json(
            self._endpoint("get-entries"), {"start": start, "end": end - 1}
        )
        items = answer.get("entries") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise LogProtocolError(self._url, "get-entries: no entries list")
        if not items or len(items) > end - start:
            raise LogProtocolError(
                self._url, f"get-entries: {len(items)} entries for {start}..{end - 1}"
            )
        out: list[RawEntry] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise LogProtocolError(self._url, f"get-entries: entry {start + i} not an object")
            leaf = _b64(self._url, item.get("leaf_input"), f"entry {start + i} leaf_input")
            extra = _b64(self._url, item.get("extra_data"), f"entry {start + i} extra_data")
            out.append(RawEntry(start + i, leaf, extra))
        return out

    async def consistency_proof(self, first: int, second: int) -> Sequence[bytes]:
        answer: Any = await self._fetch.get_json(
            self._endpoint("get-sth-consistency"), {"first": first, "second": second}
        )
        if not isinstance(answer, dict):
            raise LogProtocolError(self._url, "get-sth-consistency: not a JSON object")
        return _hashes(self._url, answer.get("consistency"), "consistency")

    async def inclusion_proof(
        self, index: int, leaf_hash: bytes, tree_size: int
    ) -> Sequence[bytes]:
        answer: Any = await self._fetch.get_json(
            self._endpoint("get-proof-by-hash"),
            {"hash": base64.b64encode(leaf_hash).decode("ascii"), "tree_size": tree_size},
        )
        if not isinstance(answer, dict):
            raise LogProtocolError(self._url, "get-proof-by-hash: not a JSON object")
        got = answer.get("leaf_index")
        if got != index:
            # The same leaf logged twice answers the first index; a log that answers another
            # index for our entry's hash is not proving what we asked.
            raise LogProtocolError(
                self._url, f"get-proof-by-hash: leaf_index {got!r}, expected {index}"
            )
        return _hashes(self._url, answer.get("audit_path"), "audit_path")

    async def aclose(self) -> None:
        if self._own:
            await self._fetch.aclose()


__all__ = ["RFC6962Log"]
