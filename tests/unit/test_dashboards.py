"""The Grafana dashboards: structure, queries that promtool parses, only real metric names, and
no drift between the committed ``dashboards/*.json`` and the generator.

Grafana cannot run here (shared/components.md), so the dashboards are proven the other way:
their JSON shape is checked here, and ``tests/integration/test_dashboards_live.py`` executes every
query against a real Prometheus scraping a real certpilot.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from certpilot.cli import main
from slo import dashboards as dash
from slo.spec import DEFAULT_BURN_WINDOWS
from tests.support.services import require_binary

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "dashboards"
ALERTS = REPO / "alerts"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

# What the tests substitute for Grafana's own variables: any valid duration parses.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return dash.build_dashboards()


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _non_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(board) if p["type"] != "row"]


def _expanded(boards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for uid, title, expr in dash.all_queries(boards):
        values = {**dash.variable_defaults(boards[uid]), **BUILTINS}
        out.append((uid, title, dash.expand(expr, values)))
    return out


def recording_rule_names(directory: Path = ALERTS) -> set[str]:
    """``record:`` names of the committed rule files (``alerts/*.rules.yml``)."""
    names: set[str] = set()
    for path in sorted(directory.glob("*.rules.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            names.update(r["record"] for r in group.get("rules", []) if "record" in r)
    return names


# --- identity and shape ------------------------------------------------------------------------


def test_uids_are_stable_and_unique(boards: dict[str, dict[str, Any]]) -> None:
    assert list(boards) == ["certpilot-executive", "certpilot-oncall", "certpilot-debug"]
    assert tuple(boards) == dash.UIDS
    assert [b["uid"] for b in boards.values()] == list(boards)
    assert len({b["title"] for b in boards.values()}) == 3
    assert set(dash.dashboard_files()) == {f"{uid}.json" for uid in boards}


def test_classic_json_schema_39(boards: dict[str, dict[str, Any]]) -> None:
    for uid, b in boards.items():
        assert b["schemaVersion"] == 39, uid
        assert isinstance(b["panels"], list) and b["panels"], uid
        assert isinstance(b["templating"]["list"], list), uid
        assert "list" in b["annotations"], uid  # Grafana's loader expects annotations.list
        assert "id" not in b or b["id"] is None, uid  # instance-specific: never committed
        assert dash.TAG in b["tags"], uid
        assert b["description"], uid


def test_datasource_variable_is_used_everywhere(boards: dict[str, dict[str, Any]]) -> None:
    for uid, b in boards.items():
        variables = {v["name"]: v for v in b["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus", uid
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"] == DS_REF, (uid, v["name"])
        for p in _non_rows(b):
            assert p["datasource"] == DS_REF, (uid, p["title"])
            assert p["targets"], (uid, p["title"])
            for t in p["targets"]:
                assert t["datasource"] == DS_REF, (uid, p["title"], t["refId"])


def test_panel_ids_unique_and_titles_unique(boards: dict[str, dict[str, Any]]) -> None:
    for uid, b in boards.items():
        panels = _panels(b)
        ids = [p["id"] for p in panels]
        assert all(isinstance(i, int) and i > 0 for i in ids), uid
        assert len(ids) == len(set(ids)), uid
        titles = [p["title"] for p in _non_rows(b)]
        assert len(titles) == len(set(titles)), uid
        for p in panels:
            refs = [t["refId"] for t in p.get("targets", [])]
            assert len(refs) == len(set(refs)), (uid, p["title"])


def test_grid_positions_are_sane_and_do_not_overlap(boards: dict[str, dict[str, Any]]) -> None:
    for uid, b in boards.items():
        boxes = []
        for p in b["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1, (uid, p["title"])
            assert g["x"] + g["w"] <= 24, (uid, p["title"])
            if p["type"] == "row":
                assert (g["x"], g["w"], g["h"]) == (0, 24, 1), (uid, p["title"])
                assert not p["collapsed"] and p["panels"] == [], (uid, p["title"])
            boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
        for i, (ta, ax0, ay0, ax1, ay1) in enumerate(boxes):
            for tb, bx0, by0, bx1, by1 in boxes[i + 1 :]:
                overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
                assert not overlap, f"{uid}: {ta!r} overlaps {tb!r}"
        # Panels read top to bottom in the order they were added.
        ys = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in b["panels"]]
        assert ys == sorted(ys), uid


def test_every_panel_has_description_unit_and_thresholds(
    boards: dict[str, dict[str, Any]],
) -> None:
    for uid, b in boards.items():
        for p in _non_rows(b):
            where = (uid, p["title"])
            assert len(p["description"]) > 20, where
            defaults = p["fieldConfig"]["defaults"]
            assert defaults["unit"], where
            steps = defaults["thresholds"]["steps"]
            assert defaults["thresholds"]["mode"] == "absolute", where
            assert steps[0]["value"] is None and steps[0]["color"], where
            values = [s["value"] for s in steps[1:]]
            assert values == sorted(values), where


def test_burn_rate_panels_draw_threshold_variables_from_the_slo_spec(
    boards: dict[str, dict[str, Any]],
) -> None:
    oncall = boards[dash.ONCALL_UID]
    variables = {v["name"]: v for v in oncall["templating"]["list"]}
    burn_panels = [p for p in _non_rows(oncall) if p["title"].startswith("Burn rate ")]
    assert len(burn_panels) == len(DEFAULT_BURN_WINDOWS)
    assert dash.burn_variable(DEFAULT_BURN_WINDOWS[0]) == "page_burn"
    for w, p in zip(DEFAULT_BURN_WINDOWS, burn_panels, strict=True):
        name = dash.burn_variable(w)
        var = variables[name]
        assert var["type"] in {"custom", "constant"}
        assert float(dash.variable_defaults(oncall)[name]) == w.factor
        exprs = [t["expr"] for t in p["targets"]]
        assert f"vector(${name})" in exprs, p["title"]
        assert any(f"ratio_rate{w.long}{{" in e for e in exprs), p["title"]
        assert any(f"ratio_rate{w.short}{{" in e for e in exprs), p["title"]
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1]["value"] == w.factor
    # The workbook's two paging lines the on-call watches.
    defaults = dash.variable_defaults(oncall)
    assert defaults["page_burn"] == "14.4" and defaults["page_burn_6h"] == "6"


def test_every_template_variable_used_is_defined(boards: dict[str, dict[str, Any]]) -> None:
    assert set(BUILTINS) == set(dash.GRAFANA_BUILTINS)
    for b in boards.values():
        values = {**dash.variable_defaults(b), **BUILTINS}
        for p in _non_rows(b):
            dash.expand(p["title"], values)  # raises KeyError on an unknown variable
            for t in p["targets"]:
                dash.expand(t["expr"], values)


def test_expand_refuses_unknown_variables() -> None:
    assert dash.expand("a{x=~'$v'} ${w} [[v]]", {"v": ".*", "w": "2"}) == "a{x=~'.*'} 2 .*"
    with pytest.raises(KeyError, match="nope"):
        dash.expand("vector($nope)", {})


# --- queries -----------------------------------------------------------------------------------


def test_every_query_parses_with_promtool(
    boards: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    promtool = require_binary("promtool")
    queries = _expanded(boards)
    rules = [
        {"record": f"certpilot_dashboard:query{i}", "expr": expr}
        for i, (_uid, _title, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if res.returncode != 0:
        # Name the panel: promtool only says which rule index failed.
        lines = [f"{i}: {uid} / {title}: {expr}" for i, (uid, title, expr) in enumerate(queries)]
        pytest.fail(f"promtool:\n{res.stdout}{res.stderr}\nqueries:\n" + "\n".join(lines))
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


def test_queries_name_only_exported_or_recorded_metrics(
    boards: dict[str, dict[str, Any]],
) -> None:
    exported = dash.exported_metric_names()
    recorded = recording_rule_names()
    used: dict[str, list[str]] = {}
    for uid, title, expr in _expanded(boards):
        for name in dash.metric_names(expr):
            used.setdefault(name, []).append(f"{uid} / {title}")
    for uid, var, metric, _label in dash.variable_queries(boards):
        for name in dash.metric_names(metric):
            used.setdefault(name, []).append(f"{uid} / variable ${var}")
    assert "certpilot_certificate_expires_in_seconds" in used  # the extractor found something
    unknown = {n: w for n, w in used.items() if n not in exported and n not in recorded}
    if unknown and not recorded and all(n.startswith("slo:") for n in unknown):
        msg = "no recording rules committed in alerts/*.rules.yml yet; " + ", ".join(unknown)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    assert not unknown, "\n".join(f"{n}: used by {', '.join(w)}" for n, w in unknown.items())


def test_exported_names_come_from_the_real_registry() -> None:
    names = dash.exported_metric_names()
    # A counter's sample name, a histogram's series, a labelled gauge nobody has set yet, a
    # family the inventory collector describes, and the x509-certificate-exporter superset.
    for expected in (
        "certpilot_scan_runs_total",
        "certpilot_scan_duration_seconds_bucket",
        "certpilot_slo_burn_rate",
        "certpilot_certificate_expires_in_seconds",
        "x509_cert_not_after",
    ):
        assert expected in names
    assert not any(n.startswith("slo:") for n in names)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (le) (rate(a_bucket{x="b{c}"}[5m]))', {"a_bucket"}),
        ("a / on(sloth_id) group_left(x) b:c:ratio_rate5m", {"a", "b:c:ratio_rate5m"}),
        ("histogram_quantile(0.9, sum without (pod) (rate(h_bucket[1m] offset 5m)))", {"h_bucket"}),
        (
            "(x > bool 0) * (x <= bool (7 * 86400)) and ignoring(a) y unless z or 1e-12",
            {"x", "y", "z"},
        ),
        ('count_values("v", m) + vector(1) + time() + {__name__="n"}', {"m", "n"}),
        ("max_over_time(m[5m:1m]) @ 1609746000", {"m"}),
        ("sum(m) by (le) / inf + nan", {"m"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert dash.metric_names(expr) == names


def test_exprs_use_rate_interval_not_hard_coded_short_windows(
    boards: dict[str, dict[str, Any]],
) -> None:
    # Short hard-coded windows break at other scrape intervals; SLO windows are part of a
    # recording rule's name, never a range here.
    for uid, title, expr in dash.all_queries(boards):
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window.startswith("$__"), (uid, title, expr)


# --- generator, CLI, drift ---------------------------------------------------------------------


def test_committed_dashboards_match_the_generator() -> None:
    drift = dash.check_dashboards(COMMITTED)
    assert not drift, "run `certpilot dashboards generate` and commit:\n" + "\n".join(drift)


def test_generation_is_deterministic() -> None:
    assert dash.dashboard_files() == dash.dashboard_files()


def test_cli_generate_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dash"
    assert main(["dashboards", "generate", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(dash.dashboard_files())
    assert main(["dashboards", "generate", "--out", str(out), "--check"]) == 0
    capsys.readouterr()

    oncall = out / "certpilot-oncall.json"
    oncall.write_text(oncall.read_text().replace("14.4", "14.5"))
    (out / "certpilot-old.json").write_text("{}\n")
    (out / "certpilot-debug.json").unlink()
    assert main(["dashboards", "generate", "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "certpilot-oncall.json: differs" in err
    assert "certpilot-old.json: not produced by the generator" in err
    assert "certpilot-debug.json: missing" in err
    assert "certpilot-executive.json" not in err
    assert not (out / "certpilot-debug.json").exists()  # --check writes nothing
