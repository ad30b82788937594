"""Metrics: the product's own series and the inventory as Prometheus sees it.

Two kinds of series live here (DESIGN.md section 3, "Metrics"):

* **Pushed** series that only the scan loop knows (probe success and duration, scan runs, source
  health). :meth:`Metrics.observe_scan` sets them after every scan run of one source; the result
  of a run *replaces* the previous per-ref series of that source, so a target removed from the
  config stops being exported instead of lingering with its last value forever.
* **Pulled** series derived from the inventory (certificate dates, problems, counts) and a
  superset compatible with x509-certificate-exporter, produced by :class:`InventoryCollector` at
  scrape time, the pattern prometheus/client_python recommends for state that lives elsewhere
  (https://prometheus.github.io/client_python/collector/custom/). Reads are cached for a few
  seconds so a scrape storm (several Prometheus replicas, a Grafana "explore" session) costs one
  database read.

Everything is registered on an injected :class:`~prometheus_client.CollectorRegistry`, never the
process-global default one, and nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from certpilot import __version__
from certpilot.domain.clock import Clock
from certpilot.domain.errors import StoreError
from certpilot.domain.inventory import InventoryItem
from certpilot.domain.model import Observation
from certpilot.domain.problems import REACHABILITY_CODES, ProblemCode
from certpilot.domain.protocols import InventoryReader
from certpilot.domain.sli import SEEN_ONLY_SOURCES, SLI_IDS

log = logging.getLogger("certpilot.obs")

# Scans range from one loopback endpoint (~0.1 s) to thousands of targets behind timeouts
# (minutes); the buckets are roughly x2.5 apart across 0.1 s .. 10 min.
SCAN_DURATION_BUCKETS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

# Label schemas. They are a contract with dashboards and alert rules: change with care.
CERT_LABELS: tuple[str, ...] = (
    "ref",
    "source",
    "target",
    "subject_CN",
    "issuer_CN",
    "serial_number",
    "fingerprint",
)
PROBLEM_LABELS: tuple[str, ...] = ("ref", "source", "target", "code")
_DN_FIELDS: tuple[str, ...] = ("CN", "O", "OU", "C", "ST", "L")
# x509-certificate-exporter's per-certificate labels
# (https://github.com/enix/x509-certificate-exporter/blob/main/docs/metrics.md), the subset that
# applies to certpilot's sources, plus certpilot's own ``source`` and ``endpoint``. Every sample
# carries every label (empty when irrelevant) so PromQL aggregation across sources stays valid.
X509_LABELS: tuple[str, ...] = (
    "serial_number",
    *(f"subject_{f}" for f in _DN_FIELDS),
    *(f"issuer_{f}" for f in _DN_FIELDS),
    "filepath",
    "secret_namespace",
    "secret_name",
    "secret_key",
    "source",
    "endpoint",
)


# ---------------------------------------------------------------------------------------------
# RFC 4514 distinguished names


def parse_rfc4514(dn: str | None) -> list[tuple[str, str]]:
    """Split an RFC 4514 string into ``(TYPE, value)`` pairs, in string order.

    Conservative by design: it never raises, skips components without ``=``, upper-cases
    attribute types and undoes the escapes of RFC 4514 section 2.4 (``\\,``, ``\\+``, ``\\"``,
    ``\\\\``, ``\\;``, ``\\<``, ``\\>``, ``\\=``, ``\\ ``, ``\\#`` and ``\\XX`` hex pairs, which
    together form UTF-8). Multi-valued RDNs (``+``) become separate pairs. Values in ``#hex`` BER
    form (section 2.4, unknown attribute types) are returned as written.
    """
    if not dn:
        return []
    out: list[tuple[str, str]] = []
    for component in _split_unescaped(dn, ",+"):
        eq = _find_unescaped(component, "=")
        if eq <= 0:
            continue
        attr_type = component[:eq].strip().upper()
        raw = component[eq + 1 :]
        value = raw.strip() if raw.strip().startswith("#") else _unescape(raw)
        out.append((attr_type, value))
    return out


def dn_fields(dn: str | None) -> dict[str, str]:
    """``CN``, ``O``, ``OU``, ``C``, ``ST``, ``L`` of a DN; empty strings where absent.

    RFC 4514 writes RDNs in *reverse* certificate order, so when an attribute repeats (two
    ``OU``s) the one written last is the first in the certificate, and that is the one kept,
    as x509-certificate-exporter does with Go's ``pkix.Name`` slices.
    """
    fields = dict.fromkeys(_DN_FIELDS, "")
    for attr_type, value in parse_rfc4514(dn):
        if attr_type in fields:
            fields[attr_type] = value
    return fields


def _split_unescaped(text: str, separators: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])  # keep escapes for _unescape
            i += 2
            continue
        if ch in separators:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _find_unescaped(text: str, target: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == target:
            return i
        i += 1
    return -1


_HEX = frozenset("0123456789abcdefABCDEF")


def _unescape(value: str) -> str:
    """Undo RFC 4514 escapes; drop *unescaped* surrounding spaces (``\\ `` keeps its space)."""
    chunks: list[tuple[bytes, bool]] = []  # (bytes, escaped)
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
                chunks.append((bytes([int(pair, 16)]), True))
                i += 3
                continue
            chunks.append((value[i + 1].encode("utf-8"), True))
            i += 2
            continue
        chunks.append((ch.encode("utf-8"), False))
        i += 1
    start, end = 0, len(chunks)
    while start < end and not chunks[start][1] and chunks[start][0].isspace():
        start += 1
    while end > start and not chunks[end - 1][1] and chunks[end - 1][0].isspace():
        end -= 1
    return b"".join(c for c, _ in chunks[start:end]).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Label helpers


def file_path_of(ref: str) -> str:
    """``file:///etc/ssl/a.pem#0`` -> ``/etc/ssl/a.pem`` (the file scanner's ref format)."""
    path = ref.removeprefix("file://")
    head, sep, _index = path.rpartition("#")
    return head if sep else path


