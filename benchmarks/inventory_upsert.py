"""How fast does the inventory take a large scan? (DESIGN.md section 5: measured, not timed tests.)

Builds N synthetic observations (one TLS location each, a distinct leaf per location plus one
shared intermediate, 10% of them with a problem) and times ``Inventory.record`` of the whole
batch on a fresh database, round after round:

1. ``first``: everything is new (certificates, locations, sightings, and the
   ``location_added`` / ``first_seen`` / ``problem_raised`` events);
2. ``same``: the next periodic scan, 5 minutes later, same state (no events; every location's
   ``last_scanned`` moves);
3. ``changed``: 5 minutes later, 10% of the locations serve a renewed certificate and their
   problem clears (new certificates, sightings that start and end, ``new_certificate`` and
   ``problem_cleared`` events);
4. ``next_hour``: the same state in a new UTC hour (it used to refresh every deployed
   certificate's ``last_seen``; kept so figures stay comparable).

On SQLite, the WAL checkpoint of each round runs in the background after its commit
(``certpilot.store.engine.WalCheckpointer``). The benchmark waits for it between rounds, so
rounds do not overlap, and reports its time in its own column: ``record s`` is what a scanner
waits for, ``checkpoint s`` the copy of the round's pages into the database file that follows.

The whole sequence runs ``--runs`` times (default 3), each on a fresh database; the last table
is the median per round. The leaves are real certificates from the embedded CA, parsed once;
the N distinct ones are copies with their fingerprint, serial and expiry varied
(``dataclasses.replace``), so parsing is not what is measured.

    python benchmarks/inventory_upsert.py --rows 100000 --db /tmp/inv.db

Prints a table per run, the median table, and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, cert_info
from certpilot.localca import LocalCA
from certpilot.store import Inventory

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def base_certificates() -> tuple[list[CertInfo], CertInfo]:
    """A few real leaves (EC and RSA) and their intermediate."""
    ca = LocalCA("Bench", START - timedelta(days=30))
    leaves = [
        cert_info(ca.issue([f"base{i}.bench.internal"], START, key_kind=kind, key_bits=bits).cert)
        for i, (kind, bits) in enumerate([("EC", 256), ("EC", 384), ("RSA", 2048), ("EC", 256)])
    ]
    assert ca.intermediate is not None
    return leaves, cert_info(ca.intermediate)


def synthetic_leaf(base: CertInfo, i: int, generation: int) -> CertInfo:
    digest = hashlib.sha256(f"bench-{generation}-{i}".encode()).hexdigest()
    return replace(
        base,
        fingerprint_sha256=digest,
        serial=format((generation << 40) + i + 1, "x"),
        subject=f"CN=host{i}.bench.internal",
        subject_cn=f"host{i}.bench.internal",
        sans=(f"host{i}.bench.internal",),
        not_after=base.not_after + timedelta(days=generation * 60, seconds=i),
    )


def observation(
    i: int, leaf: CertInfo, intermediate: CertInfo, at: datetime, problem: bool
) -> Observation:
    host = f"host{i}.bench.internal"
    problems = (Problem(ProblemCode.EXPIRING, f"{host} expires soon"),) if problem else ()
    return Observation(
        source="tls",
        ref=f"tls://{host}:443#{host}",
        target=f"{host}:443",
        observed_at=at,
        problems=problems,
        leaf=leaf,
        chain=(leaf, intermediate),
        trusted=True,
        host=host,
        port=443,
        sni=host,
        tls_version="TLSv1.3",
        duration_seconds=0.01,
    )


ROUNDS = (
    # name, minutes after START, renewed (10% of locations serve a new certificate)
    ("first", 0, False),  # everything new: certificates, locations, sightings, events
    ("same", 5, False),  # the next periodic scan: nothing changed
    ("changed", 10, True),  # 10% renewed: new certificate, their problem cleared
    ("next_hour", 65, True),  # nothing changed, but a new UTC hour: certificate.last_seen refresh
)


def build(rows: int) -> list[list[Observation]]:
    """One batch of ``rows`` observations per round of :data:`ROUNDS`."""
    leaves, intermediate = base_certificates()
    batches: list[list[Observation]] = [[] for _ in ROUNDS]
    for i in range(rows):
        base = leaves[i % len(leaves)]
        leaf = synthetic_leaf(base, i, 0)
        has_problem = i % 10 == 3
        renewed = synthetic_leaf(base, i, 1) if has_problem else leaf
        for batch, (_, minutes, after_renewal) in zip(batches, ROUNDS, strict=True):
            at = START + timedelta(minutes=minutes)
            if after_renewal and has_problem:
                batch.append(observation(i, renewed, intermediate, at, False))
            else:
                batch.append(observation(i, leaf, intermediate, at, has_problem))
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="observations per record()")
    parser.add_argument("--runs", type=int, default=3, help="fresh-database runs (median shown)")
    parser.add_argument(
        "--db", help="SQLite file to create, kept after the last run (default: a temporary file)"
    )
    parser.add_argument(
        "--url", help="any store URL instead of --db (e.g. postgresql+psycopg://); one run"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    if args.url:
        # Runs need a fresh database each, and only a SQLite file can be made fresh here: pass
        # the URL of an empty database.
        result = run(args.rows, args.url, None)
        print_run(1, result)
        return report(args.rows, [result], args.url)
    if args.db:
        db_path = Path(args.db)
        if db_path.exists():
            print(f"{db_path} exists; pass a new path", file=sys.stderr)
            return 2
        return run_sqlite(args.rows, args.runs, db_path, keep=True)
    # Removed even when the run fails or its output pipe closes early.
    with tempfile.TemporaryDirectory(prefix="certpilot-inventory-upsert-") as tmp:
        return run_sqlite(args.rows, args.runs, Path(tmp) / "inventory.db", keep=False)


def run_sqlite(rows: int, runs: int, db_path: Path, *, keep: bool) -> int:
    t0 = time.perf_counter()
    batches = build(rows)  # once: observations are immutable
    build_s = time.perf_counter() - t0
    url = f"sqlite:///{db_path}"
    results = []
    for number in range(1, runs + 1):
        results.append({**run(rows, url, db_path, batches), "build_s": build_s})
        print_run(number, results[-1])
        if number < runs or not keep:
            for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
                path.unlink(missing_ok=True)
    return report(rows, results, url)


def run(
    rows: int, url: str, db_path: Path | None, batches: list[list[Observation]] | None = None
) -> dict[str, object]:
    """One fresh-database pass over :data:`ROUNDS`."""
    t0 = time.perf_counter()
    if batches is None:
        batches = build(rows)
    build_s = time.perf_counter() - t0

    rounds: list[dict[str, object]] = []
    inventory = Inventory.open(url)
    try:
        inventory.wait_checkpoint()  # the schema's
        for (name, minutes, _), batch in zip(ROUNDS, batches, strict=True):
            t0 = time.perf_counter()
            events = inventory.record(batch, now=START + timedelta(minutes=minutes))
            seconds = time.perf_counter() - t0
            checkpoint = inventory.wait_checkpoint()
            rounds.append(
                {
                    "round": name,
                    "observations": len(batch),
                    "events": len(events),
                    "seconds": round(seconds, 3),
                    "checkpoint_seconds": round(checkpoint, 3),
                    "obs_per_s": round(len(batch) / seconds),
                }
            )
        certificates = inventory.certificate_count()
    finally:
        inventory.close()

    size = None
    if db_path is not None:
        size = sum(p.stat().st_size for p in (db_path, Path(f"{db_path}-wal")) if p.exists())
    return {"rounds": rounds, "certificates": certificates, "db_bytes": size, "build_s": build_s}


def print_table(rounds: list[dict[str, object]]) -> None:
    print(
        f"{'round':<9} {'observations':>12} {'events':>8} {'record s':>9} {'obs/s':>9}"
        f" {'checkpoint s':>13}"
    )
    for r in rounds:
        print(
            f"{r['round']:<9} {r['observations']:>12} {r['events']:>8} {r['seconds']:>9.3f}"
            f" {r['obs_per_s']:>9} {r['checkpoint_seconds']:>13.3f}"
        )


def print_run(number: int, result: dict[str, object]) -> None:
    rounds = result["rounds"]
    assert isinstance(rounds, list)
    size = result["db_bytes"]
    print(f"run {number}:")
    print_table(rounds)
    print(
        f"certificates stored: {result['certificates']}; build {result['build_s']:.2f} s"
        + (f"; database {size / 1e6:.0f} MB" if isinstance(size, int) else "")
    )


def report(rows: int, results: list[dict[str, object]], url: str) -> int:
    medians: list[dict[str, object]] = []
    for i, (name, _, _) in enumerate(ROUNDS):
        per_run = [r["rounds"][i] for r in results]  # type: ignore[index]
        seconds = [float(r["seconds"]) for r in per_run]
        median = statistics.median(seconds)
        medians.append(
            {
                "round": name,
                "observations": per_run[0]["observations"],
                "events": per_run[0]["events"],
                "seconds": round(median, 3),
                "min_seconds": round(min(seconds), 3),
                "max_seconds": round(max(seconds), 3),
                "checkpoint_seconds": round(
                    statistics.median(float(r["checkpoint_seconds"]) for r in per_run), 3
                ),
                "obs_per_s": round(int(per_run[0]["observations"]) / median),
            }
        )
    if len(results) > 1:
        print(f"median of {len(results)} runs:")
        print_table(medians)
        print(
            "spread (min-max record s): "
            + ", ".join(f"{m['round']} {m['min_seconds']}-{m['max_seconds']}" for m in medians)
        )
    summary = {
        "benchmark": "inventory_upsert",
        "backend": url.split(":", 1)[0],
        "rows": rows,
        "runs": len(results),
        "median": medians,
        "each": [r["rounds"] for r in results],
        "certificates": results[-1]["certificates"],
        "db_bytes": results[-1]["db_bytes"],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
