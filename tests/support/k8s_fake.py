"""A loopback fake of the few Kubernetes API paths certpilot uses.

No API server can run on this machine (DESIGN.md section 4), so this replays the real one's
behaviour on the paths the ``k8s_secret`` deploy target and the ``scanner.k8s`` scanner call,
over HTTPS with bearer-token authentication, as lightkube (or kubectl) talks to it:

=======  ========================================================  ===========================
verb     path                                                      answers
=======  ========================================================  ===========================
GET      ``/api/v1/namespaces/{ns}/secrets``                       ``SecretList``; WATCH
POST     ``/api/v1/namespaces/{ns}/secrets``                       201 object; 409
                                                                   AlreadyExists; 404
                                                                   namespace; 422 Invalid;
                                                                   400 BadRequest
GET      ``/api/v1/namespaces/{ns}/secrets/{name}``                200 object; 404 NotFound
PUT      ``/api/v1/namespaces/{ns}/secrets/{name}``                200 object; 409 Conflict
                                                                   on a stale
                                                                   ``metadata.resourceVersion``
DELETE   ``/api/v1/namespaces/{ns}/secrets/{name}``                200 ``Status`` Success; 404;
                                                                   409 on a failed
                                                                   ``preconditions`` body
GET      ``/api/v1/secrets``, ``/api/v1/configmaps``               all namespaces; WATCH
GET      ``/api/v1/namespaces/{ns}/configmaps``                    ``ConfigMapList``; WATCH
GET      ``/apis/admissionregistration.k8s.io/v1/``                ``...WebhookConfiguration
         ``validatingwebhookconfigurations`` (and ``mutating...``)  List``; WATCH
GET      ``/apis/apiregistration.k8s.io/v1/apiservices``           ``APIServiceList``; WATCH
=======  ========================================================  ===========================

Shapes follow kube-apiserver: objects carry ``kind``, ``apiVersion``, ``metadata.uid``,
``metadata.creationTimestamp`` and ``metadata.resourceVersion`` (a string, from one counter for
the whole store, like etcd's revision; ``managedFields`` are left out); list items carry
neither ``kind`` nor ``apiVersion``; errors are ``Status`` objects with the real ``reason``,
``message`` and ``details`` wording (k8s.io/apimachinery/pkg/api/errors); ``data`` values are
base64 and ``stringData`` is merged into ``data`` on write and never returned; a Secret's
``type`` is immutable, ``kubernetes.io/tls`` requires ``tls.crt`` and ``tls.key``, an
``immutable`` Secret's data cannot change. Responses are ``Content-Type: application/json``
exactly (lightkube only decodes a ``Status`` when the header is exactly that) and end in a
newline, as Go's ``json.Encoder`` writes them.

Lists (api-concepts, "Retrieving large results sets in chunks",
https://kubernetes.io/docs/reference/using-api/api-concepts/#retrieving-large-results-sets-in-chunks):
``limit`` and ``continue`` paginate in key order (namespace/name, as etcd keys sort), with
``metadata.continue`` (an opaque token) and ``remainingItemCount`` while more remain, and
``metadata.resourceVersion`` of the list (later pages repeat the first page's). Unlike etcd the
fake keeps no snapshot: a later page shows the objects as they are now. ``labelSelector``
(``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``) and
``fieldSelector`` (``metadata.name``, ``metadata.namespace``, and a Secret's ``type``, with
``=``/``==``/``!=``) filter both lists and watches.

Watches (api-concepts, "Efficient detection of changes",
https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
``?watch=true`` streams newline-delimited ``{"type": ..., "object": ...}`` events (objects with
``kind`` and ``apiVersion``) over a chunked 200 response: ``ADDED``/``MODIFIED``/``DELETED``
with the object's new ``resourceVersion`` (a deletion gets one too). Without
``resourceVersion`` (or with ``"0"``) it starts with a synthetic ``ADDED`` per existing object;
with ``resourceVersion=N`` it replays every change after ``N`` from its history, or, when
``N`` is older than the history (see :meth:`FakeKubeAPI.compact`), sends one ``ERROR`` event
whose object is a ``410 Expired`` ``Status`` ("too old resource version") and closes, as the
watch cache does. ``timeoutSeconds`` ends the stream cleanly.

Test knobs: :meth:`FakeKubeAPI.fail_next` (the next requests fail with a status),
:meth:`FakeKubeAPI.stall_next` (they hang), :meth:`FakeKubeAPI.before` (run an action when a
given request arrives: "someone else wrote between your GET and your PUT", or a fault aimed at
that one request), :meth:`FakeKubeAPI.forbid` (RBAC: 403 on one resource, optionally one
namespace), :meth:`FakeKubeAPI.compact` and :meth:`FakeKubeAPI.drop_watches` (history gone,
open watches closed or expired), direct store access (:meth:`~FakeKubeAPI.put_secret`,
:meth:`~FakeKubeAPI.put_configmap`, :meth:`~FakeKubeAPI.put_webhook_configuration`,
:meth:`~FakeKubeAPI.put_apiservice`, :meth:`~FakeKubeAPI.touch`,
:meth:`~FakeKubeAPI.delete_object`; every change is a watch event) and the request log
(:attr:`FakeKubeAPI.requests`, with the object name of each POST/PUT body) so a test can assert
which Secrets were touched.

The server runs in a thread with its own event loop, so sync and async tests start it the same
way (``with FakeKubeAPI() as api:``) and a test's own loop never has to serve it. It can be
stopped and started again on the same port to play "API server down".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import copy
import json
import re
import shutil
import ssl
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from certpilot.localca import LocalCA, write_key
from tests.support.loopback import ThreadedServer

DEFAULT_TOKEN = "fake-sa-token-0123456789abcdef"
DEFAULT_USER = "system:serviceaccount:certpilot:certpilot"

_SECRET = "/api/v1/namespaces/{namespace}/secrets/{name}"
_SECRETS = "/api/v1/namespaces/{namespace}/secrets"
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NS_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)
_UNDECODABLE = 'Secret in version "v1" cannot be handled as a Secret'
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake saw it (never its ``Authorization`` header)."""

    method: str
    path: str
    query: Mapping[str, str]
    authorized: bool
    object_name: str | None = None
    """``metadata.name`` of the body of a POST or PUT (a POST's path does not name it)."""


