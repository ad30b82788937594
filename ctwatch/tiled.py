"""Static-ct-api ("tiled") Certificate Transparency logs as a :class:`~ctwatch.source.LogSource`.

Sunlight and the other static-ct-api logs (https://c2sp.org/static-ct-api, among them Let's
Encrypt's current logs) keep the RFC 6962 submission API but publish the tree for monitors as
static files under a *monitoring prefix*:

``<prefix>/checkpoint``
    the signed tree head as a signed note (c2sp.org/signed-note, c2sp.org/tlog-checkpoint)::

        log.example/2025h1                  <- origin (the log's key name)
        1234                                <- tree size, decimal, no leading zeros
        Mz3NjgwMTIz...ODkwMTIzNDU2Nzg5MA=   <- base64 of the 32-byte root hash
                                            <- blank line: the signed text ends above it
        — log.example/2025h1 BASE64(key ID || signature)

    The log's line is an ``RFC6962NoteSignature``: key ID = the first four bytes of
    ``SHA-256(key name || 0x0A || 0x05 || RFC 6962 LogID)``, signature = ``uint64 timestamp``
    (milliseconds) followed by the TLS ``DigitallySigned`` RFC 6962 ``TreeHeadSignature`` over
    (v1, tree_hash, timestamp, size, root): exactly what ``get-sth`` signs, so it verifies with
    :func:`ctwatch.rfc6962.verify_digitally_signed`. Other lines (witness cosignatures, other
    keys of the log) are ignored, as the note spec requires; a line that claims the log's key
    name and key ID but does not verify rejects the note.

``<prefix>/tile/<L>/<N>[.p/<W>]``
    hash tiles (c2sp.org/tlog-tiles, height 8): tile ``N`` at level ``L`` holds the 256 Merkle
    tree hashes ``MTH(D[(N*256 + i) * 256**L : (N*256 + i + 1) * 256**L])``; a partial tile on
    the right edge holds the first ``W`` (1..255) of them. ``N`` is written in 3-digit path
    elements, all but the last prefixed with ``x`` (1234067 -> ``x001/x234/067``).

``<prefix>/tile/data/<N>[.p/<W>]``
    data tiles: the entries of the level-0 tile ``N``, each a ``TileLeaf``::

        TimestampedEntry timestamped_entry;      (RFC 6962 section 3.4)
        select (entry_type) { case x509_entry: Empty;
                              case precert_entry: ASN.1Cert pre_certificate; };
        opaque Fingerprint[32]; Fingerprint certificate_chain<0..2^16-1>;

    The RFC 6962 ``MerkleTreeLeaf`` is ``0x00 0x00 || timestamped_entry`` (v1,
    timestamped_entry); its CtExtensions carry the static-ct-api ``leaf_index`` extension
    (type 0, a uint40), which must equal the entry's position.

``<prefix>/issuer/<hex SHA-256>``
    the DER issuer certificates the fingerprints name.

:class:`TiledLog` turns this into what the monitor expects of any log: :meth:`TiledLog.head`
verifies the checkpoint, :meth:`TiledLog.entries` rebuilds ``get-entries``-style
``leaf_input``/``extra_data`` (fetching and checking issuers), and the two proof methods compute
RFC 6962 audit and consistency paths (RFC 9162 sections 2.1.3/2.1.4 shapes) from hash tiles.
Partial tiles are only asked for widths required by a checkpoint this object verified, and a
partial tile that is gone (404) is replaced by the full tile, as the spec tells clients to do.

Hand-written on purpose: no maintained Python static-ct-api client exists (the package lists
here hold only RFC 6962 tailers and young generic tlog tools such as ``aics-tlog`` and
``tlog-scales``, none of which reads TileLeaf entries or RFC 6962 note signatures), and the
format is small. Everything above the :class:`TiledLog` class is pure and does no I/O.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from ctwatch.fetch import Fetcher, NotFound
from ctwatch.rfc6962 import (
    HASH_SIZE,
    STH,
    encode_cert_chain,
    encode_precert_chain_entry,
    log_id,
    node_hash,
    sth_signed_data,
    verify_digitally_signed,
)
from ctwatch.source import BadSignature, LogKind, LogProtocolError, RawEntry, TreeHead

if TYPE_CHECKING:
    from ctwatch.source import LogSource

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # hashes (or entries) in a full tile
MAX_CHECKPOINT_BYTES = 1_000_000  # Sunlight's and torchwood's maxCheckpointSize
MAX_NOTE_SIGNATURES = 100  # golang.org/x/mod/sumdb/note's cap (the spec asks for >= 16)
SIGTYPE_RFC6962 = 0x05  # signed-note signature type of an RFC6962NoteSignature
EXT_LEAF_INDEX = 0  # static-ct-api CtExtensions ExtensionType leaf_index
MAX_LEAF_INDEX = (1 << 40) - 1  # LeafIndex is a uint40

_MAX_UINT64 = (1 << 64) - 1
_SIG_PREFIX = "\u2014 "  # em dash, space
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_ENTRY_X509 = 0
_ENTRY_PRECERT = 1
_LEAF_HEADER = b"\x00\x00"  # MerkleTreeLeaf: version v1, leaf_type timestamped_entry
DEFAULT_ISSUER_CACHE = 256

_T = TypeVar("_T")


# -- signed notes and checkpoints -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a signed note: ``— <name> base64(key_id || signature)``."""

    name: str
    key_id: bytes  # 4 bytes, big-endian uint32 on the wire
    signature: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed (not yet verified) checkpoint. ``body`` is the signed note text (the lines
    above the blank line, with the final newline); ``extensions`` are any lines after the root
    hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...]
    body: str
    signatures: tuple[NoteSignature, ...]


