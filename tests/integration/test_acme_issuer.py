"""The ACME issuer against a real Pebble on loopback (``tests/support/pebble.py``).

Pebble validates for real: http-01 reaches our responder (or a webroot served on Pebble's
``httpPort``), dns-01 asks pebble-challtestsrv, which our hook fills through its management API.
Chains are checked against Pebble's management API, revocations against
``/cert-status-by-serial``. What Pebble 2.4 cannot do (ARI, profiles, 429) is played by small
aiohttp stubs in front of it, which answer only the one endpoint under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certpilot.domain.clock import FixedClock, SystemClock
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RevocationReason,
)
from remediator.issuers import build_issuer
from remediator.issuers.acme_client import (
    AcmeConfig,
    AcmeIssuer,
    ari_certificate_id,
    parse_retry_after,
)
from tests.support.pebble import Pebble
from tests.support.services import free_port, require_binary

pytestmark = pytest.mark.service("pebble")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    require_binary("pebble")
    require_binary("pebble-challtestsrv")
    p = Pebble(tmp_path_factory.mktemp("pebble"), alternate_roots=1)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def acme_config(pebble: Pebble, state_dir: Path, **overrides: Any) -> AcmeConfig:
    cfg = AcmeConfig(
        directory_url=pebble.directory_url,
        state_dir=state_dir,
        ca_bundle=pebble.ca_bundle,
        email="ops@test.internal",
        http_host="127.0.0.1",
        http_port=pebble.http_port,
        order_timeout=20,
        network_timeout=5,
    )
    return replace(cfg, **overrides)


def issuer(pebble: Pebble, state_dir: Path, **overrides: Any) -> AcmeIssuer:
    return AcmeIssuer("pebble", acme_config(pebble, state_dir, **overrides), clock=SystemClock())


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def check_issued(
    pebble: Pebble, cert: IssuedCertificate, names: tuple[str, ...], chain: int = 0
) -> x509.Certificate:
    """Leaf first, signed by Pebble's intermediate ``chain``, itself signed by root ``chain``;
    the key matches; the descriptive fields agree with the certificate."""
    got = certs(cert.chain_pem)
    leaf, rest = got[0], got[1:]
    intermediate = x509.load_pem_x509_certificate(pebble.intermediate_pem(chain))
    root = x509.load_pem_x509_certificate(pebble.root_pem(chain))
    assert rest == [intermediate]
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    key = serialization.load_pem_private_key(cert.key_pem, password=None)
    assert key.public_key() == leaf.public_key()
    assert cert.serial == format(leaf.serial_number, "x")
    assert cert.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert cert.not_after == leaf.not_valid_after_utc
    assert cert.not_before == leaf.not_valid_before_utc
    assert cert.issuer_name == "pebble"
    assert "PRIVATE" not in repr(cert)
    return leaf


@contextlib.asynccontextmanager
async def serve(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


# -- issuance ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "key_class", "size"),
    [("EC-256", ec.EllipticCurvePublicKey, 256), ("RSA-2048", rsa.RSAPublicKey, 2048)],
)
async def test_http01_builtin_responder_issues(
    pebble: Pebble, tmp_path: Path, key_type: str, key_class: type, size: int
) -> None:
    acme = issuer(pebble, tmp_path / "state")
    names = (f"{key_type.lower()}.test.internal", "www.a.test.internal")
    cert = await acme.issue(IssueRequest(names=names, key_type=key_type))
    leaf = check_issued(pebble, cert, names)
    assert isinstance(leaf.public_key(), key_class)
    assert leaf.public_key().key_size == size  # type: ignore[union-attr]
    # The responder lived only for the order.
    assert refused(pebble.http_port)
    key_file = tmp_path / "state" / "account.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


async def test_concurrent_orders_share_the_responder(pebble: Pebble, tmp_path: Path) -> None:
    acme = issuer(pebble, tmp_path / "state")
    names = [(f"c{i}.test.internal",) for i in range(3)]
    got = await asyncio.gather(*(acme.issue(IssueRequest(names=n)) for n in names))
    for cert, n in zip(got, names, strict=True):
        check_issued(pebble, cert, n)
    assert len({c.serial for c in got}) == 3
    assert refused(pebble.http_port)


async def test_http01_webroot(pebble: Pebble, tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    webroot.mkdir()
    served: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        served.append(request.path)
        resp: web.StreamResponse = await handler(request)
        return resp

    app = web.Application(middlewares=[record])
    app.router.add_static("/", webroot)
    async with serve(app, pebble.http_port):
        acme = issuer(pebble, tmp_path / "state", webroot=webroot)
        cert = await acme.issue(IssueRequest(names=("webroot.test.internal",), key_type="EC-384"))
    check_issued(pebble, cert, ("webroot.test.internal",))
    assert served and all(p.startswith("/.well-known/acme-challenge/") for p in served)
    challenge_dir = webroot / ".well-known" / "acme-challenge"
    assert list(challenge_dir.iterdir()) == []  # token files removed afterwards
    assert stat.S_IMODE(challenge_dir.stat().st_mode) == 0o755


HOOK = """\
import json, os, sys, urllib.request
action = os.environ["CERTPILOT_ACME_ACTION"]
record = os.environ["CERTPILOT_ACME_RECORD"] + "."
if action == "present":
    path, body = "/set-txt", {"host": record, "value": os.environ["CERTPILOT_ACME_VALUE"]}
