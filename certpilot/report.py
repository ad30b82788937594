"""Terminal output with rich: tables a person reads at a glance, grouped by problem."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from rich.console import Console
from rich.table import Table
from rich.text import Text

from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import Observation
from certpilot.domain.problems import REACHABILITY_CODES, ProblemCode, severity_rank


class SLOStatusView(Protocol):
    """What the SLO table needs of ``slo.engine.SLOStatus`` (certpilot core does not import
    the slo room)."""

    @property
    def budget_remaining_ratio(self) -> float | None: ...

    @property
    def firing_severity(self) -> str | None: ...

    def to_dict(self) -> dict[str, object]: ...


_STYLE = {
    ProblemCode.EXPIRED: "bold red",
    ProblemCode.REVOKED: "bold red",
    ProblemCode.NOT_YET_VALID: "red",
    ProblemCode.EXPIRING: "yellow",
    ProblemCode.CHAIN_EXPIRING: "yellow",
    ProblemCode.WEAK_KEY: "magenta",
    ProblemCode.WEAK_SIGNATURE: "magenta",
}


def _code_text(codes: Sequence[ProblemCode]) -> Text:
    if not codes:
        return Text("ok", style="green")
    t = Text()
    for i, c in enumerate(sorted(codes, key=severity_rank)):
        if i:
            t.append(", ")
        style = _STYLE.get(c, "cyan" if c in REACHABILITY_CODES else "red")
        t.append(c.value, style=style)
    return t


def _days(days: float | None) -> Text:
    if days is None:
        return Text("-", style="dim")
    style = "red" if days < 0 else "yellow" if days < 30 else ""
    return Text(f"{days:.1f}", style=style)


def _sort_key(o: Observation) -> tuple[int, str]:
    worst = o.worst
    return (severity_rank(worst) if worst else 999, o.target)


def _where(o: Observation) -> str:
    return o.target if o.source == "tls" else o.ref.removeprefix("file://")


def scan_table(observations: Sequence[Observation], title: str | None = None) -> Table:
    """One row per scanned item, worst first."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("target", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("days left", justify="right", no_wrap=True)
    table.add_column("subject", overflow="fold", ratio=1)
    table.add_column("issuer", overflow="fold", ratio=1)
    table.add_column("key", no_wrap=True)
    table.add_column("tls", no_wrap=True)
    for o in sorted(observations, key=_sort_key):
        leaf = o.leaf
        table.add_row(
            _where(o),
            _code_text(o.codes),
            _days(leaf.days_left(o.observed_at) if leaf else None),
            (leaf.subject_cn or leaf.subject) if leaf else Text(o.error or "", style="dim"),
            leaf.issuer_cn if leaf else "",
            f"{leaf.key_type}-{leaf.key_bits}" if leaf else "",
            (o.tls_version or "").replace("TLSv", "") if o.source == "tls" else o.source,
        )
    return table


def grouped_report(observations: Sequence[Observation], console: Console) -> None:
    """Print one block per problem code, most urgent first, then the healthy ones."""
    groups: dict[ProblemCode, list[Observation]] = defaultdict(list)
    healthy: list[Observation] = []
    for o in observations:
        if not o.problems:
            healthy.append(o)
        for p in o.problems:
            groups[p.code].append(o)
    total = len(observations)
    bad = total - len(healthy)
    summary = Text()
    summary.append(f"{total} scanned: ", style="bold")
    summary.append(f"{len(healthy)} healthy", style="green")
    summary.append(", ")
    summary.append(f"{bad} with problems", style="red" if bad else "green")
    console.print(summary)
    for code in sorted(groups, key=severity_rank):
        items = groups[code]
        console.print()
        console.print(Text(f"{code.value}  ({len(items)})", style=_STYLE.get(code, "bold cyan")))
        for o in items:
            msg = next(p.message for p in o.problems if p.code == code)
            console.print(Text.assemble(("  • ", "dim"), (_where(o), "bold"), "  ", msg))
    if healthy:
        console.print()
        console.print(Text(f"healthy  ({len(healthy)})", style="bold green"))
        for o in healthy:
            left = o.leaf.days_left(o.observed_at) if o.leaf else 0.0
            console.print(
                Text.assemble(("  • ", "dim"), (_where(o), "bold"), f"  {left:.0f} days left")
            )


def inventory_table(items: Sequence[InventoryItem], now: datetime) -> Table:
    table = Table(title_justify="left")
    table.add_column("location", no_wrap=True)
    table.add_column("problems", no_wrap=True)
    table.add_column("days left", justify="right", no_wrap=True)
    table.add_column("not after", no_wrap=True)
    table.add_column("subject", overflow="fold")
    table.add_column("issuer", overflow="fold")
    table.add_column("serial", overflow="fold")
    for it in items:
        table.add_row(
            it.ref,
            _code_text(it.problems),
            _days(it.days_left(now)),
            it.not_after.strftime("%Y-%m-%d %H:%M") if it.not_after else "-",
            it.subject_cn or it.subject or Text(it.error or "", style="dim"),
            it.issuer_cn or "",
            (it.serial or "")[:20],
        )
    return table


def _pct(x: float | None, digits: int = 2) -> Text:
    if x is None or x != x:  # None or NaN: no data in the window
        return Text("-", style="dim")
    return Text(f"{x * 100:.{digits}f}%")


def _burn(x: float | None, page: float = 14.4, ticket: float = 1.0) -> Text:
    if x is None or x != x:
        return Text("-", style="dim")
    style = "bold red" if x >= page else "yellow" if x >= ticket else "green"
    return Text(f"{x:.1f}x", style=style)


def slo_table(statuses: Sequence[SLOStatusView]) -> Table:
    """One row per SLO: objective, error ratio, burn rates, budget left, what fires."""
    table = Table(title_justify="left")
    table.add_column("SLO", no_wrap=True)
    table.add_column("objective", justify="right", no_wrap=True)
    table.add_column("events", justify="right", no_wrap=True)
    table.add_column("error 5m", justify="right", no_wrap=True)
    table.add_column("burn 5m", justify="right", no_wrap=True)
    table.add_column("burn 1h", justify="right", no_wrap=True)
    table.add_column("burn 6h", justify="right", no_wrap=True)
    table.add_column("budget left", justify="right", no_wrap=True)
    table.add_column("alert", no_wrap=True)
    for st in statuses:
        d = st.to_dict()
        raw = d["windows"]
        windows: dict[str, dict[str, object]] = (
            {str(w["window"]): w for w in raw} if isinstance(raw, list) else {}
        )

        def get(w: str, key: str, windows: dict[str, dict[str, object]] = windows) -> float | None:
            v = windows.get(w, {}).get(key)
            return float(v) if isinstance(v, int | float) else None

        firing = st.firing_severity
        table.add_row(
            str(d["slo"]),
            f"{d['objective']:g}%",
            f"{d['events_in_period']:.0f}" if d["events_in_period"] is not None else "0",
            _pct(get("5m", "error_ratio")),
            _burn(get("5m", "burn_rate")),
            _burn(get("1h", "burn_rate")),
            _burn(get("6h", "burn_rate")),
            _pct(st.budget_remaining_ratio, 1),
            Text(firing, style="bold red" if firing == "page" else "yellow")
            if firing
            else Text("ok", style="green"),
        )
    return table
