"""File scanner: certificates at rest in PEM, DER and PKCS#12 files (DESIGN.md sections 2-3).

A :class:`~certpilot.domain.model.FileTarget` names a path, a glob or a directory. :func:`expand`
turns it into the files to read; :func:`scan_file_target` reads each one and returns one
:class:`~certpilot.domain.model.Observation` per certificate found, judged at rest with
:func:`certpilot.domain.judge.judge_stored` (time and strength only: trust and hostname depend on
where a certificate is served, so the reconciliation step judges those).

Contract:

* Bad files are data, never exceptions: a file that cannot be read is one observation with
  ``unreadable``; bytes that are not a certificate are ``malformed``. Each carries a one-line
  ``error`` naming the path and the reason.
* Only what the pattern names is read. Directory walks and ``**`` do not descend into symlinked
  directories (loops, and links that leave the configured tree) nor into hidden directories
  (Kubernetes secret volumes keep ``..data`` / ``..2024_...`` copies of every file, which would
  report each certificate twice under a location that changes on every rotation). Symlinked
  *files* are read: ``/etc/letsencrypt/live/*/`` is made of them.
* Refs use the absolute path as configured, not the symlink-resolved one, so the inventory key
  of ``live/example.org/fullchain.pem`` does not change when certbot renews it.
* Nothing blocks: FIFOs and devices are refused after an ``O_NONBLOCK`` open, files over
  :data:`MAX_FILE_BYTES` are refused from ``fstat`` without being read.
* Private keys are skipped and never copied into an observation or a message; passphrases
  are never shown either.

Synchronous on purpose: the runner calls it in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fnmatch
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from certpilot.domain.errors import CertificateParseError
from certpilot.domain.judge import DEFAULT_POLICY, JudgePolicy, judge_stored
from certpilot.domain.model import FileTarget, Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import ParsedCert, is_pkcs12, looks_like_pem, parse_der, parse_pkcs12

__all__ = ["CERT_EXTENSIONS", "MAX_FILE_BYTES", "expand", "scan_file_target"]

SOURCE = "file"

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Files larger than this are refused (``malformed``) without being read."""

CERT_EXTENSIONS = (".pem", ".crt", ".cer", ".der", ".p12", ".pfx", ".cert", ".ca-bundle")
"""Extensions a directory walk picks up (case-insensitive). Extension-less files are picked up
when they contain a PEM ``-----BEGIN`` line within their first :data:`_SNIFF_BYTES`."""

_PKCS12_EXTENSIONS = (".p12", ".pfx")
_SNIFF_BYTES = 1024 * 1024
_MAX_PASSPHRASE_BYTES = 64 * 1024
_READ_CHUNK = 1024 * 1024
_MAX_MESSAGE = 300

_MAGIC = re.compile(r"[*?[]")
# RFC 7468 section 2: pre-encapsulation and post-encapsulation boundaries with a label.
_PEM_BEGIN = re.compile(rb"-----BEGIN ([^\r\n]{0,64}?)-----")
_PEM_END = re.compile(rb"-----END ([^\r\n]{0,64}?)-----")
# "TRUSTED CERTIFICATE" is OpenSSL's: the DER certificate followed by its trust settings.
_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_WHITESPACE = re.compile(rb"\s+")
_CONTROL = {c: "?" for c in (*range(32), 127)}


# ---------------------------------------------------------------------------------------------
# expand: pattern -> files


def expand(target: FileTarget) -> list[Path]:
    """The files ``target.pattern`` names: absolute, sorted, deduplicated.

    * An existing path that is not a directory is returned as is, whatever its name (a broken
      symlink too, so the scan can report it).
    * A directory is walked recursively for files ending in :data:`CERT_EXTENSIONS` and
      extension-less files that contain ``-----BEGIN``; hidden entries and symlinked
      directories are not entered.
    * A glob (``*``, ``?``, ``[...]``, and ``**`` for any number of directories) is matched
      segment by segment; files it matches are returned whatever their name, directories it
      matches are walked as above. A trailing ``**`` therefore means "this directory and all
      below it". ``*`` does not match a leading dot, as in the shell.
    * ``~`` is expanded. A pattern that matches nothing gives ``[]``: the caller reports it.

    A directory that cannot be listed is returned itself, so the scan reports it as unreadable
    instead of it silently vanishing from the inventory.
    """
    if not target.pattern:
        return []
    pattern = Path(target.pattern).expanduser()
    if os.path.lexists(pattern):  # a literal name wins, even one with "[" in it
        candidates: Iterator[Path] = iter((pattern,))
    elif _MAGIC.search(str(pattern)):
        candidates = _glob(pattern)
    else:
        return []
    found: set[Path] = set()
    for candidate in candidates:
        if candidate.is_dir():
            _walk(candidate, found)
        else:
            found.add(candidate)
    return sorted({_absolute(p) for p in found})


