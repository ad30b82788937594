"""How fast does the OpenBao scanner read a large KV tree? (DESIGN.md section 5: measured, not
timed tests.)

A real ``bao server -dev`` on loopback (``tests/support/openbao.py``: in-memory storage) gets
``--secrets`` KV v2 secrets (default 10,000) under ``secret/bench/``, spread over ``--folders``
folders (default 20, so one recursive LIST per folder plus the root), each in the layout the
``openbao_kv`` deploy target writes: ``certificate`` (a distinct leaf minted by
:class:`certpilot.localca.LocalCA`), ``ca_chain`` (the intermediate) and ``private_key``.
Every secret therefore yields two observations.

Then, per ``--concurrency`` value (default ``4,16,32``) and ``--runs`` times (default 2),
alternating:

* ``scan``: :func:`scanner.openbao.scan_openbao` on ``secret/bench/`` (list, read, parse,
  judge, build observations);
* ``floor``: the same LISTs and GETs with plain ``hvac`` clients on as many threads, nothing
  parsed: what the HTTP round trips alone cost from Python, i.e. the part of ``scan`` that is
  not the scanner's own work. No peer tool scans OpenBao for certificates (x509-certificate-
  exporter reads files and Kubernetes Secrets), so this floor is the yardstick.

Reported per run: wall seconds, secrets/s, observations, CPU seconds of this process and of
the ``bao`` server, and peak RSS of this process during the run (psutil, sampled every 20 ms,
and the increase over the RSS before it). The machine is shared: compare figures of one
invocation, not across invocations.

    .venv/bin/python benchmarks/openbao_scan.py
    .venv/bin/python benchmarks/openbao_scan.py --secrets 2000 --concurrency 16 --runs 1   # quick

Markdown table on stdout, progress on stderr, ``--json FILE`` for every figure. The server is
stopped by PID by its harness.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from hvac import Client  # type: ignore[import-untyped]

from benchmarks._common import process_cpu_seconds
from certpilot.domain.clock import SystemClock
from certpilot.localca import LocalCA, new_key
from scanner.openbao import OpenBaoSource, scan_openbao
from tests.support.openbao import OpenBao

TOKEN_ENV = "CERTPILOT_BENCH_BAO_TOKEN"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds while active."""

    def __init__(self, interval: float = 0.02) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


# -- data ---------------------------------------------------------------------------------------


def mint(n: int) -> tuple[list[str], str, str]:
    """``n`` distinct leaf PEMs, the intermediate's PEM and one key PEM (shared: a scan never
    looks at keys, and 10,000 key generations would only slow the set-up down)."""
    now = datetime.now(UTC)
    ca = LocalCA("Bench OpenBao", now)
    assert ca.intermediate is not None
    key = new_key()
    leaves: list[str] = []
    issued = None
    for i in range(n):
        # 90-day certificates of every age, so about a third are expiring (under 30 days left).
        start = now - timedelta(days=i % 89, hours=1)
        issued = ca.issue(
            [f"svc-{i}.bench.test"], now, lifetime=timedelta(days=90), not_before=start, key=key
        )
        leaves.append(issued.cert_pem().decode())
    assert issued is not None
    inter = ca.intermediate.public_bytes(serialization.Encoding.PEM).decode()
    return leaves, inter, issued.key_pem().decode()


def secret_path(i: int, folders: int) -> str:
    return f"bench/team-{i % folders:02d}/svc-{i:05d}"


def write_all(bao: OpenBao, n: int, folders: int, threads: int) -> float:
    leaves, inter, key = mint(n)
    local = threading.local()

    def write(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(url=bao.url, token=bao.root_token, timeout=30)
            client.adapter.session.trust_env = False
        client.secrets.kv.v2.create_or_update_secret(
            secret_path(i, folders),
            {"certificate": leaves[i], "ca_chain": inter, "private_key": key},
            mount_point="secret",
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(n)))
    return time.perf_counter() - started


# -- the two contenders ---------------------------------------------------------------------------


