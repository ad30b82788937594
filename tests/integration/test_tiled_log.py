"""``ctwatch.tiled.TiledLog`` over HTTP against the loopback static-ct-api log.

Every answer is checked the way the monitor checks it: the checkpoint's signature (inside
``head``), the entries (parsed with ``ctwatch.rfc6962.parse_leaf`` and hashed back to the signed
root), consistency and inclusion proofs computed from tiles (``verify_consistency`` /
``verify_inclusion`` against roots the log signed), across full and partial tiles and three tile
levels. Each fault knob of the loopback log is caught by the matching check, 429s are retried
after their ``Retry-After``, and a partial tile that disappears is replaced by the full one.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certpilot.localca import LocalCA
from ctwatch.fetch import Fetcher
from ctwatch.rfc6962 import (
    leaf_hash,
    parse_leaf,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from ctwatch.source import BadSignature, LogProtocolError, LogUnavailable, RawEntry
from ctwatch.tiled import TiledLog
from tests.support.ct_log import make_precert
from tests.support.tiled_log import LoopbackTiledLog

DER = serialization.Encoding.DER
FILLER = b"\x30\x03\x02\x01\x01"  # a tiny DER blob: proof tests need leaves, not certificates


class Sleeps:
    """A Fetcher ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def _fill(log: LoopbackTiledLog, ca: LocalCA, now: datetime, names: list[list[str]]) -> None:
    chain = [c.public_bytes(DER) for c in ca.issue(["x.test"], now).chain]
    for n in names:
        if n[0].startswith("pre."):
            pre = make_precert(ca.issuer_cert, ca.issuer_key, n, now, now + timedelta(days=30))
            log.add_precert(pre.public_bytes(DER), ca.issuer_cert.public_bytes(DER))
        else:
            log.add_x509(ca.issue(n, now).cert.public_bytes(DER), chain)


@pytest.fixture
async def tiled() -> AsyncIterator[LoopbackTiledLog]:
    async with LoopbackTiledLog() as log:
        yield log


@pytest.fixture
async def client(tiled: LoopbackTiledLog) -> AsyncIterator[TiledLog]:
    fetcher = Fetcher(sleep=Sleeps())
    src = TiledLog(tiled.url, tiled.key_der, fetcher=fetcher)
    try:
        yield src
    finally:
        await src.aclose()  # does not close a fetcher it was given
        await fetcher.aclose()


async def _all_entries(src: TiledLog, size: int) -> list[RawEntry]:
    out: list[RawEntry] = []
    while len(out) < size:
        got = await src.entries(len(out), size)
        assert got and got[0].index == len(out)
        assert [e.index for e in got] == list(range(len(out), len(out) + len(got)))
        out.extend(got)
    return out


async def test_head_entries_round_trip(
    tiled: LoopbackTiledLog, client: TiledLog, ca: LocalCA, now: datetime
) -> None:
    assert client.kind == "static" and client.url == tiled.url
    assert client.origin == tiled.origin == tiled.url.split("://")[1].rstrip("/")
    empty = await client.head()
    assert empty.size == 0 and empty.root_hash == root_from_leaves([])
    assert empty.raw == {"checkpoint": tiled.checkpoint_text()}
    assert await client.entries(0, 10) == []

    _fill(tiled, ca, now, [["a.example.com"], ["pre.example.com"], ["b.example.org"]])
    assert (await client.head()).size == 0  # not published yet
    sth = tiled.publish()
    head = await client.head()
    assert (head.size, head.root_hash, head.timestamp_ms) == (3, sth.root_hash, sth.timestamp_ms)

    raw = await _all_entries(client, head.size)
    assert [e.leaf_input for e in raw] == [tiled.leaf_input(i) for i in range(3)]
    assert [e.extra_data for e in raw] == [tiled.extra_data(i) for i in range(3)]
    assert root_from_leaves([leaf_hash(e.leaf_input) for e in raw]) == head.root_hash
    parsed = [parse_leaf(e.leaf_input, e.extra_data, e.index) for e in raw]
    assert [p.entry_type for p in parsed] == ["x509", "precert", "x509"]
    assert parsed[1].names == ("pre.example.com",)
    assert parsed[1].chain == (ca.issuer_cert.public_bytes(DER),)
    assert parsed[2].names == ("b.example.org",) and len(parsed[2].chain) >= 1

    # entries start exactly at start and stop at end
    (one,) = await client.entries(1, 2)
    assert one.index == 1 and one.leaf_input == tiled.leaf_input(1)
    assert [e.index for e in await client.entries(2, 50)] == [2]
    assert tiled.requests.count("tile/data/000.p/3") == 3  # one data tile per call
    # issuers were fetched once each, then served from the cache
    issuer_fetches = Counter(p for p in tiled.requests if p.startswith("issuer/"))
    assert issuer_fetches and set(issuer_fetches.values()) == {1}

    # data tiles are gzip-compressed for clients that accept it (clients MUST support it)
    async with (
        aiohttp.ClientSession() as session,
        session.get(tiled.url + "tile/data/000.p/3", headers={"Accept-Encoding": "gzip"}) as r,
    ):
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"


