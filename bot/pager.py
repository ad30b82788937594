"""Paging: signals in, one Slack message per group out, kept up to date.

:meth:`Pager.sync` is called after each scan (inventory snapshot), each SLO evaluation (SLO
snapshot), each Alertmanager delivery (events) and every ``slack.page_interval``. It merges the
signals with what is stored (:mod:`certpilot.store.slack`), groups them into pages
(:func:`bot.model.build_pages`; a signal stays in the page it was first put in), and for each
page:

* **new**: routed to a channel (first matching ``slack.routes``, else the default), unless
  held: a maintenance window for its owner suppresses it, quiet hours hold ``ticket`` pages
  until they end, a silence holds it until the silence ends. Posted with ``chat.postMessage``.
* **changed** (signals added or resolved, a job moved, an acknowledgement): the message is
  edited with ``chat.update`` and the change is replied in its thread: resolution, each job's
  new state (the outcome after the probe verified it), new members of the group.

What "changed" means is a digest of the page's *content* (signals and their status, jobs and
their state, acknowledgement, silence), not of the rendered blocks: relative times ("since
2 h") do not cause edits. Posting goes through slack-sdk's ``AsyncWebClient`` with its
rate-limit retry handler, which waits out a 429's ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from bot import render
from bot.model import JobNote, Page, Signal, SignalSource, build_pages
from bot.signals import from_json, merge, to_json
from certpilot.domain.clock import Clock
from certpilot.settings import SlackSettings
from certpilot.store.jobs import Job, JobNotFound, JobStore
from certpilot.store.slack import SlackStore, StoredPage

log = logging.getLogger("certpilot.bot.pager")

#: Resolved pages are forgotten (and a recurrence gets a new message) after this long.
KEEP_RESOLVED = timedelta(days=2)


class SlackPoster(Protocol):
    """What the pager needs from Slack (``WebPoster`` for the Web API, ``TextPoster`` for a
    terminal)."""

    async def post(
        self, channel: str, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> tuple[str, str]: ...

    async def update(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]
    ) -> None: ...


class WebPoster:
    """Slack's Web API through slack-sdk (``client`` carries the token, ``base_url`` and the
    rate-limit retry handler)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def post(
        self, channel: str, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> tuple[str, str]:
        resp = await self.client.chat_postMessage(
            channel=channel, text=text, blocks=blocks, thread_ts=thread_ts, unfurl_links=False
        )
        return str(resp["channel"]), str(resp["ts"])

    async def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        await self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)


