"""Where the bot's signals come from: the inventory, the SLO engine, Alertmanager.

Pure conversions into :class:`bot.model.Signal` (plus JSON round trips for the store):

* :func:`inventory_signals`: one signal per (location, problem) that the inventory holds now,
  a *snapshot*: a stored firing signal missing from the next snapshot has resolved.
* :func:`slo_signals`: one per SLO whose multi-window burn-rate alert holds (snapshot too).
* :func:`alert_signal`: one per Alertmanager alert (an *event*: it says firing or resolved).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.model import PAGING, Severity, Signal, SignalSource
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.x509 import iso

RUNBOOKS = "https://github.com/certpilot/certpilot/blob/main/docs/runbooks.md#"
#: Runbook anchor per problem code (docs/runbooks.md).
RUNBOOK_OF: Mapping[str, str] = {
    "expired": "expired",
    "expiring": "expiring",
    "not_yet_valid": "chain-problems",
    "self_signed": "chain-problems",
    "untrusted_root": "chain-problems",
    "incomplete_chain": "chain-problems",
    "hostname_mismatch": "chain-problems",
    "chain_expiring": "chain-problems",
    "not_deployed": "not-deployed",
    "unexpected_issuance": "unexpected-issuance",
    "slo_burn": "error-budget-burn",
}

SUMMARY: Mapping[str, str] = {
    "expired": "expired certificate",
    "expiring": "certificate due for renewal",
    "not_yet_valid": "certificate not valid yet",
    "self_signed": "self-signed certificate",
    "untrusted_root": "untrusted root",
    "incomplete_chain": "incomplete chain",
    "hostname_mismatch": "name does not match",
    "weak_key": "weak key",
    "weak_signature": "weak signature",
    "revoked": "revoked certificate",
    "chain_expiring": "intermediate expires first",
    "connection_refused": "connection refused",
    "timeout": "timed out",
    "dns_error": "name does not resolve",
    "tls_error": "TLS handshake failed",
    "not_deployed": "renewed but not deployed",
    "unexpected_issuance": "unexpected issuance",
}


def _fp(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _host(ref: str, target: str) -> str:
    if ref.startswith("tls://"):
        hostport = ref.removeprefix("tls://").partition("#")[0]
        return hostport.rsplit(":", 1)[0].strip("[]")
    return target


def inventory_signals(items: Iterable[InventoryItem], now: datetime) -> list[Signal]:
    """A firing signal per current problem of every location. ``expiring`` pages when fewer
    than 7 days are left, else tickets; see :data:`bot.model.PAGING` for the rest."""
    out: list[Signal] = []
    for it in items:
        for code in it.problems:
            kind = code.value
            days = it.days_left(now)
            urgent = kind in PAGING or (kind == "expiring" and days is not None and days < 7)
            labels = {
                "ref": it.ref,
                "target": it.target,
                "source": it.source,
                "host": _host(it.ref, it.target),
                **{k: v for k, v in it.labels.items() if k in {"owner", "env", "team"}},
            }
            if it.issuer_cn:
                labels["issuer_CN"] = it.issuer_cn
            if it.fingerprint_sha256:
                labels["fingerprint"] = it.fingerprint_sha256
            if it.serial:
                labels["serial"] = it.serial
            if it.not_after is not None:
                labels["not_after"] = iso(it.not_after.astimezone(UTC))
            out.append(
                Signal(
                    source=SignalSource.INVENTORY,
                    fingerprint=_fp("inventory", it.ref, kind),
                    kind=kind,
                    subject=it.ref,
                    status="firing",
                    severity=Severity.PAGE if urgent else Severity.TICKET,
                    since=it.first_seen if kind not in {"expiring", "expired"} else now,
                    summary=f"{SUMMARY.get(kind, kind)} at {it.target}",
                    labels=labels,
                    runbook_url=RUNBOOKS + RUNBOOK_OF.get(kind, "symptom-alerts"),
                )
            )
    return out


def slo_signals(statuses: Iterable[Any], now: datetime) -> list[Signal]:
    """A signal per SLO burning its error budget too fast (``SLOStatus.firing_severity``)."""
    out: list[Signal] = []
    for st in statuses:
        sev = st.firing_severity
        if not sev:
            continue
        name = st.slo.name
        out.append(
            Signal(
                source=SignalSource.SLO,
                fingerprint=_fp("slo", name),
                kind="slo_burn",
                subject=name,
                status="firing",
                severity=Severity.PAGE if sev == "page" else Severity.TICKET,
                since=now,
                summary=f"SLO {name} burns its error budget too fast ({sev})",
                labels={"slo": name, "owner": "certpilot", "source": "slo"},
                runbook_url=RUNBOOKS + RUNBOOK_OF["slo_burn"],
            )
        )
    return out


def alert_signal(
    *,
    fingerprint: str,
    status: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    starts_at: datetime,
    ends_at: datetime | None,
) -> Signal:
    """One Alertmanager alert. Its ``ref`` label (certpilot's alerts carry one) lets it group
    with the inventory's signals for the same place."""
    sev = labels.get("severity", "ticket")
    name = labels.get("alertname", "alert")
    ref = labels.get("ref", "")
    keep = dict(labels)
    if ref and "host" not in keep:
        keep["host"] = _host(ref, labels.get("target", ""))
    return Signal(
        source=SignalSource.ALERTMANAGER,
        fingerprint=f"am:{fingerprint}",
        kind=name,
        subject=ref or labels.get("target", "") or labels.get("instance", "") or name,
        status="resolved" if status == "resolved" else "firing",
        severity=Severity.PAGE if sev == "page" else Severity.TICKET,
        since=(ends_at if status == "resolved" and ends_at else starts_at),
        summary=annotations.get("summary", name),
        labels=keep,
        runbook_url=annotations.get("runbook_url", ""),
    )


def to_json(signal: Signal) -> dict[str, Any]:
    return {
        "source": signal.source.value,
        "fingerprint": signal.fingerprint,
        "kind": signal.kind,
        "subject": signal.subject,
        "status": signal.status,
        "severity": signal.severity.value,
        "since": iso(signal.since.astimezone(UTC)),
        "summary": signal.summary,
        "labels": dict(signal.labels),
        "runbook_url": signal.runbook_url,
    }


def from_json(data: Mapping[str, Any]) -> Signal:
    return Signal(
        source=SignalSource(data["source"]),
        fingerprint=str(data["fingerprint"]),
        kind=str(data["kind"]),
        subject=str(data["subject"]),
        status=str(data["status"]),
        severity=Severity(data["severity"]),
        since=datetime.fromisoformat(str(data["since"]).replace("Z", "+00:00")),
        summary=str(data.get("summary", "")),
        labels={str(k): str(v) for k, v in dict(data.get("labels") or {}).items()},
        runbook_url=str(data.get("runbook_url", "")),
    )


def merge(
    stored: Sequence[Signal],
    snapshots: Mapping[SignalSource, Sequence[Signal]],
    events: Sequence[Signal],
    now: datetime,
) -> list[Signal]:
    """The current state of every signal: stored ones, updated by fresh ``snapshots`` (a
    stored firing signal of a snapshot source missing from its snapshot has resolved at
    ``now``) and by ``events`` (Alertmanager's firing/resolved)."""
    by_fp: dict[str, Signal] = {s.fingerprint: s for s in stored}
    for source, fresh in snapshots.items():
        seen = {s.fingerprint for s in fresh}
        for fp, s in list(by_fp.items()):
            if s.source == source and s.firing and fp not in seen:
                by_fp[fp] = s.resolved(now)
        for s in fresh:
            have = by_fp.get(s.fingerprint)
            # Keep the first "since" of a signal that keeps firing.
            by_fp[s.fingerprint] = (
                s if have is None or not have.firing else _keep_since(s, have.since)
            )
    for s in events:
        by_fp[s.fingerprint] = s
    return list(by_fp.values())


def _keep_since(s: Signal, since: datetime) -> Signal:
    from dataclasses import replace

    return replace(s, since=since)


__all__ = [
    "alert_signal",
    "from_json",
    "inventory_signals",
    "merge",
    "slo_signals",
    "to_json",
]