else:
    path, body = "/clear-txt", {"host": record}
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(sys.argv[1] + path, data=json.dumps(body).encode(), method="POST")
opener.open(req, timeout=5).read()
with open(sys.argv[2], "a") as log:
    log.write(json.dumps({
        "action": action,
        "domain": os.environ["CERTPILOT_ACME_DOMAIN"],
        "record": os.environ["CERTPILOT_ACME_RECORD"],
        "token": os.environ["CERTPILOT_ACME_TOKEN"],
        "value": os.environ["CERTPILOT_ACME_VALUE"],
    }) + "\\n")
"""


async def test_dns01_hook_with_wildcard(pebble: Pebble, tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    calls = tmp_path / "calls.jsonl"
    acme = issuer(
        pebble,
        tmp_path / "state",
        challenge="dns-01",
        dns_hook=(sys.executable, str(script), pebble.dns_management_url, str(calls)),
        dns_hook_timeout=10,
    )
    names = ("dns.test.internal", "*.dns.test.internal")
    cert = await acme.issue(IssueRequest(names=names))
    check_issued(pebble, cert, names)
    log = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [c["action"] for c in log] == ["present", "present", "cleanup", "cleanup"]
    assert {c["domain"] for c in log} == {"dns.test.internal"}
    assert {c["record"] for c in log} == {"_acme-challenge.dns.test.internal"}
    assert len({c["value"] for c in log}) == 2  # one TXT value per authorization


async def test_dns01_hook_failure_is_one_line(pebble: Pebble, tmp_path: Path) -> None:
    acme = issuer(
        pebble,
        tmp_path / "state",
        challenge="dns-01",
        dns_hook=(
            sys.executable,
            "-c",
            "import sys; sys.stderr.write('trace\\nno credentials for zone\\n'); sys.exit(3)",
        ),
    )
    with pytest.raises(IssuerError) as err:
        await acme.issue(IssueRequest(names=("hookfail.test.internal",)))
    msg = str(err.value)
    assert "\n" not in msg
    assert "hook" in msg and "exited 3: no credentials for zone" in msg


async def test_preferred_chain_by_issuer_cn(pebble: Pebble, tmp_path: Path) -> None:
    alternate_root = x509.load_pem_x509_certificate(pebble.root_pem(1))
    acme = issuer(pebble, tmp_path / "state")
    cert = await acme.issue(
        IssueRequest(names=("alt.test.internal",), preferred_chain=cn(alternate_root.subject))
    )
    check_issued(pebble, cert, ("alt.test.internal",), chain=1)
    # An issuer nobody offers falls back to the default chain.
    cert = await acme.issue(
        IssueRequest(names=("alt2.test.internal",), preferred_chain="No Such Root")
    )
    check_issued(pebble, cert, ("alt2.test.internal",), chain=0)


async def test_revoke_with_reason(pebble: Pebble, tmp_path: Path) -> None:
    acme = issuer(pebble, tmp_path / "state")
    cert = await acme.issue(IssueRequest(names=("revoke.test.internal",)))
    assert pebble.cert_status(cert.serial)["Status"] == "Valid"
    await acme.revoke(cert.chain_pem, RevocationReason.KEY_COMPROMISE)
    status = pebble.cert_status(cert.serial)
    assert status["Status"] == "Revoked"
    assert status["Reason"] == int(RevocationReason.KEY_COMPROMISE)
    # Revoking again (a job resumed after a crash) is not an error.
    await acme.revoke(cert.chain_pem, RevocationReason.KEY_COMPROMISE)
    with pytest.raises(IssuerError, match="cannot revoke"):
        await acme.revoke(b"not a certificate", RevocationReason.SUPERSEDED)


async def test_account_key_is_persisted_and_reused(pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = issuer(pebble, state)
    uri = await first.account()
    key_bytes = (state / "account.key").read_bytes()
    second = issuer(pebble, state)
    assert await second.account() == uri
    assert (state / "account.key").read_bytes() == key_bytes
    assert json.loads((state / "account.json").read_text())["account"] == uri
    other = issuer(pebble, tmp_path / "other")
    assert await other.account() != uri
    # Built through the lookup table from plain options, as the config file gives them.
    built = build_issuer(
        "acme",
        "pebble",
        {
            "directory_url": pebble.directory_url,
            "state_dir": str(state),
            "ca_bundle": str(pebble.ca_bundle),
        },
        clock=SystemClock(),
    )
    assert isinstance(built, AcmeIssuer)
    assert await built.account() == uri


EAB_KID = "kid-certpilot"
EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


async def test_external_account_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA that requires EAB (RFC 8555 section 7.3.4): the key id and HMAC key come from the
    environment variables the config names, and the HMAC key is never logged or echoed."""
    require_binary("pebble")
    caplog.set_level(logging.DEBUG)
    with Pebble(tmp_path / "pebble-eab", eab_keys={EAB_KID: EAB_HMAC}) as ca:
        plain = issuer(ca, tmp_path / "plain")
        with pytest.raises(IssuerError, match="requires external account binding"):
            await plain.account()
        names = {"eab_kid_env": "TEST_EAB_KID", "eab_hmac_env": "TEST_EAB_HMAC"}
        bound = issuer(ca, tmp_path / "bound", **names)
        with pytest.raises(IssuerError) as err:
            await bound.account()
        assert str(err.value) == (
            "pebble: external account binding: set TEST_EAB_KID and TEST_EAB_HMAC "
            "in the environment"
        )
        monkeypatch.setenv("TEST_EAB_KID", EAB_KID)
        monkeypatch.setenv("TEST_EAB_HMAC", EAB_HMAC)
        assert (await bound.account()).startswith(ca.directory_url.removesuffix("/dir"))
        cert = await bound.issue(IssueRequest(names=("eab.test.internal",)))
        assert cert.serial
        monkeypatch.setenv("TEST_EAB_HMAC", "not base64 at all!")
        wrong = issuer(ca, tmp_path / "wrong", **names)
        with pytest.raises(IssuerError) as err:
            await wrong.account()
        assert "not base64 at all" not in str(err.value)
    assert EAB_HMAC not in caplog.text


