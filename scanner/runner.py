"""Runs scans: bounded concurrency, per-target timeouts, worker processes for big fleets.

One asyncio event loop does about 700-900 full probes per second on one core (handshake + chain
parse + judgement are CPU-bound), so large endpoint lists are split into chunks and probed by a
pool of worker processes, one event loop each (see benchmarks/RESULTS.md for the figures).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from certpilot.domain.chain import TrustAnchors
from certpilot.domain.clock import Clock
from certpilot.domain.model import EndpointTarget, FileTarget, Observation, Target
from certpilot.domain.problems import Problem, ProblemCode
from scanner.files import scan_file_target
from scanner.tls_endpoint import ProbeSettings, TlsProber
from scanner.trust import load_anchors

# Below this many endpoints one event loop is as fast as a pool (which costs ~0.3 s to start).
PARALLEL_THRESHOLD = 200
#: Most targets a pool worker probes in one chunk (a 10,000-endpoint fleet on 2 workers makes
#: chunks of 1,250).
MAX_CHUNK = 2000

Progress = Callable[[int], None]


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (``cpu.max``, what a container's CPU limit sets). ``os.cpu_count()`` counts the whole
    machine, so a pod limited to 2 CPUs on a 64-core node would start 64 probe workers."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup_root, "cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclass(frozen=True, slots=True)
class ScanOptions:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    ca_files: tuple[str, ...] = ()
    use_system_trust: bool = True
    workers: int = 0  # 0: one per core when the fleet is large enough; 1: in-process


_WORKER_ANCHORS: dict[tuple[tuple[str, ...], bool], TrustAnchors] = {}
_WORKER_LOOP: list[asyncio.AbstractEventLoop] = []  # one per worker process, made on first use


def _worker_loop() -> asyncio.AbstractEventLoop:
    """The worker process's event loop, kept across chunks.

    Not ``asyncio.run`` per chunk: besides building and tearing down a loop each time, on 3.11
    its SIGINT bookkeeping formats ``repr()`` of the finished task, i.e. of every observation
    in the chunk (``signal.getsignal`` on a ``functools.partial`` handler).
    """
    if not _WORKER_LOOP:
        loop = asyncio.new_event_loop()
        atexit.register(loop.close)
        _WORKER_LOOP.append(loop)
    return _WORKER_LOOP[0]


def _worker_scan(
    targets: list[EndpointTarget],
    ca_files: tuple[str, ...],
    use_system: bool,
    settings: ProbeSettings,
    clock: Clock,
) -> list[Observation]:
    """Body of a worker process: probe one chunk on the worker's private event loop."""
    key = (ca_files, use_system)
    anchors = _WORKER_ANCHORS.get(key)
    if anchors is None:
        anchors = _WORKER_ANCHORS[key] = load_anchors(ca_files, use_system=use_system)
    prober = TlsProber(anchors, clock, settings, anchors_given=bool(ca_files))
    return _worker_loop().run_until_complete(prober.probe(targets))


def _worker_warmup(_: int = 0) -> int:
    """Start-up probe for :func:`warm_up`; ``pool.map`` passes one argument per call."""
    return os.getpid()