_LOOP: list[asyncio.AbstractEventLoop] = []


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for every scan: ``asyncio.run`` on 3.11 formats ``repr()`` of the
    finished task (here: 20,000 observations, 0.1 s) for its SIGINT bookkeeping."""
    if not _LOOP:
        _LOOP.append(asyncio.new_event_loop())
    return _LOOP[0]


def run_scan(bao: OpenBao, concurrency: int, max_secrets: int) -> dict[str, Any]:
    source = OpenBaoSource.from_mapping(
        {
            "name": "bench",
            "url": bao.url,
            "kv": ["secret/bench/"],
            "token_env": TOKEN_ENV,
            "concurrency": concurrency,
            "max_secrets": max_secrets,
            "timeout": 30,
        },
        source="benchmark",
    )
    scan = scan_openbao(source, SystemClock(), env={TOKEN_ENV: bao.root_token})
    result = _loop().run_until_complete(scan)
    if result.failure is not None or (result.errors and not result.truncated):
        raise SystemExit(f"scan failed: {result.failure} {result.errors}")
    problems: dict[str, int] = {}
    for o in result.observations:
        for code in o.codes:
            problems[code.value] = problems.get(code.value, 0) + 1
    return {
        "secrets": result.items_read,
        "observations": len(result.observations),
        "problems": problems,
    }


def run_floor(bao: OpenBao, concurrency: int, max_secrets: int) -> dict[str, Any]:
    """The same LISTs and GETs, nothing parsed (one client per thread, like the scanner)."""
    local = threading.local()
    clients: list[Any] = []

    def client() -> Any:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = Client(url=bao.url, token=bao.root_token, timeout=30)
            c.adapter.session.trust_env = False
            clients.append(c)
        return c

    def listing(folder: str) -> list[str]:
        keys: list[str] = client().adapter.list(f"/v1/secret/metadata/{folder}")["data"]["keys"]
        return keys

    def read(path: str) -> int:
        body = client().adapter.get(f"/v1/secret/data/{path}")
        return len(body["data"]["data"])

    with ThreadPoolExecutor(concurrency) as pool:
        folders = ["bench/" + k for k in listing("bench/")]
        paths = [
            f + k for f, keys in zip(folders, pool.map(listing, folders), strict=True) for k in keys
        ]
        fields = sum(pool.map(read, paths[:max_secrets]))
    for c in clients:
        c.adapter.close()
    return {"secrets": min(len(paths), max_secrets), "observations": 0, "fields": fields}


def measure(
    name: str, fn: Callable[[], dict[str, Any]], bao_proc: psutil.Process
) -> dict[str, Any]:
    me = psutil.Process()
    cpu0, bao0 = process_cpu_seconds(me), process_cpu_seconds(bao_proc)
    with PeakRSS() as rss:
        started = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - started
    out.update(
        {
            "kind": name,
            "wall_s": round(wall, 3),
            "secrets_per_s": round(out["secrets"] / wall, 1),
            "cpu_s": round(process_cpu_seconds(me) - cpu0, 2),
            "bao_cpu_s": round(process_cpu_seconds(bao_proc) - bao0, 2),
            "rss_peak_mb": round(rss.peak / 2**20, 1),
            "rss_increase_mb": round((rss.peak - rss.before) / 2**20, 1),
        }
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--secrets", type=int, default=10_000)
    ap.add_argument("--folders", type=int, default=20)
    ap.add_argument("--concurrency", default="4,16,32", help="comma-separated values")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]

    with (
        tempfile.TemporaryDirectory(prefix="certpilot-bao-bench-") as tmp,
        OpenBao(Path(tmp), start_timeout=60) as bao,
    ):
        assert bao.proc is not None
        bao_proc = psutil.Process(bao.proc.pid)
        log(f"writing {args.secrets} secrets to {bao.url} ...")
        write_s = write_all(bao, args.secrets, args.folders, threads=16)
        log(f"  written in {write_s:.1f}s ({args.secrets / write_s:.0f}/s)")
        # Warm-up (imports, first connections), untimed.
        run_scan(bao, 4, 200)
        results: list[dict[str, Any]] = []
        for run in range(args.runs):
            for level in levels:
                for kind, fn in (("scan", run_scan), ("floor", run_floor)):
                    r = measure(kind, functools.partial(fn, bao, level, args.secrets), bao_proc)
                    r.update({"concurrency": level, "run": run + 1})
                    results.append(r)
                    log(
                        f"  run {run + 1} {kind:5} c={level:<3} {r['wall_s']:7.2f}s "
                        f"{r['secrets_per_s']:8.0f} secrets/s  cpu {r['cpu_s']:.1f}s  "
                        f"bao cpu {r['bao_cpu_s']:.1f}s  rss peak {r['rss_peak_mb']} MB "
                        f"(+{r['rss_increase_mb']})"
                    )
        bao_rss = round(bao_proc.memory_info().rss / 2**20, 1)

    load = os.getloadavg()
    print(
        f"\n{args.secrets} secrets in {args.folders} folders, 2 certificates each; "
        f"{args.runs} runs; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f}; bao RSS at the end {bao_rss} MB; "
        f"write {write_s:.1f}s\n"
    )
    print(
        "| kind | concurrency | median wall s | secrets/s | observations | CPU s (this process) "
        "| CPU s (bao) | peak RSS MB (increase) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        for kind in ("scan", "floor"):
            rs = [r for r in results if r["kind"] == kind and r["concurrency"] == level]
            wall = statistics.median(r["wall_s"] for r in rs)
            print(
                f"| {kind} | {level} | {wall:.2f} | {args.secrets / wall:,.0f} | "
                f"{rs[0]['observations']:,} | {statistics.median(r['cpu_s'] for r in rs):.1f} | "
                f"{statistics.median(r['bao_cpu_s'] for r in rs):.1f} | "
                f"{max(r['rss_peak_mb'] for r in rs):.0f} "
                f"(+{max(r['rss_increase_mb'] for r in rs):.0f}) |"
            )
    scans = [r for r in results if r["kind"] == "scan"]
    print("\nproblems (last scan):", json.dumps(scans[-1]["problems"], sort_keys=True))
    summary = {
        "secrets": args.secrets,
        "folders": args.folders,
        "write_s": round(write_s, 2),
        "bao_rss_mb": bao_rss,
        "results": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
