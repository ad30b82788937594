"""bot.render: Block Kit structure and limits, escaping of data, relative times, plain text.

Pages, signals and jobs are built directly from bot.model; ``now`` is fixed, so every
relative time ("expires in 3 days", "firing for 2 h") is exact.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import render
from bot.model import JobNote, Page, Severity, Signal, SignalSource
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.problems import ProblemCode

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
RUNBOOK = "https://example.com/runbooks.md#expiring"
APPROVERS = ("U123ABC", "W0456DEF", "S0614TZR7")
EVIL = "<!channel> <@U999> <https://evil.example|click> & co"
BLOCK_TYPES = {"header", "section", "context", "actions", "divider", "input"}
# Everything in Slack's syntax that notifies someone (<!date^...> does not).
MENTION = re.compile(r"<(@[A-Z0-9]+|!subteam\^[A-Z0-9]+|!channel|!here|!everyone)[^>]*>")


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def sig(
    i: int,
    *,
    kind: str = "expiring",
    status: str = "firing",
    host: str | None = None,
    summary: str | None = None,
    days: float | None = 3.5,
    since: datetime | None = None,
    source: SignalSource = SignalSource.INVENTORY,
    runbook: str = RUNBOOK,
    **labels: str,
) -> Signal:
    host = host if host is not None else f"h{i:03d}.example.com"
    lab = {
        "host": host,
        "ref": f"tls://{host}:443",
        "target": f"web{i}:443",
        "issuer_CN": "R3",
        "owner": "team-a",
        "fingerprint": f"{i:064x}",
        **labels,
    }
    if days is not None:
        lab["not_after"] = iso(NOW + timedelta(days=days, minutes=i))
    return Signal(
        source=source,
        fingerprint=f"fp{i}",
        kind=kind,
        subject=lab["ref"],
        status=status,
        severity=Severity.PAGE,
        since=since or NOW - timedelta(hours=2, minutes=5),
        summary=summary if summary is not None else f"certificate due for renewal at web{i}:443",
        labels=lab,
        runbook_url=runbook,
    )


def make_page(
    signals: Sequence[Signal],
    *,
    kind: str = "expiring",
    proposal: str | None = "renew",
    cause: tuple[str, str] = ("issuer", "R3"),
    **kw: Any,
) -> Page:
    return Page(
        key=f"{kind}|{cause[0]}={cause[1]}",
        kind=kind,
        cause=cause,
        severity=Severity.PAGE,
        signals=tuple(signals),
        proposal=proposal,
        approvers=kw.pop("approvers", APPROVERS),
        **kw,
    )


# ------------------------------------------------------------------------------ structure


def text_objects(obj: object) -> Iterator[dict[str, Any]]:
    """Every text object (plain_text / mrkdwn) anywhere in a block structure."""
    if isinstance(obj, dict):
        if obj.get("type") in {"plain_text", "mrkdwn"} and isinstance(obj.get("text"), str):
            yield obj
        for v in obj.values():
            yield from text_objects(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from text_objects(v)


def all_text(obj: object) -> str:
    """Every text object's text; a message's fallback (a bare string) counts as one."""
    if isinstance(obj, tuple) and obj and isinstance(obj[0], str):
        return "\n".join([obj[0], all_text(obj[1:])])
    return "\n".join(t["text"] for t in text_objects(obj))


def check_blocks(blocks: list[dict[str, Any]], *, limit: int = render.MAX_BLOCKS) -> None:
    """Valid Block Kit as far as Slack's documented shapes and limits go."""
    json.dumps(blocks)  # serialisable
    assert isinstance(blocks, list) and 0 < len(blocks) <= limit
    ids = [b["block_id"] for b in blocks if "block_id" in b]
    assert len(ids) == len(set(ids))
    for b in blocks:
        assert b["type"] in BLOCK_TYPES, b
        if b["type"] == "header":
            assert b["text"]["type"] == "plain_text"
            assert 0 < len(b["text"]["text"]) <= 150
        elif b["type"] == "section":
            assert "text" in b or "fields" in b
            if "text" in b:
                assert b["text"]["type"] == "mrkdwn"
                assert 0 < len(b["text"]["text"]) <= 3000
            for f in b.get("fields", []):
                assert 0 < len(f["text"]) <= 2000
            assert len(b.get("fields", [])) <= 10
        elif b["type"] == "context":
            assert 0 < len(b["elements"]) <= 10
            for e in b["elements"]:
                assert 0 < len(e["text"]) <= 3000
        elif b["type"] == "actions":
            assert 0 < len(b["elements"]) <= 25
            for e in b["elements"]:
                check_button(e)


def check_button(e: Mapping[str, Any]) -> None:
    assert e["type"] == "button"
    assert e["action_id"].startswith("certpilot_")
    assert e["text"]["type"] == "plain_text" and 0 < len(e["text"]["text"]) <= 75
    assert e.get("style") in {None, "primary", "danger"}
    if "value" in e:
        assert len(e["value"]) <= 2000
        json.loads(e["value"])
    if "url" in e:
        assert e["url"].startswith(("https://", "http://")) and len(e["url"]) <= 3000
    assert "value" in e or "url" in e


