"""A throwaway PostgreSQL cluster on loopback for the tests (``shared/components.md`` recipe).

``initdb`` into a private directory (as the ``postgres`` user when running as root: PostgreSQL
refuses to run as root), ``pg_ctl start`` on a free port with its socket in that directory and
``fsync=off``, one fresh database per test (:meth:`PostgresCluster.database`), and a stop by the
postmaster's PID. :meth:`PostgresCluster.restart` stops and starts the same cluster on the same
port (the "PostgreSQL restarts mid-scan" fault).

:func:`find_pg_bin` looks in ``/usr/lib/postgresql/<version>/bin`` (Debian keeps the server
binaries there, off PATH) and on PATH.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.services import free_port


def find_pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if found:
        return found[0]
    return shutil.which(name)


def require_postgres() -> str:
    """The directory of the PostgreSQL server binaries; skips (or fails under CI) without."""
    initdb = find_pg_bin("initdb")
    if initdb is not None and find_pg_bin("pg_ctl") is not None:
        return str(Path(initdb).parent)
    import pytest

    msg = "PostgreSQL is not installed (`make test` installs the postgresql package)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this is an error", pytrace=False)
    pytest.skip(msg)


class PostgresCluster:
    """One cluster in ``workdir`` (created); ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, workdir: Path, bindir: str) -> None:
        self.workdir = workdir
        self.bindir = Path(bindir)
        self.data = workdir / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._databases = 0

    # -- process control -------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.workdir
        )

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            pg = pwd.getpwnam("postgres")
            # The data directory's parents must be reachable by the postgres user.
            for parent in [self.workdir, *self.workdir.parents]:
                with contextlib.suppress(OSError):
                    mode = parent.stat().st_mode
                    if not mode & 0o001:
                        os.chmod(parent, mode | 0o001)
            os.chown(self.workdir, pg.pw_uid, pg.pw_gid)

    def start(self) -> Self:
        if not self.data.exists():
            self._prepare()
            res = self._run(
                "initdb",
                *("-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"),
                *("--locale=C.UTF-8", "--no-sync"),
            )
            if res.returncode != 0:
                raise RuntimeError(f"initdb failed: {res.stderr.strip()[-500:]}")
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.workdir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        res = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "pg.log"), "-w", "start",
            "-o", opts,
        )  # fmt: skip
        if res.returncode != 0:
            log = (self.workdir / "pg.log").read_text(errors="replace")[-800:]
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()} {log}")
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the postmaster by its PID (SIGINT: fast shutdown; SIGQUIT: immediate)."""
        pid = self.pid
        if pid is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart(self, *, down_for: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode=mode)
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._databases += 1
        name = f"{prefix}{os.getpid()}_{self._databases}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
