"""static-ct-api parsing and proofs from tiles (``ctwatch.tiled``), with no I/O.

Checkpoints are built here by hand from the spec (c2sp.org/signed-note, tlog-checkpoint,
static-ct-api) and signed with real ECDSA and RSA keys; proofs computed from tiles are compared
with the RFC 6962 reference in :mod:`tests.support.ct_log` and checked with the verifiers of
:mod:`ctwatch.rfc6962`, for trees whose tiles are exactly those of their size (partial tiles on
the right edge).
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from certpilot.localca import LocalCA
from ctwatch.rfc6962 import (
    SIG_ALG_ECDSA,
    SIG_ALG_RSA,
    encode_cert_chain,
    encode_digitally_signed,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    leaf_hash,
    log_id,
    parse_leaf,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from ctwatch.source import BadSignature, LogProtocolError
from ctwatch.tiled import (
    MAX_NOTE_SIGNATURES,
    TILE_WIDTH,
    consistency_ranges,
    encode_leaf_index_extension,
    encode_rfc6962_note_signature,
    encode_tile_index,
    encode_tile_leaf,
    format_checkpoint,
    format_signature_line,
    hash_ranges,
    inclusion_ranges,
    leaf_index_of,
    parse_checkpoint,
    parse_ct_extensions,
    parse_data_tile,
    parse_hash_tile,
    range_nodes,
    rfc6962_key_id,
    tile_path,
    tile_width,
    tiles_for_ranges,
    verify_checkpoint,
)
from tests.support.ct_log import consistency_proof, inclusion_path, make_precert, strip_poison
from tests.support.tiled_log import tile_index_path

DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
ORIGIN = "log.example/2026h1"
ROOT = hashlib.sha256(b"some root").digest()
TS = 1_767_225_600_123


# -- checkpoint helpers (written from the spec, independently of ctwatch.tiled) -----------------


class Log:
    def __init__(self, kind: str = "ec") -> None:
        self.priv: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if kind == "ec":
            self.priv = ec.generate_private_key(ec.SECP256R1())
        else:
            self.priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.der = self.priv.public_key().public_bytes(DER, SPKI)

    def key_id(self, name: str = ORIGIN) -> bytes:
        lid = hashlib.sha256(self.der).digest()
        return hashlib.sha256(name.encode() + b"\n" + b"\x05" + lid).digest()[:4]

    def note_sig(self, size: int, root: bytes, ts: int = TS) -> bytes:
        signed = struct.pack(">BBQQ", 0, 1, ts, size) + root
        if isinstance(self.priv, ec.EllipticCurvePrivateKey):
            ds = encode_digitally_signed(
                SIG_ALG_ECDSA, self.priv.sign(signed, ec.ECDSA(hashes.SHA256()))
            )
        else:
            ds = encode_digitally_signed(
                SIG_ALG_RSA, self.priv.sign(signed, padding.PKCS1v15(), hashes.SHA256())
            )
        return struct.pack(">Q", ts) + ds

    def line(self, size: int, root: bytes, *, name: str = ORIGIN, ts: int = TS) -> str:
        raw = self.key_id(name) + self.note_sig(size, root, ts)
        return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"

    def checkpoint(self, size: int = 5, root: bytes = ROOT, *, extra: Sequence[str] = ()) -> str:
        body = f"{ORIGIN}\n{size}\n{base64.b64encode(root).decode()}\n"
        return body + "\n" + self.line(size, root) + "".join(extra)


def witness_line(name: str = "witness.example/w1", body: str = "x") -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4]
    sig = struct.pack(">Q", 1_767_225_600) + key.sign(body.encode())
    return f"\u2014 {name} {base64.b64encode(kid + sig).decode()}\n"


@pytest.fixture(scope="module")
def log() -> Log:
    return Log()


# -- checkpoints ------------------------------------------------------------------------------


def test_key_id_is_the_spec_formula(log: Log) -> None:
    assert rfc6962_key_id(ORIGIN, log_id(log.der)) == log.key_id()
    assert rfc6962_key_id("other.example/x", log_id(log.der)) != log.key_id()


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_checkpoint_verifies(kind: str) -> None:
    lg = Log(kind)
    text = lg.checkpoint(1234, ROOT)
    head = verify_checkpoint(text, ORIGIN, lg.der)
    assert (head.size, head.root_hash, head.timestamp_ms) == (1234, ROOT, TS)
    assert head.raw == {"checkpoint": text}
    # bytes in, the same answer
    assert verify_checkpoint(text.encode(), ORIGIN, lg.der) == head
    cp = parse_checkpoint(text, ORIGIN)
    assert cp.body == f"{ORIGIN}\n1234\n{base64.b64encode(ROOT).decode()}\n"
    assert [s.name for s in cp.signatures] == [ORIGIN]
    assert cp.signatures[0].key_id == lg.key_id()


def test_formatters_build_the_same_note(log: Log) -> None:
    sig = log.note_sig(5, ROOT)
    ts, ds = struct.unpack(">Q", sig[:8])[0], sig[8:]
    text = (
        format_checkpoint(ORIGIN, 5, ROOT)
        + "\n"
        + format_signature_line(ORIGIN, log.key_id(), encode_rfc6962_note_signature(ts, ds))
    )
    root_b64 = base64.b64encode(ROOT).decode()
    sig_b64 = base64.b64encode(log.key_id() + sig).decode()
    assert text == f"{ORIGIN}\n5\n{root_b64}\n\n\u2014 {ORIGIN} {sig_b64}\n"
    assert verify_checkpoint(text, ORIGIN, log.der).timestamp_ms == TS


def test_empty_tree_checkpoint(log: Log) -> None:
    empty = hashlib.sha256(b"").digest()
    head = verify_checkpoint(log.checkpoint(0, empty), ORIGIN, log.der)
    assert head.size == 0 and head.root_hash == empty


def test_witness_and_unknown_key_lines_are_ignored(log: Log) -> None:
    other = Log()
    body_end = log.checkpoint(7).index("\n\n") + 2
    text = log.checkpoint(7)
    # a witness before and after, and a line under the log's name from another key (a
    # different key ID, e.g. an Ed25519 key of the log): none of them is ours to check.
    text = (
        text[:body_end]
        + witness_line()
        + other.line(7, ROOT)
        + text[body_end:]
        + witness_line("witness.example/w2")
    )
    assert verify_checkpoint(text, ORIGIN, log.der).size == 7
    assert len(parse_checkpoint(text, ORIGIN).signatures) == 4


def test_two_log_signatures_first_timestamp_wins(log: Log) -> None:
    text = log.checkpoint(7) + log.line(7, ROOT, ts=TS + 5)
    assert verify_checkpoint(text, ORIGIN, log.der).timestamp_ms == TS


def test_sixteen_signatures_accepted(log: Log) -> None:
    text = log.checkpoint(3, extra=[witness_line(f"w.example/{i}") for i in range(15)])
    assert verify_checkpoint(text, ORIGIN, log.der).size == 3


def _flip_sig(text: str) -> str:
    head, _, line = text.rpartition("\u2014 ")
    name, b64 = line.split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    return f"{head}\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"


def test_tampered_checkpoints_are_bad_signatures(log: Log) -> None:
    good = log.checkpoint(5)
    root_b64 = base64.b64encode(ROOT).decode()
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    cases = {
        "flipped signature": _flip_sig(good),
        "size changed": good.replace("\n5\n", "\n6\n", 1),
        "root changed": good.replace(root_b64, other_root, 1),
        "only a witness": good.split("\n\n")[0] + "\n\n" + witness_line(),
        "signed by another key": Log().checkpoint(5),
        # the timestamp is part of the signed TreeHeadSignature
        "timestamp changed": good.split("\n\n")[0]
        + "\n\n"
        + _retimestamp(log.line(5, ROOT), TS + 1),
    }
    for what, text in cases.items():
        with pytest.raises(BadSignature) as e:
            verify_checkpoint(text, ORIGIN, log.der)
        assert "\n" not in str(e.value), what
    # A bad line from the log's key rejects the note even if a good one is there too.
    bad_then_good = good + _flip_sig(good).split("\n\n")[1]
    with pytest.raises(BadSignature):
        verify_checkpoint(bad_then_good, ORIGIN, log.der)
    # The right key under another name is another key (the key ID covers the name).
    renamed = good.split("\n\n")[0] + "\n\n" + log.line(5, ROOT, name="x.example/y")
    with pytest.raises(BadSignature, match="no signature"):
        verify_checkpoint(renamed, ORIGIN, log.der)


def _noncanonical(b64: str) -> str:
    """The same bytes with non-zero padding bits (decoders accept it; a log never writes it)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64.rstrip("=")[-1]
    changed = alphabet[alphabet.index(last) | 1]
    out = b64.rstrip("=")[:-1] + changed + "=" * (len(b64) - len(b64.rstrip("=")))
    assert out != b64 and base64.b64decode(out) == base64.b64decode(b64)
    return out


