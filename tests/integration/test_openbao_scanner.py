"""The OpenBao scanner (``scanner/openbao.py``) against a real ``bao server -dev``
(``tests/support/openbao.py``).

One server per module holds a KV tree under ``secret/tls/`` (nested paths, a bundle, a
key-only field, base64 DER, a non-certificate field, a damaged block, custom_metadata owner),
a secret outside that prefix, and PKI mounts with short-lived, long-lived and revoked
certificates. What the scanner asks OpenBao for is checked on the wire: a recording proxy in
front of the server logs every request path. Destructive cases (sealed) restore the server;
an unreachable one uses a server of its own.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certpilot.domain.clock import FixedClock, SystemClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.judge import JudgePolicy
from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode
from certpilot.localca import LocalCA
from certpilot.openbao import colon_serial, normalise_serial
from scanner.openbao import KVPrefix, OpenBaoScan, OpenBaoSource, scan_openbao
from tests.support.openbao import OpenBao
from tests.support.services import require_binary

pytestmark = pytest.mark.service("openbao")

TOKEN_ENV = "CERTPILOT_TEST_BAO_SCAN_TOKEN"
DOMAIN = "test.internal"
# "Expiring" for these tests: less than a day left. Judges a 2-minute certificate expiring
# and a 30-day one not, whatever fraction of its life is left.
DAY_POLICY = JudgePolicy(expiring_fraction=None, expiring_days=1.0)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- a recording proxy: what did the scanner ask for? -------------------------------------------


class RecordingProxy:
    """A loopback HTTP proxy in front of OpenBao that records ``(method, path)`` of every
    request and forwards it unchanged."""

    def __init__(self, upstream_port: int) -> None:
        self.requests: list[tuple[str, str]] = []
        self.statuses: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.requests.append((self.command, self.path.split("?", 1)[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")
                }
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy.statuses.append(resp.status)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# -- the world: one server, a KV tree and PKI mounts ------------------------------------------


@dataclass
class World:
    bao: OpenBao
    ca: LocalCA
    www: x509.Certificate
    api: x509.Certificate
    der_leaf: x509.Certificate
    outside: x509.Certificate
    short_serial: str
    long_serial: str
    revoked_serial: str
    root_serial: str
    issuer_id: str
    short_ca_issuer_id: str


def _write(bao: OpenBao, path: str, data: dict[str, str], **meta: str) -> None:
    client = bao.client()
    client.secrets.kv.v2.create_or_update_secret(path, data, mount_point="secret")
    if meta:
        client.secrets.kv.v2.update_metadata(path, custom_metadata=meta, mount_point="secret")


def _issue(bao: OpenBao, mount: str, cn: str, ttl: str) -> str:
    response = bao.client().secrets.pki.generate_certificate(
        "web",
        cn,
        extra_params={"ttl": ttl, "key_type": "ec", "key_bits": 256},
        mount_point=mount,
    )
    return normalise_serial(response["data"]["serial_number"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_binary("bao")
    bao = OpenBao(tmp_path_factory.mktemp("openbao-scan"))
    bao.start()
    try:
        now = datetime.now(UTC)
        ca = LocalCA("certpilot scan test", now)
        assert ca.intermediate is not None
        www = ca.issue([f"www.{DOMAIN}"], now)
        api = ca.issue([f"api.{DOMAIN}"], now)
        svc = ca.issue([f"svc.{DOMAIN}"], now)
        outside = ca.issue([f"outside.{DOMAIN}"], now)
        der = svc.cert.public_bytes(serialization.Encoding.DER)
        # The layout the openbao_kv deploy target writes: leaf, intermediates, key.
        _write(
            bao,
            "tls/www",
            {
                "certificate": www.cert_pem().decode(),
                "ca_chain": pem(ca.intermediate),
                "private_key": www.key_pem().decode(),
            },
        )
        # One field holding leaf + intermediate + root, and a key in the same field.
        _write(
            bao,
            "tls/team/api",
            {"bundle": api.chain_pem().decode() + ca.root_pem().decode() + api.key_pem().decode()},
            owner="alice",
            team="payments",
        )
        # Nested deep: base64 DER, a password and a note (neither is a certificate).
        _write(
            bao,
            "tls/team/deep/nested/svc",
            {
                "tls.crt": base64.b64encode(der).decode(),
                "tls.key": base64.b64encode(
                    svc.key.private_bytes(
                        serialization.Encoding.DER,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                ).decode(),
                "password": "hunter2",
                "note": "rotated by hand, see runbook",
            },
        )
        _write(bao, "tls/keyonly", {"private_key": www.key_pem().decode()})
        # A secret whose latest version was deleted holds nothing any more.
        _write(bao, "tls/deleted", {"certificate": outside.cert_pem().decode()})
        bao.client().secrets.kv.v2.delete_latest_version_of_secret("tls/deleted", "secret")
        _write(
            bao,
            "tls/broken",
            {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA!!!!\n-----END CERTIFICATE-----\n"},
        )
        _write(bao, "other/app", {"certificate": outside.cert_pem().decode()})

        bao.setup_pki("pki", allowed_domains=[DOMAIN])
        client = bao.client()
        issuers = client.list("pki/issuers")["data"]
        issuer_id = issuers["keys"][0]
        root_serial = normalise_serial(issuers["key_info"][issuer_id]["serial_number"])
        short_serial = _issue(bao, "pki", f"short.{DOMAIN}", "2m")
        long_serial = _issue(bao, "pki", f"long.{DOMAIN}", "720h")
        revoked_serial = _issue(bao, "pki", f"revoked.{DOMAIN}", "24h")
        client.secrets.pki.revoke_certificate(
            colon_serial(int(revoked_serial, 16)), mount_point="pki"
        )
        # A CA that itself expires within the hour.
        bao.setup_pki("pki-short", allowed_domains=[DOMAIN], ca_ttl="1h", max_ttl="30m")
        short_ca_issuer_id = client.list("pki-short/issuers")["data"]["keys"][0]
        yield World(
            bao=bao,
            ca=ca,
            www=www.cert,
            api=api.cert,
            der_leaf=svc.cert,
            outside=outside.cert,
            short_serial=short_serial,
            long_serial=long_serial,
            revoked_serial=revoked_serial,
            root_serial=root_serial,
            issuer_id=issuer_id,
            short_ca_issuer_id=short_ca_issuer_id,
        )
    finally:
        bao.stop()


@pytest.fixture
def env(world: World) -> dict[str, str]:
    return {TOKEN_ENV: world.bao.root_token}


def source(url: str, **options: Any) -> OpenBaoSource:
    data: dict[str, Any] = {"name": "vault1", "url": url, "token_env": TOKEN_ENV, "timeout": 5}
    data.update(options)
    return OpenBaoSource.from_mapping(data, source="certpilot.yaml", field="targets.openbao[0]")


async def scan(
    src: OpenBaoSource, env: dict[str, str], *, policy: JudgePolicy = DAY_POLICY
) -> OpenBaoScan:
    return await scan_openbao(src, SystemClock(), env=env, policy=policy)


def by_ref(result: OpenBaoScan) -> dict[str, Observation]:
    refs = [o.ref for o in result.observations]
    assert len(refs) == len(set(refs)), "each ref once"
    return {o.ref: o for o in result.observations}


# -- KV v2 --------------------------------------------------------------------------------------


async def test_kv_tree_is_read_recursively_into_one_observation_per_certificate(
    world: World, env: dict[str, str]
) -> None:
    result = await scan(source(world.bao.url, kv=["secret/tls/"], labels={"env": "test"}), env)
    assert result.failure is None and not result.truncated
    # www, team/api, team/deep/nested/svc, keyonly, broken, deleted
    assert result.items_read == 6
    obs = by_ref(result)
    base = "openbao://vault1/secret/tls"
    assert set(obs) == {
        f"{base}/www#certificate",
        f"{base}/www#ca_chain",
        f"{base}/team/api#bundle",  # the leaf keeps the field's ref
        f"{base}/team/api#bundle/1",
        f"{base}/team/api#bundle/2",
        f"{base}/team/deep/nested/svc#tls.crt",
        f"{base}/broken#certificate",
    }  # no private_key, tls.key, password, note; nothing from keyonly or other/

    www = obs[f"{base}/www#certificate"]
    assert www.source == "openbao" and www.target == "openbao:vault1"
    assert www.leaf is not None and www.leaf.fingerprint_sha256 == _fp(world.www)
    assert www.problems == () and www.error is None
    assert dict(www.labels) == {"env": "test", "store": "openbao", "openbao_path": "secret/tls/www"}
    assert obs[f"{base}/www#ca_chain"].leaf.is_ca  # type: ignore[union-attr]

    api = obs[f"{base}/team/api#bundle"]
    assert api.leaf is not None and api.leaf.fingerprint_sha256 == _fp(world.api)
    assert [c.subject_cn for c in api.chain] == [
        f"api.{DOMAIN}",
        "certpilot scan test Intermediate CA",
        "certpilot scan test Root CA",
    ]
    assert obs[f"{base}/team/api#bundle/2"].leaf.subject_cn == "certpilot scan test Root CA"  # type: ignore[union-attr]
    assert api.labels["owner"] == "alice" and api.labels["team"] == "payments"
    assert api.labels["openbao_path"] == "secret/tls/team/api"

    der = obs[f"{base}/team/deep/nested/svc#tls.crt"]
    assert der.leaf is not None and der.leaf.fingerprint_sha256 == _fp(world.der_leaf)
    assert "owner" not in der.labels

    broken = obs[f"{base}/broken#certificate"]
    assert broken.codes == (ProblemCode.MALFORMED,) and broken.leaf is None
    assert broken.error is not None and broken.error.startswith(f"{base}/broken#certificate: ")

    # Private keys and other values never reach an observation.
    dumped = json.dumps([o.to_dict() for o in result.observations])
    assert "PRIVATE KEY" not in dumped and "hunter2" not in dumped and "runbook" not in dumped


def _fp(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


async def test_a_prefix_without_trailing_slash_is_one_secret(
    world: World, env: dict[str, str]
) -> None:
    result = await scan(source(world.bao.url, kv=["secret/tls/www"]), env)
    assert sorted(by_ref(result)) == [
        "openbao://vault1/secret/tls/www#ca_chain",
        "openbao://vault1/secret/tls/www#certificate",
    ]
    assert result.items_read == 1


async def test_only_configured_prefixes_and_mounts_are_touched(
    world: World, env: dict[str, str]
) -> None:
    with RecordingProxy(world.bao.port) as proxy:
        result = await scan(source(proxy.url, kv=["secret/tls/team/"], pki=["pki"]), env)
    assert result.failure is None
    assert not any("outside" in o.ref or "/other/" in o.ref for o in result.observations)
    assert not any(o.ref.startswith("openbao://vault1/secret/tls/www") for o in result.observations)
    allowed = (
        "/v1/secret/metadata/tls/team/",
        "/v1/secret/data/tls/team/",
        "/v1/pki/",
    )
    paths = [path for _, path in proxy.requests]
    assert paths, "the proxy saw the scan"
    # hvac drops a trailing "/" (LIST of "tls/team" lists the same folder).
    outside = [p for p in paths if not p.startswith(allowed) and p != allowed[0].rstrip("/")]
    assert outside == []
    assert ("GET", "/v1/secret/data/tls/team/api") in proxy.requests
    assert ("LIST", "/v1/pki/certs") in proxy.requests
    # Nothing was written or deleted.
    assert {m for m, _ in proxy.requests} <= {"GET", "LIST"}


async def test_overlapping_prefixes_read_each_secret_once(
    world: World, env: dict[str, str]
) -> None:
    with RecordingProxy(world.bao.port) as proxy:
        src = source(proxy.url, kv=["secret/tls/team/", "secret/tls/", "secret/tls/www"])
        result = await scan(src, env)
    by_ref(result)  # asserts each ref once
    assert result.items_read == 6
    reads = [p for m, p in proxy.requests if m == "GET"]
    assert len(reads) == len(set(reads)) == 6


async def test_rate_limited_calls_are_retried_after_retry_after(
    world: World, env: dict[str, str]
) -> None:
    client = world.bao.client()
    client.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": True})
    client.write_data(
        "sys/quotas/rate-limit/certpilot-scan-test",
        data={"path": "secret/", "rate": 4, "interval": "1s"},
    )
    try:
        with RecordingProxy(world.bao.port) as proxy:
            result = await scan(source(proxy.url, kv=["secret/tls/"]), env)
    finally:
        client.delete("sys/quotas/rate-limit/certpilot-scan-test")
        client.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": False})
    assert 429 in proxy.statuses  # the quota did bite
    assert result.failure is None and result.errors == ()
    assert "openbao://vault1/secret/tls/team/api#bundle" in by_ref(result)
    assert not any(o.codes == (ProblemCode.UNREADABLE,) for o in result.observations)


async def test_max_secrets_bounds_the_items_read(world: World, env: dict[str, str]) -> None:
    with RecordingProxy(world.bao.port) as proxy:
        result = await scan(source(proxy.url, kv=["secret/tls/"], max_secrets=2), env)
    assert result.truncated and result.items_read == 2
    assert any("max_secrets (2)" in e for e in result.errors)
    reads = [p for m, p in proxy.requests if m == "GET" and p.startswith("/v1/secret/data/")]
    assert len(reads) == 2
    assert result.failure is None


async def test_permission_denied_on_one_secret_is_that_secret_unreadable(
    world: World, env: dict[str, str]
) -> None:
    client = world.bao.client()
    client.sys.create_or_update_policy(
        "scan-most",
        """
        path "secret/metadata/tls/*" { capabilities = ["list"] }
        path "secret/data/tls/*" { capabilities = ["read"] }
        path "secret/data/tls/www" { capabilities = ["deny"] }
        """,
    )
    token = client.auth.token.create(policies=["scan-most"], ttl="10m")["auth"]["client_token"]
    result = await scan(source(world.bao.url, kv=["secret/tls/"]), {TOKEN_ENV: token})
    assert result.failure is None
    obs = by_ref(result)
    denied = obs["openbao://vault1/secret/tls/www"]
    assert denied.codes == (ProblemCode.UNREADABLE,)
    assert denied.error is not None and "permission denied" in denied.error
    assert denied.labels["openbao_path"] == "secret/tls/www"
    assert "openbao://vault1/secret/tls/team/api#bundle" in obs  # the scan went on


async def test_a_missing_mount_is_reported_not_fatal(world: World, env: dict[str, str]) -> None:
    result = await scan(source(world.bao.url, kv=["nomount/x/", "secret/tls/www"]), env)
    obs = by_ref(result)
    missing = obs["openbao://vault1/nomount/x/"]
    assert missing.codes == (ProblemCode.UNREADABLE,)
    assert missing.error is not None and "not found" in missing.error
    assert "openbao://vault1/secret/tls/www#certificate" in obs
    assert result.failure is None


# -- PKI ----------------------------------------------------------------------------------------


async def test_pki_certificates_issuers_revocation_and_crl(
    world: World, env: dict[str, str]
) -> None:
    result = await scan(source(world.bao.url, pki=["pki", "pki-short"]), env)
    assert result.failure is None, result.errors
    obs = by_ref(result)
    certs = "openbao://vault1/pki/certs"

    short = obs[f"{certs}/{world.short_serial}"]
    assert short.leaf is not None and short.leaf.serial == world.short_serial
    assert short.codes == (ProblemCode.EXPIRING,)  # 2 minutes left: less than a day
    assert dict(short.labels) == {"store": "openbao", "pki_mount": "pki", "pki_state": "issued"}
    # The chain goes on with the issuer's.
    assert [c.serial for c in short.chain] == [world.short_serial, world.root_serial]

    assert obs[f"{certs}/{world.long_serial}"].problems == ()

    revoked = obs[f"{certs}/{world.revoked_serial}"]
    assert ProblemCode.REVOKED in revoked.codes
    assert revoked.labels["pki_state"] == "revoked"

    # The issuer is reported once, as the issuer, not among certs/.
    assert f"{certs}/{world.root_serial}" not in obs
    issuer = obs[f"openbao://vault1/pki/issuer/{world.issuer_id}"]
    assert issuer.leaf is not None and issuer.leaf.serial == world.root_serial
    assert issuer.leaf.is_ca and issuer.problems == ()
    assert issuer.labels["pki_mount"] == "pki" and issuer.labels["store"] == "openbao"

    # An issuing CA with an hour left shows up as expiring.
    short_ca = obs[f"openbao://vault1/pki-short/issuer/{world.short_ca_issuer_id}"]
    assert short_ca.codes == (ProblemCode.EXPIRING,)

    # CRL freshness per mount, and staleness once nextUpdate has passed.
    now = datetime.now(UTC)
    assert set(result.crl_next_update) == {"pki", "pki-short"}
    assert all(t > now for t in result.crl_next_update.values())
    assert result.stale_crls(now) == []
    later = max(result.crl_next_update.values()) + timedelta(seconds=1)
    assert result.stale_crls(later) == ["pki", "pki-short"]


async def test_pki_under_a_fixed_clock_judges_expired(world: World, env: dict[str, str]) -> None:
    later = FixedClock(datetime.now(UTC) + timedelta(minutes=10))
    src = source(world.bao.url, pki=["pki"])
    result = await scan_openbao(src, later, env=env, policy=DAY_POLICY)
    obs = by_ref(result)
    assert obs[f"openbao://vault1/pki/certs/{world.short_serial}"].codes == (ProblemCode.EXPIRED,)
    assert all(o.observed_at == later.now() for o in result.observations)


# -- authentication -----------------------------------------------------------------------------


def _approle(world: World, mount: str = "approle") -> tuple[str, str]:
    client = world.bao.client()
    if f"{mount}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle", path=mount)
        client.sys.create_or_update_policy(
            "scanner",
            """
            path "secret/metadata/tls/*" { capabilities = ["list"] }
            path "secret/data/tls/*" { capabilities = ["read"] }
            """,
        )
        client.auth.approle.create_or_update_approle(
            "certpilot-scanner", token_policies=["scanner"], token_ttl="5m", mount_point=mount
        )
    role_id = client.auth.approle.read_role_id("certpilot-scanner", mount_point=mount)
    secret = client.auth.approle.generate_secret_id("certpilot-scanner", mount_point=mount)
    return role_id["data"]["role_id"], secret["data"]["secret_id"]


def _token_accessors(world: World) -> set[str]:
    return set(world.bao.client().list("auth/token/accessors")["data"]["keys"])


async def test_approle_logs_in_per_scan_and_revokes_its_token(world: World) -> None:
    role_id, secret_id = _approle(world, "scan-approle")
    src = source(
        world.bao.url,
        kv=["secret/tls/"],
        approle_role_id_env="ROLE_ID",
        approle_secret_id_env="SECRET_ID",
        approle_mount="scan-approle",
    )
    env = {"ROLE_ID": role_id, "SECRET_ID": secret_id}  # no token variable at all
    before = _token_accessors(world)
    result = await scan(src, env)
    assert result.failure is None, result.errors
    assert "openbao://vault1/secret/tls/team/api#bundle" in by_ref(result)
    # A second scan logs in again; neither leaves a live token behind.
    assert by_ref(await scan(src, env)).keys() == by_ref(result).keys()
    assert _token_accessors(world) == before


async def test_approle_with_a_wrong_secret_id_is_one_source_observation(world: World) -> None:
    role_id, _ = _approle(world, "scan-approle")
    src = source(
        world.bao.url,
        kv=["secret/tls/"],
        approle_role_id_env="ROLE_ID",
        approle_secret_id_env="SECRET_ID",
        approle_mount="scan-approle",
    )
    result = await scan(src, {"ROLE_ID": role_id, "SECRET_ID": "not-the-secret-id"})
    assert result.failure == "auth"
    [only] = result.observations
    assert only.ref == "openbao://vault1" and only.codes == (ProblemCode.UNREADABLE,)
    assert only.error is not None and "AppRole login at auth/scan-approle" in only.error
    assert "not-the-secret-id" not in only.error and role_id not in only.error

    missing = await scan(src, {"ROLE_ID": role_id})
    assert missing.failure == "auth"
    assert "SECRET_ID" in (missing.observations[0].error or "")


async def test_a_wrong_token_is_one_source_observation_without_traceback(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "s.not-a-real-token-0123456789"
    result = await scan(source(world.bao.url, kv=["secret/tls/"], pki=["pki"]), {TOKEN_ENV: wrong})
    assert result.failure == "permission_denied"
    [only] = result.observations
    assert only.ref == "openbao://vault1" and only.target == "openbao:vault1"
    assert only.codes == (ProblemCode.UNREADABLE,) and only.leaf is None
    assert only.error is not None and "permission denied" in only.error
    assert "Traceback" not in only.error and "\n" not in only.error
    assert wrong not in only.error and wrong not in caplog.text
    assert only.error in result.errors


async def test_no_token_names_the_variable(world: World) -> None:
    result = await scan(source(world.bao.url, kv=["secret/tls/"]), {})
    assert result.failure == "auth"
    assert TOKEN_ENV in (result.observations[0].error or "")


async def test_a_token_file_is_read_at_each_scan(world: World, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(world.bao.root_token + "\n")
    src = source(world.bao.url, kv=["secret/tls/www"], token_file=str(token_file))
    assert (await scan(src, {})).failure is None
    token_file.write_text("wrong\n")
    assert (await scan(src, {})).failure == "permission_denied"


# -- namespaces ---------------------------------------------------------------------------------


async def test_namespace_is_passed_through(world: World, env: dict[str, str]) -> None:
    """OpenBao 2.x OSS has namespaces: a KV mount inside ``team-a`` is seen only with it."""
    from hvac import Client  # type: ignore[import-untyped]

    world.bao.client().write("sys/namespaces/team-a")
    ns = Client(url=world.bao.url, token=world.bao.root_token, namespace="team-a")
    ns.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    ns.secrets.kv.v2.create_or_update_secret(
        "tls/ns", {"certificate": pem(world.www)}, mount_point="kv"
    )
    inside = await scan(source(world.bao.url, kv=["kv/tls/"], namespace="team-a"), env)
    assert list(by_ref(inside)) == ["openbao://vault1/kv/tls/ns#certificate"]
    outside = await scan(source(world.bao.url, kv=["kv/tls/"]), env)
    [missing] = outside.observations
    assert missing.ref == "openbao://vault1/kv/tls/" and missing.codes == (ProblemCode.UNREADABLE,)


# -- a server in trouble ------------------------------------------------------------------------


async def test_a_sealed_server_is_one_source_observation(world: World, env: dict[str, str]) -> None:
    world.bao.seal()
    try:
        result = await scan(source(world.bao.url, kv=["secret/tls/"], pki=["pki"]), env)
    finally:
        world.bao.unseal()
    assert result.failure == "sealed"
    [only] = result.observations
    assert only.ref == "openbao://vault1" and only.codes == (ProblemCode.UNREADABLE,)
    assert only.error is not None and "sealed" in only.error
    assert (await scan(source(world.bao.url, kv=["secret/tls/www"]), env)).failure is None


async def test_a_stopped_server_is_connection_refused(tmp_path: Path) -> None:
    require_binary("bao")
    with OpenBao(tmp_path / "gone") as gone:
        url = gone.url
    result = await scan(source(url, kv=["secret/"]), {TOKEN_ENV: "root"})
    assert result.failure == "unreachable"
    [only] = result.observations
    assert only.codes == (ProblemCode.CONNECTION_REFUSED,)
    assert only.error == "openbao://vault1: unreachable: connection refused"


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = await scan(source(url, kv=["secret/"], timeout=0.3), {TOKEN_ENV: "root"})
    assert result.failure == "timeout"
    assert result.observations[0].codes == (ProblemCode.TIMEOUT,)


async def test_https_needs_the_ca_file(tmp_path: Path) -> None:
    require_binary("bao")
    with OpenBao(tmp_path / "tls", tls=True) as server:
        assert server.ca_file is not None
        server.client().secrets.kv.v2.create_or_update_secret(
            "tls/a",
            {"certificate": pem(LocalCA("t", datetime.now(UTC)).root)},
            mount_point="secret",
        )
        env = {TOKEN_ENV: server.root_token}
        ok = await scan(source(server.url, kv=["secret/tls/"], ca_file=str(server.ca_file)), env)
        assert list(by_ref(ok)) == ["openbao://vault1/secret/tls/a#certificate"]
        bad = await scan(source(server.url, kv=["secret/tls/"]), env)
    assert bad.failure == "tls"
    assert bad.observations[0].codes == (ProblemCode.TLS_ERROR,)
    assert "certificate verify failed" in (bad.observations[0].error or "")


# -- configuration ------------------------------------------------------------------------------


def test_config_defaults_and_prefix_forms() -> None:
    src = OpenBaoSource.from_mapping(
        {
            "name": "bao-prod",
            "url": "https://bao.example:8200",
            "kv": ["secret/tls/", "secret", {"mount": "kv/team-a", "path": "certs/"}],
            "pki": ["pki", "pki_int"],
            "labels": {"owner": "platform"},
        },
        source="certpilot.yaml",
    )
    assert src.kv == (
        KVPrefix("secret", "tls/"),
        KVPrefix("secret", ""),
        KVPrefix("kv/team-a", "certs/"),
    )
    assert all(p.folder for p in src.kv)
    assert not KVPrefix("secret", "tls/www").folder
    assert src.token_env == "BAO_TOKEN" and src.approle_mount == "approle"
    assert src.max_secrets == 100_000 and src.concurrency == 16
    assert src.ref == "openbao://bao-prod" and src.target == "openbao:bao-prod"


DELETE = object()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"name": DELETE}, "targets.openbao[0].name"),
        ({"name": "a/b"}, "targets.openbao[0].name"),
        ({"url": "ftp://x"}, "targets.openbao[0].url"),
        ({"url": "https://user:pw@x"}, "targets.openbao[0].url"),
        ({"kv": "secret/"}, "targets.openbao[0].kv"),
        ({"kv": ["secret/", "/abs"]}, "targets.openbao[0].kv[1]"),
        ({"kv": [{"mount": "/kv/", "path": ""}]}, "targets.openbao[0].kv[0].mount"),
        ({"kv": [], "pki": []}, "targets.openbao[0].kv"),
        ({"pki": ["pki/"]}, "targets.openbao[0].pki[0]"),
        ({"pki": [3]}, "targets.openbao[0].pki[0]"),
        ({"timeout": 0}, "targets.openbao[0].timeout"),
        ({"timeout": "5"}, "targets.openbao[0].timeout"),
        ({"token_env": "not a name"}, "targets.openbao[0].token_env"),
        ({"approle_role_id_env": "R"}, "targets.openbao[0].approle_secret_id_env"),
        (
            {"approle_role_id_env": "R", "approle_secret_id_env": "S", "token_file": "/t"},
            "targets.openbao[0].token_file",
        ),
        ({"labels": {"owner": 3}}, "targets.openbao[0].labels.owner"),
        ({"max_secrets": 0}, "targets.openbao[0].max_secrets"),
        ({"concurrency": 0}, "targets.openbao[0].concurrency"),
        ({"concurrency": True}, "targets.openbao[0].concurrency"),
        ({"tokn_env": "X"}, "targets.openbao[0].tokn_env"),
    ],
)
def test_config_errors_name_the_field(options: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"name": "bao", "url": "http://127.0.0.1:8200", "kv": ["secret/"]}
    data.update(options)
    data = {k: v for k, v in data.items() if v is not DELETE}
    with pytest.raises(ConfigError) as e:
        OpenBaoSource.from_mapping(data, source="certpilot.yaml", field="targets.openbao[0]")
    assert e.value.source == "certpilot.yaml"
    assert e.value.field == field
    assert "Traceback" not in e.value.one_line()
