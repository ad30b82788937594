"""Talking to a Kubernetes API server: configuration, client construction and error mapping.

Shared by every room that reads or writes Kubernetes objects: the Kubernetes scanner
(:mod:`scanner.k8s`) and the TLS Secret deploy target (:mod:`remediator.targets.k8s_secret`).
It knows nothing of either room: failures are :class:`KubeError` (one line, no secret, with
``reason`` and, when the API server answered, ``status``, ``phrase`` and ``detail``), which each
adapter turns into its own error type or observation. The adapters still use lightkube's
resource and model types (``Secret``, ``ObjectMeta`` ...) and the client's verbs; every
connection concern lives here.

Credentials (:meth:`Connection.load`): a kubeconfig file (``kubeconfig`` + ``context``, default
its ``current-context``) or, when none is configured, as in-cluster clients find them, looked
up in an ``env`` mapping (default ``os.environ``) so callers and tests control it:

1. the pod's service account, when ``KUBERNETES_SERVICE_HOST`` is set and
   ``<service_account_dir>/token`` exists. The token is given to lightkube as a *file*, so a
   rotated token is re-read when the API server answers 401;
2. else the first file of ``$KUBECONFIG``;
3. else ``$HOME/.kube/config``.

The client (:meth:`Connection.session`) verifies the API server with the CA the configuration
names (the service account's ``ca.crt`` in-cluster) and bounds every HTTP exchange with
``timeout``. It is built per operation by the callers, so an edited kubeconfig or a rotated
token is picked up, and closed afterwards.

Messages never contain a token or key: URLs lose their user-info, ``Bearer`` values are masked,
and the API server's own text is reduced to one line.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx2
import msgspec
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig, SingleConfig
from lightkube import ConfigError as KubeConfigError
from lightkube.config.models import Cluster, User

from certpilot.domain.errors import CertpilotError

__all__ = [
    "FATAL_REASONS",
    "SERVICE_ACCOUNT_DIR",
    "Connection",
    "KubeError",
    "Session",
    "describe_failure",
    "one_line",
    "safe_url",
]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where a pod's service account token, CA and namespace are mounted."""

# -- errors -------------------------------------------------------------------------------------

# Reasons (KubeError.reason): short fixed codes, fit for a metric label.
CONFIG = "config"  # the kubeconfig / service account cannot be used, or the client not built
CREDENTIALS = "credentials"  # credentials went away after loading (a deleted token file)
UNAUTHORIZED = "unauthorized"  # HTTP 401
FORBIDDEN = "forbidden"  # HTTP 403 (RBAC)
NOT_FOUND = "not_found"  # HTTP 404
CONFLICT = "conflict"  # HTTP 409 (AlreadyExists, a stale resourceVersion)
GONE = "gone"  # HTTP 410 (a resourceVersion too old to list or watch from)
TIMEOUT = "timeout"
REFUSED = "refused"  # connection refused
DNS = "dns"
TLS = "tls"
UNREACHABLE = "unreachable"  # any other transport failure (a reset, a broken stream)
BAD_RESPONSE = "bad_response"  # an answer that does not decode
ERROR = "error"  # any other HTTP status

FATAL_REASONS = frozenset(
    {CONFIG, CREDENTIALS, UNAUTHORIZED, TIMEOUT, REFUSED, DNS, TLS, UNREACHABLE}
)
"""Reasons that concern the API server or the credentials as a whole, not one object or kind:
nothing else will work either."""

_MAX_MESSAGE = 500  # room for the API server's own words after ours
_BEARER = re.compile(r"(?i)\b(bearer)\s+\S+")


