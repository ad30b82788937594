"""ctwatch.certstream.parse_message: real-shaped messages, tolerance, and every malformed case.

Messages are built by tests.support.certstream_server from real certificates (LocalCA), in
certstream-server-go's format; the Python and Elixir servers' variants are derived from them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from certpilot.localca import LocalCA
from ctwatch.certstream import (
    DomainsOnly,
    FeedEntry,
    Heartbeat,
    MalformedMessage,
    parse_message,
)
from ctwatch.match import Watchlist
from ctwatch.rfc6962 import CTLogError
from tests.support.certstream_server import (
    GARBAGE,
    certificate_update,
    domains_only,
    encode,
    heartbeat,
    lite,
)
from tests.support.ct_log import make_precert

DER = serialization.Encoding.DER
LOG = "https://ct.example.test/2026h1"


@pytest.fixture
def full(ca: LocalCA, now: datetime) -> dict[str, Any]:
    issued = ca.issue(["WWW.Example.COM", "example.com", "api.example.com."], now, serial=0x0ABC)
    return certificate_update(
        issued.cert, chain=issued.chain, index=4242, log_url=LOG, log_name="Test Log", seen=1.5e9
    )


def _dumps(message: object) -> str:
    return json.dumps(message)


def _parse_entry(message: object) -> FeedEntry:
    item = parse_message(_dumps(message))
    assert isinstance(item, FeedEntry), item
    return item


# -- well-formed messages ---------------------------------------------------------------------


def test_full_stream_x509(ca: LocalCA, now: datetime) -> None:
    issued = ca.issue(["www.example.com", "example.com"], now)
    der = issued.cert.public_bytes(DER)
    message = certificate_update(issued.cert, chain=issued.chain, index=7, log_url=LOG, seen=1.7e9)
    entry = _parse_entry(message)
    assert entry.names == ("www.example.com", "example.com")
    assert entry.entry_type == "x509"
    assert entry.der == der
    assert entry.sha256 == hashlib.sha256(der).hexdigest()
    assert entry.serial == format(issued.cert.serial_number, "x")
    assert entry.issuer == "/CN=Test Intermediate CA/O=Test"
    assert entry.not_before == issued.cert.not_valid_before_utc
    assert entry.not_after == issued.cert.not_valid_after_utc
    assert entry.index == 7
    assert entry.log_url == LOG
    assert entry.log_name == "certpilot loopback log"
    assert entry.seen == datetime.fromtimestamp(1.7e9, UTC)
    assert entry.not_before is not None and entry.not_before.tzinfo is UTC


def test_lite_stream_has_no_der_but_keeps_the_hash(full: dict[str, Any]) -> None:
    der_b64 = full["data"]["leaf_cert"]["as_der"]
    expected = hashlib.sha256(base64.b64decode(der_b64)).hexdigest()
    entry = _parse_entry(lite(full))
    assert entry.der is None
    assert entry.sha256 == expected
    assert "chain" not in lite(full)["data"]


def test_names_are_normalised_in_order(full: dict[str, Any]) -> None:
    entry = _parse_entry(full)
    # SANs lower-cased, trailing dot removed; the CN (already a SAN) is not repeated.
    assert entry.names == ("www.example.com", "example.com", "api.example.com")
    full["data"]["leaf_cert"]["all_domains"] = ["B.test.", "a.TEST", "b.test", "", "...", "a.test"]
    assert _parse_entry(full).names == ("b.test", "a.test")


def test_serial_leading_zeros_are_dropped(full: dict[str, Any]) -> None:
    assert full["data"]["leaf_cert"]["serial_number"] == "0ABC"  # Go pads to even length
    assert _parse_entry(full).serial == "abc"
    for raw, want in [("00:0A:BC", "abc"), ("0000", "0"), ("abc", "abc"), ("-0A", "-a"), ("", "")]:
        full["data"]["leaf_cert"]["serial_number"] = raw
        assert _parse_entry(full).serial == want, raw


def test_precert(ca: LocalCA, now: datetime) -> None:
    pre = make_precert(
        ca.issuer_cert, ca.issuer_key, ["pre.example.com"], now, now + timedelta(days=30)
    )
    message = certificate_update(pre, chain=[ca.issuer_cert], index=9)
    assert message["data"]["update_type"] == "PrecertLogEntry"
    entry = _parse_entry(message)
    assert entry.entry_type == "precert"
    assert entry.names == ("pre.example.com",)
    assert entry.der == pre.public_bytes(DER)
    assert entry.sha256 == hashlib.sha256(entry.der).hexdigest()


def test_python_server_shape(ca: LocalCA, now: datetime) -> None:
    """certstream-server-python: "PreCertEntry", '{:x}' serials, float times, no sha256."""
    issued = ca.issue(["py.example.com"], now, serial=0x00FF)
    leaf = issued.cert
    message = {
        "message_type": "certificate_update",
        "data": {
            "update_type": "PreCertEntry",
            "leaf_cert": {
                "subject": {"aggregated": "/CN=py.example.com", "CN": "py.example.com"},
                "extensions": {"subjectAltName": "DNS:py.example.com"},
                "not_before": leaf.not_valid_before_utc.timestamp(),
                "not_after": leaf.not_valid_after_utc.timestamp(),
                "serial_number": format(leaf.serial_number, "x"),
                "as_der": base64.b64encode(leaf.public_bytes(DER)).decode(),
                "all_domains": ["py.example.com"],
            },
            "chain": [],
            "cert_index": 12,
            "seen": 1.7e9,
            "source": {"url": "ct.example.test/log/", "name": "Example log"},
        },
    }
    entry = _parse_entry(message)
    assert entry.entry_type == "precert"
    assert entry.serial == "ff"
    assert entry.issuer == ""  # that server sends no issuer
    assert entry.sha256 == hashlib.sha256(leaf.public_bytes(DER)).hexdigest()
    assert entry.not_after == leaf.not_valid_after_utc
    assert entry.log_url == "ct.example.test/log/"


def test_missing_fields_are_left_out() -> None:
    entry = _parse_entry({"message_type": "certificate_update", "data": {"leaf_cert": {}}})
    assert entry == FeedEntry(
        names=(),
        issuer="",
        serial="",
        sha256=None,
        not_before=None,
        not_after=None,
        entry_type="x509",
        log_url="",
        index=None,
        seen=None,
    )


def test_missing_all_domains_falls_back_to_san_and_cn(full: dict[str, Any]) -> None:
    leaf = full["data"]["leaf_cert"]
    del leaf["all_domains"]
    leaf["extensions"]["subjectAltName"] = "DNS:a.example, IP Address:192.0.2.1, DNS:B.example"
    leaf["subject"]["CN"] = "cn.example"
    assert _parse_entry(full).names == ("a.example", "b.example", "cn.example")


def test_update_type_missing_uses_the_poison_flag(full: dict[str, Any]) -> None:
    del full["data"]["update_type"]
    assert _parse_entry(full).entry_type == "x509"
    full["data"]["leaf_cert"]["extensions"]["ctlPoisonByte"] = True
    assert _parse_entry(full).entry_type == "precert"


def test_issuer_built_from_fields_without_aggregated(full: dict[str, Any]) -> None:
    full["data"]["leaf_cert"]["issuer"] = {"C": "US", "CN": "R3", "L": None, "O": "Let's Encrypt"}
    assert _parse_entry(full).issuer == "/C=US/CN=R3/O=Let's Encrypt"
    del full["data"]["leaf_cert"]["issuer"]
    assert _parse_entry(full).issuer == ""


def test_sha256_field_without_der(full: dict[str, Any]) -> None:
    leaf = full["data"]["leaf_cert"]
    del leaf["as_der"]
    leaf["sha256"] = "AB:" * 31 + "CD"
    assert _parse_entry(full).sha256 == "ab" * 31 + "cd"
    del leaf["sha256"]
    assert _parse_entry(full).sha256 is None


def test_bytes_input(full: dict[str, Any]) -> None:
    entry = parse_message(_dumps(full).encode("utf-8"))
    assert isinstance(entry, FeedEntry)
    assert entry == _parse_entry(full)


def test_heartbeat_dns_entries_and_other_types(full: dict[str, Any]) -> None:
    hb = parse_message(_dumps(heartbeat(1.7e9)))
    assert hb == Heartbeat(datetime.fromtimestamp(1.7e9, UTC))
    assert parse_message('{"message_type": "heartbeat"}') == Heartbeat(None)
    dom = parse_message(_dumps(domains_only(full)))
    assert dom == DomainsOnly(("www.example.com", "example.com", "api.example.com"))
    assert parse_message('{"message_type": "stats", "data": {}}') is None


def test_encoded_shapes_parse_alike(full: dict[str, Any]) -> None:
    frames = encode(full)
    a, b = parse_message(frames["full"]), parse_message(frames["lite"])
    assert isinstance(a, FeedEntry) and isinstance(b, FeedEntry)
    assert a.der is not None and b.der is None
    assert a.sha256 == b.sha256 and a.names == b.names and a.serial == b.serial


def test_names_feed_the_watchlist(full: dict[str, Any]) -> None:
    wl = Watchlist.from_patterns([".example.com", "other.test"])
    entry = _parse_entry(full)
    assert wl.match_any(entry.names) == [
        ("www.example.com", ".example.com"),
        ("example.com", ".example.com"),
        ("api.example.com", ".example.com"),
    ]


# -- malformed messages ------------------------------------------------------------------------


def _with(full: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of ``full`` with the dotted ``path`` set to ``value``."""
    out = copy.deepcopy(full)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


