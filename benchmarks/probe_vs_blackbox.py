"""TLS probing: certpilot's Scanner against Prometheus blackbox_exporter, same fleet, same run.

Fleet: one private nginx (``worker_processes 2`` by default) serving ``--endpoints`` loopback
endpoints, **one port per endpoint**, each with its own certificate from a LocalCA (EC P-256
leaf + intermediate, root in a CA file). One port per endpoint, not SNI, because
blackbox_exporter's tcp prober sends no SNI for an IP target: on SNI ports it would always get
the default server's certificate. Each leaf carries its DNS name and the SAN ``127.0.0.1`` so
that both tools verify the hostname too (certpilot the name it sends as SNI, blackbox the IP).

Work per probe, both tools: TCP connect, full TLS 1.3 handshake (nginx has session caches and
tickets off), chain verification against the same root CA file. certpilot additionally parses
every presented certificate into its facts and judges them (problem codes); blackbox parses
the chain for its ``probe_ssl_*`` metrics. A run is invalid unless every certpilot probe comes
back healthy and every blackbox probe reports ``probe_success 1``.

Rounds alternate (certpilot pool, blackbox, certpilot workers=1, then again), after one untimed
warm-up pass per tool; the certpilot pool is started with ``scanner.runner.warm_up`` before any
timing. Measured per round:

* wall time and probes/s;
* CPU ms per probe: certpilot = main process + its pool worker processes (psutil deltas around
  the round); blackbox = the exporter process only. The aiohttp driver that calls ``/probe``
  is this Python process: its CPU is reported separately and **not** charged to blackbox.
  nginx's CPU (the server side, same for both) is reported for context;
* peak RSS per process: ``VmHWM`` from ``/proc/PID/status``, reset before each round by writing
  ``5`` to ``/proc/PID/clear_refs`` (Linux), so it is the peak within the round;
* "other load": machine-wide busy CPU outside the tool, driver and nginx processes (other
  sessions on a shared machine, kernel softirq), as a share of all CPUs. Each round first waits
  (up to ``--max-wait`` s) until the machine is at most ``--max-load`` busy; a round with a high
  other load is noise, and the medians are what the summary compares.

Every pool round starts fresh TlsProbers (one per chunk), so leaves are parsed and their
signatures verified cold in each round (the parse cache and the verified-link cache live in the
prober); the workers=1 row uses a new Scanner per round for the same reason.

Usage: ``.venv/bin/python benchmarks/probe_vs_blackbox.py [--endpoints 1000] [--concurrency 100]
[--rounds 3] [--workers 0]``. Prints a table and one JSON line (the last line); exits 1 when the
run is invalid. The run directory (1,000 private keys) is removed at the end unless ``--keep``.

Imports of the harness live inside functions: spawn workers re-import this file as
``__mp_main__``, and must not pay for aiohttp or psutil in their RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (  # the standard library only: spawned workers import it too
    MiB,
    cancel_on_sigterm,
    certpilot_openssl,
    cpu_seconds,
    machine_busy_seconds,
    machine_info,
    remove_run_directory,
    reset_peak_rss,
    result_json,
    tool_version,
    vm_hwm,
    wait_quiet_async,
)


@dataclass
class Round:
    tool: str
    workers: int
    index: int
    probes: int
    ok: int
    wall_s: float
    cpu_s: float  # the tool's processes
    driver_cpu_s: float  # blackbox only: this process, which sends the HTTP requests
    server_cpu_s: float  # nginx master + workers
    other_cpu_s: float  # machine-wide busy CPU outside the above: other tenants, softirq
    waited_s: float  # how long the round waited for a quiet machine before starting
    peak_rss: dict[str, int] = field(default_factory=dict)  # process role -> bytes
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.probes / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def other_load(self) -> float:
        """Share of the machine's CPUs busy with something else during the round."""
        return self.other_cpu_s / (self.wall_s * (os.cpu_count() or 1)) if self.wall_s else 0.0


# -- /proc and psutil helpers ------------------------------------------------------------------


def pool_processes(exclude: set[int]) -> tuple[list[int], list[int]]:
    """(spawned pool workers, other helper children such as the resource tracker)."""
    import psutil

    workers: list[int] = []
    helpers: list[int] = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        (workers if "spawn_main" in cmdline else helpers).append(child.pid)
    return workers, helpers


