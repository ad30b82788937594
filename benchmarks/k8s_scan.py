"""How fast does the Kubernetes scanner read a cluster's TLS Secrets? (DESIGN.md section 5.)

A full :func:`scanner.k8s.scan_kubernetes` pass over ``--secrets`` (default 10,000)
``kubernetes.io/tls`` Secrets spread over ``--namespaces`` namespaces, served by the loopback
fake API server (``tests/support/k8s_fake.py``: HTTPS, bearer token, real list shapes,
``limit``/``continue`` pagination).

* Real certificates, as cert-manager lays them out: every Secret has its **own** EC P-256 leaf
  (generated for the run; no two Secrets share one, so the scanner's parse cache only helps
  with what real clusters repeat too), ``tls.crt`` = leaf + the issuing intermediate, ``ca.crt``
  = the intermediate, ``tls.key`` = the leaf's key. Three certificates per Secret are reported
  (leaf, the intermediate in ``tls.crt`` and ``ca.crt``), each parsed, judged and turned into an
  observation.
* The scanner runs with its defaults (all five kinds, cluster-wide, ``page_size`` 500): the
  Secrets list is 20 pages; the four other kinds are empty lists.
* The fake runs in its **own process** (spawned), so its CPU is not charged to the scanner and
  can be read apart: ``fake CPU s`` is that process's CPU during the round (JSON encoding of the
  pages, TLS). ``raw list`` rounds fetch the same pages with a bare HTTP client (httpx over the
  same TLS, reading the bodies, no decoding): the fake's and the transport's share of a scan.
* Per round: wall time, objects (Secrets) per second, observations, scanner CPU (this process,
  all threads: psutil), and peak RSS (``VmHWM`` of this process, reset before each round via
  ``/proc/self/clear_refs``). It includes the interpreter, the libraries and the harness
  (``rss_before_first_scan_mib``) and the 30,000 observations the scan returns; after the
  first scan the allocator keeps its arenas, so later rounds start higher and
  ``first_scan_peak_rss_mib`` is the figure to read.
* One untimed warm-up scan, then ``--rounds`` (default 5) rounds alternating raw list / scan;
  medians reported. Each scan is cold (a new scan parses everything again). The machine is
  shared with other sessions: each round first waits (up to ``--max-wait`` s) until it is at
  most ``--max-load`` busy, and "other load" is the machine-wide busy CPU outside this process
  and the fake's during the round.

There is no peer here: x509-certificate-exporter (the usual tool for this) is a Go binary that
is not packaged for Debian and cannot be fetched on this machine.

    .venv/bin/python benchmarks/k8s_scan.py                    # 10,000 Secrets, 5 rounds
    .venv/bin/python benchmarks/k8s_scan.py --secrets 2000 --rounds 2

Prints a markdown table and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cryptography
import httpx2
import lightkube
import psutil
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    MiB,
    machine_busy_seconds,
    process_cpu_seconds,
    reset_peak_rss,
    vm_hwm,
    wait_quiet,
)
from certpilot.domain.clock import FixedClock
from certpilot.localca import LocalCA
from scanner.k8s import KubernetesSource, scan_kubernetes

TLS = "kubernetes.io/tls"


# -- the fake's process ------------------------------------------------------------------------


def serve_fake(conn: Connection, secrets: int, namespaces: int, directory: str) -> None:
    """Child process: mint the certificates, fill the fake, answer until told to stop."""
    from tests.support.k8s_fake import FakeKubeAPI

    now = datetime.now(UTC)
    ca = LocalCA("Bench", now - timedelta(days=30))
    assert ca.intermediate is not None
    intermediate = ca.intermediate.public_bytes(serialization.Encoding.PEM)
    names = tuple(f"team-{i:02d}" for i in range(namespaces))
    started = time.perf_counter()
    api = FakeKubeAPI(namespaces=names, directory=Path(directory), history_limit=10)
    for i in range(secrets):
        issued = ca.issue([f"site{i}.bench.internal"], now)
        ns = names[i % namespaces]
        api.put_secret(
            ns,
            f"site-{i:05d}-tls",
            {"tls.crt": issued.chain_pem(), "tls.key": issued.key_pem(), "ca.crt": intermediate},
            type=TLS,
            labels={"app.kubernetes.io/part-of": f"app-{i % 50}"},
            annotations={"cert-manager.io/issuer-name": "bench"},
        )
    filled = time.perf_counter() - started
    api.start()
    kubeconfig = api.write_kubeconfig(Path(directory) / "kubeconfig")
    conn.send(
        {
            "url": api.url,
            "kubeconfig": str(kubeconfig),
            "ca_pem": api.ca_pem,
            "token": api.token,
            "fill_seconds": filled,
            "now": now.isoformat(),
        }
    )
    conn.recv()  # stop
    api.close()


# -- measurements ------------------------------------------------------------------------------


async def raw_list(info: dict[str, Any], page: int) -> tuple[int, int]:
    """Every page of the cluster-wide TLS Secrets list, bodies read, nothing decoded."""
    context = ssl.create_default_context(cadata=info["ca_pem"].decode())
    headers = {"Authorization": f"Bearer {info['token']}"}
    params: dict[str, Any] = {"limit": page, "fieldSelector": f"type={TLS}"}
    pages = size = 0
    async with httpx2.AsyncClient(base_url=info["url"], verify=context, headers=headers) as c:
        while True:
            r = await c.get("/api/v1/secrets", params=params)
            r.raise_for_status()
            body = r.content
            pages += 1
            size += len(body)
            # The token is in the list's metadata, before the items: no JSON decoding needed.
            at = body.find(b'"continue":"')
            if at < 0:
                break
            end = body.index(b'"', at + 12)
            params["continue"] = body[at + 12 : end].decode()
    return pages, size


def one_round(
    kind: str, src: KubernetesSource, info: dict[str, Any], fake: psutil.Process
) -> dict[str, Any]:
    me = psutil.Process()
    reset_peak_rss(me.pid)
    rss_start = me.memory_info().rss / 2**20
    cpu0, fake0 = process_cpu_seconds(me), process_cpu_seconds(fake)
    busy0 = machine_busy_seconds()
    started = time.perf_counter()
    if kind == "scan":
        clock = FixedClock(datetime.fromisoformat(info["now"]))
        found = asyncio.run(scan_kubernetes(src, clock, env={}))
        wall = time.perf_counter() - started
        extra: dict[str, Any] = {
            "observations": len(found),
            "healthy": sum(1 for o in found if o.healthy),
            "errors": [o.error for o in found if o.error][:3],
        }
        objects = len(
            {(o.labels.get("secret_namespace"), o.labels.get("secret_name")) for o in found}
        )
    else:
        pages, size = asyncio.run(raw_list(info, src.page_size))
        wall = time.perf_counter() - started
        extra = {"pages": pages, "bytes": size}
        objects = 0
    ours = process_cpu_seconds(me) - cpu0 + process_cpu_seconds(fake) - fake0
    other = max(0.0, machine_busy_seconds() - busy0 - ours)
    return {
        "kind": kind,
        "wall_s": wall,
        "other_load": other / (wall * (os.cpu_count() or 1)),
        "objects": objects,
        "objects_per_s": objects / wall if objects else None,
        "cpu_s": process_cpu_seconds(me) - cpu0,
        "fake_cpu_s": process_cpu_seconds(fake) - fake0,
        "rss_start_mib": rss_start,
        "peak_rss_mib": vm_hwm(me.pid) / MiB,
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument(
        "--max-load",
        type=float,
        default=0.10,
        help="start a round only when the machine is at most this busy (0-1; other sessions)",
    )
    parser.add_argument("--max-wait", type=float, default=60.0)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory(prefix="k8s-bench-") as tmp:
        proc = ctx.Process(target=serve_fake, args=(child, args.secrets, args.namespaces, tmp))
        proc.start()
        print(f"minting {args.secrets} certificates and filling the fake ...", file=sys.stderr)
        info: dict[str, Any] = parent.recv()
        try:
            fake = psutil.Process(proc.pid)
            src = KubernetesSource(
                "bench", kubeconfig=Path(info["kubeconfig"]), page_size=args.page_size
            )
            baseline = psutil.Process().memory_info().rss / 2**20  # imports, harness
            warm = one_round("scan", src, info, fake)
            assert warm["objects"] == args.secrets, warm
            print(json.dumps({"warm_up": warm}), file=sys.stderr)
            results: list[dict[str, Any]] = []
            for n in range(args.rounds):
                for kind in ("raw", "scan"):
                    wait_quiet(args.max_load, args.max_wait)
                    r = one_round(kind, src, info, fake)
                    r["round"] = n
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr)
        finally:
            parent.send("stop")
            proc.join(30)

    scans = [r for r in results if r["kind"] == "scan"]
    raws = [r for r in results if r["kind"] == "raw"]
    ok = all(
        r["objects"] == args.secrets
        and r["observations"] == 3 * args.secrets
        and r["healthy"] == r["observations"]
        for r in scans
    )

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    summary = {
        "benchmark": "k8s_scan",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "secrets": args.secrets,
        "namespaces": args.namespaces,
        "page_size": args.page_size,
        "rounds": args.rounds,
        "valid": ok,
        "fill_seconds": round(info["fill_seconds"], 1),
        "scan_wall_s_median": round(med(scans, "wall_s"), 3),
        "scan_wall_s_range": [
            round(min(r["wall_s"] for r in scans), 3),
            round(max(r["wall_s"] for r in scans), 3),
        ],
        "objects_per_s_median": round(args.secrets / med(scans, "wall_s")),
        "observations": scans[0]["observations"],
        "scan_cpu_s_median": round(med(scans, "cpu_s"), 3),
        "fake_cpu_s_during_scan_median": round(med(scans, "fake_cpu_s"), 3),
        "raw_list_wall_s_median": round(med(raws, "wall_s"), 3),
        "fake_cpu_s_during_raw_median": round(med(raws, "fake_cpu_s"), 3),
        "raw_bytes": raws[0]["bytes"],
        "raw_pages": raws[0]["pages"],
        "rss_before_first_scan_mib": round(baseline, 1),
        "first_scan_peak_rss_mib": round(warm["peak_rss_mib"], 1),
        "first_scan_wall_s": round(warm["wall_s"], 3),
        "peak_rss_mib_max": round(max(r["peak_rss_mib"] for r in scans), 1),
        "other_load_max": round(max(r["other_load"] for r in results), 3),
        "rss_start_mib_median": round(med(scans, "rss_start_mib"), 1),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "lightkube": getattr(lightkube, "__version__", "1.0.1"),
        "cpus": os.cpu_count(),
    }
    print(
        "| round | kind | wall s | Secrets/s | observations | CPU s (scanner) | "
        "fake CPU s | other load | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rate = f"{r['objects_per_s']:.0f}" if r["objects_per_s"] else "-"
        print(
            f"| {r['round']} | {r['kind']} | {r['wall_s']:.2f} | {rate} | "
            f"{r.get('observations', '-')} | {r['cpu_s']:.2f} | {r['fake_cpu_s']:.2f} | "
            f"{r['other_load']:.0%} | {r['peak_rss_mib']:.1f} |"
        )
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
