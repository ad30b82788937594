"""The audit log as a hash chain: what every decision and action looks like, and how to check it.

Every decision and action of certpilot (a policy decision, an approval, a renewal, a job state
change) becomes one :class:`AuditEntry`: who or what asked (``actor``), what (``action``), on
what (``subject``), which policy rule allowed or denied it (``rule``), the serial or state
before and after, and the ``result``. Entries are numbered ``seq`` = 1, 2, 3, ... without gaps,
and each one is sealed with the hash of the one before it::

    hash(n) = sha256( prev_hash(n) || canonical(entry n without its hash) )    (hex)
    prev_hash(1) = "000...0" (64 zeros), prev_hash(n) = hash(n - 1)

``canonical`` is compact JSON (sorted keys, no whitespace, UTF-8, ``at`` as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``), see :func:`canonical_bytes`. This is the classic
hash-chained log (Schneier and Kelsey, "Secure Audit Logs to Support Computer Forensics", 1999)
without its MAC keys, hence the limits below.

What :func:`verify_chain` detects, reading the chain alone:

* an entry edited in place (any field, ``seq`` included: moving rows around is an edit): its
  hash no longer matches its content;
* an entry deleted from the middle, or the first one: ``seq`` jumps;
* an entry replaced by one with a recomputed hash: the next entry's ``prev_hash`` no longer
  links to it;
* a row that no longer decodes as an entry (see :class:`UnreadableEntry`).

What it cannot detect, and why (read this before relying on it):

* **Removing the newest entries.** A chain cut after entry 17 is a perfectly valid chain of 17
  entries. Only an anchor kept somewhere else catches this: pass the head recorded elsewhere
  (a log line, a ticket, another database, the last ``certpilot audit verify`` output) as
  ``expected_head=(seq, hash)`` and a chain that ends before it, or holds a different entry at
  that ``seq``, fails.
* **Rewriting the chain.** There is no secret in the hash, so whoever can write the database can
  edit entry 17 and recompute the hashes of 17 and of every later entry: the result is a valid
  chain. The same anchor catches it as long as the anchor predates the rewrite and is out of the
  writer's reach (the entry at the anchored ``seq`` then has a different hash). The chain makes
  tampering *evident to someone holding an earlier head*; it does not make it impossible.

Everything here is pure: no I/O, no clock reads (``at`` is passed in by the caller).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

#: ``prev_hash`` of entry 1.
GENESIS_HASH = "0" * 64

#: The shortest hash prefix accepted as an anchor (what ``certpilot audit verify`` prints).
MIN_ANCHOR_HEX = 16

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

# Detail keys and values that look like credentials are refused: the audit log is read by
# people who must not see them, and it is append-only, so a leaked secret could never be
# removed without breaking the chain.
_SECRET_KEY = re.compile(
    r"secret|token|passw(or)?d|passphrase|private[_-]?key|api[_-]?key|authorization|cookie|"
    r"credential",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(r"PRIVATE KEY-----|^Bearer\s|^Basic\s", re.IGNORECASE)

# One encoder, built once (json.dumps with options builds one per call).
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


class AuditAction(StrEnum):
    """Common actions. ``action`` is free text; these are the values certpilot itself writes."""

    RENEW = "renew"
    REDEPLOY = "redeploy"
    REVOKE = "revoke"
    APPROVE = "approve"
    DENY = "deny"
    POLICY_DECISION = "policy_decision"
    JOB_STATE = "job_state"


class AuditResult(StrEnum):
    """Common results. ``result`` is free text; these are the values certpilot itself writes."""

    ALLOWED = "allowed"
    DENIED = "denied"
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"


class ChainHead(NamedTuple):
    """The newest entry of a chain, as an anchor: its ``seq`` and ``hash``."""

    seq: int
    hash: str


def _text(name: str, value: object, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; refusing it everywhere keeps both stores equal.
        raise ValueError(f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text ({e.reason})") from None
    return value


def _aware_utc(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _detail(value: object, *, check_secrets: bool) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"detail must be a mapping of str to str, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"detail must map str to str, got {k!r}: {v!r}")
        _text(f"detail key {k!r}", k)
        _text(f"detail[{k!r}]", v)
        if check_secrets and (_SECRET_KEY.search(k) or _SECRET_VALUE.search(v)):
            raise ValueError(
                f"detail[{k!r}] looks like a credential; the audit log must never hold "
                "keys, tokens or passwords"
            )
        out[k] = v
    return MappingProxyType(out)


def _hash_hex(name: str, value: object) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits, got {value!r}")
    return value


def format_at(at: datetime) -> str:
    """``at`` as the chain encodes it, in UTC with microseconds and ``Z``:
    ``2025-06-01T12:00:00.000000Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_at(text: str) -> datetime:
    """The inverse of :func:`format_at` (any ISO 8601 with an offset is accepted)."""
    parsed = datetime.fromisoformat(text)
    return _aware_utc("at", parsed)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditDraft:
    """An entry before it is sealed into the chain: what the caller knows.

    ``at`` must be timezone-aware (it is stored in UTC). ``actor``, ``action`` and ``result``
    must not be empty; the other texts may be.

    ``detail`` is a flat mapping of short strings for context (job id, issuer, reason, approver
    group). **Never put secrets there**: no private keys, tokens, passwords, webhook or EAB
    credentials. Entries can never be removed without breaking the chain, so a secret written
    once stays readable to every auditor forever. Keys that look like credentials (``token``,
    ``password``, ``private_key``, ...) and PEM private keys are refused with ``ValueError``,
    but that is a last guard, not a filter to rely on.

    Invalid values raise ``ValueError`` here, at the caller's line, not later in the store.
    """

    at: datetime
    actor: str
    action: str
    subject: str
    result: str
    rule: str = ""
    before: str = ""
    after: str = ""
    detail: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, compare=True
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _aware_utc("at", self.at))
        _text("actor", self.actor, required=True)
        _text("action", self.action, required=True)
        _text("subject", self.subject)
        _text("result", self.result, required=True)
        _text("rule", self.rule)
        _text("before", self.before)
        _text("after", self.after)
        object.__setattr__(self, "detail", _detail(self.detail, check_secrets=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One sealed entry of the chain. Build them with :func:`seal`; read them from the store.

    Constructing one checks types and formats (``ValueError``) but not the hash: that is
    :func:`verify_chain`'s job, so a tampered entry can still be represented and reported.
    """

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    rule: str
    before: str
    after: str
    result: str
    detail: Mapping[str, str] = field(hash=False)
    prev_hash: str
    hash: str

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise ValueError(f"seq must be an integer of at least 1, got {self.seq!r}")
        object.__setattr__(self, "at", _aware_utc("at", self.at))
        for name in ("actor", "action", "subject", "rule", "before", "after", "result"):
            _text(name, getattr(self, name))
        # Stored entries are taken as they are: the secret guard is the draft's.
        object.__setattr__(self, "detail", _detail(self.detail, check_secrets=False))
        _hash_hex("prev_hash", self.prev_hash)
        _hash_hex("hash", self.hash)

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash)

    def computed_hash(self) -> str:
        """The hash this entry's content and ``prev_hash`` call for (equal to ``hash`` when the
        entry is intact)."""
        return chain_hash(self.prev_hash, canonical_bytes(self))

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data; :meth:`from_dict` reads it back (exports stay
        verifiable)."""
        return {
            "seq": self.seq,
            "at": format_at(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "rule": self.rule,
            "before": self.before,
            "after": self.after,
            "result": self.result,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        """An entry from :meth:`to_dict`'s form; ``ValueError`` when fields are missing or bad."""
        try:
            at = data["at"]
            return cls(
                seq=data["seq"],
                at=parse_at(at) if isinstance(at, str) else at,
                actor=data["actor"],
                action=data["action"],
                subject=data["subject"],
                rule=data["rule"],
                before=data["before"],
                after=data["after"],
                result=data["result"],
                detail=data["detail"],
                prev_hash=data["prev_hash"],
                hash=data["hash"],
            )
        except KeyError as e:
            raise ValueError(f"audit entry is missing the field {e.args[0]!r}") from None


@dataclass(frozen=True, slots=True)
class UnreadableEntry:
    """A stored row at ``seq`` that does not decode as an entry (a field of the wrong type, a
    timestamp that is not one): the store hands it to :func:`verify_chain`, which reports it."""

    seq: int
    reason: str


def canonical_bytes(entry: AuditEntry) -> bytes:
    """The canonical encoding of ``entry`` without its ``hash``: what the hash covers.

    Compact JSON, keys sorted, no whitespace, non-ASCII kept as UTF-8, ``at`` in UTC with
    microseconds and ``Z``. ``prev_hash`` is inside as well as prefixed (see the module
    docstring), so an entry's JSON alone says where it belongs.
    """
    body = {
        "seq": entry.seq,
        "at": format_at(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "rule": entry.rule,
        "before": entry.before,
        "after": entry.after,
        "result": entry.result,
        "detail": dict(entry.detail),
        "prev_hash": entry.prev_hash,
    }
    return _ENCODER.encode(body).encode("utf-8")


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """``sha256(prev_hash || canonical)`` in lowercase hex; ``prev_hash`` as its ASCII hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()


def seal(draft: AuditDraft, prev: AuditEntry | ChainHead | None, seq: int) -> AuditEntry:
    """Seal ``draft`` as entry ``seq`` of the chain whose newest entry is ``prev``.

    ``prev`` is ``None`` for the first entry (``seq`` must then be 1 and ``prev_hash`` is
    :data:`GENESIS_HASH`); otherwise ``seq`` must be ``prev.seq + 1``. Raises ``ValueError``
    when it is not, or when ``prev``'s hash is not a hash.
    """
    if prev is None:
        if seq != 1:
            raise ValueError(f"the first entry of a chain has seq 1, not {seq}")
        prev_hash = GENESIS_HASH
    else:
        prev_seq, prev_hash = (prev.seq, prev.hash)
        _hash_hex(f"hash of entry {prev_seq}", prev_hash)
        if seq != prev_seq + 1:
            raise ValueError(f"entry {seq} cannot follow entry {prev_seq}")
    # Built once with a placeholder hash (the hash covers everything but itself), then sealed.
    unsealed = AuditEntry(
        seq=seq,
        at=draft.at,
        actor=draft.actor,
        action=draft.action,
        subject=draft.subject,
        rule=draft.rule,
        before=draft.before,
        after=draft.after,
        result=draft.result,
        detail=draft.detail,
        prev_hash=prev_hash,
        hash=GENESIS_HASH,
    )
    return replace(unsealed, hash=unsealed.computed_hash())


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """What :func:`verify_chain` found.

    ``count`` is the number of entries that verified (all of them when ``ok``); ``head`` the
    last of those (``None`` when none did). When not ``ok``, ``first_bad_seq`` names the first
    entry that is wrong or missing and ``reason`` says why in one sentence.
    """

    ok: bool
    count: int
    head: ChainHead | None
    first_bad_seq: int | None = None
    reason: str = ""

    def one_line(self) -> str:
        """``audit chain ok: 50 entries, head 50 1a2b3c4d5e6f7a8b`` or the first fault."""
        if self.ok:
            if self.head is None:
                return "audit chain ok: 0 entries (the log is empty)"
            noun = "entry" if self.count == 1 else "entries"
            return (
                f"audit chain ok: {self.count} {noun}, "
                f"head {self.head.seq} {self.head.hash[:MIN_ANCHOR_HEX]}"
            )
        return f"audit chain broken at entry {self.first_bad_seq}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "count": self.count,
            "head": {"seq": self.head.seq, "hash": self.head.hash} if self.head else None,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def anchor(expected_head: tuple[int, str]) -> ChainHead:
    """Check an ``expected_head`` and return it as a :class:`ChainHead`.

    ``hash`` may be shortened to a prefix of at least :data:`MIN_ANCHOR_HEX` hex digits (what
    ``certpilot audit verify`` prints); uppercase is accepted. Raises ``ValueError``.
    """
    seq, digest = expected_head
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"the expected head's seq must be an integer of at least 1, got {seq!r}")
    if not isinstance(digest, str):
        raise ValueError(f"the expected head's hash must be hex text, got {digest!r}")
    digest = digest.strip().lower()
    if not _HEX.fullmatch(digest) or not MIN_ANCHOR_HEX <= len(digest) <= 64:
        raise ValueError(
            f"the expected head's hash must be {MIN_ANCHOR_HEX} to 64 hex digits, got {digest!r}"
        )
    return ChainHead(seq, digest)


def _missing(prev_seq: int, seq: int) -> str:
    first, last = prev_seq + 1, seq - 1
    which = f"entry {first} is" if first == last else f"entries {first}-{last} are"
    if prev_seq == 0:
        return f"{which} missing (the chain starts at entry {seq})"
    return f"{which} missing (seq jumps {prev_seq} -> {seq})"


def verify_chain(
    entries: Iterable[AuditEntry | UnreadableEntry],
    expected_head: tuple[int, str] | None = None,
) -> AuditVerdict:
    """Check ``entries`` (in ``seq`` order, from entry 1) and return the first fault, if any.

    Streams: entries are read once and not kept. Checks, per entry: ``seq`` follows the
    previous one without a gap; the entry decodes; its hash matches its content; its
    ``prev_hash`` is the previous entry's hash (the genesis hash for entry 1). With
    ``expected_head`` (see :func:`anchor`), the chain must also reach that ``seq`` and hold
    that hash there; a chain that goes on past it is fine (it grew since).

    The module docstring says what no check on the chain alone can detect.
    """
    want = anchor(expected_head) if expected_head is not None else None
    prev = ChainHead(0, GENESIS_HASH)
    count = 0

    def bad(seq: int, reason: str) -> AuditVerdict:
        return AuditVerdict(
            ok=False,
            count=count,
            head=prev if count else None,
            first_bad_seq=seq,
            reason=reason,
        )

    for item in entries:
        seq = item.seq
        if seq <= prev.seq:
            return bad(seq, f"entry {seq} is out of order (it comes after entry {prev.seq})")
        if seq > prev.seq + 1:
            return bad(prev.seq + 1, _missing(prev.seq, seq))
        if isinstance(item, UnreadableEntry):
            return bad(seq, f"entry {seq} was edited (unreadable: {item.reason})")
        if item.computed_hash() != item.hash:
            return bad(seq, f"entry {seq} was edited (hash mismatch)")
        if item.prev_hash != prev.hash:
            if seq == 1:
                return bad(
                    1, "entry 1 does not start the chain (prev_hash is not the genesis hash)"
                )
            return bad(
                seq,
                f"entry {seq} does not link to entry {prev.seq} (prev_hash mismatch: "
                f"entry {prev.seq} or {seq} was replaced)",
            )
        if want is not None and seq == want.seq and not item.hash.startswith(want.hash):
            return bad(
                seq,
                f"entry {seq} is not the expected head (hash {item.hash[:MIN_ANCHOR_HEX]}, "
                f"expected {want.hash[:MIN_ANCHOR_HEX]}): the chain was rewritten",
            )
        prev = item.head
        count += 1
    if want is not None and prev.seq < want.seq:
        if prev.seq == 0:
            reason = f"the chain is empty but the expected head is entry {want.seq}"
        else:
            lost = (
                f"entry {want.seq} was"
                if prev.seq + 1 == want.seq
                else f"entries {prev.seq + 1}-{want.seq} were"
            )
            reason = (
                f"{lost} removed (the chain ends at entry {prev.seq}, "
                f"the expected head is entry {want.seq})"
            )
        return bad(prev.seq + 1, reason)
    return AuditVerdict(ok=True, count=count, head=prev if count else None)
