"""certpilot's Grafana dashboards, built from code with Grafana's own typed builders.

Three dashboards, written by ``certpilot dashboards generate`` to ``dashboards/<uid>.json`` and
committed (a test fails when the committed files drift from this module):

- ``certpilot-executive``: is the fleet healthy? SLI, error budgets, what expires soon, incidents.
- ``certpilot-oncall``: what pages and why: burn rates against the alert thresholds, failing
  endpoints, renewals in flight, partial deployments, scanner source health.
- ``certpilot-debug``: per endpoint, issuer and source; scanner and issuance latency histograms;
  the in-process SLO engine side by side with Prometheus's recording rules.

The files are classic dashboard JSON (``schemaVersion`` 39, what Grafana 10.3 to 11.x store and
export), built with ``grafana-foundation-sdk`` (Grafana's generated builders, so field names and
enum values are Grafana's own). Every panel and target reads the ``$datasource`` variable, so an
import asks for nothing but the Prometheus data source.

Every query names only series certpilot exports (:func:`exported_metric_names` reads a fresh
:class:`certpilot.obs.Metrics` registry) or Sloth recording rules that ``alerts/`` defines
(``slo:sli_error:ratio_rate<w>``, ``slo:error_budget:ratio``, ...), with their ``sloth_id``,
``sloth_service``, ``sloth_slo`` labels, so Sloth's own dashboards work beside these. The tests
parse every query with ``promtool`` and execute it against a real Prometheus scraping
``certpilot demo --serve`` (:func:`all_queries` lists them, :func:`expand` fills in template
variables).

Certificate Transparency has no panel yet on purpose: certpilot exports no CT series so far, and
no panel may name a metric certpilot does not export. Add one when ``ctwatch`` adds its metrics.

This module is pure data: building a dashboard does no I/O; only :func:`write_dashboards` and
:func:`check_dashboards` touch files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

from grafana_foundation_sdk.builders import (
    bargauge,
    heatmap,
    prometheus,
    stat,
    statetimeline,
    timeseries,
)
from grafana_foundation_sdk.builders import common as gcb
from grafana_foundation_sdk.builders import dashboard as gdb
from grafana_foundation_sdk.builders import table as gtable
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon
from grafana_foundation_sdk.models import dashboard as gdm
from grafana_foundation_sdk.models import heatmap as ghm
from grafana_foundation_sdk.models import prometheus as gprom

from certpilot.domain.judge import JudgePolicy
from slo.spec import DEFAULT_BURN_WINDOWS, PRESETS, SLI_METRIC, BurnWindow, Preset

if TYPE_CHECKING:
    from certpilot.domain.inventory import Event, InventoryItem, ScanRun
    from certpilot.domain.problems import ProblemCode

SCHEMA_VERSION = 39
EXECUTIVE_UID = "certpilot-executive"
ONCALL_UID = "certpilot-oncall"
DEBUG_UID = "certpilot-debug"
UIDS: tuple[str, ...] = (EXECUTIVE_UID, ONCALL_UID, DEBUG_UID)
TAG = "certpilot"

# The data source every panel and target uses; Grafana asks for it on import.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = gdm.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VARIABLE + "}")

# Remediation job states that end a job; every other state of certpilot_jobs is "in flight",
# so a state added later counts as in flight without a dashboard change.
TERMINAL_JOB_STATES: tuple[str, ...] = ("done", "failed", "rolled_back")

# The discovery-coverage SLI counts an endpoint as covered when probed within 15 minutes
# (slo/spec.py): older scans turn the "time since last scan" panels orange.
SCAN_STALE_SECONDS = 15 * 60

_SLO = 'sloth_slo=~"$slo"'
_SOURCE = 'source=~"$source"'
_DAY = 86400

# Grafana's own variables (https://grafana.com/docs/grafana/latest/dashboards/variables/
# add-template-variables/#global-variables) that the queries use; tests substitute them.
GRAFANA_BUILTINS: tuple[str, ...] = ("__rate_interval", "__range", "__interval")


def _preset(sli: str) -> Preset:
    return next(p for p in PRESETS if p.sli == sli)


def burn_variable(window: BurnWindow, windows: Sequence[BurnWindow] = DEFAULT_BURN_WINDOWS) -> str:
    """Dashboard variable holding ``window``'s burn-rate factor.

    The first condition of a severity is ``<severity>_burn`` (``page_burn`` = 14.4 for 1h/5m);
    later ones add their long window (``page_burn_6h`` = 6, ``ticket_burn_3d`` = 1), following
    the SLO spec where 6h/30m at 6 pages, as in the SRE workbook and Sloth.
    """
    first = next(w for w in windows if w.severity == window.severity)
    return f"{window.severity}_burn" if first == window else f"{window.severity}_burn_{window.long}"


# --------------------------------------------------------------------------------------------
# Building blocks


class _PanelBuilder(Protocol):
    """What every Grafana panel builder of the SDK offers; lets one helper fill any panel."""

    def id(self, id_val: int) -> Self: ...
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: gdm.DataSourceRef) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def thresholds(self, thresholds: cogbuilder.Builder[gdm.ThresholdsConfig]) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...
    def build(self) -> gdm.Panel: ...


_P = TypeVar("_P", bound=_PanelBuilder)


@dataclass(frozen=True, slots=True)
class Q:
    """One PromQL target."""

    expr: str
    legend: str = ""
    instant: bool = False
    format: gprom.PromQueryFormat | None = None


def _steps(base: str, *steps: tuple[float, str]) -> gdb.ThresholdsConfig:
    """Absolute thresholds: ``base`` colour below the first step (Grafana writes it as null)."""
    return (
        gdb.ThresholdsConfig()
        .mode(gdm.ThresholdsMode.ABSOLUTE)
        .steps([gdm.Threshold(value=None, color=base)] + [gdm.Threshold(v, c) for v, c in steps])
    )


def _reduce_last() -> gcb.ReduceDataOptions:
    return gcb.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields("")


def _stat(graph: gcommon.BigValueGraphMode = gcommon.BigValueGraphMode.NONE) -> stat.Panel:
    """A big number (the last value of each series)."""
    return stat.Panel().graph_mode(graph).reduce_options(_reduce_last())


def _bars(
    mode: gcommon.BarGaugeDisplayMode = gcommon.BarGaugeDisplayMode.BASIC,
) -> bargauge.Panel:
    """Horizontal bars, one per series (the last value of each)."""
    return (
        bargauge.Panel()
        .display_mode(mode)
        .orientation(gcommon.VizOrientation.HORIZONTAL)
        .reduce_options(_reduce_last())
    )


def _organize(exclude: Sequence[str], rename: Mapping[str, str]) -> gdm.DataTransformerConfig:
    """Table transformation: hide Grafana's Time column and the like, rename the value."""
    return gdm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": dict(rename),
        },
    )


