"""OpenSLO v1 import/export: exact round trips, the query mapping, errors naming document and
field, and `certpilot slo convert` both ways."""

from __future__ import annotations

import copy
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from certpilot.cli import main
from certpilot.domain.errors import ConfigError
from slo import rules
from slo.openslo import (
    counter_selector,
    dump_openslo_yaml,
    from_openslo,
    load_openslo,
    to_openslo,
    wrap_counter,
)
from slo.spec import (
    AlertSpec,
    SLOSet,
    default_slos,
    dump_sloth,
    parse_sloth,
    sli_queries,
)
from tests.support.services import require_binary

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "openslo" / "edge-slos.yaml"

SLOTH_DOC = """
version: "prometheus/v1"
service: "k8s-apiserver"
labels: {cluster: valhalla}
slos:
  - name: "requests-availability"
    objective: 99.9
    description: "Common SLO based on availability."
    labels: {tier: "1"}
    sli:
      events:
        error_query: sum(rate(apiserver_request_total{code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(apiserver_request_total[{{.window}}]))
    alerting:
      name: K8sApiserverAvailabilityAlert
      labels: {category: availability}
      annotations: {runbook: "https://example.com/runbook"}
      page_alert: {labels: {severity: critical}, annotations: {summary: "fast burn"}}
      ticket_alert: {disable: true}
  - name: "Requests_Latency"
    objective: 99.95
    period_ratio: events
    sli:
      events:
        error_query: |-
          sum(rate(apiserver_request_duration_seconds_count[{{.window}}])) by (verb)
          - sum(rate(apiserver_request_duration_seconds_bucket{le="0.4"}[{{.window}}])) by (verb)
        total_query: sum(rate(apiserver_request_duration_seconds_count[{{.window}}])) by (verb)
  - name: "certs"
    objective: 99
    sli:
      plugin: {id: certpilot/valid_ratio}
"""

# good/total inline (a templated Sloth-dialect total and a counter good), bad/total by reference.
HAND = """
apiVersion: openslo/v1
kind: SLO
metadata:
  name: cert-valid-ratio
  labels: {team: pki, tags: [certs]}
spec:
  service: shop
  indicator:
    metadata: {name: handshakes}
    spec:
      ratioMetric:
        counter: true
        good:
          metricSource:
            type: Prometheus
            spec: {query: 'tls_handshakes_total{result="ok"}'}
        total:
          metricSource:
            type: prometheus
            spec: {query: 'sum(rate(tls_handshakes_total[{{.window}}])) by (host)'}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{displayName: Mostly good, target: 0.995}]
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: shop-checkout}
spec:
  service: shop
  indicatorRef: checkout-errors
  budgetingMethod: Occurrences
  objectives: [{targetPercent: 99.9}]
---
apiVersion: openslo/v1
kind: SLI
metadata: {name: checkout-errors}
spec:
  ratioMetric:
    counter: true
    bad:
      metricSource:
        metricSourceRef: prom
        spec: {query: 'http_requests_total{job="checkout",code=~"5.."}'}
    total:
      metricSource:
        metricSourceRef: prom
        spec: {query: 'http_requests_total{job="checkout"}'}
---
apiVersion: openslo/v1
kind: DataSource
metadata: {name: prom}
spec: {type: Prometheus}
---
apiVersion: openslo/v1
kind: Service
metadata: {name: shop}
spec: {}
---
apiVersion: openslo/v1
kind: AlertNotificationTarget
metadata: {name: pager}
spec: {target: pagerduty}
"""


def _docs(text: str) -> list[Any]:
    return list(yaml.safe_load_all(text))


# --- export and round trips --------------------------------------------------------------------


def test_presets_round_trip_exactly() -> None:
    original = default_slos()
    warnings: list[str] = []
    assert from_openslo(to_openslo(original), "mem", warnings=warnings) == original
    assert from_openslo(_docs(dump_openslo_yaml(original)), "yaml", warnings=warnings) == original
    assert warnings == []
    other = default_slos("edge")
    assert from_openslo(_docs(dump_openslo_yaml(other)), "yaml") == other


