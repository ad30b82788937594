"""The local RFC 6962 log (:mod:`ctwatch.local_log`) on a loopback thread, with fault knobs.

:class:`LoopbackCTLog` serves :class:`~ctwatch.local_log.LocalLog` from its own thread and
event loop (:class:`tests.support.loopback.ThreadedServer`), so ``with LoopbackCTLog() as log:``
works from sync and async tests alike, records every request, and can misbehave on demand.

Fault knobs (each stays on until :meth:`LoopbackCTLog.heal`): :meth:`tamper_sth_signature`,
:meth:`tamper_consistency`, :meth:`tamper_audit_path`, :meth:`tamper_entry`;
:meth:`rate_limit` answers the next calls 429 with ``Retry-After``. certspotter reads it
through :meth:`~ctwatch.local_log.LocalLog.write_log_list`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ctwatch.local_log import (
    DEFAULT_BATCH_LIMIT,
    LocalLog,
    consistency_proof,
    inclusion_path,
    make_precert,
    strip_poison,
)
from ctwatch.rfc6962 import STH
from tests.support.loopback import ThreadedServer


def _flip(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


class LoopbackCTLog(LocalLog, ThreadedServer):
    """A :class:`LocalLog` on ``http://127.0.0.1:<port>/`` with fault knobs."""

    server_name = "loopback CT log"

    def __init__(self, **kwargs: Any) -> None:
        self._tamper_sig = False
        self._tamper_consistency = False
        self._tamper_audit = False
        self._tampered_entries: set[int] = set()
        self._rate_limited = 0
        self._retry_after = 1
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) in arrival order
        self.port = 0
        super().__init__(**kwargs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _app(self) -> web.Application:
        return self.app()

    # -- fault knobs -----------------------------------------------------------------------

    def tamper_sth_signature(self) -> None:
        """``get-sth`` serves the tree head with one signature byte flipped."""
        self._tamper_sig = True

    def tamper_consistency(self) -> None:
        """``get-sth-consistency`` serves proofs with one byte flipped (or one hash too many)."""
        self._tamper_consistency = True

    def tamper_audit_path(self) -> None:
        """``get-proof-by-hash`` serves audit paths with one byte flipped."""
        self._tamper_audit = True

    def tamper_entry(self, index: int) -> None:
        """``get-entries`` serves entry ``index`` with its timestamp changed (it still parses)."""
        self._tampered_entries.add(index)

    def rate_limit(self, times: int, retry_after: int = 1) -> None:
        """Answer the next ``times`` requests with 429 and ``Retry-After: retry_after``."""
        self._rate_limited = times
        self._retry_after = retry_after

    def heal(self) -> None:
        """Turn every fault knob off."""
        self._tamper_sig = self._tamper_consistency = self._tamper_audit = False
        self._tampered_entries.clear()
        self._rate_limited = 0

    # -- hooks -----------------------------------------------------------------------------

    async def _before(self, request: web.Request) -> web.StreamResponse | None:
        self.requests.append((request.path, dict(request.query)))
        if self._rate_limited > 0:
            self._rate_limited -= 1
            return web.Response(
                status=429, text="rate limited", headers={"Retry-After": str(self._retry_after)}
            )
        return None

    def _serve_signature(self, sth: STH) -> bytes:
        return _flip(sth.signature) if self._tamper_sig else sth.signature

    def _serve_consistency(self, proof: list[bytes]) -> list[bytes]:
        if self._tamper_consistency:
            return [_flip(proof[0]), *proof[1:]] if proof else [bytes(32)]
        return proof

    def _serve_leaf(self, index: int, leaf: bytes) -> bytes:
        # The last timestamp byte: still parses, hashes differently.
        return _flip(leaf, 9) if index in self._tampered_entries else leaf

    def _serve_audit_path(self, path: list[bytes]) -> list[bytes]:
        return [_flip(path[0]), *path[1:]] if self._tamper_audit and path else path


__all__ = [
    "DEFAULT_BATCH_LIMIT",
    "LoopbackCTLog",
    "consistency_proof",
    "inclusion_path",
    "make_precert",
    "strip_poison",
]
