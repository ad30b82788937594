"""CT log monitoring: certpilot's verifying monitor against certspotter, same loopback log.

Targets: ``certpilot ct watch --once`` reads a log at least as fast as certspotter (entries/s,
wall clock, both from process start to a verified pass over every entry), and at least 10,000
entries per CPU-second ("per core") of its own process.

- **Log**: one loopback RFC 6962 log (``tests.support.ct_log.LoopbackCTLog``) of ``--entries``
  entries (default 200,000), served by a separate process (so that its CPU can be measured and
  it shares no GIL with anything), ``get-entries`` capped at ``--batch-limit`` (default 1,000,
  like many real logs). Both peers read the same log over 127.0.0.1, with the same batch size.
- **Entries**: about half x509 and half precert entries, drawn from a pool of a few thousand
  distinct certificates (``--pool``, a certpilot ``LocalCA`` with an intermediate; precerts from
  ``tests.support.ct_log.make_precert``; EC P-256 and RSA-2048 leaf keys, 1-10 SANs, some
  wildcard SANs). Entries reuse pool certificates and differ by timestamp, so the leaves (and
  the Merkle tree) are all distinct. About 1 % (``--watched-share``) come from a separate pool
  of watched certificates (``--watched-pool``). ``extra_data`` holds the chain intermediate +
  root, as real logs serve it.
- **Watchlist**: ``--patterns`` (default 100,000) patterns generated like
  ``benchmarks/ct_match.py`` (50 % exact, 35 % ``.domain`` trees, 15 % ``*.domain``). Watched
  certificates carry names both tools match (an exact name, a name in or the wildcard of a
  tree, the wildcard SAN for a ``*.`` pattern: certspotter matches a ``*.`` watch only against
  the literal wildcard SAN); background names are built on labels longer than any pattern
  label, so they match nothing (checked with ``ctwatch.match`` while generating).
- **Server**: ``PreEncodedCTLog`` answers ``get-entries`` from base64 fragments encoded once
  (the stock class encodes JSON per request) and consistency proofs from stored subtree hashes
  (the stock class rehashes the whole tree per proof; certpilot asks for one per window of
  16,000 entries, certspotter for none on a first pass). ``--plain-server`` uses the stock
  serving code instead, to check that the server is not what limits a client: the table shows
  the log process's CPU as a share of each run's wall time.
- **certspotter** (``-logs`` list naming the log, ``-watchlist``, fresh ``-state_dir``,
  ``-stdout -verbose -no_save -batch_size``; 0.16 starts at the beginning of a new log unless
  ``-start_at_end``): wall time from its start until it logs "saving state" with a state.json
  whose verified tree head and position cover every entry; CPU (user + sys) and peak RSS
  (VmHWM) read from the process then (psutil), before it is killed by process group.
  ``-no_save`` makes it report every matching entry (without it, each certificate once) and
  write no files, as ``certpilot ct watch --once`` does.
- **certpilot**: ``certpilot ct watch --once --format json --batch-size B`` (default
  ``--concurrency 4``), stdout to a file; wall time from its start to its exit, CPU and peak
  RSS from ``wait4`` (the process's own rusage). Valid only when it exits 0, verified the head
  of the full size and printed an ``entry`` event per entry. Variants: ``--concurrency 1``;
  ``--format text`` (no per-entry ``entry`` event, like certspotter's output); ``--to-index 0``
  (reads one entry: the start-up CPU, which the summary subtracts for a "once started" rate).
- **Small watchlist** (``--small-patterns``, default 1,000: the watched patterns plus others):
  both peers again. certspotter 0.16 compares every name with every watch item (a linear scan),
  certpilot looks names up in hash tables, so this row shows each peer's cost without matching.
- Both wall times include start-up (interpreter/runtime, loading the watchlist); the
  "start-up" column is the time until the log saw the tool's first ``get-sth``.
- Rounds (``--rounds``, default 3) alternate the order of the two peers, after one untimed
  warm-up of each; each run first waits until the machine is quiet (other sessions share it).
  Medians over rounds; "other load" is machine-wide busy CPU outside the tool, the log process
  and this harness, as a share of all CPUs.
- **Same matches**: the (entry index, certificate SHA-256) pairs certspotter prints must equal
  certpilot's ``match`` events and the generator's expectation (certspotter names a precert by
  the SHA-256 of the precertificate, as certpilot does).
- ``--profile``: certpilot in-process over the first ``--profile-entries`` entries of the same
  log: CPU per entry of each phase timed separately (HTTP, ``json.loads``, base64 + checks,
  leaf hash + compact range, ``parse_leaf`` and its parts, watchlist match, ``entry`` event
  JSON), then ``Monitor.step`` as the CLI runs it (with and without the garbage collector) and
  under cProfile (top functions by own time).
- ``--tools certpilot`` runs one peer only; ``--plain-server`` (see Server).

    .venv/bin/python benchmarks/ct_monitor.py [--entries 200000] [--rounds 3] [--profile]
    .venv/bin/python benchmarks/ct_monitor.py --quick      # 20,000 entries, 1 round

Prints a table and one JSON line (the last line); exits 1 when a run is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from benchmarks._common import (
    MiB,
    PoolCert,
    build_cert_pool,
    command_output,
    cpu_seconds,
    machine_busy_seconds,
    machine_info,
    remove_run_directory,
    result_json,
    subtree_consistency,
    subtree_root,
    vm_hwm,
    wait_quiet,
    write_watchlist,
)
from ctwatch.local_log import signed_tree_head
from ctwatch.rfc6962 import (
    STH,
    empty_root,
    leaf_hash,
    node_hash,
)
from tests.support.ct_log import LoopbackCTLog

TARGET_PER_CORE = 10_000
STARTUP = "start-up: --to-index 0"  # the certpilot variant that reads one entry

# -- the log -----------------------------------------------------------------------------------

_HEAD = 12  # version, leaf_type, timestamp, entry_type: 12 bytes = 16 base64 characters
_OPEN = b'{"leaf_input":"'


class PooledCTLog(LoopbackCTLog):
    """The loopback log, filled from a pool of encoded entries (only timestamps differ).

    Serving is the stock class's: JSON and base64 per ``get-entries`` call, proofs recomputed
    from all leaf hashes per call (``--plain-server``).
    """

    server_name = "benchmark CT log"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool: list[PoolCert] = []
        self._pool_rest: list[bytes] = []  # b64(leaf[12:]) + '","extra_data":"' + b64(extra) + '"}'
        self._heads: list[bytes] = []  # per entry: b64(leaf[:12])
        self._entry_pool: list[int] = []
        self.stats: dict[str, Any] = {}
        self.reset_stats()

    def add_pool_cert(self, cert: PoolCert) -> int:
        self.pool.append(cert)
        rest = base64.b64encode(cert.leaf_template[_HEAD:])
        self._pool_rest.append(rest + b'","extra_data":"' + base64.b64encode(cert.extra) + b'"}')
        return len(self.pool) - 1

    def add_pooled(self, item: int, timestamp_ms: int) -> int:
        """Log pool certificate ``item`` at ``timestamp_ms``; returns its index."""
        cert = self.pool[item]
        t = cert.leaf_template
        head = t[:2] + timestamp_ms.to_bytes(8, "big") + t[10:_HEAD]
        leaf = head + t[_HEAD:]
        self._leaves.append(leaf)
        self._extra.append(cert.extra)
        self._hashes.append(leaf_hash(leaf))
        self._heads.append(base64.b64encode(head))
        self._entry_pool.append(item)
        return len(self._leaves) - 1

    # -- request accounting (read by the harness between runs) ------------------------------

    def reset_stats(self) -> None:
        self.stats = {
            "first_sth_at": None,  # time.time() of the first get-sth
            "last_entries_at": None,
            "requests": Counter(),
            "entries_served": 0,
            "peers": set(),
        }

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        now = time.time()
        path = request.path.rsplit("/", 1)[-1]
        s = self.stats
        s["requests"][path] += 1
        if path == "get-sth" and s["first_sth_at"] is None:
            s["first_sth_at"] = now
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            s["peers"].add(peer[1])
        response: web.StreamResponse = await super()._middleware(request, handler)
        if path == "get-entries":
            s["last_entries_at"] = time.time()
            start, end = self._int(request, "start"), self._int(request, "end")
            if start is not None and end is not None and response.status == 200:
                size = self._published_size()
                s["entries_served"] += min(end, size - 1, start + self.batch_limit - 1) - start + 1
        return response


class PreEncodedCTLog(PooledCTLog):
    """:class:`PooledCTLog` whose answers cost the server (almost) nothing.

    ``get-entries`` joins base64 fragments encoded once (the leaf's first 12 bytes per entry,
    the rest per pool certificate: 12 is a multiple of 3, so base64 of the concatenation is the
    concatenation of the base64s); consistency proofs come from every perfect subtree's hash,
    computed once at :meth:`publish`, as a real log reads them from its tree storage.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._levels: list[list[bytes]] = []
        super().__init__(**kwargs)

    def _build_levels(self) -> None:
        levels = [list(self._hashes)]
        while len(levels[-1]) > 1:
            prev = levels[-1]
            levels.append([node_hash(prev[i], prev[i + 1]) for i in range(0, len(prev) - 1, 2)])
        self._levels = levels

    def consistency(self, first: int, second: int) -> list[bytes]:
        return subtree_consistency(self._levels, first, second, node_hash)

    def publish(self) -> STH:
        with self._lock:
            self._build_levels()
            size = len(self._hashes)
            root = subtree_root(self._levels, 0, size, node_hash) if size else empty_root()
            last = self.sths[-1] if self.sths else None
            sth = signed_tree_head(self.key, size, root, self._clock_ms(), last)
            self.sths.append(sth)
            return sth

    async def _get_consistency(self, request: web.Request) -> web.Response:
        if self._tamper_consistency:
            return await super()._get_consistency(request)
        first, second = self._int(request, "first"), self._int(request, "second")
        if first is None or second is None:
            return self._bad("first and second are required non-negative integers")
        if not first <= second <= self._published_size():
            return self._bad(f"need first <= second <= {self._published_size()}")
        proof = self.consistency(first, second)
        return web.json_response(
            {"consistency": [base64.b64encode(p).decode("ascii") for p in proof]}
        )

    async def _get_entries(self, request: web.Request) -> web.Response:
        if self._tampered_entries:
            return await super()._get_entries(request)
        start, end = self._int(request, "start"), self._int(request, "end")
        size = self._published_size()
        if start is None or end is None or start > end or start >= size:
            return self._bad(f"need 0 <= start <= end and start < {size}")
        end = min(end, size - 1, start + self.batch_limit - 1)
        heads, rest, pool = self._heads, self._pool_rest, self._entry_pool
        body = b",".join([_OPEN + heads[i] + rest[pool[i]] for i in range(start, end + 1)])
        return web.Response(body=b'{"entries":[' + body + b"]}", content_type="application/json")