def buttons(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


def check_message(msg: tuple[str, list[dict[str, Any]]]) -> None:
    fallback, blocks = msg
    assert isinstance(fallback, str) and 0 < len(fallback) <= render.MAX_FALLBACK
    check_blocks(blocks)


# ------------------------------------------------------------------------------ the page


def test_page_blocks_what_where_since_how_many_and_who() -> None:
    page = make_page([sig(i) for i in range(3)])
    fallback, blocks = msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    assert fallback == ":rotating_light: 3 certificates expiring (issuer R3)"
    assert [b["type"] for b in blocks] == [
        "header",
        "context",
        "section",
        "section",
        "actions",
    ]
    assert blocks[0]["text"]["text"] == ":rotating_light: 3 certificates expiring"
    context = blocks[1]["elements"][0]["text"]
    assert "*Page*" in context
    assert "firing for 2 h" in context
    assert "|2025-05-01 09:55 UTC>" in context  # Slack date token with a UTC fallback
    assert "grouped by issuer R3" in context
    assert "owner *team-a*" in context
    listing = blocks[2]["text"]["text"]
    assert listing.startswith("*Affected* (3)")
    assert "• *h000.example.com* · expires in 3 days · certificate due for renewal at web0:443" in (
        listing
    )
    proposal = blocks[3]["text"]["text"]
    assert "renew through policy: 3 jobs" in proposal
    assert "<@U123ABC>, <@W0456DEF>, <!subteam^S0614TZR7>" in proposal
    acts = buttons(blocks)
    assert list(acts) == [
        "certpilot_renew",
        "certpilot_revoke",
        "certpilot_ack",
        "certpilot_silence",
        "certpilot_runbook",
    ]
    assert acts["certpilot_renew"]["style"] == "primary"
    assert acts["certpilot_revoke"]["style"] == "danger"
    assert acts["certpilot_silence"]["text"]["text"] == "Silence 1h"
    assert acts["certpilot_runbook"]["url"] == RUNBOOK
    for aid in ("certpilot_renew", "certpilot_revoke", "certpilot_ack", "certpilot_silence"):
        assert json.loads(acts[aid]["value"]) == {"page": page.key}


def test_affected_places_are_listed_most_urgent_first() -> None:
    page = make_page([sig(0, days=20), sig(1, days=2.5), sig(2, days=-1)])
    _, blocks = render.page_blocks(page, now=NOW)
    lines = blocks[2]["text"]["text"].splitlines()[1:]
    assert "h002" in lines[0] and "expired 23 h ago" in lines[0]
    assert "h001" in lines[1] and "expires in 2 days" in lines[1]
    assert "h000" in lines[2] and "expires in 20 days" in lines[2]


def test_120_signals_show_10_and_n_more() -> None:
    page = make_page([sig(i) for i in range(120)])
    fallback, blocks = msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    assert "120 certificates expiring" in fallback
    listing = blocks[2]["text"]["text"]
    assert sum(1 for line in listing.splitlines() if line.startswith("• ")) == 10
    assert listing.splitlines()[-1] == "_and 110 more_"
    assert "renew through policy: 120 jobs" in all_text(blocks)


@pytest.mark.parametrize(
    ("proposal", "has", "lacks"),
    [
        ("renew", {"certpilot_renew"}, {"certpilot_redeploy"}),
        ("redeploy", {"certpilot_redeploy"}, {"certpilot_renew"}),
        (None, set(), {"certpilot_renew", "certpilot_redeploy"}),
    ],
)
def test_proposal_decides_the_fix_button(
    proposal: str | None, has: set[str], lacks: set[str]
) -> None:
    page = make_page([sig(0)], proposal=proposal)
    _, blocks = render.page_blocks(page, now=NOW)
    acts = set(buttons(blocks))
    assert has <= acts
    assert not lacks & acts
    assert {"certpilot_ack", "certpilot_silence", "certpilot_runbook"} <= acts
    if proposal is None:
        assert "*No automatic fix:* see the runbook" in all_text(blocks)
        no_runbook = make_page([sig(0, runbook="")], proposal=None)
        assert "investigate" in all_text(render.page_blocks(no_runbook, now=NOW)[1])
    if proposal == "redeploy":
        assert "redeploy the current certificate through policy: 1 job" in all_text(blocks)


@pytest.mark.parametrize("kind", ["timeout", "connection_refused", "slo_burn"])
def test_revoke_is_offered_on_certificate_pages_only(kind: str) -> None:
    page = make_page([sig(0, kind=kind)], kind=kind, proposal=None)
    _, blocks = render.page_blocks(page, now=NOW)
    assert "certpilot_revoke" not in buttons(blocks)
    assert "certpilot_ack" in buttons(blocks)


def test_resolved_page_has_only_the_runbook_button() -> None:
    resolved_at = NOW - timedelta(minutes=5)
    page = make_page([sig(i).resolved(resolved_at) for i in range(3)])
    assert page.resolved
    fallback, blocks = msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    assert fallback.startswith(":white_check_mark: Resolved: 3 certificates expiring")
    assert blocks[0]["text"]["text"] == ":white_check_mark: Resolved: 3 certificates expiring"
    assert "*Resolved* 5 min ago" in blocks[1]["elements"][0]["text"]
    acts = buttons(blocks)
    assert list(acts) == ["certpilot_runbook"]
    assert acts["certpilot_runbook"]["url"] == RUNBOOK
    text = all_text(blocks)
    assert "certpilot proposes" not in text and "Who may approve" not in text
    assert "expires in" not in text  # the old certificate's dates no longer matter

    no_runbook = make_page([sig(0, runbook="").resolved(resolved_at)])
    _, blocks = render.page_blocks(no_runbook, now=NOW)
    assert not [b for b in blocks if b["type"] == "actions"]


def test_partly_resolved_page_counts_what_is_left() -> None:
    page = make_page([sig(0), sig(1), sig(2).resolved(NOW)])
    fallback, blocks = render.page_blocks(page, now=NOW)
    assert "2 certificates expiring" in fallback
    assert "1 of 3 resolved" in blocks[1]["elements"][0]["text"]


def test_jobs_acknowledgement_and_silence_on_the_page() -> None:
    jobs = (
        JobNote(
            12,
            "renew",
            "done",
            "www.example.com",
            requester="U777",
            new_serial="0a1b2c3d4e5f60718293",
            verified=("web", "canary"),
        ),
        JobNote(13, "renew", "failed", "api.example.com", last_error="CA down: 503"),
        JobNote(14, "revoke", "pending_approval", "old.example.com", approvers=("S0614TZR7",)),
    )
    page = make_page(
        [sig(0)],
        jobs=jobs,
        acknowledged_by="U555",
        silenced_until=NOW + timedelta(minutes=45),
    )
    msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    text = all_text(msg[1])
    assert "*Jobs* (3: 1 failed, 1 pending approval, 1 done)" in text
    assert (
        ":white_check_mark: job 12 renew www.example.com: done, new serial 0a1b2c3d… "
        "verified on web, canary"
    ) in text
    assert ":x: job 13 renew api.example.com: failed: CA down: 503" in text
    assert "job 14 revoke old.example.com: waiting for approval by <!subteam^S0614TZR7>" in text
    # failed jobs first: they need a person
    assert text.index("job 13") < text.index("job 14") < text.index("job 12")
    assert ":eyes: Acknowledged by <@U555>" in text
    assert ":mute: Silenced for 45 min more, until <!date^" in text

    expired_silence = replace(page, silenced_until=NOW - timedelta(minutes=1))
    assert "Silenced" not in all_text(render.page_blocks(expired_silence, now=NOW)[1])


def test_many_jobs_are_capped() -> None:
    jobs = tuple(JobNote(i, "renew", "done", f"h{i}.example.com") for i in range(40))
    page = make_page([sig(0)], jobs=jobs)
    msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    text = all_text(msg[1])
    assert "*Jobs* (40: 40 done)" in text
    assert text.count("job ") == 10 and "_and 30 more_" in text


def test_base_url_links_each_place_to_its_history() -> None:
    page = make_page([sig(0)])
    _, blocks = render.page_blocks(page, now=NOW, base_url="http://127.0.0.1:9999/")
    assert (
        "*<http://127.0.0.1:9999/api/v1/events?ref=tls%3A%2F%2Fh000.example.com%3A443"
        "|h000.example.com>*"
    ) in blocks[2]["text"]["text"]
    # a base URL that is not http(s) is not linked
    _, blocks = render.page_blocks(page, now=NOW, base_url="javascript:alert(1)")
    assert "<" not in blocks[2]["text"]["text"]


# ------------------------------------------------------------------------------ escaping

ALLOWED = {"@U123ABC", "@W0456DEF", "!subteam^S0614TZR7", "@U777", "@U555"}


def mentions_in(obj: object) -> set[str]:
    return {m.group(1) for t in text_objects(obj) for m in MENTION.finditer(t["text"])}


def assert_no_injection(obj: object) -> None:
    json.dumps(obj)  # serialisable
    text = all_text(obj)
    for bad in ("<!channel>", "<@U999>", "<https://evil", "<!here>"):
        assert bad not in text, bad
    assert "&amp;lt;" not in text and "&amp;amp;" not in text  # nothing escaped twice
    assert mentions_in(obj) <= ALLOWED, mentions_in(obj)


def assert_escaped(obj: object) -> None:
    """No injection, and the data is there, escaped."""
    assert_no_injection(obj)
    assert "&lt;!channel&gt;" in all_text(obj)


def evil_signal(i: int = 0) -> Signal:
    return sig(
        i,
        host=EVIL,
        summary=EVIL,
        target=EVIL,
        owner=EVIL,
        ref=EVIL,
    )


def test_data_never_becomes_a_mention_or_a_link_on_a_page() -> None:
    job = JobNote(
        1,
        "renew",
        "failed",
        EVIL,
        requester="U777",
        last_error=EVIL,
        verified=(EVIL,),
        approvers=(EVIL, "U123ABC"),
    )
    page = make_page(
        [evil_signal(0), evil_signal(1)],
        kind=EVIL,
        cause=("issuer", EVIL),
        jobs=(job,),
        acknowledged_by=EVIL,
        approvers=(*APPROVERS, EVIL, "<!channel>"),
    )
    fallback, blocks = msg = render.page_blocks(page, now=NOW, base_url="http://x.example")
    check_message(msg)
    assert_escaped(blocks)
    assert "<!channel>" not in fallback and "&lt;!channel&gt;" in fallback
    assert "<@U999>" not in fallback
    # only the configured approvers and people who acted are mentioned
    assert mentions_in(blocks) == {"@U123ABC", "@W0456DEF", "!subteam^S0614TZR7", "@U777"} - {
        "@U777"
    }
    # the link built from base_url still carries escaped text
    assert "|&lt;!channel&gt; &lt;@U999&gt;" in all_text(blocks)

    resolved = replace(page, signals=tuple(s.resolved(NOW) for s in page.signals))
    assert_escaped(render.resolved_reply(resolved, now=NOW))
    assert_escaped(render.page_blocks(resolved, now=NOW)[1])
    assert_escaped(render.members_reply([evil_signal(3)], now=NOW))


def test_data_is_escaped_in_thread_replies_and_modal() -> None:
    job = JobNote(
        7,
        "revoke",
        "done",
        EVIL,
        requester=EVIL,
        new_serial=EVIL,
        verified=(EVIL,),
        last_error=EVIL,
        approvers=("U123ABC", EVIL),
    )
    for state in ("done", "failed", "rolled_back", "pending_approval", "denied", "approved", "x"):
        j = replace(job, state=state)
        assert_escaped(render.job_update_blocks(j, actor=EVIL))
        assert_no_injection(render.job_update_blocks(j, actor=None))
    assert_escaped(render.approval_blocks(job, requester=EVIL, rule=EVIL, reason=EVIL))
    modal = render.revoke_modal("ab" * 32, EVIL, page_key=EVIL)
    assert_escaped(modal)
    assert json.loads(modal["private_metadata"]) == {"fingerprint": "ab" * 32, "page": EVIL}


def test_data_is_escaped_in_slash_command_answers() -> None:
    row = {
        "ref": EVIL,
        "target": EVIL,
        "subject": f"CN={EVIL}",
        "not_after": iso(NOW + timedelta(days=3)),
        "problems": [EVIL],
        "error": EVIL,
    }
    assert_escaped(render.items_blocks(EVIL, [row], now=NOW))
    job = {"id": 1, "action": EVIL, "state": EVIL, "names": [EVIL], "last_error": EVIL}
    assert_escaped(render.jobs_blocks([job]))
    slo = {"slo": EVIL, "objective": 99.9, "firing_severity": EVIL, "windows": []}
    assert_escaped(render.slo_blocks([slo]))
    assert_escaped(render.status_blocks({EVIL: 1}, {EVIL: 2}, [(EVIL, EVIL)], now=NOW))
    assert_escaped(render.error_blocks(EVIL, EVIL))
    assert_escaped(render.help_blocks(command=EVIL, commands=[(EVIL, EVIL)]))
    assert_escaped(render.requested_blocks(EVIL, EVIL, [JobNote(1, EVIL, "done", EVIL)], [EVIL]))
    assert_escaped(render.note_reply(f"Acknowledged by <@U555>: {EVIL}", people=["U555"]))


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("U123", "<@U123>"),
        ("W0456DEF", "<@W0456DEF>"),
        ("S0614TZR7", "<!subteam^S0614TZR7>"),
        ("slack:U777", "<@U777>"),
        ("schedule", "schedule"),
        ("SCHEDULE", "SCHEDULE"),  # no digit: a word, not an ID
        ("u123", "u123"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("U123><!here", "U123&gt;&lt;!here"),
        ("<@U999>", "&lt;@U999&gt;"),
    ],
)
def test_mention_accepts_only_slack_ids(who: str, expected: str) -> None:
    assert render.mention(who) == expected


