"""Talking to OpenBao (or HashiCorp Vault): connection, authentication and error mapping.

Shared by every room that reads or writes OpenBao: the OpenBao scanner
(:mod:`scanner.openbao`), the PKI issuer (:mod:`remediator.issuers.openbao_pki`) and the KV v2
deploy target (:mod:`remediator.targets.openbao_kv`). It knows nothing of either room: failures
are :class:`OpenBaoError` (one line, no secret, with ``reason``, ``status`` and
``retry_after``), which each adapter turns into its own error type or observation.

``hvac`` is synchronous (``requests``): callers run it in worker threads, one client (and HTTP
session) per thread, because ``requests`` sessions are not meant to be shared between threads.
The token is read from ``token_file`` or the environment variable named by ``token_env`` when a
client is made (a rotated token is picked up without a restart); it is never stored on an
object, logged or put in an error message.

``hvac`` is imported here only (import-linter enforces it): the adapters catch
:data:`InvalidPath` / :data:`InvalidRequest` and call :func:`describe_failure` for the rest.
``requests`` itself is not imported here (import-linter keeps it in the remediator room):
``hvac`` owns the HTTP session, and transport failures are classified by walking the
exception's causes down to the standard library's (``ssl.SSLError``, ``socket.gaierror``,
``ConnectionRefusedError``, ``TimeoutError``).

OpenBao specifics handled here:

- Serials come as ``aa:bb:...`` hex pairs with leading zero bytes; certpilot uses lowercase
  hex without leading zeros (``format(serial, "x")``): :func:`normalise_serial` and
  :func:`colon_serial` convert both ways.
- ``hvac`` drops response headers when it raises; :class:`_Adapter` keeps ``Retry-After`` so a
  rate-limited call (HTTP 429 from a rate-limit quota) reports when to come back.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hvac import Client, adapters, exceptions  # type: ignore[import-untyped]

from certpilot.domain.errors import CertpilotError

__all__ = [
    "DEFAULT_TOKEN_ENV",
    "FATAL_REASONS",
    "Connection",
    "InvalidPath",
    "InvalidRequest",
    "OpenBaoError",
    "colon_serial",
    "describe_failure",
    "is_loopback",
    "login_approle",
    "normalise_serial",
    "parse_retry_after",
    "vault_detail",
]

DEFAULT_TOKEN_ENV = "BAO_TOKEN"  # noqa: S105 (a variable name, not a secret)

# -- errors -------------------------------------------------------------------------------------

# Reasons (OpenBaoError.reason): short fixed codes, fit for a metric label.
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
TLS = "tls"
DNS = "dns"
SEALED = "sealed"
UNAVAILABLE = "unavailable"
PERMISSION_DENIED = "permission_denied"
AUTH = "auth"  # no usable credentials on our side (token missing, AppRole login refused)
RATE_LIMITED = "rate_limited"
NOT_FOUND = "not_found"
REFUSED = "refused"  # HTTP 400: the server understood and said no
ERROR = "error"

FATAL_REASONS = frozenset({UNREACHABLE, TIMEOUT, TLS, DNS, SEALED, UNAVAILABLE})
"""Reasons that concern the server as a whole, not one path: nothing else will work either."""

# hvac's exception types for the answers adapters handle themselves (a 404 taken as "absent",
# a 400 they can explain): adapters catch these names and never import hvac (import-linter).
InvalidPath: type[Exception] = exceptions.InvalidPath
"""HTTP 404: no such path, secret or version (``vault_detail`` tells a missing route)."""
InvalidRequest: type[Exception] = exceptions.InvalidRequest
"""HTTP 400: the server understood and said no (``vault_detail`` says why)."""


class OpenBaoError(CertpilotError):
    """An OpenBao call failed.

    ``message`` is one line without secrets (the server's error text, never a request header
    or a secret value); ``reason`` one of the short codes above (``unreachable``, ``timeout``,
    ``tls``, ``dns``, ``sealed``, ``unavailable``, ``permission_denied``, ``auth``,
    ``rate_limited``, ``not_found``, ``refused``, ``error``); ``status`` the HTTP status when
    the server answered; ``retry_after`` the seconds it asked to wait (429/503).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = ERROR,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        self.retry_after = retry_after

    @property
    def fatal(self) -> bool:
        """True when the failure is the server's as a whole (down, sealed, TLS ...)."""
        return self.reason in FATAL_REASONS


