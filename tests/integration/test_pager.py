"""The pager against a loopback Slack: a real :class:`~bot.pager.Pager` over a real
:class:`~certpilot.store.slack.SlackStore` (SQLite in ``tmp_path``), posting through slack-sdk's
``AsyncWebClient`` to :class:`~tests.support.slack_fake.FakeSlack`, on a clock the tests move.

The fake answers synchronously from the client's point of view (the pager awaits every call),
so each test asserts on ``slack.calls_to(...)`` right after ``await pager.sync(...)``: no
polling, no sleeps. Signals come from the real converters (:func:`bot.signals.inventory_signals`
over :class:`~certpilot.domain.inventory.InventoryItem`, :func:`bot.signals.alert_signal`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot import render
from bot.model import Severity, Signal, SignalSource
from bot.pager import Pager, TextPoster, WebPoster
from bot.signals import alert_signal, inventory_signals
from certpilot.domain.clock import FixedClock
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.problems import ProblemCode
from certpilot.settings import SlackSettings
from certpilot.store.jobs import JobStore, NewJob
from certpilot.store.slack import SlackStore
from tests.support.slack_fake import DEFAULT_TOKEN, Call, FakeSlack

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DEFAULT = "#certpilot"
OLD = "Old Intermediate"
#: The page the 50 certificates of the retiring intermediate make (bot.model.group_key).
BIG = f"expiring|issuer={OLD}"
INV = SignalSource.INVENTORY
RUNBOOK = "https://runbooks.example.org/certs#expiring-soon"

# --------------------------------------------------------------------------- signals


def item(
    host: str,
    *,
    issuer: str = OLD,
    owner: str = "web",
    days: float = 20.0,
    code: ProblemCode = ProblemCode.EXPIRING,
    source: str = "tls",
) -> InventoryItem:
    """One location with one problem, as the inventory holds it (``days`` left)."""
    if source == "tls":
        ref, target = f"tls://{host}:443#{host}", f"{host}:443"
    else:
        ref, target = f"file:///etc/certs/{host}.pem", f"/etc/certs/{host}.pem"
    return InventoryItem(
        ref=ref,
        source=source,
        target=target,
        fingerprint_sha256=hashlib.sha256(host.encode()).hexdigest(),
        serial="0a",
        subject=f"CN={host}",
        subject_cn=host,
        issuer=f"CN={issuer}",
        issuer_cn=issuer,
        sans=(host,),
        not_before=T0 - timedelta(days=70),
        not_after=T0 + timedelta(days=days),
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=(code,),
        error=None,
        first_seen=T0 - timedelta(days=70),
        last_scanned=T0,
        labels={"owner": owner},
    )


def fleet(n: int) -> list[InventoryItem]:
    """``n`` endpoints whose certificates the retiring intermediate issued (three teams)."""
    return [item(f"h{i:02d}.example.com", owner=f"team{i % 3}") for i in range(n)]


def unrelated() -> InventoryItem:
    """A certificate sharing nothing with :func:`fleet`'s (another CA, source, owner, domain).

    Not a ``tls`` one on purpose: every inventory signal carries its scanner source as the
    ``source`` label, and :func:`bot.model.root_cause` would group it with the fleet by that.
    """
    return item("pay.example.net", issuer="Other CA", owner="payments", source="files")


def snapshot(clock: FixedClock, items: Iterable[InventoryItem]) -> dict[SignalSource, list[Signal]]:
    """What the service hands the pager after a scan."""
    return {INV: inventory_signals(items, clock.now())}


def alert(status: str, *, at: datetime) -> Signal:
    """certpilot's own CertificateExpiringSoon alert as Alertmanager delivers it."""
    ref = "tls://shop.example.org:443#shop.example.org"
    return alert_signal(
        fingerprint="4f1c2a9be07d3c55",
        status=status,
        labels={
            "alertname": "CertificateExpiringSoon",
            "severity": "ticket",
            "ref": ref,
            "owner": "shop",
        },
        annotations={"summary": "certificate expires in 9 days", "runbook_url": RUNBOOK},
        starts_at=T0 - timedelta(hours=1),
        ends_at=at if status == "resolved" else None,
    )


