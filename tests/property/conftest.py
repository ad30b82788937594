"""Hypothesis profiles for the bad-input suites, and the count of inputs tried.

``ci`` (the default) keeps the whole ``tests/property`` run near a minute on two shared
cores; ``HYPOTHESIS_PROFILE=deep`` runs many more examples per property for a longer search.
Neither has a hypothesis ``deadline``: :func:`tests.property.bad_input.check` fails an input
that takes more than 2 s itself (a wall-clock alarm, which also catches a true hang).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.property.bad_input import TRIED

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=100, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("deep", max_examples=5000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TRIED:
        return
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    terminalreporter.write_sep("-", f"bad inputs tried (hypothesis profile {profile})")
    for parser, count in sorted(TRIED.items()):
        terminalreporter.write_line(f"{parser:<46} {count:>8}")
    terminalreporter.write_line(f"{'total':<46} {sum(TRIED.values()):>8}")
