"""slo.promql: Prometheus 2.42 semantics, by hand and against the real ``promtool test rules``.

The hand-computed cases pin each rule of ``extrapolatedRate`` and the range selection; the
promtool cases run the same functions and the whole engine next to Prometheus' own engine on
generated series and require agreement to 1e-12 (and, separately, bit-for-bit).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from slo import promql as P
from slo.engine import CounterSeries, evaluate
from slo.spec import BurnWindow, SLOSpec, sli_queries
from tests.support.services import require_binary

S = 1000  # milliseconds per second


def series(
    step_s: float, values: Sequence[float | None], start_s: float = 0
) -> tuple[list[int], list[float]]:
    """Samples every ``step_s`` from ``start_s``; ``None`` leaves a hole (no sample)."""
    t = [round((start_s + i * step_s) * S) for i, v in enumerate(values) if v is not None]
    v = [x for x in values if x is not None]
    return t, v


# --- range selection -----------------------------------------------------------------------


def test_range_includes_the_sample_exactly_at_the_start() -> None:
    # Samples at 0, 15, ..., 60 s; [60s] at t=60 covers [0, 60]: all five in 2.x (3.x: four).
    t, v = series(15, [5, 10, 11, 12, 13])
    assert P.count_over_time(t, v, 60 * S, 60 * S) == 5.0
    assert P.sum_over_time(t, v, 60 * S, 60 * S) == 51.0
    # The increase sees 5 -> 13 over exactly the range: 8, no extrapolation at all. With the
    # sample at 0 excluded it would be 3 * 60/45 = 4.
    assert P.increase(t, v, 60 * S, 60 * S) == 8.0
    # One millisecond later the sample at 0 drops out.
    assert P.count_over_time(t, v, 60 * S + 1, 60 * S) == 4.0


def test_fewer_than_two_samples_is_no_result() -> None:
    t, v = series(15, [1, 2, 3])  # samples at 0, 15, 30 s
    assert P.rate(t, v, 100 * S, 60 * S) is None  # [40, 100]: none
    assert P.rate(t, v, 90 * S, 60 * S) is None  # [30, 90]: one
    assert P.increase(t, v, 44 * S, 14 * S) is None  # [30, 44]: one
    assert P.rate([], [], 0, 60 * S) is None
    assert P.sum_over_time(t, v, 500 * S, 60 * S) is None
    assert P.count_over_time(t, v, 500 * S, 60 * S) is None
    assert P.avg_over_time(t, v, 500 * S, 60 * S) is None
    # One sample is enough for the *_over_time functions.
    assert P.count_over_time(t, v, 90 * S, 60 * S) == 1.0


def test_two_samples_one_interval() -> None:
    t, v = series(15, [1, 2, 3])
    # [15, 30] at 30: samples 2 and 3, exactly the range: increase 1, rate 1/15.
    assert P.increase(t, v, 30 * S, 15 * S) == 1.0
    assert P.rate(t, v, 30 * S, 15 * S) == 1 / 15


def test_lookback_is_five_minutes_inclusive() -> None:
    t, v = series(15, [7.0])
    assert P.instant(t, v, 0) == 7.0
    assert P.instant(t, v, 300 * S) == 7.0
    assert P.instant(t, v, 300 * S + 1) is None
    assert P.instant(t, v, -1) is None


# --- extrapolatedRate ----------------------------------------------------------------------


def test_steady_counter_rate_is_exact() -> None:
    # 20 events per 15 s for 2 h, 1 of them bad: 481 samples.
    t, total = series(15, [20.0 * i for i in range(481)])
    _, bad = series(15, [1.0 * i for i in range(481)])
    now = 7200 * S
    for w in (300, 1800, 3600, 7200):
        # Window aligned with samples: no extrapolation; the ratio is exactly 1/20 up to
        # the last bit of the two divisions.
        assert P.rate(t, total, now, w * S) == pytest.approx(20 / 15, rel=1e-15)
        assert P.increase(t, bad, now, w * S) == pytest.approx(w / 15, rel=1e-15)
        ratio = P.div(P.rate(t, bad, now, w * S) or 0, P.rate(t, total, now, w * S) or 0)
        assert ratio == pytest.approx(0.05, rel=1e-15)


def test_counter_reset_adds_the_value_before_the_reset() -> None:
    # 0, 10, 20, restart, 5, 15 at 0..60 s: increase 15 - 0 + 20 = 35, the window is covered.
    t, v = series(15, [0, 10, 20, 5, 15])
    assert P.increase(t, v, 60 * S, 60 * S) == 35.0
    assert P.rate(t, v, 60 * S, 60 * S) == 35.0 / 60
    # delta() is for gauges: no reset correction.
    assert P.delta(t, v, 60 * S, 60 * S) == 15.0
    # Two resets in a row.
    t, v = series(15, [8, 2, 1, 4])
    assert P.increase(t, v, 45 * S, 45 * S) == (4 - 8) + 8 + 2


def test_gap_longer_than_threshold_extrapolates_half_an_interval() -> None:
    # Window [0, 300]; samples only at 120..180 s, 100 -> 104 (zero point far away).
    # avg 15 s, threshold 16.5 s; 120 s to either boundary is beyond it, so extrapolate 7.5 s
    # on each side: 4 * (60 + 7.5 + 7.5) / 60 = 5.
    t, v = series(15, [100, 101, 102, 103, 104], start_s=120)
    assert P.increase(t, v, 300 * S, 300 * S) == 5.0
    assert P.rate(t, v, 300 * S, 300 * S) == 5.0 / 300
    # Within the threshold: extrapolate all the way. Window [105, 195]: 15 s each side.
    assert P.increase(t, v, 195 * S, 90 * S) == pytest.approx(4 * 90 / 60, rel=1e-15)


def test_irregular_gap_inside_the_window_widens_the_average_interval() -> None:
    # Samples at 0, 15, 30 and 120 s: average interval 40 s, threshold 44 s.
    t = [0, 15 * S, 30 * S, 120 * S]
    v = [10.0, 11.0, 12.0, 16.0]
    # Window [-40, 150]: 40 s to the start (< 44: extrapolate to it, zero point at 120*10/6 =
    # 200 s is further), 30 s to the end: 6 * (120 + 40 + 30) / 120.
    assert P.increase(t, v, 150 * S, 190 * S) == 6 * ((120 + 40 + 30) / 120)


def test_zero_point_clamp_comes_before_the_threshold_in_2_42() -> None:
    # The series starts at 600 s, inside the window [0, 660]: 2, 4.5, 7, 9.5, 12.
    # increase 10 over 60 s; zero point 60 * 2 / 10 = 12 s before the first sample.
    # 2.42: durationToStart = min(600, 12) = 12 < 16.5 -> extrapolate 12 s: 10 * 72 / 60 = 12.
    # (2.52+ checks the threshold first: 7.5 s, 11.25.)
    t, v = series(15, [2, 4.5, 7, 9.5, 12], start_s=600)
    assert P.increase(t, v, 660 * S, 660 * S) == 12.0


def test_counter_from_zero_is_not_extrapolated_below_zero() -> None:
    # First sample 0: the zero point is the first sample itself.
    t, v = series(15, [0, 3, 6, 9], start_s=100)
    assert P.increase(t, v, 145 * S, 300 * S) == 9.0


def test_rate_divides_by_the_range_not_the_sampled_interval() -> None:
    t, v = series(60, [0, 60, 120])
    # [0, 300] at 300: samples 0..120, to_end 180 > 66 -> +30: 120 * 150 / 120 / 300.
    assert P.rate(t, v, 300 * S, 300 * S) == 120 * (150 / 120) / 300


def test_duration_seconds_matches_go() -> None:
    assert P.duration_seconds(300_000) == 300.0
    assert P.duration_seconds(1_500) == 1.5


# --- *_over_time, division -------------------------------------------------------------------


def test_sum_over_time_is_kahan_compensated() -> None:
    # promtool 2.42 (Debian 2.42.0+ds) returns 1.0000000000000004e16 here; a running sum 1e16.
    t, v = series(30, [1e16, 1, 1, 1, 1])
    assert P.sum_over_time(t, v, 600 * S, 600 * S) == 1.0000000000000004e16


def test_avg_over_time_incremental_mean() -> None:
    t, v = series(15, [1, 2, 3, 4])
    assert P.avg_over_time(t, v, 45 * S, 60 * S) == 2.5
    t, v = series(15, [1, math.inf, 3])
    assert P.avg_over_time(t, v, 30 * S, 60 * S) == math.inf
    t, v = series(15, [math.inf, -math.inf])
    assert math.isnan(P.avg_over_time(t, v, 15 * S, 60 * S) or 0)
    t, v = series(15, [1, math.nan, 3])
    assert math.isnan(P.avg_over_time(t, v, 30 * S, 60 * S) or 0)


def test_division_follows_ieee_like_promql() -> None:
    assert math.isnan(P.div(0.0, 0.0))
    assert P.div(1.0, 0.0) == math.inf
    assert P.div(-1.0, 0.0) == -math.inf
    assert P.div(1.0, -0.0) == -math.inf
    assert math.isnan(P.div(math.nan, 0.0))
    assert P.div(1.0, 4.0) == 0.25


# --- recording rules ---------------------------------------------------------------------------


def test_eval_ticks_end_at_now_and_include_the_start() -> None:
    assert P.eval_ticks(600 * S, 300 * S, 60 * S) == [t * S for t in (300, 360, 420, 480, 540, 600)]
    with pytest.raises(ValueError):
        P.eval_ticks(0, 1, 0)


def test_record_keeps_nan_and_drops_absent() -> None:
    values = {0: 1.0, 60_000: None, 120_000: math.nan}
    t, v = P.record(values.get, [0, 60_000, 120_000])
    assert t == [0, 120_000]
    assert v[0] == 1.0 and math.isnan(v[1])


def test_sloth_period_ratio_is_sum_over_count_and_propagates_nan() -> None:
    t = [0, 60_000, 120_000]
    assert P.sloth_period_ratio(t, [0.1, 0.2, 0.3], 120_000, 120_000) == P.div(
        P.kahan_sum([0.1, 0.2, 0.3]), 3.0
    )
    assert math.isnan(P.sloth_period_ratio(t, [0.1, math.nan, 0.3], 120_000, 120_000) or 0)
    assert P.sloth_period_ratio(t, [0.1, 0.2, 0.3], 500_000, 60_000) is None


def _random_counters(rng: random.Random, n: int) -> tuple[list[int], list[float], list[float]]:
    """Irregular scrapes (jitter and gaps) of bad/good counters with restarts and idle spells."""
    t: list[int] = []
    bad: list[float] = []
    good: list[float] = []
    now = 0
    b = g = rng.choice([0.0, 50.0])
    gb = 0.0
    for _ in range(n):
        now += rng.choice([15_000, 15_000, 15_000, 14_999, 15_001, 45_000, 200_000])
        if rng.random() < 0.02:  # restart
            b, gb = 0.0, 0.0
        if rng.random() > 0.2:  # else idle
            b += rng.choice([0.0, 0.0, 1.0, 2.0])
            gb += rng.choice([0.0, 5.0, 20.0, 0.5])
        t.append(now)
        bad.append(b)
        good.append(gb + g)
    return t, bad, good


@pytest.mark.parametrize("seed", range(4))
def test_batch_ratio_is_bit_identical_to_per_tick_rate(seed: int) -> None:
    rng = random.Random(seed)
    t, bad, good = _random_counters(rng, 600)
    ticks = list(range(0, t[-1] + 120_000, 60_000))
    expected: dict[int, float] = {}
    for tick in ticks:
        rb = P.rate(t, bad, tick, 300_000)
        rg = P.rate(t, good, tick, 300_000)
        if rb is not None and rg is not None:
            expected[tick] = P.div(rb, rb + rg)
    paths = [False, True] if P.HAVE_NUMPY else [False]
    for use_numpy in paths:
        got_t, got_v = P.ratio_of_rates_at(
            t, [bad], [bad, good], ticks, 300_000, use_numpy=use_numpy
        )
        assert got_t == list(expected)
        for tick, v in zip(got_t, got_v, strict=True):
            e = expected[tick]
            assert (math.isnan(e) and math.isnan(v)) or v == e, (use_numpy, tick, v, e)


@pytest.mark.parametrize("seed", range(3))
def test_period_ratio_of_counters_equals_the_composed_rules(seed: int) -> None:
    rng = random.Random(100 + seed)
    t, bad, good = _random_counters(rng, 800)
    at = t[-1] - 7_000
    period, interval = 6 * 3_600_000, 60_000
    ticks = P.eval_ticks(at, period, interval)
    rec_t, rec_v = P.ratio_of_rates_at(t, [bad], [bad, good], ticks, 300_000, use_numpy=False)
    want = P.sloth_period_ratio(rec_t, rec_v, at, period)
    # Only finite recorded ratios: the sum must be compared, not just NaN propagation.
    ok = [(x, v) for x, v in zip(rec_t, rec_v, strict=True) if not math.isnan(v)]
    want_finite = P.sloth_period_ratio([x for x, _ in ok], [v for _, v in ok], at, period)
    assert want_finite is not None and math.isfinite(want_finite)
    for use_numpy in [False, True] if P.HAVE_NUMPY else [False]:
        got = P.sloth_period_ratio_of_counters(
            t, [bad], [bad, good], at, period, interval, 300_000, use_numpy=use_numpy
        )
        assert (
            (want is None and got is None)
            or got == want
            or (want is not None and got is not None and math.isnan(want) and math.isnan(got))
        )


@pytest.mark.skipif(not P.HAVE_NUMPY, reason="numpy is not installed")
def test_vectorised_kahan_sum_is_bit_identical() -> None:
    import numpy as np

    rng = random.Random(5)
    for values in (
        [rng.uniform(0, 1) * 10 ** rng.randint(-8, 8) for _ in range(5000)],
        [1e16, 1.0, 1.0, 1.0, 1.0],
        [rng.choice([-1, 1]) * rng.random() for _ in range(999)],
        [1.0, math.inf, 2.0],
        [1.0, math.nan, 2.0],
        [math.inf, -math.inf],
        [],
    ):
        want = P.kahan_sum(values)
        got = P._kahan_sum_np(np.asarray(values, dtype=np.float64))
        assert got == want or (math.isnan(got) and math.isnan(want)), values[:5]


# --- against promtool 2.42 ---------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    expr: str
    at_ms: int
    expected: float | None  # None: no sample (or, with ``none_or_nan``, NaN as well)
    none_or_nan: bool = False


def _check_expr(c: Check, exact: bool) -> tuple[str, float]:
    """A PromQL expression that evaluates to a known single value when ``c`` holds."""
    e = c.expr
    if c.expected is None:
        inner = f"({e}) == ({e})" if c.none_or_nan else e
        return f"count({inner}) or vector(0)", 0
    if math.isnan(c.expected):
        return f"sum(({e}) != bool ({e}))", 1
    if math.isinf(c.expected):
        return f"sum(({e}) == bool {'+' if c.expected > 0 else '-'}Inf)", 1
    v = repr(c.expected)
    if exact:
        return f"sum(({e}) == bool ({v}))", 1
    return f"sum(abs(({e}) - ({v})) < bool 1e-12)", 1


def promtool_disagreements(
    tmp_path: Path,
    inputs: dict[str, Sequence[float | None]],
    checks: Sequence[Check],
    *,
    step_s: int = 15,
    eval_interval_s: int = 60,
    rules: list[dict[str, object]] | None = None,
    exact: bool = False,
) -> list[str]:
    """Run ``promtool test rules`` with ``inputs`` (selector -> one value per step, None = no
    sample) on every check (``abs(got - want) < 1e-12``, or ``==``); return promtool's
    complaint lines, empty when Prometheus agrees with every check."""
    promtool = require_binary("promtool")
    rule_files: list[str] = []
    if rules:
        (tmp_path / "rules.yml").write_text(json.dumps({"groups": rules}), encoding="utf-8")
        rule_files = ["rules.yml"]
    last = max(c.at_ms for c in checks)
    tests = [
        {
            "expr": expr,
            "eval_time": f"{c.at_ms}ms",
            "exp_samples": [{"labels": "{}", "value": value}],
        }
        for c in checks
        for expr, value in [_check_expr(c, exact)]
    ]
    # promtool loads input samples only up to its last rule-evaluation tick <= the latest
    # eval_time; one more tick makes every sample up to the latest check visible.
    tests.append(
        {
            "expr": "vector(1)",
            "eval_time": f"{last + eval_interval_s * S}ms",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
    )
    doc = {
        "rule_files": rule_files,
        "evaluation_interval": f"{eval_interval_s}s",
        "tests": [
            {
                "interval": f"{step_s}s",
                "input_series": [
                    {
                        "series": sel,
                        "values": " ".join("_" if x is None else repr(float(x)) for x in vals),
                    }
                    for sel, vals in inputs.items()
                ],
                "promql_expr_test": tests,
            }
        ],
    }
    (tmp_path / "test.yml").write_text(json.dumps(doc), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode == 0:
        return []
    out = (proc.stdout + proc.stderr).strip()
    return [line for line in out.splitlines() if line.strip()] or [f"exit {proc.returncode}"]


def _shapes(rng: random.Random, n: int) -> dict[str, list[float | None]]:
    """Three-plus series shapes on a 15 s grid: steady, resets, gaps, late start, idle."""
    steady = [20.0 * i for i in range(n)]
    resets: list[float | None] = []
    v = 40.0
    for i in range(n):
        v = rng.uniform(0, 3) if i % 97 == 50 else v + rng.choice([0, 1, 2.5, 7])
        resets.append(v)
    gaps: list[float | None] = []
    v = 1000.0
    for i in range(n):
        v += rng.choice([0, 1, 3])
        hole = 30 <= i % 200 < 52 or 120 <= i % 200 < 124 or (rng.random() < 0.08 and i != 29)
        gaps.append(None if hole else v)
    late: list[float | None] = [None] * 40 + [2.0, 4.5, 7.0, 9.5, 12.0]
    v = 12.0
    while len(late) < n:
        v += rng.choice([0, 2.5])
        late.append(v)
    idle = [float(min(i, 60)) for i in range(n)]  # stops counting after 15 min
    return {"steady": steady, "resets": resets, "gaps": gaps, "late": late, "idle": idle}


# 735 s is exactly 5 minutes after the last sample before a gap in "gaps" (lookback boundary).
AT_MS = (300_000, 612_345, 690_000, 735_000, 735_001, 1_800_000, 2_700_000, 3_585_000)


def test_promtool_agrees_on_functions(tmp_path: Path) -> None:
    rng = random.Random(42)
    n = 240  # one hour at 15 s
    inputs = _shapes(rng, n)
    checks: list[Check] = []
    fns = {
        "rate": P.rate,
        "increase": P.increase,
        "sum_over_time": P.sum_over_time,
        "count_over_time": P.count_over_time,
        "avg_over_time": P.avg_over_time,
    }
    for name, vals in inputs.items():
        t, v = series(15, vals)
        for fn, impl in fns.items():
            for rng_ms in (60_000, 300_000, 330_000, 1_800_000):
                for at in AT_MS:
                    checks.append(Check(f"{fn}({name}[{rng_ms}ms])", at, impl(t, v, at, rng_ms)))
        for at in AT_MS:  # instant selection, 5 minutes lookback
            checks.append(Check(name, at, P.instant(t, v, at)))
    assert len(checks) > 500
    assert promtool_disagreements(tmp_path, inputs, checks) == []
    assert promtool_disagreements(tmp_path, inputs, checks, exact=True) == []


# The engine next to Sloth-shaped recording rules, with a period short enough for a unit test.
# Two SLOs on the same counters, one per period ratio form, evaluated in the same promtool run.

_ENGINE_SLO = SLOSpec(
    service="svc",
    name="valid",
    objective=99.5,
    error_query=sli_queries("valid_ratio")[0],
    total_query=sli_queries("valid_ratio")[1],
    sli="valid_ratio",
    period="3h",
    burn_windows=(
        BurnWindow("page", "1h", "5m", 14.4),
        BurnWindow("page", "2h", "30m", 6.0),
        BurnWindow("ticket", "2h", "1h", 3.0),
        BurnWindow("ticket", "1h", "30m", 1.0),
    ),
)
_ENGINE_SLO_EVENTS = replace(_ENGINE_SLO, name="valid-events", period_ratio="events")
_WINDOWS = ("5m", "30m", "1h", "2h")


def _flt(slo: SLOSpec) -> str:
    return f'{{sloth_id="{slo.id}"}}'


def _sloth_rules(slo: SLOSpec) -> list[dict[str, object]]:
    ids = {"sloth_id": slo.id, "sloth_service": slo.service, "sloth_slo": slo.name}
    flt = _flt(slo)
    rules: list[dict[str, object]] = [
        {
            "record": f"slo:sli_error:ratio_rate{w}",
            "expr": f"({slo.error_expr(w)})\n/\n({slo.total_expr(w)})\n",
            "labels": {**ids, "sloth_window": w},
        }
        for w in _WINDOWS
    ]
    p = slo.period
    if slo.period_ratio == "events":  # Sloth's non-optimised rule: the queries over the period
        period_rule: dict[str, object] = {
            "record": f"slo:sli_error:ratio_rate{p}",
            "expr": f"({slo.error_expr(p)})\n/\n({slo.total_expr(p)})\n",
            "labels": {**ids, "sloth_window": p},
        }
    else:  # Sloth's optimised rule: the mean of the recorded 5m ratio
        period_rule = {
            "record": f"slo:sli_error:ratio_rate{p}",
            "expr": f"sum_over_time(slo:sli_error:ratio_rate5m{flt}[{p}])\n"
            "/ ignoring (sloth_window)\n"
            f"count_over_time(slo:sli_error:ratio_rate5m{flt}[{p}])\n",
            "labels": {"sloth_window": p},
        }
    rules += [
        period_rule,
        {
            "record": "slo:error_budget:ratio",
            "expr": f"vector(1-{slo.objective / 100!r})",
            "labels": ids,
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{p}{flt}\n/ on(sloth_id, sloth_slo, sloth_service) "
            f"group_left\nslo:error_budget:ratio{flt}",
            "labels": ids,
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:period_burn_rate:ratio{flt}",
            "labels": ids,
        },
    ]
    return [{"name": f"sloth-slo-sli-recordings-{slo.id}", "interval": "1m", "rules": rules}]


def _alert_expr(slo: SLOSpec, bw: BurnWindow) -> str:
    budget = repr((100 - slo.objective) / 100)

    def cond(w: str) -> str:
        ratio = f"slo:sli_error:ratio_rate{w}{_flt(slo)}"
        return f"max({ratio} > ({bw.factor!r} * {budget})) without (sloth_window)"

    return f"{cond(bw.short)} and {cond(bw.long)}"


def _engine_inputs(
    rng: random.Random, n: int
) -> dict[str, list[tuple[float | None, float | None]]]:
    """(bad, good) counter shapes, 15 s apart."""
    steady = [(1.0 * i, 19.0 * i) for i in range(n)]
    bursty: list[tuple[float | None, float | None]] = []
    b, g = 5.0, 100.0
    for i in range(n):
        if i % 300 == 150:  # restart: both counters start over
            b, g = 0.0, rng.uniform(0, 2)
        burst = 400 <= i < 480 or 700 <= i < 720
        b += rng.choice([3, 5, 8]) if burst else rng.choice([0, 0, 0, 1])
        g += rng.choice([10, 20, 30])
        bursty.append((b, g))
    gappy: list[tuple[float | None, float | None]] = []
    b, g = 0.0, 0.0
    for i in range(n):
        if i < 80 or 500 <= i < 540 or rng.random() < 0.05:
            gappy.append((None, None))  # not yet started, a scrape outage, lost scrapes
            continue
        b += rng.choice([0, 0, 1])
        g += rng.choice([5, 10])
        gappy.append((b, g))
    idle = [(min(i, 200) * 0.5, float(min(i, 200) * 10)) for i in range(n)]
    return {
        "steady": steady,
        "bursty": bursty,
        "gappy": gappy,
        "idle": idle,
        "sparse": _sparse(rng, n),
    }


def _sparse(rng: random.Random, n: int) -> list[tuple[float | None, float | None]]:
    """Low traffic: a handful of events over the period (most 5m windows hold none, so their
    ratio is 0/0), counters not starting at 0, a restart and lost scrapes."""
    event_at = {
        **{i: "good" for i in rng.sample(range(40, n - 200), 9)},
        **{i: "bad" for i in rng.sample(range(300, 700), 2)},
    }
    rows: list[tuple[float | None, float | None]] = []
    b, g = 3.0, 40.0
    for i in range(n):
        if i == 620:  # restart
            b, g = 0.0, 0.0
        kind = event_at.get(i)
        b += kind == "bad"
        g += kind == "good"
        lost = rng.random() < 0.03 and kind is None
        rows.append((None, None) if lost else (b, g))
    return rows


@pytest.mark.parametrize("exact", [False, True], ids=["1e-12", "bit-exact"])
def test_promtool_agrees_with_the_engine(tmp_path: Path, exact: bool) -> None:
    rng = random.Random(7)
    n = 1000  # 4 h 10 min at 15 s
    slos = (_ENGINE_SLO, _ENGINE_SLO_EVENTS)
    period_numbers: dict[tuple[str, str], list[float | None]] = {}
    for shape, rows in _engine_inputs(rng, n).items():
        sub = tmp_path / shape
        sub.mkdir()
        inputs = {
            'certpilot_sli_events_total{sli="valid_ratio",result="bad"}': [r[0] for r in rows],
            'certpilot_sli_events_total{sli="valid_ratio",result="good"}': [r[1] for r in rows],
        }
        kept = [
            (i * 15.0, b, g) for i, (b, g) in enumerate(rows) if b is not None and g is not None
        ]
        cs = CounterSeries(
            times=[k[0] for k in kept],
            bad=[k[1] for k in kept],
            total=[k[1] + k[2] for k in kept],
            good=[k[2] for k in kept],
        )
        checks: list[Check] = []
        for at_s in (1800, 3600, 7380, 10800, 14940):
            at = at_s * S
            for slo in slos:
                st = evaluate(slo, cs, datetime.fromtimestamp(at_s, UTC), eval_interval=60)
                period_numbers.setdefault((shape, slo.period_ratio), []).append(
                    st.period_error_ratio
                )
                flt = _flt(slo)
                for w in _WINDOWS:
                    res = st.window(w)
                    assert res is not None
                    ratio = f"slo:sli_error:ratio_rate{w}{flt}"
                    checks.append(Check(ratio, at, res.error_ratio, True))
                    checks.append(
                        Check(
                            f"{ratio} / on() group_left slo:error_budget:ratio{flt}",
                            at,
                            res.burn_rate,
                            True,
                        )
                    )
                checks += [
                    Check(
                        f"slo:sli_error:ratio_rate{slo.period}{flt}",
                        at,
                        st.period_error_ratio,
                        True,
                    ),
                    Check(f"slo:period_burn_rate:ratio{flt}", at, st.period_burn_rate, True),
                    Check(
                        f"slo:period_error_budget_remaining:ratio{flt}",
                        at,
                        st.budget_remaining_ratio,
                        True,
                    ),
                    Check(
                        "sum(increase("
                        f'certpilot_sli_events_total{{sli="valid_ratio"}}[{slo.period}]))',
                        at,
                        st.events_in_period,
                    ),
                ]
                for bw, cond in zip(slo.burn_windows, st.alerts, strict=True):
                    checks.append(
                        Check(f"count({_alert_expr(slo, bw)})", at, 1.0 if cond.firing else None)
                    )
        rules = _sloth_rules(_ENGINE_SLO) + _sloth_rules(_ENGINE_SLO_EVENTS)
        assert promtool_disagreements(sub, inputs, checks, rules=rules, exact=exact) == []
    # The comparison covers numbers, not only "no number" on both sides: on busy shapes both
    # forms give a period ratio; on the sparse one only the events form does.
    assert all(x is not None for x in period_numbers[("steady", "optimized")])
    assert all(x is not None for x in period_numbers[("steady", "events")])
    assert all(x is None for x in period_numbers[("sparse", "optimized")])
    assert sum(x is not None for x in period_numbers[("sparse", "events")]) >= 4
