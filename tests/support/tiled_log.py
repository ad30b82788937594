"""A loopback static-ct-api ("tiled", Sunlight-style) Certificate Transparency log for tests.

The read path of https://c2sp.org/static-ct-api, served from memory on
``http://127.0.0.1:<port>/<prefix>/`` (the *monitoring prefix*, :attr:`LoopbackTiledLog.url`):

======================================  ===================================================
``GET <prefix>/checkpoint``             the latest *published* checkpoint (:meth:`publish`),
                                        a signed note with the log's RFC6962NoteSignature
``GET <prefix>/tile/<L>/<N>[.p/<W>]``   hash tiles (height 8), full and partial
``GET <prefix>/tile/data/<N>[.p/<W>]``  data tiles (``TileLeaf`` entries), gzip when asked
``GET <prefix>/issuer/<hex sha256>``    the DER issuer certificates entries refer to
======================================  ===================================================

Everything else answers 404, as a bucket does. Entries added with :meth:`add_x509` /
:meth:`add_precert` (same signatures as :class:`tests.support.ct_log.LoopbackCTLog`) are
sequenced at once (their ``leaf_index`` extension is their index, as Sunlight's are) and become
visible at the next :meth:`publish`, which signs a checkpoint with the log's own ECDSA P-256 key
and makes the tiles of that size available: every full tile, and the partial tiles of the new
size (kept afterwards, as the spec requires until the full tile exists).

The encodings here are written from the spec independently of :mod:`ctwatch.tiled` (only the
RFC 6962 pieces come from :mod:`ctwatch.rfc6962`), so the tests compare two readings of it.

Fault knobs (each stays on until :meth:`heal`): :meth:`tamper_checkpoint_signature`,
:meth:`tamper_entry`, :meth:`misindex_entry`, :meth:`tamper_hash_tile`, :meth:`tamper_issuer`,
:meth:`drop_partial_tiles`; :meth:`rate_limit` answers the next requests 429 with
``Retry-After``. :meth:`add_witness` adds an Ed25519 cosignature line from a witness (which
clients must ignore). :meth:`log_list_json` describes the log in the v3 log list's
``tiled_logs`` shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ctwatch.local_log import signed_tree_head
from ctwatch.rfc6962 import (
    STH,
    encode_cert_chain,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    leaf_hash,
    log_id,
    root_from_leaves,
)
from tests.support.ct_log import strip_poison
from tests.support.loopback import ThreadedServer

WIDTH = 256
HEIGHT = 8
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def tile_index_path(n: int) -> str:
    """``x001/x234/067`` for 1234067 (3-digit elements, ``x`` on all but the last)."""
    parts = []
    while True:
        parts.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    return "/".join([*(f"x{p}" for p in reversed(parts[1:])), parts[0]])


def _tile_path(level: int | str, n: int, w: int) -> str:
    return f"tile/{level}/{tile_index_path(n)}" + ("" if w == WIDTH else f".p/{w}")


def _leaf_index_ext(index: int) -> bytes:
    # static-ct-api CtExtensions: uint8 type 0 (leaf_index), uint16 length 5, uint40 index.
    return b"\x00\x00\x05" + index.to_bytes(5, "big")


def _flip(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LoopbackTiledLog(ThreadedServer):
    """A static-ct-api log on ``http://127.0.0.1:<port>/<prefix>/``.

    ``origin`` overrides the checkpoint origin (default: the monitoring prefix without scheme,
    ``127.0.0.1:<port>/<prefix>``, known once the server has a port). ``clock_ms`` gives entry
    and checkpoint timestamps; ``compress`` gzips data tiles for clients that accept it.
    """

    server_name = "loopback tiled CT log"

    def __init__(
        self,
        *,
        description: str = "certpilot loopback tiled log",
        prefix: str = "logs/2026h1",
        origin: str | None = None,
        mmd: int = 60,
        clock_ms: Callable[[], int] | None = None,
        compress: bool = True,
    ) -> None:
        self.description = description
        self.prefix = prefix.strip("/")
        self._origin = origin
        self.mmd = mmd
        self.compress = compress
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_der = self.key.public_key().public_bytes(DER, SPKI)
        self.public_key_der = self.key_der  # the name LoopbackCTLog uses
        self.log_id = log_id(self.key_der)
        self._lock = threading.Lock()
        self._leaves: list[bytes] = []  # MerkleTreeLeaf bytes, in log order
        self._extra: list[bytes] = []  # get-entries style extra_data
        self._tile_leaves: list[bytes] = []  # TileLeaf bytes
        self._nodes: list[list[bytes]] = [[]]  # [l]: complete hashes at tree level 8*l
        self._issuers: dict[str, bytes] = {}  # hex SHA-256 -> DER
        self._published: dict[str, tuple[int | str, int, int]] = {}  # path -> (L, N, W)
        self.sths: list[STH] = []  # every published tree head, oldest first
        self._witnesses: list[tuple[str, ed25519.Ed25519PrivateKey]] = []
        self.port = 0
        self._loop = None
        self._thread = None
        self.requests: list[str] = []  # paths under the prefix, in arrival order
        self.heal()
        self.publish()  # a log always has a checkpoint, even for the empty tree

    # -- contents --------------------------------------------------------------------------

    def add_x509(self, cert_der: bytes, chain: Sequence[bytes] = ()) -> int:
        """Log a final certificate with its issuer chain (leaf-side first); returns its index."""
        with self._lock:
            index = len(self._leaves)
            leaf = encode_x509_leaf(self._clock_ms(), cert_der, _leaf_index_ext(index))
            self._append(leaf, None, chain, encode_cert_chain(chain))
            return index

    def add_precert(
        self, precert_der: bytes, issuer_cert: bytes, chain: Sequence[bytes] | None = None
    ) -> int:
        """Log a precertificate issued directly by ``issuer_cert``; ``chain`` defaults to
        ``[issuer_cert]`` (see :meth:`tests.support.ct_log.LoopbackCTLog.add_precert`)."""
        precert = x509.load_der_x509_certificate(precert_der)
        issuer = x509.load_der_x509_certificate(issuer_cert)
        key_hash = hashlib.sha256(issuer.public_key().public_bytes(DER, SPKI)).digest()
        chain = list(chain) if chain is not None else [issuer_cert]
        tbs = strip_poison(precert.tbs_certificate_bytes)
        with self._lock:
            index = len(self._leaves)
            leaf = encode_precert_leaf(self._clock_ms(), key_hash, tbs, _leaf_index_ext(index))
            self._append(leaf, precert_der, chain, encode_precert_chain_entry(precert_der, chain))
            return index

    def _append(
        self, leaf: bytes, precert: bytes | None, chain: Sequence[bytes], extra: bytes
    ) -> None:
        fingerprints = b""
        for cert in chain:
            fp = hashlib.sha256(cert).digest()
            self._issuers[fp.hex()] = bytes(cert)
            fingerprints += fp
        # TileLeaf: the TimestampedEntry (the MerkleTreeLeaf minus version and leaf_type), the
        # precertificate for precert entries, then Fingerprint certificate_chain<0..2^16-1>.
        tile_leaf = leaf[2:]
        if precert is not None:
            tile_leaf += len(precert).to_bytes(3, "big") + precert
        tile_leaf += struct.pack(">H", len(fingerprints)) + fingerprints
        self._leaves.append(leaf)
        self._extra.append(extra)
        self._tile_leaves.append(tile_leaf)
        self._nodes[0].append(leaf_hash(leaf))

    def publish(self) -> STH:
        """Sign a checkpoint over everything added so far and publish the tiles of its size."""
        with self._lock:
            size = len(self._leaves)
            level = 1
            while size >> (HEIGHT * level):
                if len(self._nodes) <= level:
                    self._nodes.append([])
                below, nodes = self._nodes[level - 1], self._nodes[level]
                while len(nodes) < size >> (HEIGHT * level):
                    j = len(nodes)
                    nodes.append(root_from_leaves(below[j * WIDTH : (j + 1) * WIDTH]))
                level += 1
            for lvl in range(level):
                count = size >> (HEIGHT * lvl)
                kinds: list[int | str] = [lvl, "data"] if lvl == 0 else [lvl]
                for kind in kinds:
                    for n in range(count // WIDTH):
                        self._published[_tile_path(kind, n, WIDTH)] = (kind, n, WIDTH)
                    if count % WIDTH:
                        n, w = count // WIDTH, count % WIDTH
                        self._published[_tile_path(kind, n, w)] = (kind, n, w)
            root = root_from_leaves(self._nodes[0][:size])
            last = self.sths[-1] if self.sths else None
            sth = signed_tree_head(self.key, size, root, self._clock_ms(), last)
            self.sths.append(sth)
            return sth

    @property
    def sth(self) -> STH:
        return self.sths[-1]

    def leaf_input(self, index: int) -> bytes:
        return self._leaves[index]

    def extra_data(self, index: int) -> bytes:
        return self._extra[index]

    def leaf_hash(self, index: int) -> bytes:
        return self._nodes[0][index]

    def root_at(self, size: int) -> bytes:
        return root_from_leaves(self._nodes[0][:size])

    def tile_paths(self) -> list[str]:
        """Every published tile path (partial ones included), sorted."""
        return sorted(self._published)

    # -- checkpoint ------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._origin or f"127.0.0.1:{self.port}/{self.prefix}"

    def key_id(self) -> bytes:
        """The note key ID: ``SHA-256(origin || 0x0A || 0x05 || LogID)[:4]``."""
        return hashlib.sha256(self.origin.encode() + b"\n\x05" + self.log_id).digest()[:4]

    def checkpoint_text(self, sth: STH | None = None) -> str:
        """The signed note served at ``checkpoint`` for ``sth`` (default: the latest)."""
        sth = sth or self.sths[-1]
        body = f"{self.origin}\n{sth.tree_size}\n{_b64(sth.root_hash)}\n"
        signature = struct.pack(">Q", sth.timestamp_ms) + sth.signature
        if self._tamper_sig:
            signature = _flip(signature)
        lines = [f"\u2014 {self.origin} {_b64(self.key_id() + signature)}"]
        for name, key in self._witnesses:
            # c2sp.org/tlog-cosignature: type 0x04 key ID, uint64 time || Ed25519 signature.
            pub = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            kid = hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4]
            now = sth.timestamp_ms // 1000
            cosig = key.sign(f"cosignature/v1\ntime {now}\n{body}".encode())
            lines.append(f"\u2014 {name} {_b64(kid + struct.pack('>Q', now) + cosig)}")
        return body + "\n" + "".join(f"{line}\n" for line in lines)

    def add_witness(self, name: str = "witness.example/w1") -> None:
        """Add an Ed25519 witness cosignature line to every served checkpoint."""
        self._witnesses.append((name, ed25519.Ed25519PrivateKey.generate()))

    # -- fault knobs -----------------------------------------------------------------------

    def tamper_checkpoint_signature(self) -> None:
        """The checkpoint's log signature has its last byte flipped."""
        self._tamper_sig = True

    def tamper_entry(self, index: int) -> None:
        """Data tiles serve entry ``index`` with its timestamp changed (it still parses)."""
        self._tampered_entries.add(index)

    def misindex_entry(self, index: int) -> None:
        """Data tiles serve entry ``index`` with its leaf_index extension off by one."""
        self._misindexed.add(index)

    def tamper_hash_tile(self, level: int, index: int) -> None:
        """Hash tile ``index`` at ``level`` (every width) serves every hash with a flipped bit."""
        self._tampered_tiles.add((level, index))

    def tamper_issuer(self) -> None:
        """Issuer certificates are served with one byte flipped (so not matching their name)."""
        self._tamper_issuer = True

    def drop_partial_tiles(self) -> None:
        """A partial tile answers 404 once its full tile is published (the spec allows it)."""
        self._drop_partials = True

    def rate_limit(self, times: int, retry_after: int = 1) -> None:
        """Answer the next ``times`` requests with 429 and ``Retry-After: retry_after``."""
        self._rate_limited = times
        self._retry_after = retry_after

    def heal(self) -> None:
        """Turn every fault knob off."""
        self._tamper_sig = False
        self._tamper_issuer = False
        self._drop_partials = False
        self._tampered_entries: set[int] = set()
        self._misindexed: set[int] = set()
        self._tampered_tiles: set[tuple[int, int]] = set()
        self._rate_limited = 0
        self._retry_after = 1

    # -- log list --------------------------------------------------------------------------

    def log_list_json(self) -> dict[str, Any]:
        """A v3 log list naming only this log, under ``tiled_logs``."""
        return {
            "version": "1.0",
            "log_list_timestamp": "2026-01-01T00:00:00Z",
            "operators": [
                {
                    "name": "certpilot tests",
                    "email": ["ct@example.invalid"],
                    "logs": [],
                    "tiled_logs": [
                        {
                            "description": self.description,
                            "log_id": _b64(self.log_id),
                            "key": _b64(self.key_der),
                            "monitoring_url": self.url,
                            "submission_url": self.url,
                            "mmd": self.mmd,
                            "state": {"usable": {"timestamp": "2026-01-01T00:00:00Z"}},
                        }
                    ],
                }
            ],
        }

    def write_log_list(self, path: Path) -> None:
        path.write_text(json.dumps(self.log_list_json()), encoding="utf-8")

    # -- HTTP ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The monitoring prefix, with the trailing slash log lists use."""
        return f"http://127.0.0.1:{self.port}/{self.prefix}/"

    def _tile_body(self, kind: int | str, n: int, w: int) -> bytes:
        first = n * WIDTH
        if kind == "data":
            parts = []
            for i in range(first, first + w):
                entry = self._tile_leaves[i]
                if i in self._tampered_entries:
                    entry = _flip(entry, 7)  # last timestamp byte
                if i in self._misindexed:
                    entry = self._misindex(entry, i)
                parts.append(entry)
            return b"".join(parts)
        assert isinstance(kind, int)
        hashes_ = self._nodes[kind][first : first + w]
        if (kind, n) in self._tampered_tiles:
            hashes_ = [_flip(h) for h in hashes_]
        return b"".join(hashes_)

    def _misindex(self, entry: bytes, index: int) -> bytes:
        # The 8-byte extension ends the TimestampedEntry, i.e. the MerkleTreeLeaf minus 2 bytes.
        end = len(self._leaves[index]) - 2
        return entry[: end - 8] + _leaf_index_ext(index + 1) + entry[end:]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        base = f"/{self.prefix}/"
        if not request.path.startswith(base):
            return web.Response(status=404, text="not found")
        path = request.path[len(base) :]
        self.requests.append(path)
        if self._rate_limited > 0:
            self._rate_limited -= 1
            return web.Response(
                status=429, text="rate limited", headers={"Retry-After": str(self._retry_after)}
            )
        if path == "checkpoint":
            return web.Response(
                text=self.checkpoint_text(),
                content_type="text/plain",
                charset="utf-8",
                headers={"Cache-Control": "no-store"},
            )
        if path.startswith("issuer/"):
            der = self._issuers.get(path[len("issuer/") :])
            if der is None:
                return web.Response(status=404, text="not found")
            return web.Response(
                body=_flip(der) if self._tamper_issuer else der,
                content_type="application/pkix-cert",
            )
        where = self._published.get(path)
        if where is None:
            return web.Response(status=404, text="not found")
        kind, n, w = where
        if w < WIDTH and self._drop_partials and _tile_path(kind, n, WIDTH) in self._published:
            return web.Response(status=404, text="not found")
        response = web.Response(
            body=self._tile_body(kind, n, w), content_type="application/octet-stream"
        )
        if kind == "data" and self.compress:
            response.enable_compression()
        return response

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        return app
