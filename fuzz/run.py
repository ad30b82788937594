"""Run every atheris harness in ``fuzz/`` for N seconds and report what each one did.

    .venv/bin/python fuzz/run.py                 # 60 s per target
    .venv/bin/python fuzz/run.py --seconds 120 --targets ct config

Each harness runs in a subprocess with libFuzzer's ``-max_total_time=N``, ``-timeout=2``
(an input taking longer is a hang, reported as a crash) and ``-rss_limit_mb=1024``, seeded
with the corpus ``fuzz/make_corpus.py`` writes into a temporary directory. A crash stops
libFuzzer: the harness is restarted on its grown corpus for the time left (at most
``--max-crashes`` times), so one bug does not hide the next. Reproducers stay in the
temporary directory and are printed; replay one with
``.venv/bin/python fuzz/fuzz_<target>.py <file>``.

The output is a table and one JSON line: per target the inputs executed (libFuzzer's
``stat::number_of_executed_units``, summed over restarts), the coverage (``cov:`` edges and
``ft:`` features of the last status line), the corpus size and the crashes (0 expected).
Exit status 1 when any target crashed, 2 when atheris is missing and cannot be installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("x509", "ct", "certstream", "alertmanager", "slack", "config")
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak", "slow-unit")

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/)?", re.M)
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_EXC = re.compile(r"=== Uncaught Python exception: ===\n(.*?)\n", re.S)
_KNOWN = re.compile(r"^KNOWN-ISSUE: (.*?)(?: input (\S+))?$", re.M)
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


@dataclass
class Result:
    target: str
    seconds: float = 0.0
    executed: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    runs: int = 0
    crashes: list[dict[str, str]] = field(default_factory=list)
    known: dict[str, str] = field(default_factory=dict)  # reported bug -> first input
    logs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 1),
            "executed": self.executed,
            "exec_per_s": round(self.executed / self.seconds) if self.seconds else 0,
            "cov": self.cov,
            "ft": self.ft,
            "corpus": self.corpus,
            "runs": self.runs,
            "crashes": len(self.crashes),
            "reproducers": [c["file"] for c in self.crashes],
            "known_reported": sorted(self.known),
        }


def ensure_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    print("atheris is not installed: installing it into this venv with pip", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "atheris"], check=False
    )
    if done.returncode != 0 or importlib.util.find_spec("atheris") is None:
        print(
            f"fuzz/run.py: atheris is not installed and pip failed: run "
            f"{sys.executable} -m pip install atheris",
            file=sys.stderr,
        )
        sys.exit(2)


def _signature(log: str) -> str:
    """What a crash was: the exception and the innermost frame, or libFuzzer's verdict."""
    m = _EXC.search(log)
    if m:
        tail = log[m.end() :].split("\n\n", 1)[0]
        frames = _FRAME.findall(tail)
        where = f" at {Path(frames[-1][0]).name}:{frames[-1][1]} {frames[-1][2]}" if frames else ""
        return f"{m.group(1).strip()[:200]}{where}"
    for verdict in ("timeout", "out-of-memory", "deadly signal", "fuzz target exited"):
        if f"libFuzzer: {verdict}" in log:
            return f"libFuzzer: {verdict}"
    return "unknown crash"


def run_target(target: str, seconds: float, work: Path, max_crashes: int) -> Result:
    result = Result(target)
    corpus = work / "corpus" / target
    artifacts = work / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + seconds
    seen: set[str] = set()
    while True:
        left = deadline - time.monotonic()
        if left < 2 or len(result.crashes) >= max_crashes:
            break
        log_path = work / f"{target}.{result.runs}.log"
        cmd = [
            sys.executable,
            str(HERE / f"fuzz_{target}.py"),
            str(corpus),
            f"-max_total_time={int(left)}",
            "-timeout=2",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={artifacts}/{target}-",
            "-print_final_stats=1",
        ]
        started = time.monotonic()
        with log_path.open("w") as log_file:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=False,
                env={
                    **os.environ,
                    "FUZZ_KNOWN_DIR": str(artifacts),
                    "FUZZ_SCRATCH": str(work / "scratch" / target),
                },
            )
        result.seconds += time.monotonic() - started
        result.runs += 1
        result.logs.append(str(log_path))
        log = log_path.read_text(errors="replace")
        for label, path in _KNOWN.findall(log):
            result.known.setdefault(label, path)
        executed = _EXECUTED.findall(log)
        result.executed += int(executed[-1]) if executed else 0
        status = _STATUS.findall(log)
        if status:
            _, cov, ft, corp = status[-1]
            result.cov, result.ft = max(result.cov, int(cov)), max(result.ft, int(ft))
            result.corpus = int(corp) if corp else result.corpus
        if proc.returncode == 0:
            break
        signature = _signature(log)
        if signature in seen:  # the same bug again: no point spending the rest of the time
            break
        seen.add(signature)
        files = _ARTIFACT.findall(log)
        result.crashes.append(
            {"file": files[-1] if files else "", "signature": signature, "log": str(log_path)}
        )
    return result


def _table(results: list[Result]) -> str:
    header = (
        "target",
        "seconds",
        "inputs executed",
        "exec/s",
        "cov",
        "ft",
        "corpus",
        "crashes",
        "known",
    )
    rows = [header]
    for r in results:
        d = r.to_dict()
        rows.append(
            (
                r.target,
                f"{d['seconds']}",
                f"{r.executed:,}",
                f"{d['exec_per_s']:,}",
                str(r.cov),
                str(r.ft),
                str(r.corpus),
                str(len(r.crashes)),
                str(len(r.known)),
            )
        )
    total = sum(r.executed for r in results)
    crashes = sum(len(r.crashes) for r in results)
    known = sum(len(r.known) for r in results)
    rows.append(("total", "", f"{total:,}", "", "", "", "", str(crashes), str(known)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in pairs]
        lines.append("  ".join(cells))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the atheris harnesses in fuzz/.")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument(
        "--max-crashes", type=int, default=5, help="restarts after crashes, per target"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    ensure_atheris()
    sys.path.insert(0, str(HERE))
    import make_corpus

    work = Path(tempfile.mkdtemp(prefix="certpilot-fuzz-"))
    sizes = make_corpus.write(work / "corpus")
    print(f"seed corpus: {sum(sizes.values())} bytes in {work / 'corpus'}", flush=True)
    results: list[Result] = []
    for target in args.targets:
        print(f"fuzzing {target} for {args.seconds:g} s ...", flush=True)
        r = run_target(target, args.seconds, work, args.max_crashes)
        results.append(r)
        for label, path in sorted(r.known.items()):
            print(f"  known (reported) {target}: {label}\n    input: {path}")
        for c in r.crashes:
            print(f"  CRASH {target}: {c['signature']}")
            print(f"    reproducer: {c['file']}\n    log: {c['log']}")
    print()
    print(_table(results))
    crashed = any(r.crashes for r in results)
    summary = {
        "fuzz": {
            "seconds_per_target": args.seconds,
            "timeout_s": 2,
            "rss_limit_mb": 1024,
            "targets": {r.target: r.to_dict() for r in results},
            "total_executed": sum(r.executed for r in results),
            "crashes": sum(len(r.crashes) for r in results),
            "known_reported": sum(len(r.known) for r in results),
            "workdir": str(work) if (crashed or args.keep) else None,
        }
    }
    print(json.dumps(summary, separators=(",", ":")))
    shutil.rmtree(work / "scratch", ignore_errors=True)
    if not (crashed or args.keep):
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
