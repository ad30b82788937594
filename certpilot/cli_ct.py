"""``certpilot ct watch``: verify one Certificate Transparency log and report watched names.

Every check is an event; ``--format json`` prints one JSON object per line (``sth_verified``,
``consistency_verified``, ``entry``, ``inclusion_verified``, ``match``, and the failures
``bad_signature``, ``inconsistent``, ``bad_inclusion``, ``malformed_entry``, plus ``log_error``
when the log cannot be read). The text format prints the checks and matches, with a progress
bar on a terminal. Exit codes: 0 when everything read verified, 1 when a check failed or the
log could not be read, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from certpilot.cli_common import EXIT_OK, EXIT_PROBLEMS, duration_arg, positive_int_arg
from certpilot.cli_common import console as _console
from certpilot.domain.clock import SystemClock
from certpilot.domain.errors import ConfigError, UsageError


def _index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an entry index (0 or more), got {text!r}")
    return int(text)


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    ct = sub.add_parser("ct", help="Certificate Transparency: verify logs, watch your names")
    ctsub = ct.add_subparsers(dest="ct_command", metavar="ACTION", parser_class=parser_class)
    ctsub.required = True
    w = ctsub.add_parser(
        "watch",
        help="verify a CT log (signatures, consistency, entries) and report watched names",
        description="Fetch the log's signed tree head and check its signature; prove it "
        "consistent with --trusted-sth; download the entries (--from-index..--to-index, by "
        "default all), hash them back to the signed root, parse them and match their names "
        "against --watch. With --once, one pass; otherwise keep following the log.",
    )
    w.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    key = w.add_mutually_exclusive_group(required=True)
    key.add_argument("--log-key", metavar="BASE64_SPKI", help="the log's public key (DER, base64)")
    key.add_argument("--log-list", metavar="FILE", help="a v3 log list JSON holding the log")
    w.add_argument(
        "--tiled",
        action="store_true",
        help="a static-ct-api (tiled) log: --log is its monitoring prefix (with --log-key; a "
        "log list says so itself)",
    )
    w.add_argument(
        "--trusted-sth",
        metavar="FILE",
        help="a tree head you trust (JSON as get-sth returns it): the log must be consistent",
    )
    w.add_argument("--from-index", type=_index, metavar="N", help="first entry (default 0)")
    w.add_argument("--to-index", type=_index, metavar="M", help="last entry (default: the end)")
    w.add_argument(
        "--verify-inclusion",
        action="store_true",
        help="also prove each matched entry's inclusion in the tree head",
    )
    w.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="FILE",
        help="watchlist (certspotter's format: example.com, .example.com, *.example.com; "
        "repeatable)",
    )
    w.add_argument("--once", action="store_true", help="one pass, then exit")
    w.add_argument(
        "--interval", type=duration_arg, default=60.0, metavar="SECONDS", help="without --once"
    )
    w.add_argument(
        "--batch-size", type=positive_int_arg, default=256, metavar="N", help="get-entries size"
    )
    w.add_argument(
        "--concurrency", type=positive_int_arg, default=4, metavar="N", help="requests at once"
    )
    w.add_argument("--format", choices=["text", "json"], default="text")

    st = ctsub.add_parser(
        "stream",
        help="follow a certstream-format websocket feed and report watched names (unverified)",
        description="Connect to a certstream server (certstream-server-go's /, /full-stream "
        "or /domains-only, or CaliDog's) and print the entries whose names match --watch. The "
        "feed proves nothing (no signatures, no proofs): use ct watch for verified monitoring. "
        "Reconnects with backoff; stops after --count matches or --seconds, or on Ctrl-C.",
    )
    st.add_argument("--url", required=True, metavar="WS_URL", help="ws:// or wss:// URL")
    st.add_argument("--watch", action="append", default=[], metavar="FILE", help="watchlist")
    st.add_argument("--count", type=positive_int_arg, metavar="N", help="stop after N matches")
    st.add_argument("--seconds", type=duration_arg, metavar="S", help="stop after S seconds")
    st.add_argument(
        "--heartbeat-timeout",
        type=duration_arg,
        default=30.0,
        metavar="S",
        help="reconnect after S seconds without any message (default 30s)",
    )
    st.add_argument("--format", choices=["text", "json"], default="text")


def _log_info(args: argparse.Namespace) -> Any:
    from ctwatch.loglist import LogInfo, load_log_list

    if args.log_key is not None:
        try:
            key = base64.b64decode(args.log_key, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("--log-key", f"not base64: {args.log_key!r}") from None
        return LogInfo(args.log, key, "static" if args.tiled else "rfc6962")
    want = args.log.rstrip("/")
    for info in load_log_list(args.log_list):
        if info.url.rstrip("/") == want:
            return info
    raise ConfigError(args.log_list, "", f"no usable log with URL {args.log} in the list")


def _trusted(path: str, key_der: bytes) -> tuple[Any, str | None]:
    """The trusted head, or the reason it is not one (shown as ``bad_signature``)."""
    from ctwatch.rfc6962 import MalformedSTH, parse_sth_json, verify_sth
    from ctwatch.source import TreeHead

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found", has_value=False) from None
    except (OSError, ValueError) as e:
        raise ConfigError(path, "", f"not a JSON tree head: {e}", has_value=False) from None
    try:
        sth = parse_sth_json(data)
    except MalformedSTH as e:
        raise ConfigError(path, "", f"not a tree head: {e}", has_value=False) from None
    if not verify_sth(sth, key_der):
        return None, f"--trusted-sth {path}: signature does not verify with the log's key"
    return TreeHead(sth.tree_size, sth.root_hash, sth.timestamp_ms, raw=data), None


class _Printer:
    """Events as JSON lines, or as readable lines for a person."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self.failures = 0
        self.errors = 0
        self.matches = 0
        self.console = _console()
        self.progress: Progress | None = None
        from ctwatch.monitor import FAILURES  # the store and ctwatch load when a verb runs

        self.failure_kinds = FAILURES

    def __call__(self, event: Any) -> None:
        if event.kind in self.failure_kinds:
            self.failures += 1
        elif event.kind == "log_error":
            self.errors += 1
        elif event.kind == "match":
            self.matches += 1
        if self.fmt == "json":
            self.out.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
            return
        f = event.fields
        line: str | None = None
        if event.kind == "sth_verified":
            line = f"[green]verified[/] tree head: {f['tree_size']} entries at {f['time']}"
        elif event.kind == "consistency_verified":
            line = f"[green]consistent[/] with the tree head of {f['first']} entries"
        elif event.kind == "match":
            names = ", ".join(f["names"][:4]) + (" ..." if len(f["names"]) > 4 else "")
            line = (
                f"[bold]match[/] entry {f['index']} ({f['entry_type']}): {names}  "
                f"issuer {f['issuer']}, not after {f['not_after'][:10]}, sha256 {f['sha256']}"
            )
        elif event.kind == "inclusion_verified":
            line = f"[green]included[/] entry {f['index']} in the tree of {f['tree_size']}"
        elif event.kind in self.failure_kinds or event.kind == "log_error":
            where = f" entry {f['index']}" if "index" in f else ""
            line = f"[red]{event.kind}[/]{where}: {f.get('error', '')}"
        if line is not None:
            target = self.progress.console if self.progress is not None else self.console
            target.print(line, markup=True, highlight=False, soft_wrap=True)


