"""The few PromQL functions the SLO engine needs, with Prometheus 2.42's exact semantics.

certpilot's in-process numbers must agree with what Prometheus computes from the generated
recording rules, to the last bit where possible (1e-12 is the promise). So this module copies the
*order of floating-point operations* of Prometheus 2.42's ``promql/functions.go`` and
``promql/engine.go`` rather than writing the formulas the natural way:

- Time is integer milliseconds, as in Prometheus; seconds appear only where Go divides an int64
  millisecond difference by 1000.
- Range selection ``v[r]`` evaluated at ``t`` keeps the samples with ``t - r <= ts <= t``: both
  ends inclusive (Prometheus 2.x; 3.0 made the start exclusive).
- Instant selection looks back up to 5 minutes (``--query.lookback-delta``), inclusive.
- ``rate``/``increase``/``delta`` are 2.42's ``extrapolatedRate``: counter-reset correction in
  sample order, the zero-point clamp applied to ``durationToStart`` *before* the 1.1 x average
  interval threshold is checked (the order changed later, prometheus/prometheus#13725), and
  ``factor = extrapolateToInterval / sampledInterval; factor /= range; result *= factor``.
- ``sum_over_time`` and ``avg_over_time`` use Kahan-Neumaier compensated summation
  (``kahanSumInc``): the 2.42 build shipped by Debian (``promtool`` 2.42.0+ds) computes
  ``sum_over_time([1e16, 1, 1, 1, 1]) == 1.0000000000000004e16``, which a plain running sum
  cannot produce. ``tests/unit/test_promql.py`` checks each of these against the real
  ``promtool test rules``.

Conventions: a function returns ``None`` where Prometheus returns *no sample* (empty vector);
``NaN`` and ``±Inf`` are ordinary float results, exactly as PromQL produces them (``0/0`` is
``NaN``, ``x/0`` is ``±Inf``). Series are two parallel sequences, ``times_ms`` ascending and
``values``; nothing here copies them. Stale markers are not modelled: a recorded series simply
has no sample at a tick where the rule produced none (range functions in 2.x drop stale markers
anyway).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

try:  # optional: the batch paths are several times faster with it, and bit-identical without
    import numpy as np

    HAVE_NUMPY = True
except ImportError:  # pragma: no cover - exercised only where numpy is absent
    HAVE_NUMPY = False

if TYPE_CHECKING:
    from numpy.typing import NDArray

    # The batch functions take lists or (already converted) numpy arrays alike.
    Floats: TypeAlias = Sequence[float] | NDArray[np.float64]
    Ints: TypeAlias = Sequence[int] | NDArray[np.int64]

__all__ = [
    "HAVE_NUMPY",
    "LOOKBACK_DELTA_MS",
    "avg_over_time",
    "batch_floats",
    "batch_ints",
    "count_over_time",
    "delta",
    "div",
    "duration_seconds",
    "eval_ticks",
    "extrapolated_rate",
    "first_not_ascending",
    "increase",
    "instant",
    "kahan_sum",
    "range_indices",
    "rate",
    "ratio_of_rates_at",
    "record",
    "reset_prefix",
    "sloth_period_ratio",
    "sloth_period_ratio_of_counters",
    "sum_over_time",
    "to_ms",
    "to_ms_many",
]

LOOKBACK_DELTA_MS = 5 * 60 * 1000  # Prometheus' default --query.lookback-delta


def to_ms(seconds: float) -> int:
    """Unix seconds -> integer milliseconds, the way Prometheus stores timestamps."""
    return round(seconds * 1000)


def to_ms_many(seconds: Floats) -> list[int]:
    """:func:`to_ms` of every element (numpy's ``rint`` rounds half to even, like ``round``)."""
    if HAVE_NUMPY and len(seconds) >= 64:
        ms: list[int] = (
            np.rint(np.asarray(seconds, dtype=np.float64) * 1000).astype(np.int64).tolist()
        )
        return ms
    return [round(t * 1000) for t in seconds]


def first_not_ascending(times_ms: Sequence[int]) -> int | None:
    """Index of the first timestamp not strictly after its predecessor, or None."""
    if HAVE_NUMPY and len(times_ms) >= 64:
        bad = np.flatnonzero(np.diff(np.asarray(times_ms, dtype=np.int64)) <= 0)
        return int(bad[0]) + 1 if bad.size else None
    for i in range(1, len(times_ms)):
        if times_ms[i] <= times_ms[i - 1]:
            return i
    return None


def batch_floats(values: Sequence[float]) -> Floats:
    """``values`` in the form the batch functions digest fastest: a float64 array with numpy,
    else unchanged. Convert once and reuse when the same column feeds several calls."""
    return np.asarray(values, dtype=np.float64) if HAVE_NUMPY else values


def batch_ints(values: Sequence[int]) -> Ints:
    """:func:`batch_floats` for millisecond timestamps."""
    return np.asarray(values, dtype=np.int64) if HAVE_NUMPY else values


def duration_seconds(range_ms: int) -> float:
    """Go's ``time.Duration.Seconds()`` for a millisecond duration (exact for whole seconds)."""
    sec, rem = divmod(range_ms, 1000)
    return float(sec) + float(rem * 1_000_000) / 1e9


def range_indices(times_ms: Sequence[int], at_ms: int, range_ms: int) -> tuple[int, int]:
    """Half-open index interval ``[lo, hi)`` of the samples in ``[at - range, at]`` (inclusive)."""
    return bisect_left(times_ms, at_ms - range_ms), bisect_right(times_ms, at_ms)


def instant(
    times_ms: Sequence[int],
    values: Sequence[float],
    at_ms: int,
    lookback_ms: int = LOOKBACK_DELTA_MS,
) -> float | None:
    """Instant-vector selection: the latest sample at or before ``at`` and no older than
    ``at - lookback`` (both inclusive, as in 2.x), else ``None``."""
    i = bisect_right(times_ms, at_ms) - 1
    if i < 0 or times_ms[i] < at_ms - lookback_ms:
        return None
    return values[i]


def div(a: float, b: float) -> float:
    """PromQL's float ``/`` (Go float64 division): ``x/0`` is ``±Inf``, ``0/0`` is ``NaN``."""
    try:
        return a / b
    except ZeroDivisionError:
        if math.isnan(a) or a == 0.0:
            return math.nan
        # The sign of an IEEE division by zero is the XOR of the operands' signs.
        return math.inf if (a > 0) == (math.copysign(1.0, b) > 0) else -math.inf


def reset_prefix(values: Floats) -> list[int]:
    """``p[i]`` = number of counter resets (a value lower than its predecessor) in ``values[:i+1]``.

    Lets a windowed rate skip its reset loop in O(1) when the window holds no reset.
    """
    if HAVE_NUMPY and len(values) >= 64:
        arr = np.asarray(values, dtype=np.float64)
        drops: list[int] = np.concatenate(([0], np.cumsum(arr[1:] < arr[:-1]))).tolist()
        return drops
    out = [0] * len(values)
    n = 0
    prev = values[0] if len(values) else 0.0
    for i, v in enumerate(values):
        if v < prev:
            n += 1
        out[i] = n
        prev = v
    return out


def _increase_raw(
    values: Floats, lo: int, hi: int, is_counter: bool, resets: Sequence[int] | None
) -> float:
    """``last - first`` plus, for counters, every value before a reset, in sample order."""
    result = float(values[hi - 1] - values[lo])
    if is_counter and (resets is None or resets[hi - 1] != resets[lo]):
        prev = values[lo]
        for i in range(lo + 1, hi):
            cur = values[i]
            if cur < prev:
                result += prev
            prev = cur
    return result


def extrapolated_rate(
    times_ms: Sequence[int],
    values: Sequence[float],
    lo: int,
    hi: int,
    range_start_ms: int,
    range_end_ms: int,
    *,
    is_counter: bool,
    is_rate: bool,
    resets: Sequence[int] | None = None,
) -> float | None:
    """Prometheus 2.42 ``extrapolatedRate`` over the samples ``[lo, hi)``.

    ``range_end - range_start`` is the selector's range. ``resets`` (from :func:`reset_prefix`)
    is an optional speed-up. Fewer than two samples: ``None`` (Prometheus drops the element).
    """
    n = hi - lo
    if n < 2:
        return None
    t_first = times_ms[lo]
    t_last = times_ms[hi - 1]
    result = _increase_raw(values, lo, hi, is_counter, resets)
    duration_to_start = (t_first - range_start_ms) / 1000
    duration_to_end = (range_end_ms - t_last) / 1000
    sampled_interval = (t_last - t_first) / 1000
    average = sampled_interval / (n - 1)
    first = values[lo]
    if is_counter and result > 0 and first >= 0:
        # 2.42 clamps to the counter's zero point before comparing with the threshold.
        duration_to_zero = sampled_interval * (first / result)
        if duration_to_zero < duration_to_start:
            duration_to_start = duration_to_zero
    threshold = average * 1.1
    interval = sampled_interval
    if duration_to_start < threshold:
        interval += duration_to_start
    else:
        interval += average / 2
    if duration_to_end < threshold:
        interval += duration_to_end
    else:
        interval += average / 2
    factor = interval / sampled_interval
    if is_rate:
        factor /= duration_seconds(range_end_ms - range_start_ms)
    return result * factor


def rate(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``rate(v[range])`` evaluated at ``at``."""
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return extrapolated_rate(
        times_ms, values, lo, hi, at_ms - range_ms, at_ms, is_counter=True, is_rate=True
    )


def increase(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``increase(v[range])`` evaluated at ``at``."""
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return extrapolated_rate(
        times_ms, values, lo, hi, at_ms - range_ms, at_ms, is_counter=True, is_rate=False
    )


def delta(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``delta(v[range])`` evaluated at ``at`` (gauges: no reset handling, no zero clamp)."""
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return extrapolated_rate(
        times_ms, values, lo, hi, at_ms - range_ms, at_ms, is_counter=False, is_rate=False
    )


def _kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    """Go's ``kahanSumInc`` (Kahan with Neumaier's improvement)."""
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


def kahan_sum(values: Sequence[float], lo: int = 0, hi: int | None = None) -> float:
    """``sum_over_time``'s summation of ``values[lo:hi]`` in order."""
    total = 0.0
    c = 0.0
    for i in range(lo, len(values) if hi is None else hi):
        inc = values[i]
        t = total + inc
        if abs(total) >= abs(inc):
            c += (total - t) + inc
        else:
            c += (inc - t) + total
        total = t
    if math.isinf(total):
        return total
    return total + c


def _kahan_mean(values: Sequence[float], lo: int, hi: int) -> float:
    """``avg_over_time``'s incremental mean, including its special cases for infinities."""
    mean = 0.0
    c = 0.0
    count = 0.0
    for i in range(lo, hi):
        v = values[i]
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue  # same-signed infinities: the mean is already right
            if not math.isinf(v) and not math.isnan(v):
                continue  # Inf - Inf would turn an infinite mean into NaN
        mean, c = _kahan_inc(v / count - mean / count, mean, c)
    if math.isinf(mean):
        return mean
    return mean + c


def sum_over_time(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``sum_over_time(v[range])`` at ``at``; ``None`` when the range holds no sample."""
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return kahan_sum(values, lo, hi) if hi > lo else None


def count_over_time(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``count_over_time(v[range])`` at ``at`` (NaN samples count); ``None`` when empty."""
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return float(hi - lo) if hi > lo else None


def avg_over_time(
    times_ms: Sequence[int], values: Sequence[float], at_ms: int, range_ms: int
) -> float | None:
    """``avg_over_time(v[range])`` at ``at``; ``None`` when empty.

    Note this is *not* bit-identical to ``sum_over_time / count_over_time`` (an incremental
    mean rounds differently), which is why :func:`sloth_period_ratio` does not use it.
    """
    lo, hi = range_indices(times_ms, at_ms, range_ms)
    return _kahan_mean(values, lo, hi) if hi > lo else None


# --- recording rules ---------------------------------------------------------------------------


def eval_ticks(end_ms: int, span_ms: int, interval_ms: int) -> list[int]:
    """Evaluation instants of a rule group running every ``interval``, the last one at ``end``,
    going back as far as ``end - span`` (inclusive), oldest first."""
    if interval_ms <= 0:
        raise ValueError("interval must be positive")
    k = span_ms // interval_ms
    return [end_ms - i * interval_ms for i in range(k, -1, -1)]


def record(
    rule: Callable[[int], float | None], ticks_ms: Sequence[int]
) -> tuple[list[int], list[float]]:
    """Simulate a recording rule: evaluate ``rule(t)`` at each tick and keep the results as a
    new series. A tick where the rule yields no sample (``None``) leaves no sample; ``NaN``
    results are recorded, as Prometheus does."""
    out_t: list[int] = []
    out_v: list[float] = []
    for t in ticks_ms:
        v = rule(t)
        if v is not None:
            out_t.append(t)
            out_v.append(v)
    return out_t, out_v


def ratio_of_rates_at(
    times_ms: Ints,
    numerators: Sequence[Floats],
    denominators: Sequence[Floats],
    ticks_ms: Sequence[int],
    range_ms: int,
    *,
    use_numpy: bool | None = None,
) -> tuple[list[int], list[float]]:
    """The recorded series of ``sum(rate(num[r])) / sum(rate(den[r]))`` at each tick.

    All columns share ``times_ms`` (scraped together), so a tick has either a rate for every
    column or none (fewer than two samples: no recorded sample). ``sum`` adds the columns'
    rates in the given order (for two columns the order cannot matter). Bit-identical to calling
    :func:`rate` per tick and column: this is the batch path (one sliding window, time
    quantities shared across columns, the reset loop only where a window holds a reset) that
    makes 30 days of 1-minute ticks affordable. ``use_numpy=None`` uses numpy when installed;
    numpy's element-wise IEEE operations round exactly like Go's scalar ones.
    """
    if use_numpy is None:
        use_numpy = HAVE_NUMPY and len(ticks_ms) >= 64
    if use_numpy:
        return _ratio_of_rates_np(times_ms, numerators, denominators, ticks_ms, range_ms)
    return _ratio_of_rates_py(times_ms, numerators, denominators, ticks_ms, range_ms)


def _ratio_of_rates_py(
    times_ms: Ints,
    numerators: Sequence[Floats],
    denominators: Sequence[Floats],
    ticks_ms: Sequence[int],
    range_ms: int,
) -> tuple[list[int], list[float]]:
    n = len(times_ms)
    cols = [*numerators, *denominators]
    n_num = len(numerators)
    resets = [reset_prefix(c) for c in cols]
    range_s = duration_seconds(range_ms)
    out_t: list[int] = []
    out_v: list[float] = []
    lo = 0
    hi = 0
    for t in ticks_ms:
        start = t - range_ms
        while lo < n and times_ms[lo] < start:
            lo += 1
        if hi < lo:
            hi = lo
        while hi < n and times_ms[hi] <= t:
            hi += 1
        m = hi - lo
        if m < 2:
            continue
        last = hi - 1
        t_first = times_ms[lo]
        t_last = times_ms[last]
        to_start = (t_first - start) / 1000
        to_end = (t - t_last) / 1000
        sampled = (t_last - t_first) / 1000
        average = sampled / (m - 1)
        threshold = average * 1.1
        half = average / 2
        end_part = to_end if to_end < threshold else half
        num = 0.0
        den = 0.0
        for j, col in enumerate(cols):
            first = col[lo]
            result = col[last] - first
            rp = resets[j]
            if rp[last] != rp[lo]:
                result = _increase_raw(col, lo, hi, True, None)
            d_start = to_start
            if result > 0 and first >= 0:
                d_zero = sampled * (first / result)
                if d_zero < d_start:
                    d_start = d_zero
            interval = sampled
            interval += d_start if d_start < threshold else half
            interval += end_part
            factor = interval / sampled
            factor /= range_s
            r = result * factor
            if j < n_num:
                num = r if j == 0 else num + r
            else:
                den = r if j == n_num else den + r
        out_t.append(t)
        out_v.append(div(num, den))
    return out_t, out_v


def _ratio_of_rates_np(
    times_ms: Ints,
    numerators: Sequence[Floats],
    denominators: Sequence[Floats],
    ticks_ms: Sequence[int],
    range_ms: int,
) -> tuple[list[int], list[float]]:
    ticks, ratio = _ratio_of_rates_arrays(
        times_ms, numerators, denominators, np.asarray(ticks_ms, dtype=np.int64), range_ms
    )
    out_t: list[int] = ticks.tolist()
    out_v: list[float] = ratio.tolist()
    return out_t, out_v


def _ratio_of_rates_arrays(
    times_ms: Ints,
    numerators: Sequence[Floats],
    denominators: Sequence[Floats],
    ticks: np.ndarray[Any, np.dtype[np.int64]],
    range_ms: int,
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float64]]]:
    """:func:`_ratio_of_rates_py` vectorised over ticks, the same operations in the same order
    (numpy's element-wise float64 operations are IEEE-rounded exactly like Go's scalar ones)."""
    times = np.asarray(times_ms, dtype=np.int64)
    start = ticks - range_ms
    lo = np.searchsorted(times, start, side="left")
    hi = np.searchsorted(times, ticks, side="right")
    keep = (hi - lo) >= 2
    ticks, start, lo, hi = ticks[keep], start[keep], lo[keep], hi[keep]
    if ticks.size == 0:
        return ticks, np.zeros(0)
    last = hi - 1
    t_first = times[lo]
    t_last = times[last]
    # int64 / int: numpy converts the (exactly representable) integers to float64 first, as Go's
    # float64(int64) / 1000 does.
    to_start = (t_first - start) / 1000
    to_end = (ticks - t_last) / 1000
    sampled = (t_last - t_first) / 1000
    average = sampled / (hi - lo - 1)
    threshold = average * 1.1
    half = average / 2
    end_part = np.where(to_end < threshold, to_end, half)
    range_s = duration_seconds(range_ms)
    cols = [*numerators, *denominators]
    n_num = len(numerators)
    num = np.zeros(ticks.size)
    den = np.zeros(ticks.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, col in enumerate(cols):
            v = np.asarray(col, dtype=np.float64)
            first = v[lo]
            result = v[last] - first
            drops = np.concatenate(([0], np.cumsum(v[1:] < v[:-1])))
            for k in np.flatnonzero(drops[last] != drops[lo]).tolist():
                result[k] = _increase_raw(col, int(lo[k]), int(hi[k]), True, None)
            d_zero = sampled * (first / result)
            clamp = (result > 0) & (first >= 0) & (d_zero < to_start)
            d_start = np.where(clamp, d_zero, to_start)
            interval = sampled + np.where(d_start < threshold, d_start, half)
            interval = interval + end_part
            factor = interval / sampled
            factor = factor / range_s
            r = result * factor
            if j < n_num:
                num = r if j == 0 else num + r
            else:
                den = r if j == n_num else den + r
        ratio = num / den
    return ticks, ratio


def _kahan_sum_np(v: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    """:func:`kahan_sum` without the Python loop, bit-identical: the running sum is a plain
    sequential ``add.accumulate``, each step's compensation term is element-wise given the
    running sums, and the compensation is itself a plain sequential sum (as in the loop)."""
    if v.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        running = np.add.accumulate(v)  # 0.0 + v[0] == v[0], then t_i = t_{i-1} + v_i
        prev = np.concatenate(([0.0], running[:-1]))
        terms = np.where(np.abs(prev) >= np.abs(v), (prev - running) + v, (v - running) + prev)
        c = float(np.add.accumulate(terms)[-1])
    total = float(running[-1])
    if math.isinf(total):
        return total
    return total + c


def sloth_period_ratio(
    rec_times_ms: Sequence[int], rec_values: Sequence[float], at_ms: int, period_ms: int
) -> float | None:
    """Sloth's optimised period SLI, evaluated at ``at``::

        sum_over_time(slo:sli_error:ratio_rate5m[30d])
          / ignoring (sloth_window) count_over_time(slo:sli_error:ratio_rate5m[30d])

    over a recorded series (see :func:`ratio_of_rates_at` / :func:`record`). ``None`` when the
    period holds no recorded sample; ``NaN`` when any recorded sample is ``NaN`` (a 5-minute
    window with no events at all records ``0/0``), exactly as in Prometheus.
    """
    lo, hi = range_indices(rec_times_ms, at_ms, period_ms)
    if hi <= lo:
        return None
    return div(kahan_sum(rec_values, lo, hi), float(hi - lo))


def sloth_period_ratio_of_counters(
    times_ms: Ints,
    numerators: Sequence[Floats],
    denominators: Sequence[Floats],
    at_ms: int,
    period_ms: int,
    interval_ms: int,
    range_ms: int,
    *,
    use_numpy: bool | None = None,
) -> float | None:
    """:func:`sloth_period_ratio` of the ``sum(rate(num[range])) / sum(rate(den[range]))``
    series recorded every ``interval`` up to ``at`` (:func:`eval_ticks`), in one call.

    Equal, bit for bit, to ``sloth_period_ratio(*ratio_of_rates_at(..., eval_ticks(at,
    period, interval), range), at, period)``; with numpy it never builds Python lists.
    """
    if use_numpy is None:
        use_numpy = HAVE_NUMPY and period_ms // interval_ms >= 64
    if not use_numpy:
        ticks = eval_ticks(at_ms, period_ms, interval_ms)
        rec_t, rec_v = _ratio_of_rates_py(times_ms, numerators, denominators, ticks, range_ms)
        return sloth_period_ratio(rec_t, rec_v, at_ms, period_ms)
    if interval_ms <= 0:
        raise ValueError("interval must be positive")
    k = period_ms // interval_ms
    ticks_np = at_ms - np.arange(k, -1, -1, dtype=np.int64) * interval_ms
    _, ratio = _ratio_of_rates_arrays(times_ms, numerators, denominators, ticks_np, range_ms)
    if ratio.size == 0:
        return None
    # Every tick lies in [at - period, at]: the whole recorded series is in the range.
    return div(_kahan_sum_np(ratio), float(ratio.size))