class Meter:
    """CPU deltas per process group, machine-wide busy time, and peak RSS within one round."""

    def __init__(self, tool: list[int], driver: list[int], server: list[int]) -> None:
        self.groups = {"tool": tool, "driver": driver, "server": server}
        self.start_cpu: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> Meter:
        for pid in self.groups["tool"]:
            reset_peak_rss(pid)
        self.start_cpu = {k: cpu_seconds(v) for k, v in self.groups.items()}
        self.start_cpu["machine"] = machine_busy_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = {k: cpu_seconds(v) - self.start_cpu[k] for k, v in self.groups.items()}
        ours = sum(self.cpu.values())
        self.cpu["other"] = max(0.0, machine_busy_seconds() - self.start_cpu["machine"] - ours)


# -- the two tools -----------------------------------------------------------------------------


async def certpilot_round(
    scanner: Any,
    targets: list[Any],
    workers: int,
    index: int,
    exporter_pid: int,
    nginx: list[int],
    waited: float,
) -> Round:
    me = os.getpid()
    # workers=1 probes in this process; the pool (idle then) is not part of that row.
    pool, helpers = pool_processes({exporter_pid}) if workers > 1 else ([], [])
    with Meter([me, *pool, *helpers], [], nginx) as m:
        observations = await scanner.probe(targets)
    failures = Counter(str(code) for o in observations for code in o.codes)
    ok = sum(1 for o in observations if o.healthy and o.leaf is not None and len(o.chain) == 2)
    rss = {"main": vm_hwm(me)}
    for i, pid in enumerate(sorted(pool)):
        rss[f"worker{i}"] = vm_hwm(pid)
    return Round(
        "certpilot",
        workers,
        index,
        len(targets),
        ok,
        m.wall,
        m.cpu["tool"],
        0.0,
        m.cpu["server"],
        m.cpu["other"],
        waited,
        rss,
        dict(failures),
    )


async def blackbox_round(
    session: Any,
    exporter: Any,
    ports: list[int],
    concurrency: int,
    index: int,
    nginx: list[int],
    waited: float,
) -> Round:
    import aiohttp

    assert exporter.pid is not None
    bb = exporter.pid
    urls = iter([exporter.probe_url(f"127.0.0.1:{p}") for p in ports])
    failures: Counter[str] = Counter()
    ok = 0

    async def drive() -> None:
        nonlocal ok
        for url in urls:  # one shared iterator: the event loop is single-threaded
            try:
                async with session.get(url) as resp:
                    body = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as e:
                failures[type(e).__name__] += 1
                continue
            if resp.status == 200 and "\nprobe_success 1\n" in f"\n{body}":
                ok += 1
            else:
                failures[f"http_{resp.status}" if resp.status != 200 else "probe_success 0"] += 1

    with Meter([bb], [os.getpid()], nginx) as m:
        await asyncio.gather(*(drive() for _ in range(concurrency)))
    return Round(
        "blackbox_exporter",
        1,
        index,
        len(ports),
        ok,
        m.wall,
        m.cpu["tool"],
        m.cpu["driver"],
        m.cpu["server"],
        m.cpu["other"],
        waited,
        {"exporter": vm_hwm(bb)},
        dict(failures),
    )


# -- reporting -----------------------------------------------------------------------------


def summarise(rounds: list[Round]) -> dict[str, Any]:
    probes = sum(r.probes for r in rounds)
    rates = [r.rate for r in rounds]
    worker_peaks = [v for r in rounds for k, v in r.peak_rss.items() if k.startswith("worker")]
    out: dict[str, Any] = {
        "tool": rounds[0].tool,
        "workers": rounds[0].workers,
        "rounds": len(rounds),
        "probes": probes,
        "ok": sum(r.ok for r in rounds),
        "wall_s_median": round(statistics.median(r.wall_s for r in rounds), 3),
        "probes_per_s_median": round(statistics.median(rates), 1),
        "probes_per_s_min": round(min(rates), 1),
        "probes_per_s_max": round(max(rates), 1),
        "cpu_ms_per_probe": round(1000 * sum(r.cpu_s for r in rounds) / probes, 3),
        "driver_cpu_ms_per_probe": round(1000 * sum(r.driver_cpu_s for r in rounds) / probes, 3),
        "server_cpu_ms_per_probe": round(1000 * sum(r.server_cpu_s for r in rounds) / probes, 3),
        "other_load_max": round(max(r.other_load for r in rounds), 3),
        "peak_rss_mib": {
            k: round(max(r.peak_rss.get(k, 0) for r in rounds) / MiB, 1)
            for k in sorted({k for r in rounds for k in r.peak_rss})
        },
        "peak_rss_worker_max_mib": round(max(worker_peaks) / MiB, 1) if worker_peaks else None,
        "failures": dict(sum((Counter(r.failures) for r in rounds), Counter())),
    }
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tool | workers | probes (ok) | wall s (median) | probes/s median [min-max] "
        "| CPU ms/probe | driver CPU ms/probe | nginx CPU ms/probe | other load max "
        "| peak RSS MiB |"
    )
    lines = [head, "|" + "---|" * 10]
    for s in rows:
        rss = ", ".join(f"{k} {v:g}" for k, v in s["peak_rss_mib"].items())
        driver = f"{s['driver_cpu_ms_per_probe']:.2f}" if s["tool"] != "certpilot" else "-"
        lines.append(
            f"| {s['tool']} | {s['workers']} | {s['probes']} ({s['ok']}) "
            f"| {s['wall_s_median']:.2f} "
            f"| {s['probes_per_s_median']:.0f} [{s['probes_per_s_min']:.0f}-"
            f"{s['probes_per_s_max']:.0f}] | {s['cpu_ms_per_probe']:.2f} | {driver} "
            f"| {s['server_cpu_ms_per_probe']:.2f} | {s['other_load_max']:.0%} | {rss} |"
        )
    return "\n".join(lines)


