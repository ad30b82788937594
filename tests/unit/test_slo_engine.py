"""slo.engine: error ratios, burn rates, budgets and burn-window checks, by hand.

Agreement with Prometheus itself is in ``test_promql.py`` (promtool); here every expectation is
worked out from the definitions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from certpilot.domain.errors import ConfigError
from certpilot.domain.sli import SLIEvent, SLISample
from slo import promql as P
from slo.engine import (
    CounterSeries,
    SLOStatus,
    alert_threshold,
    check_burn_windows,
    evaluate,
    evaluated_windows,
    period_source_window,
    validate_slo,
)
from slo.spec import DEFAULT_BURN_WINDOWS, SLI_WINDOWS, BurnWindow, SLOSpec, default_slos

T0 = datetime(2025, 3, 1, tzinfo=UTC)
BASE = default_slos().slos[0]  # cert-valid-ratio, 30d, workbook burn windows


def slo(objective: float = 99.9, **kw: Any) -> SLOSpec:
    return dataclasses.replace(BASE, objective=objective, **kw)


def steady(
    hours: float = 2,
    step: float = 15,
    bad_per: float = 1,
    good_per: float = 19,
    start: datetime = T0,
) -> CounterSeries:
    """Counters from 0, ``bad_per`` bad and ``good_per`` good events every ``step`` seconds."""
    n = int(hours * 3600 / step) + 1
    t0 = start.timestamp()
    bad = [bad_per * i for i in range(n)]
    good = [good_per * i for i in range(n)]
    return CounterSeries(
        times=[t0 + step * i for i in range(n)],
        bad=bad,
        total=[b + g for b, g in zip(bad, good, strict=True)],
        good=good,
    )


def ratios(st: SLOStatus) -> dict[str, float | None]:
    return {w.window: w.error_ratio for w in st.windows}


# --- a counter every 15 s for 2 h with a 5 % error fraction ---------------------------------


def test_steady_five_percent_errors_burns_fifty_times_a_999_budget() -> None:
    s = steady()
    st = evaluate(slo(99.9), s, T0 + timedelta(hours=2))
    assert [w.window for w in st.windows] == list(SLI_WINDOWS)
    for w in st.windows:
        # Every window: 1 bad in 20 (windows longer than the series extrapolate both counters
        # to their zero point, the same factor for both, so the ratio is still 1/20).
        assert w.error_ratio == pytest.approx(0.05, rel=1e-14), w
        assert w.burn_rate == pytest.approx(0.05 / 0.001, rel=1e-12), w
    assert all(a.firing for a in st.alerts)
    assert st.firing_severity == "page"
    # The period ratio is the mean of the 5m ratio recorded every minute: all 1/20.
    assert st.period_error_ratio == pytest.approx(0.05, rel=1e-14)
    assert st.period_burn_rate == pytest.approx(50, rel=1e-12)
    assert st.budget_remaining_ratio == pytest.approx(1 - 50, rel=1e-12)  # overspent 49 times
    # increase(total[30d]) over a 2 h series starting at 0: exactly what was counted.
    assert st.events_in_period == 480 * 20


def test_same_series_with_objective_90_burns_half_and_never_fires() -> None:
    st = evaluate(slo(90), steady(), T0 + timedelta(hours=2))
    for w in st.windows:
        assert w.burn_rate == pytest.approx(0.5, rel=1e-12)
    assert not any(a.firing for a in st.alerts)
    assert st.firing_severity is None
    assert st.budget_remaining_ratio == pytest.approx(0.5, rel=1e-12)
    # And the workbook's page factor cannot work with a 10 % budget.
    assert check_burn_windows(slo(90)) == [
        "page 1h/5m: factor 14.4 needs an error ratio of 144% with objective 90%, "
        "which can never happen"
    ]
    assert check_burn_windows(slo(99.9)) == []


def test_alert_compares_strictly_greater_like_sloth() -> None:
    # Objective 90 and factor 1: threshold 1 * (100 - 90) / 100 = 0.1. A series with exactly
    # 1 bad in 10 sits on it and must not fire (Sloth: ratio > factor * budget).
    # 15 bad and 135 good every 15 s: rates of exactly 1/s and 9/s, a ratio of exactly 0.1.
    s = steady(hours=4, bad_per=15, good_per=135)
    spec = slo(90, burn_windows=(BurnWindow("ticket", "1h", "5m", 1.0),))
    st = evaluate(spec, s, T0 + timedelta(hours=4))
    assert alert_threshold(spec, 1.0) == 0.1
    assert st.window("1h").error_ratio == 0.1
    assert st.window("5m").error_ratio == 0.1
    assert st.alerts[0].firing is False
    # One bad event more per 15 s tips it over.
    s2 = steady(hours=4, bad_per=16, good_per=134)
    assert evaluate(spec, s2, T0 + timedelta(hours=4)).alerts[0].firing


def test_alert_threshold_is_sloths_literal_product() -> None:
    spec = slo(99.9)
    # Sloth writes the alert budget as (100 - 99.9) / 100 and the recorded one as 1 - 0.999:
    # they differ in the last bits, and each side uses its own.
    assert alert_threshold(spec, 14.4) == 14.4 * 0.0009999999999999432
    assert spec.error_budget_ratio == 0.0009999999999998899


# --- resets, gaps, too few samples, the boundary ---------------------------------------------


def test_counter_reset_mid_window() -> None:
    # 2 h at 15 s, restart after 1 h: both counters start again from 0.
    n = 481
    t0 = T0.timestamp()
    bad = [float(i if i < 240 else i - 240) for i in range(n)]
    good = [19.0 * (i if i < 240 else i - 240) for i in range(n)]
    s = CounterSeries(
        [t0 + 15 * i for i in range(n)], bad, [b + g for b, g in zip(bad, good, strict=True)], good
    )
    st = evaluate(slo(99.9), s, T0 + timedelta(hours=2))
    # 2h window [0, 7200] holds all 481 samples: increase(bad) = 240 - 0 + 239 (the value
    # before the reset) = 479, good 19 * 479; no extrapolation (the window is covered).
    at = P.to_ms(t0 + 7200)
    assert P.increase(s.times_ms, bad, at, 7_200_000) == 479.0
    assert P.increase(s.times_ms, good, at, 7_200_000) == 19.0 * 479
    assert ratios(st)["2h"] == pytest.approx(0.05, rel=1e-14)
    assert ratios(st)["5m"] == pytest.approx(0.05, rel=1e-14)
    assert st.events_in_period == 20.0 * 479


def test_scrape_gap_longer_than_the_short_window_leaves_it_empty() -> None:
    # Samples every 15 s for 2 h, then nothing for the last 10 minutes.
    s = steady(hours=2)
    now = T0 + timedelta(hours=2, minutes=10)
    st = evaluate(slo(99.9), s, now)
    r = ratios(st)
    assert r["5m"] is None  # no sample in [now-5m, now]
    assert st.window("5m").burn_rate is None
    # 30m window [1h40, 2h10]: samples 1h40..2h; 10 min to the end is beyond 1.1 x 15 s, so
    # both counters extrapolate 7.5 s there: the ratio is unchanged.
    assert r["30m"] == pytest.approx(0.05, rel=1e-14)
    page = st.alerts[0]
    assert (page.long, page.short, page.short_burn, page.firing) == ("1h", "5m", None, False)
    assert st.alerts[1].firing  # 6h/30m still sees the burn
    assert st.firing_severity == "page"


def test_window_with_fewer_than_two_samples_is_none() -> None:
    s = steady(hours=1, step=600)  # one sample every 10 minutes
    st = evaluate(slo(99.9), s, T0 + timedelta(hours=1))
    r = ratios(st)
    assert r["5m"] is None
    assert r["30m"] == pytest.approx(0.05, rel=1e-14)  # [30m, 60m]: four samples


def test_empty_series_is_all_none() -> None:
    st = evaluate(slo(99.9), CounterSeries([], [], []), T0)
    assert all(w.error_ratio is None and w.burn_rate is None for w in st.windows)
    assert st.period_error_ratio is None
    assert st.budget_remaining_ratio is None
    assert st.period_burn_rate is None
    assert st.events_in_period == 0.0
    assert st.firing_severity is None


def test_inclusive_start_boundary_gives_the_5m_window_two_samples() -> None:
    # Two samples exactly 5 minutes apart, the second at now: Prometheus 2.x sees both.
    t0 = T0.timestamp()
    s = CounterSeries([t0, t0 + 300], [0.0, 3.0], [0.0, 30.0], [0.0, 27.0])
    st = evaluate(slo(99.9), s, T0 + timedelta(minutes=5))
    assert ratios(st)["5m"] == pytest.approx(0.1, rel=1e-15)
    # A millisecond later the first sample falls out: no result.
    st = evaluate(slo(99.9), s, T0 + timedelta(minutes=5, milliseconds=1))
    assert ratios(st)["5m"] is None


def test_samples_after_now_are_ignored() -> None:
    s = steady(hours=2)
    a = evaluate(slo(99.9), s, T0 + timedelta(hours=1))
    cut = 241
    s1 = CounterSeries(s.times[:cut], s.bad[:cut], s.total[:cut], list(s.good or [])[:cut])
    b = evaluate(slo(99.9), s1, T0 + timedelta(hours=1))
    assert a == b


# --- the period ratio ------------------------------------------------------------------------


def test_period_ratio_is_sloths_mean_of_recorded_5m_ratios() -> None:
    # First hour 10 % bad, second hour none: the 5m ratio is 0.1 for an hour, 0 for an hour.
    n = 481
    t0 = T0.timestamp()
    bad = [float(min(i, 240) * 2) for i in range(n)]
    good = [18.0 * min(i, 240) + 20.0 * max(i - 240, 0) for i in range(n)]
    s = CounterSeries(
        [t0 + 15 * i for i in range(n)], bad, [b + g for b, g in zip(bad, good, strict=True)], good
    )
    now = T0 + timedelta(hours=2)
    st = evaluate(slo(99.9), s, now, eval_interval=60)
    # The same thing built from the scalar functions, tick by tick, as Prometheus would.
    now_ms = P.to_ms(now.timestamp())
    ticks = P.eval_ticks(now_ms, 30 * 86_400_000, 60_000)

    def rule(t: int) -> float | None:
        rb = P.rate(s.times_ms, bad, t, 300_000)
        rg = P.rate(s.times_ms, good, t, 300_000)
        return None if rb is None or rg is None else P.div(rb, rb + rg)

    rec_t, rec_v = P.record(rule, ticks)
    assert len(rec_t) == 120  # ticks at 1 min .. 2 h (the tick at 0 has a single sample)
    assert st.period_error_ratio == P.sloth_period_ratio(rec_t, rec_v, now_ms, 30 * 86_400_000)
    # By hand: 60 ticks at 0.1 (1..60 min), one mixed tick window at 61..64 min, the rest 0;
    # the mean is a little above 60 * 0.1 / 120.
    assert 0.05 < (st.period_error_ratio or 0) < 0.054
    # Budget arithmetic exactly as Sloth's rules chain it.
    assert st.period_burn_rate == P.div(st.period_error_ratio or 0, 1 - 0.9990000000000001)
    assert st.budget_remaining_ratio == 1 - (st.period_burn_rate or 0)


def test_eval_interval_sets_the_recording_ticks() -> None:
    s = steady(hours=2, bad_per=1, good_per=19)
    now = T0 + timedelta(hours=2)
    a = evaluate(slo(99.9), s, now, eval_interval=60)
    b = evaluate(slo(99.9), s, now, eval_interval=300)
    assert a.period_error_ratio == pytest.approx(b.period_error_ratio or 0, rel=1e-14)
    with pytest.raises(ValueError):
        evaluate(slo(99.9), s, now, eval_interval=0)


def test_an_idle_5m_window_makes_the_period_ratio_none_like_prometheus_nan() -> None:
    # 1 h of traffic, then 20 idle minutes: those 5m windows record 0/0 = NaN, and
    # sum_over_time over the period is NaN in Prometheus too. Low-traffic SLOs see this.
    n = 321
    t0 = T0.timestamp()
    bad = [float(min(i, 240)) for i in range(n)]
    good = [19.0 * min(i, 240) for i in range(n)]
    s = CounterSeries(
        [t0 + 15 * i for i in range(n)], bad, [b + g for b, g in zip(bad, good, strict=True)], good
    )
    st = evaluate(slo(99.9), s, T0 + timedelta(minutes=80))
    assert ratios(st)["5m"] is None  # 0/0
    assert ratios(st)["1h"] == pytest.approx(0.05, rel=1e-14)
    assert st.period_error_ratio is None
    assert st.budget_remaining_ratio is None
    assert st.events_in_period == pytest.approx(20 * 240, rel=1e-14)


# --- the "events" period ratio (low-traffic SLOs) ---------------------------------------------

RENEWAL = next(s for s in default_slos().slos if s.sli == "renewal_success")


def sparse(
    days: float = 3,
    step: float = 60,
    good_at: tuple[float, ...] = (),
    bad_at: tuple[float, ...] = (),
) -> CounterSeries:
    """Counters from 0 scraped every ``step`` seconds for ``days``; an event at each offset (in
    hours) of ``good_at``/``bad_at``, counted by the first scrape at or after it."""
    events = [SLIEvent(T0 + timedelta(hours=h), "renewal_success", True) for h in good_at]
    events += [SLIEvent(T0 + timedelta(hours=h), "renewal_success", False) for h in bad_at]
    return CounterSeries.from_events(events, T0, T0 + timedelta(days=days), step=step)


LOW_TRAFFIC = {"good_at": (2.5, 9.1, 20, 31.7, 44, 50.2, 66), "bad_at": (27.3,)}


def test_low_traffic_period_ratio_counts_events_where_the_optimised_one_is_nan() -> None:
    # Eight renewals in three days, one failed: almost every 5m window is 0/0.
    s = sparse(**LOW_TRAFFIC)
    now = T0 + timedelta(days=3)
    assert RENEWAL.period_ratio == "events"
    st = evaluate(RENEWAL, s, now)
    optimized = evaluate(dataclasses.replace(RENEWAL, period_ratio="optimized"), s, now)
    assert optimized.period_error_ratio is None  # Sloth's mean of 5m ratios: NaN in Prometheus
    assert optimized.period_burn_rate is None and optimized.budget_remaining_ratio is None
    assert ratios(st)["5m"] is None  # no event in the last 5 minutes: 0/0

    # sum(rate(bad[30d])) / sum(rate(bad[30d]) + rate(good[30d])) at now, as PromQL computes it.
    now_ms, period_ms = P.to_ms(now.timestamp()), 30 * 86_400_000
    rb = P.rate(s.times_ms, s.bad, now_ms, period_ms)
    rg = P.rate(s.times_ms, s.good or [], now_ms, period_ms)
    assert rb is not None and rg is not None
    assert st.period_error_ratio == P.div(rb, rb + rg)
    # The counters start at 0 (no extrapolation) and the window covers them: 1 bad in 8.
    assert st.period_error_ratio == pytest.approx(1 / 8, rel=1e-15)
    budget = 1 - 0.99  # slo:error_budget:ratio, vector(1-0.99)
    assert st.period_burn_rate == P.div(st.period_error_ratio, budget)
    assert st.period_burn_rate == pytest.approx(12.5, rel=1e-12)
    assert st.budget_remaining_ratio == 1 - st.period_burn_rate
    assert st.events_in_period == 8.0
    # The other windows and the alerts do not depend on the period ratio.
    assert st.windows == optimized.windows and st.alerts == optimized.alerts
    d = st.to_dict()
    assert d["period_ratio"] == "events" and d["period_error_ratio"] == st.period_error_ratio
    assert optimized.to_dict()["period_ratio"] == "optimized"


def test_events_period_ratio_is_the_ratio_of_rates_over_the_period() -> None:
    # On busy traffic the events ratio is the period window's ratio, events-weighted: the first
    # hour has 10 % errors at 20 events per 15 s, the second hour none at 5 events per 15 s.
    n = 481
    t0 = T0.timestamp()
    bad = [float(min(i, 240) * 2) for i in range(n)]
    good = [18.0 * min(i, 240) + 5.0 * max(i - 240, 0) for i in range(n)]
    s = CounterSeries(
        [t0 + 15 * i for i in range(n)], bad, [b + g for b, g in zip(bad, good, strict=True)], good
    )
    now = T0 + timedelta(hours=2)
    spec = slo(99.9, period_ratio="events")
    st = evaluate(spec, s, now)
    # 480 bad of 4800 + 1200 events; the mean of the 5m ratios would be about 0.05 instead.
    assert st.period_error_ratio == pytest.approx(480 / 6000, rel=1e-14)
    assert evaluate(slo(99.9), s, now).period_error_ratio == pytest.approx(0.05, rel=0.1)
    # eval_interval only sets the optimised rule's recording ticks.
    assert evaluate(spec, s, now, eval_interval=300) == st


def test_events_period_ratio_is_none_without_events_or_samples() -> None:
    now = T0 + timedelta(days=3)
    st = evaluate(RENEWAL, sparse(), now)  # scraped for three days, nothing happened: 0/0
    assert st.period_error_ratio is None
    assert st.period_burn_rate is None and st.budget_remaining_ratio is None
    assert st.events_in_period == 0.0
    assert evaluate(RENEWAL, CounterSeries([], [], []), now).period_error_ratio is None
    one = CounterSeries([T0.timestamp()], [1.0], [5.0], [4.0])  # a single sample: no rate
    assert evaluate(RENEWAL, one, T0 + timedelta(minutes=1)).period_error_ratio is None
    # An event older than the period no longer counts.
    s = sparse(days=40, step=600, good_at=(1,), bad_at=(2,))
    assert evaluate(RENEWAL, s, T0 + timedelta(days=20)).period_error_ratio is not None
    assert evaluate(RENEWAL, s, T0 + timedelta(days=40)).period_error_ratio is None


def test_unknown_period_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="period_ratio 'fast'"):
        evaluate(slo(99.9, period_ratio="fast"), steady(), T0 + timedelta(hours=2))


# --- status and JSON -------------------------------------------------------------------------


def test_firing_severity_ticket_when_only_ticket_fires() -> None:
    # 1 % errors against 99.9: burn 10 is above the ticket factors (3, 1), below the page ones.
    s = steady(hours=4, bad_per=1, good_per=99)
    st = evaluate(slo(99.9), s, T0 + timedelta(hours=4))
    assert [a.firing for a in st.alerts] == [False, True, True, True]
    # 6h/30m page at factor 6 fires too: 10 > 6. Page beats ticket.
    assert st.firing_severity == "page"
    spec = slo(99.9, burn_windows=DEFAULT_BURN_WINDOWS[:1] + DEFAULT_BURN_WINDOWS[2:])
    st = evaluate(spec, s, T0 + timedelta(hours=4))
    assert st.firing_severity == "ticket"


def test_to_dict_is_json_ready() -> None:
    st = evaluate(slo(99.9), steady(hours=1), T0 + timedelta(hours=1, minutes=10))
    d = st.to_dict()
    text = json.dumps(d, allow_nan=False)  # no NaN/Inf ever
    back = json.loads(text)
    assert back["sloth_id"] == "certpilot-cert-valid-ratio"
    assert back["at"] == "2025-03-01T01:10:00+00:00"
    assert [w["window"] for w in back["windows"]] == list(SLI_WINDOWS)
    assert back["windows"][0]["error_ratio"] is None  # 5m: no samples in the last 10 minutes
    assert back["alerts"][0]["threshold_error_ratio"] == 14.4 * 0.0009999999999999432
    assert back["firing_severity"] == "page"
    assert set(back) >= {
        "period_error_ratio",
        "budget_remaining_ratio",
        "period_burn_rate",
        "events_in_period",
    }


# --- series construction ---------------------------------------------------------------------


def test_from_samples_sorts_dedupes_and_sums_total() -> None:
    samples = [
        SLISample(T0 + timedelta(seconds=30), "valid_ratio", 20.0, 2.0),
        SLISample(T0, "valid_ratio", 0.0, 0.0),
        SLISample(T0 + timedelta(seconds=15), "valid_ratio", 9.0, 1.0),
        SLISample(T0 + timedelta(seconds=15), "valid_ratio", 10.0, 1.0),  # same instant: last wins
    ]
    s = CounterSeries.from_samples(samples)
    assert list(s.times) == [T0.timestamp(), T0.timestamp() + 15, T0.timestamp() + 30]
    assert list(s.bad) == [0.0, 1.0, 2.0]
    assert list(s.total) == [0.0, 11.0, 22.0]
    assert s.good is not None and list(s.good) == [0.0, 10.0, 20.0]
    assert len(CounterSeries.from_samples([])) == 0
    with pytest.raises(ValueError, match="several SLIs"):
        CounterSeries.from_samples([samples[0], dataclasses.replace(samples[1], sli="other")])


def test_counter_series_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="length"):
        CounterSeries([0.0, 1.0], [0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="ascending"):
        CounterSeries([1.0, 1.0], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="timezone"):
        evaluate(BASE, CounterSeries([], [], []), datetime(2025, 1, 1))


def test_from_events_counts_what_each_scrape_would_see() -> None:
    ev = [
        SLIEvent(T0 - timedelta(hours=1), "valid_ratio", True),  # before start: first sample
        SLIEvent(T0 + timedelta(seconds=60), "valid_ratio", False),  # exactly at a scrape
        SLIEvent(T0 + timedelta(seconds=61), "valid_ratio", True),
        SLIEvent(T0 + timedelta(seconds=119), "valid_ratio", True),
        SLIEvent(T0 + timedelta(seconds=500), "valid_ratio", False),  # after end: dropped
    ]
    s = CounterSeries.from_events(ev, T0, T0 + timedelta(seconds=120), step=60)
    assert list(s.times) == [T0.timestamp() + x for x in (0, 60, 120)]
    assert list(s.bad) == [0.0, 1.0, 1.0]
    assert s.good is not None and list(s.good) == [1.0, 1.0, 3.0]
    assert list(s.total) == [1.0, 2.0, 4.0]


# --- burn windows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("windows", "objective", "expected"),
    [
        (
            (BurnWindow("page", "5m", "1h", 14.4),),
            99.9,
            "page 5m/1h: the short window 1h is not shorter than the long 5m",
        ),
        (
            (BurnWindow("page", "1h", "1h", 14.4),),
            99.9,
            "page 1h/1h: the short window 1h is not shorter than the long 1h",
        ),
        (
            (BurnWindow("ticket", "60d", "6h", 1.0),),
            99.9,
            "ticket 60d/6h: the long window 60d is longer than the period 30d",
        ),
        (
            (BurnWindow("page", "1h", "5x", 14.4),),
            99.9,
            "page 1h/5x: unknown short window '5x' (a duration such as 5m, 1h, 3d)",
        ),
        (
            (BurnWindow("page", "60m", "5m", 14.4),),
            99.9,
            "page 60m/5m: write the long window '60m' as '1h' (rule names)",
        ),
        (
            (BurnWindow("warning", "1h", "5m", 14.4),),
            99.9,
            "warning 1h/5m: severity 'warning' is not page or ticket",
        ),
        (
            (BurnWindow("page", "1h", "5m", 0.0),),
            99.9,
            "page 1h/5m: factor 0.0 must be a positive number",
        ),
        (
            (BurnWindow("page", "1h", "5m", math.nan),),
            99.9,
            "page 1h/5m: factor nan must be a positive number",
        ),
        (
            # 10 x 10 % = exactly 100 %: Sloth needs ratio > 1, which cannot happen either.
            (BurnWindow("page", "1h", "5m", 10.0),),
            90.0,
            "page 1h/5m: factor 10 needs an error ratio of 100% with objective 90%, "
            "which can never happen",
        ),
        (
            (BurnWindow("page", "6h", "30m", 6.0),),
            80.0,
            "page 6h/30m: factor 6 needs an error ratio of 120% with objective 80%, "
            "which can never happen",
        ),
        ((), 99.9, "no burn-rate windows: nothing can ever alert"),
        (
            (BurnWindow("page", "1h", "5m", 14.4), BurnWindow("page", "1h", "5m", 14.4)),
            99.9,
            "page 1h/5m: duplicate of an earlier window",
        ),
    ],
)
def test_check_burn_windows_rejects(
    windows: tuple[BurnWindow, ...], objective: float, expected: str
) -> None:
    assert check_burn_windows(slo(objective, burn_windows=windows)) == [expected]


def test_workbook_windows_fit_every_preset_and_99_9() -> None:
    for s in default_slos().slos:
        assert check_burn_windows(s) == []
    # The highest factor, 14.4, works down to a 93.06 % objective.
    assert check_burn_windows(slo(93.1)) == []
    assert len(check_burn_windows(slo(93.0))) == 1


def test_validate_slo_raises_config_error_naming_the_window() -> None:
    validate_slo(slo(99.9), "slos.yaml")
    bad = slo(
        90, burn_windows=(BurnWindow("page", "1h", "5m", 14.4), BurnWindow("page", "1h", "1h", 6.0))
    )
    with pytest.raises(ConfigError) as e:
        validate_slo(bad, "slos.yaml", index=2)
    assert e.value.source == "slos.yaml"
    assert e.value.field == "slos[2].burn_windows[0]"
    assert str(e.value) == (
        "slos.yaml: slos[2].burn_windows[0]: page 1h/5m: factor 14.4 needs an error ratio of "
        "144% with objective 90%, which can never happen (and 1 more problem)"
    )
    with pytest.raises(ConfigError) as e:
        validate_slo(bad, "slos.yaml")
    assert e.value.field == "slos[cert-valid-ratio].burn_windows[0]"


def test_windows_and_period_source_follow_the_burn_windows() -> None:
    assert period_source_window(BASE) == "5m"
    assert evaluated_windows(BASE) == SLI_WINDOWS
    custom = slo(
        99.9,
        burn_windows=(BurnWindow("page", "4h", "10m", 10.0), BurnWindow("ticket", "3d", "2m", 1.0)),
    )
    assert period_source_window(custom) == "10m"
    assert evaluated_windows(custom) == (
        "2m",
        "5m",
        "10m",
        "30m",
        "1h",
        "2h",
        "4h",
        "6h",
        "1d",
        "3d",
    )
    st = evaluate(custom, steady(hours=5), T0 + timedelta(hours=5))
    assert st.window("4h") is not None and st.window("2m") is not None


# --- the numpy batch path changes nothing ------------------------------------------------------


def _bursty(seed: int) -> CounterSeries:
    import random

    rng = random.Random(seed)
    t0 = T0.timestamp()
    times: list[float] = []
    bad: list[float] = []
    good: list[float] = []
    t, b, g = t0, 0.0, 0.0
    for i in range(3000):
        t += rng.choice([15, 15, 15, 14.999, 15.001, 60, 90])
        if i % 700 == 350:  # restart
            b, g = 0.0, 0.0
        b += rng.choice([0, 0, 0, 1, 5]) if 1000 < i < 1300 else rng.choice([0, 0, 0, 0, 1])
        g += rng.choice([5, 10, 20])
        times.append(t)
        bad.append(b)
        good.append(g)
    return CounterSeries(times, bad, [x + y for x, y in zip(bad, good, strict=True)], good)


@pytest.mark.skipif(not P.HAVE_NUMPY, reason="numpy is not installed")
@pytest.mark.parametrize("seed", range(3))
def test_numpy_and_pure_python_give_the_same_status(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = slo(99.0, period="1d")
    s = _bursty(seed)
    ats = [s.times[-1] - x for x in (0, 3_000, 20_000)]
    fast = [evaluate(spec, s, datetime.fromtimestamp(at, UTC)) for at in ats]
    monkeypatch.setattr(P, "HAVE_NUMPY", False)
    s = _bursty(seed)  # fresh caches
    slow = [evaluate(spec, s, datetime.fromtimestamp(at, UTC)) for at in ats]
    assert fast == slow
    assert any(st.period_error_ratio is not None for st in fast)


def test_millisecond_conversion_and_order_check_agree_across_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import random

    rng = random.Random(3)
    secs = [1.7e9 + rng.uniform(0, 1e6) for _ in range(500)] + [0.0005, 0.0015, 2.5e-3, -0.0005]
    fast = P.to_ms_many(secs)
    times = sorted(set(fast))
    times_dup = [*times[:100], times[99], *times[100:]]
    fast_checks = (P.first_not_ascending(times), P.first_not_ascending(times_dup))
    monkeypatch.setattr(P, "HAVE_NUMPY", False)
    assert P.to_ms_many(secs) == fast == [P.to_ms(x) for x in secs]
    assert (P.first_not_ascending(times), P.first_not_ascending(times_dup)) == fast_checks
    assert fast_checks == (None, 100)