# -- connection ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connection:
    """Where OpenBao is and how to authenticate with a token. Holds the *name* of the token's
    environment variable (or its file), never a token."""

    url: str
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    namespace: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0

    def token(self, env: Mapping[str, str] | None = None) -> str:
        """The token, from ``token_file`` when set, else from ``$token_env`` (looked up in
        ``env``, default ``os.environ``); :class:`OpenBaoError` (reason ``auth``, naming where
        it looked, not what it found) otherwise."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise OpenBaoError(
                    f"cannot read token_file {self.token_file}: {e.strerror or e}", reason=AUTH
                ) from None
            if not token:
                raise OpenBaoError(f"token_file {self.token_file} is empty", reason=AUTH)
            return token
        token = (os.environ if env is None else env).get(self.token_env, "").strip()
        if not token:
            raise OpenBaoError(
                f"no OpenBao token: set the environment variable {self.token_env} "
                "(token_env) or token_file",
                reason=AUTH,
            )
        return token

    def open_client(self, token: str | None) -> Any:
        """An ``hvac.Client`` with an HTTP session of its own; the caller closes it
        (``client.adapter.close()``). ``token`` ``None`` makes an unauthenticated client (for
        a login)."""
        # verify is always given: hvac falls back to VAULT_CACERT / VAULT_CAPATH when it is
        # None. A ca_file given here also wins over REQUESTS_CA_BUNDLE (requests only
        # consults the environment when verify is True).
        verify: bool | str = str(self.ca_file) if self.ca_file is not None else True
        client = Client(
            url=self.url,
            # Never None: hvac then falls back to VAULT_TOKEN and ~/.vault-token, which is not
            # what the config says. An empty token sends no header at all.
            token=token or "",
            namespace=self.namespace,
            timeout=self.timeout,
            verify=verify,
            adapter=_Adapter,
        )
        # Loopback needs no proxy; an HTTPS_PROXY without NO_PROXY would otherwise catch it.
        host = urllib.parse.urlparse(self.url).hostname or ""
        client.adapter.session.trust_env = not is_loopback(host)
        return client

    @contextlib.contextmanager
    def client(
        self, *, token: str | None = None, env: Mapping[str, str] | None = None
    ) -> Iterator[Any]:
        """An ``hvac.Client`` for one operation, closed afterwards. Authenticates with
        ``token`` when given, else with :meth:`token` (read now)."""
        client = self.open_client(token if token is not None else self.token(env))
        try:
            yield client
        finally:
            client.adapter.close()

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


def login_approle(
    connection: Connection, role_id: str, secret_id: str, *, mount: str = "approle"
) -> str:
    """Log in with AppRole (``auth/<mount>/login``) and return the client token. The token is
    only returned, never stored or logged; a refused login is :class:`OpenBaoError` with
    reason ``auth`` (wrong role or secret id) or the transport's reason. Synchronous."""
    client = connection.open_client(None)
    try:
        response = client.auth.approle.login(
            role_id=role_id, secret_id=secret_id, use_token=False, mount_point=mount
        )
    except exceptions.InvalidRequest as e:
        # OpenBao answers 400 "invalid role or secret ID" (never which one: no oracle).
        raise OpenBaoError(
            f"AppRole login at auth/{mount} refused: {vault_detail(e) or 'invalid credentials'}",
            reason=AUTH,
            status=400,
        ) from None
    except Exception as e:
        failure = describe_failure(e)
        if failure is None:
            raise
        if failure.reason in (PERMISSION_DENIED, NOT_FOUND):
            raise OpenBaoError(
                f"AppRole login at auth/{mount} failed: {failure.message}",
                reason=AUTH,
                status=failure.status,
            ) from None
        raise failure from None
    finally:
        client.adapter.close()
    auth = response.get("auth") if isinstance(response, dict) else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise OpenBaoError(f"AppRole login at auth/{mount}: no client token in the response")
    return token


class _Adapter(adapters.JSONAdapter):  # type: ignore[misc]
    """hvac's JSON adapter, keeping ``Retry-After`` on the exception it raises (hvac builds its
    exceptions from the status and body only)."""

    def _raise_for_error(self, method: str, url: str, response: Any) -> None:
        try:
            super()._raise_for_error(method, url, response)
        except exceptions.VaultError as e:
            e.certpilot_retry_after = response.headers.get("Retry-After")
            e.certpilot_status = response.status_code
            raise


def describe_failure(e: BaseException, *, now: datetime | None = None) -> OpenBaoError | None:
    """One :class:`OpenBaoError` for a failed ``hvac`` call; ``None`` for any other exception
    (a bug: let it propagate). Messages carry the server's error text, never the request
    headers (where the token is). ``now`` turns an HTTP-date ``Retry-After`` into seconds
    (OpenBao itself sends seconds)."""
    if isinstance(e, OpenBaoError):
        return e
    if isinstance(e, exceptions.VaultError):
        return _vault_failure(e, now)
    if isinstance(e, OSError):  # requests' and urllib3's exceptions are OSErrors
        return _transport_failure(e)
    return None