def build_log(params: dict[str, Any]) -> tuple[PooledCTLog, dict[str, Any]]:
    """The log (not started) and what the harness needs to know about it."""
    from cryptography import x509

    rnd = random.Random(params["seed"])
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    patterns, watchlist = write_watchlist(rnd, params["patterns"], params["watchlist"])
    timings["patterns_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    cls = PooledCTLog if params["plain_server"] else PreEncodedCTLog
    log = cls(batch_limit=params["batch_limit"])
    # build_cert_pool checks the generator's promise: watched certificates match, others not
    background, watched, watched_patterns = build_cert_pool(
        rnd,
        patterns,
        watchlist,
        log.add_pool_cert,
        background=params["pool"],
        watched=params["watched_pool"],
        ca_name="certpilot bench",
    )
    if params["small_patterns"]:  # the watched patterns and as many others as it takes
        watched_set = set(watched_patterns)
        others = [p for p in patterns if p not in watched_set]
        k = max(0, params["small_patterns"] - len(watched_patterns))
        small = watched_patterns + random.Random(params["seed"] + 1).sample(others, k)
        Path(params["small_watchlist"]).write_text("\n".join(small) + "\n", encoding="utf-8")
    # an x509 leaf template holds the certificate where RFC 6962 puts it
    first = log.pool[background[0]]
    assert x509.load_der_x509_certificate(first.leaf_template[15:-2]).subject is not None
    timings["pool_s"] = time.perf_counter() - t

    t = time.perf_counter()
    base_ms = int(time.time() * 1000) - params["entries"]
    share = params["watched_share"]
    expected: list[tuple[int, str]] = []
    for i in range(params["entries"]):
        item = rnd.choice(watched) if rnd.random() < share else rnd.choice(background)
        index = log.add_pooled(item, base_ms + i)
        if log.pool[item].watched:
            expected.append((index, log.pool[item].sha256))
    timings["entries_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sth = log.publish()
    timings["tree_s"] = time.perf_counter() - t
    if isinstance(log, PreEncodedCTLog):  # the stored-subtree proofs equal the reference ones
        from tests.support.ct_log import consistency_proof

        n = min(len(log._hashes), 5000)
        for m in {1, 3, n // 3, n // 2 + 1, n - 1}:
            if 0 < m < n:
                assert log.consistency(m, n) == consistency_proof(m, log._hashes[:n])
    timings["total_s"] = time.perf_counter() - t0

    types = Counter(log.pool[p].entry_type for p in log._entry_pool)
    leaves = [c for c in log.pool if c.entry_type == "x509"]
    info = {
        "tree_size": sth.tree_size,
        "root_hash": sth.root_hash.hex(),
        "key_b64": base64.b64encode(log.public_key_der).decode("ascii"),
        "expected": expected,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "entry_types": dict(types),
        "pool": {
            "certificates": len(log.pool),
            "watched": len(watched),
            "x509_cert_bytes_mean": round(
                statistics.mean(len(c.leaf_template) - 17 for c in leaves)
            ),
            "extra_data_bytes_mean": round(statistics.mean(len(c.extra) for c in log.pool)),
            "names_per_cert_mean": round(statistics.mean(len(c.names) for c in log.pool), 2),
        },
    }
    return log, info


def serve_log(conn: Any, params: dict[str, Any]) -> None:
    """Child process: build the log, serve it, answer the harness (``stats``, ``stop``)."""
    log, info = build_log(params)
    with log:
        log.write_log_list(Path(params["log_list"]))  # names the URL: after the port is known
        info["url"] = log.url
        conn.send(info)
        while True:
            try:
                cmd = conn.recv()
            except (EOFError, OSError):
                break
            if cmd == "stop":
                break
            if cmd == "stats":
                s = dict(log.stats)
                s["requests"] = {**s["requests"], "entries_served": s["entries_served"]}
                s["peers"] = len(s["peers"])
                conn.send(s)
                log.reset_stats()


class LogProcess:
    """The log in its own process (spawned: this file is re-imported, not forked)."""

    def __init__(self, params: dict[str, Any], timeout: float = 900) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_log, args=(child, params), daemon=True)
        self.proc.start()
        child.close()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        self.info: dict[str, Any] = self._recv(timeout)

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError("the log process did not answer")
        return self.conn.recv()

    def stats(self) -> dict[str, Any]:
        self.conn.send("stats")
        return dict(self._recv(30))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    variant: str
    index: int
    entries: int  # entries the tool verified (its own account)
    wall_s: float
    cpu_s: float
    peak_rss: int
    matches: int
    startup_s: float | None  # until the log saw the tool's first get-sth
    server_cpu_s: float
    other_cpu_s: float
    waited_s: float
    requests: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    ok: bool = True
    error: str = ""
    found: list[tuple[int, str]] = field(default_factory=list, repr=False)
    names: dict[int, list[str]] = field(default_factory=dict, repr=False)

    @property
    def rate(self) -> float:
        return self.entries / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def per_cpu(self) -> float:
        return self.entries / self.cpu_s if self.cpu_s > 0 else 0.0

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        del d["found"], d["names"]
        d["peak_rss_mib"] = round(d.pop("peak_rss") / MiB, 1)
        d["entries_per_s"] = round(self.rate)
        d["entries_per_cpu_s"] = round(self.per_cpu)
        for k in ("wall_s", "cpu_s", "server_cpu_s", "other_cpu_s", "waited_s", "startup_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d


class Meter:
    """CPU of the log process, this harness and the whole machine around one run."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.me = os.getpid()

    def __enter__(self) -> Meter:
        self._server = cpu_seconds([self.server_pid])
        self._me = cpu_seconds([self.me])
        self._busy = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = cpu_seconds([self.server_pid]) - self._server
        self.harness = cpu_seconds([self.me]) - self._me
        self.busy = machine_busy_seconds() - self._busy

    def other(self, tool_cpu: float) -> float:
        return max(0.0, self.busy - tool_cpu - self.server - self.harness)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def parse_certspotter(text: str) -> tuple[list[tuple[int, str]], dict[int, list[str]]]:
    """(index, sha256) per reported entry, and its DNS names, from ``-stdout`` output."""
    found: list[tuple[int, str]] = []
    names: dict[int, list[str]] = {}
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].endswith(":"):
            continue
        sha = lines[0][:-1].strip()
        dns: list[str] = []
        index = -1
        for line in lines[1:]:
            key, _, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if key == "DNS Name":
                dns.append(value)
            elif key == "Log Entry":
                index = int(value.split("@", 1)[0])
        found.append((index, sha))
        names[index] = dns
    return found, names


def run_certspotter(
    binary: str,
    work: Path,
    tag: str,
    log: LogProcess,
    watchlist: Path,
    batch: int,
    timeout: float,
    index: int = 0,
    waited: float = 0.0,
    stop_after: float | None = None,
) -> Run:
    """One first pass of certspotter over the log, from a fresh state directory."""
    import psutil

    n = log.info["tree_size"]
    state = work / f"certspotter-state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    out_path, err_path = work / f"certspotter-{tag}.stdout", work / f"certspotter-{tag}.stderr"
    cmd = [
        *(binary, "-logs", str(work / "logs.json"), "-watchlist", str(watchlist)),
        *("-state_dir", str(state), "-stdout", "-verbose", "-no_save"),
        *("-batch_size", str(batch)),
    ]
    log.stats()  # reset the log's request accounting
    error = ""
    done = False
    with (
        Meter(log.pid) as meter,
        out_path.open("wb") as out_f,
        err_path.open("wb") as err_f,
        err_path.open("r", encoding="utf-8", errors="replace") as err_r,
    ):
        started_at = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, start_new_session=True)
        cpu = 0.0
        rss = 0
        try:
            ps = psutil.Process(proc.pid)
            deadline = t0 + (stop_after if stop_after is not None else timeout)
            logged, saving = "", False
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    error = f"certspotter exited with {proc.returncode}"
                    break
                if not saving:
                    logged += err_r.read()
                    saving = "saving state" in logged
                # from the first "saving state" on, until state.json shows the whole log verified
                if saving and _certspotter_done(state, n):
                    done = True
                    break
                time.sleep(0.01)
            wall = time.perf_counter() - t0
            if proc.poll() is None:
                t = ps.cpu_times()
                cpu = t.user + t.system
                rss = vm_hwm(proc.pid)
        finally:
            _kill_group(proc)
    if not done and stop_after is None and not error:
        error = f"no complete pass within {timeout:.0f}s"
    stats = log.stats()
    found, names = parse_certspotter(out_path.read_text(encoding="utf-8", errors="replace"))
    malformed = [p for p in state.glob("logs/*/malformed_entries/*")]
    if malformed:
        error = f"{len(malformed)} malformed entries"
    return Run(
        "certspotter",
        "",
        index,
        n if done else 0,
        wall,
        cpu,
        rss,
        len(found),
        stats["first_sth_at"] - started_at if stats["first_sth_at"] else None,
        meter.server,
        meter.other(cpu),
        waited,
        stats["requests"],
        stats["peers"],
        done and not error,
        error,
        found,
        names,
    )


def _certspotter_done(state: Path, n: int) -> bool:
    for path in state.glob("logs/*/state.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        sth = data.get("verified_sth") or {}
        pos = data.get("verified_position") or {}
        return bool(sth.get("tree_size") == n and pos.get("size") == n)
    return False


def run_certpilot(
    work: Path,
    tag: str,
    log: LogProcess,
    watchlist: Path,
    batch: int,
    concurrency: int,
    fmt: str,
    timeout: float,
    index: int = 0,
    waited: float = 0.0,
    to_index: int | None = None,
) -> Run:
    """One ``certpilot ct watch --once`` over the log; CPU and peak RSS from wait4."""
    n = log.info["tree_size"]
    exe = str(Path(sys.executable).parent / "certpilot")
    out_path, err_path = work / f"certpilot-{tag}.stdout", work / f"certpilot-{tag}.stderr"
    cmd = [
        *(exe, "ct", "watch", "--log", log.info["url"], "--log-key", log.info["key_b64"]),
        *("--watch", str(watchlist), "--once", "--format", fmt),
        *("--batch-size", str(batch), "--concurrency", str(concurrency)),
        *(("--to-index", str(to_index)) if to_index is not None else ()),
    ]
    log.stats()
    result: dict[str, Any] = {}

    def reap(pid: int) -> None:
        _, status, usage = os.wait4(pid, 0)
        result["end"] = time.perf_counter()
        result["status"], result["usage"] = status, usage

    with (
        Meter(log.pid) as meter,
        out_path.open("wb") as out_f,
        err_path.open("wb") as err_f,
    ):
        started_at = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, start_new_session=True)
        reaper = threading.Thread(target=reap, args=(proc.pid,), daemon=True)
        reaper.start()
        try:
            reaper.join(timeout)
        finally:
            if reaper.is_alive():  # timed out, or the harness is being stopped
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                reaper.join(10)
    stats = log.stats()
    if "status" not in result:
        return Run(
            "certpilot",
            "",
            index,
            0,
            timeout,
            0,
            0,
            0,
            None,
            0,
            0,
            waited,
            ok=False,
            error=f"did not finish within {timeout:.0f}s",
        )
    proc.returncode = os.waitstatus_to_exitcode(result["status"])
    usage = result["usage"]
    wall = result["end"] - t0
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss * 1024
    want = n if to_index is None else to_index + 1
    found: list[tuple[int, str]] = []
    names: dict[int, list[str]] = {}
    error = "" if proc.returncode == 0 else f"exit {proc.returncode}: {err_path.read_text()[-300:]}"
    read = 0
    if fmt == "json":
        kinds: Counter[str] = Counter()
        head_size = -1
        with out_path.open(encoding="utf-8") as f:
            for line in f:
                ev = json.loads(line)
                kind = ev["event"]
                kinds[kind] += 1
                if kind == "match":
                    found.append((ev["index"], ev["sha256"]))
                    names[ev["index"]] = ev["names"]
                elif kind == "sth_verified":
                    head_size = ev["tree_size"]
        read = kinds["entry"]
        if head_size != n:
            error = error or f"verified head of {head_size}, not {n}"
        bad = {k: v for k, v in kinds.items() if k not in {"sth_verified", "entry", "match"}}
        if bad:
            error = error or f"unexpected events {bad}"
    else:
        tail = err_path.read_text(encoding="utf-8", errors="replace")
        for line in tail.splitlines():
            if " entries read, " in line and "all checks passed" in line:
                read = int(line.split(" entries read, ")[0].rsplit(" ", 1)[-1])
        for line in out_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("match entry "):  # match entry N (type): names ... sha256 HEX
                found.append((int(line.split()[2]), line.rsplit("sha256 ", 1)[-1].strip()))
    if read != want:
        error = error or f"read {read} entries, not {want}"
    return Run(
        "certpilot",
        "",
        index,
        read,
        wall,
        cpu,
        rss,
        len(found),
        stats["first_sth_at"] - started_at if stats["first_sth_at"] else None,
        meter.server,
        meter.other(cpu),
        waited,
        stats["requests"],
        stats["peers"],
        not error,
        error,
        found,
        names,
    )


# -- the in-process profile ----------------------------------------------------------------------


async def profile_certpilot(
    url: str, key_der: bytes, watchlist: Path, entries: int, batch: int, concurrency: int
) -> dict[str, Any]:
    """CPU per entry of each of certpilot's phases, then ``Monitor.step`` under cProfile."""
    import cProfile
    import io
    import pstats

    from cryptography import x509

    from certpilot.ctwatching import WatchlistFile
    from certpilot.domain.clock import SystemClock
    from ctwatch.fetch import Fetcher
    from ctwatch.monitor import CTEvent, MemoryState, Monitor, MonitorOptions
    from ctwatch.rfc6962 import CTEntry, _names, parse_leaf
    from ctwatch.rfc6962_client import RFC6962Log
    from ctwatch.source import RawEntry
    from ctwatch.tree import CompactRange

    t = time.process_time()
    watch = WatchlistFile(path=watchlist)()
    load_watchlist_s = time.process_time() - t
    sink = open(os.devnull, "w")  # noqa: SIM115  (closed below)

    def emit(event: CTEvent) -> None:  # what the CLI's JSON printer does per event
        sink.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")

    def monitor(source: RFC6962Log) -> Monitor:
        options = MonitorOptions(
            batch_size=batch,
            concurrency=concurrency,
            window=max(batch * concurrency * 4, 4096),
            start="beginning",
            to_index=entries - 1,
            emit_entries=True,
        )
        return Monitor(
            source,
            watchlist=lambda: watch,
            emit=emit,
            state=MemoryState(),
            clock=SystemClock(),
            options=options,
        )

    def timed(fn: Callable[[], object]) -> float:
        t = time.process_time()
        fn()
        return time.process_time() - t

    def best(fn: Callable[[], object]) -> float:
        return min(timed(fn), timed(fn))

    out: dict[str, Any] = {"entries": entries, "watchlist_load_cpu_s": round(load_watchlist_s, 3)}
    try:
        # 1. phases, one at a time, without a profiler (process CPU: the log is elsewhere)
        fetcher = Fetcher()
        endpoint = url.rstrip("/") + "/ct/v1/get-entries"
        sem = asyncio.Semaphore(concurrency)
        starts = range(0, entries, batch)

        async def body(s: int) -> bytes:
            async with sem:
                params = {"start": s, "end": min(s + batch, entries) - 1}
                return await fetcher.get_bytes(endpoint, params)

        try:
            await body(0)  # connection set-up
            t = time.process_time()
            bodies = await asyncio.gather(*(body(s) for s in starts))
            phases: dict[str, float] = {"http_receive": time.process_time() - t}
        finally:
            await fetcher.aclose()
        answers: dict[int, Any] = {}
        phases["json_loads"] = timed(
            lambda: answers.update((s, json.loads(b)) for s, b in zip(starts, bodies, strict=True))
        )

        class Decoded:  # RFC6962Log's fetcher, answering from the decoded JSON above
            async def get_json(self, _url: str, params: dict[str, int]) -> Any:
                return answers[params["start"]]

            async def aclose(self) -> None:
                return None

        client = RFC6962Log(url, key_der, fetcher=cast(Any, Decoded()))
        t = time.process_time()
        raws: list[RawEntry] = []
        for s in starts:
            raws.extend(await client.entries(s, min(s + batch, entries)))
        phases["base64_checks_RawEntry"] = time.process_time() - t
        assert len(raws) == entries, len(raws)
        compact = CompactRange()

        def hash_all() -> None:
            for r in raws:
                compact.append(leaf_hash(r.leaf_input))

        phases["leaf_hash_compact_range"] = timed(hash_all)
        parsed: list[CTEntry] = []
        phases["parse_leaf"] = best(
            lambda: parsed.__setitem__(
                slice(None), [parse_leaf(r.leaf_input, r.extra_data, r.index) for r in raws]
            )
        )
        phases["watchlist_match"] = timed(lambda: [watch.match_any(e.names) for e in parsed])

        def events() -> None:
            for e in parsed:
                emit(
                    CTEvent(
                        "entry",
                        url,
                        {
                            "index": 0,
                            "entry_type": e.entry_type,
                            "sha256": e.sha256,
                            "names": list(e.names),
                            "issuer": e.issuer,
                            "serial": e.serial,
                            "not_after": e.not_after.isoformat().replace("+00:00", "Z"),
                        },
                    )
                )

        phases["entry_event_json"] = timed(events)
        # parse_leaf's parts, on the same certificates: each "load + part" minus "load"
        ders = [e.cert_der for e in parsed]
        load = x509.load_der_x509_certificate
        t_load = best(lambda: [load(d) for d in ders])
        parts_t: dict[str, float] = {"load_der_x509_certificate": t_load}
        part_fns: list[tuple[str, Callable[[x509.Certificate], object]]] = [
            ("names: SAN extension + subject CN", _names),
            ("issuer.rfc4514_string", lambda c: c.issuer.rfc4514_string()),
            ("validity dates", lambda c: (c.not_valid_before_utc, c.not_valid_after_utc)),
            ("serial hex", lambda c: format(c.serial_number, "x")),
        ]

        def load_and(fn: Callable[[x509.Certificate], object]) -> Callable[[], object]:
            return lambda: [fn(load(d)) for d in ders]

        for name, fn in part_fns:
            parts_t[name] = max(0.0, best(load_and(fn)) - t_load)
        parts_t["sha256 of the certificate"] = best(
            lambda: [hashlib.sha256(d).hexdigest() for d in ders]
        )
        parts_t["TLS framing, CTEntry, rest"] = max(
            0.0, phases["parse_leaf"] - sum(parts_t.values())
        )
        total = sum(phases.values())
        us = 1e6 / entries
        out["phases_us_per_entry"] = {k: round(v * us, 1) for k, v in phases.items()}
        out["phases_share"] = {k: round(v / total, 3) for k, v in phases.items()}
        out["parse_parts_us_per_entry"] = {k: round(v * us, 1) for k, v in parts_t.items()}
        out["phases_sum_us_per_entry"] = round(total * us, 1)
        out["phases_entries_per_cpu_s"] = round(entries / total)

        # 2. a whole Monitor.step: plain, without the garbage collector, under cProfile
        import gc

        for mode in ("step", "step_gc_disabled", "step_profiled"):
            source = RFC6962Log(url, key_der)
            prof = cProfile.Profile()
            try:
                m = monitor(source)
                t = time.process_time()
                w = time.perf_counter()
                if mode == "step_gc_disabled":
                    gc.disable()
                if mode == "step_profiled":
                    prof.enable()
                try:
                    result = await m.step()
                finally:
                    prof.disable()
                    gc.enable()
                cpu, wall = time.process_time() - t, time.perf_counter() - w
            finally:
                await source.aclose()
            assert result.processed == entries and result.ok, result
            out[f"{mode}_cpu_us_per_entry"] = round(cpu * us, 1)
            out[f"{mode}_entries_per_cpu_s"] = round(entries / cpu)
            out[f"{mode}_entries_per_s"] = round(entries / wall)
        stream = io.StringIO()
        st = pstats.Stats(prof, stream=stream)
        st.sort_stats("tottime").print_stats(18)
        out["cprofile_top_tottime"] = _cprofile_rows(st, 18)
        out["cprofile_cumulative"] = _cprofile_cum(
            st,
            [
                "parse_leaf",
                "_entry",
                "_names",
                "leaf_hash",
                "append",
                "match_any",
                "_event",
                "emit",
                "get_json",
                "entries",
                "_process",
            ],
        )
    finally:
        sink.close()
    return out


def _cprofile_rows(st: Any, n: int) -> list[dict[str, Any]]:
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    total = st.total_tt or 1.0
    return [
        {
            "function": f"{Path(f).name}:{line}({fn})" if f != "~" else fn,
            "calls": nc,
            "tottime_s": round(tt, 3),
            "share": round(tt / total, 3),
            "cumtime_s": round(ct, 3),
        }
        for (f, line, fn), (_cc, nc, tt, ct, _callers) in rows
    ]


def _cprofile_cum(st: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    total = st.total_tt or 1.0
    for (f, _line, fn), (_cc, nc, _tt, ct, _callers) in st.stats.items():
        if fn in names and ("ctwatch" in f or "cert" in f or fn == "emit"):
            key = f"{Path(f).parent.name}/{Path(f).name}:{fn}"
            if key in out and out[key]["cumtime_s"] >= ct:
                continue
            out[key] = {"calls": nc, "cumtime_s": round(ct, 3), "share": round(ct / total, 3)}
    return dict(sorted(out.items(), key=lambda kv: -float(kv[1]["cumtime_s"])))


# -- reporting -----------------------------------------------------------------------------------


def summarise(runs: list[Run]) -> dict[str, Any]:
    wall = statistics.median(r.wall_s for r in runs)
    cpu = statistics.median(r.cpu_s for r in runs)
    entries = runs[0].entries
    startups = [r.startup_s for r in runs if r.startup_s is not None]
    return {
        "tool": runs[0].tool,
        "variant": runs[0].variant,
        "rounds": len(runs),
        "entries": entries,
        "valid": all(r.ok for r in runs),
        "wall_s_median": round(wall, 3),
        "cpu_s_median": round(cpu, 3),
        "entries_per_s": round(entries / wall) if wall else 0,
        "entries_per_s_min": round(min(r.rate for r in runs)),
        "entries_per_s_max": round(max(r.rate for r in runs)),
        "entries_per_cpu_s": round(entries / cpu) if cpu else 0,
        "cpu_cores_used": round(cpu / wall, 2) if wall else 0,
        "peak_rss_mib": round(max(r.peak_rss for r in runs) / MiB, 1),
        "matches": runs[0].matches,
        "distinct_matched_certs": len({sha for _i, sha in runs[0].found}),
        "startup_s_median": round(statistics.median(startups), 3) if startups else None,
        "log_server_cpu_share_median": round(
            statistics.median(r.server_cpu_s / r.wall_s for r in runs), 3
        ),
        "other_load_max": round(
            max(r.other_cpu_s / (r.wall_s * (os.cpu_count() or 1)) for r in runs), 3
        ),
        "requests": runs[0].requests,
        "connections": runs[0].connections,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tool | variant | entries | wall s (median) | entries/s median [min-max] | CPU s "
        "| entries per CPU-s | cores used | peak RSS MiB | matches (certs) | start-up s "
        "| log server CPU % of wall | other load max |"
    )
    lines = [head, "|" + "---|" * 13]
    for s in rows:
        rates = (  # the start-up row reads one entry: its rates mean nothing
            (f"{s['entries_per_s']} [{s['entries_per_s_min']}-{s['entries_per_s_max']}]", "")
            if s["entries"] > 1
            else ("-", "-")
        )
        lines.append(
            f"| {s['tool']} | {s['variant'] or 'default'} | {s['entries']} "
            f"| {s['wall_s_median']:.2f} | {rates[0]} | {s['cpu_s_median']:.2f} "
            f"| {rates[1] or s['entries_per_cpu_s']} "
            f"| {s['cpu_cores_used']:.2f} | {s['peak_rss_mib']:g} "
            f"| {s['matches']} ({s['distinct_matched_certs']}) "
            f"| {s['startup_s_median'] if s['startup_s_median'] is not None else '-'} "
            f"| {100 * s['log_server_cpu_share_median']:.1f} | {s['other_load_max']:.0%} |"
        )
    return "\n".join(lines)


def machine(certspotter: str) -> dict[str, Any]:
    import aiohttp
    import cryptography

    version = command_output([certspotter, "-version"])
    return machine_info(
        cryptography=cryptography.__version__,
        aiohttp=aiohttp.__version__,
        certspotter="?" if version is None else version,
    )


def _progress(r: Run) -> str:
    v = f" ({r.variant})" if r.variant else ""
    return (
        f"round {r.index}: {r.tool}{v}: {r.entries} entries in {r.wall_s:.2f}s = {r.rate:.0f}/s, "
        f"CPU {r.cpu_s:.2f}s = {r.per_cpu:.0f}/CPU-s, RSS {r.peak_rss / MiB:.0f} MiB, "
        f"{r.matches} matches, log CPU {r.server_cpu_s:.2f}s, other load "
        f"{r.other_cpu_s / (r.wall_s * (os.cpu_count() or 1)):.0%}"
        + (f", waited {r.waited_s:.0f}s" if r.waited_s >= 1 else "")
        + ("" if r.ok else f"  INVALID: {r.error}")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--patterns", type=int, default=100_000)
    p.add_argument(
        "--small-patterns",
        type=int,
        default=1000,
        help="also run both peers with a watchlist this small (the watched patterns + others); "
        "0: do not",
    )
    p.add_argument("--pool", type=int, default=4000, help="distinct background certificates")
    p.add_argument("--watched-pool", type=int, default=200, help="distinct watched certificates")
    p.add_argument("--watched-share", type=float, default=0.01, help="share of watched entries")
    p.add_argument("--batch-limit", type=int, default=1000, help="log's get-entries cap = batch")
    p.add_argument("--concurrency", type=int, default=4, help="certpilot's (its default: 4)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="20,000 entries, 1 round")
    p.add_argument("--tools", default="certspotter,certpilot", help="comma-separated")
    p.add_argument("--no-variants", action="store_true", help="only the two main rows")
    p.add_argument("--profile", action="store_true", help="in-process phase timing + cProfile")
    p.add_argument("--profile-entries", type=int, default=50_000)
    p.add_argument("--plain-server", action="store_true", help="the stock LoopbackCTLog serving")
    p.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    p.add_argument(
        "--max-load", type=float, default=0.10, help="start a run when at most this busy (0-1)"
    )
    p.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for that")
    p.add_argument("--certspotter", default=shutil.which("certspotter") or "/usr/bin/certspotter")
    p.add_argument("--workdir", default=None, help="parent of the run directory")
    p.add_argument("--keep", action="store_true", help="keep the run directory (outputs)")
    args = p.parse_args(argv)
    if args.quick:
        args.entries = min(args.entries, 20_000)
        args.rounds = 1
        args.profile_entries = min(args.profile_entries, 10_000)
    tools = {t.strip() for t in args.tools.split(",") if t.strip()}
    # SIGTERM (timeout, CI cancel) unwinds like Ctrl-C: the tool under test and the log stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if "certspotter" in tools and not Path(args.certspotter).exists():
        print(f"certspotter not found ({args.certspotter}): apt-get install certspotter")
        return 2

    info_machine = machine(args.certspotter)
    work = Path(tempfile.mkdtemp(prefix="ct-monitor-", dir=args.workdir))
    watchlist, small = work / "watchlist.txt", work / "watchlist-small.txt"
    small_label = f"watchlist {args.small_patterns}"
    params = {
        "seed": args.seed,
        "entries": args.entries,
        "patterns": args.patterns,
        "small_patterns": args.small_patterns,
        "pool": args.pool,
        "watched_pool": args.watched_pool,
        "watched_share": args.watched_share,
        "batch_limit": args.batch_limit,
        "plain_server": args.plain_server,
        "watchlist": str(watchlist),
        "small_watchlist": str(small),
        "log_list": str(work / "logs.json"),
    }
    runs: list[Run] = []
    prof: dict[str, Any] | None = None
    t0 = time.perf_counter()
    log = LogProcess(params)
    try:
        info = log.info
        print(
            f"log of {info['tree_size']} entries ({info['entry_types']}) built in "
            f"{time.perf_counter() - t0:.1f}s (in the log process: {info['timings']}); "
            f"{len(info['expected'])} watched entries; log PID {log.pid} at {info['url']}",
            file=sys.stderr,
        )
        b, c, to = args.batch_limit, args.concurrency, args.timeout
        # untimed warm-up: page cache, the Go runtime and the Python imports, the log's sockets
        if "certspotter" in tools:
            run_certspotter(args.certspotter, work, "warm", log, watchlist, b, to, stop_after=1.5)
        if "certpilot" in tools:
            last = min(info["tree_size"] - 1, 4 * b - 1)
            run_certpilot(work, "warm", log, watchlist, b, c, "json", to, to_index=last)

        def certspotter(i: int, wl: Path = watchlist, variant: str = "") -> Run:
            w = wait_quiet(args.max_load, args.max_wait)
            tag = f"{i}{'-small' if variant else ''}"
            r = run_certspotter(args.certspotter, work, tag, log, wl, b, to, i, w)
            r.variant = variant
            return r

        def certpilot(
            i: int,
            conc: int,
            fmt: str = "json",
            wl: Path = watchlist,
            variant: str = "",
            to_index: int | None = None,
        ) -> Run:
            w = wait_quiet(args.max_load, args.max_wait)
            tag = f"{i}-{conc}-{fmt}{'-small' if wl != watchlist else ''}-{to_index}"
            r = run_certpilot(work, tag, log, wl, b, conc, fmt, to, i, w, to_index)
            r.variant = variant
            return r

        plan: list[tuple[str, Callable[[int], Run]]] = [
            ("certspotter", certspotter),
            ("certpilot", lambda i: certpilot(i, c)),
        ]
        variants: list[tuple[str, Callable[[int], Run]]] = [
            ("certpilot", lambda i: certpilot(i, 1, variant="--concurrency 1")),
            ("certpilot", lambda i: certpilot(i, c, "text", variant="--format text")),
            ("certpilot", lambda i: certpilot(i, c, variant=STARTUP, to_index=0)),
        ]
        if args.small_patterns:
            variants += [
                ("certspotter", lambda i: certspotter(i, small, small_label)),
                ("certpilot", lambda i: certpilot(i, c, wl=small, variant=small_label)),
            ]
        for i in range(args.rounds):
            pairs = [plan if i % 2 == 0 else plan[::-1]]
            if not args.no_variants:
                pairs.append(variants if i % 2 == 0 else variants[::-1])
            for tool, fn in (x for pair in pairs for x in pair):
                if tool in tools:
                    runs.append(fn(i))
                    print(_progress(runs[-1]), file=sys.stderr)
        if args.profile and "certpilot" in tools:
            wait_quiet(args.max_load, args.max_wait)
            prof = asyncio.run(
                profile_certpilot(
                    info["url"],
                    base64.b64decode(info["key_b64"]),
                    watchlist,
                    min(args.profile_entries, info["tree_size"]),
                    b,
                    c,
                )
            )
    finally:
        log.close()
        remove_run_directory(work, args.keep)
    return report(args, info, info_machine, runs, prof)


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    info_machine: dict[str, Any],
    runs: list[Run],
    prof: dict[str, Any] | None,
) -> int:
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.tool, r.variant), []).append(r)
    rows = [summarise(g) for g in groups.values()]
    by = {(s["tool"], s["variant"]): s for s in rows}
    cp, cs = by.get(("certpilot", "")), by.get(("certspotter", ""))

    # the same matches: each run's (index, sha256) pairs against the generator's list
    expected = {(i, sha) for i, sha in info["expected"]}
    for s in rows:
        s["same_matches_as_expected"] = s["variant"] == STARTUP or all(
            {*r.found} == expected for r in groups[(s["tool"], s["variant"])]
        )
    startup = by.get(("certpilot", STARTUP))
    if cp is not None and startup is not None and cp["entries"] > 1:
        # certpilot's CPU per entry once started (imports and the watchlist load subtracted)
        steady = (cp["cpu_s_median"] - startup["cpu_s_median"]) / (cp["entries"] - 1)
        cp["steady_entries_per_cpu_s"] = round(1 / steady) if steady > 0 else None
        cp["startup_cpu_s"] = startup["cpu_s_median"]
    same: dict[str, Any] = {"expected_entries": len(expected)}
    if cp is not None and cs is not None:
        cs_run, cp_run = groups[("certspotter", "")][0], groups[("certpilot", "")][0]
        same["certspotter_equals_certpilot"] = {*cs_run.found} == {*cp_run.found}
        same["names_equal"] = sum(
            1 for i, n in cs_run.names.items() if sorted(n) == sorted(cp_run.names.get(i, []))
        )
        same["names_compared"] = len(cs_run.names)
    valid = all(s["valid"] and s["same_matches_as_expected"] for s in rows) and same.get(
        "certspotter_equals_certpilot", True
    )
    ratios: dict[str, float] = {}
    targets: dict[str, bool] = {}
    if cp is not None:
        targets["certpilot_per_core_ge_10k"] = cp["entries_per_cpu_s"] >= TARGET_PER_CORE
    if cp is not None and cs is not None and cs["entries_per_s"] and cs["entries_per_cpu_s"]:
        ratios["entries_per_s"] = round(cp["entries_per_s"] / cs["entries_per_s"], 3)
        ratios["entries_per_cpu_s"] = round(cp["entries_per_cpu_s"] / cs["entries_per_cpu_s"], 3)
        targets["certpilot_rate_ge_certspotter"] = ratios["entries_per_s"] >= 1.0
        small_cp = by.get(("certpilot", f"watchlist {args.small_patterns}"))
        small_cs = by.get(("certspotter", f"watchlist {args.small_patterns}"))
        if small_cp and small_cs and small_cs["entries_per_s"] and small_cs["entries_per_cpu_s"]:
            ratios["small_watchlist_entries_per_s"] = round(
                small_cp["entries_per_s"] / small_cs["entries_per_s"], 3
            )
            ratios["small_watchlist_entries_per_cpu_s"] = round(
                small_cp["entries_per_cpu_s"] / small_cs["entries_per_cpu_s"], 3
            )

    print()
    print(
        f"CT monitoring: loopback RFC 6962 log of {info['tree_size']} entries "
        f"({info['entry_types']}), get-entries limit = batch size {args.batch_limit}, "
        f"{args.patterns} patterns, {len(expected)} watched entries; {args.rounds} round(s); "
        f"log server {'stock (--plain-server)' if args.plain_server else 'pre-encoded'}; "
        f"{info_machine['cpus']} CPUs ({info_machine['cpu_model']}); log built in "
        f"{info['timings']['total_s']}s"
    )
    print(table(rows))
    if "entries_per_s" in ratios:
        extra = (
            f"; with {args.small_patterns} patterns: {ratios['small_watchlist_entries_per_s']:.2f}x"
            f" entries/s, {ratios['small_watchlist_entries_per_cpu_s']:.2f}x per CPU-second"
            if "small_watchlist_entries_per_s" in ratios
            else ""
        )
        print(
            f"certpilot / certspotter: {ratios['entries_per_s']:.2f}x entries/s (wall), "
            f"{ratios['entries_per_cpu_s']:.2f}x entries per CPU-second{extra}"
        )
    print(
        f"same matches: every run equals the {len(expected)} expected (index, sha256) pairs: "
        f"{all(s['same_matches_as_expected'] for s in rows)}; certspotter == certpilot: "
        f"{same.get('certspotter_equals_certpilot', '-')}, names equal "
        f"{same.get('names_equal', '-')}/{same.get('names_compared', '-')}; "
        f"run {'VALID' if valid else 'INVALID'}"
    )
    if cp is not None and "steady_entries_per_cpu_s" in cp:
        print(
            f"certpilot start-up (reading 1 entry): {cp['startup_cpu_s']:.2f} CPU-s; once "
            f"started: {cp['steady_entries_per_cpu_s']} entries per CPU-second"
        )
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    if prof is not None:
        print(
            f"profile ({prof['entries']} entries, in-process, CPU us per entry): "
            f"{prof['phases_us_per_entry']} (sum {prof['phases_sum_us_per_entry']} us = "
            f"{prof['phases_entries_per_cpu_s']}/CPU-s); parse_leaf parts: "
            f"{prof['parse_parts_us_per_entry']}; whole Monitor.step "
            f"{prof['step_cpu_us_per_entry']} us ({prof['step_entries_per_cpu_s']}/CPU-s), "
            f"without GC {prof['step_gc_disabled_cpu_us_per_entry']} us"
        )
        for row in prof["cprofile_top_tottime"][:12]:
            print(
                f"  {row['share']:6.1%} {row['tottime_s']:7.3f}s {row['calls']:>9} "
                f"{row['function']}"
            )
    print(
        result_json(
            "ct_monitor",
            info_machine,
            params={k: v for k, v in vars(args).items() if k not in {"workdir", "keep"}},
            log={k: v for k, v in info.items() if k not in {"expected", "key_b64"}},
            valid=valid,
            same_matches=same,
            ratios=ratios,
            targets=targets,
            results=rows,
            runs=[r.record() for r in runs],
            profile=prof,
        )
    )
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