def _retimestamp(line: str, ts: int) -> str:
    name, b64 = line[2:].split(" ")
    raw = base64.b64decode(b64)
    raw = raw[:4] + struct.pack(">Q", ts) + raw[12:]
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


def test_malformed_checkpoints_are_protocol_errors(log: Log) -> None:
    good = log.checkpoint(5)
    body, sigs = good.split("\n\n")
    root_b64 = base64.b64encode(ROOT).decode()
    sig_b64 = sigs.split(" ")[2].strip()
    cases: dict[str, str | bytes] = {
        "no blank line": good.replace("\n\n", "\n"),
        "no signatures": body + "\n\n",
        "no final newline": good.rstrip("\n"),
        "leading zero size": good.replace("\n5\n", "\n05\n", 1),
        "negative size": good.replace("\n5\n", "\n-5\n", 1),
        "size with plus": good.replace("\n5\n", "\n+5\n", 1),
        "size with space": good.replace("\n5\n", "\n 5\n", 1),
        "hex size": good.replace("\n5\n", "\n0x5\n", 1),
        "size beyond uint64": good.replace("\n5\n", f"\n{2**64}\n", 1),
        "root not base64": good.replace(root_b64, "not*base64", 1),
        "root 31 bytes": good.replace(root_b64, base64.b64encode(ROOT[:31]).decode(), 1),
        "root 33 bytes": good.replace(root_b64, base64.b64encode(ROOT + b"x").decode(), 1),
        "root unpadded": good.replace(root_b64, root_b64.rstrip("="), 1),
        "root non-canonical": good.replace(root_b64, _noncanonical(root_b64), 1),
        "two body lines": f"{ORIGIN}\n5\n\n{sigs}",
        "blank line inside body": f"{body}\n\next\n\n{sigs}",
        "origin mismatch": good.replace(ORIGIN, "evil.example/log", 1),
        "empty origin": good[len(ORIGIN) :],
        "hyphen not em dash": good.replace("\u2014", "-"),
        "no space after dash": good.replace("\u2014 ", "\u2014"),
        "plus in key name": good.replace(f"\u2014 {ORIGIN}", "\u2014 a+b"),
        "signature not base64": good.replace(sig_b64, "%%%%"),
        "signature too short": good.replace(sig_b64, base64.b64encode(b"1234").decode()),
        "signature missing": good.replace(f" {sig_b64}", ""),
        "carriage returns": good.replace("\n", "\r\n"),
        "control character": good.replace(ORIGIN, ORIGIN + "\x07", 1),
        "control character in a witness name": good + witness_line("w.example/\x07"),
        "not UTF-8": good.encode().replace(b"\xe2\x80\x94", b"\xff\xfe\x94"),
        "too many signatures": log.checkpoint(
            5, extra=[witness_line(f"w.example/{i}") for i in range(MAX_NOTE_SIGNATURES)]
        ),
        "too large": body + "\n" + ("x" * 1_000_001) + "\n\n" + sigs,
    }
    for what, text in cases.items():
        with pytest.raises(LogProtocolError) as e:
            verify_checkpoint(text, ORIGIN, log.der)
        assert "\n" not in str(e.value), what
        assert not isinstance(e.value, BadSignature), what


