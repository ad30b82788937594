"""A real OpenBao dev server on loopback, for the PKI issuer and KV target tests.

``bao server -dev`` (``shared/components.md``, OpenBao): in-memory storage, unsealed, KV v2 at
``secret/``, root token ``root``; with ``tls=True`` (``-dev-tls``) it serves HTTPS with a CA
of its own, written to :attr:`OpenBao.ca_file`. It listens on ``PORT`` and ``PORT+1`` (the
cluster address), so two consecutive free ports are picked, and start-up is retried on new
ports when another process took one in the meantime. Each server runs with ``HOME`` set to its
own work directory: dev mode writes the root token to ``~/.vault-token``, where it must not
outlive the test (hvac reads that file when a client is given no token). Stopped by PID only.

Usage::

    with OpenBao(tmp_path) as bao:
        bao.setup_pki(allowed_domains=["test.internal"])
        client = bao.client()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from hvac import Client  # type: ignore[import-untyped]

from tests.support.services import find_binary, free_port

ROOT_TOKEN = "root"
_UNSEAL_KEY = re.compile(r"Unseal Key: (\S+)")


def _consecutive_free_ports() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free on 127.0.0.1 a moment ago."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 1):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class OpenBao:
    """One ``bao server -dev`` in ``workdir``.

    :attr:`url` is its API address, :attr:`root_token` the dev root token; :meth:`client`
    returns an ``hvac.Client``, :meth:`setup_pki` mounts a PKI engine with an internal root
    and a role; :meth:`seal` / :meth:`unseal` (with the dev unseal key) flip the barrier.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        tls: bool = False,
        start_timeout: float = 20.0,
        attempts: int = 5,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary or find_binary("bao") or "bao"
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.tls = tls
        # -dev-tls writes a fresh CA (vault-ca.pem) and a 127.0.0.1 certificate here.
        self.ca_file: Path | None = self.dir / "tls" / "vault-ca.pem" if tls else None
        self.root_token = ROOT_TOKEN
        self.port = 0
        self.log_path = self.dir / "bao.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _opener(self) -> urllib.request.OpenerDirector:
        # Loopback only: no proxy from the environment.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("OpenBao is already running")
        last = ""
        for _ in range(self.attempts):
            self.port = _consecutive_free_ports()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except RuntimeError as e:
                last = str(e)
                exited = self.proc is not None and self.proc.poll() is not None
                self.stop()
                if not exited:
                    raise  # running but never ready: not a port race
                # Most likely a port was taken between picking and binding: try others.
        raise RuntimeError(f"OpenBao did not start after {self.attempts} attempts: {last}")

    def _spawn(self) -> None:
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(home)
        argv = [
            self.binary,
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
        ]
        if self.ca_file is not None:
            argv += ["-dev-tls", f"-dev-tls-cert-dir={self.ca_file.parent}"]
            self.ca_file.parent.mkdir(exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.dir,
            start_new_session=True,
        )

    def health(self) -> dict[str, Any] | None:
        """``/v1/sys/health`` as JSON (it answers 503 when sealed, with a body); ``None`` when
        nothing answers."""
        try:
            with self._opener().open(f"{self.url}/v1/sys/health", timeout=1) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except urllib.error.HTTPError as e:
            with contextlib.suppress(ValueError):
                body: dict[str, Any] = json.loads(e.read())
                return body
            return None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bao exited with {self.proc.returncode} on port {self.port}; "
                    f"see {self.log_path}"
                )
            health = self.health()
            if health is not None and health.get("initialized") and not health.get("sealed"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"OpenBao not ready after {self.start_timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            with contextlib.suppress(OSError):
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

    # -- API -----------------------------------------------------------------------------------

    def client(self, token: str | None = None) -> Any:
        """An ``hvac.Client`` for this server (root token unless ``token``)."""
        verify = str(self.ca_file) if self.ca_file is not None else True
        return Client(url=self.url, token=token or self.root_token, verify=verify, timeout=10)

    def unseal_key(self) -> str:
        """The dev server's single unseal key, from its start-up banner."""
        match = _UNSEAL_KEY.search(self.log_path.read_text(errors="replace"))
        if match is None:
            raise RuntimeError(f"no unseal key in {self.log_path}")
        return match.group(1)

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        self.client().sys.submit_unseal_key(self.unseal_key())
        self._wait_ready()

    def setup_pki(
        self,
        mount: str = "pki",
        role: str = "web",
        *,
        allowed_domains: Sequence[str] = ("test.internal",),
        max_ttl: str = "720h",
        ca_ttl: str = "87600h",
        common_name: str = "certpilot OpenBao Test Root",
    ) -> bytes:
        """Enable a PKI engine at ``mount`` with an internal root (``ca_ttl``), issuing and CRL
        URLs, and ``role`` allowing ``allowed_domains``, their subdomains, ``localhost`` and IP
        SANs, any key type, up to ``max_ttl``. Returns the root certificate (PEM).

        ``key_type: any`` suits ``sign/<role>`` (the CSR brings the key); ``issue/<role>`` then
        needs explicit ``key_type``/``key_bits`` parameters. A request above ``max_ttl`` is cut
        to it silently; one beyond the root's notAfter is refused (HTTP 400)."""
        client = self.client()
        # The mount's max lease TTL bounds both the root and every leaf issued under it.
        client.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": ca_ttl})
        root = client.secrets.pki.generate_root(
            "internal", common_name, extra_params={"ttl": ca_ttl}, mount_point=mount
        )
        client.secrets.pki.set_urls(
            {
                "issuing_certificates": [f"{self.url}/v1/{mount}/ca"],
                "crl_distribution_points": [f"{self.url}/v1/{mount}/crl"],
            },
            mount_point=mount,
        )
        client.secrets.pki.create_or_update_role(
            role,
            extra_params={
                "allowed_domains": list(allowed_domains),
                "allow_subdomains": True,
                "allow_bare_domains": True,
                "allow_localhost": True,
                "allow_ip_sans": True,
                "key_type": "any",
                "max_ttl": max_ttl,
            },
            mount_point=mount,
        )
        return str(root["data"]["certificate"]).encode()
