"""Shared pieces of the bad-input property tests (DESIGN.md section 5, issue 8 item 5).

* :func:`check` runs one parser call under a 2-second wall-clock limit and lets through only
  the parser's documented error, whose message must be one line naming the input.
* :data:`TRIED` counts the inputs each parser was given (printed at the end of the run by
  ``conftest.py``, for ``benchmarks/RESULTS.md``).
* Real inputs to mutate: certificates from :class:`certpilot.localca.LocalCA`, CT leaves, a
  signed checkpoint, a data tile, a certstream message, an Alertmanager payload, config
  documents. Built once per process (:func:`samples`).
* Strategies: JSON-shaped values, byte mutations (flip, truncate, insert, delete, duplicate)
  and tree mutations (replace or delete one node of a valid document).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import strategies as st

from certpilot.domain.errors import CertpilotError
from certpilot.localca import LocalCA
from ctwatch.local_log import make_precert, strip_poison
from ctwatch.rfc6962 import (
    SIG_ALG_ECDSA,
    STH,
    encode_cert_chain,
    encode_digitally_signed,
    encode_precert_chain_entry,
    encode_precert_leaf,
    encode_x509_leaf,
    log_id,
    sth_signed_data,
)
from ctwatch.tiled import (
    encode_leaf_index_extension,
    encode_rfc6962_note_signature,
    encode_tile_leaf,
    format_checkpoint,
    format_signature_line,
    rfc6962_key_id,
)
from slo.openslo import to_openslo
from slo.spec import default_slos, dump_sloth
from tests.support.certstream_server import certificate_update

T = TypeVar("T")

LIMIT_SECONDS = 2.0
"""One input taking longer than this is a hang."""

MAX_MESSAGE = 4096
"""A longer error message is not a clear one-line error (it echoes the input back)."""

TRIED: Counter[str] = Counter()
"""Inputs given to each parser in this process."""


class Hang(BaseException):
    """Raised by the alarm: a ``BaseException`` so a parser's ``except Exception`` cannot
    swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float = LIMIT_SECONDS) -> Iterator[None]:
    """Interrupt the block with :class:`Hang` after ``seconds`` of wall-clock time."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def message_of(error: BaseException) -> str:
    return error.one_line() if isinstance(error, CertpilotError) else str(error)


def assert_one_line(error: BaseException, *names: str) -> str:
    """The error's message: one line (no line break of any kind ``str.splitlines`` knows),
    not empty, at most :data:`MAX_MESSAGE` characters, containing each of ``names``."""
    text = message_of(error)
    assert text.strip(), f"{type(error).__name__} with an empty message"
    assert text.splitlines() == [text], f"multi-line error: {text[:500]!r}"
    assert len(text) <= MAX_MESSAGE, f"{len(text)}-character error: {text[:300]!r}..."
    for name in names:
        assert name in text, f"error does not name {name!r}: {text[:500]!r}"
    return text


def check(
    parser: str,
    call: Callable[[], T],
    documented: type[BaseException] | tuple[type[BaseException], ...],
    *names: str,
) -> T | BaseException:
    """Run ``call`` (one input to ``parser``) within :data:`LIMIT_SECONDS`.

    Returns the result, or the documented error after checking its message (one line, naming
    ``names``). Any other exception propagates (the property fails); a hang fails too.
    """
    TRIED[parser] += 1
    try:
        with time_limit():
            return call()
    except Hang as e:
        raise AssertionError(f"{parser}: one input took more than {LIMIT_SECONDS} s") from e
    except documented as e:
        assert_one_line(e, *names)
        return e


def run(parser: str, call: Callable[[], T]) -> T:
    """:func:`check` for a call documented never to raise."""
    out = check(parser, call, ())
    assert not isinstance(out, BaseException)
    return out


# ---------------------------------------------------------------------------- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
)
"""Values JSON and YAML decode to (floats include NaN and infinities: Python's json reads
them, and YAML has ``.nan`` and ``.inf``)."""

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)

yaml_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=12), inner, max_size=5)
        | st.dictionaries(st.none() | st.booleans() | st.integers() | st.floats(), inner)
    ),
    max_leaves=25,
)
"""Like :data:`json_values`, but YAML mappings may have non-string keys too."""


awkward_strings = st.sampled_from(
    [
        "",
        " ",
        "-1",
        "0",
        "nan",
        "inf",
        "1e400",
        "9" * 400,
        "9" * 400 + "d",
        "\u0663\u0660s",  # Arabic-Indic digits: 30s
        "\U0001d7d9h",  # a mathematical digit
        "1/0",
        "100%",
        "24:00",
        "25:61",
        "2026-13-01T00:00Z",
        "9999-12-31T23:59:59-23:59",
        "[::1]:443",
        "host:99999",
        "host:0",
        "https://x.example",
        "wss://",
        "Europe",
        "../../etc/passwd",
        "a\nb",
        "\x00",
        "\udcff",
        "x" * 300,
    ]
)
"""Strings that tend to break parsers of numbers, durations, times, hosts and names."""

text_leaves = st.text(max_size=40) | awkward_strings


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_ops: int = 4) -> bytes:
    """``data`` with 1..``max_ops`` byte-level edits: flip a bit, truncate, insert random
    bytes, delete or duplicate a range, set a byte to an edge value."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "dup", "set"]))
        at = draw(st.integers(0, len(out)))
        if op == "flip" and out:
            i = min(at, len(out) - 1)
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 64))]
        elif op == "dup":
            out[at:at] = out[at : at + draw(st.integers(1, 64))]
        elif op == "set" and out:
            i = min(at, len(out) - 1)
            out[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0xFF]))
    return bytes(out)