def test_link_and_escape() -> None:
    assert render.escape("a & <b>") == "a &amp; &lt;b&gt;"
    assert render.escape(render.escape("<")) == "&lt;"  # Mrkdwn is not escaped again
    assert render.link("a<b", "https://e.example/?a=1&b=2") == (
        "<https://e.example/?a=1&amp;b=2|a&lt;b>"
    )
    assert render.link("x", "javascript:alert(1)") == "x"
    assert render.link("x", "https://e.example/a|<!channel>") == "x"
    assert render.link("x", "https://e.example/a b") == "x"


def test_templates_escape_by_default_and_safe_does_not_opt_out() -> None:
    env = render.environment()
    assert env.from_string("{{ x }}").render(x="<!here>") == "&lt;!here&gt;"
    assert env.from_string("{{ x|safe }}").render(x="<!here>") == "&lt;!here&gt;"
    assert env.from_string("{{ x|join(' & ') }}").render(x=["<a>", "b"]) == "&lt;a&gt; &amp; b"
    assert env.from_string("{{ x|mention }}").render(x="U1") == "<@U1>"
    assert set(env.list_templates()) >= {"page.j2", "thread.j2", "modal.j2", "commands.j2"}


def test_nothing_is_built_at_import_time() -> None:
    code = "import bot.render as r; print(r.environment.cache_info().currsize)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


