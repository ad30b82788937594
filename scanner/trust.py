"""Trust anchors for chain judgement: the system store and/or ``--ca-file`` bundles."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from certpilot.domain.chain import TrustAnchors
from certpilot.domain.errors import ConfigError
from certpilot.domain.x509 import ParsedCert, parse_pem_bundle

# Debian, RHEL, Alpine/macOS-brew, SUSE: where the system bundle usually lives when OpenSSL's
# compiled-in default is not a single file.
_FALLBACK_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
)


def system_bundle_path() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_FALLBACK_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_anchors(ca_files: Sequence[str], *, use_system: bool) -> TrustAnchors:
    """Trust anchors from PEM files (``--ca-file``) plus the system store when asked.

    A ``--ca-file`` that cannot be read or holds no certificate is a configuration error.
    """
    certs: list[ParsedCert] = []
    for name in ca_files:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(
                "--ca-file", "", f"cannot read {name}: {e.strerror}", has_value=False
            ) from e
        parsed = [p for p in parse_pem_bundle(data, name) if isinstance(p, ParsedCert)]
        if not parsed:
            raise ConfigError("--ca-file", "", f"{name} holds no PEM certificate", has_value=False)
        certs.extend(parsed)
    if use_system:
        bundle = system_bundle_path()
        if bundle is not None:
            try:
                data = bundle.read_bytes()
            except OSError:
                data = b""
            certs.extend(
                p for p in parse_pem_bundle(data, str(bundle)) if isinstance(p, ParsedCert)
            )
    return TrustAnchors(certs)
