"""Replicas on one database (``certpilot.cluster``, ``certpilot.store.cluster``).

Against a real PostgreSQL cluster (and SQLite where it applies): rendezvous sharding gives
every endpoint exactly one owner and moves only the leaver's share; the leader lock is
exclusive and is taken over within a bounded time when its holder is killed with SIGKILL;
membership expires by the database's clock, whatever the replicas' own clocks say; two
executors with clocks ten minutes apart never take each other's leased jobs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from certpilot.cluster import Cluster, DatabaseClock, owner_of
from certpilot.domain.clock import FixedClock, SystemClock
from certpilot.store.cluster import ClusterStore, LeaderLock

HOLD = """
import sys, time
from certpilot.store.cluster import LeaderLock
lock = LeaderLock(sys.argv[1])
assert lock.try_acquire(), "the lock was not free"
print("held", flush=True)
time.sleep(600)
"""


def test_rendezvous_gives_each_key_one_owner_and_moves_only_the_leavers_share() -> None:
    keys = [f"tls://h{i}.test:443#h{i}.test" for i in range(3000)]
    three = ["a:1", "b:2", "c:3"]
    owners = {k: owner_of(k, three) for k in keys}
    counts = Counter(owners.values())
    assert set(counts) == set(three) and min(counts.values()) > 800  # roughly even
    two = ["a:1", "c:3"]
    moved = [k for k in keys if owner_of(k, two) != owners[k]]
    assert moved and all(owners[k] == "b:2" for k in moved)  # only b's keys moved
    assert owner_of("x", []) is None


def _spawn_holder(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read() if proc.stderr else line
    return proc


def _takeover_after_kill(url: str) -> float:
    holder = _spawn_holder(url)
    mine = LeaderLock(url)
    try:
        assert not mine.try_acquire()  # exclusive
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        while not mine.try_acquire():
            assert time.monotonic() - started < 10, "no takeover within 10 s"
            time.sleep(0.05)
        return time.monotonic() - started
    finally:
        mine.close()
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(10)


def test_leader_lock_is_exclusive_and_taken_over_after_kill_9_on_postgresql(pg_url: str) -> None:
    ClusterStore.open(pg_url).close()
    assert _takeover_after_kill(pg_url) < 2.0


def test_leader_lock_on_sqlite_is_a_file_lock_released_by_the_kernel(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    ClusterStore.open(url).close()
    assert _takeover_after_kill(url) < 2.0
    assert oct((tmp_path / "c.db.leader").stat().st_mode & 0o777) == "0o600"


def test_membership_expires_by_the_databases_clock(pg_url: str) -> None:
    store = ClusterStore.open(pg_url)
    try:
        ttl = timedelta(seconds=1)
        assert store.heartbeat("a", host="h", pid=1, ttl=ttl) == ["a"]
        assert store.heartbeat("b", host="h", pid=2, ttl=ttl) == ["a", "b"]
        time.sleep(1.2)
        assert store.heartbeat("b", host="h", pid=2, ttl=ttl) == ["b"]  # a stopped beating
        rows = {m["id"]: m for m in store.members(ttl)}
        assert rows["a"]["alive"] is False and rows["b"]["alive"] is True
        store.leave("b")
        assert [m["id"] for m in store.members(ttl)] == ["a"]
    finally:
        store.close()


async def test_two_replicas_with_skewed_clocks_share_work_and_one_leads(pg_url: str) -> None:
    real = SystemClock()
    ahead = FixedClock(real.now() + timedelta(minutes=10))  # a replica whose clock is wrong
    a = Cluster(pg_url, real, ttl=5, replica="a")
    b = Cluster(pg_url, ahead, ttl=5, replica="b")
    try:
        await a.tick()
        await b.tick()
        await a.tick()
        assert a.members == b.members == ["a", "b"]
        assert [a.is_leader, b.is_leader].count(True) == 1
        # The skewed replica's corrected clock agrees with the database's within a second.
        assert abs((b.clock.now() - a.clock.now()).total_seconds()) < 1.0
        keys = [f"k{i}" for i in range(200)]
        assert sorted(a.share(keys) + b.share(keys)) == sorted(keys)
        assert not set(a.share(keys)) & set(b.share(keys))
        # The leader leaves cleanly: the other leads at its next heartbeat.
        leader, other = (a, b) if a.is_leader else (b, a)
        leader.close()
        await other.tick()
        assert other.is_leader and other.members == [other.id]
    finally:
        for c in (a, b):
            c.close()


def test_database_clock_follows_the_database_not_the_local_clock() -> None:
    base = FixedClock(SystemClock().now() - timedelta(hours=3))
    clock = DatabaseClock(base)
    truth = SystemClock().now()
    clock.sync(truth, base.now(), base.now())
    assert abs((clock.now() - truth).total_seconds()) < 0.01
    base.advance(timedelta(seconds=30))
    assert abs((clock.now() - truth).total_seconds() - 30) < 0.01


async def test_cluster_run_keeps_heartbeating_until_stopped(tmp_path: Path) -> None:
    c = Cluster(f"sqlite:///{tmp_path / 'one.db'}", SystemClock(), heartbeat=0.05, ttl=1)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 5)
    try:
        assert c.is_leader and c.members == [c.id]  # SQLite: a cluster of one leads
        (row,) = c.store.members(c.ttl)
        assert row["alive"] and row["pid"] == os.getpid()
    finally:
        c.close()


async def test_a_skewed_replica_does_not_take_a_job_another_holds(pg_url: str) -> None:
    """Leases compare database time: a replica whose clock runs ten minutes ahead does not
    see a five-minute lease as expired; once the holder really stops renewing, it resumes it."""
    from certpilot.store import AuditLog, JobStore, NewJob
    from remediator.executor import Executor

    real = SystemClock()
    skewed_base = FixedClock(real.now() + timedelta(minutes=10))
    a = Cluster(pg_url, real, replica="a")
    b = Cluster(pg_url, skewed_base, replica="b")
    jobs, audit = JobStore.open(pg_url), AuditLog.open(pg_url)
    try:
        await a.tick()
        await b.tick()
        created = jobs.create(NewJob(key="held", action="renew", targets=("t",)), now=a.clock.now())
        now = a.clock.now()
        jobs.transition(
            created.job.id,
            "approved",
            "issuing",
            now=now,
            owner="replica-a",
            lease_until=now + timedelta(minutes=5),
        )

        def executor(clock: object, name: str) -> Executor:
            return Executor(jobs, audit, {}, {}, prober=None, clock=clock, instance=name)  # type: ignore[arg-type]

        assert await executor(b.clock, "replica-b").resume_all() == []
        assert jobs.get(created.job.id).state == "issuing"
        # Without the correction the same replica would have taken it (its clock says the
        # lease ran out five minutes ago).
        naive = await executor(skewed_base, "replica-b").resume_all()
        assert [o.job.id for o in naive] == [created.job.id]
    finally:
        jobs.close()
        audit.close()
        a.close()
        b.close()
