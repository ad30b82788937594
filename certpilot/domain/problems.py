"""Problem codes: the vocabulary every room shares (DESIGN.md section 3).

They are also metric label values and JSON output, so the string values are a contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProblemCode(StrEnum):
    EXPIRED = "expired"
    EXPIRING = "expiring"
    NOT_YET_VALID = "not_yet_valid"
    SELF_SIGNED = "self_signed"
    UNTRUSTED_ROOT = "untrusted_root"
    INCOMPLETE_CHAIN = "incomplete_chain"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    WEAK_KEY = "weak_key"
    WEAK_SIGNATURE = "weak_signature"
    REVOKED = "revoked"
    CHAIN_EXPIRING = "chain_expiring"
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    DNS_ERROR = "dns_error"
    TLS_ERROR = "tls_error"
    NOT_DEPLOYED = "not_deployed"
    UNMANAGED = "unmanaged"
    UNEXPECTED_ISSUANCE = "unexpected_issuance"
    # Not in the design card's list of TLS problems, but a file scanner must be able to say
    # "this item could not be read" without crashing: it is reported as data like the rest.
    UNREADABLE = "unreadable"
    MALFORMED = "malformed"


# Problems that mean "we could not look at a certificate at all".
REACHABILITY_CODES = frozenset(
    {
        ProblemCode.CONNECTION_REFUSED,
        ProblemCode.TIMEOUT,
        ProblemCode.DNS_ERROR,
        ProblemCode.TLS_ERROR,
        ProblemCode.UNREADABLE,
        ProblemCode.MALFORMED,
    }
)

# Severity ordering for reports: the first is the most urgent.
SEVERITY_ORDER: tuple[ProblemCode, ...] = (
    ProblemCode.EXPIRED,
    ProblemCode.REVOKED,
    ProblemCode.NOT_YET_VALID,
    ProblemCode.CONNECTION_REFUSED,
    ProblemCode.TIMEOUT,
    ProblemCode.DNS_ERROR,
    ProblemCode.TLS_ERROR,
    ProblemCode.UNREADABLE,
    ProblemCode.MALFORMED,
    ProblemCode.HOSTNAME_MISMATCH,
    ProblemCode.INCOMPLETE_CHAIN,
    ProblemCode.UNTRUSTED_ROOT,
    ProblemCode.SELF_SIGNED,
    ProblemCode.EXPIRING,
    ProblemCode.CHAIN_EXPIRING,
    ProblemCode.WEAK_KEY,
    ProblemCode.WEAK_SIGNATURE,
    ProblemCode.NOT_DEPLOYED,
    ProblemCode.UNMANAGED,
    ProblemCode.UNEXPECTED_ISSUANCE,
)

#: Findings about how a certificate is managed, not whether it is valid: the valid-ratio SLI
#: (a valid certificate with enough lifetime left) does not count them as bad.
GOVERNANCE_CODES: frozenset[ProblemCode] = frozenset(
    {ProblemCode.NOT_DEPLOYED, ProblemCode.UNMANAGED, ProblemCode.UNEXPECTED_ISSUANCE}
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding on one scanned item: a code and a one-line human explanation."""

    code: ProblemCode
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


def severity_rank(code: ProblemCode) -> int:
    return SEVERITY_ORDER.index(code) if code in SEVERITY_ORDER else len(SEVERITY_ORDER)
