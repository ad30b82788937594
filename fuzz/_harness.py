"""What every atheris harness in ``fuzz/`` shares.

A harness's ``TestOneInput`` feeds one input to a parser through :func:`expect`: the parser's
documented error is fine (its message must be one line, at most :data:`MAX_MESSAGE`
characters, naming the input); any other exception escapes, and atheris reports it as a crash
with the input that caused it. Hangs and memory blow-ups are libFuzzer's ``-timeout`` and
``-rss_limit_mb`` (``fuzz/run.py`` sets them).

Run one harness by hand (from the repository root)::

    .venv/bin/python fuzz/fuzz_ct.py CORPUS_DIR -max_total_time=60 -timeout=2

``fuzz/make_corpus.py`` writes the seed corpora; ``fuzz/run.py`` runs every harness.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

try:
    import atheris
except ImportError:  # pragma: no cover - run.py installs it
    sys.exit("atheris is not installed: .venv/bin/pip install atheris (or run fuzz/run.py)")

T = TypeVar("T")

MAX_MESSAGE = 10_000
"""libFuzzer's inputs here are a few KB: a message longer than this echoes more than a whole
input back (the property tests bound messages at 4096 characters on their smaller inputs)."""

#: Packages whose Python code atheris instruments for coverage feedback.
INSTRUMENTED = ["certpilot", "scanner", "ctwatch", "remediator", "slo", "bot", "yaml"]


class BadMessage(AssertionError):
    """A documented error whose message is not one clear line."""


def message_of(error: BaseException) -> str:
    one_line = getattr(error, "one_line", None)
    return one_line() if callable(one_line) else str(error)


def check_message(error: BaseException, *names: str) -> None:
    text = message_of(error)
    if not text.strip() or text.splitlines() != [text] or len(text) > MAX_MESSAGE:
        raise BadMessage(f"{type(error).__name__}: not one line: {text[:300]!r}")
    for name in names:
        if name not in text:
            raise BadMessage(f"{type(error).__name__} does not name {name!r}: {text[:300]!r}")


@dataclass(frozen=True)
class Known:
    """A bug already reported in a file the fuzz run does not own: ``kind`` raised with
    ``text`` in its message is counted and its first input saved, instead of stopping the run
    at the first of many inputs that hit it. Remove the entry once the bug is fixed."""

    kind: type[BaseException]
    text: str
    label: str


_current = b""
_known_seen: set[str] = set()


def _record(known: Known) -> None:
    if known.label in _known_seen:
        return
    _known_seen.add(known.label)
    out = os.environ.get("FUZZ_KNOWN_DIR")
    name = ""
    if out:
        path = Path(out) / f"known-{hashlib.sha1(_current).hexdigest()}"  # noqa: S324 (a name)
        path.write_bytes(_current)
        name = f" input {path}"
    print(f"KNOWN-ISSUE: {known.label}{name}", file=sys.stderr, flush=True)


def expect(
    call: Callable[[], T],
    documented: type[BaseException] | tuple[type[BaseException], ...],
    *names: str,
    known: tuple[Known, ...] = (),
) -> T | None:
    """``call()``; None after checking the message when it raises ``documented`` (or one of
    the ``known`` reported bugs)."""
    try:
        return call()
    except documented as e:
        check_message(e, *names)
        return None
    except Exception as e:
        for k in known:
            if isinstance(e, k.kind) and k.text in str(e):
                _record(k)
                return None
        raise


def scratch_dir(target: str) -> Path:
    """Where a harness writes its input files: ``$FUZZ_SCRATCH`` (``run.py`` sets it inside
    its work directory and removes it), else a new temporary directory. libFuzzer ends the
    process with ``_exit``, so ``atexit`` cleanup would never run."""
    given = os.environ.get("FUZZ_SCRATCH")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))


def mode(data: bytes, count: int) -> tuple[int, bytes]:
    """The first byte picks one of ``count`` modes; the rest is the input."""
    if not data:
        return 0, b""
    return data[0] % count, data[1:]


def main(test_one_input: Callable[[bytes], Any]) -> None:
    def one(data: bytes) -> None:
        global _current
        _current = data
        test_one_input(data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