def endpoint_of(ref: str) -> str:
    """``tls://host:port#sni`` -> ``host:port``; empty for other refs."""
    if not ref.startswith("tls://"):
        return ""
    return ref.removeprefix("tls://").partition("#")[0]


def decimal_serial(serial_hex: str | None) -> str:
    """x509-certificate-exporter prints serials in decimal (Go's ``big.Int.String``)."""
    if not serial_hex:
        return ""
    try:
        return str(int(serial_hex.replace(":", ""), 16))
    except ValueError:
        return serial_hex


def _aware(dt: datetime) -> datetime:
    """Naive datetimes are UTC (SQLite drops the offset); never the host's local time."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), after a scan cycle or a
    large scrape: Python frees the objects, but glibc keeps the pages in its arenas, so a
    process's RSS would stay at its peak. A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


# ---------------------------------------------------------------------------------------------
# Exposition in pieces

_EOF = b"# EOF\n"
_CHUNK_BYTES = 256 * 1024
#: Series per piece of a large (streamed) family: the encoder holds a piece's lines three times
#: over (the lines, their join, its bytes), 2,000 x509 series are about 1 MB of text.
_PIECE_ROWS = 2000


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self._metric,)


def exposition(registry: Collector, accept: str = "") -> tuple[str, Iterator[bytes]]:
    """``/metrics`` in pieces: the content type the ``Accept`` header asks for (text 0.0.4 or
    OpenMetrics, prometheus_client's ``choose_encoder``) and the body as chunks of about
    256 KiB.

    prometheus_client's encoders build the whole body in memory (every line, then the joined
    text, then its bytes: about three times the output, 90 MB for a 10,000-location inventory).
    Here each family is encoded on its own by the same encoder, as the registry yields it, so a
    scrape holds one family's text at a time, and a large inventory family (:class:`_Streamed`)
    is encoded in pieces of ``_PIECE_ROWS`` series, the header written once. The bytes are the
    encoder's, with OpenMetrics' closing ``# EOF`` written once at the end."""
    encoder, content_type = choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")

    def chunks() -> Iterator[bytes]:
        parts: list[bytes] = []
        size = 0
        for metric in registry.collect():
            pieces = metric.pieces(_PIECE_ROWS) if isinstance(metric, _Streamed) else [metric]
            for i, piece in enumerate(pieces):
                data = encoder(_One(piece))
                if openmetrics:
                    data = data.removesuffix(_EOF)
                if i:  # a later piece of one family: its lines, without the family's header
                    help_line, type_line, data = data.split(b"\n", 2)
                    assert help_line.startswith(b"# HELP ") and type_line.startswith(b"# TYPE ")
                parts.append(data)
                size += len(data)
                if size >= _CHUNK_BYTES:
                    yield b"".join(parts)
                    parts, size = [], 0
        if openmetrics:
            parts.append(_EOF)
        if parts:
            yield b"".join(parts)

    return content_type, chunks()


# ---------------------------------------------------------------------------------------------
# The inventory collector


@dataclass(frozen=True, slots=True)
class _Snapshot:
    at: datetime
    items: Sequence[InventoryItem] | None  # None: the read failed


