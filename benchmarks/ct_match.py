"""How fast is the CT monitor's watched-domain matcher? (issue 7, item 4.)

Targets: at least 150k lookups/s with 100k patterns (one process, one core) and a reload of
100k patterns in under 100 ms.

- **Patterns**: 100,000 generated watches over a few TLDs and second-level suffixes, 50 % exact
  names (``api.shop12.com``), 35 % trees (``.shop12.com``), 15 % wildcards (``*.shop12.com``).
- **Reload**: ``Watchlist.from_lines`` over the 100k lines, ``--rounds`` times (median, min);
  also with comments, blank lines and trailing dots mixed in (the bulk path strips them), with
  the lines' ``\\n`` kept (iterating a file), and the per-line fallback (one line with a
  certspotter ``valid_at:`` field forces it).
- **Lookups**: 1,000,000 certificate names, about 10 % of them matching (exact names, names
  under a watched tree or wildcard), the rest misses that share TLDs and labels with the
  watches (near misses like ``notshop12.com`` and ``shop12.com.evil.net`` included); 20 % of
  all names are wildcard SANs (``*.x.y``), as CT logs hold many. Timed as a plain loop of
  ``Watchlist.match`` (median of ``--rounds``); ``match_any`` over 4-name certificates too.
- **Memory**: RSS (psutil) after building the patterns and the watchlist, and peak RSS.

    .venv/bin/python benchmarks/ct_match.py [--rounds 5] [--patterns 100000] [--lookups 1000000]

Prints a table and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable

import psutil

from benchmarks._common import make_names, make_patterns_and_bases, print_measures
from ctwatch.match import Watchlist


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    """Wall time of each call. The result is freed after the clock stops: dropping the previous
    watchlist (about 9 ms for 100k patterns) happens when a reload swaps it, not while building.
    """
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t)
        del result
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--patterns", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    proc = psutil.Process()
    rnd = random.Random(args.seed)
    rss0 = proc.memory_info().rss

    patterns, _ = make_patterns_and_bases(rnd, args.patterns)
    # The same watchlist as a file someone maintains: comments, blank lines, trailing dots.
    decorated: list[str] = ["# generated watchlist", ""]
    for i, p in enumerate(patterns):
        if i % 100 == 0:
            decorated.append(f"# block {i // 100}")
        decorated.append(p + ("." if i % 50 == 0 else "") + ("  # owner: team-a" if i % 7 else ""))
    file_lines = [p + "\n" for p in patterns]  # as iterating an open file yields them
    fallback = [*patterns, "example.com valid_at:2024-01-01"]

    reload_plain = _time(lambda: Watchlist.from_lines(patterns), args.rounds)
    reload_decorated = _time(lambda: Watchlist.from_lines(decorated), args.rounds)
    reload_file_lines = _time(lambda: Watchlist.from_lines(file_lines), args.rounds)
    reload_fallback = _time(lambda: Watchlist.from_lines(fallback), max(3, args.rounds // 2))
    wl = Watchlist.from_lines(patterns)
    assert len(Watchlist.from_lines(decorated)) == len(wl)
    rss_watchlist = proc.memory_info().rss

    names = make_names(rnd, patterns, args.lookups, hit_ratio=0.10)
    # The first wildcard SAN after a reload builds the child index (parent -> watch below it).
    t = time.perf_counter()
    wl.match("*.warm.up")
    child_index_s = time.perf_counter() - t

    match = wl.match
    hits = sum(1 for n in names if match(n) is not None)

    def lookups() -> None:
        for n in names:
            match(n)

    lookup_times = _time(lookups, args.rounds)
    certs = [names[i : i + 4] for i in range(0, len(names), 4)]

    def per_cert() -> None:
        for c in certs:
            wl.match_any(c)

    cert_times = _time(per_cert, args.rounds)
    rss_end = proc.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    ms = 1000.0
    med_lookup = statistics.median(lookup_times)
    result = {
        "patterns": len(patterns),
        "distinct_patterns": len(wl),
        "lookups": len(names),
        "hit_ratio": round(hits / len(names), 4),
        "wildcard_sans": round(sum(n.startswith("*.") for n in names) / len(names), 3),
        "lookups_per_s_median": round(len(names) / med_lookup),
        "lookups_per_s_best": round(len(names) / min(lookup_times)),
        "certs_per_s_median": round(len(certs) / statistics.median(cert_times)),
        "reload_ms_median": round(statistics.median(reload_plain) * ms, 1),
        "reload_ms_min": round(min(reload_plain) * ms, 1),
        "reload_decorated_ms_median": round(statistics.median(reload_decorated) * ms, 1),
        "reload_file_lines_ms_median": round(statistics.median(reload_file_lines) * ms, 1),
        "reload_fallback_ms_median": round(statistics.median(reload_fallback) * ms, 1),
        "first_wildcard_san_ms": round(child_index_s * ms, 1),
        "rss_start_mb": round(rss0 / 2**20, 1),
        "rss_after_watchlist_mb": round(rss_watchlist / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "rounds": args.rounds,
        "python": sys.version.split()[0],
    }
    print_measures(result, 44)
    ok_lookup = result["lookups_per_s_median"] >= 150_000
    ok_reload = result["reload_ms_median"] < 100
    print(f"target >= 150k lookups/s: {'met' if ok_lookup else 'MISSED'}")
    print(f"target reload < 100 ms: {'met' if ok_reload else 'MISSED'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
