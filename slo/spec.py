"""SLO specs in Sloth's ``prometheus/v1`` shape, and certpilot's certificate SLI presets.

This module is the shared contract of the ``slo`` room: the engine evaluates these specs, the
rule generator writes Prometheus rules from them, the dashboards read them. A Sloth user's file
loads unchanged (``sli.events.error_query/total_query`` with ``{{.window}}``); certpilot's
presets are Sloth *plugin* SLIs (``sli.plugin.id: certpilot/<sli>``) that expand into event
queries over ``certpilot_sli_events_total``.

SLI event schema (what the scanner, remediator and CT watcher emit, one event per unit of work):

- ``valid_ratio``: one probe of one endpoint; good when it serves a valid certificate with at
  least the policy's share of lifetime left (no problem code).
- ``renewal_success``: one renewal attempt; good when it ended ``done``.
- ``compromise_replacement``: one compromised certificate, counted when replaced or when overdue;
  good when replaced and deployed within T (default 24 h).
- ``issuance_latency``: one issuance that was deployed; good when order-to-verified took at most
  X seconds (default 300).
- ``complete_deployments``: one deployment; good when verified on every target.
- ``discovery_coverage``: one known location (endpoint or stored certificate) at each evaluation
  tick; good when it was read within the last N minutes (default 15).
- ``expected_issuance``: one certificate for a watched name seen in Certificate Transparency,
  once decided; good when it was expected (an allowed issuer, and a key or serial the inventory
  knows or the remediator ordered), bad for an ``unexpected_issuance``.

Events are counted in ``certpilot_sli_events_total{sli, result="good"|"bad"}`` and stored in
the inventory's event log, so Prometheus and the in-process engine read the same stream.

The period ratio (``slo:sli_error:ratio_rate30d``) comes in two forms,
``SLOSpec.period_ratio``:

- ``"optimized"``, Sloth's default: the mean over the period of the recorded short-window ratio,
  ``sum_over_time(slo:sli_error:ratio_rate5m[30d]) / count_over_time(...)``. Cheap, but one
  event-free 5-minute window (``0/0``, NaN) makes it NaN for the whole period.
- ``"events"``, Sloth's non-optimised rule (``sloth generate --disable-optimized-rules``): the
  SLI's own queries over the whole period, ``(error_query[30d]) / (total_query[30d])``. A number
  as soon as the period holds an event: what low-traffic SLIs need (a few events a day). It
  reads 30 days of raw samples at every evaluation, cheap for certpilot's two series per SLI.

``valid_ratio`` and ``discovery_coverage`` see events every scan and keep Sloth's default; the
four low-traffic SLIs (renewals, compromise replacements, issuances, deployments) use
``"events"``. In a Sloth document the choice is a certpilot extension key on the SLO,
``period_ratio: events``; without it, a certpilot plugin SLI gets its preset's choice and an
``events`` SLI Sloth's ``"optimized"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from certpilot.domain.errors import ConfigError
from certpilot.domain.sli import SLI_IDS
from certpilot.settings import load_yaml, shown

SLI_METRIC = "certpilot_sli_events_total"


# Sloth records the SLI error ratio over these windows (plus the SLO period).
SLI_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

_EMPTY: Mapping[str, str] = MappingProxyType({})

# How ``slo:sli_error:ratio_rate<period>`` is computed (see the module docstring).
PERIOD_RATIO_OPTIMIZED = "optimized"
PERIOD_RATIO_EVENTS = "events"
PERIOD_RATIOS: tuple[str, ...] = (PERIOD_RATIO_OPTIMIZED, PERIOD_RATIO_EVENTS)


def window_seconds(w: str) -> int:
    """``5m`` -> 300; ``30d`` -> 2592000. Prometheus duration units s, m, h, d, w."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if len(w) < 2 or w[-1] not in units or not w[:-1].isdigit():
        raise ValueError(f"not a Prometheus duration: {w!r}")
    return int(w[:-1]) * units[w[-1]]