class TextPoster:
    """Collects what would be posted, as terminal text (``certpilot demo`` without Slack)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []  # (channel, text)
        self._n = 0

    async def post(
        self, channel: str, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> tuple[str, str]:
        self._n += 1
        where = f"{channel} (thread)" if thread_ts else channel
        self.posts.append((where, render.to_text(blocks)))
        return channel, f"{self._n}.000000"

    async def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        self.posts.append((f"{channel} (edit)", render.to_text(blocks)))


def _digest(page: Page, stored: StoredPage | None) -> str:
    doc = {
        "signals": sorted((s.fingerprint, s.status) for s in page.signals),
        "jobs": [(j.id, j.state) for j in page.jobs],
        "ack": stored.acknowledged_by if stored else "",
        "silenced": stored.silenced_until.isoformat() if stored and stored.silenced_until else "",
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def job_note(job: Job) -> JobNote:
    return JobNote(
        id=job.id,
        action=job.action,
        state=job.state,
        subject=job.subject,
        requester=job.requester,
        new_serial=job.new_serial,
        verified=job.verified,
        last_error=job.last_error,
        approvers=job.approvers,
    )


class Pager:
    """See the module docstring. ``approvers`` names who may act on a page (shown on it)."""

    def __init__(
        self,
        store: SlackStore,
        poster: SlackPoster,
        settings: SlackSettings,
        clock: Clock,
        *,
        jobs: JobStore | None = None,
        approvers: Callable[[Page], Sequence[str]] | None = None,
    ) -> None:
        self.store = store
        self.poster = poster
        self.settings = settings
        self.clock = clock
        self.jobs = jobs
        self.approvers = approvers
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------------- routing

    def channel_for(self, page: Page) -> str:
        for route in self.settings.routes:
            if route.owners and page.owner not in route.owners:
                continue
            if route.severities and page.severity.value not in route.severities:
                continue
            return route.channel
        return self.settings.default_channel

    def held_until(self, page: Page, now: datetime) -> tuple[datetime | None, str]:
        """When a new page may be posted (``None``: now), and why it waits."""
        for w in self.settings.maintenance:
            if w.start <= now < w.end and (not w.owners or page.owner in w.owners):
                return w.end, f"maintenance{': ' + w.reason if w.reason else ''}"
        q = self.settings.quiet_hours
        if q is not None and page.severity.value in q.severities:
            tz = ZoneInfo(q.tz)
            local = now.astimezone(tz)
            start, end = time.fromisoformat(q.start), time.fromisoformat(q.end)
            t = local.time()
            inside = start <= t < end if start < end else (t >= start or t < end)
            if inside:  # they end today, or tomorrow when they span midnight
                end_at = datetime.combine(local.date(), end, tz)
                if end_at <= local:
                    end_at += timedelta(days=1)
                return end_at, "quiet hours"
        return None, ""

    # --------------------------------------------------------------------------- syncing

    async def sync(
        self,
        snapshots: Mapping[SignalSource, Sequence[Signal]] | None = None,
        events: Sequence[Signal] = (),
    ) -> list[Page]:
        """Bring Slack up to date (see the module docstring); returns the pages."""
        async with self._lock:
            # Other replicas too: one sync at a time across the processes sharing the store.
            release = await asyncio.to_thread(self.store.lock_pages)
            try:
                return await self._sync(dict(snapshots or {}), list(events))
            finally:
                await asyncio.to_thread(release)

    async def _sync(
        self, snapshots: dict[SignalSource, Sequence[Signal]], events: list[Signal]
    ) -> list[Page]:
        now = self.clock.now()
        wanted = set(self.settings.sources)
        snapshots = {k: v for k, v in snapshots.items() if k.value in wanted}
        events = [e for e in events if e.source.value in wanted]
        stored_pages = await asyncio.to_thread(self.store.pages)
        by_key = {p.key: p for p in stored_pages}
        stored: list[Signal] = []
        existing: dict[str, str] = {}
        for p in stored_pages:
            for raw in p.signals:
                s = from_json(raw)
                stored.append(s)
                existing[s.fingerprint] = p.key
        current = merge(stored, snapshots, events, now)
        pages = build_pages(current, existing)
        out: list[Page] = []
        for page in pages:
            row = by_key.get(page.key)
            if self.approvers is not None:
                page = _with(page, approvers=tuple(self.approvers(page)))
            notes, changed_jobs = await self._jobs(row)
            page = _with(page, jobs=tuple(notes))
            if row is not None:  # the digest counts these, so the edit must show them
                page = _with(
                    page, acknowledged_by=row.acknowledged_by, silenced_until=row.silenced_until
                )
            out.append(page)
            try:
                await self._publish(page, row, changed_jobs, now)
            except Exception as e:  # one page failing must not stop the others
                log.warning("slack: page %s not published: %s", page.key, _one_line(e))
        await asyncio.to_thread(self.store.prune, now - KEEP_RESOLVED)
        return out

    async def _jobs(self, row: StoredPage | None) -> tuple[list[JobNote], list[Job]]:
        if row is None or self.jobs is None or not row.jobs:
            return [], []
        notes: list[JobNote] = []
        changed: list[Job] = []
        for entry in row.jobs:
            job_id, seen = _job_entry(entry)
            try:
                job = await asyncio.to_thread(self.jobs.get, job_id)
            except JobNotFound:
                continue
            notes.append(job_note(job))
            if job.state != seen:
                changed.append(job)
        return notes, changed

    async def _publish(
        self, page: Page, row: StoredPage | None, changed_jobs: list[Job], now: datetime
    ) -> None:
        signals = [to_json(s) for s in page.signals]
        status = "resolved" if page.resolved else "firing"
        digest = _digest(page, row)
        jobs_state = [{"id": j.id, "state": j.state} for j in page.jobs]
        text, blocks = render.page_blocks(page, now=now)
        if row is None or not row.ts:
            if page.resolved:  # resolved before it was ever posted: nothing to say
                await asyncio.to_thread(
                    self.store.save, page.key, now=now, signals=signals, status=status,
                    severity=page.severity.value, digest=digest,
                )  # fmt: skip
                return
            held, why = self.held_until(page, now)
            if row is not None and row.silenced_until and row.silenced_until > now:
                held, why = row.silenced_until, "silenced"
            if held is not None:
                await asyncio.to_thread(
                    self.store.save, page.key, now=now, signals=signals, status=status,
                    severity=page.severity.value, held_until=held,
                )  # fmt: skip
                log.info("slack: page %s held until %s (%s)", page.key, held.isoformat(), why)
                return
            try:
                channel, ts = await self.poster.post(self.channel_for(page), text, blocks)
            except Exception:
                # Keep the signals (as a held page is kept) so the next sync, a bare tick
                # included, posts it: an Alertmanager event is not delivered again.
                await asyncio.to_thread(
                    self.store.save, page.key, now=now, signals=signals, status=status,
                    severity=page.severity.value,
                )  # fmt: skip
                raise
            await asyncio.to_thread(
                self.store.save, page.key, now=now, signals=signals, status=status,
                severity=page.severity.value, channel=channel, ts=ts, digest=digest,
                jobs=jobs_state, clear_hold=True,
            )  # fmt: skip
            log.info("slack: posted page %s to %s", page.key, channel)
            return
        if digest == row.digest:
            return
        await self.poster.update(row.channel, row.ts, text, blocks)
        old = {str(s.get("fingerprint")): str(s.get("status")) for s in row.signals}
        added = [s for s in page.firing if s.fingerprint not in old]
        if added:
            t, b = render.members_reply(added, now=now)
            await self.poster.post(row.channel, t, b, thread_ts=row.ts)
        for job in changed_jobs:
            t, b = render.job_update_blocks(job_note(job), actor=None)
            await self.poster.post(row.channel, t, b, thread_ts=row.ts)
        if page.resolved and row.status != "resolved":
            t, b = render.resolved_reply(page, now=now)
            await self.poster.post(row.channel, t, b, thread_ts=row.ts)
        await asyncio.to_thread(
            self.store.save, page.key, now=now, signals=signals, status=status,
            severity=page.severity.value, digest=digest, jobs=jobs_state,
        )  # fmt: skip

    # --------------------------------------------------------------------- page actions

    async def attach_job(self, page_key: str, job_id: int) -> None:
        """Show ``job_id`` on the page (its state changes are replied in the thread)."""
        row = await asyncio.to_thread(self.store.get, page_key)
        if row is None:
            return
        entries = [e for e in row.jobs if _job_entry(e)[0] != job_id]
        entries.append({"id": job_id, "state": ""})
        await asyncio.to_thread(self.store.patch, page_key, now=self.clock.now(), jobs=entries)

    async def reply(self, page_key: str, text: str, blocks: list[dict[str, Any]]) -> None:
        row = await asyncio.to_thread(self.store.get, page_key)
        if row is not None and row.ts:
            await self.poster.post(row.channel, text, blocks, thread_ts=row.ts)

    def page(self, row: StoredPage) -> Page:
        """A stored page as a :class:`Page` (for the actions on it)."""
        signals = [from_json(s) for s in row.signals]
        pages = build_pages(signals, {s.fingerprint: row.key for s in signals})
        return pages[0]


def _job_entry(entry: Any) -> tuple[int, str]:
    if isinstance(entry, dict):
        return int(entry.get("id", 0)), str(entry.get("state", ""))
    return int(entry), ""


def _with(page: Page, **changes: Any) -> Page:
    from dataclasses import replace

    return replace(page, **changes)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


__all__ = ["KEEP_RESOLVED", "Pager", "SlackPoster", "TextPoster", "WebPoster", "job_note"]