def machine(nginx_bin: str, bb_bin: str) -> dict[str, Any]:
    return machine_info(
        openssl=ssl.OPENSSL_VERSION,  # the stdlib's (the aiohttp driver's)
        certpilot_openssl=certpilot_openssl(),
        nginx=tool_version([nginx_bin, "-v"]),
        blackbox_exporter=tool_version([bb_bin, "--version"]),
    )


# -- main --------------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace, work: Path, nginx_bin: str, bb_bin: str, workers: int
) -> list[Round]:
    """Start nginx and the exporter under ``work``, run the alternating rounds, stop both."""
    import aiohttp

    from certpilot.domain.clock import SystemClock
    from scanner.runner import Scanner, ScanOptions, warm_up
    from scanner.tls_endpoint import ProbeSettings
    from tests.support.services import BlackboxExporter, NginxFleet

    rounds: list[Round] = []
    t0 = time.perf_counter()
    fleet = NginxFleet(
        work / "nginx",
        args.endpoints,
        worker_processes=args.nginx_workers,
        extra_sans=["127.0.0.1"],
        binary=nginx_bin,
        start_timeout=60,
    )
    minted = time.perf_counter() - t0
    print(f"minted {args.endpoints} certificates in {minted:.1f}s", file=sys.stderr)
    assert fleet.ca_file is not None
    ca_file = str(fleet.ca_file)
    fleet.issued.clear()  # keys and certificates are on disk; keep this process lean
    targets = fleet.targets()
    ports = [ep.port for ep in fleet.endpoints]
    with fleet, BlackboxExporter(work / "blackbox", ca_file=fleet.ca_file, binary=bb_bin) as bb:
        assert bb.pid is not None
        bb_pid = bb.pid
        nginx_pids = [p for p in [fleet.pid, *fleet.worker_pids()] if p is not None]
        print(
            f"nginx PID {fleet.pid} (workers {fleet.worker_pids()}), "
            f"blackbox_exporter PID {bb.pid} on {bb.url}",
            file=sys.stderr,
        )

        def options(w: int) -> ScanOptions:
            return ScanOptions(
                probe=ProbeSettings(timeout=args.timeout, concurrency=args.concurrency),
                ca_files=(ca_file,),
                use_system_trust=False,
                workers=w,
            )

        clock = SystemClock()
        pooled = Scanner(options(workers), clock)

        async def certpilot(w: int, i: int) -> Round:
            waited = await wait_quiet_async(args.max_load, args.max_wait)
            if w > 1:
                return await certpilot_round(pooled, targets, w, i, bb_pid, nginx_pids, waited)
            # In-process: a new Scanner per round, so its parse cache starts cold like the
            # pool's (which makes a new TlsProber per chunk).
            with Scanner(options(1), clock) as single:
                return await certpilot_round(single, targets, 1, i, bb_pid, nginx_pids, waited)

        timeout = aiohttp.ClientTimeout(total=args.timeout * 3)
        connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                if workers > 1:
                    warm_up(pooled, workers)
                # Untimed warm-up pass per tool: imports, anchors, Go runtime, nginx workers.
                n_warm = min(len(targets), 200)
                await pooled.probe(targets[:n_warm])
                await blackbox_round(session, bb, ports[:n_warm], args.concurrency, -1, [], 0.0)
                for i in range(args.rounds):
                    # certpilot pool, blackbox, certpilot in-process: each after a quiet check.
                    rounds.append(await certpilot(workers, i))
                    print(_progress(rounds[-1]), file=sys.stderr)
                    waited = await wait_quiet_async(args.max_load, args.max_wait)
                    rounds.append(
                        await blackbox_round(
                            session, bb, ports, args.concurrency, i, nginx_pids, waited
                        )
                    )
                    print(_progress(rounds[-1]), file=sys.stderr)
                    if workers != 1:
                        rounds.append(await certpilot(1, i))
                        print(_progress(rounds[-1]), file=sys.stderr)
            finally:
                pooled.close()
    return rounds


