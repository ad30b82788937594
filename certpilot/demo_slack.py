"""The Slack part of ``certpilot demo``: with no Slack configured, show the messages the bot
would post, rendered as text in the terminal.

A real :class:`~bot.pager.Pager` (grouping, routing, the stored message per page) runs over the
demo's database with a :class:`~bot.pager.TextPoster` instead of Slack's Web API; after the
remediation it runs again, so the edits and thread replies (jobs verified, pages resolved)
show as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from bot.model import SignalSource
from bot.pager import Pager, TextPoster
from bot.signals import inventory_signals, slo_signals
from certpilot.domain.clock import Clock
from certpilot.settings import SlackSettings
from certpilot.store import Inventory
from certpilot.store.slack import SlackStore

#: Where the demo's pages would go: payments and paging severity to their own channels.
DEMO_SLACK = SlackSettings.model_validate(
    {
        "default_channel": "#certs",
        "routes": [
            {"channel": "#payments-oncall", "owners": ["payments"]},
            {"channel": "#certs-pages", "severities": ["page"]},
        ],
    }
)


class DemoPages:
    """A pager that prints; :meth:`show` prints what was posted since the last call."""

    def __init__(self, db_url: str, inventory: Inventory, clock: Clock) -> None:
        self.store = SlackStore.open(db_url)
        self.poster = TextPoster()
        self.pager = Pager(self.store, self.poster, DEMO_SLACK, clock)
        self.inventory = inventory
        self.clock = clock
        self._shown = 0

    def close(self) -> None:
        self.store.close()

    async def sync(self, statuses: Sequence[Any] = ()) -> None:
        now = self.clock.now()
        items = [it for it in self.inventory.items(now=now) if it.problems]
        snapshots = {SignalSource.INVENTORY: inventory_signals(items, now)}
        if statuses:
            snapshots[SignalSource.SLO] = slo_signals(statuses, now)
        await self.pager.sync(snapshots)

    def show(self, console: Console, *, limit: int | None = None) -> int:
        posts = self.poster.posts[self._shown :]
        self._shown = len(self.poster.posts)
        shown = posts if limit is None else posts[:limit]
        for channel, text in shown:
            console.print(Panel(Text(text), title=channel, title_align="left", expand=False))
        if limit is not None and len(posts) > limit:
            console.print(Text(f"... and {len(posts) - limit} more messages", style="dim"))
        return len(posts)
