"""How fast is the in-process SLO engine? (issue 3, deliverable 6; DESIGN.md section 5.)

Two scenarios, each run ``--rounds`` times (median and min reported; the machine is shared, so
the 1-minute load average is printed next to the figures):

(a) **100k certificates, six SLOs.** 100,000 TLS observations (3 % expiring, 0.5 % refusing
    connections) go through ``certpilot.domain.sli.valid_ratio_events`` (M1 events) and are
    aggregated into one scan cycle's good/bad counts. The fleet is scanned every 5 minutes, so
    Prometheus-style cumulative counters scraped every 60 s over 30 days and 1 hour (43,261
    samples, the history ``slo.service.evaluate_all`` reads) hold
    that cycle's counts every fifth scrape; the other five SLIs get counters with their own
    traffic (renewals, issuances, deployments ~1.2/min, compromise replacements a few a month,
    discovery coverage 100k per 5-minute tick). Then ``slo.engine.evaluate`` runs for all six
    default SLOs (``slo.spec.default_slos()``). Timed separately: ``derive`` (events from
    observations), ``aggregate`` (counting them), ``series`` (building the six CounterSeries
    from lists) and ``evaluate`` (the six evaluations: the *evaluation part*, target < 150 ms).
(b) **1M events, 4 window pairs.** 1,000,000 ``SLIEvent``s spread over 30 days (1 % bad, a 20 %
    burst in the last 90 minutes) become a CounterSeries sampled every 60 s
    (``CounterSeries.from_events``, 43,201 samples: ``ingest``), then one ``evaluate`` with the
    workbook's four window pairs, the seven Sloth windows and the 30-day period ratio
    (43,201 recording ticks): ``evaluate``, target < 250 ms.

``evaluate`` includes everything the engine computes: every window's ratio and burn rate, the
four alert conditions, and Sloth's period ratio (the 5m ratio at every 60 s tick of the 30 days,
then ``sum_over_time / count_over_time``), bit-identical to Prometheus 2.42.

    .venv/bin/python benchmarks/slo_eval.py                # numpy fast path when installed
    .venv/bin/python benchmarks/slo_eval.py --no-numpy     # the pure-Python path

Prints a table and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.sli import SLIEvent, valid_ratio_events
from slo import promql
from slo.engine import CounterSeries, SLOStatus, evaluate
from slo.spec import default_slos

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PERIOD = timedelta(days=30)
SCRAPE = 60.0
HISTORY_EXTRA = 3600.0  # seconds of counter history before the period (as slo.service reads)

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t) * 1000


def observations(n: int, rng: random.Random) -> list[Observation]:
    out: list[Observation] = []
    for i in range(n):
        r = rng.random()
        problems: tuple[Problem, ...] = ()
        if r < 0.03:
            problems = (Problem(ProblemCode.EXPIRING, "less than a third of its lifetime left"),)
        elif r < 0.035:
            problems = (Problem(ProblemCode.CONNECTION_REFUSED, "connection refused"),)
        out.append(
            Observation(
                source="tls",
                ref=f"tls://host{i}.bench.internal:443",
                target=f"host{i}.bench.internal:443",
                observed_at=NOW,
                problems=problems,
            )
        )
    return out


def cumulative(per_scrape: Callable[[int], tuple[float, float]], n: int) -> dict[str, list[float]]:
    """Cumulative bad/good/total counters from per-scrape increments."""
    bad: list[float] = []
    good: list[float] = []
    total: list[float] = []
    b = g = 0.0
    for i in range(n):
        db, dg = per_scrape(i)
        b += db
        g += dg
        bad.append(b)
        good.append(g)
        total.append(b + g)
    return {"bad": bad, "good": good, "total": total}


def histories(
    cycle_good: int, cycle_bad: int, rng: random.Random
) -> dict[str, dict[str, list[float]]]:
    """30 days and an hour of 60 s scrapes for each certpilot SLI (untimed set-up). The extra
    hour keeps the counters' start out of the period: at a counter's very start a 5-minute
    window can hold no increment, its 5m ratio is 0/0, and Sloth's period ratio becomes NaN."""
    n = int((PERIOD.total_seconds() + HISTORY_EXTRA) // SCRAPE) + 1

    def fleet(i: int) -> tuple[float, float]:
        # One scan of the whole fleet every 5 minutes, a few endpoints flapping.
        if i % 5:
            return 0.0, 0.0
        jitter = rng.randint(-20, 20)
        return float(max(cycle_bad + jitter, 0)), float(cycle_good - jitter)

    def trickle(rate_per_min: float, bad_ratio: float) -> Callable[[int], tuple[float, float]]:
        def f(_: int) -> tuple[float, float]:
            k = int(rate_per_min) + (rng.random() < rate_per_min % 1)
            bad = sum(rng.random() < bad_ratio for _ in range(k))
            return float(bad), float(k - bad)

        return f

    def coverage(i: int) -> tuple[float, float]:
        if i % 5:
            return 0.0, 0.0
        stale = rng.randint(0, 50)
        return float(stale), float(cycle_good + cycle_bad - stale)

    return {
        "valid_ratio": cumulative(fleet, n),
        "renewal_success": cumulative(trickle(1.2, 0.004), n),
        "compromise_replacement": cumulative(trickle(0.0001, 0.0), n),
        "issuance_latency": cumulative(trickle(1.2, 0.006), n),
        "complete_deployments": cumulative(trickle(1.2, 0.002), n),
        "discovery_coverage": cumulative(coverage, n),
        # A few certificates a day seen in CT, nearly all expected.
        "expected_issuance": cumulative(trickle(0.05, 0.0), n),
    }


def scenario_a(certs: int, rng: random.Random) -> tuple[dict[str, float], list[SLOStatus]]:
    obs = observations(certs, rng)
    events, t_derive = timed(lambda: valid_ratio_events(obs, NOW))
    assert len(events) == certs

    def aggregate() -> tuple[int, int]:
        good = sum(1 for e in events if e.good)
        return good, len(events) - good

    (good, bad), t_agg = timed(aggregate)
    hist = histories(good, bad, rng)
    start = (NOW - PERIOD).timestamp() - HISTORY_EXTRA
    n = len(hist["valid_ratio"]["bad"])
    times = [start + SCRAPE * i for i in range(n)]
    slos = default_slos().slos

    def build() -> dict[str, CounterSeries]:
        return {
            s.sli or "": CounterSeries(
                times,
                hist[s.sli or ""]["bad"],
                hist[s.sli or ""]["total"],
                hist[s.sli or ""]["good"],
            )
            for s in slos
        }

    series, t_series = timed(build)
    statuses, t_eval = timed(lambda: [evaluate(s, series[s.sli or ""], NOW) for s in slos])
    return (
        {"derive": t_derive, "aggregate": t_agg, "series": t_series, "evaluate": t_eval},
        statuses,
    )


def one_million_events(n: int, rng: random.Random) -> list[SLIEvent]:
    start = NOW - PERIOD
    span = PERIOD.total_seconds()
    burst_from = span - 90 * 60
    out: list[SLIEvent] = []
    for _ in range(n):
        off = rng.uniform(0, span)
        bad_p = 0.2 if off >= burst_from else 0.01
        out.append(SLIEvent(start + timedelta(seconds=off), "valid_ratio", rng.random() >= bad_p))
    return out


def scenario_b(events: list[SLIEvent]) -> tuple[dict[str, float], SLOStatus]:
    slo = default_slos().slos[0]
    series, t_ingest = timed(lambda: CounterSeries.from_events(events, NOW - PERIOD, NOW, SCRAPE))
    assert len(series) == 43_201
    status, t_eval = timed(lambda: evaluate(slo, series, NOW))
    return {"ingest": t_ingest, "evaluate": t_eval}, status


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 1), "min": round(min(xs), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--certs", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-numpy", action="store_true", help="force the pure-Python batch path")
    args = ap.parse_args(argv)
    if args.no_numpy:
        promql.HAVE_NUMPY = False  # the engine's batch paths check this flag at call time

    rng = random.Random(20250601)
    a_runs: dict[str, list[float]] = {}
    b_runs: dict[str, list[float]] = {}
    loads: list[float] = []
    statuses: list[SLOStatus] = []
    status_b: SLOStatus | None = None
    events = one_million_events(args.events, rng)
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        ta, statuses = scenario_a(args.certs, rng)
        for k, v in ta.items():
            a_runs.setdefault(k, []).append(v)
        tb, status_b = scenario_b(events)
        for k, v in tb.items():
            b_runs.setdefault(k, []).append(v)
    assert status_b is not None

    path = "numpy" if promql.HAVE_NUMPY else "pure Python"
    print(f"slo_eval: {args.rounds} rounds, batch path: {path}, load avg 1m max {max(loads):.2f}")
    print(f"{'scenario':<34} {'part':<10} {'median ms':>10} {'min ms':>8}  target")
    label_a = f"(a) 100k certs, {len(default_slos().slos)} SLOs"
    rows = [(label_a, k, v) for k, v in a_runs.items()] + [
        ("(b) 1M events, 4 window pairs", k, v) for k, v in b_runs.items()
    ]
    for name, part, xs in rows:
        target = ""
        if part == "evaluate":
            target = "< 150 ms" if name.startswith("(a)") else "< 250 ms"
        s = summary(xs)
        print(f"{name:<34} {part:<10} {s['median']:>10.1f} {s['min']:>8.1f}  {target}")
    print()
    for st in statuses:
        print(
            f"  {st.slo.name:<28} 5m burn {fmt(st.windows[0].burn_rate):>8}  "
            f"budget left {fmt(st.budget_remaining_ratio):>8}  firing {st.firing_severity}"
        )
    print(
        f"  (b) {status_b.slo.name:<24} 5m burn {fmt(status_b.windows[0].burn_rate):>8}  "
        f"budget left {fmt(status_b.budget_remaining_ratio):>8}  firing {status_b.firing_severity}"
    )
    result: dict[str, Any] = {
        "benchmark": "slo_eval",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "batch_path": path,
        "rounds": args.rounds,
        "load_avg_1m_max": round(max(loads), 2),
        "a_certs": args.certs,
        "a_ms": {k: summary(v) for k, v in a_runs.items()},
        "b_events": args.events,
        "b_ms": {k: summary(v) for k, v in b_runs.items()},
    }
    print(json.dumps(result))
    return 0


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


if __name__ == "__main__":
    sys.exit(main())