async def test_many_sizes_across_tiles(tiled: LoopbackTiledLog, client: TiledLog) -> None:
    sizes = [1, 7, 255, 256, 257, 300, 512, 513, 700]
    roots: dict[int, bytes] = {0: root_from_leaves([])}
    for size in sizes:
        for _ in range(size - tiled.sth.tree_size):
            tiled.add_x509(FILLER)
        tiled.publish()
        head = await client.head()
        assert head.size == size
        roots[size] = head.root_hash
        for m in roots:
            proof = await client.consistency_proof(m, size)
            assert verify_consistency(m, size, roots[m], head.root_hash, proof), (m, size)
        for m in {1, 2, 3, 5, 100, 128, 200, 254, 255, 256, 257, 299, 384, 511}:
            if m < size:
                proof = await client.consistency_proof(m, size)
                assert verify_consistency(m, size, tiled.root_at(m), head.root_hash, proof), (
                    m,
                    size,
                )
        for i in sorted({0, 1, size // 2, 255, 256, 511, 512, size - 1} & set(range(size))):
            path = await client.inclusion_proof(i, tiled.leaf_hash(i), size)
            assert verify_inclusion(tiled.leaf_hash(i), i, size, path, head.root_hash)
            # an older, smaller tree too, from the tiles of the latest one
            if i < 256 and size > 256:
                path = await client.inclusion_proof(i, tiled.leaf_hash(i), 256)
                assert verify_inclusion(tiled.leaf_hash(i), i, 256, path, roots[256])

    # every entry, from full and partial data tiles, hashes back to the signed root
    raw = await _all_entries(client, 700)
    assert root_from_leaves([leaf_hash(e.leaf_input) for e in raw]) == roots[700]
    # one call returns at most the rest of its data tile
    assert [e.index for e in await client.entries(250, 700)] == list(range(250, 256))
    assert [e.index for e in await client.entries(690, 10_000)] == list(range(690, 700))

    # each tile is fetched at most once per call
    tiled.requests.clear()
    await client.consistency_proof(300, 700)
    assert tiled.requests and max(Counter(tiled.requests).values()) == 1
    assert all(p.startswith("tile/") and not p.startswith("tile/data") for p in tiled.requests)
    tiled.requests.clear()
    await client.inclusion_proof(5, tiled.leaf_hash(5), 700)
    assert max(Counter(tiled.requests).values()) == 1
    # only tiles of the verified size were asked for (none a checkpoint did not require)
    assert all(
        p.split("tile/", 1)[1] in {t.split("tile/", 1)[1] for t in tiled.tile_paths()}
        for p in tiled.requests
    )


async def test_three_tile_levels(tiled: LoopbackTiledLog, client: TiledLog) -> None:
    for _ in range(65536 - 2):
        tiled.add_x509(FILLER)
    small = tiled.publish()  # 65534: partial tiles at levels 0 and 1
    for _ in range(2 + 300):
        tiled.add_x509(FILLER)
    big = tiled.publish()  # 65836: partial level 0 (44), level 1 (1), level 2 (1)
    assert "tile/2/000.p/1" in tiled.tile_paths()
    head = await client.head()
    assert head.root_hash == big.root_hash
    for m, root in [
        (small.tree_size, small.root_hash),
        (65536, tiled.root_at(65536)),
        (1000, tiled.root_at(1000)),
        (65835, tiled.root_at(65835)),
    ]:
        proof = await client.consistency_proof(m, head.size)
        assert verify_consistency(m, head.size, root, head.root_hash, proof), m
    for i in (0, 65535, 65536, 65835):
        path = await client.inclusion_proof(i, tiled.leaf_hash(i), head.size)
        assert verify_inclusion(tiled.leaf_hash(i), i, head.size, path, head.root_hash), i
    assert "tile/2/000.p/1" in tiled.requests
    last = await client.entries(65830, 70000)
    assert [e.index for e in last] == list(range(65830, 65836))
    assert [e.leaf_input for e in last] == [tiled.leaf_input(i) for i in range(65830, 65836)]


async def test_partial_tiles_dropped_fall_back_to_full(
    tiled: LoopbackTiledLog, client: TiledLog
) -> None:
    for _ in range(300):
        tiled.add_x509(FILLER)
    first = tiled.publish()
    assert (await client.head()).size == 300
    # the log grows past the tile boundary and deletes the partial tiles it may now delete,
    # while the client still works from the size-300 checkpoint it verified
    for _ in range(300):
        tiled.add_x509(FILLER)
    tiled.publish()
    tiled.drop_partial_tiles()
    tiled.requests.clear()
    got = await _all_entries(client, 300)
    assert [e.leaf_input for e in got] == [tiled.leaf_input(i) for i in range(300)]
    assert root_from_leaves([leaf_hash(e.leaf_input) for e in got]) == first.root_hash
    assert "tile/data/001.p/44" in tiled.requests and "tile/data/001" in tiled.requests
    proof = await client.consistency_proof(100, 300)
    assert verify_consistency(100, 300, tiled.root_at(100), first.root_hash, proof)
    assert "tile/0/001.p/44" in tiled.requests and "tile/0/001" in tiled.requests
    path = await client.inclusion_proof(299, tiled.leaf_hash(299), 300)
    assert verify_inclusion(tiled.leaf_hash(299), 299, 300, path, first.root_hash)


async def test_checkpoint_faults(tiled: LoopbackTiledLog, ca: LocalCA, now: datetime) -> None:
    _fill(tiled, ca, now, [["a.example.com"], ["b.example.com"]])
    tiled.publish()
    fetcher = Fetcher(sleep=Sleeps())
    src = TiledLog(tiled.url, tiled.key_der, fetcher=fetcher)
    try:
        tiled.add_witness()
        tiled.add_witness("witness.example/w2")
        assert (await src.head()).size == 2  # cosignatures are ignored
        assert tiled.checkpoint_text().count("\u2014 ") == 3

        tiled.tamper_checkpoint_signature()
        with pytest.raises(BadSignature):
            await src.head()
        tiled.heal()
        assert (await src.head()).size == 2

        other_key = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        with pytest.raises(BadSignature, match="no signature"):
            await TiledLog(tiled.url, other_key, fetcher=fetcher).head()
        with pytest.raises(LogProtocolError, match="origin"):
            await TiledLog(tiled.url, tiled.key_der, origin="x.example/y", fetcher=fetcher).head()
    finally:
        await fetcher.aclose()


async def test_explicit_origin(ca: LocalCA, now: datetime) -> None:
    async with LoopbackTiledLog(origin="ct.example/rome2026h1") as log:
        _fill(log, ca, now, [["a.example.com"]])
        log.publish()
        src = TiledLog(log.url, log.key_der, origin="ct.example/rome2026h1")
        try:
            head = await src.head()
            assert head.size == 1
            assert head.raw["checkpoint"].startswith("ct.example/rome2026h1\n1\n")
        finally:
            await src.aclose()
        src = TiledLog(log.url, log.key_der)  # the default origin is not this log's
        try:
            with pytest.raises(LogProtocolError, match="origin"):
                await src.head()
        finally:
            await src.aclose()


async def test_entry_and_tile_faults(
    tiled: LoopbackTiledLog, client: TiledLog, ca: LocalCA, now: datetime
) -> None:
    _fill(tiled, ca, now, [[f"n{i}.example.com"] for i in range(5)] + [["pre.example.net"]])
    for _ in range(300):
        tiled.add_x509(FILLER)
    first = tiled.publish()  # 306
    for _ in range(250):
        tiled.add_x509(FILLER)
    second = tiled.publish()  # 556
    head = await client.head()
    assert head.size == second.tree_size

    tiled.tamper_entry(3)
    raw = await client.entries(0, 6)
    parse_leaf(raw[3].leaf_input, raw[3].extra_data, 3)  # still parses: only the root tells
    assert leaf_hash(raw[3].leaf_input) != tiled.leaf_hash(3)
    full = await _all_entries(client, head.size)
    assert root_from_leaves([leaf_hash(e.leaf_input) for e in full]) != head.root_hash
    tiled.heal()
    full = await _all_entries(client, head.size)
    assert root_from_leaves([leaf_hash(e.leaf_input) for e in full]) == head.root_hash

    tiled.misindex_entry(2)
    with pytest.raises(LogProtocolError, match="leaf_index extension says 3") as e:
        await client.entries(0, 6)
    assert e.value.reason.startswith("tile/data/000: data tile entry 2: ")
    assert e.value.url == tiled.url
    tiled.heal()

    # A tampered hash tile makes the proofs that read it fail verification. PROOF(5, 556) and
    # PATH(5, 556) read level-0 tile 0; PROOF(306, 556) reads level-0 tile 1 (inside
    # D[256:512]) and level-1 tile 0 (MTH(D[0:256])), as PATH(300, 556) does.
    cases = {(0, 0): (5, 5), (0, 1): (306, 300), (1, 0): (306, 300)}
    for (level, index), (m, i) in cases.items():
        tiled.tamper_hash_tile(level, index)
        root_m = tiled.root_at(m)
        proof = await client.consistency_proof(m, head.size)
        assert not verify_consistency(m, head.size, root_m, head.root_hash, proof), (level, m)
        path = await client.inclusion_proof(i, tiled.leaf_hash(i), head.size)
        assert not verify_inclusion(tiled.leaf_hash(i), i, head.size, path, head.root_hash)
        tiled.heal()
        proof = await client.consistency_proof(m, head.size)
        assert verify_consistency(m, head.size, root_m, head.root_hash, proof)
        path = await client.inclusion_proof(i, tiled.leaf_hash(i), head.size)
        assert verify_inclusion(tiled.leaf_hash(i), i, head.size, path, head.root_hash)
    # control: a proof that reads no tampered tile still verifies
    tiled.tamper_hash_tile(0, 1)
    path = await client.inclusion_proof(5, tiled.leaf_hash(5), head.size)
    assert verify_inclusion(tiled.leaf_hash(5), 5, head.size, path, head.root_hash)
    tiled.heal()
    assert first.root_hash == tiled.root_at(first.tree_size)

    # an issuer whose bytes do not hash to its fingerprint
    src = TiledLog(tiled.url, tiled.key_der)  # a fresh issuer cache
    try:
        tiled.tamper_issuer()
        with pytest.raises(LogProtocolError, match="does not hash"):
            await src.entries(0, 3)
        tiled.heal()
        assert len(await src.entries(0, 3)) == 3
    finally:
        await src.aclose()


async def test_rate_limits_are_retried(tiled: LoopbackTiledLog, ca: LocalCA, now: datetime) -> None:
    _fill(tiled, ca, now, [["a.example.com"]])
    sth = tiled.publish()
    sleeps = Sleeps()
    fetcher = Fetcher(sleep=sleeps, attempts=4)
    src = TiledLog(tiled.url, tiled.key_der, fetcher=fetcher)
    try:
        tiled.rate_limit(2, retry_after=3)
        head = await src.head()
        assert head.root_hash == sth.root_hash
        assert len(sleeps.delays) == 2 and min(sleeps.delays) >= 3
        tiled.rate_limit(1, retry_after=2)
        (entry,) = await src.entries(0, 1)
        assert entry.leaf_input == tiled.leaf_input(0)

        tiled.rate_limit(10, retry_after=5)
        with pytest.raises(LogUnavailable) as e:
            await src.head()
        assert e.value.retry_after == 5
    finally:
        await src.aclose()
        await fetcher.aclose()


def test_log_list_entry() -> None:
    log = LoopbackTiledLog(description="unit tiled log")
    (op,) = log.log_list_json()["operators"]
    assert op["logs"] == []
    (entry,) = op["tiled_logs"]
    assert set(entry) == {
        "description",
        "log_id",
        "key",
        "monitoring_url",
        "submission_url",
        "mmd",
        "state",
    }
    assert base64.b64decode(entry["key"]) == log.key_der
    assert base64.b64decode(entry["log_id"]) == log.log_id
    assert entry["monitoring_url"] == log.url and entry["description"] == "unit tiled log"
    assert entry["state"] == {"usable": {"timestamp": "2026-01-01T00:00:00Z"}}


async def test_issuer_cache_is_bounded(tiled: LoopbackTiledLog, ca: LocalCA, now: datetime) -> None:
    other = LocalCA("Other", now).issuer_cert.public_bytes(DER)
    issuer = ca.issuer_cert.public_bytes(DER)
    cert = ca.issue(["a.example.com"], now).cert.public_bytes(DER)
    tiled.add_x509(cert, [issuer, other])
    tiled.add_x509(cert, [other])
    tiled.publish()
    src = TiledLog(tiled.url, tiled.key_der, issuer_cache_size=1)
    try:
        for _ in range(2):
            got = await src.entries(0, 2)
            assert [e.extra_data for e in got] == [tiled.extra_data(0), tiled.extra_data(1)]
            assert parse_leaf(got[0].leaf_input, got[0].extra_data).chain == (issuer, other)
        assert len(src._issuers) == 1
        fetched = Counter(p for p in tiled.requests if p.startswith("issuer/"))
        assert len(fetched) == 2 and max(fetched.values()) == 2  # evicted, fetched again
    finally:
        await src.aclose()
