"""What the monitor needs from a Certificate Transparency log, whatever API it speaks.

Two kinds of logs exist: RFC 6962 logs (``get-sth``, ``get-entries``, proofs over HTTP:
:mod:`ctwatch.rfc6962_client`) and static-ct-api "tiled" logs (a signed checkpoint plus
immutable tiles: :mod:`ctwatch.tiled`). Both serve the same Merkle tree of the same
``MerkleTreeLeaf`` structures, so the monitor (:mod:`ctwatch.monitor`) verifies both the same
way through this small Protocol:

* :meth:`LogSource.head` returns the latest tree head with its signature already checked
  against the configured key (:class:`BadSignature` otherwise);
* :meth:`LogSource.entries` returns raw leaves in RFC 6962 encoding, so the monitor hashes
  and parses them with :mod:`ctwatch.rfc6962` and checks them against a verified head itself;
* :meth:`LogSource.consistency_proof` and :meth:`LogSource.inclusion_proof` return proof nodes
  the monitor verifies; a source never decides that a proof is good.

Errors are data the monitor reports: :class:`LogUnavailable` (network, 5xx or 429 after the
source's retries: try again later), :class:`LogProtocolError` (the log answered something that
is not the API: a loud event, like a bad signature), :class:`BadSignature`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ctwatch.rfc6962 import CTLogError

LogKind = Literal["rfc6962", "static"]


class LogUnavailable(CTLogError):
    """The log could not be read now (connection, timeout, 5xx, 429 after retries)."""

    def __init__(self, url: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.retry_after = retry_after


class LogProtocolError(CTLogError):
    """The log answered, but not with what its API defines (bad JSON, wrong sizes, a tile of
    the wrong length). Treated as a verification failure: a log must not send garbage."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class BadSignature(CTLogError):
    """The tree head's (or checkpoint's) signature does not verify with the log's key."""

    def __init__(self, url: str, reason: str = "tree head signature does not verify") -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A tree head whose signature was verified: ``size`` leaves hash to ``root_hash``.

    ``raw`` is what the log served, in a JSON-able form the monitor persists and prints:
    the ``get-sth`` object for RFC 6962 logs, ``{"checkpoint": text}`` for tiled logs.
    """

    size: int
    root_hash: bytes
    timestamp_ms: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One log entry in RFC 6962 encoding: ``leaf_input`` is the ``MerkleTreeLeaf`` (its
    :func:`~ctwatch.rfc6962.leaf_hash` is the tree's leaf), ``extra_data`` the chain (x509) or
    ``PrecertChainEntry`` (precert) exactly as ``get-entries`` returns them."""

    index: int
    leaf_input: bytes
    extra_data: bytes


class LogSource(Protocol):
    """A CT log the monitor reads (one object per log, used from one event loop)."""

    @property
    def url(self) -> str:
        """The log's base URL (monitoring URL for tiled logs), used in events and metrics."""
        ...

    @property
    def kind(self) -> LogKind: ...

    async def head(self) -> TreeHead:
        """The latest tree head, signature checked (:class:`BadSignature`)."""
        ...

    async def entries(self, start: int, end: int) -> Sequence[RawEntry]:
        """Entries ``start`` .. ``end - 1`` in order, starting exactly at ``start``; a log may
        return fewer than asked (never zero when ``start < end`` and the entries exist), and
        the monitor asks again for the rest."""
        ...

    async def consistency_proof(self, first: int, second: int) -> Sequence[bytes]:
        """Proof nodes that the tree of size ``first`` is a prefix of the one of ``second``."""
        ...

    async def inclusion_proof(
        self, index: int, leaf_hash: bytes, tree_size: int
    ) -> Sequence[bytes]:
        """The audit path of leaf ``index`` (whose hash is ``leaf_hash``) in the tree of size
        ``tree_size``. RFC 6962 logs look the leaf up by hash and must answer ``index``
        (:class:`LogProtocolError` otherwise)."""
        ...

    async def aclose(self) -> None: ...


__all__ = [
    "BadSignature",
    "LogKind",
    "LogProtocolError",
    "LogSource",
    "LogUnavailable",
    "RawEntry",
    "TreeHead",
]
