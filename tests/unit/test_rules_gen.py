"""Rule generation: Sloth's names, labels and expressions; symptoms; routing; committed files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from certpilot.cli import main
from certpilot.domain.errors import ConfigError
from certpilot.domain.judge import JudgePolicy
from slo import rules
from slo.alertmanager import (
    GROUP_BY,
    PAGES_RECEIVER,
    TICKETS_RECEIVER,
    WEBHOOK_RECEIVER,
    alertmanager_config,
)
from slo.spec import (
    SLI_WINDOWS,
    AlertSpec,
    BurnWindow,
    SLOSet,
    default_slos,
    load_sloth,
    parse_sloth,
)

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"

SLO_RECORDS = [
    *(f"slo:sli_error:ratio_rate{w}" for w in SLI_WINDOWS),
    "slo:sli_error:ratio_rate30d",
]
META_RECORDS = [
    "slo:objective:ratio",
    "slo:error_budget:ratio",
    "slo:time_period:days",
    "slo:current_burn_rate:ratio",
    "slo:period_burn_rate:ratio",
    "slo:period_error_budget_remaining:ratio",
    "sloth_slo_info",
]
SYMPTOMS = {
    "CertificateExpiringRelative": "ticket",
    "CertificateExpiringSoon": "page",
    "CertificateExpired": "page",
    "CertificateChainProblem": "ticket",
    "ScannerSourceDown": "ticket",
    "ScannerErrorsHigh": "ticket",
    "DiscoveryCoverageFalling": "ticket",
    "RenewalFailing": "ticket",
    "CertificateNotDeployed": "ticket",
    "UnexpectedIssuance": "page",
    "CertpilotInventoryDown": "ticket",
    "CRLStale": "ticket",
    "CTLogVerificationFailed": "page",
    "CTLogUnreachable": "ticket",
}

# Sloth's getting-started example (https://github.com/slok/sloth, examples/getting-started.yml).
SLOTH_DOC = """
version: "prometheus/v1"
service: "myservice"
labels:
  owner: "myteam"
  repo: "myorg/myservice"
  tier: "2"
slos:
  - name: "requests-availability"
    objective: 99.9
    description: "Common SLO based on availability for HTTP request responses."
    sli:
      events:
        error_query: >-
          sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[{{.window}}]))
        total_query: >-
          sum(rate(http_request_duration_seconds_count{job="myservice"}[{{.window}}]))
    alerting:
      name: MyServiceHighErrorRate
      labels:
        category: "availability"
      annotations:
        summary: "High error rate on 'myservice' requests responses"
      page_alert:
        labels:
          severity: pageteam
          routing_key: myteam
      ticket_alert:
        labels:
          severity: "slack"
          slack_channel: "#alerts-myteam"
