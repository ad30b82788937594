"""``certpilot run`` in-process following a Kubernetes source with ``watch: true``.

The real :class:`certpilot.app.Service` on 127.0.0.1:0 (SQLite in ``tmp_path``, scans every
hour, so only the watch can bring changes in time) against the loopback API server fake
(``tests/support/k8s_fake.py``): the Secret present at start is in ``/api/v1/inventory``; a TLS
Secret added later appears, and its deletion removes it with a ``location_removed`` event;
the service stops cleanly, its watch with it. The watched source is not listed by the scan
cycle (only the watch's own LIST and WATCH reach the API server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.localca import Issued, LocalCA
from certpilot.settings import settings_from_mapping
from tests.support.k8s_fake import FakeKubeAPI

TLS = "kubernetes.io/tls"
DEADLINE = 30.0

T = TypeVar("T")


def ref(name: str) -> str:
    return f"k8s://c1/web/secret/{name}#tls.crt"


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = DEADLINE
) -> T:
    """Poll ``probe`` until it returns something other than ``None`` (at most ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await probe()
        if got is not None:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def put_tls(kube: FakeKubeAPI, name: str, issued: Issued) -> None:
    data = {"tls.crt": issued.cert_pem(), "tls.key": issued.key_pem()}
    kube.put_secret("web", name, data, type=TLS)


@dataclass
class Running:
    service: Service
    task: asyncio.Task[None]
    session: aiohttp.ClientSession

    async def get(self, path: str) -> Any:
        assert not self.task.done(), "the service stopped"
        async with self.session.get(f"http://127.0.0.1:{self.service.port}{path}") as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def items(self) -> dict[str, dict[str, Any]]:
        body = await self.get("/api/v1/inventory")
        return {i["ref"]: i for i in body["items"]}


@pytest.fixture
def ca() -> LocalCA:
    return LocalCA("Watch CA", datetime.now(UTC))


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(namespaces=("web", "other"), directory=tmp_path / "apiserver") as api:
        yield api


@pytest.fixture
async def running(tmp_path: Path, kube: FakeKubeAPI, ca: LocalCA) -> AsyncIterator[Running]:
    put_tls(kube, "first", ca.issue(["first.watch.test"], datetime.now(UTC)))
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    settings = settings_from_mapping(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": 0},
            "scan": {"interval": "1h", "system_trust": False, "crl_checks": False},
            "slo": {"evaluation_interval": "1h"},
            "targets": {
                "kubernetes": [
                    {
                        "name": "c1",
                        "kubeconfig": str(kubeconfig),
                        "watch": True,
                        "namespaces": ["web"],
                        "kinds": ["tls_secrets"],
                    }
                ]
            },
        },
        "test",
    )
    service = Service(settings, SystemClock(), env={})
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="certpilot-run")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def ready() -> bool | None:
            if task.done():
                task.result()  # raises what stopped the service
                raise AssertionError("the service stopped")
            return True if service.ready and service.port else None

        await eventually(ready, "the first scan cycle")
        try:
            yield Running(service, task, session)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.shield(task), timeout=DEADLINE)
    task.result()  # a clean stop: no exception
    # The fake notices the closed stream on its own thread, shortly after.
    await eventually(lambda: _ready(kube.open_watches == 0), "the watch to close", 5.0)


async def test_the_service_follows_a_watched_cluster(
    running: Running, kube: FakeKubeAPI, ca: LocalCA
) -> None:
    first = await eventually(
        lambda: _item(running, ref("first")), "the Secret listed at start in the inventory"
    )
    assert first["source"] == "k8s" and first["problems"] == []
    assert first["labels"]["secret_name"] == "first"

    # Added while the service runs: in the inventory long before the next scan (1h).
    await eventually(lambda: _ready(kube.open_watches == 1), "the watch to be open")
    added = ca.issue(["added.watch.test"], datetime.now(UTC))
    put_tls(kube, "added", added)
    item = await eventually(lambda: _item(running, ref("added")), "the added Secret")
    assert item["serial"] == added.serial_hex

    # Deleted: gone from the inventory, with an event saying so.
    kube.delete_secret("web", "added")

    async def removed() -> bool | None:
        return True if ref("added") not in await running.items() else None

    await eventually(removed, "the deleted Secret to leave the inventory")
    body = await running.get("/api/v1/events")
    kinds = [(e["kind"], e["ref"]) for e in body["events"]]
    assert ("location_added", ref("added")) in kinds
    assert kinds[-1] == ("location_removed", ref("added"))
    assert ref("first") in await running.items()

    # Only the watch reached the API server: one LIST, then WATCH, no scan-cycle listing.
    lists = [r for r in kube.requests if r.query.get("watch") != "true"]
    assert [r.path for r in lists] == ["/api/v1/namespaces/web/secrets"]


async def _item(running: Running, key: str) -> dict[str, Any] | None:
    return (await running.items()).get(key)


async def _ready(condition: bool) -> bool | None:
    return True if condition else None
