"""Fuzz the config loaders: YAML text through ``load_settings``, ``load_policy``,
``load_sloth`` and ``load_any`` (Sloth or OpenSLO, as ``certpilot slo`` reads spec files).

Input: one mode byte picking the loader (settings, policy, Sloth, Sloth-or-OpenSLO), then the
bytes of the file (written to a temporary file: the loaders read paths). One loader per input
keeps the pure-Python YAML parser's cost to one parse.

Documented: ``ConfigError`` naming the file, and nothing else.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["certpilot", "remediator", "slo", "yaml"]):
    from _harness import expect, main, mode, scratch_dir

    from certpilot.domain.errors import ConfigError
    from certpilot.settings import load_settings
    from remediator.policy_config import load_policy
    from slo.openslo import load_any
    from slo.spec import load_sloth

WORK = scratch_dir("config")
PATH = WORK / "fuzz.yaml"
LOADERS = (load_settings, load_policy, load_sloth, load_any)


def test_one_input(data: bytes) -> None:
    which, text = mode(data, len(LOADERS))
    PATH.write_bytes(text)
    expect(lambda: LOADERS[which](PATH), ConfigError, str(PATH))


if __name__ == "__main__":
    main(test_one_input)