@dataclass(slots=True)
class _Fault:
    status: int
    plain: bool


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource the fake serves: its plural (the URL segment), kind and API group."""

    plural: str
    kind: str
    group: str
    namespaced: bool
    field_labels: tuple[str, ...] = ("metadata.name", "metadata.namespace")
    top_fields: tuple[str, ...] = ()
    """Order of the object's own fields after kind/apiVersion/metadata (Go struct order)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/v1" if self.group else "/api/v1"

    @property
    def qualified(self) -> str:
        """``plural.group`` as the API server names it in messages (``secrets`` for core)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: Mapping[str, Resource] = {
    r.plural: r
    for r in (
        Resource(
            "secrets",
            "Secret",
            "",
            True,
            ("metadata.name", "metadata.namespace", "type"),
            ("immutable", "data", "type"),
        ),
        Resource(
            "configmaps", "ConfigMap", "", True, top_fields=("immutable", "data", "binaryData")
        ),
        Resource(
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            "admissionregistration.k8s.io",
            False,
            top_fields=("webhooks",),
        ),
        Resource(
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            "admissionregistration.k8s.io",
            False,
            top_fields=("webhooks",),
        ),
        Resource(
            "apiservices",
            "APIService",
            "apiregistration.k8s.io",
            False,
            top_fields=("spec", "status"),
        ),
    )
}
_PATH = re.compile(
    r"/(?:api/v1|apis/(?P<group>[^/]+)/v1)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?"
)


_TOP_FIELDS = (
    "kind",
    "apiVersion",
    "metadata",
    *dict.fromkeys(f for r in RESOURCES.values() for f in r.top_fields),
)


@dataclass(frozen=True, slots=True)
class Event:
    """One change in the store, as a watch sends it."""

    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    namespace: str
    object: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Forbidden:
    resource: str
    namespace: str | None
    verbs: frozenset[str]


@dataclass(slots=True)
class _State:
    """Everything the handlers and the test thread share; guarded by ``FakeKubeAPI._lock``.

    ``objects`` maps a resource's plural to its objects by ``(namespace, name)`` (namespace
    ``""`` for cluster-scoped ones); ``history`` holds the changes after revision ``floor``.
    """

    namespaces: set[str]
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(
        default_factory=lambda: {plural: {} for plural in RESOURCES}
    )
    revision: int = 1000
    floor: int = 1000
    history: list[Event] = field(default_factory=list)
    watch_generation: int = 0
    expire_watches: bool = False
    open_watches: int = 0
    requests: list[Recorded] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    hooks: list[_Hook] = field(default_factory=list)
    forbidden: list[_Forbidden] = field(default_factory=list)

    @property
    def secrets(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.objects["secrets"]


@dataclass(slots=True)
class _Hook:
    method: str
    path: str
    action: Callable[[], object]
    times: int


class ApiStatus(Exception):
    """A ``Status`` answer (raised inside handlers, rendered by the middleware)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = _REASONS.get(code, "") if reason is None else reason
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            out["details"] = dict(self.details)
        out["code"] = self.code
        if not self.reason:
            del out["reason"]  # StatusReasonUnknown is "" and omitted, as in Go
        return out


def _not_found(namespace: str, name: str) -> ApiStatus:
    return ApiStatus(404, f'secrets "{name}" not found', details={"name": name, "kind": "secrets"})


