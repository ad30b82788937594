"""The Kubernetes scanner (``scanner/k8s.py``) through lightkube, against the loopback fake API
server (``tests/support/k8s_fake.py``: HTTPS, bearer token, real list/watch shapes).

What is checked: every kind is found with its refs, labels and owner; pagination; the
namespace filter and label selector (applied by the server) and that only configured
namespaces and kinds are requested; key material never reaches observations or logs; bad
PEM is ``malformed``; 401, unreachable, timeout, TLS and kubeconfig failures are one source
observation without the token; a 403 on one kind is a per-kind observation while the others
are scanned; ``max_objects``; in-cluster and ``$KUBECONFIG`` credentials from ``env``; the
watch (ADDED/MODIFIED/DELETED, 410 -> list again, API down and back, a forbidden watch);
config errors that name the field; the fake's own list/watch shapes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization

import scanner.k8s as k8s
from certpilot.domain.clock import FixedClock
from certpilot.domain.errors import ConfigError
from certpilot.domain.model import Observation
from certpilot.domain.problems import ProblemCode
from certpilot.localca import Issued, LocalCA
from scanner.k8s import KubernetesSource, from_mapping, scan_kubernetes, watch_kubernetes
from tests.support.k8s_fake import DEFAULT_TOKEN, FakeKubeAPI

TLS = "kubernetes.io/tls"
CLUSTER = "prod"


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(namespaces=("web", "api", "other"), directory=tmp_path / "apiserver") as api:
        yield api


@pytest.fixture
def kubeconfig(kube: FakeKubeAPI, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def source(kubeconfig: Path | None, **options: Any) -> KubernetesSource:
    return KubernetesSource(CLUSTER, kubeconfig=kubeconfig, **options)


def pem(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def put_tls(
    kube: FakeKubeAPI,
    ns: str,
    name: str,
    issued: Issued,
    ca: LocalCA | None = None,
    **labels: str,
) -> None:
    data = {"tls.crt": issued.chain_pem(), "tls.key": issued.key_pem()}
    if ca is not None and ca.intermediate is not None:
        data["ca.crt"] = pem(ca.intermediate)
    kube.put_secret(ns, name, data, type=TLS, labels=labels or None)


def by_ref(observations: list[Observation]) -> dict[str, Observation]:
    refs = [o.ref for o in observations]
    assert len(refs) == len(set(refs)), f"duplicate refs: {refs}"
    return {o.ref: o for o in observations}


def secret_ref(ns: str, name: str, key: str) -> str:
    return f"k8s://{CLUSTER}/{ns}/secret/{name}#{key}"


def lists(kube: FakeKubeAPI) -> list[tuple[str, dict[str, str]]]:
    return [(r.path, dict(r.query)) for r in kube.requests if r.query.get("watch") != "true"]


async def scan(src: KubernetesSource, now: datetime, **env: str) -> list[Observation]:
    return await scan_kubernetes(src, FixedClock(now), env=env)


def assert_secretless(text: str, *issued: Issued) -> None:
    assert DEFAULT_TOKEN not in text
    assert "PRIVATE KEY" not in text
    for item in issued:
        key = item.key_pem()
        assert base64.b64encode(key).decode()[:40] not in text
        assert key.decode().splitlines()[1][:40] not in text


# -- every kind, refs, labels, owner -----------------------------------------------------------


async def test_every_kind_is_found_with_refs_labels_and_owner(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    shop = ca.issue(["shop.example.test"], now)
    put_tls(kube, "web", "shop-tls", shop, ca, team="shop", owner="alice")
    kube.put_secret(
        "api",
        "client-ca",
        {"ca.pem": ca.root_pem(), "password": b"hunter2"},
        annotations={"certpilot.io/owner": "platform"},
    )
    kube.put_configmap(
        "web",
        "trust-bundle",
        {"bundle.pem": (ca.root_pem() + pem(ca.intermediate)).decode(), "app.conf": "x=1"},
        labels={"app.kubernetes.io/part-of": "trust"},
    )
    kube.put_configmap("api", "binary", binary_data={"root.crt": ca.root_pem()})
    kube.put_webhook_configuration("policy", [ca.root_pem(), None], labels={"team": "sec"})
    kube.put_webhook_configuration("inject", [ca.root_pem()], mutating=True)
    kube.put_apiservice("v1beta1.metrics.k8s.io", ca.root_pem())
    kube.put_apiservice("v1.apps", None)  # local APIService: no caBundle, nothing to report

    src = source(kubeconfig, labels={"env": "prod", "owner": "default-owner"})
    found = by_ref(await scan(src, now))

    tls = found[secret_ref("web", "shop-tls", "tls.crt")]
    assert tls.source == "k8s" and tls.target == "k8s:prod"
    assert tls.leaf is not None and tls.leaf.serial == shop.serial_hex
    assert [c.subject_cn for c in tls.chain] == ["shop.example.test", "Test Intermediate CA"]
    assert tls.healthy and tls.error is None
    assert dict(tls.labels) == {
        "env": "prod",
        "owner": "alice",  # the object's owner label wins over the source's default
        "store": "k8s",
        "k8s_cluster": CLUSTER,
        "k8s_kind": "secret",
        "secret_namespace": "web",
        "secret_name": "shop-tls",
        "secret_key": "tls.crt",
    }
    # The intermediate in tls.crt is judged too, under its own ref.
    inter = found[secret_ref("web", "shop-tls", "tls.crt") + "[1]"]
    assert inter.leaf is not None and inter.leaf.subject_cn == "Test Intermediate CA"
    ca_crt = found[secret_ref("web", "shop-tls", "ca.crt")]
    assert ca_crt.labels["secret_key"] == "ca.crt"
    assert ca_crt.leaf is not None and ca_crt.leaf.subject_cn == "Test Intermediate CA"

    opaque = found[secret_ref("api", "client-ca", "ca.pem")]
    assert opaque.leaf is not None and opaque.leaf.subject_cn == "Test Root CA"
    assert opaque.labels["owner"] == "platform"  # from the annotation
    assert opaque.labels["secret_key"] == "ca.pem"

    bundle = f"k8s://{CLUSTER}/web/configmap/trust-bundle#bundle.pem"
    root = found[bundle].leaf
    assert root is not None and root.subject_cn == "Test Root CA"
    assert found[bundle + "[1]"].leaf is not None
    assert len(found[bundle].chain) == 2
    assert dict(found[bundle].labels) == {
        "env": "prod",
        "owner": "trust",
        "store": "k8s",
        "k8s_cluster": CLUSTER,
        "k8s_kind": "configmap",
        "configmap_namespace": "web",
        "configmap_name": "trust-bundle",
        "configmap_key": "bundle.pem",
    }
    assert f"k8s://{CLUSTER}/api/configmap/binary#root.crt" in found

    hook = f"k8s://{CLUSTER}/_cluster/validatingwebhookconfiguration/policy"
    hook_ref = f"{hook}#webhooks[0].clientConfig.caBundle"
    assert found[hook_ref].labels["owner"] == "sec"
    assert found[hook_ref].labels["k8s_field"] == "webhooks[0].clientConfig.caBundle"
    assert found[hook_ref].labels["k8s_name"] == "policy"
    assert f"{hook}#webhooks[1].clientConfig.caBundle" not in found  # no caBundle
    mutating = f"k8s://{CLUSTER}/_cluster/mutatingwebhookconfiguration/inject"
    assert f"{mutating}#webhooks[0].clientConfig.caBundle" in found
    api = f"k8s://{CLUSTER}/_cluster/apiservice/v1beta1.metrics.k8s.io#spec.caBundle"
    assert found[api].labels["k8s_kind"] == "apiservice"
    assert found[api].labels["owner"] == "default-owner"  # nothing on the object

    assert set(found) == {
        secret_ref("web", "shop-tls", "tls.crt"),
        secret_ref("web", "shop-tls", "tls.crt") + "[1]",
        secret_ref("web", "shop-tls", "ca.crt"),
        secret_ref("api", "client-ca", "ca.pem"),
        bundle,
        bundle + "[1]",
        f"k8s://{CLUSTER}/api/configmap/binary#root.crt",
        hook_ref,
        f"{mutating}#webhooks[0].clientConfig.caBundle",
        api,
    }
    assert all(o.observed_at == now for o in found.values())
    assert all(r.authorized for r in kube.requests)


async def test_certificates_are_judged_at_rest(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    expired = ca.issue(["old.test"], now, not_before=now - timedelta(days=100))
    expiring = ca.issue(["soon.test"], now, not_before=now - timedelta(days=85))
    put_tls(kube, "web", "old", expired)
    put_tls(kube, "web", "soon", expiring)
    found = by_ref(await scan(source(kubeconfig, kinds=("tls_secrets",)), now))
    assert found[secret_ref("web", "old", "tls.crt")].codes == (ProblemCode.EXPIRED,)
    assert found[secret_ref("web", "soon", "tls.crt")].codes == (ProblemCode.EXPIRING,)


# -- what is requested -------------------------------------------------------------------------


async def test_pagination_across_pages(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    for i in range(7):
        put_tls(kube, "web", f"site-{i}", ca.issue([f"site{i}.test"], now))
    src = source(kubeconfig, kinds=("tls_secrets",), page_size=3)
    found = by_ref(await scan(src, now))
    assert {o.labels["secret_name"] for o in found.values()} == {f"site-{i}" for i in range(7)}
    pages = lists(kube)
    assert [p for p, _ in pages] == ["/api/v1/secrets"] * 3  # 3 + 3 + 1
    assert [q.get("limit") for _, q in pages] == ["3", "3", "3"]
    assert "continue" not in pages[0][1]
    assert pages[1][1]["continue"] and pages[2][1]["continue"] != pages[1][1]["continue"]
    assert all(q["fieldSelector"] == f"type={TLS}" for _, q in pages)


async def test_namespaces_filter_touches_only_those_namespaces(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    for ns in ("web", "api", "other"):
        put_tls(kube, ns, "site", ca.issue([f"{ns}.test"], now))
        kube.put_configmap(ns, "bundle", {"ca.pem": ca.root_pem().decode()})
    src = source(kubeconfig, namespaces=("web", "api"), kinds=("tls_secrets", "configmaps"))
    found = await scan(src, now)
    namespaces = {
        o.labels.get("secret_namespace") or o.labels["configmap_namespace"] for o in found
    }
    assert namespaces == {"web", "api"}
    assert {r.path for r in kube.requests} == {
        "/api/v1/namespaces/web/secrets",
        "/api/v1/namespaces/api/secrets",
        "/api/v1/namespaces/web/configmaps",
        "/api/v1/namespaces/api/configmaps",
    }
    assert all(r.method == "GET" for r in kube.requests)  # a scanner never writes


async def test_only_configured_kinds_are_requested(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    kube.put_secret("web", "db", {"password": b"hunter2"})
    kube.put_webhook_configuration("policy", [ca.root_pem()])
    found = await scan(source(kubeconfig, kinds=("tls_secrets",)), now)
    assert {o.labels["secret_name"] for o in found} == {"site"}
    # The Opaque Secret's data never left the API server: the list asked for TLS ones only.
    assert lists(kube) == [("/api/v1/secrets", {"limit": "500", "fieldSelector": f"type={TLS}"})]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=shop", {"shop"}),
        ("app!=shop", {"blog", "bare"}),
        ("app in (shop,blog)", {"shop", "blog"}),
        ("app,!tier", {"blog"}),
        ("app=shop,tier=front", {"shop"}),
    ],
)
async def test_label_selector_is_applied_by_the_server(
    kube: FakeKubeAPI,
    kubeconfig: Path,
    ca: LocalCA,
    now: datetime,
    selector: str,
    expected: set[str],
) -> None:
    put_tls(kube, "web", "shop", ca.issue(["shop.test"], now), app="shop", tier="front")
    put_tls(kube, "web", "blog", ca.issue(["blog.test"], now), app="blog")
    put_tls(kube, "web", "bare", ca.issue(["bare.test"], now))
    src = source(kubeconfig, kinds=("tls_secrets",), label_selector=selector)
    found = await scan(src, now)
    assert {o.labels["secret_name"] for o in found} == expected
    [(_, query)] = lists(kube)
    assert query["labelSelector"]  # filtered server-side, not after transfer


# -- secrets stay secret, bad data is data -----------------------------------------------------


async def test_key_material_never_reaches_observations_or_logs(
    kube: FakeKubeAPI,
    kubeconfig: Path,
    ca: LocalCA,
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    site = ca.issue(["site.test"], now)
    other = ca.issue(["other.test"], now)
    put_tls(kube, "web", "site", site, ca)
    kube.put_secret(
        "web",
        "bundle",
        {
            "combined.pem": other.key_pem() + other.cert_pem(),  # key and certificate together
            "only-a-key": other.key_pem(),
            "server.key": other.key_pem(),
        },
    )
    kube.put_configmap("web", "oops", {"leaked": site.key_pem().decode()})
    found = by_ref(await scan(source(kubeconfig), now))

    assert set(found) == {
        secret_ref("web", "site", "tls.crt"),
        secret_ref("web", "site", "tls.crt") + "[1]",
        secret_ref("web", "site", "ca.crt"),
        secret_ref("web", "bundle", "combined.pem"),
    }
    combined = found[secret_ref("web", "bundle", "combined.pem")]
    assert combined.leaf is not None and combined.leaf.serial == other.serial_hex
    for o in found.values():
        assert_secretless(repr(o), site, other)
        assert_secretless(json.dumps(o.to_dict()), site, other)
    assert_secretless(caplog.text, site, other)


async def test_garbage_is_malformed_not_an_exception(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    good = ca.issue(["good.test"], now)
    kube.put_secret("web", "garbage", {"tls.crt": b"not a certificate", "tls.key": b"k"}, type=TLS)
    kube.put_secret("web", "empty", {"tls.crt": b"", "tls.key": b"k"}, type=TLS)
    damaged = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    kube.put_secret(
        "web", "damaged", {"tls.crt": damaged + good.cert_pem(), "tls.key": b"k"}, type=TLS
    )
    truncated = good.cert_pem()[:200]
    kube.put_configmap("web", "cut", {"ca.pem": truncated.decode()})
    kube.put_configmap("web", "text", {"readme": "no certificates here"})
    kube.put_webhook_configuration("policy", [b"garbage"])

    found = by_ref(await scan(source(kubeconfig), now))

    garbage = found[secret_ref("web", "garbage", "tls.crt")]
    assert garbage.codes == (ProblemCode.MALFORMED,)
    assert garbage.error == "Secret web/garbage key tls.crt: no PEM certificate found"
    assert garbage.leaf is None and garbage.labels["secret_name"] == "garbage"
    empty = found[secret_ref("web", "empty", "tls.crt")]
    assert empty.codes == (ProblemCode.MALFORMED,) and "empty" in (empty.error or "")
    # A damaged block does not hide the good one after it.
    bad_block = found[secret_ref("web", "damaged", "tls.crt")]
    assert bad_block.codes == (ProblemCode.MALFORMED,)
    assert (bad_block.error or "").startswith(
        "Secret web/damaged key tls.crt: certificate block #0"
    )
    after = found[secret_ref("web", "damaged", "tls.crt") + "[1]"]
    assert after.healthy and after.leaf is not None and after.leaf.serial == good.serial_hex
    cut = found[f"k8s://{CLUSTER}/web/configmap/cut#ca.pem"]
    assert cut.codes == (ProblemCode.MALFORMED,) and "no END line" in (cut.error or "")
    assert f"k8s://{CLUSTER}/web/configmap/text#readme" not in found
    hook = found[
        f"k8s://{CLUSTER}/_cluster/validatingwebhookconfiguration/policy"
        "#webhooks[0].clientConfig.caBundle"
    ]
    assert hook.codes == (ProblemCode.MALFORMED,)
    assert "ValidatingWebhookConfiguration policy webhook hook0.policy.example.com" in (
        hook.error or ""
    )
    assert all("\n" not in (o.error or "") for o in found.values())


# -- failures are observations -----------------------------------------------------------------


async def test_wrong_token_is_one_source_observation_without_the_token(
    kube: FakeKubeAPI, tmp_path: Path, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-do-not-print"
    src = source(kube.write_kubeconfig(tmp_path / "kc", token=wrong))
    [obs] = await scan(src, now)
    assert obs.ref == "k8s://prod" and obs.target == "k8s:prod" and obs.source == "k8s"
    assert obs.codes == (ProblemCode.UNREADABLE,)
    assert obs.error is not None and "401" in obs.error and kube.url in obs.error
    assert "\n" not in obs.error
    for text in (obs.error, repr(obs), json.dumps(obs.to_dict()), caplog.text):
        assert wrong not in text and DEFAULT_TOKEN not in text
    assert [r.authorized for r in kube.requests] == [False]  # gave up after the first 401


async def test_api_server_unreachable(kube: FakeKubeAPI, kubeconfig: Path, now: datetime) -> None:
    url = kube.url
    await asyncio.to_thread(kube.stop)
    [obs] = await scan(source(kubeconfig), now)
    assert obs.ref == "k8s://prod"
    assert obs.codes == (ProblemCode.CONNECTION_REFUSED,)
    assert obs.error is not None and obs.error.startswith(f"cannot reach the API server at {url}")


async def test_api_server_too_slow(kube: FakeKubeAPI, kubeconfig: Path, now: datetime) -> None:
    kube.stall_next(5.0)
    started = time.monotonic()
    [obs] = await scan(source(kubeconfig, timeout=0.3), now)
    assert time.monotonic() - started < 4
    assert obs.codes == (ProblemCode.TIMEOUT,)
    assert (obs.error or "").startswith(f"no answer from the API server at {kube.url} within 0.3s")


async def test_untrusted_api_server_is_a_tls_error(
    kube: FakeKubeAPI, tmp_path: Path, now: datetime
) -> None:
    stranger = LocalCA("Stranger", now, intermediate_lifetime=None)
    path = kube.write_kubeconfig(tmp_path / "kc")
    text = path.read_text().replace(
        base64.b64encode(kube.ca_pem).decode(), base64.b64encode(stranger.root_pem()).decode()
    )
    path.write_text(text)
    [obs] = await scan(source(path), now)
    assert obs.codes == (ProblemCode.TLS_ERROR,)
    assert "CERTIFICATE_VERIFY_FAILED" in (obs.error or "")
    assert kube.requests == []


async def test_bad_kubeconfig_is_a_source_observation(
    kube: FakeKubeAPI, kubeconfig: Path, tmp_path: Path, now: datetime
) -> None:
    [missing] = await scan(source(tmp_path / "absent"), now)
    assert missing.ref == "k8s://prod" and missing.codes == (ProblemCode.UNREADABLE,)
    assert str(tmp_path / "absent") in (missing.error or "")
    [context] = await scan(source(kubeconfig, context="staging"), now)
    assert "staging" in (context.error or "")
    garbage = tmp_path / "garbage"
    garbage.write_text("clusters: [\n")
    [broken] = await scan(source(garbage), now)
    assert str(garbage) in (broken.error or "") and "\n" not in (broken.error or "")
    assert kube.requests == []


async def test_forbidden_webhooks_do_not_stop_the_other_kinds(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    kube.put_webhook_configuration("policy", [ca.root_pem()])
    kube.put_apiservice("v1beta1.metrics.k8s.io", ca.root_pem())
    kube.forbid("validatingwebhookconfigurations")
    kube.forbid("mutatingwebhookconfigurations")
    found = by_ref(await scan(source(kubeconfig), now))

    for plural in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        err = found[f"k8s://prod/_cluster/{plural}"]
        assert err.codes == (ProblemCode.UNREADABLE,)
        assert err.error is not None
        assert err.error.startswith(f"permission denied to list {plural} at the cluster scope")
        assert 'in API group "admissionregistration.k8s.io" at the cluster scope' in err.error
        assert err.labels["k8s_kind"] == plural and err.labels["k8s_scope"] == "_cluster"
    assert found[secret_ref("web", "site", "tls.crt")].healthy
    assert f"k8s://{CLUSTER}/_cluster/apiservice/v1beta1.metrics.k8s.io#spec.caBundle" in found
    assert "k8s://prod" not in found


async def test_forbidden_in_one_namespace(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["web.test"], now))
    put_tls(kube, "api", "site", ca.issue(["api.test"], now))
    kube.forbid("secrets", namespace="api")
    src = source(kubeconfig, namespaces=("web", "api"), kinds=("tls_secrets",))
    found = by_ref(await scan(src, now))
    assert secret_ref("web", "site", "tls.crt") in found
    err = found["k8s://prod/api/tls_secrets"]
    assert (err.error or "").startswith("permission denied to list secrets in namespace api")


async def test_server_error_on_one_kind(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    kube.fail_next(500)  # the first request: the TLS Secrets list
    found = by_ref(await scan(source(kubeconfig, kinds=("tls_secrets", "apiservices")), now))
    assert found["k8s://prod/_all/tls_secrets"].error == (
        "list secrets in all namespaces: 500 InternalError: Internal error occurred: injected fault"
    )


async def test_max_objects_bounds_a_scan(
    kube: FakeKubeAPI, kubeconfig: Path, ca: LocalCA, now: datetime
) -> None:
    for i in range(5):
        put_tls(kube, "web", f"site-{i}", ca.issue([f"s{i}.test"], now))
    src = source(kubeconfig, kinds=("tls_secrets", "webhooks"), max_objects=3, page_size=2)
    found = by_ref(await scan(src, now))
    names = {o.labels.get("secret_name") for o in found.values() if "secret_name" in o.labels}
    assert names == {"site-0", "site-1", "site-2"}
    truncated = found["k8s://prod/_all/tls_secrets"]
    assert "more than max_objects (3)" in (truncated.error or "")


# -- credentials from env ----------------------------------------------------------------------


async def test_kubeconfig_from_env_not_os_environ(
    kube: FakeKubeAPI,
    tmp_path: Path,
    ca: LocalCA,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(k8s, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    kc = kube.write_kubeconfig(tmp_path / "env-kc")
    found = await scan(
        source(None, kinds=("tls_secrets",)), now, KUBECONFIG=f"{kc}:{tmp_path}/second"
    )
    assert {o.labels["secret_name"] for o in found} == {"site"}


async def test_in_cluster_service_account(
    kube: FakeKubeAPI,
    tmp_path: Path,
    ca: LocalCA,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(DEFAULT_TOKEN + "\n")
    (account / "ca.crt").write_bytes(kube.ca_pem)
    (account / "namespace").write_text("certpilot")
    monkeypatch.setattr(k8s, "SERVICE_ACCOUNT_DIR", account)
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}
    found = await scan(source(None, kinds=("tls_secrets",)), now, **env)
    assert {o.labels["secret_name"] for o in found} == {"site"}
    assert all(r.authorized for r in kube.requests)


# -- watch -------------------------------------------------------------------------------------


class Changes:
    """Collects ``on_change`` calls; ``next()`` waits for the following one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[list[Observation], list[str]]] = asyncio.Queue()
        self.calls: list[tuple[list[Observation], list[str]]] = []

    async def __call__(self, observations: list[Observation], removed: list[str]) -> None:
        self.calls.append((observations, removed))
        await self.queue.put((observations, removed))

    async def next(self, timeout: float = 10.0) -> tuple[dict[str, Observation], list[str]]:
        observations, removed = await asyncio.wait_for(self.queue.get(), timeout)
        return by_ref(observations), sorted(removed)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def watching(kubeconfig: Path, now: datetime) -> AsyncIterator[Callable[..., Any]]:
    """Starts ``watch_kubernetes`` (fast retries); stops it and checks it ends promptly."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def start(**options: Any) -> Changes:
        changes = Changes()
        src = source(kubeconfig, **options)
        task = asyncio.create_task(
            watch_kubernetes(
                src,
                FixedClock(now),
                env={},
                on_change=changes,
                stop=stop,
                retry_initial=0.05,
                retry_max=0.2,
            )
        )
        tasks.append(task)
        return changes

    yield start
    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert time.monotonic() - started < 3


async def test_watch_delivers_added_modified_deleted(
    kube: FakeKubeAPI, watching: Callable[..., Changes], ca: LocalCA, now: datetime
) -> None:
    first = ca.issue(["first.test"], now)
    put_tls(kube, "web", "first", first, ca)
    put_tls(kube, "other", "elsewhere", ca.issue(["elsewhere.test"], now))
    changes = watching(namespaces=("web",), kinds=("tls_secrets",))

    listed, removed = await changes.next()
    assert set(listed) == {
        secret_ref("web", "first", "tls.crt"),
        secret_ref("web", "first", "tls.crt") + "[1]",
        secret_ref("web", "first", "ca.crt"),
    }
    assert removed == []
    await until(lambda: kube.open_watches == 1)

    second = ca.issue(["second.test"], now)
    put_tls(kube, "web", "second", second, ca)  # ADDED
    added, removed = await changes.next()
    assert set(added) == {
        secret_ref("web", "second", "tls.crt"),
        secret_ref("web", "second", "tls.crt") + "[1]",
        secret_ref("web", "second", "ca.crt"),
    }
    leaf = added[secret_ref("web", "second", "tls.crt")].leaf
    assert leaf is not None and leaf.serial == second.serial_hex
    assert removed == []

    renewed = ca.issue(["second.test"], now)
    put_tls(kube, "web", "second", renewed)  # MODIFIED: new certificate, ca.crt gone
    modified, removed = await changes.next()
    leaf = modified[secret_ref("web", "second", "tls.crt")].leaf
    assert leaf is not None and leaf.serial == renewed.serial_hex
    assert removed == [secret_ref("web", "second", "ca.crt")]

    kube.put_secret("web", "unrelated", {"password": b"x"})  # Opaque: not watched here
    kube.delete_secret("web", "second")  # DELETED
    deleted, removed = await changes.next()
    assert deleted == {}
    assert removed == [
        secret_ref("web", "second", "tls.crt"),
        secret_ref("web", "second", "tls.crt") + "[1]",
    ]
    assert changes.queue.empty()

    # One LIST, then a WATCH from the list's resourceVersion, in the configured namespace only.
    requests = kube.requests
    assert {r.path for r in requests} == {"/api/v1/namespaces/web/secrets"}
    assert "watch" not in requests[0].query
    watch = requests[1].query
    assert watch["watch"] == "true" and watch["fieldSelector"] == f"type={TLS}"
    assert int(watch["resourceVersion"]) >= 1000


async def test_watch_lists_again_after_410_gone(
    kube: FakeKubeAPI, watching: Callable[..., Changes], ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "stays", ca.issue(["stays.test"], now))
    put_tls(kube, "web", "goes", ca.issue(["goes.test"], now))
    changes = watching(namespaces=("web",), kinds=("tls_secrets",))
    listed, _ = await changes.next()
    assert len(listed) == 4
    await until(lambda: kube.open_watches == 1)

    # The next LIST finds "goes" deleted: a change the client only learns from that list.
    path = "/api/v1/namespaces/web/secrets"
    kube.before("GET", path, lambda: kube.delete_secret("web", "goes"))
    kube.drop_watches(expire=True)  # ERROR 410 Expired on the open watch

    relisted, removed = await changes.next()
    assert set(relisted) == {
        secret_ref("web", "stays", "tls.crt"),
        secret_ref("web", "stays", "tls.crt") + "[1]",
    }
    assert removed == [
        secret_ref("web", "goes", "tls.crt"),
        secret_ref("web", "goes", "tls.crt") + "[1]",
    ]
    await until(lambda: kube.open_watches == 1)
    kinds = ["watch" if r.query.get("watch") == "true" else "list" for r in kube.requests]
    assert kinds == ["list", "watch", "list", "watch"]
    # The new watch starts from the new list's resourceVersion (after the deletion).
    assert int(kube.requests[3].query["resourceVersion"]) == kube.revision


async def test_watch_reports_the_api_server_down_and_recovers(
    kube: FakeKubeAPI, watching: Callable[..., Changes], ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    changes = watching(namespaces=("web",), kinds=("tls_secrets",))
    await changes.next()
    await until(lambda: kube.open_watches == 1)

    await asyncio.to_thread(kube.stop)
    # The open watch is cut (reported as such), then connections are refused.
    while True:
        down, removed = await changes.next()
        [error] = down.values()
        assert error.ref == "k8s://prod" and removed == []
        assert "cannot reach the API server" in (error.error or "")
        if error.codes == (ProblemCode.CONNECTION_REFUSED,):
            break
    await asyncio.sleep(0.5)  # several retries meanwhile: the same failure is reported once
    assert changes.queue.empty()

    put_tls(kube, "web", "while-down", ca.issue(["late.test"], now))
    await asyncio.to_thread(kube.start)
    back, removed = await changes.next()
    assert removed == ["k8s://prod"]
    assert secret_ref("web", "while-down", "tls.crt") in back


async def test_forbidden_watch_is_reported_once(
    kube: FakeKubeAPI, watching: Callable[..., Changes], ca: LocalCA, now: datetime
) -> None:
    put_tls(kube, "web", "site", ca.issue(["site.test"], now))
    kube.forbid("secrets", verbs=("watch",))
    changes = watching(namespaces=("web",), kinds=("tls_secrets",))
    await asyncio.sleep(1.0)  # list, watch refused, retries with backoff ...
    errors = [
        o for observations, _ in changes.calls for o in observations if o.ref.endswith("_secrets")
    ]
    assert len(errors) == 1
    assert (errors[0].error or "").startswith("permission denied to watch secrets")
    assert all("k8s://prod/web/tls_secrets" not in removed for _, removed in changes.calls)
    assert sum(1 for r in kube.requests if r.query.get("watch") == "true") >= 3


# -- configuration -----------------------------------------------------------------------------


def test_from_mapping(tmp_path: Path) -> None:
    src = from_mapping(
        {
            "name": "prod-eu",
            "kubeconfig": str(tmp_path / "kc"),
            "context": "eu",
            "namespaces": ["web", "api"],
            "label_selector": "app=shop, tier!=db",
            "kinds": ["tls_secrets", "webhooks"],
            "owner_labels": ["squad"],
            "owner_annotations": ["example.com/owner"],
            "labels": {"region": "eu"},
            "timeout": "2s",
            "max_objects": 500,
            "watch": True,
            "page_size": 100,
        },
        source="certpilot.yaml",
        field="targets.kubernetes[0]",
    )
    assert src == KubernetesSource(
        "prod-eu",
        kubeconfig=tmp_path / "kc",
        context="eu",
        namespaces=("web", "api"),
        label_selector="app=shop, tier!=db",
        kinds=("tls_secrets", "webhooks"),
        owner_labels=("squad",),
        owner_annotations=("example.com/owner",),
        labels={"region": "eu"},
        timeout=2.0,
        max_objects=500,
        watch=True,
        page_size=100,
    )
    assert (src.ref, src.target) == ("k8s://prod-eu", "k8s:prod-eu")
    minimal = KubernetesSource.from_mapping({"name": "c"})
    assert minimal.kinds == k8s.KINDS and minimal.namespaces == () and not minimal.watch
    assert minimal.owner_labels == ("owner", "team", "app.kubernetes.io/part-of")
    assert minimal.owner_annotations == ("certpilot.io/owner",)
    assert (minimal.timeout, minimal.max_objects, minimal.kubeconfig) == (10.0, 100_000, None)


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        ({}, "k.name", "required"),
        ({"name": "a/b"}, "k.name", "letters, digits"),
        ({"name": "c", "namespaces": "web"}, "k.namespaces", "list"),
        ({"name": "c", "namespaces": ["Web"]}, "k.namespaces[0]", "RFC 1123 label"),
        ({"name": "c", "namespaces": ["web", "web"]}, "k.namespaces", "once"),
        ({"name": "c", "kinds": ["secrets"]}, "k.kinds[0]", "one of tls_secrets"),
        ({"name": "c", "kinds": []}, "k.kinds", "at least one"),
        ({"name": "c", "label_selector": "a=(b"}, "k.label_selector", "label selector"),
        ({"name": "c", "label_selector": "a=b,a=c"}, "k.label_selector", "each label key once"),
        ({"name": "c", "owner_labels": ["bad key"]}, "k.owner_labels[0]", "name at most 63"),
        ({"name": "c", "labels": {"on": True}}, "k.labels.on", "string"),
        ({"name": "c", "timeout": "soon"}, "k.timeout", "duration"),
        ({"name": "c", "timeout": 0}, "k.timeout", "positive"),
        ({"name": "c", "max_objects": 0}, "k.max_objects", "from 1"),
        ({"name": "c", "max_objects": "many"}, "k.max_objects", "whole number"),
        ({"name": "c", "watch": "yes"}, "k.watch", "true or false"),
        ({"name": "c", "kubeconfig": 3}, "k.kubeconfig", "string"),
        ({"name": "c", "token": "t"}, "k.token", "one of the kubernetes source's options"),
    ],
)
def test_config_errors_name_the_field(data: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping(data, source="certpilot.yaml", field="k")
    assert e.value.source == "certpilot.yaml"
    assert e.value.field == field
    assert expected in e.value.expected


def test_config_errors_for_a_non_mapping() -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping(["prod"], source="certpilot.yaml", field="targets.kubernetes[0]")
    assert e.value.field == "targets.kubernetes[0]"


def test_dataclass_checks_itself() -> None:
    with pytest.raises(ValueError, match="kinds"):
        KubernetesSource("c", kinds=("pods",))


# -- the fake on its own: list and watch shapes ------------------------------------------------


def test_fake_lists_and_watches_like_an_api_server(
    kube: FakeKubeAPI, ca: LocalCA, now: datetime
) -> None:
    for i in range(3):
        put_tls(kube, "web", f"s{i}", ca.issue([f"s{i}.test"], now))
    context = ssl.create_default_context(cadata=kube.ca_pem.decode())
    headers = {"Authorization": f"Bearer {kube.token}"}
    with httpx2.Client(base_url=kube.url, verify=context, headers=headers) as client:
        page = client.get("/api/v1/namespaces/web/secrets", params={"limit": 2})
        assert page.headers["Content-Type"] == "application/json"
        body = page.json()
        assert (body["kind"], body["apiVersion"]) == ("SecretList", "v1")
        assert body["metadata"]["remainingItemCount"] == 1
        rv = body["metadata"]["resourceVersion"]
        assert [i["metadata"]["name"] for i in body["items"]] == ["s0", "s1"]
        assert "kind" not in body["items"][0] and body["items"][0]["metadata"]["uid"]
        rest = client.get(
            "/api/v1/namespaces/web/secrets",
            params={"limit": 2, "continue": body["metadata"]["continue"]},
        ).json()
        assert [i["metadata"]["name"] for i in rest["items"]] == ["s2"]
        assert "continue" not in rest["metadata"] and rest["metadata"]["resourceVersion"] == rv

        hooks = client.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")
        assert hooks.json()["kind"] == "ValidatingWebhookConfigurationList"
        assert hooks.json()["apiVersion"] == "admissionregistration.k8s.io/v1"

        kube.touch("web", "s0")
        with client.stream(
            "GET",
            "/api/v1/secrets",
            params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": 1},
        ) as stream:
            events = [json.loads(line) for line in stream.iter_lines() if line]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("MODIFIED", "s0")
        ]
        assert events[0]["object"]["kind"] == "Secret"

        kube.compact()
        with client.stream(
            "GET", "/api/v1/secrets", params={"watch": "true", "resourceVersion": rv}
        ) as stream:
            [gone] = [json.loads(line) for line in stream.iter_lines() if line]
        assert gone["type"] == "ERROR"
        assert gone["object"]["code"] == 410 and gone["object"]["reason"] == "Expired"
        assert gone["object"]["message"].startswith(f"too old resource version: {rv} (")

        kube.forbid("apiservices")
        denied = client.get("/apis/apiregistration.k8s.io/v1/apiservices")
        assert denied.status_code == 403
        assert denied.json()["message"] == (
            "apiservices.apiregistration.k8s.io is forbidden: User "
            '"system:serviceaccount:certpilot:certpilot" cannot list resource "apiservices" '
            'in API group "apiregistration.k8s.io" at the cluster scope'
        )
