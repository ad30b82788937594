"""OpenSLO v1 ``SLO``/``SLI`` documents in and out of certpilot's Sloth-shaped SLO specs.

Export (:func:`to_openslo`, :func:`dump_openslo_yaml`) writes, per SLO, an ``SLO`` document
that refers (``spec.indicatorRef``) to its own ``SLI`` document. Import (:func:`from_openslo`,
:func:`load_openslo`) reads multi-document YAML: ``SLO`` documents with an inline
``spec.indicator`` or an ``indicatorRef`` to an ``SLI`` document, and ``DataSource`` documents
to resolve ``metricSourceRef``. Other kinds (``AlertPolicy``, ...) are ignored with a warning.

The mapping:

- ``metadata.name`` is the SLO's ``sloth_id`` (``<service>-<name>``) as a DNS-1123 label;
  ``spec.service`` is the Sloth service. On import the Sloth SLO name is ``metadata.name``
  without a leading ``<service>-``, so the ``sloth_id`` stays ``metadata.name``. When the
  Sloth name does not survive that (upper case, ``_``, over 63 characters) it is kept in the
  annotation ``certpilot.io/sloth-slo``. The SLI document is ``<metadata.name>-sli``.
- Objective: ``objectives: [{target: 0.995}]`` for Sloth's ``objective: 99.5``, converted in
  decimal so ``99.9`` stays ``0.999`` (not ``0.9990000000000001``) and back. Import takes
  ``target`` (0-1) or ``targetPercent`` (0-100); exactly one objective per SLO.
- ``spec.timeWindow: [{duration: 30d, isRolling: true}]`` and ``budgetingMethod:
  Occurrences``. Both are what Sloth computes; anything else is a ConfigError on import.
- Queries. Sloth writes windowed rates with a ``{{.window}}`` placeholder,
  ``sum(rate(X[{{.window}}]))``. OpenSLO queries are usually the counter itself, so when both
  of an SLO's queries have exactly that shape the export writes ``counter: true`` and the
  selector ``X`` as ``metricSource.spec.query`` (type ``Prometheus``). Import wraps such a
  counter selector back into ``sum(rate(X[{{.window}}]))``: an exact round trip. A query of
  any other shape is exported verbatim with its ``{{.window}}`` (Sloth's own OpenSLO dialect
  writes queries that way) and ``counter: false`` (the query is a rate, not a counter); import
  takes any query containing ``{{.window}}`` verbatim. A query without ``{{.window}}`` must be
  a vector selector with ``counter: true``: a gauge cannot be turned into windowed events.
- ``bad``/``total`` maps straight to Sloth's ``error_query``/``total_query``; ``good``/``total``
  becomes ``error_query = total - good``. Export always writes ``bad``. Precomputed ``raw``
  ratios and ``thresholdMetric`` SLIs are rejected.
- certpilot's preset SLIs carry the annotation ``certpilot.io/sli: valid_ratio`` (...) on the
  SLI document; import restores the preset (``sli.plugin.id: certpilot/valid_ratio`` in Sloth
  terms) and requires the queries to be the preset's.
- Alerting. OpenSLO's ``alertPolicies`` cannot say what Sloth does: an ``AlertCondition`` has
  one ``lookbackWindow``, while a Sloth alert fires when a long *and* a short window both burn
  too fast (1h and 5m at 14.4, ...), the short window being what resets the alert quickly. So
  the Sloth ``alerting`` block travels in annotations on the ``SLO`` document:
  ``certpilot.io/alert-name``, ``certpilot.io/alert-label.<k>``,
  ``certpilot.io/alert-annotation.<k>``, ``certpilot.io/{page,ticket}-label.<k>``,
  ``certpilot.io/{page,ticket}-annotation.<k>`` and ``certpilot.io/{page,ticket}-disable``.
  ``alertPolicies`` found on import are ignored with a warning; an SLO without these
  annotations gets certpilot's default burn-rate alerts, named as ``certpilot rules generate``
  names them (``<Service><Name>BudgetBurn``), so the Sloth output names its alerts
  explicitly (a test checks the two names agree).
- ``metadata.labels`` are the SLO's labels (service-level Sloth labels are merged into every
  SLO, as Sloth itself does); a list value must hold exactly one string. ``spec.description``
  is the description. certpilot's ``period_ratio`` extension is the annotation
  ``certpilot.io/period-ratio``, written only where it differs from the default.
- All SLOs of one import must name the same ``spec.service``: a Sloth document has one.

Errors are one line naming the file, the document and the field, e.g. ``slos.yaml: SLO
cert-valid-ratio: spec.timeWindow[0].duration: only rolling 30d is supported (got '7d')``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableSequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from certpilot.domain.errors import ConfigError
from certpilot.domain.sli import SLI_IDS
from certpilot.settings import load_yaml, shown
from slo.spec import (
    PERIOD_RATIOS,
    AlertSpec,
    SLOSet,
    SLOSpec,
    default_period_ratio,
    dump_sloth,
    parse_sloth,
    sli_queries,
    window_seconds,
)

OPENSLO_API = "openslo/v1"
PREFIX = "certpilot.io/"
ANN_SLI = PREFIX + "sli"
ANN_SLOTH_NAME = PREFIX + "sloth-slo"
ANN_PERIOD_RATIO = PREFIX + "period-ratio"
ANN_ALERT_NAME = PREFIX + "alert-name"
# Annotation key prefix -> AlertSpec field holding a label or annotation map.
_ALERT_MAPS: tuple[tuple[str, str], ...] = (
    (PREFIX + "alert-label.", "labels"),
    (PREFIX + "alert-annotation.", "annotations"),
    (PREFIX + "page-label.", "page_labels"),
    (PREFIX + "page-annotation.", "page_annotations"),
    (PREFIX + "ticket-label.", "ticket_labels"),
    (PREFIX + "ticket-annotation.", "ticket_annotations"),
)
_ALERT_FLAGS: tuple[tuple[str, str], ...] = (
    (PREFIX + "page-disable", "page_disable"),
    (PREFIX + "ticket-disable", "ticket_disable"),
)

PERIOD = "30d"
WINDOW = "{{.window}}"
FORMAT_SLOTH = "sloth"
FORMAT_OPENSLO = "openslo"
FORMATS: tuple[str, ...] = (FORMAT_SLOTH, FORMAT_OPENSLO)

# A PromQL vector selector: ``name``, ``name{l="v", ...}`` or ``{l="v", ...}``.
_STR = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_MATCHER = rf"\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*(?:{_STR})\s*"
_MATCHERS = rf"\{{(?:{_MATCHER}(?:,{_MATCHER})*,?\s*)?\}}"
_SELECTOR = re.compile(rf"\s*(?:[A-Za-z_:][A-Za-z0-9_:]*\s*(?:{_MATCHERS})?|{_MATCHERS})\s*")
_WRAPPED = re.compile(r"sum\(rate\((.+)\[\{\{\.window\}\}\]\)\)", re.DOTALL)
_PROM_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DNS_MAX = 63


# --- queries -----------------------------------------------------------------------------------


def wrap_counter(selector: str) -> str:
    """Sloth's event query for a counter selector: ``sum(rate(<selector>[{{.window}}]))``."""
    return f"sum(rate({selector}[{WINDOW}]))"