def _absolute(path: Path) -> Path:
    # abspath, not resolve(): the ref keeps the configured name of a symlink (certbot's live/
    # links change target on every renewal; the location must not).
    return Path(os.path.abspath(path))  # noqa: PTH100


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _entry_is_dir(entry: os.DirEntry[str], *, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _glob(pattern: Path) -> Iterator[Path]:
    """Paths matching ``pattern``. Unlike ``glob.glob(recursive=True)``, ``**`` does not follow
    symlinked directories (a link loop would recurse until ELOOP, and a link could lead out of
    the configured tree); bounded ``*`` segments do follow them, like the shell."""
    parts = pattern.parts
    first_magic = next(i for i, s in enumerate(parts) if _MAGIC.search(s))
    base = Path(*parts[:first_magic]) if first_magic else Path()
    return _match(base, parts[first_magic:])


def _match(directory: Path, segments: Sequence[str]) -> Iterator[Path]:
    if not segments:
        yield directory
        return
    segment, rest = segments[0], segments[1:]
    if segment == "**":
        if not rest:
            # Naming the directory is enough: expand() walks it recursively.
            if directory.is_dir():
                yield directory
            return
        yield from _match(directory, rest)  # ** matches zero directories too
        for entry in _scandir(directory):
            if not _hidden(entry.name) and _entry_is_dir(entry, follow=False):
                yield from _match(directory / entry.name, segments)
    elif _MAGIC.search(segment):
        for entry in _scandir(directory):
            if _hidden(entry.name) and not segment.startswith("."):
                continue
            if not fnmatch.fnmatchcase(entry.name, segment):
                continue
            if not rest:
                yield directory / entry.name
            elif _entry_is_dir(entry, follow=True):
                yield from _match(directory / entry.name, rest)
    else:
        path = directory / segment
        if rest:
            if path.is_dir():
                yield from _match(path, rest)
        elif os.path.lexists(path):
            yield path


def _walk(top: Path, found: set[Path]) -> None:
    def unlistable(error: OSError) -> None:
        found.add(Path(error.filename) if isinstance(error.filename, str) else top)

    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=False):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:
            if _hidden(name):
                continue
            path = Path(dirpath, name)
            if name.lower().endswith(CERT_EXTENSIONS) or (not path.suffix and _contains_pem(path)):
                found.add(path)


def _contains_pem(path: Path) -> bool:
    try:
        return b"-----BEGIN" in _read(path, _SNIFF_BYTES, prefix=True)
    except _ReadError:
        return False  # nothing shows it is a certificate file: leave it alone


# ---------------------------------------------------------------------------------------------
# reading


