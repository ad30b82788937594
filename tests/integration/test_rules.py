"""The committed alerts/ checked by the real tools: promtool, amtool, a running Alertmanager.

- ``promtool check rules`` on every generated rule file;
- ``promtool test rules`` on the hand-written unit tests in ``alerts/tests/`` (alerts that must
  fire and must stay quiet);
- the generated recording rules and burn-rate alerts, evaluated by Prometheus' own engine
  (promtool) on synthetic series, agree with ``slo.engine`` to 1e-12;
- ``amtool check-config`` and ``amtool config routes test`` on ``alerts/alertmanager.yml``;
- a real Alertmanager with the generated routing delivers pages and tickets to Slack and to the
  webhook (bearer token), and a page inhibits the ticket of the same SLO.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from slo import rules
from slo.alertmanager import alertmanager_config
from slo.engine import CounterSeries, SLOStatus, evaluate
from slo.spec import SLI_METRIC, SLOSpec, default_slos
from tests.support.services import find_binary, free_port, require_binary

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
AM_CONFIG = ALERTS / "alertmanager.yml"


def _run(
    *cmd: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_binary("amtool")


# --- promtool ---------------------------------------------------------------------------------


def test_generated_files_are_committed() -> None:
    names = {p.name for p in ALERTS.iterdir()}
    assert set(rules.render(default_slos())) <= names
    assert UNIT_TESTS, "alerts/tests/*.yml: the hand-written promtool tests are missing"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    res = _run(promtool, "check", "rules", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, path: Path) -> None:
    # Relative rule_files resolve against the test file's directory.
    res = _run(promtool, "test", "rules", path.name, cwd=path.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_cover_every_alert() -> None:
    """Each generated alert appears in a hand-written promtool test (firing or quiet)."""
    tested: set[str] = set()
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for t in doc["tests"]:
            tested.update(a["alertname"] for a in t.get("alert_rule_test", []))
    symptoms = {r["alert"] for r in rules.symptom_rules()[0]["rules"]}
    assert symptoms <= tested, symptoms - tested
    assert "CertpilotValidRatioBudgetBurn" in tested


# --- the generated rules agree with the engine ------------------------------------------------

VALID = next(s for s in default_slos().slos if s.sli == "valid_ratio")
RENEWAL = next(s for s in default_slos().slos if s.sli == "renewal_success")
STEP_S = 15
EVAL_S = 60


@dataclass(frozen=True)
class Check:
    name: str
    expr: str
    at_s: int
    expected: float | None  # None: no sample or NaN (the engine's "no number")


def _check_doc(c: Check) -> dict[str, Any]:
    """A promtool expression test that yields ``{} 1`` exactly when ``c`` holds.

    promtool 2.42 compares floats exactly, so closeness is computed in PromQL.
    """
    e = c.expr
    if c.expected is None:
        expr, want = f"count(({e}) == ({e})) or vector(0)", 0  # NaN != NaN
    elif math.isinf(c.expected):
        expr, want = f"sum(({e}) == bool {'+' if c.expected > 0 else '-'}Inf)", 1
    else:
        expr, want = f"sum(abs(({e}) - ({c.expected!r})) < bool 1e-12)", 1
    return {
        "expr": expr,
        "eval_time": f"{c.at_s}s",
        "exp_samples": [{"labels": "{}", "value": want}],
    }


def _synthetic(rng: random.Random, n: int) -> list[tuple[float | None, float | None]]:
    """(bad, good) counters every 15 s: steady traffic, a 20-minute outage burst, a process
    restart (both counters reset), lost scrapes and a scrape gap."""
    rows: list[tuple[float | None, float | None]] = []
    bad, good = 3.0, 500.0
    for i in range(n):
        if i == 700:  # restart
            bad, good = 0.0, rng.uniform(0, 3)
        burst = 480 <= i < 560  # 2h .. 2h20m
        bad += rng.choice([10, 14, 20]) if burst else rng.choice([0, 0, 0, 0, 1])
        good += rng.choice([8, 12, 20]) if burst else rng.choice([15, 20, 25])
        lost = 600 <= i < 616 or rng.random() < 0.03
        rows.append((None, None) if lost else (bad, good))
    return rows


def _committed_groups(slo: SLOSpec) -> list[dict[str, Any]]:
    """The SLO's three groups, as committed (identical to the generator's: see the drift test);
    only them, so that promtool evaluates 17 rules per tick instead of 102."""
    committed = yaml.safe_load((ALERTS / rules.SLO_RULES_FILE).read_text(encoding="utf-8"))[
        "groups"
    ]
    groups = [g for g in committed if g["name"].endswith(f"-{slo.id}")]
    assert [g["name"] for g in groups] == [
        f"sloth-slo-sli-recordings-{slo.id}",
        f"sloth-slo-meta-recordings-{slo.id}",
        f"sloth-slo-alerts-{slo.id}",
    ]
    return groups


def _engine_checks(
    slo: SLOSpec, series: CounterSeries, ats: Sequence[int]
) -> tuple[list[Check], set[str], list[SLOStatus]]:
    """Checks of every engine number at each instant against the generated series:
    slo:sli_error:ratio_rate5m/1h/6h and their burn rates, slo:current_burn_rate:ratio, the
    period ratio, the period burn rate and budget remaining, and whether the page and the ticket
    burn-rate expressions fire. Also returns the severities that fired and the statuses."""
    flt = rules.prom_filter(rules.id_labels(slo))
    checks: list[Check] = []
    fired: set[str] = set()
    statuses: list[SLOStatus] = []
    for at_s in ats:
        st = evaluate(slo, series, datetime.fromtimestamp(at_s, UTC), eval_interval=EVAL_S)
        statuses.append(st)
        for w in ("5m", "1h", "6h"):
            res = st.window(w)
            assert res is not None
            ratio = f"slo:sli_error:ratio_rate{w}{flt}"
            checks.append(Check(f"ratio {w} @{at_s}", ratio, at_s, res.error_ratio))
            checks.append(
                Check(
                    f"burn {w} @{at_s}",
                    f"{ratio} / on(sloth_id, sloth_slo, sloth_service) group_left "
                    f"slo:error_budget:ratio{flt}",
                    at_s,
                    res.burn_rate,
                )
            )
        five = st.window("5m")
        assert five is not None
        checks += [
            Check(
                f"current burn @{at_s}",
                f"slo:current_burn_rate:ratio{flt}",
                at_s,
                five.burn_rate,
            ),
            Check(
                f"period ratio ({slo.period_ratio}) @{at_s}",
                f"slo:sli_error:ratio_rate{slo.period}{flt}",
                at_s,
                st.period_error_ratio,
            ),
            Check(
                f"period burn @{at_s}",
                f"slo:period_burn_rate:ratio{flt}",
                at_s,
                st.period_burn_rate,
            ),
            Check(
                f"budget remaining @{at_s}",
                f"slo:period_error_budget_remaining:ratio{flt}",
                at_s,
                st.budget_remaining_ratio,
            ),
        ]
        for severity in rules.SEVERITIES:
            firing = any(a.firing for a in st.alerts if a.severity == severity)
            if firing:
                fired.add(severity)
            checks.append(
                Check(
                    f"{severity} fires={firing} @{at_s}",
                    f"count({rules.burn_alert_expr(slo, severity)}) or vector(0)",
                    at_s,
                    1.0 if firing else 0.0,
                )
            )
    return checks, fired, statuses


def _counter_series(
    rows: Sequence[tuple[float | None, float | None]], step_s: int
) -> CounterSeries:
    kept = [(i * step_s, b, g) for i, (b, g) in enumerate(rows) if b is not None and g is not None]
    return CounterSeries(
        times=[float(k[0]) for k in kept],
        bad=[k[1] for k in kept],
        total=[k[1] + k[2] for k in kept],
        good=[k[2] for k in kept],
    )


def _promtool_agrees(
    promtool: str,
    tmp_path: Path,
    slo: SLOSpec,
    rows: Sequence[tuple[float | None, float | None]],
    step_s: int,
    checks: Sequence[Check],
) -> None:
    """Run the SLO's committed groups on ``rows`` ((bad, good) every ``step_s``, None: no
    scrape) in promtool and require every check to hold."""
    groups = _committed_groups(slo)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    inputs = {
        f'{SLI_METRIC}{{sli="{slo.sli}", result="bad"}}': [r[0] for r in rows],
        f'{SLI_METRIC}{{sli="{slo.sli}", result="good"}}': [r[1] for r in rows],
    }
    last = max(c.at_s for c in checks)
    doc = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": f"{EVAL_S}s",
        "group_eval_order": [g["name"] for g in groups],
        "tests": [
            {
                "interval": f"{step_s}s",
                "input_series": [
                    {
                        "series": sel,
                        "values": " ".join("_" if v is None else repr(float(v)) for v in vals),
                    }
                    for sel, vals in inputs.items()
                ],
                # One check after the last: promtool loads input samples only up to its last
                # evaluation tick at or before the latest eval_time.
                "promql_expr_test": [
                    *(_check_doc(c) for c in checks),
                    {
                        "expr": "vector(1)",
                        "eval_time": f"{last + EVAL_S}s",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(json.dumps(doc), encoding="utf-8")
    res = _run(promtool, "test", "rules", "test.yml", cwd=tmp_path)
    if res.returncode != 0:
        out = res.stdout + res.stderr  # promtool reports failures on stderr
        # promtool quotes each failing expression as Go's %q does (JSON-like for ASCII)
        failed = "\n".join(
            f"{c.name}: {c.expr} (engine {c.expected!r})"
            for c in checks
            if json.dumps(_check_doc(c)["expr"]) in out
        )
        pytest.fail(f"promtool disagrees with slo.engine:\n{failed}\n\n{out.strip()[:6000]}")


def test_generated_rules_agree_with_the_engine(promtool: str, tmp_path: Path) -> None:
    """Prometheus (promtool) on the committed valid-ratio rules (Sloth's optimised period
    ratio) vs slo.engine on the same samples, at several instants."""
    assert VALID.period_ratio == "optimized"
    n = 4 * 240 + 20  # 4 h 5 min at 15 s
    rows = _synthetic(random.Random(20240601), n)
    series = _counter_series(rows, STEP_S)
    checks, fired, _ = _engine_checks(VALID, series, (1800, 3600, 7500, 8100, 9000, 10800, 14400))
    # The series must exercise both outcomes, or the alert comparison proves little.
    assert fired == {"page", "ticket"}, fired
    _promtool_agrees(promtool, tmp_path, VALID, rows, STEP_S, checks)


LOW_STEP_S = 60


def _low_traffic(rng: random.Random, n: int) -> list[tuple[float | None, float | None]]:
    """(bad, good) renewal counters every minute: a handful of events over two days (almost
    every 5m window holds none), counters continuing from stored values, a restart that resets
    them, lost scrapes."""
    good_at = set(rng.sample(range(30, n - 30), 8))
    bad_at = set(rng.sample(sorted(set(range(200, n - 600)) - good_at), 2))
    rows: list[tuple[float | None, float | None]] = []
    bad, good = 2.0, 57.0
    for i in range(n):
        if i == 1700:  # restart
            bad, good = 0.0, 0.0
        bad += i in bad_at
        good += i in good_at
        lost = rng.random() < 0.02 and i not in good_at | bad_at
        rows.append((None, None) if lost else (bad, good))
    return rows


def test_events_period_ratio_agrees_on_low_traffic(promtool: str, tmp_path: Path) -> None:
    """A low-traffic SLO (renewal success, the "events" period ratio as committed) vs the engine:
    every number of the other test, and Sloth's optimised period expression on the same
    recorded 5m ratios, which is NaN where the events ratio is a number."""
    assert RENEWAL.period_ratio == "events"
    n = 2 * 1440 + 10  # two days at 1 min
    rows = _low_traffic(random.Random(20250301), n)
    series = _counter_series(rows, LOW_STEP_S)
    ats = (3 * 3600, 14 * 3600, 26 * 3600, 30 * 3600, 47 * 3600, 48 * 3600)
    checks, _, statuses = _engine_checks(RENEWAL, series, ats)

    optimized = replace(RENEWAL, period_ratio="optimized")
    flt = rules.prom_filter(rules.id_labels(RENEWAL))
    sloth_optimized = rules.period_ratio_rule(optimized)["expr"]
    assert sloth_optimized.startswith(f"sum_over_time(slo:sli_error:ratio_rate5m{flt}[30d])")
    for at_s in ats:
        st = evaluate(optimized, series, datetime.fromtimestamp(at_s, UTC), eval_interval=EVAL_S)
        assert st.period_error_ratio is None
        checks.append(Check(f"optimized period ratio @{at_s}", sloth_optimized, at_s, None))
    # The comparison covers numbers: once the first renewal is counted (after 3 h), the events
    # ratio exists where the optimised one is NaN, with failed renewals in it (not only 0).
    numbers = [st.period_error_ratio for st in statuses]
    assert numbers[0] is None and all(x is not None for x in numbers[1:]), numbers
    assert sum(x is not None and x > 0 for x in numbers) >= 3, numbers
    assert all(st.budget_remaining_ratio is not None for st in statuses[1:])
    _promtool_agrees(promtool, tmp_path, RENEWAL, rows, LOW_STEP_S, checks)


# --- amtool -----------------------------------------------------------------------------------


def test_amtool_check_config(amtool: str) -> None:
    res = _run(amtool, "check-config", str(AM_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


ROUTES = [
    pytest.param(
        {
            "alertname": "CertpilotValidRatioBudgetBurn",
            "severity": "page",
            "sloth_severity": "page",
            "sloth_id": "certpilot-cert-valid-ratio",
        },
        "certpilot-webhook,slack-pages",
        id="slo-page",
    ),
    pytest.param(
        {
            "alertname": "CertpilotValidRatioBudgetBurn",
            "severity": "ticket",
            "sloth_severity": "ticket",
            "sloth_id": "certpilot-cert-valid-ratio",
        },
        "certpilot-webhook,slack-tickets",
        id="slo-ticket",
    ),
    pytest.param(
        {
            "alertname": "CertificateExpired",
            "severity": "page",
            "ref": "tls://shop.test:443#shop.test",
            "source": "tls",
            "owner": "team-a",
        },
        "certpilot-webhook,slack-pages",
        id="symptom-page",
    ),
    pytest.param(
        {"alertname": "ScannerSourceDown", "severity": "ticket", "source": "tls"},
        "certpilot-webhook,slack-tickets",
        id="symptom-ticket",
    ),
    pytest.param({"alertname": "Watchdog"}, "slack-tickets", id="no-severity"),
]


@pytest.mark.parametrize(("labels", "receivers"), ROUTES)
def test_amtool_routes(amtool: str, labels: dict[str, str], receivers: str) -> None:
    res = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        f"--verify.receivers={receivers}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == receivers


# --- a real Alertmanager ----------------------------------------------------------------------


@dataclass
class Received:
    path: str
    authorization: str | None
    body: dict[str, Any]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Received]]]:
    """A loopback HTTP server standing in for Slack and certpilot's webhook; records calls."""
    got: list[Received] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(
            Received(request.path, request.headers.get("Authorization"), await request.json())
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", got
    finally:
        await runner.cleanup()


@pytest.fixture
def alertmanager_bin() -> str:
    if find_binary("prometheus-alertmanager") is None and find_binary("alertmanager") is not None:
        return require_binary("alertmanager")
    return require_binary("prometheus-alertmanager")


@dataclass
class RunningAlertmanager:
    url: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def alertmanager(
    alertmanager_bin: str, receiver: tuple[str, list[Received]], tmp_path: Path
) -> Iterator[RunningAlertmanager]:
    base, _ = receiver
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    token = secrets / "webhook-token"
    token.write_text("s3cret-token\n", encoding="utf-8")
    pages_url = secrets / "slack-pages-url"
    pages_url.write_text(f"{base}/slack/pages", encoding="utf-8")
    tickets_url = secrets / "slack-tickets-url"
    tickets_url.write_text(f"{base}/slack/tickets", encoding="utf-8")
    for f in (token, pages_url, tickets_url):
        f.chmod(0o600)
    cfg = alertmanager_config(
        webhook_url=f"{base}/hooks/alertmanager",
        webhook_token_file=str(token),
        slack_pages_url_file=str(pages_url),
        slack_tickets_url_file=str(tickets_url),
    )
    # Same tree, faster timers for a test.
    for route in [cfg["route"], *cfg["route"]["routes"]]:
        route["group_wait"] = "1s"
    cfg["route"]["group_interval"] = "1s"
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [
            alertmanager_bin,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "alertmanager.log").open("wb"),
        start_new_session=True,
    )
    am = RunningAlertmanager(f"http://127.0.0.1:{port}", proc)
    try:
        yield am
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


