"""What every ``certpilot`` verb shares: exit codes, the terminal console, and where the store
is (``--db``, else ``--config``'s ``store.url``, else ``$CERTPILOT_DB``, else the default)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from certpilot.domain.errors import ConfigError
from certpilot.settings import Settings, load_settings, parse_duration

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def duration_arg(text: str) -> float:
    """argparse ``type=`` for a duration (``30s``, ``5m``, ``1h``, seconds)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e


def positive_int_arg(text: str) -> int:
    """argparse ``type=`` for a count of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped into a file or a pager, rich would assume 80 columns and squeeze the tables; use a
    # wide page unless COLUMNS says otherwise.
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def store_url(args: argparse.Namespace) -> str:
    if getattr(args, "db", None):
        return str(args.db)
    if getattr(args, "config", None):
        return load_settings(args.config).store.url
    return os.environ.get("CERTPILOT_DB", Settings().store.url)


def require_db(url: str) -> None:
    """A SQLite file that does not exist is a usage error (a typo in ``--db``), not a new,
    empty database."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise ConfigError(
                "--db", "", f"no inventory at {path}: run a scan with --db first", url
            )
