"""The Certificate Transparency part of ``certpilot demo``: an unexpected issuance caught.

A local RFC 6962 log (:mod:`ctwatch.local_log`, served on 127.0.0.1) holds what a real log
would: thousands of other people's certificates, the demo fleet's own certificates (logged when
they were issued, and the renewals certpilot just made), and two that nobody here ordered: a
precertificate for ``login.demo.certpilot.test`` from a CA the organisation does not use, and
a certificate for ``pay.demo.certpilot.test`` from the organisation's own internal CA but with
a key and serial no system of ours holds (someone used the CA by hand).

certpilot's monitor verifies the log's signed tree head, downloads every entry, hashes them
back to the signed root, matches ``.demo.certpilot.test`` and classifies each match against
the inventory and the remediator's jobs: our certificates are expected, the two others become
``unexpected_issuance`` locations (what the UnexpectedIssuance alert and the bot page on).
Last, the same log rewrites one old entry, and the monitor refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.table import Table
from rich.text import Text

from certpilot.ctwatching import ExpectationCache, IssuanceRecorder, RecordedIssuance
from certpilot.domain.clock import Clock
from certpilot.domain.remedy import IssueRequest
from certpilot.fleet import DOMAIN
from certpilot.localca import LocalCA
from certpilot.obs import Metrics
from certpilot.settings import CTSettings
from certpilot.store import Inventory, JobStore
from ctwatch.local_log import LocalLog, make_precert, serving
from ctwatch.match import Watchlist
from ctwatch.monitor import CTEvent, Match, MemoryState, Monitor, MonitorOptions
from ctwatch.rfc6962_client import RFC6962Log
from remediator.issuers.local_ca import LocalCAIssuer

DER = serialization.Encoding.DER
NOISE = 20_000  # other people's certificates in the log
ROGUE_NAME = f"login.{DOMAIN}"
BY_HAND_NAME = f"pay.{DOMAIN}"


class _DemoLog(LocalLog):
    """The demo's log; once ``rewritten`` is set, it serves that old entry altered (a
    compromised log, or one showing different monitors different trees)."""

    rewritten: int | None = None

    def _serve_leaf(self, index: int, leaf: bytes) -> bytes:
        if index != self.rewritten:
            return leaf
        b = bytearray(leaf)
        b[9] ^= 1  # the timestamp's last byte: the entry still parses, its hash changes
        return bytes(b)


def _our_certificates(inventory: Inventory, clock: Clock) -> list[bytes]:
    """DER of the fleet's certificates the inventory holds (served or stored), each once."""
    fps = {
        it.fingerprint_sha256
        for it in inventory.items(now=clock.now())
        if it.source in {"tls", "file"} and it.fingerprint_sha256 and DOMAIN in it.target
    }
    ders = inventory.certificates_der(sorted(f for f in fps if f))
    out = []
    for der in ders.values():
        cert = x509.load_der_x509_certificate(der)
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                continue
        except x509.ExtensionNotFound:
            pass
        out.append(der)
    return out


