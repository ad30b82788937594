"""CertstreamClient against the loopback certstream server, over real websockets on 127.0.0.1.

Every endpoint's shape, reconnects after drops and restarts, heartbeat gaps, garbage, and the
backoff while connections are refused (a fake ``sleep`` records the delays instead of waiting).
Each test is bounded by ``asyncio.timeout`` so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.localca import LocalCA
from ctwatch.certstream import (
    CertstreamClient,
    DomainsOnly,
    EventKind,
    FeedEntry,
    parse_message,
)
from tests.support.certstream_server import GARBAGE, LoopbackCertstream, certificate_update

DER = serialization.Encoding.DER
LIMIT = 20.0  # seconds any one test may take


class FakeSleep:
    """Records backoff delays and returns at once (a turn of the loop, so others can run)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[EventKind, str]] = []

    def __call__(self, kind: EventKind, detail: str) -> None:
        self.seen.append((kind, detail))

    def kinds(self) -> list[EventKind]:
        return [k for k, _ in self.seen]


@pytest.fixture
def messages(ca: LocalCA, now: datetime) -> list[dict[str, Any]]:
    """Ten certificate_update messages for distinct real certificates (x509 and precert)."""
    out = []
    for i in range(10):
        issued = ca.issue([f"host{i}.example.com", f"alt{i}.example.net"], now)
        out.append(certificate_update(issued.cert, chain=issued.chain, index=1000 + i))
    return out


@pytest.fixture
async def server() -> AsyncIterator[LoopbackCertstream]:
    async with LoopbackCertstream(heartbeat_interval=None) as srv:
        yield srv
        await _close_all_readers()  # before the server stops, even when the test failed


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Reader:
    """Drives ``client.messages()`` in a task (as a real consumer would) into a queue."""

    alive: list[Reader] = []  # closed by the autouse fixture, even when a test fails

    def __init__(self, client: CertstreamClient) -> None:
        self.client = client
        self.items: asyncio.Queue[FeedEntry | DomainsOnly] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run())
        Reader.alive.append(self)

    async def _run(self) -> None:
        async for item in self.client.messages():
            await self.items.put(item)

    async def take(self, n: int, timeout: float = 10.0) -> list[FeedEntry | DomainsOnly]:
        async with asyncio.timeout(timeout):
            return [await self.items.get() for _ in range(n)]

    async def entries(self, n: int) -> list[FeedEntry]:
        got = await self.take(n)
        assert all(isinstance(e, FeedEntry) for e in got)
        return [e for e in got if isinstance(e, FeedEntry)]

    async def close(self) -> None:
        await self.client.aclose()
        async with asyncio.timeout(5):
            await self.task  # ends by itself once the client is closed


async def _close_all_readers() -> None:
    while Reader.alive:
        reader = Reader.alive.pop()
        await reader.client.aclose()
        reader.task.cancel()
        await asyncio.gather(reader.task, return_exceptions=True)


@pytest.fixture(autouse=True)
async def _close_readers() -> AsyncIterator[None]:
    yield
    await _close_all_readers()


def _client(url: str, **kw: Any) -> CertstreamClient:
    kw.setdefault("sleep", FakeSleep())
    kw.setdefault("heartbeat_timeout", 10.0)
    return CertstreamClient(url, **kw)


# -- the three endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/full-stream", "/full-stream/", "/domains-only"])
async def test_entries_arrive_in_order(
    server: LoopbackCertstream, messages: list[dict[str, Any]], path: str
) -> None:
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.ws_url(path)))
        await server.wait_clients(1)
        server.send_many(messages)
        got = await reader.take(len(messages))
        for item, message in zip(got, messages, strict=True):
            leaf = message["data"]["leaf_cert"]
            if path == "/domains-only":
                assert item == DomainsOnly(tuple(leaf["all_domains"]))
                continue
            assert isinstance(item, FeedEntry)
            assert item.index == message["data"]["cert_index"]
            assert item.names == tuple(leaf["all_domains"])
            assert item.sha256 == leaf["sha256"].replace(":", "").lower()
            if path.startswith("/full-stream"):
                assert item.der is not None
                assert hashlib.sha256(item.der).hexdigest() == item.sha256
            else:
                assert item.der is None
        assert reader.client.entries == len(messages)
        assert reader.client.malformed == 0
        assert server.paths == [path]
        await reader.close()


async def test_precert_over_the_full_stream(
    server: LoopbackCertstream, ca: LocalCA, now: datetime
) -> None:
    from datetime import timedelta

    from tests.support.ct_log import make_precert

    pre = make_precert(ca.issuer_cert, ca.issuer_key, ["p.example"], now, now + timedelta(days=9))
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.ws_url("/full-stream")))
        await server.wait_clients(1)
        server.send(certificate_update(pre, chain=[ca.issuer_cert], index=3))
        (entry,) = await reader.entries(1)
        assert entry.entry_type == "precert"
        assert entry.der == pre.public_bytes(DER)
        await reader.close()


