"""What the bot posts: Slack Block Kit messages rendered from jinja2 templates, and the same
content as plain text for a terminal.

Every function here is pure: it takes data (a :class:`~bot.model.Page`, a
:class:`~bot.model.JobNote`, rows of ``to_dict()``) and, where a message says "expires in 3
days" or "firing for 2 h", an explicit ``now``. Nothing is read from a clock and nothing happens
at import time: the jinja2 environment is built on first use (:func:`environment`).

* :func:`page_blocks`: the page itself: what is wrong and with how many, severity, since when,
  the root cause, the owner, the first :data:`LIST_LIMIT` affected places, what certpilot
  proposes, who may approve, the jobs started from it, and the buttons.
* :func:`approval_blocks`, :func:`job_update_blocks`, :func:`resolved_reply`,
  :func:`members_reply`, :func:`note_reply`: replies in the page's thread.
* :func:`revoke_modal`: the ``views.open`` modal behind the Revoke button.
* :func:`help_blocks`, :func:`status_blocks`, :func:`items_blocks`, :func:`jobs_blocks`,
  :func:`slo_blocks`, :func:`requested_blocks`, :func:`error_blocks`: ephemeral answers to
  slash commands.
* :func:`to_text`: any of these blocks as plain text (``certpilot demo`` prints the messages it
  would post when no Slack is configured).

Messages posted to a channel return ``(fallback_text, blocks)``: Slack shows the fallback in
notifications and wants it next to ``blocks`` in ``chat.postMessage``/``chat.update``.
Slash-command answers return the blocks; :func:`blocks_text` makes their fallback.

How escaping is made hard to get wrong
--------------------------------------
Slack parses ``&``, ``<`` and ``>`` in text objects: ``<!channel>`` pings a channel, ``<@U1>``
a person, ``<https://x|click>`` is a link (https://api.slack.com/reference/surfaces/formatting
#escaping). Hostnames, labels, alert summaries and user input are data and must never do that.

1. **Templates render text, Python builds structure.** Each template macro renders the text of
   one field (a mrkdwn string, or plain text for headers, buttons and the fallback). Python puts
   the strings into block dicts, so a template can never produce broken JSON or smuggle a
   block in, and Slack's limits (:data:`MAX_BLOCKS`, :data:`MAX_TEXT`, :data:`MAX_HEADER`, ...)
   are enforced in one place, by truncation with "…" that never cuts a ``<...>`` sequence or an
   ``&...;`` entity in half.
2. **Escaping is the default, not a filter one must remember.** HTML autoescaping is off (it
   would also turn quotes into ``&#34;``, which Slack shows verbatim); instead the environment's
   ``finalize`` escapes every ``{{ value }}`` for Slack. The only values it lets through are
   :class:`Mrkdwn` instances: text this module built and already escaped: a macro's output,
   and what the filters ``mention``/``mentions`` (approver, requester and actor IDs, accepted
   only in the shape of Slack user or group IDs, so no ``<!channel>``), ``link`` (http(s) URLs
   only) and ``join`` return, and the ``<!date^...>`` tokens Python passes in. A template that
   forgets something over-escapes (visible, harmless) instead of injecting. jinja2's ``|safe``
   does not opt out: its ``Markup`` is escaped like any other string.

The same escaped text goes into ``plain_text`` objects: Slack decodes the three entities there
too, and one rule for every text object is easier to keep than two. :func:`to_text` undoes it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

import jinja2

from bot.model import REDEPLOY_FIXES, RENEW_FIXES, JobNote, Page, Signal

Block = dict[str, Any]

# --------------------------------------------------------------------------- Slack's limits
# https://api.slack.com/reference/block-kit/blocks and .../block-elements

#: Blocks per message (and per modal view: 100, so the message limit covers both).
MAX_BLOCKS: Final = 50
#: Characters in a section's text (also used for context elements).
MAX_TEXT: Final = 3000
#: Characters in a section field.
MAX_FIELD: Final = 2000
#: Fields per section, elements per context block.
MAX_FIELDS: Final = 10
MAX_CONTEXT_ELEMENTS: Final = 10
#: Characters in a header's plain text.
MAX_HEADER: Final = 150
#: Characters in a button's text, and in its value.
MAX_BUTTON_TEXT: Final = 75
MAX_VALUE: Final = 2000
#: Characters in a link button's url.
MAX_URL: Final = 3000
#: Characters in a modal's private_metadata; in its title, submit and close texts.
MAX_METADATA: Final = 3000
MAX_MODAL_TITLE: Final = 24
#: Our own limit for notification text: a phone's lock screen shows about this much.
MAX_FALLBACK: Final = 150

#: Affected places listed on a page before "and N more"; job lines likewise.
LIST_LIMIT: Final = 10
JOB_LIMIT: Final = 10
#: Rows in the /certpilot jobs answer.
JOBS_LIST_LIMIT: Final = 20

#: RFC 5280 section 5.3.1 CRLReason names offered in the revocation modal, with their codes.
REVOKE_REASONS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "keyCompromise": 1,
        "superseded": 4,
        "cessationOfOperation": 5,
        "affiliationChanged": 3,
        "privilegeWithdrawn": 9,
        "unspecified": 0,
    }
)

#: ``(usage, what it does)`` of each slash command, for :func:`help_blocks` (``/certs``, as
#: bot.slack_app parses it).
COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("status", "fleet health: locations, problems, SLOs"),
    ("expiring [DAYS]", "certificates expiring within DAYS (default 30)"),
    ("show HOST|NAME|FINGERPRINT", "where a certificate is served or stored, and its problems"),
    ("renew NAME", "renew through policy (may ask for approval)"),
    ("redeploy NAME", "deploy the current certificate again, through policy"),
    ("revoke FINGERPRINT REASON", "revoke; a second person must approve"),
    ("slo", "SLOs, burn rates and error budget left"),
    ("jobs", "recent remediation jobs"),
    ("help", "this list"),
)

#: Action IDs of the buttons (the bot's action handlers register these).
ACTION_RENEW: Final = "certpilot_renew"
ACTION_REDEPLOY: Final = "certpilot_redeploy"
ACTION_REVOKE: Final = "certpilot_revoke"
ACTION_ACK: Final = "certpilot_ack"
ACTION_SILENCE: Final = "certpilot_silence"
ACTION_RUNBOOK: Final = "certpilot_runbook"
ACTION_APPROVE: Final = "certpilot_approve"
ACTION_DENY: Final = "certpilot_deny"
#: The revocation modal's callback_id, and its input blocks' ids.
REVOKE_CALLBACK: Final = "certpilot_revoke_confirm"
REVOKE_REASON_BLOCK: Final = "reason"
REVOKE_NOTE_BLOCK: Final = "note"

#: Kinds whose pages are about endpoints or SLOs, not certificates: no Revoke button.
_NOT_CERTIFICATE: Final = frozenset(
    {"connection_refused", "timeout", "dns_error", "tls_error", "slo_burn"}
)
_CERTIFICATE_KINDS: Final = (
    RENEW_FIXES | REDEPLOY_FIXES | {"hostname_mismatch", "unmanaged", "unexpected_issuance"}
)
#: Order of job lines on a page: what needs a person first.
_JOB_ORDER: Final = {
    "failed": 0,
    "rolled_back": 1,
    "pending_approval": 2,
    "denied": 3,
    "approved": 4,
    "issuing": 5,
    "deploying": 5,
    "verifying": 5,
    "done": 9,
}

# --------------------------------------------------------------------------- escaping


class Mrkdwn(str):
    """Text that is already valid Slack mrkdwn: data in it is escaped, and every control
    sequence (``<...>``) in it was built by this module. The template environment's
    ``finalize`` passes these through and escapes every other value."""

    __slots__ = ()


_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape(value: object) -> Mrkdwn:
    """``value`` as text Slack shows literally: ``&``, ``<``, ``>`` become entities.
    A :class:`Mrkdwn` is returned unchanged (it is escaped already)."""
    if isinstance(value, Mrkdwn):
        return value
    return Mrkdwn(str(value).translate(_ESCAPES))


def _finalize(value: object) -> str:
    # Runs on every {{ expression }} of every template (jinja2 "finalize").
    return "" if value is None else escape(value)


# Slack IDs: U/W users, S user groups; upper-case letters and digits, at least one digit
# (so words like "SCHEDULE" stay words). https://api.slack.com/reference/surfaces/formatting
_SLACK_ID: Final = re.compile(r"([UWS])(?=[A-Z0-9]*[0-9])[A-Z0-9]{1,20}")
_URL: Final = re.compile(r"https?://[^\s<>|\"'`]+")


def mention(who: object) -> Mrkdwn:
    """A Slack mention for a user (``U...``/``W...`` -> ``<@U...>``) or user-group
    (``S...`` -> ``<!subteam^S...>``) ID, with an optional ``slack:`` prefix. Anything else
    (``schedule``, ``cli``, a name) is escaped text: data never becomes a mention, and no
    ``<!channel>``/``<!here>`` can be produced at all."""
    text = str(who).strip()
    ident = text.removeprefix("slack:")
    m = _SLACK_ID.fullmatch(ident)
    if m is None:
        return escape(text)
    if m.group(1) == "S":
        return Mrkdwn(f"<!subteam^{ident}>")
    return Mrkdwn(f"<@{ident}>")


def mentions(ids: Iterable[object]) -> Mrkdwn:
    return Mrkdwn(", ".join(mention(i) for i in ids))


def safe_url(url: object) -> str | None:
    """``url`` when it is an http(s) URL Slack can link to, else None."""
    text = str(url or "").strip()
    if len(text) > MAX_URL or not _URL.fullmatch(text):
        return None
    return text


def link(text: object, url: object) -> Mrkdwn:
    """``<url|text>`` with ``text`` escaped, or just the escaped text when ``url`` is not an
    http(s) URL (so a ``javascript:`` or malformed URL never becomes a link)."""
    ok = safe_url(url)
    if ok is None:
        return escape(text)
    return Mrkdwn(f"<{ok.translate(_ESCAPES)}|{escape(text)}>")


def _join(items: Iterable[object], sep: str = ", ") -> Mrkdwn:
    # Replaces jinja2's join: escapes each item (unless already Mrkdwn) and the separator.
    return Mrkdwn(escape(sep).join(escape(i) for i in items))


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with "…", never inside ``<...>`` or ``&...;``."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    lt = cut.rfind("<")
    if lt > cut.rfind(">"):
        cut = cut[:lt]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut.rstrip() + "…"


def _clip_filter(value: object, limit: int) -> str:
    # Raw data is cut before it is escaped; Mrkdwn is cut safely and stays Mrkdwn.
    if isinstance(value, Mrkdwn):
        return Mrkdwn(_clip(value, limit))
    return _clip(str(value), limit)


def _serial(serial: object) -> str:
    text = str(serial)
    return text if len(text) <= 12 else text[:8] + "…"


# --------------------------------------------------------------------------- time


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return _aware(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def span(delta: timedelta) -> str:
    """A duration as a person says it: ``45 s``, ``12 min``, ``5 h``, ``3 days`` (rounded
    down; hours up to 2 days, so "36 h" rather than "1 day")."""
    s = max(0, int(delta.total_seconds()))
    if s < 60:
        return f"{s} s"
    m = s // 60
    if m < 60:
        return f"{m} min"
    h = m // 60
    if h < 48:
        return f"{h} h"
    return f"{h // 24} days"


def expiry(not_after: object, now: datetime) -> str:
    """``expires in 3 days`` / ``expired 2 h ago`` for an ISO 8601 time (or datetime);
    empty when there is none or it does not parse."""
    at = _parse_time(not_after)
    if at is None:
        return ""
    left = at - _aware(now)
    if left > timedelta(0):
        return f"expires in {span(left)}"
    return f"expired {span(-left)} ago"


def _date(ts: datetime) -> Mrkdwn:
    """Slack's date token: each reader sees ``today 09:14`` in their own time zone; the
    fallback (and :func:`to_text`) shows UTC. https://api.slack.com/reference/surfaces/formatting
    #date-formatting"""
    at = _aware(ts).astimezone(UTC)
    fallback = at.strftime("%Y-%m-%d %H:%M UTC")
    return Mrkdwn(f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>")


# --------------------------------------------------------------------------- templates


@cache
def environment() -> jinja2.Environment:
    """The templates' environment, built on first use (nothing happens at import time).

    ``bot/templates/`` ships inside the ``bot`` package, so the wheel carries it."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bot", "templates"),
        # Slack mrkdwn is not HTML: ``finalize`` escapes for Slack instead (module docstring).
        autoescape=False,  # noqa: S701
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        {
            "clip": _clip_filter,
            "join": _join,
            "link": link,
            "mention": mention,
            "mentions": mentions,
            "serial": _serial,
        }
    )
    return env


def _render(template: str, macro: str, /, **kwargs: object) -> Mrkdwn:
    """Call ``macro`` of ``template`` and return its text (escaped by construction)."""
    fn: Callable[..., object] = getattr(environment().get_template(template).module, macro)
    return Mrkdwn(str(fn(**kwargs)).strip())


# --------------------------------------------------------------------------- block builders


def _plain(text: str, limit: int) -> Block:
    return {"type": "plain_text", "text": _clip(text, limit) or "…", "emoji": True}


def _md(text: str, limit: int = MAX_TEXT) -> Block:
    return {"type": "mrkdwn", "text": _clip(text, limit) or " "}


def _header(text: str) -> Block:
    return {"type": "header", "text": _plain(text, MAX_HEADER)}


def _section(text: str) -> Block:
    return {"type": "section", "text": _md(text)}


def _context(*texts: str) -> Block:
    elements = [_md(t) for t in texts if t][:MAX_CONTEXT_ELEMENTS]
    return {"type": "context", "elements": elements}


def _sections(lines: Sequence[str]) -> list[Block]:
    """Lines packed into as few sections as :data:`MAX_TEXT` allows."""
    out: list[Block] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        line = _clip(line, MAX_TEXT)
        if chunk and size + 1 + len(line) > MAX_TEXT:
            out.append(_section("\n".join(chunk)))
            chunk, size = [], 0
        size += len(line) + (1 if chunk else 0)
        chunk.append(line)
    if chunk:
        out.append(_section("\n".join(chunk)))
    return out


def _value(**data: object) -> str | None:
    """A button's value as compact JSON, or None when it exceeds :data:`MAX_VALUE`."""
    text = json.dumps(data, separators=(",", ":"))
    return text if len(text) <= MAX_VALUE else None


def _button(
    text: str,
    action_id: str,
    *,
    value: str | None = None,
    url: str | None = None,
    style: str | None = None,
    confirm: Block | None = None,
) -> Block:
    b: Block = {"type": "button", "action_id": action_id, "text": _plain(text, MAX_BUTTON_TEXT)}
    if value is not None:
        b["value"] = value
    if url is not None:
        b["url"] = url
    if style is not None:
        b["style"] = style
    if confirm is not None:
        b["confirm"] = confirm
    return b


def _actions(buttons: Sequence[Block], block_id: str) -> Block:
    return {"type": "actions", "block_id": block_id, "elements": list(buttons)[:25]}


def _finish(blocks: list[Block]) -> list[Block]:
    """At most :data:`MAX_BLOCKS`; the last one (the buttons, where there are any) is kept."""
    if len(blocks) <= MAX_BLOCKS:
        return blocks
    return [*blocks[: MAX_BLOCKS - 2], _context("…"), blocks[-1]]


# --------------------------------------------------------------------------- pages


def _by_urgency(signals: Iterable[Signal]) -> list[Signal]:
    far = datetime.max.replace(tzinfo=UTC)

    def key(s: Signal) -> tuple[datetime, str]:
        return (_parse_time(s.labels.get("not_after")) or far, s.subject)

    return sorted(signals, key=key)


def _item(s: Signal, now: datetime, base_url: str | None) -> Mrkdwn:
    host = s.labels.get("host") or s.subject
    where: str = _clip(host, 100)
    base = safe_url(base_url) if base_url else None
    if base is not None:
        ref = s.labels.get("ref") or s.subject
        where = link(where, f"{base.rstrip('/')}/api/v1/events?ref={quote(ref, safe='')}")
    target = s.labels.get("target", "")
    show_target = target if target and target != host and target not in s.summary else ""
    return _render(
        "page.j2",
        "item",
        where=where,
        target=show_target,
        expiry=expiry(s.labels.get("not_after"), now) if s.firing else "",
        problem=s.summary or s.kind,
    )


def _is_certificate_page(page: Page) -> bool:
    if page.kind in _NOT_CERTIFICATE:
        return False
    return page.kind in _CERTIFICATE_KINDS or any("fingerprint" in s.labels for s in page.signals)


def _job_counts(jobs: Sequence[JobNote]) -> Mrkdwn:
    counts: dict[str, int] = {}
    for j in sorted(jobs, key=lambda j: _JOB_ORDER.get(j.state, 6)):
        counts[j.state] = counts.get(j.state, 0) + 1
    return _join(f"{n} {state.replace('_', ' ')}" for state, n in counts.items())


def _job_lines(jobs: Sequence[JobNote]) -> list[str]:
    ordered = sorted(jobs, key=lambda j: (_JOB_ORDER.get(j.state, 6), j.id))
    lines: list[str] = [_render("page.j2", "jobs_title", n=len(jobs), counts=_job_counts(jobs))]
    lines += [_render("thread.j2", "job_line", j=j) for j in ordered[:JOB_LIMIT]]
    if len(ordered) > JOB_LIMIT:
        lines.append(_render("page.j2", "more", n=len(ordered) - JOB_LIMIT))
    return lines


def _page_buttons(page: Page) -> list[Block] | None:
    """The buttons of a firing page, or None when its key is too long for a button value."""
    value = _value(page=page.key)
    if value is None:
        return None
    buttons: list[Block] = []
    if page.proposal == "renew":
        buttons.append(_button("Renew", ACTION_RENEW, value=value, style="primary"))
    if page.proposal == "redeploy":
        buttons.append(_button("Redeploy", ACTION_REDEPLOY, value=value, style="primary"))
    if _is_certificate_page(page):
        # Opens revoke_modal: the modal is the confirmation, and a second person approves.
        buttons.append(_button("Revoke…", ACTION_REVOKE, value=value, style="danger"))
    buttons.append(_button("Acknowledge", ACTION_ACK, value=value))
    buttons.append(_button("Silence 1h", ACTION_SILENCE, value=value))
    return buttons


def _what(page: Page, n: int) -> tuple[Mrkdwn, Mrkdwn]:
    what = _render("page.j2", "what", kind=page.kind, n=n)
    cause = _render("page.j2", "cause", dim=page.cause[0], value=page.cause[1])
    return what, cause


def _resolved_at(page: Page, now: datetime) -> datetime:
    # A resolved signal's ``since`` is when it resolved (Signal.resolved).
    done = [s.since for s in page.signals if not s.firing]
    return max(done) if done else now


def page_blocks(
    page: Page, *, now: datetime, base_url: str | None = None
) -> tuple[str, list[Block]]:
    """The page message: ``(fallback text, blocks)``.

    Firing: a header (severity emoji, what is wrong, how many), a context line (severity, since
    when, root cause, owner), the first :data:`LIST_LIMIT` affected places (most urgent first,
    with days left from the ``not_after`` label) and "and N more", what certpilot proposes and
    who may approve (``page.approvers``: the only mentions a page makes, besides who
    acknowledged), the jobs, acknowledged/silenced notes, and buttons: Renew or Redeploy (per
    ``page.proposal``), Revoke… (certificate pages; opens :func:`revoke_modal`), Acknowledge,
    Silence 1h, Runbook (a link, when the page has a runbook URL). Every button's ``value`` is
    ``{"page": page.key}``.

    Resolved: "Resolved: ..." with a green check, the places and jobs, and only the Runbook
    button. ``base_url`` (certpilot's HTTP address) links each place to its event history.
    """
    now = _aware(now)
    resolved = page.resolved
    shown = _by_urgency(page.signals if resolved else page.firing)
    n = len(shown)
    sev = page.severity.value
    what, cause = _what(page, n)
    fallback = _render(
        "page.j2", "fallback", severity=sev, what=what, cause=cause, resolved=resolved
    )

    at = _resolved_at(page, now) if resolved else min((s.since for s in page.firing), default=now)
    blocks: list[Block] = [
        _header(_render("page.j2", "header", severity=sev, what=what, resolved=resolved)),
        _context(
            _render(
                "page.j2",
                "context",
                severity=sev,
                resolved=resolved,
                span=span(now - _aware(at)),
                date=_date(at),
                cause=cause,
                owner=page.owner,
                open=len(page.firing),
                total=len(page.signals),
            )
        ),
    ]
    lines: list[str] = [_render("page.j2", "affected_title", n=n, resolved=resolved)]
    lines += [_item(s, now, base_url) for s in shown[:LIST_LIMIT]]
    if n > LIST_LIMIT:
        lines.append(_render("page.j2", "more", n=n - LIST_LIMIT))
    blocks += _sections(lines)

    runbook = safe_url(page.runbook_url)
    if not resolved:
        certs = {s.labels.get("fingerprint") or s.subject for s in page.firing}
        blocks.append(
            _section(
                _render(
                    "page.j2",
                    "proposal",
                    proposal=page.proposal,
                    n=len(certs),
                    runbook=bool(runbook),
                )
                + "\n"
                + _render("page.j2", "approvers", approvers=mentions(page.approvers))
            )
        )
    if page.jobs:
        blocks += _sections(_job_lines(page.jobs))

    notes: list[str] = []
    if page.acknowledged_by:
        notes.append(_render("page.j2", "acknowledged", by=page.acknowledged_by))
    if page.silenced_until is not None and _aware(page.silenced_until) > now:
        until = _aware(page.silenced_until)
        notes.append(_render("page.j2", "silenced", span=span(until - now), date=_date(until)))

    buttons: list[Block] = []
    if not resolved:
        firing_buttons = _page_buttons(page)
        if firing_buttons is None:
            notes.append(_render("page.j2", "actions_unavailable"))
        else:
            buttons += firing_buttons
    if runbook is not None:
        buttons.append(_button("Runbook", ACTION_RUNBOOK, url=runbook))
    if notes:
        blocks.append(_context(*notes))
    if buttons:
        blocks.append(_actions(buttons, block_id="certpilot_page"))
    return _clip(fallback, MAX_FALLBACK), _finish(blocks)


def resolved_reply(page: Page, *, now: datetime) -> tuple[str, list[Block]]:
    """The thread reply when a page resolves (or, called early, how much of it has)."""
    now = _aware(now)
    total = len(page.signals)
    open_ = len(page.firing)
    what, cause = _what(page, total)
    at = _resolved_at(page, now)
    text = _render(
        "page.j2",
        "resolved_reply",
        what=what,
        cause=cause,
        span=span(now - _aware(at)),
        date=_date(at),
        open=open_,
        total=total,
    )
    blocks: list[Block] = [_section(text)]
    if page.jobs:
        blocks.append(
            _context(
                _render("page.j2", "jobs_title", n=len(page.jobs), counts=_job_counts(page.jobs))
            )
        )
    fallback = _render("page.j2", "resolved_fallback", what=what, open=open_, total=total)
    return _clip(fallback, MAX_FALLBACK), blocks


def members_reply(
    added: Sequence[Signal], *, now: datetime, base_url: str | None = None
) -> tuple[str, list[Block]]:
    """The thread reply when places join a page already posted: how many, and the first
    :data:`LIST_LIMIT` of them as the page lists them."""
    now = _aware(now)
    shown = _by_urgency(added)
    lines: list[str] = [_render("page.j2", "joined", n=len(shown))]
    lines += [_item(s, now, base_url) for s in shown[:LIST_LIMIT]]
    if len(shown) > LIST_LIMIT:
        lines.append(_render("page.j2", "more", n=len(shown) - LIST_LIMIT))
    kind = shown[0].kind if shown else ""
    what = _render("page.j2", "what", kind=kind, n=len(shown))
    fallback = _render("page.j2", "joined_fallback", what=what)
    return _clip(fallback, MAX_FALLBACK), _finish(_sections(lines))


_WRITTEN_MENTION: Final = re.compile(r"&lt;(@|!subteam\^)([A-Z0-9]{1,21})&gt;")


def note_reply(text: str, *, people: Iterable[str] | None = None) -> tuple[str, list[Block]]:
    """A one-line thread note, such as "Acknowledged by <@U1>".

    ``text`` is escaped like data, except user and user-group mentions written ``<@U…>`` /
    ``<!subteam^S…>``: they stay mentions when their ID is in ``people`` (pass the IDs of who
    acted: ``note_reply(f"Acknowledged by <@{user}>", people=[user])``). With ``people`` left
    None, any well-formed user or group ID written as a mention stays one, so a ``<@U…>`` in
    data interpolated into ``text`` would ping that person: pass ``people``. ``<!channel>``,
    ``<!here>``, links and anything else in ``text`` always stay text."""
    allowed = None if people is None else {p.removeprefix("slack:") for p in people}

    def keep(m: re.Match[str]) -> str:
        if allowed is not None and m.group(2) not in allowed:
            return m.group(0)
        made = mention(m.group(2))
        wanted = "<@" if m.group(1) == "@" else "<!subteam^"
        return made if made.startswith(wanted) else m.group(0)

    body = Mrkdwn(_WRITTEN_MENTION.sub(keep, escape(text)))
    return _clip(body, MAX_FALLBACK), [_section(body)]


# --------------------------------------------------------------------------- jobs and approvals


def approval_blocks(
    job: JobNote, *, requester: str, rule: str, reason: str | None
) -> tuple[str, list[Block]]:
    """A thread message asking for approval: who asked, what, which policy rule requires
    approval, who may approve (``job.approvers`` as mentions), and Approve/Deny buttons with
    ``value`` ``{"job": id}``. Approving a revocation asks for confirmation first."""
    value = _value(job=job.id)
    revoke = job.action == "revoke"
    confirm: Block | None = None
    if revoke:
        confirm = {
            "title": _plain(_render("thread.j2", "confirm_title"), 100),
            "text": _plain(_render("thread.j2", "confirm_text", j=job), 300),
            "confirm": _plain(_render("thread.j2", "confirm_yes"), 30),
            "deny": _plain(_render("thread.j2", "confirm_no"), 30),
            "style": "danger",
        }
    blocks: list[Block] = [
        _section(
            _render("thread.j2", "approval", j=job, requester=requester, rule=rule, reason=reason)
        ),
        _context(_render("thread.j2", "approval_who", j=job, second_person=revoke)),
        _actions(
            [
                _button("Approve", ACTION_APPROVE, value=value, style="primary", confirm=confirm),
                _button("Deny", ACTION_DENY, value=value, style="danger"),
            ],
            block_id=f"certpilot_approval_{job.id}",
        ),
    ]
    return _clip(_render("thread.j2", "approval_fallback", j=job), MAX_FALLBACK), blocks


def job_update_blocks(job: JobNote, *, actor: str | None) -> tuple[str, list[Block]]:
    """The thread reply after a job changed: "Renewed and verified: serial X served on web,
    canary (requested by @U1)", "Rolled back: ...", "Failed: ...", "Waiting for approval by
    ...", "Approved by ...", "Denied by ..." (``actor`` is who approved or denied)."""
    blocks: list[Block] = [
        _section(_render("thread.j2", "update", j=job, actor=actor or "")),
        _context(_render("thread.j2", "job_context", j=job)),
    ]
    return _clip(_render("thread.j2", "update_fallback", j=job), MAX_FALLBACK), blocks


def revoke_modal(fingerprint: str, subject: str, *, page_key: str) -> Block:
    """The ``views.open`` view behind the Revoke button: which certificate, a warning that a
    second person must approve, a required RFC 5280 reason (a static select whose option
    values are the keys of :data:`REVOKE_REASONS`, in block ``reason``, action ``reason``) and
    an optional note (block ``note``, action ``note``). ``private_metadata`` is JSON
    ``{"fingerprint": ..., "page": ...}``.

    Raises ValueError when the metadata would exceed Slack's 3,000 characters."""
    metadata = json.dumps({"fingerprint": fingerprint, "page": page_key}, separators=(",", ":"))
    if len(metadata) > MAX_METADATA:
        raise ValueError(
            f"revoke_modal: private_metadata is {len(metadata)} characters, "
            f"Slack allows {MAX_METADATA} (page key too long)"
        )
    options = [
        {
            "text": _plain(_render("modal.j2", "reason_option", name=name), MAX_BUTTON_TEXT),
            "value": name,
        }
        for name in REVOKE_REASONS
    ]
    return {
        "type": "modal",
        "callback_id": REVOKE_CALLBACK,
        "private_metadata": metadata,
        "title": _plain(_render("modal.j2", "title"), MAX_MODAL_TITLE),
        "submit": _plain(_render("modal.j2", "submit"), MAX_MODAL_TITLE),
        "close": _plain(_render("modal.j2", "close"), MAX_MODAL_TITLE),
        "blocks": [
            _section(_render("modal.j2", "what", subject=subject, fingerprint=fingerprint)),
            _section(_render("modal.j2", "warning")),
            {
                "type": "input",
                "block_id": REVOKE_REASON_BLOCK,
                "label": _plain(_render("modal.j2", "reason_label"), 2000),
                "element": {
                    "type": "static_select",
                    "action_id": REVOKE_REASON_BLOCK,
                    "placeholder": _plain(_render("modal.j2", "reason_placeholder"), 150),
                    "options": options,
                },
            },
            {
                "type": "input",
                "block_id": REVOKE_NOTE_BLOCK,
                "optional": True,
                "label": _plain(_render("modal.j2", "note_label"), 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REVOKE_NOTE_BLOCK,
                    "multiline": True,
                    "max_length": 500,
                },
            },
        ],
    }


# --------------------------------------------------------------------------- slash commands


def help_blocks(
    *, command: str = "/certs", commands: Sequence[tuple[str, str]] = COMMANDS
) -> list[Block]:
    """The list of slash commands (``commands``: ``(usage, what it does)`` pairs)."""
    lines = [
        _render("commands.j2", "help_line", command=command, usage=usage, what=what)
        for usage, what in commands
    ]
    blocks: list[Block] = [
        _header(_render("commands.j2", "help_header")),
        *_sections(lines),
        _context(_render("commands.j2", "help_footer")),
    ]
    return blocks


def status_blocks(
    counts: Mapping[str, int],
    problems: Mapping[str, int],
    slo_lines: Sequence[tuple[str, str]],
    *,
    now: datetime,
) -> list[Block]:
    """Fleet health: ``counts`` (name -> number, shown as fields in the given order),
    ``problems`` (problem code -> locations, most first) and ``slo_lines`` ((SLO, status))."""
    bad = sum(n for n in problems.values() if n > 0)
    blocks: list[Block] = [_header(_render("commands.j2", "status_header", problems=bad))]
    fields = [
        _md(_render("commands.j2", "count_field", name=name, value=value), MAX_FIELD)
        for name, value in list(counts.items())[:MAX_FIELDS]
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    listed = sorted(((c, n) for c, n in problems.items() if n > 0), key=lambda cn: (-cn[1], cn[0]))
    if listed:
        blocks += _sections(
            [
                _render("commands.j2", "problems_title", total=bad),
                *(_render("commands.j2", "problem_line", code=c, n=n) for c, n in listed),
            ]
        )
    else:
        blocks.append(_section(_render("commands.j2", "no_problems")))
    if slo_lines:
        blocks += _sections(
            [
                _render("commands.j2", "slo_title"),
                *(
                    _render("commands.j2", "slo_status_line", name=name, status=status)
                    for name, status in slo_lines
                ),
            ]
        )
    blocks.append(_context(_render("commands.j2", "as_of", date=_date(now))))
    return _finish(blocks)


def _get_str(row: Mapping[str, object], key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value)


def _get_strs(row: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = row.get(key)
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return ()


_CN: Final = re.compile(r"(?:^|,)\s*CN=((?:[^,\\]|\\.)+)")


def _common_name(row: Mapping[str, object]) -> str:
    cn = _get_str(row, "subject_cn")
    if cn:
        return cn
    subject = _get_str(row, "subject")
    m = _CN.search(subject)
    return m.group(1) if m else subject


def items_blocks(
    title: str, items: Sequence[Mapping[str, object]], *, now: datetime, limit: int = 15
) -> list[Block]:
    """Inventory rows (``InventoryItem.to_dict``): one line each (where, common name, days left,
    problems or error), the first ``limit`` of them and "and N more"."""
    now = _aware(now)
    lines = [
        _render(
            "commands.j2",
            "item_line",
            where=_get_str(row, "target") or _get_str(row, "ref"),
            cn=_common_name(row),
            expiry=expiry(row.get("not_after"), now),
            problems=_get_strs(row, "problems"),
            error=_get_str(row, "error"),
        )
        for row in items[: max(limit, 0)]
    ]
    if len(items) > limit:
        lines.append(_render("commands.j2", "more", n=len(items) - max(limit, 0)))
    if not lines:
        lines.append(_render("commands.j2", "nothing"))
    return _finish([_header(escape(title)), *_sections(lines)])


def _job_note(row: Mapping[str, object]) -> JobNote:
    """A ``Job.to_dict`` row as the JobNote the job templates render."""
    raw_id = row.get("id")
    subject = ",".join(_get_strs(row, "names")) or _get_str(row, "ref")
    return JobNote(
        id=raw_id if isinstance(raw_id, int) else 0,
        action=_get_str(row, "action"),
        state=_get_str(row, "state"),
        subject=subject or _get_str(row, "fingerprint_sha256"),
        requester=_get_str(row, "requester"),
        new_serial=_get_str(row, "new_serial"),
        verified=_get_strs(row, "verified"),
        last_error=_get_str(row, "last_error"),
        approvers=_get_strs(row, "approvers"),
    )


def jobs_blocks(jobs: Sequence[Mapping[str, object]]) -> list[Block]:
    """Remediation jobs (``Job.to_dict`` rows), one line each, the first
    :data:`JOBS_LIST_LIMIT` in the given order."""
    lines: list[str] = [
        _render("thread.j2", "job_line", j=_job_note(row)) for row in jobs[:JOBS_LIST_LIMIT]
    ]
    if len(jobs) > JOBS_LIST_LIMIT:
        lines.append(_render("commands.j2", "more", n=len(jobs) - JOBS_LIST_LIMIT))
    if not lines:
        lines.append(_render("commands.j2", "nothing"))
    return _finish([_header(_render("commands.j2", "jobs_header")), *_sections(lines)])


def requested_blocks(
    action: str, name: str, jobs: Sequence[JobNote], refused: Sequence[str]
) -> list[Block]:
    """The answer to ``/certs renew|redeploy|revoke NAME``: how many jobs started, a line per
    job, and why the others were not (``refused``: policy notes)."""
    lines: list[str] = [
        _render("commands.j2", "requested", action=action, name=name, jobs=len(jobs))
    ]
    lines += [_render("thread.j2", "job_line", j=j) for j in jobs[:JOBS_LIST_LIMIT]]
    if len(jobs) > JOBS_LIST_LIMIT:
        lines.append(_render("commands.j2", "more", n=len(jobs) - JOBS_LIST_LIMIT))
    lines += [_render("commands.j2", "refused", note=note) for note in refused[:JOB_LIMIT]]
    if len(refused) > JOB_LIMIT:
        lines.append(_render("commands.j2", "more", n=len(refused) - JOB_LIMIT))
    return _finish(_sections(lines))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


#: Burn-rate windows shown per SLO, shortest first (SLOStatus.to_dict "windows").
_SHOWN_WINDOWS: Final = ("5m", "1h", "6h")


def slo_blocks(rows: Sequence[Mapping[str, object]]) -> list[Block]:
    """SLOs (``SLOStatus.to_dict`` rows): objective, error budget left, burn rates over
    5m/1h/6h, and which alert fires."""
    lines: list[str] = []
    firing = 0
    for row in rows:
        objective = _number(row.get("objective"))
        budget = _number(row.get("budget_remaining_ratio"))
        windows = row.get("windows")
        burns: list[str] = []
        if isinstance(windows, list):
            by_name = {str(w.get("window")): w for w in windows if isinstance(w, Mapping)}
            for name in _SHOWN_WINDOWS:
                rate = _number(by_name.get(name, {}).get("burn_rate"))
                if rate is not None:
                    burns.append(f"{name} {rate:.1f}x")
        severity = _get_str(row, "firing_severity")
        firing += bool(severity)
        lines.append(
            _render(
                "commands.j2",
                "slo_line",
                name=_get_str(row, "slo"),
                objective=f"{objective:g}%" if objective is not None else "",
                budget=f"{budget * 100:.1f}%" if budget is not None else "",
                burns=", ".join(burns),
                firing=severity,
            )
        )
    if not lines:
        lines.append(_render("commands.j2", "nothing"))
    header = _render("commands.j2", "slo_header", n=len(rows), firing=firing)
    return _finish([_header(header), *_sections(lines)])


def error_blocks(message: str, usage: str) -> list[Block]:
    """A slash command that could not be done: what went wrong, and how to use it."""
    return [
        _section(_render("commands.j2", "error", message=message)),
        _context(_render("commands.j2", "usage", usage=usage)),
    ]


# --------------------------------------------------------------------------- plain text


def blocks_text(blocks: Sequence[Mapping[str, Any]]) -> str:
    """Notification text for ``blocks`` (what slash-command answers send as ``text``): the
    first header's or section's first line, at most :data:`MAX_FALLBACK` characters. It stays
    escaped mrkdwn (Slack parses ``text`` too), unlike :func:`to_text`."""
    for b in blocks:
        text = b.get("text")
        if b.get("type") in {"header", "section"} and isinstance(text, Mapping):
            first = str(text.get("text", "")).strip().split("\n", 1)[0]
            if first:
                return _clip(first, MAX_FALLBACK)
    return "certpilot"


_CONTROL: Final = re.compile(r"<([^<>\n]*)>")
# Slack's *bold*, _italic_, ~strike~: markers at word edges only, so host_names keep theirs.
_EMPHASIS: Final = tuple(
    re.compile(rf"(?<![\w{m}]){m}(?=\S)([^{m}\n]+?)(?<=\S){m}(?![\w{m}])")
    for m in (r"\*", "_", "~")
)
_CODE: Final = re.compile(r"`([^`\n]+)`")
_SHORTCODE: Final = re.compile(r":([a-z0-9_+\-]+):")
_EMOJI_TEXT: Final[Mapping[str, str]] = MappingProxyType(
    {
        "rotating_light": "🚨",
        "warning": "⚠",
        "information_source": "(i)",
        "white_check_mark": "✔",
        "x": "✖",
        "no_entry": "⛔",
        "hourglass_flowing_sand": "⏳",
        "arrows_counterclockwise": "⟳",
        "leftwards_arrow_with_hook": "↩",
        "thumbsup": "👍",
        "raised_hand": "✋",
        "eyes": "👀",
        "mute": "🔇",
        "wrench": "🔧",
        "book": "📖",
        "mag": "🔍",
        "bust_in_silhouette": "👤",
        "gear": "⚙",
        "red_circle": "●",
        "large_green_circle": "○",
    }
)


def _control(m: re.Match[str]) -> str:
    target, _, label = m.group(1).partition("|")
    if target.startswith("@"):
        return "@" + (label.lstrip("@") or target[1:])
    if target.startswith("!subteam^"):
        return "@" + (label.lstrip("@") or target.removeprefix("!subteam^"))
    if target.startswith("!date^"):
        return label or target
    if target.startswith("!"):
        return "@" + target[1:]
    if target.startswith("#"):
        return "#" + (label or target[1:])
    return f"{label} ({target})" if label and label != target else target


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _emoji(text: str) -> str:
    return _SHORTCODE.sub(lambda m: _EMOJI_TEXT.get(m.group(1), m.group(0)), text)


def mrkdwn_to_text(text: str) -> str:
    """Slack mrkdwn as plain text: links as ``text (url)``, mentions as ``@U123``, dates as
    their fallback, emphasis markers dropped, entities decoded, common emoji as symbols."""
    out = _CONTROL.sub(_control, text)
    for rx in _EMPHASIS:
        out = rx.sub(r"\1", out)
    out = _CODE.sub(r"\1", out)
    return _unescape(_emoji(out))


def _text_of(obj: object) -> str:
    if not isinstance(obj, Mapping):
        return ""
    text = str(obj.get("text", ""))
    if obj.get("type") == "mrkdwn":
        return mrkdwn_to_text(text)
    return _unescape(_emoji(text))


def _buttons(elements: Iterable[object]) -> list[str]:
    labels: list[str] = []
    links: list[str] = []
    for e in elements:
        if not isinstance(e, Mapping):
            continue
        if e.get("type") == "button":
            label = _text_of(e.get("text"))
            labels.append(f"[ {label} ]")
            if e.get("url"):
                links.append(f"  {label}: {e['url']}")
        elif e.get("type") in {"static_select", "overflow"}:
            labels.append(f"[ {_text_of(e.get('placeholder')) or 'choose'} ▾ ]")
    return [" ".join(labels), *links] if labels else links


def to_text(blocks: Sequence[Mapping[str, Any]]) -> str:
    """Any blocks list as plain text for a terminal: headers underlined, sections' mrkdwn as
    plain text (see :func:`mrkdwn_to_text`), context lines indented, buttons as
    ``[ Renew ] [ Acknowledge ]`` (with link buttons' URLs below), dividers as a rule."""
    out: list[str] = []
    for b in blocks:
        kind = b.get("type")
        if kind == "header":
            title = _text_of(b.get("text"))
            if out:
                out.append("")
            out += [title, "═" * min(max(len(title), 3), 72)]
        elif kind == "section":
            if out and not out[-1].startswith("═"):
                out.append("")
            if "text" in b:
                out.append(_text_of(b["text"]))
            for f in b.get("fields") or ():
                out.append(": ".join(_text_of(f).splitlines()))
            accessory = b.get("accessory")
            if isinstance(accessory, Mapping):
                out += _buttons([accessory])
        elif kind == "context":
            parts = [
                _text_of(e) if isinstance(e, Mapping) and "text" in e else ""
                for e in b.get("elements") or ()
            ]
            joined = " · ".join(p for p in parts if p)
            out += ["  " + line for line in joined.splitlines()]
        elif kind == "actions":
            out.append("")
            out += _buttons(b.get("elements") or ())
        elif kind == "divider":
            out.append("─" * 40)
        elif kind == "input":
            if out:
                out.append("")
            element = b.get("element")
            label = _text_of(b.get("label"))
            if isinstance(element, Mapping) and element.get("type") == "static_select":
                options = [_text_of(o.get("text")) for o in element.get("options") or ()]
                out.append(f"{label}: " + " | ".join(options))
            else:
                out.append(f"{label}: [ ______ ]")
        elif kind == "image":
            out.append(f"[image: {b.get('alt_text', '')}]")
    return "\n".join(out)


__all__ = [
    "ACTION_ACK",
    "ACTION_APPROVE",
    "ACTION_DENY",
    "ACTION_REDEPLOY",
    "ACTION_RENEW",
    "ACTION_REVOKE",
    "ACTION_RUNBOOK",
    "ACTION_SILENCE",
    "COMMANDS",
    "LIST_LIMIT",
    "MAX_BLOCKS",
    "MAX_BUTTON_TEXT",
    "MAX_FALLBACK",
    "MAX_HEADER",
    "MAX_TEXT",
    "MAX_VALUE",
    "REVOKE_CALLBACK",
    "REVOKE_NOTE_BLOCK",
    "REVOKE_REASONS",
    "REVOKE_REASON_BLOCK",
    "Block",
    "Mrkdwn",
    "approval_blocks",
    "blocks_text",
    "environment",
    "error_blocks",
    "escape",
    "expiry",
    "help_blocks",
    "items_blocks",
    "job_update_blocks",
    "jobs_blocks",
    "link",
    "members_reply",
    "mention",
    "mentions",
    "mrkdwn_to_text",
    "note_reply",
    "page_blocks",
    "requested_blocks",
    "resolved_reply",
    "revoke_modal",
    "safe_url",
    "slo_blocks",
    "span",
    "status_blocks",
    "to_text",
]