def mutated_text(text: str, max_ops: int = 4) -> st.SearchStrategy[str]:
    """``text`` with byte-level edits, decoded back with replacement characters."""
    return mutated(text.encode("utf-8"), max_ops).map(lambda b: b.decode("utf-8", "replace"))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_tree(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = json_values) -> Any:
    """A deep copy of ``doc`` with one to three nodes replaced by arbitrary values, deleted,
    or given an unknown sibling key."""
    out = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(out))
        path = draw(st.sampled_from(paths))
        if not path:
            return draw(values)
        parent = out
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "delete", "sibling"]))
        if op == "replace":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent.append(draw(values))
    return out


# ---------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Samples:
    """Valid inputs of every parser, built from a real local CA."""

    now: datetime
    ca_root_der: bytes
    ca_issuer_der: bytes
    leaf_der: bytes
    rsa_leaf_der: bytes
    chain_pem: bytes  # leaf then intermediate
    key_pem: bytes
    p12_password: bytes
    p12: bytes  # leaf + key + intermediate, AES-encrypted with p12_password
    p12_plain: bytes  # the same, unencrypted
    x509_leaf: bytes  # MerkleTreeLeaf
    x509_extra: bytes
    precert_leaf: bytes
    precert_extra: bytes
    sth_json: Mapping[str, Any]
    origin: str
    log_key_der: bytes
    checkpoint: str
    data_tile: bytes  # 3 entries of data tile 0, the second a precert
    tile_width: int
    hash_tile: bytes
    certstream_full: str
    certstream_lite: str
    alertmanager: Mapping[str, Any]
    settings: Mapping[str, Any]
    policy: Mapping[str, Any]
    sloth: Mapping[str, Any]
    openslo: Sequence[Mapping[str, Any]]
    log_list: Mapping[str, Any]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.cache
