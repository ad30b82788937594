"""The Slack app: ``/certs`` commands and the buttons on pages, on slack-bolt's ``AsyncApp``.

Served by the service's aiohttp server at ``/slack/events`` (:func:`aiohttp_handler`); Bolt
verifies every request's signature and refuses timestamps older than 5 minutes; a middleware
here refuses a request whose signature was already handled (a replay inside those 5
minutes), on every replica (the store keeps the signatures).

Every click is authorised (:class:`Permissions`: Slack user and user-group ids per action from
``slack.permissions``; approvals also follow the policy rule's approvers and its
second-person rule) and audited with the Slack user id (``slack:U123``). Remediation goes
through the same :class:`~remediator.service.Remediation` as the CLI and the webhook; jobs
started from a page are attached to it, so the pager replies in its thread when the probe has
verified the result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

from aiohttp import web

from bot import render
from bot.pager import Pager, job_note
from certpilot.domain.audit import AuditDraft, AuditResult
from certpilot.domain.clock import Clock
from certpilot.domain.errors import CertpilotError
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.remedy import RevocationReason
from certpilot.settings import SlackSettings
from certpilot.store.audit import AuditLog
from certpilot.store.jobs import JobNotFound
from certpilot.store.slack import SlackStore
from remediator.executor import ApprovalDenied, JobStateError
from remediator.policy import Action, CertFacts, Principal
from remediator.service import Remediation, Requested, certificates_named

log = logging.getLogger("certpilot.bot")

#: Kept longer than Slack's 5-minute timestamp window.
REPLAY_WINDOW = timedelta(minutes=10)

REASONS: Mapping[str, RevocationReason] = {
    "keycompromise": RevocationReason.KEY_COMPROMISE,
    "superseded": RevocationReason.SUPERSEDED,
    "cessationofoperation": RevocationReason.CESSATION_OF_OPERATION,
    "affiliationchanged": RevocationReason.AFFILIATION_CHANGED,
    "privilegewithdrawn": RevocationReason.PRIVILEGE_WITHDRAWN,
    "cacompromise": RevocationReason.CA_COMPROMISE,
    "unspecified": RevocationReason.UNSPECIFIED,
}

USAGE = (
    "/certs status | expiring [DAYS] | show HOST|NAME|FINGERPRINT | renew NAME | "
    "redeploy NAME | revoke FINGERPRINT REASON | slo | jobs | help"
)


@dataclass
class Permissions:
    """Who may click what: ``slack.permissions`` (user ids ``U…``/``W…``, user-group ids
    ``S…``, or ``*``). Group membership is looked up with ``usergroups.users.list`` and cached
    for five minutes."""

    settings: SlackSettings
    client: Any
    clock: Clock
    _groups: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    def allowed_ids(self, action: str) -> tuple[str, ...]:
        return tuple(getattr(self.settings.permissions, action, ()))

    async def groups_of(self, user: str, candidates: Sequence[str]) -> frozenset[str]:
        out: set[str] = set()
        for gid in candidates:
            if not gid.startswith("S"):
                continue
            cached = self._groups.get(gid)
            if cached is None or cached[0] < time.monotonic():
                try:
                    resp = await self.client.usergroups_users_list(usergroup=gid)
                    members = frozenset(str(u) for u in resp.get("users", []))
                except Exception as e:  # Slack down: nobody gets in through this group
                    log.warning("slack: usergroups.users.list %s: %s", gid, e)
                    members = frozenset()
                cached = (time.monotonic() + 300, members)
                self._groups[gid] = cached
            if user in cached[1]:
                out.add(gid)
        return frozenset(out)

    async def principal(self, user: str, extra: Sequence[str] = ()) -> Principal:
        ids = {*self.allowed_ids("approve"), *extra}
        groups = await self.groups_of(user, sorted(ids))
        # Jobs record their requester as ``slack:U…``: the principal's id must be the same
        # string, or the second-person rule never sees the requester approving their own
        # job (and the audit names the approver like every other click). The bare ``U…``
        # rides along as a group so approvers listed as ``U…`` still match.
        return Principal(_actor(user), groups | {user})

    async def check(self, action: str, user: str) -> tuple[bool, str]:
        ids = self.allowed_ids(action)
        if "*" in ids or user in ids:
            return True, "allowed"
        if not ids:
            return False, f"nobody may {action} from Slack (slack.permissions.{action} is empty)"
        if await self.groups_of(user, ids):
            return True, "allowed (group)"
        return False, f"<@{user}> is not allowed to {action} (slack.permissions.{action})"


@dataclass
class BotContext:
    """What the handlers use. ``items`` reads the inventory, ``slo_rows`` the SLO status as
    dicts, ``wake`` tells the job runner there is work, ``silence`` creates an Alertmanager
    silence for a page (``None`` when not configured)."""

    settings: SlackSettings
    clock: Clock
    remediation: Remediation
    pager: Pager
    store: SlackStore
    audit: AuditLog
    items: Callable[[], list[InventoryItem]]
    slo_rows: Callable[[], list[dict[str, Any]]]
    wake: Callable[[], None] = lambda: None
    silence: Callable[[Any, str], Awaitable[str]] | None = None
    permissions: Permissions | None = None


def _actor(user: str) -> str:
    return f"slack:{user}"


async def _audit_refused(ctx: BotContext, user: str, action: str, subject: str, why: str) -> None:
    await asyncio.to_thread(
        ctx.audit.append,
        AuditDraft(
            at=ctx.clock.now(),
            actor=_actor(user),
            action=action,
            subject=subject or "-",
            result=AuditResult.DENIED,
            detail={"why": why[:300], "via": "slack"},
        ),
    )


def find(items: Sequence[InventoryItem], name: str) -> list[CertFacts]:
    """The certificates NAME names (host, SAN, ref, fingerprint prefix), with every location."""
    return certificates_named(items, name)


# ------------------------------------------------------------------------------ commands


async def run_command(ctx: BotContext, user: str, text: str) -> list[dict[str, Any]]:
    """``/certs TEXT`` -> ephemeral blocks. Never raises for bad input."""
    try:
        args = shlex.split(text)
    except ValueError:
        args = text.split()
    if not args or args[0] in {"help", "-h", "--help"}:
        return render.help_blocks()
    verb, rest = args[0].lower(), args[1:]
    now = ctx.clock.now()
    try:
        if verb == "status":
            items = await asyncio.to_thread(ctx.items)
            counts: dict[str, int] = {"locations": len(items)}
            problems: dict[str, int] = {}
            for it in items:
                for c in it.problems:
                    problems[c.value] = problems.get(c.value, 0) + 1
            counts["with problems"] = sum(1 for it in items if it.problems)
            rows = await asyncio.to_thread(ctx.slo_rows)
            slo_lines = [(str(r.get("slo", "")), _slo_state(r)) for r in rows]
            return render.status_blocks(counts, problems, slo_lines, now=now)
        if verb == "expiring":
            days = float(rest[0]) if rest else 30.0
            if not 0 <= days <= 3650:  # NaN too
                raise ValueError("DAYS must be between 0 and 3650")
            items = await asyncio.to_thread(ctx.items)
            soon = [
                it.to_dict(now)
                for it in sorted(items, key=lambda i: i.not_after or now)
                if it.not_after is not None and (it.not_after - now).total_seconds() < days * 86400
            ]
            return render.items_blocks(f"Expiring within {days:g} days", soon, now=now)
        if verb == "show":
            if not rest:
                return render.error_blocks("show needs a HOST, NAME or FINGERPRINT", USAGE)
            items = await asyncio.to_thread(ctx.items)
            certs = find(items, rest[0])
            refs = {r for c in certs for r in c.refs}
            shown = [it.to_dict(now) for it in items if it.ref in refs]
            if not shown:
                return render.error_blocks(f"{rest[0]} is not in the inventory", USAGE)
            return render.items_blocks(f"{rest[0]}", shown, now=now)
        if verb == "jobs":
            jobs = await asyncio.to_thread(
                ctx.remediation.jobs.list, None, limit=15, newest_first=True
            )
            return render.jobs_blocks([j.to_dict() for j in jobs])
        if verb == "slo":
            return render.slo_blocks(await asyncio.to_thread(ctx.slo_rows))
        if verb in {"renew", "redeploy"}:
            if not rest:
                return render.error_blocks(f"{verb} needs a NAME", USAGE)
            return await _request_from_command(ctx, user, Action(verb), rest[0], None)
        if verb == "revoke":
            if len(rest) < 2:
                return render.error_blocks("revoke needs a FINGERPRINT and a REASON", USAGE)
            reason = REASONS.get(rest[1].lower().replace("-", "").replace("_", ""))
            if reason is None:
                return render.error_blocks(
                    f"unknown reason {rest[1]!r}", "reasons: " + ", ".join(sorted(REASONS))
                )
            return await _request_from_command(ctx, user, Action.REVOKE, rest[0], reason)
    except (ValueError, CertpilotError) as e:
        return render.error_blocks(str(e), USAGE)
    return render.error_blocks(f"unknown command {verb!r}", USAGE)


def _slo_state(row: Mapping[str, Any]) -> str:
    firing = [a for a in row.get("alerts", []) if a.get("firing")]
    if firing:
        return f"burning ({firing[0].get('severity')})"
    left = row.get("budget_remaining_ratio")
    return f"{left:.0%} budget left" if isinstance(left, float) else "no events"


async def _request_from_command(
    ctx: BotContext, user: str, action: Action, name: str, reason: RevocationReason | None
) -> list[dict[str, Any]]:
    ok, why = await _allowed(ctx, action.value, user)
    if not ok:
        await _audit_refused(ctx, user, action.value, name, why)
        return render.error_blocks(why, USAGE)
    items = await asyncio.to_thread(ctx.items)
    certs = find(items, name)
    if not certs:
        return render.error_blocks(f"{name} is not in the inventory", USAGE)
    lines: list[Requested] = []
    for cert in certs:
        lines.append(
            await ctx.remediation.request(
                action, cert, requester=_actor(user), force=True, reason=reason
            )
        )
    ctx.wake()
    notes = [job_note(r.job) for r in lines if r.job is not None]
    refused = [r.note for r in lines if r.job is None]
    return render.requested_blocks(action.value, name, notes, refused)


async def _allowed(ctx: BotContext, action: str, user: str) -> tuple[bool, str]:
    if ctx.permissions is None:
        return False, "permissions are not configured"
    return await ctx.permissions.check(action, user)


# ------------------------------------------------------------------------------- actions


async def on_page_action(
    ctx: BotContext, action: str, user: str, page_key: str, client: Any, trigger_id: str
) -> str:
    """A button on a page; returns a line for the clicker (ephemeral)."""
    row = await asyncio.to_thread(ctx.store.get, page_key)
    if row is None:
        return "This page is gone (resolved and forgotten)."
    perm = {"ack": "acknowledge"}.get(action, action)
    ok, why = await _allowed(ctx, perm, user)
    if not ok:
        await _audit_refused(ctx, user, perm, page_key, why)
        return why
    page = ctx.pager.page(row)
    now = ctx.clock.now()
    if action == "ack":
        await asyncio.to_thread(ctx.store.patch, page_key, now=now, acknowledged_by=user)
        await _audit_ok(ctx, user, "acknowledge", page_key)
        await ctx.pager.reply(
            page_key, *render.note_reply(f"Acknowledged by <@{user}>", people=[user])
        )
        await ctx.pager.sync()
        return "Acknowledged."
    if action == "silence":
        until = now + timedelta(seconds=ctx.settings.silence_duration)
        detail = ""
        if ctx.silence is not None:
            try:
                detail = await ctx.silence(page, user)
            except Exception as e:  # Alertmanager down: certpilot's own silence still holds
                log.warning("slack: Alertmanager silence failed: %s", e)
                detail = "not created: Alertmanager did not accept it"
        await asyncio.to_thread(ctx.store.patch, page_key, now=now, silenced_until=until)
        await _audit_ok(ctx, user, "silence", page_key, until=until.isoformat(), am=detail)
        await ctx.pager.reply(
            page_key,
            *render.note_reply(
                f"Silenced by <@{user}> until {until.astimezone(UTC):%H:%M} UTC"
                + (f" (Alertmanager silence {detail})" if detail else ""),
                people=[user],
            ),
        )
        await ctx.pager.sync()
        return "Silenced."
    items = await asyncio.to_thread(ctx.items)
    refs = {s.subject for s in page.firing} | {s.labels.get("ref", "") for s in page.firing}
    certs: dict[str, CertFacts] = {}
    for it in items:
        if it.ref in refs and it.fingerprint_sha256:
            certs.setdefault(it.fingerprint_sha256, CertFacts.from_item(it))
    for fp, cert in list(certs.items()):
        from dataclasses import replace

        all_refs = tuple(x.ref for x in items if x.fingerprint_sha256 == fp)
        certs[fp] = replace(cert, refs=all_refs)
    if not certs:
        return "No certificate on this page is in the inventory any more."
    if action == "revoke":
        fp, cert = next(iter(certs.items()))
        view = render.revoke_modal(fp, ", ".join(cert.names[:3]), page_key=page_key)
        await client.views_open(trigger_id=trigger_id, view=view)
        return ""
    act = Action(action)
    started: list[Requested] = []
    for cert in certs.values():
        res = await ctx.remediation.request(act, cert, requester=_actor(user), force=True)
        started.append(res)
        if res.job is not None and not res.created:  # nothing new: audited nowhere else
            await _audit_ok(ctx, user, act.value, page_key, note=res.note)
        if res.job is not None:
            await ctx.pager.attach_job(page_key, res.job.id)
            if res.job.state == "pending_approval":
                await ctx.pager.reply(
                    page_key,
                    *render.approval_blocks(
                        job_note(res.job), requester=user, rule=res.job.rule, reason=None
                    ),
                )
    ctx.wake()
    new = sum(1 for r in started if r.job is not None and r.created)
    open_ = sum(1 for r in started if r.job is not None and not r.created)
    notes = "; ".join(r.note for r in started if r.job is None)
    summary = f"{new} new job(s)" + (f", {open_} already open" if open_ else "")
    summary += f"; {notes}" if notes else ""
    await ctx.pager.reply(
        page_key,
        *render.note_reply(
            f"{action.capitalize()} requested by <@{user}>: {summary}", people=[user]
        ),
    )
    await ctx.pager.sync()
    return summary


async def _audit_ok(ctx: BotContext, user: str, action: str, subject: str, **detail: str) -> None:
    await asyncio.to_thread(
        ctx.audit.append,
        AuditDraft(
            at=ctx.clock.now(),
            actor=_actor(user),
            action=action,
            subject=subject,
            result=AuditResult.OK,
            detail={k: v for k, v in {**detail, "via": "slack"}.items() if v},
        ),
    )


async def on_job_action(ctx: BotContext, action: str, user: str, job_id: int) -> str:
    """Approve or Deny on an approval request."""
    ex = ctx.remediation.executor
    try:
        job = await asyncio.to_thread(ex.jobs.get, job_id)
    except JobNotFound:
        return f"Job {job_id} does not exist."
    if action == "approve":
        assert ctx.permissions is not None
        who = await ctx.permissions.principal(user, job.approvers)
        try:
            job = await ex.approve(job_id, who)  # audited (allowed or denied) by the executor
        except ApprovalDenied as e:
            return f"Not approved: {e.reason}"
        except JobStateError as e:
            return e.message
        ctx.wake()
        return f"Approved job {job_id}; it runs now."
    ok, why = await _allowed(ctx, "approve", user)
    if not ok and ctx.permissions is not None:  # whoever may approve this job may deny it
        who = await ctx.permissions.principal(user, job.approvers)
        ok = bool(({who.id, *who.groups} | {user}) & set(job.approvers))
    if not ok:
        await _audit_refused(ctx, user, "deny", f"job {job_id}", why)
        return why
    try:
        await ex.cancel(job_id, _actor(user), "denied in Slack")
    except JobStateError as e:
        return e.message
    return f"Denied job {job_id}."


# ------------------------------------------------------------------- interactive payloads


class BadInteraction(CertpilotError):
    """An interactive payload (a button click, a modal submission) that is not what certpilot's
    own blocks send; ``field`` names where it is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"slack payload {field}: {message}")


