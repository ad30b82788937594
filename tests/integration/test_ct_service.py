"""``certpilot run`` with a CT log: matches become inventory locations, classified.

The real :class:`certpilot.app.Service` (SQLite in ``tmp_path``, HTTP on 127.0.0.1:0) scans one
certificate file (ours) and watches the loopback RFC 6962 log for ``.ours.test``. The log holds:

* the certificate from the file (its serial and key are known): **expected**;
* a certificate for ``evil.ours.test`` from another CA (not an allowed issuer): **unexpected**;
* a certificate for ``new.ours.test`` from our own CA, but a key and serial nobody knows:
  **unexpected**, until a team's file holding it joins the inventory: then **expected**.

Checked through ``/api/v1/inventory``, ``/metrics`` (the ``UnexpectedIssuance`` alert's
``certpilot_certificate_problem``, ``certpilot_ct_*``, the ``expected_issuance`` SLI) and the
``ct_log`` state table.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.localca import LocalCA
from certpilot.settings import settings_from_mapping
from certpilot.store.ct import CTStore
from tests.support.ct_log import LoopbackCTLog

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
DEADLINE = 60.0
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        got = await probe()
        if got is not None:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {DEADLINE:g}s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class World:
    service: Service
    task: asyncio.Task[None]
    session: aiohttp.ClientSession
    log: LoopbackCTLog
    team_file: Path
    new_pem: bytes
    db: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    async def items(self) -> list[dict[str, Any]]:
        async with self.session.get(self.base + "/api/v1/inventory") as resp:
            assert resp.status == 200
            body = await resp.json()
        return list(body["items"] if isinstance(body, dict) else body)

    async def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        async with self.session.get(self.base + "/metrics") as resp:
            text = await resp.text()
        return [
            (s.name, dict(s.labels), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
        ]


def _pem_file(path: Path, ca: LocalCA, names: list[str], now: datetime) -> tuple[bytes, bytes]:
    issued = ca.issue(names, now)
    pem = issued.chain_pem()
    path.write_bytes(pem)
    return issued.cert.public_bytes(DER), pem


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    now = datetime.now(UTC)
    ours, evil = LocalCA("Ours", now), LocalCA("Evil", now)
    site = tmp_path / "site.pem"
    ours_der, _ = _pem_file(site, ours, ["www.ours.test"], now)
    new_der, new_pem = _pem_file(tmp_path / "unused.pem", ours, ["new.ours.test"], now)
    evil_der = evil.issue(["evil.ours.test"], now).cert.public_bytes(DER)
    root = tmp_path / "root.pem"
    root.write_bytes(ours.root.public_bytes(PEM))
    team_file = tmp_path / "team.pem"  # appears later
    db = f"sqlite:///{tmp_path / 'certpilot.db'}"
    async with LoopbackCTLog(batch_limit=2) as log:
        log.add_x509(ours_der)
        log.add_x509(ours.issue(["www.elsewhere.test"], now).cert.public_bytes(DER))
        log.add_x509(evil_der)
        log.add_x509(new_der)
        log.publish()
        settings = settings_from_mapping(
            {
                "store": {"url": db},
                "http": {"host": "127.0.0.1", "port": 0},
                "scan": {"interval": "1s", "ca_files": [str(root)], "system_trust": False},
                "slo": {"evaluation_interval": "1h"},
                "targets": {"files": [str(site), str(team_file)]},
                "remediation": {"enabled": False},
                "ownership": {"rules": [{"owner": "web", "names": ["*.ours.test"]}]},
                "ct": {
                    "logs": [
                        {"url": log.url, "key": base64.b64encode(log.public_key_der).decode()}
                    ],
                    "watch": [".ours.test"],
                    "start": "beginning",
                    "interval": "1s",
                    "grace": "1s",
                },
            },
            "test",
        )
        service = Service(settings, SystemClock(), env={})
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            w = World(service, task, session, log, team_file, new_pem, db)

            async def port() -> int | None:
                if task.done():
                    task.result()
                return service.port

            await eventually(port, "the HTTP server")
            try:
                yield w
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.shield(task), timeout=DEADLINE)


async def test_matches_are_classified_into_the_inventory(world: World) -> None:
    async def three_ct_items() -> list[dict[str, Any]] | None:
        assert not world.task.done()
        items = [i for i in await world.items() if i["source"] == "ct"]
        return items if len(items) == 3 else None

    items = {i["target"]: i for i in await eventually(three_ct_items, "three CT matches")}
    assert set(items) == {"www.ours.test", "evil.ours.test", "new.ours.test"}
    assert items["www.ours.test"]["problems"] == []
    assert items["www.ours.test"]["labels"]["ct_verdict"] == "expected"
    assert items["www.ours.test"]["labels"]["ct_reason"] == "serial known to the inventory"
    assert items["evil.ours.test"]["problems"] == ["unexpected_issuance"]
    assert "not an allowed issuer" in items["evil.ours.test"]["labels"]["ct_reason"]
    assert items["new.ours.test"]["problems"] == ["unexpected_issuance"]
    for i in items.values():
        assert i["ref"].startswith("ct://")
        assert i["labels"]["ct_log"] == world.log.url
        assert i["labels"]["owner"] == "web"
    assert items["evil.ours.test"]["labels"]["ct_index"] == "2"

    samples = await world.metrics()
    problem = [
        lab["ref"]
        for n, lab, v in samples
        if n == "certpilot_certificate_problem" and lab["code"] == "unexpected_issuance"
    ]
    assert sorted(problem) == sorted(
        [items["evil.ours.test"]["ref"], items["new.ours.test"]["ref"]]
    )
    # Seen in CT is not deployed: no expiry series for CT locations.
    assert not [
        lab for n, lab, _ in samples if n == "x509_cert_not_after" and lab["source"] == "ct"
    ]
    by = {(n, lab.get("log", lab.get("verdict", lab.get("sli", "")))): v for n, lab, v in samples}
    assert by[("certpilot_ct_tree_size", world.log.url)] == 4
    assert by[("certpilot_ct_backlog_entries", world.log.url)] == 0
    assert by[("certpilot_ct_log_up", world.log.url)] == 1
    assert by[("certpilot_ct_matches_total", world.log.url)] == 3
    bad = [
        v
        for n, lab, v in samples
        if n == "certpilot_sli_events_total"
        and lab.get("sli") == "expected_issuance"
        and lab.get("result") == "bad"
    ]
    assert bad == [2.0]

    store = CTStore.open(world.db)
    try:
        (row,) = store.all()
        assert row.url == world.log.url and row.next_index == 4
        assert row.head is not None and row.head["tree_size"] == 4
    finally:
        store.close()

    # The team's certificate joins the inventory: the next refresh decides again.
    world.team_file.write_bytes(world.new_pem)

    async def resolved() -> dict[str, Any] | None:
        for i in await world.items():
            if i["target"] == "new.ours.test" and i["source"] == "ct" and not i["problems"]:
                return i
        return None

    item = await eventually(resolved, "new.ours.test to become expected")
    assert item["labels"]["ct_verdict"] == "expected"
    assert item["labels"]["ct_reason"] in {
        "serial known to the inventory",
        "key known to the inventory",
    }


async def test_certstream_feed_matches_are_recorded_as_unverified_hints(tmp_path: Path) -> None:
    """``ct.certstream``: a feed's matches become ``ct://`` locations too, labelled as coming
    from the (unverified) feed; ours is expected, a rogue CA's is unexpected."""
    from tests.support.certstream_server import LoopbackCertstream, certificate_update

    now = datetime.now(UTC)
    ours, evil = LocalCA("Ours", now), LocalCA("Evil", now)
    site = tmp_path / "site.pem"
    issued = ours.issue(["www.ours.test"], now)
    site.write_bytes(issued.chain_pem())
    rogue = evil.issue(["evil.ours.test"], now)
    with LoopbackCertstream(heartbeat_interval=0.5) as feed:
        settings = settings_from_mapping(
            {
                "store": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
                "http": {"host": "127.0.0.1", "port": 0},
                "scan": {"interval": "1h", "system_trust": False},
                "slo": {"evaluation_interval": "1h"},
                "targets": {"files": [str(site)]},
                "remediation": {"enabled": False},
                "ct": {
                    "certstream": [{"url": feed.ws_url("/full-stream")}],
                    "watch": [".ours.test"],
                },
            },
            "test",
        )
        service = Service(settings, SystemClock(), env={})
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            await eventually(lambda: _connected(feed, task), "the service to connect to the feed")
            feed.send(certificate_update(issued.cert, index=7))
            feed.send(certificate_update(ours.issue(["x.elsewhere.test"], now).cert, index=8))
            feed.send(certificate_update(rogue.cert, index=9))
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{service.port}"

                async def two() -> list[dict[str, Any]] | None:
                    async with session.get(base + "/api/v1/inventory?source=ct") as resp:
                        items = (await resp.json())["items"]
                    return items if len(items) == 2 else None

                items = {i["target"]: i for i in await eventually(two, "two feed matches")}
                assert items["www.ours.test"]["problems"] == []
                assert items["evil.ours.test"]["problems"] == ["unexpected_issuance"]
                for i in items.values():
                    assert i["labels"]["ct_source"] == "certstream"
                    assert i["labels"]["ct_feed"] == feed.ws_url("/full-stream")
                assert items["evil.ours.test"]["labels"]["ct_index"] == "9"

                async with session.get(base + "/metrics") as resp:
                    text = await resp.text()
                url = feed.ws_url("/full-stream")
                assert f'certpilot_ct_feed_connected{{url="{url}"}} 1.0' in text
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=DEADLINE)