MALFORMED_FIELDS: list[tuple[str, object, str]] = [
    ("data", "nope", "data is a string"),
    ("data", None, "data is null"),
    ("data.leaf_cert", [], "leaf_cert is an array"),
    ("data.leaf_cert", None, "leaf_cert is null"),
    ("data.leaf_cert.all_domains", "example.com", "all_domains is a string"),
    ("data.leaf_cert.all_domains", ["a.test", 3], "all_domains item is a number"),
    ("data.leaf_cert.all_domains", [None], "all_domains item is null"),
    ("data.leaf_cert.not_before", "2026-01-01", "not_before is a string"),
    ("data.leaf_cert.not_before", True, "not_before is a boolean"),
    ("data.leaf_cert.not_after", 1e300, "not_after is out of range"),
    ("data.leaf_cert.not_after", 10**30, "not_after is out of range"),
    ("data.leaf_cert.not_after", -(10**20), "not_after is out of range"),
    ("data.leaf_cert.serial_number", 1234, "serial_number is a number"),
    ("data.leaf_cert.serial_number", "12G4", "serial_number is not hexadecimal"),
    ("data.leaf_cert.serial_number", "0x1A", "serial_number is not hexadecimal"),
    ("data.leaf_cert.serial_number", " 1A", "serial_number is not hexadecimal"),
    ("data.leaf_cert.serial_number", "A" * 500, "serial_number has 500 hex digits"),
    ("data.leaf_cert.serial_number", "-", "serial_number has 0 hex digits"),
    ("data.leaf_cert.sha256", "AB:CD", "sha256 has 4 hex digits"),
    ("data.leaf_cert.sha256", "zz" * 32, "sha256 is not hexadecimal"),
    ("data.leaf_cert.sha256", ["AB"], "sha256 is an array"),
    ("data.leaf_cert.sha256", "00" * 32, "sha256 does not match"),
    ("data.leaf_cert.as_der", "not base64!", "as_der is not base64"),
    ("data.leaf_cert.as_der", 5, "as_der is a number"),
    ("data.leaf_cert.issuer", "/CN=R3", "issuer is a string"),
    ("data.leaf_cert.issuer.aggregated", 1, "issuer.aggregated is a number"),
    ("data.cert_index", -1, "cert_index is out of range"),
    ("data.cert_index", 2**64, "cert_index is out of range"),
    ("data.cert_index", 1.5, "cert_index is a number"),
    ("data.cert_index", True, "cert_index is a boolean"),
    ("data.cert_index", "12", "cert_index is a string"),
    ("data.seen", {}, "seen is an object"),
    ("data.source", "ct.example", "source is a string"),
    ("data.source.url", 7, "source.url is a number"),
    ("data.source.name", [], "source.name is an array"),
    ("data.update_type", "X509Entry", "unknown update_type 'X509Entry'"),
    ("data.update_type", 0, "update_type is a number"),
    ("message_type", 42, "message_type is a number"),
    ("message_type", None, "message_type is null"),
]