def _json_object(raw: object, field: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise BadInteraction(field, "expected a JSON string")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadInteraction(field, "not JSON") from None
    if not isinstance(value, dict):
        raise BadInteraction(field, "expected a JSON object")
    return value


def clicker(body: Mapping[str, Any]) -> str:
    """The Slack user id of whoever clicked or submitted (``body.user.id``)."""
    user = body.get("user") if isinstance(body, Mapping) else None
    uid = user.get("id") if isinstance(user, Mapping) else None
    if not isinstance(uid, str) or not uid:
        raise BadInteraction("user.id", "expected a Slack user id")
    return uid


def button_value(body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object in the clicked button's ``value`` (``{}`` when it has none)."""
    actions = body.get("actions") if isinstance(body, Mapping) else None
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], Mapping):
        raise BadInteraction("actions", "expected a list of actions")
    return _json_object(actions[0].get("value"), "actions[0].value")


def page_key_of(value: Mapping[str, Any]) -> str:
    """The page a page button acts on (``{"page": KEY}``)."""
    page = value.get("page", "")
    if not isinstance(page, str):
        raise BadInteraction("actions[0].value.page", "expected a page key")
    return page


def job_id_of(value: Mapping[str, Any]) -> int:
    """The job an Approve/Deny button acts on (``{"job": ID}``)."""
    job = value.get("job", 0)
    if isinstance(job, str) and job.isascii() and job.isdigit() and len(job) <= 18:
        job = int(job)
    if isinstance(job, bool) or not isinstance(job, int) or not 0 <= job < 2**63:
        raise BadInteraction("actions[0].value.job", "expected a job id")
    return job


