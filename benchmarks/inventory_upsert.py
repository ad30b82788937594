"""How fast does the inventory take a large scan? (DESIGN.md section 5: measured, not timed tests.)

Builds N synthetic observations (one TLS location each, a distinct leaf per location plus one
shared intermediate, 10% of them with a problem) and times ``Inventory.record`` of the whole
batch on a fresh database, round after round:

1. ``first``: everything is new (certificates, locations, sightings, and the
   ``location_added`` / ``first_seen`` / ``problem_raised`` events);
2. ``same``: the next periodic scan, 5 minutes later, same state (no events; every location's
   ``last_scanned`` and every sighting's ``last_seen`` move);
3. ``changed``: 5 minutes later, 10% of the locations serve a renewed certificate and their
   problem clears (new certificates, ``new_certificate`` and ``problem_cleared`` events);
4. ``next_hour``: the same state in a new UTC hour, when every deployed certificate's
   ``last_seen`` is refreshed too (see ``certpilot.store.inventory._hour``).

The leaves are real certificates from the embedded CA, parsed once; the N distinct ones are
copies with their fingerprint, serial and expiry varied (``dataclasses.replace``), so parsing
is not what is measured.

    python benchmarks/inventory_upsert.py --rows 100000 --db /tmp/inv.db

Prints a table and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
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
    parser.add_argument("--db", help="SQLite file to create (default: a temporary file)")
    parser.add_argument("--url", help="any store URL instead of --db (e.g. postgresql+psycopg://)")
    args = parser.parse_args(argv)

    if args.url:
        return run(args.rows, args.url, None)
    if args.db:
        db_path = Path(args.db)
        if db_path.exists():
            print(f"{db_path} exists; pass a new path", file=sys.stderr)
            return 2
        return run(args.rows, f"sqlite:///{db_path}", db_path)
    # Removed even when the run fails or its output pipe closes early.
    with tempfile.TemporaryDirectory(prefix="certpilot-inventory-upsert-") as tmp:
        db_path = Path(tmp) / "inventory.db"
        return run(args.rows, f"sqlite:///{db_path}", db_path)


def run(rows: int, url: str, db_path: Path | None) -> int:
    t0 = time.perf_counter()
    batches = build(rows)
    build_s = time.perf_counter() - t0

    results: list[dict[str, object]] = []
    inventory = Inventory.open(url)
    try:
        for (name, minutes, _), batch in zip(ROUNDS, batches, strict=True):
            t0 = time.perf_counter()
            events = inventory.record(batch, now=START + timedelta(minutes=minutes))
            seconds = time.perf_counter() - t0
            results.append(
                {
                    "round": name,
                    "observations": len(batch),
                    "events": len(events),
                    "seconds": round(seconds, 3),
                    "obs_per_s": round(len(batch) / seconds),
                }
            )
        certificates = inventory.certificate_count()
    finally:
        inventory.close()

    size = None
    if db_path is not None:
        size = sum(p.stat().st_size for p in (db_path, Path(f"{db_path}-wal")) if p.exists())

    print(f"{'round':<9} {'observations':>12} {'events':>8} {'seconds':>8} {'obs/s':>9}")
    for r in results:
        print(
            f"{r['round']:<9} {r['observations']:>12} {r['events']:>8} "
            f"{r['seconds']:>8.3f} {r['obs_per_s']:>9}"
        )
    print(
        f"certificates stored: {certificates}; build {build_s:.2f} s"
        + (f"; database {size / 1e6:.0f} MB" if size else "")
    )
    summary = {
        "benchmark": "inventory_upsert",
        "backend": url.split(":", 1)[0],
        "rows": rows,
        "rounds": results,
        "certificates": certificates,
        "db_bytes": size,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