def one_line(text: object, limit: int = _MAX_MESSAGE) -> str:
    """``text`` on one line (whitespace and control characters collapsed), ``Bearer`` values
    masked, at most ``limit`` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    flat = _BEARER.sub(r"\1 ***", flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class KubeError(CertpilotError):
    """A Kubernetes call (or loading the configuration) failed.

    ``message`` is one line without secrets; ``reason`` one of the short codes above;
    ``status`` the HTTP status when the API server answered, with ``phrase`` its reason
    (``Conflict``, ``Forbidden`` ...) and ``detail`` its ``Status`` message ("" when none):
    adapters use those to word a message naming the object and verb.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = ERROR,
        status: int | None = None,
        phrase: str = "",
        detail: str = "",
    ) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        self.phrase = phrase
        self.detail = one_line(detail)

    @property
    def fatal(self) -> bool:
        """True when the failure concerns the whole server or the credentials."""
        return self.reason in FATAL_REASONS


# -- connection ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connection:
    """Which cluster and credentials, and the client's settings. Holds paths and names, never
    a token.

    * ``kubeconfig`` + ``context``: a kubeconfig file and one of its contexts; ``None``: the
      environment (see the module docstring).
    * ``timeout`` bounds each HTTP exchange (connect, send, receive).
    * ``namespace``: the client's default namespace; ``field_manager`` names the writer in
      ``managedFields``.
    """

    kubeconfig: Path | None = None
    context: str | None = None
    timeout: float = 10.0
    namespace: str | None = None
    field_manager: str | None = None
    service_account_dir: Path = SERVICE_ACCOUNT_DIR

    def origin(self, env: Mapping[str, str] | None = None) -> str:
        """Where :meth:`load` reads from: a file path or ``service account <dir>``."""
        env = os.environ if env is None else env
        if self.kubeconfig is not None:
            return str(self.kubeconfig)
        if env.get("KUBERNETES_SERVICE_HOST") and (self.service_account_dir / "token").is_file():
            return f"service account {self.service_account_dir}"
        listed = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
        if listed:
            return listed[0]
        home = env.get("HOME")
        return str(Path(home, ".kube", "config") if home else Path("~/.kube/config").expanduser())

    def load(self, env: Mapping[str, str] | None = None) -> SingleConfig:
        """The cluster and user to use; :class:`KubeError` (reason ``config``, naming where it
        looked) when that is unusable."""
        env = os.environ if env is None else env
        origin = self.origin(env)
        try:
            if origin.startswith("service account "):
                kube = self._service_account(env)
            else:
                kube = KubeConfig.from_file(origin)
            single = kube.get(self.context)
        except (KubeConfigError, OSError, yaml.YAMLError, ValueError, TypeError, KeyError) as e:
            detail = one_line(e) or type(e).__name__
            raise KubeError(f"kubeconfig {origin}: {detail}", reason=CONFIG) from e
        if single is None or single.user is None:
            context = self.context or "current-context"
            raise KubeError(f"kubeconfig {origin}: context {context} has no user", reason=CONFIG)
        return single

    def _service_account(self, env: Mapping[str, str]) -> KubeConfig:
        """lightkube's ``from_service_account`` from ``env``, with the token as a file only
        (re-read after a 401) and the namespace optional."""
        host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        account = self.service_account_dir
        ns_file = account / "namespace"
        namespace = ns_file.read_text().strip() if ns_file.is_file() else None
        return KubeConfig.from_one(
            cluster=Cluster(
                server=f"https://{host}:{port}", certificate_auth=str(account / "ca.crt")
            ),
            user=User(token_file=str(account / "token")),
            namespace=namespace,
        )

    @asynccontextmanager
    async def session(self, env: Mapping[str, str] | None = None) -> AsyncIterator[Session]:
        """A :class:`Session` (one lightkube ``AsyncClient``) for one operation, closed
        afterwards. :class:`KubeError` (reason ``config``) when the configuration or the
        client cannot be set up; nothing is sent before the first call."""
        single = self.load(env)
        try:
            client = AsyncClient(
                single,
                namespace=self.namespace,
                timeout=httpx2.Timeout(self.timeout),
                field_manager=self.field_manager,
            )
        except (KubeConfigError, OSError, ValueError) as e:
            # A missing certificate-authority file, an unsupported auth provider ...
            raise KubeError(f"Kubernetes client: {one_line(e)}", reason=CONFIG) from e
        try:
            yield Session(client, safe_url(single.cluster.server), self.timeout)
        finally:
            await client.close()


