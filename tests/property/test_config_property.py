"""Config parsers on arbitrary and mutated documents and YAML text: certpilot's settings
(certpilot/settings.py), the remediation policy (remediator/policy_config.py) and SLO specs
in Sloth (slo/spec.py) and OpenSLO (slo/openslo.py) form.

Documented behaviour: every one raises :class:`ConfigError` only, one line naming the file
(and the field where there is one).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from certpilot.domain.errors import ConfigError
from certpilot.settings import load_settings, parse_duration, settings_from_mapping
from remediator.policy_config import load_policy, policy_from_mapping
from slo.openslo import dump_openslo_yaml, from_openslo, load_any, load_openslo
from slo.spec import default_slos, load_sloth, parse_sloth
from tests.property.bad_input import (
    check,
    mutated,
    mutated_text,
    mutated_tree,
    samples,
    text_leaves,
    yaml_values,
)

S = samples()
SOURCE = "conf.yaml"


@pytest.fixture(scope="module")
def conf_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="certpilot-prop-") as d:
        yield Path(d)


def _config(parser: str, call: Callable[[], object], source: str = SOURCE) -> None:
    check(parser, call, ConfigError, source)


def _from_yaml(conf_dir: Path, text: str | bytes) -> None:
    """The text as a file through every loader."""
    path = conf_dir / SOURCE
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    _config("certpilot.settings.load_settings", lambda: load_settings(path), str(path))
    _config("remediator.policy_config.load_policy", lambda: load_policy(path), str(path))
    _config("slo.spec.load_sloth", lambda: load_sloth(path), str(path))
    _config("slo.openslo.load_openslo", lambda: load_openslo(path), str(path))
    _config("slo.openslo.load_any", lambda: load_any(path), str(path))


# ---------------------------------------------------------------------------- mappings


def _settings(data: Any) -> None:
    _config("certpilot.settings.settings_from_mapping", lambda: settings_from_mapping(data, SOURCE))


def _policy(data: Any) -> None:
    _config(
        "remediator.policy_config.policy_from_mapping", lambda: policy_from_mapping(data, SOURCE)
    )


def _sloth(data: Any) -> None:
    _config("slo.spec.parse_sloth", lambda: parse_sloth(data, SOURCE))


def _openslo(docs: Any) -> None:
    _config("slo.openslo.from_openslo", lambda: from_openslo(docs, SOURCE))


@given(st.dictionaries(st.text(max_size=12), yaml_values, max_size=4))
def test_settings_arbitrary_mapping(data: dict[str, Any]) -> None:
    _settings(data)


@given(mutated_tree(S.settings, yaml_values))
def test_settings_mutated(data: Any) -> None:
    if isinstance(data, dict):
        _settings(data)


@given(mutated_tree(S.settings, text_leaves))
def test_settings_awkward_strings(data: Any) -> None:
    if isinstance(data, dict):
        _settings(data)


@given(mutated_tree(S.policy, text_leaves))
def test_policy_awkward_strings(data: Any) -> None:
    if isinstance(data, dict):
        _policy(data)


@given(st.dictionaries(st.text(max_size=12), yaml_values, max_size=4))
def test_policy_arbitrary_mapping(data: dict[str, Any]) -> None:
    _policy(data)


@given(mutated_tree(S.policy, yaml_values))
def test_policy_mutated(data: Any) -> None:
    if isinstance(data, dict):
        _policy(data)
        _policy({"policy": data})


@given(yaml_values)
def test_sloth_arbitrary(data: Any) -> None:
    _sloth(data)


@given(mutated_tree(S.sloth, yaml_values))
def test_sloth_mutated(data: Any) -> None:
    _sloth(data)


@given(st.lists(yaml_values, max_size=3))
def test_openslo_arbitrary(docs: list[Any]) -> None:
    _openslo(docs)


@given(mutated_tree(S.sloth, text_leaves))
def test_sloth_awkward_strings(data: Any) -> None:
    _sloth(data)


@given(mutated_tree(list(S.openslo), text_leaves))
def test_openslo_awkward_strings(docs: Any) -> None:
    if isinstance(docs, list):
        _openslo(docs)


@given(mutated_tree(list(S.openslo), yaml_values))
def test_openslo_mutated(docs: Any) -> None:
    if isinstance(docs, list):
        _openslo(docs)


def test_sloth_round_trip() -> None:
    slos = default_slos()
    assert parse_sloth(yaml.safe_load(yaml.safe_dump(S.sloth)), SOURCE) == slos
    assert from_openslo(list(yaml.safe_load_all(dump_openslo_yaml(slos))), SOURCE) == slos


def test_settings_sample_round_trips_through_yaml(conf_dir: Path) -> None:
    path = conf_dir / "ok.yaml"
    path.write_text(yaml.safe_dump(dict(S.settings)))
    assert load_settings(path) == settings_from_mapping(S.settings, SOURCE)
    path.write_text(yaml.safe_dump(dict(S.policy)))
    assert load_policy(path) == policy_from_mapping(S.policy, SOURCE)


@given(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_duration_round_trip(n: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * scale)


# ---------------------------------------------------------------------------- YAML text

_SAMPLE_TEXTS = [
    yaml.safe_dump(dict(S.settings)),
    yaml.safe_dump({"policy": dict(S.policy)}),
    yaml.safe_dump(dict(S.sloth)),
    dump_openslo_yaml(default_slos()),
]

_YAML_SNIPPETS = [
    "a: 2026-13-45\n",
    "a: 2026-02-30 25:61:61\n",
    "a: 2026-01-01T00:00:00+99:00\n",
    "a: " + "1" * 5000 + "\n",
    "a: &a [*a]\nb: *a\n",
    "a: !!binary not-base64\n",
    "a: !!python/object:os.system x\n",
    "a: !!timestamp 2026\n",
    "? [a, b]\n: c\n",
    "<<: 1\n",
    "a: .nan\nb: -.inf\n",
    "\ufeff\x00\x85\u2028",
    "a: |\n  \tb\n",
    "%YAML 1.1\n--- !!set {a, b}\n",
    "--- a\n--- b\n...\n--- [c]\n",
]


@pytest.mark.parametrize("text", _YAML_SNIPPETS)
def test_yaml_awkward_snippet(conf_dir: Path, text: str) -> None:
    _from_yaml(conf_dir, text)


@pytest.mark.parametrize("text", ["[" * 1100 + "]" * 1100, "{a: " * 1100 + "}" * 1100])
def test_yaml_nested_too_deeply(conf_dir: Path, text: str) -> None:
    # PyYAML's pure-Python scanner is quadratic in flow nesting (about 0.7 s here, before
    # RecursionError stops it near 1000 levels): two loaders, not five.
    path = conf_dir / SOURCE
    path.write_text(text)
    _config("certpilot.settings.load_settings", lambda: load_settings(path), str(path))
    _config("remediator.policy_config.load_policy", lambda: load_policy(path), str(path))


@given(st.text(max_size=200))
def test_yaml_arbitrary_text(conf_dir: Path, text: str) -> None:
    _from_yaml(conf_dir, text)


@given(st.sampled_from(_SAMPLE_TEXTS).flatmap(lambda t: mutated_text(t, max_ops=3)))
def test_yaml_mutated_text(conf_dir: Path, text: str) -> None:
    _from_yaml(conf_dir, text)


@given(st.sampled_from(_SAMPLE_TEXTS).flatmap(lambda t: mutated(t.encode(), max_ops=2)))
def test_yaml_mutated_bytes(conf_dir: Path, data: bytes) -> None:
    _from_yaml(conf_dir, data)


@given(yaml_values)
def test_yaml_dumped_values(conf_dir: Path, value: Any) -> None:
    _from_yaml(conf_dir, yaml.safe_dump(value))
