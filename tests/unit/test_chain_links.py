"""The verified-link cache and the fast paths of hostname matching give the same answers as
the plain code they stand in for."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes

from certpilot.domain import chain as chain_mod
from certpilot.domain.chain import LinkCache, TrustAnchors, build_path, hostname_matches
from certpilot.domain.judge import judge_chain
from certpilot.domain.x509 import ParsedCert, parse_pem_bundle, signed_by
from certpilot.localca import Issued, LocalCA, self_signed


def parsed(issued: Issued, with_chain: bool = True) -> list[ParsedCert]:
    data = issued.chain_pem() if with_chain else issued.cert_pem()
    return [p for p in parse_pem_bundle(data) if isinstance(p, ParsedCert)]


def anchors_of(*cas: LocalCA) -> TrustAnchors:
    return TrustAnchors(
        p for ca in cas for p in parse_pem_bundle(ca.root_pem()) if isinstance(p, ParsedCert)
    )


def root_of(ca: LocalCA) -> ParsedCert:
    (root,) = [p for p in parse_pem_bundle(ca.root_pem()) if isinstance(p, ParsedCert)]
    return root


def test_link_cache_answers_like_signed_by(ca: LocalCA, now: datetime) -> None:
    leaf, inter = parsed(ca.issue(["a.test"], now))
    root = root_of(ca)
    other = root_of(LocalCA("Other", now))
    links = LinkCache()
    for child, issuer in [(leaf, inter), (inter, root), (leaf, root), (inter, other), (root, root)]:
        assert links.signed_by(child, issuer) == signed_by(child.cert, issuer.cert)
    assert links.signed_by(leaf, inter) and not links.signed_by(leaf, root)


def test_link_cache_verifies_each_pair_once(
    ca: LocalCA, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []

    def counting(child: object, issuer: object) -> bool:
        calls.append((str(child), str(issuer)))
        return signed_by(child, issuer)  # type: ignore[arg-type]

    monkeypatch.setattr(chain_mod, "signed_by", counting)
    anchors = anchors_of(ca)
    links = LinkCache()
    for name in ("a.test", "b.test", "c.test"):
        chain = parsed(ca.issue([name], now))
        assert build_path(chain[0], chain[1:], anchors, links).trusted
    # leaf -> intermediate once per leaf, intermediate -> root once for all three
    assert len(calls) == 4
    assert len(links) == 4


def test_link_cache_is_bounded(ca: LocalCA, now: datetime) -> None:
    links = LinkCache(size=2)
    inter = parsed(ca.issue(["x.test"], now))[1]
    for name in ("a.test", "b.test", "c.test"):
        links.signed_by(parsed(ca.issue([name], now))[0], inter)
    assert len(links) == 2


@pytest.mark.parametrize("case", ["healthy", "rogue", "self", "nochain", "sha1", "short"])
def test_judge_chain_with_links_matches_without(case: str, ca: LocalCA, now: datetime) -> None:
    rogue = LocalCA("Rogue", now)
    legacy = LocalCA("Legacy", now, key_kind="RSA", key_bits=2048)
    short = LocalCA("Short", now, intermediate_lifetime=timedelta(days=20))
    chains = {
        "healthy": parsed(ca.issue(["a.test"], now)),
        "rogue": parsed(rogue.issue(["a.test"], now)),
        "self": parsed(self_signed(["a.test"], now)),
        "nochain": parsed(ca.issue(["a.test"], now), with_chain=False),
        "sha1": parsed(legacy.issue(["a.test"], now, hash_alg=hashes.SHA1())),
        "short": parsed(short.issue(["a.test"], now)),
    }
    anchors = anchors_of(ca, legacy, short)
    links = LinkCache()
    plain = judge_chain(chains[case], now, anchors, hostname="a.test")
    for _ in range(2):  # cold, then every link answered from the cache
        cached = judge_chain(chains[case], now, anchors, hostname="a.test", links=links)
        assert cached.problems == plain.problems
        assert cached.path == plain.path


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4",
        "::1",
        "fe80::1",
        "1234",
        "1.2.3",
        "01.2.3.4",
        "a.test",
        "",
        "\u0661.\u0662.\u0663.\u0664",
        "1.2.3.4.",
    ],
)
def test_ip_fast_path_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    assert chain_mod._ip_address(text) == expected


@pytest.mark.parametrize(
    ("host", "sans", "ok"),
    [
        ("Www.Example.COM.", ["www.example.com"], True),
        ("a..example.com", ["a..example.com"], True),  # IDNA rejects it; compared as given
        ("bücher.example", ["xn--bcher-kva.example"], True),
        ("xn--bcher-kva.example", ["bücher.example"], True),
        ("[::1]", ["::1"], True),
        ("::1", ["0:0:0:0:0:0:0:1"], True),
        ("127.0.0.1", ["127.0.0.1.example"], False),
        ("1234", ["1234"], True),  # not an IP literal: matched as a name
    ],
)
def test_hostname_fast_paths(host: str, sans: list[str], ok: bool) -> None:
    assert hostname_matches(host, sans) is ok