def default_origin(monitoring_url: str) -> str:
    """The URL without scheme and trailing slashes: ``https://a.example/x/`` -> ``a.example/x``."""
    rest = monitoring_url.split("://", 1)[1] if "://" in monitoring_url else monitoring_url
    return rest.rstrip("/")


def rfc6962_key_id(key_name: str, log_key_id: bytes) -> bytes:
    """The note key ID of an RFC6962NoteSignature: ``SHA-256(name || 0x0A || 0x05 || LogID)[:4]``
    (``log_key_id`` is the 32-byte RFC 6962 LogID, :func:`ctwatch.rfc6962.log_id`)."""
    data = key_name.encode("utf-8") + b"\n" + bytes([SIGTYPE_RFC6962]) + log_key_id
    return hashlib.sha256(data).digest()[:4]


def _valid_key_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() for c in name) and "+" not in name


def format_checkpoint(
    origin: str, size: int, root_hash: bytes, extensions: Sequence[str] = ()
) -> str:
    """The checkpoint note text (what a log signs), ending in a newline."""
    lines = [origin, str(size), base64.b64encode(root_hash).decode("ascii"), *extensions]
    return "".join(f"{line}\n" for line in lines)


def format_signature_line(name: str, key_id: bytes, signature: bytes) -> str:
    """One ``— <name> <base64>`` signature line, with its newline."""
    return f"{_SIG_PREFIX}{name} {base64.b64encode(key_id + signature).decode('ascii')}\n"


def encode_rfc6962_note_signature(timestamp_ms: int, digitally_signed: bytes) -> bytes:
    """``RFC6962NoteSignature``: ``uint64 timestamp || DigitallySigned TreeHeadSignature``."""
    return struct.pack(">Q", timestamp_ms) + digitally_signed


