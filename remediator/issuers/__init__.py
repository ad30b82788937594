"""Issuers, found by kind in one table (DESIGN.md section 6.4).

Each factory takes the issuer's configured name, its options (a plain mapping, as parsed from
the YAML ``issuers:`` section) and the clock, and returns an
:class:`~certpilot.domain.remedy.Issuer`. Adapter modules are imported when a factory runs, not
when this package is imported, so nothing heavy (``acme``, ``requests``) loads until an issuer
of that kind is configured.

=========  ==============================================  =====================================
kind       module                                          options
=========  ==============================================  =====================================
acme       :mod:`remediator.issuers.acme_client`           :class:`~.acme_client.AcmeConfig`
local_ca   :mod:`remediator.issuers.local_ca`              :class:`~.local_ca.LocalCAConfig`
openbao_pki :mod:`remediator.issuers.openbao_pki`          :class:`~.openbao_pki.OpenBaoPKIConfig`
=========  ==============================================  =====================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from certpilot.domain.clock import Clock
from certpilot.domain.errors import ConfigError
from certpilot.domain.remedy import Issuer

IssuerFactory = Callable[[str, Mapping[str, Any], Clock], Issuer]


def _acme(name: str, options: Mapping[str, Any], clock: Clock) -> Issuer:
    from remediator.issuers.acme_client import AcmeConfig, AcmeIssuer

    return AcmeIssuer(name, AcmeConfig.from_mapping(options, source=f"issuers.{name}"), clock=clock)


def _local_ca(name: str, options: Mapping[str, Any], clock: Clock) -> Issuer:
    from remediator.issuers.local_ca import LocalCAConfig, LocalCAIssuer

    return LocalCAIssuer(
        name, LocalCAConfig.from_mapping(options, source=f"issuers.{name}"), clock=clock
    )


def _openbao_pki(name: str, options: Mapping[str, Any], clock: Clock) -> Issuer:
    from remediator.issuers.openbao_pki import from_config

    return from_config(name, options, clock)


ISSUER_KINDS: Mapping[str, IssuerFactory] = MappingProxyType(
    {
        "acme": _acme,
        "local_ca": _local_ca,
        "openbao_pki": _openbao_pki,
    }
)


def build_issuer(kind: str, name: str, options: Mapping[str, Any], *, clock: Clock) -> Issuer:
    """The issuer of ``kind`` named ``name``; :class:`ConfigError` for an unknown kind or bad
    options (naming ``issuers.<name>`` and the field)."""
    factory = ISSUER_KINDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"issuers.{name}", "kind", f"one of {', '.join(sorted(ISSUER_KINDS))}", kind
        )
    return factory(name, options, clock)


__all__ = ["ISSUER_KINDS", "IssuerFactory", "build_issuer"]
