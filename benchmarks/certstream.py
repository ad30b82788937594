"""How fast does ctwatch read a certstream feed? (parse, match, and through a websocket.)

Target: at least 30,000 ``certificate_update`` messages/s per core, parse + match, for the lite
stream (what certstream-server-go serves on ``/``), with a 100k-pattern watchlist.

- **Messages**: ``--messages`` distinct ``certificate_update`` messages in certstream-server-go's
  format, templated from real certificates (a LocalCA with RSA-2048 keys, like most of the CT
  logs' traffic, plus EC P-256 leaves): each message gets its own names, subject CN, serial,
  index and ``seen``. Names per certificate: 1 (30 %), 2 (45 %: ``x`` + ``www.x``), 3-5
  (20 %), 10-40 (5 %); about 10 % of the names hit the watchlist, 20 % are wildcard SANs (the
  name generator of benchmarks/ct_match.py). Two shapes: **lite** (``/``: no ``as_der``, no
  ``chain``) and **full** (``/full-stream``: the leaf's ``as_der`` and its intermediate in
  ``chain``, base64-decoded and hashed by the parser).
- **Watchlist**: 100,000 patterns generated as in benchmarks/ct_match.py.
- **Parse**: ``parse_message`` over every message, ``--rounds`` times; **parse + match**: the
  same plus ``Watchlist.match_any(entry.names)``. Messages/s per core = messages / CPU time of
  the (single-threaded) loop, median of the rounds; wall-clock figures alongside.
- **End to end**: LoopbackCertstream (tests/support) in a thread of this process serves
  ``--e2e-messages`` pre-encoded lite frames (the distinct messages, cycled) over a loopback
  websocket to a ``CertstreamClient`` in the main thread, which parses; the consumer matches.
  Timed from the first frame sent to the last entry matched (median of ``--e2e-rounds``);
  CPU is the whole process (server thread included), so per-core figures are conservative.

    .venv/bin/python benchmarks/certstream.py [--messages 50000] [--rounds 5]
        [--e2e-messages 100000] [--e2e-rounds 3]

Prints a table and one JSON line (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psutil

from benchmarks._common import make_names, make_patterns_and_bases, print_measures
from certpilot.localca import LocalCA, new_key
from ctwatch.certstream import CertstreamClient, FeedEntry, parse_message
from ctwatch.match import Watchlist
from tests.support.certstream_server import (
    Kind,
    LoopbackCertstream,
    certificate_update,
    encode,
)

SHAPES: tuple[Kind, ...] = ("lite", "full")


def _name_count(rnd: random.Random) -> int:
    r = rnd.random()
    if r < 0.30:
        return 1
    if r < 0.75:
        return 2
    if r < 0.95:
        return rnd.randint(3, 5)
    return rnd.randint(10, 40)


def make_templates(n_rsa: int = 8, n_ec: int = 8) -> list[dict[str, Any]]:
    """Full-stream messages for real certificates (RSA-2048 and EC P-256 leaves)."""
    now = datetime.now(UTC).replace(microsecond=0)
    ca = LocalCA("Bench", now, key_kind="RSA", key_bits=2048)
    rsa_key = new_key("RSA", 2048)
    out = []
    for i in range(n_rsa + n_ec):
        names = [f"template{i}.example.com", f"www.template{i}.example.com"]
        issued = ca.issue(names, now, key=rsa_key) if i < n_rsa else ca.issue(names, now)
        out.append(certificate_update(issued.cert, chain=issued.chain, index=i))
    return out


def make_messages(
    rnd: random.Random, templates: list[dict[str, Any]], names: list[str], n: int
) -> list[dict[str, Any]]:
    """``n`` messages from the templates, each with its own names, serial, index and time."""
    out: list[dict[str, Any]] = []
    pos = 0
    seen = time.time()
    for i in range(n):
        k = _name_count(rnd)
        sans = names[pos : pos + k]
        pos = (pos + k) % (len(names) - 64)
        if k == 2:  # the common "example.com + www.example.com" certificate
            base = sans[0].removeprefix("*.")
            sans = [base, "www." + base]
        message = copy.deepcopy(templates[i % len(templates)])
        data = message["data"]
        leaf = data["leaf_cert"]
        cn = sans[0]
        leaf["all_domains"] = sans
        leaf["subject"]["CN"] = cn
        leaf["subject"]["aggregated"] = f"/CN={cn}"
        leaf["extensions"]["subjectAltName"] = ", ".join(f"DNS:{s}" for s in sans)
        serial = f"{rnd.getrandbits(144):036X}"
        leaf["serial_number"] = serial
        index = 700_000_000 + i
        data["cert_index"] = index
        data["cert_link"] = data["cert_link"].split("?")[0] + f"?start={index}&end={index}"
        data["seen"] = seen + i / 1000
        data["source"]["timestamp"] = data["seen"]
        out.append(message)
    return out


def _rounds(fn: Callable[[], int], rounds: int) -> tuple[list[float], list[float], int]:
    """CPU seconds and wall seconds of each call, and the last call's result."""
    cpu: list[float] = []
    wall: list[float] = []
    result = 0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return cpu, wall, result