def _strict_b64(value: str) -> bytes | None:
    """Standard base64 in its canonical form (the only one a log emits), else ``None``."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def parse_checkpoint(text: str | bytes, origin: str, *, url: str | None = None) -> Checkpoint:
    """Parse a signed checkpoint note, checking its form but no signature.

    Enforces the signed-note rules (valid UTF-8, no control characters but newline, at most
    :data:`MAX_CHECKPOINT_BYTES` and :data:`MAX_NOTE_SIGNATURES`, text and signatures split at
    the last blank line, every signature line well formed) and the checkpoint rules (origin,
    decimal size without leading zeros that fits a uint64, canonical base64 of a 32-byte root,
    non-empty extension lines). The origin line must equal ``origin``.

    Raises :class:`~ctwatch.source.LogProtocolError` (``url`` defaults to ``origin``) with a
    one-line reason; never anything else.
    """
    where = url if url is not None else origin

    def bad(reason: str) -> LogProtocolError:
        return LogProtocolError(where, f"checkpoint: {reason}")

    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_CHECKPOINT_BYTES:
            raise bad(f"larger than {MAX_CHECKPOINT_BYTES} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise bad("not UTF-8") from None
    if not isinstance(text, str):
        raise bad("not text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CHECKPOINT_BYTES:
        raise bad(f"larger than {MAX_CHECKPOINT_BYTES} bytes")
    for ch in text:
        if ch < " " and ch != "\n":
            raise bad(f"control character U+{ord(ch):04X}")
        if "\ud800" <= ch <= "\udfff":
            raise bad("not UTF-8")
    split = text.rfind("\n\n")
    if split < 0:
        raise bad("no blank line before the signatures")
    body, sig_block = text[: split + 1], text[split + 2 :]
    if not sig_block or not sig_block.endswith("\n"):
        raise bad("no signature lines, or the last one does not end in a newline")

    sig_lines = sig_block[:-1].split("\n")
    if len(sig_lines) > MAX_NOTE_SIGNATURES:
        raise bad(f"more than {MAX_NOTE_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for n, line in enumerate(sig_lines, 1):
        if not line.startswith(_SIG_PREFIX):
            raise bad(f"signature line {n} does not start with an em dash and a space")
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _strict_b64(b64) if b64 else None
        if not _valid_key_name(name) or raw is None or len(raw) < 5:
            raise bad(f"signature line {n} is malformed")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))

    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise bad(f"{len(lines)} body lines, need origin, size and root hash")
    got_origin, size_text, root_text, *extensions = lines
    if not got_origin:
        raise bad("empty origin line")
    if got_origin != origin:
        raise bad(f"origin is {got_origin[:100]!r}, expected {origin!r}")
    # 20 digits hold any uint64; a longer line is refused before int() (which refuses more
    # than 4300 digits with a ValueError of its own).
    if len(size_text) > 20 or not _SIZE_RE.fullmatch(size_text) or int(size_text) > _MAX_UINT64:
        raise bad(f"tree size {size_text[:30]!r} is not a decimal uint64")
    root = _strict_b64(root_text)
    if root is None:
        raise bad("root hash is not canonical base64")
    if len(root) != HASH_SIZE:
        raise bad(f"root hash is {len(root)} bytes, not {HASH_SIZE}")
    if any(not e for e in extensions):
        raise bad("empty extension line")
    return Checkpoint(
        origin=got_origin,
        size=int(size_text),
        root_hash=root,
        extensions=tuple(extensions),
        body=body,
        signatures=tuple(signatures),
    )


def verify_checkpoint(
    text: str | bytes, origin: str, key_der: bytes, *, url: str | None = None
) -> TreeHead:
    """Parse ``text`` (:func:`parse_checkpoint`) and check the log's RFC6962NoteSignature.

    The log's key is named ``origin`` with the key ID of :func:`rfc6962_key_id`; lines from
    any other name or key ID are ignored. Every line of the log's key must verify, and at least
    one must exist: otherwise :class:`~ctwatch.source.BadSignature`. static-ct-api forbids
    extension lines with this signature type (it does not cover them):
    :class:`~ctwatch.source.LogProtocolError`. Returns the :class:`~ctwatch.source.TreeHead`
    with the signature's timestamp and ``raw = {"checkpoint": text}``.
    """
    where = url if url is not None else origin
    checkpoint = parse_checkpoint(text, origin, url=url)
    if checkpoint.extensions:
        raise LogProtocolError(
            where, "checkpoint: extension lines are not allowed with an RFC 6962 note signature"
        )
    key_id = rfc6962_key_id(origin, log_id(key_der))
    timestamp: int | None = None
    for sig in checkpoint.signatures:
        if sig.name != origin or sig.key_id != key_id:
            continue  # a witness cosignature, or another key: not ours to judge
        ts, ok = _verify_note_signature(checkpoint, sig.signature, key_der)
        if not ok:
            raise BadSignature(where, f"checkpoint signature by {origin} does not verify")
        if timestamp is None:
            timestamp = ts
    if timestamp is None:
        raise BadSignature(
            where, f"checkpoint has no signature by {origin} with key ID {key_id.hex()}"
        )
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8")
    return TreeHead(checkpoint.size, checkpoint.root_hash, timestamp, raw={"checkpoint": text})


def _verify_note_signature(
    checkpoint: Checkpoint, signature: bytes, key_der: bytes
) -> tuple[int, bool]:
    if len(signature) < 8:
        return 0, False
    (timestamp,) = struct.unpack(">Q", signature[:8])
    sth = STH(checkpoint.size, timestamp, checkpoint.root_hash, b"")
    return timestamp, verify_digitally_signed(sth_signed_data(sth), signature[8:], key_der)


# -- tile coordinates -------------------------------------------------------------------------


def encode_tile_index(index: int) -> str:
    """``N`` as 3-digit path elements, all but the last prefixed with ``x`` (``x001/x234/067``)."""
    if index < 0:
        raise ValueError("tile index must be non-negative")
    out = f"{index % 1000:03d}"
    index //= 1000
    while index > 0:
        out = f"x{index % 1000:03d}/{out}"
        index //= 1000
    return out


def tile_path(level: int | Literal["data"], index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` (or ``tile/data/...``), relative to the monitoring prefix."""
    if level != "data" and not (isinstance(level, int) and 0 <= level <= 63):
        raise ValueError(f"tile level {level!r} is not 0..63 or 'data'")
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is not 1..{TILE_WIDTH}")
    path = f"tile/{level}/{encode_tile_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def issuer_path(fingerprint: bytes) -> str:
    """``issuer/<lowercase hex SHA-256>``, relative to the monitoring prefix."""
    return f"issuer/{fingerprint.hex()}"


