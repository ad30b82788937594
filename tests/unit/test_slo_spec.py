"""Sloth prometheus/v1 specs: presets, validation errors naming the field, round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from certpilot.domain.errors import ConfigError
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.sli import SLI_IDS, coverage_events, valid_ratio_events
from certpilot.store import Inventory
from slo.spec import (
    PRESETS,
    default_period_ratio,
    default_slos,
    dump_sloth,
    load_sloth,
    parse_sloth,
    sli_queries,
)

SLOTH_DOC = """
version: "prometheus/v1"
service: "k8s-apiserver"
labels: {cluster: valhalla}
slos:
  - name: "requests-availability"
    objective: 99.9
    description: "Common SLO based on availability."
    sli:
      events:
        error_query: sum(rate(apiserver_request_total{code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(apiserver_request_total[{{.window}}]))
    alerting:
      name: K8sApiserverAvailabilityAlert
      labels: {category: availability}
      annotations: {runbook: "https://example.com/runbook"}
      page_alert: {labels: {severity: critical}}
      ticket_alert: {labels: {severity: warning}}
  - name: "certs"
    objective: 99
    sli:
      plugin: {id: certpilot/valid_ratio}
"""


def test_presets_cover_every_sli() -> None:
    s = default_slos()
    assert {x.sli for x in s.slos} == set(SLI_IDS)
    assert all(x.id.startswith("certpilot-") for x in s.slos)
    valid = next(x for x in s.slos if x.sli == "valid_ratio")
    assert valid.error_expr("5m") == (
        'sum(rate(certpilot_sli_events_total{sli="valid_ratio",result="bad"}[5m]))'
    )
    assert valid.total_expr("1h").endswith('{sli="valid_ratio"}[1h]))')
    assert abs(valid.error_budget_ratio - 0.005) < 1e-12


def test_a_sloth_file_loads_unchanged(tmp_path: Path) -> None:
    f = tmp_path / "slos.yaml"
    f.write_text(SLOTH_DOC)
    s = load_sloth(f)
    assert s.service == "k8s-apiserver"
    a, b = s.slos
    assert a.id == "k8s-apiserver-requests-availability"
    assert a.labels["cluster"] == "valhalla" and a.sli is None
    assert a.alerting.page_labels["severity"] == "critical"
    assert b.sli == "valid_ratio" and b.error_query == sli_queries("valid_ratio")[0]
    assert parse_sloth(dump_sloth(s), "again") == s
    assert parse_sloth(yaml.safe_load(yaml.safe_dump(dump_sloth(s))), "yaml") == s


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(version="v2"), 'version: expected "prometheus/v1"'),
        (lambda d: d["slos"][0].update(objective=100), "slos[0].objective: expected a percentage"),
        (lambda d: d["slos"][0].update(objective="high"), "slos[0].objective"),
        (lambda d: d["slos"][1].update(name="requests-availability"), "duplicate SLO name"),
        (
            lambda d: d["slos"][0]["sli"]["events"].update(error_query="sum(rate(x[5m]))"),
            "slos[0].sli.events.error_query: expected a PromQL query containing {{.window}}",
        ),
        (lambda d: d["slos"][1]["sli"]["plugin"].update(id="other/x"), "slos[1].sli.plugin.id"),
        (lambda d: d.update(slos=[]), "slos: expected a non-empty list"),
    ],
)
def test_errors_name_the_field(mutate: object, needle: str) -> None:
    doc = yaml.safe_load(SLOTH_DOC)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ConfigError) as e:
        parse_sloth(doc, "slos.yaml")
    assert needle in e.value.one_line()
    assert e.value.one_line().startswith("slos.yaml: ")


def test_low_traffic_presets_use_the_events_period_ratio() -> None:
    by_sli = {x.sli: x.period_ratio for x in default_slos().slos}
    assert by_sli == {
        "valid_ratio": "optimized",
        "renewal_success": "events",
        "compromise_replacement": "events",
        "issuance_latency": "events",
        "complete_deployments": "events",
        "discovery_coverage": "optimized",
        "expected_issuance": "events",
    }
    assert {p.sli: p.period_ratio for p in PRESETS} == by_sli
    assert default_period_ratio(None) == "optimized"  # a Sloth events SLI: Sloth's default


def test_period_ratio_key_in_sloth_documents() -> None:
    doc = yaml.safe_load(SLOTH_DOC)
    a, b = parse_sloth(doc, "slos.yaml").slos
    assert a.period_ratio == "optimized" and b.period_ratio == "optimized"
    # Without the key, a plugin SLI gets its preset's choice.
    doc["slos"][1]["sli"]["plugin"]["id"] = "certpilot/renewal_success"
    assert parse_sloth(doc, "slos.yaml").slos[1].period_ratio == "events"
    # The key overrides it, either way.
    doc["slos"][0]["period_ratio"] = "events"
    doc["slos"][1]["period_ratio"] = "optimized"
    s = parse_sloth(doc, "slos.yaml")
    assert [x.period_ratio for x in s.slos] == ["events", "optimized"]
    # Round trip: written only where it differs from the default.
    dumped = dump_sloth(s)
    assert [d.get("period_ratio") for d in dumped["slos"]] == ["events", "optimized"]
    assert parse_sloth(yaml.safe_load(yaml.safe_dump(dumped)), "yaml") == s
    defaults = dump_sloth(default_slos())
    assert all("period_ratio" not in d for d in defaults["slos"])
    assert [x.period_ratio for x in parse_sloth(defaults, "again").slos] == [
        x.period_ratio for x in default_slos().slos
    ]


@pytest.mark.parametrize("value", ["fast", "Events", "", None, 1, ["events"]])
def test_unknown_period_ratio_is_a_config_error(value: object) -> None:
    doc = yaml.safe_load(SLOTH_DOC)
    doc["slos"][1]["period_ratio"] = value
    with pytest.raises(ConfigError) as e:
        parse_sloth(doc, "slos.yaml")
    assert e.value.field == "slos[1].period_ratio"
    assert e.value.one_line().startswith(
        "slos.yaml: slos[1].period_ratio: expected one of optimized, events"
    )


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_valid_ratio_and_coverage_events() -> None:
    ok = Observation("tls", "tls://a:443#a", "a:443", NOW)
    bad = Observation(
        "tls", "tls://b:443#b", "b:443", NOW, problems=(Problem(ProblemCode.EXPIRING, "x"),)
    )
    f = Observation("file", "file:///x#0", "file:/x", NOW)
    events = valid_ratio_events([ok, bad, f], NOW)
    assert [(e.ref, e.good, e.detail) for e in events] == [
        ("tls://a:443#a", True, ""),
        ("tls://b:443#b", False, "expiring"),
    ]

    def item(ref: str, age: timedelta) -> InventoryItem:
        return InventoryItem(
            ref,
            "tls",
            ref,
            None,
            None,
            None,
            None,
            None,
            None,
            (),
            None,
            None,
            None,
            None,
            None,
            (),
            None,
            NOW - timedelta(days=1),
            NOW - age,
        )

    cov = coverage_events(
        [item("fresh", timedelta(minutes=1)), item("stale", timedelta(hours=1))],
        NOW,
        timedelta(minutes=15),
    )
    assert [(e.ref, e.good) for e in cov] == [("fresh", True), ("stale", False)]


def test_store_counts_and_samples_sli_events() -> None:
    inv = Inventory.open("sqlite://")
    try:
        first = inv.snapshot_sli(NOW)
        assert {s.sli for s in first} == set(SLI_IDS) and all(s.total == 0 for s in first)
        ok = Observation("tls", "tls://a:443#a", "a:443", NOW)
        bad = Observation(
            "tls", "tls://b:443#b", "b:443", NOW, problems=(Problem(ProblemCode.EXPIRED, "x"),)
        )
        inc = inv.record_sli_events(valid_ratio_events([ok, bad, bad], NOW))
        assert inc == {"valid_ratio": (1.0, 2.0)}
        inv.snapshot_sli(NOW + timedelta(minutes=1))
        samples = inv.sli_samples("valid_ratio", NOW - timedelta(hours=1))
        assert [(s.good_total, s.bad_total) for s in samples] == [(0, 0), (1, 2)]
        assert inv.sli_counters()["valid_ratio"] == (1.0, 2.0)
        assert [e.ref for e in inv.sli_events(good=False)] == ["tls://b:443#b"] * 2
        assert inv.sli_events(good=True) == []  # counted, not kept
        inv.prune_sli(NOW + timedelta(seconds=30))
        assert len(inv.sli_samples("valid_ratio", NOW - timedelta(hours=1))) == 1
        assert inv.sli_counters()["valid_ratio"] == (1.0, 2.0)  # counters survive pruning
    finally:
        inv.close()