# ------------------------------------------------------------------------------ limits


def test_long_data_is_truncated_to_slacks_limits() -> None:
    long_host = "a" * 5000 + ".example.com"
    long_kind = "CertificateSomething" * 30
    page = make_page(
        [sig(i, host=long_host + str(i), summary="s" * 5000, target="t" * 4000) for i in range(12)],
        kind=long_kind,
        cause=("issuer", "R" * 3000),
        proposal=None,
    )
    fallback, blocks = msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    assert fallback.endswith("…")
    for t in text_objects(blocks):
        for line in t["text"].splitlines():
            assert len(line) <= 400, line[:80]  # a phone shows each place in a few lines


def test_page_key_too_long_for_a_button_value_drops_the_buttons() -> None:
    page = replace(make_page([sig(0)]), key="k" * 2500)
    _, blocks = msg = render.page_blocks(page, now=NOW)
    check_message(msg)
    assert list(buttons(blocks)) == ["certpilot_runbook"]
    assert "Buttons unavailable" in all_text(blocks)
    with pytest.raises(ValueError, match="private_metadata"):
        render.revoke_modal("ab", "x", page_key="k" * 3000)


def test_clip_never_cuts_an_entity_or_a_control_sequence() -> None:
    assert render._clip("abc", 3) == "abc"
    assert render._clip("abcdef", 4) == "abc…"
    assert render._clip("ab &amp; cd", 6) == "ab…"
    assert render._clip("ab <@U123> cd", 7) == "ab…"
    assert render._clip("ab <@U1> cd", 10) == "ab <@U1>…"


