"""OpenBao (or HashiCorp Vault) PKI secrets engine as an :class:`~certpilot.domain.remedy.Issuer`.

The key pair is generated here and only a CSR is sent, to ``<mount>/sign/<role>``: the private
key never leaves certpilot, and OpenBao's role still decides which names and lifetimes are
allowed. Revocation is ``<mount>/revoke`` followed by ``<mount>/crl/rotate``; the new CRL can
be written to ``crl_file``, the way the local CA publishes its own (RFC 5280 section 5).

``hvac`` is synchronous (``requests``): every call runs in a worker thread through
:func:`asyncio.to_thread`, with a client (and HTTP session) of its own, so nothing is shared
between threads. The token is read from ``token_file`` or the environment variable named by
``token_env`` at each operation (a rotated token is picked up without a restart); it is never
stored on an object, logged or put in an error message.

OpenBao specifics handled here:

- Serials come as ``aa:bb:...`` hex pairs with leading zero bytes; certpilot uses lowercase
  hex without leading zeros (``format(serial, "x")``): :func:`normalise_serial` and
  :func:`colon_serial` convert both ways.
- A role's ``max_ttl`` (or the CA's own ``notAfter``) can shorten the requested ``ttl``
  without an error: the issued lifetime is checked and a shortening is logged.
- ``hvac`` drops response headers when it raises; :class:`_Adapter` keeps ``Retry-After`` so a
  rate-limited call (HTTP 429 from a rate-limit quota) reports when to come back.
- OpenBao has no ARI and its revoke endpoint takes no reason code (RFC 5280 section 5.3.1):
  the reason is only logged.

The connection part (:class:`Connection`, :func:`describe_failure`) is shared with
:mod:`remediator.targets.openbao_kv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hvac import Client, adapters, exceptions  # type: ignore[import-untyped]

from certpilot.domain.clock import Clock
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from remediator.issuers._common import (
    PrivateKey,
    config_from_mapping,
    describe,
    generate_key,
    key_to_pem,
    load_pem_chain,
    one_line,
    write_public,
)

log = logging.getLogger("certpilot.remediator.openbao_pki")

DEFAULT_TOKEN_ENV = "BAO_TOKEN"  # noqa: S105 (a variable name, not a secret)

_P = ParamSpec("_P")
_T = TypeVar("_T")


# -- connection (shared with remediator.targets.openbao_kv) -------------------------------------


class OpenBaoCallError(Exception):
    """An OpenBao call failed. ``message`` is one line without secrets; ``status`` is the HTTP
    status when the server answered; ``retry_after`` the seconds it asked to wait (429/503)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Connection:
    """Where OpenBao is and how to authenticate: the part of the config both OpenBao adapters
    share. Holds the *name* of the token's environment variable (or its file), never a token.
    """

    url: str
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    namespace: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0

    def token(self) -> str:
        """The token, from ``token_file`` when set, else from ``$token_env``;
        :class:`OpenBaoCallError` (naming where it looked, not what it found) otherwise."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise OpenBaoCallError(
                    f"cannot read token_file {self.token_file}: {e.strerror or e}"
                ) from None
            if not token:
                raise OpenBaoCallError(f"token_file {self.token_file} is empty")
            return token
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise OpenBaoCallError(
                f"no OpenBao token: set the environment variable {self.token_env} "
                "(token_env) or token_file"
            )
        return token

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """An ``hvac.Client`` with its own HTTP session, closed afterwards (one per operation:
        ``requests`` sessions are not meant to be shared between threads)."""
        session = requests.Session()
        # Set on the session because hvac prefers the session's value over its verify
        # argument; a ca_file set here wins over VAULT_CACERT and REQUESTS_CA_BUNDLE.
        session.verify = str(self.ca_file) if self.ca_file is not None else True
        # Loopback needs no proxy; an HTTPS_PROXY without NO_PROXY would otherwise catch it.
        host = urllib.parse.urlparse(self.url).hostname or ""
        session.trust_env = not _is_loopback(host)
        try:
            # The token argument is always given: hvac falls back to VAULT_TOKEN and
            # ~/.vault-token when it is None, which is not what the config says.
            yield Client(
                url=self.url,
                token=self.token(),
                namespace=self.namespace,
                timeout=self.timeout,
                session=session,
                adapter=_Adapter,
            )
        finally:
            session.close()

    def check(self) -> None:
        """``ValueError`` for a URL or timeout that cannot work (config validation)."""
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        if parsed.username or parsed.password:
            raise ValueError("url must not carry credentials (use token_env or token_file)")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self.token_env:
            raise ValueError("token_env must name an environment variable")


class _Adapter(adapters.JSONAdapter):  # type: ignore[misc]
    """hvac's JSON adapter, keeping ``Retry-After`` on the exception it raises (hvac builds its
    exceptions from the status and body only)."""

    def _raise_for_error(self, method: str, url: str, response: requests.Response) -> None:
        try:
            super()._raise_for_error(method, url, response)
        except exceptions.VaultError as e:
            e.certpilot_retry_after = response.headers.get("Retry-After")
            e.certpilot_status = response.status_code
            raise


def describe_failure(e: BaseException, *, now: datetime | None = None) -> OpenBaoCallError | None:
    """One :class:`OpenBaoCallError` for a failed ``hvac``/``requests`` call; ``None`` for any
    other exception (a bug: let it propagate). Messages carry the server's error text, never
    the request headers (where the token is). ``now`` turns an HTTP-date ``Retry-After`` into
    seconds (OpenBao itself sends seconds)."""
    if isinstance(e, OpenBaoCallError):
        return e
    if isinstance(e, exceptions.VaultError):
        status: int | None = getattr(e, "certpilot_status", None)
        detail = _vault_detail(e)
        retry_after = parse_retry_after(getattr(e, "certpilot_retry_after", None), now)
        if isinstance(e, exceptions.Forbidden | exceptions.Unauthorized):
            what = "permission denied (token)"
            if detail and detail != "permission denied":
                what = f"{what}: {detail}"
            return OpenBaoCallError(what, status=status)
        if isinstance(e, exceptions.RateLimitExceeded):
            after = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
            return OpenBaoCallError(
                f"rate limited (HTTP 429): {detail}{after}", status=429, retry_after=retry_after
            )
        if isinstance(e, exceptions.VaultDown):
            if "sealed" in detail.lower():
                return OpenBaoCallError(
                    "OpenBao is sealed (HTTP 503)", status=503, retry_after=retry_after
                )
            return OpenBaoCallError(
                f"OpenBao unavailable (HTTP 503): {detail}", status=503, retry_after=retry_after
            )
        if isinstance(e, exceptions.InvalidPath):
            return OpenBaoCallError(f"not found (HTTP 404): {detail or 'no such path'}", status=404)
        if isinstance(e, exceptions.InvalidRequest):
            return OpenBaoCallError(f"refused (HTTP 400): {detail}", status=400)
        return OpenBaoCallError(
            f"{type(e).__name__} (HTTP {status or '?'}): {detail}", status=status
        )
    if isinstance(e, requests.exceptions.SSLError):
        return OpenBaoCallError(f"TLS error: {_root_cause(e)}")
    if isinstance(e, requests.exceptions.Timeout):
        return OpenBaoCallError("unreachable: timed out")
    if isinstance(e, requests.exceptions.ConnectionError):
        return OpenBaoCallError(f"unreachable: {_root_cause(e)}")
    if isinstance(e, requests.exceptions.RequestException):
        return OpenBaoCallError(f"request failed: {type(e).__name__}: {one_line(e, 160)}")
    return None


def _vault_detail(e: Any) -> str:
    errors = getattr(e, "errors", None)
    if isinstance(errors, list) and errors:
        return one_line("; ".join(str(x) for x in errors))
    text = getattr(e, "text", None)
    return one_line(text) if isinstance(text, str) else ""


def parse_retry_after(value: str | None, now: datetime | None) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 section
    10.2.3, needs ``now``); ``None`` when absent or unparseable, never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    if now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _root_cause(e: BaseException) -> str:
    """ "connection refused", "certificate verify failed", ... from urllib3's nested reasons."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        if nxt is None and isinstance(getattr(cur, "reason", None), BaseException):
            nxt = cur.reason  # type: ignore[attr-defined]
        cur = nxt
    lowered = str(e).lower()
    for needle, short in (
        ("connection refused", "connection refused"),
        ("certificate verify failed", "certificate verify failed"),
        ("name or service not known", "name does not resolve"),
        ("timed out", "timed out"),
    ):
        if needle in lowered:
            return short
    return one_line(e, 160)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- serials ------------------------------------------------------------------------------------