class _Board:
    """One dashboard under construction: ids, layout and common panel settings in one place."""

    def __init__(
        self,
        uid: str,
        title: str,
        description: str,
        *,
        time_from: str,
        refresh: str,
        variables: Iterable[cogbuilder.Builder[gdm.VariableModel]],
    ) -> None:
        self._next_id = 1
        self._dash = (
            gdb.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .tooltip(gdm.DashboardCursorSync.CROSSHAIR)
            .timezone("browser")
            .time(time_from, "now")
            .refresh(refresh)
            .annotation(
                gdb.AnnotationQuery()
                .name("Annotations & Alerts")
                .datasource(gdm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                .enable(True)
                .hide(True)
                .icon_color("rgba(0, 211, 255, 1)")
                .type("dashboard")
                .built_in(1)
            )
            .link(
                gdb.DashboardLink("certpilot dashboards")
                .type(gdm.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        for variable in variables:
            self._dash.with_variable(variable)

    def _id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def row(self, title: str) -> None:
        self._dash.with_row(gdb.Row(title).id(self._id()))

    def add(
        self,
        panel: _P,
        *,
        title: str,
        description: str,
        targets: Sequence[Q],
        unit: str,
        w: int,
        h: int,
        thresholds: gdb.ThresholdsConfig,
    ) -> _P:
        panel = (
            panel.id(self._id())
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .span(w)
            .height(h)
            .unit(unit)
            .thresholds(thresholds)
        )
        for ref, q in zip("ABCDEFGHIJ", targets, strict=False):
            target = (
                prometheus.Dataquery()
                .ref_id(ref)
                .datasource(DATASOURCE)
                .expr(q.expr)
                .legend_format(q.legend or "__auto")
            )
            target = target.instant() if q.instant else target.range()
            if q.format is not None:
                target = target.format(q.format)
            panel = panel.with_target(target)
        # Every SDK panel builder is a Builder[Panel]; the Protocol only names what we call.
        self._dash.with_panel(cast(cogbuilder.Builder[gdm.Panel], panel))
        return panel

    def build(self) -> dict[str, Any]:
        """The classic dashboard JSON as plain data (what Grafana's export would give)."""
        data: dict[str, Any] = json.loads(json.dumps(self._dash.build(), cls=JSONEncoder))
        data["schemaVersion"] = SCHEMA_VERSION
        return data


def _datasource_variable() -> gdb.DatasourceVariable:
    return (
        gdb.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Data source")
        .description("The Prometheus that scrapes certpilot and loads its rules from alerts/.")
        .type("prometheus")
    )


def _all_option() -> gdm.VariableOption:
    return gdm.VariableOption(selected=True, text="All", value="$__all")


def _label_variable(name: str, label: str, metric: str, description: str) -> gdb.QueryVariable:
    """Multi-value query variable over a label's values, with All meaning the regex ``.*``."""
    return (
        gdb.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {_name_label(name)})")
        .refresh(gdm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(gdm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(_all_option())
    )


def _name_label(variable: str) -> str:
    """The label a query variable lists (``slo`` lists ``sloth_slo``)."""
    return {"slo": "sloth_slo"}.get(variable, variable)


def _slo_variable() -> gdb.QueryVariable:
    return _label_variable(
        "slo",
        "SLO",
        "certpilot_slo_objective_ratio",
        "SLOs to show (the sloth_slo label of certpilot's SLO series and Sloth's rules).",
    )


def _source_variable() -> gdb.QueryVariable:
    return _label_variable(
        "source",
        "Source",
        "certpilot_inventory_items",
        "Discovery sources to show (tls, file, ...).",
    )


def _number_variable(name: str, label: str, value: float, description: str) -> gdb.CustomVariable:
    """A visible single-value custom variable: a threshold the viewer may see and edit."""
    text = f"{value:g}"
    option = gdm.VariableOption(selected=True, text=text, value=text)
    return (
        gdb.CustomVariable(name)
        .label(label)
        .description(description)
        .values(text)
        .current(option)
        .options([option])
    )


def _burn_variables() -> list[gdb.CustomVariable]:
    return [
        _number_variable(
            burn_variable(w),
            f"{w.severity.capitalize()} burn {w.long}/{w.short}",
            w.factor,
            f"Burn-rate factor of the {w.severity} alert over {w.long} and {w.short} (SRE "
            "workbook multi-window multi-burn-rate; from the SLO spec).",
        )
        for w in DEFAULT_BURN_WINDOWS
    ]


# --------------------------------------------------------------------------------------------
# Queries


def _sli_events(sli: str, result: str | None, window: str, fn: str = "rate") -> str:
    sel = f'sli="{sli}"' + (f',result="{result}"' if result else "")
    return f"sum({fn}({SLI_METRIC}{{{sel}}}[{window}]))"


def _good_ratio(sli: str, window: str, fn: str = "rate") -> str:
    bad = _sli_events(sli, "bad", window, fn)
    total = _sli_events(sli, None, window, fn)
    return f"1 - ({bad} / {total})"


def _distinct_certs(condition: str) -> str:
    """Certificates (by SHA-256 fingerprint, so a certificate at several locations counts once)
    for which ``condition`` (a ``bool`` comparison, 0 or 1 per location) holds. Returns 0, not
    nothing, when none does."""
    return f"sum(max by (fingerprint) ({condition}))"


_EXPIRES = "certpilot_certificate_expires_in_seconds"


def _expiring_within(days_variable: str) -> str:
    return _distinct_certs(
        f"({_EXPIRES} > bool 0) * ({_EXPIRES} <= bool (${days_variable} * {_DAY}))"
    )


def _sloth_burn(window: str) -> str:
    """Burn rate over ``window`` from Sloth's recording rules, as the alert rules compute it."""
    return (
        f"slo:sli_error:ratio_rate{window}{{{_SLO}}}"
        f" / on(sloth_id, sloth_service, sloth_slo) slo:error_budget:ratio{{{_SLO}}}"
    )


def _quantiles(metric: str, by: str, sel: str, legend_suffix: str) -> list[Q]:
    group = f"{by}, le" if by else "le"
    inner = f"sum by ({group}) (rate({metric}_bucket{sel}[$__rate_interval]))"
    return [
        Q(f"histogram_quantile({q}, {inner})", f"p{round(q * 100)}{legend_suffix}")
        for q in (0.5, 0.9, 0.99)
    ]


# --------------------------------------------------------------------------------------------
# The dashboards


def executive() -> dict[str, Any]:
    valid = _preset("valid_ratio")
    objective = valid.objective / 100.0
    b = _Board(
        EXECUTIVE_UID,
        "certpilot / Executive",
        "Is the certificate fleet healthy? Service levels, error budgets, what expires soon and "
        "what is broken now.",
        time_from="now-7d",
        refresh="1m",
        variables=[
            _datasource_variable(),
            _slo_variable(),
            _number_variable(
                "soon_days", "Soon (days)", 7, "Certificates expiring within this many days."
            ),
            _number_variable(
                "warn_days", "Warn (days)", 30, "Certificates expiring within this many days."
            ),
        ],
    )
    b.row("Service levels")
    b.add(
        _stat(),
        title="Valid ratio (SLI)",
        description=(
            f"Share of endpoint probes over the selected time range that found a valid "
            f"certificate with enough lifetime left (SLI `{valid.sli}`, counted in "
            f"`{SLI_METRIC}`). Green at or above the SLO objective of {valid.objective:g} %."
        ),
        targets=[Q(_good_ratio(valid.sli, "$__range", "increase"), "valid ratio", instant=True)],
        unit="percentunit",
        w=6,
        h=5,
        thresholds=_steps("red", (objective, "green")),
    )
    b.add(
        timeseries.Panel().min(0).max(1),
        title="Valid ratio over time",
        description=(
            "The valid-ratio SLI over a short window, against the SLO objective that the "
            "running certpilot evaluates (`certpilot_slo_objective_ratio`)."
        ),
        targets=[
            Q(_good_ratio(valid.sli, "$__rate_interval"), "valid ratio"),
            Q(f'max(certpilot_slo_objective_ratio{{sloth_slo="{valid.name}"}})', "objective"),
        ],
        unit="percentunit",
        w=10,
        h=5,
        thresholds=_steps("red", (objective, "green")),
    )
    b.add(
        _stat(),
        title="SLO alerts firing",
        description=(
            "SLOs whose multi-window multi-burn-rate condition holds now, by severity "
            "(`certpilot_slo_alert_firing`, evaluated in-process by certpilot's SLO engine)."
        ),
        targets=[
            Q(
                f"sum by (severity) (certpilot_slo_alert_firing{{{_SLO}}})",
                "{{severity}}",
                instant=True,
            )
        ],
        unit="none",
        w=8,
        h=5,
        thresholds=_steps("green", (1, "red")),
    )
    b.add(
        _bars(gcommon.BarGaugeDisplayMode.GRADIENT).min(-1).max(1),
        title="Error budget remaining per SLO",
        description=(
            "Share of each SLO's error budget left for its period (30 days by default); "
            "negative when overspent. From certpilot's SLO engine, which reads the stored event "
            "history, so it holds across Prometheus restarts and short retention."
        ),
        targets=[
            Q(
                f"certpilot_slo_error_budget_remaining_ratio{{{_SLO}}}",
                "{{sloth_slo}}",
                instant=True,
            )
        ],
        unit="percentunit",
        w=12,
        h=8,
        thresholds=_steps("red", (0, "orange"), (0.25, "green")),
    )
    b.add(
        timeseries.Panel(),
        title="Error budget remaining over time",
        description="The same budgets over the selected time range; a steep fall is a burn.",
        targets=[Q(f"certpilot_slo_error_budget_remaining_ratio{{{_SLO}}}", "{{sloth_slo}}")],
        unit="percentunit",
        w=12,
        h=8,
        thresholds=_steps("red", (0, "orange"), (0.25, "green")),
    )
    b.row("Certificates")
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Expiring within $soon_days days",
        description=(
            "Distinct certificates (by SHA-256 fingerprint) that are still valid and expire "
            "within $soon_days days, at any location certpilot scans."
        ),
        targets=[Q(_expiring_within("soon_days"), "certificates", instant=True)],
        thresholds=_steps("green", (1, "red")),
        unit="none",
        w=6,
        h=5,
    )
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Expiring within $warn_days days",
        description=(
            "Distinct certificates that are still valid and expire within $warn_days days: the "
            "renewal queue for the coming weeks."
        ),
        targets=[Q(_expiring_within("warn_days"), "certificates", instant=True)],
        thresholds=_steps("green", (1, "orange")),
        unit="none",
        w=6,
        h=5,
    )
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Expired certificates",
        description="Distinct certificates past their notAfter that are still found somewhere.",
        targets=[Q(_distinct_certs(f"{_EXPIRES} <= bool 0"), "certificates", instant=True)],
        thresholds=_steps("green", (1, "red")),
        unit="none",
        w=6,
        h=5,
    )
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Locations in inventory",
        description=(
            "Certificate locations certpilot tracks (endpoints, files, stores), all sources."
        ),
        targets=[Q("sum(certpilot_inventory_items)", "locations", instant=True)],
        thresholds=_steps("blue"),
        unit="none",
        w=6,
        h=5,
    )
    b.row("Incidents")
    b.add(
        _bars(),
        title="Current problems by code",
        description=(
            "Locations showing each problem code now (expired, expiring, untrusted_root, "
            "not_deployed, ...); codes with no location are left out."
        ),
        targets=[Q("sort_desc(certpilot_problems > 0)", "{{code}}", instant=True)],
        unit="none",
        w=10,
        h=9,
        thresholds=_steps("orange", (1, "red")),
    )
    b.add(
        timeseries.Panel()
        .draw_style(gcommon.GraphDrawStyle.BARS)
        .stacking(gcb.StackingConfig().mode(gcommon.StackingMode.NORMAL))
        .fill_opacity(60),
        title="Problems over time by code",
        description="When problems appeared and cleared, stacked by code.",
        targets=[Q("certpilot_problems > 0", "{{code}}")],
        unit="none",
        w=14,
        h=9,
        thresholds=_steps("green"),
    )
    return b.build()


def oncall() -> dict[str, Any]:
    b = _Board(
        ONCALL_UID,
        "certpilot / On-call",
        "What pages and why: SLO burn rates against the alert thresholds, failing endpoints, "
        "renewals in flight, partial deployments and scanner source health.",
        time_from="now-6h",
        refresh="30s",
        variables=[_datasource_variable(), _slo_variable(), *_burn_variables()],
    )
    b.row("Burn rates (what the SLO alerts evaluate)")
    for w in DEFAULT_BURN_WINDOWS:
        var = burn_variable(w)
        threshold_line = f"{w.severity} threshold"
        b.add(
            timeseries.Panel()
            .min(0)
            .override_by_name(
                threshold_line,
                [
                    gdm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
                    gdm.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                    gdm.DynamicConfigValue("custom.fillOpacity", 0),
                ],
            ),
            title=f"Burn rate {w.long} / {w.short} ({w.severity} at ${{{var}}}x)",
            description=(
                f"Error ratio over {w.long} and over {w.short} divided by the error budget "
                f"(Sloth's `slo:sli_error:ratio_rate{w.long}` / `slo:error_budget:ratio`, the "
                f"recording rules the {w.severity} alert reads). The alert fires when both "
                f"lines are above the dashed threshold ${var} (default {w.factor:g})."
            ),
            targets=[
                Q(_sloth_burn(w.long), "{{sloth_slo}} " + w.long),
                Q(_sloth_burn(w.short), "{{sloth_slo}} " + w.short),
                Q(f"vector(${var})", threshold_line),
            ],
            unit="none",
            w=12,
            h=8,
            thresholds=_steps("green", (w.factor, "red")),
        )
    factors = sorted({w.factor for w in DEFAULT_BURN_WINDOWS})
    colours = ("yellow", "orange", "red", "purple")
    b.add(
        _bars(gcommon.BarGaugeDisplayMode.GRADIENT),
        title="Current burn rate per SLO (5m)",
        description=(
            "Sloth's `slo:current_burn_rate:ratio`: how many times faster than sustainable each "
            "SLO spends its budget right now. Colours switch at the alert factors."
        ),
        targets=[Q(f"slo:current_burn_rate:ratio{{{_SLO}}}", "{{sloth_slo}}", instant=True)],
        unit="none",
        w=12,
        h=8,
        thresholds=_steps("green", *zip(factors, colours, strict=False)),
    )
    b.add(
        statetimeline.Panel().merge_values(True),
        title="SLO alert conditions",
        description=(
            "When each SLO's page and ticket conditions held, as certpilot's in-process engine "
            "evaluates them (`certpilot_slo_alert_firing`; 1 = firing)."
        ),
        targets=[Q(f"certpilot_slo_alert_firing{{{_SLO}}}", "{{sloth_slo}} {{severity}}")],
        unit="none",
        w=12,
        h=8,
        thresholds=_steps("green", (1, "red")),
    )
    b.row("Fleet")
    b.add(
        gtable.Panel().with_transformation(
            _organize(["Time", "Value"], {"target": "endpoint", "code": "problem"})
        ),
        title="Failing endpoints",
        description=(
            "TLS endpoints with at least one problem now, one row per endpoint and problem "
            "code (`certpilot_certificate_problem`)."
        ),
        targets=[
            Q(
                'max by (target, code) (certpilot_certificate_problem{source="tls"})',
                instant=True,
                format=gprom.PromQueryFormat.TABLE,
            )
        ],
        unit="none",
        w=12,
        h=10,
        thresholds=_steps("red"),
    )
    b.add(
        gtable.Panel().with_transformation(
            _organize(["Time", "Value", "__name__", "instance", "job"], {"target": "endpoint"})
        ),
        title="Unreachable endpoints",
        description=(
            "Locations whose last probe read no certificate (connection refused, timeout, DNS "
            "or TLS error): `certpilot_probe_success == 0`."
        ),
        targets=[
            Q(
                "certpilot_probe_success == 0",
                instant=True,
                format=gprom.PromQueryFormat.TABLE,
            )
        ],
        unit="none",
        w=12,
        h=10,
        thresholds=_steps("red"),
    )
    terminal = "|".join(TERMINAL_JOB_STATES)
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Renewals in flight",
        description=(
            "Remediation jobs not yet finished (every state but "
            f"{', '.join(TERMINAL_JOB_STATES)}): waiting for approval, issuing, deploying or "
            "verifying."
        ),
        targets=[Q(f'sum(certpilot_jobs{{state!~"{terminal}"}})', "in flight", instant=True)],
        unit="none",
        w=6,
        h=6,
        thresholds=_steps("blue", (10, "orange")),
    )
    b.add(
        _bars(),
        title="Remediation jobs by state",
        description="Every remediation job certpilot knows, by state (`certpilot_jobs`).",
        targets=[Q("certpilot_jobs", "{{state}}", instant=True)],
        unit="none",
        w=6,
        h=6,
        thresholds=_steps("blue"),
    )
    b.add(
        _stat(gcommon.BigValueGraphMode.AREA),
        title="Partial deployments",
        description=(
            "Locations where a renewed certificate exists but the old one is still served "
            "(problem `not_deployed`): the deployment did not reach every target."
        ),
        targets=[Q('sum(certpilot_problems{code="not_deployed"})', "not deployed", instant=True)],
        unit="none",
        w=6,
        h=6,
        thresholds=_steps("green", (1, "red")),
    )
    b.add(
        _stat(),
        title="Expired or expiring now",
        description="Locations with problem `expired` or `expiring` (relative to lifetime).",
        targets=[
            Q(
                'sum by (code) (certpilot_problems{code=~"expired|expiring"})',
                "{{code}}",
                instant=True,
            )
        ],
        unit="none",
        w=6,
        h=6,
        thresholds=_steps("green", (1, "red")),
    )
    b.row("Scanner sources")
    b.add(
        _stat(),
        title="Source up",
        description=(
            "1 when the source's last run completed and read at least one item "
            "(`x509_source_up`, the x509-certificate-exporter pattern)."
        ),
        targets=[Q("x509_source_up", "{{source}}", instant=True)],
        unit="none",
        w=6,
        h=6,
        thresholds=_steps("red", (1, "green")),
    )
    b.add(
        _stat(),
        title="Time since last scan",
        description=(
            "Age of each source's last completed scan run. Orange past "
            f"{SCAN_STALE_SECONDS // 60} minutes, the discovery-coverage SLI's limit."
        ),
        targets=[
            Q("time() - certpilot_scan_last_run_timestamp_seconds", "{{source}}", instant=True)
        ],
        unit="s",
        w=6,
        h=6,
        thresholds=_steps("green", (SCAN_STALE_SECONDS, "orange"), (4 * SCAN_STALE_SECONDS, "red")),
    )
    b.add(
        timeseries.Panel().draw_style(gcommon.GraphDrawStyle.BARS).fill_opacity(60),
        title="Source errors by reason",
        description=(
            "Items each source could not read, per second, by reason "
            "(`x509_source_errors_total`); reasons with no errors are left out."
        ),
        targets=[
            Q(
                "sum by (source, reason) (rate(x509_source_errors_total[$__rate_interval])) > 0",
                "{{source}} {{reason}}",
            )
        ],
        unit="cps",
        w=12,
        h=6,
        thresholds=_steps("green"),
    )
    return b.build()