def samples() -> Samples:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    ca = LocalCA("Property", now)
    assert ca.intermediate is not None
    der = serialization.Encoding.DER
    issued = ca.issue(["www.example.test", "api.example.test", "192.0.2.7"], now)
    rsa_issued = ca.issue(["rsa.example.test"], now, key_kind="RSA", key_bits=2048)
    leaf_der = issued.cert.public_bytes(der)
    issuer_der = ca.intermediate.public_bytes(der)
    p12 = pkcs12.serialize_key_and_certificates(
        b"leaf",
        issued.key,
        issued.cert,
        [ca.intermediate],
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    p12_plain = pkcs12.serialize_key_and_certificates(
        b"leaf",
        issued.key,
        issued.cert,
        [ca.intermediate],
        serialization.NoEncryption(),
    )

    # CT leaves: an x509 entry and a precert entry issued by the intermediate.
    ts = 1_780_000_000_000
    precert = make_precert(
        ca.intermediate,
        ca.issuer_key,
        ["pre.example.test"],
        now - timedelta(hours=1),
        now + timedelta(days=30),
    )
    precert_der = precert.public_bytes(der)
    key_hash = hashlib.sha256(
        ca.intermediate.public_key().public_bytes(
            der, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).digest()
    tbs = strip_poison(precert.tbs_certificate_bytes)

    # A signed checkpoint and a data tile from a log key.
    log_key = ec.generate_private_key(ec.SECP256R1())
    log_key_der = log_key.public_key().public_bytes(
        der, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    origin = "log.example.test/2026h1"
    root = hashlib.sha256(b"root").digest()
    size = 3
    signed = sth_signed_data(STH(size, ts, root, b""))
    ds = encode_digitally_signed(SIG_ALG_ECDSA, log_key.sign(signed, ec.ECDSA(hashes.SHA256())))
    key_id = rfc6962_key_id(origin, log_id(log_key_der))
    checkpoint = (
        format_checkpoint(origin, size, root)
        + "\n"
        + format_signature_line(origin, key_id, encode_rfc6962_note_signature(ts, ds))
    )
    fp = hashlib.sha256(issuer_der).digest()
    tile = b"".join(
        [
            encode_tile_leaf(
                encode_x509_leaf(ts, leaf_der, encode_leaf_index_extension(0)), None, [fp]
            ),
            encode_tile_leaf(
                encode_precert_leaf(ts, key_hash, tbs, encode_leaf_index_extension(1)),
                precert_der,
                [fp],
            ),
            encode_tile_leaf(encode_x509_leaf(ts + 1, issuer_der, encode_leaf_index_extension(2))),
        ]
    )

    message = certificate_update(issued.cert, chain=[ca.intermediate], index=7, seen=1.78e9)
    lite = copy.deepcopy(message)
    del lite["data"]["chain"]
    del lite["data"]["leaf_cert"]["as_der"]

    alertmanager = {
        "version": "4",
        "groupKey": '{}:{alertname="CertificateExpiringSoon"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "certpilot",
        "groupLabels": {"alertname": "CertificateExpiringSoon"},
        "commonLabels": {"alertname": "CertificateExpiringSoon", "severity": "ticket"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.test:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "CertificateExpiringSoon",
                    "ref": "tls://www.example.test:443#www.example.test",
                    "severity": "ticket",
                },
                "annotations": {"summary": "www.example.test expires in 6 days"},
                "startsAt": "2026-11-28T03:40:01.123456789Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example.test:9090/graph",
                "fingerprint": "5f1a9c3e2b7d4a60",
            },
            {
                "status": "resolved",
                "labels": {"alertname": "CertificateExpired", "certpilot_action": "renew"},
                "annotations": {},
                "startsAt": "2026-11-28T03:40:01+01:00",
                "endsAt": "2026-11-28T05:00:00.5Z",
                "generatorURL": "",
                "fingerprint": "0123456789abcdef",
            },
        ],
    }

    settings: dict[str, Any] = {
        "store": {"url": "sqlite:///certpilot.db"},
        "http": {"host": "127.0.0.1", "port": 9795, "token_env": "CERTPILOT_TOKEN"},
        "scan": {"interval": "2m", "timeout": "5s", "concurrency": 50, "ca_files": ["ca.pem"]},
        "judge": {"expiring_fraction": 0.25, "expiring_days": 21, "min_rsa_bits": 2048},
        "slo": {"evaluation_interval": "1m", "retention": "35d"},
        "targets": {
            "endpoints": ["www.example.test:443", {"host": "api.example.test", "port": 8443}],
            "files": ["/etc/ssl/certs/site.pem", {"path": "/etc/ssl/p12/*.p12"}],
        },
        "remediation": {
            "issuers": {"local": {"kind": "local_ca", "dir": "ca"}},
            "targets": [{"name": "web", "kind": "files", "issuer": "local", "cert": "a.pem"}],
            "interval": "1m",
            "webhook": {"token_env": "AM_TOKEN"},
        },
        "slack": {
            "enabled": False,
            "routes": [{"channel": "#pki", "owners": ["pki"], "severities": ["page"]}],
            "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Europe/Berlin"},
            "maintenance": [{"start": "2026-12-01T02:00Z", "end": "2026-12-01T04:00Z"}],
            "permissions": {"renew": ["U123"], "approve": ["S456"]},
        },
        "ownership": {"rules": [{"owner": "pki", "names": ["*.example.test"]}]},
        "ct": {
            "logs": [{"url": "https://ct.example.test/2026h1/", "key": _b64(log_key_der)}],
            "certstream": [{"url": "wss://certstream.example.test/"}],
            "watch": ["example.test", ".example.org", "*.example.net"],
            "batch_size": 256,
        },
    }
    policy: dict[str, Any] = {
        "defaults": {
            "renew_before_fraction": "1/3",
            "renew_before_days": 30,
            "stagger_jitter": "30m",
            "key_types": ["EC-256", "RSA-2048"],
            "maintenance_windows": [
                {"days": "mon-fri", "start": "02:00", "end": "04:00", "tz": "Europe/Berlin"}
            ],
        },
        "rules": [
            {
                "name": "payments",
                "match": {"names": ["*.pay.example.test"], "owners": ["payments"]},
                "actions": {"renew": "auto", "redeploy": "approve", "revoke": "approve"},
                "approvers": ["alice", "bob"],
                "requires_second_person": ["revoke"],
                "max_validity": "90d",
                "concurrency": 2,
            }
        ],
        "issuers": {"letsencrypt": {"rate_limits": {"new_orders": {"limit": 300, "per": "3h"}}}},
    }
    slos = default_slos()
    log_list = {
        "version": "3.0",
        "operators": [
            {
                "name": "Example",
                "logs": [
                    {
                        "description": "Example 2026h1",
                        "url": "https://ct.example.test/2026h1/",
                        "key": _b64(log_key_der),
                        "state": {"usable": {"timestamp": "2025-01-01T00:00:00Z"}},
                    }
                ],
                "tiled_logs": [
                    {
                        "monitoring_url": "https://mon.example.test/2026h1/",
                        "submission_url": "https://log.example.test/2026h1/",
                        "key": _b64(log_key_der),
                    }
                ],
            }
        ],
    }
    return Samples(
        now=now,
        ca_root_der=ca.root.public_bytes(der),
        ca_issuer_der=issuer_der,
        leaf_der=leaf_der,
        rsa_leaf_der=rsa_issued.cert.public_bytes(der),
        chain_pem=issued.chain_pem(),
        key_pem=issued.key_pem(),
        p12_password=b"s3cret",
        p12=p12,
        p12_plain=p12_plain,
        x509_leaf=encode_x509_leaf(ts, leaf_der),
        x509_extra=encode_cert_chain([issuer_der, ca.root.public_bytes(der)]),
        precert_leaf=encode_precert_leaf(ts, key_hash, tbs),
        precert_extra=encode_precert_chain_entry(precert_der, [issuer_der]),
        sth_json={
            "tree_size": size,
            "timestamp": ts,
            "sha256_root_hash": _b64(root),
            "tree_head_signature": _b64(ds),
        },
        origin=origin,
        log_key_der=log_key_der,
        checkpoint=checkpoint,
        data_tile=tile,
        tile_width=3,
        hash_tile=b"".join(hashlib.sha256(bytes([i])).digest() for i in range(3)),
        certstream_full=json.dumps(message),
        certstream_lite=json.dumps(lite),
        alertmanager=alertmanager,
        settings=settings,
        policy=policy,
        sloth=dump_sloth(slos),
        openslo=to_openslo(slos),
        log_list=log_list,
    )
