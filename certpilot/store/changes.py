"""What changed at one location: previous state and a new observation in, event drafts out.

Pure functions, no database: :meth:`certpilot.store.Inventory.record` gathers the previous state
of a whole batch in bulk, then asks this module what each observation changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from certpilot.domain.inventory import EventKind
from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode, severity_rank
from certpilot.domain.x509 import CertInfo

_CODES: dict[str, ProblemCode] = {c.value: c for c in ProblemCode}


class PriorLocation(NamedTuple):
    """A location as stored before this batch.

    ``problems_json`` and ``chain_json`` are the stored canonical texts (see
    :func:`canonical_codes` and :func:`fingerprints_json`): equal text means an equal set of
    problems or an equal chain, so most locations are compared without parsing anything.
    ``last_scanned`` is the database's own value (text on SQLite, a datetime on PostgreSQL), to
    be handed back to the database unchanged. A named tuple: one is built per location on the
    hot path, and a frozen dataclass costs several times more to construct.
    """

    source: str
    fingerprint: str | None
    last_fingerprint: str | None
    problems_json: str
    chain_json: str
    last_scanned: object
    last_serial: str | None = None  # of the last leaf (last_fingerprint), when stored


class EventDraft(NamedTuple):
    """An event before the store has given it an id and a timestamp (a first record of 100k
    locations makes over 200k of them, hence a named tuple)."""

    kind: EventKind
    ref: str
    fingerprint: str | None = None
    code: ProblemCode | None = None
    detail: str = ""


def canonical_codes(problems: Iterable[Problem]) -> list[str]:
    """Distinct problem codes in severity order: the stored, comparable form of a problem set."""
    codes = {p.code for p in problems}
    return [c.value for c in sorted(codes, key=lambda c: (severity_rank(c), c.value))]


def parse_codes(stored: object) -> list[ProblemCode]:
    """Stored problem codes (JSON text, or the list it decodes to) back to enums, in order.

    Codes this version does not know (written by a newer certpilot) are dropped rather than
    failing every read of the inventory.
    """
    raw = stored
    if isinstance(stored, str):
        try:
            raw = json.loads(stored) if stored else []
        except json.JSONDecodeError:
            return []
    if not isinstance(raw, list):
        return []
    known = _CODES
    return [known[v] for v in raw if isinstance(v, str) and v in known]


def presented(obs: Observation) -> list[CertInfo]:
    """The certificates an observation presented: the leaf, then the chain, each once."""
    leaf = obs.leaf
    chain = obs.chain
    candidates: tuple[CertInfo, ...]
    if leaf is None:
        candidates = chain
    elif chain and chain[0].fingerprint_sha256 == leaf.fingerprint_sha256:
        candidates = chain  # the usual shape: the chain starts with the leaf
    else:
        candidates = (leaf, *chain)
    n = len(candidates)
    if n < 2 or (n == 2 and candidates[0].fingerprint_sha256 != candidates[1].fingerprint_sha256):
        return list(candidates)  # nothing to dedupe: the common cases, on the hot path
    out: list[CertInfo] = []
    seen: set[str] = set()
    for info in candidates:
        if info.fingerprint_sha256 not in seen:
            seen.add(info.fingerprint_sha256)
            out.append(info)
    return out


def fingerprints_json(infos: Sequence[CertInfo]) -> str:
    """The stored form of a presented chain: a JSON list of fingerprints, leaf first.

    Built by hand because fingerprints are lowercase hex (nothing to escape) and this runs once
    per observation on the hot path; equal chains give equal text.
    """
    if not infos:
        return "[]"
    return '["' + '","'.join(info.fingerprint_sha256 for info in infos) + '"]'


def chain_fingerprints(stored: str) -> tuple[str, ...]:
    """The fingerprints of a stored chain (:func:`fingerprints_json`), leaf first.

    Anything unreadable counts as nothing presented: the location's sightings are then
    started again, which only moves their ``last_seen``.
    """
    if not stored or stored == "[]":
        return ()
    try:
        raw = json.loads(stored)
    except json.JSONDecodeError:
        return ()
    if not isinstance(raw, list):
        return ()
    return tuple(v for v in raw if isinstance(v, str))


def chain_json(obs: Observation) -> str:
    """``fingerprints_json(presented(obs))``, without building the list for the usual shape
    (a leaf sent first, then one other certificate): this runs for every observation of every
    scan, and most are steady, so their certificates are never needed one by one."""
    leaf = obs.leaf
    chain = obs.chain
    if leaf is not None and len(chain) == 2:
        first = chain[0].fingerprint_sha256
        second = chain[1].fingerprint_sha256
        if first == leaf.fingerprint_sha256 and second != first:
            return f'["{first}","{second}"]'
    return fingerprints_json(presented(obs))


_ISO_FORMAT = "%04d-%02d-%02dT%02d:%02d:%02dZ"


def _iso(ts: datetime) -> str:
    """As ``certpilot.domain.x509.iso`` (``2025-01-31T12:00:00Z``), without strftime: this
    runs for every new certificate of a batch."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return _ISO_FORMAT % (
        ts.year,
        ts.month,
        ts.day,
        ts.hour,
        ts.minute,
        ts.second,
    )