def tile_width(level: int, index: int, tree_size: int) -> int:
    """How many hashes tile ``index`` at ``level`` holds in a tree of ``tree_size`` leaves: 256
    for a full tile, 1..255 for the partial one, 0 when the tile does not exist. Data tiles
    have the width of the level-0 tile."""
    nodes = tree_size >> (TILE_HEIGHT * level)  # complete hashes at tree level 8*level
    return max(0, min(TILE_WIDTH, nodes - index * TILE_WIDTH))


def parse_hash_tile(data: bytes, width: int, *, url: str = "hash tile") -> list[bytes]:
    """The ``width`` hashes of a hash tile; :class:`LogProtocolError` for any other length."""
    if len(data) != width * HASH_SIZE:
        raise LogProtocolError(
            url, f"hash tile is {len(data)} bytes, expected {width} hashes ({width * HASH_SIZE})"
        )
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# -- data tiles -------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise _Malformed(f"truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, length_bytes: int, what: str) -> bytes:
        return self.take(self.uint(length_bytes, f"{what} length"), what)

    def done(self) -> bool:
        return self.pos == len(self.data)


@dataclass(frozen=True, slots=True)
class TileLeaf:
    """One data tile entry. ``certificate`` is the x509 certificate, or the precert's
    TBSCertificate (poison removed) as the tree hashes it; ``pre_certificate`` is the
    precertificate itself (precert entries only); ``timestamped_entry`` the raw RFC 6962
    ``TimestampedEntry`` bytes."""

    index: int
    timestamp_ms: int
    entry_type: Literal["x509", "precert"]
    certificate: bytes
    issuer_key_hash: bytes | None
    pre_certificate: bytes | None
    extensions: bytes
    chain_fingerprints: tuple[bytes, ...]
    timestamped_entry: bytes

    @property
    def merkle_tree_leaf(self) -> bytes:
        """The RFC 6962 ``MerkleTreeLeaf`` (``leaf_input``): v1, timestamped_entry, the entry."""
        return _LEAF_HEADER + self.timestamped_entry


def encode_leaf_index_extension(index: int) -> bytes:
    """``CtExtensions`` holding only ``leaf_index`` (type 0, uint40): 8 bytes, without the
    outer uint16 length (which :func:`ctwatch.rfc6962.encode_x509_leaf` adds)."""
    if not 0 <= index <= MAX_LEAF_INDEX:
        raise ValueError("leaf_index out of range")
    return bytes([EXT_LEAF_INDEX]) + struct.pack(">H", 5) + index.to_bytes(5, "big")


def parse_ct_extensions(data: bytes) -> dict[int, bytes]:
    """``Extension CtExtensions<0..2^16-1>`` (static-ct-api: uint8 type, uint16-vector data)
    as ``{type: data}``; :class:`ValueError` for truncation or a duplicate type."""
    cur = _Cursor(data)
    out: dict[int, bytes] = {}
    try:
        while not cur.done():
            ext_type = cur.uint(1, "extension_type")
            ext_data = cur.vector(2, "extension_data")
            if ext_type in out:
                raise ValueError(f"duplicate extension type {ext_type}")
            out[ext_type] = ext_data
    except _Malformed as e:
        raise ValueError(f"CtExtensions {e}") from None
    return out