# ------------------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=42), "42 s"),
        (timedelta(minutes=12, seconds=59), "12 min"),
        (timedelta(hours=5, minutes=59), "5 h"),
        (timedelta(hours=47), "47 h"),
        (timedelta(days=3, hours=23), "3 days"),
        (timedelta(seconds=-5), "0 s"),
    ],
)
def test_span(delta: timedelta, text: str) -> None:
    assert render.span(delta) == text


@pytest.mark.parametrize(
    ("not_after", "text"),
    [
        (iso(NOW + timedelta(days=3, hours=2)), "expires in 3 days"),
        (iso(NOW + timedelta(hours=36)), "expires in 36 h"),
        (iso(NOW - timedelta(hours=2)), "expired 2 h ago"),
        (NOW + timedelta(days=10), "expires in 10 days"),
        ("2025-05-04T12:00:00+00:00", "expires in 3 days"),
        ("not a date", ""),
        (None, ""),
    ],
)
def test_expiry(not_after: object, text: str) -> None:
    assert render.expiry(not_after, NOW) == text


def test_relative_times_follow_now() -> None:
    page = make_page([sig(0, since=NOW - timedelta(days=3))])
    _, blocks = render.page_blocks(page, now=NOW)
    assert "firing for 3 days" in blocks[1]["elements"][0]["text"]
    _, later = render.page_blocks(page, now=NOW + timedelta(days=4))
    assert "expired 12 h ago" in all_text(later)


# ------------------------------------------------------------------------------ thread replies


def test_approval_blocks() -> None:
    job = JobNote(12, "renew", "pending_approval", "www.example.com", approvers=APPROVERS)
    fallback, blocks = msg = render.approval_blocks(
        job, requester="U777", rule="prod-strict", reason=None
    )
    check_message(msg)
    assert fallback == ":raised_hand: Approval needed: renew www.example.com (job 12)"
    text = all_text(blocks)
    assert "*Approval needed* for job 12: *renew* www.example.com" in text
    assert "Requested by <@U777> · rule *prod-strict* requires approval" in text
    assert "May approve: <@U123ABC>, <@W0456DEF>, <!subteam^S0614TZR7>" in text
    assert "Reason" not in text and "second person" not in text
    acts = buttons(blocks)
    assert list(acts) == ["certpilot_approve", "certpilot_deny"]
    assert acts["certpilot_approve"]["style"] == "primary"
    assert acts["certpilot_deny"]["style"] == "danger"
    assert json.loads(acts["certpilot_approve"]["value"]) == {"job": 12}
    assert json.loads(acts["certpilot_deny"]["value"]) == {"job": 12}
    assert "confirm" not in acts["certpilot_approve"]


def test_approving_a_revocation_asks_for_confirmation() -> None:
    job = JobNote(5, "revoke", "pending_approval", "old.example.com")
    _, blocks = render.approval_blocks(job, requester="U1", rule="default", reason="keyCompromise")
    text = all_text(blocks)
    assert "requires approval\nReason: keyCompromise" in text
    assert "a second person: not the requester" in text
    assert "an approver the policy names" in text
    confirm = buttons(blocks)["certpilot_approve"]["confirm"]
    assert confirm["style"] == "danger"
    assert "cannot be undone" in confirm["text"]["text"]
    assert len(confirm["title"]["text"]) <= 100 and len(confirm["confirm"]["text"]) <= 30


DONE = JobNote(
    12,
    "renew",
    "done",
    "www.example.com",
    requester="U777",
    new_serial="0a1b2c3d4e5f60718293",
    verified=("web", "canary"),
)