async def _wait_ready(session: aiohttp.ClientSession, am: RunningAlertmanager) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert am.proc.poll() is None, "alertmanager exited at start"
        try:
            async with session.get(f"{am.url}/-/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("alertmanager did not become ready")


def _alert(**labels: str) -> dict[str, Any]:
    summary = f"{labels['alertname']}/{labels['severity']}"
    return {"labels": labels, "annotations": {"summary": summary, "runbook_url": "http://rb"}}


def _names(items: Sequence[Received], path: str) -> list[tuple[str, str]]:
    """(alertname, severity) of the alerts delivered to ``path``: from the webhook payload, or
    from the summaries the Slack text template prints (``*alertname/severity*``)."""
    out: list[tuple[str, str]] = []
    for r in items:
        if r.path != path:
            continue
        if "alerts" in r.body:
            out += [(a["labels"]["alertname"], a["labels"]["severity"]) for a in r.body["alerts"]]
            continue
        for att in r.body.get("attachments", []):
            for line in att.get("text", "").splitlines():
                if line.startswith("*") and line.endswith("*"):
                    name, _, severity = line.strip("*").partition("/")
                    out.append((name, severity))
    return sorted(out)


async def test_alertmanager_delivers_and_inhibits(
    alertmanager: RunningAlertmanager, receiver: tuple[str, list[Received]]
) -> None:
    _, got = receiver
    slo = {"alertname": "CertpilotValidRatioBudgetBurn", "sloth_id": "certpilot-cert-valid-ratio"}
    alerts = [
        _alert(**slo, severity="page", sloth_severity="page"),
        _alert(**slo, severity="ticket", sloth_severity="ticket"),
        _alert(alertname="ScannerSourceDown", severity="ticket", source="tls"),
    ]
    async with aiohttp.ClientSession() as session:
        await _wait_ready(session, alertmanager)
        async with session.post(f"{alertmanager.url}/api/v2/alerts", json=alerts) as r:
            assert r.status == 200, await r.text()

        want_hook = [("CertpilotValidRatioBudgetBurn", "page"), ("ScannerSourceDown", "ticket")]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (
                _names(got, "/hooks/alertmanager") == want_hook
                and _names(got, "/slack/pages")
                and _names(got, "/slack/tickets")
            ):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # anything inhibited that was going to leak would have by now

        async with session.get(f"{alertmanager.url}/api/v2/alerts") as r:
            state = {
                (a["labels"]["alertname"], a["labels"]["severity"]): a["status"]
                for a in await r.json()
            }

    # The page inhibits the ticket of the same SLO; the unrelated ticket is not inhibited.
    ticket = state[("CertpilotValidRatioBudgetBurn", "ticket")]
    assert ticket["state"] == "suppressed" and ticket["inhibitedBy"], ticket
    assert state[("ScannerSourceDown", "ticket")]["state"] == "active"

    assert _names(got, "/hooks/alertmanager") == want_hook
    assert _names(got, "/slack/pages") == [("CertpilotValidRatioBudgetBurn", "page")]
    assert _names(got, "/slack/tickets") == [("ScannerSourceDown", "ticket")]
    hooks = [r for r in got if r.path == "/hooks/alertmanager"]
    assert all(r.authorization == "Bearer s3cret-token" for r in hooks)
    assert all(r.body["version"] == "4" for r in hooks)
    # Grouped by root cause: the SLO alerts and the source alert are separate notifications.
    assert {tuple(sorted(r.body["groupLabels"])) for r in hooks} == {
        ("alertname", "sloth_id"),
        ("alertname", "source"),
    }
    slack = next(r for r in got if r.path == "/slack/pages")
    assert slack.body["channel"] == "#certpilot-pages"
    assert slack.authorization is None  # Slack webhooks authenticate by URL, read from a file
