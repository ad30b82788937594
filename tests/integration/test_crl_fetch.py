"""scanner.crl.CRLCache against real HTTP: an aiohttp server on 127.0.0.1 serving DER CRLs at the
distribution point baked into the test leaves, and OpenBao's PKI CRL endpoint.

The cache's clock is a :class:`FixedClock`, so "after nextUpdate" and "before the retry
interval" are exact; the server counts requests per path, so "served from cache" is a number.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certpilot.domain.clock import FixedClock
from certpilot.domain.model import FileTarget, Observation
from certpilot.domain.problems import ProblemCode
from certpilot.domain.remedy import IssueRequest, RevocationReason
from certpilot.domain.revocation import parse_crl, verify_crl
from certpilot.domain.x509 import cert_info, parse_pem_bundle
from certpilot.localca import LocalCA
from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer
from scanner.crl import CRLCache, CRLFetchSettings
from scanner.files import scan_file_target
from tests.support.openbao import OpenBao
from tests.support.services import require_binary
from tests.unit.test_revocation import make_crl, make_leaf, observe

# ---------------------------------------------------------------------------------------------
# a loopback CRL server


@dataclass
class CRLServer:
    """Serves ``files[path]``; ``status``/``delay``/``stream`` bend single paths."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    stream: dict[str, int] = field(default_factory=dict)  # path -> bytes to trickle, no length
    redirect: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    inflight: int = 0
    max_inflight: int = 0
    streamed: dict[str, int] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if path in self.delay:
                await asyncio.sleep(self.delay[path])
            if path in self.redirect:
                raise web.HTTPFound(self.redirect[path])
            if path in self.status:
                return web.Response(status=self.status[path], text="nope")
            if path in self.stream:
                return await self._trickle(request, path, self.stream[path])
            if path not in self.files:
                raise web.HTTPNotFound()
            return web.Response(body=self.files[path], content_type="application/pkix-crl")
        finally:
            self.inflight -= 1

    async def _trickle(self, request: web.Request, path: str, total: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/pkix-crl"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        chunk = b"\x30" * 65536
        try:
            while sent < total:
                await resp.write(chunk)
                sent += len(chunk)
                await asyncio.sleep(0.005)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            self.aborted.add(path)
        finally:
            self.streamed[path] = sent
        return resp


@pytest.fixture
async def server() -> AsyncIterator[CRLServer]:
    srv = CRLServer()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.base = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def clock(now: datetime) -> FixedClock:
    return FixedClock(now)


def cache(clock: FixedClock, **settings: object) -> CRLCache:
    return CRLCache(clock, CRLFetchSettings(**settings))  # type: ignore[arg-type]


def served_leaf(
    ca: LocalCA, now: datetime, server: CRLServer, path: str = "/int.crl"
) -> tuple[x509.Certificate, Observation]:
    leaf = make_leaf(ca, now, urls=[server.url(path)])
    return leaf, observe(leaf, ca, now)


# ---------------------------------------------------------------------------------------------
# caching


async def test_cache_honours_next_update_then_refetches(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaf, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = der(make_crl(ca, now, next_update=now + timedelta(hours=1)))

    async with cache(clock) as crls:
        first = await crls.check_all([obs])
        assert first == [obs]
        assert first[0] is obs
        assert server.hits["/int.crl"] == 1

        # The CA revokes; the cached CRL is good until its nextUpdate, so nobody asks.
        server.files["/int.crl"] = der(
            make_crl(
                ca,
                now,
                [(leaf.serial_number, x509.ReasonFlags.key_compromise)],
                next_update=now + timedelta(hours=2),
            )
        )
        clock.advance(timedelta(minutes=59))
        assert (await crls.check_all([obs]))[0].healthy
        assert server.hits["/int.crl"] == 1

        clock.advance(timedelta(minutes=1))  # now == nextUpdate
        out = await crls.check_all([obs])
        assert server.hits["/int.crl"] == 2
        assert out[0].codes == (ProblemCode.REVOKED,)
        assert server.url("/int.crl") in out[0].problems[0].message
        assert "key_compromise" in out[0].problems[0].message
        assert crls.errors == {}

        (row,) = crls.status(clock.now())
        assert row.url == server.url("/int.crl")
        assert row.issuer == ca.issuer_cert.subject.rfc4514_string()
        assert row.next_update == now + timedelta(hours=2)
        assert not row.stale
        assert row.revoked == 1
        assert row.verified
        assert row.age_seconds == pytest.approx((timedelta(hours=1, minutes=10)).total_seconds())


async def test_status_turns_stale_past_next_update(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    _, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = der(make_crl(ca, now, next_update=now + timedelta(hours=1)))
    async with cache(clock) as crls:
        await crls.crls_for([obs])
        assert [r.stale for r in crls.status(now)] == [False]
        assert [r.stale for r in crls.status(now + timedelta(hours=1))] == [True]
        # The server keeps serving the expired CRL: fetched once more, then left alone for the
        # retry interval rather than asked on every scan.
        clock.advance(timedelta(hours=1))
        await crls.crls_for([obs])
        await crls.crls_for([obs])
        assert server.hits["/int.crl"] == 2
        (row,) = crls.status()
        assert row.stale
        clock.advance(timedelta(minutes=5))
        await crls.crls_for([obs])
        assert server.hits["/int.crl"] == 3


async def test_many_leaves_one_url_one_request(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaves = [served_leaf(ca, now, server) for _ in range(5)]
    revoked = leaves[2][0]
    server.files["/int.crl"] = der(make_crl(ca, now, [(revoked.serial_number, None)]))
    server.delay["/int.crl"] = 0.1
    async with cache(clock) as crls:
        # Two overlapping callers share the one fetch in flight.
        a, b = await asyncio.gather(
            crls.check_all([o for _, o in leaves]), crls.check_all([o for _, o in leaves])
        )
    assert server.hits["/int.crl"] == 1
    for out in (a, b):
        assert [o.codes for o in out] == [(), (), (ProblemCode.REVOKED,), (), ()]


async def test_lru_bound_on_cached_crls(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    observations = []
    for i in range(3):
        server.files[f"/{i}.crl"] = der(make_crl(ca, now))
        observations.append(served_leaf(ca, now, server, f"/{i}.crl")[1])
    async with cache(clock, max_cached=2) as crls:
        got = await crls.crls_for(observations)
        assert len(got) == 3  # this run still had all three
        assert len(crls) == 2
        assert [r.url for r in crls.status()] == [server.url("/1.crl"), server.url("/2.crl")]
        await crls.crls_for(observations[1:])
        assert server.hits["/1.crl"] == server.hits["/2.crl"] == 1
    # ECDSA signatures vary by a byte or two: any two CRLs fit, all three never do.
    sizes = sorted(len(server.files[f"/{i}.crl"]) for i in range(3))
    async with cache(clock, max_bytes=sizes[-1], max_total_bytes=sizes[1] + sizes[2]) as crls:
        await crls.crls_for(observations)
        assert len(crls) == 2  # bounded by bytes as well as by count


# ---------------------------------------------------------------------------------------------
# bounds and faults


async def test_oversized_crl_with_content_length_is_refused(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaf, obs = served_leaf(ca, now, server)
    big = make_crl(ca, now, [(leaf.serial_number, None), *((n, None) for n in range(1, 200))])
    server.files["/int.crl"] = der(big)
    assert len(der(big)) > 4096
    async with cache(clock, max_bytes=4096) as crls:
        out = await crls.check_all([obs])
    assert out == [obs]
    url = server.url("/int.crl")
    assert "larger than the 4096 byte limit" in crls.errors[url]
    assert crls.error_counts[(url, "too_large")] == 1


async def test_oversized_stream_is_aborted_mid_download(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    _, obs = served_leaf(ca, now, server)
    total = 20 * 1024 * 1024
    server.stream["/int.crl"] = total  # chunked, no Content-Length: only counting can stop it
    async with cache(clock, max_bytes=256 * 1024) as crls:
        out = await crls.check_all([obs])
        assert out == [obs]
        url = server.url("/int.crl")
        assert crls.error_counts[(url, "too_large")] == 1
        assert "download aborted" in crls.errors[url]
    for _ in range(100):  # the server notices the closed connection on its next writes
        if "/int.crl" in server.aborted:
            break
        await asyncio.sleep(0.02)
    assert "/int.crl" in server.aborted
    assert server.streamed["/int.crl"] < total


async def test_slow_server_times_out_without_raising(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    _, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = der(make_crl(ca, now))
    server.delay["/int.crl"] = 5.0
    started = time.monotonic()
    async with cache(clock, timeout=0.3) as crls:
        out = await crls.check_all([obs])
        elapsed = time.monotonic() - started
        assert out == [obs]
        url = server.url("/int.crl")
        assert "within 0.3s" in crls.errors[url]
        assert crls.error_counts[(url, "timeout")] == 1
        (row,) = crls.status()
        assert row.stale  # nothing usable for this issuer
        assert row.last_error_reason == "timeout"
        assert obs.leaf is not None
        assert row.issuer == obs.leaf.issuer
    assert elapsed < 3.0


async def test_404_is_recorded_and_not_retried_before_the_interval(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaf, obs = served_leaf(ca, now, server)
    url = server.url("/int.crl")
    async with cache(clock, retry_interval=300) as crls:
        assert await crls.check_all([obs]) == [obs]
        assert crls.errors[url] == "HTTP 404 Not Found"
        assert crls.error_counts[(url, "http_status")] == 1

        server.files["/int.crl"] = der(make_crl(ca, now, [(leaf.serial_number, None)]))
        clock.advance(timedelta(minutes=4, seconds=59))
        assert await crls.check_all([obs]) == [obs]
        assert server.hits["/int.crl"] == 1  # a broken server is not hammered

        clock.advance(timedelta(seconds=1))
        out = await crls.check_all([obs])
        assert server.hits["/int.crl"] == 2
        assert out[0].codes == (ProblemCode.REVOKED,)
        assert url not in crls.errors
        assert crls.error_counts[(url, "http_status")] == 1  # a counter: history stays


async def test_failed_refresh_keeps_the_previous_crl(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaf, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = der(
        make_crl(ca, now, [(leaf.serial_number, None)], next_update=now + timedelta(hours=1))
    )
    async with cache(clock) as crls:
        assert (await crls.check_all([obs]))[0].codes == (ProblemCode.REVOKED,)
        server.status["/int.crl"] = 503
        clock.advance(timedelta(hours=2))
        out = await crls.check_all([obs])
        # A revocation does not expire with the list that announced it.
        assert out[0].codes == (ProblemCode.REVOKED,)
        assert "CRL stale since" in out[0].problems[0].message
        (row,) = crls.status()
        assert row.stale
        assert row.last_error == "HTTP 503 Service Unavailable"


async def test_concurrency_is_bounded(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    observations = []
    for i in range(6):
        server.files[f"/{i}.crl"] = der(make_crl(ca, now))
        server.delay[f"/{i}.crl"] = 0.15
        observations.append(served_leaf(ca, now, server, f"/{i}.crl")[1])
    async with cache(clock, concurrency=2) as crls:
        got = await crls.crls_for(observations)
    assert len(got) == 6
    assert server.max_inflight == 2
    assert sum(server.hits.values()) == 6


async def test_redirects_are_not_followed(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    _, obs = served_leaf(ca, now, server)
    server.files["/elsewhere.crl"] = der(make_crl(ca, now))
    server.redirect["/int.crl"] = "/elsewhere.crl"
    async with cache(clock) as crls:
        assert await crls.crls_for([obs]) == {}
        assert "redirects are not followed" in crls.errors[server.url("/int.crl")]
    assert server.hits["/elsewhere.crl"] == 0


async def test_garbage_is_malformed(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    _, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = b"<html>maintenance</html>"
    async with cache(clock) as crls:
        assert await crls.check_all([obs]) == [obs]
        assert crls.error_counts[(server.url("/int.crl"), "malformed")] == 1


async def test_untrusted_crl_is_ignored_and_counted(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    leaf, obs = served_leaf(ca, now, server)
    mallory = LocalCA("Mallory", now)
    server.files["/int.crl"] = der(
        make_crl(
            ca, now, [(leaf.serial_number, None)], signer=mallory.issuer_key, aki_key=ca.issuer_key
        )
    )
    url = server.url("/int.crl")
    async with cache(clock) as crls:
        assert await crls.check_all([obs]) == [obs]
        assert crls.error_counts[(url, "untrusted")] == 1
        assert "does not verify" in crls.errors[url]
        (row,) = crls.status()
        assert row.last_error_reason == "untrusted"
        assert not row.verified
        # Re-fetched after the retry interval, not at nextUpdate: maybe it was a wrong file.
        server.files["/int.crl"] = der(make_crl(ca, now))
        clock.advance(timedelta(minutes=5))
        assert await crls.check_all([obs]) == [obs]
        assert server.hits["/int.crl"] == 2
        assert url not in crls.errors
        assert crls.status()[0].last_error is None


async def test_only_scanned_http_distribution_points_are_fetched(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer
) -> None:
    ldap = "ldap://ldap.test.internal/cn=CRL?certificateRevocationList"
    mixed = make_leaf(ca, now, urls=[ldap, "file:///etc/passwd", server.url("/int.crl")])
    orphan = make_leaf(ca, now, urls=[server.url("/orphan.crl")])
    server.files["/int.crl"] = der(make_crl(ca, now))
    server.files["/orphan.crl"] = der(make_crl(ca, now))
    observations = [
        observe(mixed, ca, now),
        observe(orphan, ca, now, chain=[], path=[]),  # no issuer: nothing could be trusted
    ]
    assert CRLCache.needed(observations) == {
        server.url("/int.crl"): ca.issuer_cert.subject.rfc4514_string()
    }
    async with cache(clock) as crls:
        await crls.check_all(observations)
        assert [r.url for r in crls.status()] == [server.url("/int.crl")]
        assert crls.errors == {}
    assert server.hits["/orphan.crl"] == 0


async def test_unreachable_server_is_a_connection_error(
    ca: LocalCA, now: datetime, clock: FixedClock
) -> None:
    from tests.support.services import free_port

    leaf = make_leaf(ca, now, urls=[f"http://127.0.0.1:{free_port()}/int.crl"])
    obs = observe(leaf, ca, now)
    async with cache(clock) as crls:
        assert await crls.check_all([obs]) == [obs]
        ((_, reason),) = crls.error_counts
        assert reason == "connection"


# ---------------------------------------------------------------------------------------------
# real components


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    require_binary("bao")
    with OpenBao(tmp_path / "openbao") as server:
        server.setup_pki(allowed_domains=["test.internal"])
        yield server


@pytest.mark.service("openbao")
async def test_openbao_pki_crl_marks_the_revoked_certificate(
    bao: OpenBao, tmp_path: Path, now: datetime
) -> None:
    client = bao.client()
    paths: dict[str, Path] = {}
    serials: dict[str, str] = {}
    for name in ("keep", "gone"):
        data = client.secrets.pki.generate_certificate(
            "web",
            f"{name}.test.internal",
            extra_params={"key_type": "ec", "key_bits": 256, "ttl": "24h"},
            mount_point="pki",
        )["data"]
        path = tmp_path / f"{name}.pem"
        path.write_text(data["certificate"] + "\n" + data["issuing_ca"] + "\n")
        paths[name], serials[name] = path, data["serial_number"]
    client.secrets.pki.revoke_certificate(serials["gone"], mount_point="pki")

    clock = FixedClock(datetime.now(UTC))
    observations: list[Observation] = []
    for path in paths.values():
        observations += scan_file_target(FileTarget(str(path)), clock.now(), env={})
    leaves = [o for o in observations if o.leaf is not None and not o.leaf.is_ca]
    assert len(leaves) == 2
    url = f"{bao.url}/v1/pki/crl"
    assert all(o.leaf is not None and o.leaf.crl_urls == (url,) for o in leaves)

    async with CRLCache(clock) as crls:
        out = await crls.check_all(observations)
        assert crls.errors == {}
        (row,) = crls.status()
    by_name = {o.ref.rsplit("/", 1)[1]: o for o in out if o.leaf is not None and not o.leaf.is_ca}
    assert ProblemCode.REVOKED in by_name["gone.pem#0"].codes
    assert ProblemCode.REVOKED not in by_name["keep.pem#0"].codes
    assert url in by_name["gone.pem#0"].problems[-1].message
    assert row.url == url
    assert row.revoked == 1
    assert not row.stale
    assert row.next_update is not None and row.next_update > clock.now()


async def test_local_ca_issuer_crl_file_parses_and_verifies(tmp_path: Path) -> None:
    """The embedded local CA's CRL file (``crl_path``) reads and verifies with the domain code.

    Its certificates carry no CRL distribution point (``LocalCA.issue`` adds none, and
    ``LocalCAConfig`` has no CDP URL setting), so the fetch-over-HTTP half cannot apply to them:
    no scanned certificate names a URL to fetch, and fetching anything else is out of bounds.
    """
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    crl_path = tmp_path / "pub" / "local.crl.pem"
    issuer = LocalCAIssuer(
        "local", LocalCAConfig(state_dir=tmp_path / "ca", crl_path=crl_path), clock=clock
    )
    keep = await issuer.issue(IssueRequest(names=("keep.test.internal",)))
    gone = await issuer.issue(IssueRequest(names=("gone.test.internal",)))
    await issuer.revoke(gone.chain_pem, RevocationReason.SUPERSEDED)

    info = parse_crl(crl_path.read_bytes(), crl_path.as_uri())
    assert verify_crl(info, issuer.issuing_certificate())
    assert info.revoked_serials == frozenset({gone.serial})
    assert info.entries[gone.serial].reason == "superseded"
    assert keep.serial not in info.revoked_serials
    leaf = next(p for p in parse_pem_bundle(gone.chain_pem) if not isinstance(p, Exception))
    assert not isinstance(leaf, Exception)
    assert cert_info(leaf.cert).crl_urls == ()
    assert not verify_crl(info, LocalCA("Unrelated", clock.now()).issuer_cert)


class _OneShotScanner:
    """Stands in for the scanner: returns the prepared observations."""

    def __init__(self, observations: list[Observation]) -> None:
        self.observations = observations

    async def probe_chunks(
        self, targets: object, progress: object = None
    ) -> AsyncIterator[list[Observation]]:
        yield list(self.observations)


async def test_the_scan_cycle_records_revoked_and_exports_crl_metrics(
    ca: LocalCA, now: datetime, clock: FixedClock, server: CRLServer, tmp_path: Path
) -> None:
    # certpilot.app.scan_and_record with a CRL cache: the revoked leaf is stored with the
    # `revoked` problem and certpilot_crl_* describe the CRL.
    from prometheus_client import CollectorRegistry, generate_latest

    from certpilot.app import scan_and_record
    from certpilot.obs import Metrics
    from certpilot.store import Inventory

    leaf, obs = served_leaf(ca, now, server)
    server.files["/int.crl"] = der(
        make_crl(ca, now, [(leaf.serial_number, x509.ReasonFlags.superseded)])
    )
    with Inventory.open(f"sqlite:///{tmp_path / 'inv.db'}") as inventory:
        registry = CollectorRegistry()
        metrics = Metrics(registry, inventory, clock)
        async with cache(clock) as crls:
            res = await scan_and_record(
                _OneShotScanner([obs]),  # type: ignore[arg-type]
                inventory,
                metrics,
                [],
                clock,
                crl_cache=crls,
            )
        assert res.observations[0].codes == (ProblemCode.REVOKED,)
        (item,) = inventory.items(now=clock.now())
        assert ProblemCode.REVOKED in item.problems
        text = generate_latest(registry).decode()
    assert f'certpilot_crl_stale{{issuer="{ca.issuer_cert.subject.rfc4514_string()}"' in text
    assert "certpilot_crl_next_update_timestamp_seconds" in text
