"""Certificate Transparency parsers on arbitrary, mutated and round-tripped input.

Documented errors: ``ctwatch.rfc6962.parse_leaf`` -> :class:`MalformedEntry` ("CT entry N"),
``parse_sth_json`` -> :class:`MalformedSTH`; ``ctwatch.tiled.parse_checkpoint`` /
``parse_data_tile`` / ``parse_hash_tile`` -> :class:`LogProtocolError` and
``verify_checkpoint`` -> that or :class:`BadSignature` (all naming the URL);
``ctwatch.certstream.parse_message`` -> :class:`MalformedMessage`;
``ctwatch.match.Watchlist.from_lines`` -> :class:`WatchlistError` (the line number);
``ctwatch.loglist.parse_log_list`` -> :class:`ConfigError` (the source).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography import x509
from hypothesis import assume, given
from hypothesis import strategies as st

from certpilot.domain.errors import ConfigError
from ctwatch.certstream import DomainsOnly, FeedEntry, Heartbeat, MalformedMessage, parse_message
from ctwatch.loglist import parse_log_list
from ctwatch.match import Watchlist, WatchlistError, _build, _lines_to_patterns
from ctwatch.rfc6962 import (
    HASH_SIZE,
    STH,
    CTEntry,
    MalformedEntry,
    MalformedSTH,
    encode_cert_chain,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    parse_leaf,
    parse_sth_json,
)
from ctwatch.source import BadSignature, LogProtocolError
from ctwatch.tiled import (
    MAX_LEAF_INDEX,
    TILE_WIDTH,
    Checkpoint,
    encode_leaf_index_extension,
    encode_tile_leaf,
    format_checkpoint,
    parse_checkpoint,
    parse_data_tile,
    parse_hash_tile,
    verify_checkpoint,
)
from tests.property.bad_input import (
    check,
    json_values,
    mutated,
    mutated_text,
    mutated_tree,
    samples,
    text_leaves,
)
from tests.support.certstream_server import certificate_update

S = samples()
URL = "https://mon.example.test/2026h1/"

# ---------------------------------------------------------------------------- RFC 6962 leaves


def _leaf(leaf_input: bytes, extra_data: bytes) -> CTEntry | BaseException:
    return check(
        "ctwatch.rfc6962.parse_leaf",
        lambda: parse_leaf(leaf_input, extra_data, 7),
        MalformedEntry,
        "CT entry 7",
    )


def _entry_is_whole(out: CTEntry | BaseException) -> bool:
    """An entry, when one comes back, is a whole one: its hash is of the certificate it
    carries, and it is one of the two entry types."""
    if isinstance(out, MalformedEntry):
        return True
    assert isinstance(out, CTEntry)
    return out.entry_type in ("x509", "precert") and (
        out.sha256 == hashlib.sha256(out.cert_der).hexdigest()
    )


@given(st.binary(max_size=1024), st.binary(max_size=1024))
def test_leaf_arbitrary_bytes(leaf_input: bytes, extra_data: bytes) -> None:
    assert _entry_is_whole(_leaf(leaf_input, extra_data))


@given(st.data())
def test_leaf_mutated(data: st.DataObject) -> None:
    leaf, extra = data.draw(
        st.sampled_from([(S.x509_leaf, S.x509_extra), (S.precert_leaf, S.precert_extra)])
    )
    which = data.draw(st.sampled_from(["leaf", "extra", "both"]))
    if which != "extra":
        leaf = data.draw(mutated(leaf))
    if which != "leaf":
        extra = data.draw(mutated(extra))
    assert _entry_is_whole(_leaf(leaf, extra))


@given(
    st.integers(0, 2**64 - 1),
    st.sampled_from(["leaf", "rsa", "issuer"]),
    st.binary(max_size=300),
    st.lists(st.sampled_from(["root", "issuer"]), max_size=3),
)
def test_leaf_x509_round_trip(ts: int, which: str, ext: bytes, chain_names: list[str]) -> None:
    der = {"leaf": S.leaf_der, "rsa": S.rsa_leaf_der, "issuer": S.ca_issuer_der}[which]
    chain = [{"root": S.ca_root_der, "issuer": S.ca_issuer_der}[n] for n in chain_names]
    entry = parse_leaf(encode_x509_leaf(ts, der, ext), encode_cert_chain(chain), 3)
    assert (entry.entry_type, entry.timestamp_ms, entry.cert_der) == ("x509", ts, der)
    assert entry.chain == tuple(chain)
    assert entry.sha256 == hashlib.sha256(der).hexdigest()


@given(st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_leaf_precert_round_trip(ts: int, key_hash: bytes, ext: bytes) -> None:
    length = int.from_bytes(S.precert_extra[:3], "big")
    precert = S.precert_extra[3 : 3 + length]
    tbs = b"\x30\x03\x02\x01\x01"  # the parser keeps the TBS as bytes
    entry = parse_leaf(
        encode_precert_leaf(ts, key_hash, tbs, ext),
        encode_precert_chain_entry(precert, [S.ca_issuer_der]),
    )
    assert (entry.entry_type, entry.timestamp_ms, entry.cert_der) == ("precert", ts, precert)
    assert (entry.issuer_key_hash, entry.tbs_certificate) == (key_hash, tbs)
    assert entry.names == ("pre.example.test",)


# ---------------------------------------------------------------------------- get-sth JSON


def _sth(obj: object) -> STH | BaseException:
    return check(
        "ctwatch.rfc6962.parse_sth_json",
        lambda: parse_sth_json(obj),
        MalformedSTH,
        "signed tree head",
    )


def _sth_is_sound(out: STH | BaseException) -> bool:
    """A tree head, when one comes back, has a uint64 size and timestamp and a SHA-256 root."""
    if isinstance(out, MalformedSTH):
        return True
    assert isinstance(out, STH)
    return (
        0 <= out.tree_size < 2**64
        and 0 <= out.timestamp_ms < 2**64
        and len(out.root_hash) == HASH_SIZE
    )


@given(json_values)
def test_sth_arbitrary_json(obj: object) -> None:
    assert _sth_is_sound(_sth(obj))


@given(mutated_tree(S.sth_json))
def test_sth_mutated(obj: object) -> None:
    assert _sth_is_sound(_sth(obj))


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=1, max_size=80),
)
def test_sth_round_trip(size: int, ts: int, root: bytes, sig: bytes) -> None:
    obj = {
        "tree_size": size,
        "timestamp": ts,
        "sha256_root_hash": base64.b64encode(root).decode(),
        "tree_head_signature": base64.b64encode(sig).decode(),
    }
    sth = parse_sth_json(obj)
    assert (sth.tree_size, sth.timestamp_ms, sth.root_hash, sth.signature) == (size, ts, root, sig)


# ---------------------------------------------------------------------------- checkpoints


def _checkpoint(text: str | bytes) -> bool:
    """Parse and verify ``text``; whether the outcomes agree with each other: a checkpoint
    that verifies also parses, with the same size and root, from the log's own origin (the
    only one that can carry the log's signature)."""
    parsed = check(
        "ctwatch.tiled.parse_checkpoint",
        lambda: parse_checkpoint(text, S.origin, url=URL),
        LogProtocolError,
        URL,
    )
    verified = check(
        "ctwatch.tiled.verify_checkpoint",
        lambda: verify_checkpoint(text, S.origin, S.log_key_der, url=URL),
        (LogProtocolError, BadSignature),
        URL,
    )
    if isinstance(verified, BaseException):
        return isinstance(parsed, Checkpoint | LogProtocolError)
    return (
        isinstance(parsed, Checkpoint)
        and parsed.origin == S.origin
        and (verified.size, verified.root_hash) == (parsed.size, parsed.root_hash)
    )