@pytest.mark.parametrize(("path", "value", "reason"), MALFORMED_FIELDS)
def test_malformed_field(full: dict[str, Any], path: str, value: object, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(_dumps(_with(full, path, value)))
    assert reason in str(info.value)


def test_issuer_field_of_wrong_type_without_aggregated(full: dict[str, Any]) -> None:
    full["data"]["leaf_cert"]["issuer"] = {"CN": 5}
    with pytest.raises(MalformedMessage, match=r"issuer\.CN is a number"):
        parse_message(_dumps(full))


def test_extensions_of_wrong_type_when_needed(full: dict[str, Any]) -> None:
    del full["data"]["leaf_cert"]["all_domains"]
    full["data"]["leaf_cert"]["extensions"] = "DNS:a.test"
    with pytest.raises(MalformedMessage, match="extensions is a string"):
        parse_message(_dumps(full))


MALFORMED_RAW: list[tuple[str | bytes, str]] = [
    ("", "not JSON"),
    ("not json", "not JSON"),
    ('{"message_type": "certificate_update", "data": {"leaf_cert": {"all_dom', "not JSON"),
    ("[1, 2, 3]", "the message is an array"),
    ('"heartbeat"', "the message is a string"),
    ("null", "the message is null"),
    ("{}", "message_type is null"),
    ('{"message_type": "heartbeat", "timestamp": "now"}', "heartbeat timestamp is a string"),
    ('{"message_type": "heartbeat", "timestamp": NaN}', "heartbeat timestamp is out of range"),
    ('{"message_type": "heartbeat", "timestamp": Infinity}', "heartbeat timestamp is out of range"),
    ('{"message_type": "dns_entries", "data": "a.test"}', "dns_entries data is a string"),
    ('{"message_type": "dns_entries"}', "dns_entries data is null"),
    ('{"message_type": "dns_entries", "data": ["a.test", null]}', "dns_entries data item is null"),
    ('{"message_type": "certificate_update"}', "data is null"),
    (b"\xff\xfe\x00garbage \xc3\x28", "not JSON"),
    (b'{"message_type": "heartbeat", "x": "\xc3\x28"}', "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ('{"message_type": "heartbeat", "timestamp": ' + "9" * 5000 + "}", "not JSON"),
    ('{"message_type": "heartbeat", "timestamp": 1e400}', "out of range"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED_RAW, ids=range(len(MALFORMED_RAW)))
def test_malformed_raw(raw: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_message(raw)
    assert reason in str(info.value)


def test_malformed_is_a_ct_log_error_with_one_line() -> None:
    with pytest.raises(CTLogError) as info:
        parse_message('{"message_type": "certificate_update", "data": {"leaf_cert": \n[]}}')
    text = str(info.value)
    assert isinstance(info.value, MalformedMessage)
    assert text.startswith("certstream message: ")
    assert "\n" not in text
    assert info.value.reason in text


def test_support_garbage_is_all_malformed() -> None:
    for frame in GARBAGE:
        with pytest.raises(MalformedMessage):
            parse_message(frame)


# -- fuzzing -----------------------------------------------------------------------------------

ODD_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    1.5,
    10**30,
    -(10**30),
    1e308,
    "",
    "x",
    "A" * 1000,
    "\udcff",
    [],
    [None],
    [1, "a"],
    {},
    {"a": {"b": []}},
]


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _check(raw: str | bytes) -> bool:
    """parse_message may answer anything of its types or MalformedMessage: nothing else.
    ``True`` when it parsed, ``False`` when it was refused."""
    try:
        item = parse_message(raw)
    except MalformedMessage as e:
        assert "\n" not in str(e)
        return False
    assert item is None or isinstance(item, FeedEntry | Heartbeat | DomainsOnly)
    if isinstance(item, FeedEntry):
        assert all(isinstance(n, str) and n and not n.endswith(".") for n in item.names)
        assert item.entry_type in ("x509", "precert")
        assert item.sha256 is None or len(item.sha256) == 64
    return True


def test_fuzz_every_field_with_every_type(full: dict[str, Any]) -> None:
    """Each field (leaf and container alike) replaced by each odd value, one at a time."""
    checked = 0
    for path in list(_paths(full)):
        for value in ODD_VALUES:
            message = copy.deepcopy(full)
            node: Any = message
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            _check(json.dumps(message))
            checked += 1
    assert checked > 500


def test_fuzz_truncations_and_byte_noise(full: dict[str, Any]) -> None:
    rnd = random.Random(1234)
    frames = encode(full)
    outcomes: list[bool] = []
    for text in (frames["lite"], frames["full"], frames["domains"], _dumps(heartbeat(1.0))):
        data = text.encode("utf-8")
        for cut in range(0, len(data), max(1, len(data) // 200)):
            outcomes.append(_check(data[:cut]))
            outcomes.append(_check(text[:cut]))
        for _ in range(300):
            noisy = bytearray(data)
            for _ in range(rnd.randint(1, 8)):
                op = rnd.random()
                pos = rnd.randrange(len(noisy))
                if op < 0.4:
                    noisy[pos] = rnd.randrange(256)
                elif op < 0.7:
                    noisy.insert(pos, rnd.choice(b'{}[]",:0123456789-.eE\\ntfu\xff'))
                else:
                    del noisy[pos]
            outcomes.append(_check(bytes(noisy)))
    # Both ways occur: most mangled frames are refused, and the untouched prefixes of the
    # whole frame (cut at its end) and noise that lands in a string value still parse.
    assert outcomes.count(False) > 1000 and True in outcomes