class Scanner:
    """Scans endpoint and file targets into observations. Implements ``Prober`` too.

    Owns a process pool while open; call :meth:`close` (or use ``with``) when done.
    """

    def __init__(self, options: ScanOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.anchors = load_anchors(options.ca_files, use_system=options.use_system_trust)
        self._prober = TlsProber(
            self.anchors, clock, options.probe, anchors_given=bool(options.ca_files)
        )
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _workers_for(self, n: int) -> int:
        if self.options.workers > 0:
            return self.options.workers
        if n < PARALLEL_THRESHOLD:
            return 1
        return usable_cpus()

    async def probe(
        self, targets: Sequence[EndpointTarget], progress: Progress | None = None
    ) -> list[Observation]:
        """Probe endpoints; results in the order of ``targets``."""
        return [obs async for chunk in self.probe_chunks(targets, progress) for obs in chunk]

    async def probe_chunks(
        self, targets: Sequence[EndpointTarget], progress: Progress | None = None
    ) -> AsyncIterator[list[Observation]]:
        """Probe endpoints, handing the results on in chunks, in the order of ``targets``: with
        a pool, each chunk as soon as it and the ones before it are done (the pool works on the
        rest meanwhile), so a caller that records each chunk never holds a whole large fleet's
        observations; in-process, one chunk."""
        workers = self._workers_for(len(targets))
        if not targets:
            return
        if workers <= 1 or len(targets) < 2:
            yield await self._prober.probe(targets, progress)
            return
        # Futures leave the queue as they are handed on: a done future holds its chunk.
        pending = collections.deque(self._submit(list(targets), workers, progress))
        try:
            while pending:
                chunk = await pending[0]
                pending.popleft()
                yield chunk
                del chunk
        finally:
            for future in pending:  # the caller stopped early (or a chunk failed): drop the rest
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: no "exception was never retrieved" noise

    def _submit(
        self, targets: list[EndpointTarget], workers: int, progress: Progress | None
    ) -> list[asyncio.Future[list[Observation]]]:
        if self._pool is None:
            # spawn, not fork: the parent runs an event loop and threads (a forked child would
            # inherit their locks); workers are kept for the life of the Scanner.
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        loop = asyncio.get_running_loop()
        per_worker = max(1, self.options.probe.concurrency // workers)
        settings = ProbeSettings(
            timeout=self.options.probe.timeout,
            concurrency=per_worker,
            policy=self.options.probe.policy,
        )
        # Chunks several times smaller than a worker's share keep both cores busy to the end and
        # give the progress bar something to show; at most MAX_CHUNK, so that a worker's memory
        # (about 14 KB per target of its chunk) and the main process's (the chunks done but not
        # yet recorded) do not grow with the fleet.
        chunk = min(MAX_CHUNK, max(per_worker, len(targets) // (workers * 4) or 1))
        # A target's default labels are a MappingProxyType, which pickle refuses: send workers
        # plain dicts (each observation copies its target's labels, so those come back too).
        targets = [replace(t, labels=dict(t.labels)) for t in targets]
        pool = self._pool

        def done(piece: int, future: asyncio.Future[list[Observation]]) -> None:
            if progress is not None and not future.cancelled():
                progress(piece)

        futures: list[asyncio.Future[list[Observation]]] = []
        for i in range(0, len(targets), chunk):
            piece = targets[i : i + chunk]
            future = loop.run_in_executor(
                pool,
                _worker_scan,
                piece,
                self.options.ca_files,
                self.options.use_system_trust,
                settings,
                self.clock,
            )
            future.add_done_callback(functools.partial(done, len(piece)))
            futures.append(future)
        return futures

    async def scan_files(
        self,
        targets: Sequence[FileTarget],
        env: Mapping[str, str],
        progress: Progress | None = None,
    ) -> list[Observation]:
        out: list[Observation] = []
        for t in targets:
            started = time.perf_counter()
            found = await asyncio.to_thread(
                scan_file_target, t, self.clock.now(), env=env, policy=self.options.probe.policy
            )
            if not found:
                msg = f"no file matches {t.pattern}"
                found = [
                    Observation(
                        source="file",
                        ref=f"file://{t.pattern}",
                        target=t.name,
                        observed_at=self.clock.now(),
                        problems=(Problem(ProblemCode.UNREADABLE, msg),),
                        error=msg,
                        duration_seconds=time.perf_counter() - started,
                        labels=t.labels,
                    )
                ]
            out.extend(found)
            if progress is not None:
                progress(1)
        return out

    async def scan(
        self,
        targets: Sequence[Target],
        *,
        env: Mapping[str, str] | None = None,
        progress: Progress | None = None,
    ) -> list[Observation]:
        """Scan a mixed list of targets: endpoints first, then files, each in given order."""
        endpoints = [t for t in targets if isinstance(t, EndpointTarget)]
        files = [t for t in targets if isinstance(t, FileTarget)]
        out = await self.probe(endpoints, progress) if endpoints else []
        if files:
            out += await self.scan_files(files, env if env is not None else os.environ, progress)
        return out


def warm_up(scanner: Scanner, workers: int) -> None:
    """Start the pool's processes ahead of the first scan (benchmarks exclude the start-up)."""
    if scanner._pool is None:
        scanner._pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    list(scanner._pool.map(_worker_warmup, range(workers * 2)))