@given(st.text(max_size=400) | st.binary(max_size=400))
def test_checkpoint_arbitrary(text: str | bytes) -> None:
    assert _checkpoint(text)


@given(mutated(S.checkpoint.encode()) | mutated_text(S.checkpoint))
def test_checkpoint_mutated(text: str | bytes) -> None:
    assert _checkpoint(text)


@given(st.lists(st.sampled_from(S.checkpoint.splitlines(keepends=True)), max_size=8))
def test_checkpoint_lines_shuffled(lines: list[str]) -> None:
    assert _checkpoint("".join(lines))


def test_checkpoint_sample_verifies() -> None:
    head = verify_checkpoint(S.checkpoint, S.origin, S.log_key_der)
    assert head.size == 3


_KEY_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters="+\u2014"),
    min_size=1,
    max_size=30,
).filter(lambda s: not any(c.isspace() for c in s))


@given(
    _KEY_NAME,
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(
        st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1), max_size=3
    ),
    st.binary(min_size=5, max_size=80),
)
def test_checkpoint_round_trip(
    origin: str, size: int, root: bytes, extensions: list[str], sig: bytes
) -> None:
    note = format_checkpoint(origin, size, root, extensions)
    text = note + "\n" + f"\u2014 {origin} {base64.b64encode(sig).decode()}\n"
    cp = parse_checkpoint(text, origin)
    assert (cp.origin, cp.size, cp.root_hash, cp.extensions) == (
        origin,
        size,
        root,
        tuple(extensions),
    )
    assert cp.body == note
    assert [(s.name, s.key_id + s.signature) for s in cp.signatures] == [(origin, sig)]