"""

SLOTH_FILTER = (
    '{sloth_id="myservice-requests-availability", sloth_service="myservice", '
    'sloth_slo="requests-availability"}'
)


@pytest.fixture
def sloth_set(tmp_path: Path) -> SLOSet:
    path = tmp_path / "slos.yml"
    path.write_text(SLOTH_DOC, encoding="utf-8")
    return load_sloth(path)


def _rules_by(groups: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: r for g in groups for r in g["rules"] if key in r}


# --- structure ---------------------------------------------------------------------------------


def test_recording_groups_and_names_per_slo() -> None:
    slo_set = default_slos()
    groups = rules.recording_rules(slo_set)
    assert len(groups) == 2 * len(slo_set.slos)
    for i, slo in enumerate(slo_set.slos):
        sli, meta = groups[2 * i], groups[2 * i + 1]
        assert sli["name"] == f"sloth-slo-sli-recordings-{slo.id}"
        assert meta["name"] == f"sloth-slo-meta-recordings-{slo.id}"
        assert [r["record"] for r in sli["rules"]] == SLO_RECORDS
        assert [r["record"] for r in meta["rules"]] == META_RECORDS
        for r in sli["rules"]:
            window = r["record"].removeprefix("slo:sli_error:ratio_rate")
            assert r["labels"] == {
                "sloth_id": slo.id,
                "sloth_service": "certpilot",
                "sloth_slo": slo.name,
                "sloth_window": window,
            }
        for r in meta["rules"]:
            assert r["labels"]["sloth_id"] == slo.id
            assert "sloth_window" not in r["labels"]


def test_sli_expression_substitutes_the_window() -> None:
    slo = default_slos().slos[0]
    (sli, _meta) = rules.recording_rules(SLOSet("certpilot", (slo,)))
    r1h = sli["rules"][2]
    assert r1h["record"] == "slo:sli_error:ratio_rate1h"
    assert r1h["expr"] == (
        '(sum(rate(certpilot_sli_events_total{sli="valid_ratio",result="bad"}[1h])))\n'
        "/\n"
        '(sum(rate(certpilot_sli_events_total{sli="valid_ratio"}[1h])))\n'
    )
    assert "{{.window}}" not in yaml.safe_dump(sli)


def test_every_slo_has_a_page_and_a_ticket_without_for() -> None:
    slo_set = default_slos()
    groups = rules.alert_rules(slo_set)
    assert [g["name"] for g in groups] == [f"sloth-slo-alerts-{s.id}" for s in slo_set.slos]
    for slo, group in zip(slo_set.slos, groups, strict=True):
        page, ticket = group["rules"]
        assert page["alert"] == ticket["alert"] == slo.alerting.name
        for rule, severity in ((page, "page"), (ticket, "ticket")):
            assert "for" not in rule  # the short window resets the alert; no for: needed
            assert rule["labels"]["severity"] == severity
            assert rule["labels"]["sloth_severity"] == severity
            assert rule["labels"]["category"] == "certificates"
            assert set(rule["annotations"]) >= {
                "summary",
                "description",
                "runbook_url",
                "dashboard_url",
                "title",
            }
            assert rule["annotations"]["dashboard_url"] == rules.DEFAULT_DASHBOARD_URL
            assert rule["annotations"]["runbook_url"].startswith("https://")
        # the preset's runbook wins over the generic one
        assert page["annotations"]["runbook_url"] == slo.alerting.annotations["runbook_url"]


def test_burn_alert_uses_the_slos_windows_and_factors() -> None:
    slo = default_slos().slos[0]  # 99.5 %: budget (100 - 99.5) / 100 = 0.005
    page = rules.burn_alert_expr(slo, "page")
    flt = (
        '{sloth_id="certpilot-cert-valid-ratio", sloth_service="certpilot", '
        'sloth_slo="cert-valid-ratio"}'
    )
    assert page == (
        "(\n"
        f"    max(slo:sli_error:ratio_rate5m{flt} > (14.4 * 0.005)) without (sloth_window)\n"
        "    and\n"
        f"    max(slo:sli_error:ratio_rate1h{flt} > (14.4 * 0.005)) without (sloth_window)\n"
        ")\n"
        "or\n"
        "(\n"
        f"    max(slo:sli_error:ratio_rate30m{flt} > (6 * 0.005)) without (sloth_window)\n"
        "    and\n"
        f"    max(slo:sli_error:ratio_rate6h{flt} > (6 * 0.005)) without (sloth_window)\n"
        ")\n"
    )
    ticket = rules.burn_alert_expr(slo, "ticket")
    assert "ratio_rate2h" in ticket and "(3 * 0.005)" in ticket
    assert "ratio_rate3d" in ticket and "(1 * 0.005)" in ticket


def test_disabled_page_is_not_generated_and_custom_windows_are_recorded() -> None:
    base = default_slos().slos[0]
    slo = replace(
        base,
        alerting=replace(base.alerting, page_disable=True),
        burn_windows=(
            BurnWindow("page", "1h", "5m", 14.4),
            BurnWindow("ticket", "7d", "12h", 1.0),
        ),
    )
    slo_set = SLOSet("certpilot", (slo,))
    (group,) = rules.alert_rules(slo_set)
    (ticket,) = group["rules"]
    assert ticket["labels"]["sloth_severity"] == "ticket"
    assert "ratio_rate7d" in ticket["expr"] and "ratio_rate12h" in ticket["expr"]
    records = [r["record"] for r in rules.recording_rules(slo_set)[0]["rules"]]
    assert "slo:sli_error:ratio_rate12h" in records
    assert "slo:sli_error:ratio_rate7d" in records
    assert records[-1] == "slo:sli_error:ratio_rate30d"


def test_invalid_specs_are_config_errors() -> None:
    base = default_slos().slos[0]
    bad_period = SLOSet("certpilot", (replace(base, period="30 days"),))
    with pytest.raises(ConfigError, match="period"):
        rules.recording_rules(bad_period)
    bad_sev = SLOSet(
        "certpilot", (replace(base, burn_windows=(BurnWindow("urgent", "1h", "5m", 2),)),)
    )
    with pytest.raises(ConfigError, match="severity"):
        rules.alert_rules(bad_sev)
    reserved = SLOSet("certpilot", (replace(base, labels={"sloth_id": "x"}),))
    with pytest.raises(ConfigError, match="sloth_"):
        rules.recording_rules(reserved)
    with pytest.raises(ConfigError, match="unique"):
        rules.render([default_slos(), default_slos()])


def test_alert_name_defaults_when_the_spec_has_none() -> None:
    base = default_slos().slos[0]
    slo = replace(base, service="shop-api", name="tls-valid", alerting=AlertSpec())
    (group,) = rules.alert_rules(SLOSet("shop-api", (slo,)))
    assert [r["alert"] for r in group["rules"]] == ["ShopApiTlsValidBudgetBurn"] * 2
    assert [r["labels"]["severity"] for r in group["rules"]] == ["page", "ticket"]


# --- a Sloth user's file gives Sloth's rules ----------------------------------------------------


def test_sloth_file_gives_sloths_expressions_and_labels(sloth_set: SLOSet) -> None:
    groups = rules.recording_rules(sloth_set)
    recs = _rules_by(groups, "record")
    r5m = recs["slo:sli_error:ratio_rate5m"]
    # Text as Sloth v0.11 generates it for this spec.
    assert r5m["expr"] == (
        '(sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[5m])))\n'
        "/\n"
        '(sum(rate(http_request_duration_seconds_count{job="myservice"}[5m])))\n'
    )
    assert r5m["labels"] == {
        "owner": "myteam",
        "repo": "myorg/myservice",
        "sloth_id": "myservice-requests-availability",
        "sloth_service": "myservice",
        "sloth_slo": "requests-availability",
        "sloth_window": "5m",
        "tier": "2",
    }
    assert recs["slo:sli_error:ratio_rate30d"]["expr"] == (
        f"sum_over_time(slo:sli_error:ratio_rate5m{SLOTH_FILTER}[30d])\n"
        "/ ignoring (sloth_window)\n"
        f"count_over_time(slo:sli_error:ratio_rate5m{SLOTH_FILTER}[30d])\n"
    )
    assert recs["slo:objective:ratio"]["expr"] == "vector(0.9990000000000001)"
    assert recs["slo:error_budget:ratio"]["expr"] == "vector(1-0.9990000000000001)"
    assert recs["slo:time_period:days"]["expr"] == "vector(30)"
    assert recs["slo:current_burn_rate:ratio"]["expr"] == (
        f"slo:sli_error:ratio_rate5m{SLOTH_FILTER}\n"
        "/ on(sloth_id, sloth_slo, sloth_service) group_left\n"
        f"slo:error_budget:ratio{SLOTH_FILTER}\n"
    )
    assert recs["slo:period_error_budget_remaining:ratio"]["expr"] == (
        f"1 - slo:period_burn_rate:ratio{SLOTH_FILTER}"
    )
    info = recs["sloth_slo_info"]["labels"]
    assert info["sloth_objective"] == "99.9"
    assert info["sloth_mode"] == "cli-gen-prom"
    assert info["sloth_spec"] == "prometheus/v1"
    assert info["tier"] == "2"

    alerts = rules.alert_rules(sloth_set)[0]["rules"]
    page, ticket = alerts
    assert page["alert"] == "MyServiceHighErrorRate"
    assert (
        f"max(slo:sli_error:ratio_rate5m{SLOTH_FILTER} > (14.4 * 0.0009999999999999432))"
        in (page["expr"])
    )
    # The spec's own labels and annotations win, as in Sloth.
    assert page["labels"] == {
        "category": "availability",
        "routing_key": "myteam",
        "severity": "pageteam",
        "sloth_severity": "page",
    }
    assert ticket["labels"]["slack_channel"] == "#alerts-myteam"
    assert page["annotations"]["summary"] == "High error rate on 'myservice' requests responses"
    assert "Common SLO based on availability" in page["annotations"]["description"]


def test_events_period_ratio_is_sloths_non_optimised_rule(sloth_set: SLOSet) -> None:
    """``period_ratio: events`` gives what ``sloth generate --disable-optimized-rules`` writes:
    the period rule built like every other window (Sloth v0.10+)."""
    doc = yaml.safe_load(SLOTH_DOC)
    doc["slos"][0]["period_ratio"] = "events"
    events_set = parse_sloth(doc, "slos.yml")
    recs = _rules_by(rules.recording_rules(events_set), "record")
    r30d = recs["slo:sli_error:ratio_rate30d"]
    assert r30d["expr"] == (
        '(sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[30d])))\n'
        "/\n"
        '(sum(rate(http_request_duration_seconds_count{job="myservice"}[30d])))\n'
    )
    assert r30d["labels"] == {**recs["slo:sli_error:ratio_rate5m"]["labels"], "sloth_window": "30d"}
    # Everything else is unchanged: the period burn rate and budget read the same series.
    assert sloth_set.slos[0].period_ratio == "optimized"  # Sloth's default without the key
    optimized = _rules_by(rules.recording_rules(sloth_set), "record")
    assert {k: v for k, v in recs.items() if k != "slo:sli_error:ratio_rate30d"} == {
        k: v for k, v in optimized.items() if k != "slo:sli_error:ratio_rate30d"
    }
    assert rules.alert_rules(events_set) == rules.alert_rules(sloth_set)


def test_presets_record_the_period_ratio_their_traffic_needs() -> None:
    slo_set = default_slos()
    recs = rules.recording_rules(slo_set)
    for i, slo in enumerate(slo_set.slos):
        period_rule = recs[2 * i]["rules"][-1]
        assert period_rule["record"] == "slo:sli_error:ratio_rate30d"
        assert period_rule == rules.period_ratio_rule(slo)
        if slo.period_ratio == "events":
            assert period_rule["expr"] == (
                f'(sum(rate(certpilot_sli_events_total{{sli="{slo.sli}",result="bad"}}[30d])))\n'
                "/\n"
                f'(sum(rate(certpilot_sli_events_total{{sli="{slo.sli}"}}[30d])))\n'
            )
        else:
            assert period_rule["expr"].startswith("sum_over_time(slo:sli_error:ratio_rate5m{")
    # A custom period follows the spec: the events rule reads the queries over it.
    slo = replace(slo_set.slos[1], period="7d")
    rule = rules.period_ratio_rule(slo)
    assert rule["record"] == "slo:sli_error:ratio_rate7d"
    assert "[7d]" in rule["expr"] and rule["labels"]["sloth_window"] == "7d"


def test_unknown_period_ratio_is_a_config_error() -> None:
    base = default_slos().slos[0]
    with pytest.raises(ConfigError, match="period_ratio") as e:
        rules.recording_rules(SLOSet("certpilot", (replace(base, period_ratio="fast"),)))
    assert e.value.field == "period_ratio"


def test_generate_writes_parseable_files_with_header(sloth_set: SLOSet, tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    paths = rules.generate(sloth_set, out)
    assert [p.name for p in paths] == [
        rules.SLO_RULES_FILE,
        rules.SYMPTOM_RULES_FILE,
        rules.ALERTMANAGER_FILE,
    ]
    for p in paths:
        text = p.read_text(encoding="utf-8")
        assert text.startswith("# generated by certpilot rules generate; do not edit\n")
        assert "&id" not in text and "*id" not in text  # no YAML aliases
    slo_doc = yaml.safe_load(paths[0].read_text(encoding="utf-8"))
    recs = rules.recording_rules(sloth_set)
    alerts = rules.alert_rules(sloth_set)
    assert slo_doc["groups"] == [recs[0], recs[1], alerts[0]]
    sym_doc = yaml.safe_load(paths[1].read_text(encoding="utf-8"))
    assert sym_doc["groups"] == rules.symptom_rules()
    assert yaml.safe_load(paths[2].read_text(encoding="utf-8")) == alertmanager_config()
    # Stable: a second run writes the same bytes.
    before = [p.read_bytes() for p in paths]
    rules.generate(sloth_set, out)
    assert [p.read_bytes() for p in paths] == before


def test_go_float_matches_gos_shortest_g() -> None:
    cases = {
        0.999: "0.999",
        99.9 / 100: "0.9990000000000001",
        (100 - 99.9) / 100: "0.0009999999999999432",
        14.4: "14.4",
        6.0: "6",
        30.0: "30",
        0.0001: "0.0001",
        0.00001: "1e-05",
        123456.0: "123456",
        1e6: "1e+06",
        2592000.0: "2.592e+06",
        -2.5: "-2.5",
        0.0: "0",
    }
    for value, text in cases.items():
        assert rules.go_float(value) == text, value
    assert rules.go_float_f(99.0) == "99"
    assert rules.go_float_f(99.95) == "99.95"
    assert rules.go_float_f(2592000.0) == "2592000"


# --- symptoms -----------------------------------------------------------------------------------


def test_symptom_rules_names_severities_annotations() -> None:
    (group,) = rules.symptom_rules()
    assert group["name"] == "certpilot-symptoms"
    got = {r["alert"]: r for r in group["rules"]}
    assert {name: r["labels"]["severity"] for name, r in got.items()} == SYMPTOMS
    for r in got.values():
        assert set(r["annotations"]) == {"summary", "description", "runbook_url", "dashboard_url"}
        assert set(r["labels"]) == {"severity"}  # the rest comes from the series
    assert got["ScannerSourceDown"]["for"] == "15m"
    assert "x509_source_up == 0" in got["ScannerSourceDown"]["expr"]
    assert 'code="expired"' in got["CertificateExpired"]["expr"]
    assert 'code="not_deployed"' in got["CertificateNotDeployed"]["expr"]
    assert 'code="unexpected_issuance"' in got["UnexpectedIssuance"]["expr"]
    for code in rules.CHAIN_CODES:
        assert code in got["CertificateChainProblem"]["expr"]
    # owner joined for routing, without losing locations that have no info series
    assert "group_left (owner)" in got["CertificateExpired"]["expr"]
    assert "or on (ref)" in got["CertificateExpired"]["expr"]


def test_expiring_thresholds_follow_the_judge_policy() -> None:
    default = {r["alert"]: r["expr"] for r in rules.symptom_rules()[0]["rules"]}
    rel = default["CertificateExpiringRelative"]
    assert "certpilot_certificate_lifetime_left_ratio < 0.3333333333333333" in rel
    assert "certpilot_certificate_expires_in_seconds < 2592000" in rel
    assert "certpilot_certificate_expires_in_seconds > 0" in rel
    soon = default["CertificateExpiringSoon"]
    assert "certpilot_certificate_expires_in_seconds < 604800" in soon
    assert (
        "unless on (ref) (certpilot_certificate_lifetime_left_ratio >= 0.3333333333333333)" in soon
    )

    days_only = {
        r["alert"]: r["expr"]
        for r in rules.symptom_rules(policy=JudgePolicy(expiring_fraction=None))[0]["rules"]
    }
    assert "lifetime_left_ratio" not in days_only["CertificateExpiringRelative"]
    assert "lifetime_left_ratio" not in days_only["CertificateExpiringSoon"]
    neither = rules.symptom_rules(policy=JudgePolicy(expiring_fraction=None, expiring_days=None))
    assert "CertificateExpiringRelative" not in rules.rule_names(neither)


def test_dashboard_url_is_configurable() -> None:
    url = "https://grafana.example.com/d/certpilot-oncall"
    for group in [
        *rules.alert_rules(default_slos(), dashboard_url=url),
        *rules.symptom_rules(dashboard_url=url),
    ]:
        for r in group["rules"]:
            assert r["annotations"]["dashboard_url"] == url


# --- Alertmanager ---------------------------------------------------------------------------------


def test_alertmanager_routes_pages_and_tickets_to_slack_and_webhook() -> None:
    cfg = alertmanager_config()
    route = cfg["route"]
    assert route["group_by"] == list(GROUP_BY)
    assert route["receiver"] == TICKETS_RECEIVER
    webhook, pages, tickets = route["routes"]
    assert webhook == {
        "receiver": WEBHOOK_RECEIVER,
        "matchers": ['severity=~"page|ticket"'],
        "group_wait": "10s",
        "continue": True,
    }
    assert pages["receiver"] == PAGES_RECEIVER and pages["matchers"] == ['severity="page"']
    assert tickets["receiver"] == TICKETS_RECEIVER and tickets["matchers"] == ['severity="ticket"']
    assert "continue" not in pages and "continue" not in tickets

    page_over_ticket = cfg["inhibit_rules"][0]
    assert page_over_ticket == {
        "source_matchers": ['sloth_severity="page"'],
        "target_matchers": ['sloth_severity="ticket"'],
        "equal": ["sloth_id"],
    }
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert set(receivers) == {PAGES_RECEIVER, TICKETS_RECEIVER, WEBHOOK_RECEIVER}
    (hook,) = receivers[WEBHOOK_RECEIVER]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9795/hooks/alertmanager"
    assert hook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/certpilot/webhook-token",
    }
    for name in (PAGES_RECEIVER, TICKETS_RECEIVER):
        (slack,) = receivers[name]["slack_configs"]
        assert "api_url" not in slack
        assert slack["api_url_file"].startswith("/etc/certpilot/")


def test_alertmanager_config_holds_no_secret() -> None:
    text = rules.dump_yaml(alertmanager_config())
    assert "api_url:" not in text
    assert "credentials:" not in text
    assert "password" not in text


# --- committed files and the CLI ----------------------------------------------------------------


def test_committed_alerts_match_the_generator() -> None:
    """Editing the generator without ``certpilot rules generate`` fails here."""
    expected = rules.render(default_slos())
    for name, text in expected.items():
        committed = ALERTS / name
        assert committed.exists(), f"{committed} missing: run `certpilot rules generate`"
        assert committed.read_text(encoding="utf-8") == text, (
            f"{committed} differs from the generator: run `certpilot rules generate`"
        )


def test_cli_generate_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alerts"
    assert main(["rules", "generate", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == set(rules.render(default_slos()))
    capsys.readouterr()

    assert main(["rules", "generate", "--out", str(out), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out

    target = out / rules.SYMPTOM_RULES_FILE
    target.write_text(target.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert main(["rules", "generate", "--out", str(out), "--check"]) == 1
    printed = capsys.readouterr().out
    assert str(target) in printed
    assert rules.SLO_RULES_FILE not in printed


def test_cli_slo_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "slos.yml"
    spec.write_text(SLOTH_DOC, encoding="utf-8")
    out = tmp_path / "alerts"
    assert main(["rules", "generate", "--slo-file", str(spec), "--out", str(out)]) == 0
    text = (out / rules.SLO_RULES_FILE).read_text(encoding="utf-8")
    assert "sloth-slo-alerts-myservice-requests-availability" in text
    assert "certpilot-cert-valid-ratio" not in text

    # the same file twice: duplicate SLO ids are a one-line usage error
    capsys.readouterr()
    code = main(
        ["rules", "generate", "--slo-file", str(spec), "--slo-file", str(spec), "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "myservice-requests-availability" in err and "Traceback" not in err

    bad = tmp_path / "bad.yml"
    bad.write_text("version: prometheus/v1\nservice: x\nslos: []\n", encoding="utf-8")
    assert main(["rules", "generate", "--slo-file", str(bad), "--out", str(out)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_parse_sloth_round_trip_generates_the_same_rules() -> None:
    from slo.spec import dump_sloth

    slo_set = default_slos()
    again = parse_sloth(dump_sloth(slo_set), "<dump>")
    assert rules.render(again) == rules.render(slo_set)


def test_windows_match_the_engine() -> None:
    """The engine evaluates exactly the windows the rules record, and derives the current burn
    rate and the period ratio from the same short window (slo.engine promises to)."""
    from slo import engine

    base = default_slos().slos[0]
    custom = replace(
        base,
        burn_windows=(
            BurnWindow("page", "2h", "10m", 10.0),
            BurnWindow("page", "1h", "15m", 14.4),
            BurnWindow("ticket", "7d", "12h", 1.0),
        ),
    )
    for slo in (base, custom):
        assert rules.sli_windows(slo) == engine.evaluated_windows(slo)
        assert rules.period_source_window(slo) == engine.period_source_window(slo)
    assert rules.period_source_window(custom) == "10m"
