"""What the benchmark scripts share: machine facts, waiting for a quiet machine, process RSS and
CPU, the run directory and the JSON result line, and the CT benchmarks' names, watch patterns,
certificate pool and stored-subtree proofs.

**How the scripts import it**: ``from benchmarks._common import ...``. ``benchmarks`` is a
package, and the repository root is on ``sys.path`` (the editable install puts it there), so
this works when a script runs as ``.venv/bin/python benchmarks/X.py``, when it is imported as
``benchmarks.X``, and in the workers a script spawns (they re-import it as ``__mp_main__``).

**Imports.** At module level only the standard library: ``fleet_10k.py`` and
``probe_vs_blackbox.py`` import this module at module level, their spawned workers re-import
them, and the workers must not pay for psutil, aiohttp or certpilot in their RSS. Everything
else is imported inside the function that needs it; the ``TYPE_CHECKING`` imports are for the
type checker only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

    from ctwatch.match import Watchlist

MiB = 1024 * 1024

# -- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` ("?" when it does not say)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def command_output(cmd: Sequence[str]) -> str | None:
    """What ``cmd`` prints (stdout + stderr, stripped); None when it cannot be started."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return (res.stdout + res.stderr).strip()


def tool_version(cmd: Sequence[str]) -> str:
    """The first line ``cmd`` (``nginx -v``, ``X --version``) prints; "?" when none."""
    lines = (command_output(cmd) or "").splitlines()
    return lines[0] if lines else "?"


def certpilot_openssl() -> str:
    """The OpenSSL that cryptography bundles: certpilot's handshakes (pyOpenSSL) run on it."""
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def machine_info(**extra: Any) -> dict[str, Any]:
    """The ``machine`` of a result: CPUs, CPU model, kernel, Python, then ``extra`` (versions
    of the libraries and tools the benchmark measures), in that order."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **extra,
    }


# -- waiting for a quiet machine (other sessions share it) --------------------------------------


def wait_quiet(max_busy: float, max_wait: float, poll: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) until the machine is at most ``max_busy`` busy (0-1: the
    share of all CPUs, over each ``poll`` s); returns the seconds waited."""
    import psutil

    t0 = time.monotonic()
    psutil.cpu_percent()
    while time.monotonic() - t0 < max_wait:
        time.sleep(poll)
        if psutil.cpu_percent() / 100 <= max_busy:
            break
    return time.monotonic() - t0


async def wait_quiet_async(max_busy: float, max_wait: float, poll: float = 0.5) -> float:
    """:func:`wait_quiet` for a coroutine: the event loop runs while it waits."""
    import psutil

    t0 = time.monotonic()
    psutil.cpu_percent()
    while time.monotonic() - t0 < max_wait:
        await asyncio.sleep(poll)
        if psutil.cpu_percent() / 100 <= max_busy:
            break
    return time.monotonic() - t0


async def wait_load1(limit: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) for the 1-minute load average to fall below ``limit``;
    returns (seconds waited, load average then)."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        await asyncio.sleep(5)
    return time.monotonic() - t0, os.getloadavg()[0]