# ---------------------------------------------------------------------------- tiles


def _data_tile(data: bytes, tile: int, width: int) -> None:
    check(
        "ctwatch.tiled.parse_data_tile",
        lambda: parse_data_tile(data, tile, width, url=URL),
        LogProtocolError,
        URL,
    )


@given(st.binary(max_size=2048), st.integers(0, 2**30), st.integers(1, TILE_WIDTH))
def test_data_tile_arbitrary(data: bytes, tile: int, width: int) -> None:
    _data_tile(data, tile, width)


@given(mutated(S.data_tile, max_ops=6), st.integers(1, 4))
def test_data_tile_mutated(data: bytes, width: int) -> None:
    _data_tile(data, 0, width)


def test_data_tile_sample_parses() -> None:
    leaves = parse_data_tile(S.data_tile, 0, S.tile_width)
    assert [leaf.entry_type for leaf in leaves] == ["x509", "precert", "x509"]


@given(
    st.integers(0, MAX_LEAF_INDEX // TILE_WIDTH),
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.booleans(),
            st.lists(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_data_tile_round_trip(tile: int, entries: list[tuple[int, bool, list[bytes]]]) -> None:
    first = tile * TILE_WIDTH
    assume(first + len(entries) - 1 <= MAX_LEAF_INDEX)
    encoded = b""
    for i, (ts, precert, fps) in enumerate(entries):
        ext = encode_leaf_index_extension(first + i)
        if precert:
            leaf = encode_precert_leaf(ts, bytes(32), b"\x30\x00", ext)
            encoded += encode_tile_leaf(leaf, b"\x30\x01\x00", fps)
        else:
            encoded += encode_tile_leaf(encode_x509_leaf(ts, S.leaf_der, ext), None, fps)
    leaves = parse_data_tile(encoded, tile, len(entries))
    for i, (got, (ts, precert, fps)) in enumerate(zip(leaves, entries, strict=True)):
        assert got.index == first + i
        assert got.timestamp_ms == ts
        assert got.entry_type == ("precert" if precert else "x509")
        assert list(got.chain_fingerprints) == fps


@given(st.binary(max_size=TILE_WIDTH * HASH_SIZE + 40), st.integers(1, TILE_WIDTH))
def test_hash_tile_arbitrary(data: bytes, width: int) -> None:
    check(
        "ctwatch.tiled.parse_hash_tile",
        lambda: parse_hash_tile(data, width, url=URL),
        LogProtocolError,
        URL,
    )


@given(st.lists(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), min_size=1, max_size=TILE_WIDTH))
def test_hash_tile_round_trip(hashes: list[bytes]) -> None:
    assert parse_hash_tile(b"".join(hashes), len(hashes)) == hashes


# ---------------------------------------------------------------------------- certstream

_DOCUMENTED = (FeedEntry, Heartbeat, DomainsOnly, type(None))


def _certstream(raw: str | bytes) -> None:
    out = check(
        "ctwatch.certstream.parse_message",
        lambda: parse_message(raw),
        MalformedMessage,
        "certstream message",
    )
    assert isinstance(out, (*_DOCUMENTED, MalformedMessage))


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_certstream_arbitrary_text(raw: str | bytes) -> None:
    _certstream(raw)


@given(json_values)
def test_certstream_arbitrary_json(value: Any) -> None:
    _certstream(json.dumps(value))


@given(
    st.sampled_from(["full", "lite"]).flatmap(
        lambda kind: mutated_tree(
            json.loads(S.certstream_full if kind == "full" else S.certstream_lite)
        )
    )
)
def test_certstream_mutated_message(message: Any) -> None:
    _certstream(json.dumps(message))


@given(mutated_tree(json.loads(S.certstream_full), text_leaves))
def test_certstream_awkward_strings(message: Any) -> None:
    _certstream(json.dumps(message))


@given(mutated(S.certstream_full.encode(), max_ops=3))
def test_certstream_mutated_bytes(raw: bytes) -> None:
    _certstream(raw)


@given(
    st.integers(0, 2**64 - 1),
    st.floats(0, 4e9),
    st.text(max_size=40),
    st.sampled_from(["leaf", "rsa", "issuer"]),
)
def test_certstream_round_trip(index: int, seen: float, log_url: str, which: str) -> None:
    der = {"leaf": S.leaf_der, "rsa": S.rsa_leaf_der, "issuer": S.ca_issuer_der}[which]
    cert = x509.load_der_x509_certificate(der)
    message = certificate_update(cert, index=index, seen=seen, log_url=log_url)
    entry = parse_message(json.dumps(message))
    assert isinstance(entry, FeedEntry)
    assert entry.index == index and entry.log_url == log_url and entry.der == der
    assert entry.sha256 == hashlib.sha256(der).hexdigest()
    assert entry.serial == format(cert.serial_number, "x")
    assert entry.seen is not None and abs(entry.seen.timestamp() - seen) < 1e-3


# ---------------------------------------------------------------------------- watchlists


def _watchlist(lines: list[str]) -> Watchlist | None:
    out = check(
        "ctwatch.match.Watchlist.from_lines",
        lambda: Watchlist.from_lines(lines),
        WatchlistError,
        "watchlist line",
    )
    return out if isinstance(out, Watchlist) else None


_PATTERN_CHARS = st.sampled_from([*"abcxyz019-_.*# \t\r\n?é", "xn--", "ß", "\u0130"])
_LINES = st.lists(st.lists(_PATTERN_CHARS, max_size=14).map("".join), max_size=8)


@given(_LINES | st.lists(st.text(max_size=30), max_size=6))
def test_watchlist_arbitrary_lines(lines: list[str]) -> None:
    wl = _watchlist(lines)
    # The bulk (whole-text) builder and the per-line builder must agree.
    try:
        slow: Watchlist | None = Watchlist(_build(_lines_to_patterns(lines)))
    except WatchlistError:
        slow = None
    assert (wl is None) == (slow is None), lines
    if wl is not None and slow is not None:
        assert sorted(wl.patterns()) == sorted(slow.patterns()), lines


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


@given(
    st.lists(
        st.tuples(st.sampled_from(["", ".", "*."]), st.lists(_LABEL, min_size=1, max_size=4)),
        min_size=1,
        max_size=10,
    )
)
def test_watchlist_round_trip(items: list[tuple[str, list[str]]]) -> None:
    patterns = [prefix + ".".join(labels) for prefix, labels in items]
    wl = Watchlist.from_lines([p.upper() + ".  # comment\n" for p in patterns])
    assert set(wl.patterns()) == set(patterns)
    for prefix, labels in items:
        name = ".".join(labels)
        if prefix == "":
            assert wl.match(name) == name
        elif prefix == ".":
            assert wl.match("x." + name) is not None
        else:
            assert wl.match("x." + name) is not None


# ---------------------------------------------------------------------------- log lists


def _log_list(data: object) -> None:
    check(
        "ctwatch.loglist.parse_log_list",
        lambda: parse_log_list(data, "log_list.json"),
        ConfigError,
        "log_list.json",
    )


@given(json_values)
def test_log_list_arbitrary_json(data: object) -> None:
    _log_list(data)


@given(mutated_tree(S.log_list))
def test_log_list_mutated(data: object) -> None:
    _log_list(data)