def derive_events(
    obs: Observation,
    problems_json: str,
    prior: PriorLocation | None,
    *,
    leaf_is_new: bool,
    old_serial: str | None = None,
) -> list[EventDraft]:
    """The events one observation causes, in a fixed order.

    Order: ``location_added``, ``first_seen``, ``new_certificate``, then ``problem_raised`` and
    ``problem_cleared`` per code, each in severity order.

    * ``prior`` is ``None`` for a location never recorded before: it is added and raises every
      problem it has.
    * ``leaf_is_new``: the leaf's fingerprint was stored nowhere before (the caller also makes
      sure one batch reports a fingerprint once).
    * A certificate change compares the leaf with the last leaf ever seen at the location, not
      with the current one: an endpoint that was down (no certificate) and comes back serving
      the same certificate has not changed certificate.
    * ``old_serial`` is the serial of that last leaf, for the message.
    """
    ref = obs.ref
    leaf = obs.leaf
    fp = leaf.fingerprint_sha256 if leaf is not None else None
    out: list[EventDraft] = []
    if prior is None:
        out.append(
            EventDraft(EventKind.LOCATION_ADDED, ref, fp, detail=f"{obs.source} {obs.target}")
        )
    if leaf is not None and leaf_is_new:
        name = leaf.subject_cn or leaf.subject
        out.append(
            EventDraft(
                EventKind.FIRST_SEEN,
                ref,
                fp,
                detail=f"serial {leaf.serial} {name}, valid until {_iso(leaf.not_after)}",
            )
        )
    if (
        prior is not None
        and leaf is not None
        and prior.last_fingerprint is not None
        and prior.last_fingerprint != fp
    ):
        out.append(
            EventDraft(
                EventKind.NEW_CERTIFICATE,
                ref,
                fp,
                detail=(
                    f"{prior.last_fingerprint} -> {fp} "
                    f"(serial {old_serial or '?'} -> {leaf.serial})"
                ),
            )
        )
    if prior is not None and prior.problems_json == problems_json:
        return out
    if prior is None and not obs.problems:
        return out
    before = parse_codes(prior.problems_json) if prior is not None else []
    messages: dict[ProblemCode, str] = {}
    for p in obs.problems:
        messages.setdefault(p.code, p.message)
    now_codes = sorted(messages, key=lambda c: (severity_rank(c), c.value))
    before_set = set(before)
    for code in now_codes:
        if code not in before_set:
            out.append(EventDraft(EventKind.PROBLEM_RAISED, ref, fp, code, messages[code]))
    for code in sorted(before_set - messages.keys(), key=lambda c: (severity_rank(c), c.value)):
        out.append(EventDraft(EventKind.PROBLEM_CLEARED, ref, fp, code, f"{code.value} cleared"))
    return out
