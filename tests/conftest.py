"""Shared fixtures: a fixed 'now', the loopback problem fleet, a local CA."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certpilot.domain.clock import FixedClock, SystemClock
from certpilot.fleet import Fleet, start_fleet
from certpilot.localca import LocalCA
from tests.support.postgres import PostgresCluster, require_postgres


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def clock(now: datetime) -> FixedClock:
    return FixedClock(now)


@pytest.fixture
def ca(now: datetime) -> LocalCA:
    return LocalCA("Test", now)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    # Real servers judge with the real clock: certificates are minted relative to it.
    f = await start_fleet(tmp_path / "fleet", SystemClock().now())
    try:
        yield f
    finally:
        await f.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the whole run, started on first use.

    Its data lives outside pytest's temporary directory: another pytest session starting on
    the machine resets that directory to 0700, which would lock the ``postgres`` user out."""
    bindir = require_postgres()
    work = Path(tempfile.mkdtemp(prefix="certpilot-pg-"))
    cluster = PostgresCluster(work, bindir)
    try:
        with cluster:
            yield cluster
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_cluster.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on PostgreSQL (DESIGN.md: both are tested)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    return cluster.database()