# --------------------------------------------------------------------------- the rig


def slack_settings(**extra: Any) -> SlackSettings:
    return SlackSettings.model_validate({"enabled": True, "default_channel": DEFAULT, **extra})


@dataclass
class Rig:
    slack: FakeSlack
    store: SlackStore
    clock: FixedClock
    url: str

    def pager(
        self,
        settings: SlackSettings | None = None,
        *,
        jobs: JobStore | None = None,
        retries: int = 0,
    ) -> Pager:
        """A pager with its own client, as :func:`certpilot.paging.open_slack` builds it."""
        client = AsyncWebClient(token=DEFAULT_TOKEN, base_url=self.slack.base_url)
        if retries:
            client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=retries))
        return Pager(
            self.store, WebPoster(client), settings or slack_settings(), self.clock, jobs=jobs
        )


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def rig(slack: FakeSlack, tmp_path: Path) -> Iterator[Rig]:
    url = f"sqlite:///{tmp_path / 'certpilot.db'}"
    store = SlackStore.open(url)
    r = Rig(slack, store, FixedClock(T0), url)
    try:
        yield r
    finally:
        r.store.close()


def top_level(calls: Sequence[Call]) -> list[Call]:
    return [c for c in calls if not c.params.get("thread_ts")]


def replies(calls: Sequence[Call]) -> list[Call]:
    return [c for c in calls if c.params.get("thread_ts")]


def text(call: Call) -> str:
    """A posted or edited message's blocks as plain text."""
    blocks: list[dict[str, Any]] = call.params["blocks"]
    return render.to_text(blocks)


def buttons(call: Call) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = call.params["blocks"]
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


# --------------------------------------------------------------------------- tests


async def test_fifty_certificates_of_one_intermediate_make_one_message(rig: Rig) -> None:
    pages = await rig.pager().sync(snapshot(rig.clock, [*fleet(50), unrelated()]))

    assert sorted(len(p.signals) for p in pages) == [1, 50]
    posts = rig.slack.calls_to("chat.postMessage")
    assert len(posts) == 2 and all(c.ok for c in posts)
    assert all("thread_ts" not in c.params for c in posts)
    assert rig.slack.calls_to("chat.update") == []
    big = next(c for c in posts if "50 certificates" in c.params["text"])
    assert c_channel(big) == DEFAULT
    body = text(big)
    assert "50 certificates expiring" in body and f"issuer {OLD}" in body
    assert "Affected (50)" in body
    listed = [line for line in body.splitlines() if line.startswith("• ")]
    assert len(listed) == 10
    assert "and 40 more" in body
    # The store remembers where the message is, so later changes edit it.
    row = rig.store.get(BIG)
    assert row is not None and (row.channel, row.ts) == (DEFAULT, big.response["ts"])
    assert len(row.signals) == 50 and row.status == "firing"
    (small,) = [c for c in posts if c is not big]
    assert "1 certificate expiring" in small.params["text"] and "payments" in text(small)


def c_channel(call: Call) -> str:
    return str(call.params["channel"])


async def test_the_same_snapshot_again_calls_slack_not_at_all(rig: Rig) -> None:
    pager = rig.pager()
    items = [*fleet(50), unrelated()]
    await pager.sync(snapshot(rig.clock, items))
    assert len(rig.slack.calls_to("chat.postMessage")) == 2
    rig.slack.clear_calls()

    # A later scan finds the same problems: relative times changed ("firing for 10 min"),
    # the page's content did not, so nothing is edited.
    rig.clock.advance(timedelta(minutes=10))
    await pager.sync(snapshot(rig.clock, items))
    await pager.sync()  # and a tick with no news
    assert rig.slack.calls == []