def normalise_serial(serial: str) -> str:
    """OpenBao's ``08:fa:29:...`` -> ``8fa29...`` (lowercase hex, no leading zeros, as
    ``format(cert.serial_number, "x")``)."""
    return format(int(serial.replace(":", "").replace("-", ""), 16), "x")


def colon_serial(serial: int) -> str:
    """The form OpenBao's ``revoke`` and ``cert/<serial>`` want: the serial's big-endian bytes
    as lowercase hex pairs joined by ``:`` (Go's ``big.Int.Bytes()``, so no sign byte)."""
    digits = format(serial, "x")
    if len(digits) % 2:
        digits = "0" + digits
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


# -- configuration ------------------------------------------------------------------------------


def _check_mount_path(what: str, value: str) -> None:
    if not value or value != value.strip("/ ") or "//" in value:
        raise ValueError(f"{what} must be a path without leading or trailing '/', got {value!r}")


@dataclass(frozen=True, slots=True)
class OpenBaoPKIConfig:
    """One PKI mount and role.

    ``token_env`` names the environment variable holding the token (``token_file``, when set,
    is read instead); tokens are never written in the YAML. ``ca_file`` is the CA bundle that
    verifies OpenBao's HTTPS certificate (default: the system's). ``timeout`` bounds each HTTP
    call in seconds. ``crl_file``, when set, receives the CRL (PEM) after every revocation.
    The token's policy needs ``update`` on ``<mount>/sign/<role>``, ``<mount>/revoke`` and
    ``read`` on ``<mount>/crl/rotate``.
    """

    url: str
    role: str
    mount: str = "pki"
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    namespace: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    crl_file: Path | None = None

    def __post_init__(self) -> None:
        self.connection.check()
        _check_mount_path("mount", self.mount)
        if not self.role or "/" in self.role:
            raise ValueError(f"role must be a role name, got {self.role!r}")

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "openbao_pki issuer"
    ) -> OpenBaoPKIConfig:
        return config_from_mapping(cls, data, source=source)

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


