"""Helpers every issuer shares: key types, private files, and describing what was issued.

Private keys are only ever handled as objects or PEM bytes passed straight to a file opened
0600 or into :class:`IssuedCertificate` (whose ``key_pem`` is excluded from ``repr``); nothing
here formats a key into a message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import threading
import types
import typing
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certpilot.domain.errors import ConfigError
from certpilot.domain.remedy import IssuedCertificate

_C = TypeVar("_C")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# The key types a request may ask for (IssueRequest.key_type). RSA below 2048 and P-521 are
# left out on purpose: CA/Browser Forum Baseline Requirements 6.1.5 and what ACME CAs accept.
KEY_TYPES: dict[str, tuple[str, int]] = {
    "EC-256": ("EC", 256),
    "EC-384": ("EC", 384),
    "RSA-2048": ("RSA", 2048),
    "RSA-3072": ("RSA", 3072),
    "RSA-4096": ("RSA", 4096),
}

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----",
)


def parse_key_type(key_type: str) -> tuple[str, int]:
    """``"EC-256"`` -> ``("EC", 256)``; raises ``ValueError`` with the accepted values."""
    try:
        return KEY_TYPES[key_type.strip().upper()]
    except KeyError:
        raise ValueError(
            f"unsupported key type {key_type!r} (expected one of {', '.join(KEY_TYPES)})"
        ) from None


def generate_key(key_type: str) -> PrivateKey:
    kind, bits = parse_key_type(key_type)
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    curve: ec.EllipticCurve = ec.SECP256R1() if bits == 256 else ec.SECP384R1()
    return ec.generate_private_key(curve)


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, atomically.

    The temporary file is created 0600 (``O_EXCL``, no window where it is world-readable) and
    renamed over ``path``, so a reader never sees half a key and a crash never leaves one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def create_private(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) with ``data`` unless it exists; ``False`` when someone else (another
    thread or process) created it first. Complete or absent, never half-written: the content is
    written to a private temporary file and hard-linked into place (``link`` fails on EEXIST).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_public(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a non-secret file atomically (certificates, CRLs, indexes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.chmod(mode)
    tmp.replace(path)


def load_pem_chain(chain_pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order; ``ValueError`` when there is none or one
    does not parse."""
    blocks = _PEM_CERT.findall(chain_pem)
    if not blocks:
        raise ValueError("no PEM certificate found")
    return [x509.load_pem_x509_certificate(b) for b in blocks]


def chain_to_pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def describe(chain: list[x509.Certificate], key_pem: bytes, issuer_name: str) -> IssuedCertificate:
    """The :class:`IssuedCertificate` for ``chain`` (leaf first) and its key."""
    leaf = chain[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    return IssuedCertificate(
        chain_pem=chain_to_pem(chain),
        key_pem=key_pem,
        serial=format(leaf.serial_number, "x"),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        not_before=leaf.not_valid_before_utc.astimezone(UTC),
        not_after=leaf.not_valid_after_utc.astimezone(UTC),
        issuer_name=issuer_name,
    )


def one_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of ``text``, bounded: errors are rendered on one line."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def config_from_mapping(cls: type[_C], data: Mapping[str, Any], *, source: str) -> _C:
    """Build the frozen config dataclass ``cls`` from a plain mapping (parsed YAML).

    Values are checked against the field annotations (``str``, ``int``, ``float``, ``bool``,
    ``Path``, ``tuple[str, ...]`` and their ``| None``); an unknown key, a missing required key
    or a wrong type raises :class:`ConfigError` naming ``source``, the field and what was
    expected. Secrets never pass through here: the config holds environment variable *names*.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(source, str(key), f"one of {', '.join(sorted(known))}", key)
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(source, name, "a value (required)", has_value=False)
            continue
        kwargs[name] = _coerce(hints[name], data[name], source, name)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(source, "", one_line(e), has_value=False) from e


def _coerce(tp: Any, value: Any, source: str, name: str) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, name)
    if tp is Path:
        if isinstance(value, str | Path) and str(value):
            return Path(value).expanduser()
        raise ConfigError(source, name, "a path", value)
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            raise ConfigError(source, name, "a list of strings (an argv, no shell)", value)
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(source, name, "a list of strings", value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(source, name, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(source, name, "an integer", value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(source, name, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(source, name, "a string", value)
    raise TypeError(f"config field {name}: unsupported annotation {tp!r}")  # a bug, not input
