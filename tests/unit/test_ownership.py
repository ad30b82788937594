"""Owners for every item: labels, then rules (names, DNS zone, store paths, source), then a
default (certpilot.domain.ownership)."""

from __future__ import annotations

from datetime import UTC, datetime

from certpilot.domain.model import Observation
from certpilot.domain.ownership import OwnerRule, assign_owners
from certpilot.domain.x509 import parse_pem_bundle
from certpilot.localca import LocalCA
from certpilot.settings import settings_from_mapping

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _obs(ref: str, source: str, *names: str, **labels: str) -> Observation:
    leaf = None
    if names:
        (parsed,) = parse_pem_bundle(LocalCA("R", NOW).issue(list(names), NOW).cert_pem())
        assert not isinstance(parsed, Exception)
        leaf = parsed.info
    return Observation(
        source=source, ref=ref, target=ref, observed_at=NOW, leaf=leaf, labels=labels
    )


RULES = [
    OwnerRule("payments", names=("*.pay.example.com",)),
    OwnerRule("platform", refs=("openbao://bao/secret/platform/*",)),
    OwnerRule("edge", sources=("tls",)),
]


def test_labels_then_rules_then_default() -> None:
    obs = [
        _obs("tls://a:443#a", "tls", "a.example.com", owner="web"),  # its own label wins
        _obs("tls://b:443#b", "tls", "b.example.com", team="search"),  # team counts too
        _obs("file:///c.pem#0", "file", "api.pay.example.com"),  # DNS zone
        _obs("openbao://bao/secret/platform/x#crt", "openbao", "x.internal"),  # store path
        _obs("tls://d:443#d", "tls", "d.example.com"),  # source
        _obs("k8s://c/ns/secret/e#tls.crt", "k8s", "e.internal"),  # nothing: the default
        _obs("tls://api.pay.example.com:443#api.pay.example.com", "tls"),  # no cert: the host
    ]
    owners = [o.labels.get("owner") for o in assign_owners(obs, RULES, "unowned")]
    assert owners == ["web", "search", "payments", "platform", "edge", "unowned", "payments"]
    assert [o.labels.get("owner") for o in assign_owners(obs[5:6], RULES)] == [None]


def test_ownership_config_is_validated() -> None:
    s = settings_from_mapping(
        {
            "ownership": {
                "rules": [{"owner": "payments", "names": ["*.pay.example.com"]}],
                "default": "platform",
            }
        },
        "certpilot.yaml",
    )
    assert s.ownership.default == "platform" and s.ownership.rules[0].owner == "payments"
    import pytest

    from certpilot.domain.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        settings_from_mapping({"ownership": {"rules": [{"owner": "x"}]}}, "certpilot.yaml")
    assert "ownership.rules[0]" in str(err.value)
