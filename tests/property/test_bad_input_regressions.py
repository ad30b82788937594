"""Minimal reproducers of the bad-input bugs the property tests and the fuzz run found.

Each test is the smallest input that used to crash, hang or give a multi-line error.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bot.slack_app import BadInteraction, button_value, job_id_of, revoke_form
from certpilot.domain.errors import CertificateParseError, ConfigError
from certpilot.domain.model import FileTarget
from certpilot.domain.x509 import ParsedCert, parse_der, parse_pem_bundle
from certpilot.settings import load_settings, settings_from_mapping
from ctwatch.loglist import parse_log_list
from ctwatch.match import Watchlist, WatchlistError
from ctwatch.rfc6962 import MalformedEntry, encode_x509_leaf, parse_leaf
from ctwatch.source import LogProtocolError
from ctwatch.tiled import parse_checkpoint
from remediator.policy_config import load_policy, policy_from_mapping
from remediator.webhook import BadPayload, parse_payload
from scanner.files import scan_file_target
from slo.openslo import from_openslo, load_openslo
from slo.spec import load_sloth, parse_sloth
from tests.property.bad_input import assert_one_line, samples

S = samples()
SAN_OID, EKU_OID = bytes.fromhex("0603551d11"), bytes.fromhex("0603551d25")


def _duplicate_san() -> bytes:
    """The sample leaf with its extendedKeyUsage OID turned into a second subjectAltName."""
    assert EKU_OID in S.leaf_der
    return S.leaf_der.replace(EKU_OID, SAN_OID)


def _raises_config_error(call: Any, *names: str) -> str:
    with pytest.raises(ConfigError) as e:
        call()
    return assert_one_line(e.value, *names)


# ---------------------------------------------------------------------------- x509 / files


def test_x509_duplicate_extension_is_not_a_crash(tmp_path: Path) -> None:
    # cryptography's DuplicateExtension is not a ValueError: it escaped parse_der,
    # parse_pem_bundle and so the whole file scan.
    der = _duplicate_san()
    parsed = parse_der(der, "dup.der")
    assert parsed.info.sans == ()  # an unreadable extension list counts as absent
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    assert isinstance(parse_pem_bundle(pem)[0], ParsedCert)
    path = tmp_path / "dup.der"
    path.write_bytes(der)
    (obs,) = scan_file_target(FileTarget(str(path)), S.now, env={})
    assert obs.leaf is not None


def _bad_version() -> bytes:
    """The sample leaf with its version field (v3, ``a0 03 02 01 02``) set to 108."""
    v3 = bytes.fromhex("a003020102")
    assert v3 in S.leaf_der
    return S.leaf_der.replace(v3, bytes.fromhex("a00302016c"), 1)


def test_x509_invalid_version_is_a_parse_error(tmp_path: Path) -> None:
    # cryptography's InvalidVersion is not a ValueError either (found by fuzz/fuzz_x509.py).
    der = _bad_version()
    with pytest.raises(CertificateParseError) as e:
        parse_der(der, "v108.der")
    assert_one_line(e.value, "v108.der", "not a valid X509 version")
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    (item,) = parse_pem_bundle(pem, "v108.pem")
    assert isinstance(item, CertificateParseError)
    assert_one_line(item, "v108.pem#0")
    path = tmp_path / "v108.pem"
    path.write_bytes(pem)
    (obs,) = scan_file_target(FileTarget(str(path)), S.now, env={})
    assert obs.leaf is None and obs.error is not None and str(path) in obs.error


def test_x509_garbage_der_names_the_origin() -> None:
    with pytest.raises(CertificateParseError) as e:
        parse_der(b"\x30\x03\x02\x01", "site.der")
    assert_one_line(e.value, "site.der")


# ---------------------------------------------------------------------------- Alertmanager


def _alert(**fields: Any) -> dict[str, Any]:
    alert = {"status": "firing", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}
    return {"version": "4", "alerts": [{**alert, **fields}]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # OverflowError: the time is past year 9999 once in UTC.
        (_alert(startsAt="9999-12-31T23:59:59-23:59"), "alerts[0].startsAt"),
        (_alert(endsAt="9999-12-31T23:30:00-01:00"), "alerts[0].endsAt"),
        # AssertionError: Go's zero time ("not set") as the start of an alert.
        (_alert(startsAt="0001-01-01T00:00:00Z"), "alerts[0].startsAt"),
        # TypeError: an unhashable status tested for membership in a set.
        (_alert(status=[]), "alerts[0].status"),
        (_alert(status={"a": 1}), "alerts[0].status"),
    ],
)
def test_webhook_payload_errors(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadPayload) as e:
        parse_payload(body)
    assert_one_line(e.value, field)


def test_webhook_error_does_not_echo_a_huge_value() -> None:
    with pytest.raises(BadPayload) as e:
        parse_payload({"version": ["x" * 1_000_000] * 1000})
    assert len(assert_one_line(e.value, "version")) < 300


# The handler's RecursionError (a 500 for b"[" * 100000) is covered by
# test_webhook_slack_property.py::test_handler_deeply_nested_body.


# ---------------------------------------------------------------------------- Slack


@pytest.mark.parametrize("value", ["not json", "[1]", '{"job": [1]}', '{"job": "1e9"}', 7])
def test_slack_button_value_errors(value: object) -> None:
    # json.loads / int() / .get on whatever the button carried raised inside the Bolt listener.
    body = {"user": {"id": "U1"}, "actions": [{"value": value}]}
    with pytest.raises(BadInteraction) as e:
        job_id_of(button_value(body))
    assert_one_line(e.value, "slack payload actions[0].value")


def test_slack_revoke_form_errors() -> None:
    with pytest.raises(BadInteraction) as e:
        revoke_form({"private_metadata": "{"})
    assert_one_line(e.value, "view.private_metadata")
    weird_state = {"private_metadata": "{}", "state": {"values": ["not", "a", "mapping"]}}
    assert revoke_form(weird_state) == ("", "", "unspecified")


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "text",
    [
        "a: 2026-13-01\n",  # ValueError from PyYAML's timestamp constructor
        "a: " + "1" * 5000 + "\n",  # ValueError: more than 4300 digits
        "a: !!timestamp 2026\n",  # AttributeError inside PyYAML
        "[" * 2000 + "]" * 2000,  # RecursionError
    ],
)
def test_yaml_loader_errors_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for load in (load_settings, load_policy, load_sloth, load_openslo):
        _raises_config_error(lambda load=load: load(path), str(path), "invalid YAML")


def test_yaml_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: \xff\n")
    for load in (load_settings, load_policy, load_sloth, load_openslo):
        _raises_config_error(lambda load=load: load(path), str(path))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scan": {"interval": 10**400}}, "scan.interval"),  # OverflowError: int to float
        ({"scan": {"interval": float("nan")}}, "scan.interval"),  # NaN was accepted
        ({"scan": {"timeout": "9" * 400 + "s"}}, "scan.timeout"),  # infinity was accepted
        ({"slack": {"silence_duration": 1e300}}, "slack.silence_duration"),
    ],
)
def test_settings_durations(data: dict[str, Any], field: str) -> None:
    _raises_config_error(lambda: settings_from_mapping(data, "c.yaml"), "c.yaml", field)


def test_settings_key_with_a_line_break_is_one_line() -> None:
    _raises_config_error(lambda: settings_from_mapping({"a\nb": 1}, "c.yaml"), r"'a\nb'")
    text = _raises_config_error(
        lambda: settings_from_mapping({"remediation": {"issuers": {"x\ny": {}}}}, "c.yaml"),
        "c.yaml",
    )
    assert "remediation.issuers" in text


def test_settings_error_on_yaml_aliases_is_short_and_fast(tmp_path: Path) -> None:
    # A "billion laughs" document: 9 levels of 9 aliases is 9**9 strings once expanded. PyYAML
    # shares the objects, but the error's repr() of the value expanded them all (25 MB of
    # message at 7 levels, minutes at 9).
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\nstore: {url: *a8}\n")
    started = time.perf_counter()
    text = _raises_config_error(lambda: load_settings(path), str(path), "store.url")
    assert len(text) < 1000
    assert time.perf_counter() - started < 2.0
    path.write_text("\n".join(lines) + "\nversion: *a8\n")
    text = _raises_config_error(lambda: load_sloth(path), str(path), "version")
    assert len(text) < 1000


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"defaults": {"max_validity": 10**400}}, "defaults.max_validity"),  # OverflowError
        ({"defaults": {"renew_before_days": 1e300}}, "defaults.renew_before_days"),
        ({"defaults": {"stagger_jitter": 1e300}}, "defaults.stagger_jitter"),  # timedelta
        ({"defaults": {"stagger_jitter": 10**30}}, "defaults.stagger_jitter"),
        (
            {"issuers": {"le": {"rate_limits": {"new_orders": {"limit": 1, "per": 1e300}}}}},
            "issuers.le.rate_limits.new_orders.per",
        ),
        ({"policy": {}, "x\ny": 1}, r"'x\ny'"),  # the unknown key, on one line
    ],
)
def test_policy_errors(data: dict[str, Any], field: str) -> None:
    _raises_config_error(lambda: policy_from_mapping(data, "p.yaml"), "p.yaml", field)


def _sloth(sli: object) -> dict[str, Any]:
    slo = {"name": "n", "objective": 99.0, "sli": sli}
    return {"version": "prometheus/v1", "service": "s", "slos": [slo]}


@pytest.mark.parametrize(
    ("sli", "field"),
    [
        ({"events": ["a list"]}, "slos[0].sli.events"),  # AttributeError: list.get
        ({"plugin": "certpilot/valid_ratio"}, "slos[0].sli.plugin"),  # AttributeError: str.get
    ],
)
def test_sloth_sli_shapes(sli: object, field: str) -> None:
    _raises_config_error(lambda: parse_sloth(_sloth(sli), "s.yaml"), "s.yaml", field)


def _openslo_slo(name: str, ratio: dict[Any, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "openslo/v1",
        "kind": "SLO",
        "metadata": {"name": name},
        "spec": {
            "service": "s",
            "budgetingMethod": "Occurrences",
            "objectives": [{"target": 0.99}],
            "indicator": {"spec": {"ratioMetric": ratio}},
        },
    }


def test_openslo_ratio_with_mixed_keys() -> None:
    # sorted() of int and str keys raised TypeError while building the error.
    slo = _openslo_slo("a", {1: "x", "total": "y"})
    _raises_config_error(lambda: from_openslo([slo], "o.yaml"), "o.yaml", "ratioMetric")


def test_openslo_name_with_a_line_break_is_one_line() -> None:
    slo = _openslo_slo("a\nb", {"bad": "x"})
    _raises_config_error(lambda: from_openslo([slo], "o.yaml"), "o.yaml")


# ---------------------------------------------------------------------------- CT watch files


def test_watchlist_error_does_not_echo_a_huge_line() -> None:
    for line in ("x" * 100_000 + "!", "a.example " + "y" * 100_000):
        with pytest.raises(WatchlistError) as e:
            Watchlist.from_lines([line])
        assert len(assert_one_line(e.value, "watchlist line 1")) < 700


def test_log_list_error_does_not_echo_a_huge_value() -> None:
    log = {"url": "ftp://" + "x" * 100_000, "key": "AAAA"}
    with pytest.raises(ConfigError) as e:
        parse_log_list({"operators": [{"logs": [log]}]}, "list.json")
    assert len(assert_one_line(e.value, "list.json", "operators[0].logs[0].url")) < 700


# ---------------------------------------------------------------------------- reported only


def test_ct_leaf_duplicate_extension() -> None:
    with pytest.raises(MalformedEntry):
        parse_leaf(encode_x509_leaf(1, _duplicate_san()), b"\x00\x00\x00", 7)


def test_ct_leaf_invalid_version() -> None:
    with pytest.raises(MalformedEntry):
        parse_leaf(encode_x509_leaf(1, _bad_version()), b"\x00\x00\x00", 7)


def test_checkpoint_size_with_too_many_digits() -> None:
    root = base64.b64encode(bytes(32)).decode()
    text = f"o\n{'1' * 5000}\n{root}\n\n\u2014 o AAAAAAAA\n"
    with pytest.raises(LogProtocolError):
        parse_checkpoint(text, "o", url="https://log.example.test/")
