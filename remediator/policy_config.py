"""The ``policy:`` document: YAML, validated with pydantic, turned into :mod:`remediator.policy`.

The file is either the policy itself (``rules``, ``issuers``, ``defaults`` at the top) or a
certpilot config file with a ``policy:`` section. Errors are one-line :class:`ConfigError`\\ s
naming the file, the field path and the value::

    policy.yaml: rules[2].actions.revoke: expected one of auto, approve, deny, dry-run (got 'yes')

YAML is read with YAML 1.2 scalars: only ``true``/``false`` are booleans (``yes``, ``no``, ``on``
and ``off`` stay strings, so ``revoke: yes`` is an error rather than a silent ``true``) and
``12:30`` is a time, not the base-60 integer 750 that YAML 1.1 makes of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from certpilot.domain.errors import ConfigError
from certpilot.settings import (
    Settings,
    config_error,
    field_name,
    load_yaml,
    parse_duration,
    shown,
)
from remediator.policy import (
    DEFAULT_RULE,
    WEEKDAYS,
    Action,
    IssuerBudget,
    MaintenanceWindow,
    Match,
    Mode,
    Policy,
    RateLimit,
    Rule,
)

DEFAULT_POLICY_FILE = "policy.yaml"

# ----------------------------------------------------------------------------- YAML 1.2 scalars

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans and numbers (see the module docstring)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in {_BOOL, _INT, _FLOAT}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"
        r"|^[-+]?[0-9]+[eE][-+]?[0-9]+$"
        r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)

# ----------------------------------------------------------------------------- field parsers

_MODES = ", ".join(m.value for m in Mode)
_ACTIONS = ", ".join(a.value for a in Action)


def _mode(value: Any) -> Mode:
    if isinstance(value, str) and value in {m.value for m in Mode}:
        return Mode(value)
    raise ValueError(f"expected one of {_MODES}")


def _strings(value: Any) -> Any:
    """A single string stands for a one-item list; items must be non-empty strings."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of strings")
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise ValueError("expected a list of non-empty strings")
    return tuple(v.strip() for v in value)