def test_extension_lines_parse_but_do_not_verify(log: Log) -> None:
    body = f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\nsome extension\n"
    text = body + "\n" + log.line(5, ROOT)
    assert parse_checkpoint(text, ORIGIN).extensions == ("some extension",)
    # static-ct-api: a checkpoint with an RFC6962NoteSignature has no extension lines (the
    # signature would not cover them).
    with pytest.raises(LogProtocolError, match="extension"):
        verify_checkpoint(text, ORIGIN, log.der)
    with pytest.raises(LogProtocolError, match="control character"):
        parse_checkpoint(text.replace("some extension", "some\x01extension"), ORIGIN)


# -- tile coordinates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "path"),
    [
        (0, "000"),
        (5, "005"),
        (999, "999"),
        (1000, "x001/000"),
        (1234067, "x001/x234/067"),
        (1000000, "x001/x000/000"),
        (999999999, "x999/x999/999"),
    ],
)
def test_tile_index_encoding(n: int, path: str) -> None:
    assert encode_tile_index(n) == path
    assert tile_index_path(n) == path  # the loopback log's own encoder agrees


def test_tile_index_encoding_matches_the_loopback_encoder() -> None:
    rng = random.Random(7)
    for n in [*range(2100), *(rng.randrange(10**12) for _ in range(500))]:
        assert encode_tile_index(n) == tile_index_path(n)