def counter_selector(query: str) -> str | None:
    """The counter selector ``X`` when ``query`` is exactly ``sum(rate(X[{{.window}}]))``."""
    m = _WRAPPED.fullmatch(query)
    if m and _SELECTOR.fullmatch(m.group(1)) and m.group(1) == m.group(1).strip():
        return m.group(1)
    return None


def _is_call(query: str) -> bool:
    """``f(...)`` whose first parenthesis closes at the very end (strings skipped)."""
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*\(", query)
    if not m:
        return False
    depth, i, quote = 0, m.end() - 1, ""
    while i < len(query):
        c = query[i]
        if quote:
            if c == "\\" and quote != "`":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i == len(query) - 1
        i += 1
    return False


def _minus(total: str, good: str) -> str:
    """Sloth's error query from OpenSLO's good/total form: ``total - good``."""
    return " - ".join(q if _is_call(q) else f"({q})" for q in (total, good))


# --- export ------------------------------------------------------------------------------------


def dns_label(text: str) -> str:
    """``text`` as an RFC 1123 label: lower case, ``[a-z0-9-]``, at most 63 characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:_DNS_MAX].rstrip("-")
    return s or "slo"


def _unique(base: str, suffix: str, used: set[str]) -> str:
    """``base + suffix`` within 63 characters, numbered when taken (two Sloth names can map
    to one DNS label); recorded in ``used``."""
    n = 1
    while True:
        tail = suffix if n == 1 else f"{suffix}-{n}"
        name = base[: _DNS_MAX - len(tail)].rstrip("-") + tail
        if name not in used:
            used.add(name)
            return name
        n += 1


def _target(objective: float) -> float:
    return float(Decimal(repr(objective)) / 100)


def _objective(target: float) -> float:
    return float(Decimal(repr(float(target))) * 100)


def _metric(query: str) -> dict[str, Any]:
    return {"metricSource": {"type": "Prometheus", "spec": {"query": query}}}


def _alert_annotations(a: AlertSpec) -> dict[str, str]:
    out: dict[str, str] = {ANN_ALERT_NAME: a.name}
    for prefix, attr in _ALERT_MAPS:
        values: Mapping[str, str] = getattr(a, attr)
        out.update({prefix + k: v for k, v in values.items()})
    for key, attr in _ALERT_FLAGS:
        if getattr(a, attr):
            out[key] = "true"
    return out


def to_openslo(slo_set: SLOSet) -> list[dict[str, Any]]:
    """OpenSLO v1 documents for ``slo_set``: per SLO an ``SLO`` and the ``SLI`` it refers to.

    :func:`from_openslo` reads them back into an equal :class:`SLOSet` (service-level labels
    come back merged into each SLO's labels, which is what they mean).
    """
    docs: list[dict[str, Any]] = []
    used: set[str] = set()
    used_sli: set[str] = set()
    for s in slo_set.slos:
        name = _unique(dns_label(s.id), "", used)
        sli_name = _unique(name, "-sli", used_sli)
        annotations: dict[str, str] = {}
        if name != s.id:
            annotations[ANN_SLOTH_NAME] = s.name
        if s.period_ratio != default_period_ratio(s.sli):
            annotations[ANN_PERIOD_RATIO] = s.period_ratio
        annotations.update(_alert_annotations(s.alerting))
        metadata: dict[str, Any] = {"name": name, "displayName": s.name}
        if s.labels:
            metadata["labels"] = dict(s.labels)
        metadata["annotations"] = annotations
        spec: dict[str, Any] = {}
        if s.description:
            spec["description"] = s.description
        spec.update(
            {
                "service": s.service,
                "indicatorRef": sli_name,
                "timeWindow": [{"duration": s.period, "isRolling": True}],
                "budgetingMethod": "Occurrences",
                "objectives": [
                    {
                        "displayName": f"{s.objective:g}% of events good over {s.period}",
                        "target": _target(s.objective),
                    }
                ],
            }
        )
        docs.append({"apiVersion": OPENSLO_API, "kind": "SLO", "metadata": metadata, "spec": spec})

        bad, total = counter_selector(s.error_query), counter_selector(s.total_query)
        counter = bad is not None and total is not None
        ratio = {
            "counter": counter,
            "bad": _metric(bad if counter and bad else s.error_query),
            "total": _metric(total if counter and total else s.total_query),
        }
        sli_meta: dict[str, Any] = {"name": sli_name, "displayName": f"{s.name} events"}
        if s.sli:
            sli_meta["annotations"] = {ANN_SLI: s.sli}
        docs.append(
            {
                "apiVersion": OPENSLO_API,
                "kind": "SLI",
                "metadata": sli_meta,
                "spec": {"ratioMetric": ratio},
            }
        )
    return docs


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    )


_Dumper.add_representer(str, _str_presenter)


def _dump(docs: Iterable[Any]) -> str:
    return yaml.dump_all(
        docs,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=10_000,
        allow_unicode=True,
        explicit_start=True,
    )


def dump_openslo_yaml(slo_set: SLOSet) -> str:
    """:func:`to_openslo` as multi-document YAML."""
    return _dump(to_openslo(slo_set))


def dump_sloth_yaml(slo_set: SLOSet) -> str:
    """:func:`slo.spec.dump_sloth` as YAML."""
    return _dump([dump_sloth(slo_set)])


# --- import ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Doc:
    index: int  # 1-based position in the file
    kind: str
    name: str
    body: Mapping[str, Any]
    where: str  # "slos.yaml: SLO cert-valid-ratio"


@dataclass(slots=True)
class _Context:
    source: str
    slis: dict[str, _Doc] = field(default_factory=dict)
    datasources: dict[str, Any] = field(default_factory=dict)
    used_slis: set[str] = field(default_factory=set)


def _err(
    where: str, path: str, expected: str, value: Any = None, *, has_value: bool = True
) -> ConfigError:
    # Document names and annotation keys come from the file and may hold a line break.
    where, path = (t if t.isprintable() else repr(t)[1:-1] for t in (where, path))
    return ConfigError(where, path, expected, shown(value), has_value=has_value)


def _text(value: Any) -> str:
    """A YAML scalar as the string Prometheus will see (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _mapping(value: Any, where: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _err(where, path, "expected a mapping", value)
    return value


def _annotations(meta: Mapping[str, Any], where: str, path: str) -> Mapping[str, Any]:
    value = meta.get("annotations")
    if value is None:
        return {}
    ann = _mapping(value, where, path)
    for k, v in ann.items():
        if not isinstance(k, str) or not isinstance(v, str | bool | int | float):
            raise _err(where, f"{path}[{k}]", "expected a string", v)
    return ann


def _labels(meta: Mapping[str, Any], where: str) -> Mapping[str, str]:
    value = meta.get("labels")
    if value is None:
        return MappingProxyType({})
    raw = _mapping(value, where, "metadata.labels")
    out: dict[str, str] = {}
    for k, v in raw.items():
        path = f"metadata.labels.{k}"
        if not isinstance(k, str) or not _PROM_LABEL.fullmatch(k):
            raise _err(where, "metadata.labels", "label names must be Prometheus label names", k)
        if isinstance(v, list):
            if len(v) != 1:
                raise _err(
                    where, path, "expected a string or a one-item list (a label has one value)", v
                )
            v = v[0]
        if not isinstance(v, str | bool | int | float):
            raise _err(where, path, "expected a string", v)
        out[k] = _text(v)
    return MappingProxyType(out)


def _query(
    ratio: Mapping[str, Any], role: str, counter: Any, ctx: _Context, where: str, path: str
) -> str:
    """Sloth's windowed query for ``ratio[role]`` (see the module docstring)."""
    part = _mapping(ratio.get(role), where, f"{path}.{role}")
    ms = _mapping(part.get("metricSource"), where, f"{path}.{role}.metricSource")
    kind = ms.get("type")
    ref = ms.get("metricSourceRef")
    if kind is None and isinstance(ref, str) and ref in ctx.datasources:
        kind = ctx.datasources[ref]
    if not isinstance(kind, str) or kind.lower() != "prometheus":
        expected = "expected Prometheus"
        if kind is None:
            expected += " (or a metricSourceRef to a Prometheus DataSource in this file)"
        raise _err(where, f"{path}.{role}.metricSource.type", expected, kind)
    spec = _mapping(ms.get("spec"), where, f"{path}.{role}.metricSource.spec")
    q = spec.get("query")
    qpath = f"{path}.{role}.metricSource.spec.query"
    if not isinstance(q, str) or not q.strip():
        raise _err(where, qpath, "expected a PromQL query", q)
    q = q.strip()
    if WINDOW in q:
        return q  # Sloth's dialect: already windowed
    if counter is not True:
        raise _err(
            where,
            f"{path}.counter",
            f"expected true: the {role} query {q!r} has no [{WINDOW}], so it must be a counter "
            "that certpilot takes rate() of",
            counter,
        )
    if not _SELECTOR.fullmatch(q):
        raise _err(
            where,
            qpath,
            f'expected a counter selector such as http_requests_total{{code=~"5.."}} (it '
            f"becomes sum(rate(<selector>[{WINDOW}]))), or a query containing [{WINDOW}]",
            q,
        )
    return wrap_counter(q)


def _indicator(
    ind: Mapping[str, Any], ctx: _Context, where: str, prefix: str
) -> tuple[str, str, str | None]:
    """``(error_query, total_query, preset sli)`` from an SLI body (metadata + spec)."""
    meta = _mapping(ind.get("metadata") or {}, where, f"{prefix}metadata")
    spec = _mapping(ind.get("spec"), where, f"{prefix}spec")
    if "thresholdMetric" in spec:
        raise _err(
            where,
            f"{prefix}spec.thresholdMetric",
            "only ratioMetric SLIs map to Sloth's event SLIs",
            has_value=False,
        )
    path = f"{prefix}spec.ratioMetric"
    ratio = _mapping(spec.get("ratioMetric"), where, path)
    if "raw" in ratio or "rawType" in ratio:
        raise _err(
            where,
            f"{path}.raw",
            "precomputed ratios are not supported: give good/total or bad/total",
            has_value=False,
        )
    if ("good" in ratio) == ("bad" in ratio):
        raise _err(where, path, "expected exactly one of good and bad, with total", list(ratio))
    if "total" not in ratio:
        raise _err(where, f"{path}.total", "expected the total query", has_value=False)
    counter = ratio.get("counter")
    total = _query(ratio, "total", counter, ctx, where, path)
    if "bad" in ratio:
        error = _query(ratio, "bad", counter, ctx, where, path)
    else:
        error = _minus(total, _query(ratio, "good", counter, ctx, where, path))
    ann = _annotations(meta, where, f"{prefix}metadata.annotations")
    _check_certpilot_annotations(
        ann, where, f"{prefix}metadata.annotations", {ANN_SLI}, alerting=False
    )
    preset = ann.get(ANN_SLI)
    if preset is None:
        return error, total, None
    apath = f"{prefix}metadata.annotations[{ANN_SLI}]"
    if preset not in SLI_IDS:
        raise _err(where, apath, "expected one of " + ", ".join(SLI_IDS), preset)
    if (error, total) != sli_queries(str(preset)):
        raise _err(
            where,
            apath,
            f"the queries are not the {preset} preset's: remove the annotation or restore "
            f"bad: {sli_queries(str(preset))[0]!r}",
            has_value=False,
        )
    return error, total, str(preset)


def _alerting(ann: Mapping[str, Any], service: str, name: str, where: str) -> AlertSpec:
    if not any(_is_alert_key(k) for k in ann):
        # A plain OpenSLO SLO: certpilot's default burn-rate alerts, named as the rule
        # generator names them (slo.rules): the Sloth output names its alerts explicitly.
        return AlertSpec(name=f"{_camel(service)}{_camel(name)}BudgetBurn")
    maps: dict[str, dict[str, str]] = {attr: {} for _, attr in _ALERT_MAPS}
    flags: dict[str, bool] = {}
    for key, value in ann.items():
        for prefix, attr in _ALERT_MAPS:
            if key.startswith(prefix) and len(key) > len(prefix):
                maps[attr][key[len(prefix) :]] = _text(value)
        for fkey, attr in _ALERT_FLAGS:
            if key == fkey:
                if _text(value) not in {"true", "false"}:
                    raise _err(
                        where, f"metadata.annotations[{key}]", 'expected "true" or "false"', value
                    )
                flags[attr] = _text(value) == "true"
    return AlertSpec(
        name=_text(ann.get(ANN_ALERT_NAME, "")),
        labels=MappingProxyType(maps["labels"]),
        annotations=MappingProxyType(maps["annotations"]),
        page_labels=MappingProxyType(maps["page_labels"]),
        page_annotations=MappingProxyType(maps["page_annotations"]),
        page_disable=flags.get("page_disable", False),
        ticket_labels=MappingProxyType(maps["ticket_labels"]),
        ticket_annotations=MappingProxyType(maps["ticket_annotations"]),
        ticket_disable=flags.get("ticket_disable", False),
    )


def _is_alert_key(key: str) -> bool:
    return (
        key == ANN_ALERT_NAME
        or any(key.startswith(p) and len(key) > len(p) for p, _ in _ALERT_MAPS)
        or any(key == k for k, _ in _ALERT_FLAGS)
    )


def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", text) if p)


def _check_certpilot_annotations(
    ann: Mapping[str, Any], where: str, path: str, allowed: set[str], *, alerting: bool
) -> None:
    """A ``certpilot.io/`` key this module does not read is a typo: say so."""
    for key in ann:
        if key.startswith(PREFIX) and key not in allowed and not (alerting and _is_alert_key(key)):
            raise _err(where, f"{path}[{key}]", "unknown certpilot annotation", has_value=False)


def _objective_of(spec: Mapping[str, Any], where: str) -> float:
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or len(objectives) != 1:
        raise _err(
            where,
            "spec.objectives",
            "expected exactly one objective (a Sloth SLO has one; split the others into SLOs)",
            objectives,
        )
    obj = _mapping(objectives[0], where, "spec.objectives[0]")
    if ("target" in obj) == ("targetPercent" in obj):
        raise _err(
            where, "spec.objectives[0]", "expected exactly one of target and targetPercent", obj
        )
    key = "target" if "target" in obj else "targetPercent"
    value = obj[key]
    top = 1 if key == "target" else 100
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < top:
        raise _err(where, f"spec.objectives[0].{key}", f"expected a number in (0, {top})", value)
    return _objective(value) if key == "target" else float(value)


def _check_window(spec: Mapping[str, Any], where: str) -> None:
    windows = spec.get("timeWindow")
    if windows is None:
        return  # optional in OpenSLO: Sloth's 30 days
    if not isinstance(windows, list) or len(windows) != 1:
        raise _err(where, "spec.timeWindow", "expected exactly one time window", windows)
    w = _mapping(windows[0], where, "spec.timeWindow[0]")
    duration = w.get("duration")
    try:
        ok = isinstance(duration, str) and window_seconds(duration) == window_seconds(PERIOD)
    except ValueError:
        ok = False
    if not ok:
        raise _err(
            where, "spec.timeWindow[0].duration", f"only rolling {PERIOD} is supported", duration
        )
    if "calendar" in w or w.get("isRolling") is not True:
        raise _err(
            where,
            "spec.timeWindow[0].isRolling",
            f"only rolling {PERIOD} is supported (calendar windows are not)",
            w.get("isRolling"),
        )


def _slo(doc: _Doc, ctx: _Context, warnings: MutableSequence[str]) -> SLOSpec:
    where = doc.where
    meta = _mapping(doc.body.get("metadata"), where, "metadata")
    spec = _mapping(doc.body.get("spec"), where, "spec")
    service = spec.get("service")
    if not isinstance(service, str) or not service:
        raise _err(where, "spec.service", "expected a non-empty string", service)
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise _err(where, "spec.description", "expected a string", description)
    method = spec.get("budgetingMethod")
    if method != "Occurrences":
        raise _err(
            where,
            "spec.budgetingMethod",
            "expected Occurrences (Sloth counts good and bad events)",
            method,
        )
    _check_window(spec, where)
    objective = _objective_of(spec, where)

    if ("indicator" in spec) == ("indicatorRef" in spec):
        raise _err(
            where, "spec", "expected exactly one of indicator and indicatorRef", has_value=False
        )
    if "indicator" in spec:
        ind = _mapping(spec["indicator"], where, "spec.indicator")
        error, total, preset = _indicator(ind, ctx, where, "spec.indicator.")
    else:
        ref = spec["indicatorRef"]
        if not isinstance(ref, str) or ref not in ctx.slis:
            raise _err(where, "spec.indicatorRef", "expected the name of an SLI in this file", ref)
        ctx.used_slis.add(ref)
        sli_doc = ctx.slis[ref]
        error, total, preset = _indicator(sli_doc.body, ctx, sli_doc.where, "")

    ann = _annotations(meta, where, "metadata.annotations")
    _check_certpilot_annotations(
        ann, where, "metadata.annotations", {ANN_SLOTH_NAME, ANN_PERIOD_RATIO}, alerting=True
    )
    name = ann.get(ANN_SLOTH_NAME)
    if name is None:
        name = doc.name.removeprefix(f"{service}-") or doc.name
    elif not isinstance(name, str) or not name:
        raise _err(where, f"metadata.annotations[{ANN_SLOTH_NAME}]", "expected a name", name)
    period_ratio = str(ann.get(ANN_PERIOD_RATIO, default_period_ratio(preset)))
    if period_ratio not in PERIOD_RATIOS:
        raise _err(
            where,
            f"metadata.annotations[{ANN_PERIOD_RATIO}]",
            "expected one of " + ", ".join(PERIOD_RATIOS),
            period_ratio,
        )
    if spec.get("alertPolicies"):
        warnings.append(
            f"{where}: spec.alertPolicies ignored: certpilot alerts on multi-window burn rates "
            f"(annotations {PREFIX}alert-*, page-*, ticket-*)"
        )
    return SLOSpec(
        service=service,
        name=str(name),
        objective=objective,
        error_query=error,
        total_query=total,
        description=description,
        labels=_labels(meta, where),
        alerting=_alerting(ann, service, str(name), where),
        sli=preset,
        period=PERIOD,
        period_ratio=period_ratio,
    )


_IGNORED_KINDS = {
    "AlertPolicy": "alerting comes from certpilot's multi-window burn-rate annotations",
    "AlertCondition": "alerting comes from certpilot's multi-window burn-rate annotations",
    "AlertNotificationTarget": "route alerts with alerts/alertmanager.yml",
}


def from_openslo(
    docs: Iterable[Any], source: str, *, warnings: MutableSequence[str] | None = None
) -> SLOSet:
    """An :class:`SLOSet` from OpenSLO v1 documents (see the module docstring for the mapping).

    ``docs`` are the parsed documents of one file (``None`` for empty ones). Kinds that do not
    map are ignored and reported in ``warnings`` when a list is given. Errors are one-line
    :class:`ConfigError`s naming ``source``, the document and the field.
    """
    warn: MutableSequence[str] = warnings if warnings is not None else []
    ctx = _Context(source)
    slo_docs: list[_Doc] = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(docs, start=1):
        if raw is None:
            continue
        at = f"{source}: document {i}"
        if not isinstance(raw, Mapping):
            raise _err(at, "", "expected an OpenSLO document (a mapping)", raw)
        api = raw.get("apiVersion")
        kind = raw.get("kind")
        if not isinstance(api, str) or not api.startswith("openslo/"):
            warn.append(f"{at}: not an OpenSLO document (apiVersion {api!r}); ignored")
            continue
        if api != OPENSLO_API:
            raise _err(at, "apiVersion", f"only {OPENSLO_API} is supported", api)
        if not isinstance(kind, str):
            raise _err(at, "kind", "expected a string", kind)
        meta = _mapping(raw.get("metadata"), f"{at} ({kind})", "metadata")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise _err(f"{at} ({kind})", "metadata.name", "expected a non-empty string", name)
        doc = _Doc(i, kind, name, raw, f"{source}: {kind} {name}")
        if (kind, name) in seen:
            raise _err(doc.where, "metadata.name", f"duplicate {kind} name", name)
        seen.add((kind, name))
        if kind == "SLO":
            slo_docs.append(doc)
        elif kind == "SLI":
            ctx.slis[name] = doc
        elif kind == "DataSource":
            ctx.datasources[name] = _mapping(raw.get("spec") or {}, doc.where, "spec").get("type")
        elif kind == "Service":
            pass  # spec.service names it; nothing else maps
        else:
            why = _IGNORED_KINDS.get(kind, "certpilot does not use this kind")
            warn.append(f"{doc.where}: ignored ({why})")
    if not slo_docs:
        raise _err(source, "", f"no {OPENSLO_API} SLO document", has_value=False)
    slos = [_slo(d, ctx, warn) for d in slo_docs]
    for name in ctx.slis:
        if name not in ctx.used_slis:
            warn.append(f"{ctx.slis[name].where}: no SLO refers to it; ignored")
    services = {s.service for s in slos}
    if len(services) > 1:
        other = next(d for d, s in zip(slo_docs, slos, strict=True) if s.service != slos[0].service)
        raise _err(
            other.where,
            "spec.service",
            f"expected {slos[0].service!r} like the first SLO: a Sloth document has one "
            "service (split the file per service)",
            next(s.service for s in slos if s.service != slos[0].service),
        )
    ids: dict[str, _Doc] = {}
    for d, s in zip(slo_docs, slos, strict=True):
        if s.id in ids:
            raise _err(d.where, "metadata.name", f"same SLO as {ids[s.id].where}", s.id)
        ids[s.id] = d
    return SLOSet(slos[0].service, tuple(slos))


def _read_docs(path: str | Path) -> list[Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), "", f"cannot read: {e.strerror}", has_value=False) from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), "", "cannot read: not UTF-8", has_value=False) from e
    return list(load_yaml(text, str(p), yaml.SafeLoader, all_documents=True))


def load_openslo(path: str | Path, *, warnings: MutableSequence[str] | None = None) -> SLOSet:
    """:func:`from_openslo` on a (multi-document) YAML file."""
    return from_openslo(_read_docs(path), str(path), warnings=warnings)


# --- format detection and conversion -------------------------------------------------------------


def detect_format(docs: Iterable[Any], source: str) -> str:
    """``"sloth"`` for a Sloth ``prometheus/v1`` document, ``"openslo"`` for OpenSLO ones."""
    present = [d for d in docs if d is not None]
    if any(isinstance(d, Mapping) and d.get("version") == "prometheus/v1" for d in present):
        if len(present) != 1:
            raise ConfigError(
                source, "", "expected one Sloth prometheus/v1 document per file", has_value=False
            )
        return FORMAT_SLOTH
    if any(
        isinstance(d, Mapping) and str(d.get("apiVersion", "")).startswith("openslo/")
        for d in present
    ):
        return FORMAT_OPENSLO
    raise ConfigError(
        source,
        "",
        "expected a Sloth prometheus/v1 document or OpenSLO openslo/v1 documents",
        has_value=False,
    )


@dataclass(frozen=True, slots=True)
class Conversion:
    source_format: str
    target_format: str
    slo_set: SLOSet
    text: str  # YAML in the target format
    warnings: tuple[str, ...]


def load_any(path: str | Path) -> tuple[str, SLOSet, list[str]]:
    """``(format, slo_set, warnings)`` for a Sloth or OpenSLO file."""
    docs = _read_docs(path)
    fmt = detect_format(docs, str(path))
    warnings: list[str] = []
    if fmt == FORMAT_SLOTH:
        return fmt, parse_sloth(next(d for d in docs if d is not None), str(path)), warnings
    return fmt, from_openslo(docs, str(path), warnings=warnings), warnings


def convert_file(path: str | Path, to: str | None = None) -> Conversion:
    """Read a Sloth or OpenSLO file and write it in ``to`` (default: the other format)."""
    fmt, slo_set, warnings = load_any(path)
    target = to or (FORMAT_OPENSLO if fmt == FORMAT_SLOTH else FORMAT_SLOTH)
    if target not in FORMATS:
        raise ConfigError("--to", "", "expected one of " + ", ".join(FORMATS), target)
    text = dump_openslo_yaml(slo_set) if target == FORMAT_OPENSLO else dump_sloth_yaml(slo_set)
    return Conversion(fmt, target, slo_set, text, tuple(warnings))


__all__ = [
    "FORMATS",
    "OPENSLO_API",
    "Conversion",
    "convert_file",
    "counter_selector",
    "detect_format",
    "dns_label",
    "dump_openslo_yaml",
    "dump_sloth_yaml",
    "from_openslo",
    "load_any",
    "load_openslo",
    "to_openslo",
    "wrap_counter",
]