def test_export_shape() -> None:
    docs = to_openslo(default_slos())
    assert [d["kind"] for d in docs] == ["SLO", "SLI"] * len(default_slos().slos)
    assert {d["apiVersion"] for d in docs} == {"openslo/v1"}
    slo, sli = docs[0], docs[1]
    assert slo["metadata"]["name"] == "certpilot-cert-valid-ratio"
    assert slo["metadata"]["displayName"] == "cert-valid-ratio"
    assert slo["metadata"]["annotations"]["certpilot.io/page-label.severity"] == "page"
    spec = slo["spec"]
    assert spec["service"] == "certpilot"
    assert spec["indicatorRef"] == sli["metadata"]["name"] == "certpilot-cert-valid-ratio-sli"
    assert spec["timeWindow"] == [{"duration": "30d", "isRolling": True}]
    assert spec["budgetingMethod"] == "Occurrences"
    assert spec["objectives"][0]["target"] == 0.995
    assert "alertPolicies" not in spec
    assert sli["metadata"]["annotations"] == {"certpilot.io/sli": "valid_ratio"}
    ratio = sli["spec"]["ratioMetric"]
    assert ratio["counter"] is True and "good" not in ratio
    assert ratio["bad"]["metricSource"] == {
        "type": "Prometheus",
        "spec": {"query": 'certpilot_sli_events_total{sli="valid_ratio",result="bad"}'},
    }
    assert ratio["total"]["metricSource"]["spec"]["query"] == (
        'certpilot_sli_events_total{sli="valid_ratio"}'
    )
    # Names are DNS-1123 labels; period_ratio only where it differs from the preset's.
    for d in docs:
        name = d["metadata"]["name"]
        assert len(name) <= 63 and name == name.lower() and name.replace("-", "").isalnum()
        assert "certpilot.io/period-ratio" not in d["metadata"].get("annotations", {})


def test_sloth_document_round_trips() -> None:
    original = parse_sloth(yaml.safe_load(SLOTH_DOC), "slos.yaml")
    docs = _docs(dump_openslo_yaml(original))
    back = from_openslo(docs, "openslo.yaml")
    # Service-level labels come back merged into each SLO, which is what they mean.
    assert back.slos == original.slos
    assert back.service == original.service
    assert parse_sloth(dump_sloth(back), "again").slos == original.slos

    avail, latency, certs = (d for d in docs if d["kind"] == "SLO")
    assert avail["spec"]["objectives"][0]["target"] == 0.999  # not 0.9990000000000001
    assert avail["metadata"]["labels"] == {"cluster": "valhalla", "tier": "1"}
    ann = avail["metadata"]["annotations"]
    assert ann["certpilot.io/ticket-disable"] == "true"
    assert ann["certpilot.io/page-annotation.summary"] == "fast burn"
    # A name that is no DNS label keeps the Sloth name in an annotation.
    assert latency["metadata"]["name"] == "k8s-apiserver-requests-latency"
    assert latency["metadata"]["annotations"]["certpilot.io/sloth-slo"] == "Requests_Latency"
    assert latency["metadata"]["annotations"]["certpilot.io/period-ratio"] == "events"
    assert "certpilot.io/sloth-slo" not in certs["metadata"]["annotations"]
    # A query that is not sum(rate(<counter>[{{.window}}])) travels verbatim, counter: false.
    sli = next(d for d in docs if d["metadata"]["name"] == latency["spec"]["indicatorRef"])
    ratio = sli["spec"]["ratioMetric"]
    assert ratio["counter"] is False
    assert "{{.window}}" in ratio["bad"]["metricSource"]["spec"]["query"]


def test_colliding_names_stay_distinct() -> None:
    base = default_slos().slos[0]
    s = SLOSet("certpilot", (replace(base, name="a.b"), replace(base, name="a_b")))
    docs = to_openslo(s)
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "SLO"]
    assert names == ["certpilot-a-b", "certpilot-a-b-2"]
    assert from_openslo(docs, "x") == s


