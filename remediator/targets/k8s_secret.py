"""The ``k8s_secret`` deploy target: a ``kubernetes.io/tls`` Secret, written through the
Kubernetes API with lightkube, laid out the way cert-manager does it.

The Secret's ``data`` gets ``tls.crt`` (leaf followed by its intermediates), ``tls.key`` and,
when the issuer sent intermediates, ``ca.crt`` (those intermediates); its annotations
``certpilot.io/serial`` and ``certpilot.io/fingerprint-sha256`` name the certificate. Other
data keys, labels, annotations and owner references already on the Secret are kept: a PUT
replaces the whole object, so the new object is built from the one just read.

Order of a deploy:

1. GET the Secret. Absent (404): POST it, done; someone else creating it in between is a 409
   ``AlreadyExists`` and a ``write`` failure.
2. Present: copy its ``data`` into the sibling Secret ``<secret>-certpilot-prev`` (created or
   replaced), like the files target keeps ``<path>.certpilot-prev``. The receipt goes to the
   database and must never hold key material, so the previous version is kept in the cluster,
   next to the Secret and under the same RBAC. The sibling is type ``Opaque``, not
   ``kubernetes.io/tls``, on purpose: exporters that watch TLS Secrets (x509-certificate-exporter
   by default) would otherwise alert on the old certificate when it expires while kept. It is
   labelled ``certpilot.io/previous-of: <secret>`` and records the ``resourceVersion`` it was
   copied from, so a rollback can tell it still holds the version its deploy replaced.
3. PUT the new Secret with the ``metadata.resourceVersion`` read in step 1: optimistic
   concurrency (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions).
   If anyone changed the Secret since, the API server answers 409 ``Conflict`` and nothing is
   overwritten.

A rollback writes under the same guard: the Secret must still be at the ``resourceVersion``
the deploy produced (else a later deploy or a person changed it, and restoring would bring back
the wrong certificate). A created Secret is deleted; a replaced one gets the sibling's data back.

Whether the new certificate is actually *served* (an ingress controller picks a Secret up
asynchronously) is checked afterwards by the remediator, which re-probes
:meth:`K8sSecretTarget.endpoints`.

Credentials come from a kubeconfig file (``kubeconfig`` + ``context``) or, when none is
configured, from the environment as in-cluster clients find them: the pod's service account,
then ``$KUBECONFIG``, then ``~/.kube/config``. Loading them, building the client and classifying
API failures is :mod:`certpilot.kube`'s job (shared with the Kubernetes scanner); this module
only words the failures for the Secret it writes. The token and the key never appear in
messages, logs, receipts or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Secret

from certpilot import kube
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import DeployError, DeployReceipt, IssuedCertificate
from remediator.issuers._common import chain_to_pem, describe, load_pem_chain, one_line
from remediator.targets.files import _Options

log = logging.getLogger(__name__)

KIND = "k8s_secret"
TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"
PREV_SUFFIX = "-certpilot-prev"
"""The sibling Secret ``<secret>-certpilot-prev`` holds the data a deploy replaced."""

ANNOTATION_SERIAL = "certpilot.io/serial"
ANNOTATION_FINGERPRINT = "certpilot.io/fingerprint-sha256"
ANNOTATION_PREVIOUS_OF = "certpilot.io/previous-of"
ANNOTATION_PREVIOUS_RV = "certpilot.io/previous-resource-version"
LABEL_PREVIOUS_OF = "certpilot.io/previous-of"
RESERVED_PREFIX = "certpilot.io/"

_WRITABLE_TYPES = (TLS_TYPE, OPAQUE_TYPE)
"""Types whose ``data`` certpilot may rewrite. Other types (service-account tokens, docker
configs ...) are validated by the API server against other keys and belong to someone else."""

# Kubernetes object-name and label syntax (k8s.io/apimachinery/pkg/util/validation).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE_MAX = 63

_T = TypeVar("_T")


def _name_problem(value: str, *, label: bool) -> str | None:
    """Why ``value`` is not a valid namespace (``label``: RFC 1123 label, at most 63
    characters) or object name (RFC 1123 subdomain, at most 253); ``None`` when it is."""
    limit, pattern = (63, _DNS_LABEL) if label else (253, _DNS_SUBDOMAIN)
    kind = "an RFC 1123 label" if label else "an RFC 1123 subdomain"
    if len(value) > limit or not pattern.fullmatch(value):
        return f"{kind}: lowercase letters, digits and '-', at most {limit} characters"
    return None


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label or annotation key (``[prefix/]name``)."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "a key whose prefix (before '/') is a DNS subdomain"
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return "a key [prefix/]name, name at most 63 letters, digits, '-', '_' or '.'"
    if key.startswith(RESERVED_PREFIX):
        return f"a key outside {RESERVED_PREFIX} (certpilot sets those itself)"
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > _LABEL_VALUE_MAX or not _QUALIFIED_NAME.fullmatch(value)):
        return "a label value: at most 63 letters, digits, '-', '_' or '.'"
    return None


def _problems(
    *,
    namespace: str,
    secret: str,
    timeout: float,
    field_manager: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> list[tuple[str, str, object]]:
    """``(field, expected, value)`` for every invalid option; empty when all are valid. Shared
    by the config's own check and :func:`config_from_mapping` (which names the field)."""
    out: list[tuple[str, str, object]] = []
    if problem := _name_problem(namespace, label=True):
        out.append(("namespace", problem, namespace))
    if problem := _name_problem(secret, label=False):
        out.append(("secret", problem, secret))
    elif len(secret) + len(PREV_SUFFIX) > 253:
        out.append(("secret", f"a name of at most {253 - len(PREV_SUFFIX)} characters", secret))
    if not timeout > 0:
        out.append(("timeout", "a positive duration", timeout))
    if not field_manager or len(field_manager) > 128:
        out.append(("field_manager", "a name of 1 to 128 characters", field_manager))
    for key, value in labels.items():
        if problem := _key_problem(key) or _label_value_problem(value):
            out.append((f"labels.{key}", problem, value))
    for key, value in annotations.items():
        if problem := _key_problem(key):
            out.append((f"annotations.{key}", problem, value))
    return out