def leaf_index_of(extensions: bytes) -> int:
    """The ``leaf_index`` in static-ct-api ``CtExtensions``; :class:`ValueError` if missing or
    not exactly 5 bytes."""
    exts = parse_ct_extensions(extensions)
    if EXT_LEAF_INDEX not in exts:
        raise ValueError("no leaf_index extension")
    raw = exts[EXT_LEAF_INDEX]
    if len(raw) != 5:
        raise ValueError(f"leaf_index extension is {len(raw)} bytes, not 5")
    return int.from_bytes(raw, "big")


def encode_tile_leaf(
    merkle_tree_leaf: bytes,
    pre_certificate: bytes | None = None,
    chain_fingerprints: Sequence[bytes] = (),
) -> bytes:
    """The ``TileLeaf`` for an RFC 6962 ``MerkleTreeLeaf`` (as built by
    :func:`ctwatch.rfc6962.encode_x509_leaf` / ``encode_precert_leaf``): the TimestampedEntry,
    the precertificate for precert entries, then the issuer fingerprints."""
    if merkle_tree_leaf[:2] != _LEAF_HEADER or len(merkle_tree_leaf) < 12:
        raise ValueError("not a v1 timestamped_entry MerkleTreeLeaf")
    is_precert = int.from_bytes(merkle_tree_leaf[10:12], "big") == _ENTRY_PRECERT
    if is_precert != (pre_certificate is not None):
        raise ValueError("pre_certificate is required for, and only for, precert entries")
    if any(len(f) != HASH_SIZE for f in chain_fingerprints):
        raise ValueError("fingerprints must be 32 bytes")
    fps = b"".join(chain_fingerprints)
    if len(fps) > 0xFFFF:
        raise ValueError("too many fingerprints")
    out = merkle_tree_leaf[2:]
    if pre_certificate is not None:
        if len(pre_certificate) >= 1 << 24:
            raise ValueError("pre_certificate longer than 2^24-1 bytes")
        out += len(pre_certificate).to_bytes(3, "big") + pre_certificate
    return out + struct.pack(">H", len(fps)) + fps


def _read_tile_leaf(cur: _Cursor, index: int) -> TileLeaf:
    start = cur.pos
    timestamp = cur.uint(8, "timestamp")
    entry_type = cur.uint(2, "entry_type")
    issuer_key_hash: bytes | None = None
    if entry_type == _ENTRY_X509:
        certificate = cur.vector(3, "ASN.1Cert")
    elif entry_type == _ENTRY_PRECERT:
        issuer_key_hash = cur.take(HASH_SIZE, "issuer_key_hash")
        certificate = cur.vector(3, "TBSCertificate")
    else:
        raise _Malformed(f"unknown entry_type {entry_type}")
    if not certificate:
        raise _Malformed("empty certificate")
    extensions = cur.vector(2, "extensions")
    timestamped_entry = cur.data[start : cur.pos]
    pre_certificate: bytes | None = None
    if entry_type == _ENTRY_PRECERT:
        pre_certificate = cur.vector(3, "pre_certificate")
        if not pre_certificate:
            raise _Malformed("empty pre_certificate")
    fingerprints = cur.vector(2, "certificate_chain")
    if len(fingerprints) % HASH_SIZE:
        raise _Malformed(f"certificate_chain of {len(fingerprints)} bytes is not 32-byte hashes")
    try:
        got = leaf_index_of(extensions)
    except ValueError as e:
        raise _Malformed(str(e)) from None
    if got != index:
        raise _Malformed(f"leaf_index extension says {got}")
    return TileLeaf(
        index=index,
        timestamp_ms=timestamp,
        entry_type="x509" if entry_type == _ENTRY_X509 else "precert",
        certificate=certificate,
        issuer_key_hash=issuer_key_hash,
        pre_certificate=pre_certificate,
        extensions=extensions,
        chain_fingerprints=tuple(
            fingerprints[i : i + HASH_SIZE] for i in range(0, len(fingerprints), HASH_SIZE)
        ),
        timestamped_entry=timestamped_entry,
    )