_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def _days(value: Any) -> float | None:
    """A number of days, or a duration such as ``90d`` or ``2160h``; 0 disables."""
    if value is None:
        return None
    try:
        if isinstance(value, str) and _NUMBER.match(value):
            days = float(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            days = float(value)
            if days < 0:
                raise ValueError
        else:
            days = parse_duration(value) / 86400.0
        timedelta(days=days)  # NaN, infinity and more days than a timedelta holds: refused
    except (ValueError, OverflowError):
        raise ValueError("expected a number of days or a duration such as 30d") from None
    return days


def _fraction(value: Any) -> float | None:
    """``0.333``, ``1/3`` or ``33%`` of the lifetime; 0 disables."""
    if value is None:
        return None
    bad = ValueError("expected a fraction of the lifetime between 0 and 1, such as 1/3 or 33%")
    if isinstance(value, bool):
        raise bad
    try:
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                frac = float(text[:-1]) / 100.0
            elif "/" in text:
                num, den = text.split("/", 1)
                frac = float(num) / float(den)
            else:
                frac = float(text)
        elif isinstance(value, int | float):
            frac = float(value)
        else:
            raise bad
    except (ValueError, ZeroDivisionError):
        raise bad from None
    if not 0 <= frac < 1:
        raise bad
    return frac


def _minutes(value: Any) -> float:
    """A duration such as ``30m`` or ``1h``; a bare number is minutes. Returns seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("expected a duration such as 30m")
        value = value * 60.0 if abs(value) < 2**64 else math.inf  # minutes: in seconds below
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError("expected a duration such as 30m (a bare number is minutes)") from None


def _positive_duration(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError("expected a duration such as 3h or 7d") from None
    if seconds <= 0:
        raise ValueError("expected a duration longer than 0, such as 3h or 7d")
    return seconds


_KEY = re.compile(r"^(?:(rsa)-(\d{4,5})|(ec|ecdsa|p)-?(256|384|521)|(ed25519|ed448))$", re.I)


def _key_types(value: Any) -> tuple[str, ...]:
    """``RSA-2048``, ``EC-256`` (also ``P-256``, ``ECDSA-384``), ``Ed25519``, ``Ed448``."""
    out: list[str] = []
    for item in _strings(value):
        m = _KEY.match(item)
        if m is None:
            raise ValueError("expected key types such as EC-256, EC-384, RSA-2048, Ed25519")
        if m.group(1):
            bits = int(m.group(2))
            if bits < 2048:
                raise ValueError("RSA keys under 2048 bits are weak; expected RSA-2048 or more")
            out.append(f"RSA-{bits}")
        elif m.group(3):
            out.append(f"EC-{m.group(4)}")
        else:
            out.append("Ed25519" if m.group(5).lower() == "ed25519" else "Ed448")
    return tuple(out)


_DAY_NAMES = {name: i for i, name in enumerate(WEEKDAYS)} | {
    full: i
    for i, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}


def _weekdays(value: Any) -> frozenset[int]:
    """``[sat, sun]``, ``mon-fri``, ``"sat,sun"``, ``daily``."""
    bad = ValueError("expected weekdays such as [sat, sun], mon-fri or daily")
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise bad
    days: set[int] = set()
    for item in value:
        if not isinstance(item, str):
            raise bad
        text = item.strip().lower()
        if text in {"daily", "*", "all"}:
            days.update(range(7))
            continue
        first, dash, last = text.partition("-")
        if first not in _DAY_NAMES or (dash and last not in _DAY_NAMES):
            raise bad
        a = _DAY_NAMES[first]
        b = _DAY_NAMES[last] if dash else a
        days.update(d % 7 for d in range(a, a + (b - a) % 7 + 1))
    return frozenset(days)


_HHMM = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


def _time_of_day(value: Any) -> time:
    """``HH:MM``; ``24:00`` is midnight at the end of the day."""
    m = _HHMM.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError('expected a time such as "02:00"')
    hours, minutes = int(m.group(1)), int(m.group(2))
    if (hours, minutes) == (24, 0):
        return time(0, 0)
    if hours > 23 or minutes > 59:
        raise ValueError('expected a time between "00:00" and "24:00"')
    return time(hours, minutes)


def _zone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a time zone such as UTC or Europe/Berlin")
    name = value.strip()
    if name.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone: expected an IANA name such as Europe/Berlin") from None
    return name


def _second_person(value: Any) -> frozenset[Action]:
    """``true`` (every action that needs approval), ``false``, or a list of actions."""
    if isinstance(value, bool):
        return frozenset(Action) if value else frozenset()
    try:
        return frozenset(Action(v) for v in _strings(value))
    except ValueError:
        raise ValueError(f"expected true, false or a list of actions ({_ACTIONS})") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


ModeField = Annotated[Mode, BeforeValidator(_mode)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
DaysField = Annotated[float | None, BeforeValidator(_days)]
FractionField = Annotated[float | None, BeforeValidator(_fraction)]
Jitter = Annotated[float, BeforeValidator(_minutes)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
KeyTypes = Annotated[tuple[str, ...], BeforeValidator(_key_types)]
Weekdays = Annotated[frozenset[int], BeforeValidator(_weekdays)]
TimeOfDay = Annotated[time, BeforeValidator(_time_of_day)]
Zone = Annotated[str, BeforeValidator(_zone)]
SecondPerson = Annotated[frozenset[Action], BeforeValidator(_second_person)]
StrictBool = Annotated[bool, BeforeValidator(_bool)]

# ----------------------------------------------------------------------------- the document


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionsModel(_Model):
    renew: ModeField | None = None
    redeploy: ModeField | None = None
    revoke: ModeField | None = None


class MatchModel(_Model):
    names: Strings = ()
    sources: Strings = ()
    owners: Strings = ()
    environments: Strings = ()

    def to_match(self) -> Match:
        return Match(self.names, self.sources, self.owners, self.environments)


class WindowModel(_Model):
    days: Weekdays
    start: TimeOfDay
    end: TimeOfDay
    tz: Zone = "UTC"

    def to_window(self) -> MaintenanceWindow:
        zone = UTC if self.tz == "UTC" else ZoneInfo(self.tz)
        return MaintenanceWindow(self.days, self.start, self.end, zone)


class RuleFields(_Model):
    """The settings a rule (or ``defaults``) may give; unset ones are inherited."""

    actions: ActionsModel | None = None
    approvers: Strings | None = None
    requires_second_person: SecondPerson | None = None
    issuers: Strings | None = None
    key_types: KeyTypes | None = None
    max_validity: DaysField = None
    renew_before_fraction: FractionField = None
    renew_before_days: DaysField = None
    use_ari: StrictBool | None = None
    stagger_jitter: Jitter | None = None
    concurrency: int | None = Field(default=None, ge=1)
    maintenance_windows: tuple[WindowModel, ...] | None = None

    def apply(self, base: Rule, name: str, match: Match) -> Rule:
        """``base`` with the fields set here; ``actions`` merge action by action."""
        actions = dict(base.actions)
        if self.actions is not None:
            for action in Action:
                mode = getattr(self.actions, action.value)
                if mode is not None:
                    actions[action] = mode
        set_ = self.model_fields_set

        def pick(field: str, value: Any, inherited: Any) -> Any:
            return value if field in set_ else inherited

        windows = self.maintenance_windows
        return Rule(
            name=name,
            match=match,
            actions=MappingProxyType(actions),
            approvers=pick("approvers", self.approvers, base.approvers),
            second_person=pick(
                "requires_second_person", self.requires_second_person, base.second_person
            ),
            issuers=pick("issuers", self.issuers, base.issuers),
            key_types=pick("key_types", self.key_types, base.key_types),
            # 0 (or null) disables a limit or trigger that ``defaults`` set.
            max_validity_days=pick(
                "max_validity", self.max_validity or None, base.max_validity_days
            ),
            renew_before_fraction=pick(
                "renew_before_fraction",
                self.renew_before_fraction or None,
                base.renew_before_fraction,
            ),
            renew_before_days=pick(
                "renew_before_days", self.renew_before_days or None, base.renew_before_days
            ),
            use_ari=base.use_ari if self.use_ari is None else self.use_ari,
            stagger_jitter=(
                base.stagger_jitter
                if self.stagger_jitter is None
                else timedelta(seconds=self.stagger_jitter)
            ),
            concurrency=pick("concurrency", self.concurrency, base.concurrency),
            maintenance_windows=(
                base.maintenance_windows
                if windows is None
                else tuple(w.to_window() for w in windows)
            ),
        )


class RuleModel(RuleFields):
    name: str = Field(min_length=1)
    match: MatchModel = Field(default_factory=MatchModel)


class RateLimitModel(_Model):
    limit: int = Field(ge=1)
    per: PositiveDuration

    def to_limit(self) -> RateLimit:
        return RateLimit(self.limit, timedelta(seconds=self.per))


class RateLimitsModel(_Model):
    duplicate_certificates: RateLimitModel | None = None
    new_orders: RateLimitModel | None = None


class IssuerModel(_Model):
    rate_limits: RateLimitsModel = Field(default_factory=RateLimitsModel)

    def to_budget(self) -> IssuerBudget:
        r = self.rate_limits
        return IssuerBudget(
            duplicate_certificates=(
                r.duplicate_certificates.to_limit() if r.duplicate_certificates else None
            ),
            new_orders=r.new_orders.to_limit() if r.new_orders else None,
        )


class PolicyDocument(_Model):
    """The ``policy:`` document. Every field is optional: empty means the built-in defaults
    (renew ``auto`` at a third of the lifetime left, redeploy ``auto``, revoke ``approve`` by a
    second person)."""

    rules: tuple[RuleModel, ...] = ()
    issuers: dict[str, IssuerModel] = Field(default_factory=dict)
    defaults: RuleFields = Field(default_factory=RuleFields)

    def to_policy(self, source: str, prefix: str = "") -> Policy:
        """The pure policy. Raises :class:`ConfigError` for what only the whole shows: duplicate
        rule names, a rule with no renewal trigger left."""
        at = f"{prefix}." if prefix else ""
        default = self.defaults.apply(DEFAULT_RULE, DEFAULT_RULE.name, Match())
        _check_triggers(default, source, f"{at}defaults")
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, model in enumerate(self.rules):
            where = f"{at}rules[{i}]"
            if model.name == DEFAULT_RULE.name:
                raise ConfigError(
                    source, f"{where}.name", "'default' names the built-in last rule", model.name
                )
            if model.name in seen:
                raise ConfigError(source, f"{where}.name", "duplicate rule name", model.name)
            seen.add(model.name)
            rule = model.apply(default, model.name, model.match.to_match())
            _check_triggers(rule, source, where)
            rules.append(rule)
        budgets = {name: issuer.to_budget() for name, issuer in self.issuers.items()}
        return Policy(rules=tuple(rules), default=default, issuers=budgets)


def _check_triggers(rule: Rule, source: str, where: str) -> None:
    if rule.renew_before_fraction is None and rule.renew_before_days is None:
        raise ConfigError(
            source,
            f"{where}.renew_before_fraction",
            "renew_before_fraction and renew_before_days are both 0: nothing would trigger a "
            "renewal",
            0,
        )


# ----------------------------------------------------------------------------- loading


def policy_from_mapping(data: Mapping[str, Any], source: str) -> Policy:
    """Validate a parsed document (the policy itself, or a config file with ``policy:``)."""
    prefix = ""
    if "policy" in data:
        others = [k for k in data if k != "policy" and k not in Settings.model_fields]
        if others:
            raise ConfigError(
                source, field_name(others[0]), "unknown field", shown(data[others[0]])
            )
        prefix = "policy"
        inner = data["policy"]
        if inner is None:
            inner = {}
        if not isinstance(inner, dict):
            raise ConfigError(source, prefix, "expected a mapping", shown(inner))
        data = inner
    try:
        doc = PolicyDocument.model_validate(dict(data))
    except ValidationError as e:
        raise config_error(e, source, prefix) from e
    return doc.to_policy(source, prefix)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises ``ConfigError`` naming file, field and value."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(str(p), "", "file not found", has_value=False) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "", f"cannot read: {e}", has_value=False) from e
    data = load_yaml(text, str(p), _Loader)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "", "expected a mapping at the top level", type(data).__name__)
    return policy_from_mapping(data, str(p))


def default_policy_path(config: str | Path | None) -> Path | None:
    """``policy.yaml`` next to the config file, when there is one."""
    if config is None:
        return None
    candidate = Path(config).parent / DEFAULT_POLICY_FILE
    return candidate if candidate.is_file() else None