class _ReadError(Exception):
    def __init__(self, code: ProblemCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _read(path: Path, limit: int, *, prefix: bool = False) -> bytes:
    """The bytes of a regular file, at most ``limit`` of them.

    ``O_NONBLOCK`` so that opening a FIFO cannot hang the worker thread; ``fstat`` on the open
    descriptor (not ``stat`` on the name) so the checks apply to what is actually read. With
    ``prefix`` the first ``limit`` bytes are returned; otherwise a larger file is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise _ReadError(ProblemCode.UNREADABLE, _os_reason(path, e)) from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _ReadError(ProblemCode.UNREADABLE, "is a directory, not a certificate file")
        if not stat.S_ISREG(st.st_mode):
            raise _ReadError(ProblemCode.UNREADABLE, "not a regular file")
        if not prefix and st.st_size > limit:
            raise _ReadError(ProblemCode.MALFORMED, _too_large(st.st_size, limit))
        chunks: list[bytes] = []
        total = 0
        want = limit if prefix else limit + 1  # one byte more tells a file that grew
        while total < want:
            chunk = os.read(fd, min(_READ_CHUNK, want - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise _ReadError(ProblemCode.MALFORMED, _too_large(total, limit))
        return b"".join(chunks)
    except OSError as e:
        raise _ReadError(ProblemCode.UNREADABLE, _os_reason(path, e)) from e
    finally:
        os.close(fd)


def _too_large(size: int, limit: int) -> str:
    return f"file too large ({size} bytes, limit {limit // (1024 * 1024)} MiB)"


def _os_reason(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOENT and path.is_symlink():
        try:
            return f"broken symlink to {_one_line(str(path.readlink()))} (no such file)"
        except OSError:
            return "broken symlink"
    if e.errno == errno.ENOENT:
        return "no such file (it vanished or was never there)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return _one_line(e.strerror or type(e).__name__)


def _one_line(text: str) -> str:
    """Control characters out (a file name may hold a newline), length capped."""
    text = text.translate(_CONTROL)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


# ---------------------------------------------------------------------------------------------
# passphrases


@dataclass(frozen=True, slots=True)
class _Secret:
    value: bytes | None = field(default=None, repr=False)
    source: str = ""
    problem: str | None = None


class _Passphrase:
    """The target's PKCS#12 passphrase, looked up once and only when an archive needs it (a
    missing variable must not fail the PEM files of the same target)."""

    def __init__(self, target: FileTarget, env: Mapping[str, str]) -> None:
        self._target = target
        self._env = env
        self._secret: _Secret | None = None

    def get(self) -> _Secret:
        if self._secret is None:
            self._secret = self._lookup()
        return self._secret

    def _lookup(self) -> _Secret:
        problems: list[str] = []
        name = self._target.password_env
        if name:
            value = self._env.get(name)
            if value is not None:
                # surrogateescape gives back the bytes os.environ decoded from a non-UTF-8 value
                return _Secret(
                    value.encode("utf-8", "surrogateescape"), f"environment variable {name}"
                )
            problems.append(f"environment variable {name} is not set")
        pfile = self._target.password_file
        if pfile:
            try:
                data = _read(Path(pfile).expanduser(), _MAX_PASSPHRASE_BYTES)
            except _ReadError as e:
                problems.append(f"cannot read password_file {_one_line(pfile)}: {e.reason}")
            else:
                return _Secret(data.rstrip(b"\r\n"), f"password_file {_one_line(pfile)}")
        return _Secret(problem="; ".join(problems) if problems else None)


# ---------------------------------------------------------------------------------------------
# parsing: bytes -> entries (a certificate or a failure, in bundle order)


@dataclass(frozen=True, slots=True)
class _Failure:
    code: ProblemCode
    reason: str


_Entry = ParsedCert | _Failure


def _parse(data: bytes, name: str, passphrase: _Passphrase, *, explicit: bool) -> list[_Entry]:
    if not data.strip():
        return [_Failure(ProblemCode.MALFORMED, "no certificate found (empty file)")]
    if is_pkcs12(data):
        return _parse_pkcs12(data, passphrase)
    if looks_like_pem(data):
        return _parse_pem(data, explicit=explicit)
    if name.lower().endswith(_PKCS12_EXTENSIONS):
        return [_Failure(ProblemCode.MALFORMED, "no certificate found: not a PKCS#12 archive")]
    if data[0] == 0x30:  # a DER SEQUENCE: try it as one certificate
        try:
            return [parse_der(data)]
        except CertificateParseError as e:
            return [_Failure(ProblemCode.MALFORMED, _one_line(e.message))]
    return [_Failure(ProblemCode.MALFORMED, "no certificate found: not PEM, DER or PKCS#12 data")]


def _parse_pem(data: bytes, *, explicit: bool) -> list[_Entry]:
    """Every certificate block in file order; other blocks (keys, CSRs, parameters) skipped.

    Blocks are delimited here rather than with one BEGIN..END regex: a block whose END line is
    damaged must not swallow the good block after it.
    """
    entries: list[_Entry] = []
    other_labels: set[str] = set()
    begins = list(_PEM_BEGIN.finditer(data))
    for i, begin in enumerate(begins):
        label = begin.group(1).strip()
        stop = begins[i + 1].start() if i + 1 < len(begins) else len(data)
        end = _PEM_END.search(data, begin.end(), stop)
        if label not in _CERT_LABELS:
            other_labels.add(label.decode("ascii", "replace"))
            continue
        where = f"certificate block #{len(entries)}"
        if end is None or end.group(1).strip() != label:
            reason = f"{where} has no matching END line"
            entries.append(_Failure(ProblemCode.MALFORMED, reason))
            continue
        try:
            der = base64.b64decode(
                _WHITESPACE.sub(b"", data[begin.end() : end.start()]), validate=True
            )
        except (binascii.Error, ValueError):
            entries.append(_Failure(ProblemCode.MALFORMED, f"{where}: invalid base64"))
            continue
        if label == b"TRUSTED CERTIFICATE":
            length = _der_length(der)
            der = der[:length] if length is not None else der
        try:
            entries.append(parse_der(der))
        except CertificateParseError as e:
            entries.append(_Failure(ProblemCode.MALFORMED, f"{where}: {_one_line(e.message)}"))
    if entries:
        return entries
    if other_labels and not explicit:
        # A key, CSR or DH-parameter file found by a walk or a glob (privkey.pem, dhparam.pem
        # sit next to the certificates): not a certificate file, nothing to report.
        return []
    if other_labels:
        labels = ", ".join(sorted(_one_line(x) for x in other_labels))
        return [_Failure(ProblemCode.MALFORMED, f"no certificate found (only {labels} blocks)")]
    return [_Failure(ProblemCode.MALFORMED, "no certificate found (no complete PEM block)")]


def _parse_pkcs12(data: bytes, passphrase: _Passphrase) -> list[_Entry]:
    length = _der_length(data)
    if length is not None and length != len(data):
        return [
            _Failure(
                ProblemCode.MALFORMED,
                f"damaged PKCS#12 archive: its header says {length} bytes, "
                f"the file has {len(data)}",
            )
        ]
    secret = passphrase.get()
    # An unencrypted archive opens only without a passphrase, so fall back to none.
    attempts: list[bytes | None] = [secret.value, None] if secret.value else [None]
    for password in attempts:
        try:
            certs = parse_pkcs12(data, password)
        except (CertificateParseError, UnsupportedAlgorithm):
            continue
        if not certs:
            return [_Failure(ProblemCode.MALFORMED, "no certificate found in PKCS#12 archive")]
        return list(certs)
    if secret.problem is not None:
        reason = f"cannot open PKCS#12 archive: {secret.problem}"
    elif not secret.value:
        reason = (
            "cannot open PKCS#12 archive: it is passphrase-protected and no passphrase is "
            "configured (password_env or password_file)"
        )
    else:
        reason = f"cannot open PKCS#12 archive: wrong passphrase (from {secret.source}) or damaged"
    return [_Failure(ProblemCode.UNREADABLE, reason)]


def _der_length(data: bytes) -> int | None:
    """Total length of the first DER TLV (one-byte tag), None when indefinite or unreadable."""
    if len(data) < 2:
        return None
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if n == 0 or n > 8 or len(data) < 2 + n:
        return None  # 0x80 is BER's indefinite length, which some old PKCS#12 writers use
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


# ---------------------------------------------------------------------------------------------
# scanning


def scan_file_target(
    target: FileTarget,
    now: datetime,
    *,
    env: Mapping[str, str],
    policy: JudgePolicy = DEFAULT_POLICY,
) -> list[Observation]:
    """One observation per certificate in the files ``target`` names (see :func:`expand`).

    ``ref`` is ``file://{absolute path}#{index}``, the index being the certificate's position
    in its file (PEM blocks in order, PKCS#12 leaf then additional certificates, 0 for DER and
    for a file that fails as a whole). ``chain`` holds every certificate of the file, in file
    order. ``env`` supplies ``password_env`` (pass ``os.environ``).

    A key-only PEM file found by a walk or glob yields no observation; named on its own it is
    ``malformed``. Never raises for bad files.
    """
    passphrase = _Passphrase(target, env)
    named = _named_file(target)
    observations: list[Observation] = []
    for path in expand(target):
        observations.extend(
            _scan_path(path, target, now, policy, passphrase, explicit=path == named)
        )
    return observations


def _named_file(target: FileTarget) -> Path | None:
    """The file the pattern names literally, if it does."""
    if not target.pattern:
        return None
    pattern = Path(target.pattern).expanduser()
    if os.path.lexists(pattern) and not pattern.is_dir():
        return _absolute(pattern)
    return None


def _scan_path(
    path: Path,
    target: FileTarget,
    now: datetime,
    policy: JudgePolicy,
    passphrase: _Passphrase,
    *,
    explicit: bool,
) -> list[Observation]:
    started = time.perf_counter()
    try:
        data = _read(path, MAX_FILE_BYTES)
    except _ReadError as e:
        entries: list[_Entry] = [_Failure(e.code, e.reason)]
    else:
        entries = _parse(data, path.name, passphrase, explicit=explicit)
        del data  # may hold a private key: keep it no longer than needed
    chain = tuple(e.info for e in entries if isinstance(e, ParsedCert))
    judged = [
        tuple(judge_stored(e, now, policy)) if isinstance(e, ParsedCert) else () for e in entries
    ]
    duration = time.perf_counter() - started
    shown = _one_line(str(path))
    out: list[Observation] = []
    for index, (entry, problems) in enumerate(zip(entries, judged, strict=True)):
        ref = f"file://{path}#{index}"
        if isinstance(entry, ParsedCert):
            out.append(
                Observation(
                    source=SOURCE,
                    ref=ref,
                    target=target.name,
                    observed_at=now,
                    problems=problems,
                    leaf=entry.info,
                    chain=chain,
                    duration_seconds=duration,
                    labels=target.labels,
                )
            )
        else:
            message = _one_line(f"{shown}: {entry.reason}")
            out.append(
                Observation(
                    source=SOURCE,
                    ref=ref,
                    target=target.name,
                    observed_at=now,
                    problems=(Problem(entry.code, message),),
                    error=message,
                    duration_seconds=duration,
                    labels=target.labels,
                )
            )
    return out
