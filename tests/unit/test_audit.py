"""The audit hash chain: the pure model, the store on real SQLite files, and the CLI.

Tampering is done the way an intruder with database access would do it: raw SQL on the file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certpilot.cli import main
from certpilot.domain.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEntry,
    ChainHead,
    UnreadableEntry,
    anchor,
    canonical_bytes,
    chain_hash,
    seal,
    verify_chain,
)
from certpilot.domain.errors import StoreError
from certpilot.store import AuditLog, Inventory
from certpilot.store import audit as audit_store

T0 = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


def draft(i: int, *, actor: str = "schedule", at: datetime | None = None) -> AuditDraft:
    return AuditDraft(
        at=at or T0 + timedelta(seconds=i),
        actor=actor,
        action="renew",
        subject=f"shop-{i}.example.com",
        rule="expiring-auto",
        before=f"{i:04x}",
        after=f"{i + 1:04x}",
        result="ok",
        detail={"job": f"job-{i}", "issuer": "localca"},
    )


def build_chain(n: int) -> list[AuditEntry]:
    chain: list[AuditEntry] = []
    for i in range(1, n + 1):
        chain.append(seal(draft(i), chain[-1] if chain else None, i))
    return chain


def sql(path: Path, statement: str, *params: object) -> None:
    """Tamper with the file directly, as someone with write access to it would."""
    with sqlite3.connect(path) as conn:
        conn.execute(statement, params)
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "certpilot.db"


@pytest.fixture
def url(db: Path) -> str:
    return f"sqlite:///{db}"


@pytest.fixture
def log(url: str) -> Iterator[AuditLog]:
    with AuditLog.open(url) as opened:
        yield opened


@pytest.fixture
def filled(log: AuditLog) -> list[AuditEntry]:
    """50 entries appended one by one."""
    return [log.append(draft(i)) for i in range(1, 51)]


# ----------------------------------------------------------------------- the pure model


def test_canonical_encoding_is_compact_sorted_utf8_json() -> None:
    entry = seal(
        AuditDraft(
            at=datetime(2025, 6, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
            actor="user:slack:U123",
            action="approve",
            subject="bücher.example",
            result="allowed",
            detail={"z": "1", "a": "é"},
        ),
        None,
        1,
    )
    assert (
        canonical_bytes(entry)
        == (
            '{"action":"approve","actor":"user:slack:U123","after":"",'
            '"at":"2025-06-01T12:00:00.000005Z","before":"","detail":{"a":"é","z":"1"},'
            f'"prev_hash":"{GENESIS_HASH}","result":"allowed","rule":"","seq":1,'
            '"subject":"bücher.example"}'
        ).encode()
    )
    expected = hashlib.sha256(GENESIS_HASH.encode() + canonical_bytes(entry)).hexdigest()
    assert entry.hash == expected == chain_hash(GENESIS_HASH, canonical_bytes(entry))
    assert entry.at == datetime(2025, 6, 1, 12, 0, 0, 5, tzinfo=UTC)


def test_seal_links_each_entry_to_the_previous_one() -> None:
    chain = build_chain(3)
    assert [e.seq for e in chain] == [1, 2, 3]
    assert chain[0].prev_hash == GENESIS_HASH
    assert chain[1].prev_hash == chain[0].hash
    assert chain[2].prev_hash == chain[1].hash
    assert len({e.hash for e in chain}) == 3
    verdict = verify_chain(chain)
    assert verdict.ok and verdict.count == 3 and verdict.head == chain[2].head
    assert verdict.one_line() == f"audit chain ok: 3 entries, head 3 {chain[2].hash[:16]}"


def test_seal_refuses_a_seq_that_does_not_follow() -> None:
    first = seal(draft(1), None, 1)
    with pytest.raises(ValueError, match="first entry"):
        seal(draft(1), None, 2)
    with pytest.raises(ValueError, match="cannot follow"):
        seal(draft(2), first, 3)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        seal(draft(2), ChainHead(1, "not-a-hash"), 2)


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2025, 6, 1, 12, 0, 0)  # naive: the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        draft(1, at=naive)
    entry = seal(draft(1), None, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(entry, at=naive)


def test_drafts_are_checked_where_they_are_built() -> None:
    with pytest.raises(ValueError, match="actor must not be empty"):
        AuditDraft(at=T0, actor="", action="renew", subject="x", result="ok")
    with pytest.raises(ValueError, match="NUL"):
        AuditDraft(at=T0, actor="cli:root", action="renew", subject="a\x00b", result="ok")
    not_text: Any = {"n": 1}
    with pytest.raises(ValueError, match="str to str"):
        AuditDraft(
            at=T0, actor="cli:root", action="renew", subject="x", result="ok", detail=not_text
        )


@pytest.mark.parametrize(
    "detail",
    [
        {"token": "xoxb-123"},
        {"webhook_password": "hunter2"},
        {"key": "-----BEGIN PRIVATE KEY-----\nMIIE..."},
        {"header": "Bearer abc.def"},
    ],
)
def test_detail_refuses_what_looks_like_a_secret(detail: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="credential"):
        AuditDraft(at=T0, actor="cli:root", action="renew", subject="x", result="ok", detail=detail)


def test_exported_entries_verify_offline() -> None:
    chain = build_chain(5)
    lines = [json.dumps(e.to_dict()) for e in chain]
    back = [AuditEntry.from_dict(json.loads(line)) for line in lines]
    assert back == chain
    assert verify_chain(back).ok
    with pytest.raises(ValueError, match="missing the field 'hash'"):
        AuditEntry.from_dict({k: v for k, v in chain[0].to_dict().items() if k != "hash"})


def test_verify_chain_names_the_fault() -> None:
    chain = build_chain(5)
    assert verify_chain([]).one_line() == "audit chain ok: 0 entries (the log is empty)"

    edited = [*chain[:2], replace(chain[2], result="failed"), *chain[3:]]
    v = verify_chain(edited)
    assert (v.ok, v.first_bad_seq, v.count, v.head) == (False, 3, 2, chain[1].head)
    assert v.reason == "entry 3 was edited (hash mismatch)"

    v = verify_chain([chain[0], chain[1], chain[4]])
    assert (v.first_bad_seq, v.reason) == (3, "entries 3-4 are missing (seq jumps 2 -> 5)")

    v = verify_chain(chain[1:])
    assert (v.first_bad_seq, v.reason) == (1, "entry 1 is missing (the chain starts at entry 2)")

    v = verify_chain([chain[0], chain[0]])
    assert v.reason == "entry 1 is out of order (it comes after entry 1)"

    # Entry 3 replaced by a self-consistent entry that does not chain onto entry 2.
    forged = seal(draft(99), ChainHead(2, "ab" * 32), 3)
    v = verify_chain([*chain[:2], forged, *chain[3:]])
    assert v.first_bad_seq == 3
    assert v.reason.startswith("entry 3 does not link to entry 2 (prev_hash mismatch")

    # An entry 1 that claims a predecessor.
    v = verify_chain([seal(draft(1), ChainHead(0, "cd" * 32), 1)])
    assert v.reason == "entry 1 does not start the chain (prev_hash is not the genesis hash)"

    v = verify_chain([chain[0], UnreadableEntry(2, "at is not a timestamp: 7")])
    assert v.reason == "entry 2 was edited (unreadable: at is not a timestamp: 7)"


def test_expected_head_catches_a_cut_tail_and_a_rewrite() -> None:
    chain = build_chain(5)
    head = chain[-1].head
    assert verify_chain(chain, head).ok
    assert verify_chain(chain, (5, head.hash[:16].upper())).ok  # a printed prefix will do
    assert verify_chain(chain, chain[2].head).ok  # an older anchor: the chain grew since

    # Cut after entry 3: a valid chain on its own, caught by the anchor only.
    assert verify_chain(chain[:3]).ok
    v = verify_chain(chain[:3], head)
    assert (v.ok, v.first_bad_seq) == (False, 4)
    assert (
        v.reason
        == "entries 4-5 were removed (the chain ends at entry 3, the expected head is entry 5)"
    )
    v = verify_chain([], head)
    assert v.reason == "the chain is empty but the expected head is entry 5"

    # Everything from entry 3 on rewritten with fresh hashes: valid alone, not at the anchor.
    rewritten = chain[:2]
    for i in range(3, 6):
        rewritten.append(seal(replace(draft(i), result="failed"), rewritten[-1], i))
    assert verify_chain(rewritten).ok
    v = verify_chain(rewritten, head)
    assert v.first_bad_seq == 5
    assert v.reason.startswith("entry 5 is not the expected head")

    for bad in [(0, head.hash), (5, "abc"), (5, "z" * 64)]:
        with pytest.raises(ValueError, match="expected head"):
            anchor(bad)


# ------------------------------------------------------------------ the store on SQLite


def test_append_50_and_verify(log: AuditLog, filled: list[AuditEntry]) -> None:
    assert [e.seq for e in filled] == list(range(1, 51))
    assert log.count() == 50
    assert log.head() == filled[-1].head
    assert log.entries() == filled
    assert log.entries(since_seq=45, limit=3) == filled[45:48]
    assert log.latest(5) == filled[-5:]
    verdict = log.verify()
    assert (verdict.ok, verdict.count, verdict.head) == (True, 50, filled[-1].head)
    assert log.verify(expected_head=filled[-1].head).ok


def test_verify_pages_through_a_long_log(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    monkeypatch.setattr(audit_store, "PAGE", 7)
    entries = log.extend(draft(i) for i in range(1, 31))
    assert [e.seq for e in entries] == list(range(1, 31))
    assert log.verify().count == 30
    sql(db, "DELETE FROM audit_entry WHERE seq = 15")  # inside the third page
    assert log.verify().reason == "entry 15 is missing (seq jumps 14 -> 16)"


def test_an_edited_row_is_named(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    sql(db, "UPDATE audit_entry SET result = 'denied' WHERE seq = 17")
    v = log.verify()
    assert (v.ok, v.first_bad_seq, v.count) == (False, 17, 16)
    assert v.reason == "entry 17 was edited (hash mismatch)"
    assert log.entries(limit=20)[16].result == "denied"  # still listed, as stored


def test_an_edited_detail_or_timestamp_is_named(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    sql(db, """UPDATE audit_entry SET detail = '{"issuer":"evil","job":"job-8"}' WHERE seq = 8""")
    assert log.verify().reason == "entry 8 was edited (hash mismatch)"
    sql(db, "UPDATE audit_entry SET at = '2025-06-01 12:00:03.123457' WHERE seq = 3")
    assert log.verify().reason == "entry 3 was edited (hash mismatch)"


def test_reformatting_a_stored_value_is_not_an_edit(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    # Same instant in another spelling, same JSON with other spacing: same entry.
    sql(db, "UPDATE audit_entry SET at = '2025-06-01T12:00:04.123456+00:00' WHERE seq = 4")
    sql(
        db,
        """UPDATE audit_entry SET detail = '{ "job": "job-5", "issuer": "localca" }' """
        "WHERE seq = 5",
    )
    assert log.verify().ok


def test_an_unreadable_row_is_named(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    sql(db, "UPDATE audit_entry SET at = 'yesterday' WHERE seq = 9")
    v = log.verify()
    assert v.first_bad_seq == 9
    assert v.reason.startswith("entry 9 was edited (unreadable:")
    with pytest.raises(StoreError, match="audit entry 9 is unreadable"):
        log.entries()
    sql(db, "UPDATE audit_entry SET at = '2025-06-01 12:00:09.123456' WHERE seq = 9")
    sql(db, "UPDATE audit_entry SET detail = '[1, 2]' WHERE seq = 9")
    assert log.verify().reason.startswith("entry 9 was edited (unreadable: detail must be")
    # The right value, "ok", but stored as a BLOB: not text, so not an entry.
    sql(
        db,
        """UPDATE audit_entry SET detail = '{"issuer":"localca","job":"job-9"}', """
        "result = X'6f6b' WHERE seq = 9",
    )
    assert log.verify().reason.startswith("entry 9 was edited (unreadable: result must be")


def test_a_deleted_middle_row_is_named(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    sql(db, "DELETE FROM audit_entry WHERE seq = 18")
    v = log.verify()
    assert (v.first_bad_seq, v.count) == (18, 17)
    assert v.reason == "entry 18 is missing (seq jumps 17 -> 19)"


def test_a_deleted_first_row_is_detected(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    sql(db, "DELETE FROM audit_entry WHERE seq = 1")
    v = log.verify()
    assert (v.ok, v.first_bad_seq, v.count, v.head) == (False, 1, 0, None)
    assert v.reason == "entry 1 is missing (the chain starts at entry 2)"


def test_a_deleted_and_renumbered_row_is_detected(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    # Delete entry 20 and close the gap: every later seq (and so every later hash) is off.
    sql(db, "DELETE FROM audit_entry WHERE seq = 20")
    sql(db, "UPDATE audit_entry SET seq = seq - 1 WHERE seq > 20")
    v = log.verify()
    assert v.first_bad_seq == 20
    assert v.reason == "entry 20 was edited (hash mismatch)"


def test_reordered_rows_are_detected(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    sql(db, "UPDATE audit_entry SET seq = -1 WHERE seq = 10")
    sql(db, "UPDATE audit_entry SET seq = 10 WHERE seq = 20")
    sql(db, "UPDATE audit_entry SET seq = 20 WHERE seq = -1")
    v = log.verify()
    assert (v.first_bad_seq, v.count) == (10, 9)
    assert v.reason == "entry 10 was edited (hash mismatch)"


def test_a_cut_tail_needs_the_expected_head(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    recorded = log.head()
    assert recorded is not None
    sql(db, "DELETE FROM audit_entry WHERE seq > 40")
    # The documented limitation: the chain alone still verifies, 40 entries long.
    assert log.verify().ok
    v = log.verify(expected_head=recorded)
    assert (v.ok, v.first_bad_seq, v.count) == (False, 41, 40)
    assert v.reason == (
        "entries 41-50 were removed (the chain ends at entry 40, the expected head is entry 50)"
    )


def test_a_rewritten_chain_needs_the_expected_head(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    recorded = log.head()
    assert recorded is not None
    # The intruder edits entry 30 and recomputes every hash from there on.
    prev: AuditEntry = filled[28]
    with sqlite3.connect(db) as conn:
        for old in filled[29:]:
            new = seal(replace(draft(old.seq), result="failed"), prev, old.seq)
            conn.execute(
                "UPDATE audit_entry SET result = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (new.result, new.prev_hash, new.hash, new.seq),
            )
            prev = new
    conn.close()
    assert log.verify().ok  # the limitation, again
    v = log.verify(expected_head=recorded)
    assert v.first_bad_seq == 50
    assert v.reason.startswith("entry 50 is not the expected head")


def test_append_refuses_to_chain_onto_a_corrupt_head(
    log: AuditLog, filled: list[AuditEntry], db: Path
) -> None:
    sql(db, "UPDATE audit_entry SET hash = 'garbage' WHERE seq = 50")
    with pytest.raises(StoreError, match="cannot append to the audit chain"):
        log.append(draft(51))
    assert log.count() == 50


def test_the_primary_key_refuses_a_fork(log: AuditLog, filled: list[AuditEntry], db: Path) -> None:
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO audit_entry SELECT * FROM audit_entry WHERE seq = 50")
    conn.close()


def test_the_inventory_creates_the_audit_table(url: str) -> None:
    Inventory.open(url).close()
    with AuditLog.open(url) as log:
        assert log.head() is None
        assert log.verify().ok
        entry = log.append(draft(1))
    with AuditLog.open(url) as again:
        assert again.entries() == [entry]


def test_an_unusable_url_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"directory .* does not exist"):
        AuditLog.open(f"sqlite:///{tmp_path}/missing/dir/audit.db")


# ----------------------------------------------------------------------- concurrency


def test_concurrent_appends_from_two_threads(log: AuditLog, url: str) -> None:
    per_thread = 40
    errors: list[BaseException] = []

    def work(name: str, own_log: bool) -> None:
        try:
            target = AuditLog.open(url) if own_log else log
            try:
                for i in range(per_thread):
                    target.append(draft(i, actor=name))
            finally:
                if own_log:
                    target.close()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=("thread:shared", False)),
        threading.Thread(target=work, args=("thread:own", True)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    verdict = log.verify()
    assert (verdict.ok, verdict.count) == (True, 2 * per_thread)
    actors = [e.actor for e in log.entries()]
    assert actors.count("thread:shared") == actors.count("thread:own") == per_thread


def _append_in_process(
    url: str, actor: str, n: int, start: multiprocessing.synchronize.Event
) -> None:
    start.wait(30)
    with AuditLog.open(url) as log:
        for i in range(n):
            log.append(draft(i, actor=actor))


def test_concurrent_appends_from_two_processes(log: AuditLog, url: str) -> None:
    per_process = 30
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_append_in_process, args=(url, f"proc:{k}", per_process, start))
        for k in range(2)
    ]
    for p in procs:
        p.start()
    start.set()  # both begin together, so their appends interleave
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    verdict = log.verify()
    assert (verdict.ok, verdict.count) == (True, 2 * per_process)
    entries = log.entries()
    assert [e.seq for e in entries] == list(range(1, 2 * per_process + 1))
    assert {e.actor for e in entries} == {"proc:0", "proc:1"}


# -------------------------------------------------------------------------------- CLI


def test_cli_verify_ok(
    filled: list[AuditEntry], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", "--db", url]) == 0
    out, err = capsys.readouterr()
    assert out == f"audit chain ok: 50 entries, head 50 {filled[-1].hash[:16]}\n"
    assert err == ""

    assert main(["audit", "verify", "--db", url, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "ok": True,
        "count": 50,
        "head": {"seq": 50, "hash": filled[-1].hash},
        "first_bad_seq": None,
        "reason": "",
    }

    printed_head = f"50:{filled[-1].hash[:16]}"
    assert main(["audit", "verify", "--db", url, "--expect-head", printed_head]) == 0
    capsys.readouterr()


def test_cli_verify_names_the_bad_entry(
    filled: list[AuditEntry], url: str, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = f"50:{filled[-1].hash}"
    sql(db, "UPDATE audit_entry SET result = 'denied' WHERE seq = 17")
    assert main(["audit", "verify", "--db", url]) == 1
    out, _ = capsys.readouterr()
    assert out == "audit chain broken at entry 17: entry 17 was edited (hash mismatch)\n"

    sql(db, "UPDATE audit_entry SET result = 'ok' WHERE seq = 17")
    sql(db, "DELETE FROM audit_entry WHERE seq > 45")
    assert main(["audit", "verify", "--db", url]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--db", url, "--expect-head", recorded]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        "audit chain broken at entry 46: entries 46-50 were removed "
        "(the chain ends at entry 45, the expected head is entry 50)"
    ]

    assert (
        main(["audit", "verify", "--db", url, "--format", "json", "--expect-head", recorded]) == 1
    )
    data = json.loads(capsys.readouterr().out)
    assert (data["ok"], data["first_bad_seq"], data["count"]) == (False, 46, 45)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that rich does not fold the table's cells."""
    monkeypatch.setenv("COLUMNS", "240")