def window_name(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and unit != "w":
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """One multi-window burn-rate alert condition (SRE workbook, chapter 5, table 5-8).

    Fires when the error ratio over *both* ``long`` and ``short`` exceeds
    ``factor * (1 - objective)``.
    """

    severity: str  # "page" or "ticket"
    long: str  # e.g. "1h"
    short: str  # e.g. "5m"
    factor: float  # burn-rate factor, e.g. 14.4


# The SRE workbook's defaults for a 30-day period: 2 % of the budget in 1 h, 5 % in 6 h (page),
# 10 % in 1 d, 10 % in 3 d (ticket).
DEFAULT_BURN_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("page", "1h", "5m", 14.4),
    BurnWindow("page", "6h", "30m", 6.0),
    BurnWindow("ticket", "1d", "2h", 3.0),
    BurnWindow("ticket", "3d", "6h", 1.0),
)


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """Sloth's ``alerting`` block."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    page_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    page_annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    page_disable: bool = False
    ticket_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ticket_annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    ticket_disable: bool = False


@dataclass(frozen=True, slots=True)
class SLOSpec:
    """One SLO. ``objective`` is a percentage as Sloth writes it (99.9)."""

    service: str
    name: str
    objective: float
    error_query: str  # PromQL with the literal ``{{.window}}`` placeholder
    total_query: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    alerting: AlertSpec = field(default_factory=AlertSpec)
    sli: str | None = None  # a certpilot SLI id when this SLO is a preset
    period: str = "30d"
    burn_windows: tuple[BurnWindow, ...] = DEFAULT_BURN_WINDOWS
    # "optimized" (Sloth's mean of the short-window ratio) or "events" (the queries over the
    # whole period, Sloth's --disable-optimized-rules form): see the module docstring.
    period_ratio: str = PERIOD_RATIO_OPTIMIZED

    @property
    def id(self) -> str:
        """Sloth's ``sloth_id`` label: ``<service>-<name>``."""
        return f"{self.service}-{self.name}"

    @property
    def objective_ratio(self) -> float:
        return self.objective / 100.0

    @property
    def error_budget_ratio(self) -> float:
        return 1.0 - self.objective / 100.0

    def error_expr(self, window: str) -> str:
        return self.error_query.replace("{{.window}}", window)

    def total_expr(self, window: str) -> str:
        return self.total_query.replace("{{.window}}", window)


@dataclass(frozen=True, slots=True)
class SLOSet:
    """A Sloth ``prometheus/v1`` document: one service, several SLOs."""

    service: str
    slos: tuple[SLOSpec, ...]
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Preset:
    sli: str
    name: str
    objective: float
    description: str
    runbook: str
    period_ratio: str = PERIOD_RATIO_OPTIMIZED


# Objectives are starting points for a typical fleet; a spec file overrides any of them.
PRESETS: tuple[Preset, ...] = (
    Preset(
        "valid_ratio",
        "cert-valid-ratio",
        99.5,
        "Endpoints serve a valid certificate with enough lifetime left.",
        "valid-ratio",
    ),
    Preset(
        "renewal_success",
        "cert-renewal-success",
        99.0,
        "Certificate renewals succeed.",
        "renewal-success",
        PERIOD_RATIO_EVENTS,  # a few events a day: most 5-minute windows are empty
    ),
    Preset(
        "compromise_replacement",
        "cert-compromise-replacement",
        99.0,
        "Compromised certificates are replaced and deployed within 24 hours.",
        "compromise-replacement",
        PERIOD_RATIO_EVENTS,  # a few events a day: most 5-minute windows are empty
    ),
    Preset(
        "issuance_latency",
        "cert-issuance-latency",
        99.0,
        "Issued certificates are deployed and verified within 5 minutes of the order.",
        "issuance-latency",
        PERIOD_RATIO_EVENTS,  # a few events a day: most 5-minute windows are empty
    ),
    Preset(
        "complete_deployments",
        "cert-complete-deployments",
        99.5,
        "Deployments reach every target they should.",
        "complete-deployments",
        PERIOD_RATIO_EVENTS,  # a few events a day: most 5-minute windows are empty
    ),
    Preset(
        "discovery_coverage",
        "cert-discovery-coverage",
        99.0,
        "Known endpoints are probed at least every 15 minutes.",
        "discovery-coverage",
    ),
    Preset(
        "expected_issuance",
        "cert-expected-issuance",
        99.0,
        "Certificates issued for our names (seen in CT) were ordered by us.",
        "expected-issuance",
        PERIOD_RATIO_EVENTS,  # a few certificates a day: most 5-minute windows are empty
    ),
)

RUNBOOK_BASE = "https://github.com/certpilot/certpilot/blob/main/docs/runbooks.md#"


def default_period_ratio(sli: str | None) -> str:
    """The period ratio an SLO gets when its spec does not say: its preset's for a certpilot
    SLI, Sloth's ``"optimized"`` otherwise."""
    for p in PRESETS:
        if p.sli == sli:
            return p.period_ratio
    return PERIOD_RATIO_OPTIMIZED