def test_counter_selector_mapping() -> None:
    q = 'sum(rate(x_total{code=~"(5..|429)",job="a"}[{{.window}}]))'
    assert counter_selector(q) == 'x_total{code=~"(5..|429)",job="a"}'
    assert wrap_counter(counter_selector(q) or "") == q
    for other in (
        "sum(rate(x[{{.window}}])) by (a)",
        "sum(increase(x[{{.window}}]))",
        "sum(rate(sum(x)[{{.window}}]))",
        "sum(rate( x[{{.window}}]))",
    ):
        assert counter_selector(other) is None, other


# --- import ------------------------------------------------------------------------------------


def test_hand_written_file_imports() -> None:
    warnings: list[str] = []
    s = from_openslo(_docs(HAND), "slos.yaml", warnings=warnings)
    assert s.service == "shop"
    valid, checkout = s.slos
    # good/total: error = total - good; the templated total is kept as written (parenthesised
    # because it is not a single call).
    assert valid.name == "cert-valid-ratio" and valid.id == "shop-cert-valid-ratio"
    assert valid.total_query == "sum(rate(tls_handshakes_total[{{.window}}])) by (host)"
    assert valid.error_query == (
        "(sum(rate(tls_handshakes_total[{{.window}}])) by (host)) - "
        'sum(rate(tls_handshakes_total{result="ok"}[{{.window}}]))'
    )
    assert valid.objective == 99.5 and valid.labels == {"team": "pki", "tags": "certs"}
    assert valid.sli is None and valid.period_ratio == "optimized"
    # bad/total by reference, the type from the DataSource; metadata.name minus "<service>-".
    assert checkout.name == "checkout" and checkout.id == "shop-checkout"
    assert checkout.error_query == (
        'sum(rate(http_requests_total{job="checkout",code=~"5.."}[{{.window}}]))'
    )
    assert checkout.total_query == 'sum(rate(http_requests_total{job="checkout"}[{{.window}}]))'
    assert checkout.objective == 99.9
    # No certpilot alert annotations: certpilot's default alerts, named as the generator would.
    assert checkout.alerting == AlertSpec(name="ShopCheckoutBudgetBurn")
    unnamed = SLOSet(s.service, tuple(replace(x, alerting=AlertSpec()) for x in s.slos))
    assert [g["rules"][0]["alert"] for g in rules.alert_rules(s)] == [
        g["rules"][0]["alert"] for g in rules.alert_rules(unnamed)
    ]
    assert warnings == [
        "slos.yaml: AlertNotificationTarget pager: ignored "
        "(route alerts with alerts/alertmanager.yml)"
    ]
    # The Sloth output of an import loads as a Sloth document.
    assert parse_sloth(yaml.safe_load(yaml.safe_dump(dump_sloth(s))), "sloth").slos == s.slos


def test_example_file_imports_and_promtool_accepts_its_rules(tmp_path: Path) -> None:
    warnings: list[str] = []
    s = load_openslo(EXAMPLE, warnings=warnings)
    assert [x.id for x in s.slos] == [
        "edge-availability",
        "edge-tls-handshakes",
        "edge-cert-valid-ratio",
    ]
    avail, tls, certs = s.slos
    assert avail.error_query == (
        'sum(rate(http_requests_total{job="edge"}[{{.window}}])) - '
        'sum(rate(http_requests_total{job="edge",code!~"5.."}[{{.window}}]))'
    )
    assert tls.error_query == 'sum(rate(edge_tls_handshakes_total{result="failed"}[{{.window}}]))'
    assert tls.objective == 99.95 and tls.alerting.ticket_disable
    assert tls.alerting.page_labels == {"severity": "critical"}
    assert certs.sli == "valid_ratio" and certs.error_query == sli_queries("valid_ratio")[0]
    assert len(warnings) == 2
    assert any("AlertPolicy edge-fast-burn: ignored" in w for w in warnings)
    assert any("SLO edge-availability: spec.alertPolicies ignored" in w for w in warnings)

    promtool = require_binary("promtool")
    path = tmp_path / "slo.rules.yml"
    path.write_text(rules.render(s)[rules.SLO_RULES_FILE])
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


# --- errors ------------------------------------------------------------------------------------


