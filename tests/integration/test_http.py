"""certpilot.http served for real on 127.0.0.1:0 and requested with aiohttp's client."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from certpilot import __version__
from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import ConfigError, StoreError
from certpilot.domain.inventory import Event, EventKind, InventoryItem, ScanRun
from certpilot.domain.problems import ProblemCode
from certpilot.http import MAX_EVENTS_LIMIT, bound_port, build_app, serve
from certpilot.obs import Metrics

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def item(
    ref: str, source: str, days_left: float, problems: Sequence[ProblemCode] = ()
) -> InventoryItem:
    return InventoryItem(
        ref=ref,
        source=source,
        target=ref,
        fingerprint_sha256="cd" * 32,
        serial="1f",
        subject="CN=svc,O=Acme",
        subject_cn="svc",
        issuer="CN=Acme CA",
        issuer_cn="Acme CA",
        sans=("svc",),
        not_before=NOW - timedelta(days=10),
        not_after=NOW + timedelta(days=days_left),
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=tuple(problems),
        error=None,
        first_seen=NOW - timedelta(days=1),
        last_scanned=NOW,
        labels={"owner": "team-a"},
    )


@dataclass
class FakeInventory:
    """Filters like the real store would, and records how and where it was called."""

    data: list[InventoryItem] = field(default_factory=list)
    log: list[Event] = field(default_factory=list)
    scan_runs: list[ScanRun] = field(default_factory=list)
    ping_error: Exception | None = None
    items_error: Exception | None = None
    calls: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def ping(self) -> None:
        self.threads.add(threading.get_ident())
        if self.ping_error:
            raise self.ping_error

    def items(
        self,
        *,
        now: datetime,
        expiring_days: float | None = None,
        problem: ProblemCode | None = None,
        source: str | None = None,
    ) -> list[InventoryItem]:
        self.threads.add(threading.get_ident())
        self.calls.append(
            ("items", {"expiring_days": expiring_days, "problem": problem, "source": source})
        )
        if self.items_error:
            raise self.items_error
        out = self.data
        if source is not None:
            out = [i for i in out if i.source == source]
        if problem is not None:
            out = [i for i in out if problem in i.problems]
        if expiring_days is not None:
            out = [i for i in out if (i.days_left(now) or 0) <= expiring_days]
        return out

    def events(
        self, *, since_id: int = 0, limit: int = 1000, ref: str | None = None
    ) -> list[Event]:
        self.threads.add(threading.get_ident())
        self.calls.append(("events", {"since_id": since_id, "limit": limit, "ref": ref}))
        out = [e for e in self.log if e.id > since_id and (ref is None or e.ref == ref)]
        return out[:limit]

    def runs(self, limit: int = 20) -> list[ScanRun]:
        self.threads.add(threading.get_ident())
        self.calls.append(("runs", {"limit": limit}))
        return self.scan_runs[:limit]


@dataclass
class Server:
    url: str
    inventory: FakeInventory
    session: aiohttp.ClientSession
    ready: list[tuple[bool, str]]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    inv = FakeInventory(
        data=[
            item("tls://a:443#a", "tls", 90),
            item("tls://b:443#b", "tls", 5, [ProblemCode.EXPIRING]),
            item("file:///c.pem#0", "file", -1, [ProblemCode.EXPIRED]),
        ],
        log=[
            Event(id=i, at=NOW, kind=EventKind.LOCATION_ADDED, ref=f"tls://h{i % 3}:443#h")
            for i in range(1, 26)
        ],
        scan_runs=[
            ScanRun(1, "tls", NOW - timedelta(seconds=3), NOW, 2, 2, 1),
            ScanRun(2, "file", NOW, None, 1, 0, 0),
        ],
    )
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    metrics = Metrics(registry, inv, clock)
    metrics.observe_scan("tls", [], 0.5)
    ready: list[tuple[bool, str]] = [(True, "ok")]
    app = build_app(registry=registry, inventory=inv, clock=clock, readiness=lambda: ready[-1])
    runner = await serve(app, "127.0.0.1", 0)
    try:
        port = bound_port(runner)
        assert port > 0
        async with aiohttp.ClientSession() as session:
            yield Server(f"http://127.0.0.1:{port}", inv, session, ready)
    finally:
        await runner.cleanup()


async def get_json(s: Server, path: str, status: int = 200) -> dict[str, object]:
    async with s.session.get(s.url + path) as r:
        assert r.status == status, await r.text()
        assert r.content_type == "application/json"
        body = await r.json()
        assert isinstance(body, dict)
        return body


# --- /metrics, /healthz, /readyz ---------------------------------------------------------


async def test_metrics_text_format(server: Server) -> None:
    async with server.session.get(server.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    assert f'certpilot_build_info{{version="{__version__}"}} 1.0' in text
    assert "# HELP x509_cert_not_after " in text
    x509_lines = [line for line in text.splitlines() if line.startswith("x509_cert_not_after{")]
    assert len(x509_lines) == 3
    assert all('serial_number="31"' in line for line in x509_lines)  # decimal, as the exporter
    assert "certpilot_inventory_up 1.0" in text
    assert 'x509_source_up{source="tls"} 1.0' in text
    # the collector read the inventory off the event loop thread
    assert threading.get_ident() not in server.inventory.threads


async def test_metrics_openmetrics_when_accepted(server: Server) -> None:
    headers = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}
    async with server.session.get(server.url + "/metrics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await r.text()
    assert text.endswith("# EOF\n")


async def test_metrics_gzip(server: Server) -> None:
    headers = {"Accept-Encoding": "gzip"}
    async with server.session.get(server.url + "/metrics", headers=headers) as r:
        assert r.headers.get("Content-Encoding") == "gzip"
        assert "certpilot_build_info" in await r.text()  # the client inflates


async def test_healthz(server: Server) -> None:
    async with server.session.get(server.url + "/healthz") as r:
        assert r.status == 200
        assert await r.text() == "ok"


async def test_readyz_ready_and_not(server: Server) -> None:
    assert await get_json(server, "/readyz") == {"ready": True, "reason": "ok"}

    server.ready.append((False, "first scan not finished"))
    body = await get_json(server, "/readyz", 503)
    assert body == {"ready": False, "reason": "first scan not finished"}

    server.ready.append((True, "ok"))
    server.inventory.ping_error = StoreError(
        "postgresql://certpilot:hunter2@db/certpilot", "connection refused"
    )
    body = await get_json(server, "/readyz", 503)
    assert body == {"ready": False, "reason": "inventory: connection refused"}
    assert "hunter2" not in str(body)

    server.inventory.ping_error = None
    assert (await get_json(server, "/readyz"))["ready"] is True


# --- /api/v1/inventory -------------------------------------------------------------------


async def test_inventory_all(server: Server) -> None:
    body = await get_json(server, "/api/v1/inventory")
    assert body["count"] == 3
    items = body["items"]
    assert isinstance(items, list)
    first = items[0]
    assert first["ref"] == "tls://a:443#a"
    assert first["days_left"] == 90.0
    assert first["not_after"] == "2025-08-30T12:00:00Z"
    assert first["labels"] == {"owner": "team-a"}


@pytest.mark.parametrize(
    ("query", "refs", "passed"),
    [
        ("?source=file", ["file:///c.pem#0"], {"source": "file"}),
        ("?problem=expiring", ["tls://b:443#b"], {"problem": ProblemCode.EXPIRING}),
        ("?expiring_days=10", ["tls://b:443#b", "file:///c.pem#0"], {"expiring_days": 10.0}),
        ("?expiring_days=7.5&source=tls", ["tls://b:443#b"], {"expiring_days": 7.5}),
        ("?source=&problem=&expiring_days=", ["tls://a:443#a", "tls://b:443#b", "file:///c.pem#0"],
         {"source": None, "problem": None, "expiring_days": None}),
    ],
)  # fmt: skip
async def test_inventory_filters(
    server: Server, query: str, refs: list[str], passed: dict[str, object]
) -> None:
    body = await get_json(server, "/api/v1/inventory" + query)
    items = body["items"]
    assert isinstance(items, list)
    assert [i["ref"] for i in items] == refs
    assert body["count"] == len(refs)
    name, kwargs = server.inventory.calls[-1]
    assert name == "items"
    for key, value in passed.items():
        assert kwargs[key] == value


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?expiring_days=abc", "expiring_days: expected a number, got 'abc'"),
        ("?expiring_days=-3", "expiring_days: expected a non-negative number, got '-3'"),
        ("?expiring_days=nan", "expiring_days: expected a non-negative number, got 'nan'"),
    ],
)
async def test_inventory_bad_numbers(server: Server, query: str, error: str) -> None:
    assert await get_json(server, "/api/v1/inventory" + query, 400) == {"error": error}
    assert server.inventory.calls == []


async def test_inventory_unknown_problem_lists_valid_codes(server: Server) -> None:
    body = await get_json(server, "/api/v1/inventory?problem=bogus", 400)
    error = body["error"]
    assert isinstance(error, str)
    assert error.startswith("problem: unknown problem code 'bogus'; valid codes: expired, ")
    assert body["valid"] == [c.value for c in ProblemCode]


# --- /api/v1/events and /api/v1/runs -----------------------------------------------------


async def test_events_paging(server: Server) -> None:
    seen: list[int] = []
    since = 0
    while True:
        body = await get_json(server, f"/api/v1/events?since_id={since}&limit=10")
        events = body["events"]
        assert isinstance(events, list)
        seen.extend(e["id"] for e in events)
        assert body["count"] == len(events)
        next_since = body["next_since_id"]
        assert isinstance(next_since, int)
        if len(events) < 10:
            assert next_since == (seen[-1] if events else since)
            break
        since = next_since
    assert seen == list(range(1, 26))
    first = (await get_json(server, "/api/v1/events?limit=1"))["events"]
    assert isinstance(first, list)
    assert first[0] == {
        "id": 1,
        "at": "2025-06-01T12:00:00Z",
        "kind": "location_added",
        "ref": "tls://h1:443#h",
        "fingerprint_sha256": None,
        "code": None,
        "detail": "",
    }


async def test_events_ref_filter_limit_cap_and_errors(server: Server) -> None:
    body = await get_json(server, "/api/v1/events?ref=tls://h0:443%23h")
    events = body["events"]
    assert isinstance(events, list)
    assert [e["id"] for e in events] == [3, 6, 9, 12, 15, 18, 21, 24]

    body = await get_json(server, "/api/v1/events?limit=999999")
    assert body["limit"] == MAX_EVENTS_LIMIT
    assert server.inventory.calls[-1] == (
        "events",
        {"since_id": 0, "limit": MAX_EVENTS_LIMIT, "ref": None},
    )

    assert await get_json(server, "/api/v1/events?limit=0", 400) == {
        "error": "limit: expected an integer >= 1, got '0'"
    }
    assert await get_json(server, "/api/v1/events?since_id=x", 400) == {
        "error": "since_id: expected an integer, got 'x'"
    }


async def test_runs(server: Server) -> None:
    body = await get_json(server, "/api/v1/runs")
    assert body["count"] == 2
    runs = body["runs"]
    assert isinstance(runs, list)
    assert runs[0] == {
        "id": 1,
        "source": "tls",
        "started_at": "2025-06-01T11:59:57Z",
        "finished_at": "2025-06-01T12:00:00Z",
        "duration_seconds": 3.0,
        "targets": 2,
        "observations": 2,
        "problems": 1,
    }
    assert runs[1]["finished_at"] is None
    await get_json(server, "/api/v1/runs?limit=1")
    assert server.inventory.calls[-1] == ("runs", {"limit": 1})


# --- errors ------------------------------------------------------------------------------


async def test_unknown_api_path_is_json_404(server: Server) -> None:
    body = await get_json(server, "/api/v1/nope", 404)
    assert body == {"error": "not found: GET /api/v1/nope"}


async def test_wrong_method_is_json_405(server: Server) -> None:
    async with server.session.post(server.url + "/api/v1/inventory") as r:
        assert r.status == 405
        assert r.content_type == "application/json"
        assert "GET" in r.headers["Allow"]
        assert (await r.json())["error"].startswith("method not allowed")


async def test_non_api_404_stays_plain(server: Server) -> None:
    async with server.session.get(server.url + "/nope") as r:
        assert r.status == 404
        assert r.content_type != "application/json"


async def test_unexpected_exception_is_500_without_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.inventory.items_error = RuntimeError("secret internals at /var/lib/x")
    with caplog.at_level(logging.ERROR, logger="certpilot.http"):
        async with server.session.get(server.url + "/api/v1/inventory") as r:
            assert r.status == 500
            text = await r.text()
    assert r.content_type == "application/json"
    assert text == '{"error": "internal error"}'
    records = [rec for rec in caplog.records if rec.name == "certpilot.http"]
    assert records
    assert records[0].exc_info is not None


async def test_blocking_calls_run_off_the_loop(server: Server) -> None:
    await get_json(server, "/api/v1/inventory")
    await get_json(server, "/api/v1/events")
    await get_json(server, "/api/v1/runs")
    await get_json(server, "/readyz")
    assert server.inventory.threads
    assert threading.get_ident() not in server.inventory.threads


async def test_serve_binds_requested_port_and_cleans_up_on_conflict() -> None:
    inv = FakeInventory()
    app = build_app(registry=CollectorRegistry(), inventory=inv, clock=FixedClock(NOW))
    runner = await serve(app, "127.0.0.1", 0)
    try:
        port = bound_port(runner)
        other = build_app(registry=CollectorRegistry(), inventory=inv, clock=FixedClock(NOW))
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:.*in use"):
            await serve(other, "127.0.0.1", port)
    finally:
        await runner.cleanup()


async def test_a_configured_token_guards_metrics_and_the_api_but_not_the_probes(
    tmp_path: Path,
) -> None:
    from aiohttp import web

    from certpilot.remediate import read_token

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-read-token\n")
    inv = FakeInventory(data=[item("tls://a:443#a", "tls", 90)], log=[], scan_runs=[])
    clock = FixedClock(NOW)
    registry = CollectorRegistry()
    Metrics(registry, inv, clock)
    app = build_app(
        registry=registry, inventory=inv, clock=clock, token=read_token(str(token_file), None)
    )

    async def hook(request: web.Request) -> web.StreamResponse:
        return web.Response(text="own auth")

    app.router.add_post("/hooks/alertmanager", hook)
    runner = await serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(runner)}"
    good = {"Authorization": "Bearer s3cret-read-token"}
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/api/v1/inventory", "/api/v1/events"):
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}):
                    async with http.get(base + path, headers=headers) as r:
                        assert r.status == 401 and "s3cret" not in await r.text()
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                async with http.get(base + path, headers=good) as r:
                    assert r.status == 200
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as r:
                    assert r.status == 200
            async with http.post(base + "/hooks/alertmanager") as r:
                assert r.status == 200 and await r.text() == "own auth"
            # The file is read on each request: a rotated token takes effect at once.
            token_file.write_text("rotated\n")
            async with http.get(base + "/metrics", headers=good) as r:
                assert r.status == 401
            async with http.get(
                base + "/metrics", headers={"Authorization": "Bearer rotated"}
            ) as r:
                assert r.status == 200
            # A token file that disappears closes the API (503), it never opens it.
            token_file.unlink()
            for headers in ({}, {"Authorization": "Bearer rotated"}):
                async with http.get(base + "/api/v1/inventory", headers=headers) as r:
                    assert r.status == 503 and "token" in (await r.json())["error"]
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
