"""Wiring of the remediator for ``certpilot run``, the CLI verbs and the demo.

:func:`open_remediation` builds, from the settings: the job store and audit log (same database
as the inventory), each issuer and deploy target from its table (``remediator.issuers``,
``remediator.targets``; an error names ``remediation.issuers.<name>`` or
``remediation.targets[i]`` and the field), the policy file, the executor with a prober, and the
:class:`~remediator.service.Remediation` on top. SLI events from the executor (renewals,
deployments, issuance latency) go to the inventory's SLI tables and to the metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certpilot.domain.clock import Clock
from certpilot.domain.errors import ConfigError
from certpilot.domain.protocols import Prober
from certpilot.domain.remedy import DeployTarget, Issuer
from certpilot.domain.sli import SLIEvent
from certpilot.obs import Metrics
from certpilot.settings import RemediationSettings, Settings
from certpilot.store import AuditLog, Inventory
from certpilot.store.jobs import JobStore
from remediator.executor import Executor
from remediator.issuers import build_issuer
from remediator.policy import DEFAULT_POLICY, Policy
from remediator.policy_config import default_policy_path, load_policy
from remediator.service import Remediation
from remediator.targets import build_target

log = logging.getLogger("certpilot.remediate")


def build_issuers(r: RemediationSettings, clock: Clock, source: str) -> dict[str, Issuer]:
    out: dict[str, Issuer] = {}
    for name, spec in r.issuers.items():
        try:
            out[name] = build_issuer(spec.kind, name, spec.options(), clock=clock)
        except ConfigError as e:
            raise _relocate(e, source, f"remediation.issuers.{name}") from e
    return out


def build_targets(r: RemediationSettings, source: str) -> list[DeployTarget]:
    out: list[DeployTarget] = []
    for i, spec in enumerate(r.targets):
        where = f"remediation.targets[{i}]"
        out.append(build_target(spec.kind, spec.name, spec.options(), source=source, field=where))
    return out


def _relocate(e: ConfigError, source: str, prefix: str) -> ConfigError:
    """An issuer adapter names ``issuers.<name>`` as its source; say file and full path."""
    field = e.field
    return ConfigError(
        source,
        f"{prefix}.{field}" if field else prefix,
        e.expected,
        e.value,
        has_value=e.has_value,
    )


def load_remediation_policy(settings: Settings, config_path: str | Path | None) -> Policy:
    """``remediation.policy`` (relative to the config file), else ``policy.yaml`` next to the
    config, else the built-in defaults."""
    configured = settings.remediation.policy
    if configured:
        p = Path(configured)
        if not p.is_absolute() and config_path is not None:
            p = Path(config_path).parent / p
        return load_policy(p)
    path = default_policy_path(config_path)
    return load_policy(path) if path else DEFAULT_POLICY


@dataclass
class RemediationRuntime:
    """The remediator and what it owns; :meth:`close` closes the stores it opened."""

    remediation: Remediation
    executor: Executor
    jobs: JobStore
    audit: AuditLog
    issuers: Mapping[str, Issuer]
    targets: Sequence[DeployTarget]
    closers: ExitStack = field(default_factory=ExitStack, repr=False)

    def close(self) -> None:
        self.closers.close()

    def __enter__(self) -> RemediationRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stored_pem(inventory: Inventory) -> Callable[[str], str]:
    """``fingerprint -> PEM`` of a certificate the inventory has seen ("" when unknown): what a
    revocation revokes and what a renewal names in ARI's ``replaces``."""

    def pem(fingerprint: str) -> str:
        der = inventory.certificate_der(fingerprint)
        if not der:
            return ""
        cert = x509.load_der_x509_certificate(der)
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    return pem


def sli_sink(inventory: Inventory, metrics: Metrics | None) -> Callable[[Sequence[SLIEvent]], None]:
    """Where the executor's SLI events go: the store (counted, like scan events) and the
    metrics (``certpilot_sli_events_total``, ``certpilot_issuance_latency_seconds``)."""

    def sink(events: Sequence[SLIEvent]) -> None:
        if not events:
            return
        increments = inventory.record_sli_events(events)
        if metrics is not None:
            metrics.observe_sli(increments)
            for e in events:
                if e.sli == "issuance_latency" and e.value is not None:
                    metrics.observe_issuance(e.value)

    return sink


def open_remediation(
    settings: Settings,
    clock: Clock,
    *,
    prober: Prober,
    inventory: Inventory,
    metrics: Metrics | None = None,
    config_path: str | Path | None = None,
    instance: str | None = None,
) -> RemediationRuntime:
    """Everything the remediator needs, built from ``settings`` (see the module docstring)."""
    r = settings.remediation
    source = str(config_path) if config_path else "config"
    issuers = build_issuers(r, clock, source)
    targets = build_targets(r, source)
    policy = load_remediation_policy(settings, config_path)
    stack = ExitStack()
    try:
        jobs = JobStore.open(settings.store.url)
        stack.callback(jobs.close)
        audit = AuditLog.open(settings.store.url)
        stack.callback(audit.close)
    except BaseException:
        stack.close()
        raise
    executor = Executor(
        jobs,
        audit,
        issuers,
        {t.name: t for t in targets},
        prober,
        clock,
        verify_timeout=r.verify_timeout,
        verify_hold=r.verify_hold,
        verify_interval=r.verify_interval,
        max_attempts=r.max_attempts,
        lease=r.lease,
        instance=instance,
        sli_sink=sli_sink(inventory, metrics),
    )
    remediation = Remediation(
        executor,
        policy,
        targets,
        target_issuers={t.name: t.issuer for t in r.targets if t.issuer},
        default_issuer=next(iter(issuers)) if len(issuers) == 1 else None,
        horizon=timedelta(seconds=r.horizon),
        chain_of=stored_pem(inventory),
    )
    return RemediationRuntime(remediation, executor, jobs, audit, issuers, targets, stack)


def read_token(
    token_file: str | None, token_env: str | None, env: Mapping[str, str] | None = None
) -> Callable[[], str | None]:
    """A bearer token read at each request (a rotated file takes effect at once): the file
    when set, else the environment variable named; ``None`` when neither gives one."""
    environ = env if env is not None else os.environ

    def read() -> str | None:
        if token_file:
            try:
                text = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                log.warning("token file %s cannot be read: %s", token_file, e.strerror)
                return None
            return text or None
        if token_env:
            return environ.get(token_env, "").strip() or None
        return None

    return read


def webhook_token(
    settings: Settings, env: Mapping[str, str] | None = None
) -> Callable[[], str | None]:
    """The webhook's token: ``remediation.webhook.token_file``, else the variable named by
    ``remediation.webhook.token_env``."""
    w = settings.remediation.webhook
    return read_token(w.token_file, w.token_env, env)


__all__ = [
    "RemediationRuntime",
    "build_issuers",
    "build_targets",
    "load_remediation_policy",
    "open_remediation",
    "read_token",
    "sli_sink",
    "stored_pem",
    "webhook_token",
]
