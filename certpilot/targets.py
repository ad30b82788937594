"""Parsing of command-line targets: ``host[:port]``, ``[v6]:port``, ``file:PATH_OR_GLOB``,
and curl-style ``--resolve HOST:PORT:ADDR`` pins."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from certpilot.domain.errors import UsageError
from certpilot.domain.model import EndpointTarget, FileTarget, Target


def split_host_port(text: str, *, default_port: int = 443) -> tuple[str, int]:
    """``example.com:8443`` -> (``example.com``, 8443); ``[::1]:443``; bare ``::1`` is a host."""
    s = text.strip()
    if not s:
        raise UsageError(repr(text), "empty target")
    if "://" in s:
        scheme, _, rest = s.partition("://")
        if scheme.lower() not in {"https", "tls", "tcp"}:
            raise UsageError(text, f"unsupported scheme {scheme}:// (use host:port or file:PATH)")
        s = rest.split("/", 1)[0]
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep:
            raise UsageError(text, "missing ']' after an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise UsageError(text, "expected [IPv6]:PORT")
    elif s.count(":") > 1:
        try:
            ipaddress.IPv6Address(s)
        except ValueError as e:
            raise UsageError(text, "IPv6 addresses with a port need brackets: [::1]:443") from e
        host, port_text = s, ""
    else:
        host, _, port_text = s.partition(":")
    if not host:
        raise UsageError(text, "missing host name")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(text, f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def parse_resolve(specs: Sequence[str]) -> dict[tuple[str, int], str]:
    """``HOST:PORT:ADDR`` (ADDR may be ``[v6]`` or bare v6), like ``curl --resolve``."""
    out: dict[tuple[str, int], str] = {}
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise UsageError(f"--resolve {spec}", "expected HOST:PORT:ADDRESS")
        host, port_text, addr = parts
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"--resolve {spec}", f"port must be 1-65535, got {port_text!r}")
        addr = addr.strip("[]")
        try:
            ipaddress.ip_address(addr)
        except ValueError as e:
            raise UsageError(f"--resolve {spec}", f"{addr!r} is not an IP address") from e
        out[(host.lower(), int(port_text))] = addr
    return out


def parse_targets(
    texts: Sequence[str],
    *,
    resolve: Mapping[tuple[str, int], str] | None = None,
    sni: str | None = None,
    password_env: str | None = None,
    password_file: str | None = None,
) -> list[Target]:
    """Turn CLI arguments into targets; raises ``UsageError`` naming the bad argument."""
    pins = resolve or {}
    out: list[Target] = []
    for text in texts:
        if text.startswith("file:"):
            pattern = text[len("file:") :]
            if pattern.startswith("//"):
                pattern = pattern[2:]
            if not pattern:
                raise UsageError(text, "expected file:PATH_OR_GLOB")
            out.append(FileTarget(pattern, password_env, password_file))
            continue
        host, port = split_host_port(text)
        out.append(EndpointTarget(host, port, sni=sni, address=pins.get((host.lower(), port))))
    return out
