"""Kubernetes scanner: certificates stored in a cluster (DESIGN.md sections 1-3).

A :class:`KubernetesSource` names one cluster and what to read there. :func:`scan_kubernetes`
lists it once; :func:`watch_kubernetes` lists, then follows changes. Both turn API objects into
observations (:class:`~certpilot.domain.model.Observation`) judged at rest with
:func:`certpilot.domain.judge.judge_stored` (time and strength only, like the file scanner:
trust and hostnames depend on where a certificate is served).

What is read (each a ``kinds`` entry; all by default):

* ``tls_secrets``: Secrets of type ``kubernetes.io/tls`` (core/v1): ``tls.crt`` (leaf and
  chain) and ``ca.crt``; ``tls.key`` is never read.
* ``opaque_secrets``: Secrets of type ``Opaque``: every key whose value holds a PEM
  certificate.
* ``configmaps``: ConfigMaps: every ``data`` or ``binaryData`` key holding a PEM certificate.
* ``webhooks``: ValidatingWebhookConfigurations and MutatingWebhookConfigurations
  (admissionregistration.k8s.io/v1): each ``webhooks[i].clientConfig.caBundle``.
* ``apiservices``: APIServices (apiregistration.k8s.io/v1): ``spec.caBundle``.

Secrets are listed with a ``type`` field selector, so a kind that is not configured is not even
transferred (service-account tokens, Helm releases and docker configs never leave the API
server). Lists are paginated (``limit``/``continue``, :attr:`KubernetesSource.page_size` objects
a page) and filtered by :attr:`KubernetesSource.label_selector` on the server. Only the
configured namespaces are requested (``namespaces`` empty: one cluster-wide list per kind).

Refs (the inventory's location keys) name the cluster, the object and the key:

* ``k8s://{cluster}/{namespace}/secret/{name}#{key}`` and ``.../configmap/{name}#{key}``;
* ``k8s://{cluster}/_cluster/validatingwebhookconfiguration/{name}#webhooks[0].clientConfig.caBundle``
  (and ``mutatingwebhookconfiguration``), ``k8s://{cluster}/_cluster/apiservice/{name}#spec.caBundle``.

The first certificate of a key has the plain ref, the next ones ``#{key}[1]``, ``#{key}[2]``
... (an intermediate in ``tls.crt``, the second root of a CA bundle): every certificate is
judged, as the file scanner does, and ``chain`` holds all certificates of the key. Labels:
the source's ``labels``, then ``store="k8s"``, ``k8s_cluster``, ``k8s_kind``, then
x509-certificate-exporter's ``secret_namespace``/``secret_name``/``secret_key`` (Secrets) or
``configmap_namespace``/``configmap_name``/``configmap_key`` (ConfigMaps), or
``k8s_name``/``k8s_field`` (cluster-scoped objects), and ``owner`` from the first of
:attr:`KubernetesSource.owner_labels`, then :attr:`KubernetesSource.owner_annotations`, set on
the object.

Failures are observations, never exceptions (DESIGN.md section 6.2):

* the cluster cannot be used at all (kubeconfig unusable, API server unreachable, TLS failure,
  timeout, 401): one observation ``ref="k8s://{cluster}"`` with ``connection_refused``,
  ``dns_error``, ``tls_error``, ``timeout`` or ``unreadable``;
* one kind cannot be listed (403 from RBAC, an API group that is not served, a 5xx, more than
  :attr:`KubernetesSource.max_objects` objects): one observation
  ``ref="k8s://{cluster}/{namespace|_all|_cluster}/{what}"`` with ``unreadable``, ``what``
  being ``tls_secrets``, ``opaque_secrets``, ``configmaps``,
  ``validatingwebhookconfigurations``, ``mutatingwebhookconfigurations`` or ``apiservices``;
  the other kinds are still scanned. A consumer must not take the objects of a failed kind as
  deleted;
* a key that should hold a certificate and does not (garbage in ``tls.crt`` or a
  ``caBundle``, a PEM certificate block that does not parse): ``malformed`` on that key's ref.

Messages are one line and name objects, never their contents: no key material, no token.
Private keys are not decoded at all when their key says so (``tls.key``, ``*.key``,
``*key.pem``) and skipped when a value holds nothing else: only ``CERTIFICATE`` PEM blocks are
parsed. Values without a PEM certificate (passwords, configuration) are ignored.

Credentials: ``kubeconfig`` (+ ``context``), or when unset, as in-cluster clients find them:
the pod's service account (``KUBERNETES_SERVICE_HOST`` in ``env`` and the token in
:data:`SERVICE_ACCOUNT_DIR`; the token file is re-read when the API server answers 401, so
rotated tokens work), else the first file of ``$KUBECONFIG``, else ``~/.kube/config``. The
service account needs ``list`` (and ``watch`` for :func:`watch_kubernetes`) on what it reads.
Loading credentials, building the client and classifying API failures is
:mod:`certpilot.kube`'s job (shared with the ``k8s_secret`` deploy target); this module turns
its :class:`~certpilot.kube.KubeError` into observations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from lightkube import ALL_NS, NotReadyError, operators
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import (
    MutatingWebhookConfiguration,
    ValidatingWebhookConfiguration,
)
from lightkube.resources.apiregistration_v1 import APIService
from lightkube.resources.core_v1 import ConfigMap, Secret

from certpilot import kube
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertificateParseError, ConfigError
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_stored
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import ParsedCert, parse_pem_bundle
from certpilot.settings import parse_duration

__all__ = [
    "DEFAULT_OWNER_ANNOTATIONS",
    "DEFAULT_OWNER_LABELS",
    "KINDS",
    "SERVICE_ACCOUNT_DIR",
    "SOURCE",
    "KubernetesSource",
    "OnChange",
    "from_mapping",
    "parse_label_selector",
    "scan_kubernetes",
    "watch_kubernetes",
]

log = logging.getLogger(__name__)

SOURCE = "k8s"
KINDS: tuple[str, ...] = ("tls_secrets", "opaque_secrets", "configmaps", "webhooks", "apiservices")
DEFAULT_OWNER_LABELS: tuple[str, ...] = ("owner", "team", "app.kubernetes.io/part-of")
DEFAULT_OWNER_ANNOTATIONS: tuple[str, ...] = ("certpilot.io/owner",)
SERVICE_ACCOUNT_DIR = kube.SERVICE_ACCOUNT_DIR
"""Where a pod finds its service account's token, CA and namespace (read at each connection,
so it can be pointed elsewhere)."""

TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"

OnChange = Callable[[list[Observation], list[str]], Awaitable[None]]
"""``on_change(observations, removed_refs)`` of :func:`watch_kubernetes`."""

_T = TypeVar("_T")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_MAX_MESSAGE = 500  # room for the API server's own words after ours
_CONTROL = {c: "?" for c in (*range(32), 127)}
_PARSE_CACHE_SIZE = 2048

# RFC 7468 section 2. The body excludes '-' (base64 never has one), so a block with a damaged
# END line cannot swallow the next block.
_CERT_BEGIN = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_CERT_BLOCK = re.compile(
    rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----[^-]*"
    rb"-----END (?:X509 |TRUSTED )?CERTIFICATE-----"
)

# Kubernetes name syntax (k8s.io/apimachinery/pkg/util/validation).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# One requirement of a label selector (k8s.io/apimachinery/pkg/labels/selector.go).
_REQUIREMENT = re.compile(
    r"\s*(?:!\s*(?P<absent>[^\s=!,()]+)"
    r"|(?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!,()]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*(?:,|$)"
)


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True, slots=True)
class KubernetesSource:
    """One cluster and what to read there.

    * ``name`` identifies the cluster in refs (``k8s://{name}/...``) and targets
      (``k8s:{name}``): letters, digits, ``-``, ``_``, ``.``, at most 63.
    * ``kubeconfig`` / ``context``: see the module docstring (``None``: in-cluster, then
      ``$KUBECONFIG``, then ``~/.kube/config``).
    * ``namespaces``: the namespaces to read; empty means all, with one cluster-wide list per
      kind (which needs a ClusterRole). Webhooks and APIServices are cluster-scoped.
    * ``label_selector``: kubectl syntax (``a=b,c!=d,e,!f,g in (x,y)``), applied by the API
      server to every kind.
    * ``kinds``: a subset of :data:`KINDS`.
    * ``owner_labels`` then ``owner_annotations``: the first one set on an object gives the
      observation's ``owner`` label.
    * ``labels``: added to every observation.
    * ``timeout``: bounds each HTTP exchange with the API server.
    * ``max_objects``: objects read at most per scan (and kept at most by a watch); beyond,
      the rest of a kind is reported as not scanned.
    * ``watch``: follow changes with :func:`watch_kubernetes` instead of periodic scans (the
      caller decides; the scanner functions do not read it).
    * ``page_size``: objects per list request (``limit``).
    """

    name: str
    kubeconfig: Path | None = None
    context: str | None = None
    namespaces: tuple[str, ...] = ()
    label_selector: str | None = None
    kinds: tuple[str, ...] = KINDS
    owner_labels: tuple[str, ...] = DEFAULT_OWNER_LABELS
    owner_annotations: tuple[str, ...] = DEFAULT_OWNER_ANNOTATIONS
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    timeout: float = 10.0
    max_objects: int = 100_000
    watch: bool = False
    page_size: int = 500

    def __post_init__(self) -> None:
        for name, expected, _ in _problems({f: getattr(self, f) for f in _FIELDS}):
            raise ValueError(f"{name}: expected {expected}")

    @property
    def ref(self) -> str:
        """The ref of the source's own failures: ``k8s://{name}``."""
        return f"k8s://{self.name}"

    @property
    def target(self) -> str:
        return f"k8s:{self.name}"

    @classmethod
    def from_mapping(
        cls, data: object, *, source: str = "config", field: str = "targets.kubernetes"
    ) -> KubernetesSource:
        """Same as the module's :func:`from_mapping`."""
        return from_mapping(data, source=source, field=field)


_FIELDS = (
    "name",
    "kubeconfig",
    "context",
    "namespaces",
    "label_selector",
    "kinds",
    "owner_labels",
    "owner_annotations",
    "labels",
    "timeout",
    "max_objects",
    "watch",
    "page_size",
)


def _problems(v: Mapping[str, Any]) -> list[tuple[str, str, object]]:
    """``(field, expected, value)`` for every invalid option among the field values ``v``;
    shared by the dataclass's own check and :func:`from_mapping` (which names the field)."""
    out: list[tuple[str, str, object]] = []
    if not _SOURCE_NAME.fullmatch(v["name"]):
        out.append(("name", "a name of letters, digits, '-', '_' or '.', at most 63", v["name"]))
    namespaces: tuple[str, ...] = v["namespaces"]
    for i, ns in enumerate(namespaces):
        if len(ns) > 63 or not _DNS_LABEL.fullmatch(ns):
            expected = "a namespace name (RFC 1123 label: lowercase letters, digits and '-')"
            out.append((f"namespaces[{i}]", expected, ns))
    if len(set(namespaces)) != len(namespaces):
        out.append(("namespaces", "each namespace once", list(namespaces)))
    if v["label_selector"] is not None:
        try:
            parse_label_selector(v["label_selector"])
        except ValueError as e:
            out.append(("label_selector", str(e), v["label_selector"]))
    kinds: tuple[str, ...] = v["kinds"]
    if not kinds:
        out.append(("kinds", f"at least one of {', '.join(KINDS)}", list(kinds)))
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            out.append((f"kinds[{i}]", f"one of {', '.join(KINDS)}", kind))
    for name in ("owner_labels", "owner_annotations"):
        for i, key in enumerate(v[name]):
            if problem := _key_problem(key):
                out.append((f"{name}[{i}]", problem, key))
    labels: Mapping[object, object] = v["labels"]
    for key, value in labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            out.append((f"labels.{key}", "a string value (quote numbers and booleans)", value))
    if not v["timeout"] > 0:
        out.append(("timeout", "a positive duration", v["timeout"]))
    if not 1 <= v["max_objects"] <= 10_000_000:
        out.append(("max_objects", "a number of objects from 1 to 10000000", v["max_objects"]))
    if not 1 <= v["page_size"] <= 100_000:
        out.append(("page_size", "a page size from 1 to 100000", v["page_size"]))
    return out


def _key_problem(key: object) -> str | None:
    """Why ``key`` is not a label or annotation key (``[prefix/]name``)."""
    if not isinstance(key, str):
        return "a label or annotation key"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "a key whose prefix (before '/') is a DNS subdomain"
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return "a key [prefix/]name, name at most 63 letters, digits, '-', '_' or '.'"
    return None


LabelValue = str | operators.Operator[Any] | Iterable[str] | None


def parse_label_selector(text: str) -> dict[str, LabelValue]:
    """A kubectl-style label selector as lightkube's ``labels`` mapping; ``ValueError`` with
    what was expected. ``a=b``/``a==b``, ``a!=b``, ``a`` (exists), ``!a``, ``a in (x,y)``,
    ``a notin (x,y)``; each key once (the mapping has one entry per key)."""
    out: dict[str, LabelValue] = {}
    text = text.strip()
    pos = 0
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(
                f"a label selector such as 'app=web,tier!=db,team' (cannot parse {text[pos:]!r})"
            )
        pos = m.end()
        key = m["absent"] or m["key"]
        value: LabelValue
        if m["absent"]:
            value = operators.not_exists()
        elif m["op"] == "!=":
            value = operators.not_equal(m["value"])
        elif m["op"]:
            value = m["value"]
        elif m["set"]:
            values = [v.strip() for v in m["values"].split(",") if v.strip()]
            if not values:
                raise ValueError(f"at least one value in the parentheses of {m[0].strip()!r}")
            value = operators.in_(values) if m["set"] == "in" else operators.not_in(values)
        else:
            value = None  # exists
        if problem := _key_problem(key):
            raise ValueError(f"{problem} (in label selector: {key!r})")
        if key in out:
            raise ValueError(f"each label key once (use 'in'/'notin' for {key!r})")
        out[key] = value
    if not out:
        raise ValueError("a non-empty label selector (omit the option to select everything)")
    return out


class _Reader:
    """Reads YAML-shaped options; every failure is a ``ConfigError`` naming the field."""

    def __init__(self, data: Mapping[str, object], source: str, field: str) -> None:
        self.data = data
        self.source = source
        self.field = field

    def fail(self, name: str, expected: str, value: object = None, *, has: bool = True) -> NoReturn:
        path = f"{self.field}.{name}" if name else self.field
        raise ConfigError(self.source, path, expected, value, has_value=has)

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.fail(name, "a non-empty string (required)", has=False)
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, "a non-empty string", value)
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, list | tuple):
            self.fail(name, "a list of strings", value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.fail(f"{name}[{i}]", "a non-empty string", item)
        return tuple(value)

    def string_map(self, name: str) -> Mapping[str, str]:
        value = self.data.get(name)
        if value is None:
            return _EMPTY
        if not isinstance(value, Mapping):
            self.fail(name, "a mapping of keys to strings", value)
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                self.fail(f"{name}.{k}", "a string value (quote numbers and booleans)", v)
        return MappingProxyType(dict(value))

    def integer(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, "a whole number", value)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.fail(name, "true or false", value)
        return value


def from_mapping(
    data: object, *, source: str = "config", field: str = "targets.kubernetes"
) -> KubernetesSource:
    """A :class:`KubernetesSource` from YAML-shaped data; ``ConfigError(source, field path,
    expected, value)`` names the first invalid option (``field`` is the mapping's own path,
    e.g. ``targets.kubernetes[0]``). Keys are the dataclass's field names; ``timeout`` is a
    duration (``10s``); ``labels`` maps strings to strings."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, field, "a mapping of kubernetes source options", data)
    r = _Reader(data, source, field)
    unknown = sorted(str(k) for k in set(data) - set(_FIELDS))
    if unknown:
        r.fail(unknown[0], f"one of the kubernetes source's options: {', '.join(_FIELDS)}")
    name = r.text("name", required=True) or ""
    kubeconfig = r.text("kubeconfig")
    selector = r.text("label_selector")
    try:
        timeout = parse_duration(data.get("timeout", 10.0))
    except ValueError:
        r.fail("timeout", "a duration such as 10s", data.get("timeout"))
    values: dict[str, Any] = {
        "name": name,
        "kubeconfig": Path(kubeconfig).expanduser() if kubeconfig else None,
        "context": r.text("context"),
        "namespaces": r.strings("namespaces", ()),
        "label_selector": selector.strip() if selector else None,
        "kinds": tuple(dict.fromkeys(r.strings("kinds", KINDS))),
        "owner_labels": r.strings("owner_labels", DEFAULT_OWNER_LABELS),
        "owner_annotations": r.strings("owner_annotations", DEFAULT_OWNER_ANNOTATIONS),
        "labels": r.string_map("labels"),
        "timeout": timeout,
        "max_objects": r.integer("max_objects", 100_000),
        "watch": r.flag("watch", False),
        "page_size": r.integer("page_size", 500),
    }
    for option, expected, value in _problems(values):
        r.fail(option, expected, value)
    return KubernetesSource(**values)


# ---------------------------------------------------------------------------------------------
# what is read: feeds (one kind of object in one scope)


@dataclass(frozen=True, slots=True)
class _Feed:
    """One list (and watch): a resource, in one namespace, all namespaces (``ALL_NS``) or
    at the cluster scope (``None``), with a field selector."""

    kind: str  # the ``kinds`` entry it serves
    name: str  # its name in error refs and messages: tls_secrets, configmaps, apiservices ...
    resource: Any  # the lightkube resource class
    plural: str  # the API's resource name, for messages
    namespace: str | None
    fields: Mapping[str, str] | None = None

    @property
    def scope(self) -> str:
        if self.namespace is None:
            return "_cluster"
        return "_all" if self.namespace == ALL_NS else self.namespace

    def where(self) -> str:
        if self.namespace is None:
            return "at the cluster scope"
        if self.namespace == ALL_NS:
            return "in all namespaces"
        return f"in namespace {self.namespace}"

    def error_ref(self, source: KubernetesSource) -> str:
        return f"k8s://{source.name}/{self.scope}/{self.name}"

    @property
    def id(self) -> str:
        return f"{self.scope}/{self.name}"


def _feeds(source: KubernetesSource) -> list[_Feed]:
    scopes: Sequence[str] = source.namespaces or (ALL_NS,)
    out: list[_Feed] = []
    for kind in KINDS:
        if kind not in source.kinds:
            continue
        if kind == "tls_secrets":
            out += [_Feed(kind, kind, Secret, "secrets", ns, {"type": TLS_TYPE}) for ns in scopes]
        elif kind == "opaque_secrets":
            out += [
                _Feed(kind, kind, Secret, "secrets", ns, {"type": OPAQUE_TYPE}) for ns in scopes
            ]
        elif kind == "configmaps":
            out += [_Feed(kind, kind, ConfigMap, "configmaps", ns) for ns in scopes]
        elif kind == "webhooks":
            for res in (ValidatingWebhookConfiguration, MutatingWebhookConfiguration):
                plural = res.__name__.lower() + "s"
                out.append(_Feed(kind, plural, res, plural, None))
        else:
            out.append(_Feed(kind, "apiservices", APIService, "apiservices", None))
    return out


# ---------------------------------------------------------------------------------------------
# objects -> observations (no I/O; run in a worker thread, a page at a time)


@dataclass(frozen=True, slots=True)
class _Failure:
    """A key that should hold a certificate but does not (never quotes the bytes)."""

    reason: str


class _ParseCache:
    """Parsed certificate blocks by their PEM bytes, least recently used out.

    CA certificates repeat across a cluster (every ``ca.crt`` and chain of one issuer, a CA
    bundle injected into many webhooks): each is parsed once. Thread-safe.
    """

    def __init__(self, size: int = _PARSE_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[bytes, ParsedCert | _Failure] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, block: bytes) -> ParsedCert | _Failure:
        with self._lock:
            hit = self._items.get(block)
            if hit is not None:
                self._items.move_to_end(block)
                return hit
        parsed = parse_pem_bundle(block)
        entry: ParsedCert | _Failure
        if len(parsed) == 1 and isinstance(parsed[0], ParsedCert):
            entry = parsed[0]
        else:
            err = parsed[0] if parsed else None
            message = err.message if isinstance(err, CertificateParseError) else "unreadable"
            entry = _Failure(message)
        with self._lock:
            self._items[block] = entry
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        return entry


class _Observer:
    """Turns API objects into observations for one source."""

    def __init__(self, source: KubernetesSource, policy: JudgePolicy) -> None:
        self.source = source
        self.policy = policy
        self.cache = _ParseCache()

    def page(
        self, feed: _Feed, objects: Sequence[Any], now: datetime
    ) -> dict[tuple[str, str], tuple[Observation, ...]]:
        return {_key(obj): self.observe(feed, obj, now) for obj in objects}

    def observe(self, feed: _Feed, obj: Any, now: datetime) -> tuple[Observation, ...]:
        """The observations of one object (empty when it holds no certificate)."""
        if feed.fields and getattr(obj, "type", None) != feed.fields.get("type"):
            return ()  # not what the field selector asked for (a server that ignored it)
        started = time.perf_counter()
        meta: ObjectMeta = obj.metadata or ObjectMeta()
        ns, name = meta.namespace or "", meta.name or ""
        base = dict(self.source.labels)
        base.update(store=SOURCE, k8s_cluster=self.source.name)
        owner = self._owner(meta)
        out: list[Observation] = []

        def emit(
            ref: str, what: str, data: bytes | None, labels: dict[str, str], *, required: bool
        ) -> None:
            if owner is not None:
                labels["owner"] = owner
            out.extend(self._key(ref, what, data, labels, now, started, required=required))

        c = self.source.name
        if isinstance(obj, Secret):
            data = obj.data or {}
            labels = {**base, "k8s_kind": "secret", "secret_namespace": ns, "secret_name": name}
            ref = f"k8s://{c}/{ns}/secret/{name}"
            what = f"Secret {ns}/{name}"
            if obj.type == TLS_TYPE:
                # tls.crt must hold the certificate; ca.crt is optional but, when set, a CA.
                for key in ("tls.crt", "ca.crt"):
                    value = data.get(key)
                    if value is None or (key == "ca.crt" and not value):
                        continue
                    emit(
                        f"{ref}#{key}",
                        f"{what} key {key}",
                        _b64(value),
                        {**labels, "secret_key": key},
                        required=True,
                    )
            else:
                for key in sorted(data):
                    if _is_key_name(key):
                        continue  # private key material: not even decoded
                    emit(
                        f"{ref}#{key}",
                        f"{what} key {key}",
                        _b64(data[key]),
                        {**labels, "secret_key": key},
                        required=False,
                    )
        elif isinstance(obj, ConfigMap):
            labels = {
                **base,
                "k8s_kind": "configmap",
                "configmap_namespace": ns,
                "configmap_name": name,
            }
            ref = f"k8s://{c}/{ns}/configmap/{name}"
            what = f"ConfigMap {ns}/{name}"
            values: dict[str, bytes | None] = {
                k: v.encode("utf-8", "surrogateescape") if isinstance(v, str) else None
                for k, v in (obj.data or {}).items()
            }
            values.update({k: _b64(v) for k, v in (obj.binaryData or {}).items()})
            for key in sorted(values):
                if _is_key_name(key):
                    continue
                emit(
                    f"{ref}#{key}",
                    f"{what} key {key}",
                    values[key],
                    {**labels, "configmap_key": key},
                    required=False,
                )
        elif isinstance(obj, ValidatingWebhookConfiguration | MutatingWebhookConfiguration):
            kind = type(obj).__name__.lower()
            ref = f"k8s://{c}/_cluster/{kind}/{name}"
            hooks: list[Any] = list(obj.webhooks or ())
            for i, hook in enumerate(hooks):
                bundle = hook.clientConfig.caBundle if hook.clientConfig else None
                if not bundle:
                    continue  # no caBundle: the API server verifies with system roots
                f = f"webhooks[{i}].clientConfig.caBundle"
                labels = {**base, "k8s_kind": kind, "k8s_name": name, "k8s_field": f}
                emit(
                    f"{ref}#{f}",
                    f"{type(obj).__name__} {name} webhook {hook.name} caBundle",
                    _b64(bundle),
                    labels,
                    required=True,
                )
        elif isinstance(obj, APIService):
            bundle = obj.spec.caBundle if obj.spec else None
            if bundle:
                f = "spec.caBundle"
                labels = {**base, "k8s_kind": "apiservice", "k8s_name": name, "k8s_field": f}
                emit(
                    f"k8s://{c}/_cluster/apiservice/{name}#{f}",
                    f"APIService {name} caBundle",
                    _b64(bundle),
                    labels,
                    required=True,
                )
        return tuple(out)

    def _owner(self, meta: ObjectMeta) -> str | None:
        labels = meta.labels or {}
        for key in self.source.owner_labels:
            if labels.get(key):
                return str(labels[key])
        annotations = meta.annotations or {}
        for key in self.source.owner_annotations:
            if annotations.get(key):
                return _one_line(str(annotations[key]))
        return None

    def _key(
        self,
        ref: str,
        what: str,
        data: bytes | None,
        labels: dict[str, str],
        now: datetime,
        started: float,
        *,
        required: bool,
    ) -> list[Observation]:
        """The observations of one key's value (``None``: not decodable)."""
        entries = self._certificates(data, required=required)
        chain = tuple(e.info for e in entries if isinstance(e, ParsedCert))
        frozen = MappingProxyType(labels)
        out: list[Observation] = []
        for i, entry in enumerate(entries):
            item_ref = ref if i == 0 else f"{ref}[{i}]"
            duration = time.perf_counter() - started
            if isinstance(entry, ParsedCert):
                out.append(
                    Observation(
                        source=SOURCE,
                        ref=item_ref,
                        target=self.source.target,
                        observed_at=now,
                        problems=tuple(judge_stored(entry, now, self.policy)),
                        leaf=entry.info,
                        chain=chain,
                        duration_seconds=duration,
                        labels=frozen,
                    )
                )
            else:
                message = _one_line(f"{what}: {entry.reason}")
                out.append(
                    Observation(
                        source=SOURCE,
                        ref=item_ref,
                        target=self.source.target,
                        observed_at=now,
                        problems=(Problem(ProblemCode.MALFORMED, message),),
                        error=message,
                        duration_seconds=duration,
                        labels=frozen,
                    )
                )
        return out

    def _certificates(self, data: bytes | None, *, required: bool) -> list[ParsedCert | _Failure]:
        """Every certificate block of ``data`` in order, a failure in place of a bad one.
        Not ``required``: data without a certificate block is nobody's business (``[]``)."""
        if data is None:
            return [_Failure("not valid base64")] if required else []
        begins = len(_CERT_BEGIN.findall(data))
        if not begins:
            if not required:
                return []
            if not data.strip():
                return [_Failure("empty, no certificate")]
            return [_Failure("no PEM certificate found")]
        entries: list[ParsedCert | _Failure] = []
        for i, m in enumerate(_CERT_BLOCK.finditer(data)):
            entry = self.cache.get(m.group(0))
            if isinstance(entry, _Failure):
                entry = _Failure(f"certificate block #{i}: {entry.reason}")
            entries.append(entry)
        if begins > len(entries):
            entries.append(_Failure(f"certificate block #{len(entries)} has no END line"))
        return entries


def _key(obj: Any) -> tuple[str, str]:
    meta = obj.metadata
    return (meta.namespace or "", meta.name or "") if meta else ("", "")


def _is_key_name(key: str) -> bool:
    """Keys that hold private keys by convention (kubernetes.io/tls, cert-manager, Istio)."""
    lowered = key.lower()
    return lowered.endswith((".key", "key.pem"))


def _b64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _one_line(text: str) -> str:
    """Control characters out, length capped."""
    text = text.translate(_CONTROL)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# ---------------------------------------------------------------------------------------------
# API access


class _Unavailable(Exception):
    """A feed cannot be read. ``whole``: nothing of the source can (unreachable, 401)."""

    def __init__(self, code: ProblemCode, message: str, *, whole: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = _one_line(message)
        self.whole = whole


class _Gone(Exception):
    """410: the resourceVersion to watch from is too old; list again."""


_REASON_CODES: Mapping[str, ProblemCode] = MappingProxyType(
    {
        kube.TIMEOUT: ProblemCode.TIMEOUT,
        kube.REFUSED: ProblemCode.CONNECTION_REFUSED,
        kube.DNS: ProblemCode.DNS_ERROR,
        kube.TLS: ProblemCode.TLS_ERROR,
    }
)
"""Problem codes of the whole-source failures that have one; the others are ``unreadable``."""


class _Session:
    """One connection (:class:`certpilot.kube.Session`) and the translation of its failures
    into :class:`_Unavailable` / :class:`_Gone`."""

    def __init__(self, source: KubernetesSource, session: kube.Session) -> None:
        self.source = source
        self.client = session.client
        self.session = session

    @classmethod
    @asynccontextmanager
    async def open(
        cls, source: KubernetesSource, env: Mapping[str, str]
    ) -> AsyncIterator[_Session]:
        connection = kube.Connection(
            kubeconfig=source.kubeconfig,
            context=source.context,
            timeout=source.timeout,
            service_account_dir=SERVICE_ACCOUNT_DIR,  # read now: tests point it elsewhere
        )
        async with AsyncExitStack() as stack:
            try:
                session = await stack.enter_async_context(connection.session(env))
            except kube.KubeError as e:  # kubeconfig or client unusable
                raise _Unavailable(ProblemCode.UNREADABLE, e.message, whole=True) from e
            yield cls(source, session)

    def selectors(self, feed: _Feed) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if feed.namespace is not None:
            kwargs["namespace"] = feed.namespace
        if self.source.label_selector:
            kwargs["labels"] = parse_label_selector(self.source.label_selector)
        if feed.fields:
            kwargs["fields"] = dict(feed.fields)
        return kwargs

    def failure(self, e: BaseException, feed: _Feed, verb: str) -> _Unavailable | _Gone | None:
        """What ``e`` means for ``feed``; ``None`` when it is not an API failure (a bug)."""
        failure = self.session.failure(e)
        if failure is None:
            return None
        if failure.reason == kube.GONE:
            return _Gone()
        if failure.fatal:
            code = _REASON_CODES.get(failure.reason, ProblemCode.UNREADABLE)
            return _Unavailable(code, failure.message, whole=True)
        what = f"{feed.plural} {feed.where()}"
        if failure.reason == kube.FORBIDDEN:
            detail = f": {failure.detail}" if failure.detail else ""
            message = f"permission denied to {verb} {what} (RBAC: grant list and watch){detail}"
        else:
            message = f"{verb} {what}: {failure.message}"
        return _Unavailable(ProblemCode.UNREADABLE, message, whole=False)


class _Budget:
    """``max_objects`` shared by the feeds of one scan or watch."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.used: dict[str, int] = {}

    def take(self, feed: _Feed) -> bool:
        if self.total >= self.limit:
            return False
        self.total += 1
        self.used[feed.id] = self.used.get(feed.id, 0) + 1
        return True

    def release(self, feed: _Feed, n: int = 1) -> None:
        n = min(n, self.used.get(feed.id, 0))
        self.used[feed.id] = self.used.get(feed.id, 0) - n
        self.total -= n

    def reset(self, feed: _Feed) -> None:
        self.release(feed, self.used.get(feed.id, 0))


@dataclass(slots=True)
class _Listing:
    resource_version: str | None
    objects: dict[tuple[str, str], tuple[Observation, ...]]
    truncated: bool = False


async def _list(
    session: _Session,
    feed: _Feed,
    observer: _Observer,
    budget: _Budget,
    now: datetime,
) -> _Listing:
    """One paginated LIST of ``feed``; pages are turned into observations in a worker thread
    while the next page is fetched (parsing is CPU-bound: the event loop stays free)."""
    size = session.source.page_size
    listing = session.client.list(feed.resource, chunk_size=size, **session.selectors(feed))
    objects: dict[tuple[str, str], tuple[Observation, ...]] = {}
    batch: list[Any] = []
    pending: asyncio.Future[dict[tuple[str, str], tuple[Observation, ...]]] | None = None
    truncated = False
    try:
        try:
            async for obj in listing:
                if not budget.take(feed):
                    truncated = True
                    break
                batch.append(obj)
                if len(batch) >= size:
                    if pending is not None:
                        objects.update(await pending)
                    pending = asyncio.ensure_future(
                        asyncio.to_thread(observer.page, feed, batch, now)
                    )
                    batch = []
        except Exception as e:
            failure = session.failure(e, feed, "list")
            if failure is None:
                raise
            raise failure from e
        if pending is not None:
            objects.update(await pending)
            pending = None
        if batch:
            objects.update(await asyncio.to_thread(observer.page, feed, batch, now))
    finally:
        if pending is not None:  # a thread cannot be cancelled: let it end, drop its result
            await asyncio.gather(pending, return_exceptions=True)
    try:
        rv: str | None = listing.resourceVersion
    except NotReadyError:
        rv = None
    return _Listing(rv, objects, truncated)


def _source_error(
    source: KubernetesSource, failure: _Unavailable, now: datetime, duration: float
) -> Observation:
    return Observation(
        source=SOURCE,
        ref=source.ref,
        target=source.target,
        observed_at=now,
        problems=(Problem(failure.code, failure.message),),
        error=failure.message,
        duration_seconds=duration,
        labels=MappingProxyType({**source.labels, "store": SOURCE, "k8s_cluster": source.name}),
    )


def _feed_error(
    source: KubernetesSource, feed: _Feed, message: str, now: datetime, duration: float
) -> Observation:
    message = _one_line(message)
    labels = {
        **source.labels,
        "store": SOURCE,
        "k8s_cluster": source.name,
        "k8s_kind": feed.name,
        "k8s_scope": feed.scope,
    }
    return Observation(
        source=SOURCE,
        ref=feed.error_ref(source),
        target=source.target,
        observed_at=now,
        problems=(Problem(ProblemCode.UNREADABLE, message),),
        error=message,
        duration_seconds=duration,
        labels=MappingProxyType(labels),
    )


def _truncated_message(source: KubernetesSource, feed: _Feed) -> str:
    return (
        f"more than max_objects ({source.max_objects}) objects: {feed.plural} {feed.where()} "
        "not (fully) scanned"
    )


# ---------------------------------------------------------------------------------------------
# scan


async def scan_kubernetes(
    source: KubernetesSource,
    clock: Clock,
    *,
    policy: JudgePolicy = DEFAULT_POLICY,
    env: Mapping[str, str],
) -> list[Observation]:
    """One full LIST pass over what ``source`` names: the observations of every certificate
    found, plus one per failure (see the module docstring). Never raises for cluster or data
    problems. Kinds are read one after the other, namespaces in the configured order, so the
    API server sees one request at a time. ``env`` supplies ``KUBECONFIG``,
    ``KUBERNETES_SERVICE_HOST`` and ``HOME`` when ``kubeconfig`` is unset (pass
    ``os.environ``)."""
    started = time.perf_counter()
    now = clock.now()
    observer = _Observer(source, policy)
    budget = _Budget(source.max_objects)
    out: list[Observation] = []
    try:
        async with _Session.open(source, env) as session:
            for feed in _feeds(source):
                feed_started = time.perf_counter()
                try:
                    listing = await _list(session, feed, observer, budget, now)
                except _Gone:  # a continue token expired (etcd compaction) mid-list
                    message = f"list {feed.plural} {feed.where()}: 410 Expired (list again)"
                    out.append(_feed_error(source, feed, message, now, _since(feed_started)))
                    continue
                except _Unavailable as e:
                    if e.whole:
                        raise
                    out.append(_feed_error(source, feed, e.message, now, _since(feed_started)))
                    continue
                for found in listing.objects.values():
                    out.extend(found)
                if listing.truncated:
                    message = _truncated_message(source, feed)
                    out.append(_feed_error(source, feed, message, now, _since(feed_started)))
    except _Unavailable as e:
        out.append(_source_error(source, e, now, _since(started)))
    return out


def _since(started: float) -> float:
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# watch


class _Stopped(Exception):
    """``stop`` was set while waiting."""


class _Watcher:
    """State shared by the feeds of one :func:`watch_kubernetes`: the callback (one call at a
    time), the refs of failures reported and not yet cleared, the object budget."""

    def __init__(
        self,
        source: KubernetesSource,
        clock: Clock,
        policy: JudgePolicy,
        env: Mapping[str, str],
        on_change: OnChange,
        stop: asyncio.Event,
        *,
        retry_initial: float,
        retry_max: float,
        watch_timeout: float,
    ) -> None:
        self.source = source
        self.clock = clock
        self.env = env
        self.on_change = on_change
        self.stop = stop
        self.observer = _Observer(source, policy)
        self.budget = _Budget(source.max_objects)
        self.failing: dict[str, tuple[tuple[ProblemCode, ...], str | None]] = {}
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.watch_timeout = watch_timeout
        self._lock = asyncio.Lock()

    async def emit(self, observations: list[Observation], removed: list[str]) -> None:
        if observations or removed:
            async with self._lock:
                await self.on_change(observations, removed)

    async def until_stopped(self, awaitable: Coroutine[Any, Any, _T]) -> _T:
        """``awaitable``'s result, or :class:`_Stopped` as soon as ``stop`` is set (the
        awaitable is cancelled then). Callbacks are never raced: only I/O waits are."""
        if self.stop.is_set():
            awaitable.close()
            raise _Stopped
        work = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((work, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if work.done():
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise _Stopped

    async def sleep(self, seconds: float) -> None:
        """Sleep, or :class:`_Stopped`."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise _Stopped

    async def failed(self, observation: Observation) -> None:
        """Report a failure once while it lasts (again only when it changes: a connection
        cut first, then refused)."""
        state = (observation.codes, observation.error)
        if self.failing.get(observation.ref) != state:
            self.failing[observation.ref] = state
            await self.emit([observation], [])

    def cleared(self, *refs: str) -> list[str]:
        """The failure refs among ``refs`` that were reported: they are gone now."""
        out = [r for r in refs if r in self.failing]
        for ref in out:
            del self.failing[ref]
        return out


class _FeedWatch:
    """LIST then WATCH of one feed, for ever: 410 lists again at once; other failures are
    reported (once), then retried with exponential backoff, with a fresh client and a new
    LIST (a dropped watch may have missed events only the list shows)."""

    def __init__(self, watcher: _Watcher, feed: _Feed) -> None:
        self.w = watcher
        self.feed = feed
        self.known: dict[tuple[str, str], tuple[str, ...]] = {}
        self.full = False  # max_objects reached: warned once
        # The last failure was the watch's (the list worked): a later list does not show it is
        # over (a watch refused by RBAC would be reported and cleared on every retry); the
        # watch's first event or quiet period does.
        self.watch_failed = False
        self.delay = watcher.retry_initial

    async def run(self) -> None:
        w = self.w
        while not w.stop.is_set():
            watching = False
            try:
                async with _Session.open(w.source, w.env) as session:
                    rv = await self._list(session)
                    watching = True
                    while True:
                        rv = await self._watch(session, rv)
            except _Stopped:
                return
            except _Gone:
                continue  # list again, now
            except _Unavailable as e:
                self.watch_failed = watching
                now = w.clock.now()
                if e.whole:
                    await w.failed(_source_error(w.source, e, now, 0.0))
                else:
                    await w.failed(_feed_error(w.source, self.feed, e.message, now, 0.0))
                log.warning(
                    "kubernetes %s: %s (retrying in %gs)", w.source.name, e.message, self.delay
                )
                try:
                    await w.sleep(self.delay)
                except _Stopped:
                    return
                self.delay = min(self.delay * 2, w.retry_max)

    async def _list(self, session: _Session) -> str:
        """LIST: report every object, the refs that went away since the last list, and the
        failures this clears. The resourceVersion to watch from."""
        w = self.w
        w.budget.reset(self.feed)
        listing = await w.until_stopped(
            _list(session, self.feed, w.observer, w.budget, w.clock.now())
        )
        refs = {key: tuple(o.ref for o in found) for key, found in listing.objects.items()}
        current = {r for group in refs.values() for r in group}
        removed = [r for group in self.known.values() for r in group if r not in current]
        if not self.watch_failed:
            removed += w.cleared(w.source.ref, self.feed.error_ref(w.source))
        self.known = refs
        observations = [o for found in listing.objects.values() for o in found]
        if listing.truncated:
            message = _truncated_message(w.source, self.feed)
            error = _feed_error(w.source, self.feed, message, w.clock.now(), 0.0)
            observations.append(error)
            w.failing[error.ref] = (error.codes, error.error)
        await w.emit(observations, removed)
        if listing.resource_version is None:
            raise _Unavailable(
                ProblemCode.UNREADABLE,
                f"list {self.feed.plural} {self.feed.where()}: the API server sent no "
                "resourceVersion to watch from",
                whole=False,
            )
        return listing.resource_version

    async def _watch(self, session: _Session, rv: str) -> str:
        """WATCH from ``rv`` until the stream is quiet for ``watch_timeout`` (then the caller
        resumes from the returned resourceVersion) or fails."""
        w = self.w
        # timeoutSeconds: the API server ends the stream cleanly; lightkube then reconnects
        # from the last resourceVersion by itself. The idle limit below catches a connection
        # that died without a FIN (no events ever come again).
        events = session.client.watch(
            self.feed.resource,
            resource_version=rv,
            server_timeout=max(1, int(w.watch_timeout)),
            **session.selectors(self.feed),
        ).__aiter__()
        idle = w.watch_timeout + w.source.timeout + 5.0
        try:
            while True:
                try:
                    kind, obj = await w.until_stopped(asyncio.wait_for(events.__anext__(), idle))
                except (StopAsyncIteration, TimeoutError):
                    # Quiet for watch_timeout, or dead: resume from rv on the same client.
                    await self._watching()
                    return rv
                except _Stopped:
                    raise
                except Exception as e:
                    failure = session.failure(e, self.feed, "watch")
                    if failure is None:
                        raise
                    raise failure from e
                meta = obj.metadata
                if meta is not None and meta.resourceVersion:
                    rv = meta.resourceVersion
                await self._watching()
                if kind == "BOOKMARK":
                    continue
                await self._event(kind, obj)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await asyncio.gather(aclose(), return_exceptions=True)

    async def _watching(self) -> None:
        """The watch works: reset the backoff, clear a failure of the watch."""
        w = self.w
        self.delay = w.retry_initial
        if self.watch_failed:
            self.watch_failed = False
            await w.emit([], w.cleared(w.source.ref, self.feed.error_ref(w.source)))

    async def _event(self, kind: str, obj: Any) -> None:
        w = self.w
        key = _key(obj)
        old = self.known.get(key, ())
        if kind == "DELETED":
            if key in self.known:
                del self.known[key]
                w.budget.release(self.feed)
            await w.emit([], list(old))
            return
        if key not in self.known and not w.budget.take(self.feed):
            if not self.full:
                self.full = True
                log.warning(
                    "kubernetes %s: %s", w.source.name, _truncated_message(w.source, self.feed)
                )
            return
        found = await asyncio.to_thread(w.observer.observe, self.feed, obj, w.clock.now())
        refs = tuple(o.ref for o in found)
        self.known[key] = refs
        await w.emit(list(found), [r for r in old if r not in refs])


async def watch_kubernetes(
    source: KubernetesSource,
    clock: Clock,
    *,
    policy: JudgePolicy = DEFAULT_POLICY,
    env: Mapping[str, str],
    on_change: OnChange,
    stop: asyncio.Event,
    retry_initial: float = 1.0,
    retry_max: float = 60.0,
    watch_timeout: float = 300.0,
) -> None:
    """Follow ``source`` until ``stop`` is set; returns then (promptly: I/O waits are raced
    against ``stop``, ``on_change`` calls are not interrupted).

    Per kind and namespace: a LIST, then a WATCH from the list's resourceVersion.
    ``on_change(observations, removed_refs)`` is called (one call at a time, never with both
    empty):

    * after each LIST with every observation of the kind (as :func:`scan_kubernetes` would
      give) and the refs that disappeared since the previous LIST of it;
    * per ADDED/MODIFIED event with the object's observations and the refs it no longer has
      (a key removed); per DELETED event with the object's refs;
    * on a failure, once while it lasts, with its observation (``k8s://{cluster}`` or the
      kind's error ref); the LIST that succeeds afterwards removes that ref.

    A ``410 Gone`` (the resourceVersion is too old) lists again at once; other failures retry
    with exponential backoff from ``retry_initial`` to ``retry_max`` seconds, then LIST again.
    A stream quiet for ``watch_timeout`` seconds (the API server is asked to end it then) is
    resumed from the last resourceVersion. Memory is bounded by ``max_objects``: the refs of
    at most that many objects are kept. Exceptions from ``on_change`` end the watch and
    propagate.
    """
    watcher = _Watcher(
        source,
        clock,
        policy,
        env,
        on_change,
        stop,
        retry_initial=retry_initial,
        retry_max=retry_max,
        watch_timeout=watch_timeout,
    )
    tasks = [asyncio.ensure_future(_FeedWatch(watcher, feed).run()) for feed in _feeds(source)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