@dataclass(frozen=True, slots=True)
class K8sSecretTargetConfig:
    """Which Secret, and how to reach the API server.

    * ``namespace`` and ``secret`` name the Secret; ``<secret>-certpilot-prev`` in the same
      namespace keeps the previous version. The service account needs ``get``, ``create``,
      ``update`` and ``delete`` on ``secrets`` there (a namespaced Role is enough).
    * ``kubeconfig`` is a kubeconfig file and ``context`` one of its contexts (default: its
      ``current-context``). ``None``: in-cluster service account, else ``$KUBECONFIG``, else
      ``~/.kube/config``.
    * ``timeout`` bounds each HTTP exchange with the API server (connect, send, receive).
    * ``labels`` and ``annotations`` are set on the Secret at every deploy (existing ones
      are kept); keys under ``certpilot.io/`` are certpilot's own and cannot be configured.
    * ``field_manager`` names certpilot in the Secret's ``managedFields``.
    * ``endpoints`` serve this Secret (an ingress, a gateway): re-probed after a deploy.
    """

    namespace: str
    secret: str
    kubeconfig: Path | None = None
    context: str | None = None
    timeout: float = 10.0
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    field_manager: str = "certpilot"
    endpoints: tuple[EndpointTarget, ...] = ()

    def __post_init__(self) -> None:
        for name, expected, _ in _problems(
            namespace=self.namespace,
            secret=self.secret,
            timeout=self.timeout,
            field_manager=self.field_manager,
            labels=self.labels,
            annotations=self.annotations,
        ):
            raise ValueError(f"{name}: expected {expected}")

    @property
    def prev_secret(self) -> str:
        return self.secret + PREV_SUFFIX


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a deploy writes. ``data`` holds the key (base64): excluded from repr."""

    data: Mapping[str, str] = field(repr=False)
    serial: str
    fingerprint: str


class K8sSecretTarget:
    """A ``kubernetes.io/tls`` Secret. Implements ``certpilot.domain.remedy.DeployTarget`` and
    ``CertificateHolder``."""

    kind = KIND

    def __init__(self, name: str, config: K8sSecretTargetConfig) -> None:
        self.name = name
        self.config = config
        # One deploy or rollback of a target at a time: they share the -certpilot-prev Secret.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"K8sSecretTarget({self.name!r}, secret={self._where()!r})"

    def endpoints(self) -> Sequence[EndpointTarget]:
        return self.config.endpoints

    # -- deploy ----------------------------------------------------------------------------

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        """Create or replace the Secret (keeping the replaced data in ``-certpilot-prev``);
        :class:`DeployError` with ``step`` ``validate``, ``read`` or ``write``. A failure
        before the final PUT leaves the Secret untouched; the PUT itself is all or nothing."""
        plan = self._plan(cert)
        c = self.config
        async with self._lock, self._session("read") as api:
            current = await api.get(c.secret, "read")
            if current is None:
                created = await api.call(
                    "write",
                    "create",
                    c.secret,
                    api.client.create(self._new_secret(plan)),
                    conflict=f"Secret {self._where()} was created by someone else meanwhile",
                )
                state = {
                    "created": "true",
                    "resource_version": _rv(created),
                    "previous_resource_version": "",
                }
            else:
                previous_rv = _rv(current)
                if not previous_rv:
                    raise DeployError(self.name, "read", "the API server sent no resourceVersion")
                self._check_writable(current, "validate")
                await self._keep_previous(api, current)
                replaced = await api.call(
                    "write",
                    "update",
                    c.secret,
                    api.client.replace(self._updated(current, plan)),
                    conflict=(
                        f"Secret {self._where()} changed concurrently (resourceVersion is no "
                        f"longer {previous_rv}); not overwriting it"
                    ),
                )
                state = {
                    "created": "false",
                    "resource_version": _rv(replaced),
                    "previous_resource_version": previous_rv,
                }
        state.update(namespace=c.namespace, secret=c.secret)
        log.info(
            "%s: deployed serial %s to Secret %s (%s, resourceVersion %s)",
            self.name,
            plan.serial,
            self._where(),
            "created" if state["created"] == "true" else "replaced",
            state["resource_version"],
        )
        return DeployReceipt(target=self.name, serial=plan.serial, state=MappingProxyType(state))

    def _plan(self, cert: IssuedCertificate) -> _Plan:
        """The Secret data for ``cert``; ``DeployError(step="validate")`` when it is not a
        certificate chain with its matching, unencrypted private key."""
        try:
            chain = load_pem_chain(cert.chain_pem)
        except ValueError as e:
            raise DeployError(self.name, "validate", f"chain_pem: {one_line(e)}") from e
        try:
            key = serialization.load_pem_private_key(cert.key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            # The library's message never quotes the key; ours does not even try.
            raise DeployError(
                self.name, "validate", "key_pem is not an unencrypted PEM private key"
            ) from e
        leaf = chain[0]
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise DeployError(
                self.name, "validate", "key_pem does not match the leaf certificate's public key"
            )
        data = {
            "tls.crt": _b64(chain_to_pem(chain)),
            "tls.key": _b64(cert.key_pem.strip() + b"\n"),
        }
        if len(chain) > 1:
            # cert-manager's layout: ca.crt next to tls.crt for clients that verify peers.
            data["ca.crt"] = _b64(chain_to_pem(chain[1:]))
        der = leaf.public_bytes(serialization.Encoding.DER)
        return _Plan(
            data=MappingProxyType(data),
            serial=format(leaf.serial_number, "x"),
            fingerprint=hashlib.sha256(der).hexdigest(),
        )

    def _new_secret(self, plan: _Plan) -> Secret:
        c = self.config
        annotations = {**c.annotations, **_identity(plan.serial, plan.fingerprint)}
        return Secret(
            metadata=ObjectMeta(
                name=c.secret,
                namespace=c.namespace,
                labels=dict(c.labels) or None,
                annotations=annotations,
            ),
            type=TLS_TYPE,
            data=dict(plan.data),
        )

    def _updated(self, current: Secret, plan: _Plan) -> Secret:
        """``current`` with the new certificate: its other data keys, labels, annotations and
        owner references kept, and its ``resourceVersion`` as the precondition of the PUT."""
        meta = current.metadata or ObjectMeta()
        data = {**(current.data or {}), **plan.data}
        if "ca.crt" not in plan.data:
            data.pop("ca.crt", None)  # it belonged to the certificate being replaced
        annotations = {
            **(meta.annotations or {}),
            **self.config.annotations,
            **_identity(plan.serial, plan.fingerprint),
        }
        labels = {**(meta.labels or {}), **self.config.labels}
        return Secret(
            metadata=msgspec.structs.replace(
                meta, labels=labels or None, annotations=annotations, managedFields=None
            ),
            # The type is immutable once created (a PUT changing it is 422 Invalid); an Opaque
            # Secret with tls.crt/tls.key works with ingress controllers and stays Opaque.
            type=current.type or TLS_TYPE,
            data=data,
            immutable=current.immutable,
        )

    async def _keep_previous(self, api: _Api, current: Secret) -> None:
        """Write ``current``'s data to ``<secret>-certpilot-prev`` (created or replaced)."""
        c = self.config
        meta = current.metadata or ObjectMeta()
        labels = {LABEL_PREVIOUS_OF: c.secret} if len(c.secret) <= _LABEL_VALUE_MAX else {}
        prev_meta = ObjectMeta(
            name=c.prev_secret,
            namespace=c.namespace,
            labels={**labels, "app.kubernetes.io/managed-by": "certpilot"},
            annotations={ANNOTATION_PREVIOUS_OF: c.secret, ANNOTATION_PREVIOUS_RV: _rv(current)},
            # Garbage-collected with the Secret it belongs to.
            ownerReferences=(
                [OwnerReference(apiVersion="v1", kind="Secret", name=c.secret, uid=meta.uid)]
                if meta.uid
                else None
            ),
        )
        prev = Secret(metadata=prev_meta, type=OPAQUE_TYPE, data=dict(current.data or {}))
        existing = await api.get(c.prev_secret, "write")
        if existing is not None:
            owner = ((existing.metadata and existing.metadata.annotations) or {}).get(
                ANNOTATION_PREVIOUS_OF
            )
            if owner != c.secret:
                # Same name by accident: someone else's Secret is not certpilot's to replace.
                raise DeployError(
                    self.name,
                    "write",
                    f"Secret {c.namespace}/{c.prev_secret} exists but was not written by "
                    f"certpilot for {c.secret}; not overwriting it",
                )
        if existing is not None and existing.type == OPAQUE_TYPE and not existing.immutable:
            prev_meta.resourceVersion = _rv(existing)
            await api.call(
                "write",
                "update",
                c.prev_secret,
                api.client.replace(prev),
                conflict=f"Secret {c.namespace}/{c.prev_secret} changed concurrently",
            )
            return
        if existing is not None:  # of another type, or immutable: neither can be updated
            await api.call(
                "write",
                "delete",
                c.prev_secret,
                api.client.delete(Secret, c.prev_secret, namespace=c.namespace),
            )
        await api.call(
            "write",
            "create",
            c.prev_secret,
            api.client.create(prev),
            conflict=f"Secret {c.namespace}/{c.prev_secret} was created concurrently",
        )

    def _check_writable(self, current: Secret, step: str) -> None:
        if (current.type or OPAQUE_TYPE) not in _WRITABLE_TYPES:
            raise DeployError(
                self.name,
                step,
                f"Secret {self._where()} has type {current.type}; certpilot writes only "
                f"{' or '.join(_WRITABLE_TYPES)} Secrets",
            )
        if current.immutable:
            raise DeployError(
                self.name,
                step,
                f"Secret {self._where()} is immutable; delete it or configure another Secret",
            )

    # -- rollback --------------------------------------------------------------------------

    async def rollback(self, receipt: DeployReceipt) -> None:
        """Undo ``receipt``'s deploy: delete the Secret it created, or put back the data it
        replaced. Refuses (``step="rollback"``) when the Secret changed since that deploy,
        e.g. a later deploy: restoring then would bring back the wrong certificate."""
        c = self.config
        state = receipt.state
        if receipt.target != self.name:
            raise DeployError(self.name, "rollback", f"receipt is for target {receipt.target!r}")
        where = f"{state.get('namespace', c.namespace)}/{state.get('secret', c.secret)}"
        if where != self._where():
            raise DeployError(
                self.name, "rollback", f"receipt is for Secret {where}, not {self._where()}"
            )
        rv = state.get("resource_version", "")
        created = state.get("created")
        if not rv or created not in ("true", "false"):
            raise DeployError(self.name, "rollback", "receipt records no Secret version")
        async with self._lock, self._session("rollback") as api:
            current = await api.get(c.secret, "rollback")
            if current is None:
                if created == "true":
                    log.info("%s: Secret %s is already gone", self.name, self._where())
                    return
                raise DeployError(
                    self.name, "rollback", f"Secret {self._where()} was deleted since the deploy"
                )
            if _rv(current) != rv:
                raise DeployError(
                    self.name,
                    "rollback",
                    f"Secret {self._where()} changed since the deploy of serial "
                    f"{receipt.serial} (resourceVersion {_rv(current)}, not {rv}); "
                    "not rolling back over it",
                )
            if created == "true":
                # lightkube's delete() sends no DeleteOptions, so the resourceVersion
                # precondition is the check just above: the window is one round trip.
                await api.call(
                    "rollback",
                    "delete",
                    c.secret,
                    api.client.delete(Secret, c.secret, namespace=c.namespace),
                )
            else:
                await self._restore(api, current, rv, state.get("previous_resource_version", ""))
        log.info("%s: rolled back serial %s in Secret %s", self.name, receipt.serial, where)

    async def _restore(self, api: _Api, current: Secret, rv: str, previous_rv: str) -> None:
        c = self.config
        prev = await api.get(c.prev_secret, "rollback")
        if prev is None:
            raise DeployError(
                self.name,
                "rollback",
                f"previous version {c.namespace}/{c.prev_secret} is missing",
            )
        kept_from = ((prev.metadata and prev.metadata.annotations) or {}).get(
            ANNOTATION_PREVIOUS_RV
        )
        if kept_from != previous_rv:
            raise DeployError(
                self.name,
                "rollback",
                f"{c.namespace}/{c.prev_secret} holds resourceVersion {kept_from}, not the "
                f"{previous_rv} this deploy replaced (a later deploy kept another version)",
            )
        meta = current.metadata or ObjectMeta()
        annotations = {
            k: v
            for k, v in (meta.annotations or {}).items()
            if k not in (ANNOTATION_SERIAL, ANNOTATION_FINGERPRINT)
        }
        data = dict(prev.data or {})
        held = _held(data)
        if held is not None:
            annotations.update(_identity(held.serial, held.fingerprint_sha256))
        restored = Secret(
            metadata=msgspec.structs.replace(
                meta, annotations=annotations, resourceVersion=rv, managedFields=None
            ),
            type=current.type,
            data=data,
            immutable=current.immutable,
        )
        await api.call(
            "rollback",
            "update",
            c.secret,
            api.client.replace(restored),
            conflict=f"Secret {self._where()} changed concurrently; not rolling back over it",
        )

    # -- current ---------------------------------------------------------------------------

    async def current(self) -> IssuedCertificate | None:
        """The certificate and key the Secret holds now; ``None`` when the Secret is absent
        or holds no parseable ``tls.crt`` + ``tls.key``. API failures are ``DeployError``
        with ``step="read"``."""
        async with self._session("read") as api:
            secret = await api.get(self.config.secret, "read")
        if secret is None:
            return None
        held = _held(dict(secret.data or {}))
        if held is None:
            log.warning("%s: Secret %s holds no usable certificate", self.name, self._where())
        return held

    # -- API access ------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.config.namespace}/{self.config.secret}"

    @asynccontextmanager
    async def _session(self, step: str) -> AsyncIterator[_Api]:
        """A client for one operation, closed afterwards. Built per operation so a rotated
        token or edited kubeconfig is read again, and nothing outlives its loop."""
        c = self.config
        connection = kube.Connection(
            kubeconfig=c.kubeconfig,
            context=c.context,
            timeout=c.timeout,
            namespace=c.namespace,
            field_manager=c.field_manager,
        )
        async with AsyncExitStack() as stack:
            try:
                session = await stack.enter_async_context(connection.session())
            except kube.KubeError as e:  # kubeconfig or client unusable
                raise DeployError(self.name, step, e.message) from e
            yield _Api(self.name, c, session)


