"""The ``files`` deploy target: certificate and key files on this host, then a config test and
a reload (nginx, HAProxy, Apache, Postfix ...).

Order of a deploy (../shared/components.md, nginx): validate what was issued; keep the current
files as ``<path>.certpilot-prev``; write each new file atomically; run ``test_command``
(``nginx -t``); run ``reload_command`` (``nginx -s reload``). Any failure puts the previous files
back before ``DeployError`` is raised, and a failed reload is followed by a second, best-effort
reload so the server reads the restored files again. Whether the new certificate is actually
*served* is checked afterwards by the remediator, which re-probes :meth:`FilesTarget.endpoints`
(nginx's reload is asynchronous: the command returns before the workers swap).

Atomic write, per file (the recipe of ``rename(2)`` and
https://lwn.net/Articles/457667/): a temporary file in the same directory, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and the final mode (``0600`` for keys: there is never a
moment when a key file is readable by others), write, ``fsync``, ``rename`` over the target,
``fsync`` the directory. A reader sees the old file or the new one, never half of either.

The previous version is kept as a hard link (``link(2)`` then ``rename``): the bytes, mode and
owner are exactly the old file's, and keeping or restoring it needs no free space, so a full
disk can always be rolled back. Filesystems without hard links get a copy instead.

File work is synchronous on purpose: a few small files and fsyncs take milliseconds, and doing
them on the event loop leaves the command awaits as the only cancellation points, so a
cancelled deploy always restores the previous files before ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hashlib
import logging
import os
import pwd
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certpilot.domain.errors import ConfigError, UsageError
from certpilot.domain.model import EndpointTarget
from certpilot.domain.remedy import DeployError, DeployReceipt, IssuedCertificate
from certpilot.settings import parse_duration
from certpilot.targets import split_host_port
from remediator.targets.command import CommandResult, run_command

log = logging.getLogger(__name__)

KIND = "files"
KEY_MODE = 0o600
"""Private keys are written owner-only, always (DESIGN.md section 5)."""
PREV_SUFFIX = ".certpilot-prev"
_TMP_MARK = ".certpilot-tmp."

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)
_PEM_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


@dataclass(frozen=True, slots=True)
class FilesTargetConfig:
    """Where the files go and how the server is told.

    * ``cert_path`` holds the leaf followed by its intermediates (nginx ``ssl_certificate``),
      unless ``chain_path`` is set: then ``cert_path`` holds the leaf only and ``chain_path``
      the intermediates (certbot's ``cert.pem`` / ``chain.pem``, Apache's
      ``SSLCertificateChainFile``; empty when the issuer sent no intermediate).
      ``fullchain_path`` always gets leaf + intermediates.
    * ``key_path`` is written ``0600``; certificate files ``cert_mode`` (default ``0644``).
    * ``owner`` / ``group`` (name or number) apply to every file written; when unset, a
      replaced file keeps its current owner and group.
    * ``test_command`` and ``reload_command`` are argv lists (no shell), each bounded by
      ``timeout`` seconds; ``env`` is their whole environment (``None``: a default ``PATH``
      only; see ``command.default_env``).
    * ``endpoints`` are what serve these files: the remediator re-probes them after a deploy.
    """

    cert_path: Path
    key_path: Path
    chain_path: Path | None = None
    fullchain_path: Path | None = None
    owner: str | int | None = None
    group: str | int | None = None
    cert_mode: int = 0o644
    test_command: tuple[str, ...] = ()
    reload_command: tuple[str, ...] = ()
    timeout: float = 30.0
    kill_grace: float = 2.0
    env: Mapping[str, str] | None = None
    endpoints: tuple[EndpointTarget, ...] = ()

    def __post_init__(self) -> None:
        paths = [p for p in self.paths() if p is not None]
        if len({p.absolute() for p in paths}) != len(paths):
            raise ValueError("cert, key, chain and fullchain paths must all differ")
        if self.cert_mode & ~0o777 or self.cert_mode & 0o022:
            raise ValueError("cert_mode must be a permission mode without group/other write")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")

    def paths(self) -> tuple[Path | None, ...]:
        return (self.cert_path, self.key_path, self.chain_path, self.fullchain_path)


@dataclass(frozen=True, slots=True)
class _File:
    """One file of a deploy. ``data`` may be key material: excluded from repr."""

    role: str  # cert | chain | fullchain | key
    path: Path
    data: bytes = field(repr=False)
    mode: int
    secret: bool


@dataclass(slots=True)
class _Installed:
    """A file this deploy replaced: ``prev`` is its kept previous version, ``None`` when the
    deploy created it."""

    role: str
    path: Path
    prev: Path | None


class FilesTarget:
    """Files + test + reload. Implements ``certpilot.domain.remedy.DeployTarget``."""

    kind = KIND

    def __init__(self, name: str, config: FilesTargetConfig) -> None:
        self.name = name
        self.config = config
        # One deploy or rollback of a target at a time: they share the .certpilot-prev files.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FilesTarget({self.name!r}, cert={str(self.config.cert_path)!r})"

    def endpoints(self) -> Sequence[EndpointTarget]:
        return self.config.endpoints

    def locations(self) -> Sequence[str]:
        """The inventory refs of the files this target writes (the files scanner's
        ``file://<absolute path>#0`` for the leaf), so a scanned file maps to its target."""
        paths = [self.config.cert_path, self.config.fullchain_path]
        return [f"file://{os.path.abspath(p)}#0" for p in paths if p is not None]  # noqa: PTH100

    async def current(self) -> IssuedCertificate | None:
        """The certificate and key on disk now (what ``certpilot redeploy`` pushes out again);
        ``None`` when a file is missing or does not parse. Implements
        ``certpilot.domain.remedy.CertificateHolder``."""
        c = self.config
        try:
            chain = c.cert_path.read_bytes()
            if c.chain_path is not None and c.chain_path.exists():
                chain = chain.rstrip(b"\n") + b"\n" + c.chain_path.read_bytes()
            key = c.key_path.read_bytes()
            blocks = _PEM_CERT.findall(chain)
            if not blocks or not _PEM_KEY.search(key):
                return None
            leaf = x509.load_pem_x509_certificate(blocks[0])
        except (OSError, ValueError):
            return None
        der = leaf.public_bytes(serialization.Encoding.DER)
        return IssuedCertificate(
            chain_pem=b"".join(b if b.endswith(b"\n") else b + b"\n" for b in blocks),
            key_pem=key,
            serial=format(leaf.serial_number, "x"),
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            issuer_name="",
        )

    # -- deploy ----------------------------------------------------------------------------

    async def deploy(self, cert: IssuedCertificate) -> DeployReceipt:
        """Write, test, reload; on any failure put the previous files back and raise
        :class:`DeployError` with ``step`` ``validate``, ``write``, ``test`` or ``reload``."""
        files, serial = self._plan(cert)
        async with self._lock:
            installed: list[_Installed] = []
            try:
                self._install(files, installed)
            except OSError as e:
                self._restore_quietly(installed)
                raise DeployError(self.name, "write", _os_message(e)) from e
            reloading = False
            try:
                await self._step("test", self.config.test_command)
                reloading = True
                await self._step("reload", self.config.reload_command)
            except BaseException:
                self._restore_quietly(installed)
                if reloading and self.config.reload_command:
                    # The server may have read the new files already: have it read the old
                    # ones again. Best effort: the first reload just failed.
                    again = await asyncio.shield(self._run(self.config.reload_command))
                    if not again.ok:
                        log.warning(
                            "%s: reload after restore failed: %s", self.name, again.describe()
                        )
                raise
        state = self._receipt_state(files, installed)
        log.info(
            "%s: deployed serial %s to %s",
            self.name,
            serial,
            ", ".join(str(f.path) for f in files),
        )
        return DeployReceipt(target=self.name, serial=serial, state=MappingProxyType(state))

    def _plan(self, cert: IssuedCertificate) -> tuple[list[_File], str]:
        """The files to write, and the leaf's serial; ``DeployError(step="validate")`` when
        ``cert`` is not a usable certificate + key."""
        blocks = _PEM_CERT.findall(cert.chain_pem)
        if not blocks:
            raise DeployError(self.name, "validate", "chain_pem holds no PEM certificate")
        if not _PEM_KEY.search(cert.key_pem):
            raise DeployError(self.name, "validate", "key_pem holds no PEM private key")
        try:
            leaf = x509.load_pem_x509_certificate(blocks[0])
        except ValueError as e:
            raise DeployError(self.name, "validate", f"leaf certificate unreadable: {e}") from e
        serial = format(leaf.serial_number, "x")
        fullchain = _normalise(b"".join(blocks))
        c = self.config
        files: list[_File] = []
        if c.chain_path is None:
            files.append(_File("cert", c.cert_path, fullchain, c.cert_mode, False))
        else:
            files.append(_File("cert", c.cert_path, _normalise(blocks[0]), c.cert_mode, False))
            chain = _normalise(b"".join(blocks[1:]))
            files.append(_File("chain", c.chain_path, chain, c.cert_mode, False))
        if c.fullchain_path is not None:
            files.append(_File("fullchain", c.fullchain_path, fullchain, c.cert_mode, False))
        files.append(_File("key", c.key_path, _normalise(cert.key_pem), KEY_MODE, True))
        return files, serial

    def _install(self, files: Sequence[_File], installed: list[_Installed]) -> None:
        """Keep each current file as ``.certpilot-prev``, then write the new one; ``installed``
        grows as files are replaced so the caller can restore after a partial failure."""
        uid, gid = _resolve_owner(self.config.owner, self.config.group)
        for f in files:
            path = _real(f.path)
            try:
                _remove_stale_temps(path)
                try:
                    current = path.lstat()
                except FileNotFoundError:
                    current = None
                prev: Path | None = None
                if current is not None:
                    if not stat.S_ISREG(current.st_mode):
                        raise OSError(errno.EINVAL, "not a regular file")
                    prev = _prev_path(path)
                    _keep(path, prev)
                installed.append(_Installed(f.role, path, prev))
                f_uid = uid if uid != -1 or current is None else current.st_uid
                f_gid = gid if gid != -1 or current is None else current.st_gid
                strict = uid != -1 or gid != -1
                _atomic_write(path, f.data, f.mode, f_uid, f_gid, strict_owner=strict)
            except OSError as e:
                # os.write() errors carry no file name, os.open() ones the temp file's: name
                # the file the user configured.
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e

    def _receipt_state(
        self, files: Sequence[_File], installed: Sequence[_Installed]
    ) -> dict[str, str]:
        """Paths only, and the SHA-256 of the (public) certificate file as deployed, so a
        rollback can tell that a later deploy has replaced it. Never anything about the key."""
        state: dict[str, str] = {"roles": ",".join(i.role for i in installed)}
        for i in installed:
            state[f"{i.role}.path"] = str(i.path)
            state[f"{i.role}.prev"] = str(i.prev) if i.prev is not None else ""
        cert = next(f for f in files if f.role == "cert")
        state["cert.sha256"] = hashlib.sha256(cert.data).hexdigest()
        return state

    # -- rollback --------------------------------------------------------------------------

    async def rollback(self, receipt: DeployReceipt) -> None:
        """Put back the files ``receipt``'s deploy replaced (remove those it created), then
        test and reload. Refuses (``step="rollback"``) when the files changed since that
        deploy, e.g. a later deploy: restoring then would bring back the wrong certificate."""
        if receipt.target != self.name:
            raise DeployError(self.name, "rollback", f"receipt is for target {receipt.target!r}")
        installed = _installed_from_state(self.name, receipt.state)
        async with self._lock:
            cert = next((i for i in installed if i.role == "cert"), None)
            if cert is not None:
                try:
                    current = hashlib.sha256(cert.path.read_bytes()).hexdigest()
                except OSError as e:
                    raise DeployError(self.name, "rollback", _os_message(e)) from e
                if current != receipt.state.get("cert.sha256"):
                    raise DeployError(
                        self.name,
                        "rollback",
                        f"{cert.path} changed since the deploy of serial {receipt.serial}; "
                        "not rolling back over it",
                    )
            for i in installed:
                if i.prev is not None and not i.prev.exists():
                    raise DeployError(
                        self.name, "rollback", f"previous version {i.prev} is missing"
                    )
            try:
                _restore(installed)
            except OSError as e:
                raise DeployError(self.name, "rollback", _os_message(e)) from e
            for step, argv in (
                ("test", self.config.test_command),
                ("reload", self.config.reload_command),
            ):
                result = await self._run(argv)
                if not result.ok:
                    raise DeployError(
                        self.name, "rollback", f"{step} after restore: {result.describe()}"
                    )
        log.info("%s: rolled back serial %s", self.name, receipt.serial)

    # -- helpers ---------------------------------------------------------------------------

    async def _run(self, argv: Sequence[str]) -> CommandResult:
        if not argv:
            return CommandResult((), 0)
        return await run_command(
            argv,
            timeout=self.config.timeout,
            env=self.config.env,
            kill_grace=self.config.kill_grace,
        )

    async def _step(self, step: str, argv: Sequence[str]) -> None:
        result = await self._run(argv)
        if not result.ok:
            raise DeployError(self.name, step, result.describe())

    def _restore_quietly(self, installed: Sequence[_Installed]) -> None:
        try:
            _restore(installed)
        except OSError as e:
            # Nothing better to do than say so loudly: the original error is what propagates.
            log.error("%s: restoring previous files failed: %s", self.name, _os_message(e))


# -- file primitives ---------------------------------------------------------------------------


def _normalise(pem: bytes) -> bytes:
    """PEM text ending in exactly one newline (servers concatenate files)."""
    return pem.strip() + b"\n" if pem.strip() else b""


def _real(path: Path) -> Path:
    """Write through symlinks (``live/x.pem -> ../archive/x3.pem``): replace the file the link
    points at, not the link."""
    return Path(os.path.realpath(path))


def _prev_path(path: Path) -> Path:
    return path.with_name(path.name + PREV_SUFFIX)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(6)}")


