"""The loopback RFC 6962 log over HTTP, checked with ``ctwatch.rfc6962`` (and by certspotter).

Everything a monitor fetches is verified: the STH signature, consistency between two published
STHs, the entries (parsed, and hashed back to the signed root), audit paths from
``get-proof-by-hash``; and each fault knob is caught by the matching check. Last, Debian's
``certspotter`` (a real, independent RFC 6962 monitor) reads the log and reports the watched
entries, which shows the loopback log is protocol-correct and not merely self-consistent.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.localca import LocalCA
from ctwatch.rfc6962 import (
    STH,
    leaf_hash,
    parse_leaf,
    parse_sth_json,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
    verify_sth,
)
from tests.support.ct_log import LoopbackCTLog, make_precert
from tests.support.services import require_binary

DER = serialization.Encoding.DER


def _fill(log: LoopbackCTLog, ca: LocalCA, now: datetime, names: list[list[str]]) -> None:
    chain = [c.public_bytes(DER) for c in ca.issue(["x.test"], now).chain]
    for n in names:
        if n[0].startswith("pre."):
            pre = make_precert(ca.issuer_cert, ca.issuer_key, n, now, now + timedelta(days=30))
            log.add_precert(pre.public_bytes(DER), ca.issuer_cert.public_bytes(DER))
        else:
            log.add_x509(ca.issue(n, now).cert.public_bytes(DER), chain)


@pytest.fixture
async def ct_log() -> AsyncIterator[LoopbackCTLog]:
    async with LoopbackCTLog(batch_limit=4) as log:
        yield log


async def _get(
    session: aiohttp.ClientSession, log: LoopbackCTLog, path: str, **query: Any
) -> tuple[int, Any]:
    qs = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
    async with session.get(f"{log.url}ct/v1/{path}" + (f"?{qs}" if qs else "")) as r:
        body = await r.json(content_type=None) if r.status != 429 else await r.text()
        return r.status, body


async def _sth(session: aiohttp.ClientSession, log: LoopbackCTLog) -> STH:
    status, body = await _get(session, log, "get-sth")
    assert status == 200
    return parse_sth_json(body)


async def _entries(
    session: aiohttp.ClientSession, log: LoopbackCTLog, size: int
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    while len(out) < size:
        status, body = await _get(session, log, "get-entries", start=len(out), end=size - 1)
        assert status == 200
        assert 1 <= len(body["entries"]) <= log.batch_limit
        for e in body["entries"]:
            out.append((base64.b64decode(e["leaf_input"]), base64.b64decode(e["extra_data"])))
    return out


async def test_sth_consistency_entries_and_proofs(
    ct_log: LoopbackCTLog, ca: LocalCA, now: datetime
) -> None:
    async with aiohttp.ClientSession() as session:
        empty = await _sth(session, ct_log)
        assert empty.tree_size == 0 and verify_sth(empty, ct_log.public_key_der)

        _fill(ct_log, ca, now, [["a.example.com"], ["pre.example.com"], ["b.example.org"]])
        # not published yet: get-sth still shows the empty tree
        assert (await _sth(session, ct_log)).tree_size == 0
        ct_log.publish()
        first = await _sth(session, ct_log)
        assert first.tree_size == 3 and verify_sth(first, ct_log.public_key_der)

        _fill(ct_log, ca, now, [[f"h{i}.example.com"] for i in range(7)])
        ct_log.publish()
        second = await _sth(session, ct_log)
        assert second.tree_size == 10 and verify_sth(second, ct_log.public_key_der)
        assert second.timestamp_ms > first.timestamp_ms

        for m, n, r1, r2 in [
            (first.tree_size, second.tree_size, first.root_hash, second.root_hash),
            (0, second.tree_size, empty.root_hash, second.root_hash),
            (second.tree_size, second.tree_size, second.root_hash, second.root_hash),
        ]:
            status, body = await _get(session, ct_log, "get-sth-consistency", first=m, second=n)
            assert status == 200
            proof = [base64.b64decode(p) for p in body["consistency"]]
            assert verify_consistency(m, n, r1, r2, proof)

        # entries, in batches of at most batch_limit, hash back to the signed root
        raw = await _entries(session, ct_log, second.tree_size)
        assert root_from_leaves([leaf_hash(leaf) for leaf, _ in raw]) == second.root_hash
        parsed = [parse_leaf(leaf, extra, i) for i, (leaf, extra) in enumerate(raw)]
        assert [e.entry_type for e in parsed[:3]] == ["x509", "precert", "x509"]
        assert parsed[1].names == ("pre.example.com",)
        assert parsed[9].names == ("h6.example.com",)

        # audit paths for every entry, against both tree heads
        for i, (leaf, _) in enumerate(raw):
            for sth in (first, second):
                if i >= sth.tree_size:
                    continue
                h = leaf_hash(leaf)
                status, body = await _get(
                    session,
                    ct_log,
                    "get-proof-by-hash",
                    hash=base64.b64encode(h).decode(),
                    tree_size=sth.tree_size,
                )
                assert status == 200 and body["leaf_index"] == i
                path = [base64.b64decode(p) for p in body["audit_path"]]
                assert verify_inclusion(h, i, sth.tree_size, path, sth.root_hash)

        # bad requests answer as real logs do
        status, _ = await _get(session, ct_log, "get-proof-by-hash", hash="AAAA", tree_size=3)
        assert status == 400
        missing = base64.b64encode(leaf_hash(b"nope")).decode()
        status, _ = await _get(session, ct_log, "get-proof-by-hash", hash=missing, tree_size=3)
        assert status == 404
        status, _ = await _get(session, ct_log, "get-sth-consistency", first=3, second=11)
        assert status == 400
        status, _ = await _get(session, ct_log, "get-entries", start=10, end=12)
        assert status == 400
        status, body = await _get(session, ct_log, "get-entries", start=8, end=100)
        assert status == 200 and len(body["entries"]) == 2


async def test_fault_knobs_are_detected(ct_log: LoopbackCTLog, ca: LocalCA, now: datetime) -> None:
    async with aiohttp.ClientSession() as session:
        _fill(ct_log, ca, now, [[f"n{i}.example.com"] for i in range(5)])
        first = ct_log.publish()
        _fill(ct_log, ca, now, [["m.example.com"], ["pre.example.net"]])
        second = ct_log.publish()

        ct_log.tamper_sth_signature()
        assert not verify_sth(await _sth(session, ct_log), ct_log.public_key_der)

        ct_log.tamper_consistency()
        for m in (first.tree_size, 4):
            status, body = await _get(
                session, ct_log, "get-sth-consistency", first=m, second=second.tree_size
            )
            assert status == 200
            proof = [base64.b64decode(p) for p in body["consistency"]]
            assert not verify_consistency(
                m, second.tree_size, ct_log.root_at(m), second.root_hash, proof
            )
        _, body = await _get(session, ct_log, "get-sth-consistency", first=0, second=7)
        assert not verify_consistency(
            0,
            7,
            ct_log.root_at(0),
            second.root_hash,
            [base64.b64decode(p) for p in body["consistency"]],
        )

        ct_log.tamper_entry(3)
        raw = await _entries(session, ct_log, second.tree_size)
        parse_leaf(*raw[3], index=3)  # still parses: only the Merkle root gives it away
        assert root_from_leaves([leaf_hash(leaf) for leaf, _ in raw]) != second.root_hash
        assert leaf_hash(raw[3][0]) != ct_log.leaf_hash(3)

        ct_log.heal()
        assert verify_sth(await _sth(session, ct_log), ct_log.public_key_der)
        raw = await _entries(session, ct_log, second.tree_size)
        assert root_from_leaves([leaf_hash(leaf) for leaf, _ in raw]) == second.root_hash

        ct_log.rate_limit(2, retry_after=7)
        for _ in range(2):
            async with session.get(f"{ct_log.url}ct/v1/get-sth") as r:
                assert r.status == 429 and r.headers["Retry-After"] == "7"
        assert (await _sth(session, ct_log)) == second


def test_log_list_names_the_log() -> None:
    log = LoopbackCTLog(description="unit log")
    entry = log.log_list_json()["operators"][0]["logs"][0]
    assert base64.b64decode(entry["key"]) == log.public_key_der
    assert base64.b64decode(entry["log_id"]) == log.log_id
    assert entry["state"] == {"usable": {"timestamp": "2025-01-01T00:00:00Z"}}


def _run_certspotter(binary: str, workdir: Path, log: LoopbackCTLog, run: str) -> tuple[str, str]:
    """One certspotter pass over ``log`` (state kept in ``workdir/state``): stdout, stderr."""
    logs = workdir / "logs.json"
    log.write_log_list(logs)
    watch = workdir / "watchlist"
    watch.write_text(".watched.test\n")
    out_path, err_path = workdir / f"{run}.stdout", workdir / f"{run}.stderr"
    with out_path.open("wb") as out_f, err_path.open("wb") as err_f:
        proc = subprocess.Popen(
            [
                *(binary, "-logs", str(logs), "-watchlist", str(watch)),
                *("-state_dir", str(workdir / "state"), "-stdout", "-verbose"),
            ],
            stdout=out_f,
            stderr=err_f,
            start_new_session=True,
        )
    try:
        # certspotter polls once at start, then every 5 minutes: wait for the first pass.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if "saving state" in err_path.read_text():
                break
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    return out_path.read_text(), err_path.read_text()


@pytest.mark.service("certspotter")
def test_certspotter_reads_the_loopback_log(tmp_path: Path, ca: LocalCA, now: datetime) -> None:
    """An independent monitor accepts the log's STHs, proofs and entries, and finds our names.

    certspotter checks the STH signature and rebuilds the Merkle root from the entries it
    downloads (first run), then extends its saved compact range with the new entries and checks
    it against the next signed root (second run): a log it accepts is protocol-correct, not
    merely self-consistent.
    """
    binary = require_binary("certspotter")
    with LoopbackCTLog(batch_limit=3) as log:
        _fill(
            log,
            ca,
            now,
            [["a.watched.test"], ["other.test"], ["pre.watched.test"], ["b.other.test"]],
        )
        log.publish()
        _fill(log, ca, now, [["deep.x.watched.test"], ["c.other.test"]])
        log.publish()

        out, err = _run_certspotter(binary, tmp_path, log, "first")
        found = [line.split("=", 1)[1].strip() for line in out.splitlines() if "DNS Name" in line]
        assert found == ["a.watched.test", "pre.watched.test", "deep.x.watched.test"], (out, err)
        precert = parse_leaf(log.leaf_input(2), log.extra_data(2), 2)
        assert f"{precert.sha256}:" in out  # certspotter names a precert by its own SHA-256
        (log_dir,) = (tmp_path / "state" / "logs").iterdir()
        state = json.loads((log_dir / "state.json").read_text())
        assert state["verified_sth"]["tree_size"] == 6
        assert base64.b64decode(state["verified_sth"]["sha256_root_hash"]) == log.sth.root_hash
        assert not any((log_dir / "malformed_entries").iterdir())
        assert not any((log_dir / "unverified_sths").iterdir())
        fetched = [p for p, _ in log.requests]
        assert "/ct/v1/get-sth" in fetched and "/ct/v1/get-entries" in fetched

        _fill(log, ca, now, [["z.other.test"], ["late.watched.test"]])
        log.publish()
        out, err = _run_certspotter(binary, tmp_path, log, "second")
        found = [line.split("=", 1)[1].strip() for line in out.splitlines() if "DNS Name" in line]
        assert found == ["late.watched.test"], (out, err)
        state = json.loads((log_dir / "state.json").read_text())
        assert state["verified_sth"]["tree_size"] == 8
        assert not any((log_dir / "malformed_entries").iterdir())


@pytest.mark.service("certspotter")
def test_certspotter_rejects_a_tampered_entry(tmp_path: Path, ca: LocalCA, now: datetime) -> None:
    """The negative control: the tamper knob is something a real monitor catches too."""
    binary = require_binary("certspotter")
    with LoopbackCTLog() as log:
        _fill(log, ca, now, [["a.watched.test"], ["b.watched.test"], ["c.other.test"]])
        log.publish()
        log.tamper_entry(1)
        _, err = _run_certspotter(binary, tmp_path, log, "tampered")
        (log_dir,) = (tmp_path / "state" / "logs").iterdir()
        state = json.loads((log_dir / "state.json").read_text())
        assert state["verified_sth"] is None, err
        assert state["verified_position"]["size"] == 0
        assert "does not match the entries returned by the log" in err
