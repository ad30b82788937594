"""``certpilot ct watch`` against loopback logs (RFC 6962 and tiled), and certspotter on the
same log finding the same certificates.

The command runs in-process (``certpilot.cli.main``) with the logs' servers in threads; its
JSON lines are the contract (``sth_verified``, ``consistency_verified``, ``entry``, ``match``,
``inclusion_verified`` and the failures), as are the exit codes: 0 all verified, 1 a check
failed, 2 usage.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.cli import main
from certpilot.localca import LocalCA
from ctwatch.rfc6962 import parse_leaf
from tests.support.ct_log import LoopbackCTLog, make_precert
from tests.support.services import require_binary
from tests.support.tiled_log import LoopbackTiledLog

DER = serialization.Encoding.DER
WATCHED = [
    ["a.watched.test"],
    ["other.test"],
    ["pre.b.watched.test"],
    ["x.other.test", "alt.watched.test"],
    ["*.wild.watched.test"],
    ["pre.c.other.test"],
    ["watched.test"],
    ["notwatched.test"],
]


def _fill(log: LoopbackCTLog | LoopbackTiledLog, ca: LocalCA, now: datetime) -> None:
    chain = [c.public_bytes(DER) for c in ca.issue(["x.test"], now).chain]
    for names in WATCHED:
        if names[0].startswith("pre."):
            pre = make_precert(ca.issuer_cert, ca.issuer_key, names, now, now + timedelta(days=9))
            log.add_precert(pre.public_bytes(DER), ca.issuer_cert.public_bytes(DER))
        else:
            log.add_x509(ca.issue(names, now).cert.public_bytes(DER), chain)


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    p = tmp_path / "watchlist"
    p.write_text("# ours\n.watched.test\n")
    return p


@pytest.fixture
def ct_log(ca: LocalCA, now: datetime) -> Iterator[LoopbackCTLog]:
    with LoopbackCTLog(batch_limit=3) as log:
        _fill(log, ca, now)
        log.publish()
        yield log


def _key(log: LoopbackCTLog | LoopbackTiledLog) -> str:
    return base64.b64encode(log.public_key_der).decode()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["ct", "watch", *argv])
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, events, err


def _kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_json_lines_for_every_check_and_exit_0(
    ct_log: LoopbackCTLog, watch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, events, err = _run(
        capsys,
        *("--log", ct_log.url, "--log-key", _key(ct_log), "--watch", str(watch)),
        *("--once", "--format", "json", "--verify-inclusion", "--batch-size", "2"),
    )
    assert code == 0, err
    assert events[0]["event"] == "sth_verified" and events[0]["tree_size"] == len(WATCHED)
    entries = _kinds(events, "entry")
    assert [e["index"] for e in entries] == list(range(len(WATCHED)))
    assert entries[2]["entry_type"] == "precert" and entries[0]["entry_type"] == "x509"
    first = parse_leaf(ct_log.leaf_input(0), ct_log.extra_data(0), 0)
    assert entries[0]["sha256"] == first.sha256 and entries[0]["names"] == ["a.watched.test"]
    assert set(entries[0]) >= {"index", "entry_type", "sha256", "names", "issuer", "not_after"}
    matches = _kinds(events, "match")
    assert [m["index"] for m in matches] == [0, 2, 3, 4, 6]
    assert matches[0]["matched"] == [".watched.test"]
    assert [e["index"] for e in _kinds(events, "inclusion_verified")] == [0, 2, 3, 4, 6]
    assert all(e["log"] == ct_log.url for e in events)


def test_trusted_sth_consistency_and_a_forged_one(
    ct_log: LoopbackCTLog,
    ca: LocalCA,
    now: datetime,
    watch: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trusted = tmp_path / "sth.json"
    sth = ct_log.sth
    body = {
        "tree_size": sth.tree_size,
        "timestamp": sth.timestamp_ms,
        "sha256_root_hash": base64.b64encode(sth.root_hash).decode(),
        "tree_head_signature": base64.b64encode(sth.signature).decode(),
    }
    trusted.write_text(json.dumps(body))
    _fill(ct_log, ca, now)
    ct_log.publish()
    args = ("--log", ct_log.url, "--log-key", _key(ct_log), "--once", "--format", "json")
    code, events, _ = _run(capsys, *args, "--trusted-sth", str(trusted))
    assert code == 0
    (cons,) = _kinds(events, "consistency_verified")
    assert (cons["first"], cons["second"]) == (len(WATCHED), 2 * len(WATCHED))

    body["sha256_root_hash"] = base64.b64encode(b"\x05" * 32).decode()  # signature now wrong
    trusted.write_text(json.dumps(body))
    code, events, _ = _run(capsys, *args, "--trusted-sth", str(trusted))
    assert code == 1
    assert [e["event"] for e in events] == ["bad_signature"]
    assert "--trusted-sth" in events[0]["error"]


def test_failures_exit_1_and_malformed_entries_do_not_stop_the_watch(
    ca: LocalCA, now: datetime, watch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackCTLog() as log:
        _fill(log, ca, now)
        log.add_raw(b"\x00\x00\x01\x02", b"")
        log.add_x509(ca.issue(["late.watched.test"], now).cert.public_bytes(DER))
        log.publish()
        args = ("--log", log.url, "--log-key", _key(log), "--watch", str(watch), "--once")
        code, events, _ = _run(capsys, *args, "--format", "json")
        assert code == 1
        (bad,) = _kinds(events, "malformed_entry")
        assert bad["index"] == len(WATCHED)
        assert _kinds(events, "match")[-1]["names"] == ["late.watched.test"]

        log.tamper_entry(1)
        code, events, _ = _run(capsys, *args, "--format", "json")
        assert code == 1
        assert _kinds(events, "inconsistent") and not _kinds(events, "match")

        log.heal()
        log.tamper_sth_signature()
        code = main(["ct", "watch", *args])  # the text format
        out, err = capsys.readouterr()
        assert code == 1
        assert "bad_signature: tree head signature does not verify" in out
        assert "1 failed" in err


def test_text_format_tells_a_person_what_was_checked(
    ct_log: LoopbackCTLog, watch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--log", ct_log.url, "--log-key", _key(ct_log), "--watch", str(watch), "--once"]
    code = main(["ct", "watch", *args])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"verified tree head: {len(WATCHED)} entries" in out
    assert "match entry 2 (precert): pre.b.watched.test" in out
    assert f"{len(WATCHED)} entries read, 5 matches; all checks passed" in err


def test_log_list_selects_the_log_and_its_kind(
    ca: LocalCA, now: datetime, watch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackTiledLog() as tiled:
        _fill(tiled, ca, now)
        tiled.publish()
        listing = tmp_path / "logs.json"
        tiled.write_log_list(listing)
        code, events, err = _run(
            capsys,
            *("--log", tiled.url, "--log-list", str(listing), "--watch", str(watch)),
            *("--once", "--format", "json", "--verify-inclusion"),
        )
        assert code == 0, err
        assert [m["index"] for m in _kinds(events, "match")] == [0, 2, 3, 4, 6]
        assert len(_kinds(events, "inclusion_verified")) == 5
        assert len(_kinds(events, "entry")) == len(WATCHED)

        code, events, err = _run(
            capsys, "--log", "https://nope.test/", "--log-list", str(listing), "--once"
        )
        assert code == 2 and "no usable log with URL https://nope.test/" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--log-key", "!!!"], "--log-key: not base64"),
        (["--log-key", "AAAA", "--from-index", "5", "--to-index", "2"], "before --from-index"),
        (["--log-key", "AAAA", "--from-index", "-1"], "expected an entry index"),
        (["--log-key", "AAAA", "--log-list", "x.json"], "not allowed with argument"),
        (["--log-list", "/nonexistent/list.json"], "file not found"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        code = main(["ct", "watch", "--log", "http://127.0.0.1:9/", "--once", *argv])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert needle in err and "Traceback" not in err


def test_bad_watchlist_names_file_and_line(
    ct_log: LoopbackCTLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "watch"
    bad.write_text("ok.test\nbad..name\n")
    args = ["--log", ct_log.url, "--log-key", _key(ct_log), "--watch", str(bad), "--once"]
    code = main(["ct", "watch", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}: line 2" in err and "bad..name" in err


@pytest.mark.service("certspotter")
def test_certspotter_finds_the_same_certificates(
    ct_log: LoopbackCTLog, watch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two independent monitors over the same log and watchlist: the same matched entries."""
    binary = require_binary("certspotter")
    code, events, _ = _run(
        capsys,
        *("--log", ct_log.url, "--log-key", _key(ct_log), "--watch", str(watch)),
        *("--once", "--format", "json"),
    )
    assert code == 0
    ours = {m["sha256"] for m in _kinds(events, "match")}
    assert len(ours) == 5

    logs = tmp_path / "logs.json"
    ct_log.write_log_list(logs)
    out_path, err_path = tmp_path / "cs.stdout", tmp_path / "cs.stderr"
    with out_path.open("wb") as out_f, err_path.open("wb") as err_f:
        proc = subprocess.Popen(
            [
                *(binary, "-logs", str(logs), "-watchlist", str(watch)),
                *("-state_dir", str(tmp_path / "state"), "-stdout", "-verbose"),
            ],
            stdout=out_f,
            stderr=err_f,
            start_new_session=True,
        )
    try:
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
    theirs = set(re.findall(r"^([0-9a-f]{64}):", out_path.read_text(), re.M))
    assert theirs == ours, (out_path.read_text(), err_path.read_text())


