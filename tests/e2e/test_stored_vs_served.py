"""Stored vs served through the running service (issue 6, items 1 and 4), real components:

``certpilot run`` scans an nginx endpoint and an OpenBao KV store in the same cycle. OpenBao
holds a renewal of the served certificate that was never deployed: the endpoint is
``not_deployed``. A second endpoint serves a certificate no store holds: ``unmanaged``. The
inventory and ``/metrics`` show both, with the OpenBao items under ``source="openbao"``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certpilot.app import Service
from certpilot.domain.clock import SystemClock
from certpilot.localca import LocalCA
from certpilot.settings import settings_from_mapping
from tests.support.openbao import OpenBao
from tests.support.services import NginxFleet, require_binary

SERVED = "shop.stored.test"
ORPHAN = "orphan.stored.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, OpenBao, NginxFleet]]:
    nginx = require_binary("nginx")
    require_binary("bao")
    work = tmp_path_factory.mktemp("stored-vs-served")
    now = datetime.now(UTC)
    ca = LocalCA("Stored CA", now)
    (work / "ca.pem").write_bytes(ca.root_pem())
    old = ca.issue([SERVED], now, not_before=now - timedelta(days=40))
    renewed = ca.issue([SERVED], now)
    orphan = ca.issue([ORPHAN], now)
    specs = [
        (SERVED, old.chain_pem(), old.key_pem()),
        (ORPHAN, orphan.chain_pem(), orphan.key_pem()),
    ]
    with OpenBao(work / "bao") as bao, NginxFleet(work / "nginx", specs, binary=nginx) as fleet:
        client = bao.client()
        # What the openbao_kv deploy target would have written, for the renewal and for the
        # certificate nginx serves now (the store holds both versions' lineage).
        client.secrets.kv.v2.create_or_update_secret(
            path="tls/shop",
            secret={
                "certificate": renewed.cert_pem().decode(),
                "private_key": renewed.key_pem().decode(),
            },
            mount_point="secret",
        )
        yield work, bao, fleet


async def test_the_service_finds_not_deployed_and_unmanaged(
    stack: tuple[Path, OpenBao, NginxFleet],
) -> None:
    work, bao, fleet = stack
    endpoints = [
        {"host": n, "port": fleet.endpoint(n).port, "address": "127.0.0.1"}
        for n in (SERVED, ORPHAN)
    ]
    settings = settings_from_mapping(
        {
            "store": {"url": f"sqlite:///{work / 'certpilot.db'}"},
            "http": {"host": "127.0.0.1", "port": 0},
            "scan": {
                "interval": "2s",
                "ca_files": [str(work / "ca.pem")],
                "system_trust": False,
                "crl_checks": False,
            },
            "targets": {
                "endpoints": endpoints,
                "openbao": [
                    {
                        "name": "bao",
                        "url": bao.url,
                        "token_env": "TEST_BAO_TOKEN",
                        "kv": ["secret/tls/"],
                        "labels": {"owner": "shop"},
                    }
                ],
            },
        },
        "test",
    )
    service = Service(settings, SystemClock(), env={"TEST_BAO_TOKEN": bao.root_token})
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        deadline = time.monotonic() + 60
        while not service.ready:
            assert not task.done(), task.exception() if task.done() else ""
            assert time.monotonic() < deadline, "first scan not finished"
            await asyncio.sleep(0.1)
        base = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/inventory") as r:
                items: list[dict[str, Any]] = (await r.json())["items"]
            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
            # The secret is deleted from OpenBao: a later cycle forgets the location.
            bao.client().secrets.kv.v2.delete_metadata_and_all_versions(
                path="tls/shop", mount_point="secret"
            )
            stored_ref = "openbao://bao/secret/tls/shop#certificate"
            deadline = time.monotonic() + 30
            while True:
                async with http.get(f"{base}/api/v1/inventory") as r:
                    refs = {i["ref"] for i in (await r.json())["items"]}
                if stored_ref not in refs:
                    break
                assert time.monotonic() < deadline, "the deleted secret was never forgotten"
                await asyncio.sleep(0.5)
            async with http.get(f"{base}/api/v1/events", params={"ref": stored_ref}) as r:
                kinds = [e["kind"] for e in (await r.json())["events"]]
            assert kinds[-1] == "location_removed", kinds
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    by_ref = {i["ref"]: i for i in items}
    served = by_ref[f"tls://{SERVED}:{fleet.endpoint(SERVED).port}#{SERVED}"]
    orphan = by_ref[f"tls://{ORPHAN}:{fleet.endpoint(ORPHAN).port}#{ORPHAN}"]
    stored = by_ref["openbao://bao/secret/tls/shop#certificate"]
    assert served["problems"] == ["not_deployed"], served
    assert orphan["problems"] == ["unmanaged"], orphan
    assert stored["source"] == "openbao" and stored["problems"] == []
    assert stored["labels"]["owner"] == "shop"
    assert 'x509_source_up{source="openbao"} 1.0' in metrics
    assert 'certpilot_problems{code="not_deployed"} 1.0' in metrics