async def test_a_new_member_edits_the_message_and_is_named_in_its_thread(rig: Rig) -> None:
    pager = rig.pager()
    await pager.sync(snapshot(rig.clock, [*fleet(50), unrelated()]))
    row = rig.store.get(BIG)
    assert row is not None
    rig.slack.clear_calls()

    rig.clock.advance(timedelta(minutes=5))
    await pager.sync(snapshot(rig.clock, [*fleet(51), unrelated()]))

    (edit,) = rig.slack.calls_to("chat.update")
    assert (c_channel(edit), edit.params["ts"]) == (DEFAULT, row.ts) and edit.ok
    assert "51 certificates expiring" in text(edit) and "and 41 more" in text(edit)
    (reply,) = rig.slack.calls_to("chat.postMessage")
    assert reply.params["thread_ts"] == row.ts and reply.ok
    assert "1 more joined" in text(reply) and "h50.example.com" in text(reply)
    assert len(rig.slack.messages(DEFAULT)) == 2  # still two top-level messages
    assert len(rig.slack.thread(DEFAULT, row.ts)) == 1


async def test_resolution_edits_the_message_and_replies_once(rig: Rig) -> None:
    pager = rig.pager()
    await pager.sync(snapshot(rig.clock, [*fleet(50), unrelated()]))
    row = rig.store.get(BIG)
    assert row is not None
    rig.slack.clear_calls()

    # The next scan no longer finds the fleet's problem (renewed elsewhere).
    rig.clock.advance(timedelta(hours=2))
    await pager.sync(snapshot(rig.clock, [unrelated()]))

    (edit,) = rig.slack.calls_to("chat.update")
    assert edit.params["ts"] == row.ts
    assert "Resolved: 50 certificates expiring" in text(edit)
    (runbook,) = buttons(edit)  # no Renew/Acknowledge/Silence any more, only the runbook
    assert runbook["action_id"] == render.ACTION_RUNBOOK and runbook["url"].startswith("https://")
    (reply,) = rig.slack.calls_to("chat.postMessage")
    assert reply.params["thread_ts"] == row.ts
    assert "Resolved" in text(reply) and "All healthy again" in text(reply)
    stored = rig.store.get(BIG)
    assert stored is not None and stored.status == "resolved" and stored.ts == row.ts

    rig.slack.clear_calls()
    rig.clock.advance(timedelta(minutes=15))
    await pager.sync(snapshot(rig.clock, [unrelated()]))
    await pager.sync()
    assert rig.slack.calls == []


async def test_alertmanager_firing_then_resolved(rig: Rig) -> None:
    pager = rig.pager()
    await pager.sync(events=[alert("firing", at=rig.clock.now())])
    (post,) = rig.slack.calls_to("chat.postMessage")
    assert "thread_ts" not in post.params and post.ok
    assert "1 certificate expiring" in post.params["text"]
    body = text(post)
    assert "shop.example.org" in body and "certificate expires in 9 days" in body
    assert any(b.get("url") == RUNBOOK for b in buttons(post))
    rig.slack.clear_calls()

    # Nothing new from Alertmanager: the stored alert keeps firing, nothing is said.
    await pager.sync()
    assert rig.slack.calls == []

    rig.clock.advance(timedelta(minutes=30))
    await pager.sync(events=[alert("resolved", at=rig.clock.now())])
    (edit,) = rig.slack.calls_to("chat.update")
    assert edit.params["ts"] == post.response["ts"]
    assert "Resolved" in text(edit)
    (reply,) = rig.slack.calls_to("chat.postMessage")
    assert reply.params["thread_ts"] == post.response["ts"] and "Resolved" in text(reply)

    rig.slack.clear_calls()
    await pager.sync(events=[alert("resolved", at=rig.clock.now())])  # a re-delivery
    assert rig.slack.calls == []


async def test_routes_pick_the_channel(rig: Rig) -> None:
    settings = slack_settings(
        routes=[
            {"channel": "#payments", "owners": ["payments"]},
            {"channel": "#pages", "severities": ["page"]},
        ]
    )
    # Different kinds, so each makes its own page.
    items = [
        item("pay.example.net", issuer="Pay CA", owner="payments", days=20),  # ticket
        item("www.example.com", owner="web", code=ProblemCode.EXPIRED, days=-1),  # page
        item("ops.example.io", owner="ops", code=ProblemCode.HOSTNAME_MISMATCH),  # ticket
    ]
    pages = await rig.pager(settings).sync(snapshot(rig.clock, items))
    assert {p.owner: p.severity for p in pages} == {
        "web": Severity.PAGE,
        "payments": Severity.TICKET,
        "ops": Severity.TICKET,
    }

    posts = rig.slack.calls_to("chat.postMessage")
    assert all(c.ok for c in posts)
    where = {c_channel(c): c.params["text"] for c in posts}
    assert set(where) == {"#payments", "#pages", DEFAULT}
    assert "expiring" in where["#payments"]
    assert "expired" in where["#pages"]
    assert "not matching their hostname" in where[DEFAULT]