def test_stream_prints_feed_matches_and_stops_after_count(
    ca: LocalCA, now: datetime, watch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    from tests.support.certstream_server import LoopbackCertstream, certificate_update

    with LoopbackCertstream(heartbeat_interval=None) as feed:

        def send_when_connected() -> None:
            deadline = time.monotonic() + 20
            while feed.client_count == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            feed.send(certificate_update(ca.issue(["x.other.test"], now).cert, index=1))
            feed.send(certificate_update(ca.issue(["a.watched.test"], now).cert, index=2))
            feed.send(certificate_update(ca.issue(["b.watched.test"], now).cert, index=3))

        sender = threading.Thread(target=send_when_connected)
        sender.start()
        args = ["--url", feed.ws_url("/"), "--watch", str(watch), "--count", "2"]
        code = main(["ct", "stream", *args, "--seconds", "30", "--format", "json"])
        sender.join()
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert out[0]["event"] == "connected"
    matches = [e for e in out if e["event"] == "match"]
    assert [m["names"] for m in matches] == [["a.watched.test"], ["b.watched.test"]]
    assert matches[0]["source"] == "certstream" and matches[0]["index"] == 2


def test_stream_that_never_connects_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ct", "stream", "--url", "ws://127.0.0.1:9/", "--seconds", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "0 messages" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["ct", "stream", "--url", "http://x/", "--seconds", "1"]))
    assert e.value.code == 2 and "expected a ws:// or wss:// URL" in capsys.readouterr().err