def parse_data_tile(
    data: bytes, tile_index: int, width: int, *, url: str = "data tile"
) -> list[TileLeaf]:
    """The ``width`` entries of data tile ``tile_index`` (entry ``i`` is log index
    ``tile_index * 256 + i``). Each entry's ``leaf_index`` extension must equal its index, and
    the tile must hold exactly ``width`` entries: :class:`LogProtocolError` otherwise (never
    another exception)."""
    if not isinstance(data, bytes | bytearray):
        raise LogProtocolError(url, "data tile is not bytes")
    cur = _Cursor(bytes(data))
    out: list[TileLeaf] = []
    first = tile_index * TILE_WIDTH
    for i in range(width):
        if cur.done():
            raise LogProtocolError(url, f"data tile holds {i} entries, expected {width}")
        try:
            out.append(_read_tile_leaf(cur, first + i))
        except _Malformed as e:
            raise LogProtocolError(url, f"data tile entry {first + i}: {e}") from None
    if not cur.done():
        raise LogProtocolError(
            url, f"data tile has {len(cur.data) - cur.pos} bytes after its {width} entries"
        )
    return out


# -- proofs from tiles ------------------------------------------------------------------------

Range = tuple[int, int]  # leaves [lo, hi)
Node = tuple[int, int]  # (tree level, index): MTH(D[index << level : (index + 1) << level])
TileKey = tuple[int, int]  # (tile level, tile index)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_ranges(index: int, tree_size: int) -> list[Range]:
    """The leaf ranges whose Merkle hashes form ``PATH(index, D[tree_size])`` (RFC 6962 section
    2.1.1), leaf-side first: the audit path :func:`ctwatch.rfc6962.verify_inclusion` takes."""
    if not 0 <= index < tree_size:
        raise ValueError(f"index {index} is not in a tree of {tree_size}")
    out: list[Range] = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The leaf ranges whose hashes form ``PROOF(first, D[second])`` (RFC 6962 section 2.1.2);
    empty when ``first`` is 0 or ``second``."""
    if not 0 <= first <= second:
        raise ValueError(f"need 0 <= first <= second, got {first}, {second}")
    if first in (0, second):
        return []
    out: list[Range] = []
    lo, hi, m, whole = 0, second, first, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m -= k
            lo += k
            whole = False
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return out


def range_nodes(lo: int, hi: int) -> list[Node]:
    """The complete subtrees that make up ``D[lo:hi]``, largest first; their right-to-left fold
    with :func:`ctwatch.rfc6962.node_hash` is ``MTH(D[lo:hi])``. Only ranges that are subtrees
    of RFC 6962's recursion (every range a proof names) are accepted: ``lo`` must be a multiple
    of the smallest power of two >= ``hi - lo`` (:class:`ValueError` otherwise)."""
    if not 0 <= lo < hi:
        raise ValueError(f"empty or negative range {lo}..{hi}")
    if lo % (1 << (hi - lo - 1).bit_length()):
        raise ValueError(f"range {lo}..{hi} is not a subtree of the Merkle tree")
    out: list[Node] = []
    while lo < hi:
        size = 1 << ((hi - lo).bit_length() - 1)
        level = size.bit_length() - 1
        out.append((level, lo >> level))
        lo += size
    return out


def node_tile(node: Node) -> tuple[TileKey, int, int]:
    """Where a node's hash comes from: the tile holding the level-``8*(L//8)`` hashes under it,
    and the slice ``[start, start + count)`` of that tile to hash up."""
    level, index = node
    tile_level, rest = divmod(level, TILE_HEIGHT)
    first = index << rest  # first hash at tree level 8 * tile_level
    return (tile_level, first >> TILE_HEIGHT), first & (TILE_WIDTH - 1), 1 << rest


def _hash_up(hashes: Sequence[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def hash_ranges(ranges: Sequence[Range], tiles: Mapping[TileKey, Sequence[bytes]]) -> list[bytes]:
    """``MTH(D[lo:hi])`` for each range, from the tile hashes in ``tiles`` (which must hold every
    tile :func:`node_tile` names, at least as wide as needed; :class:`KeyError` /
    :class:`ValueError` otherwise)."""
    out: list[bytes] = []
    for lo, hi in ranges:
        acc: bytes | None = None
        for node in reversed(range_nodes(lo, hi)):
            key, start, count = node_tile(node)
            hashes = tiles[key][start : start + count]
            if len(hashes) != count:
                raise ValueError(f"tile {key} is too narrow for node {node}")
            h = _hash_up(hashes)
            acc = h if acc is None else node_hash(h, acc)
        assert acc is not None
        out.append(acc)
    return out


def tiles_for_ranges(ranges: Sequence[Range]) -> set[TileKey]:
    """Every hash tile :func:`hash_ranges` reads for ``ranges``."""
    return {node_tile(n)[0] for lo, hi in ranges for n in range_nodes(lo, hi)}


# -- the log ----------------------------------------------------------------------------------


async def _all(aws: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await concurrently; on failure cancel the rest and raise the first error itself (not an
    ExceptionGroup), so callers see :class:`LogProtocolError` / :class:`LogUnavailable`."""
    if len(aws) == 1:
        return [await aws[0]]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_as_coro(a)) for a in aws]
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _as_coro(aw: Awaitable[_T]) -> _T:
    return await aw


