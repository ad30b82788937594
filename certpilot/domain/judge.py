"""Pure judgement: gathered facts in, problem codes out (DESIGN.md section 6.1).

Every function here takes ``now`` explicitly; nothing reads a clock or touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from certpilot.domain.chain import (
    LinkCache,
    PathEnd,
    PathResult,
    TrustAnchors,
    build_path,
    hostname_matches,
)
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, ParsedCert, iso


@dataclass(frozen=True, slots=True)
class JudgePolicy:
    """Thresholds for judging a certificate.

    A certificate is *expiring* when less than ``expiring_fraction`` of its lifetime is left
    **and** fewer than ``expiring_days`` days remain. Both conditions together judge 6-day,
    90-day and 398-day certificates fairly: a 90-day certificate warns at 30 days (certbot's and
    cert-manager's renewal point), a 6-day certificate at 2 days (not from birth), a 398-day one
    at 30 days (not four months ahead). Set either to ``None`` to judge by the other alone.
    """

    expiring_fraction: float | None = 1.0 / 3.0
    expiring_days: float | None = 30.0
    min_rsa_bits: int = 2048
    min_ec_bits: int = 256
    min_dsa_bits: int = 2048
    weak_hashes: frozenset[str] = field(default_factory=lambda: frozenset({"sha1", "md5", "md2"}))


DEFAULT_POLICY = JudgePolicy()


def is_expiring(info: CertInfo, now: datetime, policy: JudgePolicy = DEFAULT_POLICY) -> bool:
    if now >= info.not_after:
        return False
    if policy.expiring_fraction is None and policy.expiring_days is None:
        return False
    by_fraction = (
        policy.expiring_fraction is None or info.fraction_left(now) < policy.expiring_fraction
    )
    by_days = policy.expiring_days is None or info.days_left(now) < policy.expiring_days
    return by_fraction and by_days


def _human_days(days: float) -> str:
    if abs(days) < 2:
        return f"{days * 24:.1f} hours"
    return f"{days:.1f} days"


def judge_validity(
    info: CertInfo,
    now: datetime,
    policy: JudgePolicy = DEFAULT_POLICY,
    *,
    role: str = "certificate",
) -> list[Problem]:
    """Time-based problems of one certificate: expired, not yet valid, expiring."""
    if now >= info.not_after:
        ago = _human_days(info.days_left(now) * -1)
        return [Problem(ProblemCode.EXPIRED, f"{role} expired {iso(info.not_after)} ({ago} ago)")]
    if now < info.not_before:
        return [
            Problem(ProblemCode.NOT_YET_VALID, f"{role} is not valid before {iso(info.not_before)}")
        ]
    if is_expiring(info, now, policy):
        left = info.days_left(now)
        pct = info.fraction_left(now) * 100
        return [
            Problem(
                ProblemCode.EXPIRING,
                f"{role} expires {iso(info.not_after)}: {_human_days(left)} left, "
                f"{pct:.0f}% of its lifetime",
            )
        ]
    return []


def judge_strength(
    info: CertInfo, policy: JudgePolicy = DEFAULT_POLICY, *, role: str = "certificate"
) -> list[Problem]:
    """Weak key and weak signature problems of one certificate."""
    out: list[Problem] = []
    minimum = {"RSA": policy.min_rsa_bits, "EC": policy.min_ec_bits, "DSA": policy.min_dsa_bits}
    need = minimum.get(info.key_type)
    if need is not None and info.key_bits < need:
        out.append(
            Problem(
                ProblemCode.WEAK_KEY,
                f"{role} has a {info.key_type}-{info.key_bits} key (minimum {need} bits)",
            )
        )
    if info.signature_hash is not None and info.signature_hash.lower() in policy.weak_hashes:
        out.append(
            Problem(
                ProblemCode.WEAK_SIGNATURE,
                f"{role} is signed with {info.signature_algorithm}",
            )
        )
    return out


def judge_path(path: PathResult, anchors_given: bool) -> list[Problem]:
    """Trust problems from how the issuer walk ended."""
    top = path.path[-1].info
    leaf = path.path[0].info
    if path.end == PathEnd.TRUSTED:
        return []
    if path.end == PathEnd.SELF_SIGNED_LEAF:
        return [Problem(ProblemCode.SELF_SIGNED, f"certificate is self-signed ({leaf.subject})")]
    if path.end == PathEnd.UNTRUSTED_ROOT:
        return [
            Problem(
                ProblemCode.UNTRUSTED_ROOT,
                f"chain ends at root {top.subject}, which is not in the trust store",
            )
        ]
    if path.end == PathEnd.TOO_LONG:
        return [Problem(ProblemCode.INCOMPLETE_CHAIN, "chain is longer than 10 certificates")]
    # MISSING_ISSUER: the issuer of the top certificate is neither sent nor trusted.
    if len(path.path) == 1 or path.unused_presented > 0 or not top.is_ca:
        sent = "only the leaf was sent" if len(path.path) == 1 else "the chain has a gap"
        return [
            Problem(
                ProblemCode.INCOMPLETE_CHAIN,
                f"issuer {top.issuer} of {top.subject_cn or top.subject} is missing: {sent}",
            )
        ]
    # The server sent a complete-looking chain up to an intermediate whose root we do not know.
    hint = "" if anchors_given else " (pass --ca-file for a private CA)"
    return [
        Problem(
            ProblemCode.UNTRUSTED_ROOT,
            f"chain ends at {top.subject}, issued by {top.issuer}, which is not trusted{hint}",
        )
    ]


def judge_chain_expiry(path: PathResult, now: datetime) -> list[Problem]:
    """Problems of the issuing certificates: expired, or expiring before the leaf does."""
    leaf = path.path[0].info
    out: list[Problem] = []
    for pc in path.path[1:]:
        info = pc.info
        name = info.subject_cn or info.subject
        if now >= info.not_after:
            out.append(Problem(ProblemCode.EXPIRED, f"issuer {name} expired {iso(info.not_after)}"))
        elif info.not_after < leaf.not_after:
            out.append(
                Problem(
                    ProblemCode.CHAIN_EXPIRING,
                    f"issuer {name} expires {iso(info.not_after)}, before the leaf "
                    f"({iso(leaf.not_after)})",
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class ChainJudgement:
    problems: tuple[Problem, ...]
    path: PathResult


def judge_chain(
    presented: Sequence[ParsedCert],
    now: datetime,
    anchors: TrustAnchors,
    *,
    hostname: str | None = None,
    policy: JudgePolicy = DEFAULT_POLICY,
    anchors_given: bool = False,
    links: LinkCache | None = None,
) -> ChainJudgement:
    """Judge a presented chain (leaf first) as a TLS client would, and say everything wrong.

    ``links`` (optional) remembers verified issuer links across calls; see :class:`LinkCache`.
    """
    leaf = presented[0]
    path = build_path(leaf, presented[1:], anchors, links)
    problems: list[Problem] = []
    problems += judge_validity(leaf.info, now, policy)
    problems += judge_path(path, anchors_given)
    if hostname is not None and not hostname_matches(hostname, leaf.info.sans):
        names = ", ".join(leaf.info.sans[:5]) or f"no SANs, CN={leaf.info.subject_cn}"
        problems.append(
            Problem(
                ProblemCode.HOSTNAME_MISMATCH, f"{hostname} is not in the certificate ({names})"
            )
        )
    problems += judge_chain_expiry(path, now)
    problems += judge_strength(leaf.info, policy)
    for pc in path.path[1:]:
        if anchors.contains(pc):
            continue  # a trust anchor's own key and self-signature are trusted by configuration
        problems += judge_strength(pc.info, policy, role=f"issuer {pc.info.subject_cn}")
    return ChainJudgement(tuple(dedupe(problems)), path)


def judge_stored(
    item: ParsedCert, now: datetime, policy: JudgePolicy = DEFAULT_POLICY
) -> list[Problem]:
    """Judge a certificate found at rest (a file, a secret): time and strength only.

    Trust and hostname depend on where it is served, so a stored certificate is not judged on
    them; the reconciliation step joins stored and served items for that.
    """
    return dedupe(judge_validity(item.info, now, policy) + judge_strength(item.info, policy))


def dedupe(problems: Sequence[Problem]) -> list[Problem]:
    """Keep the first problem of each code; the messages of later ones are appended."""
    seen: dict[ProblemCode, Problem] = {}
    for p in problems:
        if p.code in seen:
            first = seen[p.code]
            seen[p.code] = Problem(p.code, f"{first.message}; {p.message}")
        else:
            seen[p.code] = p
    return list(seen.values())