async def test_ca_certificate_is_checked_against_the_given_bundle(
    pebble: Pebble, tmp_path: Path
) -> None:
    # The environment's REQUESTS_CA_BUNDLE (system roots) must not be what verifies the CA:
    # without the WFE certificate the handshake fails, and says so on one line.
    acme = issuer(pebble, tmp_path / "state", ca_bundle=None)
    with pytest.raises(IssuerError, match="CA TLS error: certificate verify failed"):
        await acme.issue(IssueRequest(names=("tls.test.internal",)))


# -- faults ------------------------------------------------------------------------------------


async def test_ca_not_listening_is_unreachable(tmp_path: Path) -> None:
    cfg = AcmeConfig(
        directory_url=f"https://127.0.0.1:{free_port()}/dir",
        state_dir=tmp_path / "state",
        network_timeout=3,
    )
    acme = AcmeIssuer("down", cfg, clock=SystemClock())
    with pytest.raises(IssuerError) as err:
        await acme.issue(IssueRequest(names=("down.test.internal",)))
    assert str(err.value) == "down: CA unreachable: connection refused"
    assert err.value.retry_after is None


async def test_pebble_down_then_back(pebble: Pebble, tmp_path: Path) -> None:
    acme = issuer(pebble, tmp_path / "state")
    await acme.issue(IssueRequest(names=("before.test.internal",)))
    account_before = await acme.account()
    pebble.stop_pebble()
    try:
        with pytest.raises(IssuerError, match="CA unreachable: connection refused"):
            await acme.issue(IssueRequest(names=("during.test.internal",)))
    finally:
        pebble.start()
    # The restarted CA forgot every account: the issuer registers its same key again.
    cert = await acme.issue(IssueRequest(names=("after.test.internal",)))
    check_issued(pebble, cert, ("after.test.internal",))
    assert await acme.account() != account_before