def _vault_failure(e: Any, now: datetime | None) -> OpenBaoError:
    status: int | None = getattr(e, "certpilot_status", None)
    detail = vault_detail(e)
    retry_after = parse_retry_after(getattr(e, "certpilot_retry_after", None), now)
    if isinstance(e, exceptions.Forbidden | exceptions.Unauthorized):
        what = "permission denied (token)"
        if detail and detail != "permission denied":
            what = f"{what}: {detail}"
        return OpenBaoError(what, reason=PERMISSION_DENIED, status=status)
    if isinstance(e, exceptions.RateLimitExceeded):
        after = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
        return OpenBaoError(
            f"rate limited (HTTP 429): {detail}{after}",
            reason=RATE_LIMITED,
            status=429,
            retry_after=retry_after,
        )
    if isinstance(e, exceptions.VaultDown):
        if "sealed" in detail.lower():
            return OpenBaoError(
                "OpenBao is sealed (HTTP 503)", reason=SEALED, status=503, retry_after=retry_after
            )
        return OpenBaoError(
            f"OpenBao unavailable (HTTP 503): {detail}",
            reason=UNAVAILABLE,
            status=503,
            retry_after=retry_after,
        )
    if isinstance(e, exceptions.InvalidPath):
        return OpenBaoError(
            f"not found (HTTP 404): {detail or 'no such path'}", reason=NOT_FOUND, status=404
        )
    if isinstance(e, exceptions.InvalidRequest):
        return OpenBaoError(f"refused (HTTP 400): {detail}", reason=REFUSED, status=400)
    return OpenBaoError(f"{type(e).__name__} (HTTP {status or '?'}): {detail}", status=status)


def _transport_failure(e: OSError) -> OpenBaoError:
    causes = _causes(e)
    from_http_stack = any(
        c.__module__.split(".")[0] in ("requests", "urllib3")
        for exc in causes
        for c in type(exc).__mro__
    )
    if not from_http_stack:
        # An OSError before any request was sent: a missing ca_file, for instance.
        return OpenBaoError(f"request failed: {_one_line(e, 160)}")
    if any(isinstance(c, ssl.SSLError) or type(c).__name__ == "SSLError" for c in causes):
        return OpenBaoError(f"TLS error: {_root_cause(causes)}", reason=TLS)
    if any(isinstance(c, socket.gaierror) for c in causes):
        return OpenBaoError("unreachable: name does not resolve", reason=DNS)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return OpenBaoError("unreachable: connection refused", reason=UNREACHABLE)
    if any(isinstance(c, TimeoutError) or "Timeout" in type(c).__name__ for c in causes):
        return OpenBaoError("unreachable: timed out", reason=TIMEOUT)
    if any(isinstance(c, ConnectionError) or type(c).__name__ == "ConnectionError" for c in causes):
        return OpenBaoError(f"unreachable: {_root_cause(causes)}", reason=UNREACHABLE)
    # An answer that could not be read (a broken chunked body, too many redirects ...).
    return OpenBaoError(f"request failed: {type(e).__name__}: {_one_line(e, 160)}")


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and what it wraps: ``__cause__``/``__context__``, and urllib3's ``reason`` and
    first argument (requests wraps urllib3's errors that way), in order, each once."""
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        reason = getattr(cur, "reason", None)
        if nxt is None and isinstance(reason, BaseException):
            nxt = reason
        cur = nxt
    return out


def _root_cause(causes: list[BaseException]) -> str:
    """ "certificate verify failed", "connection reset" ... from the innermost useful text."""
    lowered = " ".join(str(c) for c in causes).lower()
    for needle, short in (
        ("certificate verify failed", "certificate verify failed"),
        ("connection refused", "connection refused"),
        ("connection reset", "connection reset"),
        ("name or service not known", "name does not resolve"),
        ("timed out", "timed out"),
    ):
        if needle in lowered:
            return short
    return _one_line(causes[-1], 160)


def vault_detail(e: Any) -> str:
    """The server's error text of an ``hvac`` exception, on one line ("" when none)."""
    errors = getattr(e, "errors", None)
    if isinstance(errors, list):  # parsed: an empty list ({"errors":[]}) means no text
        return _one_line("; ".join(str(x) for x in errors))
    text = getattr(e, "text", None)
    return _one_line(text) if isinstance(text, str) else ""


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_line(text: object, limit: int = 300) -> str:
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


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