def debug() -> dict[str, Any]:
    fraction = JudgePolicy().expiring_fraction or 0.0
    b = _Board(
        DEBUG_UID,
        "certpilot / Debug",
        "Per endpoint, issuer and source; scanner and issuance latency; certpilot's SLO engine "
        "next to Prometheus's recording rules.",
        time_from="now-3h",
        refresh="30s",
        variables=[_datasource_variable(), _source_variable(), _slo_variable()],
    )
    b.row("Per endpoint")
    b.add(
        gtable.Panel().with_transformation(
            _organize(
                ["Time", "__name__", "instance", "job", "fingerprint"],
                {"Value": "expires in"},
            )
        ),
        title="Expires in, per location",
        description=(
            "Seconds until each certificate expires (negative once expired), one row per "
            "location (`certpilot_certificate_expires_in_seconds`)."
        ),
        targets=[
            Q(
                f"sort({_EXPIRES}{{{_SOURCE}}})",
                instant=True,
                format=gprom.PromQueryFormat.TABLE,
            )
        ],
        unit="s",
        w=24,
        h=10,
        thresholds=_steps("red", (0, "orange"), (7 * _DAY, "yellow"), (30 * _DAY, "green")),
    )
    b.add(
        _bars(gcommon.BarGaugeDisplayMode.GRADIENT).min(0).max(1),
        title="Lifetime left per location",
        description=(
            "Share of each certificate's validity period still ahead. Orange below the judge's "
            f"expiring fraction ({fraction:.3g}), so 6-day and 90-day certificates compare fairly."
        ),
        targets=[
            Q(
                f"sort(certpilot_certificate_lifetime_left_ratio{{{_SOURCE}}})",
                "{{target}}",
                instant=True,
            )
        ],
        unit="percentunit",
        w=12,
        h=10,
        thresholds=_steps("red", (0.05, "orange"), (fraction, "green")),
    )
    b.add(
        timeseries.Panel(),
        title="Probe duration per endpoint",
        description=(
            "Time the last scan spent on each location (`certpilot_probe_duration_seconds`); a "
            "plateau at the timeout means the endpoint never answered."
        ),
        targets=[Q(f"certpilot_probe_duration_seconds{{{_SOURCE}}}", "{{target}}")],
        unit="s",
        w=12,
        h=10,
        thresholds=_steps("green"),
    )
    b.add(
        statetimeline.Panel().merge_values(True),
        title="Probe success per location",
        description="1 when the last scan read a certificate there (`certpilot_probe_success`).",
        targets=[Q(f"certpilot_probe_success{{{_SOURCE}}}", "{{target}}")],
        unit="none",
        w=24,
        h=10,
        thresholds=_steps("red", (1, "green")),
    )
    b.row("Per issuer")
    b.add(
        _bars(),
        title="Locations per issuer",
        description="Certificate locations by issuer common name.",
        targets=[
            Q(
                f"count by (issuer_CN) (certpilot_certificate_not_after_seconds{{{_SOURCE}}})",
                "{{issuer_CN}}",
                instant=True,
            )
        ],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("blue"),
    )
    b.add(
        _bars(),
        title="Soonest expiry per issuer",
        description="Time left on the issuer's certificate that expires first.",
        targets=[
            Q(
                f"min by (issuer_CN) ({_EXPIRES}{{{_SOURCE}}})",
                "{{issuer_CN}}",
                instant=True,
            )
        ],
        unit="s",
        w=8,
        h=8,
        thresholds=_steps("red", (0, "orange"), (7 * _DAY, "yellow"), (30 * _DAY, "green")),
    )
    b.add(
        _bars(),
        title="Locations with problems per issuer",
        description=(
            "Locations holding a certificate from this issuer that show at least one problem: "
            "a bad intermediate or a misbehaving CA shows up here first."
        ),
        targets=[
            Q(
                f"count by (issuer_CN) (max by (ref, issuer_CN) ({_EXPIRES}{{{_SOURCE}}})"
                " and on(ref) certpilot_certificate_problem)",
                "{{issuer_CN}}",
                instant=True,
            )
        ],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("orange"),
    )
    b.row("Per source")
    b.add(
        timeseries.Panel(),
        title="Inventory items per source",
        description="Locations each source found (`certpilot_inventory_items`).",
        targets=[Q(f"certpilot_inventory_items{{{_SOURCE}}}", "{{source}}")],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel().draw_style(gcommon.GraphDrawStyle.BARS).fill_opacity(60),
        title="Source errors by reason",
        description=(
            "Items each source could not read, by reason, per scan window "
            "(`x509_source_errors_total`, increase over the rate interval)."
        ),
        targets=[
            Q(
                "sum by (source, reason) "
                f"(increase(x509_source_errors_total{{{_SOURCE}}}[$__rate_interval])) > 0",
                "{{source}} {{reason}}",
            )
        ],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="Observations per scan run",
        description=(
            "Locations each scan run of a source produced on average "
            "(`certpilot_scan_observations_total` / `certpilot_scan_runs_total`)."
        ),
        targets=[
            Q(
                "sum by (source) "
                f"(rate(certpilot_scan_observations_total{{{_SOURCE}}}[$__rate_interval]))"
                " / sum by (source) "
                f"(rate(certpilot_scan_runs_total{{{_SOURCE}}}[$__rate_interval]))",
                "{{source}}",
            )
        ],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("green"),
    )
    b.row("Scanner health")
    b.add(
        timeseries.Panel(),
        title="Scan duration quantiles",
        description=(
            "p50 / p90 / p99 wall time of complete scan runs per source, from the "
            "`certpilot_scan_duration_seconds` histogram."
        ),
        targets=_quantiles(
            "certpilot_scan_duration_seconds", "source", f"{{{_SOURCE}}}", " {{source}}"
        ),
        unit="s",
        w=8,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="Scan runs per minute",
        description="Completed scan runs per minute per source (`certpilot_scan_runs_total`).",
        targets=[
            Q(
                "sum by (source) "
                f"(rate(certpilot_scan_runs_total{{{_SOURCE}}}[$__rate_interval])) * 60",
                "{{source}}",
            )
        ],
        unit="none",
        w=8,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="Time since last scan run",
        description=(
            "Age of each source's last completed run "
            "(`certpilot_scan_last_run_timestamp_seconds`); a rising line is a stuck scanner."
        ),
        targets=[
            Q(
                f"time() - certpilot_scan_last_run_timestamp_seconds{{{_SOURCE}}}",
                "{{source}}",
            )
        ],
        unit="s",
        w=8,
        h=8,
        thresholds=_steps("green", (SCAN_STALE_SECONDS, "orange")),
    )
    b.add(
        _stat(),
        title="Inventory reads for metrics",
        description=(
            "1 when the last inventory read behind /metrics succeeded "
            "(`certpilot_inventory_up`); 0 means the store is unreachable."
        ),
        targets=[Q("certpilot_inventory_up", "inventory", instant=True)],
        unit="none",
        w=12,
        h=5,
        thresholds=_steps("red", (1, "green")),
    )
    b.add(
        _stat().text_mode(gcommon.BigValueTextMode.NAME),
        title="certpilot version",
        description="The version of each certpilot process scraped (`certpilot_build_info`).",
        targets=[Q("certpilot_build_info", "{{version}}", instant=True)],
        unit="none",
        w=12,
        h=5,
        thresholds=_steps("blue"),
    )
    b.row("Issuance")
    b.add(
        heatmap.Panel()
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(ghm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(ghm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .y_axis(heatmap.YAxisConfig().unit("s")),
        title="Issuance latency",
        description=(
            "Time from ordering a certificate to verifying it is served everywhere, as a "
            "heatmap of the `certpilot_issuance_latency_seconds` histogram's buckets."
        ),
        targets=[
            Q(
                "sum by (le) "
                "(increase(certpilot_issuance_latency_seconds_bucket[$__rate_interval]))",
                "{{le}}",
                format=gprom.PromQueryFormat.HEATMAP,
            )
        ],
        unit="none",
        w=12,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="Issuance latency quantiles",
        description=(
            "p50 / p90 / p99 issuance latency. Empty (NaN) until certpilot has issued a "
            "certificate: a histogram without observations has no quantiles."
        ),
        targets=_quantiles("certpilot_issuance_latency_seconds", "", "", ""),
        unit="s",
        w=12,
        h=8,
        thresholds=_steps("green", (300, "orange")),
    )
    b.row("SLO engine vs Prometheus")
    b.add(
        timeseries.Panel(),
        title="Error ratio 5m: engine vs Prometheus",
        description=(
            'certpilot\'s in-process error ratio (`certpilot_slo_error_ratio{window="5m"}`) '
            "next to Sloth's recording rule `slo:sli_error:ratio_rate5m`. The lines should "
            "overlap; a gap means the engine and Prometheus see different events."
        ),
        targets=[
            Q(
                f'certpilot_slo_error_ratio{{window="5m",{_SLO}}}',
                "engine {{sloth_slo}}",
            ),
            Q(f"slo:sli_error:ratio_rate5m{{{_SLO}}}", "prometheus {{sloth_slo}}"),
        ],
        unit="percentunit",
        w=12,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="Budget remaining: engine vs Prometheus",
        description=(
            "`certpilot_slo_error_budget_remaining_ratio` (engine, whole stored history) next "
            "to Sloth's `slo:period_error_budget_remaining:ratio` (Prometheus, its retention)."
        ),
        targets=[
            Q(
                f"certpilot_slo_error_budget_remaining_ratio{{{_SLO}}}",
                "engine {{sloth_slo}}",
            ),
            Q(
                f"slo:period_error_budget_remaining:ratio{{{_SLO}}}",
                "prometheus {{sloth_slo}}",
            ),
        ],
        unit="percentunit",
        w=12,
        h=8,
        thresholds=_steps("green"),
    )
    b.add(
        timeseries.Panel(),
        title="SLI events by result",
        description=(
            f"Units of work counted by each SLI, per second, good and bad (`{SLI_METRIC}`)."
        ),
        targets=[
            Q(
                f"sum by (sli, result) (rate({SLI_METRIC}[$__rate_interval]))",
                "{{sli}} {{result}}",
            )
        ],
        unit="eps",
        w=24,
        h=8,
        thresholds=_steps("green"),
    )
    return b.build()


# --------------------------------------------------------------------------------------------
# Public API: build, render, write, check, and the helpers the tests use


def build_dashboards() -> dict[str, dict[str, Any]]:
    """``{uid: classic dashboard JSON}`` for every certpilot dashboard."""
    boards = (executive(), oncall(), debug())
    return {str(d["uid"]): d for d in boards}


def render(dashboard: Mapping[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline (diff-friendly)."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def dashboard_files() -> dict[str, str]:
    """``{file name: content}`` as ``certpilot dashboards generate`` writes them."""
    return {f"{uid}.json": render(d) for uid, d in build_dashboards().items()}


def write_dashboards(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in dashboard_files().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check_dashboards(out_dir: str | Path) -> list[str]:
    """Files under ``out_dir`` that differ from the generator's output, each with why.

    Empty when the committed dashboards are up to date. A ``certpilot-*.json`` there that the
    generator no longer writes counts as drift too (a renamed or removed dashboard).
    """
    out = Path(out_dir)
    expected = dashboard_files()
    problems: list[str] = []
    for name, text in expected.items():
        path = out / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the generator")
    if out.is_dir():
        for path in sorted(out.glob(f"{TAG}-*.json")):
            if path.name not in expected:
                problems.append(f"{path}: not produced by the generator (stale)")
    return problems


def _panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def all_queries(
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[str, str, str]]:
    """``(dashboard uid, panel title, expr)`` for every target of every panel, in order."""
    boards = dashboards if dashboards is not None else build_dashboards()
    out: list[tuple[str, str, str]] = []
    for uid, board in boards.items():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                out.append((uid, str(panel.get("title", "")), str(target["expr"])))
    return out


def variable_queries(
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[str, str, str, str]]:
    """``(dashboard uid, variable name, metric, label)`` for each ``label_values`` variable."""
    boards = dashboards if dashboards is not None else build_dashboards()
    out: list[tuple[str, str, str, str]] = []
    for uid, board in boards.items():
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            m = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", str(var["query"]))
            if m is None:
                raise ValueError(f"{uid}: variable {var['name']}: unsupported query")
            out.append((uid, str(var["name"]), m.group(1), m.group(2)))
    return out


def variable_defaults(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """What Grafana substitutes for each dashboard variable when nobody changed it.

    Custom variables: their current value; constants: their value; multi-value query
    variables set to All: their ``allValue`` (a regex, used with ``=~``).
    """
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        kind = var.get("type")
        name = str(var["name"])
        if kind == "custom":
            values[name] = str(var["current"]["value"])
        elif kind == "constant":
            values[name] = str(var["query"])
        elif kind == "query" and var.get("includeAll"):
            values[name] = str(var.get("allValue") or ".*")
    return values


_VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def expand(expr: str, values: Mapping[str, str]) -> str:
    """Substitute Grafana's ``$name``, ``${name}`` and ``[[name]]`` forms from ``values``.

    Raises ``KeyError`` naming a variable ``values`` lacks, so a test cannot send a query
    with a stray ``$`` to Prometheus.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return values[name]

    return _VAR_RE.sub(sub, expr)


# --- which metrics a query reads ---------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING_RE = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER_RE = re.compile(r'__name__\s*=\s*"((?:\\.|[^"\\])*)"')
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT_RE = re.compile(r"(?<![\w.:$\[])([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> frozenset[str]:
    """Metric names a PromQL expression selects (a small lexer, not a full parser).

    Drops strings, label matchers, range and subquery brackets, grouping label lists and
    ``offset``/``@`` modifiers, then keeps identifiers that are neither keywords nor followed
    by ``(`` (functions and aggregations). ``{__name__="x"}`` selectors count too. Template
    variables must be expanded first (a ``$name`` is never a metric).
    """
    names = set(_NAME_MATCHER_RE.findall(expr))
    s = _STRING_RE.sub('""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = _GROUPING_RE.sub(" ", s)
    s = re.sub(r"\boffset\s+-?[\w.]+", " ", s)
    s = re.sub(r"@\s*[\w.()]+", " ", s)
    for m in _IDENT_RE.finditer(s):
        token = m.group(1)
        if token.lower() in _PROMQL_KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue
        names.add(token)
    return frozenset(names)


class _EmptyInventory:
    """An inventory with nothing in it: enough for a registry to describe its families."""

    def ping(self) -> None:
        return None

    def items(
        self,
        *,
        now: datetime,
        expiring_days: float | None = None,
        problem: ProblemCode | None = None,
        source: str | None = None,
    ) -> list[InventoryItem]:
        return []

    def events(
        self, *, since_id: int = 0, limit: int = 1000, ref: str | None = None
    ) -> list[Event]:
        return []

    def runs(self, limit: int = 20) -> list[ScanRun]:
        return []


_SUFFIXES: Mapping[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_metric_names() -> frozenset[str]:
    """Every series name a fresh :class:`certpilot.obs.Metrics` registry can expose.

    Read from the real registry (not a list kept here), so a metric renamed in ``obs`` breaks
    the dashboards' tests. Families without samples yet (labelled metrics nobody has set)
    count, with the sample names their type implies (``_bucket``, ``_total``, ...).
    """
    # Imported here: building dashboards needs none of this, only the checks do.
    from datetime import UTC

    from prometheus_client import CollectorRegistry

    from certpilot.domain.clock import FixedClock
    from certpilot.obs import Metrics

    registry = CollectorRegistry()
    Metrics(registry, _EmptyInventory(), FixedClock(datetime(2000, 1, 1, tzinfo=UTC)))
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)