async def test_bad_nonce_storm_still_issues(pebble: Pebble, tmp_path: Path) -> None:
    pebble.restart(nonce_reject=60)
    try:
        acme = issuer(pebble, tmp_path / "state")
        started = time.monotonic()
        cert = await acme.issue(IssueRequest(names=("nonce.test.internal",)))
        await acme.revoke(cert.chain_pem, RevocationReason.SUPERSEDED)
        assert time.monotonic() - started < 20
    finally:
        pebble.restart(nonce_reject=0)
    assert acme.bad_nonces > 3  # the storm was real, and weathered
    assert cert.serial


async def test_rate_limited_429_carries_retry_after(pebble: Pebble, tmp_path: Path) -> None:
    """A proxy directory whose newOrder answers 429 + Retry-After: 7 (RFC 8555 section 6.6)."""
    directory = pebble.directory()
    hits: list[str] = []

    async def get_dir(request: web.Request) -> web.Response:
        return web.json_response({**directory, "newOrder": f"{base}/new-order"})

    async def new_order(request: web.Request) -> web.Response:
        hits.append(request.method)
        return web.json_response(
            {
                "type": "urn:ietf:params:acme:error:rateLimited",
                "detail": "too many new orders recently",
            },
            status=429,
            headers={"Retry-After": "7"},
            content_type="application/problem+json",
        )

    app = web.Application()
    app.router.add_get("/dir", get_dir)
    app.router.add_post("/new-order", new_order)
    async with serve(app) as base:
        acme = issuer(pebble, tmp_path / "state", directory_url=f"{base}/dir")
        with pytest.raises(IssuerError) as err:
            await acme.issue(IssueRequest(names=("limited.test.internal",)))
    assert err.value.retry_after == 7
    assert str(err.value) == ("pebble: rate limited: too many new orders recently (retry after 7s)")
    assert hits == ["POST"]  # not retried behind the caller's back


def test_retry_after_forms() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:30 GMT", now) == 90
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now) == 0  # in the past
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- ARI (RFC 9773), replaces, profiles --------------------------------------------------------


@pytest.fixture
async def issued(pebble: Pebble, tmp_path: Path) -> IssuedCertificate:
    return await issuer(pebble, tmp_path / "issued").issue(
        IssueRequest(names=("ari.test.internal",))
    )


def expected_cert_id(leaf: x509.Certificate) -> str:
    """RFC 9773 section 4.1, spelled out independently of the implementation."""
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    der_serial = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 8) // 8, "big")

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    assert aki.key_identifier is not None
    return f"{b64(aki.key_identifier)}.{b64(der_serial)}"


def test_ari_certificate_id_matches_rfc_example() -> None:
    # RFC 9773 section 4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01
    # :C8:D4 and serial 00:87:65:43:21 give "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
    key_id = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc9773")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x87654321)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier(key_id, None, None),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    assert ari_certificate_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


async def test_renewal_info_none_without_ari(
    pebble: Pebble, issued: IssuedCertificate, tmp_path: Path
) -> None:
    acme = issuer(pebble, tmp_path / "state")
    assert await acme.renewal_info(issued.chain_pem) is None  # Pebble 2.4 has no renewalInfo


