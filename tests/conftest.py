"""Shared fixtures: a fixed 'now', the loopback problem fleet, a local CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certpilot.domain.clock import FixedClock, SystemClock
from certpilot.fleet import Fleet, start_fleet
from certpilot.localca import LocalCA


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
