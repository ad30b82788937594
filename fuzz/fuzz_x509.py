"""Fuzz the certificate parsers: DER, PEM bundles, PKCS#12, and the file scanner.

Input: one mode byte, then the bytes. Modes: 0 ``parse_der``, 1 ``parse_pem_bundle``,
2 ``parse_pkcs12`` (the next byte picks the password: none, the corpus's, a wrong one),
3 the file scanner on the bytes written to a file (named by the next byte: .pem, .der, .p12,
no extension).

Documented: ``CertificateParseError`` naming the origin from the parsers; nothing at all from
``parse_pem_bundle`` (bad blocks are items) and the scanner (bad files are observations with a
one-line error naming the path).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports(include=["certpilot", "scanner"]):
    from _harness import check_message, expect, main, mode, scratch_dir

    from certpilot.domain.errors import CertificateParseError
    from certpilot.domain.model import FileTarget
    from certpilot.domain.x509 import ParsedCert, parse_der, parse_pem_bundle, parse_pkcs12
    from scanner.files import scan_file_target

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PASSWORDS = (None, b"s3cret", b"wrong")
NAMES = ("cert.pem", "cert.der", "store.p12", "noext")
WORK = scratch_dir("x509")
ENV = {"FUZZ_P12_PASSWORD": "s3cret"}


def test_one_input(data: bytes) -> None:
    which, rest = mode(data, 4)
    if which == 0:
        expect(lambda: parse_der(rest, "fuzz.der"), CertificateParseError, "fuzz.der")
    elif which == 1:
        for i, item in enumerate(parse_pem_bundle(rest, "fuzz.pem")):
            if isinstance(item, CertificateParseError):
                check_message(item, f"fuzz.pem#{i}")
            elif not isinstance(item, ParsedCert):
                raise AssertionError(f"parse_pem_bundle gave a {type(item).__name__}")
    elif which == 2:
        password = PASSWORDS[rest[0] % 3] if rest else None
        expect(
            lambda: parse_pkcs12(rest[1:], password, "fuzz.p12"),
            CertificateParseError,
            "fuzz.p12",
        )
    else:
        path = WORK / (NAMES[rest[0] % len(NAMES)] if rest else "noext")
        path.write_bytes(rest[1:])
        target = FileTarget(str(path), password_env="FUZZ_P12_PASSWORD")  # noqa: S106 (a name)
        for obs in scan_file_target(target, NOW, env=ENV):
            if obs.leaf is None:
                assert obs.error is not None and obs.problems, obs
                if obs.error.splitlines() != [obs.error] or str(path) not in obs.error:
                    raise AssertionError(f"scanner error is not one line naming the path: {obs}")
        path.unlink()


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
