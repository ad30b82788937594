"""Deploy targets: where a renewed certificate goes. One module per kind, found in a table
(DESIGN.md section 6.4, like blackbox_exporter's ``prober/``).

Every target implements ``certpilot.domain.remedy.DeployTarget`` (``deploy``, ``rollback``,
``endpoints``) and raises ``DeployError`` with the failing ``step``.

=========  ================================================================================
kind       module
=========  ================================================================================
files      :mod:`remediator.targets.files`: certificate, chain and key files written
           atomically (previous version kept), then ``test_command`` and ``reload_command``
           (argv lists, :mod:`remediator.targets.command`). A "reload" is part of this kind,
           not a kind of its own: a reload without the files it reloads has nothing to roll
           back to.
openbao_kv :mod:`remediator.targets.openbao_kv`: a KV v2 secret in OpenBao/Vault, a new version
           per deploy (check-and-set), rollback writes the previous version's data again.
k8s_secret :mod:`remediator.targets.k8s_secret`: a ``kubernetes.io/tls`` Secret, replaced
           with optimistic concurrency; the previous data kept in ``<name>-certpilot-prev``.
=========  ================================================================================

Adding a kind: write ``remediator/targets/<module>.py`` with a
``from_config(name, options, *, source, field) -> DeployTarget`` that validates ``options``
into a frozen config (``ConfigError`` naming the field), and add one line to
:data:`TARGET_TYPES`. Nothing else changes: settings and the executor look kinds up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from certpilot.domain.errors import ConfigError
from certpilot.domain.remedy import DeployTarget


class TargetFactory(Protocol):
    """Builds a target named ``name`` from its YAML options; ``source``/``field`` say where
    the options came from, for ``ConfigError``."""

    def __call__(
        self, name: str, data: Mapping[str, object], *, source: str = ..., field: str = ...
    ) -> DeployTarget: ...


def _files(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> DeployTarget:
    from remediator.targets import files

    return files.from_config(name, data, source=source, field=field)


def _openbao_kv(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> DeployTarget:
    from remediator.targets import openbao_kv

    return openbao_kv.from_config(name, data, source=source, field=field)


def _k8s_secret(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> DeployTarget:
    from remediator.targets import k8s_secret

    return k8s_secret.from_config(name, data, source=source, field=field)


# Adapters load when a target of their kind is configured (hvac, lightkube stay unimported
# otherwise).
TARGET_TYPES: Mapping[str, TargetFactory] = MappingProxyType(
    {
        "files": _files,
        "openbao_kv": _openbao_kv,
        "k8s_secret": _k8s_secret,
    }
)


def build_target(
    kind: str,
    name: str,
    data: Mapping[str, object],
    *,
    source: str = "config",
    field: str = "targets",
) -> DeployTarget:
    """The target of ``kind`` configured by ``data``; an unknown kind is a ``ConfigError``."""
    factory = TARGET_TYPES.get(kind)
    if factory is None:
        raise ConfigError(
            source, f"{field}.kind", f"one of {', '.join(sorted(TARGET_TYPES))}", kind
        )
    return factory(name, data, source=source, field=field)


__all__ = ["TARGET_TYPES", "TargetFactory", "build_target"]