async def test_renewal_info_from_stub(
    pebble: Pebble, issued: IssuedCertificate, tmp_path: Path
) -> None:
    directory = pebble.directory()
    asked: list[str] = []

    async def get_dir(request: web.Request) -> web.Response:
        return web.json_response({**directory, "renewalInfo": f"{base}/draft-ari/renewalInfo/"})

    async def renewal_info(request: web.Request) -> web.Response:
        asked.append(request.match_info["cert_id"])
        return web.json_response(
            {
                "suggestedWindow": {
                    "start": "2027-01-02T04:00:00Z",
                    "end": "2027-01-03T04:00:00+00:00",
                },
                "explanationURL": "https://ca.test.internal/incident/42",
            },
            headers={"Retry-After": "3600"},
        )

    app = web.Application()
    app.router.add_get("/dir", get_dir)
    app.router.add_get("/draft-ari/renewalInfo/{cert_id}", renewal_info)
    now = datetime.now(UTC).replace(microsecond=0)
    async with serve(app) as base:
        cfg = acme_config(pebble, tmp_path / "state", directory_url=f"{base}/dir")
        acme = AcmeIssuer("pebble", cfg, clock=FixedClock(now))
        window = await acme.renewal_info(issued.chain_pem)
        leaf = certs(issued.chain_pem)[0]
        assert asked == [expected_cert_id(leaf)]
        assert window is not None
        assert window.start == datetime(2027, 1, 2, 4, tzinfo=UTC)
        assert window.end == datetime(2027, 1, 3, 4, tzinfo=UTC)
        assert window.retry_after == now + timedelta(hours=1)
        assert window.explanation_url == "https://ca.test.internal/incident/42"
        # An expired certificate is never asked about (RFC 9773 section 4.3).
        later = AcmeIssuer("pebble", cfg, clock=FixedClock(leaf.not_valid_after_utc))
        assert await later.renewal_info(issued.chain_pem) is None
        assert len(asked) == 1


async def test_replaces_and_profile_sent_when_offered(
    pebble: Pebble, issued: IssuedCertificate, tmp_path: Path
) -> None:
    """newOrder carries ``replaces`` (RFC 9773 section 5) and ``profile`` when the directory
    offers ARI and that profile; a refused ``replaces`` is retried without it."""
    directory = pebble.directory()
    payloads: list[dict[str, Any]] = []

    async def get_dir(request: web.Request) -> web.Response:
        return web.json_response(
            {
                **directory,
                "newOrder": f"{base}/new-order",
                "renewalInfo": f"{base}/renewal-info",
                "meta": {**directory["meta"], "profiles": {"shortlived": "6 days"}},
            }
        )

    async def new_order(request: web.Request) -> web.Response:
        jws = await request.json()
        payload = base64.urlsafe_b64decode(jws["payload"] + "==")
        payloads.append(json.loads(payload))
        return web.json_response(
            {"type": "urn:ietf:params:acme:error:malformed", "detail": "stub says no"},
            status=400,
            content_type="application/problem+json",
        )

    app = web.Application()
    app.router.add_get("/dir", get_dir)
    app.router.add_post("/new-order", new_order)
    cert_id = expected_cert_id(certs(issued.chain_pem)[0])
    async with serve(app) as base:
        acme = issuer(pebble, tmp_path / "state", directory_url=f"{base}/dir")
        request = IssueRequest(names=("ari.test.internal",), replaces=cert_id, profile="shortlived")
        with pytest.raises(IssuerError, match="malformed: stub says no"):
            await acme.issue(request)
        assert payloads[0]["replaces"] == cert_id
        assert payloads[0]["profile"] == "shortlived"
        assert payloads[0]["identifiers"] == [{"type": "dns", "value": "ari.test.internal"}]
        assert "replaces" not in payloads[1]
        with pytest.raises(IssuerError, match="profile 'tlsserver' not offered"):
            await acme.issue(replace(request, profile="tlsserver"))
        assert len(payloads) == 2


async def test_no_replaces_without_ari(pebble: Pebble, tmp_path: Path) -> None:
    # Pebble 2.4 has no renewalInfo: ``replaces`` is not sent, the order goes through.
    acme = issuer(pebble, tmp_path / "state")
    cert = await acme.issue(
        IssueRequest(names=("noari.test.internal",), replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    )
    check_issued(pebble, cert, ("noari.test.internal",))
