"""Pure judgement: every problem code from hand-made chains, with an injected 'now'."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes

from certpilot.domain.chain import PathEnd, TrustAnchors, build_path, hostname_matches
from certpilot.domain.judge import JudgePolicy, is_expiring, judge_chain, judge_stored
from certpilot.domain.problems import ProblemCode as P
from certpilot.domain.x509 import ParsedCert, parse_pem_bundle
from certpilot.localca import Issued, LocalCA, self_signed


def parsed(issued: Issued, with_chain: bool = True) -> list[ParsedCert]:
    data = issued.chain_pem() if with_chain else issued.cert_pem()
    return [p for p in parse_pem_bundle(data) if isinstance(p, ParsedCert)]


def anchors_of(*cas: LocalCA) -> TrustAnchors:
    return TrustAnchors(
        p for ca in cas for p in parse_pem_bundle(ca.root_pem()) if isinstance(p, ParsedCert)
    )


def codes(issued: Issued, ca: LocalCA, now: datetime, **kw: object) -> set[P]:
    host = kw.pop("hostname", "a.test")
    chain = parsed(issued, bool(kw.pop("with_chain", True)))
    j = judge_chain(chain, now, anchors_of(ca), hostname=host, **kw)  # type: ignore[arg-type]
    return {p.code for p in j.problems}


def test_healthy_chain_has_no_problems(ca: LocalCA, now: datetime) -> None:
    assert codes(ca.issue(["a.test"], now), ca, now) == set()


def test_expired_and_not_yet_valid(ca: LocalCA, now: datetime) -> None:
    old = ca.issue(["a.test"], now, not_before=now - timedelta(days=91))
    assert codes(old, ca, now) == {P.EXPIRED}
    future = ca.issue(["a.test"], now, not_before=now + timedelta(hours=1))
    assert codes(future, ca, now) == {P.NOT_YET_VALID}


@pytest.mark.parametrize(
    ("lifetime_days", "age_days", "expiring"),
    [
        (90, 59, False),  # 31 days left, 34 %
        (90, 61, True),  # 29 days left, 32 %
        (6, 1, False),  # 5 of 6 days left: a short-lived cert is not 'expiring' from birth
        (6, 4.5, True),  # 1.5 of 6 days left: 25 %
        (398, 300, False),  # 98 days left, 25 % but more than 30 days
        (398, 370, True),  # 28 days left
    ],
)
def test_expiring_is_relative_and_absolute(
    ca: LocalCA, now: datetime, lifetime_days: float, age_days: float, expiring: bool
) -> None:
    cert = ca.issue(
        ["a.test"],
        now,
        lifetime=timedelta(days=lifetime_days),
        not_before=now - timedelta(days=age_days),
    )
    info = parsed(cert)[0].info
    assert is_expiring(info, now) is expiring
    assert (P.EXPIRING in codes(cert, ca, now)) is expiring


def test_expiring_thresholds_can_be_disabled(ca: LocalCA, now: datetime) -> None:
    cert = ca.issue(
        ["a.test"], now, lifetime=timedelta(days=398), not_before=now - timedelta(days=300)
    )
    info = parsed(cert)[0].info
    assert is_expiring(info, now, JudgePolicy(expiring_days=None))  # 25 % < 1/3
    assert not is_expiring(info, now, JudgePolicy(expiring_fraction=None))  # 98 days > 30
    assert not is_expiring(info, now, JudgePolicy(expiring_fraction=None, expiring_days=None))


def test_self_signed_untrusted_and_incomplete(ca: LocalCA, now: datetime) -> None:
    assert codes(self_signed(["a.test"], now), ca, now) == {P.SELF_SIGNED}
    rogue = LocalCA("Rogue", now)
    assert codes(rogue.issue(["a.test"], now), ca, now) == {P.UNTRUSTED_ROOT}
    assert codes(ca.issue(["a.test"], now), ca, now, with_chain=False) == {P.INCOMPLETE_CHAIN}


def test_rogue_chain_with_root_sent_is_untrusted_root(ca: LocalCA, now: datetime) -> None:
    rogue = LocalCA("Rogue", now)
    issued = rogue.issue(["a.test"], now)
    chain = parsed(issued) + [
        p for p in parse_pem_bundle(rogue.root_pem()) if isinstance(p, ParsedCert)
    ]
    j = judge_chain(chain, now, anchors_of(ca), hostname="a.test")
    assert [p.code for p in j.problems] == [P.UNTRUSTED_ROOT]
    assert j.path.end == PathEnd.UNTRUSTED_ROOT


def test_gap_in_presented_chain_is_incomplete(ca: LocalCA, now: datetime) -> None:
    other = LocalCA("Other", now)
    leaf = parsed(ca.issue(["a.test"], now), with_chain=False)
    stray = parsed(other.issue(["b.test"], now))[1:]  # an unrelated intermediate
    j = judge_chain(leaf + stray, now, anchors_of(ca, other), hostname="a.test")
    assert {p.code for p in j.problems} == {P.INCOMPLETE_CHAIN}


def test_hostname_mismatch(ca: LocalCA, now: datetime) -> None:
    assert codes(ca.issue(["a.test"], now), ca, now, hostname="b.test") == {P.HOSTNAME_MISMATCH}


def test_weak_key_and_signature(now: datetime) -> None:
    rsa_ca = LocalCA("RSA", now, key_kind="RSA", key_bits=2048)
    weak = rsa_ca.issue(["a.test"], now, key_kind="RSA", key_bits=1024)
    assert codes(weak, rsa_ca, now) == {P.WEAK_KEY}
    sha1 = rsa_ca.issue(["a.test"], now, hash_alg=hashes.SHA1())
    assert codes(sha1, rsa_ca, now) == {P.WEAK_SIGNATURE}
    ec_ca = LocalCA("EC", now)
    small_ec = ec_ca.issue(["a.test"], now, key_kind="EC", key_bits=192)
    assert codes(small_ec, ec_ca, now) == {P.WEAK_KEY}


def test_chain_expiring_and_expired_intermediate(now: datetime) -> None:
    short = LocalCA("Short", now, intermediate_lifetime=timedelta(days=20))
    assert codes(short.issue(["a.test"], now), short, now) == {P.CHAIN_EXPIRING}
    later = now + timedelta(days=25)
    result = codes(short.issue(["a.test"], now), short, later)
    assert P.EXPIRED in result  # the intermediate expired, the leaf did not


def test_trusted_first_prefers_anchor(ca: LocalCA, now: datetime) -> None:
    leaf = parsed(ca.issue(["a.test"], now))
    path = build_path(leaf[0], leaf[1:], anchors_of(ca))
    assert path.trusted
    assert [p.info.is_ca for p in path.path] == [False, True, True]


def test_judge_stored_ignores_trust(ca: LocalCA, now: datetime) -> None:
    item = parsed(self_signed(["a.test"], now))[0]
    assert judge_stored(item, now) == []
    old = parsed(ca.issue(["a.test"], now, not_before=now - timedelta(days=100)))[0]
    assert [p.code for p in judge_stored(old, now)] == [P.EXPIRED]


@pytest.mark.parametrize(
    ("host", "sans", "ok"),
    [
        ("a.example.com", ["a.example.com"], True),
        ("A.Example.COM.", ["a.example.com"], True),
        ("a.example.com", ["*.example.com"], True),
        ("b.a.example.com", ["*.example.com"], False),
        ("example.com", ["*.example.com"], False),
        ("x.com", ["*.com"], False),
        ("bücher.example", ["xn--bcher-kva.example"], True),
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.1", ["127.0.0.2", "localhost"], False),
        ("::1", ["0:0:0:0:0:0:0:1"], True),
        ("localhost", ["127.0.0.1"], False),
    ],
)
def test_hostname_matching(host: str, sans: list[str], ok: bool) -> None:
    assert hostname_matches(host, sans) is ok
