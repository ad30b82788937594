"""The OpenBao PKI issuer and KV v2 target against a real ``bao server -dev``
(``tests/support/openbao.py``).

One server per module: every test uses its own KV path or PKI mount, so they do not see each
other's state. The destructive cases (sealed, stopped) either restore the server afterwards
(seal, then unseal with the dev key) or use a server of their own. Rate limiting is real too:
an OpenBao rate-limit quota on a mount of its own answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certpilot.domain.clock import SystemClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import (
    DeployError,
    DeployReceipt,
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RevocationReason,
)
from certpilot.localca import LocalCA
from remediator.issuers._common import describe
from remediator.issuers.openbao_pki import (
    OpenBaoPKIConfig,
    OpenBaoPKIIssuer,
    colon_serial,
    normalise_serial,
)
from remediator.issuers.openbao_pki import from_config as pki_from_config
from remediator.targets.openbao_kv import OpenBaoKVTarget, config_from_mapping
from remediator.targets.openbao_kv import from_config as kv_from_config
from tests.support.openbao import OpenBao
from tests.support.services import require_binary

pytestmark = pytest.mark.service("openbao")

TOKEN_ENV = "CERTPILOT_TEST_BAO_TOKEN"
DOMAIN = "test.internal"
_paths = itertools.count()


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    require_binary("bao")
    server = OpenBao(tmp_path_factory.mktemp("openbao"))
    server.start()
    try:
        server.setup_pki(allowed_domains=[DOMAIN])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def root(bao: OpenBao) -> x509.Certificate:
    pem = bao.client().secrets.pki.read_ca_certificate(mount_point="pki")
    return x509.load_pem_x509_certificate(str(pem).encode())


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch, bao: OpenBao) -> str:
    monkeypatch.setenv(TOKEN_ENV, bao.root_token)
    return bao.root_token


def pki(bao: OpenBao, **options: Any) -> OpenBaoPKIIssuer:
    """An issuer built the way settings build it: from YAML-shaped options."""
    data: dict[str, Any] = {"url": bao.url, "role": "web", "token_env": TOKEN_ENV, "timeout": 5}
    data.update(options)
    return pki_from_config("bao", data, SystemClock())


def kv(bao: OpenBao, path: str | None = None, **options: Any) -> OpenBaoKVTarget:
    data: dict[str, Any] = {
        "url": bao.url,
        "path": path or f"tls/site{next(_paths)}",
        "token_env": TOKEN_ENV,
        "timeout": 5,
    }
    data.update(options)
    return kv_from_config("vault-www", data, source="certpilot.yaml")


def kv_version(bao: OpenBao, target: OpenBaoKVTarget, version: int | None = None) -> Any:
    return bao.client().secrets.kv.v2.read_secret_version(
        target.config.path, version=version, mount_point="secret", raise_on_deleted_version=False
    )["data"]


def kv_metadata(bao: OpenBao, target: OpenBaoKVTarget) -> dict[str, Any]:
    meta: dict[str, Any] = bao.client().secrets.kv.v2.read_secret_metadata(
        target.config.path, mount_point="secret"
    )["data"]
    return meta


def local_cert(ca: LocalCA, name: str) -> IssuedCertificate:
    issued = ca.issue([name], datetime.now(UTC))
    return describe([issued.cert, *issued.chain], issued.key_pem(), "local")


def leaf_of(cert: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificates(cert.chain_pem)[0]


# -- serials ------------------------------------------------------------------------------------


def test_serial_forms_round_trip() -> None:
    assert normalise_serial("08:fa:29:cf") == "8fa29cf"
    assert normalise_serial("00:01") == "1"
    assert colon_serial(0x8FA29CF) == "08:fa:29:cf"
    assert colon_serial(0xFF) == "ff"
    for n in (1, 0x80, 0xABCDEF, x509.random_serial_number()):
        assert normalise_serial(colon_serial(n)) == format(n, "x")


# -- PKI issuer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("EC-256", ec.EllipticCurvePrivateKey), ("RSA-2048", rsa.RSAPrivateKey)],
)
async def test_issue_signs_a_local_key_with_sans_and_validity(
    bao: OpenBao, root: x509.Certificate, token: str, key_type: str, key_class: type
) -> None:
    names = (f"www.{DOMAIN}", f"api.{DOMAIN}", "127.0.0.1")
    cert = await pki(bao).issue(IssueRequest(names=names, key_type=key_type, validity_days=2))

    chain = x509.load_pem_x509_certificates(cert.chain_pem)
    leaf = chain[0]
    assert chain[1:] == [root]  # issued by the root directly: the issuing CA, once
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names[:2])
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = serialization.load_pem_private_key(cert.key_pem, password=None)
    assert isinstance(key, key_class)
    assert key.public_key() == leaf.public_key()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=2) <= lifetime <= timedelta(days=2, minutes=5)  # OpenBao backdates 30s
    assert cert.serial == format(leaf.serial_number, "x")
    assert cert.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert cert.issuer_name == "bao"
    # OpenBao knows it under its colon form: the normalisation round-trips.
    stored = bao.client().secrets.pki.read_certificate(
        colon_serial(leaf.serial_number), mount_point="pki"
    )
    assert x509.load_pem_x509_certificate(stored["data"]["certificate"].encode()) == leaf
    listed = bao.client().secrets.pki.list_certificates(mount_point="pki")["data"]["keys"]
    assert cert.serial in {normalise_serial(k) for k in listed}
    assert await pki(bao).renewal_info(cert.chain_pem) is None


async def test_a_role_max_ttl_shortens_the_lifetime_and_says_so(
    bao: OpenBao, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="certpilot.remediator.openbao_pki")
    cert = await pki(bao).issue(IssueRequest(names=(f"long.{DOMAIN}",), validity_days=90))
    assert cert.not_after is not None and cert.not_before is not None
    assert cert.not_after - cert.not_before <= timedelta(hours=720, minutes=1)
    assert "asked for 90 days" in caplog.text


async def test_token_file_is_read_instead_of_the_environment(
    bao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token_file = tmp_path / "bao-token"
    token_file.write_text(bao.root_token + "\n")
    cert = await pki(bao, token_file=str(token_file)).issue(IssueRequest(names=(f"tf.{DOMAIN}",)))
    assert cert.serial


async def test_revoke_lists_the_serial_in_the_crl_and_writes_crl_file(
    bao: OpenBao,
    root: x509.Certificate,
    token: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="certpilot.remediator.openbao_pki")
    crl_file = tmp_path / "pub" / "bao.crl.pem"
    issuer = pki(bao, crl_file=str(crl_file))
    cert = await issuer.issue(IssueRequest(names=(f"gone.{DOMAIN}",)))
    serial = leaf_of(cert).serial_number

    await issuer.revoke(cert.chain_pem, RevocationReason.KEY_COMPROMISE)

    crl = x509.load_pem_x509_crl(crl_file.read_bytes())
    root_key = root.public_key()
    assert isinstance(root_key, rsa.RSAPublicKey)  # OpenBao's default root key type
    assert crl.is_signature_valid(root_key)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    live = x509.load_pem_x509_crl(await issuer.crl_pem())
    assert live.get_revoked_certificate_by_serial_number(serial) is not None
    assert f"revoked serial {cert.serial} (key_compromise" in caplog.text
    # A resumed job may revoke twice: OpenBao answers the same, so do we.
    await issuer.revoke(cert.chain_pem, RevocationReason.KEY_COMPROMISE)


async def test_revoking_a_certificate_from_another_ca_is_refused(
    bao: OpenBao, token: str, ca: LocalCA
) -> None:
    stranger = local_cert(ca, f"x.{DOMAIN}")
    with pytest.raises(IssuerError, match="not issued by pki/") as e:
        await pki(bao).revoke(stranger.chain_pem, RevocationReason.UNSPECIFIED)
    assert stranger.serial in e.value.message


async def test_a_name_outside_the_role_is_refused(bao: OpenBao, token: str) -> None:
    with pytest.raises(IssuerError, match=r"refused \(HTTP 400\)") as e:
        await pki(bao).issue(IssueRequest(names=("www.example.com",)))
    assert e.value.issuer == "bao"
    assert e.value.retry_after is None


async def test_a_wrong_token_is_permission_denied_and_never_echoed(
    bao: OpenBao, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s.WrongToken0123456789abcdef"
    monkeypatch.setenv(TOKEN_ENV, secret)
    caplog.set_level(logging.DEBUG)
    issuer = pki(bao)
    with pytest.raises(IssuerError, match=r"permission denied \(token\)") as e:
        await issuer.issue(IssueRequest(names=(f"www.{DOMAIN}",)))
    assert e.value.retry_after is None
    for text in (str(e.value), repr(e.value), repr(issuer), repr(issuer.config), caplog.text):
        assert secret not in text


async def test_a_missing_token_names_the_variable(
    bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(IssuerError, match=TOKEN_ENV):
        await pki(bao).issue(IssueRequest(names=(f"www.{DOMAIN}",)))


async def test_rate_limit_quota_gives_retry_after(bao: OpenBao, token: str) -> None:
    bao.setup_pki("pki-slow", allowed_domains=[DOMAIN])
    client = bao.client()
    client.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": True})
    client.write_data(
        "sys/quotas/rate-limit/certpilot-test",
        data={"path": "pki-slow/", "rate": 1, "interval": "1m"},
    )
    try:
        issuer = pki(bao, mount="pki-slow")
        await issuer.issue(IssueRequest(names=(f"a.{DOMAIN}",)))
        with pytest.raises(IssuerError, match=r"rate limited \(HTTP 429\)") as e:
            await issuer.issue(IssueRequest(names=(f"b.{DOMAIN}",)))
        assert e.value.retry_after is not None
        assert 0 < e.value.retry_after <= 60
    finally:
        client.delete("sys/quotas/rate-limit/certpilot-test")
        client.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": False})


async def test_a_sealed_server_is_reported_as_sealed(bao: OpenBao, token: str) -> None:
    target = kv(bao)
    bao.seal()
    try:
        with pytest.raises(IssuerError, match="sealed") as e:
            await pki(bao).issue(IssueRequest(names=(f"www.{DOMAIN}",)))
        assert "HTTP 503" in e.value.message
        with pytest.raises(DeployError, match="sealed") as d:
            await target.current()
        assert d.value.step == "read"
    finally:
        bao.unseal()
    assert await target.current() is None  # and it works again once unsealed


async def test_a_stopped_server_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("bao")
    monkeypatch.setenv(TOKEN_ENV, "root")
    with OpenBao(tmp_path / "gone") as gone:
        url = gone.url
    issuer = pki_from_config(
        "bao", {"url": url, "role": "web", "token_env": TOKEN_ENV}, SystemClock()
    )
    with pytest.raises(IssuerError, match="unreachable: connection refused") as e:
        await issuer.issue(IssueRequest(names=(f"www.{DOMAIN}",)))
    assert e.value.retry_after is None  # the executor backs off on its own schedule


async def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "root")
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        issuer = pki_from_config(
            "bao",
            {"url": url, "role": "web", "token_env": TOKEN_ENV, "timeout": 0.3},
            SystemClock(),
        )
        with pytest.raises(IssuerError, match="unreachable: timed out") as e:
            await issuer.crl_pem()
    assert e.value.retry_after is None


async def test_https_is_verified_against_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("bao")
    monkeypatch.setenv(TOKEN_ENV, "root")
    with OpenBao(tmp_path / "tls", tls=True) as server:
        assert server.ca_file is not None and server.url.startswith("https://")
        server.setup_pki(allowed_domains=[DOMAIN])
        request = IssueRequest(names=(f"tls.{DOMAIN}",))
        cert = await pki(server, ca_file=str(server.ca_file)).issue(request)
        assert cert.serial
        # Without ca_file the system trust store is used, and OpenBao's dev CA is not in it.
        with pytest.raises(IssuerError, match="TLS error: certificate verify failed"):
            await pki(server).issue(request)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": "http://127.0.0.1:8200", "role": "web", "colour": "red"}, "colour"),
        ({"url": "http://127.0.0.1:8200"}, "role"),
        ({"role": "web"}, "url"),
        ({"url": "http://127.0.0.1:8200", "role": "web", "timeout": "soon"}, "timeout"),
        ({"url": "http://127.0.0.1:8200", "role": "web", "token_file": 7}, "token_file"),
    ],
)
def test_issuer_config_errors_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        pki_from_config("bao", options, SystemClock())
    assert e.value.source == "issuers.bao"
    assert e.value.field == field


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://bao", "role": "web"},
        {"url": "https://user:pw@bao", "role": "web"},
        {"url": "https://bao", "role": "web", "mount": "/pki/"},
        {"url": "https://bao", "role": "a/b"},
    ],
)
def test_issuer_config_rejects_unusable_values(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as e:
        OpenBaoPKIConfig.from_mapping(options, source="certpilot.yaml")
    assert e.value.source == "certpilot.yaml"
    assert "pw" not in str(e.value)


# -- KV target ----------------------------------------------------------------------------------


async def test_deploy_rollback_keeps_history(
    bao: OpenBao, token: str, ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = kv(bao)
    first, second = local_cert(ca, f"one.{DOMAIN}"), local_cert(ca, f"two.{DOMAIN}")

    r1 = await target.deploy(first)
    assert r1 == DeployReceipt("vault-www", first.serial, {"previous_version": "0", "version": "1"})
    held = await target.current()
    assert held is not None
    assert (held.serial, held.key_pem, held.chain_pem) == (
        first.serial,
        first.key_pem,
        first.chain_pem,
    )
    v1 = kv_version(bao, target, 1)["data"]
    assert set(v1) == {"certificate", "ca_chain", "private_key"}
    assert x509.load_pem_x509_certificate(v1["certificate"].encode()) == leaf_of(first)

    r2 = await target.deploy(second)
    assert dict(r2.state) == {"previous_version": "1", "version": "2"}
    held = await target.current()
    assert held is not None and held.serial == second.serial

    await target.rollback(r2)
    assert kv_metadata(bao, target)["current_version"] == 3
    assert kv_version(bao, target, 3)["data"] == v1
    restored = await target.current()
    assert restored is not None and restored.fingerprint_sha256 == first.fingerprint_sha256
    # A retried rollback (crash, lost response) finds the work done.
    await target.rollback(r2)
    assert kv_metadata(bao, target)["current_version"] == 3

    # No key material in receipts or logs.
    for cert in (first, second):
        key_text = cert.key_pem.decode()
        for receipt in (r1, r2):
            assert key_text not in repr(receipt)
            assert all("PRIVATE KEY" not in v for v in receipt.state.values())
        assert key_text not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def test_rollback_of_a_first_deploy_deletes_the_version(
    bao: OpenBao, token: str, ca: LocalCA
) -> None:
    target = kv(bao)
    receipt = await target.deploy(local_cert(ca, f"new.{DOMAIN}"))
    await target.rollback(receipt)
    assert await target.current() is None
    meta = kv_metadata(bao, target)
    assert meta["current_version"] == 1
    assert meta["versions"]["1"]["deletion_time"]  # soft-deleted: undelete brings it back


async def test_rollback_refuses_when_someone_wrote_after_the_deploy(
    bao: OpenBao, token: str, ca: LocalCA
) -> None:
    target = kv(bao)
    await target.deploy(local_cert(ca, f"a.{DOMAIN}"))
    receipt = await target.deploy(local_cert(ca, f"b.{DOMAIN}"))
    bao.client().secrets.kv.v2.create_or_update_secret(
        target.config.path, {"certificate": "theirs"}, mount_point="secret"
    )
    with pytest.raises(DeployError, match="changed since deploy") as e:
        await target.rollback(receipt)
    assert e.value.step == "rollback"
    assert kv_metadata(bao, target)["current_version"] == 3
    assert kv_version(bao, target)["data"] == {"certificate": "theirs"}


async def test_deploy_detects_a_concurrent_writer_by_check_and_set(
    bao: OpenBao, token: str, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = kv(bao)
    await target.deploy(local_cert(ca, f"a.{DOMAIN}"))
    read_metadata = target._metadata

    def then_someone_writes(client: Any) -> Any:
        meta = read_metadata(client)
        bao.client().secrets.kv.v2.create_or_update_secret(
            target.config.path, {"certificate": "theirs"}, mount_point="secret"
        )
        return meta

    monkeypatch.setattr(target, "_metadata", then_someone_writes)
    with pytest.raises(DeployError, match="version changed") as e:
        await target.deploy(local_cert(ca, f"b.{DOMAIN}"))
    assert e.value.step == "write"
    assert kv_version(bao, target)["data"] == {"certificate": "theirs"}


async def test_deploy_keeps_fields_it_does_not_own(bao: OpenBao, token: str, ca: LocalCA) -> None:
    target = kv(bao, cert_field="tls.crt", key_field="tls.key", chain_field="ca.crt")
    bao.client().secrets.kv.v2.create_or_update_secret(
        target.config.path, {"dhparam": "keep me", "tls.crt": "old"}, mount_point="secret"
    )
    cert = local_cert(ca, f"k.{DOMAIN}")
    receipt = await target.deploy(cert)
    data = kv_version(bao, target)["data"]
    assert set(data) == {"dhparam", "tls.crt", "tls.key", "ca.crt"}
    assert data["dhparam"] == "keep me"
    await target.rollback(receipt)
    assert kv_version(bao, target)["data"] == {"dhparam": "keep me", "tls.crt": "old"}


async def test_deploy_validates_the_key_against_the_certificate(
    bao: OpenBao, token: str, ca: LocalCA
) -> None:
    a, b = local_cert(ca, f"a.{DOMAIN}"), local_cert(ca, f"b.{DOMAIN}")
    mismatched = IssuedCertificate(chain_pem=a.chain_pem, key_pem=b.key_pem, serial=a.serial)
    with pytest.raises(DeployError, match="does not match") as e:
        await kv(bao).deploy(mismatched)
    assert e.value.step == "validate"
    assert b.key_pem.decode() not in str(e.value)


async def test_kv_wrong_token_fails_the_step_without_echoing_it(
    bao: OpenBao, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s.AnotherWrongToken42"
    monkeypatch.setenv(TOKEN_ENV, secret)
    target = kv(bao)
    with pytest.raises(DeployError, match=r"permission denied \(token\)") as e:
        await target.deploy(local_cert(ca, f"a.{DOMAIN}"))
    assert e.value.step == "read"  # the metadata read comes first
    assert secret not in str(e.value)
    with pytest.raises(DeployError) as r:
        await target.current()
    assert r.value.step == "read"


async def test_kv_read_only_token_fails_at_write(
    bao: OpenBao, ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = bao.client()
    client.sys.create_or_update_policy(
        "certpilot-kv-read",
        'path "secret/metadata/*" { capabilities = ["read"] }\n'
        'path "secret/data/*" { capabilities = ["read"] }\n',
    )
    reader = client.auth.token.create(policies=["certpilot-kv-read"], ttl="10m")["auth"]
    monkeypatch.setenv(TOKEN_ENV, reader["client_token"])
    target = kv(bao)
    with pytest.raises(DeployError, match=r"permission denied \(token\)") as e:
        await target.deploy(local_cert(ca, f"a.{DOMAIN}"))
    assert e.value.step == "write"
    assert reader["client_token"] not in str(e.value)
    assert await target.current() is None  # reading is allowed


def test_kv_config_parses_endpoints() -> None:
    config = config_from_mapping(
        {
            "url": "https://bao.example.com:8200",
            "path": "tls/www",
            "cas": False,
            "endpoints": ["www.example.com:8443#alt.example.com", {"host": "h", "address": "::1"}],
        }
    )
    assert config.mount == "secret" and config.cas is False
    assert config.endpoints == (
        EndpointTarget("www.example.com", 8443, sni="alt.example.com"),
        EndpointTarget("h", 443, address="::1"),
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": "https://b", "path": "p", "colour": "red"}, "targets.colour"),
        ({"url": "https://b"}, "targets.path"),
        ({"url": "https://b", "path": "p", "cas": "yes"}, "targets.cas"),
        ({"url": "https://b", "path": "p", "endpoints": ["a:b:c:d"]}, "targets.endpoints[0]"),
        ({"url": "https://b", "path": "p", "key_field": "certificate"}, "targets"),
        ({"url": "https://b", "path": "/p"}, "targets"),
    ],
)
def test_kv_config_errors_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping(options, source="certpilot.yaml")
    assert (e.value.source, e.value.field) == ("certpilot.yaml", field)


# -- end to end ---------------------------------------------------------------------------------


async def test_issue_with_pki_then_deploy_to_kv(
    bao: OpenBao, root: x509.Certificate, token: str
) -> None:
    cert = await pki(bao).issue(IssueRequest(names=(f"e2e.{DOMAIN}",), validity_days=1))
    target = kv(bao)
    receipt = await target.deploy(cert)
    assert receipt.serial == cert.serial
    held = await target.current()
    assert held is not None
    assert held.fingerprint_sha256 == cert.fingerprint_sha256
    assert held.chain_pem == cert.chain_pem
    assert held.key_pem == cert.key_pem
    data = kv_version(bao, target)["data"]
    assert x509.load_pem_x509_certificate(data["ca_chain"].encode()) == root