async def test_headers_and_user_agent(server: LoopbackCertstream) -> None:
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url, headers={"Authorization": "Bearer t0k3n"}))
        await server.wait_clients(1)
        headers = server.request_headers[0]
        assert headers["Authorization"] == "Bearer t0k3n"
        assert headers["User-Agent"].startswith("certpilot-ctwatch")
        assert reader.client.connected
        await reader.close()
        assert not reader.client.connected
        await server.wait_no_clients()


async def test_example_json(server: LoopbackCertstream, messages: list[dict[str, Any]]) -> None:
    """``<endpoint>/example.json`` answers the last update in that endpoint's shape."""
    server.send(messages[0])
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(LIMIT):
        for path, shape in [("/", "lite"), ("/full-stream/", "full"), ("/domains-only/", "dns")]:
            async with session.get(f"{base}{path}example.json") as resp:
                assert resp.status == 200
                item = parse_message(await resp.text())
            if shape == "dns":
                assert isinstance(item, DomainsOnly)
                assert list(item.names) == messages[0]["data"]["leaf_cert"]["all_domains"]
            else:
                assert isinstance(item, FeedEntry) and item.index == 1000
                assert (item.der is not None) == (shape == "full")


# -- reconnects --------------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True], ids=["close-frame", "reset"])
async def test_reconnects_after_the_server_drops_the_connection(
    server: LoopbackCertstream, messages: list[dict[str, Any]], abort: bool
) -> None:
    events = Events()
    sleep = FakeSleep()
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url, sleep=sleep, on_event=events))
        await server.wait_clients(1)
        server.send_many(messages[:3])
        assert [e.index for e in await reader.entries(3)] == [1000, 1001, 1002]

        server.drop_connections(abort=abort)
        await _until(lambda: server.connections == 2 and server.client_count == 1, "reconnect")
        server.send_many(messages[3:])
        assert [e.index for e in await reader.entries(7)] == list(range(1003, 1010))

        client = reader.client
        assert client.reconnects == 1
        assert client.connections == 2
        assert client.connected
        assert events.kinds() == ["connected", "disconnected", "connected"]
        detail = events.seen[1][1]
        if abort:
            assert "connection lost" in detail or "connection error" in detail, detail
        else:
            assert "closed by the server (code 1001, server going away)" in detail, detail
        # the first connection delivered entries: the reconnect waited the base delay
        assert len(sleep.delays) == 1 and 0.5 <= sleep.delays[0] <= 1.0
        await reader.close()


async def test_reconnects_after_a_server_restart(
    messages: list[dict[str, Any]],
) -> None:
    sleep = FakeSleep()
    srv = LoopbackCertstream(heartbeat_interval=None)
    async with srv, asyncio.timeout(LIMIT):
        reader = Reader(_client(srv.url, sleep=sleep, base_delay=0.01, max_delay=0.05))
        await srv.wait_clients(1)
        srv.send(messages[0])
        await reader.entries(1)
        await asyncio.to_thread(srv.stop)
        # connection refused at the TCP level: the client keeps trying, backing off
        await _until(lambda: len(sleep.delays) >= 5, "several refused attempts")
        assert not reader.client.connected
        assert "connect failed" in (reader.client.last_error or "")
        await asyncio.to_thread(srv.start)  # same port
        await srv.wait_clients(1)
        srv.send(messages[1])
        (entry,) = await reader.entries(1)
        assert entry.index == 1001
        # (the stop itself may have let one more connection in before the socket closed)
        assert reader.client.connections >= 2
        assert reader.client.reconnects == len(sleep.delays)
        await reader.close()


# -- heartbeats --------------------------------------------------------------------------------


async def test_heartbeat_gap_forces_a_reconnect(messages: list[dict[str, Any]]) -> None:
    events = Events()
    async with LoopbackCertstream(heartbeat_interval=0.05) as srv, asyncio.timeout(LIMIT):
        reader = Reader(_client(srv.url, heartbeat_timeout=0.5, on_event=events))
        await srv.wait_clients(1)
        srv.send(messages[0])
        await reader.entries(1)
        # heartbeats (and nothing else) for twice the timeout: no gap
        await asyncio.sleep(1.0)
        client = reader.client
        assert client.heartbeat_gaps == 0
        assert client.received >= 10  # 1 entry + heartbeats
        assert srv.connections == 1

        srv.go_silent()
        await _until(lambda: client.heartbeat_gaps >= 1, "a heartbeat gap", timeout=5)
        await _until(lambda: srv.connections >= 2, "the reconnect after the gap", timeout=5)
        srv.resume()
        # heartbeats flow on a live connection again (so no gap can cut the next send short)
        received = client.received
        await _until(lambda: client.received >= received + 3 and client.connected, "heartbeats")
        srv.send(messages[1])
        (entry,) = await reader.entries(1)
        assert entry.index == 1001
        assert "heartbeat_gap" in events.kinds()
        gap = next(d for k, d in events.seen if k == "heartbeat_gap")
        assert gap == "no message for 0.5 s"
        await reader.close()


async def test_no_heartbeat_timeout_means_no_gap(server: LoopbackCertstream) -> None:
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url, heartbeat_timeout=None))
        await server.wait_clients(1)
        await asyncio.sleep(0.5)
        assert reader.client.heartbeat_gaps == 0 and server.connections == 1
        await reader.close()


