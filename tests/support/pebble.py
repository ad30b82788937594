"""Pebble (Let's Encrypt's test ACME CA) and pebble-challtestsrv on loopback, for tests.

Follows ``shared/components.md``: a private work directory, free ports picked by binding
``127.0.0.1:0``, the WFE's HTTPS certificate made here with ``cryptography``, both daemons started
with ``subprocess.Popen(..., start_new_session=True)``, readiness polled on ``/dir``, and stopped
by their own PIDs, never by name.

Knobs (Pebble reads them from its environment, see Pebble's README):

- ``nonce_reject``: ``PEBBLE_WFE_NONCEREJECT``, the percentage of good nonces rejected with
  ``badNonce`` (0 here by default; Pebble's own default is 5).
- ``alternate_roots``: ``PEBBLE_ALTERNATE_ROOTS``, extra root hierarchies, each offered as an
  alternate chain (RFC 8555 section 7.4.2 ``Link: rel="alternate"``).
- ``chain_length``: ``PEBBLE_CHAIN_LENGTH`` (root + intermediates).
- ``eab_keys``: ``{kid: base64url HMAC key}``; when given, Pebble requires External Account
  Binding for every new account.
- ``PEBBLE_VA_NOSLEEP=1`` and ``PEBBLE_AUTHZREUSE=0`` always: no random 0-15 s validation
  sleeps, and every order really validates its challenges.

:meth:`Pebble.stop` and :meth:`Pebble.start` may be called again to simulate the CA going away
and coming back (on the same ports; Pebble forgets accounts and makes a new root each start).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certpilot.localca import write_key
from tests.support.services import find_binary, free_ports


def make_wfe_certificate(cert_path: Path, key_path: Path) -> None:
    """A self-signed P-256 certificate for ``127.0.0.1`` and ``localhost``: Pebble's HTTPS
    listener (API and management) serves it, and clients trust exactly this file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certpilot pebble WFE")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        # A CA:TRUE self-signed cert so Go, OpenSSL and Python all accept it as its own anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class Pebble:
    """One Pebble + one challtestsrv, on free loopback ports, in ``workdir``.

    Attributes a test uses: :attr:`directory_url`, :attr:`ca_bundle` (the WFE certificate),
    :attr:`http_port` (where Pebble's VA connects for http-01), :attr:`dns_management_url`
    (challtestsrv's ``/set-txt`` and ``/clear-txt``), and the management helpers
    :meth:`root_pem`, :meth:`intermediate_pem`, :meth:`cert_status`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nonce_reject: int = 0,
        alternate_roots: int = 0,
        chain_length: int | None = None,
        eab_keys: dict[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pebble_bin = find_binary("pebble") or "pebble"
        self.challtestsrv_bin = find_binary("pebble-challtestsrv") or "pebble-challtestsrv"
        self.nonce_reject = nonce_reject
        self.alternate_roots = alternate_roots
        self.chain_length = chain_length
        self.eab_keys = dict(eab_keys or {})
        self.start_timeout = start_timeout
        (
            self.listen_port,
            self.management_port,
            self.http_port,
            self.tls_port,
            self.dns_port,
            self.dns_management_port,
        ) = free_ports(6)
        self.ca_bundle = self.dir / "wfe.pem"
        self.wfe_key = self.dir / "wfe.key"
        make_wfe_certificate(self.ca_bundle, self.wfe_key)
        self.config_path = self.dir / "pebble.json"
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self.log_path = self.dir / "pebble.log"
        self.dns_log_path = self.dir / "challtestsrv.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dns_proc: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._ssl = ssl.create_default_context(cafile=str(self.ca_bundle))
        # No proxies from the environment: everything here is loopback.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ssl)
        )

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.listen_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.ca_bundle),
                "privateKey": str(self.wfe_key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
            }
        }
        if self.eab_keys:
            # kid -> base64url HMAC key (RFC 8555 section 7.3.4); then every newAccount needs one.
            config["pebble"]["externalAccountMACKeys"] = self.eab_keys
        return config

    # -- addresses -----------------------------------------------------------------------------

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    @property
    def dns_management_url(self) -> str:
        return f"http://127.0.0.1:{self.dns_management_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        fh = log.open("ab")
        self._logs.append(fh)
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("pebble is already running")
        if self.dns_proc is None or self.dns_proc.poll() is not None:
            self.dns_proc = self._spawn(
                [
                    self.challtestsrv_bin,
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.dns_management_port}",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ],
                self.dns_log_path,
                dict(os.environ),
            )
        env = dict(os.environ)
        env.update(
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject),
            PEBBLE_AUTHZREUSE="0",
            PEBBLE_ALTERNATE_ROOTS=str(self.alternate_roots),
        )
        if self.chain_length is not None:
            env["PEBBLE_CHAIN_LENGTH"] = str(self.chain_length)
        self.proc = self._spawn(
            [
                self.pebble_bin,
                "-config",
                str(self.config_path),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
                "-strict=false",
            ],
            self.log_path,
            env,
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
                    f"pebble exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self.dns_proc is not None and self.dns_proc.poll() is not None:
                raise RuntimeError(f"pebble-challtestsrv exited; see {self.dns_log_path}")
            try:
                with self._opener.open(self.directory_url, timeout=1) as resp:
                    if resp.status == 200:
                        # challtestsrv's management API must answer too (dns-01 hooks use it).
                        with self._opener.open(
                            urllib.request.Request(
                                f"{self.dns_management_url}/clear-txt",
                                data=json.dumps({"host": "ready.test."}).encode(),
                                method="POST",
                            ),
                            timeout=1,
                        ):
                            return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"pebble not ready; see {self.log_path}")
            time.sleep(0.05)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def stop_pebble(self, timeout: float = 5.0) -> None:
        """Stop only Pebble (by PID): the CA becomes unreachable, challtestsrv stays up."""
        proc, self.proc = self.proc, None
        self._terminate(proc, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop Pebble and challtestsrv, each by its own PID."""
        self.stop_pebble(timeout)
        dns, self.dns_proc = self.dns_proc, None
        self._terminate(dns, timeout)
        for fh in self._logs:
            with contextlib.suppress(OSError):
                fh.close()
        self._logs.clear()

    def restart(self, **knobs: int) -> Self:
        """Stop Pebble, change knobs (``nonce_reject``, ``alternate_roots``, ``chain_length``),
        start it again on the same ports."""
        self.stop_pebble()
        for name, value in knobs.items():
            if name not in {"nonce_reject", "alternate_roots", "chain_length"}:
                raise TypeError(f"unknown pebble knob {name!r}")
            setattr(self, name, value)
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- management API ------------------------------------------------------------------------

    def _get(self, path: str) -> bytes:
        with self._opener.open(f"{self.management_url}{path}", timeout=5) as resp:
            body: bytes = resp.read()
            return body

    def directory(self) -> dict[str, Any]:
        """The ACME directory object (RFC 8555 section 7.1.1) as JSON."""
        with self._opener.open(self.directory_url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def root_pem(self, index: int = 0) -> bytes:
        return self._get(f"/roots/{index}")

    def intermediate_pem(self, index: int = 0) -> bytes:
        return self._get(f"/intermediates/{index}")

    def cert_status(self, serial_hex: str) -> dict[str, Any]:
        """``/cert-status-by-serial/<hex>``: ``{"Status": "Valid"|"Revoked", "Reason": n, ...}``."""
        data: dict[str, Any] = json.loads(self._get(f"/cert-status-by-serial/{serial_hex}"))
        return data

    def set_txt(self, host: str, value: str) -> None:
        self._dns_post("/set-txt", {"host": host, "value": value})

    def clear_txt(self, host: str) -> None:
        self._dns_post("/clear-txt", {"host": host})

    def _dns_post(self, path: str, body: dict[str, str]) -> None:
        req = urllib.request.Request(
            f"{self.dns_management_url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with self._opener.open(req, timeout=5):
            pass