@pytest.mark.parametrize(
    ("job", "actor", "text"),
    [
        (
            DONE,
            None,
            ":white_check_mark: *Renewed and verified*: serial 0a1b2c3d… served on web, canary "
            "(requested by <@U777>)",
        ),
        (
            replace(DONE, action="redeploy", new_serial="", verified=()),
            None,
            ":white_check_mark: *Redeployed*: www.example.com (requested by <@U777>)",
        ),
        (
            replace(DONE, state="rolled_back", last_error="verify failed on canary"),
            None,
            ":leftwards_arrow_with_hook: *Rolled back*: renew www.example.com: verify failed on "
            "canary. The previous certificate is served again.",
        ),
        (
            replace(DONE, state="failed", last_error="CA said 429", requester="schedule"),
            None,
            ":x: *Failed*: renew www.example.com: CA said 429 (requested by schedule)",
        ),
        (
            replace(DONE, state="pending_approval", approvers=("U123ABC", "S0614TZR7")),
            None,
            ":hourglass_flowing_sand: *Waiting for approval* by <@U123ABC>, "
            "<!subteam^S0614TZR7>: renew www.example.com",
        ),
        (
            replace(DONE, state="denied"),
            "U555",
            ":no_entry: *Denied* by <@U555>: renew www.example.com",
        ),
        (
            replace(DONE, state="approved"),
            "U555",
            ":thumbsup: *Approved* by <@U555>: renew www.example.com runs now",
        ),
        (
            replace(DONE, state="deploying"),
            None,
            ":arrows_counterclockwise: *Renew* www.example.com: deploying",
        ),
    ],
)
def test_job_update_blocks(job: JobNote, actor: str | None, text: str) -> None:
    fallback, blocks = msg = render.job_update_blocks(job, actor=actor)
    check_message(msg)
    assert blocks[0]["text"]["text"] == text
    assert blocks[1]["elements"][0]["text"].startswith(f"job 12 · {job.action} · ")
    assert fallback.startswith(":") and "job 12" in fallback


def test_resolved_reply() -> None:
    page = make_page(
        [sig(i).resolved(NOW - timedelta(minutes=3)) for i in range(3)],
        jobs=(DONE, replace(DONE, id=13)),
    )
    fallback, blocks = msg = render.resolved_reply(page, now=NOW)
    check_message(msg)
    assert fallback == ":white_check_mark: Resolved: 3 certificates expiring"
    assert blocks[0]["text"]["text"].startswith(":white_check_mark: *Resolved* 3 min ago (<!date^")
    assert "3 certificates expiring (issuer R3). All healthy again." in blocks[0]["text"]["text"]
    assert blocks[1]["elements"][0]["text"] == "*Jobs* (2: 2 done)"

    partial = make_page([sig(0), sig(1).resolved(NOW)])
    fallback, blocks = render.resolved_reply(partial, now=NOW)
    assert "1 of 2 resolved" in blocks[0]["text"]["text"] and "1 still firing" in all_text(blocks)


def test_members_reply_and_note_reply() -> None:
    fallback, blocks = msg = render.members_reply([sig(i) for i in range(12)], now=NOW)
    check_message(msg)
    assert fallback == "Joined this page: 12 certificates expiring"
    assert "*12 more joined this page*" in all_text(blocks)
    assert "_and 2 more_" in all_text(blocks)

    text, blocks = render.note_reply("Silenced by <@U555> & <!subteam^S0614TZR7> <!channel>")
    assert blocks[0]["text"]["text"] == (
        "Silenced by <@U555> &amp; <!subteam^S0614TZR7> &lt;!channel&gt;"
    )
    assert text == blocks[0]["text"]["text"]
    # a mention in the wrong shape stays text
    assert "&lt;@S0614TZR7&gt;" in render.note_reply("<@S0614TZR7>")[0]
    # with `people`, only they are mentioned
    text, _ = render.note_reply("Acknowledged by <@U555> for <@U999>", people=["slack:U555"])
    assert text == "Acknowledged by <@U555> for &lt;@U999&gt;"


def test_revoke_modal() -> None:
    fp = "ab" * 32
    view = render.revoke_modal(fp, "www.example.com, api.example.com", page_key="expired|x=y")
    json.dumps(view)
    assert view["type"] == "modal"
    assert view["callback_id"] == "certpilot_revoke_confirm"
    assert json.loads(view["private_metadata"]) == {"fingerprint": fp, "page": "expired|x=y"}
    assert view["submit"]["text"] == "Request revocation"
    for key in ("title", "submit", "close"):
        assert view[key]["type"] == "plain_text" and len(view[key]["text"]) <= 24
    check_blocks(view["blocks"])
    text = all_text(view["blocks"])
    assert "www.example.com, api.example.com" in text and fp in text
    assert "second person must approve" in text
    reason = next(b for b in view["blocks"] if b.get("block_id") == "reason")
    assert reason["type"] == "input" and "optional" not in reason
    select = reason["element"]
    assert select["type"] == "static_select" and select["action_id"] == "reason"
    assert [o["value"] for o in select["options"]] == [
        "keyCompromise",
        "superseded",
        "cessationOfOperation",
        "affiliationChanged",
        "privilegeWithdrawn",
        "unspecified",
    ]
    assert render.REVOKE_REASONS["keyCompromise"] == 1  # RFC 5280 section 5.3.1
    note = next(b for b in view["blocks"] if b.get("block_id") == "note")
    assert note["optional"] is True
    plain = render.to_text(view["blocks"])
    assert "Reason (RFC 5280): Key compromise | Superseded" in plain


