"""The ``openbao_kv`` deploy target: the certificate, its chain and its key stored as a new
version of an OpenBao (or Vault) KV version 2 secret, for applications that read their TLS
material from OpenBao (Vault Agent templates, External Secrets, CSI drivers ...).

A deploy writes one new version holding three fields (names configurable): ``certificate`` (the
leaf, PEM), ``ca_chain`` (the intermediates, PEM, empty when there are none) and
``private_key`` (PEM). Other fields of the current version are carried over unchanged, so a
secret that also holds, say, a DH parameter file keeps it. With ``cas`` (the default) the write
is a check-and-set on the version read just before: a concurrent writer makes the deploy fail
instead of being overwritten silently.

Rollback keeps the history, as the KV v2 documentation recommends: it writes a *new* version
whose data equals the version before the deploy, with check-and-set on the version the deploy
wrote, so a rollback never clobbers a later write. When there was nothing before the deploy,
the version it wrote is soft-deleted (``undelete`` brings it back). A rollback that finds
the secret already restored (a resumed job) does nothing.

:meth:`OpenBaoKVTarget.current` reads the latest version back
(:class:`~certpilot.domain.remedy.CertificateHolder`). The receipt holds version numbers only;
key material never reaches a receipt, a log line or an error message.

``hvac`` is synchronous: each operation runs in a worker thread with a client of its own
(:class:`certpilot.openbao.Connection`, shared with the PKI issuer and the OpenBao scanner);
its neutral :class:`~certpilot.openbao.OpenBaoError` becomes :class:`DeployError` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization

from certpilot.domain.errors import ConfigError, UsageError
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import DeployError, DeployReceipt, IssuedCertificate
from certpilot.openbao import (
    DEFAULT_TOKEN_ENV,
    Connection,
    InvalidPath,
    InvalidRequest,
    OpenBaoError,
    describe_failure,
)
from certpilot.targets import split_host_port
from remediator.issuers._common import (
    chain_to_pem,
    describe,
    load_pem_chain,
    one_line,
)
from remediator.issuers._common import config_from_mapping as _dataclass_from_mapping

log = logging.getLogger("certpilot.remediator.openbao_kv")

KIND = "openbao_kv"

_CAS_MISMATCH = "check-and-set parameter did not match"


class _Conflict(Exception):
    """The secret moved on while we worked (a check-and-set write was refused)."""


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenBaoKVConfig:
    """One KV v2 secret at ``<mount>/data/<path>``.

    ``token_env`` names the environment variable holding the token (``token_file``, when set,
    is read instead). The token's policy needs ``read`` on ``<mount>/metadata/<path>``,
    ``create``/``update``/``read`` on ``<mount>/data/<path>`` and ``update`` on
    ``<mount>/delete/<path>``. ``cas`` makes every deploy a check-and-set write (rollbacks
    always are). ``endpoints`` are what serve this secret: re-probed after a deploy.
    """

    url: str
    path: str
    mount: str = "secret"
    token_env: str = DEFAULT_TOKEN_ENV
    token_file: Path | None = None
    namespace: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    cert_field: str = "certificate"
    key_field: str = "private_key"
    chain_field: str = "ca_chain"
    cas: bool = True
    endpoints: tuple[EndpointTarget, ...] = ()

    def __post_init__(self) -> None:
        self.connection.check()
        for what, value in (("mount", self.mount), ("path", self.path)):
            if not value or value != value.strip("/ ") or "//" in value:
                raise ValueError(
                    f"{what} must be a path without leading or trailing '/', got {value!r}"
                )
        fields = (self.cert_field, self.key_field, self.chain_field)
        if not all(fields) or len(set(fields)) != 3:
            raise ValueError("cert_field, key_field and chain_field must be distinct names")

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


def _endpoint(item: object, source: str, field: str) -> EndpointTarget:
    """``host:port``, ``host:port#sni`` or ``{host, port, sni, address}`` (as the ``files``
    target reads them)."""
    expected = "host:port, host:port#sni or {host, port, sni, address}"
    if isinstance(item, str):
        where, _, server_name = item.partition("#")
        try:
            hostname, portnum = split_host_port(where)
        except UsageError as e:
            raise ConfigError(source, field, f"{expected} ({e.message})", item) from None
        return EndpointTarget(host=hostname, port=portnum, sni=server_name or None)
    if isinstance(item, Mapping) and set(item) <= {"host", "port", "sni", "address"}:
        host, port = item.get("host"), item.get("port", 443)
        sni, address = item.get("sni"), item.get("address")
        if (
            isinstance(host, str)
            and host
            and isinstance(port, int)
            and not isinstance(port, bool)
            and 0 < port < 65536
            and (sni is None or isinstance(sni, str))
            and (address is None or isinstance(address, str))
        ):
            return EndpointTarget(host=host, port=port, sni=sni, address=address)
    raise ConfigError(source, field, expected, item)


def config_from_mapping(
    data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> OpenBaoKVConfig:
    """An :class:`OpenBaoKVConfig` from YAML-shaped data; ``ConfigError`` names
    ``<field>.<option>``."""
    options = dict(data)
    raw_endpoints = options.pop("endpoints", None)
    try:
        config = _dataclass_from_mapping(OpenBaoKVConfig, options, source=source)
    except ConfigError as e:
        raise ConfigError(
            e.source,
            f"{field}.{e.field}" if e.field else field,
            e.expected,
            e.value,
            has_value=e.has_value,
        ) from None
    if raw_endpoints is None:
        return config
    if not isinstance(raw_endpoints, list | tuple):
        raise ConfigError(source, f"{field}.endpoints", "a list of host:port", raw_endpoints)
    endpoints = tuple(
        _endpoint(item, source, f"{field}.endpoints[{i}]") for i, item in enumerate(raw_endpoints)
    )
    return replace(config, endpoints=endpoints)


# -- the target ---------------------------------------------------------------------------------


class OpenBaoKVTarget:
    """A KV v2 secret. Implements ``DeployTarget`` and ``CertificateHolder``.

    Errors are :class:`DeployError` with ``step`` ``validate`` (the certificate and key do not
    go together), ``read``, ``write`` or ``rollback``.
    """

    kind = KIND

    def __init__(self, name: str, config: OpenBaoKVConfig) -> None:
        self.name = name
        self.config = config
        # One deploy or rollback of this target at a time in this process; check-and-set
        # covers other processes.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        c = self.config
        return f"OpenBaoKVTarget({self.name!r}, url={c.url!r}, secret={c.mount}/{c.path})"

    def endpoints(self) -> Sequence[EndpointTarget]:
        return self.config.endpoints

    # -- DeployTarget -------------------------------------------------------------------------

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        """Write a new version (check-and-set on the current one when ``cas``); the receipt
        records ``previous_version`` (``"0"``: there was none) and the new ``version``."""
        fields, serial = self._plan(cert)
        async with self._lock:
            previous, new = await asyncio.to_thread(self._deploy_sync, fields)
        log.info(
            "%s: deployed serial %s to %s/%s version %d (previous %d)",
            self.name,
            serial,
            self.config.mount,
            self.config.path,
            new,
            previous,
        )
        state = {"previous_version": str(previous), "version": str(new)}
        return DeployReceipt(target=self.name, serial=serial, state=MappingProxyType(state))

    async def rollback(self, receipt: DeployReceipt) -> None:
        """Restore the data of ``previous_version`` as a new version (or soft-delete the
        deployed version when there was none); refuses when the secret changed since."""
        if receipt.target != self.name:
            raise DeployError(self.name, "rollback", f"receipt is for target {receipt.target!r}")
        try:
            previous = int(receipt.state["previous_version"])
            version = int(receipt.state["version"])
        except (KeyError, ValueError):
            raise DeployError(self.name, "rollback", "receipt records no KV versions") from None
        async with self._lock:
            await asyncio.to_thread(self._rollback_sync, receipt.serial, previous, version)

    # -- CertificateHolder --------------------------------------------------------------------

    async def current(self) -> IssuedCertificate | None:
        """The certificate and key in the latest version; ``None`` when there is no live
        version or it does not hold a certificate with its matching key."""
        return await asyncio.to_thread(self._current_sync)

    # -- work (worker thread) -----------------------------------------------------------------

    @contextlib.contextmanager
    def _step(self, step: str) -> Iterator[None]:
        """Turn an OpenBao failure inside the block into ``DeployError(step)`` (one line, no
        token); a ``DeployError`` from an inner step passes through unchanged."""
        try:
            yield
        except DeployError:
            raise
        except _Conflict as e:
            raise DeployError(self.name, step, str(e)) from None
        except Exception as e:
            failure = describe_failure(e)
            if failure is None:
                raise  # a bug, not OpenBao
            raise DeployError(self.name, step, failure.message) from e

    def _plan(self, cert: IssuedCertificate) -> tuple[dict[str, str], str]:
        """The three fields to write and the leaf's serial; ``DeployError("validate")`` when
        ``cert`` is not a certificate with its key."""
        try:
            chain = load_pem_chain(cert.chain_pem)
        except ValueError as e:
            raise DeployError(self.name, "validate", f"chain_pem: {one_line(e)}") from None
        try:
            key = serialization.load_pem_private_key(cert.key_pem, password=None)
        except (ValueError, TypeError):
            # Never echo the bytes: they are (or were meant to be) a private key.
            raise DeployError(self.name, "validate", "key_pem is not a PEM private key") from None
        if key.public_key() != chain[0].public_key():
            raise DeployError(self.name, "validate", "key_pem does not match the certificate")
        c = self.config
        fields = {
            c.cert_field: chain_to_pem(chain[:1]).decode("ascii"),
            c.chain_field: chain_to_pem(chain[1:]).decode("ascii"),
            c.key_field: cert.key_pem.decode("ascii"),
        }
        return fields, format(chain[0].serial_number, "x")

    def _metadata(self, client: Any) -> dict[str, Any] | None:
        """The secret's metadata; ``None`` when the secret does not exist."""
        try:
            response = client.secrets.kv.v2.read_secret_metadata(
                self.config.path, mount_point=self.config.mount
            )
        except InvalidPath:
            return None
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise OpenBaoError(f"unexpected metadata for {self._where}")
        return data

    def _data(self, client: Any, version: int | None) -> dict[str, Any] | None:
        """The data of ``version`` (latest when ``None``); ``None`` when absent, deleted or
        destroyed."""
        try:
            response = client.secrets.kv.v2.read_secret_version(
                self.config.path,
                version=version,
                mount_point=self.config.mount,
                raise_on_deleted_version=False,
            )
        except InvalidPath:
            return None  # no such secret or version, or destroyed
        body = response.get("data") if isinstance(response, dict) else None
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else None

    def _write(self, client: Any, data: Mapping[str, Any], cas: int | None) -> int:
        try:
            response = client.secrets.kv.v2.create_or_update_secret(
                self.config.path, dict(data), cas=cas, mount_point=self.config.mount
            )
        except InvalidRequest as e:
            if _CAS_MISMATCH in " ".join(str(x) for x in (getattr(e, "errors", None) or [])):
                raise _Conflict(
                    f"{self._where}: version changed since it was read (version {cas}); "
                    "another writer got there first"
                ) from None
            raise
        version = response.get("data", {}).get("version") if isinstance(response, dict) else None
        if not isinstance(version, int):
            raise OpenBaoError(f"unexpected write response for {self._where}: no version")
        return version

    @property
    def _where(self) -> str:
        return f"{self.config.mount}/{self.config.path}"

    def _deploy_sync(self, fields: Mapping[str, str]) -> tuple[int, int]:
        with self._step("write"), self.config.connection.client() as client:
            with self._step("read"):
                meta = self._metadata(client)
                previous = int(meta.get("current_version") or 0) if meta is not None else 0
                # Keep the fields certpilot does not own (read by number: what CAS checks).
                kept = (self._data(client, previous) or {}) if previous else {}
            data = {**kept, **fields}
            new = self._write(client, data, previous if self.config.cas else None)
        return previous, new

    def _rollback_sync(self, serial: str, previous: int, version: int) -> None:
        with self._step("rollback"), self.config.connection.client() as client:
            meta = self._metadata(client)
            current = int(meta.get("current_version") or 0) if meta is not None else 0
            restore = self._data(client, previous) if previous else None
            if current != version:
                if current > version and self._already_rolled_back(client, meta, restore, version):
                    log.info("%s: serial %s was already rolled back", self.name, serial)
                    return
                raise _Conflict(
                    f"{self._where} changed since deploy of serial {serial} (version {version}, "
                    f"now {current}); not rolling back over it"
                )
            if restore is None:
                # Nothing usable before the deploy (no secret, or its latest version was
                # deleted): back to that state by soft-deleting what the deploy wrote.
                client.secrets.kv.v2.delete_secret_versions(
                    self.config.path, [version], mount_point=self.config.mount
                )
                log.info(
                    "%s: rolled back serial %s: deleted %s version %d",
                    self.name,
                    serial,
                    self._where,
                    version,
                )
                return
            try:
                new = self._write(client, restore, version)
            except _Conflict:
                raise _Conflict(
                    f"{self._where} changed since deploy of serial {serial} (version {version}); "
                    "not rolling back over it"
                ) from None
        log.info(
            "%s: rolled back serial %s: %s version %d = version %d",
            self.name,
            serial,
            self._where,
            new,
            previous,
        )

    def _already_rolled_back(
        self,
        client: Any,
        meta: Mapping[str, Any] | None,
        restore: Mapping[str, Any] | None,
        version: int,
    ) -> bool:
        """True when the only change after ``version`` is this rollback's own write (a retried
        rollback after a crash or a lost response)."""
        if meta is None or restore is None:
            return False
        current = int(meta.get("current_version") or 0)
        return current == version + 1 and self._data(client, current) == restore

    def _current_sync(self) -> IssuedCertificate | None:
        with self._step("read"), self.config.connection.client() as client:
            data = self._data(client, None)
        if data is None:
            return None
        c = self.config
        leaf, chain, key = (
            data.get(c.cert_field),
            data.get(c.chain_field, ""),
            data.get(c.key_field),
        )
        if not isinstance(leaf, str) or not isinstance(key, str) or not isinstance(chain, str):
            log.warning("%s: %s holds no %s/%s", self.name, self._where, c.cert_field, c.key_field)
            return None
        try:
            certs = load_pem_chain((leaf + "\n" + chain).encode("ascii"))
            private = serialization.load_pem_private_key(key.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError):
            log.warning("%s: %s holds an unreadable certificate or key", self.name, self._where)
            return None
        if private.public_key() != certs[0].public_key():
            log.warning("%s: %s: the key does not match the certificate", self.name, self._where)
            return None
        # Which issuer made it is not stored in the secret.
        return describe(certs, key.encode("ascii"), "")


def from_config(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> OpenBaoKVTarget:
    """The ``openbao_kv`` entry of ``remediator.targets.TARGET_TYPES``."""
    return OpenBaoKVTarget(name, config_from_mapping(data, source=source, field=field))


__all__ = ["KIND", "OpenBaoKVConfig", "OpenBaoKVTarget", "config_from_mapping", "from_config"]
