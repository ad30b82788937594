"""The HTTP surface: ``/metrics``, health probes and the read-only JSON API (DESIGN.md section 3).

Handlers only translate HTTP to calls on the domain's :class:`InventoryReader` Protocol and back;
the store behind it is blocking (SQLite), so every call to it runs in a worker thread
(:func:`asyncio.to_thread`) and the event loop, shared with the scanners and the bot, never
waits on the database. The Prometheus exposition runs in a thread as well, because the inventory
collector reads the store at scrape time.

Errors: a bad query value is a 400 with a one-line JSON ``{"error": ...}`` naming the parameter,
unknown ``/api`` paths are JSON 404s, and an unexpected exception is logged on the
``certpilot.http`` logger and answered with a bare 500: no traceback ever reaches a client.

Routes of other rooms (``/hooks/alertmanager``, ``/slack/events``) are added by the composition
root to the application returned by :func:`build_app` before :func:`serve` freezes it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertpilotError, ConfigError, StoreError
from certpilot.domain.inventory import ScanRun
from certpilot.domain.problems import ProblemCode
from certpilot.domain.protocols import InventoryReader
from certpilot.domain.x509 import iso
from certpilot.obs import exposition

log = logging.getLogger("certpilot.http")

Readiness = Callable[[], tuple[bool, str]]
#: ``(state or None, limit) -> jobs as JSON objects``, newest first; ``ValueError`` for an
#: unknown state. The job store lives in ``certpilot.store``; the composition root binds it.
JobsReader = Callable[[str | None, int], list[dict[str, object]]]

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_EVENTS_LIMIT = 10_000
DEFAULT_EVENTS_LIMIT = 1_000
MAX_RUNS_LIMIT = 1_000
DEFAULT_RUNS_LIMIT = 20
#: Seconds a connection may go without a complete request head: from the moment it
#: connects, and between requests on a kept-alive one; aiohttp then closes it. This is
#: aiohttp's ``keepalive_timeout``, whose timer aiohttp 3.14.5 also starts when a connection
#: opens (aio-libs/aiohttp#13681). Its default is an hour: clients trickling header bytes
#: (slowloris) held their connections that long (tests/e2e/test_faults.py).
IDLE_TIMEOUT = 10.0


class BadQuery(CertpilotError):
    """A query parameter has a value the endpoint cannot use (answered with a 400)."""

    def __init__(self, parameter: str, message: str, **extra: object) -> None:
        self.parameter = parameter
        self.message = message
        self.extra = extra
        super().__init__(f"{parameter}: {message}")


def _json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


# ---------------------------------------------------------------------------------------------
# Query parsing: one function per shape, each error names the parameter and the value.


def _query_value(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value.strip() == "":
        return None  # "?source=" means "no filter", as HTML forms send it
    return value.strip()


def _non_negative_number(query: Mapping[str, str], name: str) -> float | None:
    raw = _query_value(query, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(name, f"expected a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BadQuery(name, f"expected a non-negative number, got {raw!r}")
    return value


def _integer(
    query: Mapping[str, str], name: str, *, default: int, minimum: int, cap: int | None = None
) -> int:
    raw = _query_value(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise BadQuery(name, f"expected an integer >= {minimum}, got {raw!r}")
    return min(value, cap) if cap is not None else value


def _problem_code(query: Mapping[str, str], name: str) -> ProblemCode | None:
    raw = _query_value(query, name)
    if raw is None:
        return None
    try:
        return ProblemCode(raw)
    except ValueError:
        valid = [c.value for c in ProblemCode]
        raise BadQuery(
            name, f"unknown problem code {raw!r}; valid codes: {', '.join(valid)}", valid=valid
        ) from None


def _run_to_dict(run: ScanRun) -> dict[str, object]:
    duration = (
        (run.finished_at - run.started_at).total_seconds() if run.finished_at is not None else None
    )
    return {
        "id": run.id,
        "source": run.source,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at) if run.finished_at is not None else None,
        "duration_seconds": round(duration, 6) if duration is not None else None,
        "targets": run.targets,
        "observations": run.observations,
        "problems": run.problems,
    }


def _reason(e: BaseException) -> str:
    """A one-line, secret-free reason: a StoreError's message never includes its URL."""
    if isinstance(e, StoreError):
        return e.message
    if isinstance(e, CertpilotError):
        return e.one_line()
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------
# Handlers