def _remove_stale_temps(path: Path) -> None:
    """Temporary files a killed deploy left behind (they may hold a key: 0600, but still).
    One deploy per target at a time is the executor's job (jobs are locked)."""
    prefixes = (f".{path.name}{_TMP_MARK}", f".{path.name}{PREV_SUFFIX}{_TMP_MARK}")
    for stale in [p for p in path.parent.iterdir() if p.name.startswith(prefixes)]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write(
    path: Path, data: bytes, mode: int, uid: int, gid: int, *, strict_owner: bool
) -> None:
    """Temp file with ``mode`` from creation, write, fsync, rename over ``path``, fsync dir.

    The umask can only narrow the creation mode; ``fchmod`` then sets exactly ``mode`` (never
    wider than the file's final mode at any moment). On failure the temp file is removed and
    ``path`` is untouched.
    """
    tmp = _temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        try:
            _chown(fd, uid, gid, strict=strict_owner)
            os.fchmod(fd, mode)  # after chown: chown clears set-id bits
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _chown(fd: int, uid: int, gid: int, *, strict: bool) -> None:
    if uid == -1 and gid == -1:
        return
    st = os.fstat(fd)
    if (uid in (-1, st.st_uid)) and (gid in (-1, st.st_gid)):
        return
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        if strict:  # configured ownership that cannot be had is an error
            raise
        # Keeping a replaced file's owner is a courtesy a non-root certpilot cannot always give.
        log.warning("cannot keep owner %s:%s of a replaced file (not root)", uid, gid)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` (absent) a hard link to ``src``, or an exact copy (bytes, mode, owner)
    where the filesystem has no hard links."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
    st = src.lstat()
    data = src.read_bytes()
    mode = stat.S_IMODE(st.st_mode)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _chown(fd, st.st_uid, st.st_gid, strict=False)
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            dst.unlink()
        raise
    os.close(fd)


def _replace_with(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a version of ``src`` (which stays): link/copy to a temp name,
    rename over ``dst``, fsync the directory."""
    tmp = _temp_path(dst)
    try:
        _link_or_copy(src, tmp)
        tmp.replace(dst)
    finally:
        # Gone after a rename, except when ``dst`` already was a link to the same inode
        # (a restore after a failed deploy links them): rename(2) then does nothing.
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(dst.parent)


def _keep(path: Path, prev: Path) -> None:
    """``path``'s current version becomes ``prev`` (replacing an older ``prev``)."""
    _replace_with(path, prev)


def _restore(installed: Sequence[_Installed]) -> None:
    """Put every previous version back (newest first); remove files a deploy created.

    Keeps going after a failure so as much as possible is restored, then raises the first.
    """
    first: OSError | None = None
    for i in reversed(installed):
        try:
            if i.prev is None:
                with contextlib.suppress(FileNotFoundError):
                    i.path.unlink()
                _fsync_dir(i.path.parent)
            else:
                _replace_with(i.prev, i.path)
        except OSError as e:
            first = first or e
    if first is not None:
        raise first


def _resolve_owner(owner: str | int | None, group: str | int | None) -> tuple[int, int]:
    """Numeric uid/gid (``-1``: leave as is). Unknown names are an ``OSError`` so they surface
    as a ``write`` failure naming the user."""
    uid = gid = -1
    try:
        if owner is not None:
            uid = owner if isinstance(owner, int) else pwd.getpwnam(owner).pw_uid
        if group is not None:
            gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except KeyError as e:
        raise OSError(errno.EINVAL, f"unknown user or group {e.args[0]}") from e
    return uid, gid


def _os_message(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def _installed_from_state(target: str, state: Mapping[str, str]) -> list[_Installed]:
    roles = [r for r in state.get("roles", "").split(",") if r]
    if not roles:
        raise DeployError(target, "rollback", "receipt records no files")
    out: list[_Installed] = []
    for role in roles:
        path = state.get(f"{role}.path")
        if not path:
            raise DeployError(target, "rollback", f"receipt has no path for {role}")
        prev = state.get(f"{role}.prev", "")
        out.append(_Installed(role, Path(path), Path(prev) if prev else None))
    return out


# -- configuration -----------------------------------------------------------------------------

_FIELDS = (
    "cert_path",
    "key_path",
    "chain_path",
    "fullchain_path",
    "owner",
    "group",
    "cert_mode",
    "test_command",
    "reload_command",
    "timeout",
    "kill_grace",
    "env",
    "endpoints",
)
_ENDPOINT_KEYS = {"host", "port", "sni", "address"}
_NO_VALUE = object()


class _Options:
    """Reads YAML-shaped options; every failure is a ``ConfigError`` naming the field."""

    def __init__(self, data: Mapping[str, object], source: str, field: str) -> None:
        self.data = data
        self.source = source
        self.field = field

    def fail(self, name: str, expected: str, value: object = _NO_VALUE) -> NoReturn:
        raise ConfigError(
            self.source,
            f"{self.field}.{name}" if name else self.field,
            expected,
            None if value is _NO_VALUE else value,
            has_value=value is not _NO_VALUE,
        )

    def path(self, name: str) -> Path | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(name, "a file path", value)
        return Path(value)

    def required_path(self, name: str) -> Path:
        return self.path(name) or self.fail(name, "a file path (required)")

    def argv(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if not isinstance(value, list | tuple) or not value:
            self.fail(name, "an argv list such as [nginx, -t] (no shell)", value)
        args = tuple(a for a in value if isinstance(a, str))
        if len(args) != len(value):
            self.fail(name, "an argv list of strings", value)
        return args

    def duration(self, name: str, default: float) -> float:
        value = self.data.get(name, default)
        try:
            return parse_duration(value)
        except ValueError:
            self.fail(name, "a duration such as 30s", value)

    def ident(self, name: str) -> str | int | None:
        value = self.data.get(name)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        self.fail(name, "a user or group name or number", value)

    def mode(self, name: str, default: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value):
            return int(value.replace("o", ""), 8)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.fail(name, "an octal mode such as '0644'", value)

    def env(self, name: str) -> Mapping[str, str] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail(name, "a mapping of variable names to strings", value)
        env = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
        if len(env) != len(value):
            self.fail(name, "a mapping of variable names to strings", value)
        return MappingProxyType(env)

    def endpoints(self, name: str) -> tuple[EndpointTarget, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            self.fail(name, "a list of host:port or {host, port, sni, address}", value)
        return tuple(self._endpoint(f"{name}[{n}]", item) for n, item in enumerate(value))

    def _endpoint(self, name: str, item: object) -> EndpointTarget:
        expected = "host:port or {host, port, sni, address}"
        if isinstance(item, str):
            try:
                return EndpointTarget(*split_host_port(item))
            except UsageError as e:
                self.fail(name, f"{expected} ({e.message})", item)
        if isinstance(item, Mapping) and set(item) <= _ENDPOINT_KEYS:
            host, port = item.get("host"), item.get("port", 443)
            sni, address = item.get("sni"), item.get("address")
            if (
                isinstance(host, str)
                and host
                and isinstance(port, int)
                and not isinstance(port, bool)
                and 0 < port < 65536
                and (sni is None or isinstance(sni, str))
                and (address is None or isinstance(address, str))
            ):
                return EndpointTarget(host=host, port=port, sni=sni, address=address)
        self.fail(name, expected, item)


def config_from_mapping(
    data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> FilesTargetConfig:
    """A :class:`FilesTargetConfig` from YAML-shaped data; ``ConfigError`` names the field.

    Keys are the dataclass's field names. ``endpoints`` items are ``host:port`` strings or
    ``{host, port, sni, address}`` mappings; commands are argv lists (a string is refused: no
    shell, and no guessing how to split it); ``cert_mode`` an int or an octal string
    (``"0640"``); ``timeout`` and ``kill_grace`` durations (``30s``).
    """
    o = _Options(data, source, field)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        o.fail(unknown[0], f"one of the files target's options: {', '.join(_FIELDS)}")
    try:
        return FilesTargetConfig(
            cert_path=o.required_path("cert_path"),
            key_path=o.required_path("key_path"),
            chain_path=o.path("chain_path"),
            fullchain_path=o.path("fullchain_path"),
            owner=o.ident("owner"),
            group=o.ident("group"),
            cert_mode=o.mode("cert_mode", 0o644),
            test_command=o.argv("test_command"),
            reload_command=o.argv("reload_command"),
            timeout=o.duration("timeout", 30.0),
            kill_grace=o.duration("kill_grace", 2.0),
            env=o.env("env"),
            endpoints=o.endpoints("endpoints"),
        )
    except ValueError as e:  # FilesTargetConfig's own cross-field checks
        raise ConfigError(source, field, str(e), has_value=False) from e


def from_config(
    name: str, data: Mapping[str, object], *, source: str = "config", field: str = "targets"
) -> FilesTarget:
    """The ``files`` entry of ``remediator.targets.TARGET_TYPES``."""
    return FilesTarget(name, config_from_mapping(data, source=source, field=field))