def _invalid(name: str, causes: list[tuple[str, str, str]]) -> ApiStatus:
    """422 as ``field.ErrorList.ToAggregate()`` words it; causes are (reason, field, text)."""
    texts = [f"{f}: {text}" for _, f, text in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiStatus(
        422,
        f'Secret "{name}" is invalid: {joined}',
        details={
            "name": name,
            "kind": "Secret",
            "causes": [
                {"reason": reason, "message": text, "field": f} for reason, f, text in causes
            ],
        },
    )


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    text = json.dumps(body, separators=(",", ":")) + "\n"
    return web.Response(
        status=status,
        body=text.encode(),
        content_type="application/json",
        headers={
            "Audit-Id": str(uuid.uuid4()),
            "Cache-Control": "no-cache, private",
            **(headers or {}),
        },
    )


class FakeKubeAPI(ThreadedServer):
    """A fake kube-apiserver on ``https://127.0.0.1:<port>`` serving core/v1 Secrets.

    ``token`` is the one bearer token accepted; ``namespaces`` exist from the start (creating
    in another namespace is 404, as in a real cluster). Certificates and keys go to
    ``directory`` (a temporary one, removed on :meth:`stop`, when not given). The watch
    history keeps the last ``history_limit`` changes; a watch from before them gets 410.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        namespaces: tuple[str, ...] = ("default",),
        directory: Path | None = None,
        history_limit: int = 50_000,
    ) -> None:
        self.token = token
        self.history_limit = history_limit
        self._changed: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._state = _State(namespaces=set(namespaces))
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="k8s-fake-")) if directory is None else directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_pem, self._cert_path, self._key_path = self._make_tls()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    server_name = "fake Kubernetes API"

    async def _on_serve(self) -> None:
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()

    def _before_stop(self, loop: asyncio.AbstractEventLoop) -> None:
        # Pending stalled requests are released first; open watches notice and end.
        stopping = self._stopping
        if stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
            loop.call_soon_threadsafe(self._wake)

    def close(self) -> None:
        """:meth:`stop`, and remove the temporary directory when the fake made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- client configuration --------------------------------------------------------------

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        context: str = "certpilot-fake",
        namespace: str | None = None,
        server: str | None = None,
    ) -> Path:
        """A kubeconfig (mode 0600: it holds the token) for a cluster at ``server`` (this
        fake), trusting this fake's CA through ``certificate-authority-data``."""
        ctx: dict[str, Any] = {"cluster": "certpilot-fake", "user": "certpilot-fake"}
        if namespace is not None:
            ctx["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "certpilot-fake",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "certpilot-fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": ctx}],
            "current-context": context,
            "preferences": {},
        }
        write_key(path, yaml.safe_dump(config, sort_keys=False).encode())
        return path

    # -- knobs -----------------------------------------------------------------------------

    def fail_next(self, status: int, n: int = 1, *, plain: bool = False) -> None:
        """The next ``n`` requests (authenticated or not) fail with ``status`` and a real
        ``Status`` body (``plain``: a ``text/plain`` body, as a proxy in front would send)."""
        with self._lock:
            self._state.faults.extend(_Fault(status, plain) for _ in range(n))

    def stall_next(self, seconds: float, n: int = 1) -> None:
        """The next ``n`` requests wait ``seconds`` before being handled (timeouts)."""
        with self._lock:
            self._state.stalls.extend([seconds] * n)

    def before(
        self, method: str, path: str, action: Callable[[], object], *, times: int = 1
    ) -> None:
        """Run ``action`` when a ``method`` request for ``path`` arrives, before it is handled
        (``times`` times): "someone else wrote in between", or a fault aimed at one request
        (``action`` may call :meth:`fail_next`). ``action`` runs on the server's thread."""
        with self._lock:
            self._state.hooks.append(_Hook(method, path, action, times))

    def forbid(
        self,
        resource: str,
        *,
        namespace: str | None = None,
        verbs: Sequence[str] = ("list", "watch"),
    ) -> None:
        """RBAC without the permission: ``verbs`` on ``resource`` (a plural such as
        ``validatingwebhookconfigurations``), in ``namespace`` only when given, are 403
        Forbidden with the API server's wording, from now on."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource}")
        with self._lock:
            self._state.forbidden.append(_Forbidden(resource, namespace, frozenset(verbs)))

    def compact(self) -> int:
        """Forget the watch history (etcd compaction): a watch or a ``continue`` from any
        earlier resourceVersion gets 410 Expired. Returns the current revision."""
        with self._lock:
            self._state.history.clear()
            self._state.floor = self._state.revision
            return self._state.revision

    def drop_watches(self, *, expire: bool = False) -> None:
        """End every open watch stream: cleanly (the client reconnects from the last
        resourceVersion it saw) or, with ``expire``, with a ``410 Expired`` ``ERROR`` event
        first (its resourceVersion is too old: the client must list again)."""
        with self._lock:
            self._state.watch_generation += 1
            self._state.expire_watches = expire
        self._notify()

    @property
    def open_watches(self) -> int:
        """Watch streams being served right now."""
        with self._lock:
            return self._state.open_watches

    @property
    def revision(self) -> int:
        """The store's current resourceVersion."""
        with self._lock:
            return self._state.revision

    def add_namespace(self, namespace: str) -> None:
        with self._lock:
            self._state.namespaces.add(namespace)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._state.requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._state.requests.clear()

    def touched_paths(self) -> set[str]:
        """Every path requested so far."""
        return {r.path for r in self.requests}

    # -- direct store access (what kubectl or another controller would do) -----------------

    def put_secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, bytes],
        *,
        type: str = "Opaque",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        immutable: bool | None = None,
    ) -> dict[str, Any]:
        """Create or overwrite a Secret directly (no validation); the stored object."""
        with self._lock:
            self._state.namespaces.add(namespace)
            old = self._state.secrets.get((namespace, name))
            meta: dict[str, Any] = {"name": name, "namespace": namespace}
            if labels:
                meta["labels"] = dict(labels)
            if annotations:
                meta["annotations"] = dict(annotations)
            obj: dict[str, Any] = {"kind": "Secret", "apiVersion": "v1", "metadata": meta}
            if immutable is not None:
                obj["immutable"] = immutable
            obj["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
            obj["type"] = type
            self._stamp(obj, old)
            self._state.secrets[(namespace, name)] = obj
            self._record("MODIFIED" if old else "ADDED", "secrets", obj)
            out = copy.deepcopy(obj)
        self._notify()
        return out

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored Secret as the API would return it, or ``None``."""
        with self._lock:
            obj = self._state.secrets.get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The stored Secret's ``data``, base64-decoded."""
        obj = self.secret(namespace, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def touch(self, namespace: str, name: str, *, annotation: str = "touched-by") -> str:
        """Someone else updates the Secret (an annotation changes): its new resourceVersion."""
        with self._lock:
            obj = self._state.secrets[(namespace, name)]
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations[annotation] = "someone-else"
            self._stamp(obj, obj)
            self._record("MODIFIED", "secrets", obj)
            rv = str(obj["metadata"]["resourceVersion"])
        self._notify()
        return rv

    def delete_secret(self, namespace: str, name: str) -> None:
        self.delete_object("secrets", namespace, name)

    def put_configmap(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str] | None = None,
        *,
        binary_data: Mapping[str, bytes] | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create or overwrite a ConfigMap directly; the stored object."""
        obj: dict[str, Any] = {}
        if data:
            obj["data"] = dict(data)
        if binary_data:
            obj["binaryData"] = {k: base64.b64encode(v).decode() for k, v in binary_data.items()}
        return self.put_object("configmaps", namespace, name, obj, labels, annotations)

    def put_webhook_configuration(
        self,
        name: str,
        ca_bundles: Sequence[bytes | None],
        *,
        mutating: bool = False,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create or overwrite a Validating (or Mutating) WebhookConfiguration with one
        webhook per ``ca_bundles`` entry (``None``: no ``caBundle``, system trust), each
        calling a Service, with the defaults the API server fills in."""
        webhooks = []
        for i, bundle in enumerate(ca_bundles):
            client: dict[str, Any] = {
                "service": {
                    "namespace": "webhooks",
                    "name": f"{name}-svc",
                    "path": f"/hook{i}",
                    "port": 443,
                }
            }
            if bundle is not None:
                client["caBundle"] = base64.b64encode(bundle).decode()
            hook: dict[str, Any] = {
                "name": f"hook{i}.{name}.example.com",
                "clientConfig": client,
                "rules": [
                    {
                        "operations": ["CREATE", "UPDATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "*",
                    }
                ],
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "namespaceSelector": {},
                "objectSelector": {},
                "sideEffects": "None",
                "timeoutSeconds": 10,
                "admissionReviewVersions": ["v1"],
            }
            if mutating:
                hook["reinvocationPolicy"] = "Never"
            webhooks.append(hook)
        resource = (
            "mutatingwebhookconfigurations" if mutating else "validatingwebhookconfigurations"
        )
        return self.put_object(resource, "", name, {"webhooks": webhooks}, labels, annotations)

    def put_apiservice(
        self,
        name: str,
        ca_bundle: bytes | None,
        *,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create or overwrite an APIService ``name`` (``version.group``) served by a
        Service, with ``spec.caBundle`` (``None``: a local APIService without one)."""
        version, _, group = name.partition(".")
        spec: dict[str, Any] = {}
        if ca_bundle is not None:
            spec["service"] = {"namespace": "kube-system", "name": group.split(".")[0], "port": 443}
        spec.update(group=group, version=version)
        if ca_bundle is not None:
            spec["caBundle"] = base64.b64encode(ca_bundle).decode()
        spec.update(groupPriorityMinimum=100, versionPriority=100)
        status = {
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                    "reason": "Passed",
                    "message": "all checks passed",
                }
            ]
        }
        obj = {"spec": spec, "status": status}
        return self.put_object("apiservices", "", name, obj, labels, annotations)

    def put_object(
        self,
        resource: str,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create or overwrite any served object (``namespace`` ``""`` when cluster-scoped)
        from its fields besides kind, apiVersion and metadata; the stored object."""
        spec = RESOURCES[resource]
        with self._lock:
            if spec.namespaced:
                self._state.namespaces.add(namespace)
            else:
                namespace = ""
            old = self._state.objects[resource].get((namespace, name))
            meta: dict[str, Any] = {"name": name}
            if spec.namespaced:
                meta["namespace"] = namespace
            if not spec.namespaced:
                meta["generation"] = 1
            if labels:
                meta["labels"] = dict(labels)
            if annotations:
                meta["annotations"] = dict(annotations)
            obj: dict[str, Any] = {
                "kind": spec.kind,
                "apiVersion": spec.api_version,
                "metadata": meta,
                **copy.deepcopy(dict(body)),
            }
            self._stamp(obj, old)
            self._state.objects[resource][(namespace, name)] = obj
            self._record("MODIFIED" if old else "ADDED", resource, obj)
            out = copy.deepcopy(obj)
        self._notify()
        return out

    def object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A stored object as the API would return it, or ``None``."""
        with self._lock:
            obj = self._state.objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def delete_object(self, resource: str, namespace: str, name: str) -> None:
        """Delete an object directly (a ``DELETED`` event); no-op when absent."""
        with self._lock:
            obj = self._state.objects[resource].pop((namespace, name), None)
            if obj is not None:
                self._deleted(resource, obj)
        self._notify()

    def names(self, namespace: str) -> list[str]:
        with self._lock:
            return sorted(n for (ns, n) in self._state.secrets if ns == namespace)

    # -- server ----------------------------------------------------------------------------

    def _make_tls(self) -> tuple[bytes, Path, Path]:
        now = datetime.now(UTC)
        ca = LocalCA("certpilot k8s fake", now, intermediate_lifetime=None)
        leaf = ca.issue(["127.0.0.1", "localhost"], now, lifetime=timedelta(days=2))
        cert_path, key_path = self.dir / "apiserver.crt", self.dir / "apiserver.key"
        cert_path.write_bytes(leaf.chain_pem())
        write_key(key_path, leaf.key_pem())
        return ca.root_pem(), cert_path, key_path

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._cert_path, self._key_path)
        return ctx

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for spec in RESOURCES.values():
            handler = self._collection(spec)
            app.router.add_route("GET", f"{spec.prefix}/{spec.plural}", handler)
            if spec.namespaced:
                path = f"{spec.prefix}/namespaces/{{namespace}}/{spec.plural}"
                app.router.add_route("GET", path, handler)
        app.router.add_route("POST", _SECRETS, self._create)
        app.router.add_route("GET", _SECRET, self._get)
        app.router.add_route("PUT", _SECRET, self._update)
        app.router.add_route("DELETE", _SECRET, self._delete)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        object_name = await _body_name(request) if request.method in ("POST", "PUT") else None
        recorded = Recorded(
            request.method, request.path, dict(request.query), authorized, object_name
        )
        with self._lock:
            s = self._state
            s.requests.append(recorded)
            due = [h for h in s.hooks if (h.method, h.path) == (request.method, request.path)]
            for hook in due:
                hook.times -= 1
            s.hooks = [h for h in s.hooks if h.times > 0]
        for hook in due:  # outside the lock: actions use the store helpers
            hook.action()
        with self._lock:
            fault = s.faults.pop(0) if s.faults else None
            stall = s.stalls.pop(0) if s.stalls else None
        if stall is not None and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), stall)
        try:
            if fault is not None:
                raise self._fault(fault, request)
            if not authorized:
                raise ApiStatus(401, "Unauthorized")
            spec, ns, _, verb = _describe(request)
            if spec is not None and any(
                f.resource == spec.plural and f.namespace in (None, ns) and verb in f.verbs
                for f in list(s.forbidden)
            ):
                raise _forbidden(request)
            return await handler(request)
        except ApiStatus as e:
            if fault is not None and fault.plain:
                return web.Response(status=e.code, text=f"{e.code} {e.reason}\n")
            return _json(e.code, e.body(), e.headers)

    def _fault(self, fault: _Fault, request: web.Request) -> ApiStatus:
        code = fault.status
        if code == 403:
            return _forbidden(request)
        if code == 401:
            return ApiStatus(401, "Unauthorized")
        if code == 429:
            return ApiStatus(
                429,
                "Too many requests, please try again later.",
                details={"retryAfterSeconds": 1},
                headers={"Retry-After": "1"},
            )
        if code == 500:
            return ApiStatus(500, "Internal error occurred: injected fault")
        if code == 503:
            return ApiStatus(503, "the server is currently unable to handle the request")
        return ApiStatus(code, f"injected fault {code}")

    # -- handlers --------------------------------------------------------------------------

    async def _unknown(self, request: web.Request) -> web.Response:
        if re.fullmatch(r"/api/v1/namespaces/[^/]+/secrets(/[^/]+)?", request.path):
            raise ApiStatus(405, "the server does not allow this method on the requested resource")
        raise ApiStatus(404, "the server could not find the requested resource", details={})

    def _collection(self, spec: Resource) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """GET on a collection: a list, or a watch with ``?watch=true``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            ns = request.match_info.get("namespace", "")
            wanted_labels = _label_selector(request.query.get("labelSelector", ""))
            wanted_fields = _field_selector(spec, request.query.get("fieldSelector", ""))

            def match(obj: Mapping[str, Any]) -> bool:
                return wanted_labels(obj) and wanted_fields(obj)

            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, spec, ns, match)
            filtered = bool(wanted_labels.text or wanted_fields.text)
            return self._list(request, spec, ns, match, filtered=filtered)

        return handle

    def _list(
        self,
        request: web.Request,
        spec: Resource,
        ns: str,
        match: Callable[[Mapping[str, Any]], bool],
        *,
        filtered: bool,
    ) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as e:
            raise ApiStatus(400, f"limit: Invalid value: {q.get('limit')!r}") from e
        with self._lock:
            s = self._state
            if q.get("continue"):
                rv, start = _decode_continue(q["continue"])
                if rv < s.floor:
                    raise ApiStatus(410, _CONTINUE_EXPIRED, reason="Expired")
            else:
                rv, start = s.revision, ""
            objects = s.objects[spec.plural]
            keys = sorted(
                (_etcd_key(k), k)
                for k in objects
                if (not ns or k[0] == ns) and (not start or _etcd_key(k) > start)
            )
            matched = [k for _, k in keys if match(objects[k])]
            page = matched[:limit] if limit > 0 else matched
            remaining = len(matched) - len(page)
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if remaining:
                meta["continue"] = _encode_continue(rv, _etcd_key(page[-1]))
                if not filtered:  # the API server cannot count ahead through a selector
                    meta["remainingItemCount"] = remaining
            items = [
                {k: v for k, v in objects[key].items() if k not in ("kind", "apiVersion")}
                for key in page
            ]
            # Serialised under the lock: touch() edits stored objects in place.
            response = _json(
                200,
                {
                    "kind": f"{spec.kind}List",
                    "apiVersion": spec.api_version,
                    "metadata": meta,
                    "items": items,
                },
            )
        return response

    async def _watch(
        self,
        request: web.Request,
        spec: Resource,
        ns: str,
        match: Callable[[Mapping[str, Any]], bool],
    ) -> web.StreamResponse:
        q = request.query
        loop = asyncio.get_running_loop()
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        except ValueError as e:
            raise ApiStatus(400, f"timeoutSeconds: Invalid value: {q['timeoutSeconds']!r}") from e
        deadline = loop.time() + timeout if timeout else None
        rv_text = q.get("resourceVersion", "")
        expired: str | None = None
        initial: list[dict[str, Any]] = []
        with self._lock:
            s = self._state
            generation = s.watch_generation
            if rv_text in ("", "0"):
                # "Get state and start at most recent": a synthetic ADDED per object.
                objects = s.objects[spec.plural]
                for _, key in sorted((_etcd_key(k), k) for k in objects):
                    obj = objects[key]
                    if (not ns or key[0] == ns) and match(obj):
                        initial.append(copy.deepcopy(obj))
                cursor = s.revision
            else:
                try:
                    cursor = int(rv_text)
                except ValueError as e:
                    raise ApiStatus(
                        400, f'resourceVersion: Invalid value: "{rv_text}": invalid syntax'
                    ) from e
                if cursor < s.floor:
                    expired = f"too old resource version: {cursor} ({s.floor})"
            s.open_watches += 1
        response = web.StreamResponse(
            status=200,
            headers={"Audit-Id": str(uuid.uuid4()), "Cache-Control": "no-cache, private"},
        )
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if expired is not None:
                await _send(response, "ERROR", ApiStatus(410, expired, reason="Expired").body())
                return response
            for obj in initial:
                await _send(response, "ADDED", obj)
            while True:
                changed = self._changed  # taken before looking: no wake-up can be missed
                with self._lock:
                    history = s.history
                    start = bisect.bisect_right(history, cursor, key=lambda e: e.revision)
                    events = [
                        e
                        for e in history[start:]
                        if e.resource == spec.plural
                        and (not ns or e.namespace == ns)
                        and match(e.object)
                    ]
                    if start < len(history):
                        cursor = history[-1].revision
                    dropped = s.watch_generation != generation
                    expire = s.expire_watches
                for event in events:
                    await _send(response, event.type, event.object)
                if dropped:
                    if expire:
                        message = f"too old resource version: {cursor} ({cursor + 1})"
                        body = ApiStatus(410, message, reason="Expired").body()
                        await _send(response, "ERROR", body)
                    break
                stopping = self._stopping
                transport = request.transport
                if (stopping is not None and stopping.is_set()) or (
                    transport is None or transport.is_closing()
                ):
                    break
                wait = 1.0
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                if changed is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), wait)
                else:
                    await asyncio.sleep(wait)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            with self._lock:
                s.open_watches -= 1
        return response

    async def _get(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        with self._lock:
            obj = self._state.secrets.get((ns, name))
            if obj is None:
                raise _not_found(ns, name)
            return _json(200, obj)

    async def _create(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        obj = await self._decode(request)
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if meta.get("namespace", ns) != ns:
            raise ApiStatus(400, _NS_MISMATCH)
        if not name:
            raise _invalid(
                "",
                [
                    (
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        self._validate(name, obj)
        if meta.get("resourceVersion"):
            # etcd3 store: storage.ErrResourceVersionSetOnCreate, surfaced as a 500.
            raise ApiStatus(
                500, "resourceVersion should not be set on objects to be created", reason=""
            )
        dry_run = request.query.get("dryRun") == "All"
        with self._lock:
            if ns not in self._state.namespaces:
                raise ApiStatus(
                    404, f'namespaces "{ns}" not found', details={"name": ns, "kind": "namespaces"}
                )
            if (ns, name) in self._state.secrets:
                raise ApiStatus(
                    409,
                    f'secrets "{name}" already exists',
                    reason="AlreadyExists",
                    details={"name": name, "kind": "secrets"},
                )
            meta["namespace"] = ns
            for key in ("uid", "creationTimestamp", "managedFields", "selfLink", "generation"):
                meta.pop(key, None)
            self._stamp(obj, None)
            if not dry_run:
                self._state.secrets[(ns, name)] = obj
                self._record("ADDED", "secrets", obj)
            response = _json(201, obj)
        self._notify()
        return response

    async def _update(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        obj = await self._decode(request)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise ApiStatus(
                400,
                f"the name of the object ({meta.get('name', '')}) does not match the name "
                f"on the URL ({name})",
            )
        if meta.get("namespace", ns) != ns:
            raise ApiStatus(400, _NS_MISMATCH)
        self._validate(name, obj)
        dry_run = request.query.get("dryRun") == "All"
        with self._lock:
            old = self._state.secrets.get((ns, name))
            if old is None:
                raise _not_found(ns, name)  # Secrets do not allow create-on-update
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiStatus(
                    409,
                    f'Operation cannot be fulfilled on secrets "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    details={"name": name, "kind": "secrets"},
                )
            causes: list[tuple[str, str, str]] = []
            if obj["type"] != old["type"]:
                causes.append(
                    (
                        "FieldValueInvalid",
                        "type",
                        f'Invalid value: "{obj["type"]}": field is immutable',
                    )
                )
            if old.get("immutable"):
                if obj.get("data") != old.get("data"):
                    causes.append(
                        (
                            "FieldValueForbidden",
                            "data",
                            "Forbidden: field is immutable when `immutable` is set",
                        )
                    )
                if not obj.get("immutable"):
                    causes.append(
                        (
                            "FieldValueForbidden",
                            "immutable",
                            "Forbidden: field is immutable when `immutable` is set",
                        )
                    )
            if causes:
                raise _invalid(name, causes)
            meta["namespace"] = ns
            meta.pop("managedFields", None)
            self._stamp(obj, old)
            if not dry_run:
                self._state.secrets[(ns, name)] = obj
                self._record("MODIFIED", "secrets", obj)
            response = _json(200, obj)
        self._notify()
        return response

    async def _delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        options: dict[str, Any] = {}
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                options = json.loads(await request.read() or b"{}")
        pre = (options.get("preconditions") or {}) if isinstance(options, dict) else {}
        with self._lock:
            obj = self._state.secrets.get((ns, name))
            if obj is None:
                raise _not_found(ns, name)
            meta = obj["metadata"]
            for key, label in (("resourceVersion", "ResourceVersion"), ("uid", "UID")):
                want = pre.get(key)
                if want and want != meta[key]:
                    raise ApiStatus(
                        409,
                        f'Operation cannot be fulfilled on secrets "{name}": Precondition failed: '
                        f"{label} in precondition: {want}, {label} in object meta: {meta[key]}",
                        details={"name": name, "kind": "secrets"},
                    )
            if request.query.get("dryRun") != "All":
                del self._state.secrets[(ns, name)]
                self._deleted("secrets", obj)
        self._notify()
        return _json(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": "secrets", "uid": meta["uid"]},
            },
        )

    # -- helpers ---------------------------------------------------------------------------

    async def _decode(self, request: web.Request) -> dict[str, Any]:
        """The request's Secret, decoded and defaulted as the API server's codec does."""
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in ("application/json", "application/yaml"):
            raise ApiStatus(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        raw = await request.read()
        try:
            obj = json.loads(raw) if content_type == "application/json" else yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise ApiStatus(400, f"{_UNDECODABLE}: {e}") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiStatus(400, f"{_UNDECODABLE}: expected an object")
        kind, version = obj.get("kind", "Secret"), obj.get("apiVersion", "v1")
        if (kind, version) != ("Secret", "v1"):
            raise ApiStatus(
                400,
                f"the API version in the data ({version}) does not match the expected API "
                "version (v1)"
                if version != "v1"
                else f'Secret in version "v1" cannot be handled as a {kind}: kind mismatch',
            )
        obj["kind"], obj["apiVersion"] = "Secret", "v1"
        obj.setdefault("metadata", {})
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise ApiStatus(400, f"{_UNDECODABLE}: data must be an object")
        for key, value in data.items():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError) as e:
                raise ApiStatus(
                    400,
                    f'{_UNDECODABLE}: illegal base64 data for key "{key}": {e}',
                ) from e
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data
        else:
            obj.pop("data", None)
        obj["type"] = obj.get("type") or "Opaque"
        return obj

    def _validate(self, name: str, obj: Mapping[str, Any]) -> None:
        """ValidateSecret (pkg/apis/core/validation): name, data keys, per-type keys."""
        causes: list[tuple[str, str, str]] = []
        if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                    "lower case alphanumeric characters, '-' or '.', and must start and end "
                    "with an alphanumeric character (e.g. 'example.com', regex used for "
                    f"validation is '{_DNS_SUBDOMAIN.pattern}')",
                )
            )
        data = obj.get("data") or {}
        for key in data:
            if not _DATA_KEY.fullmatch(key):
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"data[{key}]",
                        f'Invalid value: "{key}": a valid config key must consist of alphanumeric '
                        "characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or "
                        "'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    )
                )
        if obj.get("type") == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in data:
                    causes.append(("FieldValueRequired", f"data[{key}]", "Required value"))
        if causes:
            raise _invalid(name, causes)

    def _stamp(self, obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
        """Server-set metadata: uid and creationTimestamp (kept from ``old``), and the next
        resourceVersion. Caller holds the lock."""
        meta = obj["metadata"]
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._state.revision += 1
        meta["resourceVersion"] = str(self._state.revision)
        # Field order as kube-apiserver writes ObjectMeta.
        order = (
            "name",
            "generateName",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "labels",
            "annotations",
            "ownerReferences",
            "finalizers",
        )
        obj["metadata"] = {k: meta[k] for k in order if k in meta} | {
            k: v for k, v in meta.items() if k not in order
        }
        # And the object's own fields as Go's struct order writes them.
        top = _TOP_FIELDS
        reordered = {k: obj[k] for k in top if k in obj} | {
            k: v for k, v in obj.items() if k not in top
        }
        obj.clear()
        obj.update(reordered)

    def _record(self, type: str, resource: str, obj: Mapping[str, Any]) -> None:
        """Append a change to the watch history (caller holds the lock and calls
        :meth:`_notify` after releasing it)."""
        s = self._state
        s.history.append(
            Event(
                int(obj["metadata"]["resourceVersion"]),
                type,
                resource,
                obj["metadata"].get("namespace", ""),
                copy.deepcopy(obj),
            )
        )
        if len(s.history) > self.history_limit:
            drop = len(s.history) - self.history_limit
            s.floor = max(s.floor, s.history[drop - 1].revision)
            del s.history[:drop]

    def _deleted(self, resource: str, obj: dict[str, Any]) -> None:
        """Record the deletion of ``obj`` (already removed): as in etcd, the deletion is a
        revision of its own, which the ``DELETED`` event's object carries."""
        self._state.revision += 1
        obj["metadata"]["resourceVersion"] = str(self._state.revision)
        self._record("DELETED", resource, obj)

    def _notify(self) -> None:
        """Wake the open watches (from any thread)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()


async def _body_name(request: web.Request) -> str | None:
    """``metadata.name`` of a JSON body, for the request log (the body is cached by aiohttp,
    so the handler reads it again)."""
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        return None
    meta = body.get("metadata") if isinstance(body, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter."
)
_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[^\s=!,()]+)"
    r"|(?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def holds(self, value: str | None) -> bool:
        if self.op == "exists":
            return value is not None
        if self.op == "!":
            return value is None
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values  # "!=", "notin": absent counts as different


class _Selector:
    """A parsed selector: true for the objects it selects; ``text`` as given."""

    def __init__(
        self, text: str, requirements: list[_Requirement], get: Callable[[Any, str], str | None]
    ) -> None:
        self.text = text
        self._requirements = requirements
        self._get = get

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        return all(r.holds(self._get(obj, r.key)) for r in self._requirements)


def _requirements(text: str, what: str) -> Iterator[_Requirement]:
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if m is None or m.end() == pos:
            raise ApiStatus(400, f"unable to parse requirement: {what}: {text[pos:]!r}")
        pos = m.end()
        if m["absent"]:
            yield _Requirement(m["absent"], "!")
        elif m["op"]:
            op = "!=" if m["op"] == "!=" else "="
            yield _Requirement(m["key"], op, frozenset({m["value"]}))
        elif m["set"]:
            values = frozenset(v.strip() for v in m["values"].split(","))
            yield _Requirement(m["key"], m["set"], values)
        else:
            yield _Requirement(m["key"], "exists")


def _label(obj: Mapping[str, Any], key: str) -> str | None:
    value = (obj.get("metadata", {}).get("labels") or {}).get(key)
    return value if isinstance(value, str) else None


def _field(obj: Mapping[str, Any], key: str) -> str | None:
    if key.startswith("metadata."):
        return str(obj.get("metadata", {}).get(key.removeprefix("metadata."), ""))
    return str(obj.get(key, ""))


def _label_selector(text: str) -> _Selector:
    """Label selectors (k8s.io/apimachinery/pkg/labels): ``a=b``, ``a==b``, ``a!=b``, ``a``,
    ``!a``, ``a in (x,y)``, ``a notin (x,y)``, comma-separated (all must hold)."""
    return _Selector(text, list(_requirements(text, "labelSelector")), _label)


def _field_selector(spec: Resource, text: str) -> _Selector:
    """Field selectors: ``=``, ``==`` and ``!=`` on the resource's selectable fields."""
    requirements = list(_requirements(text, "fieldSelector"))
    for r in requirements:
        if r.op not in ("=", "!="):
            raise ApiStatus(400, f"invalid selector: {text!r}; can't understand {r.key!r}")
        if r.key not in spec.field_labels:
            raise ApiStatus(400, f"field label not supported: {r.key}")
    return _Selector(text, requirements, _field)


def _etcd_key(key: tuple[str, str]) -> str:
    """How etcd orders objects: by ``namespace/name`` as a string."""
    ns, name = key
    return f"{ns}/{name}" if ns else name


def _encode_continue(rv: int, last: str) -> str:
    """apiserver's continue token: base64url JSON of the list's revision and the key after
    which the next page starts (k8s.io/apiserver/pkg/storage/continue.go)."""
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last + "\x00"}
    raw = json.dumps(token, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv, start = int(data["rv"]), str(data["start"])
        if data.get("v") != "meta.k8s.io/v1" or not start.endswith("\x00"):
            raise ValueError("unsupported token")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise ApiStatus(400, f"continue key is not valid: {e}") from e
    return rv, start[:-1]


def _describe(request: web.Request) -> tuple[Resource | None, str, str, str]:
    """The resource, namespace, name and RBAC verb a request asks for."""
    m = _PATH.fullmatch(request.path)
    spec = RESOURCES.get(m["plural"]) if m else None
    if m is None or spec is None or (m["group"] or "") != spec.group:
        return None, "", "", ""
    ns, name = m["namespace"] or "", m["name"] or ""
    verb = _VERBS.get(request.method, request.method.lower())
    if request.method == "GET" and not name:
        verb = "watch" if request.query.get("watch") in ("true", "1") else "list"
    return spec, ns, name, verb


def _forbidden(request: web.Request) -> ApiStatus:
    """403 in the API server's words (k8s.io/apiserver/pkg/endpoints/handlers/responsewriters
    forbiddenMessage)."""
    spec, ns, name, verb = _describe(request)
    if spec is None:  # not a resource path: name it as the URL does
        plural = qualified = request.path.rsplit("/", 1)[-1]
        group = ""
        ns = request.match_info.get("namespace", "")
        name = request.match_info.get("name", "")
        verb = _VERBS.get(request.method, request.method.lower())
    else:
        plural, group, qualified = spec.plural, spec.group, spec.qualified
    what = f'{qualified} "{name}"' if name else qualified
    scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    details: dict[str, Any] = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = plural
    return ApiStatus(
        403,
        f'{what} is forbidden: User "{DEFAULT_USER}" cannot {verb} resource "{plural}" '
        f'in API group "{group}" {scope}',
        details=details,
    )


async def _send(response: web.StreamResponse, kind: str, obj: Mapping[str, Any]) -> None:
    """One watch event: a JSON object on its own line (watch.Event, as json.Encoder writes)."""
    line = json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n"
    await response.write(line.encode())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