async def run(args: argparse.Namespace) -> int:
    from tests.support.services import find_binary

    nginx_bin = find_binary("nginx")
    bb_bin = find_binary("prometheus-blackbox-exporter") or find_binary("blackbox_exporter")
    if nginx_bin is None or bb_bin is None:
        print("needs nginx and prometheus-blackbox-exporter (apt-get install ...)", file=sys.stderr)
        return 2
    workers = args.workers or os.cpu_count() or 1
    # SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so nginx and the exporter are stopped.
    cancel_on_sigterm()
    info = machine(nginx_bin, bb_bin)
    work = Path(tempfile.mkdtemp(prefix="probe-vs-blackbox-", dir=args.workdir))
    try:
        rounds = await measure(args, work, nginx_bin, bb_bin, workers)
    finally:
        remove_run_directory(work, args.keep)  # 1,000 private keys: do not leave them

    groups: dict[tuple[str, int], list[Round]] = {}
    for r in rounds:
        groups.setdefault((r.tool, r.workers), []).append(r)
    order = sorted(groups, key=lambda k: (k[0] != "certpilot", -k[1]))
    rows = [summarise(groups[k]) for k in order]
    by = {(s["tool"], s["workers"]): s for s in rows}
    cp = by[("certpilot", workers)]
    bbs = by[("blackbox_exporter", 1)]
    valid = all(s["ok"] == s["probes"] for s in rows)
    ratio = cp["probes_per_s_median"] / bbs["probes_per_s_median"]
    cpu_ratio = cp["cpu_ms_per_probe"] / bbs["cpu_ms_per_probe"]
    print()
    print(
        f"TLS probing: {args.endpoints} nginx endpoints (one port each, EC P-256, leaf + "
        f"intermediate), concurrency {args.concurrency}, {args.rounds} rounds, "
        f"nginx worker_processes {args.nginx_workers}, {info['cpus']} CPUs ({info['cpu_model']})"
    )
    print(table(rows))
    print(
        f"certpilot (workers={workers}) / blackbox_exporter: {ratio:.2f}x probes/s, "
        f"{cpu_ratio:.2f}x CPU per probe; run {'VALID' if valid else 'INVALID: not all healthy'}"
    )
    print(
        result_json(
            "probe_vs_blackbox",
            info,
            params={
                "endpoints": args.endpoints,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "workers": workers,
                "nginx_worker_processes": args.nginx_workers,
                "timeout_s": args.timeout,
                "layout": "one port per endpoint",
            },
            valid=valid,
            ratio_probes_per_s=round(ratio, 3),
            ratio_cpu_per_probe=round(cpu_ratio, 3),
            results=rows,
            rounds=[asdict(r) | {"probes_per_s": round(r.rate, 1)} for r in rounds],
        )
    )
    return 0 if valid else 1


def _progress(r: Round) -> str:
    return (
        f"round {r.index}: {r.tool} (workers={r.workers}) {r.ok}/{r.probes} ok, "
        f"{r.wall_s:.2f}s, {r.rate:.0f}/s, {1000 * r.cpu_s / r.probes:.2f} ms CPU/probe, "
        f"other load {r.other_load:.0%} (waited {r.waited_s:.0f}s for a quiet machine)"
        + (f", failures {r.failures}" if r.failures else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--endpoints", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="certpilot pool size; 0 = one per CPU")
    p.add_argument("--nginx-workers", default="2", help="nginx worker_processes (or auto)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-probe timeout, both tools")
    p.add_argument(
        "--max-load",
        type=float,
        default=0.10,
        help="start a round only when the machine is at most this busy (0-1; other sessions)",
    )
    p.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for that")
    p.add_argument("--workdir", default=None, help="parent of the run's private directory")
    p.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs)")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