async def _connected(feed: Any, task: asyncio.Task[None]) -> bool | None:
    if task.done():
        task.result()
    return True if feed.client_count > 0 else None


async def test_replicas_share_the_ct_logs_out_and_take_over_a_stopped_one_s(
    tmp_path: Path,
) -> None:
    """Replicas on one database share eight CT logs out. The first follows all eight; once a
    second joins, each log is followed by exactly one of them (its ``certpilot_ct_log_up`` is
    exported by that replica only: the first forgets the gauges of the logs it hands over, or
    ``max by (log)`` would hide an outage behind a frozen 1), and every log's match is
    recorded. When the second stops, the first follows all eight again."""
    now = datetime.now(UTC)
    ours = LocalCA("Ours", now)
    site = tmp_path / "site.pem"
    site.write_bytes(ours.issue(["www.ours.test"], now).chain_pem())
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    async with contextlib.AsyncExitStack() as stack:
        logs = [await stack.enter_async_context(LoopbackCTLog()) for _ in range(8)]
        for i, log in enumerate(logs):
            log.add_x509(ours.issue([f"n{i}.ours.test"], now).cert.public_bytes(DER))
            log.publish()
        settings = settings_from_mapping(
            {
                "store": {"url": db},
                "http": {"host": "127.0.0.1", "port": 0},
                "scan": {"interval": "1s", "system_trust": False},
                "slo": {"evaluation_interval": "1h"},
                "targets": {"files": [str(site)]},
                "remediation": {"enabled": False},
                "cluster": {"heartbeat": "0.5s", "ttl": "1.5s"},
                "ct": {
                    "logs": [
                        {"url": lg.url, "key": base64.b64encode(lg.public_key_der).decode()}
                        for lg in logs
                    ],
                    "watch": [".ours.test"],
                    "start": "beginning",
                    "interval": "0.5s",
                },
            },
            "test",
        )
        replicas = [Service(settings, SystemClock(), env={}) for _ in range(2)]
        stops = [asyncio.Event() for _ in replicas]
        tasks = [asyncio.create_task(replicas[0].run(stops[0]))]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        every = {lg.url for lg in logs}

        async def followed(service: Service) -> set[str]:
            async with session.get(f"http://127.0.0.1:{service.port}/metrics") as resp:
                text = await resp.text()
            return {
                s.labels["log"]
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "certpilot_ct_log_up" and s.value == 1
            }

        async def shared_out() -> list[set[str]] | None:
            for t in tasks:
                if t.done():
                    t.result()
            if not all(r.port for r in replicas):
                return None
            sets = [await followed(r) for r in replicas]
            return sets if not (sets[0] & sets[1]) and sets[0] | sets[1] == every else None

        async def all_on_the_first() -> bool | None:
            if tasks[0].done():
                tasks[0].result()
            return True if replicas[0].port and await followed(replicas[0]) == every else None

        async def every_match() -> list[dict[str, Any]] | None:
            base = f"http://127.0.0.1:{replicas[0].port}"
            async with session.get(base + "/api/v1/inventory?source=ct") as resp:
                items = (await resp.json())["items"]
            return items if len(items) == len(logs) else None

        try:
            await eventually(all_on_the_first, "the only replica to follow every log")
            tasks.append(asyncio.create_task(replicas[1].run(stops[1])))
            await eventually(shared_out, "each log followed by exactly one replica")
            matches = await eventually(every_match, "a match from every log")
            assert sorted(i["labels"]["ct_log"] for i in matches) == sorted(every)
            stops[1].set()
            await asyncio.wait_for(tasks[1], timeout=DEADLINE)
            await eventually(all_on_the_first, "the remaining replica to follow every log")
        finally:
            for s in stops:
                s.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE)