async def test_quiet_hours_hold_tickets_until_morning(rig: Rig) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    rig.clock = FixedClock(datetime(2026, 1, 15, 23, 30, tzinfo=berlin))
    settings = slack_settings(
        quiet_hours={
            "start": "22:00",
            "end": "07:00",
            "tz": "Europe/Berlin",
            "severities": ["ticket"],
        }
    )
    pager = rig.pager(settings)
    ticket = item("www.example.com", owner="web", days=20)
    page = item("api.example.io", owner="ops", code=ProblemCode.EXPIRED, days=-1)
    pages = await pager.sync(snapshot(rig.clock, [ticket, page]))
    held_key = next(p.key for p in pages if p.severity == Severity.TICKET)

    (post,) = rig.slack.calls_to("chat.postMessage")
    assert "expired" in post.params["text"]  # the page-severity one goes out at once
    row = rig.store.get(held_key)
    assert row is not None and row.ts == ""
    morning = datetime(2026, 1, 16, 7, 0, tzinfo=berlin)
    assert row.held_until == morning and row.held_until.astimezone(berlin).hour == 7

    # Still quiet at 06:59: a tick does not post it.
    rig.clock.advance(morning - timedelta(minutes=1) - rig.clock.now())
    rig.slack.clear_calls()
    await pager.sync()
    assert rig.slack.calls == []

    rig.clock.advance(timedelta(minutes=2))
    await pager.sync()
    (held,) = rig.slack.calls_to("chat.postMessage")
    assert "thread_ts" not in held.params and "1 certificate expiring" in held.params["text"]
    row = rig.store.get(held_key)
    assert row is not None and row.ts == held.response["ts"] and row.held_until is None


async def test_a_maintenance_window_suppresses_its_owner_until_it_ends(rig: Rig) -> None:
    end = T0 + timedelta(hours=1)
    settings = slack_settings(
        maintenance=[
            {
                "start": (T0 - timedelta(hours=1)).isoformat(),
                "end": end.isoformat(),
                "owners": ["web"],
                "reason": "load balancer swap",
            }
        ]
    )
    pager = rig.pager(settings)
    web = item("www.example.com", owner="web")
    ops = item("ops.example.io", owner="ops", code=ProblemCode.HOSTNAME_MISMATCH)
    pages = await pager.sync(snapshot(rig.clock, [web, ops]))
    web_key = next(p.key for p in pages if p.owner == "web")

    (post,) = rig.slack.calls_to("chat.postMessage")
    assert "not matching their hostname" in post.params["text"]
    row = rig.store.get(web_key)
    assert row is not None and row.ts == "" and row.held_until == end
    rig.slack.clear_calls()

    rig.clock.advance(timedelta(minutes=30))
    await pager.sync(snapshot(rig.clock, [web, ops]))
    assert rig.slack.calls == []  # still inside the window

    rig.clock.advance(timedelta(minutes=31))
    await pager.sync(snapshot(rig.clock, [web, ops]))
    (late,) = rig.slack.calls_to("chat.postMessage")
    assert "1 certificate expiring" in late.params["text"] and "thread_ts" not in late.params
    assert rig.slack.calls_to("chat.update") == []


async def test_a_rate_limited_post_is_retried(rig: Rig) -> None:
    pager = rig.pager(retries=2)
    rig.slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    await pager.sync(snapshot(rig.clock, [item("www.example.com")]))

    first, second = rig.slack.calls_to("chat.postMessage")
    assert (first.status, first.error) == (429, "ratelimited")
    assert second.status == 200 and second.ok
    (message,) = rig.slack.messages(DEFAULT)
    (row,) = rig.store.pages()
    assert row.ts == message["ts"] == second.response["ts"]