# -- processes: RSS and CPU ----------------------------------------------------------------------


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, ``clear_refs`` value 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def vm_hwm(pid: int) -> int:
    """Peak RSS of ``pid`` in bytes (``VmHWM`` in ``/proc/PID/status``); 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a ``psutil.Process`` (its errors propagate)."""
    t = proc.cpu_times()
    return float(t.user + t.system)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` together; one that is gone counts 0."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(psutil.Process(pid))
        except psutil.Error:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, since boot)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


# -- runs and results ----------------------------------------------------------------------------


def cancel_on_sigterm() -> None:
    """From the ``asyncio.run`` main coroutine: SIGTERM (a timeout, a CI cancel) cancels it, so
    it unwinds like Ctrl-C and the ``finally`` blocks stop what the run started."""
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)


def remove_run_directory(work: Path, keep: bool) -> None:
    """The end of a run's private directory (private keys, databases): removed, unless ``keep``
    (``--keep``), which says where it is."""
    if keep:
        print(f"kept {work}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def result_json(benchmark: str, machine: Mapping[str, Any], **fields: Any) -> str:
    """A benchmark's last output line: ``benchmark``, ``date`` (UTC, now), ``machine``, then
    ``fields`` in their order."""
    return json.dumps(
        {
            "benchmark": benchmark,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine,
            **fields,
        }
    )


def print_measures(result: Mapping[str, object], width: int) -> None:
    """A two-column ``measure | value`` listing of ``result``, names ``width`` wide."""
    print(f"{'measure':<{width}} {'value':>14}")
    for key, value in result.items():
        print(f"{key:<{width}} {value!s:>14}")


# -- CT names and patterns (ct_match, certstream, ct_monitor, ct_soak) ---------------------------

TLDS = ["com", "net", "org", "de", "io", "co.uk", "fr", "nl", "app", "dev"]
WORDS = ["api", "www", "mail", "shop", "cdn", "auth", "vpn", "git", "dev", "staging", "m"]
ALNUM = string.ascii_lowercase + string.digits


def random_label(rnd: random.Random, lo: int = 4, hi: int = 12) -> str:
    return "".join(rnd.choices(ALNUM, k=rnd.randint(lo, hi)))


def make_patterns(rnd: random.Random, n: int, bases: list[str] | None = None) -> list[str]:
    """``n`` watch patterns on labels of 4-12 characters: 50 % exact names, 35 % ``.domain``
    trees, 15 % ``*.domain``. The base domain of each is appended to ``bases``, if given."""
    patterns: list[str] = []
    for _ in range(n):
        base = f"{random_label(rnd)}.{rnd.choice(TLDS)}"
        if bases is not None:
            bases.append(base)
        kind = rnd.random()
        if kind < 0.50:
            patterns.append(f"{rnd.choice(WORDS)}.{base}" if rnd.random() < 0.6 else base)
        elif kind < 0.85:
            patterns.append("." + base)
        else:
            patterns.append("*." + base)
    return patterns


def make_patterns_and_bases(rnd: random.Random, n: int) -> tuple[list[str], list[str]]:
    """``n`` patterns (:func:`make_patterns`) and the base domain of each."""
    bases: list[str] = []
    return make_patterns(rnd, n, bases), bases


def write_watchlist(rnd: random.Random, n: int, path: str | Path) -> tuple[list[str], Watchlist]:
    """``n`` patterns (:func:`make_patterns`), written to the watch file ``path`` one a line, and
    their ``ctwatch.match.Watchlist``."""
    from ctwatch.match import Watchlist

    patterns = make_patterns(rnd, n)
    Path(path).write_text("\n".join(patterns) + "\n", encoding="utf-8")
    return patterns, Watchlist.from_patterns(patterns)


def make_names(rnd: random.Random, patterns: list[str], n: int, hit_ratio: float) -> list[str]:
    """``n`` certificate names, ``hit_ratio`` of them matching one of ``patterns``; the misses
    share TLDs and labels with them (near misses such as ``notX`` and ``X.evil.net`` too); 20 %
    are wildcard SANs."""
    names: list[str] = []
    for _ in range(n):
        wildcard_san = rnd.random() < 0.20
        if rnd.random() < hit_ratio:
            p = rnd.choice(patterns)
            if p.startswith("*."):
                name = "*." + p[2:] if wildcard_san else f"{rnd.choice(WORDS)}.{p[2:]}"
            elif p.startswith("."):
                depth = 0 if wildcard_san else rnd.randint(0, 2)
                name = ".".join([*(rnd.choice(WORDS) for _ in range(depth)), p[1:]])
                name = "*." + name if wildcard_san else name
            else:
                # a wildcard SAN one level up covers the watched name (certspotter semantics)
                name = "*." + p.partition(".")[2] if wildcard_san else p
        else:
            r = rnd.random()
            base = f"{random_label(rnd)}.{rnd.choice(TLDS)}"
            if r < 0.05:  # near misses against a watched base
                p = rnd.choice(patterns).lstrip("*.")
                name = rnd.choice([f"not{p}", f"{p}.evil.net", f"{p}x"])
            elif r < 0.5:
                name = f"{rnd.choice(WORDS)}.{base}"
            elif r < 0.8:
                name = base
            else:
                name = f"{rnd.choice(WORDS)}.{rnd.choice(WORDS)}.{base}"
            if wildcard_san:
                name = "*." + name
        names.append(name)
    return names


def san_count(rnd: random.Random) -> int:
    """Names per certificate: 1 (40 %), 2 (35 %), 3-5 (20 %), 10 (5 %)."""
    r = rnd.random()
    return 1 if r < 0.40 else 2 if r < 0.75 else rnd.randint(3, 5) if r < 0.95 else 10


def background_names(rnd: random.Random) -> list[str]:
    """Names no pattern matches: their registrable label has 13-16 characters (patterns: <= 12)."""
    base = f"{random_label(rnd, 13, 16)}.{rnd.choice(TLDS)}"
    k = san_count(rnd)
    first = "*." + base if rnd.random() < 0.15 else base
    names = [first]
    while len(names) < k:
        names.append(rnd.choice([f"{rnd.choice(WORDS)}.{base}", f"{random_label(rnd)}.{base}"]))
    return list(dict.fromkeys(names))


def watched_names(rnd: random.Random, pattern: str) -> list[str]:
    """Names matched by ``pattern`` under both certspotter's and certpilot's rules (first), plus
    a few that match nothing."""
    if pattern.startswith("*."):
        hit = pattern  # certspotter: a "*" watch label matches only a "*" (or "?") name label
    elif pattern.startswith("."):
        base = pattern[1:]
        hit = rnd.choice([base, f"{rnd.choice(WORDS)}.{base}", f"m.{random_label(rnd)}.{base}"])
        hit = "*." + base if rnd.random() < 0.2 else hit
    else:
        hit = pattern
    extra = background_names(rnd)[: san_count(rnd) - 1]
    return list(dict.fromkeys([hit, *extra]))


# -- the CT benchmarks' certificate pool and log tree (ct_monitor, ct_soak) ----------------------


@dataclass
class PoolCert:
    """One certificate of the pool, encoded as a log serves it."""

    entry_type: str  # "x509" or "precert"
    leaf_template: bytes  # MerkleTreeLeaf with timestamp 0
    extra: bytes  # extra_data: the chain (intermediate + root)
    sha256: str  # of the certificate (x509) or the precertificate
    names: list[str]
    watched: bool


def build_cert_pool(
    rnd: random.Random,
    patterns: list[str],
    watchlist: Watchlist,
    add: Callable[[PoolCert], int],
    *,
    background: int,
    watched: int,
    ca_name: str,
) -> tuple[list[int], list[int], list[str]]:
    """The certificates a CT benchmark's log entries are drawn from, each handed to ``add``
    (which files it and returns its pool index), in this order:

    - ``background`` certificates (x509 and precert alternately) of :func:`background_names`;
    - ``watched`` certificates (alternately too) of :func:`watched_names` for as many patterns
      sampled from ``patterns``.

    Issued by a ``LocalCA`` named ``ca_name`` with an RSA-2048 intermediate, whose intermediate
    and root are every entry's chain; x509 leaves are EC P-256 or one of four RSA-2048 keys,
    not_before up to 60 days back, lifetimes 90 (mostly), 47 or 365 days. The generator's promise
    is checked against ``watchlist``: watched certificates match it, the others do not.

    Returns the background indexes, the watched indexes and the watched patterns (in the order
    drawn)."""
    from cryptography.hazmat.primitives import serialization

    from certpilot.localca import LocalCA, new_key
    from ctwatch.local_log import make_precert, strip_poison
    from ctwatch.rfc6962 import (
        encode_cert_chain,
        encode_precert_chain_entry,
        encode_precert_leaf,
        encode_x509_leaf,
    )

    der = serialization.Encoding.DER
    now = datetime.now(UTC).replace(microsecond=0)
    ca = LocalCA(ca_name, now, key_kind="RSA", key_bits=2048)
    assert ca.intermediate is not None
    chain = [ca.intermediate.public_bytes(der), ca.root.public_bytes(der)]
    issuer_spki = ca.intermediate.public_key().public_bytes(
        der, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    issuer_key_hash = hashlib.sha256(issuer_spki).digest()
    rsa_keys = [new_key("RSA", 2048) for _ in range(4)]

    def make(names: list[str], kind: str, is_watched: bool) -> int:
        assert bool(watchlist.match_any(names)) == is_watched, names  # the generator's promise
        nb = now - timedelta(days=rnd.randint(0, 60), minutes=rnd.randint(0, 1439))
        na = nb + timedelta(days=rnd.choice([90, 90, 90, 47, 365]))
        if kind == "x509":
            key = rnd.choice(rsa_keys) if rnd.random() < 0.5 else None
            cert = ca.issue(names, now, not_before=nb, lifetime=na - nb, key=key).cert
            cert_der = cert.public_bytes(der)
            return add(
                PoolCert(
                    "x509",
                    encode_x509_leaf(0, cert_der),
                    encode_cert_chain(chain),
                    hashlib.sha256(cert_der).hexdigest(),
                    names,
                    is_watched,
                )
            )
        pre = make_precert(ca.issuer_cert, ca.issuer_key, names, nb, na)
        pre_der = pre.public_bytes(der)
        return add(
            PoolCert(
                "precert",
                encode_precert_leaf(0, issuer_key_hash, strip_poison(pre.tbs_certificate_bytes)),
                encode_precert_chain_entry(pre_der, chain),
                hashlib.sha256(pre_der).hexdigest(),
                names,
                is_watched,
            )
        )

    background_items = [
        make(background_names(rnd), kind, False) for kind in ["x509", "precert"] * (background // 2)
    ]
    watched_patterns = rnd.sample(patterns, watched)
    watched_items = [
        make(watched_names(rnd, p), ("x509", "precert")[i % 2], True)
        for i, p in enumerate(watched_patterns)
    ]
    return background_items, watched_items, watched_patterns


def subtree_root(
    levels: Sequence[Sequence[bytes]],
    lo: int,
    hi: int,
    node_hash: Callable[[bytes, bytes], bytes],
) -> bytes:
    """MTH of the leaves ``[lo, hi)`` (``hi > lo``) from stored perfect-subtree hashes:
    ``levels[k][i]`` is the hash of the leaves ``[i * 2**k, (i + 1) * 2**k)``."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        return levels[n.bit_length() - 1][lo // n]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(
        subtree_root(levels, lo, lo + k, node_hash), subtree_root(levels, lo + k, hi, node_hash)
    )


def subtree_consistency(
    levels: Sequence[Sequence[bytes]],
    first: int,
    second: int,
    node_hash: Callable[[bytes, bytes], bytes],
) -> list[bytes]:
    """The consistency proof between tree sizes ``first`` and ``second`` (RFC 6962 section
    2.1.2), from the stored subtrees of :func:`subtree_root`."""

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:  # SUBPROOF(m, D[lo:hi])
        n = hi - lo
        if m == n:
            return [] if whole else [subtree_root(levels, lo, hi, node_hash)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*subproof(m, lo, lo + k, whole), subtree_root(levels, lo + k, hi, node_hash)]
        return [*subproof(m - k, lo + k, hi, False), subtree_root(levels, lo, lo + k, node_hash)]

    if first == 0 or first >= second:
        return []
    return subproof(first, 0, second, True)