class _Api:
    """Calls for one operation; every failure becomes a one-line :class:`DeployError`."""

    def __init__(self, target: str, config: K8sSecretTargetConfig, session: kube.Session) -> None:
        self.target = target
        self.config = config
        self.session = session
        self.client = session.client

    async def get(self, name: str, step: str) -> Secret | None:
        """The Secret ``name``, ``None`` when it does not exist."""
        try:
            return await self.call(
                step, "get", name, self.client.get(Secret, name, namespace=self.config.namespace)
            )
        except _NotFound:
            return None

    async def call(
        self,
        step: str,
        verb: str,
        name: str,
        request: Awaitable[_T],
        *,
        conflict: str | None = None,
    ) -> _T:
        """Await ``request`` (lightkube's ``verb`` on Secret ``name``). A 404 from a ``get``
        is :class:`_NotFound`; a 409 is ``DeployError(step, conflict)`` when given."""
        try:
            return await request
        except Exception as e:
            failure = self.session.failure(e)
            if failure is None:
                raise  # a bug, not the API server
            if failure.status == 404 and verb == "get":
                raise _NotFound from e
            if failure.status == 409 and conflict is not None:
                raise DeployError(self.target, step, conflict) from e
            raise DeployError(self.target, step, self._message(failure, verb, name)) from e

    def _message(self, failure: kube.KubeError, verb: str, name: str) -> str:
        """``failure`` worded for Secret ``name`` (the status-level ones name the object)."""
        if failure.status is None or failure.status == 401:
            return failure.message
        ns = self.config.namespace
        detail = f": {failure.detail}" if failure.detail else ""
        if failure.status == 403:
            return (
                f"permission denied to {verb} Secret {ns}/{name} (check the service account's "
                f"RBAC: get/create/update/delete secrets in {ns}){detail}"
            )
        return f"{verb} Secret {ns}/{name}: {failure.status} {failure.phrase}".rstrip() + detail