# -- the issuer ---------------------------------------------------------------------------------


def _make_csr(key: PrivateKey, names: tuple[str, ...]) -> str:
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    builder = x509.CertificateSigningRequestBuilder().add_extension(
        x509.SubjectAlternativeName(sans), critical=False
    )
    if len(names[0]) <= 64:  # RFC 5280 ub-common-name
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _sign_parameters(request: IssueRequest) -> dict[str, Any]:
    """``sign/<role>`` parameters besides ``csr`` and ``common_name``. The names are sent
    explicitly too: a role with ``use_csr_sans=false`` ignores the CSR's SANs."""
    params: dict[str, Any] = {"format": "pem"}
    dns = [n for n in request.names if not _is_ip(n)]
    ips = [n for n in request.names if _is_ip(n)]
    if dns:
        params["alt_names"] = ",".join(dns)
    if ips:
        params["ip_sans"] = ",".join(ips)
    if request.validity_days is not None:
        params["ttl"] = f"{request.validity_days * 24}h"
    return params


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class OpenBaoPKIIssuer:
    """Issues by signing a locally made CSR with an OpenBao PKI role; revocation -> CRL.

    Every public method raises :class:`IssuerError` (one line, no token) for OpenBao-side
    failures: ``retry_after`` carries a 429's (or 503's) ``Retry-After``; an unreachable server
    leaves it ``None`` so the executor backs off on its own schedule.
    """

    def __init__(self, name: str, config: OpenBaoPKIConfig, *, clock: Clock) -> None:
        self.name = name
        self.config = config
        self.clock = clock

    def __repr__(self) -> str:
        c = self.config
        return f"OpenBaoPKIIssuer(name={self.name!r}, url={c.url!r}, role={c.mount}/{c.role})"

    # -- Issuer protocol ----------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        if not request.names:
            raise IssuerError(self.name, "nothing to issue: no names in the request")
        if request.validity_days is not None and request.validity_days < 1:
            raise IssuerError(self.name, f"validity_days must be >= 1, got {request.validity_days}")
        return await asyncio.to_thread(self._guard, self._issue_sync, request)

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        await asyncio.to_thread(self._guard, self._revoke_sync, chain_pem, reason)

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return None  # OpenBao has no ARI: renewal timing is policy's

    async def crl_pem(self) -> bytes:
        """The mount's current CRL (PEM)."""
        return await asyncio.to_thread(self._guard, self._crl_sync)

    # -- error mapping ------------------------------------------------------------------------

    def _guard(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except IssuerError:
            raise
        except Exception as e:
            failure = describe_failure(e, now=self.clock.now())
            if failure is None:
                raise
            raise IssuerError(self.name, failure.message, retry_after=failure.retry_after) from e

    # -- work (worker thread) ------------------------------------------------------------------

    def _issue_sync(self, request: IssueRequest) -> IssuedCertificate:
        try:
            key = generate_key(request.key_type)
        except ValueError as e:
            raise IssuerError(self.name, str(e)) from None
        csr = _make_csr(key, request.names)
        c = self.config
        with c.connection.client() as client:
            response = client.secrets.pki.sign_certificate(
                name=c.role,
                csr=csr,
                common_name=request.names[0],
                extra_params=_sign_parameters(request),
                mount_point=c.mount,
            )
        chain = self._chain(response)
        leaf = chain[0]
        if leaf.public_key() != key.public_key():
            raise IssuerError(self.name, "OpenBao returned a certificate for another key")
        issued = describe(chain, key_to_pem(key), self.name)
        if request.validity_days is not None:
            lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
            if lifetime < timedelta(days=request.validity_days):
                # The role's max_ttl (or the CA's notAfter) wins silently on OpenBao's side.
                log.warning(
                    "%s: asked for %d days, OpenBao issued until %s (role max_ttl or CA expiry)",
                    self.name,
                    request.validity_days,
                    leaf.not_valid_after_utc.isoformat(),
                )
        log.info(
            "%s: issued serial %s for %s (not after %s)",
            self.name,
            issued.serial,
            ",".join(request.names),
            issued.not_after.isoformat() if issued.not_after else "?",
        )
        return issued

    def _chain(self, response: Any) -> list[x509.Certificate]:
        """Leaf, then ``ca_chain`` (or ``issuing_ca``), each certificate once."""
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("certificate"), str):
            raise IssuerError(self.name, "unexpected sign response: no certificate")
        extra = data.get("ca_chain") or [data.get("issuing_ca") or ""]
        pems = [data["certificate"], *(p for p in extra if isinstance(p, str))]
        chain: list[x509.Certificate] = []
        seen: set[bytes] = set()
        try:
            for cert in load_pem_chain("\n".join(pems).encode()):
                der = cert.public_bytes(serialization.Encoding.DER)
                if der not in seen:
                    seen.add(der)
                    chain.append(cert)
        except ValueError as e:
            raise IssuerError(self.name, f"unexpected sign response: {one_line(e)}") from None
        return chain

    def _revoke_sync(self, chain_pem: bytes, reason: RevocationReason) -> None:
        try:
            leaf = load_pem_chain(chain_pem)[0]
        except ValueError as e:
            raise IssuerError(self.name, f"cannot revoke: {one_line(e)}") from None
        serial = format(leaf.serial_number, "x")
        c = self.config
        with c.connection.client() as client:
            try:
                client.secrets.pki.revoke_certificate(
                    colon_serial(leaf.serial_number), mount_point=c.mount
                )
            except exceptions.InvalidRequest as e:
                if "not found" in _vault_detail(e).lower():
                    raise IssuerError(
                        self.name, f"cannot revoke serial {serial}: not issued by {c.mount}/"
                    ) from None
                raise
            # Revoking rebuilds the CRL already (unless auto-rebuild is configured); rotating
            # makes the published CRL current either way.
            client.secrets.pki.rotate_crl(mount_point=c.mount)
            crl = self._read_crl(client) if c.crl_file is not None else None
        # OpenBao's revoke endpoint takes no reason code (CRL entries carry none): log it only.
        log.info(
            "%s: revoked serial %s (%s; not recorded by OpenBao)",
            self.name,
            serial,
            reason.name.lower(),
        )
        if crl is not None and c.crl_file is not None:
            c.crl_file.parent.mkdir(parents=True, exist_ok=True)
            write_public(c.crl_file, crl)
            log.info("%s: wrote CRL to %s", self.name, c.crl_file)

    def _crl_sync(self) -> bytes:
        with self.config.connection.client() as client:
            return self._read_crl(client)

    def _read_crl(self, client: Any) -> bytes:
        text = client.secrets.pki.read_crl(mount_point=self.config.mount)
        data = str(text).encode("ascii", "replace")
        try:
            x509.load_pem_x509_crl(data)
        except ValueError as e:
            raise IssuerError(self.name, f"unexpected CRL from OpenBao: {one_line(e)}") from None
        return data


def from_config(name: str, options: Mapping[str, Any], clock: Clock) -> OpenBaoPKIIssuer:
    """The ``openbao_pki`` entry of :data:`remediator.issuers.ISSUER_KINDS`."""
    return OpenBaoPKIIssuer(
        name, OpenBaoPKIConfig.from_mapping(options, source=f"issuers.{name}"), clock=clock
    )


__all__ = [
    "DEFAULT_TOKEN_ENV",
    "Connection",
    "OpenBaoCallError",
    "OpenBaoPKIConfig",
    "OpenBaoPKIIssuer",
    "colon_serial",
    "describe_failure",
    "from_config",
    "normalise_serial",
    "parse_retry_after",
]
