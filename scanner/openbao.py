"""OpenBao (or HashiCorp Vault) scanner: certificates stored in KV v2 secrets and in PKI mounts.

One :class:`OpenBaoSource` names one server and what to read on it; :func:`scan_openbao` reads
exactly that and returns an :class:`OpenBaoScan`: one
:class:`~certpilot.domain.model.Observation` per certificate found, judged at rest with
:func:`certpilot.domain.judge.judge_stored` (time and strength; trust and hostname depend on
where a certificate is served, so reconciliation judges those), plus what is not an
observation: each PKI mount's CRL ``nextUpdate``, and the scan's non-fatal errors.

What is read (nothing else: scanners touch only configured targets):

* ``kv``: KV version 2 prefixes. ``secret/tls/`` (trailing ``/``) is a folder, listed
  recursively through ``LIST <mount>/metadata/<folder>``; ``secret/tls/www`` names one secret;
  ``secret`` or ``secret/`` the whole mount. The mount is the first path segment (use
  ``{mount: kv/team-a, path: tls/}`` for a mount whose path has several segments). The latest
  version of each secret is read (``GET <mount>/data/<path>``, which also carries the secret's
  ``custom_metadata``); deleted and destroyed versions hold nothing.
* ``pki``: PKI mounts. Issuers (``LIST <mount>/issuers``, ``GET <mount>/issuer/<id>``), issued
  certificates (``LIST <mount>/certs``, ``GET <mount>/cert/<serial>``; an issuer's own
  certificate is reported once, as the issuer), the revoked list (``LIST <mount>/certs/revoked``)
  and the CRL (``GET <mount>/crl``).

Observations (``source="openbao"``, ``target="openbao:<name>"``):

* every KV field whose value holds a certificate (PEM, base64 DER or base64 PEM): one per
  certificate in the field, ``ref = openbao://<name>/<mount>/<path>#<field>`` for the first
  (the leaf) and ``...#<field>/<i>`` for the i-th certificate after it; ``chain`` is every
  certificate of the field. Labels: the source's ``labels``, ``store=openbao``,
  ``openbao_path=<mount>/<path>``, and ``owner`` / ``team`` from the secret's KV v2
  ``custom_metadata`` when set there (they win over the source's). Fields holding only a
  private key (or anything that is not a certificate) yield nothing; a field that announces a
  certificate but does not parse is ``malformed``. Values are never logged nor kept: a secret's
  data lives in the worker thread that parses it, only :class:`CertInfo` facts leave it.
* PKI certificates: ``ref = openbao://<name>/<mount>/certs/<serial>`` (serial as certpilot
  writes it: lowercase hex, no colons, no leading zeros), ``chain`` the certificate then its
  issuer's chain, labels ``store``, ``pki_mount`` and ``pki_state`` (``issued`` or ``revoked``);
  a revoked one carries ``revoked``. Expired certificates stay listed until ``tidy``: they are
  reported ``expired``.
* PKI issuers: ``ref = openbao://<name>/<mount>/issuer/<issuer_id>``, labels ``store``,
  ``pki_mount``, ``pki_issuer`` (its name, else its id): an issuing CA about to expire is
  ``expiring`` like any certificate.

Failures are observations, not exceptions (DESIGN.md section 6.2):

* the server as a whole (unreachable, timed out, TLS, DNS, sealed or unavailable, no token,
  AppRole login refused, or permission denied on every configured prefix and mount): one
  observation ``ref = openbao://<name>`` with ``error`` and a problem ``connection_refused``,
  ``timeout``, ``tls_error``, ``dns_error`` or ``unreadable``, and :attr:`OpenBaoScan.failure`
  set to a short reason code. When the server fails mid-scan, what was read before stays in
  the result next to that observation.
* one secret, folder, issuer or certificate that cannot be read (permission denied, a
  configured mount that does not exist): one ``unreadable`` observation for its ref; the scan
  goes on.
* Every call is a read, so retrying is safe: HTTP 429 (a rate-limit quota) is retried after
  its ``Retry-After`` (at most 3 times, 10 s each) before the item is reported unreadable, and
  a dropped connection once before the server is reported unreachable.

A stale CRL is not a problem code of any certificate (problem codes are a contract and none
says "stale CRL"): :attr:`OpenBaoScan.crl_next_update` gives each mount's ``nextUpdate`` and
:meth:`OpenBaoScan.stale_crls` the mounts past it, for a metric.

Authentication: a token from ``token_file`` or ``$token_env`` (default ``BAO_TOKEN``), read at
each scan; or AppRole (``approle_role_id_env`` + ``approle_secret_id_env``), logged in at each
scan with the token kept in memory only and revoked (``auth/token/revoke-self``) when the scan
ends. The token needs ``list`` on the folders' ``<mount>/metadata/...`` paths, ``read`` on
``<mount>/data/...``, and ``list``/``read`` on the PKI paths above.

``hvac`` is synchronous: the scan runs its calls on a pool of ``concurrency`` worker threads,
one client (one HTTP session, kept alive) per thread; ``max_secrets`` bounds the items read
(KV secrets, PKI certificates and issuers) per scan, and a scan that reaches it says so
(:attr:`OpenBaoScan.truncated`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509

from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertificateParseError, ConfigError
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_stored
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, ParsedCert, parse_der, parse_pem_bundle
from certpilot.openbao import (
    AUTH,
    DEFAULT_TOKEN_ENV,
    DNS,
    PERMISSION_DENIED,
    RATE_LIMITED,
    TIMEOUT,
    TLS,
    UNREACHABLE,
    Connection,
    InvalidPath,
    OpenBaoError,
    describe_failure,
    login_approle,
    normalise_serial,
    vault_detail,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_SECRETS",
    "SOURCE",
    "KVPrefix",
    "OpenBaoScan",
    "OpenBaoSource",
    "scan_openbao",
]

log = logging.getLogger("certpilot.scanner.openbao")

SOURCE = "openbao"
DEFAULT_MAX_SECRETS = 100_000
DEFAULT_CONCURRENCY = 16
MAX_CONCURRENCY = 256

_MAX_FIELD_CHARS = 4 * 1024 * 1024
_MIN_BASE64_CHARS = 128  # the smallest certificates are ~300 bytes of DER
_RATE_LIMIT_RETRIES = 3
_MAX_RETRY_WAIT = 10.0
_READ_BATCH = 8  # KV secrets per worker-thread job
_CACHE_SIZE = 1024  # CA certificates kept parsed during a scan
_RECONNECT_WAIT = 0.2
_MAX_MESSAGE = 300

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CERT_BEGIN = re.compile(r"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
# As certpilot.domain.x509's: the body has no "-", so a damaged END line cannot swallow the
# next block.
_PEM_CERT_BLOCK = re.compile(
    r"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----[^-]*"
    r"-----END (?:X509 |TRUSTED )?CERTIFICATE-----"
)
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = {c: "?" for c in (*range(32), 127)}

# Problem code of a whole-source failure, by OpenBaoError.reason; anything else: unreadable.
_SOURCE_CODES: Mapping[str, ProblemCode] = MappingProxyType(
    {
        UNREACHABLE: ProblemCode.CONNECTION_REFUSED,
        TIMEOUT: ProblemCode.TIMEOUT,
        TLS: ProblemCode.TLS_ERROR,
        DNS: ProblemCode.DNS_ERROR,
    }
)


# ---------------------------------------------------------------------------------------------
# configuration


class _Invalid(ValueError):
    """A config value that cannot work; ``field`` names it (relative to the source)."""

    def __init__(self, field: str, expected: str, value: object) -> None:
        super().__init__(f"{field}: {expected}")
        self.field = field
        self.expected = expected
        self.value = value


def _check_mount_path(where: str, value: str, what: str = "a mount path") -> None:
    if not value or value != value.strip("/ ") or "//" in value:
        raise _Invalid(where, f"{what} without leading or trailing '/' (e.g. pki)", value)


@dataclass(frozen=True, slots=True)
class KVPrefix:
    """A KV v2 mount and a path under it: ``""`` is the whole mount, ``"tls/"`` (trailing
    ``/``) a folder read recursively, ``"tls/www"`` one secret."""

    mount: str
    path: str = ""

    @property
    def folder(self) -> bool:
        return self.path == "" or self.path.endswith("/")

    def __str__(self) -> str:
        return f"{self.mount}/{self.path}"

    @classmethod
    def parse(cls, item: object, where: str) -> KVPrefix:
        """``"mount/path/"`` (the first segment is the mount) or ``{mount, path}``."""
        if isinstance(item, str):
            text = item.strip()
            if not text or text.startswith("/") or "//" in text:
                raise _Invalid(where, "mount/path/ (e.g. secret/tls/)", item)
            mount, _, path = text.partition("/")
            return cls(mount, path)
        if isinstance(item, Mapping) and "mount" in item and set(item) <= {"mount", "path"}:
            m, p = item.get("mount"), item.get("path", "")
            if isinstance(m, str) and isinstance(p, str):
                _check_mount_path(f"{where}.mount", m)
                if p.startswith("/") or "//" in p:
                    raise _Invalid(f"{where}.path", "a path under the mount (e.g. tls/)", p)
                return cls(m, p)
        raise _Invalid(where, "mount/path/ or {mount, path}", item)


@dataclass(frozen=True, slots=True)
class OpenBaoSource:
    """One OpenBao server to scan (``targets.openbao[]`` in the config).

    ``name`` identifies the server in refs (``openbao://<name>/...``) and in the target name
    (``openbao:<name>``): letters, digits, ``.``, ``_``, ``-``. ``url`` is its API address
    (``https://bao.example:8200``), ``namespace`` its namespace (``X-Vault-Namespace``),
    ``ca_file`` the CA bundle that verifies its HTTPS certificate (default: the system's),
    ``timeout`` the seconds each HTTP call may take.

    Authentication: AppRole when ``approle_role_id_env`` and ``approle_secret_id_env`` (names
    of environment variables) are set, at ``auth/<approle_mount>``; otherwise the token in
    ``token_file`` or ``$token_env``. Secrets never appear in the config, only where to find
    them.

    ``kv`` lists KV v2 prefixes (:class:`KVPrefix`), ``pki`` PKI mounts; at least one is
    needed. ``labels`` are added to every observation (``owner: platform``). ``max_secrets``
    bounds the items read per scan, ``concurrency`` the HTTP calls in flight (worker threads).
    """

    name: str
    url: str
    kv: tuple[KVPrefix, ...] = ()
    pki: tuple[str, ...] = ()
    namespace: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    approle_role_id_env: str | None = None
    approle_secret_id_env: str | None = None
    approle_mount: str = "approle"
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)
    max_secrets: int = DEFAULT_MAX_SECRETS
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        """Raises ``ValueError`` (an ``_Invalid`` naming the field) for values that cannot
        work."""
        if not _NAME.fullmatch(self.name):
            raise _Invalid(
                "name", "letters, digits, '.', '_' or '-' (it appears in refs)", self.name
            )
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise _Invalid("url", "an http(s) URL (e.g. https://bao.example:8200)", self.url)
        if parsed.username or parsed.password:
            raise _Invalid("url", "a URL without credentials (use token_env or token_file)", "...")
        if self.namespace is not None and not self.namespace.strip("/ "):
            raise _Invalid("namespace", "a namespace path (e.g. team-a/)", self.namespace)
        if not self.timeout > 0:
            raise _Invalid("timeout", "a positive number of seconds", self.timeout)
        if not _ENV_NAME.fullmatch(self.token_env):
            raise _Invalid("token_env", "an environment variable name", self.token_env)
        approle = (self.approle_role_id_env, self.approle_secret_id_env)
        for key, value in zip(
            ("approle_role_id_env", "approle_secret_id_env"), approle, strict=True
        ):
            if value is not None and not _ENV_NAME.fullmatch(value):
                raise _Invalid(key, "an environment variable name", value)
        if (approle[0] is None) != (approle[1] is None):
            missing = "approle_secret_id_env" if approle[1] is None else "approle_role_id_env"
            raise _Invalid(missing, "set with the other approle_*_env (AppRole needs both)", None)
        if approle[0] is not None and self.token_file is not None:
            raise _Invalid(
                "token_file", "not set together with AppRole (approle_*_env)", str(self.token_file)
            )
        _check_mount_path("approle_mount", self.approle_mount)
        for i, mount in enumerate(self.pki):
            _check_mount_path(f"pki[{i}]", mount)
        if not self.kv and not self.pki:
            raise _Invalid("kv", "at least one KV prefix or PKI mount (kv, pki)", [])
        if len(set(self.kv)) != len(self.kv):
            raise _Invalid("kv", "each prefix once", [str(p) for p in self.kv])
        if len(set(self.pki)) != len(self.pki):
            raise _Invalid("pki", "each mount once", list(self.pki))
        if self.max_secrets < 1:
            raise _Invalid("max_secrets", "a positive integer", self.max_secrets)
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise _Invalid(
                "concurrency", f"an integer from 1 to {MAX_CONCURRENCY}", self.concurrency
            )

    @property
    def ref(self) -> str:
        """The source's own ref: where whole-source failures are reported."""
        return f"openbao://{self.name}"

    @property
    def target(self) -> str:
        return f"openbao:{self.name}"

    @property
    def approle(self) -> bool:
        return self.approle_role_id_env is not None

    @property
    def connection(self) -> Connection:
        return Connection(
            url=self.url,
            token_env=self.token_env,
            token_file=self.token_file,
            namespace=self.namespace,
            ca_file=self.ca_file,
            timeout=self.timeout,
        )

    @classmethod
    def from_mapping(
        cls, data: object, *, source: str = "config", field: str = "targets.openbao"
    ) -> OpenBaoSource:
        """An :class:`OpenBaoSource` from YAML-shaped data. :class:`ConfigError` names
        ``source`` (the file), the exact field (``<field>.kv[2]``) and what was expected."""
        if not isinstance(data, Mapping):
            raise ConfigError(source, field, "a mapping (name, url, kv, pki, ...)", data)
        known = sorted(_PARSERS)
        for key in data:
            if key not in _PARSERS:
                raise ConfigError(source, f"{field}.{key}", f"one of {', '.join(known)}", key)
        for key in ("name", "url"):
            if key not in data:
                raise ConfigError(source, f"{field}.{key}", "a value (required)", has_value=False)
        try:
            kwargs = {key: _PARSERS[key](value, key) for key, value in data.items()}
            return cls(**kwargs)
        except _Invalid as e:
            raise ConfigError(source, f"{field}.{e.field}", e.expected, e.value) from None


def _str(value: object, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Invalid(where, "a non-empty string", value)


def _opt_str(value: object, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _path(value: object, where: str) -> Path | None:
    if value is None:
        return None
    if isinstance(value, str | Path) and str(value):
        return Path(value).expanduser()
    raise _Invalid(where, "a path", value)


def _number(value: object, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Invalid(where, "a number", value)


def _int(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Invalid(where, "an integer", value)


def _labels(value: object, where: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(where, "a mapping of strings to strings", value)
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Invalid(where, "label names that are non-empty strings", k)
        if not isinstance(v, str):
            raise _Invalid(f"{where}.{k}", "a string", v)
    return MappingProxyType(dict(value))


def _seq(value: object, where: str) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise _Invalid(where, "a list", value)


def _kv(value: object, where: str) -> tuple[KVPrefix, ...]:
    return tuple(KVPrefix.parse(item, f"{where}[{i}]") for i, item in enumerate(_seq(value, where)))


def _pki(value: object, where: str) -> tuple[str, ...]:
    return tuple(_str(item, f"{where}[{i}]") for i, item in enumerate(_seq(value, where)))


_PARSERS: Mapping[str, Callable[[object, str], Any]] = MappingProxyType(
    {
        "name": _str,
        "url": _str,
        "kv": _kv,
        "pki": _pki,
        "namespace": _opt_str,
        "ca_file": _path,
        "timeout": _number,
        "token_env": _str,
        "token_file": _path,
        "approle_role_id_env": _opt_str,
        "approle_secret_id_env": _opt_str,
        "approle_mount": _str,
        "labels": _labels,
        "max_secrets": _int,
        "concurrency": _int,
    }
)


# ---------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, slots=True)
class OpenBaoScan:
    """What one scan of one :class:`OpenBaoSource` found.

    ``observations`` sorted by ref (certificates, and failures as observations, see the module
    docstring). ``crl_next_update``: PKI mount -> its CRL's ``nextUpdate`` (absent when the CRL
    could not be read or has none; the reason is in ``errors``). ``errors``: one line each, for
    what is not an observation (a CRL that could not be read, the ``max_secrets`` bound, a
    whole-source failure). ``failure``: ``None`` when the server could be read, else the
    reason code of the whole-source failure (``unreachable``, ``timeout``, ``tls``, ``dns``,
    ``sealed``, ``unavailable``, ``auth``, ``permission_denied``, ...), also shown as the
    ``openbao://<name>`` observation. ``items_read``: secrets, certificates and issuers
    asked for (answered or refused), at most ``max_secrets``.
    """

    source: str
    observations: tuple[Observation, ...]
    crl_next_update: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))
    errors: tuple[str, ...] = ()
    failure: str | None = None
    truncated: bool = False
    items_read: int = 0
    duration_seconds: float = 0.0

    def stale_crls(self, now: datetime) -> list[str]:
        """PKI mounts whose CRL is past its ``nextUpdate`` at ``now``."""
        return sorted(m for m, t in self.crl_next_update.items() if t <= now)


# ---------------------------------------------------------------------------------------------
# scanning


async def scan_openbao(
    source: OpenBaoSource,
    clock: Clock,
    *,
    env: Mapping[str, str],
    policy: JudgePolicy = DEFAULT_POLICY,
) -> OpenBaoScan:
    """Scan ``source`` (see the module docstring). ``env`` supplies ``token_env`` and the
    AppRole variables (pass ``os.environ``). Never raises for server-side trouble; raises for
    bugs only."""
    started = time.perf_counter()
    now = clock.now()
    try:
        token = await asyncio.to_thread(_authenticate, source, env)
    except OpenBaoError as e:
        return _failed(source, now, e, [], time.perf_counter() - started)
    try:
        return await _Scan(source, token, now, policy, started).run()
    finally:
        if source.approle:
            await asyncio.to_thread(_revoke_self, source.connection, token)
        del token


def _authenticate(source: OpenBaoSource, env: Mapping[str, str]) -> str:
    """The token this scan uses: AppRole login, or the configured token (worker thread)."""
    if source.approle_role_id_env is None or source.approle_secret_id_env is None:
        return source.connection.token(env)
    role_id = env.get(source.approle_role_id_env, "").strip()
    secret_id = env.get(source.approle_secret_id_env, "").strip()
    unset = [
        name
        for name, value in (
            (source.approle_role_id_env, role_id),
            (source.approle_secret_id_env, secret_id),
        )
        if not value
    ]
    if unset:
        raise OpenBaoError(
            f"AppRole: set the environment variable {' and '.join(unset)}", reason=AUTH
        )
    return login_approle(source.connection, role_id, secret_id, mount=source.approle_mount)


def _revoke_self(connection: Connection, token: str) -> None:
    """Best effort: an AppRole token is only good for one scan."""
    try:
        with connection.client(token=token) as client:
            client.auth.token.revoke_self()
    except Exception as e:
        if describe_failure(e) is None:
            raise
        log.debug("could not revoke the scan's AppRole token (it expires on its own)")


def _one_line(text: str) -> str:
    text = text.translate(_CONTROL)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def _field_ref(name: str) -> str:
    # "/" and "#" would make "#field/1" ambiguous; common names (tls.crt, ca_chain) unchanged.
    return urllib.parse.quote(name, safe="")


def _labels_for(source: OpenBaoSource, extra: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType({**source.labels, "store": "openbao", **extra})


def _failure_observation(
    source: OpenBaoSource,
    ref: str,
    now: datetime,
    failure: OpenBaoError,
    labels: Mapping[str, str],
    code: ProblemCode = ProblemCode.UNREADABLE,
    duration: float = 0.0,
) -> Observation:
    message = _one_line(f"{ref}: {failure.message}")
    return Observation(
        source=SOURCE,
        ref=ref,
        target=source.target,
        observed_at=now,
        problems=(Problem(code, message),),
        error=message,
        duration_seconds=duration,
        labels=labels,
    )


def _failed(
    source: OpenBaoSource,
    now: datetime,
    failure: OpenBaoError,
    observations: Iterable[Observation],
    duration: float,
    *,
    crl: Mapping[str, datetime] | None = None,
    errors: Iterable[str] = (),
    truncated: bool = False,
    items_read: int = 0,
) -> OpenBaoScan:
    """The result of a scan that failed as a whole: what was read before, and one observation
    for the source."""
    code = _SOURCE_CODES.get(failure.reason, ProblemCode.UNREADABLE)
    whole = _failure_observation(source, source.ref, now, failure, _labels_for(source, {}), code)
    log.warning("%s", whole.error)
    assert whole.error is not None
    return OpenBaoScan(
        source=source.name,
        observations=tuple(sorted([*observations, whole], key=lambda o: o.ref)),
        crl_next_update=MappingProxyType(dict(crl or {})),
        errors=(*errors, whole.error),
        failure=failure.reason,
        truncated=truncated,
        items_read=items_read,
        duration_seconds=duration,
    )


@dataclass(slots=True)
class _Job:
    """One piece of work: ``run(reader)`` in a worker thread, then ``done(result)`` or
    ``fail(error)`` on the event loop (which may queue more jobs). ``items``: the secrets,
    certificates or issuers it reads (for :attr:`OpenBaoScan.items_read`)."""

    run: Callable[[_Reader], Any]
    done: Callable[[Any], None]
    fail: Callable[[OpenBaoError], None]
    items: int = 0


class _Reader:
    """One worker thread's connection: ``GET`` and ``LIST`` under ``/v1/``, failures as
    :class:`OpenBaoError`. Every call is a read, so retrying is safe: HTTP 429 after its
    ``Retry-After`` (up to :data:`_RATE_LIMIT_RETRIES` times), a dropped connection once (a
    kept-alive connection the server closed while idle looks just like that)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def close(self) -> None:
        self.client.adapter.close()

    def get(self, api_path: str) -> Any:
        """The response (JSON as a dict, anything else as the HTTP response); ``None`` for a
        404 (a secret deleted or a certificate tidied since it was listed)."""

        def call() -> Any:
            try:
                return self.client.adapter.get(f"/v1/{_quote(api_path)}")
            except InvalidPath:
                return None

        return self._retrying(call)

    def list(self, api_path: str) -> tuple[list[str], dict[str, Any]]:
        """``LIST``: the keys (``[]`` when there are none) and ``key_info``. A 404 with an
        error text (no such mount or route) is :class:`OpenBaoError` ``not_found``; one
        without is OpenBao's way of saying "empty"."""

        def call() -> Any:
            try:
                return self.client.adapter.list(f"/v1/{_quote(api_path)}")
            except InvalidPath as e:
                if vault_detail(e):
                    raise
                return None

        response = self._retrying(call)
        if response is None:
            return [], {}
        data = _data(response)
        keys = data.get("keys") or []
        info = data.get("key_info") or {}
        if not isinstance(keys, list) or not isinstance(info, dict):
            raise OpenBaoError(f"unexpected LIST response for {api_path}")
        return [k for k in keys if isinstance(k, str) and k], info

    def _retrying(self, call: Callable[[], Any]) -> Any:
        limited = dropped = 0
        while True:
            try:
                return call()
            except Exception as e:
                failure = describe_failure(e)
                if failure is None:
                    raise  # a bug, not OpenBao
                if failure.reason == RATE_LIMITED and limited < _RATE_LIMIT_RETRIES:
                    limited += 1
                    time.sleep(min(failure.retry_after or 1.0, _MAX_RETRY_WAIT))
                    continue
                if failure.reason == UNREACHABLE and not dropped:
                    dropped += 1
                    time.sleep(_RECONNECT_WAIT)
                    continue
                raise failure from None


class _Scan:
    """The state of one scan: a queue of jobs, ``concurrency`` workers on the event loop, as
    many threads with one :class:`_Reader` (one hvac client, one HTTP session) each."""

    def __init__(
        self,
        source: OpenBaoSource,
        token: str,
        now: datetime,
        policy: JudgePolicy,
        started: float,
    ) -> None:
        self.source = source
        self.now = now
        self.policy = policy
        self.started = started
        self._token = token
        self._connection = source.connection
        self._local = threading.local()
        self._readers: list[_Reader] = []
        self._readers_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=source.concurrency, thread_name_prefix=f"openbao-{source.name}"
        )
        self._parsed = _ParseCache()
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.observations: list[Observation] = []
        self.roots = 0
        self.root_failures: list[tuple[OpenBaoError, Observation]] = []
        self.errors: list[str] = []
        self.fatal: OpenBaoError | None = None
        self.bug: BaseException | None = None
        self.seen: set[tuple[str, str]] = set()  # KV (mount, folder or secret) scheduled
        self.reads = 0  # items scheduled, bounded by max_secrets
        self.items_read = 0
        self.truncated = False
        self.crl: dict[str, datetime] = {}
        # PKI certificates whose chain is completed with their issuer's once all is read:
        # (mount, subject key id or subject DN) -> the issuer's chain, issuer first.
        self.issuer_chains: dict[tuple[str, str], tuple[CertInfo, ...]] = {}
        self.pending_chains: list[tuple[int, str]] = []

    # -- driving --------------------------------------------------------------------------

    async def run(self) -> OpenBaoScan:
        for prefix in self.source.kv:
            self.roots += 1
            if prefix.folder:
                self._list_kv(prefix.mount, prefix.path, root=True)
            else:
                self._read_kv(prefix.mount, prefix.path)
        for mount in self.source.pki:
            self.roots += 1
            self._list_issuers(mount)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.source.concurrency)]
        try:
            await self.queue.join()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._close_readers()
            self._token = ""
        if self.bug is not None:
            raise self.bug
        return self._result()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.get()
            try:
                if self.fatal is None and self.bug is None:
                    try:
                        result = await loop.run_in_executor(self._pool, self._call, job.run)
                    except OpenBaoError as e:
                        if e.fatal:
                            self.fatal = self.fatal or e
                        else:
                            job.fail(e)
                    else:
                        self.items_read += job.items
                        job.done(result)
            except Exception as e:  # a bug: stop the scan, re-raised by run()
                self.bug = self.bug or e
            finally:
                self.queue.task_done()

    def _put(
        self,
        run: Callable[[_Reader], Any],
        done: Callable[[Any], None],
        fail: Callable[[OpenBaoError], None],
        *,
        items: int = 0,
    ) -> None:
        self.queue.put_nowait(_Job(run, done, fail, items))

    def _budget(self) -> bool:
        """Count one more item to read; False (and truncated) once ``max_secrets`` is reached."""
        if self.reads >= self.source.max_secrets:
            if not self.truncated:
                self.truncated = True
                msg = (
                    f"{self.source.ref}: max_secrets ({self.source.max_secrets}) reached: "
                    "the rest was not read"
                )
                self.errors.append(msg)
                log.warning("%s", msg)
            return False
        self.reads += 1
        return True

    # -- worker threads -------------------------------------------------------------------

    def _reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = _Reader(self._connection.open_client(self._token))
            self._local.reader = reader
            with self._readers_lock:
                self._readers.append(reader)
        return reader

    def _close_readers(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()

    def _call(self, fn: Callable[[_Reader], Any]) -> Any:
        """``fn(reader)``; an ``hvac`` error that escapes it becomes :class:`OpenBaoError`."""
        try:
            return fn(self._reader())
        except Exception as e:
            failure = describe_failure(e)
            if failure is None:
                raise  # a bug, not OpenBao
            raise failure from None

    # -- KV v2 ----------------------------------------------------------------------------

    def _kv_ref(self, mount: str, path: str) -> str:
        return f"{self.source.ref}/{_quote(mount)}/{_quote(path)}"

    def _kv_labels(self, mount: str, path: str) -> Mapping[str, str]:
        return _labels_for(self.source, {"openbao_path": f"{mount}/{path}"})

    def _item_failed(
        self, ref: str, labels: Mapping[str, str], *, root: bool
    ) -> Callable[[OpenBaoError], None]:
        def fail(e: OpenBaoError) -> None:
            obs = _failure_observation(self.source, ref, self.now, e, labels)
            if root:
                self.root_failures.append((e, obs))
            else:
                self.observations.append(obs)

        return fail

    def _list_kv(self, mount: str, folder: str, *, root: bool = False) -> None:
        if (mount, folder) in self.seen:
            return  # overlapping prefixes: listed once
        self.seen.add((mount, folder))

        def run(reader: _Reader) -> list[str]:
            return reader.list(f"{mount}/metadata/{folder}")[0]

        def done(keys: list[str]) -> None:
            batch: list[str] = []
            for key in sorted(keys):
                child = folder + key
                if key.endswith("/"):
                    self._list_kv(mount, child)
                elif (mount, child) not in self.seen and self._budget():
                    self.seen.add((mount, child))
                    batch.append(child)
                    if len(batch) == _READ_BATCH:
                        self._read_kv_batch(mount, batch)
                        batch = []
            if batch:
                self._read_kv_batch(mount, batch)

        fail = self._item_failed(
            self._kv_ref(mount, folder), self._kv_labels(mount, folder), root=root
        )
        self._put(run, done, fail)

    def _read_kv(self, mount: str, path: str) -> None:
        """A configured single secret (a root: refused, it may be the token's fault)."""
        if (mount, path) in self.seen or not self._budget():
            return
        self.seen.add((mount, path))
        source, now, policy, parsed = self.source, self.now, self.policy, self._parsed
        ref = self._kv_ref(mount, path)

        def run(reader: _Reader) -> list[Observation]:
            started = time.perf_counter()
            response = reader.get(f"{mount}/data/{path}")
            return _kv_observations(
                source, now, policy, parsed, mount, path, ref, response, started
            )

        fail = self._item_failed(ref, self._kv_labels(mount, path), root=True)
        self._put(run, self.observations.extend, fail, items=1)

    def _read_kv_batch(self, mount: str, paths: list[str]) -> None:
        """Secrets found by a listing, several per job: the event loop's share of the work
        (a future, a wake-up, a callback) is then paid once per batch, not per secret. A
        secret that cannot be read is an observation of its own; a failure of the server
        ends the batch (and the scan)."""
        source, now, policy, parsed = self.source, self.now, self.policy, self._parsed

        def run(reader: _Reader) -> list[Observation]:
            out: list[Observation] = []
            for path in paths:
                ref = self._kv_ref(mount, path)
                started = time.perf_counter()
                try:
                    response = reader.get(f"{mount}/data/{path}")
                except OpenBaoError as e:
                    if e.fatal:
                        raise
                    labels = self._kv_labels(mount, path)
                    out.append(_failure_observation(source, ref, now, e, labels))
                    continue
                out.extend(
                    _kv_observations(
                        source, now, policy, parsed, mount, path, ref, response, started
                    )
                )
            return out

        def fail(e: OpenBaoError) -> None:  # only an unexpected response: not per secret
            for path in paths:
                ref = self._kv_ref(mount, path)
                labels = self._kv_labels(mount, path)
                self.observations.append(_failure_observation(source, ref, now, e, labels))

        self._put(run, self.observations.extend, fail, items=len(paths))

    # -- PKI ------------------------------------------------------------------------------

    def _pki_ref(self, mount: str) -> str:
        return f"{self.source.ref}/{_quote(mount)}"

    def _list_issuers(self, mount: str) -> None:
        def run(reader: _Reader) -> tuple[list[str], dict[str, Any]]:
            return reader.list(f"{mount}/issuers")

        def done(result: tuple[list[str], dict[str, Any]]) -> None:
            ids, info = result
            issuer_serials: set[str] = set()
            for issuer_id in sorted(ids):
                serial = info.get(issuer_id, {}).get("serial_number")
                if isinstance(serial, str) and serial:
                    issuer_serials.add(_serial(serial))
                if self._budget():
                    self._read_issuer(mount, issuer_id)
            self._list_revoked(mount, frozenset(issuer_serials))
            self._read_crl(mount)

        labels = _labels_for(self.source, {"pki_mount": mount})
        self._put(run, done, self._item_failed(self._pki_ref(mount), labels, root=True))

    def _read_issuer(self, mount: str, issuer_id: str) -> None:
        source, now, policy, parsed = self.source, self.now, self.policy, self._parsed
        ref = f"{self._pki_ref(mount)}/issuer/{_quote(issuer_id)}"

        def run(reader: _Reader) -> Observation | None:
            started = time.perf_counter()
            response = reader.get(f"{mount}/issuer/{issuer_id}")
            if response is None:
                return None  # deleted since it was listed
            data = _data(response)
            pems = [data.get("certificate"), *(data.get("ca_chain") or [])]
            name = data.get("issuer_name")
            labels = {
                "pki_mount": mount,
                "pki_issuer": name if isinstance(name, str) and name else issuer_id,
            }
            revoked = "revoked by OpenBao (issuer)" if data.get("revoked") is True else None
            return _pki_observation(
                source, now, policy, parsed, ref, pems, labels, revoked, started
            )

        def done(obs: Observation | None) -> None:
            if obs is None:
                return
            self.observations.append(obs)
            if obs.leaf is not None:
                # OpenBao names a certificate's issuer_id only once it is revoked: find the
                # issuer by key identifier (RFC 5280 section 4.2.1.1), else by name.
                if obs.leaf.subject_key_id:
                    self.issuer_chains[(mount, obs.leaf.subject_key_id)] = obs.chain
                self.issuer_chains.setdefault((mount, obs.leaf.subject), obs.chain)

        labels = _labels_for(self.source, {"pki_mount": mount})
        self._put(run, done, self._item_failed(ref, labels, root=False), items=1)

    def _list_revoked(self, mount: str, issuer_serials: frozenset[str]) -> None:
        def run(reader: _Reader) -> list[str]:
            return reader.list(f"{mount}/certs/revoked")[0]

        def done(serials: list[str]) -> None:
            self._list_certs(mount, issuer_serials, frozenset(_serial(s) for s in serials))

        def fail(e: OpenBaoError) -> None:
            # Each certificate's revocation_time still says it: go on without the list.
            self.errors.append(_one_line(f"{self._pki_ref(mount)}/certs/revoked: {e.message}"))
            self._list_certs(mount, issuer_serials, frozenset())

        self._put(run, done, fail)

    def _list_certs(
        self, mount: str, issuer_serials: frozenset[str], revoked: frozenset[str]
    ) -> None:
        def run(reader: _Reader) -> list[str]:
            return reader.list(f"{mount}/certs")[0]

        def done(serials: list[str]) -> None:
            for listed in sorted(serials):
                serial = _serial(listed)
                if serial in issuer_serials:
                    continue  # reported as the issuer
                if self._budget():
                    self._read_cert(mount, listed, serial, revoked)

        # LIST issuers needs no token; this is the mount's first authenticated call.
        labels = _labels_for(self.source, {"pki_mount": mount})
        self._put(run, done, self._item_failed(self._pki_ref(mount), labels, root=True))

    def _read_cert(self, mount: str, listed: str, serial: str, revoked: frozenset[str]) -> None:
        source, now, policy, parsed = self.source, self.now, self.policy, self._parsed
        ref = f"{self._pki_ref(mount)}/certs/{serial}"

        def run(reader: _Reader) -> Observation | None:
            started = time.perf_counter()
            response = reader.get(f"{mount}/cert/{listed}")
            if response is None:
                return None  # tidied away since it was listed
            data = _data(response)
            when = data.get("revocation_time")
            is_revoked = serial in revoked or (isinstance(when, int | float) and when > 0)
            reason = None
            if is_revoked:
                at = data.get("revocation_time_rfc3339")
                reason = f"revoked in OpenBao {mount}" + (
                    f" at {at}" if isinstance(at, str) and at else ""
                )
            labels = {"pki_mount": mount, "pki_state": "revoked" if is_revoked else "issued"}
            pems = [data.get("certificate")]
            return _pki_observation(source, now, policy, parsed, ref, pems, labels, reason, started)

        def done(obs: Observation | None) -> None:
            if obs is None:
                return
            if obs.leaf is not None:
                self.pending_chains.append((len(self.observations), mount))
            self.observations.append(obs)

        labels = _labels_for(self.source, {"pki_mount": mount, "pki_state": "issued"})
        self._put(run, done, self._item_failed(ref, labels, root=False), items=1)

    def _read_crl(self, mount: str) -> None:
        def run(reader: _Reader) -> datetime | None:
            response = reader.get(f"{mount}/crl")
            body = getattr(response, "content", None)
            if not isinstance(body, bytes):
                raise OpenBaoError("the CRL endpoint did not answer with a CRL")
            try:
                if body.lstrip().startswith(b"-----BEGIN"):
                    crl = x509.load_pem_x509_crl(body)
                else:
                    crl = x509.load_der_x509_crl(body)
            except ValueError as e:
                raise OpenBaoError(f"not a CRL: {_one_line(str(e))}") from None
            return crl.next_update_utc

        def done(next_update: datetime | None) -> None:
            if next_update is None:
                self.errors.append(f"{self._pki_ref(mount)}/crl: the CRL has no nextUpdate")
            else:
                self.crl[mount] = next_update

        def fail(e: OpenBaoError) -> None:
            self.errors.append(_one_line(f"{self._pki_ref(mount)}/crl: {e.message}"))

        self._put(run, done, fail)

    # -- result ---------------------------------------------------------------------------

    def _result(self) -> OpenBaoScan:
        for index, mount in self.pending_chains:
            obs = self.observations[index]
            leaf = obs.leaf
            if leaf is None:
                continue
            chain = self.issuer_chains.get((mount, leaf.authority_key_id or "")) or (
                self.issuer_chains.get((mount, leaf.issuer))
            )
            if chain:
                self.observations[index] = replace(obs, chain=_dedupe((leaf, *chain)))
        duration = time.perf_counter() - self.started
        common: dict[str, Any] = {
            "crl": self.crl,
            "truncated": self.truncated,
            "items_read": self.items_read,
        }
        if self.fatal is not None:
            found = [*self.observations, *(obs for _, obs in self.root_failures)]
            return _failed(
                self.source, self.now, self.fatal, found, duration, errors=self.errors, **common
            )
        if (
            self.root_failures
            and len(self.root_failures) == self.roots
            and all(e.reason in (PERMISSION_DENIED, AUTH) for e, _ in self.root_failures)
        ):
            # Refused on every configured prefix and mount: the token's problem, not a path's.
            # Keep what was read (public PKI endpoints), not the refusals that go with it.
            read = [o for o in self.observations if o.leaf is not None]
            first = self.root_failures[0][0]
            whole = OpenBaoError(
                f"{first.message} (on every configured prefix and mount)",
                reason=first.reason,
                status=first.status,
            )
            return _failed(
                self.source,
                self.now,
                whole,
                read,
                duration,
                errors=self.errors,
                **common,
            )
        observations = sorted(
            [*self.observations, *(obs for _, obs in self.root_failures)], key=lambda o: o.ref
        )
        log.info(
            "%s: %d items read, %d observations in %.1fs",
            self.source.ref,
            self.items_read,
            len(observations),
            duration,
        )
        return OpenBaoScan(
            source=self.source.name,
            observations=tuple(observations),
            crl_next_update=MappingProxyType(dict(self.crl)),
            errors=tuple(self.errors),
            truncated=self.truncated,
            items_read=self.items_read,
            duration_seconds=duration,
        )


# ---------------------------------------------------------------------------------------------
# OpenBao responses (worker threads)


def _serial(listed: str) -> str:
    try:
        return normalise_serial(listed)
    except ValueError:
        return listed.lower()


def _data(response: object) -> dict[str, Any]:
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, dict):
        raise OpenBaoError("unexpected response: no data")
    return data


class _ParseCache:
    """CA certificates by their PEM block, for one scan. A KV tree repeats the same
    intermediates in every secret's chain field (thousands of times) while its leaves are all
    different, so only CA certificates are kept: public, few, at most :data:`_CACHE_SIZE`.
    Shared by the worker threads (a dict read or write is atomic; a race parses twice)."""

    def __init__(self) -> None:
        self._ca: dict[str, ParsedCert] = {}

    def pem_bundle(self, text: str) -> list[ParsedCert | CertificateParseError]:
        """As :func:`certpilot.domain.x509.parse_pem_bundle`, with the cache."""
        out: list[ParsedCert | CertificateParseError] = []
        for match in _PEM_CERT_BLOCK.finditer(text):
            block = match.group(0)
            item: ParsedCert | CertificateParseError | None = self._ca.get(block)
            if item is None:
                found = parse_pem_bundle(block.encode("utf-8", "replace"))
                item = found[0] if found else CertificateParseError("<bytes>", "malformed PEM")
                if isinstance(item, ParsedCert) and item.info.is_ca and len(self._ca) < _CACHE_SIZE:
                    self._ca[block] = item
            out.append(item)
        return out


@dataclass(frozen=True, slots=True)
class _Bad:
    reason: str


def _certificates_in(value: str, cache: _ParseCache) -> list[ParsedCert | _Bad] | None:
    """The certificates a KV field holds, in order (a block that does not parse is a
    :class:`_Bad` in its place); ``None`` when the field is not about certificates at all (a
    key, a password, a JSON blob ...)."""
    if "-----BEGIN" in value:
        if not _CERT_BEGIN.search(value):
            return None  # keys, CSRs, parameters: nothing to report, nothing to keep
        if len(value) > _MAX_FIELD_CHARS:
            return [_Bad(f"field too large ({len(value)} characters)")]
        found = cache.pem_bundle(value)
        if not found:
            return [_Bad("no complete PEM certificate block (damaged END line?)")]
        return [x if isinstance(x, ParsedCert) else _Bad(x.message) for x in found]
    text = value.strip()
    if not _MIN_BASE64_CHARS <= len(text) <= _MAX_FIELD_CHARS or not _BASE64.fullmatch(text):
        return None
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError):
        return None
    if raw.startswith(b"-----BEGIN"):
        # base64 of a PEM bundle, as Kubernetes Secrets and External Secrets store it.
        inner = raw.decode("ascii", "replace")
        return _certificates_in(inner, cache)
    if raw[:1] != b"\x30":
        return None
    try:
        return [parse_der(raw)]
    except CertificateParseError:
        return None  # base64 of some other DER structure (a key): not ours to report


def _kv_observations(
    source: OpenBaoSource,
    now: datetime,
    policy: JudgePolicy,
    cache: _ParseCache,
    mount: str,
    path: str,
    ref: str,
    response: object,
    started: float,
) -> list[Observation]:
    body = response.get("data") if isinstance(response, dict) else None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(data, dict):
        return []  # latest version deleted or destroyed
    meta = body.get("metadata")
    custom = meta.get("custom_metadata") if isinstance(meta, dict) else None
    extra = {"openbao_path": f"{mount}/{path}"}
    if isinstance(custom, dict):
        for key in ("owner", "team"):
            value = custom.get(key)
            if isinstance(value, str) and value:
                extra[key] = value
    labels = _labels_for(source, extra)
    found: list[tuple[str, list[ParsedCert | _Bad]]] = []
    for name in sorted(k for k in data if isinstance(k, str)):
        value = data[name]
        if isinstance(value, str):
            entries = _certificates_in(value, cache)
            if entries:
                found.append((name, entries))
    del data, body  # the secret's values (keys among them) go no further
    duration = time.perf_counter() - started
    out: list[Observation] = []
    for name, entries in found:
        chain = tuple(e.info for e in entries if isinstance(e, ParsedCert))
        for index, entry in enumerate(entries):
            at = f"{ref}#{_field_ref(name)}" + (f"/{index}" if index else "")
            if isinstance(entry, ParsedCert):
                out.append(
                    Observation(
                        source=SOURCE,
                        ref=at,
                        target=source.target,
                        observed_at=now,
                        problems=tuple(judge_stored(entry, now, policy)),
                        leaf=entry.info,
                        chain=chain,
                        duration_seconds=duration,
                        labels=labels,
                    )
                )
            else:
                message = _one_line(f"{at}: {entry.reason}")
                out.append(
                    Observation(
                        source=SOURCE,
                        ref=at,
                        target=source.target,
                        observed_at=now,
                        problems=(Problem(ProblemCode.MALFORMED, message),),
                        error=message,
                        duration_seconds=duration,
                        labels=labels,
                    )
                )
    return out


def _pki_observation(
    source: OpenBaoSource,
    now: datetime,
    policy: JudgePolicy,
    cache: _ParseCache,
    ref: str,
    pems: list[object],
    extra: Mapping[str, str],
    revoked: str | None,
    started: float,
) -> Observation:
    """The observation of a PKI certificate or issuer: the first of ``pems`` judged at rest,
    the others its chain; ``revoked`` (the reason) adds ``revoked``."""
    text = "\n".join(p for p in pems if isinstance(p, str))
    parsed = [p for p in cache.pem_bundle(text) if isinstance(p, ParsedCert)]
    labels = _labels_for(source, extra)
    duration = time.perf_counter() - started
    if not parsed or not isinstance(pems[0], str):
        message = _one_line(f"{ref}: OpenBao returned no readable certificate")
        return Observation(
            source=SOURCE,
            ref=ref,
            target=source.target,
            observed_at=now,
            problems=(Problem(ProblemCode.MALFORMED, message),),
            error=message,
            duration_seconds=duration,
            labels=labels,
        )
    leaf = parsed[0]
    problems = judge_stored(leaf, now, policy)
    if revoked is not None:
        problems.append(Problem(ProblemCode.REVOKED, revoked))
    return Observation(
        source=SOURCE,
        ref=ref,
        target=source.target,
        observed_at=now,
        problems=tuple(problems),
        leaf=leaf.info,
        chain=_dedupe(tuple(p.info for p in parsed)),
        duration_seconds=duration,
        labels=labels,
    )


def _dedupe(chain: tuple[CertInfo, ...]) -> tuple[CertInfo, ...]:
    seen: set[str] = set()
    out: list[CertInfo] = []
    for info in chain:
        if info.fingerprint_sha256 not in seen:
            seen.add(info.fingerprint_sha256)
            out.append(info)
    return tuple(out)
