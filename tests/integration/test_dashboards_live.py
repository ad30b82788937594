"""Every dashboard query returns data from a real Prometheus scraping a real certpilot.

Grafana cannot run here, so this is the proof that the dashboards show something: the test
starts ``certpilot demo --serve`` (the loopback fleet, healthy and broken endpoints, rescanned
every second) and a real Prometheus that scrapes it every second and evaluates the committed
``alerts/*.rules.yml`` (Sloth's recording rules, which the on-call burn-rate panels read) every
second, then sends every panel query to ``/api/v1/query`` and requires a non-empty result.

Query-time substitutions, chosen for a Prometheus that is less than a minute old:

- ``$__rate_interval`` -> ``10s``: Grafana would pick ``max(4 x scrape interval, step + scrape
  interval)``; with 1 s scrapes and 1 s rescans (each run takes about 2 s: one fleet endpoint
  times out) a 10 s window holds ~10 samples and several scan runs, so counter rates move.
- ``$__range`` -> ``1m``: longer than the data, so ``increase()`` covers everything scraped.
- ``$__interval`` -> ``2s``; dashboard variables take their defaults (``$slo`` and ``$source``
  set to All, i.e. ``.*``; threshold variables their spec values).
- The SLO windows (1h ... 30d) are in the recording rules' names and stay as they are:
  ``rate()`` needs two samples inside its range, not a full range of data, so Prometheus
  answers for them after two evaluations.

Queries run at "now" and are retried (bounded) until each has data, since rates need two scrapes
and recording rules need two evaluations. A query may legitimately return NaN (a quantile of a
histogram with no observations yet, a ratio of an SLI without events): that counts as data; the
few values that must be real numbers are checked separately.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from slo import dashboards as dash
from tests.support.services import free_ports, require_binary

pytestmark = pytest.mark.service("prometheus")

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "alerts").glob("*.rules.yml"))
SUBSTITUTIONS = {"__rate_interval": "10s", "__range": "1m", "__interval": "2s"}

DEMO_READY_SECONDS = 45.0  # fleet start + first scan (one endpoint times out after 2 s)
PROM_READY_SECONDS = 15.0
DATA_SECONDS = 30.0  # until every query has data
NAN_SETTLE_SECONDS = 5.0  # then, for the report only, until NaN-only results turn numeric


@dataclass
class Stack:
    demo_url: str
    prom_url: str
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def tail(self) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name} log (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join(out)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return int(resp.status), resp.read()


def _wait_http(url: str, seconds: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if _get(url)[0] == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready at {url} within {seconds:g}s")


def query(prom_url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query at "now" through Prometheus's HTTP API; raises on a query error."""
    body = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(f"{prom_url}/api/v1/query", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as e:
        doc = json.load(e)
        raise AssertionError(f"{expr}: {doc.get('errorType')}: {doc.get('error')}") from e
    assert doc["status"] == "success", doc
    data = doc["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """By PID: SIGTERM (both handle it cleanly), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_binary("prometheus")
    work = tmp_path_factory.mktemp("dashboards-live")
    demo_port, prom_port = free_ports(2)
    logs = {"demo": work / "demo.log", "prometheus": work / "prometheus.log"}
    s = Stack(f"http://127.0.0.1:{demo_port}", f"http://127.0.0.1:{prom_port}", logs)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "certpilot",
                "static_configs": [{"targets": [f"127.0.0.1:{demo_port}"]}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "COLUMNS": "200"}
    try:
        with logs["demo"].open("wb") as demo_log:
            s.procs["demo"] = subprocess.Popen(
                [
                    *(sys.executable, "-m", "certpilot.cli", "demo", "--serve", "--no-remediate"),
                    *("--port", str(demo_port), "--rescan", "1"),
                    *("--state-dir", str(work / "demo")),
                ],
                stdout=demo_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _wait_http(f"{s.demo_url}/metrics", DEMO_READY_SECONDS, s.procs["demo"], "certpilot demo")
        with logs["prometheus"].open("wb") as prom_log:
            s.procs["prometheus"] = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=prom_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_http(f"{s.prom_url}/-/ready", PROM_READY_SECONDS, s.procs["prometheus"], "prometheus")
    except BaseException as e:
        for proc in reversed(s.procs.values()):
            _stop(proc)
        if isinstance(e, RuntimeError):
            pytest.fail(f"{e}\n{s.tail()}", pytrace=False)
        raise
    try:
        yield s
    finally:
        for proc in reversed(s.procs.values()):
            _stop(proc)


def _queries() -> list[tuple[str, str, str]]:
    boards = dash.build_dashboards()
    out = []
    for uid, title, expr in dash.all_queries(boards):
        values = {**dash.variable_defaults(boards[uid]), **SUBSTITUTIONS}
        out.append((uid, dash.expand(title, values), dash.expand(expr, values)))
    return out


def _is_nan(sample: dict[str, Any]) -> bool:
    return math.isnan(float(sample["value"][1]))


def test_rules_are_loaded(stack: Stack) -> None:
    _, body = _get(f"{stack.prom_url}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    assert {Path(g["file"]).name for g in groups} == {p.name for p in RULE_FILES}
    assert all(g["rules"] for g in groups)


def test_every_panel_query_returns_data(stack: Stack) -> None:
    queries = _queries()
    pending = dict(enumerate(queries))  # no data yet: must get some
    nan_only: dict[int, tuple[str, str, str]] = {}  # data, but only NaN so far: may settle
    deadline = time.monotonic() + DATA_SECONDS
    settle = deadline  # once all have data, NaN-only ones get a few seconds more to settle
    while time.monotonic() < min(deadline, settle) and (pending or nan_only):
        for i in sorted({*pending, *nan_only}):
            result = query(stack.prom_url, queries[i][2])
            if result:
                pending.pop(i, None)
                if all(_is_nan(x) for x in result):
                    nan_only[i] = queries[i]
                else:
                    nan_only.pop(i, None)
        if not pending and settle == deadline:
            settle = time.monotonic() + NAN_SETTLE_SECONDS
        time.sleep(1.0)
    if nan_only:
        # Informational (pytest -rA shows it): panels that would read "NaN" right now.
        print("\nqueries with only NaN values (no events of that kind yet):")
        for uid, title, expr in nan_only.values():
            print(f"  {uid} / {title}: {expr}")
    assert not pending, (
        f"{len(pending)} of {len(queries)} queries returned no data after {DATA_SECONDS:g}s:\n"
        + "\n".join(f"  {u} / {t}: {e}" for u, t, e in pending.values())
        + f"\n{stack.tail()}"
    )


def test_variable_queries_list_values(stack: Stack) -> None:
    for uid, var, metric, label in dash.variable_queries():
        url = f"{stack.prom_url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": metric}
        )
        values = json.loads(_get(url)[1])["data"]
        assert values, f"{uid}: variable ${var}: no {label} values on {metric}"


def _value(stack: Stack, uid: str, title: str, ref: int = 0) -> list[dict[str, Any]]:
    """The panel's query result, once Prometheus has data for it (up to ``DATA_SECONDS``: this
    test may run before any other of the module has waited for the first scrapes)."""
    exprs = [e for u, t, e in _queries() if u == uid and t == title]
    assert exprs, (uid, title)
    deadline = time.monotonic() + DATA_SECONDS
    while not (result := query(stack.prom_url, exprs[ref])) and time.monotonic() < deadline:
        time.sleep(0.5)
    return result


def test_key_panels_show_the_demo_fleet(stack: Stack) -> None:
    """The demo fleet is broken on purpose: the numbers must say so (not just exist)."""
    ex, oc = dash.EXECUTIVE_UID, dash.ONCALL_UID
    # pay.* expires within 30 days; old.* has expired.
    (expiring,) = _value(stack, ex, "Expiring within 30 days")
    assert float(expiring["value"][1]) >= 1
    (expired,) = _value(stack, ex, "Expired certificates")
    assert float(expired["value"][1]) >= 1
    codes = {r["metric"]["code"] for r in _value(stack, ex, "Current problems by code")}
    assert {"expired", "expiring", "untrusted_root", "connection_refused"} <= codes
    failing = _value(stack, oc, "Failing endpoints")
    assert any(r["metric"]["code"] == "expired" for r in failing)
    unreachable = {r["metric"]["target"] for r in _value(stack, oc, "Unreachable endpoints")}
    assert any(t.startswith("down.") for t in unreachable)
    # Rescans produced valid-ratio events, so the SLI is a real ratio, below 1 (broken fleet).
    deadline = time.monotonic() + 10
    while True:
        (sli,) = _value(stack, ex, "Valid ratio (SLI)")
        if not math.isnan(float(sli["value"][1])) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert 0 <= float(sli["value"][1]) < 1, sli
    (up,) = query(stack.prom_url, 'up{job="certpilot"}')
    assert up["value"][1] == "1"
