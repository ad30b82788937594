"""Fleet scan at scale: 10,000 TLS endpoints scanned and recorded the way ``certpilot run`` does.

Issue 8, item 3 ("load"). Targets: a full scan of 10,000 endpoints on this 2-core machine within
60 s, and every certpilot process within 200 MiB of memory.

Fleet: one private nginx (``tests.support.services.NginxFleet``, ``worker_processes 2``) serving
``--endpoints`` TLS endpoints as **SNI names spread over ``--sni-ports`` ports** (round robin;
10,000 names over 10 ports by default), each with its own EC P-256 leaf from a LocalCA, served
with its intermediate; SANs = its name + ``127.0.0.1``. Session caches and tickets are off, so
every probe is a full TLS 1.3 handshake. NginxFleet sizes ``worker_connections`` to the fleet
(``max(1024, endpoints)`` + one per port) and ``worker_rlimit_nofile`` to twice that; this
process raises its own ``RLIMIT_NOFILE`` soft limit to the hard limit, which nginx's master
inherits. The certificates and keys are minted in a separate (spawned) process, so that this
process, which plays the service's main process, does not carry the minting's heap; before the
first row it imports ``certpilot.app`` as the service has (``main_rss_before_mib``).

What is measured, in this order, with one ``scanner.runner.Scanner`` kept for the whole run
(the service keeps its pool too), options as ``certpilot.app.scan_options`` builds them from the
default settings (``concurrency 100``, ``timeout 5``, ``workers --workers``; 0 = one per usable
CPU) except that the CA file is the fleet's root and the system trust store is off:

1. ``scan (cold)``: ``Scanner.probe_chunks`` of the whole fleet, each chunk judged and dropped
   as it comes, including the start of the worker pool (what the first cycle after
   ``certpilot run`` starts pays);
2. ``sqlite first`` / ``sqlite steady``: ``certpilot.app.scan_and_record`` as the service's scan
   cycle calls it (``Metrics`` on a fresh registry, ``issued`` empty, ``prune=True``,
   ``configured`` = every target, CRL checks on as by default: the fleet's certificates name no
   CRL, so they cost only the look for one) into a fresh SQLite file (``first``: every location,
   certificate, sighting and event is new), then again (``steady``: nothing changed, the
   periodic rescan); ``keep=False`` as the service's cycles (endpoints recorded chunk by chunk
   as the pool hands them on; a row is valid when every location was recorded without a
   problem). Then one ``/metrics`` exposition (``certpilot.obs.exposition`` of that registry,
   the chunks the service streams; it reads the inventory) is timed, with this process's peak
   RSS during it (``VmHWM`` reset just before) in its own column: "peak RSS" is the cycle's,
   "main RSS after" what this process holds after the row, results dropped;
3. ``postgres first`` / ``postgres steady``: the same into an empty database of a throwaway
   PostgreSQL cluster (``tests.support.postgres.PostgresCluster``, ``fsync=off``), when the
   server binaries are installed (``--no-postgres`` skips it);
4. peer check: ``--peer-sample`` endpoints (default 1,000, every k-th one, so all ports) probed
   alternately by certpilot's pool (``Scanner.probe``) and by blackbox_exporter (its ``tcp``
   prober with TLS, one module per endpoint whose ``tls_config.server_name`` is the endpoint's
   name: blackbox sends no SNI for an IP target, and SNI is what selects the certificate;
   ``ca_file`` = the fleet's root, so Go verifies the chain and the name as certpilot does),
   driven by an aiohttp client at the same concurrency (100), ``--peer-rounds`` rounds each,
   medians compared, like ``benchmarks/probe_vs_blackbox.py`` (which has the details).

For each row: wall time of the scan (the ``Scanner.scan`` inside the cycle, timed by a thin
subclass) and of the whole cycle (scan + reconcile + ``Inventory.record`` + SLI events), probes/s
(endpoints / scan wall time), CPU seconds of certpilot's processes (this process + its pool
workers), of nginx, and of PostgreSQL; **peak RSS of each process**: psutil samples this
process and all its children every 0.2 s (a thread of this process), plus ``VmHWM`` (reset
before each row) as a check that no short peak was missed. "other load" is machine-wide busy CPU
outside all of the above (other sessions, kernel softirq), as a share of both CPUs. Every row
first waits (up to ``--max-wait`` s) until the machine is at most ``--max-busy`` busy; the
1-minute load average at the start and end of each row is printed too (this benchmark's own
work raises it: two pool workers and two nginx workers are busy during a scan). Before the
first row the run waits (up to ``--max-wait-load`` s) for the 1-minute load average to fall
below ``--max-load1``.

A row is valid when every observation is healthy with a 2-certificate chain (and, for the peer,
every blackbox probe reports ``probe_success 1``). The run directory (10,000 private keys) is
removed at the end unless ``--keep``.

    .venv/bin/python benchmarks/fleet_10k.py                  # 10,000 endpoints
    .venv/bin/python benchmarks/fleet_10k.py --quick          # 1,000 endpoints, quick check

Prints a table and one JSON line (the last line); exits 1 when the run is invalid.

Imports of the harness live inside functions: spawn workers re-import this file as
``__mp_main__``, and must not pay for aiohttp or psutil in their RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._common import (  # the standard library only: spawned workers import it too
    MiB,
    cancel_on_sigterm,
    certpilot_openssl,
    machine_busy_seconds,
    machine_info,
    remove_run_directory,
    reset_peak_rss,
    result_json,
    tool_version,
    vm_hwm,
    wait_load1,
    wait_quiet_async,
)

if TYPE_CHECKING:
    from certpilot.domain.model import EndpointTarget, Observation
    from scanner.runner import Scanner

TARGET_SECONDS = 60.0
TARGET_RSS_MIB = 200.0


# -- processes: sampling RSS and CPU -----------------------------------------------------------


def rss_now(pid: int | None = None) -> float:
    """Current RSS in MiB (this process by default)."""
    import psutil

    return round(int(psutil.Process(pid).memory_info().rss) / MiB, 1)


@dataclass
class ProcStat:
    role: str
    group: str
    cpu0: float
    cpu: float
    rss_max: int


class Sampler:
    """Samples RSS and CPU of this process, its children and the named server processes every
    ``period`` seconds in a thread, and keeps per process the peak RSS and the last CPU time
    (a process that exits keeps what its last sample saw).

    Groups: ``certpilot`` (this process and its children, except ``exclude``: the pool workers
    are spawned children), ``nginx`` (master + workers) and ``postgres`` (the postmaster and its
    children, which come and go)."""

    def __init__(
        self,
        *,
        nginx: Sequence[int] = (),
        postgres: int | None = None,
        exclude: Sequence[int] = (),
        period: float = 0.2,
    ) -> None:
        import psutil

        self._psutil = psutil
        self.period = period
        self.nginx = list(nginx)
        self.postgres = postgres
        self.exclude = set(exclude)
        self.me = psutil.Process()
        self.stats: dict[int, ProcStat] = {}
        self._procs: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.samples = 0
        self._members_cache: list[tuple[int, str, str]] = []
        self._members_at = -1e9

    def _proc(self, pid: int) -> Any:
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = self._psutil.Process(pid)
        return p

    def _members(self) -> list[tuple[int, str, str]]:
        ps = self._psutil
        out: list[tuple[int, str, str]] = [(self.me.pid, "main", "certpilot")]
        try:
            children = self.me.children(recursive=True)
        except ps.Error:
            children = []
        workers = 0
        for child in sorted(children, key=lambda c: c.pid):
            if child.pid in self.exclude:
                continue
            try:
                cmd = " ".join(child.cmdline())
            except ps.Error:
                continue
            if "spawn_main" in cmd:
                out.append((child.pid, f"worker{workers}", "certpilot"))
                workers += 1
            elif "resource_tracker" in cmd:
                out.append((child.pid, "resource_tracker", "certpilot"))
            else:
                out.append((child.pid, f"child {child.pid}", "certpilot"))
        for i, pid in enumerate(self.nginx):
            out.append((pid, "nginx master" if i == 0 else f"nginx worker{i - 1}", "nginx"))
        if self.postgres is not None:
            out.append((self.postgres, "postmaster", "postgres"))
            try:
                for c in ps.Process(self.postgres).children(recursive=True):
                    out.append((c.pid, f"postgres {c.pid}", "postgres"))
            except ps.Error:
                pass
        return out

    def sample(self, *, refresh: bool = False) -> None:
        ps = self._psutil
        # Listing children scans /proc: refresh the member list every second, not every sample
        # (a process missed in between is still covered by its VmHWM).
        now = time.monotonic()
        if refresh or now - self._members_at >= 1.0:
            self._members_cache, self._members_at = self._members(), now
        for pid, role, group in self._members_cache:
            try:
                p = self._proc(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    rss = p.memory_info().rss
            except ps.Error:
                continue
            cpu = t.user + t.system
            st = self.stats.get(pid)
            if st is None:
                # A process first seen after the first sample was started during the row (a
                # pool worker, a PostgreSQL backend): all of its CPU time is the row's.
                self.stats[pid] = ProcStat(role, group, cpu if self.samples == 0 else 0.0, cpu, rss)
            else:
                st.role = role  # worker numbering follows the PID order
                st.cpu = cpu
                st.rss_max = max(st.rss_max, rss)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> Sampler:
        self.busy0 = machine_busy_seconds()
        for pid, _role, group in self._members():
            if group == "certpilot":
                reset_peak_rss(pid)
        self.sample()
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(refresh=True)
        self.wall = time.perf_counter() - self._t0
        self.busy = machine_busy_seconds() - self.busy0

    def cpu(self, group: str) -> float:
        return sum(s.cpu - s.cpu0 for s in self.stats.values() if s.group == group)

    def other_load(self) -> float:
        ours = sum(s.cpu - s.cpu0 for s in self.stats.values())
        other = max(0.0, self.busy - ours)
        return other / (self.wall * (os.cpu_count() or 1)) if self.wall else 0.0

    def peaks(self) -> dict[str, float]:
        """Peak RSS (MiB) per certpilot process: the larger of the samples and VmHWM."""
        out: dict[str, float] = {}
        for pid, s in sorted(self.stats.items()):
            if s.group != "certpilot" or s.role.startswith("child"):
                continue
            peak = max(s.rss_max, vm_hwm(pid))
            out[s.role] = round(peak / MiB, 1)
        return out

    def sampled_peaks(self) -> dict[str, float]:
        return {
            s.role: round(s.rss_max / MiB, 1)
            for _pid, s in sorted(self.stats.items())
            if not s.role.startswith(("child", "postgres "))
        }


# -- rows ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    endpoints: int
    ok: int
    scan_s: float
    cycle_s: float | None  # scan + reconcile + record + SLI events; None for a bare scan
    cpu_s: float  # certpilot: this process + pool workers
    nginx_cpu_s: float
    db_cpu_s: float  # PostgreSQL server processes
    other_load: float
    load1: tuple[float, float]  # 1-minute load average at the start and end of the row
    peak_rss_mib: dict[str, float]
    sampled_rss_mib: dict[str, float]
    events: int = 0
    scrape_s: float | None = None
    scrape_bytes: int | None = None
    scrape_peak_mib: float | None = None  # this process's VmHWM during one /metrics scrape
    rss_end_mib: float = 0.0  # this process's RSS after the row, its results dropped
    waited_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.endpoints / self.scan_s if self.scan_s else 0.0

    def record(self) -> dict[str, Any]:
        return {
            "row": self.name,
            "endpoints": self.endpoints,
            "ok": self.ok,
            "scan_s": round(self.scan_s, 2),
            "cycle_s": round(self.cycle_s, 2) if self.cycle_s is not None else None,
            "record_s": round(self.cycle_s - self.scan_s, 2) if self.cycle_s is not None else None,
            "probes_per_s": round(self.rate, 1),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_ms_per_probe": round(1000 * self.cpu_s / self.endpoints, 3),
            "nginx_cpu_s": round(self.nginx_cpu_s, 2),
            "db_cpu_s": round(self.db_cpu_s, 2),
            "other_load": round(self.other_load, 3),
            "load1": [round(x, 2) for x in self.load1],
            "peak_rss_mib": self.peak_rss_mib,
            "sampled_rss_mib": self.sampled_rss_mib,
            "events": self.events,
            "scrape_s": round(self.scrape_s, 3) if self.scrape_s is not None else None,
            "scrape_bytes": self.scrape_bytes,
            "scrape_peak_rss_mib": self.scrape_peak_mib,
            "rss_end_mib": self.rss_end_mib,
            "waited_s": round(self.waited_s, 1),
            "failures": self.failures,
        }


def judge(observations: Sequence[Observation]) -> tuple[int, dict[str, int]]:
    ok = sum(1 for o in observations if o.healthy and o.leaf is not None and len(o.chain) == 2)
    failures = Counter(str(code) for o in observations for code in o.codes)
    return ok, dict(failures)


async def wait_quiet(max_busy: float, max_wait: float) -> float:
    """Wait until the machine is at most ``max_busy`` busy (other sessions share it)."""
    return await wait_quiet_async(max_busy, max_wait, poll=1.0)


def make_timed_scanner(options: Any, clock: Any) -> Scanner:
    """A ``Scanner`` that remembers how long its last ``probe_chunks`` took (the probing part
    of a ``scan_and_record`` cycle: from the first probe to the last chunk handed on; the
    cycle records each chunk meanwhile, while the pool probes the next ones)."""
    from scanner.runner import Scanner

    class TimedScanner(Scanner):
        last_scan_s = 0.0

        async def probe_chunks(
            self, targets: Sequence[EndpointTarget], progress: Any = None
        ) -> AsyncIterator[list[Observation]]:
            t0 = time.perf_counter()
            try:
                async for chunk in super().probe_chunks(targets, progress):
                    yield chunk
            finally:
                self.last_scan_s = time.perf_counter() - t0

    return TimedScanner(options, clock)


# -- blackbox with one module per endpoint -------------------------------------------------------


def write_blackbox_config(path: Path, ca_file: Path, names: Sequence[str], timeout: float) -> None:
    """One ``tcp`` + TLS module per endpoint, ``server_name`` = the endpoint's name: the SNI
    that selects its certificate on a shared port, and the name Go checks the leaf against."""
    import yaml

    modules = {
        f"tls{i}": {
            "prober": "tcp",
            "timeout": f"{timeout:g}s",
            "tcp": {
                "preferred_ip_protocol": "ip4",
                "ip_protocol_fallback": False,
                "tls": True,
                "tls_config": {
                    "insecure_skip_verify": False,
                    "ca_file": str(ca_file),
                    "server_name": name,
                },
            },
        }
        for i, name in enumerate(names)
    }
    path.write_text(yaml.safe_dump({"modules": modules}, sort_keys=False))


async def blackbox_pass(session: Any, base_url: str, ports: Sequence[int], concurrency: int) -> int:
    """Probe ``tls{i}`` on ``127.0.0.1:ports[i]`` for every ``i``; returns the successes."""
    import aiohttp

    urls = iter(
        f"{base_url}/probe?module=tls{i}&target=127.0.0.1:{port}" for i, port in enumerate(ports)
    )
    ok = 0

    async def drive() -> None:
        nonlocal ok
        for url in urls:  # one shared iterator: the event loop is single-threaded
            try:
                async with session.get(url) as resp:
                    body = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                continue
            if resp.status == 200 and "\nprobe_success 1\n" in f"\n{body}":
                ok += 1

    await asyncio.gather(*(drive() for _ in range(concurrency)))
    return ok


@dataclass
class PeerRound:
    tool: str
    probes: int
    ok: int
    wall_s: float
    cpu_s: float
    driver_cpu_s: float
    other_load: float

    @property
    def rate(self) -> float:
        return self.probes / self.wall_s if self.wall_s else 0.0


async def peer_check(
    args: argparse.Namespace,
    work: Path,
    fleet: Any,
    scanner: Scanner,
    bb_bin: str,
) -> list[PeerRound]:
    """certpilot's pool and blackbox_exporter, alternately, on the same sample of endpoints."""
    import aiohttp
    import psutil

    from tests.support.services import BlackboxExporter

    n = min(args.peer_sample, len(fleet.endpoints))
    step = max(1, len(fleet.endpoints) // n)
    sample = fleet.endpoints[::step][:n]
    targets = [ep.target() for ep in sample]
    bb = BlackboxExporter(work / "blackbox", binary=bb_bin, start_timeout=30)
    write_blackbox_config(
        bb.config_path, fleet.ca_file, [ep.server_name for ep in sample], args.timeout
    )
    rounds: list[PeerRound] = []
    with bb:
        assert bb.pid is not None
        exporter = psutil.Process(bb.pid)
        nginx = nginx_pids(fleet, args.nginx_workers)
        ports = [ep.port for ep in sample]
        timeout = aiohttp.ClientTimeout(total=args.timeout * 3)
        connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # untimed warm-up of both
            await scanner.probe(targets[:200])
            await blackbox_pass(session, bb.url, ports[:200], args.concurrency)
            for i in range(args.peer_rounds):
                for tool in ("certpilot", "blackbox_exporter"):
                    await wait_quiet(args.max_busy, args.max_wait)
                    with Sampler(nginx=nginx, exclude=[bb.pid], period=0.5) as s:
                        e0 = exporter.cpu_times()
                        if tool == "certpilot":
                            obs = await scanner.probe(targets)
                            ok, _ = judge(obs)
                        else:
                            ok = await blackbox_pass(session, bb.url, ports, args.concurrency)
                        e1 = exporter.cpu_times()
                    bb_cpu = (e1.user + e1.system) - (e0.user + e0.system)
                    ours = s.cpu("certpilot")
                    if tool == "certpilot":
                        r = PeerRound(tool, len(targets), ok, s.wall, ours, 0.0, 0.0)
                    else:
                        # this process drove the HTTP requests: its CPU is the driver's
                        r = PeerRound(tool, len(targets), ok, s.wall, bb_cpu, ours, 0.0)
                    other = max(0.0, s.busy - ours - s.cpu("nginx") - bb_cpu)
                    r.other_load = other / (s.wall * (os.cpu_count() or 1))
                    rounds.append(r)
                    print(
                        f"peer round {i}: {tool} {ok}/{len(targets)} ok, {s.wall:.2f}s, "
                        f"{r.rate:.0f}/s, {1000 * r.cpu_s / r.probes:.2f} ms CPU/probe, "
                        f"other load {r.other_load:.0%}",
                        file=sys.stderr,
                    )
    return rounds


def peer_summary(rounds: list[PeerRound]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("certpilot", "blackbox_exporter"):
        rs = [r for r in rounds if r.tool == tool]
        if not rs:
            continue
        probes = sum(r.probes for r in rs)
        out[tool] = {
            "rounds": len(rs),
            "probes": probes,
            "ok": sum(r.ok for r in rs),
            "probes_per_s_median": round(statistics.median(r.rate for r in rs), 1),
            "probes_per_s_min": round(min(r.rate for r in rs), 1),
            "probes_per_s_max": round(max(r.rate for r in rs), 1),
            "cpu_ms_per_probe": round(1000 * sum(r.cpu_s for r in rs) / probes, 3),
            "driver_cpu_ms_per_probe": round(1000 * sum(r.driver_cpu_s for r in rs) / probes, 3),
            "other_load_max": round(max(r.other_load for r in rs), 3),
        }
    if len(out) == 2:
        cp, bb = out["certpilot"], out["blackbox_exporter"]
        out["ratio_probes_per_s"] = round(cp["probes_per_s_median"] / bb["probes_per_s_median"], 3)
        out["ratio_cpu_per_probe"] = round(cp["cpu_ms_per_probe"] / bb["cpu_ms_per_probe"], 3)
    return out


# -- the measured cycles -----------------------------------------------------------------------


async def bare_scan(
    args: argparse.Namespace, scanner: Scanner, targets: list[Any], nginx: list[int]
) -> Row:
    waited = await wait_quiet(args.max_busy, args.max_wait)
    la0 = os.getloadavg()[0]
    ok, failures = 0, Counter[str]()
    with Sampler(nginx=nginx) as s:
        # Chunk by chunk, as the service's cycles take them: nothing holds the whole fleet.
        async for chunk in scanner.probe_chunks(targets):
            n, f = judge(chunk)
            ok += n
            failures.update(f)
    peaks, sampled = s.peaks(), s.sampled_peaks()
    return Row(
        "scan (cold)",
        len(targets),
        ok,
        s.wall,
        None,
        s.cpu("certpilot"),
        s.cpu("nginx"),
        0.0,
        s.other_load(),
        (la0, os.getloadavg()[0]),
        peaks,
        sampled,
        rss_end_mib=rss_now(),
        waited_s=waited,
        failures=dict(failures),
    )


async def record_cycles(
    args: argparse.Namespace,
    backend: str,
    url: str,
    scanner: Scanner,
    targets: list[Any],
    nginx: list[int],
    postgres: int | None,
) -> list[Row]:
    """Two ``scan_and_record`` cycles into a fresh inventory: ``first`` and ``steady``."""
    from prometheus_client import CollectorRegistry

    from certpilot.app import scan_and_record
    from certpilot.domain.clock import SystemClock
    from certpilot.obs import Metrics, exposition
    from certpilot.store import Inventory
    from scanner.crl import CRLCache

    clock = SystemClock()
    me = os.getpid()
    inventory = Inventory.open(url)
    rows: list[Row] = []
    stack = contextlib.AsyncExitStack()
    # CRL checks are the service's default (scan.crl_checks: true)
    crl_cache = await stack.enter_async_context(CRLCache(clock))
    try:
        inventory.wait_checkpoint()
        registry = CollectorRegistry()
        metrics = Metrics(registry, inventory, clock)
        for name in ("first", "steady"):
            waited = await wait_quiet(args.max_busy, args.max_wait)
            la0 = os.getloadavg()[0]
            with Sampler(nginx=nginx, postgres=postgres) as s:
                res = await scan_and_record(
                    scanner,
                    inventory,
                    metrics,
                    targets,
                    clock,
                    env={},
                    issued=(),
                    crl_cache=crl_cache,
                    prune=True,
                    configured=targets,
                    keep=False,
                )
            peaks, sampled = s.peaks(), s.sampled_peaks()
            scan_s = float(getattr(scanner, "last_scan_s", 0.0))
            failures = dict(res.codes)
            ok = res.items - res.problems if res.items == len(targets) else 0
            events = len(res.events)
            del res
            checkpoint = inventory.wait_checkpoint()
            # One Prometheus scrape, as the service answers /metrics: it reads the inventory
            # and renders every location's series. Its peak is reported on its own.
            reset_peak_rss(me)
            t0 = time.perf_counter()
            size = sum(len(chunk) for chunk in exposition(registry)[1])
            scrape = time.perf_counter() - t0
            scrape_peak = round(vm_hwm(me) / MiB, 1)
            rows.append(
                Row(
                    f"{backend} {name}",
                    len(targets),
                    ok,
                    scan_s,
                    s.wall,
                    s.cpu("certpilot"),
                    s.cpu("nginx"),
                    s.cpu("postgres"),
                    s.other_load(),
                    (la0, os.getloadavg()[0]),
                    peaks,
                    sampled,
                    events=events,
                    scrape_s=scrape,
                    scrape_bytes=size,
                    scrape_peak_mib=scrape_peak,
                    rss_end_mib=rss_now(),
                    waited_s=waited,
                    failures=failures,
                )
            )
            print(_progress(rows[-1]) + f"; WAL checkpoint {checkpoint:.2f}s", file=sys.stderr)
    finally:
        await stack.aclose()
        inventory.close()
    return rows


@contextlib.contextmanager
def postgres_cluster(work: Path, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from tests.support.postgres import PostgresCluster, find_pg_bin

    initdb = find_pg_bin("initdb")
    if initdb is None or find_pg_bin("pg_ctl") is None:
        print("PostgreSQL binaries not found: skipping the PostgreSQL rows", file=sys.stderr)
        yield None
        return
    with PostgresCluster(work / "pg", str(Path(initdb).parent)) as cluster:
        yield cluster


def nginx_pids(fleet: Any, workers: str, timeout: float = 30.0) -> list[int]:
    """The master and its workers: the master accepts on its ports before it has forked every
    worker, so wait until they are all there."""
    expected = int(workers) if workers.isdigit() else 0
    deadline = time.monotonic() + timeout
    while len(fleet.worker_pids()) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in [fleet.pid, *fleet.worker_pids()] if p is not None]


def _mint_fleet(kwargs: dict[str, Any]) -> Any:
    """Body of the minting process: certificates, keys, nginx config on disk; the fleet
    object comes back without its CA and keys (``NginxFleet`` pickles without them)."""
    from tests.support.services import NginxFleet

    fleet = NginxFleet(**kwargs)
    fleet.issued.clear()
    fleet.ca = None
    return fleet


def build_fleet(args: argparse.Namespace, work: Path, nginx_bin: str) -> Any:
    """Mint the fleet in a separate (spawned) process, so that this process, which is the
    service's main process in the measurement, does not carry the minting's heap: 10,000 keys
    and certificates leave tens of MiB of freed-but-kept memory behind."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    kwargs = {
        "workdir": work / "nginx",
        "endpoints": args.endpoints,
        "sni_ports": args.sni_ports,
        "worker_processes": args.nginx_workers,
        "extra_sans": ["127.0.0.1"],
        "binary": nginx_bin,
        "start_timeout": 600,
    }
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_mint_fleet, kwargs).result()


def raise_nofile() -> tuple[int, int]:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit (nginx's master inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def measure(
    args: argparse.Namespace, work: Path, nginx_bin: str, bb_bin: str | None
) -> tuple[list[Row], list[PeerRound], dict[str, Any]]:
    from certpilot.domain.clock import SystemClock
    from scanner.runner import ScanOptions, usable_cpus
    from scanner.tls_endpoint import ProbeSettings

    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    fleet = build_fleet(args, work, nginx_bin)
    info["mint_s"] = round(time.perf_counter() - t0, 1)
    assert fleet.ca_file is not None
    conf = fleet.render_config()
    info["nginx_worker_connections"] = int(conf.split("worker_connections ")[1].split(";")[0])
    info["nginx_worker_rlimit_nofile"] = int(conf.split("worker_rlimit_nofile ")[1].split(";")[0])
    targets = fleet.targets()
    print(
        f"minted {args.endpoints} certificates in {info['mint_s']}s; {len(fleet.ports)} SNI ports",
        file=sys.stderr,
    )
    rows: list[Row] = []
    peer: list[PeerRound] = []
    t0 = time.perf_counter()
    with fleet:
        info["nginx_start_s"] = round(time.perf_counter() - t0, 1)
        nginx = nginx_pids(fleet, args.nginx_workers)
        print(f"nginx up in {info['nginx_start_s']}s: PIDs {nginx}", file=sys.stderr)
        options = ScanOptions(
            probe=ProbeSettings(timeout=args.timeout, concurrency=args.concurrency),
            ca_files=(str(fleet.ca_file),),
            use_system_trust=False,
            workers=args.workers,
        )
        info["workers_effective"] = args.workers or usable_cpus()
        # What the service's main process has loaded before its first scan.
        import prometheus_client  # noqa: F401

        import certpilot.app  # noqa: F401

        info["main_rss_before_mib"] = rss_now()
        scanner = make_timed_scanner(options, SystemClock())
        try:
            waited, la = await wait_load1(args.max_load1, args.max_wait_load)
            info["waited_for_load_s"] = round(waited, 1)
            info["load1_at_start"] = round(la, 2)
            print(f"load average {la:.2f} after waiting {waited:.0f}s", file=sys.stderr)
            rows.append(await bare_scan(args, scanner, targets, nginx))
            print(_progress(rows[-1]), file=sys.stderr)
            db = work / "inventory.db"
            rows += await record_cycles(
                args, "sqlite", f"sqlite:///{db}", scanner, targets, nginx, None
            )
            info["sqlite_bytes"] = sum(
                p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()
            )
            with postgres_cluster(work, not args.no_postgres) as cluster:
                if cluster is not None:
                    url = cluster.database("fleet")
                    rows += await record_cycles(
                        args, "postgres", url, scanner, targets, nginx, cluster.pid
                    )
            nginx_rss = {}
            import psutil

            for i, pid in enumerate(nginx):
                with contextlib.suppress(psutil.Error):
                    nginx_rss["master" if i == 0 else f"worker{i - 1}"] = round(
                        psutil.Process(pid).memory_info().rss / MiB, 1
                    )
            info["nginx_rss_mib"] = nginx_rss
            if bb_bin is not None and args.peer_sample > 0:
                peer = await peer_check(args, work, fleet, scanner, bb_bin)
        finally:
            scanner.close()
    return rows, peer, info


def _progress(r: Row) -> str:
    cycle = f", cycle {r.cycle_s:.2f}s ({r.events} events)" if r.cycle_s is not None else ""
    return (
        f"{r.name}: {r.ok}/{r.endpoints} ok, scan {r.scan_s:.2f}s ({r.rate:.0f}/s){cycle}, "
        f"CPU {r.cpu_s:.1f}s, peak RSS {r.peak_rss_mib}, other load {r.other_load:.0%}, "
        f"load1 {r.load1[0]:.2f}->{r.load1[1]:.2f}"
        + (f", failures {r.failures}" if r.failures else "")
    )


def table(rows: list[Row]) -> str:
    head = (
        "| row | endpoints (ok) | scan s | scan+record s | probes/s | CPU s (ms/probe) "
        "| nginx CPU s | PostgreSQL CPU s | events | other load | load1 start-end "
        "| peak RSS MiB | main RSS after MiB | /metrics scrape s (MB) | main peak in scrape MiB |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        cycle = f"{r.cycle_s:.2f}" if r.cycle_s is not None else "-"
        scrape = "-"
        if r.scrape_s is not None and r.scrape_bytes is not None:
            scrape = f"{r.scrape_s:.2f} ({r.scrape_bytes / 1e6:.1f})"
        scrape_peak = f"{r.scrape_peak_mib:g}" if r.scrape_peak_mib is not None else "-"
        rss = ", ".join(f"{k} {v:g}" for k, v in r.peak_rss_mib.items())
        db = f"{r.db_cpu_s:.1f}" if r.name.startswith("postgres") else "-"
        lines.append(
            f"| {r.name} | {r.endpoints} ({r.ok}) | {r.scan_s:.2f} | {cycle} | {r.rate:.0f} "
            f"| {r.cpu_s:.1f} ({1000 * r.cpu_s / r.endpoints:.2f}) | {r.nginx_cpu_s:.1f} | {db} "
            f"| {r.events} | {r.other_load:.0%} | {r.load1[0]:.2f}-{r.load1[1]:.2f} | {rss} "
            f"| {r.rss_end_mib:g} | {scrape} | {scrape_peak} |"
        )
    return "\n".join(lines)


def peer_table(s: dict[str, Any]) -> str:
    lines = [
        "| tool | probes (ok) | probes/s median [min-max] | CPU ms/probe | driver CPU ms/probe "
        "| other load max |",
        "|" + "---|" * 6,
    ]
    for tool in ("certpilot", "blackbox_exporter"):
        if tool not in s:
            continue
        t = s[tool]
        driver = f"{t['driver_cpu_ms_per_probe']:.2f}" if tool != "certpilot" else "-"
        lines.append(
            f"| {tool} | {t['probes']} ({t['ok']}) | {t['probes_per_s_median']:.0f} "
            f"[{t['probes_per_s_min']:.0f}-{t['probes_per_s_max']:.0f}] "
            f"| {t['cpu_ms_per_probe']:.2f} | {driver} | {t['other_load_max']:.0%} |"
        )
    return "\n".join(lines)


def machine(nginx_bin: str) -> dict[str, Any]:
    import sqlite3

    return machine_info(
        certpilot_openssl=certpilot_openssl(),
        sqlite=sqlite3.sqlite_version,
        nginx=tool_version([nginx_bin, "-v"]),
    )


async def run(args: argparse.Namespace) -> int:
    from tests.support.services import find_binary

    nginx_bin = find_binary("nginx")
    if nginx_bin is None:
        print("needs nginx (apt-get install nginx)", file=sys.stderr)
        return 2
    bb_bin = find_binary("prometheus-blackbox-exporter") or find_binary("blackbox_exporter")
    if bb_bin is None:
        print("blackbox_exporter not found: no peer rows", file=sys.stderr)
    nofile = raise_nofile()
    cancel_on_sigterm()  # SIGTERM unwinds like Ctrl-C: nginx and PostgreSQL are stopped
    info = machine(nginx_bin)
    work = Path(tempfile.mkdtemp(prefix="fleet-10k-", dir=args.workdir))
    try:
        rows, peer, run_info = await measure(args, work, nginx_bin, bb_bin)
    finally:
        remove_run_directory(work, args.keep)  # 10,000 private keys: do not leave them

    valid = all(r.ok == r.endpoints for r in rows)
    peer_s = peer_summary(peer)
    if peer:
        valid = valid and all(r.ok == r.probes for r in peer)
    certpilot_peaks = [v for r in rows for v in r.peak_rss_mib.values()]
    scrape_peaks = [r.scrape_peak_mib for r in rows if r.scrape_peak_mib is not None]
    met_rss_scrape = max(scrape_peaks, default=0.0) <= TARGET_RSS_MIB
    scan_rows = [r for r in rows if r.name != "scan (cold)"]
    worst_scan = max(r.scan_s for r in rows)
    worst_cycle = max((r.cycle_s for r in scan_rows if r.cycle_s is not None), default=0.0)
    steady = [r.cycle_s for r in scan_rows if r.name.endswith("steady") and r.cycle_s]
    met_time = worst_scan <= TARGET_SECONDS and max(steady, default=0.0) <= TARGET_SECONDS
    met_rss = max(certpilot_peaks, default=0.0) <= TARGET_RSS_MIB
    print()
    print(
        f"Fleet scan: {args.endpoints} nginx endpoints as SNI names on {args.sni_ports} ports "
        f"(EC P-256 leaf + intermediate), concurrency {args.concurrency}, "
        f"workers {run_info.get('workers_effective')}, nginx worker_processes "
        f"{args.nginx_workers}, {info['cpus']} CPUs ({info['cpu_model']})"
    )
    print(table(rows))
    if peer_s:
        print()
        print(f"Peer check on {args.peer_sample} of the endpoints, {args.peer_rounds} rounds each:")
        print(peer_table(peer_s))
        if "ratio_probes_per_s" in peer_s:
            print(
                f"certpilot / blackbox_exporter: {peer_s['ratio_probes_per_s']:.2f}x probes/s, "
                f"{peer_s['ratio_cpu_per_probe']:.2f}x CPU per probe"
            )
    print(
        f"Targets: scan <= {TARGET_SECONDS:.0f}s (slowest scan {worst_scan:.1f}s, slowest "
        f"scan+record {worst_cycle:.1f}s): {'met' if met_time else 'MISSED'}; "
        f"<= {TARGET_RSS_MIB:.0f} MiB per process (largest {max(certpilot_peaks, default=0):.1f}"
        f" MiB): {'met' if met_rss else 'MISSED'}; the same during a /metrics scrape (largest "
        f"{max(scrape_peaks, default=0):.1f} MiB): {'met' if met_rss_scrape else 'MISSED'}; "
        f"run {'VALID' if valid else 'INVALID'}"
    )
    print(
        result_json(
            "fleet_10k",
            info,
            params={
                "endpoints": args.endpoints,
                "sni_ports": args.sni_ports,
                "concurrency": args.concurrency,
                "workers": args.workers,
                "timeout_s": args.timeout,
                "nginx_worker_processes": args.nginx_workers,
                "peer_sample": args.peer_sample,
                "peer_rounds": args.peer_rounds,
                "rlimit_nofile": list(nofile),
            },
            run=run_info,
            valid=valid,
            target_scan_s=TARGET_SECONDS,
            target_rss_mib=TARGET_RSS_MIB,
            met_time=met_time,
            met_rss=met_rss,
            met_rss_with_scrape=met_rss_scrape,
            rows=[r.record() for r in rows],
            peer=peer_s,
            peer_rounds=[
                {
                    "tool": r.tool,
                    "ok": r.ok,
                    "wall_s": round(r.wall_s, 3),
                    "probes_per_s": round(r.rate, 1),
                    "cpu_s": round(r.cpu_s, 3),
                    "driver_cpu_s": round(r.driver_cpu_s, 3),
                    "other_load": round(r.other_load, 3),
                }
                for r in peer
            ],
        )
    )
    return 0 if valid else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--endpoints", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="1,000 endpoints, 1 peer round")
    p.add_argument("--sni-ports", type=int, default=10, help="ports the SNI names share")
    p.add_argument("--concurrency", type=int, default=100, help="probes in flight (service: 100)")
    p.add_argument("--workers", type=int, default=0, help="certpilot pool size; 0 = one per CPU")
    p.add_argument("--timeout", type=float, default=5.0, help="per-probe timeout (service: 5)")
    p.add_argument("--nginx-workers", default="2", help="nginx worker_processes (or auto)")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL rows")
    p.add_argument("--peer-sample", type=int, default=1000, help="endpoints for the peer check")
    p.add_argument("--peer-rounds", type=int, default=3)
    p.add_argument(
        "--max-load1",
        type=float,
        default=1.0,
        help="before measuring, wait for the 1-minute load average to fall below this",
    )
    p.add_argument("--max-wait-load", type=float, default=600.0, help="seconds to wait for that")
    p.add_argument(
        "--max-busy",
        type=float,
        default=0.15,
        help="start each row only when the machine is at most this busy (0-1)",
    )
    p.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for that")
    p.add_argument("--workdir", default=None, help="parent of the run's private directory")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    args = p.parse_args(argv)
    if args.quick:
        args.endpoints = min(args.endpoints, 1000)
        args.peer_sample = min(args.peer_sample, 500)
        args.peer_rounds = 1
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