class _NotFound(Exception):
    """A ``get`` answered 404 (internal: turned into ``None``)."""


def _rv(obj: Secret) -> str:
    return (obj.metadata.resourceVersion if obj.metadata else None) or ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _identity(serial: str, fingerprint: str) -> dict[str, str]:
    return {ANNOTATION_SERIAL: serial, ANNOTATION_FINGERPRINT: fingerprint}


def _held(data: Mapping[str, str]) -> IssuedCertificate | None:
    """The certificate + key in Secret ``data`` (base64 values), ``None`` when there is none
    that parses. Never says why in terms of the bytes: they include the key."""
    try:
        chain_pem = base64.b64decode(data["tls.crt"], validate=True)
        key_pem = base64.b64decode(data["tls.key"], validate=True)
        chain = load_pem_chain(chain_pem)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None
    if b"PRIVATE KEY-----" not in key_pem:
        return None
    return describe(chain, key_pem, issuer_name="")


# -- configuration -----------------------------------------------------------------------------

_FIELDS = (
    "namespace",
    "secret",
    "kubeconfig",
    "context",
    "timeout",
    "labels",
    "annotations",
    "field_manager",
    "endpoints",
)


class _K8sOptions(_Options):
    """The files target's option reader (paths, durations, endpoints) plus strings and
    string mappings."""

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.fail(name, "a non-empty string (required)")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, "a non-empty string", value)
        return value

    def string_map(self, name: str) -> Mapping[str, str]:
        value = self.data.get(name)
        if value is None:
            return MappingProxyType({})
        if not isinstance(value, Mapping):
            self.fail(name, "a mapping of keys to strings", value)
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                self.fail(f"{name}.{k}", "a string value (quote numbers and booleans)", v)
        return MappingProxyType(dict(value))