def test_tile_paths() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(2, 3, 17) == "tile/2/003.p/17"
    assert tile_path("data", 3, 17) == "tile/data/003.p/17"
    assert tile_path("data", 1000) == "tile/data/x001/000"
    assert tile_path(1, 0, TILE_WIDTH) == "tile/1/000"
    for bad in (0, 257):
        with pytest.raises(ValueError):
            tile_path(0, 0, bad)
    with pytest.raises(ValueError):
        tile_path(-1, 0)
    with pytest.raises(ValueError):
        encode_tile_index(-1)


def test_tile_widths_follow_the_spec_examples() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level
    # 0 tile of width 112, one full level 1 tile, one partial level 1 tile of width 17, and
    # one partial level 2 tile of width 1."
    assert [tile_width(0, n, 70000) for n in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [tile_width(1, n, 70000) for n in (0, 1, 2)] == [256, 17, 0]
    assert [tile_width(2, n, 70000) for n in (0, 1)] == [1, 0]
    assert tile_width(3, 0, 70000) == 0
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1
    # tile of width 1."
    assert (tile_width(0, 0, 256), tile_width(0, 1, 256), tile_width(1, 0, 256)) == (256, 0, 1)
    assert tile_width(0, 0, 0) == 0


# -- data tiles -------------------------------------------------------------------------------


def _x509_entry(index: int, cert: bytes, chain: Sequence[bytes], ts: int = TS) -> bytes:
    leaf = encode_x509_leaf(ts, cert, encode_leaf_index_extension(index))
    return encode_tile_leaf(leaf, None, [hashlib.sha256(c).digest() for c in chain])


def test_leaf_index_extension_encoding() -> None:
    ext = encode_leaf_index_extension(0x0102030405)
    assert ext == bytes.fromhex("0000050102030405")  # "8 bytes" as the spec says
    assert leaf_index_of(ext) == 0x0102030405
    assert parse_ct_extensions(ext + bytes.fromhex("07000161")) == {0: ext[3:], 7: b"a"}
    assert leaf_index_of(bytes.fromhex("07000161") + ext) == 0x0102030405
    for bad in (
        b"",  # missing
        bytes.fromhex("07000161"),  # only an unknown extension
        bytes.fromhex("00000401020304"),  # 4-byte index
        bytes.fromhex("0000060102030405ff"),  # 6-byte index
        ext + ext,  # duplicate
        ext[:-1],  # truncated
    ):
        with pytest.raises(ValueError):
            leaf_index_of(bad)
    with pytest.raises(ValueError):
        encode_leaf_index_extension(2**40)


def test_data_tile_round_trip(ca: LocalCA, now: datetime) -> None:
    issued = ca.issue(["a.example.com"], now)
    cert = issued.cert.public_bytes(DER)
    chain = [c.public_bytes(DER) for c in issued.chain]
    issuer = ca.issuer_cert.public_bytes(DER)
    pre = make_precert(
        ca.issuer_cert, ca.issuer_key, ["pre.example.com"], now, now + timedelta(days=9)
    ).public_bytes(DER)
    spki = ca.issuer_cert.public_key().public_bytes(DER, SPKI)
    ikh = hashlib.sha256(spki).digest()
    tbs = strip_poison(x509.load_der_x509_certificate(pre).tbs_certificate_bytes)
    first = 3 * TILE_WIDTH
    leaves = [
        encode_x509_leaf(TS, cert, encode_leaf_index_extension(first)),
        encode_precert_leaf(TS + 1, ikh, tbs, encode_leaf_index_extension(first + 1)),
        encode_x509_leaf(TS + 2, cert, encode_leaf_index_extension(first + 2)),
    ]
    tile = (
        encode_tile_leaf(leaves[0], None, [hashlib.sha256(c).digest() for c in chain])
        + encode_tile_leaf(leaves[1], pre, [hashlib.sha256(issuer).digest()])
        + encode_tile_leaf(leaves[2], None, [])
    )
    parsed = parse_data_tile(tile, 3, 3)
    assert [p.index for p in parsed] == [first, first + 1, first + 2]
    assert [p.merkle_tree_leaf for p in parsed] == leaves
    assert [p.timestamp_ms for p in parsed] == [TS, TS + 1, TS + 2]
    assert [p.entry_type for p in parsed] == ["x509", "precert", "x509"]
    assert parsed[0].certificate == cert and parsed[0].pre_certificate is None
    assert parsed[0].chain_fingerprints == tuple(hashlib.sha256(c).digest() for c in chain)
    assert parsed[1].issuer_key_hash == ikh and parsed[1].certificate == tbs
    assert parsed[1].pre_certificate == pre
    assert parsed[2].chain_fingerprints == ()
    # What TiledLog hands the monitor parses as a get-entries entry would.
    e0 = parse_leaf(parsed[0].merkle_tree_leaf, encode_cert_chain(chain), first)
    assert e0.names == ("a.example.com",) and e0.chain == tuple(chain)
    e1 = parse_leaf(parsed[1].merkle_tree_leaf, encode_precert_chain_entry(pre, [issuer]), 1)
    assert e1.entry_type == "precert" and e1.names == ("pre.example.com",)
    assert e1.tbs_certificate == tbs


def test_data_tile_leaf_index_must_match(ca: LocalCA, now: datetime) -> None:
    cert = ca.issue(["a.example.com"], now).cert.public_bytes(DER)
    ok = _x509_entry(0, cert, []) + _x509_entry(1, cert, [])
    assert len(parse_data_tile(ok, 0, 2)) == 2
    swapped = _x509_entry(1, cert, []) + _x509_entry(0, cert, [])
    with pytest.raises(LogProtocolError, match="leaf_index extension says 1"):
        parse_data_tile(swapped, 0, 2)
    # the same entries are not tile 1's
    with pytest.raises(LogProtocolError, match="entry 256: leaf_index"):
        parse_data_tile(ok, 1, 2)
    no_ext = encode_tile_leaf(encode_x509_leaf(TS, cert), None, [])
    with pytest.raises(LogProtocolError, match="no leaf_index"):
        parse_data_tile(no_ext, 0, 1)


def test_malformed_data_tiles_are_protocol_errors() -> None:
    cert = b"\x30\x03\x02\x01\x01"
    good = b"".join(_x509_entry(i, cert, [bytes(32)]) for i in range(3))
    assert len(parse_data_tile(good, 0, 3)) == 3
    bad: dict[str, bytes] = {
        "too few entries": good,
        "trailing bytes": good + b"\x00",
        "empty": b"",
    }
    for what, data in bad.items():
        with pytest.raises(LogProtocolError):
            parse_data_tile(data, 0, 4 if what == "too few entries" else 3)
    with pytest.raises(LogProtocolError, match="after its 2 entries"):
        parse_data_tile(good, 0, 2)
    # every truncation, and every single-byte corruption of the structure, is a LogProtocolError
    # (or, where the change lands in opaque bytes, a tile that still parses)
    for cut in range(len(good)):
        with pytest.raises(LogProtocolError):
            parse_data_tile(good[:cut], 0, 3)
    rng = random.Random(1)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parse_data_tile(bytes(data), 0, 3)
        except LogProtocolError as e:
            assert "\n" not in str(e)
    for _ in range(500):
        noise = rng.randbytes(rng.randrange(400))
        with pytest.raises(LogProtocolError):
            parse_data_tile(noise, 0, 3)
    unknown_type = bytearray(_x509_entry(0, cert, []))
    unknown_type[9] = 2
    with pytest.raises(LogProtocolError, match="unknown entry_type 2"):
        parse_data_tile(bytes(unknown_type), 0, 1)
    odd_chain = _x509_entry(0, cert, [])[:-2] + b"\x00\x1f" + bytes(31)
    with pytest.raises(LogProtocolError, match="32-byte"):
        parse_data_tile(odd_chain, 0, 1)


def test_hash_tile_lengths() -> None:
    hashes_ = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    assert parse_hash_tile(b"".join(hashes_), 5) == hashes_
    for data in (b"".join(hashes_)[:-1], b"".join(hashes_) + b"\x00", b""):
        with pytest.raises(LogProtocolError):
            parse_hash_tile(data, 5)


# -- proofs from tiles ------------------------------------------------------------------------


def _tiles(leaves: Sequence[bytes], size: int) -> dict[tuple[int, int], list[bytes]]:
    """The hash tiles of a tree of ``size`` exactly as a log serves them (partial on the right
    edge), computed from the definition MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l])."""
    tiles: dict[tuple[int, int], list[bytes]] = {}
    level = 0
    while size >> (8 * level):
        span = 256**level
        for n in range((size >> (8 * level)) // 256 + 1):
            w = tile_width(level, n, size)
            if w:
                tiles[(level, n)] = [
                    root_from_leaves(leaves[(n * 256 + i) * span : (n * 256 + i + 1) * span])
                    for i in range(w)
                ]
        level += 1
    return tiles


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_range_nodes() -> None:
    assert range_nodes(0, 8) == [(3, 0)]
    assert range_nodes(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert range_nodes(256, 300) == [(5, 8), (3, 36), (2, 74)]
    assert range_nodes(512, 556) == [(5, 16), (3, 68), (2, 138)]
    for lo, hi in ((3, 3), (5, 3), (1, 3), (256, 600), (4, 9)):
        with pytest.raises(ValueError):
            range_nodes(lo, hi)


SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 257, 300, 511, 512, 513, 700]


def test_proofs_from_partial_tiles_match_the_reference() -> None:
    leaves = _leaves(max(SIZES))
    for n in SIZES:
        tiles = _tiles(leaves, n)
        root = root_from_leaves(leaves[:n])
        for m in SIZES:
            if m > n:
                continue
            ranges = consistency_ranges(m, n)
            assert tiles_for_ranges(ranges) <= tiles.keys()
            proof = hash_ranges(ranges, tiles)
            assert proof == consistency_proof(m, leaves[:n]), (m, n)
            assert verify_consistency(m, n, root_from_leaves(leaves[:m]), root, proof)
        for i in {0, 1, n // 3, n // 2, n - 2, n - 1} - {-1}:
            if not 0 <= i < n:
                continue
            path = hash_ranges(inclusion_ranges(i, n), tiles)
            assert path == inclusion_path(i, leaves[:n]), (i, n)
            assert verify_inclusion(leaves[i], i, n, path, root)


def test_proofs_every_pair_small() -> None:
    leaves = _leaves(40)
    for n in range(1, 41):
        tiles = _tiles(leaves, n)
        root = root_from_leaves(leaves[:n])
        for m in range(0, n + 1):
            proof = hash_ranges(consistency_ranges(m, n), tiles)
            assert verify_consistency(m, n, root_from_leaves(leaves[:m]), root, proof)
        for i in range(n):
            path = hash_ranges(inclusion_ranges(i, n), tiles)
            assert verify_inclusion(leaves[i], i, n, path, root)


def test_proofs_across_three_tile_levels() -> None:
    top = 65536 + 700
    leaves = _leaves(top)
    sizes = [65535, 65536, 65537, 65536 + 256, top]
    roots = {s: root_from_leaves(leaves[:s]) for s in [*sizes, 1000, 256, 70]}
    for n in sizes:
        tiles = _tiles(leaves, n)
        for m in [70, 256, 1000, *sizes]:
            if m > n:
                continue
            proof = hash_ranges(consistency_ranges(m, n), tiles)
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
        for i in sorted({0, 255, 256, 65534, 65535, n - 1} & set(range(n))):
            path = hash_ranges(inclusion_ranges(i, n), tiles)
            assert verify_inclusion(leaves[i], i, n, path, roots[n]), (i, n)
    # the audit path of a leaf past 65536 needs MTH(D[0:65536]): the partial level-2 tile of
    # width 1 (checked above, through the n - 1 leaf of each size)
    assert (2, 0) in tiles_for_ranges(inclusion_ranges(top - 1, top))
    assert len(_tiles(leaves, top)[(2, 0)]) == 1


def test_a_tampered_tile_hash_breaks_the_proof() -> None:
    leaves = _leaves(600)
    tiles = _tiles(leaves, 600)
    root = root_from_leaves(leaves)
    good = hash_ranges(consistency_ranges(300, 600), tiles)
    assert verify_consistency(300, 600, root_from_leaves(leaves[:300]), root, good)
    for key in tiles_for_ranges(consistency_ranges(300, 600)):
        bad = {k: list(v) for k, v in tiles.items()}
        bad[key] = [bytes(32)] * len(bad[key])
        proof = hash_ranges(consistency_ranges(300, 600), bad)
        assert not verify_consistency(300, 600, root_from_leaves(leaves[:300]), root, proof)


def test_range_functions_reject_bad_arguments() -> None:
    for args in ((5, 5), (-1, 3), (0, 0)):
        with pytest.raises(ValueError):
            inclusion_ranges(*args)
    with pytest.raises(ValueError):
        consistency_ranges(6, 5)
    assert consistency_ranges(0, 5) == [] and consistency_ranges(5, 5) == []
