"""Wiring of the Slack bot for ``certpilot run`` (and the demo's text-only pager).

:func:`open_slack` builds, when ``slack.enabled``: the Web API client (token from the
environment, rate-limit retries that honour ``Retry-After``), the bot's store, the
:class:`~bot.pager.Pager`, and the Bolt app served at ``/slack/events`` (HTTP mode), or a
Socket Mode connection when ``slack.socket_mode`` is set. The service feeds the pager: the
inventory's problems after each scan, the SLOs after each evaluation, Alertmanager's alerts as
they arrive, and a tick every ``slack.page_interval`` for job updates and held pages.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import ClientSession

from bot.model import Page, SignalSource
from bot.pager import Pager, WebPoster
from bot.signals import alert_signal, inventory_signals, slo_signals
from bot.slack_app import BotContext, aiohttp_handler, build_app
from certpilot.domain.clock import Clock
from certpilot.domain.errors import ConfigError
from certpilot.domain.inventory import InventoryItem
from certpilot.remediate import RemediationRuntime
from certpilot.settings import Settings, SlackSettings
from certpilot.store import Inventory
from certpilot.store.slack import SlackStore
from remediator.webhook import Payload

log = logging.getLogger("certpilot.paging")


@dataclass
class SlackRuntime:
    pager: Pager
    store: SlackStore
    app: Any
    handler: Callable[..., Awaitable[Any]]
    inventory: Inventory
    clock: Clock

    async def on_scan(self) -> None:
        now = self.clock.now()
        items = await _problems(self.inventory, now)
        await self.pager.sync({SignalSource.INVENTORY: inventory_signals(items, now)})

    async def on_slo(self, statuses: Sequence[Any]) -> None:
        await self.pager.sync({SignalSource.SLO: slo_signals(statuses, self.clock.now())})

    async def on_alerts(self, payload: Payload) -> None:
        events = [
            alert_signal(
                fingerprint=a.fingerprint,
                status=a.status,
                labels=a.labels,
                annotations=a.annotations,
                starts_at=a.starts_at,
                ends_at=a.ends_at,
            )
            for a in payload.alerts
        ]
        await self.pager.sync(events=events)


async def _problems(inventory: Inventory, now: Any) -> list[InventoryItem]:
    import asyncio

    items = await asyncio.to_thread(inventory.items, now=now)
    return [it for it in items if it.problems]


def _secret(env: Mapping[str, str], name: str, field: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            "environment", name, f"the Slack secret named by slack.{field}", has_value=False
        )
    return value


def page_approvers(rt: RemediationRuntime) -> Callable[[Page], Sequence[str]]:
    """Who may approve what a page proposes: the approvers of the policy rule of its first
    certificate (shown as mentions on the page)."""
    from remediator.policy import CertFacts

    def approvers(page: Page) -> Sequence[str]:
        if not page.signals:
            return ()
        s = page.signals[0]
        names = tuple(n for n in (s.labels.get("host", ""),) if n)
        facts = CertFacts(
            names=names or (s.subject,), labels=dict(s.labels), source=s.labels.get("source", "")
        )
        return rt.remediation.policy.select(facts).rule.approvers

    return approvers


async def open_slack(
    stack: AsyncExitStack,
    settings: Settings,
    clock: Clock,
    env: Mapping[str, str],
    *,
    rt: RemediationRuntime,
    inventory: Inventory,
    slo_rows: Callable[[], list[dict[str, Any]]],
    wake: Callable[[], None],
) -> SlackRuntime | None:
    """The bot, or ``None`` when ``slack.enabled`` is false. Raises :class:`ConfigError` when
    it is enabled but a secret is missing from the environment."""
    s: SlackSettings = settings.slack
    if not s.enabled:
        return None
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    token = _secret(env, s.bot_token_env, "bot_token_env")
    # Socket Mode requests are not signed: the secret is needed only for HTTP mode (without
    # it, every request to /slack/events fails verification).
    secret = (
        env.get(s.signing_secret_env, "").strip()
        if s.socket_mode
        else _secret(env, s.signing_secret_env, "signing_secret_env")
    )
    session = ClientSession()
    stack.push_async_callback(session.close)
    kwargs: dict[str, Any] = {"token": token, "session": session}
    if s.api_url:
        kwargs["base_url"] = s.api_url if s.api_url.endswith("/") else s.api_url + "/"
    client = AsyncWebClient(**kwargs)
    # Slack's 429 carries Retry-After: the handler sleeps that long and tries again.
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=5))
    store = SlackStore.open(settings.store.url)
    stack.callback(store.close)
    pager = Pager(store, WebPoster(client), s, clock, jobs=rt.jobs, approvers=page_approvers(rt))
    silence = None
    if s.alertmanager_url:
        silence = _silencer(s.alertmanager_url, timedelta(seconds=s.silence_duration), clock)
    ctx = BotContext(
        settings=s,
        clock=clock,
        remediation=rt.remediation,
        pager=pager,
        store=store,
        audit=rt.audit,
        items=lambda: inventory.items(now=clock.now()),
        slo_rows=slo_rows,
        wake=wake,
        silence=silence,
    )
    app = build_app(ctx, signing_secret=secret, client=client)
    if s.socket_mode:
        import asyncio

        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        handler = AsyncSocketModeHandler(app, _secret(env, s.app_token_env, "app_token_env"))
        stack.push_async_callback(handler.close_async)
        # In the background: slack-sdk retries a failed connect (Slack unreachable, a wrong app
        # token) every 10 s, forever; that must not hold up the service's start.
        connecting = asyncio.ensure_future(handler.connect_async())  # type: ignore[no-untyped-call]
        stack.callback(connecting.cancel)
    return SlackRuntime(pager, store, app, aiohttp_handler(app), inventory, clock)


def _silencer(url: str, duration: timedelta, clock: Clock) -> Callable[[Page, str], Awaitable[str]]:
    """The Silence button: an Alertmanager v2 silence matching the page's alert labels
    (``ref`` for certificate pages, ``alertname`` otherwise), created by the clicking user."""
    import aiohttp

    async def silence(page: Page, user: str) -> str:
        refs = sorted({s.labels.get("ref", "") for s in page.firing} - {""})
        if refs:
            pattern = "|".join(_re_escape(r) for r in refs)
            matchers = [{"name": "ref", "value": pattern, "isRegex": True, "isEqual": True}]
        else:
            matchers = [
                {"name": "alertname", "value": page.kind, "isRegex": False, "isEqual": True}
            ]
        now = clock.now()
        body = {
            "matchers": matchers,
            "startsAt": now.isoformat(),
            "endsAt": (now + duration).isoformat(),
            "createdBy": f"slack:{user}",
            "comment": f"certpilot: silenced from Slack ({page.key})",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url.rstrip("/") + "/api/v2/silences", json=body, timeout=aiohttp.ClientTimeout(10)
            ) as resp,
        ):
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"Alertmanager answered {resp.status}: {data}")
            return str(data.get("silenceID", ""))

    return silence


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


__all__ = ["SlackRuntime", "open_slack", "page_approvers"]