async def test_after_a_restart_the_same_message_is_edited(rig: Rig) -> None:
    await rig.pager().sync(snapshot(rig.clock, fleet(3)))
    (post,) = rig.slack.calls_to("chat.postMessage")
    ts = post.response["ts"]

    # The process restarts: a new store connection, a new client, a new pager.
    rig.store.close()
    rig.store = SlackStore.open(rig.url)
    pager = rig.pager()
    rig.slack.clear_calls()
    rig.clock.advance(timedelta(minutes=20))
    await pager.sync(snapshot(rig.clock, fleet(3)))
    assert rig.slack.calls == []  # what was posted before the restart is not posted again

    await pager.sync(snapshot(rig.clock, fleet(4)))
    (edit,) = rig.slack.calls_to("chat.update")
    assert edit.params["ts"] == ts and "4 certificates expiring" in text(edit)
    (reply,) = rig.slack.calls_to("chat.postMessage")
    assert reply.params["thread_ts"] == ts and "h03.example.com" in text(reply)
    assert len(rig.slack.messages(DEFAULT)) == 1


async def test_a_job_reports_its_outcome_in_the_thread(rig: Rig) -> None:
    jobs = JobStore.open(rig.url)
    try:
        pager = rig.pager(jobs=jobs)
        await pager.sync(snapshot(rig.clock, fleet(2)))
        (post,) = rig.slack.calls_to("chat.postMessage")
        ts = post.response["ts"]

        now = rig.clock.now()
        job = jobs.create(
            NewJob(
                key="renew:h00.example.com",
                action="renew",
                names=("h00.example.com",),
                targets=("web", "canary"),
                requester="U0ALICE01",
                old_serial="0a",
            ),
            now=now,
        ).job
        await pager.attach_job(BIG, job.id)
        serial = "4f2a9c01bd"
        steps = ("approved", "issuing", "deploying", "verifying", "done")
        for before, after in itertools.pairwise(steps):
            rig.clock.advance(timedelta(seconds=20))
            extra: dict[str, Any] = {}
            if after == "deploying":
                extra["new_serial"] = serial
            if after == "done":
                extra["verified"] = ("web", "canary")
            job = jobs.transition(job.id, before, after, now=rig.clock.now(), **extra)
        assert job.state == "done" and job.new_serial == serial
        rig.slack.clear_calls()

        await pager.sync(snapshot(rig.clock, fleet(2)))
        (edit,) = rig.slack.calls_to("chat.update")
        assert edit.params["ts"] == ts and "Jobs (1: 1 done)" in text(edit)
        (reply,) = rig.slack.calls_to("chat.postMessage")
        assert reply.params["thread_ts"] == ts
        said = text(reply)
        assert "verified" in said and serial in said and "web, canary" in said

        rig.slack.clear_calls()
        await pager.sync(snapshot(rig.clock, fleet(2)))
        await pager.sync()
        assert rig.slack.calls == []
    finally:
        jobs.close()


async def test_a_slack_failure_on_one_page_does_not_stop_the_others(rig: Rig) -> None:
    settings = slack_settings(routes=[{"channel": "#gone", "severities": ["page"]}])
    pager = rig.pager(settings)
    items = [
        item("www.example.com", owner="web", code=ProblemCode.EXPIRED, days=-1),  # page: first
        item("ops.example.io", owner="ops", code=ProblemCode.HOSTNAME_MISMATCH),
    ]
    rig.slack.fail("chat.postMessage", "channel_not_found", times=1)
    await pager.sync(snapshot(rig.clock, items))

    failed, posted = rig.slack.calls_to("chat.postMessage")
    assert (c_channel(failed), failed.error) == ("#gone", "channel_not_found")
    assert c_channel(posted) == DEFAULT and posted.ok
    rig.slack.clear_calls()

    await pager.sync(snapshot(rig.clock, items))
    (retried,) = rig.slack.calls_to("chat.postMessage")
    assert c_channel(retried) == "#gone" and retried.ok and "thread_ts" not in retried.params
    assert rig.slack.calls_to("chat.update") == []  # the other page is left alone
    assert len(rig.slack.messages("#gone")) == 1 and len(rig.slack.messages(DEFAULT)) == 1