async def _fill(log: LocalLog, inventory: Inventory, issuer: LocalCAIssuer, clock: Clock) -> int:
    now = clock.now()
    public = LocalCA("Public Web CA", now)
    pool = [public.issue([f"www.site{i}.example"], now).cert.public_bytes(DER) for i in range(64)]
    chain = [public.issuer_cert.public_bytes(DER)]
    ours = _our_certificates(inventory, clock)
    rogue = LocalCA("Rogue CA", now)
    pre = make_precert(
        rogue.issuer_cert, rogue.issuer_key, [ROGUE_NAME], now, now + timedelta(days=90)
    )
    by_hand = await issuer.issue(IssueRequest(names=(BY_HAND_NAME,), validity_days=90))
    by_hand_der = x509.load_pem_x509_certificates(by_hand.chain_pem)[0].public_bytes(DER)
    specials = {
        NOISE // 3: lambda: log.add_precert(
            pre.public_bytes(DER), rogue.issuer_cert.public_bytes(DER)
        ),
        2 * NOISE // 3: lambda: log.add_x509(by_hand_der),
    }
    mine = iter(ours)
    step = max(1, NOISE // (len(ours) + 1))
    for i in range(NOISE):
        if i in specials:
            specials[i]()
        if i % step == step // 2:
            der = next(mine, None)
            if der is not None:
                log.add_x509(der)
        log.add_x509(pool[i % len(pool)], chain)
    for der in mine:
        log.add_x509(der)
    log.publish()
    return len(ours)


def _verdict_table(recorded: Sequence[RecordedIssuance], matches: Sequence[Match]) -> Table:
    by_index = {m.index: m for m in matches}
    t = Table(title="watched names seen in the log", title_justify="left")
    for col in ("entry", "type", "names", "issuer", "verdict", "why"):
        t.add_column(col)
    for r in sorted(recorded, key=lambda r: r.index or 0):
        m = by_index.get(r.index or -1)
        style = {True: "green", False: "bold red", None: "yellow"}[r.verdict.expected]
        word = {True: "expected", False: "UNEXPECTED", None: "pending"}[r.verdict.expected]
        t.add_row(
            str(r.index),
            m.entry.entry_type if m else "",
            ", ".join(r.names[:2]),
            r.verdict.issuer_cn or r.verdict.issuer,
            Text(word, style=style),
            r.verdict.reason,
        )
    return t


async def ct_section(
    inventory: Inventory,
    jobs: JobStore | None,
    issuer: LocalCAIssuer,
    metrics: Metrics,
    clock: Clock,
    console: Console,
) -> int:
    """Run the section; returns how many things did not come out as designed (0 is right)."""
    log = _DemoLog(description="certpilot demo log", batch_limit=1000)
    ours = await _fill(log, inventory, issuer, clock)
    size = log.sth.tree_size
    console.print(
        f"A local RFC 6962 log holds {size:,} entries: {NOISE:,} certificates of other sites, "
        f"{ours} of the fleet's own (as their CA logged them), a precertificate for "
        f"{ROGUE_NAME} from a CA you never use, and a certificate for {BY_HAND_NAME} from your "
        "own internal CA that no system of yours holds. The monitor watches "
        f".{DOMAIN} and checks everything it reads:"
    )
    ct = CTSettings()
    cache = ExpectationCache(inventory, jobs, ct, clock)
    recorder = IssuanceRecorder(inventory, clock, ct, metrics=metrics)
    recorded: list[RecordedIssuance] = []
    found: list[Match] = []
    events: list[CTEvent] = []

    async def on_matches(matches: Sequence[Match]) -> None:
        found.extend(matches)
        recorded.extend(recorder.record_matches(matches, cache.refresh()))

    watch = Watchlist.from_patterns([f".{DOMAIN}"])
    wrong = 0
    async with serving(log) as url:
        source = RFC6962Log(url, log.public_key_der)
        monitor = Monitor(
            source,
            watchlist=lambda: watch,
            emit=events.append,
            state=MemoryState(),
            clock=clock,
            options=MonitorOptions(batch_size=1000, concurrency=4, window=8000),
            on_matches=on_matches,
        )
        started = time.perf_counter()
        result = await monitor.step()
        took = time.perf_counter() - started
        await source.aclose()
        console.print(
            Text.assemble(
                ("  ✓ ", "green"),
                f"tree head signature verified ({size:,} entries); "
                f"{result.processed:,} entries downloaded, parsed and hashed back to the signed "
                f"root in {took:.1f}s ({result.processed / max(took, 1e-9):,.0f} entries/s); "
                f"{len(found)} match .{DOMAIN}",
            )
        )
        console.print(_verdict_table(recorded, found))
        unexpected = sorted(n for r in recorded if r.verdict.expected is False for n in r.names)
        if not result.ok or unexpected != sorted([BY_HAND_NAME, ROGUE_NAME]):
            wrong += 1
            console.print(Text(f"expected exactly two unexpected issuances: {unexpected}", "red"))

        # The log now serves entry 1234 altered. A monitor reading it (a fresh one: it has no
        # state to compare with) still checks the entries against the signed root.
        log.rewritten = 1234
        refused: list[CTEvent] = []
        fresh = RFC6962Log(url, log.public_key_der)
        again = Monitor(
            fresh,
            watchlist=lambda: watch,
            emit=lambda e: refused.append(e) if e.kind == "inconsistent" else None,
            state=MemoryState(),
            clock=clock,
            options=MonitorOptions(batch_size=1000, concurrency=4, window=8000),
        )
        second = await again.step()
        await fresh.aclose()
        if second.ok or not refused:
            wrong += 1
            console.print(Text("a rewritten entry was not detected", style="bold red"))
        else:
            console.print(
                Text.assemble(
                    ("  ✓ ", "green"),
                    "then the log rewrote entry 1,234: the monitor refused the window holding "
                    f"it ({refused[0].fields.get('error')}), stored nothing from it, and "
                    "reports the log (certpilot_ct_verification_failures_total).",
                )
            )

    console.print(
        "Each unexpected one is now an inventory location with the unexpected_issuance problem "
        "(certpilot inventory --source ct), the UnexpectedIssuance alert's series, a bad "
        "expected_issuance SLI event, and a page:"
    )
    return wrong


__all__ = ["ct_section"]
