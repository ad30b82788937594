"""The pure core: model, X.509 facts, problem codes, judgement, errors, clock, Protocols.

Imports only the standard library and ``cryptography``; no I/O and no clock reads.
"""

from certpilot.domain.chain import TrustAnchors, build_path, hostname_matches
from certpilot.domain.clock import Clock, FixedClock, SystemClock
from certpilot.domain.errors import (
    CertificateParseError,
    CertpilotError,
    ConfigError,
    StoreError,
    UsageError,
)
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_chain, judge_stored
from certpilot.domain.model import EndpointTarget, FileTarget, Observation, Target
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.protocols import ObservationSink, Prober
from certpilot.domain.x509 import CertInfo, ParsedCert

__all__ = [
    "DEFAULT_POLICY",
    "CertInfo",
    "CertificateParseError",
    "CertpilotError",
    "Clock",
    "ConfigError",
    "EndpointTarget",
    "FileTarget",
    "FixedClock",
    "JudgePolicy",
    "Observation",
    "ObservationSink",
    "ParsedCert",
    "Prober",
    "Problem",
    "ProblemCode",
    "StoreError",
    "SystemClock",
    "Target",
    "TrustAnchors",
    "UsageError",
    "build_path",
    "hostname_matches",
    "judge_chain",
    "judge_stored",
]
