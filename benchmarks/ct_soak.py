"""CT soak: certpilot's monitor following a log that grows at 1,000 entries/s, for 10 minutes.

Issue 8, item 3 ("load"). Targets: the monitor keeps up with a log growing at ``--rate``
entries/s (default 1,000) with a 100k-pattern watchlist, for ``--minutes`` (default 10): its
backlog stays bounded (does not grow), and its memory is flat: RSS at the end at most 10 % above
RSS after the first minute.

- **Log**: ``ctwatch.local_log.LocalLog`` (a real Merkle tree, ECDSA P-256 signed tree heads,
  the RFC 6962 HTTP API with ``get-entries`` capped at 256 like the stock log) served by its
  own aiohttp loop in a **separate process** (spawned), which appends entries at the fixed
  rate (every 20 ms, as many as are due) and publishes a new STH every ``--sth-interval``
  seconds (default 1). The subclass here only makes the log's own costs independent of its size,
  so that the log cannot be what falls behind: perfect-subtree hashes are kept as entries are
  added (consistency proofs and roots read them instead of rehashing the whole tree, which the
  stock class does per request and would take seconds at 600,000 entries), and ``get-entries``
  answers are joined from base64 fragments encoded once per pool certificate. Full leaves are
  not kept (only each entry's 12-byte header and pool index): the log's memory still grows
  with the tree (about 250 bytes per entry), and it is reported for context only.
- **Entries**: half x509, half precert, drawn from a pool of ``--pool`` (4,000) certificates of
  a LocalCA with an RSA-2048 intermediate (EC P-256 and RSA-2048 leaves, 1-10 SANs, some
  wildcards; ``extra_data`` holds intermediate + root as real logs serve it). About
  ``--watched-share`` (1 %) of the entries come from a separate pool of ``--watched-pool`` (200)
  certificates whose names match the watchlist; all others match nothing. Entries differ by
  timestamp, so every leaf (and the tree) is distinct.
- **Watchlist**: ``--patterns`` (100,000) generated like ``benchmarks/ct_match.py`` (50 % exact,
  35 % ``.domain`` trees, 15 % ``*.domain``), in a watch file.
- **Monitor** (this process), wired as ``certpilot run`` wires it: ``certpilot.ctwatching.
  open_ct`` with ``CTSettings(logs=[the log], watch_file=..., interval=1, start=beginning)``,
  i.e. ``ctwatch.monitor.Monitor`` over ``ctwatch.rfc6962_client.RFC6962Log``, state in the
  SQLite database through ``StoreState`` (``CTStore``), matches classified against an
  ``ExpectationCache`` and recorded into the ``Inventory`` by ``IssuanceRecorder`` (source
  ``ct``), ``Metrics`` on a registry, a ``JobStore`` on the same database, and the runtime's
  refresh task; then ``CTRuntime.start`` runs the monitor task exactly as the service does
  (batch size 256, 4 requests in flight, windows of 8,192). Before it starts, the inventory
  holds ``--inventory`` (10,000) TLS locations (synthetic observations as in
  ``benchmarks/inventory_upsert.py``), so the expectation refresh that runs before every
  recording reads a realistic inventory.
- **Sampled every ``--sample-every`` s (10)**: entries processed, tree size of the latest STH,
  backlog (STH tree size - next index), entries appended but not yet in an STH, lag (now - the
  timestamp of the last entry processed), RSS and CPU of this (the monitor's) process and of
  the log process, and the 1-minute load average.
- **Report**: sustained entries/s (over the whole run and after the first minute), the offered
  rate, max and final backlog, max lag, RSS after 1 minute vs at the end (growth in MiB and %),
  peak RSS (``VmHWM``, reset when the log starts growing), CPU seconds per 1,000 entries (this
  process; it runs nothing else but the sampler), matches recorded vs the generator's count,
  and verification failures.

Before starting, the run waits (up to ``--max-wait-load`` s) for the 1-minute load average to
fall below ``--max-load1`` (other sessions share the machine).

    .venv/bin/python benchmarks/ct_soak.py                 # 10 minutes at 1,000 entries/s
    .venv/bin/python benchmarks/ct_soak.py --quick         # 1 minute

Prints a table of the samples, a summary and one JSON line (the last line); exits 1 when the run
is invalid (a verification failure, or matches missing).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import hashlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks._common import (
    MiB,
    PoolCert,
    build_cert_pool,
    cancel_on_sigterm,
    machine_info,
    remove_run_directory,
    reset_peak_rss,
    result_json,
    subtree_consistency,
    subtree_root,
    vm_hwm,
    wait_load1,
    write_watchlist,
)
from ctwatch.local_log import LocalLog, signed_tree_head
from ctwatch.rfc6962 import (
    STH,
    empty_root,
    leaf_hash,
    node_hash,
)

TARGET_GROWTH = 0.10  # RSS at the end vs after the first minute
KEEP_UP_SECONDS = 5.0  # backlog after the first minute must stay under this much log growth

# -- the log (its own process) -------------------------------------------------------------------

_HEAD = 12  # version, leaf_type, timestamp, entry_type: 12 bytes = 16 base64 characters
_OPEN = b'{"leaf_input":"'


class SoakLog(LocalLog):
    """A :class:`LocalLog` that grows cheaply: entries are pool certificates with a new
    timestamp, perfect-subtree hashes are kept as leaves arrive (``_levels[k][i]`` is the hash
    of leaves ``[i * 2**k, (i + 1) * 2**k)``), and ``get-entries`` joins pre-encoded base64.

    Tree heads, proofs and entries are exactly the stock class's (the harness checks a few
    proofs against :func:`ctwatch.local_log.consistency_proof` at start-up)."""

    def __init__(self, **kwargs: Any) -> None:
        self._levels: list[list[bytes]] = []
        self._templates: list[bytes] = []  # MerkleTreeLeaf with timestamp 0, per pool cert
        self._rest: list[bytes] = []  # b64(leaf[12:]) + '","extra_data":"' + b64(extra) + '"}'
        self._heads: list[bytes] = []  # per entry: b64(leaf[:12])
        self._items = array.array("I")  # per entry: its pool certificate
        self.watched_items: set[int] = set()
        self.watched_indexes = array.array("Q")
        super().__init__(**kwargs)

    def add_pool_cert(self, cert: PoolCert) -> int:
        self._templates.append(cert.leaf_template)
        rest = base64.b64encode(cert.leaf_template[_HEAD:])
        self._rest.append(rest + b'","extra_data":"' + base64.b64encode(cert.extra) + b'"}')
        item = len(self._templates) - 1
        if cert.watched:
            self.watched_items.add(item)
        return item

    def add_pooled(self, item: int, timestamp_ms: int) -> int:
        t = self._templates[item]
        head = t[:2] + timestamp_ms.to_bytes(8, "big") + t[10:_HEAD]
        index = len(self._heads)
        self._heads.append(base64.b64encode(head))
        self._items.append(item)
        if item in self.watched_items:
            self.watched_indexes.append(index)
        # Perfect subtrees: a node is complete when its level has an even count.
        h = leaf_hash(head + t[_HEAD:])
        level = 0
        while True:
            if level == len(self._levels):
                self._levels.append([])
            nodes = self._levels[level]
            nodes.append(h)
            if len(nodes) % 2:
                break
            h = node_hash(nodes[-2], nodes[-1])
            level += 1
        return index

    def size(self) -> int:
        return len(self._heads)

    def consistency(self, first: int, second: int) -> list[bytes]:
        return subtree_consistency(self._levels, first, second, node_hash)

    def root_at(self, size: int) -> bytes:
        return subtree_root(self._levels, 0, size, node_hash) if size else empty_root()

    def publish(self) -> STH:
        size = len(self._heads)
        root = self.root_at(size)
        last = self.sths[-1] if self.sths else None
        sth = signed_tree_head(self.key, size, root, self._clock_ms(), last)
        self.sths.append(sth)
        del self.sths[:-4]  # only the latest is served; do not keep 600 of them
        return sth

    async def _get_consistency(self, request: web.Request) -> web.Response:
        first, second = self._int(request, "first"), self._int(request, "second")
        if first is None or second is None:
            return self._bad("first and second are required non-negative integers")
        if not first <= second <= self._published_size():
            return self._bad(f"need first <= second <= {self._published_size()}")
        proof = self.consistency(first, second)
        return web.json_response({"consistency": [base64.b64encode(p).decode() for p in proof]})

    async def _get_entries(self, request: web.Request) -> web.Response:
        start, end = self._int(request, "start"), self._int(request, "end")
        size = self._published_size()
        if start is None or end is None or start > end or start >= size:
            return self._bad(f"need 0 <= start <= end and start < {size}")
        end = min(end, size - 1, start + self.batch_limit - 1)
        heads, rest, items = self._heads, self._rest, self._items
        body = b",".join([_OPEN + heads[i] + rest[items[i]] for i in range(start, end + 1)])
        return web.Response(body=b'{"entries":[' + body + b"]}", content_type="application/json")

    async def _get_proof_by_hash(self, request: web.Request) -> web.Response:
        return self._bad("not served by the soak log (the monitor does not ask for inclusion)")


def build_pool(log: SoakLog, params: dict[str, Any]) -> dict[str, Any]:
    """Patterns (written to the watch file) and the pool of certificates, in ``log``."""
    rnd = random.Random(params["seed"])
    t0 = time.perf_counter()
    patterns, watchlist = write_watchlist(rnd, params["patterns"], params["watchlist"])
    background, watched, _ = build_cert_pool(
        rnd,
        patterns,
        watchlist,
        log.add_pool_cert,
        background=params["pool"],
        watched=params["watched_pool"],
        ca_name="certpilot soak",
    )
    return {
        "background": background,
        "watched": watched,
        "pool_s": round(time.perf_counter() - t0, 1),
        "key_b64": base64.b64encode(log.public_key_der).decode("ascii"),
    }


def serve_log(conn: Any, params: dict[str, Any], appended: Any, published: Any) -> None:
    """Child process: build the pool, serve the log, grow it at the fixed rate, publish an STH
    every ``sth_interval`` seconds, until the harness says ``stop``. ``appended`` and
    ``published`` are shared counters the harness reads without asking."""
    asyncio.run(_serve_log(conn, params, appended, published))


async def _serve_log(conn: Any, params: dict[str, Any], appended: Any, published: Any) -> None:
    from ctwatch.local_log import consistency_proof, serving
    from ctwatch.rfc6962 import root_from_leaves

    log = SoakLog(batch_limit=params["batch_limit"])
    info = build_pool(log, params)
    rnd = random.Random(params["seed"] + 7)
    background, watched = info.pop("background"), info.pop("watched")
    share = params["watched_share"]

    def grow(n: int) -> None:
        ms = int(time.time() * 1000)
        for _ in range(n):
            item = rnd.choice(watched) if rnd.random() < share else rnd.choice(background)
            log.add_pooled(item, ms)
        appended.value = log.size()

    # Self-check: the stored-subtree proofs are the reference ones (on a small prefix).
    grow(3000)
    hashes = log._levels[0][:3000]
    for m in (1, 3, 1000, 1501, 2999):
        assert log.consistency(m, 3000) == consistency_proof(m, hashes)
    assert log.root_at(3000) == root_from_leaves(hashes)
    log._levels, log._heads, log._items = [], [], array.array("I")
    log.watched_indexes = array.array("Q")
    appended.value = 0

    async with serving(log) as url:
        info["url"] = url
        conn.send(info)
        if conn.recv() != "go":
            return
        rate, tick, sth_every = params["rate"], 0.02, params["sth_interval"]
        t0 = time.monotonic()
        next_sth = t0 + sth_every
        done = 0
        while True:
            now = time.monotonic()
            due = int(rate * (now - t0)) - done
            if due > 0:
                grow(due)
                done += due
            if now >= next_sth:
                published.value = log.publish().tree_size
                next_sth += sth_every
            if conn.poll():
                cmd = conn.recv()
                if cmd == "stop":
                    break
                if isinstance(cmd, tuple) and cmd[0] == "watched_before":
                    conn.send(sum(1 for i in log.watched_indexes if i < cmd[1]))
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))


class LogProcess:
    """The log in its own (spawned) process."""

    def __init__(self, params: dict[str, Any], timeout: float = 600) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.appended = ctx.Value("q", 0, lock=False)
        self.published = ctx.Value("q", 0, lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve_log, args=(child, params, self.appended, self.published), daemon=True
        )
        self.proc.start()
        child.close()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        if not self.conn.poll(timeout):
            raise TimeoutError("the log process did not start")
        self.info: dict[str, Any] = self.conn.recv()

    def go(self) -> None:
        self.conn.send("go")

    def watched_before(self, index: int) -> int:
        self.conn.send(("watched_before", index))
        return int(self.conn.recv())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()  # by its PID: this process's own child
            self.proc.join(5)


# -- the inventory before the run ----------------------------------------------------------------


def seed_inventory(url: str, n: int) -> float:
    """``n`` TLS locations (a distinct leaf each, one intermediate), as the fleet's scans would
    have stored them; returns the seconds it took."""
    if n <= 0:
        return 0.0
    from certpilot.domain.model import Observation
    from certpilot.domain.x509 import cert_info
    from certpilot.localca import LocalCA
    from certpilot.store import Inventory

    t0 = time.perf_counter()
    start = datetime.now(UTC) - timedelta(minutes=5)
    ca = LocalCA("certpilot soak fleet", start - timedelta(days=30))
    assert ca.intermediate is not None
    inter = cert_info(ca.intermediate)
    bases = [cert_info(ca.issue([f"base{i}.fleet.internal"], start).cert) for i in range(4)]
    observations = []
    for i in range(n):
        host = f"host{i}.fleet.internal"
        base = bases[i % len(bases)]
        leaf = replace(
            base,
            fingerprint_sha256=hashlib.sha256(f"soak-{i}".encode()).hexdigest(),
            serial=format(i + 1, "x"),
            subject=f"CN={host}",
            subject_cn=host,
            sans=(host,),
        )
        observations.append(
            Observation(
                source="tls",
                ref=f"tls://{host}:443#{host}",
                target=f"{host}:443",
                observed_at=start,
                problems=(),
                leaf=leaf,
                chain=(leaf, inter),
                trusted=True,
                host=host,
                port=443,
                sni=host,
                tls_version="TLSv1.3",
                duration_seconds=0.01,
            )
        )
    inventory = Inventory.open(url)
    try:
        inventory.record(observations, now=start)
        inventory.wait_checkpoint()
    finally:
        inventory.close()
    return time.perf_counter() - t0


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Sample:
    t_s: float  # since the log started growing
    entries: int  # processed by the monitor
    next_index: int
    tree_size: int  # of the latest STH
    appended: int  # entries in the log, published or not
    backlog: int  # tree_size - next_index
    lag_s: float | None  # now - timestamp of the last entry processed
    matches: int
    rss_mib: float
    cpu_s: float
    log_rss_mib: float
    log_cpu_s: float
    load1: float


def _proc_figures(proc: Any) -> tuple[float, float]:
    import psutil

    try:
        with proc.oneshot():
            t = proc.cpu_times()
            return proc.memory_info().rss / MiB, t.user + t.system
    except psutil.Error:
        return 0.0, 0.0


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import psutil
    from prometheus_client import CollectorRegistry

    from certpilot.ctwatching import open_ct
    from certpilot.domain.clock import SystemClock
    from certpilot.obs import Metrics
    from certpilot.settings import CTLogSettings, CTSettings
    from certpilot.store import Inventory
    from certpilot.store.jobs import JobStore

    db = work / "certpilot.db"
    url = f"sqlite:///{db}"
    watch = work / "watchlist.txt"
    seed_s = seed_inventory(url, args.inventory)
    print(f"inventory seeded with {args.inventory} TLS locations in {seed_s:.1f}s", file=sys.stderr)
    params = {
        "seed": args.seed,
        "patterns": args.patterns,
        "pool": args.pool,
        "watched_pool": args.watched_pool,
        "watched_share": args.watched_share,
        "watchlist": str(watch),
        "batch_limit": args.batch_limit,
        "rate": args.rate,
        "sth_interval": args.sth_interval,
    }
    t0 = time.perf_counter()
    log = LogProcess(params)
    print(
        f"log process {log.pid} serving {log.info['url']}; pool built in "
        f"{log.info['pool_s']}s ({time.perf_counter() - t0:.1f}s to start)",
        file=sys.stderr,
    )
    me = psutil.Process()
    log_proc = psutil.Process(log.pid)
    clock = SystemClock()
    inventory = Inventory.open(url)
    jobs = JobStore.open(url)
    registry = CollectorRegistry()
    metrics = Metrics(registry, inventory, clock)
    ct = CTSettings(
        logs=(CTLogSettings(url=log.info["url"], key=log.info["key_b64"]),),
        watch_file=str(watch),
        start="beginning",
        interval=args.interval,
    )
    rt, logs = open_ct(ct, clock, inventory=inventory, store_url=url, jobs=jobs, metrics=metrics)
    samples: list[Sample] = []
    info: dict[str, Any] = {"seed_inventory_s": round(seed_s, 1), "pool_s": log.info["pool_s"]}
    try:
        waited, la = await wait_load1(args.max_load1, args.max_wait_load)
        info["waited_for_load_s"] = round(waited, 1)
        info["load1_at_start"] = round(la, 2)
        print(f"load average {la:.2f} after waiting {waited:.0f}s", file=sys.stderr)
        stop = asyncio.Event()
        reset_peak_rss(me.pid)  # VmHWM from here on, not the seeding's
        rss0, cpu0 = _proc_figures(me)
        info["rss_before_mib"] = round(rss0, 1)
        _, log_cpu0 = _proc_figures(log_proc)
        log.go()
        started = time.monotonic()
        rt.inventory_ready.set()  # the service sets it after its first scan
        rt.start(logs, stop)
        monitor = rt.monitors[0]
        duration = args.minutes * 60.0

        def take() -> Sample:
            st = monitor.status
            rss, cpu = _proc_figures(me)
            log_rss, log_cpu = _proc_figures(log_proc)
            tree = int(log.published.value)
            last = st.last_entry_timestamp_ms
            return Sample(
                t_s=round(time.monotonic() - started, 1),
                entries=st.entries,
                next_index=st.next_index,
                tree_size=tree,
                appended=int(log.appended.value),
                backlog=max(0, tree - st.next_index),
                lag_s=round(time.time() - last / 1000, 2) if last else None,
                matches=st.matches,
                rss_mib=round(rss, 1),
                cpu_s=round(cpu - cpu0, 2),
                log_rss_mib=round(log_rss, 1),
                log_cpu_s=round(log_cpu - log_cpu0, 2),
                load1=round(os.getloadavg()[0], 2),
            )

        samples.append(take())
        tick = 0
        while time.monotonic() - started < duration:
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * args.sample_every - time.monotonic()))
            samples.append(take())
            s = samples[-1]
            print(
                f"t={s.t_s:.0f}s entries {s.entries} backlog {s.backlog} lag {s.lag_s}s "
                f"RSS {s.rss_mib} MiB CPU {s.cpu_s}s (log {s.log_rss_mib} MiB, {s.log_cpu_s}s) "
                f"load1 {s.load1}",
                file=sys.stderr,
            )
        stop.set()
        await rt.aclose()
        await asyncio.sleep(1.0)  # a recording cancelled mid-way finishes in its thread
        info["peak_rss_mib"] = round(vm_hwm(me.pid) / MiB, 1)
        info["failures"] = dict(monitor.status.failures)
        info["malformed"] = monitor.status.malformed
        final_next = monitor.status.next_index
        info["expected_matches"] = log.watched_before(final_next)
        info["matches"] = monitor.status.matches
        items = inventory.items(now=clock.now(), source="ct")
        info["ct_locations"] = len(items)
        info["unexpected"] = sum(1 for i in items if i.labels.get("ct_verdict") == "unexpected")
    finally:
        log.close()
        rt.store.close()
        jobs.close()
        inventory.close()
    info["db_bytes"] = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
    return {"samples": samples, "info": info}


def summarise(
    samples: list[Sample], info: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    first, last = samples[0], samples[-1]
    minute = next((s for s in samples if s.t_s >= 60.0), last)
    elapsed = last.t_s - first.t_s
    after = [s for s in samples if s.t_s >= minute.t_s]
    span = last.t_s - minute.t_s
    sustained = (last.entries - first.entries) / elapsed if elapsed else 0.0
    sustained_after = (last.entries - minute.entries) / span if span else sustained
    offered = (last.appended - first.appended) / elapsed if elapsed else 0.0
    offered_after = (last.appended - minute.appended) / span if span else offered
    lags = [s.lag_s for s in samples if s.lag_s is not None]
    growth = last.rss_mib - minute.rss_mib
    growth_pct = growth / minute.rss_mib if minute.rss_mib else 0.0
    max_backlog_after = max((s.backlog for s in after), default=last.backlog)
    keeps_up = (
        max_backlog_after <= KEEP_UP_SECONDS * args.rate and sustained_after >= 0.98 * offered_after
    )
    # Backlog trend after the first minute: least-squares slope, entries per minute.
    slope = 0.0
    if len(after) >= 3:
        xs = [s.t_s for s in after]
        ys = [float(s.backlog) for s in after]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
    flat = growth_pct < TARGET_GROWTH
    return {
        "minutes": round(elapsed / 60, 2),
        "entries": last.entries - first.entries,
        "offered_entries_per_s": round(offered, 1),
        "offered_entries_per_s_after_1min": round(offered_after, 1),
        "sustained_entries_per_s": round(sustained, 1),
        "sustained_entries_per_s_after_1min": round(sustained_after, 1),
        "max_backlog": max(s.backlog for s in samples),
        "max_backlog_after_1min": max_backlog_after,
        "final_backlog": last.backlog,
        "backlog_slope_per_min_after_1min": round(slope, 1),
        "max_lag_s": max(lags) if lags else None,
        "median_lag_s": round(statistics.median(lags), 2) if lags else None,
        "rss_1min_mib": minute.rss_mib,
        "rss_end_mib": last.rss_mib,
        "rss_growth_mib": round(growth, 1),
        "rss_growth_pct": round(100 * growth_pct, 1),
        "peak_rss_mib": info.get("peak_rss_mib"),
        "cpu_s": last.cpu_s,
        "cpu_s_per_1000_entries": round(1000 * last.cpu_s / max(1, last.entries), 3),
        "cpu_share_of_one_core": round(last.cpu_s / elapsed, 3) if elapsed else None,
        "log_cpu_s": last.log_cpu_s,
        "log_rss_end_mib": last.log_rss_mib,
        "load1_max": max(s.load1 for s in samples),
        "load1_median": statistics.median(s.load1 for s in samples),
        "keeps_up": keeps_up,
        "memory_flat": flat,
    }


def table(samples: list[Sample]) -> str:
    lines = [
        "| t s | entries | tree size | backlog | lag s | matches | monitor RSS MiB "
        "| monitor CPU s | log RSS MiB | log CPU s | load1 |",
        "|" + "---|" * 11,
    ]
    for s in samples:
        lag = f"{s.lag_s:.1f}" if s.lag_s is not None else "-"
        lines.append(
            f"| {s.t_s:.0f} | {s.entries} | {s.tree_size} | {s.backlog} | {lag} | {s.matches} "
            f"| {s.rss_mib:g} | {s.cpu_s:.1f} | {s.log_rss_mib:g} | {s.log_cpu_s:.1f} "
            f"| {s.load1:.2f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    cancel_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the log process is stopped
    work = Path(tempfile.mkdtemp(prefix="ct-soak-", dir=args.workdir))
    try:
        result = await soak(args, work)
    finally:
        remove_run_directory(work, args.keep)
    samples: list[Sample] = result["samples"]
    info: dict[str, Any] = result["info"]
    summary = summarise(samples, info, args)
    valid = not info["failures"] and info["matches"] == info["expected_matches"]
    print()
    print(
        f"CT soak: log growing at {args.rate:g} entries/s (STH every {args.sth_interval:g}s), "
        f"{args.patterns} watched patterns, monitor interval {args.interval:g}s, inventory "
        f"{args.inventory} TLS locations, {summary['minutes']:.1f} min"
    )
    print(table(samples))
    print(
        f"sustained {summary['sustained_entries_per_s']:.0f} entries/s "
        f"({summary['sustained_entries_per_s_after_1min']:.0f}/s after the first minute; offered "
        f"{summary['offered_entries_per_s']:.0f}/s); backlog max {summary['max_backlog']} "
        f"(after 1 min {summary['max_backlog_after_1min']}, trend "
        f"{summary['backlog_slope_per_min_after_1min']:+.0f}/min), final "
        f"{summary['final_backlog']}; lag max {summary['max_lag_s']}s median "
        f"{summary['median_lag_s']}s"
    )
    print(
        f"monitor RSS {summary['rss_1min_mib']} MiB at 1 min -> {summary['rss_end_mib']} MiB at "
        f"the end ({summary['rss_growth_mib']:+.1f} MiB, {summary['rss_growth_pct']:+.1f} %), "
        f"peak {summary['peak_rss_mib']} MiB; CPU {summary['cpu_s_per_1000_entries']:.3f} s per "
        f"1,000 entries ({summary['cpu_share_of_one_core']:.0%} of one core); matches "
        f"{info['matches']} (expected {info['expected_matches']}), {info['ct_locations']} ct "
        f"locations; failures {info['failures'] or 'none'}"
    )
    print(
        f"Targets: keeps up (backlog after the first minute <= {KEEP_UP_SECONDS:g} s of growth, "
        f"rate >= 98 % of offered): {'met' if summary['keeps_up'] else 'MISSED'}; memory flat "
        f"(< {TARGET_GROWTH:.0%} growth after the first minute): "
        f"{'met' if summary['memory_flat'] else 'MISSED'}; run {'VALID' if valid else 'INVALID'}"
    )
    print(
        result_json(
            "ct_soak",
            machine_info(sqlite=sqlite3.sqlite_version),
            params={
                k: getattr(args, k)
                for k in (
                    "rate",
                    "minutes",
                    "patterns",
                    "pool",
                    "watched_pool",
                    "watched_share",
                    "inventory",
                    "interval",
                    "sth_interval",
                    "batch_limit",
                    "sample_every",
                    "seed",
                )
            },
            valid=valid,
            summary=summary,
            info=info,
            samples=[asdict(s) for s in samples],
        )
    )
    return 0 if valid else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=1000.0, help="entries per second the log grows")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="1 minute")
    p.add_argument("--patterns", type=int, default=100_000, help="watched patterns")
    p.add_argument("--pool", type=int, default=4000, help="background pool certificates")
    p.add_argument("--watched-pool", type=int, default=200, help="watched pool certificates")
    p.add_argument("--watched-share", type=float, default=0.01, help="share of matching entries")
    p.add_argument("--inventory", type=int, default=10_000, help="TLS locations stored before")
    p.add_argument("--interval", type=float, default=1.0, help="monitor interval (ct.interval)")
    p.add_argument("--sth-interval", type=float, default=1.0, help="seconds between STHs")
    p.add_argument("--batch-limit", type=int, default=256, help="the log's get-entries cap")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument(
        "--max-load1",
        type=float,
        default=1.0,
        help="before starting, wait for the 1-minute load average to fall below this",
    )
    p.add_argument("--max-wait-load", type=float, default=600.0, help="seconds to wait for that")
    p.add_argument("--workdir", default=None, help="parent of the run's private directory")
    p.add_argument("--keep", action="store_true", help="keep the run directory (database)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