async def _watch(args: argparse.Namespace) -> int:
    from certpilot.ctwatching import open_source
    from ctwatch.monitor import CTEvent, MemoryState, Monitor, MonitorOptions

    info = _log_info(args)
    watchlist = _watchlist(args.watch)
    printer = _Printer(args.format, sys.stdout)
    trusted = None
    if args.trusted_sth:
        trusted, why = _trusted(args.trusted_sth, info.key_der)
        if why is not None:
            printer(CTEvent("bad_signature", info.url, {"error": why}))
            return EXIT_PROBLEMS
    if (
        args.from_index is not None
        and args.to_index is not None
        and args.to_index < args.from_index
    ):
        raise UsageError("--to-index", f"{args.to_index} is before --from-index {args.from_index}")
    source = open_source(info)
    options = MonitorOptions(
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        window=max(args.batch_size * args.concurrency, 4096),
        verify_inclusion=args.verify_inclusion,
        start="beginning",
        from_index=args.from_index,
        to_index=args.to_index,
        emit_entries=args.format == "json",
    )
    show_progress = args.format == "text" and sys.stderr.isatty()
    progress = (
        Progress(
            TextColumn("entries"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(stderr=True),
            transient=True,
        )
        if show_progress
        else None
    )
    task = progress.add_task("entries", total=None) if progress is not None else None

    def on_progress(done: int, total: int) -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=done, total=total)

    monitor = Monitor(
        source,
        watchlist=lambda: watchlist,
        emit=printer,
        state=MemoryState(),
        clock=SystemClock(),
        options=options,
        trusted=trusted,
        progress=on_progress,
    )
    printer.progress = progress
    read = 0
    try:
        with progress if progress is not None else contextlib.nullcontext():
            if args.once:
                result = await monitor.step()
                read = result.processed
            else:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.add_signal_handler(sig, stop.set)
                await monitor.run(interval=args.interval, stop=stop)
                read = monitor.status.entries
    finally:
        await source.aclose()
        sys.stdout.flush()
    if args.format == "text":
        verdict = (
            "[green]all checks passed[/]"
            if not printer.failures and not printer.errors
            else f"[red]{printer.failures + printer.errors} failed[/]"
        )
        _console(stderr=True).print(
            f"{info.url}: {read} entries read, {printer.matches} matches; {verdict}",
            markup=True,
            highlight=False,
        )
    return EXIT_PROBLEMS if printer.failures or printer.errors else EXIT_OK