class Session:
    """One open client: ``client`` (lightkube's ``AsyncClient``, for the adapters' verbs),
    ``url`` (the API server, without user-info) and :meth:`failure`."""

    def __init__(self, client: AsyncClient, url: str, timeout: float) -> None:
        self.client = client
        self.url = url
        self.timeout = timeout

    def failure(self, e: BaseException) -> KubeError | None:
        """:func:`describe_failure` for this session's server."""
        return describe_failure(e, url=self.url, timeout=self.timeout)


def describe_failure(e: BaseException, *, url: str, timeout: float) -> KubeError | None:
    """One :class:`KubeError` for a failed lightkube call to the API server at ``url``;
    ``None`` for any other exception (a bug: let it propagate)."""
    if isinstance(e, KubeError):
        return e
    if isinstance(e, ApiError):
        status = e.status
        code = status.code or (e.response.status_code if e.response is not None else 0)
        return _status(url, code, status.reason or "", status.message or "")
    if isinstance(e, httpx2.HTTPStatusError):  # no JSON Status (a proxy, a watch start)
        return _status(url, e.response.status_code, e.response.reason_phrase, "")
    if isinstance(e, KeyError) and isinstance(e.__context__, httpx2.HTTPStatusError):
        # lightkube reads the Content-Type of an error response unguarded: an error without
        # that header surfaces as KeyError raised while handling HTTPStatusError.
        response = e.__context__.response
        return _status(url, response.status_code, response.reason_phrase, "")
    if isinstance(e, httpx2.TimeoutException):
        return KubeError(
            f"no answer from the API server at {url} within {timeout:g}s ({type(e).__name__})",
            reason=TIMEOUT,
        )
    if isinstance(e, httpx2.TransportError):
        reason = _connect_reason(e) if isinstance(e, httpx2.ConnectError) else UNREACHABLE
        return KubeError(
            f"cannot reach the API server at {url}: {one_line(e) or type(e).__name__}",
            reason=reason,
        )
    if isinstance(e, KubeConfigError):  # a token file that went away
        return KubeError(f"Kubernetes credentials: {one_line(e)}", reason=CREDENTIALS)
    if isinstance(e, msgspec.DecodeError):  # ValidationError included
        return KubeError(
            f"unexpected answer from the API server at {url}: {one_line(e)}", reason=BAD_RESPONSE
        )
    return None


def _status(url: str, code: int, phrase: str, detail: str) -> KubeError:
    suffix = f": {one_line(detail)}" if detail else ""
    if code == 401:
        return KubeError(
            f"the API server at {url} rejected the credentials (401 Unauthorized): the token "
            "is missing, expired or wrong",
            reason=UNAUTHORIZED,
            status=401,
            phrase=phrase,
            detail=detail,
        )
    reason = {403: FORBIDDEN, 404: NOT_FOUND, 409: CONFLICT, 410: GONE}.get(code, ERROR)
    return KubeError(
        f"{code} {phrase}".rstrip() + suffix,
        reason=reason,
        status=code,
        phrase=phrase,
        detail=detail,
    )


def _connect_reason(e: BaseException) -> str:
    """``refused``, or ``dns`` / ``tls`` when the cause says so."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLError):
            return TLS
        if isinstance(cause, socket.gaierror):
            return DNS
        cause = cause.__cause__ or cause.__context__
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return TLS
    if "Name or service not known" in text or "nodename nor servname" in text:
        return DNS
    return REFUSED


def safe_url(url: str) -> str:
    """``url`` without user-info (``https://user:pass@host`` must not reach a message)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