class TiledLog:
    """One static-ct-api log: ``monitoring_url`` is its monitoring prefix
    (``https://mon.example/2025h1/``), ``key_der`` its DER SubjectPublicKeyInfo, ``origin`` the
    checkpoint origin and key name (default: the URL without scheme and trailing slash).

    Tile widths come from the largest checkpoint size this object verified (call :meth:`head`
    first, as the monitor does); a proof or entry beyond it uses the size asked for.
    """

    def __init__(
        self,
        monitoring_url: str,
        key_der: bytes,
        *,
        origin: str | None = None,
        fetcher: Fetcher | None = None,
        issuer_cache_size: int = DEFAULT_ISSUER_CACHE,
    ) -> None:
        if not monitoring_url.startswith(("http://", "https://")):
            raise ValueError(f"monitoring URL {monitoring_url!r} is not http(s)")
        self._url = monitoring_url.rstrip("/") + "/"
        self._key = key_der
        self._origin = origin if origin is not None else default_origin(monitoring_url)
        self._own = fetcher is None
        self._fetch = fetcher or Fetcher()
        self._size = 0
        self._verified = False
        self._issuers: OrderedDict[bytes, bytes] = OrderedDict()
        self._issuer_cache_size = max(1, issuer_cache_size)

    @property
    def url(self) -> str:
        return self._url

    @property
    def kind(self) -> LogKind:
        return "static"

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def verified_size(self) -> int:
        """The largest tree size of a checkpoint this object verified (0 before any)."""
        return self._size

    def _bad(self, path: str, reason: str) -> LogProtocolError:
        # The monitor reports ``reason``: name the resource in it, as Fetcher's errors do.
        return LogProtocolError(self._url, f"{path}: {reason}")

    async def head(self) -> TreeHead:
        data = await self._fetch.get_bytes(self._url + "checkpoint")
        head = verify_checkpoint(data, self._origin, self._key, url=self._url)
        self._size = max(self._size, head.size)
        self._verified = True
        return head

    async def _tile_bytes(
        self, level: int | Literal["data"], index: int, width: int
    ) -> tuple[bytes, int]:
        """The tile of ``width`` and the width actually served: a partial tile that is gone
        (404) falls back to the full one, whose first ``width`` items are the partial's."""
        full = tile_path(level, index)
        if width == TILE_WIDTH:
            return await self._fetch.get_bytes(self._url + full), TILE_WIDTH
        try:
            return await self._fetch.get_bytes(self._url + tile_path(level, index, width)), width
        except NotFound:
            return await self._fetch.get_bytes(self._url + full), TILE_WIDTH

    async def _hash_tile(self, key: TileKey, tree_size: int) -> list[bytes]:
        level, index = key
        width = tile_width(level, index, tree_size)
        if width == 0:
            raise ValueError(f"tile {key} does not exist in a tree of {tree_size}")
        data, served = await self._tile_bytes(level, index, width)
        try:
            return parse_hash_tile(data, served, url=self._url)[:width]
        except LogProtocolError as e:
            raise self._bad(tile_path(level, index, served), e.reason) from None

    async def _hashes(self, ranges: Sequence[Range], tree_size: int) -> list[bytes]:
        if not ranges:
            return []
        size = max(self._size, tree_size)
        keys = sorted(tiles_for_ranges(ranges))  # each tile fetched once per call
        got = await _all([self._hash_tile(k, size) for k in keys])
        return hash_ranges(ranges, dict(zip(keys, got, strict=True)))

    async def consistency_proof(self, first: int, second: int) -> Sequence[bytes]:
        return await self._hashes(consistency_ranges(first, second), second)

    async def inclusion_proof(
        self, index: int, leaf_hash: bytes, tree_size: int
    ) -> Sequence[bytes]:
        """The audit path of ``index``: tiles are addressed by position, so ``leaf_hash`` is
        not looked up (the monitor's verification checks it)."""
        return await self._hashes(inclusion_ranges(index, tree_size), tree_size)

    async def entries(self, start: int, end: int) -> Sequence[RawEntry]:
        """Entries from ``start`` to the end of its data tile (or ``end``, or the verified tree
        size, whichever comes first)."""
        if start < 0 or end < start:
            raise ValueError(f"bad entry range {start}..{end}")
        if start == end:
            return []
        if not self._verified:
            await self.head()
        size = self._size
        if start >= size:
            return []
        tile = start // TILE_WIDTH
        width = tile_width(0, tile, size)
        data, served = await self._tile_bytes("data", tile, width)
        try:
            leaves = parse_data_tile(data, tile, served, url=self._url)[:width]
        except LogProtocolError as e:
            raise self._bad(tile_path("data", tile, served), e.reason) from None
        first = tile * TILE_WIDTH
        wanted = leaves[start - first : min(end, size) - first]
        issuers = await self._load_issuers({f for leaf in wanted for f in leaf.chain_fingerprints})
        out: list[RawEntry] = []
        for leaf in wanted:
            chain = [issuers[f] for f in leaf.chain_fingerprints]
            if leaf.pre_certificate is not None:
                extra = encode_precert_chain_entry(leaf.pre_certificate, chain)
            else:
                extra = encode_cert_chain(chain)
            out.append(RawEntry(leaf.index, leaf.merkle_tree_leaf, extra))
        return out

    async def _load_issuers(self, fingerprints: set[bytes]) -> dict[bytes, bytes]:
        """The DER issuers named by ``fingerprints``, from the cache or fetched (and checked to
        hash to their name). The cache is a bounded LRU: issuers are few and immutable."""
        found = {f: self._issuers[f] for f in fingerprints if f in self._issuers}
        for f in found:
            self._issuers.move_to_end(f)
        missing = sorted(fingerprints - found.keys())
        if missing:
            urls = [self._url + issuer_path(f) for f in missing]
            ders = await _all([self._fetch.get_bytes(u) for u in urls])
            for f, der in zip(missing, ders, strict=True):
                if hashlib.sha256(der).digest() != f:
                    raise self._bad(issuer_path(f), "issuer certificate does not hash to its name")
                found[f] = self._issuers[f] = der
            while len(self._issuers) > self._issuer_cache_size:
                self._issuers.popitem(last=False)
        return found

    async def aclose(self) -> None:
        if self._own:
            await self._fetch.aclose()


if TYPE_CHECKING:

    def _is_log_source(log: TiledLog) -> LogSource:
        return log


__all__ = [
    "DEFAULT_ISSUER_CACHE",
    "EXT_LEAF_INDEX",
    "MAX_CHECKPOINT_BYTES",
    "MAX_LEAF_INDEX",
    "MAX_NOTE_SIGNATURES",
    "SIGTYPE_RFC6962",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Checkpoint",
    "NoteSignature",
    "TileLeaf",
    "TiledLog",
    "consistency_ranges",
    "default_origin",
    "encode_leaf_index_extension",
    "encode_rfc6962_note_signature",
    "encode_tile_index",
    "encode_tile_leaf",
    "format_checkpoint",
    "format_signature_line",
    "hash_ranges",
    "inclusion_ranges",
    "issuer_path",
    "leaf_index_of",
    "node_tile",
    "parse_checkpoint",
    "parse_ct_extensions",
    "parse_data_tile",
    "parse_hash_tile",
    "range_nodes",
    "rfc6962_key_id",
    "tile_path",
    "tile_width",
    "tiles_for_ranges",
]