def _watchlist(paths: list[str]) -> Any:
    from certpilot.ctwatching import WatchlistFile
    from ctwatch.match import Watchlist

    lists = [WatchlistFile(path=p)() for p in paths]
    if len(lists) == 1:
        return lists[0]
    return Watchlist.from_patterns([p for w in lists for p in w.patterns()])


async def _stream(args: argparse.Namespace) -> int:
    from ctwatch.certstream import CertstreamClient, FeedEntry

    if not args.url.startswith(("ws://", "wss://")):
        raise UsageError("--url", f"expected a ws:// or wss:// URL, got {args.url!r}")
    watchlist = _watchlist(args.watch)
    console = _console()
    err = _console(stderr=True)
    matches = 0

    def on_event(kind: str, detail: str) -> None:
        if args.format == "json":
            print(json.dumps({"event": kind, "url": args.url, "detail": detail}), flush=True)
        else:
            err.print(f"[dim]{kind}[/]: {detail}", markup=True, highlight=False)

    client = CertstreamClient(args.url, heartbeat_timeout=args.heartbeat_timeout, on_event=on_event)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if args.seconds is not None:
        loop.call_later(args.seconds, stop.set)
    stream = client.messages()
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
                break
            msg = nxt.result()
            if not isinstance(msg, FeedEntry):
                continue
            hits = watchlist.match_any(msg.names)
            if not hits:
                continue
            matches += 1
            event = {
                "event": "match",
                "source": "certstream",
                "log": msg.log_url,
                "index": msg.index,
                "entry_type": msg.entry_type,
                "sha256": msg.sha256,
                "names": list(msg.names),
                "matched": sorted({p for _n, p in hits}),
                "issuer": msg.issuer,
                "serial": msg.serial,
                "not_after": msg.not_after.isoformat().replace("+00:00", "Z")
                if msg.not_after
                else None,
            }
            if args.format == "json":
                print(json.dumps(event, separators=(",", ":")), flush=True)
            else:
                console.print(
                    f"[bold]match[/] {', '.join(msg.names[:4])}  issuer {msg.issuer}  "
                    f"({msg.log_url} #{msg.index}, unverified)",
                    markup=True,
                    highlight=False,
                    soft_wrap=True,
                )
            if args.count is not None and matches >= args.count:
                break
    except StopAsyncIteration:
        pass
    finally:
        stopper.cancel()
        await stream.aclose()
        await client.aclose()
    if args.format == "text":
        err.print(
            f"{args.url}: {client.received} messages, {matches} matches, "
            f"{client.malformed} malformed, {client.reconnects} reconnects",
            highlight=False,
        )
    return EXIT_OK if client.connections else EXIT_PROBLEMS


def run(args: argparse.Namespace) -> int:
    if args.ct_command == "watch":
        return asyncio.run(_watch(args))
    if args.ct_command == "stream":
        return asyncio.run(_stream(args))
    raise UsageError("ct", f"unknown action {args.ct_command}")


__all__ = ["add_parsers", "run"]
