"""Real services on loopback: nginx serving many TLS endpoints, and blackbox_exporter.

Both follow the recipes in ``shared/components.md``: a private work directory per run (config,
pid file, logs, temp paths), free ports picked by binding ``127.0.0.1:0``, a readiness poll, and
a stop by PID only (never by process name), so parallel runs and CI jobs never collide.

A test that needs a binary calls :func:`require_binary`: it skips on a developer machine where
the package is missing and fails under ``CI`` (where ``make test`` must have installed it).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import yaml

from certpilot.domain.model import EndpointTarget
from certpilot.localca import Issued, LocalCA, write_key

# Debian installs daemons in sbin, which a non-root PATH often lacks.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

EndpointSpec = tuple[str, bytes, bytes]
"""``(server_name, certificate chain PEM (leaf first), private key PEM)``."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in an sbin directory."""
    here = str(Path(sys.executable).parent)  # the venv: pip-installed binaries (bao)
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join([here, *_SBIN_DIRS]))


def require_binary(name: str) -> str:
    """Path of ``name``; a missing binary skips the test, or fails it when ``CI`` is set.

    DESIGN.md section 4: under CI ``make test`` installs every service, so absence is a bug.
    """
    path = find_binary(name)
    if path is not None:
        return path
    import pytest  # only tests reach this point; benchmarks use find_binary()

    msg = f"{name} is not installed (`make test` installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI is set, so this is an error", pytrace=False)
    pytest.skip(msg)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state field follows the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _atomic_write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write via a temporary file and ``os.replace`` so a reload never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if private:
        write_key(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class NginxEndpoint:
    """One ``server`` block: its name (SNI), port and certificate files."""

    server_name: str
    port: int
    cert_path: Path
    key_path: Path

    def target(self, address: str = "127.0.0.1") -> EndpointTarget:
        return EndpointTarget(host=self.server_name, port=self.port, address=address)


class NginxFleet:
    """A private nginx serving TLS endpoints on 127.0.0.1, each with its own certificate.

    ``endpoints`` is either a list of ``(server_name, chain_pem, key_pem)`` or a count ``N``, in
    which case ``N`` leaves named ``ep0000.fleet.test``... are minted from ``ca`` (a new
    :class:`LocalCA` when not given; its root is written to :attr:`ca_file`), each with the
    full chain and ``extra_sans`` added to its name.

    ``sni_ports=0`` puts every endpoint on its own port (``listen 127.0.0.1:PORT ssl``); ``k > 0``
    spreads them as SNI names over ``k`` ports (round robin; the first name on a port is its
    default server). The process is nginx's own daemon: it is started with
    ``nginx -p DIR/ -c DIR/nginx.conf -e DIR/error.log`` and stopped by the PID in its pid file.
    """

    def __init__(
        self,
        workdir: Path,
        endpoints: Sequence[EndpointSpec] | int,
        *,
        sni_ports: int = 0,
        worker_processes: int | str = 1,
        ca: LocalCA | None = None,
        now: datetime | None = None,
        extra_sans: Sequence[str] = (),
        binary: str | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_binary("nginx") or "nginx"
        self.worker_processes = worker_processes
        self.start_timeout = start_timeout
        self.conf_path = self.dir / "nginx.conf"
        self.pid_path = self.dir / "nginx.pid"
        self.error_log = self.dir / "error.log"
        self.ca: LocalCA | None = ca
        self.ca_file: Path | None = None
        self.issued: dict[str, Issued] = {}
        specs: Sequence[EndpointSpec]
        if isinstance(endpoints, int):
            specs = self._mint(endpoints, now or datetime.now(UTC), list(extra_sans))
        else:
            specs = endpoints
        if not specs:
            raise ValueError("an nginx fleet needs at least one endpoint")
        names = [s[0] for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("server names must be unique")
        ports = free_ports(sni_ports if sni_ports > 0 else len(specs))
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        self.endpoints: list[NginxEndpoint] = []
        for i, (name, chain_pem, key_pem) in enumerate(specs):
            ep = NginxEndpoint(
                name, ports[i % len(ports)], certs / f"{name}.crt", certs / f"{name}.key"
            )
            _atomic_write(ep.cert_path, chain_pem)
            _atomic_write(ep.key_path, key_pem, private=True)
            self.endpoints.append(ep)
        self._by_name = {ep.server_name: ep for ep in self.endpoints}
        self._pid: int | None = None
        self.write_config()

    def _mint(self, n: int, now: datetime, extra_sans: list[str]) -> list[EndpointSpec]:
        if self.ca is None:
            self.ca = LocalCA("certpilot Test Fleet", now)
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.ca.root_pem())
        specs: list[EndpointSpec] = []
        for i in range(n):
            name = f"ep{i:04d}.fleet.test"
            issued = self.ca.issue([name, *extra_sans], now)
            self.issued[name] = issued
            specs.append((name, issued.chain_pem(), issued.key_pem()))
        return specs

    # -- configuration -------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return sorted({ep.port for ep in self.endpoints})

    def endpoint(self, server_name: str) -> NginxEndpoint:
        return self._by_name[server_name]

    def targets(self, address: str = "127.0.0.1") -> list[EndpointTarget]:
        return [ep.target(address) for ep in self.endpoints]

    def _user_directive(self) -> str:
        # As root, nginx drops its workers to "nobody"; Debian's nobody has group "nogroup",
        # not nginx's compiled-in default "nobody", so name the group explicitly.
        if os.geteuid() != 0:
            return ""
        try:
            pw = pwd.getpwnam("nobody")
            group = grp.getgrgid(pw.pw_gid).gr_name
        except KeyError:
            return "user root root;"
        return f"user nobody {group};"

    def render_config(self) -> str:
        d = self.dir
        n_listen = len(self.ports)
        # Each worker keeps a connection slot per listening socket, plus room for clients.
        worker_connections = n_listen + max(1024, len(self.endpoints))
        tmp = d / "tmp"
        lines = [
            "# generated by tests/support/services.py: a private nginx, nothing shared",
            self._user_directive(),
            f"worker_processes {self.worker_processes};",
            f"worker_rlimit_nofile {2 * worker_connections + 64};",
            f"pid {d}/nginx.pid;",
            f"error_log {d}/error.log warn;",
            "events {",
            f"    worker_connections {worker_connections};",
            "}",
            "http {",
            "    access_log off;",
            "    default_type text/plain;",
            f"    client_body_temp_path {tmp}/client_body;",
            f"    proxy_temp_path {tmp}/proxy;",
            f"    fastcgi_temp_path {tmp}/fastcgi;",
            f"    uwsgi_temp_path {tmp}/uwsgi;",
            f"    scgi_temp_path {tmp}/scgi;",
            "    server_names_hash_max_size 8192;",
            "    server_names_hash_bucket_size 128;",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            # Every probe must be a full handshake: no session resumption of any kind.
            "    ssl_session_cache off;",
            "    ssl_session_tickets off;",
        ]
        for ep in self.endpoints:
            lines += [
                "    server {",
                f"        listen 127.0.0.1:{ep.port} ssl;",
                f"        server_name {ep.server_name};",
                f"        ssl_certificate {ep.cert_path};",
                f"        ssl_certificate_key {ep.key_path};",
                '        location / { return 200 "ok\\n"; }',
                "    }",
            ]
        lines.append("}")
        return "\n".join(line for line in lines if line) + "\n"

    def write_config(self) -> None:
        (self.dir / "tmp").mkdir(exist_ok=True)
        _atomic_write(self.conf_path, self.render_config().encode())

    def _cmd(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.dir}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def _run(self, *extra: str) -> None:
        res = subprocess.run(
            self._cmd(*extra), capture_output=True, text=True, timeout=60, check=False
        )
        if res.returncode != 0:
            what = " ".join(extra) or "start"
            raise RuntimeError(f"nginx {what} failed ({res.returncode}): {res.stderr.strip()}")

    def check_config(self) -> None:
        """``nginx -t``: raises ``RuntimeError`` with nginx's message when the config is bad."""
        self._run("-t")

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The master's PID, from the pid file (nginx rewrites it on binary upgrade)."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return self._pid

    def start(self) -> Self:
        """Test the config, start the daemon, and wait until every port accepts."""
        if self._pid is not None and _alive(self._pid):
            raise RuntimeError(f"nginx already running as PID {self._pid}")
        self.check_config()
        self._run()  # daemonizes: returns once the master has forked off
        deadline = time.monotonic() + self.start_timeout
        while (pid := self.pid) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx wrote no pid file; see {self.error_log}")
            time.sleep(0.02)
        self._pid = pid
        try:
            self.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, deadline: float) -> None:
        pending = set(self.ports)
        while pending:
            for port in list(pending):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    pending.discard(port)
            if not pending:
                return
            if self._pid is not None and not _alive(self._pid):
                raise RuntimeError(f"nginx exited during start-up; see {self.error_log}")
            if time.monotonic() > deadline:
                first = sorted(pending)[:5]
                raise RuntimeError(f"{len(pending)} nginx ports never accepted, e.g. {first}")
            time.sleep(0.05)

    def reload(self) -> None:
        """``nginx -t`` then ``nginx -s reload``. Asynchronous: poll the endpoint afterwards."""
        self.write_config()
        self.check_config()
        self._run("-s", "reload")

    def replace_certificate(self, server_name: str, chain_pem: bytes, key_pem: bytes) -> None:
        """Swap one server's certificate files atomically (takes effect on :meth:`reload`)."""
        ep = self._by_name[server_name]
        _atomic_write(ep.key_path, key_pem, private=True)
        _atomic_write(ep.cert_path, chain_pem)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop by PID (``SIGQUIT``), escalating to ``SIGTERM`` and ``SIGKILL``."""
        pid = self.pid
        if pid is None:
            return
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(pid, timeout if sig == signal.SIGQUIT else 3.0):
                break
        self._pid = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def worker_pids(self) -> list[int]:
        """PIDs of the master's children (its workers), read from /proc."""
        master = self.pid
        if master is None:
            return []
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return []
        return [int(c) for c in children]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BlackboxExporter:
    """Prometheus blackbox_exporter on 127.0.0.1 with one module, ``tcp_tls``.

    ``tcp_tls`` connects, completes a TLS handshake and closes. With a ``ca_file`` (the default
    use), ``insecure_skip_verify`` is false: Go's crypto/tls verifies the presented chain up to
    that root and the certificate against the target's host, which is the same work certpilot
    does (fetch, verify against the CA file, parse) and so the fair peer for a benchmark.
    """

    module = "tcp_tls"

    def __init__(
        self,
        workdir: Path,
        *,
        ca_file: Path | None = None,
        insecure_skip_verify: bool = False,
        timeout: float = 5.0,
        binary: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_binary("prometheus-blackbox-exporter") or "blackbox_exporter"
        self.config_path = self.dir / "blackbox.yml"
        self.log_path = self.dir / "blackbox.log"
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        tls_config: dict[str, object] = {"insecure_skip_verify": insecure_skip_verify}
        if ca_file is not None:
            tls_config["ca_file"] = str(Path(ca_file).resolve())
        config = {
            "modules": {
                self.module: {
                    "prober": "tcp",
                    "timeout": f"{timeout:g}s",
                    "tcp": {
                        "preferred_ip_protocol": "ip4",
                        "ip_protocol_fallback": False,
                        "tls": True,
                        "tls_config": tls_config,
                    },
                }
            }
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def probe_url(self, target: str) -> str:
        return f"{self.url}/probe?module={self.module}&target={target}"

    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError("blackbox_exporter is already running")
        self.port = free_port()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"blackbox_exporter exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/healthy", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"blackbox_exporter not ready; see {self.log_path}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop by PID: ``SIGTERM``, then ``SIGKILL`` after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
