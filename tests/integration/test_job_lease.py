"""A job's lease is kept alive while its executor works on it (``Executor._leased``), on SQLite
and PostgreSQL: a step longer than the lease (a slow reload, a long verification) is not taken
over by another replica; once the holder stops, the lease runs out and it can be."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from certpilot.domain.clock import SystemClock
from certpilot.store import AuditLog, JobStore, NewJob
from remediator.executor import Executor


async def test_a_step_longer_than_the_lease_keeps_the_job(store_url: str) -> None:
    clock = SystemClock()
    jobs, audit = JobStore.open(store_url), AuditLog.open(store_url)
    try:
        created = jobs.create(NewJob(key="slow", action="renew", targets=("t",)), now=clock.now())
        now = clock.now()
        held = jobs.transition(
            created.job.id, "approved", "deploying", now=now, owner="a",
            lease_until=now + timedelta(seconds=0.6),
        )  # fmt: skip

        def executor(name: str) -> Executor:
            return Executor(jobs, audit, {}, {}, prober=None, clock=clock, instance=name, lease=0.6)  # type: ignore[arg-type]

        a, b = executor("a"), executor("b")
        async with a._leased(held.id):
            for _ in range(6):  # 1.8 s: three leases long
                await asyncio.sleep(0.3)
                job = jobs.get(held.id)
                assert job.lease_until is not None and job.lease_until > clock.now()
                assert await b.resume_all(others_only=True) == []  # held by a: left alone
        job = jobs.get(held.id)
        # Renewals are not changes: the holder's next compare-and-set still holds.
        assert (job.state, job.owner, job.version) == ("deploying", "a", held.version)
        assert job.updated_at == held.updated_at
        await asyncio.sleep(0.7)  # a stopped renewing: the lease runs out
        job = jobs.get(held.id)
        assert job.lease_until is not None and job.lease_until < clock.now()
        # Nor does a renewal touch a job that is not the renewer's, or not in flight.
        assert not jobs.extend_lease(held.id, owner="b", until=clock.now())
        jobs.transition(held.id, "deploying", "failed", now=clock.now(), version=held.version)
        assert not jobs.extend_lease(held.id, owner="a", until=clock.now())
    finally:
        jobs.close()
        audit.close()


def _claim_after(jobs: JobStore, key: str, *, renewed: bool) -> None:
    """b reads a job whose lease ran out, a renews it (or not), b claims it."""
    now = SystemClock().now()
    created = jobs.create(NewJob(key=key, action="renew", targets=("t",)), now=now)
    jobs.transition(
        created.job.id, "approved", "verifying", now=now, owner="a",
        lease_until=now - timedelta(seconds=1),
    )  # fmt: skip
    seen = jobs.get(created.job.id)  # by b: the lease has run out
    if renewed:
        assert jobs.extend_lease(seen.id, owner="a", until=now + timedelta(seconds=30))
    jobs.update(
        seen.id, seen.state, now=now, version=seen.version, unleased_at=now, owner="b",
        lease_until=now + timedelta(seconds=30),
    )  # fmt: skip


def test_a_takeover_claim_loses_to_a_renewal_made_after_it_read_the_job(store_url: str) -> None:
    """Replica b reads a job whose lease ran out (its holder stalled); the holder then renews
    it (no new version). b's claim is a compare-and-set that also requires the lease to be
    out (``unleased_at``), so it fails instead of taking a job still being worked on; without
    the renewal the same claim succeeds."""
    import pytest

    from certpilot.store.jobs import JobConflict

    with JobStore.open(store_url) as jobs:
        with pytest.raises(JobConflict, match="is leased until"):
            _claim_after(jobs, "renewed", renewed=True)
        assert [j.owner for j in jobs.list()] == ["a"]
        _claim_after(jobs, "stalled", renewed=False)
        assert [j.owner for j in jobs.list()] == ["a", "b"]