class InventoryCollector:
    """Exports the inventory at scrape time; see the module docstring.

    ``known_sources`` returns sources seen by the scan loop, so ``certpilot_inventory_items`` reads
    0 (not absent) for a source whose last scan found nothing.

    Memory: a 10,000-location inventory is about 80,000 samples (32 MB of text). What is cached
    between concurrent scrapes is the inventory read, not the samples; :meth:`collect` builds the
    families one group at a time as the encoder asks for them, the large ones as
    :class:`_Streamed` families (a small row per series, each sample made as it is written), so
    with :func:`exposition` a scrape holds the read, one group's rows and one piece of text.
    """

    def __init__(
        self,
        inventory: InventoryReader,
        clock: Clock,
        *,
        cache_seconds: float = 5.0,
        known_sources: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        if cache_seconds < 0 or math.isnan(cache_seconds):
            raise ValueError("cache_seconds must be >= 0")
        self._inventory = inventory
        self._clock = clock
        self._cache = timedelta(seconds=cache_seconds)
        self._known_sources = known_sources or (lambda: ())
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def describe(self) -> Iterator[Metric]:
        """Names only, so the registry refuses a second collector exporting the same series."""
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        # One reader at a time: concurrent scrapes wait for the read in flight and share it.
        with self._lock:
            now = self._clock.now()
            snap = self._snapshot
            # A clock that went backwards invalidates the cache too.
            if snap is None or not (snap.at <= now < snap.at + self._cache):
                self._snapshot = None  # the old read goes before the new one is made
                snap = _Snapshot(now, self._read(now))
                self._snapshot = snap
                if self._cache.total_seconds() > 0:
                    # Scrapes are seconds apart, the cache is for concurrent ones: do not keep
                    # a large inventory's rows in memory until the next scrape.
                    timer = threading.Timer(self._cache.total_seconds(), self._expire, (snap,))
                    timer.daemon = True
                    timer.start()
        if snap.items is None:
            up = GaugeMetricFamily(
                "certpilot_inventory_up", _HELP["certpilot_inventory_up"], value=0
            )
            return iter([up])
        return self._families_for(snap.items, snap.at)

    def _expire(self, snap: _Snapshot) -> None:
        with self._lock:
            if self._snapshot is snap:
                self._snapshot = None
        release_memory()

    def _read(self, now: datetime) -> Sequence[InventoryItem] | None:
        try:
            return self._inventory.items(now=now)
        except Exception as e:  # a scrape must never fail because the store did
            # A StoreError's message, never its str(): that one carries the URL (a password?).
            detail = e.message if isinstance(e, StoreError) else str(e)
            log.warning("inventory read for metrics failed: %s: %s", type(e).__name__, detail)
            return None

    def _families_for(self, items: Sequence[InventoryItem], now: datetime) -> Iterator[Metric]:
        """The inventory families in three groups, each built when the previous one has been
        handed on: counts and problems, the certpilot certificate series, the
        x509-certificate-exporter series."""
        yield from self._summary_families(items)
        yield from self._certificate_families(items, now)
        yield from self._x509_families(items, now)
        # The encoder is done with them: hand the pages of the scrape's temporaries back now,
        # not when the cached read expires.
        release_memory()

    def _summary_families(self, items: Sequence[InventoryItem]) -> list[Metric]:
        info = _family("certpilot_item_info")
        problem = _family("certpilot_certificate_problem")
        per_source: dict[str, int] = dict.fromkeys(self._known_sources(), 0)
        problems: dict[str, int] = {c.value: 0 for c in ProblemCode}
        for item in items:
            per_source[item.source] = per_source.get(item.source, 0) + 1
            info.add_metric([item.ref, item.labels.get("owner", "")], 1.0)
            for code in dict.fromkeys(str(c) for c in item.problems):
                problems[code] = problems.get(code, 0) + 1
                problem.add_metric([item.ref, item.source, item.target, code], 1.0)
        counts = _family("certpilot_inventory_items")
        for source, count in sorted(per_source.items()):
            counts.add_metric([source], float(count))
        by_code = _family("certpilot_problems")
        for code, count in problems.items():
            by_code.add_metric([code], float(count))
        up = _family("certpilot_inventory_up")
        up.add_metric([], 1.0)
        return [info, problem, counts, by_code, up]

    def _certificate_families(self, items: Sequence[InventoryItem], now: datetime) -> list[Metric]:
        """The four ``certpilot_certificate_*`` families, each streamed (:class:`_Streamed`)
        from one row per location: its label values and dates."""
        # (label values, not_after, expires_in, not_before, lifetime_left_ratio)
        rows: list[tuple[tuple[str, ...], float, float, float | None, float | None]] = []
        for item in _with_expiry(items):
            assert item.not_after is not None
            values = (
                item.ref,
                item.source,
                item.target,
                item.subject_cn or dn_fields(item.subject)["CN"],
                item.issuer_cn or dn_fields(item.issuer)["CN"],
                item.serial or "",
                item.fingerprint_sha256 or "",
            )
            not_after = _aware(item.not_after)
            left = (not_after - now).total_seconds()
            start: float | None = None
            ratio: float | None = None
            if item.not_before is not None:
                not_before = _aware(item.not_before)
                start = not_before.timestamp()
                life = (not_after - not_before).total_seconds()
                ratio = max(0.0, min(1.0, left / life)) if life > 0 else 0.0
            rows.append((values, not_after.timestamp(), left, start, ratio))
        has_start = [r for r in rows if r[3] is not None]
        return [
            _Streamed("certpilot_certificate_not_after_seconds", rows, lambda r: r[1]),
            _Streamed("certpilot_certificate_expires_in_seconds", rows, lambda r: r[2]),
            _Streamed("certpilot_certificate_not_before_seconds", has_start, lambda r: r[3]),
            _Streamed("certpilot_certificate_lifetime_left_ratio", has_start, lambda r: r[4]),
        ]

    def _x509_families(self, items: Sequence[InventoryItem], now: datetime) -> list[Metric]:
        """The x509-certificate-exporter families, streamed like the certificate ones."""
        rows: list[tuple[tuple[str, ...], float, float | None]] = []
        seen: set[tuple[str, ...]] = set()
        for item in _with_expiry(items):
            assert item.not_after is not None
            values = tuple(_x509_labels(item))
            if values in seen:
                # Two locations holding the same certificate with identical labels (the same
                # endpoint under two SNI names, a bundle listing a cert twice): one series, since
                # Prometheus drops duplicate samples in a scrape anyway.
                continue
            seen.add(values)
            not_before = _aware(item.not_before).timestamp() if item.not_before else None
            rows.append((values, _aware(item.not_after).timestamp(), not_before))
        del seen
        at = now.timestamp()
        has_start = [r for r in rows if r[2] is not None]
        return [
            _Streamed("x509_cert_not_after", rows, lambda r: r[1]),
            _Streamed("x509_cert_not_before", has_start, lambda r: r[2]),
            # Same rule as the judge's "expired" (RFC 5280 4.1.2.5: notAfter is inclusive, so
            # >= is one instant early, and consistent with certpilot's own problem code).
            _Streamed("x509_cert_expired", rows, lambda r: 1.0 if at >= r[1] else 0.0),
        ]


class _Streamed(Metric):
    """A gauge family whose samples are made as the encoder reads them, from one row per
    series: ``(label values in _FAMILY_LABELS order, ...)`` and ``value(row)``.

    prometheus_client's encoders read ``samples`` once, in order; a list of them would hold a
    label dict per series (the x509 families carry 20 labels: 1.2 KB a series) for the whole
    scrape. Here the rows are small tuples shared by a group's families, and each sample's
    dict lives only while its line is written. Reading ``samples`` again starts over."""

    def __init__(
        self, name: str, rows: Sequence[Any], value: Callable[[Any], float | None]
    ) -> None:
        super().__init__(name, _HELP[name], "gauge")
        self._labels = tuple(_FAMILY_LABELS[name])
        self._rows = rows
        self._value = value

    @property  # type: ignore[override]
    def samples(self) -> Iterator[Sample]:
        name, labels, value = self.name, self._labels, self._value
        for row in self._rows:
            v = value(row)
            assert v is not None  # the families get only the rows that have their value
            yield Sample(name, dict(zip(labels, row[0], strict=True)), v)

    @samples.setter
    def samples(self, _: object) -> None:
        """``Metric.__init__`` sets an empty list: the rows are the samples here."""

    def pieces(self, rows: int) -> Iterator[_Streamed]:
        """The family cut into families of at most ``rows`` series each (one when empty)."""
        for start in range(0, max(1, len(self._rows)), rows):
            yield _Streamed(self.name, self._rows[start : start + rows], self._value)


def _with_expiry(items: Sequence[InventoryItem]) -> Iterator[InventoryItem]:
    """The items that get expiry series: a certificate was read there (``not_after``), and it is
    deployed somewhere. A certificate seen in a CT log is not: its expiry is nobody's outage,
    so it gets no expiry series (its problems still page, see the summary group)."""
    for item in items:
        if item.not_after is not None and item.source not in SEEN_ONLY_SOURCES:
            yield item


def _x509_labels(item: InventoryItem) -> list[str]:
    subject = dn_fields(item.subject)
    issuer = dn_fields(item.issuer)
    if item.subject_cn:
        subject["CN"] = item.subject_cn
    if item.issuer_cn:
        issuer["CN"] = item.issuer_cn
    filepath = file_path_of(item.ref) if item.ref.startswith("file://") else ""
    return [
        decimal_serial(item.serial),
        *(subject[f] for f in _DN_FIELDS),
        *(issuer[f] for f in _DN_FIELDS),
        filepath,
        # Kubernetes Secrets (scanner/k8s.py labels them with the exporter's names).
        item.labels.get("secret_namespace", ""),
        item.labels.get("secret_name", ""),
        item.labels.get("secret_key", ""),
        item.source,
        endpoint_of(item.ref),
    ]


_HELP: Mapping[str, str] = {
    "certpilot_certificate_not_after_seconds": (
        "Unix time after which the certificate at this location is no longer valid."
    ),
    "certpilot_certificate_not_before_seconds": (
        "Unix time before which the certificate at this location is not yet valid."
    ),
    "certpilot_certificate_expires_in_seconds": (
        "Seconds until the certificate at this location expires (negative once expired), "
        "as of the last inventory read."
    ),
    "certpilot_certificate_lifetime_left_ratio": (
        "Share of the certificate's validity period still ahead, 0..1."
    ),
    "certpilot_certificate_problem": (
        "1 for each problem code currently raised on a location (absent when the problem is not)."
    ),
    "certpilot_item_info": "Per-location metadata to join on ref; owner comes from the labels.",
    "certpilot_inventory_items": "Locations in the inventory, per source.",
    "certpilot_problems": (
        "Locations currently showing each problem code; every code is always present."
    ),
    "certpilot_inventory_up": "1 when the last inventory read for metrics succeeded, else 0.",
    "x509_cert_not_after": (
        "Unix time of the certificate's NotAfter (x509-certificate-exporter compatible)."
    ),
    "x509_cert_not_before": (
        "Unix time of the certificate's NotBefore (x509-certificate-exporter compatible)."
    ),
    "x509_cert_expired": (
        "1 when the certificate has expired, else 0 (x509-certificate-exporter compatible)."
    ),
}

_FAMILY_LABELS: Mapping[str, Sequence[str]] = {
    "certpilot_certificate_not_after_seconds": CERT_LABELS,
    "certpilot_certificate_not_before_seconds": CERT_LABELS,
    "certpilot_certificate_expires_in_seconds": CERT_LABELS,
    "certpilot_certificate_lifetime_left_ratio": CERT_LABELS,
    "certpilot_certificate_problem": PROBLEM_LABELS,
    "certpilot_item_info": ("ref", "owner"),
    "certpilot_inventory_items": ("source",),
    "certpilot_problems": ("code",),
    "certpilot_inventory_up": (),
    "x509_cert_not_after": X509_LABELS,
    "x509_cert_not_before": X509_LABELS,
    "x509_cert_expired": X509_LABELS,
}


def _families() -> list[GaugeMetricFamily]:
    """Empty families: what describe() yields."""
    return [_family(name) for name in _FAMILY_LABELS]


def _family(name: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _HELP[name], labels=list(_FAMILY_LABELS[name]))


class ProbeCollector:
    """``certpilot_probe_success`` and ``certpilot_probe_duration_seconds``, one series per
    location of each source's last scan.

    A custom collector rather than two labelled ``Gauge``s: a labelled child is an object with
    its own lock and value (about 700 bytes), and two of them per location held 14 MB for a
    10,000-endpoint fleet; here a location is one small tuple, and the samples exist only
    while a scrape encodes them."""

    _SUCCESS = "certpilot_probe_success"
    _DURATION = "certpilot_probe_duration_seconds"
    _HELP = {
        _SUCCESS: (
            "1 when the last scan read a certificate at this location (no connection_refused, "
            "timeout, dns_error, tls_error, unreadable or malformed problem), else 0."
        ),
        _DURATION: "Time the last scan spent on this location.",
    }
    _LABELS = ("source", "target", "ref")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per source: (target, ref) -> (read a certificate, seconds), of the last scan.
        self._series: dict[str, dict[tuple[str, str], tuple[bool, float]]] = {}

    def replace(self, source: str, observations: Sequence[Observation]) -> None:
        """The series of ``source`` become exactly those of ``observations`` (refs absent from
        this run go; a ref that appears twice: the last observation wins)."""
        latest: dict[tuple[str, str], tuple[bool, float]] = {}
        for obs in observations:
            ok = not any(c in REACHABILITY_CODES for c in obs.codes)
            latest[(obs.target, obs.ref)] = (ok, obs.duration_seconds)
        with self._lock:
            self._series[source] = latest

    def describe(self) -> Iterator[Metric]:
        return iter(self._empty())

    def _empty(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(name, self._HELP[name], labels=list(self._LABELS))
            for name in (self._SUCCESS, self._DURATION)
        ]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            series = [(source, list(per.items())) for source, per in self._series.items()]
        success, duration = self._empty()
        for source, rows in series:
            for (target, ref), (ok, seconds) in rows:
                labels = {"source": source, "target": target, "ref": ref}
                success.add_sample(self._SUCCESS, labels, 1.0 if ok else 0.0)
                duration.add_sample(self._DURATION, labels, seconds)
        yield success
        yield duration


# ---------------------------------------------------------------------------------------------
# The facade the app wires


JOB_STATES: tuple[str, ...] = (
    "pending_approval",
    "approved",
    "issuing",
    "deploying",
    "verifying",
    "done",
    "failed",
    "rolled_back",
)
ISSUANCE_LATENCY_BUCKETS: tuple[float, ...] = (
    1,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    float("inf"),
)


@dataclass(frozen=True, slots=True)
class SLOGauges:
    """One SLO's evaluation as plain numbers (None: no data yet, exported as NaN)."""

    sloth_id: str
    service: str
    slo: str
    objective_ratio: float
    windows: Mapping[str, tuple[float | None, float | None]]  # window -> (error ratio, burn)
    budget_remaining_ratio: float | None
    period_burn_rate: float | None
    firing: Mapping[str, bool]  # severity -> firing


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


class Metrics:
    """All of certpilot's series on one injected registry.

    ``observe_scan`` and ``observe_source_error`` are thread-safe and cheap (no I/O); the
    inventory is read only at scrape time, through the registry, at most once per
    ``scrape_cache_seconds``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        inventory: InventoryReader,
        clock: Clock,
        *,
        scrape_cache_seconds: float = 5.0,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: set[str] = set()
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds...: what
        # an operator sizes the service by (docs/operations.md, "Memory").
        self.process = ProcessCollector(registry=registry)

        self.build_info = Gauge(
            "certpilot_build_info",
            "Always 1; the version label says which certpilot is running.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)

        self.probes = ProbeCollector()
        registry.register(self.probes)
        self.scan_duration = Histogram(
            "certpilot_scan_duration_seconds",
            "Wall time of complete scan runs, per source.",
            ["source"],
            buckets=SCAN_DURATION_BUCKETS,
            registry=registry,
        )
        self.scan_runs = Counter(
            "certpilot_scan_runs_total",
            "Scan runs completed, per source.",
            ["source"],
            registry=registry,
        )
        self.scan_observations = Counter(
            "certpilot_scan_observations_total",
            "Observations (scanned locations) produced by scan runs, per source.",
            ["source"],
            registry=registry,
        )
        self.scan_last_run = Gauge(
            "certpilot_scan_last_run_timestamp_seconds",
            "Unix time the last scan run of this source completed (alert when it gets old).",
            ["source"],
            registry=registry,
        )
        self.source_up = Gauge(
            "x509_source_up",
            "1 when the last run of this source completed and read at least one item (or had no "
            "targets), else 0.",
            ["source"],
            registry=registry,
        )
        self.source_errors = Counter(
            "x509_source_errors_total",
            "Items a source could not read, by reason (a reachability problem code), plus "
            "source-level failures.",
            ["source", "reason"],
            registry=registry,
        )
        self.sli_events = Counter(
            "certpilot_sli_events_total",
            "SLI events (one unit of work each, see slo/spec.py) by SLI and result; continues "
            "from the stored counters after a restart.",
            ["sli", "result"],
            registry=registry,
        )
        for sli in SLI_IDS:
            self.sli_events.labels(sli, "good")
            self.sli_events.labels(sli, "bad")
        slo_labels = ["sloth_id", "sloth_service", "sloth_slo"]
        self.slo_objective = Gauge(
            "certpilot_slo_objective_ratio",
            "SLO objective as a ratio (0.995).",
            slo_labels,
            registry=registry,
        )
        self.slo_error_ratio = Gauge(
            "certpilot_slo_error_ratio",
            "Error ratio of the SLI over a window, computed in-process with Prometheus's rate() "
            "semantics (Sloth's slo:sli_error:ratio_rate<window>).",
            [*slo_labels, "window"],
            registry=registry,
        )
        self.slo_burn_rate = Gauge(
            "certpilot_slo_burn_rate",
            "Error ratio over a window divided by the error budget (1 - objective).",
            [*slo_labels, "window"],
            registry=registry,
        )
        self.slo_budget_remaining = Gauge(
            "certpilot_slo_error_budget_remaining_ratio",
            "Share of the period's error budget left (negative when overspent).",
            slo_labels,
            registry=registry,
        )
        self.slo_period_burn = Gauge(
            "certpilot_slo_period_burn_rate",
            "Burn rate over the whole SLO period.",
            slo_labels,
            registry=registry,
        )
        self.slo_alert = Gauge(
            "certpilot_slo_alert_firing",
            "1 when the multi-window multi-burn-rate condition of this severity holds.",
            [*slo_labels, "severity"],
            registry=registry,
        )
        self.jobs = Gauge(
            "certpilot_jobs",
            "Remediation jobs by state.",
            ["state"],
            registry=registry,
        )
        for state in JOB_STATES:
            self.jobs.labels(state).set(0)
        self.crl_stale = Gauge(
            "certpilot_crl_stale",
            "1 when certpilot has no current CRL for this distribution point (past nextUpdate, "
            "or never fetched).",
            ["url", "issuer"],
            registry=registry,
        )
        self.crl_next_update = Gauge(
            "certpilot_crl_next_update_timestamp_seconds",
            "nextUpdate of the CRL certpilot holds for this distribution point.",
            ["url", "issuer"],
            registry=registry,
        )
        self.crl_fetch_errors = Counter(
            "certpilot_crl_fetch_errors_total",
            "CRL fetches that failed, by reason (timeout, connection, tls, http_status, "
            "too_large, malformed, outdated, untrusted).",
            ["url", "reason"],
            registry=registry,
        )
        self._crl_errors_seen: dict[tuple[str, str], int] = {}
        self.ct_tree_size = Gauge(
            "certpilot_ct_tree_size",
            "Entries in the log's latest verified tree head.",
            ["log"],
            registry=registry,
        )
        self.ct_next_index = Gauge(
            "certpilot_ct_next_index",
            "First entry of the log certpilot has not processed yet.",
            ["log"],
            registry=registry,
        )
        self.ct_backlog = Gauge(
            "certpilot_ct_backlog_entries",
            "Entries in the latest verified tree head not processed yet.",
            ["log"],
            registry=registry,
        )
        self.ct_sth_timestamp = Gauge(
            "certpilot_ct_sth_timestamp_seconds",
            "Timestamp of the log's latest verified tree head (alert when it gets old: the "
            "log stopped publishing, or certpilot cannot reach it).",
            ["log"],
            registry=registry,
        )
        self.ct_lag = Gauge(
            "certpilot_ct_lag_seconds",
            "How far behind the log certpilot is: now minus the timestamp of the last entry "
            "processed (0 when nothing is waiting).",
            ["log"],
            registry=registry,
        )
        self.ct_up = Gauge(
            "certpilot_ct_log_up",
            "1 when the last read of the log succeeded and verified.",
            ["log"],
            registry=registry,
        )
        self.ct_entries = Counter(
            "certpilot_ct_entries_total", "Log entries processed.", ["log"], registry=registry
        )
        self.ct_matches = Counter(
            "certpilot_ct_matches_total",
            "Entries matching the watchlist.",
            ["log"],
            registry=registry,
        )
        self.ct_failures = Counter(
            "certpilot_ct_verification_failures_total",
            "Checks a log failed: bad_signature, inconsistent, bad_inclusion, malformed_entry.",
            ["log", "kind"],
            registry=registry,
        )
        self.ct_issuances = Counter(
            "certpilot_ct_issuances_total",
            "Watched certificates seen in CT, by verdict (expected, unexpected, pending).",
            ["verdict"],
            registry=registry,
        )
        self.ct_feed_connected = Gauge(
            "certpilot_ct_feed_connected",
            "1 while the certstream-format feed's websocket is connected.",
            ["url"],
            registry=registry,
        )
        self.ct_feed_events = Counter(
            "certpilot_ct_feed_events_total",
            "certstream feed events: messages, malformed, reconnects, heartbeat_gaps.",
            ["url", "kind"],
            registry=registry,
        )
        self._ct_seen: dict[tuple[str, ...], float] = {}
        self.cluster_leader = Gauge(
            "certpilot_cluster_leader",
            "1 on the replica that runs the singleton work (planning, SLOs, paging, CT).",
            registry=registry,
        )
        self.cluster_members = Gauge(
            "certpilot_cluster_members",
            "Live replicas sharing the database, as this replica sees them.",
            registry=registry,
        )
        self.issuance_latency = Histogram(
            "certpilot_issuance_latency_seconds",
            "Time from ordering a certificate to verifying it is served everywhere.",
            buckets=ISSUANCE_LATENCY_BUCKETS,
            registry=registry,
        )
        self.collector = InventoryCollector(
            inventory,
            clock,
            cache_seconds=scrape_cache_seconds,
            known_sources=self._known_sources,
        )
        registry.register(self.collector)

    def _known_sources(self) -> list[str]:
        with self._lock:
            return sorted(self._sources)

    def _touch_source(self, source: str) -> None:
        """Create a source's counters at 0, so ``rate()`` sees the first error (no absent->1)."""
        self._sources.add(source)
        self.scan_runs.labels(source)
        self.scan_observations.labels(source)
        for code in sorted(REACHABILITY_CODES):
            self.source_errors.labels(source, code.value)

    def observe_scan(
        self, source: str, observations: Sequence[Observation], duration_seconds: float
    ) -> None:
        """Record one completed scan run of ``source``.

        The per-ref series of ``source`` become exactly those of ``observations``: refs absent
        from this run are removed. If a ref appears twice, the last observation wins.
        """
        latest = {(obs.target, obs.ref): obs for obs in observations}
        read_any = False
        with self._lock:
            self._touch_source(source)
            for obs in latest.values():
                unreachable = [c for c in obs.codes if c in REACHABILITY_CODES]
                read_any = read_any or not unreachable
                for code in dict.fromkeys(unreachable):
                    self.source_errors.labels(source, code.value).inc()
            self.probes.replace(source, list(latest.values()))

            self.scan_runs.labels(source).inc()
            self.scan_observations.labels(source).inc(len(observations))
            self.scan_duration.labels(source).observe(max(0.0, duration_seconds))
            self.scan_last_run.labels(source).set(self._clock.now().timestamp())
            self.source_up.labels(source).set(1.0 if read_any or not observations else 0.0)

    def observe_sli(self, increments: Mapping[str, tuple[float, float]]) -> None:
        """Advance ``certpilot_sli_events_total`` by ``{sli: (good, bad)}``."""
        with self._lock:
            for sli, (good, bad) in increments.items():
                self.sli_events.labels(sli, "good").inc(good)
                self.sli_events.labels(sli, "bad").inc(bad)

    def observe_slo(self, status: SLOGauges) -> None:
        """Publish one SLO evaluation (plain values: obs does not import the slo room)."""
        ids = (status.sloth_id, status.service, status.slo)
        with self._lock:
            self.slo_objective.labels(*ids).set(status.objective_ratio)
            for window, (ratio, burn) in status.windows.items():
                self.slo_error_ratio.labels(*ids, window).set(_nan(ratio))
                self.slo_burn_rate.labels(*ids, window).set(_nan(burn))
            self.slo_budget_remaining.labels(*ids).set(_nan(status.budget_remaining_ratio))
            self.slo_period_burn.labels(*ids).set(_nan(status.period_burn_rate))
            for severity, firing in status.firing.items():
                self.slo_alert.labels(*ids, severity).set(1.0 if firing else 0.0)

    def observe_crls(
        self, statuses: Sequence[Any], error_counts: Mapping[tuple[str, str], int]
    ) -> None:
        """CRL freshness from ``scanner.crl.CRLCache.status()`` rows and its cumulative error
        counts (``certpilot_crl_*``)."""
        for row in statuses:
            self.crl_stale.labels(row.url, row.issuer).set(1.0 if row.stale else 0.0)
            if row.next_update is not None:
                self.crl_next_update.labels(row.url, row.issuer).set(row.next_update.timestamp())
        for key, total in error_counts.items():
            seen = self._crl_errors_seen.get(key, 0)
            if total > seen:
                self.crl_fetch_errors.labels(*key).inc(total - seen)
                self._crl_errors_seen[key] = total

    def _ct_inc(self, counter: Counter, labels: tuple[str, ...], total: float) -> None:
        key = (str(id(counter)), *labels)
        seen = self._ct_seen.get(key, 0.0)
        if total > seen:
            counter.labels(*labels).inc(total - seen)
            self._ct_seen[key] = total
        elif key not in self._ct_seen:
            counter.labels(*labels)
            self._ct_seen[key] = total

    def observe_ct_log(
        self,
        log: str,
        *,
        tree_size: int,
        next_index: int,
        head_timestamp_ms: int,
        last_entry_timestamp_ms: int,
        up: bool,
        entries: int,
        matches: int,
        failures: Mapping[str, int],
    ) -> None:
        """One CT log monitor's figures (plain values: obs does not import ctwatch); the
        counts are cumulative totals, turned into counter increments here."""
        with self._lock:
            self.ct_up.labels(log).set(1.0 if up else 0.0)
            if tree_size or next_index:
                self.ct_tree_size.labels(log).set(tree_size)
                self.ct_next_index.labels(log).set(next_index)
                self.ct_backlog.labels(log).set(max(0, tree_size - next_index))
            if head_timestamp_ms:
                self.ct_sth_timestamp.labels(log).set(head_timestamp_ms / 1000)
            now = self._clock.now().timestamp()
            waiting = tree_size > next_index
            lag = now - last_entry_timestamp_ms / 1000 if waiting and last_entry_timestamp_ms else 0
            self.ct_lag.labels(log).set(max(0.0, lag))
            self._ct_inc(self.ct_entries, (log,), entries)
            self._ct_inc(self.ct_matches, (log,), matches)
            for kind in ("bad_signature", "inconsistent", "bad_inclusion", "malformed_entry"):
                self._ct_inc(self.ct_failures, (log, kind), failures.get(kind, 0))

    def forget_ct_log(self, log: str) -> None:
        """Stop exporting a CT log's gauges: another replica follows it now (its figures are
        that replica's to export; frozen ones here would hide an outage from
        ``max by (log) (certpilot_ct_log_up) == 0``). Counters stay: they are cumulative."""
        with self._lock:
            for gauge in (
                self.ct_up,
                self.ct_tree_size,
                self.ct_next_index,
                self.ct_backlog,
                self.ct_sth_timestamp,
                self.ct_lag,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(log)

    def observe_cluster(self, *, leader: bool, members: int) -> None:
        self.cluster_leader.set(1.0 if leader else 0.0)
        self.cluster_members.set(members)

    def observe_ct_issuance(self, verdict: str) -> None:
        self.ct_issuances.labels(verdict).inc()

    def observe_ct_feed(self, url: str, *, connected: bool, counts: Mapping[str, int]) -> None:
        """A certstream feed's state and cumulative counts (messages, malformed, reconnects,
        heartbeat_gaps)."""
        with self._lock:
            self.ct_feed_connected.labels(url).set(1.0 if connected else 0.0)
            for kind, total in counts.items():
                self._ct_inc(self.ct_feed_events, (url, kind), total)

    def observe_jobs(self, counts: Mapping[str, int]) -> None:
        """``certpilot_jobs{state}`` from the job store's counts (every state, zeros too)."""
        for state, n in counts.items():
            self.jobs.labels(state).set(n)

    def observe_issuance(self, seconds: float) -> None:
        """One renewal from order to verified-served (``certpilot_issuance_latency_seconds``)."""
        self.issuance_latency.observe(seconds)

    def observe_source_error(self, source: str, reason: str) -> None:
        """A run of ``source`` failed as a whole (API down, sealed vault, bad credentials).

        Counts ``reason`` (keep it a short fixed code: it is a label) and marks the source down
        until its next completed run. Per-ref series are left as they were: the last thing known
        about each location is still the best information.
        """
        with self._lock:
            self._touch_source(source)
            self.source_errors.labels(source, reason).inc()
            self.source_up.labels(source).set(0.0)