async def end_to_end(
    frames: list[str], count: int, wl: Watchlist, expected_index: list[int]
) -> dict[str, float]:
    """Serve ``count`` frames (cycling ``frames``) and consume them with CertstreamClient."""
    matched = 0
    async with LoopbackCertstream(heartbeat_interval=None) as server:
        client = CertstreamClient(server.url, heartbeat_timeout=60.0)
        stream = client.messages()
        first = asyncio.ensure_future(anext(stream))
        await server.wait_clients(1)
        c0, w0 = time.process_time(), time.perf_counter()
        chunk = 2000
        for start in range(0, count, chunk):  # one hop to the server's loop per chunk
            batch: list[dict[Kind, str]] = [
                {"lite": frames[i % len(frames)]} for i in range(start, min(count, start + chunk))
            ]
            server.send_encoded(batch)
        item = await first
        got = 0
        match_any = wl.match_any
        while True:
            assert isinstance(item, FeedEntry)
            if item.index != expected_index[got % len(expected_index)]:
                raise AssertionError(f"entry {got} out of order: index {item.index}")
            if match_any(item.names):
                matched += 1
            got += 1
            if got == count:
                break
            item = await anext(stream)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        await stream.aclose()
        await client.aclose()
        assert client.malformed == 0 and client.reconnects == 0
    return {"cpu": cpu, "wall": wall, "matched": matched}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--patterns", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--e2e-messages", type=int, default=100_000)
    ap.add_argument("--e2e-rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    proc = psutil.Process()
    rnd = random.Random(args.seed)

    t = time.perf_counter()
    patterns, _ = make_patterns_and_bases(rnd, args.patterns)
    wl = Watchlist.from_patterns(patterns)
    names = make_names(rnd, patterns, args.messages * 4, hit_ratio=0.10)
    templates = make_templates()
    messages = make_messages(rnd, templates, names, args.messages)
    encoded = [encode(m) for m in messages]
    texts = {shape: [e[shape] for e in encoded] for shape in SHAPES}
    del encoded, messages
    setup_s = time.perf_counter() - t
    wl.match("*.warm.up")  # build the wildcard child index outside the timed loops

    result: dict[str, Any] = {
        "messages": args.messages,
        "patterns": len(wl),
    }
    for shape in SHAPES:
        frames = texts[shape]
        parsed = [parse_message(f) for f in frames]
        entries = [e for e in parsed if isinstance(e, FeedEntry)]
        assert len(entries) == len(frames)
        if shape == "full":
            assert all(e.der is not None and e.sha256 for e in entries)
        hits = sum(1 for e in entries if wl.match_any(e.names))
        n_names = sum(len(e.names) for e in entries)
        del parsed, entries

        def parse_only(frames: list[str] = frames) -> int:
            for f in frames:
                parse_message(f)
            return len(frames)

        def parse_and_match(frames: list[str] = frames) -> int:
            matched = 0
            match_any = wl.match_any
            for f in frames:
                e = parse_message(f)
                if type(e) is FeedEntry and match_any(e.names):
                    matched += 1
            return matched

        cpu_p, wall_p, _ = _rounds(parse_only, args.rounds)
        cpu_m, wall_m, matched = _rounds(parse_and_match, args.rounds)
        assert matched == hits
        n = len(frames)
        result[f"{shape}_bytes_avg"] = round(sum(map(len, frames)) / n)
        result[f"{shape}_names_avg"] = round(n_names / n, 2)
        result[f"{shape}_cert_hit_ratio"] = round(hits / n, 4)
        result[f"{shape}_parse_per_s_core"] = round(n / statistics.median(cpu_p))
        result[f"{shape}_parse_per_s_wall"] = round(n / statistics.median(wall_p))
        result[f"{shape}_parse_match_per_s_core"] = round(n / statistics.median(cpu_m))
        result[f"{shape}_parse_match_per_s_wall"] = round(n / statistics.median(wall_m))
        result[f"{shape}_parse_match_per_s_best"] = round(n / min(cpu_m))

    if args.e2e_messages > 0:
        frames = texts["lite"]
        expected = [json.loads(f)["data"]["cert_index"] for f in frames]
        runs = [
            asyncio.run(end_to_end(frames, args.e2e_messages, wl, expected))
            for _ in range(args.e2e_rounds)
        ]
        walls = [r["wall"] for r in runs]
        cpus = [r["cpu"] for r in runs]
        result["e2e_messages"] = args.e2e_messages
        result["e2e_per_s_wall"] = round(args.e2e_messages / statistics.median(walls))
        result["e2e_per_s_process_cpu"] = round(args.e2e_messages / statistics.median(cpus))
        result["e2e_matched_certs"] = int(runs[-1]["matched"])

    result.update(
        {
            "setup_s": round(setup_s, 1),
            "rss_end_mb": round(proc.memory_info().rss / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "rounds": args.rounds,
            "json": "stdlib",
            "python": sys.version.split()[0],
        }
    )
    print_measures(result, 36)
    ok = result["lite_parse_match_per_s_core"] >= 30_000
    print(f"target >= 30k msg/s per core, parse + match (lite): {'met' if ok else 'MISSED'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