def sli_queries(sli: str) -> tuple[str, str]:
    """Sloth event queries for a certpilot SLI."""
    if sli not in SLI_IDS:
        raise ValueError(f"unknown certpilot SLI {sli!r}")
    bad = f'sum(rate({SLI_METRIC}{{sli="{sli}",result="bad"}}[{{{{.window}}}}]))'
    total = f'sum(rate({SLI_METRIC}{{sli="{sli}"}}[{{{{.window}}}}]))'
    return bad, total


def preset_slo(
    preset: Preset, service: str = "certpilot", objective: float | None = None
) -> SLOSpec:
    err, total = sli_queries(preset.sli)
    camel = "".join(p.capitalize() for p in preset.sli.split("_"))
    return SLOSpec(
        service=service,
        name=preset.name,
        objective=objective if objective is not None else preset.objective,
        error_query=err,
        total_query=total,
        description=preset.description,
        sli=preset.sli,
        period_ratio=preset.period_ratio,
        alerting=AlertSpec(
            name=f"Certpilot{camel}BudgetBurn",
            labels=MappingProxyType({"category": "certificates"}),
            annotations=MappingProxyType({"runbook_url": RUNBOOK_BASE + preset.runbook}),
            page_labels=MappingProxyType({"severity": "page"}),
            ticket_labels=MappingProxyType({"severity": "ticket"}),
        ),
    )


def default_slos(service: str = "certpilot") -> SLOSet:
    """The six certificate SLOs with their default objectives."""
    return SLOSet(service, tuple(preset_slo(p, service) for p in PRESETS))


# --- Sloth prometheus/v1 documents -------------------------------------------------------------

PLUGIN_PREFIX = "certpilot/"