@pytest.mark.usefixtures("wide")
def test_cli_list(filled: list[AuditEntry], url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "list", "--db", url, "--limit", "3", "--format", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [e.to_dict() for e in filled[-3:]]

    assert main(["audit", "list", "--db", url, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "shop-50.example.com" in out and "shop-45.example.com" not in out
    assert out.rstrip().endswith("5 entries")


@pytest.mark.usefixtures("wide")
def test_cli_list_shows_markup_as_text(
    log: AuditLog, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log.append(replace(draft(1), subject="[bold]not markup[/bold]"))
    assert main(["audit", "list", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "[bold]not markup[/bold]" in out
    assert out.rstrip().endswith("1 entry")


def test_cli_errors_are_one_line(
    tmp_path: Path, filled: list[AuditEntry], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite:///{tmp_path}/nope.db"
    assert main(["audit", "verify", "--db", missing]) == 2
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith("certpilot: error: --db: no inventory")

    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify", "--db", url, "--expect-head", "50:xyz"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--expect-head: '50:xyz': the expected head's hash must be" in err

    with pytest.raises(SystemExit) as exc:
        main(["audit", "list", "--db", url, "--limit", "0"])
    assert exc.value.code == 2
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main(["audit"])
    assert exc.value.code == 2


def test_audit_commits_are_durable(log: AuditLog) -> None:
    # White-box: whatever the inventory's setting, an audit commit is fsynced (see _durable).
    with log._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
