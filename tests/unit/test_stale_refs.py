"""Which locations a scan cycle forgets (certpilot.app.stale_refs): endpoints no longer
configured, files gone, store items their store no longer holds; never a failed store's."""

from __future__ import annotations

from datetime import UTC, datetime

from certpilot.app import stale_refs
from certpilot.domain.model import EndpointTarget, FileTarget, Observation, Target
from certpilot.domain.problems import Problem, ProblemCode

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def obs(ref: str, source: str, error: str | None = None) -> Observation:
    problems = (Problem(ProblemCode.UNREADABLE, error),) if error else ()
    return Observation(
        source=source, ref=ref, target=ref, observed_at=NOW, problems=problems, error=error
    )


STORED = [
    "tls://a:443#a",
    "tls://old:443#old",  # endpoint removed from the config
    "file:///etc/certs/a.pem#0",
    "file:///etc/certs/deleted.pem#0",  # file deleted
    "openbao://bao/secret/tls/a#certificate",
    "openbao://bao/secret/tls/deleted#certificate",  # secret deleted
    "openbao://gone/secret/x#certificate",  # store no longer configured
    "k8s://prod/web/secret/a#tls.crt",
    "k8s://prod/web/secret/deleted#tls.crt",  # but the cluster failed this cycle: kept
    "k8s://watched/web/secret/deleted#tls.crt",  # watched: the watch forgets it
]


def test_what_is_gone_and_what_is_kept() -> None:
    seen = [
        obs("tls://a:443#a", "tls"),
        obs("file:///etc/certs/a.pem#0", "file"),
        obs("openbao://bao/secret/tls/a#certificate", "openbao"),
        obs("k8s://prod", "k8s", error="connection refused"),
    ]
    targets: list[Target] = [EndpointTarget("a", 443), FileTarget("/etc/certs/*.pem")]
    gone = stale_refs(
        STORED,
        {o.ref for o in seen},
        targets,
        failures=seen,
        stores=["openbao://bao/", "k8s://prod/", "k8s://watched/"],
        watched=["k8s://watched/"],
    )
    assert gone == [
        "tls://old:443#old",
        "file:///etc/certs/deleted.pem#0",
        "openbao://bao/secret/tls/deleted#certificate",
        "openbao://gone/secret/x#certificate",
    ]


def test_a_per_kind_failure_keeps_the_cluster_a_per_secret_one_does_not() -> None:
    stored = ["k8s://prod/web/secret/a#tls.crt", "openbao://bao/secret/tls/b#certificate"]
    seen = [
        obs("k8s://prod/_cluster/apiservices", "k8s", error="forbidden"),  # per-kind failure
        obs("openbao://bao/secret/tls/c#certificate", "openbao", error="permission denied"),
    ]
    gone = stale_refs(
        stored, {o.ref for o in seen}, [], failures=seen, stores=["k8s://prod/", "openbao://bao/"]
    )
    # The cluster is kept whole; one unreadable secret does not stop pruning the store.
    assert gone == ["openbao://bao/secret/tls/b#certificate"]


def test_an_alert_finds_its_certificate_by_ref_or_by_where_it_is_served_now() -> None:
    from certpilot.app import _lookup
    from certpilot.domain.x509 import parse_pem_bundle
    from certpilot.localca import LocalCA
    from certpilot.store import Inventory

    ca = LocalCA("R", NOW)
    old, new = (ca.issue(["a.example.com"], NOW) for _ in range(2))

    def served(issued: object, at: datetime) -> Observation:
        (parsed,) = parse_pem_bundle(issued.cert_pem())  # type: ignore[attr-defined]
        assert not isinstance(parsed, Exception)
        return Observation("tls", "tls://a:443#a", "a:443", at, leaf=parsed.info)

    with Inventory.open("sqlite://") as inv:
        inv.record([served(old, NOW)], now=NOW)
        later = NOW.replace(hour=1)
        inv.record([served(new, later)], now=later)
        fp_old = served(old, NOW).leaf.fingerprint_sha256  # type: ignore[union-attr]
        fp_new = served(new, NOW).leaf.fingerprint_sha256  # type: ignore[union-attr]
        assert _lookup(inv, "tls://a:443#a", "") is not None
        found = _lookup(inv, "", fp_new.upper())
        assert found is not None and found.ref == "tls://a:443#a"
        assert _lookup(inv, "", fp_old) is None  # no longer served anywhere
        assert _lookup(inv, "tls://nowhere:443#x", "") is None
