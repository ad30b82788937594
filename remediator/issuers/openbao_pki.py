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
  hex without leading zeros (``format(serial, "x")``): :func:`certpilot.openbao.normalise_serial`
  and :func:`certpilot.openbao.colon_serial` convert both ways.
- A role's ``max_ttl`` (or the CA's own ``notAfter``) can shorten the requested ``ttl``
  without an error: the issued lifetime is checked and a shortening is logged.
- A rate-limited call (HTTP 429 from a rate-limit quota) reports when to come back
  (``Retry-After``, kept by :mod:`certpilot.openbao`'s adapter).
- OpenBao has no ARI and its revoke endpoint takes no reason code (RFC 5280 section 5.3.1):
  the reason is only logged.

The connection part (:class:`~certpilot.openbao.Connection`,
:func:`~certpilot.openbao.describe_failure`) lives in :mod:`certpilot.openbao`, shared with
:mod:`remediator.targets.openbao_kv` and the OpenBao scanner; its neutral
:class:`~certpilot.openbao.OpenBaoError` becomes :class:`IssuerError` here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certpilot.domain.clock import Clock
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.openbao import (
    DEFAULT_TOKEN_ENV,
    Connection,
    InvalidRequest,
    OpenBaoError,
    colon_serial,
    describe_failure,
    normalise_serial,
    parse_retry_after,
    vault_detail,
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

_P = ParamSpec("_P")
_T = TypeVar("_T")


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
            except InvalidRequest as e:
                if "not found" in vault_detail(e).lower():
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
    "OpenBaoError",
    "OpenBaoPKIConfig",
    "OpenBaoPKIIssuer",
    "colon_serial",
    "describe_failure",
    "from_config",
    "normalise_serial",
    "parse_retry_after",
]