async def test_keepalive_pings(server: LoopbackCertstream) -> None:
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url, ping_interval=0.05))
        await server.wait_clients(1)
        await _until(lambda: server.pings >= 3, "three pings", timeout=5)
        # The pings kept the one connection alive: no reconnect, no gap.
        assert server.pings >= 3 and server.connections == 1
        assert reader.client.reconnects == 0 and reader.client.heartbeat_gaps == 0
        await reader.close()


# -- garbage -----------------------------------------------------------------------------------


async def test_garbage_is_counted_and_the_stream_continues(
    server: LoopbackCertstream, messages: list[dict[str, Any]]
) -> None:
    events = Events()
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.ws_url("/full-stream"), on_event=events))
        await server.wait_clients(1)
        server.send(messages[0])
        sent = server.send_garbage()
        server.send(messages[1])
        got = await reader.entries(2)
        assert [e.index for e in got] == [1000, 1001]
        client = reader.client
        assert sent == len(GARBAGE)
        assert client.malformed == len(GARBAGE)
        assert client.received == len(GARBAGE) + 2
        assert client.connections == 1 and client.reconnects == 0
        malformed = [d for k, d in events.seen if k == "malformed"]
        assert len(malformed) == len(GARBAGE)
        assert all(d.startswith("certstream message: ") and "\n" not in d for d in malformed)
        await reader.close()


# -- backoff -----------------------------------------------------------------------------------


async def test_backoff_grows_while_refused_and_resets_after_delivery(
    server: LoopbackCertstream, messages: list[dict[str, Any]]
) -> None:
    sleep = FakeSleep()
    server.refuse(count=6)
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url, sleep=sleep, base_delay=1.0, max_delay=8.0))
        await server.wait_clients(1)
        assert server.refused == 6
        assert len(sleep.delays) == 6
        for k, delay in enumerate(sleep.delays):
            ceiling = min(8.0, 2.0**k)
            assert ceiling / 2 <= delay <= ceiling, (k, delay)
        # below the cap, jitter never undoes the growth: [c/2, c] then [c, 2c]
        assert sleep.delays[:4] == sorted(sleep.delays[:4])
        assert reader.client.reconnects == 6
        assert "503" in (reader.client.last_error or "")

        # a connection that delivered nothing does not reset the backoff ...
        server.drop_connections()
        await _until(lambda: server.connections == 2 and server.client_count == 1, "reconnect")
        assert 4.0 <= sleep.delays[-1] <= 8.0
        # ... one that delivered an entry does
        server.send(messages[0])
        await reader.entries(1)
        server.drop_connections()
        await _until(lambda: server.connections == 3 and server.client_count == 1, "reconnect")
        assert 0.5 <= sleep.delays[-1] <= 1.0
        await reader.close()


async def test_refused_for_a_while(server: LoopbackCertstream) -> None:
    """Real (short) sleeps: the client gets through once the server accepts again."""
    t0 = time.monotonic()
    server.refuse(seconds=0.3)
    async with asyncio.timeout(LIMIT):
        reader = Reader(
            CertstreamClient(server.url, base_delay=0.02, max_delay=0.1, heartbeat_timeout=5)
        )
        await server.wait_clients(1)
        assert time.monotonic() - t0 >= 0.3
        assert server.refused >= 2
        await reader.close()


# -- closing -----------------------------------------------------------------------------------


async def test_aclose_ends_a_waiting_consumer(server: LoopbackCertstream) -> None:
    async with asyncio.timeout(LIMIT):
        reader = Reader(_client(server.url))
        await server.wait_clients(1)
        await asyncio.sleep(0.05)
        assert not reader.task.done()
        await reader.close()  # the task ends: messages() stopped
        await server.wait_no_clients()


async def test_aclose_interrupts_a_long_backoff(server: LoopbackCertstream) -> None:
    server.refuse(count=100)
    async with asyncio.timeout(LIMIT):
        client = CertstreamClient(server.url, base_delay=30.0, max_delay=60.0)
        reader = Reader(client)  # the real asyncio.sleep: a 15-30 s wait after the refusal
        await _until(lambda: server.refused >= 1, "a refused attempt")
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await reader.close()
        assert time.monotonic() - t0 < 2.0
        assert client.reconnects == 0


async def test_breaking_out_of_the_loop_closes_the_socket(
    server: LoopbackCertstream, messages: list[dict[str, Any]]
) -> None:
    async with asyncio.timeout(LIMIT):
        client = _client(server.url)
        stream = client.messages()
        first = asyncio.ensure_future(anext(stream))
        await server.wait_clients(1)
        server.send(messages[0])
        assert isinstance(await first, FeedEntry)
        await stream.aclose()  # what "break" in "async for" does
        assert not client.connected
        await server.wait_no_clients()
        await client.aclose()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        CertstreamClient("ftp://example.com/")
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        CertstreamClient("ws://127.0.0.1:1/", heartbeat_timeout=0)
    with pytest.raises(ValueError, match="base_delay"):
        CertstreamClient("ws://127.0.0.1:1/", base_delay=5, max_delay=1)