# ------------------------------------------------------------------------------ slash commands


def test_help_blocks() -> None:
    blocks = render.help_blocks()
    check_blocks(blocks)
    text = all_text(blocks)
    for usage, _ in render.COMMANDS:
        assert f"`/certs {usage}`" in text
    assert render.blocks_text(blocks) == "certpilot commands"


def test_status_blocks() -> None:
    blocks = render.status_blocks(
        {"locations": 120, "with problems": 7},
        {"expiring": 3, "expired": 4, "weak_key": 0},
        [("cert-valid-ratio", "87% budget left"), ("renewal-success", "burning (page)")],
        now=NOW,
    )
    check_blocks(blocks)
    assert blocks[0]["text"]["text"] == ":warning: certpilot status"
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == ["*locations*\n120", "*with problems*\n7"]
    text = all_text(blocks)
    assert "*Problems* (7)\n• expired: 4\n• expiring: 3" in text
    assert "weak_key" not in text
    assert "• *renewal-success*: burning (page)" in text
    assert "as of <!date^" in text

    calm = render.status_blocks({"locations": 3}, {}, [], now=NOW)
    check_blocks(calm)
    assert calm[0]["text"]["text"] == ":white_check_mark: certpilot status"
    assert "No problems." in all_text(calm)


def inventory_row(i: int, days: float, problems: tuple[ProblemCode, ...] = ()) -> dict[str, Any]:
    item = InventoryItem(
        ref=f"tls://h{i}.example.com:443",
        source="tls",
        target=f"h{i}.example.com:443",
        fingerprint_sha256=f"{i:064x}",
        serial=f"{i:x}",
        subject=f"CN=h{i}.example.com,O=Example\\, Inc",
        subject_cn=f"h{i}.example.com",
        issuer="CN=R3",
        issuer_cn="R3",
        sans=(f"h{i}.example.com",),
        not_before=NOW - timedelta(days=60),
        not_after=NOW + timedelta(days=days),
        key_type="EC",
        key_bits=256,
        signature_algorithm="ecdsa-with-SHA256",
        problems=problems,
        error=None,
        first_seen=NOW - timedelta(days=60),
        last_scanned=NOW,
    )
    return item.to_dict(NOW)


def test_items_blocks_from_inventory_rows() -> None:
    rows = [inventory_row(i, 3.2, (ProblemCode.EXPIRING,)) for i in range(20)]
    rows[1] = inventory_row(1, 80)
    blocks = render.items_blocks("Expiring within 30 days", rows, now=NOW)
    check_blocks(blocks)
    assert blocks[0]["text"]["text"] == "Expiring within 30 days"
    text = all_text(blocks)
    assert ":red_circle: *h0.example.com:443* h0.example.com · expires in 3 days · expiring" in text
    assert ":large_green_circle: *h1.example.com:443* h1.example.com · expires in 80 days · ok" in (
        text
    )
    assert text.count("• ") == 0 and text.count("*h") == 15
    assert "_and 5 more_" in text

    empty = render.items_blocks("Nothing", [], now=NOW)
    assert "Nothing to show." in all_text(empty)
    # a row without subject_cn falls back to the subject's CN
    row = {"target": "x:443", "subject": "CN=x.example.com,O=Y", "problems": []}
    assert "*x:443* x.example.com · ok" in all_text(render.items_blocks("t", [row], now=NOW))


def test_jobs_blocks_from_job_rows() -> None:
    rows: list[dict[str, object]] = [
        {
            "id": 3,
            "action": "renew",
            "state": "done",
            "names": ["www.example.com", "example.com"],
            "ref": "tls://www.example.com:443",
            "new_serial": "0a1b2c3d4e5f",
            "verified": ["web"],
            "approvers": [],
            "last_error": "",
            "requester": "schedule",
        },
        {
            "id": 4,
            "action": "revoke",
            "state": "pending_approval",
            "names": [],
            "ref": "file://k",
            "approvers": ["U123ABC"],
        },
        {"id": 5, "action": "renew", "state": "failed", "names": ["a"], "last_error": "boom"},
    ] + [{"id": i, "action": "renew", "state": "issuing", "names": ["b"]} for i in range(6, 30)]
    blocks = render.jobs_blocks(rows)
    check_blocks(blocks)
    text = all_text(blocks)
    assert (
        ":white_check_mark: job 3 renew www.example.com,example.com: done, new serial "
        "0a1b2c3d4e5f verified on web"
    ) in text
    assert "job 4 revoke file://k: waiting for approval by <@U123ABC>" in text
    assert ":x: job 5 renew a: failed: boom" in text
    assert ":arrows_counterclockwise: job 6 renew b: issuing" in text
    assert "_and 7 more_" in text
    assert "Nothing to show." in all_text(render.jobs_blocks([]))


