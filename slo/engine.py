"""The in-process SLO engine: error ratios, burn rates, budgets and multi-window alerts.

Pure functions over counter samples with the evaluation instant passed in (no I/O, no clock
reads). Every number is the one Prometheus 2.42 computes from the Sloth-style recording rules
that :mod:`slo.rules` generates, on the same samples (see :mod:`slo.promql` for the semantics,
``tests/unit/test_promql.py`` for the proof against ``promtool``):

==================================  ==============================================================
engine                              Prometheus series
==================================  ==============================================================
``WindowResult.error_ratio``        ``slo:sli_error:ratio_rate<w>`` = ``sum(rate(bad[w])) /
                                    sum(rate(total[w]))`` at ``now``
``WindowResult.burn_rate``          that ratio ``/ on(...) slo:error_budget:ratio``
``SLOStatus.period_error_ratio``    ``slo:sli_error:ratio_rate30d``, as ``slo.period_ratio``
                                    says: ``"optimized"`` (Sloth's default)
                                    ``sum_over_time(ratio_rate5m[30d]) / count_over_time(...)``
                                    over the 5m ratio as recorded every ``eval_interval``;
                                    ``"events"`` (Sloth's non-optimised rule)
                                    ``sum(rate(bad[30d])) / sum(rate(total[30d]))``
``SLOStatus.period_burn_rate``      ``slo:period_burn_rate:ratio``
``SLOStatus.budget_remaining_ratio``  ``slo:period_error_budget_remaining:ratio`` (may be < 0)
``AlertCondition.firing``           one ``short and long`` block of Sloth's burn-rate alert
==================================  ==============================================================

The optimised period ratio is a mean of 5-minute ratios (each 5-minute window weighs the same
whatever its traffic), not events-weighted; it is what Sloth's dashboards show and what
Prometheus alerts on, so the engine reports the same. The 5m series is simulated as if the rule
group had run at ``now``, ``now - eval_interval``, ... back to ``now - period`` (both ends
inclusive, 2.x range semantics). The ``"events"`` period ratio is events-weighted: the same
``rate()`` ratio as the other windows, over the whole period, at ``now`` (``eval_interval`` plays
no part in it).

"No number" is ``None``. PromQL would produce no sample (fewer than two samples in the window)
or ``NaN`` (``0/0``: no events at all in the window); the engine reports both as ``None``. With
the optimised period ratio, a single event-free 5-minute window inside the period makes
Prometheus' ``ratio_rate30d`` ``NaN`` (``sum_over_time`` propagates it), so a low-traffic SLO has
``period_error_ratio is None`` exactly when its Prometheus recording is ``NaN``: such SLOs use
``period_ratio="events"``, which is ``None`` only when the period holds no event (or fewer
than two samples).
``±Inf`` (events counted as bad but none in total) stays a float in the dataclasses;
:meth:`SLOStatus.to_dict` writes every non-finite number as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from certpilot.domain.errors import ConfigError
from certpilot.domain.sli import SLIEvent, SLISample
from slo import promql
from slo.spec import (
    PERIOD_RATIO_EVENTS,
    PERIOD_RATIO_OPTIMIZED,
    PERIOD_RATIOS,
    SLI_WINDOWS,
    BurnWindow,
    SLOSpec,
    window_name,
    window_seconds,
)

__all__ = [
    "SEVERITIES",
    "AlertCondition",
    "CounterSeries",
    "SLOStatus",
    "WindowResult",
    "alert_threshold",
    "check_burn_windows",
    "evaluate",
    "evaluated_windows",
    "period_source_window",
    "validate_slo",
]

SEVERITIES: tuple[str, ...] = ("page", "ticket")  # page beats ticket


@dataclass(frozen=True)
class CounterSeries:
    """Cumulative SLI counters scraped together at the same instants.

    ``times`` are unix seconds, strictly ascending after rounding to milliseconds (Prometheus'
    resolution); ``bad`` and ``total`` are the cumulative bad and all-event counts at those
    instants. Counter resets (a process restart) are allowed and handled as ``rate()`` does.

    ``good``, when given, is the cumulative good count. certpilot's preset total query is
    ``sum(rate(certpilot_sli_events_total{sli="..."}[w]))``, a sum over the ``result="bad"``
    and ``result="good"`` series, and ``rate(bad) + rate(good)`` is not always bit-equal to
    ``rate(bad + good)`` (each series gets its own zero-point clamp). With ``good`` the engine
    computes the former, exactly like Prometheus; without it, ``rate(total)``.
    """

    times: Sequence[float]
    bad: Sequence[float]
    total: Sequence[float]
    good: Sequence[float] | None = None
    times_ms: list[int] = field(init=False, repr=False, compare=False)
    _resets: dict[str, list[int]] = field(init=False, repr=False, compare=False)
    _batch: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.times)
        if (
            len(self.bad) != n
            or len(self.total) != n
            or (self.good is not None and len(self.good) != n)
        ):
            raise ValueError("CounterSeries: times, bad, total (and good) differ in length")
        ms = promql.to_ms_many(self.times)
        i = promql.first_not_ascending(ms)
        if i is not None:
            raise ValueError(
                f"CounterSeries: times must be strictly ascending (index {i}: {self.times[i]})"
            )
        object.__setattr__(self, "times_ms", ms)
        object.__setattr__(self, "_resets", {})
        object.__setattr__(self, "_batch", {})

    def __len__(self) -> int:
        return len(self.times)

    @classmethod
    def from_samples(cls, samples: Sequence[SLISample]) -> CounterSeries:
        """Samples of one SLI, in any order; of two samples at the same millisecond the later
        in ``samples`` wins (Prometheus keeps one sample per timestamp)."""
        slis = {s.sli for s in samples}
        if len(slis) > 1:
            raise ValueError(f"CounterSeries.from_samples: samples of several SLIs {sorted(slis)}")
        by_ms: dict[int, SLISample] = {}
        for s in samples:
            by_ms[promql.to_ms(_aware(s.at).timestamp())] = s
        keys = sorted(by_ms)
        rows = [by_ms[k] for k in keys]
        return cls(
            times=[k / 1000 for k in keys],
            bad=[s.bad_total for s in rows],
            total=[s.total for s in rows],
            good=[s.good_total for s in rows],
        )

    @classmethod
    def from_events(
        cls, events: Sequence[SLIEvent], start: datetime, end: datetime, step: float = 60.0
    ) -> CounterSeries:
        """Count ``events`` the way a scrape every ``step`` seconds from ``start`` to ``end``
        (inclusive) would see them: at each instant, the events with ``at <=`` that instant.

        Events before ``start`` are counted in the first sample (the counters' starting value).
        Instants are compared as float unix seconds, so an event within a microsecond of a
        scrape instant may land on either side. About 0.3 s per million events here: the store
        should keep counters as events arrive rather than rebuild them.
        """
        if step <= 0:
            raise ValueError("step must be positive")
        t0 = _aware(start).timestamp()
        n = int((_aware(end).timestamp() - t0) // step) + 1
        if n < 1:
            raise ValueError("end is before start")
        bad_per = [0] * n
        good_per = [0] * n
        for e in events:
            # Sample i at t0 + i*step counts every event with at <= its instant.
            i = math.ceil((e.at.timestamp() - t0) / step)
            if i >= n:
                continue
            if i < 0:
                i = 0
            if e.good:
                good_per[i] += 1
            else:
                bad_per[i] += 1
        times = [t0 + i * step for i in range(n)]
        bad: list[float] = []
        good: list[float] = []
        total: list[float] = []
        b = g = 0
        for i in range(n):
            b += bad_per[i]
            g += good_per[i]
            bad.append(float(b))
            good.append(float(g))
            total.append(float(b + g))
        return cls(times=times, bad=bad, total=total, good=good)

    def _den_names(self) -> tuple[str, ...]:
        return ("bad", "good") if self.good is not None else ("total",)

    def _column(self, name: str) -> Sequence[float]:
        if name == "good":
            assert self.good is not None
            return self.good
        return self.bad if name == "bad" else self.total

    def _batch_column(self, name: str) -> promql.Floats:
        """The column converted once for :mod:`slo.promql`'s batch functions."""
        if name not in self._batch:
            self._batch[name] = promql.batch_floats(self._column(name))
        col: promql.Floats = self._batch[name]
        return col

    def _batch_times(self) -> promql.Ints:
        if "times" not in self._batch:
            self._batch["times"] = promql.batch_ints(self.times_ms)
        times: promql.Ints = self._batch["times"]
        return times

    def _reset_prefix(self, name: str) -> list[int]:
        """Cached :func:`slo.promql.reset_prefix` of a column (computed on first use)."""
        if name not in self._resets:
            self._resets[name] = promql.reset_prefix(self._batch_column(name))
        return self._resets[name]


@dataclass(frozen=True)
class WindowResult:
    """The SLI error ratio over one window ending at the evaluation instant, and the burn rate
    (error ratio / error budget). ``None``: no data (see the module docstring)."""

    window: str
    error_ratio: float | None
    burn_rate: float | None


@dataclass(frozen=True)
class AlertCondition:
    """One multi-window burn-rate condition (a :class:`slo.spec.BurnWindow`) at ``now``.

    ``firing`` follows Sloth's expression exactly: the error ratio over *both* windows is
    strictly greater than ``factor * (100 - objective) / 100`` (see :func:`alert_threshold`).
    ``long_burn``/``short_burn`` are the burn rates, for display.
    """

    severity: str
    long: str
    short: str
    factor: float
    long_burn: float | None
    short_burn: float | None
    firing: bool


@dataclass(frozen=True)
class SLOStatus:
    """Everything the engine knows about one SLO at ``at``.

    ``windows`` follow :func:`evaluated_windows`; ``alerts`` follow ``slo.burn_windows``.
    ``events_in_period`` is ``sum(increase(total[period]))`` as Prometheus extrapolates it
    (0.0 when there is no data).
    """

    slo: SLOSpec
    at: datetime
    windows: tuple[WindowResult, ...]
    period_error_ratio: float | None
    budget_remaining_ratio: float | None
    period_burn_rate: float | None
    alerts: tuple[AlertCondition, ...]
    events_in_period: float

    @property
    def firing_severity(self) -> str | None:
        """``"page"`` if any page condition fires, else ``"ticket"`` if any ticket one does."""
        firing = {a.severity for a in self.alerts if a.firing}
        for sev in SEVERITIES:
            if sev in firing:
                return sev
        return None

    def window(self, name: str) -> WindowResult | None:
        for w in self.windows:
            if w.window == name:
                return w
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``certpilot slo status --format json`` (one object per SLO).

        Ratios are fractions (0.001, not 0.1 %); non-finite numbers and "no data" are ``null``.
        """
        s = self.slo
        return {
            "sloth_id": s.id,
            "service": s.service,
            "slo": s.name,
            "sli": s.sli,
            "objective": s.objective,
            "objective_ratio": s.objective_ratio,
            "error_budget_ratio": s.error_budget_ratio,
            "period": s.period,
            "period_ratio": s.period_ratio,
            "at": self.at.isoformat(),
            "windows": [
                {
                    "window": w.window,
                    "error_ratio": _json_num(w.error_ratio),
                    "burn_rate": _json_num(w.burn_rate),
                }
                for w in self.windows
            ],
            "period_error_ratio": _json_num(self.period_error_ratio),
            "period_burn_rate": _json_num(self.period_burn_rate),
            "budget_remaining_ratio": _json_num(self.budget_remaining_ratio),
            "events_in_period": _json_num(self.events_in_period),
            "alerts": [
                {
                    "severity": a.severity,
                    "long": a.long,
                    "short": a.short,
                    "factor": a.factor,
                    "threshold_error_ratio": _json_num(alert_threshold(s, a.factor)),
                    "long_burn": _json_num(a.long_burn),
                    "short_burn": _json_num(a.short_burn),
                    "firing": a.firing,
                }
                for a in self.alerts
            ],
            "firing_severity": self.firing_severity,
        }


def _json_num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("the SLO engine needs timezone-aware datetimes")
    return at


def _no_nan(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


# --- the pieces Prometheus rules are generated from --------------------------------------------


def alert_threshold(slo: SLOSpec, factor: float) -> float:
    """The error ratio a burn-rate condition must exceed, as Sloth's alert computes it:
    ``factor * ((100 - objective) / 100)`` (PromQL multiplies the two literals at run time).

    Note Sloth's alert budget ``(100 - 99.9) / 100 = 0.0009999999999999432`` differs in the last
    bits from its recorded ``slo:error_budget:ratio``, ``1-0.9990000000000001 =
    0.0009999999999998899`` (``99.9 / 100`` is ``0.9990000000000001``), which the burn rates use.
    """
    return factor * ((100.0 - slo.objective) / 100.0)


def period_source_window(slo: SLOSpec) -> str:
    """The window whose recorded ratio Sloth averages over the period (and divides by the
    budget for ``slo:current_burn_rate:ratio``): its ``PageQuick.ShortWindow``, i.e. the
    shortest short window of the page conditions; ``5m`` with the workbook defaults. Must stay
    the same choice as :mod:`slo.rules`."""
    pages = [bw for bw in slo.burn_windows if bw.severity == "page"] or list(slo.burn_windows)
    if not pages:
        return SLI_WINDOWS[0]
    return min((bw.short for bw in pages), key=window_seconds)


def evaluated_windows(slo: SLOSpec) -> tuple[str, ...]:
    """Windows with a :class:`WindowResult`: Sloth's ``SLI_WINDOWS`` plus every window the burn
    conditions use, shortest first (the same set :mod:`slo.rules` records)."""
    used = set(SLI_WINDOWS)
    for bw in slo.burn_windows:
        used.update((bw.short, bw.long))
    return tuple(sorted(used, key=window_seconds))


# --- evaluation --------------------------------------------------------------------------------


def _rates(
    series: CounterSeries, names: Sequence[str], at_ms: int, range_ms: int, *, is_rate: bool
) -> float | None:
    """``sum(rate(col[range]))`` (or ``increase``) over the named columns, in order; None when
    the window holds fewer than two samples."""
    t = series.times_ms
    lo, hi = promql.range_indices(t, at_ms, range_ms)
    total: float | None = None
    for name in names:
        v = promql.extrapolated_rate(
            t,
            series._column(name),
            lo,
            hi,
            at_ms - range_ms,
            at_ms,
            is_counter=True,
            is_rate=is_rate,
            resets=series._reset_prefix(name),
        )
        if v is None:
            return None
        total = v if total is None else total + v
    return total


def _window_ratio(series: CounterSeries, at_ms: int, range_ms: int) -> float | None:
    """``sum(rate(bad[w])) / sum(rate(total[w]))`` at ``at``: None without a sample, else the
    PromQL float (possibly NaN or Inf)."""
    num = _rates(series, ("bad",), at_ms, range_ms, is_rate=True)
    den = _rates(series, series._den_names(), at_ms, range_ms, is_rate=True)
    if num is None or den is None:
        return None
    return promql.div(num, den)


def _period_ratio(
    slo: SLOSpec, series: CounterSeries, now_ms: int, period_ms: int, interval_ms: int
) -> float | None:
    """``slo:sli_error:ratio_rate<period>`` at ``now`` as :mod:`slo.rules` generates it for
    ``slo.period_ratio`` (None: no sample; NaN and Inf as PromQL computes them)."""
    if slo.period_ratio == PERIOD_RATIO_EVENTS:
        # (sum(rate(bad[30d]))) / (sum(rate(total[30d]))): the SLI's own expression over the
        # period, including the bad + good sum of the preset total query.
        return _window_ratio(series, now_ms, period_ms)
    assert slo.period_ratio == PERIOD_RATIO_OPTIMIZED
    return promql.sloth_period_ratio_of_counters(
        series._batch_times(),
        [series._batch_column("bad")],
        [series._batch_column(name) for name in series._den_names()],
        now_ms,
        period_ms,
        interval_ms,
        window_seconds(period_source_window(slo)) * 1000,
    )


def evaluate(
    slo: SLOSpec, series: CounterSeries, now: datetime, *, eval_interval: float = 60.0
) -> SLOStatus:
    """Evaluate ``slo`` at ``now`` over ``series`` (samples after ``now`` are ignored).

    ``eval_interval`` is the rule group's evaluation interval in seconds: the optimised period
    ratio averages the short-window ratio recorded that often. Does not validate the burn
    windows (see :func:`validate_slo`); a window that is not a Prometheus duration, or a
    ``period_ratio`` other than ``"optimized"`` and ``"events"``, raises ValueError.
    Cost: with ``"optimized"``, one sliding pass over ``period / eval_interval`` ticks (43,201
    for 30d at 60 s); with ``"events"``, one ``rate()`` per counter over the period.
    """
    now_ms = promql.to_ms(_aware(now).timestamp())
    interval_ms = promql.to_ms(eval_interval)
    if interval_ms <= 0:
        raise ValueError("eval_interval must be positive")
    if slo.period_ratio not in PERIOD_RATIOS:
        raise ValueError(
            f"period_ratio {slo.period_ratio!r} is not one of {', '.join(PERIOD_RATIOS)}"
        )
    budget = slo.error_budget_ratio  # slo:error_budget:ratio, vector(1-<objective ratio>)
    ratios: dict[str, float | None] = {}
    windows: list[WindowResult] = []
    for w in evaluated_windows(slo):
        ratio = _window_ratio(series, now_ms, window_seconds(w) * 1000)
        ratios[w] = ratio
        burn = None if ratio is None else promql.div(ratio, budget)
        windows.append(WindowResult(w, _no_nan(ratio), _no_nan(burn)))

    alerts: list[AlertCondition] = []
    for bw in slo.burn_windows:
        threshold = alert_threshold(slo, bw.factor)
        lr, sr = ratios[bw.long], ratios[bw.short]
        firing = lr is not None and sr is not None and lr > threshold and sr > threshold
        alerts.append(
            AlertCondition(
                severity=bw.severity,
                long=bw.long,
                short=bw.short,
                factor=bw.factor,
                long_burn=_no_nan(None if lr is None else promql.div(lr, budget)),
                short_burn=_no_nan(None if sr is None else promql.div(sr, budget)),
                firing=firing,
            )
        )

    period_ms = window_seconds(slo.period) * 1000
    period_ratio = _period_ratio(slo, series, now_ms, period_ms, interval_ms)
    period_burn = None if period_ratio is None else promql.div(period_ratio, budget)
    remaining = None if period_burn is None else 1 - period_burn
    events = _rates(series, series._den_names(), now_ms, period_ms, is_rate=False)
    return SLOStatus(
        slo=slo,
        at=now,
        windows=tuple(windows),
        period_error_ratio=_no_nan(period_ratio),
        budget_remaining_ratio=_no_nan(remaining),
        period_burn_rate=_no_nan(period_burn),
        alerts=tuple(alerts),
        events_in_period=0.0 if events is None or math.isnan(events) else events,
    )


# --- validation --------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:.4g}%"


def _burn_window_problems(slo: SLOSpec) -> list[tuple[int | None, str]]:
    problems: list[tuple[int | None, str]] = []
    try:
        period_s: int | None = window_seconds(slo.period)
    except ValueError:
        period_s = None
        problems.append((None, f"period {slo.period!r} is not a Prometheus duration"))
    if not slo.burn_windows:
        problems.append((None, "no burn-rate windows: nothing can ever alert"))
    budget = (100.0 - slo.objective) / 100.0
    seen: set[BurnWindow] = set()
    for i, bw in enumerate(slo.burn_windows):
        name = f"{bw.severity} {bw.long}/{bw.short}"
        if bw.severity not in SEVERITIES:
            problems.append((i, f"{name}: severity {bw.severity!r} is not page or ticket"))
        secs: dict[str, int] = {}
        for role, w in (("long", bw.long), ("short", bw.short)):
            try:
                secs[role] = window_seconds(w)
            except ValueError:
                problems.append(
                    (i, f"{name}: unknown {role} window {w!r} (a duration such as 5m, 1h, 3d)")
                )
                continue
            canonical = window_name(secs[role])
            if canonical != w:
                problems.append(
                    (i, f"{name}: write the {role} window {w!r} as {canonical!r} (rule names)")
                )
        if "long" in secs and "short" in secs and secs["short"] >= secs["long"]:
            problems.append(
                (i, f"{name}: the short window {bw.short} is not shorter than the long {bw.long}")
            )
        if "long" in secs and period_s is not None and secs["long"] > period_s:
            problems.append(
                (i, f"{name}: the long window {bw.long} is longer than the period {slo.period}")
            )
        if not bw.factor > 0 or math.isinf(bw.factor):
            problems.append((i, f"{name}: factor {bw.factor!r} must be a positive number"))
        elif bw.factor * budget >= 1.0:
            # Sloth alerts on ratio > factor * budget and an error ratio cannot exceed 1.
            problems.append(
                (
                    i,
                    f"{name}: factor {bw.factor:g} needs an error ratio of "
                    f"{_pct(bw.factor * budget)} with objective {slo.objective:g}%, "
                    "which can never happen",
                )
            )
        if bw in seen:
            problems.append((i, f"{name}: duplicate of an earlier window"))
        seen.add(bw)
    return problems


def check_burn_windows(slo: SLOSpec) -> list[str]:
    """Why ``slo.burn_windows`` cannot work for ``slo``; empty when they are fine.

    Rejected: a severity other than page/ticket; a window that is not a Prometheus duration,
    or not written the way rule names spell it (``60m`` for ``1h``); a short window not
    shorter than its long one; a long window longer than the period; a factor that is not
    positive; a factor that can never fire because ``factor * (1 - objective)`` is at least
    100 % (Sloth fires on ``ratio > factor * budget``, and a ratio cannot exceed 1); duplicates.
    """
    return [msg for _, msg in _burn_window_problems(slo)]


def validate_slo(slo: SLOSpec, source: str, *, index: int | None = None) -> None:
    """Raise :class:`ConfigError` naming ``source`` and ``slos[<index or name>].burn_windows[i]``
    when :func:`check_burn_windows` finds a problem (the first one; the count of others is
    appended)."""
    problems = _burn_window_problems(slo)
    if not problems:
        return
    where = f"slos[{index if index is not None else slo.name}]"
    i, msg = problems[0]
    field_path = f"{where}.burn_windows[{i}]" if i is not None else f"{where}.burn_windows"
    if len(problems) > 1:
        msg += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    raise ConfigError(source, field_path, msg, has_value=False)
