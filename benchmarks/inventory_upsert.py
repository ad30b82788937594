"""How fast does the inventory take a large scan? (DESIGN.md section 5: measured, not timed tests.)

Builds N synthetic observations (one TLS location each, a distinct leaf per location plus one
shared intermediate, about 10% of them with a problem) and times three ``Inventory.record``
calls on a fresh database:

1. ``first``: everything is new (certificates, locations, sightings, and the
   ``location_added`` / ``first_seen`` / ``problem_raised`` events);
2. ``same``: the same state again an hour later (no events; every row's ``last_seen`` moves);
3. ``changed``: 10% of the locations serve a renewed certificate and their problems clear.

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
from dataclasses import replace  # noqa: F401
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


def build(rows: int) -> tuple[list[Observation], list[Observation], list[Observation]]:
    leaves, intermediate = base_certificates()
    first: list[Observation] = []
    same: list[Observation] = []
    changed: list[Observation] = []
    later = START + timedelta(hours=1)
    latest = START + timedelta(hours=2)
    for i in range(rows):
        leaf = synthetic_leaf(leaves[i % len(leaves)], i, 0)
        problem = i % 10 == 3
        first.append(observation(i, leaf, intermediate, START, problem))
        same.append(observation(i, leaf, intermediate, later, problem))
        if i % 10 == 3:  # 10% renewed: new certificate, problem cleared
            renewed = synthetic_leaf(leaves[i % len(leaves)], i, 1)
            changed.append(observation(i, renewed, intermediate, latest, False))
        else:
            changed.append(observation(i, leaf, intermediate, latest, problem))
    return first, same, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="observations per record()")
    parser.add_argument("--db", help="SQLite file to create (default: a temporary file)")
    parser.add_argument("--url", help="any store URL instead of --db (e.g. postgresql+psycopg://)")
    args = parser.parse_args(argv)

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.url:
        url = args.url
        db_path: Path | None = None
    else:
        if args.db:
            db_path = Path(args.db)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="certpilot-bench-")
            db_path = Path(tmp.name) / "inventory.db"
        if db_path.exists():
            print(f"{db_path} exists; pass a new path", file=sys.stderr)
            return 2
        url = f"sqlite:///{db_path}"

    t0 = time.perf_counter()
    rounds = build(args.rows)
    build_s = time.perf_counter() - t0

    results: list[dict[str, object]] = []
    inventory = Inventory.open(url)
    try:
        nows = (START, START + timedelta(hours=1), START + timedelta(hours=2))
        for name, batch, now in zip(("first", "same", "changed"), rounds, nows, strict=True):
            t0 = time.perf_counter()
            events = inventory.record(batch, now=now)
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
        size = sum(
            p.stat().st_size
            for p in (db_path, Path(f"{db_path}-wal"))
            if p.exists()
        )

    print(f"{'round':<8} {'observations':>12} {'events':>8} {'seconds':>8} {'obs/s':>9}")
    for r in results:
        print(
            f"{r['round']:<8} {r['observations']:>12} {r['events']:>8} "
            f"{r['seconds']:>8.3f} {r['obs_per_s']:>9}"
        )
    print(
        f"certificates stored: {certificates}; build {build_s:.2f} s"
        + (f"; database {size / 1e6:.0f} MB" if size else "")
    )
    summary = {
        "benchmark": "inventory_upsert",
        "backend": url.split(":", 1)[0],
        "rows": args.rows,
        "rounds": results,
        "certificates": certificates,
        "db_bytes": size,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, separators=(",", ":")))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
