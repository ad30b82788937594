"""Chain building and hostname matching, pure and independent of any TLS library.

Why by hand: the scanner must judge a chain *after* fetching it with verification off (so that a
broken chain can still be read), and it must say *why* a chain fails (no issuer sent, unknown
root, self-signed). OpenSSL collapses these into "unable to get local issuer certificate", and
``cryptography.x509.verification`` raises on the first failure without a reason code. The walk
below mirrors RFC 5280 section 6 path building only as far as needed for those distinctions;
signatures are checked with ``cryptography``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from certpilot.domain.x509 import ParsedCert, signed_by

MAX_PATH_LENGTH = 10


class TrustAnchors:
    """Trusted root (or pinned intermediate) certificates indexed by subject name."""

    def __init__(self, certs: Iterable[ParsedCert]) -> None:
        self._by_subject: dict[bytes, list[ParsedCert]] = {}
        self._fingerprints: set[str] = set()
        for pc in certs:
            if pc.info.fingerprint_sha256 in self._fingerprints:
                continue
            self._fingerprints.add(pc.info.fingerprint_sha256)
            self._by_subject.setdefault(pc.cert.subject.public_bytes(), []).append(pc)

    def __len__(self) -> int:
        return len(self._fingerprints)

    def contains(self, pc: ParsedCert) -> bool:
        return pc.info.fingerprint_sha256 in self._fingerprints

    def issuers_of(self, pc: ParsedCert) -> list[ParsedCert]:
        return self._by_subject.get(pc.cert.issuer.public_bytes(), [])


class LinkCache:
    """A bounded memo of issuer-link checks: ``(child, issuer)`` fingerprints -> signed or not.

    Whether one certificate's key verifies another's signature is a pure function of the two
    certificates, so the answer can be kept. A fleet shares a handful of intermediates: without
    this, every probe re-verifies the same intermediate -> root signature (an ECDSA or RSA
    verification, 100-170 µs). The caller owns the cache (a prober keeps one) and passes it to
    :func:`build_path`; nothing here is global, so the domain stays pure. Least recently used
    entries are dropped beyond ``size``.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = max(1, size)
        self._links: OrderedDict[tuple[str, str], bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def signed_by(self, child: ParsedCert, issuer: ParsedCert) -> bool:
        """:func:`certpilot.domain.x509.signed_by` on the pair, answered once per pair."""
        key = (child.info.fingerprint_sha256, issuer.info.fingerprint_sha256)
        links = self._links
        hit = links.get(key)
        if hit is not None:
            links.move_to_end(key)
            return hit
        ok = signed_by(child.cert, issuer.cert)
        links[key] = ok
        if len(links) > self._size:
            links.popitem(last=False)
        return ok


def _signed_by(child: ParsedCert, issuer: ParsedCert, links: LinkCache | None) -> bool:
    if links is not None:
        return links.signed_by(child, issuer)
    return signed_by(child.cert, issuer.cert)


class PathEnd:
    TRUSTED = "trusted"
    SELF_SIGNED_LEAF = "self_signed_leaf"
    UNTRUSTED_ROOT = "untrusted_root"
    MISSING_ISSUER = "missing_issuer"
    TOO_LONG = "too_long"


@dataclass(frozen=True, slots=True)
class PathResult:
    """The path walked from the leaf upwards and how it ended."""

    path: tuple[ParsedCert, ...]
    end: str
    unused_presented: int  # presented certificates that are not on the path

    @property
    def trusted(self) -> bool:
        return self.end == PathEnd.TRUSTED


def build_path(
    leaf: ParsedCert,
    presented: Sequence[ParsedCert],
    anchors: TrustAnchors,
    links: LinkCache | None = None,
) -> PathResult:
    """Walk issuer links from ``leaf`` through ``presented`` certificates to a trust anchor.

    Anchors are preferred over presented certificates at every step, as OpenSSL does with
    X509_V_FLAG_TRUSTED_FIRST, so a cross-signed intermediate sent by the server never hides a
    shorter path to a root we trust. Signature checks go through ``links`` when given, so a
    caller judging many chains verifies each shared link once.
    """
    path: list[ParsedCert] = [leaf]
    used = {leaf.info.fingerprint_sha256}
    cur = leaf
    while True:
        if anchors.contains(cur):
            return _result(path, PathEnd.TRUSTED, presented, used)
        anchor = next((a for a in anchors.issuers_of(cur) if _signed_by(cur, a, links)), None)
        if anchor is not None:
            path.append(anchor)
            return _result(path, PathEnd.TRUSTED, presented, used)
        if cur.info.self_issued and _signed_by(cur, cur, links):
            end = PathEnd.SELF_SIGNED_LEAF if cur is leaf else PathEnd.UNTRUSTED_ROOT
            return _result(path, end, presented, used)
        if len(path) >= MAX_PATH_LENGTH:
            return _result(path, PathEnd.TOO_LONG, presented, used)
        issuer_name = cur.cert.issuer
        nxt = next(
            (
                p
                for p in presented
                if p.info.fingerprint_sha256 not in used
                and p.cert.subject == issuer_name
                and _signed_by(cur, p, links)
            ),
            None,
        )
        if nxt is None:
            return _result(path, PathEnd.MISSING_ISSUER, presented, used)
        path.append(nxt)
        used.add(nxt.info.fingerprint_sha256)
        cur = nxt


def _result(
    path: list[ParsedCert], end: str, presented: Sequence[ParsedCert], used: set[str]
) -> PathResult:
    unused = sum(1 for p in presented if p.info.fingerprint_sha256 not in used)
    return PathResult(tuple(path), end, unused)


def _to_ascii(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if name.isascii():
        return name  # the IDNA codec returns an ASCII name unchanged (or rejects it: same here)
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # An IP literal has a ':' (v6) or only digits and dots (v4): names skip the parser's two
    # failed attempts, which cost more than the whole match.
    if ":" not in text and not text.replace(".", "").isdigit():
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def hostname_matches(hostname: str, sans: Sequence[str]) -> bool:
    """RFC 6125 matching against subjectAltName entries only (CA/B BR 7.1.4.2: no CN fallback).

    A wildcard is honoured only as the whole left-most label (``*.example.com``) and matches
    exactly one label; IP addresses match only IP SANs, compared as addresses.
    """
    ip = _ip_address(hostname.strip("[]"))
    if ip is not None:
        return any(_ip_address(san) == ip for san in sans)
    host = _to_ascii(hostname)
    host_labels = host.split(".")
    for san in sans:
        pattern = _to_ascii(san)
        if pattern == host:
            return True
        # "*.example.com" needs exactly one non-empty label before a 2+ label suffix.
        if (
            pattern.startswith("*.")
            and len(host_labels) >= 3
            and host_labels[0]
            and host_labels[1:] == pattern[2:].split(".")
        ):
            return True
    return False