def config_from_mapping(
    data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> K8sSecretTargetConfig:
    """A :class:`K8sSecretTargetConfig` from YAML-shaped data; ``ConfigError`` names the field.

    Keys are the dataclass's field names. ``labels`` / ``annotations`` are mappings of strings
    (``"true"``, not ``true``); ``timeout`` a duration (``10s``); ``endpoints`` items are
    ``host:port`` strings or ``{host, port, sni, address}`` mappings.
    """
    o = _K8sOptions(data, source, field)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        o.fail(unknown[0], f"one of the k8s_secret target's options: {', '.join(_FIELDS)}")
    namespace = o.text("namespace", required=True) or ""
    secret = o.text("secret", required=True) or ""
    timeout = o.duration("timeout", 10.0)
    field_manager = o.text("field_manager") or "certpilot"
    labels = o.string_map("labels")
    annotations = o.string_map("annotations")
    for name, expected, value in _problems(
        namespace=namespace,
        secret=secret,
        timeout=timeout,
        field_manager=field_manager,
        labels=labels,
        annotations=annotations,
    ):
        o.fail(name, expected, value)
    return K8sSecretTargetConfig(
        namespace=namespace,
        secret=secret,
        kubeconfig=o.path("kubeconfig"),
        context=o.text("context"),
        timeout=timeout,
        labels=labels,
        annotations=annotations,
        field_manager=field_manager,
        endpoints=o.endpoints("endpoints"),
    )


def from_config(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> K8sSecretTarget:
    """The ``k8s_secret`` entry of ``remediator.targets.TARGET_TYPES``."""
    return K8sSecretTarget(name, config_from_mapping(data, source=source, field=field))
