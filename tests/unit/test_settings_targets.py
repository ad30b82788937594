"""Config validation and CLI target parsing: one clear line naming file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from certpilot.domain.errors import ConfigError, UsageError
from certpilot.domain.model import EndpointTarget, FileTarget
from certpilot.settings import load_settings, parse_duration, settings_from_mapping
from certpilot.targets import parse_resolve, parse_targets, split_host_port


def test_defaults_work_without_a_file() -> None:
    s = settings_from_mapping({}, "x.yaml")
    assert s.scan.concurrency == 100
    assert s.http.host == "127.0.0.1"
    assert s.store.url.startswith("sqlite:///")


def test_full_config_round_trip(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        """
store: {url: "sqlite:///TMP/inv.db"}
http: {port: 0}
scan: {interval: 2m, timeout: 1500ms, concurrency: 10}
judge: {expiring_days: 14}
targets:
  endpoints:
    - example.com
    - "[::1]:8443"
    - {host: api.example.com, port: 8443, sni: api.internal, address: 10.0.0.1,
       labels: {owner: api}}
  files:
    - /etc/ssl/private/*.pem
    - {path: /etc/certs/app.p12, password_env: APP_P12_PASS}
""".replace("TMP", str(tmp_path))
    )
    s = load_settings(cfg)
    assert s.scan.interval == 120 and s.scan.timeout == 1.5
    eps = s.endpoint_targets()
    assert eps[0] == EndpointTarget("example.com", 443)
    assert eps[1].host == "::1" and eps[1].port == 8443
    assert eps[2].server_name == "api.internal" and eps[2].labels["owner"] == "api"
    assert s.file_targets()[1] == FileTarget("/etc/certs/app.p12", "APP_P12_PASS")
    assert s.judge.policy().expiring_days == 14


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"scan": {"timeout": "soon"}}, "c.yaml: scan.timeout: expected a duration"),
        ({"scan": {"concurrency": 0}}, "c.yaml: scan.concurrency:"),
        ({"targets": {"endpoints": ["a:99999"]}}, "targets.endpoints[0]: port must be 1-65535"),
        (
            {"targets": {"endpoints": [{"host": "a", "prot": 1}]}},
            "targets.endpoints[0].prot: unknown field",
        ),
        ({"store": {"url": "mysql://x"}}, "store.url: expected a sqlite:/// or postgresql:// URL"),
        ({"nope": 1}, "c.yaml: nope: unknown field (got 1)"),
        ({"targets": {"endpoints": ["a.com", "a.com:443"]}}, "listed twice"),
    ],
)
def test_config_errors_name_file_field_value(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_mapping(data, "c.yaml")
    assert needle in e.value.one_line()
    assert "\n" not in e.value.one_line()


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scan:\n  timeout: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_settings(top)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1.5h", 5400), ("250ms", 0.25), (7, 7)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("example.com", "example.com", 443),
        ("example.com:8443", "example.com", 8443),
        ("[::1]:8443", "::1", 8443),
        ("::1", "::1", 443),
        ("https://example.com:444/path", "example.com", 444),
        ("10.0.0.1:25", "10.0.0.1", 25),
    ],
)
def test_split_host_port(text: str, host: str, port: int) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    "text", ["", "host:0", "host:99999", "host:abc", "[::1", "ftp://x", "a:b:c"]
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(UsageError):
        split_host_port(text)


def test_parse_targets_with_resolve_and_files() -> None:
    pins = parse_resolve(["Example.com:443:127.0.0.1", "v6.test:8443:[::1]"])
    targets = parse_targets(
        ["example.com", "v6.test:8443", "file:/etc/ssl/*.pem", "other:443"], resolve=pins
    )
    assert targets[0] == EndpointTarget("example.com", 443, address="127.0.0.1")
    assert targets[1] == EndpointTarget("v6.test", 8443, address="::1")
    assert targets[2] == FileTarget("/etc/ssl/*.pem")
    assert targets[3] == EndpointTarget("other", 443)


@pytest.mark.parametrize(
    "spec", ["host:443", "host:x:1.2.3.4", "host:443:not-an-ip", ":443:1.2.3.4"]
)
def test_bad_resolve(spec: str) -> None:
    with pytest.raises(UsageError, match="--resolve"):
        parse_resolve([spec])