def test_slo_blocks_from_status_rows() -> None:
    rows = [
        {
            "slo": "cert-valid-ratio",
            "objective": 99.9,
            "budget_remaining_ratio": 0.875,
            "windows": [
                {"window": "5m", "error_ratio": 0.002, "burn_rate": 2.0},
                {"window": "1h", "error_ratio": 0.001, "burn_rate": 1.04},
                {"window": "6h", "error_ratio": None, "burn_rate": None},
                {"window": "3d", "error_ratio": 0.0, "burn_rate": 0.0},
            ],
            "firing_severity": "ticket",
        },
        {
            "slo": "renewal-success",
            "objective": 99,
            "budget_remaining_ratio": None,
            "windows": [],
            "firing_severity": None,
        },
    ]
    blocks = render.slo_blocks(rows)
    check_blocks(blocks)
    assert blocks[0]["text"]["text"] == ":warning: 1 of 2 SLOs burning error budget too fast"
    text = all_text(blocks)
    assert (
        ":warning: *cert-valid-ratio* 99.9% · budget left 87.5% · burn 5m 2.0x, 1h 1.0x · *ticket*"
    ) in text
    assert ":large_green_circle: *renewal-success* 99%" in text


def test_error_and_requested_blocks() -> None:
    blocks = render.error_blocks("www.example.org is not in the inventory", "/certs show HOST")
    check_blocks(blocks)
    assert blocks[0]["text"]["text"] == ":warning: www.example.org is not in the inventory"
    assert blocks[1]["elements"][0]["text"] == "Usage: `/certs show HOST`"
    assert render.blocks_text(blocks) == blocks[0]["text"]["text"]

    blocks = render.requested_blocks(
        "renew", "example.com", [JobNote(9, "renew", "approved", "example.com")], ["denied by rule"]
    )
    check_blocks(blocks)
    text = all_text(blocks)
    assert ":white_check_mark: *Renew* example.com: 1 job started" in text
    assert ":thumbsup: job 9 renew example.com: approved" in text
    assert ":no_entry: denied by rule" in text


def test_blocks_text_stays_escaped() -> None:
    blocks = render.error_blocks("<!channel> is not a host", "x")
    assert render.blocks_text(blocks) == ":warning: &lt;!channel&gt; is not a host"
    assert render.blocks_text([]) == "certpilot"


# ------------------------------------------------------------------------------ plain text


def test_to_text_of_a_page() -> None:
    page = make_page(
        [sig(i) for i in range(3)] + [sig(9, host="weird_host_name.example.com")],
        jobs=(DONE,),
        acknowledged_by="U555",
    )
    _, blocks = render.page_blocks(page, now=NOW, base_url="http://127.0.0.1:8080")
    text = render.to_text(blocks)
    lines = text.splitlines()
    assert lines[0] == "🚨 4 certificates expiring"
    assert lines[1].startswith("═══")
    assert lines[2].startswith("  Page · firing for 2 h, since 2025-05-01 09:55 UTC")
    assert (
        "• h000.example.com (http://127.0.0.1:8080/api/v1/events?ref=tls%3A%2F%2F"
        "h000.example.com%3A443) · expires in 3 days"
    ) in text
    assert "weird_host_name.example.com" in text  # underscores in names survive
    assert "Who may approve: @U123ABC, @W0456DEF, @S0614TZR7" in text
    assert "  👀 Acknowledged by @U555" in text
    assert "[ Renew ] [ Revoke… ] [ Acknowledge ] [ Silence 1h ] [ Runbook ]" in text
    assert f"  Runbook: {RUNBOOK}" in text
    assert "*" not in text and "<" not in text and "&amp;" not in text


def test_to_text_shows_data_literally() -> None:
    page = make_page([evil_signal()])
    text = render.to_text(render.page_blocks(page, now=NOW)[1])
    assert "<!channel> <@U999> <https://evil.example|click> & co" in text


@pytest.mark.parametrize(
    ("mrkdwn", "plain"),
    [
        ("*bold* _it_ ~gone~ `code`", "bold it gone code"),
        ("my_host_name 2*3*4", "my_host_name 2*3*4"),
        ("<https://x.example/a?b=1&amp;c=2|the docs>", "the docs (https://x.example/a?b=1&c=2)"),
        ("<https://x.example>", "https://x.example"),
        ("<@U1> <@U2|alice> <!subteam^S1> <!subteam^S2|@sre> <!here>", "@U1 @alice @S1 @sre @here"),
        ("<!date^1746093600^{date_short_pretty}|2025-05-01 10:00 UTC>", "2025-05-01 10:00 UTC"),
        ("&lt;b&gt; &amp;amp;", "<b> &amp;"),
        (":white_check_mark: :unknown_emoji:", "✔ :unknown_emoji:"),
    ],
)
def test_mrkdwn_to_text(mrkdwn: str, plain: str) -> None:
    assert render.mrkdwn_to_text(mrkdwn) == plain


def test_to_text_of_other_blocks() -> None:
    text = render.to_text(
        [
            {"type": "divider"},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "*a*\n1"}]},
            {"type": "image", "alt_text": "graph", "image_url": "https://x.example/g.png"},
            {
                "type": "input",
                "label": {"type": "plain_text", "text": "Note"},
                "element": {"type": "plain_text_input"},
            },
        ]
    )
    assert text.splitlines() == ["─" * 40, "", "a: 1", "[image: graph]", "", "Note: [ ______ ]"]
