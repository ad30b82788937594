"""The ``k8s_secret`` deploy target through lightkube, against the loopback fake API server
(``tests/support/k8s_fake.py``: HTTPS, bearer token, real response shapes).

What is checked: the Secret cert-manager would write (``kubernetes.io/tls``, base64 data,
``ca.crt``, annotations), replace-with-precondition and the kept ``-certpilot-prev`` sibling,
rollback of a replace and of a create, 409 conflicts when someone writes in between, one-line
errors for 401/403/unreachable/timeout/bad kubeconfig that never carry the token or the key,
``current()``, the request log (only the configured Secret names are touched), and config
errors that name the field.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from certpilot.domain.errors import ConfigError
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import DeployError, DeployReceipt, IssuedCertificate
from certpilot.localca import LocalCA
from remediator.issuers._common import describe, load_pem_chain
from remediator.targets.k8s_secret import (
    ANNOTATION_FINGERPRINT,
    ANNOTATION_PREVIOUS_RV,
    ANNOTATION_SERIAL,
    LABEL_PREVIOUS_OF,
    K8sSecretTarget,
    K8sSecretTargetConfig,
    config_from_mapping,
    from_config,
)
from tests.support.k8s_fake import DEFAULT_TOKEN, FakeKubeAPI

NS = "web"
NAME = "shop-tls"
PREV = f"{NAME}-certpilot-prev"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/{NAME}"
PREV_PATH = f"/api/v1/namespaces/{NS}/secrets/{PREV}"
COLLECTION = f"/api/v1/namespaces/{NS}/secrets"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(namespaces=(NS,), directory=tmp_path / "apiserver") as api:
        yield api


@pytest.fixture
def kubeconfig(kube: FakeKubeAPI, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def make_target(kubeconfig: Path | None, **options: Any) -> K8sSecretTarget:
    values: dict[str, Any] = {"namespace": NS, "secret": NAME, "kubeconfig": kubeconfig}
    values.update(options)
    return K8sSecretTarget("k8s:shop", K8sSecretTargetConfig(**values))


@pytest.fixture
def target(kubeconfig: Path) -> K8sSecretTarget:
    return make_target(kubeconfig, labels={"team": "shop"}, annotations={"owner": "sre"})


def issue(ca: LocalCA, now: datetime, name: str = "shop.example.test") -> IssuedCertificate:
    issued = ca.issue([name], now)
    return describe(load_pem_chain(issued.chain_pem()), issued.key_pem(), issuer_name="test")


def intermediates_pem(cert: IssuedCertificate) -> bytes:
    first_end = cert.chain_pem.index(b"-----END CERTIFICATE-----\n") + 26
    return cert.chain_pem[first_end:]


def stored(kube: FakeKubeAPI, name: str = NAME) -> dict[str, Any]:
    obj = kube.secret(NS, name)
    assert obj is not None, f"Secret {name} is missing"
    return obj


def assert_secretless(text: str, *certs: IssuedCertificate) -> None:
    """Neither the token nor any key (PEM or base64) appears in ``text``."""
    assert DEFAULT_TOKEN not in text
    assert "PRIVATE KEY" not in text
    for cert in certs:
        assert base64.b64encode(cert.key_pem).decode()[:40] not in text


# -- deploy ------------------------------------------------------------------------------------


async def test_first_deploy_creates_a_tls_secret(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    cert = issue(ca, now)
    receipt = await target.deploy(cert)

    obj = stored(kube)
    assert obj["type"] == "kubernetes.io/tls"
    assert receipt.serial == cert.serial
    assert receipt.state["created"] == "true"
    assert receipt.state["resource_version"] == obj["metadata"]["resourceVersion"]
    assert receipt.state["previous_resource_version"] == ""
    # The API carries data base64-encoded, as the real one does.
    assert obj["data"]["tls.crt"] == base64.b64encode(cert.chain_pem).decode()
    data = kube.secret_data(NS, NAME)
    assert data is not None
    assert data["tls.crt"] == cert.chain_pem  # leaf + intermediate
    assert data["tls.key"] == cert.key_pem
    assert data["ca.crt"] == intermediates_pem(cert)
    assert obj["metadata"]["annotations"] == {
        "owner": "sre",
        ANNOTATION_SERIAL: cert.serial,
        ANNOTATION_FINGERPRINT: cert.fingerprint_sha256,
    }
    assert obj["metadata"]["labels"] == {"team": "shop"}
    assert kube.secret(NS, PREV) is None  # nothing was replaced, nothing kept
    writes = [r for r in kube.requests if r.method != "GET"]
    assert [(r.method, r.object_name) for r in writes] == [("POST", NAME)]
    assert writes[0].query == {"fieldManager": "certpilot"}
    assert all(r.authorized for r in kube.requests)


async def test_no_intermediates_means_no_ca_crt(
    kube: FakeKubeAPI, kubeconfig: Path, now: datetime
) -> None:
    root_only = LocalCA("Flat", now, intermediate_lifetime=None)
    await make_target(kubeconfig).deploy(issue(root_only, now))
    data = kube.secret_data(NS, NAME)
    assert data is not None
    assert set(data) == {"tls.crt", "tls.key"}


async def test_second_deploy_replaces_and_keeps_previous(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    first, second = issue(ca, now), issue(ca, now)
    r1 = await target.deploy(first)
    before = stored(kube)
    r2 = await target.deploy(second)

    after = stored(kube)
    assert r2.state["created"] == "false"
    assert r2.state["previous_resource_version"] == r1.state["resource_version"]
    assert r2.state["resource_version"] == after["metadata"]["resourceVersion"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # replaced, not recreated
    assert after["metadata"]["annotations"][ANNOTATION_SERIAL] == second.serial
    data = kube.secret_data(NS, NAME)
    assert data is not None and data["tls.crt"] == second.chain_pem

    prev = stored(kube, PREV)
    assert prev["data"] == before["data"]  # exactly what was replaced
    assert prev["type"] == "Opaque"  # not watched as a live TLS Secret by exporters
    assert prev["metadata"]["labels"][LABEL_PREVIOUS_OF] == NAME
    assert prev["metadata"]["annotations"][ANNOTATION_PREVIOUS_RV] == r1.state["resource_version"]
    assert prev["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Secret", "name": NAME, "uid": before["metadata"]["uid"]}
    ]
    # The PUT carried the resourceVersion it read: optimistic concurrency.
    [put] = [r for r in kube.requests if r.method == "PUT" and r.path == SECRET_PATH]
    assert put.object_name == NAME

    # A third deploy replaces the kept version (PUT on the sibling, not a second POST).
    await target.deploy(issue(ca, now))
    assert kube.secret_data(NS, PREV) == data
    assert [r.method for r in kube.requests if r.path == PREV_PATH] == ["GET", "GET", "PUT"]


async def test_replace_keeps_what_others_put_there(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    kube.put_secret(
        NS,
        NAME,
        {"tls.crt": b"old", "tls.key": b"old", "ca.crt": b"old-ca", "keystore.p12": b"\x00\x01"},
        type="Opaque",
        labels={"app": "shop"},
        annotations={"reflector/allowed": "true"},
    )
    cert = issue(ca, now, "shop.example.test")
    await target.deploy(cert)

    obj = stored(kube)
    assert obj["type"] == "Opaque"  # a Secret's type is immutable: kept
    assert obj["metadata"]["labels"] == {"app": "shop", "team": "shop"}
    assert obj["metadata"]["annotations"]["reflector/allowed"] == "true"
    data = kube.secret_data(NS, NAME)
    assert data is not None
    assert data["keystore.p12"] == b"\x00\x01"
    assert data["ca.crt"] == intermediates_pem(cert)
    assert kube.secret_data(NS, PREV) == {
        "tls.crt": b"old",
        "tls.key": b"old",
        "ca.crt": b"old-ca",
        "keystore.p12": b"\x00\x01",
    }


async def test_a_foreign_secret_with_the_sibling_name_is_not_overwritten(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    await target.deploy(issue(ca, now))
    foreign = kube.put_secret(NS, PREV, {"password": b"not certpilot's"})
    before = stored(kube)
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "write"
    assert "not written by certpilot" in e.value.message
    assert stored(kube, PREV) == foreign
    assert stored(kube) == before


@pytest.mark.parametrize(
    ("kind", "immutable", "expected"),
    [
        ("kubernetes.io/dockerconfigjson", None, "has type kubernetes.io/dockerconfigjson"),
        ("kubernetes.io/tls", True, "is immutable"),
    ],
)
async def test_secrets_certpilot_must_not_rewrite_are_refused(
    kube: FakeKubeAPI,
    target: K8sSecretTarget,
    ca: LocalCA,
    now: datetime,
    kind: str,
    immutable: bool | None,
    expected: str,
) -> None:
    data = {".dockerconfigjson": b"{}"} if "docker" in kind else {"tls.crt": b"a", "tls.key": b"b"}
    before = kube.put_secret(NS, NAME, data, type=kind, immutable=immutable)
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "validate"
    assert expected in e.value.message
    assert stored(kube) == before
    assert [r.method for r in kube.requests] == ["GET"]


async def test_invalid_certificate_is_refused_before_any_request(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    good, other = issue(ca, now), issue(ca, now)
    mismatched = IssuedCertificate(chain_pem=good.chain_pem, key_pem=other.key_pem)
    garbage = IssuedCertificate(chain_pem=b"not a certificate", key_pem=good.key_pem)
    no_key = IssuedCertificate(chain_pem=good.chain_pem, key_pem=b"-----BEGIN NOTHING-----")
    for cert, text in (
        (mismatched, "does not match"),
        (garbage, "no PEM certificate"),
        (no_key, "not an unencrypted PEM private key"),
    ):
        with pytest.raises(DeployError) as e:
            await target.deploy(cert)
        assert e.value.step == "validate"
        assert text in e.value.message
        assert_secretless(str(e.value), good, other)
    assert kube.requests == []


# -- rollback ----------------------------------------------------------------------------------


async def test_rollback_restores_the_previous_data(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    first, second = issue(ca, now), issue(ca, now)
    await target.deploy(first)
    first_data = kube.secret_data(NS, NAME)
    receipt = await target.deploy(second)

    await target.rollback(receipt)

    assert kube.secret_data(NS, NAME) == first_data
    obj = stored(kube)
    assert obj["metadata"]["annotations"][ANNOTATION_SERIAL] == first.serial
    assert obj["metadata"]["annotations"][ANNOTATION_FINGERPRINT] == first.fingerprint_sha256
    assert obj["type"] == "kubernetes.io/tls"
    held = await target.current()
    assert held is not None and held.serial == first.serial
    # The restoring PUT was conditional on the version the deploy wrote.
    assert int(obj["metadata"]["resourceVersion"]) > int(receipt.state["resource_version"])


async def test_rollback_of_a_create_deletes_the_secret(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    receipt = await target.deploy(issue(ca, now))
    await target.rollback(receipt)
    assert kube.secret(NS, NAME) is None
    assert [r.method for r in kube.requests if r.path == SECRET_PATH][-1] == "DELETE"
    await target.rollback(receipt)  # already gone: nothing to do, no error
    assert await target.current() is None


async def test_rollback_refuses_when_the_secret_changed_since(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    created = await target.deploy(issue(ca, now))
    kube.touch(NS, NAME)  # someone annotated it
    with pytest.raises(DeployError) as e:
        await target.rollback(created)
    assert e.value.step == "rollback"
    assert "changed since the deploy" in e.value.message
    assert kube.secret(NS, NAME) is not None  # not deleted

    replaced = await target.deploy(issue(ca, now))
    latest = await target.deploy(issue(ca, now))  # a later deploy
    before = stored(kube)
    with pytest.raises(DeployError) as e:
        await target.rollback(replaced)
    assert e.value.step == "rollback"
    assert stored(kube) == before
    await target.rollback(latest)  # the latest one can be rolled back


async def test_rollback_refuses_when_the_kept_version_is_another_one(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    """A later deploy that failed at its final PUT had already rewritten the sibling: the
    Secret is still at the version ``earlier`` wrote, but rolling ``earlier`` back must not
    restore what the sibling holds now (that is ``earlier``'s own certificate)."""
    await target.deploy(issue(ca, now))
    earlier = await target.deploy(issue(ca, now))
    kube.before("PUT", SECRET_PATH, lambda: kube.fail_next(500))
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "write"
    assert stored(kube)["metadata"]["resourceVersion"] == earlier.state["resource_version"]
    before = stored(kube)
    with pytest.raises(DeployError) as e:
        await target.rollback(earlier)
    assert e.value.step == "rollback"
    assert "a later deploy kept another version" in e.value.message
    assert stored(kube) == before


async def test_rollback_checks_the_kept_version_matches(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    await target.deploy(issue(ca, now))
    receipt = await target.deploy(issue(ca, now))
    forged = DeployReceipt(
        target=receipt.target,
        serial=receipt.serial,
        state={**receipt.state, "previous_resource_version": "1"},
    )
    with pytest.raises(DeployError) as e:
        await target.rollback(forged)
    assert e.value.step == "rollback"
    assert "holds resourceVersion" in e.value.message

    kube.delete_secret(NS, PREV)
    with pytest.raises(DeployError) as e:
        await target.rollback(receipt)
    assert "is missing" in e.value.message


async def test_rollback_refuses_receipts_of_other_targets(
    target: K8sSecretTarget, kubeconfig: Path
) -> None:
    with pytest.raises(DeployError, match="receipt is for target"):
        await target.rollback(DeployReceipt("other", "01", {"created": "true"}))
    other = make_target(kubeconfig, secret="another")
    with pytest.raises(DeployError, match="receipt is for Secret"):
        await other.rollback(
            DeployReceipt(other.name, "01", {"namespace": NS, "secret": NAME, "created": "true"})
        )
    with pytest.raises(DeployError, match="records no Secret version"):
        await target.rollback(DeployReceipt(target.name, "01", {}))


# -- concurrency -------------------------------------------------------------------------------


async def test_conflict_on_deploy_overwrites_nothing(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    await target.deploy(issue(ca, now))
    # Someone else writes the Secret between certpilot's GET and its PUT.
    kube.before("PUT", SECRET_PATH, lambda: kube.touch(NS, NAME, annotation="other-writer"))
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "write"
    assert "changed concurrently" in e.value.message
    assert_secretless(str(e.value))
    assert stored(kube)["metadata"]["annotations"]["other-writer"] == "someone-else"


async def test_conflict_on_create(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    kube.before("POST", COLLECTION, lambda: kube.put_secret(NS, NAME, {}, type="Opaque"))
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "write"
    assert "created by someone else" in e.value.message


async def test_conflict_on_rollback(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    await target.deploy(issue(ca, now))
    receipt = await target.deploy(issue(ca, now))
    kube.before("PUT", SECRET_PATH, lambda: kube.touch(NS, NAME))
    with pytest.raises(DeployError) as e:
        await target.rollback(receipt)
    assert e.value.step == "rollback"
    assert "changed concurrently" in e.value.message


# -- failures are one line, without secrets ----------------------------------------------------


async def test_wrong_token_is_a_one_line_401(
    kube: FakeKubeAPI,
    tmp_path: Path,
    ca: LocalCA,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-do-not-print"
    target = make_target(kube.write_kubeconfig(tmp_path / "kc", token=wrong))
    cert = issue(ca, now)
    with pytest.raises(DeployError) as e:
        await target.deploy(cert)
    text = str(e.value)
    assert e.value.step == "read"
    assert "401" in text and kube.url in text
    assert "\n" not in text
    assert wrong not in text
    assert_secretless(text, cert)
    assert wrong not in caplog.text
    assert_secretless(caplog.text, cert)
    assert [r.authorized for r in kube.requests] == [False]


@pytest.mark.parametrize(
    ("method", "path", "step", "verb"),
    [
        ("GET", SECRET_PATH, "read", "get"),
        ("POST", COLLECTION, "write", "create"),
    ],
)
async def test_forbidden_names_the_rbac_to_fix(
    kube: FakeKubeAPI,
    target: K8sSecretTarget,
    ca: LocalCA,
    now: datetime,
    method: str,
    path: str,
    step: str,
    verb: str,
) -> None:
    kube.before(method, path, lambda: kube.fail_next(403))
    cert = issue(ca, now)
    with pytest.raises(DeployError) as e:
        await target.deploy(cert)
    text = str(e.value)
    assert e.value.step == step
    assert f"permission denied to {verb} Secret {NS}/{NAME}" in text
    assert f"RBAC: get/create/update/delete secrets in {NS}" in text
    assert "system:serviceaccount" in text  # the API server's own words, who was refused
    assert "\n" not in text
    assert_secretless(text, cert)
    assert kube.secret(NS, NAME) is None


async def test_server_errors_and_proxies(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    kube.fail_next(500)
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.message == (
        f"get Secret {NS}/{NAME}: 500 InternalError: Internal error occurred: injected fault"
    )
    kube.fail_next(502, plain=True)  # not a Status: an HTTP proxy in front of the API
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.message == f"get Secret {NS}/{NAME}: 502 Bad Gateway"


async def test_missing_namespace(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    with pytest.raises(DeployError) as e:
        await make_target(kubeconfig, namespace="nope").deploy(issue(ca, now))
    assert e.value.step == "write"
    assert (
        e.value.message == 'create Secret nope/shop-tls: 404 NotFound: namespaces "nope" not found'
    )


async def test_api_server_down_then_back(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    url = kube.url
    kube.stop()
    cert = issue(ca, now)
    with pytest.raises(DeployError) as e:
        await target.deploy(cert)
    assert e.value.step == "read"
    assert e.value.message.startswith(f"cannot reach the API server at {url}")
    assert "\n" not in str(e.value)
    with pytest.raises(DeployError, match="cannot reach"):
        await target.current()
    kube.start()  # same port
    assert kube.url == url
    receipt = await target.deploy(cert)
    assert receipt.state["created"] == "true"


async def test_api_server_too_slow(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    kube.stall_next(5.0)
    target = make_target(kubeconfig, timeout=0.3)
    with pytest.raises(DeployError) as e:
        await target.deploy(issue(ca, now))
    assert e.value.step == "read"
    assert e.value.message.startswith(f"no answer from the API server at {kube.url} within 0.3s")


async def test_untrusted_api_server_certificate(
    kube: FakeKubeAPI, tmp_path: Path, ca: LocalCA, now: datetime
) -> None:
    path = kube.write_kubeconfig(tmp_path / "kc")
    config = yaml.safe_load(path.read_text())
    stranger = LocalCA("Stranger", now, intermediate_lifetime=None).root_pem()
    config["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        stranger
    ).decode()
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DeployError) as e:
        await make_target(path).deploy(issue(ca, now))
    assert "cannot reach the API server" in e.value.message
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.message
    assert kube.requests == []  # the handshake failed: no request was sent


async def test_bad_kubeconfig(
    kube: FakeKubeAPI, kubeconfig: Path, tmp_path: Path, ca: LocalCA, now: datetime
) -> None:
    cert = issue(ca, now)
    with pytest.raises(DeployError) as e:
        await make_target(tmp_path / "absent").deploy(cert)
    assert e.value.step == "read" and "not found" in e.value.message
    with pytest.raises(DeployError) as e:
        await make_target(kubeconfig, context="prod").deploy(cert)
    assert "Context 'prod' not found" in e.value.message
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [\n")
    with pytest.raises(DeployError) as e:
        await make_target(garbage).rollback(
            DeployReceipt("k8s:shop", "01", {"created": "true", "resource_version": "1"})
        )
    assert e.value.step == "rollback" and str(garbage) in e.value.message
    assert kube.requests == []


async def test_in_cluster_config_from_the_environment(
    kube: FakeKubeAPI,
    tmp_path: Path,
    ca: LocalCA,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kubeconfig`` unset: the pod's service account if any, else ``$KUBECONFIG``."""
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "env-kc")))
    target = make_target(None)
    receipt = await target.deploy(issue(ca, now))
    assert receipt.state["created"] == "true"


# -- current() ---------------------------------------------------------------------------------


async def test_current_round_trips(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    assert await target.current() is None
    cert = issue(ca, now)
    await target.deploy(cert)
    held = await target.current()
    assert held is not None
    assert held.serial == cert.serial
    assert held.fingerprint_sha256 == cert.fingerprint_sha256
    assert held.chain_pem == cert.chain_pem
    assert held.key_pem == cert.key_pem
    assert held.not_after == cert.not_after
    assert "PRIVATE" not in repr(held)

    kube.put_secret(NS, NAME, {"tls.crt": b"garbage", "tls.key": b"garbage"}, type="Opaque")
    assert await target.current() is None
    kube.put_secret(NS, NAME, {"tls.crt": cert.chain_pem}, type="Opaque")  # no key
    assert await target.current() is None


# -- scope, secrecy ----------------------------------------------------------------------------


async def test_only_the_configured_secrets_are_touched(
    kube: FakeKubeAPI, target: K8sSecretTarget, ca: LocalCA, now: datetime
) -> None:
    kube.put_secret(NS, "unrelated", {"password": b"hunter2"})
    await target.deploy(issue(ca, now))
    receipt = await target.deploy(issue(ca, now))
    await target.current()
    await target.rollback(receipt)

    assert kube.touched_paths() <= {SECRET_PATH, PREV_PATH, COLLECTION}
    for r in kube.requests:
        assert r.authorized
        if r.path == COLLECTION:  # only to create one of the two, never to list
            assert (r.method, r.object_name) in {("POST", NAME), ("POST", PREV)}
        if r.method == "PUT":
            assert r.object_name == r.path.rsplit("/", 1)[1]
    assert kube.names(NS) == sorted([NAME, PREV, "unrelated"])
    assert kube.secret_data(NS, "unrelated") == {"password": b"hunter2"}


async def test_receipts_logs_and_reprs_hold_no_secrets(
    kube: FakeKubeAPI,
    target: K8sSecretTarget,
    ca: LocalCA,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = issue(ca, now), issue(ca, now)
    await target.deploy(first)
    receipt = await target.deploy(second)
    await target.rollback(receipt)
    assert set(receipt.state) == {
        "created",
        "resource_version",
        "previous_resource_version",
        "namespace",
        "secret",
    }
    for text in (repr(receipt), repr(target), repr(target.config), caplog.text):
        assert_secretless(text, first, second)
    assert f"deployed serial {second.serial}" in caplog.text


# -- the fake on its own, from sync code -------------------------------------------------------


def test_fake_answers_like_an_api_server(tmp_path: Path) -> None:
    """Sync start/stop, and the shapes lightkube's sync client decodes: 404, 409
    AlreadyExists, 409 Conflict on a stale resourceVersion, 422 Invalid, 401."""
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(FakeKubeAPI(namespaces=(NS,)))
        client = Client(KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kc")), namespace=NS)
        stack.callback(client.close)
        with pytest.raises(ApiError) as e:
            client.get(Secret, "absent")
        assert (e.value.status.code, e.value.status.reason) == (404, "NotFound")
        assert e.value.status.message == 'secrets "absent" not found'

        tls = base64.b64encode(b"x").decode()
        body = Secret(
            metadata=ObjectMeta(name="a"), type="kubernetes.io/tls", data={"tls.crt": tls}
        )
        with pytest.raises(ApiError) as e:
            client.create(body)
        assert e.value.status.code == 422
        assert e.value.status.message == 'Secret "a" is invalid: data[tls.key]: Required value'

        body.data = {"tls.crt": tls, "tls.key": tls}
        made = client.create(body)
        assert made.metadata is not None and made.metadata.uid
        with pytest.raises(ApiError) as e:
            client.create(body)
        assert e.value.status.reason == "AlreadyExists"

        stale = made.metadata.resourceVersion
        api.touch(NS, "a")
        made.metadata.resourceVersion = stale
        with pytest.raises(ApiError) as e:
            client.replace(made)
        assert e.value.status.reason == "Conflict"
        assert "the object has been modified" in (e.value.status.message or "")

        made.type = "Opaque"
        made.metadata.resourceVersion = None  # unconditional update, allowed for Secrets
        with pytest.raises(ApiError) as e:
            client.replace(made)
        assert e.value.status.code == 422
        assert "field is immutable" in (e.value.status.message or "")

        assert [s.metadata.name for s in client.list(Secret) if s.metadata] == ["a"]
        client.delete(Secret, "a")
        assert api.secret(NS, "a") is None

        anonymous = Client(
            KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kc2", token="nope")),
            namespace=NS,
        )
        stack.callback(anonymous.close)
        with pytest.raises(ApiError) as e:
            anonymous.get(Secret, "a")
        assert (e.value.status.code, e.value.status.reason) == (401, "Unauthorized")
    assert not api.running


async def test_fake_as_an_async_context_manager(tmp_path: Path, ca: LocalCA, now: datetime) -> None:
    async with FakeKubeAPI(namespaces=(NS,)) as api:
        target = make_target(api.write_kubeconfig(tmp_path / "kc"))
        await target.deploy(issue(ca, now))
        assert api.secret(NS, NAME) is not None


# -- configuration -----------------------------------------------------------------------------


def test_config_from_mapping(tmp_path: Path) -> None:
    target = from_config(
        "k8s:shop",
        {
            "namespace": NS,
            "secret": NAME,
            "kubeconfig": str(tmp_path / "kc"),
            "context": "prod",
            "timeout": "2s",
            "labels": {"team": "shop"},
            "annotations": {"example.com/owner": "sre"},
            "field_manager": "certpilot-test",
            "endpoints": ["shop.example.test:443", {"host": "shop.example.test", "sni": "x"}],
        },
        source="certpilot.yaml",
    )
    c = target.config
    assert (c.namespace, c.secret, c.context, c.timeout) == (NS, NAME, "prod", 2.0)
    assert c.kubeconfig == tmp_path / "kc"
    assert dict(c.labels) == {"team": "shop"}
    assert c.field_manager == "certpilot-test"
    assert target.endpoints() == (
        EndpointTarget("shop.example.test", 443),
        EndpointTarget("shop.example.test", 443, sni="x"),
    )
    assert target.kind == "k8s_secret"
    minimal = config_from_mapping({"namespace": NS, "secret": NAME})
    assert (minimal.kubeconfig, minimal.timeout, minimal.field_manager) == (
        None,
        10.0,
        "certpilot",
    )


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        ({"secret": NAME}, "targets.namespace", "required"),
        ({"namespace": NS}, "targets.secret", "required"),
        ({"namespace": "Web", "secret": NAME}, "targets.namespace", "RFC 1123 label"),
        ({"namespace": NS, "secret": "Shop_TLS"}, "targets.secret", "RFC 1123 subdomain"),
        ({"namespace": NS, "secret": "a" * 250}, "targets.secret", "at most 238"),
        ({"namespace": NS, "secret": NAME, "timeout": "soon"}, "targets.timeout", "duration"),
        ({"namespace": NS, "secret": NAME, "timeout": 0}, "targets.timeout", "positive"),
        ({"namespace": NS, "secret": NAME, "labels": ["a"]}, "targets.labels", "mapping"),
        ({"namespace": NS, "secret": NAME, "labels": {"on": True}}, "targets.labels.on", "string"),
        (
            {"namespace": NS, "secret": NAME, "labels": {"bad key": "x"}},
            "targets.labels.bad key",
            "name at most 63",
        ),
        (
            {"namespace": NS, "secret": NAME, "labels": {"team": "a b"}},
            "targets.labels.team",
            "label value",
        ),
        (
            {"namespace": NS, "secret": NAME, "annotations": {ANNOTATION_SERIAL: "1"}},
            f"targets.annotations.{ANNOTATION_SERIAL}",
            "certpilot sets those itself",
        ),
        ({"namespace": NS, "secret": NAME, "kubeconfig": 3}, "targets.kubeconfig", "file path"),
        ({"namespace": NS, "secret": NAME, "endpoints": "x:1"}, "targets.endpoints", "list"),
        ({"namespace": NS, "secret": NAME, "token": "t"}, "targets.token", "one of"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_mapping(data, source="certpilot.yaml")
    assert e.value.source == "certpilot.yaml"
    assert e.value.field == field
    assert expected in e.value.expected


def test_config_dataclass_checks_itself() -> None:
    with pytest.raises(ValueError, match="namespace"):
        K8sSecretTargetConfig(namespace="", secret=NAME)