def _error(source: str, where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(source, where, expected, shown(value))


def _str_map(value: Any, source: str, where: str) -> Mapping[str, str]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _error(source, where, "expected a mapping of strings", value)
    return MappingProxyType({k: str(v) for k, v in value.items()})


def _alert_block(
    value: Any, source: str, where: str
) -> tuple[Mapping[str, str], Mapping[str, str], bool]:
    if value is None:
        return _EMPTY, _EMPTY, False
    if not isinstance(value, Mapping):
        raise _error(source, where, "expected a mapping", value)
    return (
        _str_map(value.get("labels"), source, f"{where}.labels"),
        _str_map(value.get("annotations"), source, f"{where}.annotations"),
        bool(value.get("disable", False)),
    )


def parse_sloth(data: Any, source: str) -> SLOSet:
    """Validate a Sloth ``prometheus/v1`` document. Errors name file and field."""
    if not isinstance(data, Mapping):
        raise _error(source, "", "expected a Sloth prometheus/v1 document (a mapping)", data)
    if data.get("version") != "prometheus/v1":
        raise _error(source, "version", 'expected "prometheus/v1"', data.get("version"))
    service = data.get("service")
    if not isinstance(service, str) or not service:
        raise _error(source, "service", "expected a non-empty string", service)
    labels = _str_map(data.get("labels"), source, "labels")
    raw = data.get("slos")
    if not isinstance(raw, list) or not raw:
        raise _error(source, "slos", "expected a non-empty list", raw)
    out: list[SLOSpec] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"slos[{i}]"
        if not isinstance(item, Mapping):
            raise _error(source, where, "expected a mapping", item)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise _error(source, f"{where}.name", "expected a non-empty string", name)
        if name in names:
            raise _error(source, f"{where}.name", "duplicate SLO name", name)
        names.add(name)
        objective = item.get("objective")
        if (
            isinstance(objective, bool)
            or not isinstance(objective, int | float)
            or not 0 < objective < 100
        ):
            raise _error(
                source, f"{where}.objective", "expected a percentage in (0, 100)", objective
            )
        sli = item.get("sli")
        if not isinstance(sli, Mapping):
            raise _error(source, f"{where}.sli", "expected events or plugin", sli)
        preset_sli: str | None = None
        err: str
        total: str
        if "events" in sli:
            ev = sli["events"] or {}
            if not isinstance(ev, Mapping):
                raise _error(source, f"{where}.sli.events", "expected a mapping", ev)
            queries: list[str] = []
            for key in ("error_query", "total_query"):
                q = ev.get(key)
                if not isinstance(q, str) or "{{.window}}" not in q:
                    raise _error(
                        source,
                        f"{where}.sli.events.{key}",
                        "expected a PromQL query containing {{.window}}",
                        q,
                    )
                queries.append(q)
            err, total = queries
        elif "plugin" in sli:
            plugin = sli["plugin"] or {}
            if not isinstance(plugin, Mapping):
                raise _error(source, f"{where}.sli.plugin", "expected a mapping", plugin)
            pid = plugin.get("id")
            if (
                not isinstance(pid, str)
                or not pid.startswith(PLUGIN_PREFIX)
                or pid[len(PLUGIN_PREFIX) :] not in SLI_IDS
            ):
                known = ", ".join(PLUGIN_PREFIX + s for s in SLI_IDS)
                raise _error(source, f"{where}.sli.plugin.id", f"expected one of {known}", pid)
            preset_sli = pid[len(PLUGIN_PREFIX) :]
            err, total = sli_queries(preset_sli)
        else:
            raise _error(source, f"{where}.sli", "expected events or plugin", dict(sli))
        al = item.get("alerting") or {}
        if not isinstance(al, Mapping):
            raise _error(source, f"{where}.alerting", "expected a mapping", al)
        pl, pa, pd = _alert_block(al.get("page_alert"), source, f"{where}.alerting.page_alert")
        tl, ta, td = _alert_block(al.get("ticket_alert"), source, f"{where}.alerting.ticket_alert")
        alert_name = al.get("name", "")
        if not isinstance(alert_name, str):
            raise _error(source, f"{where}.alerting.name", "expected a string", alert_name)
        # certpilot extension (Sloth has no such key): how the period ratio is computed.
        period_ratio = item.get("period_ratio", default_period_ratio(preset_sli))
        if not isinstance(period_ratio, str) or period_ratio not in PERIOD_RATIOS:
            raise _error(
                source,
                f"{where}.period_ratio",
                "expected one of " + ", ".join(PERIOD_RATIOS),
                period_ratio,
            )
        out.append(
            SLOSpec(
                service=service,
                name=name,
                objective=float(objective),
                error_query=err,
                total_query=total,
                description=str(item.get("description", "")),
                labels=MappingProxyType(
                    {**labels, **_str_map(item.get("labels"), source, f"{where}.labels")}
                ),
                alerting=AlertSpec(
                    alert_name,
                    _str_map(al.get("labels"), source, f"{where}.alerting.labels"),
                    _str_map(al.get("annotations"), source, f"{where}.alerting.annotations"),
                    pl,
                    pa,
                    pd,
                    tl,
                    ta,
                    td,
                ),
                sli=preset_sli,
                period_ratio=period_ratio,
            )
        )
    return SLOSet(service, tuple(out), labels)


def load_sloth(path: str | Path) -> SLOSet:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), "", f"cannot read: {e.strerror}", has_value=False) from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), "", "cannot read: not UTF-8", has_value=False) from e
    return parse_sloth(load_yaml(text, str(p), yaml.SafeLoader), str(p))


def dump_sloth(slo_set: SLOSet) -> dict[str, Any]:
    """The Sloth document for ``slo_set`` (round-trips through :func:`parse_sloth`)."""

    def block(labels: Mapping[str, str], ann: Mapping[str, str], disable: bool) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if labels:
            d["labels"] = dict(labels)
        if ann:
            d["annotations"] = dict(ann)
        if disable:
            d["disable"] = True
        return d

    slos: list[dict[str, Any]] = []
    for s in slo_set.slos:
        own = {k: v for k, v in s.labels.items() if slo_set.labels.get(k) != v}
        sli: dict[str, Any] = (
            {"plugin": {"id": PLUGIN_PREFIX + s.sli}}
            if s.sli
            else {"events": {"error_query": s.error_query, "total_query": s.total_query}}
        )
        doc: dict[str, Any] = {"name": s.name, "objective": s.objective}
        if s.description:
            doc["description"] = s.description
        if own:
            doc["labels"] = own
        doc["sli"] = sli
        if s.period_ratio != default_period_ratio(s.sli):
            doc["period_ratio"] = s.period_ratio
        a = s.alerting
        doc["alerting"] = {
            "name": a.name,
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "page_alert": block(a.page_labels, a.page_annotations, a.page_disable),
            "ticket_alert": block(a.ticket_labels, a.ticket_annotations, a.ticket_disable),
        }
        slos.append(doc)
    out: dict[str, Any] = {"version": "prometheus/v1", "service": slo_set.service}
    if slo_set.labels:
        out["labels"] = dict(slo_set.labels)
    out["slos"] = slos
    return out
