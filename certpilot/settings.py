"""Configuration: one YAML file plus the environment, validated once into frozen settings.

Errors name the file, the field path and what was expected (``ConfigError``). Secrets never
live in the YAML: fields that need one name an environment variable or a file instead.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import reprlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from certpilot.domain.errors import ConfigError, UsageError
from certpilot.domain.judge import JudgePolicy
from certpilot.domain.model import EndpointTarget, FileTarget
from certpilot.targets import split_host_port

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_MAX_SECONDS = timedelta.max.total_seconds() // 2
"""The longest duration: half of what a ``timedelta`` holds, so adding one to a date fails
as a date, not as an overflow of the duration itself."""


def parse_duration(value: object) -> float:
    """``30s``, ``5m``, ``1.5h``, ``2d``, ``250ms`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    seconds: float | None = None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a positive duration")
        seconds = float(value) if abs(value) < _MAX_SECONDS else math.inf
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None:
        raise ValueError("expected a duration such as 30s, 5m, 1h")
    if not seconds <= _MAX_SECONDS:  # NaN, infinity, or more than a timedelta holds
        raise ValueError(f"expected a duration of at most {_MAX_SECONDS / 86400:.0f} days")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Model):
    url: str = "sqlite:///certpilot.db"
    # Read the URL from this environment variable instead (a password in it stays out of the
    # file; Kubernetes passes it from a Secret): ``url`` is then only the fallback.
    url_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("expected a sqlite:/// or postgresql:// URL")
        return v


class HttpSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=9795, ge=0, le=65535)
    # A bearer token for /metrics and /api/v1/* (Prometheus: `authorization` in the scrape
    # config), from a file (re-read on each request) or the variable named here. Without one
    # they answer anyone who can reach the address (127.0.0.1 by default). /healthz and
    # /readyz stay open for probes; the webhook and Slack have their own authentication.
    token_file: str | None = None
    token_env: str | None = None


class ScanSettings(_Model):
    interval: Duration = 120.0
    timeout: Duration = 5.0
    concurrency: int = Field(default=100, ge=1, le=10000)
    workers: int = Field(default=0, ge=0, le=64)
    ca_files: tuple[str, ...] = ()
    system_trust: bool = True
    # Fetch the CRLs named by scanned certificates (http only, bounded, cached until
    # nextUpdate) and mark revoked ones.
    crl_checks: bool = True


class JudgeSettings(_Model):
    expiring_fraction: float | None = Field(default=1.0 / 3.0, gt=0, le=1)
    expiring_days: float | None = Field(default=30.0, ge=0)
    min_rsa_bits: int = Field(default=2048, ge=512)
    min_ec_bits: int = Field(default=256, ge=160)

    def policy(self) -> JudgePolicy:
        return JudgePolicy(
            expiring_fraction=self.expiring_fraction,
            expiring_days=self.expiring_days,
            min_rsa_bits=self.min_rsa_bits,
            min_ec_bits=self.min_ec_bits,
        )


class SLOSettings(_Model):
    """Where SLO specs come from and how often they are evaluated."""

    specs: tuple[str, ...] = ()  # Sloth prometheus/v1 files; empty: certpilot's presets
    evaluation_interval: Duration = 60.0
    coverage_max_age: Duration = 900.0
    retention: Duration = 35 * 86400.0


class EndpointSettings(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=443, ge=1, le=65535)
    sni: str | None = None
    address: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def target(self) -> EndpointTarget:
        return EndpointTarget(self.host, self.port, self.sni, self.address, self.labels)


class FileSettings(_Model):
    path: str = Field(min_length=1)
    password_env: str | None = None
    password_file: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def target(self) -> FileTarget:
        return FileTarget(self.path, self.password_env, self.password_file, self.labels)


def _endpoint_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        try:
            host, port = split_host_port(value, default_port=443)
        except UsageError as e:
            raise ValueError(e.message) from e
        return {"host": host, "port": port}
    return value


def _file_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class TargetSettings(_Model):
    endpoints: tuple[Annotated[EndpointSettings, BeforeValidator(_endpoint_shorthand)], ...] = ()
    files: tuple[Annotated[FileSettings, BeforeValidator(_file_shorthand)], ...] = ()
    # Secrets stores, validated by their scanners (scanner/openbao.py, scanner/k8s.py) when
    # the service or `config check` builds them: errors name targets.openbao[i].<field>.
    openbao: tuple[dict[str, Any], ...] = ()
    kubernetes: tuple[dict[str, Any], ...] = ()


class DeploySettings(BaseModel):
    """One deploy target: ``name``, ``kind`` (a key of ``remediator.targets.TARGET_TYPES``),
    ``issuer`` (used when the policy names none) and the kind's own options, passed on as they
    are and validated by the adapter (``certpilot config check`` builds every target)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: str = Field(min_length=1)
    issuer: str | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class IssuerSettings(BaseModel):
    """One issuer: ``kind`` (``acme``, ``local_ca``, ``openbao_pki``) and its options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(min_length=1)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class WebhookSettings(_Model):
    """``/hooks/alertmanager``: the bearer token comes from a file or the environment, never
    from the YAML. Without either, the hook answers 503 (it never runs unauthenticated)."""

    token_file: str | None = None
    token_env: str = "CERTPILOT_WEBHOOK_TOKEN"  # noqa: S105 (a variable name, not a secret)


class RemediationSettings(_Model):
    """The remediator: issuers, deploy targets (in deploy order: the first that holds a
    certificate is its canary), the policy file and the executor's timings."""

    enabled: bool = True  # plan and run renewals in `certpilot run`
    policy: str | None = None  # default: policy.yaml next to the config, else built-in rules
    issuers: dict[str, IssuerSettings] = Field(default_factory=dict)
    targets: tuple[DeploySettings, ...] = ()
    interval: Duration = 60.0  # plan renewals and run due jobs this often
    horizon: Duration = 0.0  # also plan renewals due within this long
    verify_timeout: Duration = 120.0
    verify_hold: Duration = 0.7
    verify_interval: Duration = 0.2
    max_attempts: int = Field(default=5, ge=1, le=100)
    # How long a job a replica works on stays claimed without a write (every step renews it):
    # when a replica dies, another resumes its job after this. Longer than any one step.
    lease: Duration = 300.0
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    @model_validator(mode="after")
    def _references(self) -> RemediationSettings:
        seen: set[str] = set()
        for i, t in enumerate(self.targets):
            if t.name in seen:
                raise ValueError(f"targets[{i}]: deploy target {t.name!r} is listed twice")
            seen.add(t.name)
            if t.issuer is not None and t.issuer not in self.issuers:
                known = ", ".join(sorted(self.issuers)) or "none configured"
                raise ValueError(
                    f"targets[{i}].issuer: unknown issuer {t.issuer!r} (issuers: {known})"
                )
        if self.lease <= self.verify_timeout:
            raise ValueError(
                f"lease ({self.lease:g}s) must be longer than verify_timeout "
                f"({self.verify_timeout:g}s): another replica would take over a job still running"
            )
        return self


class SlackRoute(_Model):
    """Where pages go: the first route whose ``owners`` and ``severities`` match (empty lists
    match anything) names the channel."""

    channel: str = Field(min_length=1)
    owners: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()


class QuietHours(_Model):
    """Daily hours when pages of ``severities`` are held (posted when the hours end)."""

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    tz: str = "UTC"
    severities: tuple[str, ...] = ("ticket",)

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class MaintenanceWindow(_Model):
    """A planned maintenance: no pages for ``owners`` (all when empty) between the times."""

    start: datetime
    end: datetime
    owners: tuple[str, ...] = ()
    reason: str = ""

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a time zone offset (e.g. 2026-12-01T02:00Z)")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class SlackPermissions(_Model):
    """Slack user (``U...``/``W...``) and user-group (``S...``) ids allowed to click each
    action; ``"*"`` allows everyone in the workspace. ``approve`` empty: the approvers the
    policy rule names. Revocation also needs a second person's approval (policy)."""

    renew: tuple[str, ...] = ()
    redeploy: tuple[str, ...] = ()
    revoke: tuple[str, ...] = ()
    approve: tuple[str, ...] = ()
    silence: tuple[str, ...] = ()
    acknowledge: tuple[str, ...] = ("*",)


class SlackSettings(_Model):
    """The Slack bot. Secrets come from the environment variables named here, never the
    YAML. Without ``enabled`` (or without a token), nothing is posted and ``certpilot demo``
    shows what would be."""

    enabled: bool = False
    bot_token_env: str = "SLACK_BOT_TOKEN"  # noqa: S105 (a variable name)
    signing_secret_env: str = "SLACK_SIGNING_SECRET"  # noqa: S105 (a variable name)
    socket_mode: bool = False
    app_token_env: str = "SLACK_APP_TOKEN"  # noqa: S105 (a variable name; Socket Mode)
    api_url: str | None = None  # Web API base URL (a proxy, or a test fake)
    default_channel: str = "#certpilot"
    routes: tuple[SlackRoute, ...] = ()
    quiet_hours: QuietHours | None = None
    maintenance: tuple[MaintenanceWindow, ...] = ()
    permissions: SlackPermissions = Field(default_factory=SlackPermissions)
    alertmanager_url: str | None = None  # for the Silence button (Alertmanager API v2)
    silence_duration: Duration = 3600.0
    sources: tuple[str, ...] = ("inventory", "slo", "alertmanager")
    page_interval: Duration = 15.0  # how often pages are brought up to date

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [x for x in v if x not in {"inventory", "slo", "alertmanager"}]
        if bad:
            raise ValueError(f"unknown source {bad[0]!r} (inventory, slo, alertmanager)")
        return v


class OwnerRuleSettings(_Model):
    """``ownership.rules[]``: the first rule that matches names the owner (shell globs)."""

    owner: str = Field(min_length=1)
    names: tuple[str, ...] = ()  # SANs, CN, endpoint host: "*.pay.example.com"
    refs: tuple[str, ...] = ()  # locations: "openbao://bao/secret/payments/*"
    sources: tuple[str, ...] = ()  # tls, file, openbao, k8s

    @model_validator(mode="after")
    def _some(self) -> OwnerRuleSettings:
        if not (self.names or self.refs or self.sources):
            raise ValueError("a rule needs names, refs or sources to match on")
        return self


class OwnershipSettings(_Model):
    """Who owns what: labels first (owner/team), then these rules, then ``default``."""

    rules: tuple[OwnerRuleSettings, ...] = ()
    default: str | None = None


class ClusterSettings(_Model):
    """Several ``certpilot run`` replicas on one PostgreSQL database: heartbeat every
    ``heartbeat``; a replica unseen for ``ttl`` is gone (its endpoints move to the others)."""

    heartbeat: Duration = 5.0
    ttl: Duration = 20.0
    # This replica's stable name (jobs it works on carry it; a restart with the same name
    # resumes them at once). Default: the host name (a pod's name in Kubernetes).
    instance: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _ttl(self) -> ClusterSettings:
        if self.ttl < 2 * self.heartbeat:
            raise ValueError("ttl must be at least two heartbeats")
        return self


class CTLogSettings(_Model):
    """One Certificate Transparency log: ``url`` (RFC 6962 base URL, or a tiled log's
    monitoring prefix with ``kind: static``) and ``key``, its base64 DER public key as log lists
    give it."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    key: str = Field(min_length=1)
    kind: Literal["rfc6962", "static"] = "rfc6962"

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "not base64 (the log's DER public key, as log lists give it)"
            ) from None
        return v


class CertstreamSettings(_Model):
    """A certstream-format websocket feed (unverified: it names certificates, never proves)."""

    url: str = Field(min_length=1, pattern=r"^wss?://")
    heartbeat_timeout: Duration = 30.0


class CTSettings(_Model):
    """The CT monitor (``ctwatch``) in ``certpilot run``: off until a log or feed is listed.

    ``watch`` lists patterns as certspotter writes them (``example.com``, ``.example.com`` for
    the domain and all below it, ``*.example.com``); ``watch_file`` adds a file of them.
    ``allowed_issuers`` are issuer DNs or CNs whose certificates for your names may be expected;
    with ``trust_inventory_issuers`` the issuers of certificates your inventory holds count too.
    A log never read before starts at its end (``start: end``) or at entry 0."""

    logs: tuple[CTLogSettings, ...] = ()
    log_list: str | None = None  # a v3 log list JSON file: every usable log in it
    certstream: tuple[CertstreamSettings, ...] = ()
    watch: tuple[str, ...] = ()
    watch_file: str | None = None
    start: Literal["end", "beginning"] = "end"
    interval: Duration = 60.0
    batch_size: int = Field(default=256, ge=1, le=10000)
    concurrency: int = Field(default=4, ge=1, le=64)
    window: int = Field(default=4096, ge=1, le=1_000_000)
    verify_inclusion: bool = False
    allowed_issuers: tuple[str, ...] = ()
    trust_inventory_issuers: bool = True
    grace: Duration = 900.0  # how long an in-flight order explains a match

    @property
    def enabled(self) -> bool:
        return bool(self.logs or self.log_list or self.certstream)


class Settings(_Model):
    """The whole configuration. Every field has a working default."""

    store: StoreSettings = Field(default_factory=StoreSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    scan: ScanSettings = Field(default_factory=ScanSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    slo: SLOSettings = Field(default_factory=SLOSettings)
    targets: TargetSettings = Field(default_factory=TargetSettings)
    remediation: RemediationSettings = Field(default_factory=RemediationSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    ownership: OwnershipSettings = Field(default_factory=OwnershipSettings)
    ct: CTSettings = Field(default_factory=CTSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        seen: set[str] = set()
        for ep in self.targets.endpoints:
            ref = ep.target().ref
            if ref in seen:
                raise ValueError(f"endpoint {ref} is listed twice")
            seen.add(ref)
        return self

    def endpoint_targets(self) -> list[EndpointTarget]:
        return [e.target() for e in self.targets.endpoints]

    def file_targets(self) -> list[FileTarget]:
        return [f.target() for f in self.targets.files]


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 60, 60
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4


class _Shown:
    """A value from a config file as an error shows it: its ``repr`` cut short (the value may be
    a megabyte string, or a YAML alias structure of billions of items)."""

    __slots__ = ("text",)

    def __init__(self, value: object) -> None:
        self.text = _BRIEF.repr(value)

    def __repr__(self) -> str:
        return self.text


def shown(value: object) -> object:
    """``value`` for :class:`ConfigError`: scalars as they are, anything large cut short."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int) and abs(value) < 10**30:
        return value
    if isinstance(value, str) and len(value) <= 200:
        return value
    return _Shown(value)


def field_name(part: object) -> str:
    """A mapping key as a field path shows it: as is when printable and short, else a short
    ``repr`` (a key may hold a newline)."""
    text = str(part)
    return text if text.isprintable() and len(text) <= 60 else _BRIEF.repr(part)


def _loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = field_name(part)
            out += f".{name}" if out else name
    return out


def config_error(e: ValidationError, source: str, prefix: str = "") -> ConfigError:
    """The first pydantic error as one line: file, field path (under ``prefix``), what was
    expected and the value given, plus how many more errors there are."""
    err = e.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "function" in p))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    extra = f" (and {e.error_count() - 1} more errors)" if e.error_count() > 1 else ""
    return ConfigError(
        source,
        _loc(loc, prefix),
        msg + extra,
        shown(err.get("input")),
        has_value=err["type"] != "missing",
    )


def settings_from_mapping(data: Mapping[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as e:
        raise config_error(e, source) from e


def load_yaml(
    text: str, source: str, loader: type[yaml.SafeLoader], *, all_documents: bool = False
) -> Any:
    """``text`` parsed with ``loader`` (every document, as a list, with ``all_documents``);
    :class:`ConfigError` naming ``source`` for anything that is not YAML, including what PyYAML
    raises outside ``YAMLError``: ``RecursionError`` for nesting too deep, and a constructor's
    own errors (``ValueError`` for a date such as ``2026-13-01`` or an integer of more than 4300
    digits, ``AttributeError`` for ``!!timestamp 2026``...)."""
    try:
        if all_documents:
            return list(yaml.load_all(text, Loader=loader))
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(source, where, f"invalid YAML: {problem}", has_value=False) from e
    except RecursionError as e:
        raise ConfigError(source, "", "invalid YAML: nested too deeply", has_value=False) from e
    except Exception as e:  # a constructor's own error: the value is not what its tag says
        problem = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if not isinstance(e, ValueError | OverflowError):
            problem = f"a value does not match its tag ({type(e).__name__})"
        raise ConfigError(source, "", f"invalid YAML: {problem}", has_value=False) from e


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML config file. Raises ``ConfigError`` with file and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(str(p), "", "file not found", has_value=False) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"cannot read: {e}", has_value=False) from e
    data = load_yaml(text, str(p), yaml.SafeLoader)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "", "expected a mapping at the top level", type(data).__name__)
    return with_environment(settings_from_mapping(data, str(p)), os.environ, str(p))


def with_environment(settings: Settings, env: Mapping[str, str], source: str) -> Settings:
    """``settings`` with the values the config names environment variables for (``store.
    url_env``) taken from ``env``; a variable named but unset is a :class:`ConfigError`."""
    name = settings.store.url_env
    if not name:
        return settings
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            source, "store.url_env", f"environment variable {name} is not set", has_value=False
        )
    try:
        store = StoreSettings(url=value, url_env=name)
    except ValidationError:
        # Never echo the value: the URL may carry a password.
        raise ConfigError(
            source,
            "store.url_env",
            f"{name} does not hold a sqlite:/// or postgresql:// URL",
            has_value=False,
        ) from None
    return settings.model_copy(update={"store": store})