class _Handlers:
    def __init__(
        self,
        registry: CollectorRegistry,
        inventory: InventoryReader,
        clock: Clock,
        readiness: Readiness | None,
        jobs: JobsReader | None = None,
    ) -> None:
        self._jobs = jobs
        self._registry = registry
        self._inventory = inventory
        self._clock = clock
        self._readiness = readiness

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        # Text format 0.0.4, or OpenMetrics when the Accept header asks for it as Prometheus
        # does; streamed family by family (a large inventory is tens of MB of text).
        content_type, chunks = exposition(self._registry, request.headers.get("Accept", ""))
        # The first chunk before the headers: a failure there is still a clean 500.
        chunk = await asyncio.to_thread(next, chunks, None)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_compression()  # gzip/deflate only when the scraper accepts it
        await response.prepare(request)
        while chunk is not None:
            await response.write(chunk)
            chunk = await asyncio.to_thread(next, chunks, None)
        await response.write_eof()
        return response

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.to_thread(self._inventory.ping)
        except Exception as e:
            reason = f"inventory: {_reason(e)}"
            log.warning("not ready: %s", reason)
            return web.json_response({"ready": False, "reason": reason}, status=503)
        if self._readiness is not None:
            try:
                ready, why = self._readiness()
            except Exception as e:
                log.exception("readiness check raised")
                ready, why = False, f"readiness check failed: {_reason(e)}"
            if not ready:
                return web.json_response({"ready": False, "reason": why}, status=503)
        return web.json_response({"ready": True, "reason": "ok"})

    async def inventory(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        expiring_days = _non_negative_number(q, "expiring_days")
        problem = _problem_code(q, "problem")
        source = _query_value(q, "source")
        now: datetime = self._clock.now()
        items = await asyncio.to_thread(
            self._inventory.items,
            now=now,
            expiring_days=expiring_days,
            problem=problem,
            source=source,
        )
        return web.json_response({"items": [i.to_dict(now) for i in items], "count": len(items)})

    async def events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        since_id = _integer(q, "since_id", default=0, minimum=0)
        limit = _integer(q, "limit", default=DEFAULT_EVENTS_LIMIT, minimum=1, cap=MAX_EVENTS_LIMIT)
        ref = _query_value(q, "ref")
        events = await asyncio.to_thread(
            self._inventory.events, since_id=since_id, limit=limit, ref=ref
        )
        # Page on: pass next_since_id back as since_id until count < limit.
        next_since_id = max((e.id for e in events), default=since_id)
        return web.json_response(
            {
                "events": [e.to_dict() for e in events],
                "count": len(events),
                "limit": limit,
                "next_since_id": next_since_id,
            }
        )

    async def runs(self, request: web.Request) -> web.StreamResponse:
        limit = _integer(
            request.query, "limit", default=DEFAULT_RUNS_LIMIT, minimum=1, cap=MAX_RUNS_LIMIT
        )
        runs = await asyncio.to_thread(self._inventory.runs, limit)
        return web.json_response({"runs": [_run_to_dict(r) for r in runs], "count": len(runs)})

    async def jobs(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        limit = _integer(q, "limit", default=DEFAULT_RUNS_LIMIT, minimum=1, cap=MAX_EVENTS_LIMIT)
        state = _query_value(q, "state")
        if self._jobs is None:
            return web.json_response({"jobs": [], "count": 0})
        try:
            jobs = await asyncio.to_thread(self._jobs, state, limit)
        except ValueError as e:
            raise BadQuery("state", str(e)) from None
        return web.json_response({"jobs": jobs, "count": len(jobs)})


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadQuery as e:
        return _json_error(400, e.one_line(), **e.extra)
    except web.HTTPException as e:
        if e.status < 400 or not request.path.startswith("/api/"):
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        response = _json_error(e.status, f"{e.reason.lower()}: {request.method} {request.path}")
        if headers:
            response.headers.update(headers)
        return response
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return _json_error(500, "internal error")


#: Returns the bearer token the read side requires, or ``None`` for none.
TokenSource = Callable[[], str | None]

#: Paths that stay open with a token configured: probes (a kubelet or load balancer has none).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Paths with their own authentication (bearer token, Slack signatures).
SELF_AUTHENTICATED = ("/hooks/", "/slack/")


def _token_middleware(token: TokenSource) -> Any:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS or path.startswith(SELF_AUTHENTICATED):
            return await handler(request)
        expected = await asyncio.to_thread(token)
        if expected is None:
            # A token is configured but cannot be read (missing, empty, unreadable file): fail
            # closed, as the webhook does; never serve the inventory unauthenticated.
            return web.json_response(
                {"error": "the configured bearer token cannot be read (see the service log)"},
                status=503,
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="certpilot"'},
            )
        return await handler(request)

    return require_token


def build_app(
    *,
    registry: CollectorRegistry,
    inventory: InventoryReader,
    clock: Clock,
    readiness: Readiness | None = None,
    jobs: JobsReader | None = None,
    token: TokenSource | None = None,
    cluster: Callable[[], Mapping[str, object]] | None = None,
) -> web.Application:
    """The aiohttp application with certpilot's read-side routes.

    ``registry`` is exposed on ``/metrics`` as is (register a :class:`certpilot.obs.Metrics` on
    it); ``readiness`` adds an app-level condition to ``/readyz`` (e.g. "first scan done") and
    returns ``(ready, reason)``; ``jobs`` serves ``/api/v1/jobs?state=&limit=``; ``token``
    (when it returns one) is required as a bearer token on every path but the probes and the
    self-authenticated hooks.
    """
    h = _Handlers(registry, inventory, clock, readiness, jobs)
    # Alertmanager groups of up to 1000 alerts with labels and annotations exceed aiohttp's
    # default 1 MiB body limit.
    middlewares = [_error_middleware]
    if token is not None:
        middlewares.insert(0, _token_middleware(token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/readyz", h.readyz)
    app.router.add_get("/api/v1/inventory", h.inventory)
    app.router.add_get("/api/v1/events", h.events)
    app.router.add_get("/api/v1/runs", h.runs)
    app.router.add_get("/api/v1/jobs", h.jobs)
    if cluster is not None:

        async def cluster_status(_request: web.Request) -> web.StreamResponse:
            return web.json_response(dict(cluster()))

        app.router.add_get("/api/v1/cluster", cluster_status)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port`` (``port`` 0 picks a free one, see :func:`bound_port`).

    The caller owns the returned runner and stops the server with ``await runner.cleanup()``.
    A connection without a complete request head for :data:`IDLE_TIMEOUT` seconds is closed.
    """
    runner = web.AppRunner(app, keepalive_timeout=IDLE_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(
            "http",
            "listen",
            f"cannot listen on {_display(host, port)}: {os.strerror(e.errno) if e.errno else e}",
            has_value=False,
        ) from e
    except BaseException:
        await runner.cleanup()
        raise
    log.info("listening on http://%s", _display(host, bound_port(runner)))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the first site of ``runner`` is bound to."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the runner has no TCP site")


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
