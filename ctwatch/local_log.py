"""A local RFC 6962 Certificate Transparency log: a real Merkle tree behind the log's HTTP API.

Real logs are out of reach on loopback-only machines, and a monitor is only as good as what it
was checked against; this log is what ``certpilot demo``, the tests and the benchmarks read.
It keeps the tree in memory and signs tree heads with its own ECDSA P-256 key, so every tree
head, proof and entry verifies exactly as a real log's would:

=================================  ========================================================
``GET /ct/v1/get-sth``             the latest *published* tree head (:meth:`LocalLog.publish`)
``GET /ct/v1/get-sth-consistency`` ``consistency`` proof between two sizes <= published size
``GET /ct/v1/get-entries``         ``entries`` (``leaf_input``, ``extra_data``), at most
                                   ``batch_limit`` per call (real logs cap it too)
``GET /ct/v1/get-proof-by-hash``   ``leaf_index`` and ``audit_path``
=================================  ========================================================

Bad parameters answer 400 and an unknown hash 404, as Google's logs do. Entries are added with
:meth:`LocalLog.add_x509` / :meth:`LocalLog.add_precert` (which build the real
``MerkleTreeLeaf`` and ``extra_data``) and become visible at the next
:meth:`LocalLog.publish`, the way a log merges entries into a new STH after its maximum merge
delay. :meth:`LocalLog.app` is the aiohttp application; serving it is the caller's business.
Subclasses change what is served through the ``_serve_*`` hooks (the tests' fault knobs).

The proofs are generated with the recursive definitions of RFC 6962 section 2.1
(:func:`inclusion_path`, :func:`consistency_proof`), independently of the iterative verifiers
in :mod:`ctwatch.rfc6962` that check them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ctwatch.rfc6962 import (
    SIG_ALG_ECDSA,
    STH,
    encode_cert_chain,
    encode_digitally_signed,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    leaf_hash,
    log_id,
    root_from_leaves,
    sth_signed_data,
)

DEFAULT_BATCH_LIMIT = 256


# -- reference proof generation (RFC 6962 section 2.1.1 and 2.1.2) ------------------------------


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """``PATH(m, D[n])`` over leaf hashes: the audit path of leaf ``m`` (section 2.1.1)."""
    n = len(leaves)
    if n <= 1:
        return []
    k = _split(n)
    if m < k:
        return [*inclusion_path(m, leaves[:k]), root_from_leaves(leaves[k:])]
    return [*inclusion_path(m - k, leaves[k:]), root_from_leaves(leaves[:k])]


def consistency_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """``PROOF(m, D[n])`` over leaf hashes (section 2.1.2); empty for ``m`` 0 or ``n``."""
    if m == 0 or m >= len(leaves):
        return []
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [root_from_leaves(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), root_from_leaves(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root_from_leaves(leaves[:k])]


# -- DER surgery: the precert leaf's TBSCertificate is the precert's minus the poison -----------

_POISON_OID_DER = bytes.fromhex("060a2b06010401d679020403")  # 1.3.6.1.4.1.11129.2.4.3


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements of concatenated DER (single-byte tags suffice here)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if first & 0x80:
            n = first & 0x7F
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        else:
            length = first
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def strip_poison(tbs_der: bytes) -> bytes:
    """``tbs_der`` without the CT poison extension (RFC 6962 section 3.2, precert_entry)."""
    ((tag, body),) = _tlvs(tbs_der)
    fields = []
    for ftag, content in _tlvs(body):
        if ftag == 0xA3:  # [3] EXPLICIT Extensions
            ((stag, exts),) = _tlvs(content)
            kept = b"".join(
                _tlv(etag, ext) for etag, ext in _tlvs(exts) if not ext.startswith(_POISON_OID_DER)
            )
            if not kept:
                continue
            content = _tlv(stag, kept)
        fields.append(_tlv(ftag, content))
    return _tlv(tag, b"".join(fields))


def signed_tree_head(
    key: ec.EllipticCurvePrivateKey, size: int, root: bytes, timestamp_ms: int, after: STH | None
) -> STH:
    """The log's ECDSA-signed tree head over ``size`` leaves with ``root``, timestamped
    ``timestamp_ms``, or one millisecond after the previous head ``after`` when the clock has
    not moved on (STH timestamps must increase)."""
    ts = max(timestamp_ms, after.timestamp_ms + 1) if after is not None else timestamp_ms
    sig = key.sign(sth_signed_data(STH(size, ts, root, b"")), ec.ECDSA(hashes.SHA256()))
    return STH(size, ts, root, encode_digitally_signed(SIG_ALG_ECDSA, sig))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class LocalLog:
    """An RFC 6962 log with an in-memory Merkle tree; :meth:`app` serves it.

    ``clock_ms`` gives entry and STH timestamps (wall clock by default); ``mmd`` is the maximum
    merge delay written into the log list.
    """

    def __init__(
        self,
        *,
        description: str = "certpilot loopback log",
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        mmd: int = 86400,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.description = description
        self.batch_limit = batch_limit
        self.mmd = mmd
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.log_id = log_id(self.public_key_der)
        self._lock = threading.Lock()
        self._leaves: list[bytes] = []  # MerkleTreeLeaf bytes, in log order
        self._extra: list[bytes] = []
        self._hashes: list[bytes] = []
        self.sths: list[STH] = []  # every published tree head, oldest first
        self.base_url = ""  # set by whoever serves app(): the URL log lists name
        self.publish()  # a log always has an STH, even for the empty tree

    # -- contents --------------------------------------------------------------------------

    def add_x509(self, cert_der: bytes, chain: Sequence[bytes] = ()) -> int:
        """Log a final certificate with its issuer chain (leaf-side first); returns its index."""
        leaf = encode_x509_leaf(self._clock_ms(), cert_der)
        return self._append(leaf, encode_cert_chain(chain))

    def add_precert(
        self, precert_der: bytes, issuer_cert: bytes, chain: Sequence[bytes] | None = None
    ) -> int:
        """Log a precertificate issued directly by ``issuer_cert`` (no precert signing cert).

        The leaf holds the SHA-256 of the issuer's SPKI and the precertificate's TBS without the
        poison extension (RFC 6962 section 3.2); ``chain`` defaults to ``[issuer_cert]``.
        """
        precert = x509.load_der_x509_certificate(precert_der)
        issuer = x509.load_der_x509_certificate(issuer_cert)
        spki = issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        leaf = encode_precert_leaf(
            self._clock_ms(),
            hashlib.sha256(spki).digest(),
            strip_poison(precert.tbs_certificate_bytes),
        )
        extra = encode_precert_chain_entry(
            precert_der, list(chain) if chain is not None else [issuer_cert]
        )
        return self._append(leaf, extra)

    def add_raw(self, leaf_input: bytes, extra_data: bytes) -> int:
        """Log arbitrary bytes as an entry (a malformed one, for the monitor's sake): the tree
        hashes them like any other leaf, so the signed root still commits to them."""
        return self._append(bytes(leaf_input), bytes(extra_data))

    def _append(self, leaf: bytes, extra: bytes) -> int:
        with self._lock:
            self._leaves.append(leaf)
            self._extra.append(extra)
            self._hashes.append(leaf_hash(leaf))
            return len(self._leaves) - 1

    def publish(self) -> STH:
        """Sign a tree head over everything added so far and serve it from ``get-sth``."""
        with self._lock:
            size = len(self._hashes)
            root = root_from_leaves(self._hashes)
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
        return self._hashes[index]

    def root_at(self, size: int) -> bytes:
        return root_from_leaves(self._hashes[:size])

    def log_list_json(self) -> dict[str, Any]:
        """A v3 log list (as Chrome's and loglist.certspotter.org) naming only this log."""
        return {
            "version": "1.0",
            "log_list_timestamp": "2025-11-28T00:00:00Z",
            "operators": [
                {
                    "name": "certpilot tests",
                    "email": ["ct@example.invalid"],
                    "logs": [
                        {
                            "description": self.description,
                            "log_id": _b64(self.log_id),
                            "key": _b64(self.public_key_der),
                            "url": self.url,
                            "mmd": self.mmd,
                            "state": {"usable": {"timestamp": "2025-01-01T00:00:00Z"}},
                        }
                    ],
                }
            ],
        }

    # -- HTTP ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL with the trailing slash log lists use (``<url>ct/v1/get-sth``)."""
        return self.base_url

    def _published_size(self) -> int:
        return self.sths[-1].tree_size

    @staticmethod
    def _bad(message: str) -> web.Response:
        return web.json_response({"error_message": message, "success": False}, status=400)

    @staticmethod
    def _int(request: web.Request, name: str) -> int | None:
        raw = request.query.get(name)
        if raw is None or not raw.isdigit():
            return None
        return int(raw)

    # -- hooks: what is served (identity here; the tests' fault knobs override them) ------

    async def _before(self, request: web.Request) -> web.StreamResponse | None:
        """Runs before every request; an answer returned here is served instead."""
        return None

    def _serve_signature(self, sth: STH) -> bytes:
        return sth.signature

    def _serve_consistency(self, proof: list[bytes]) -> list[bytes]:
        return proof

    def _serve_leaf(self, index: int, leaf: bytes) -> bytes:
        return leaf

    def _serve_audit_path(self, path: list[bytes]) -> list[bytes]:
        return path

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        early = await self._before(request)
        if early is not None:
            return early
        return await handler(request)

    async def _get_sth(self, request: web.Request) -> web.Response:
        sth = self.sths[-1]
        sig = self._serve_signature(sth)
        return web.json_response(
            {
                "tree_size": sth.tree_size,
                "timestamp": sth.timestamp_ms,
                "sha256_root_hash": _b64(sth.root_hash),
                "tree_head_signature": _b64(sig),
            }
        )

    async def _get_consistency(self, request: web.Request) -> web.Response:
        first, second = self._int(request, "first"), self._int(request, "second")
        if first is None or second is None:
            return self._bad("first and second are required non-negative integers")
        if not first <= second <= self._published_size():
            return self._bad(f"need first <= second <= {self._published_size()}")
        with self._lock:
            proof = consistency_proof(first, self._hashes[:second])
        proof = self._serve_consistency(proof)
        return web.json_response({"consistency": [_b64(p) for p in proof]})

    async def _get_entries(self, request: web.Request) -> web.Response:
        start, end = self._int(request, "start"), self._int(request, "end")
        size = self._published_size()
        if start is None or end is None or start > end or start >= size:
            return self._bad(f"need 0 <= start <= end and start < {size}")
        end = min(end, size - 1, start + self.batch_limit - 1)
        entries = []
        for i in range(start, end + 1):
            leaf = self._serve_leaf(i, self._leaves[i])
            entries.append({"leaf_input": _b64(leaf), "extra_data": _b64(self._extra[i])})
        return web.json_response({"entries": entries})

    async def _get_proof_by_hash(self, request: web.Request) -> web.Response:
        tree_size = self._int(request, "tree_size")
        try:
            wanted = base64.b64decode(request.query.get("hash", ""), validate=True)
        except (binascii.Error, ValueError):
            return self._bad("hash is not base64")
        if tree_size is None or not 1 <= tree_size <= self._published_size() or len(wanted) != 32:
            return self._bad("need a 32-byte hash and 1 <= tree_size <= published size")
        with self._lock:
            hashes_ = self._hashes[:tree_size]
        try:
            index = hashes_.index(wanted)
        except ValueError:
            return web.json_response(
                {"error_message": "hash not found", "success": False}, status=404
            )
        path = inclusion_path(index, hashes_)
        path = self._serve_audit_path(path)
        return web.json_response({"leaf_index": index, "audit_path": [_b64(p) for p in path]})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/ct/v1/get-sth", self._get_sth)
        app.router.add_get("/ct/v1/get-sth-consistency", self._get_consistency)
        app.router.add_get("/ct/v1/get-entries", self._get_entries)
        app.router.add_get("/ct/v1/get-proof-by-hash", self._get_proof_by_hash)
        return app

    def write_log_list(self, path: Path) -> None:
        """Write :meth:`log_list_json` to ``path`` (for certspotter ``-logs``)."""
        path.write_text(json.dumps(self.log_list_json()), encoding="utf-8")


def make_precert(
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A precertificate for ``names``: a leaf with the critical CT poison (RFC 6962 section 3.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cn = names[0] if names else "precert"
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.PrecertPoison(), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@contextlib.asynccontextmanager
async def serving(log: LocalLog, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``log`` on the running event loop (``port`` 0: a free one); yields its base URL
    and sets ``log.base_url``."""
    runner = web.AppRunner(log.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        log.base_url = f"http://{host}:{bound}/"
        yield log.base_url
    finally:
        await runner.cleanup()


__all__ = [
    "DEFAULT_BATCH_LIMIT",
    "LocalLog",
    "consistency_proof",
    "inclusion_path",
    "make_precert",
    "serving",
    "signed_tree_head",
    "strip_poison",
]