def revoke_form(view: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(page key, fingerprint, reason name)`` from the revoke modal's submission."""
    if not isinstance(view, Mapping):
        raise BadInteraction("view", "expected an object")
    meta = _json_object(view.get("private_metadata"), "view.private_metadata")
    page, fingerprint = meta.get("page", ""), meta.get("fingerprint", "")
    if not isinstance(page, str) or not isinstance(fingerprint, str):
        raise BadInteraction("view.private_metadata", "expected page and fingerprint strings")
    return page, fingerprint, _selected(view)


# ------------------------------------------------------------------------------- the app


def build_app(ctx: BotContext, *, signing_secret: str, client: Any) -> Any:
    """The Bolt ``AsyncApp`` with every handler registered."""
    from slack_bolt.async_app import AsyncApp
    from slack_bolt.response import BoltResponse

    # The client carries the token (Bolt ignores ``token=`` next to ``client=``).
    app = AsyncApp(
        signing_secret=signing_secret,
        client=client,
        process_before_response=False,
        raise_error_for_unhandled_request=False,
    )
    if ctx.permissions is None:
        ctx.permissions = Permissions(ctx.settings, client, ctx.clock)

    @app.middleware
    async def refuse_replays(req: Any, resp: Any, next: Callable[[], Awaitable[Any]]) -> Any:
        sig = (req.headers.get("x-slack-signature") or [""])[0]
        if sig and not await asyncio.to_thread(
            ctx.store.first_time, sig, now=ctx.clock.now(), keep=REPLAY_WINDOW
        ):
            log.warning("slack: refused a replayed request")
            return BoltResponse(status=401, body="replayed request")
        return await next()

    @app.command("/certs")
    async def certs(ack: Any, command: Mapping[str, Any]) -> None:
        blocks = await run_command(ctx, str(command["user_id"]), str(command.get("text", "")))
        await ack(response_type="ephemeral", blocks=blocks, text=render.blocks_text(blocks))

    async def ephemeral(client: Any, body: Mapping[str, Any], text: str) -> None:
        if not text:
            return
        where, container = body.get("channel"), body.get("container")
        channel = (where.get("id") if isinstance(where, Mapping) else None) or (
            container.get("channel_id") if isinstance(container, Mapping) else None
        )
        user = clicker(body)
        if channel and user:
            await client.chat_postEphemeral(channel=channel, user=user, text=text)

    # Bolt passes listener arguments by name: bind the action name with a factory, not a
    # default argument (Bolt would overwrite it).
    def page_listener(name: str) -> Callable[..., Awaitable[None]]:
        async def page_action(ack: Any, body: Mapping[str, Any], client: Any) -> None:
            await ack()
            try:
                user, page = clicker(body), page_key_of(button_value(body))
            except BadInteraction as e:
                log.warning("slack: %s", e.one_line())
                return
            text = await on_page_action(ctx, name, user, page, client, str(body.get("trigger_id")))
            await ephemeral(client, body, text)

        return page_action

    def job_listener(name: str) -> Callable[..., Awaitable[None]]:
        async def job_action(ack: Any, body: Mapping[str, Any], client: Any) -> None:
            await ack()
            try:
                user, job = clicker(body), job_id_of(button_value(body))
            except BadInteraction as e:
                log.warning("slack: %s", e.one_line())
                return
            text = await on_job_action(ctx, name, user, job)
            await ephemeral(client, body, text)

        return job_action

    for name in ("renew", "redeploy", "revoke", "ack", "silence"):
        app.action(f"certpilot_{name}")(page_listener(name))
    for name in ("approve", "deny"):
        app.action(f"certpilot_{name}")(job_listener(name))

    @app.action("certpilot_runbook")
    async def runbook(ack: Any) -> None:  # a link button: Slack opens the URL
        await ack()

    @app.view("certpilot_revoke_confirm")
    async def revoke_confirm(ack: Any, body: Mapping[str, Any], view: Mapping[str, Any]) -> None:
        await ack()
        try:
            user = clicker(body)
            page_key, fingerprint, reason_name = revoke_form(view)
        except BadInteraction as e:
            log.warning("slack: %s", e.one_line())
            return
        reason = REASONS.get(reason_name.lower(), RevocationReason.UNSPECIFIED)
        ok, why = await _allowed(ctx, "revoke", user)
        if not ok:
            await _audit_refused(ctx, user, "revoke", fingerprint, why)
            return
        items = await asyncio.to_thread(ctx.items)
        certs = find(items, fingerprint)
        for cert in certs[:1]:
            res = await ctx.remediation.request(
                Action.REVOKE, cert, requester=_actor(user), force=True, reason=reason
            )
            for r in (res, res.replacement):
                if r is None or r.job is None:
                    continue
                await ctx.pager.attach_job(page_key, r.job.id)
                if r.job.state == "pending_approval":
                    await ctx.pager.reply(
                        page_key,
                        *render.approval_blocks(
                            job_note(r.job), requester=user, rule=r.job.rule, reason=reason_name
                        ),
                    )
        ctx.wake()
        await ctx.pager.sync()

    return app


def _selected(view: Mapping[str, Any]) -> str:
    state = view.get("state")
    values = state.get("values") if isinstance(state, Mapping) else None
    for block in values.values() if isinstance(values, Mapping) else ():
        for element in block.values() if isinstance(block, Mapping) else ():
            opt = element.get("selected_option") if isinstance(element, Mapping) else None
            if isinstance(opt, Mapping) and opt:
                return str(opt.get("value", "unspecified"))
    return "unspecified"


def aiohttp_handler(app: Any) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``POST /slack/events``: Bolt's aiohttp adapter around ``async_dispatch``."""
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

    async def handler(request: web.Request) -> web.StreamResponse:
        bolt_req = await to_bolt_request(request)
        resp = await app.async_dispatch(bolt_req)
        return await to_aiohttp_response(resp)

    return handler


__all__ = [
    "REASONS",
    "BadInteraction",
    "BotContext",
    "Permissions",
    "aiohttp_handler",
    "build_app",
    "button_value",
    "clicker",
    "find",
    "job_id_of",
    "on_job_action",
    "on_page_action",
    "page_key_of",
    "revoke_form",
    "run_command",
]