def _set(doc: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if value is _DELETE:
        del doc[last]
    elif isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


_DELETE = object()
SLO0 = "slos.yaml: SLO cert-valid-ratio: "
SLI2 = "slos.yaml: SLI checkout-errors: "


@pytest.mark.parametrize(
    ("doc", "path", "value", "message"),
    [
        (
            0,
            "spec.timeWindow.0.duration",
            "7d",
            SLO0 + "spec.timeWindow[0].duration: only rolling 30d is supported (got '7d')",
        ),
        (
            0,
            "spec.timeWindow.0",
            {"duration": "1M", "calendar": {"startTime": "2024-01-01 00:00:00"}},
            SLO0 + "spec.timeWindow[0].duration: only rolling 30d is supported (got '1M')",
        ),
        (0, "spec.timeWindow.0.isRolling", False, SLO0 + "spec.timeWindow[0].isRolling: only"),
        (0, "spec.budgetingMethod", "Timeslices", SLO0 + "spec.budgetingMethod: expected Occ"),
        (
            0,
            "spec.objectives",
            [{"target": 0.99}, {"target": 0.999}],
            SLO0 + "spec.objectives: expected exactly one objective",
        ),
        (0, "spec.objectives.0.target", 99.5, SLO0 + "spec.objectives[0].target: expected a"),
        (
            0,
            "spec.objectives.0.targetPercent",
            99.5,
            SLO0 + "spec.objectives[0]: expected exactly one of target and targetPercent",
        ),
        (0, "spec.service", _DELETE, SLO0 + "spec.service: expected a non-empty string"),
        (1, "spec.service", "other", "slos.yaml: SLO shop-checkout: spec.service: expected 'shop'"),
        (
            1,
            "spec.indicatorRef",
            "nope",
            "slos.yaml: SLO shop-checkout: spec.indicatorRef: expected the name of an SLI in this "
            "file (got 'nope')",
        ),
        (
            0,
            "spec.indicator.spec.ratioMetric.counter",
            False,
            SLO0 + "spec.indicator.spec.ratioMetric.counter: expected true: the good query",
        ),
        (
            0,
            "spec.indicator.spec.ratioMetric.good.metricSource.type",
            "Datadog",
            SLO0 + "spec.indicator.spec.ratioMetric.good.metricSource.type: expected Prometheus "
            "(got 'Datadog')",
        ),
        (
            0,
            "spec.indicator.spec.ratioMetric.bad",
            {"metricSource": {"type": "Prometheus", "spec": {"query": "x"}}},
            SLO0 + "spec.indicator.spec.ratioMetric: expected exactly one of good and bad",
        ),
        (
            0,
            "spec.indicator.spec.ratioMetric.raw",
            {"metricSource": {"type": "Prometheus", "spec": {"query": "x"}}},
            SLO0 + "spec.indicator.spec.ratioMetric.raw: precomputed ratios are not supported",
        ),
        (
            0,
            "spec.indicator.spec",
            {"thresholdMetric": {"metricSource": {"type": "Prometheus"}}},
            SLO0 + "spec.indicator.spec.thresholdMetric: only ratioMetric SLIs",
        ),
        (
            2,
            "spec.ratioMetric.bad.metricSource.spec.query",
            'sum(http_requests_total{code=~"5.."})',
            SLI2 + "spec.ratioMetric.bad.metricSource.spec.query: expected a counter selector",
        ),
        (
            2,
            "spec.ratioMetric.total.metricSource.metricSourceRef",
            "elsewhere",
            SLI2 + "spec.ratioMetric.total.metricSource.type: expected Prometheus (or a "
            "metricSourceRef",
        ),
        (
            2,
            "metadata.annotations",
            {"certpilot.io/sli": "valid_ratio"},
            SLI2 + "metadata.annotations[certpilot.io/sli]: the queries are not the valid_ratio",
        ),
        (
            0,
            "metadata.annotations",
            {"certpilot.io/page-disabled": "true"},
            SLO0 + "metadata.annotations[certpilot.io/page-disabled]: unknown certpilot annotation",
        ),
        (
            0,
            "metadata.annotations",
            {"certpilot.io/period-ratio": "weekly"},
            SLO0 + "metadata.annotations[certpilot.io/period-ratio]: expected one of",
        ),
        (
            0,
            "metadata.labels.tags",
            ["a", "b"],
            SLO0 + "metadata.labels.tags: expected a string or a one-item list",
        ),
        (1, "metadata.name", "cert-valid-ratio", SLO0 + "metadata.name: duplicate SLO name"),
        (
            1,
            "apiVersion",
            "openslo/v1alpha",
            "slos.yaml: document 2: apiVersion: only openslo/v1 is supported",
        ),
    ],
)
def test_errors_name_document_and_field(doc: int, path: str, value: Any, message: str) -> None:
    docs = _docs(HAND)
    _set(docs[doc], path, copy.deepcopy(value))
    with pytest.raises(ConfigError) as e:
        from_openslo(docs, "slos.yaml")
    line = e.value.one_line()
    assert line.startswith(message), line
    assert "\n" not in line


def test_nothing_to_import() -> None:
    docs = [d for d in _docs(HAND) if d["kind"] != "SLO"]
    with pytest.raises(ConfigError, match=r"^slos.yaml: no openslo/v1 SLO document$"):
        from_openslo(docs, "slos.yaml")


def test_other_documents_are_ignored_with_a_warning() -> None:
    docs = [{"apiVersion": "v1", "kind": "ConfigMap"}, None, *_docs(HAND)]
    warnings: list[str] = []
    from_openslo(docs, "slos.yaml", warnings=warnings)
    assert (
        warnings[0] == "slos.yaml: document 1: not an OpenSLO document (apiVersion 'v1'); ignored"
    )


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_converts_openslo_to_sloth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "slos.yaml"
    src.write_text(HAND)
    assert main(["slo", "convert", str(src)]) == 0
    out, err = capsys.readouterr()
    sloth = yaml.safe_load(out)
    assert sloth["version"] == "prometheus/v1"
    assert parse_sloth(sloth, "out").slos == load_openslo(src).slos
    assert "AlertNotificationTarget pager: ignored" in err

    # --out, and back again: the OpenSLO of the Sloth output imports to the same SLOs.
    sloth_file = tmp_path / "sloth.yaml"
    assert main(["slo", "convert", str(src), "--out", str(sloth_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["slo", "convert", str(sloth_file)]) == 0
    again = from_openslo(_docs(capsys.readouterr().out), "again")
    assert again.slos == load_openslo(src).slos


def test_cli_converts_sloth_to_openslo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "sloth.yaml"
    src.write_text(yaml.safe_dump(dump_sloth(default_slos())))
    out_file = tmp_path / "openslo.yaml"
    assert main(["slo", "convert", str(src), "--to", "openslo", "--out", str(out_file)]) == 0
    assert f"wrote {out_file}" in capsys.readouterr().out
    assert load_openslo(out_file) == default_slos()
    # --to the input's own format normalises it.
    assert main(["slo", "convert", str(out_file), "--to", "openslo"]) == 0
    assert capsys.readouterr().out == dump_openslo_yaml(default_slos())
    assert main(["slo", "convert", str(out_file), "--to", "sloth"]) == 0
    assert parse_sloth(yaml.safe_load(capsys.readouterr().out), "x") == default_slos()


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = _docs(HAND)
    docs[0]["spec"]["timeWindow"][0]["duration"] = "7d"
    src = tmp_path / "slos.yaml"
    src.write_text(yaml.safe_dump_all(docs))
    assert main(["slo", "convert", str(src)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"certpilot: error: {src}: SLO cert-valid-ratio: spec.timeWindow[0].duration: "
        "only rolling 30d is supported (got '7d')\n"
    )
    neither = tmp_path / "neither.yaml"
    neither.write_text("groups: []\n")
    assert main(["slo", "convert", str(neither)]) == 2
    assert "expected a Sloth prometheus/v1 document or OpenSLO" in capsys.readouterr().err
    assert main(["slo", "convert", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["slo", "convert", str(src), "--to", "nobl9"])
    assert e.value.code == 2
