"""Several ``certpilot run`` replicas on one database: who is alive, who scans what, who leads.

* **Membership**: every replica heartbeats into the ``replica`` table every ``heartbeat``
  seconds (database time); the live members are those seen within ``ttl``.
* **Sharding**: each endpoint belongs to exactly one live member, by rendezvous hashing
  (the member with the highest ``sha256(member | key)``): when a member joins or leaves, only
  its share moves. A replica killed with ``kill -9`` stops heartbeating; after ``ttl`` the
  others see it gone and take its endpoints on their next scan.
* **Leadership**: the singleton work (renewal planning, SLO evaluation, paging, CT monitors,
  secrets-store scans, forgetting gone locations) runs on the replica holding the
  :class:`~certpilot.store.cluster.LeaderLock`; every heartbeat the others try to take it, so a
  dead leader is replaced within one heartbeat of the database noticing its connection died.
  Remediation jobs run on any replica: claiming one is a compare-and-set in the job store, and a
  job whose owner stopped renewing its lease is resumed by another.
* **Time**: :class:`DatabaseClock` corrects the local clock by the database's, so leases and
  heartbeats compare the same clock on every replica, whatever their own clocks say.

One process on SQLite is a cluster of one that always leads (the lock is a file lock, so a
second process on the same file waits as a follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from certpilot.domain.clock import Clock
from certpilot.store.cluster import ClusterStore, LeaderLock

log = logging.getLogger("certpilot.cluster")


class DatabaseClock:
    """``base`` shifted by the offset to the database's clock (measured at each heartbeat)."""

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self.base.now() + self.offset

    def sync(self, db_now: datetime, before: datetime, after: datetime) -> None:
        """The database said ``db_now`` between local ``before`` and ``after``."""
        midpoint = before + (after - before) / 2
        self.offset = db_now - midpoint


def owner_of(key: str, members: Sequence[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the member ``key`` belongs to."""
    best: tuple[bytes, str] | None = None
    for m in members:
        weight = hashlib.sha256(f"{m}\x00{key}".encode()).digest()
        if best is None or weight > best[0]:
            best = (weight, m)
    return best[1] if best else None


def replica_id(instance: str | None = None) -> str:
    """``instance:pid:random``: unique per process, readable in logs and the API."""
    return f"{instance or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Cluster:
    """This replica's view of the cluster; :meth:`tick` refreshes it, :meth:`run` keeps doing so."""

    def __init__(
        self,
        url: str,
        base_clock: Clock,
        *,
        heartbeat: float = 5.0,
        ttl: float = 20.0,
        replica: str | None = None,
        on_leadership: Callable[[bool], None] | None = None,
    ) -> None:
        self.id = replica or replica_id()
        self.heartbeat = heartbeat
        self.ttl = timedelta(seconds=ttl)
        self.clock = DatabaseClock(base_clock)
        self.store = ClusterStore.open(url)
        self.lock = LeaderLock(url)
        # Only a database server has a clock of its own to agree on; SQLite's is ours.
        self.correct_clock = self.store.dialect == "postgresql"
        self.members: list[str] = [self.id]
        self.is_leader = False
        self._on_leadership = on_leadership or (lambda _leader: None)
        self.leader_since: float | None = None

    def owns(self, key: str) -> bool:
        return owner_of(key, self.members) == self.id

    def share(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if self.owns(k)]

    def _tick(self) -> tuple[list[str], bool]:
        if self.correct_clock:
            before = self.clock.base.now()
            db_now = self.store.db_now()
            after = self.clock.base.now()
            self.clock.sync(db_now, before, after)
        members = self.store.heartbeat(
            self.id, host=socket.gethostname(), pid=os.getpid(), ttl=self.ttl
        )
        leader = self.lock.try_acquire()
        return members, leader

    async def tick(self) -> None:
        """Heartbeat, refresh the members, try to lead (off the event loop)."""
        members, leader = await asyncio.to_thread(self._tick)
        if self.id not in members:  # our own row is always fresh; a race with a cleanup
            members = sorted([*members, self.id])
        if members != self.members:
            log.info("replicas: %s (was %s)", ", ".join(members), ", ".join(self.members))
        self.members = members
        if leader != self.is_leader:
            log.info("replica %s %s leadership", self.id, "took" if leader else "lost")
            self.is_leader = leader
            self.leader_since = time.monotonic() if leader else None
            self._on_leadership(leader)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as e:  # the database is down: keep the last view, retry
                log.warning("cluster heartbeat failed: %s", e)
                if self.is_leader and not await asyncio.to_thread(self.lock.try_acquire):
                    self.is_leader = False
                    self._on_leadership(False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.heartbeat)

    def status(self) -> dict[str, object]:
        return {
            "replica": self.id,
            "leader": self.is_leader,
            "members": list(self.members),
            "clock_offset_seconds": round(self.clock.offset.total_seconds(), 3),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.store.leave(self.id)
        self.lock.close()
        self.store.close()


__all__ = ["Cluster", "DatabaseClock", "owner_of", "replica_id"]