async def test_an_alert_whose_post_failed_is_posted_on_the_next_tick(rig: Rig) -> None:
    # Alertmanager sends an alert once (until its repeat_interval): the pager must keep it.
    pager = rig.pager()
    rig.slack.fail("chat.postMessage", "internal_error", times=1)
    await pager.sync(events=[alert("firing", at=rig.clock.now())])
    (failed,) = rig.slack.calls_to("chat.postMessage")
    assert failed.error == "internal_error"
    rig.slack.clear_calls()

    rig.clock.advance(timedelta(seconds=15))
    await pager.sync()  # the page_interval tick, nothing new delivered
    (post,) = rig.slack.calls_to("chat.postMessage")
    assert post.ok and "1 certificate expiring" in post.params["text"]


async def test_the_text_poster_shows_the_same_pages(tmp_path: Path) -> None:
    clock = FixedClock(T0)
    store = SlackStore.open(f"sqlite:///{tmp_path / 'demo.db'}")
    try:
        poster = TextPoster()
        pager = Pager(store, poster, slack_settings(), clock)
        await pager.sync(snapshot(clock, [*fleet(50), unrelated()]))
        assert [where for where, _ in poster.posts] == [DEFAULT, DEFAULT]
        big = next(t for _, t in poster.posts if "50 certificates" in t)
        assert big.splitlines()[0].endswith(" 50 certificates expiring")  # the header
        assert "Affected (50)" in big and "and 40 more" in big and "h00.example.com" in big
        assert "[ Renew ]" in big and "{" not in big  # readable text, not block JSON

        clock.advance(timedelta(minutes=5))
        await pager.sync(snapshot(clock, [*fleet(51), unrelated()]))
        edits = poster.posts[2:]
        assert [where for where, _ in edits] == [f"{DEFAULT} (edit)", f"{DEFAULT} (thread)"]
        assert "51 certificates expiring" in edits[0][1] and "h50.example.com" in edits[1][1]
    finally:
        store.close()


async def test_an_acknowledgement_and_a_silence_show_on_the_edited_message(rig: Rig) -> None:
    pager = rig.pager()
    await pager.sync(snapshot(rig.clock, fleet(2)))
    (post,) = rig.slack.calls_to("chat.postMessage")
    rig.slack.clear_calls()

    # What the Acknowledge and Silence buttons store (bot.slack_app), then the sync they run.
    until = rig.clock.now() + timedelta(hours=1)
    rig.store.patch(BIG, now=rig.clock.now(), acknowledged_by="U0ALICE01", silenced_until=until)
    await pager.sync()
    (edit,) = rig.slack.calls_to("chat.update")
    assert edit.params["ts"] == post.response["ts"]
    assert "<@U0ALICE01>" in json.dumps(edit.params["blocks"])
    assert "Acknowledged by" in text(edit) and "Silenced for 1 h more" in text(edit)
    assert rig.slack.calls_to("chat.postMessage") == []

    rig.slack.clear_calls()
    await pager.sync()
    assert rig.slack.calls == []


async def test_two_replicas_paging_the_same_alert_at_once_post_it_once(
    slack: FakeSlack, store_url: str
) -> None:
    """Alertmanager's webhook (or a Slack button) reaches whichever replica the load balancer
    picks: two pagers on one database, syncing the same new alert at the same moment, make one
    message, not two (``SlackStore.lock_pages``: an advisory lock on PostgreSQL, ``flock`` on
    SQLite, either held across the read, the post and the save)."""
    clock = FixedClock(T0)
    stores = [SlackStore.open(store_url) for _ in range(2)]
    try:
        pagers = [
            Pager(
                s,
                WebPoster(AsyncWebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)),
                slack_settings(),
                clock,
            )
            for s in stores
        ]
        firing = alert("firing", at=T0)
        await asyncio.gather(*(p.sync(events=[firing]) for p in pagers))
        posts = top_level(slack.calls_to("chat.postMessage"))
        assert len(posts) == 1, [c.params["text"] for c in posts]
        (row,) = stores[0].pages()
        assert row.ts == posts[0].response["ts"]
        # Both still page: the second replica's sync, later, edits nothing it need not.
        await pagers[1].sync(events=[firing])
        assert len(top_level(slack.calls_to("chat.postMessage"))) == 1
    finally:
        for s in stores:
            s.close()
