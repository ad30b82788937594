"""ACME issuer (RFC 8555) on certbot's ``acme`` library, with ARI (RFC 9773).

``acme`` is synchronous (``requests``): every protocol exchange runs in a worker thread through
:func:`asyncio.to_thread`, so the event loop never blocks. Only the built-in http-01 responder
lives on the loop (an aiohttp server that the worker thread fills with key authorizations).

What the library leaves to its user, and how it is done here:

- **badNonce** (RFC 8555 section 6.5): ``ClientNetwork.post`` retries once; a CA under load (or
  Pebble with ``PEBBLE_WFE_NONCEREJECT``) can reject several in a row, so :class:`_Network`
  retries up to ``bad_nonce_retries`` times, reusing the fresh nonce the error carries.
- **429/503 + Retry-After** (RFC 8555 section 6.6): ``requests`` responses are turned into
  :class:`IssuerError` with ``retry_after`` in seconds (delta-seconds or HTTP-date, RFC 9110
  section 10.2.3) before the library drops the headers.
- **ARI** (RFC 9773): ``renewalInfo`` is fetched by certificate identifier (section 4.1) and
  ``replaces`` (section 5) is sent in newOrder when the directory offers ARI; the library does
  neither in the form needed here.
- **Polling**: short back-off from 50 ms up to 1 s (honouring Retry-After) instead of the
  library's fixed 1 s sleeps, so a loopback CA issues in well under a second.

Secrets: the account key is a 0600 file in ``state_dir``; the EAB HMAC key is read from the
environment at registration and never stored, logged or put in an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import ipaddress
import json
import logging
import os
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import requests
from acme import challenges, messages
from acme import errors as acme_errors
from acme.client import ClientNetwork, ClientV2
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from josepy.errors import DeserializationError
from josepy.json_util import field as jose_field
from josepy.jwa import ES256, RS256
from josepy.jwk import JWK, JWKEC, JWKRSA

from certpilot import __version__
from certpilot.domain.clock import Clock
from certpilot.domain.remedy import (
    IssuedCertificate,
    IssueRequest,
    IssuerError,
    RenewalWindow,
    RevocationReason,
)
from certpilot.domain.x509 import ari_certificate_id, ari_certificate_id_pem
from remediator.issuers._common import (
    PrivateKey,
    config_from_mapping,
    create_private,
    describe,
    generate_key,
    key_to_pem,
    load_pem_chain,
    one_line,
    parse_key_type,
    write_public,
)

log = logging.getLogger("certpilot.remediator.acme")

_P = ParamSpec("_P")
_T = TypeVar("_T")

ACCOUNT_KEY_FILE = "account.key"
ACCOUNT_FILE = "account.json"
# RFC 9773 section 4.3: without Retry-After, poll about twice a day; never hammer the CA.
_ARI_DEFAULT_RETRY = timedelta(hours=6)
_ARI_MIN_RETRY = timedelta(minutes=1)
_ARI_MAX_RETRY = timedelta(days=1)
_ERROR_PREFIX = "urn:ietf:params:acme:error:"
_ACCOUNT_KEY_TYPES = ("EC-256", "RSA-2048", "RSA-3072", "RSA-4096")


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """One ACME account at one CA, and how its challenges are answered.

    ``challenge`` is ``http-01`` or ``dns-01``. http-01 uses ``webroot`` when set (token files
    written under ``<webroot>/.well-known/acme-challenge/``, 0644, removed afterwards), else the
    built-in responder listening on ``http_host:http_port`` for the duration of each order
    (the CA connects to port 80 of each name; forward it there or proxy the path). dns-01 runs
    ``dns_hook`` (an argv, no shell) with ``CERTPILOT_ACME_ACTION=present`` and again (or
    ``dns_cleanup_hook``) with ``cleanup``; both get ``CERTPILOT_ACME_DOMAIN``,
    ``CERTPILOT_ACME_RECORD`` (``_acme-challenge.<domain>``), ``CERTPILOT_ACME_TOKEN`` and
    ``CERTPILOT_ACME_VALUE`` (the TXT value) in their environment.

    ``eab_kid_env`` / ``eab_hmac_env`` name environment variables holding the External Account
    Binding key id and base64url HMAC key (RFC 8555 section 7.3.4); the values never appear in
    config files. ``ca_bundle`` is passed to ``requests`` explicitly, so a ``REQUESTS_CA_BUNDLE``
    in the environment cannot change which CA certificate the ACME server must present.
    """

    directory_url: str
    state_dir: Path
    ca_bundle: Path | None = None
    email: str | None = None
    eab_kid_env: str | None = None
    eab_hmac_env: str | None = None
    challenge: str = "http-01"
    http_host: str = "0.0.0.0"  # noqa: S104 (the CA must reach it; certbot standalone does the same)
    http_port: int = 80
    webroot: Path | None = None
    dns_hook: tuple[str, ...] = ()
    dns_cleanup_hook: tuple[str, ...] | None = None
    dns_hook_timeout: float = 60.0
    dns_propagation_seconds: float = 0.0
    network_timeout: float = 30.0
    order_timeout: float = 90.0
    bad_nonce_retries: int = 25
    account_key_type: str = "EC-256"

    def __post_init__(self) -> None:
        if not self.directory_url.startswith(("https://", "http://")):
            raise ValueError(f"directory_url must be an http(s) URL, got {self.directory_url!r}")
        if self.challenge not in ("http-01", "dns-01"):
            raise ValueError(f"challenge must be http-01 or dns-01, got {self.challenge!r}")
        if self.challenge == "dns-01" and not self.dns_hook:
            raise ValueError("challenge dns-01 needs dns_hook (an argv list)")
        if (self.eab_kid_env is None) != (self.eab_hmac_env is None):
            raise ValueError("eab_kid_env and eab_hmac_env go together")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be 0-65535, got {self.http_port}")
        if self.bad_nonce_retries < 0 or self.order_timeout <= 0 or self.network_timeout <= 0:
            raise ValueError("timeouts must be positive and bad_nonce_retries >= 0")
        if self.account_key_type.upper() not in _ACCOUNT_KEY_TYPES:
            # JWS algorithms used: ES256 for P-256, RS256 for RSA (RFC 7518 section 3.1).
            raise ValueError(
                f"account_key_type must be one of {', '.join(_ACCOUNT_KEY_TYPES)}, "
                f"got {self.account_key_type!r}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "acme issuer") -> AcmeConfig:
        return config_from_mapping(cls, data, source=source)


# -- helpers (pure) ---------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110
    section 10.2.3). ``None`` when absent or unparseable; never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110: HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _issuer_cn(cert: x509.Certificate) -> str:
    attrs = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def select_chain(chains: list[list[x509.Certificate]], preferred: str | None) -> int:
    """Index of the chain to use: the first whose topmost certificate was issued by a CA with
    common name ``preferred`` (certbot's ``--preferred-chain`` rule), else any chain with such an
    issuer anywhere, else the default chain (index 0)."""
    if not preferred:
        return 0
    want = preferred.strip().casefold()
    for i, chain in enumerate(chains):
        if chain and _issuer_cn(chain[-1]).casefold() == want:
            return i
    for i, chain in enumerate(chains):
        if any(_issuer_cn(c).casefold() == want for c in chain):
            return i
    return 0


def _make_csr(key: PrivateKey, names: tuple[str, ...]) -> bytes:
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    builder = x509.CertificateSigningRequestBuilder().add_extension(
        x509.SubjectAlternativeName(sans), critical=False
    )
    # CN is optional in ACME (the CA copies a SAN); set it when it fits (RFC 5280 ub-common-name).
    if len(names[0]) <= 64:
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _acme_code(err: messages.Error) -> str:
    typ = str(err.typ or "")
    return typ[len(_ERROR_PREFIX) :] if typ.startswith(_ERROR_PREFIX) else typ


# -- transport ----------------------------------------------------------------------------------


class _RetryLater(Exception):
    """The CA answered 429 or 503: carries Retry-After (seconds) and the problem detail."""

    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class _Network(ClientNetwork):
    """``ClientNetwork`` with bounded badNonce retries and Retry-After kept."""

    def __init__(self, *, bad_nonce_retries: int, clock: Clock, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bad_nonce_retries = bad_nonce_retries
        self.clock = clock
        self.bad_nonces = 0

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        if not response.ok and self.REPLAY_NONCE_HEADER in response.headers:
            # RFC 8555 section 6.5: error responses carry a fresh nonce too; keep it so the
            # retry after a badNonce does not need another newNonce round trip.
            with contextlib.suppress(acme_errors.BadNonce):
                self._add_nonce(response)
        if response.status_code in (429, 503):
            detail = ""
            with contextlib.suppress(ValueError):
                body = response.json()
                if isinstance(body, dict):
                    detail = str(body.get("detail") or body.get("type") or "")
            raise _RetryLater(
                response.status_code,
                parse_retry_after(response.headers.get("Retry-After"), self.clock.now()),
                detail,
            )
        return response

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        attempt = 0
        while True:
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt >= self.bad_nonce_retries:
                    raise
                attempt += 1
                self.bad_nonces += 1
                log.debug("badNonce, retrying (attempt %d)", attempt)


class _NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 section 5 ``replaces``."""

    replaces: str | None = jose_field("replaces", omitempty=True)


class _Client(ClientV2):
    """``ClientV2`` with ``replaces`` in newOrder and faster polling."""

    net: _Network

    def dir_get(self, name: str) -> Any:
        try:
            return self.directory[name]
        except KeyError:
            return None

    def new_order_ex(
        self, csr_pem: bytes, names: tuple[str, ...], profile: str | None, replaces: str | None
    ) -> messages.OrderResource:
        identifiers = []
        for n in names:
            try:
                ipaddress.ip_address(n)
                identifiers.append(messages.Identifier(typ=messages.IDENTIFIER_IP, value=n))
            except ValueError:
                identifiers.append(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n))
        order = _NewOrder(identifiers=identifiers, profile=profile, replaces=replaces)
        response = self._post(self.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authzrs = [
            self._authzr_from_response(self._post_as_get(url), uri=url)
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body,
            uri=response.headers.get("Location"),
            authorizations=authzrs,
            csr_pem=csr_pem,
        )

    def wait_authorizations(
        self, orderr: messages.OrderResource, deadline: float
    ) -> list[messages.AuthorizationResource]:
        done: list[messages.AuthorizationResource] = []
        for authzr in orderr.authorizations:
            delay = 0.05
            while True:
                authzr, response = self.poll(authzr)
                if authzr.body.status != messages.STATUS_PENDING:
                    break
                _sleep_until_next(response, delay, deadline, self.net.clock)
                delay = min(delay * 2, 1.0)
            done.append(authzr)
        return done

    def finalize(
        self, orderr: messages.OrderResource, deadline: float, fetch_alternates: bool
    ) -> tuple[str, list[str]]:
        """Finalize with the CSR, wait for ``valid`` and download (leaf-first PEM, alternates)."""
        orderr = self.begin_finalization(orderr)
        body = orderr.body
        response: requests.Response | None = None
        refinalized = False
        delay = 0.05
        while not (body.status == messages.STATUS_VALID and body.certificate):
            if body.status == messages.STATUS_INVALID:
                detail = body.error.detail if body.error is not None else "no detail"
                raise _OrderFailed(f"order invalid: {one_line(detail)}")
            if body.status == messages.STATUS_READY and not refinalized:
                # RFC 8555 section 7.4: still "ready" means our finalize was not taken; again.
                refinalized = True
                orderr = self.begin_finalization(orderr)
                body = orderr.body
                continue
            _sleep_until_next(response, delay, deadline, self.net.clock)
            delay = min(delay * 2, 1.0)
            response = self._post_as_get(orderr.uri)
            body = messages.Order.from_json(response.json())
        cert_response = self._post_as_get(body.certificate)
        alternates: list[str] = []
        if fetch_alternates:
            alternates = [
                self._post_as_get(url).text for url in self._get_links(cert_response, "alternate")
            ]
        return cert_response.text, alternates


class _OrderFailed(Exception):
    pass


class _OrderTimeout(Exception):
    pass


def _sleep_until_next(
    response: requests.Response | None, delay: float, deadline: float, clock: Clock
) -> None:
    hint = None
    if response is not None:
        hint = parse_retry_after(response.headers.get("Retry-After"), clock.now())
    wait = min(max(delay, hint or 0.0), 5.0, deadline - time.monotonic())
    if wait <= 0:
        raise _OrderTimeout("deadline reached while waiting for the CA")
    time.sleep(wait)


# -- challenge responders -----------------------------------------------------------------------


class _HttpResponder:
    """The built-in http-01 responder (RFC 8555 section 8.3): an aiohttp server that serves
    ``/.well-known/acme-challenge/<token>`` while at least one order needs it.

    One per listen address in the process (:func:`_responder_for`): two ACME issuers answering
    on the same port (production and staging CAs, say) share it; tokens are random, so their
    entries never collide.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.tokens: dict[str, str] = {}  # token -> key authorization (filled by worker threads)
        self._users = 0
        self._runner: web.AppRunner | None = None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        key_auth = self.tokens.get(request.match_info["token"])
        if key_auth is None:
            return web.Response(status=404, text="unknown token\n")
        return web.Response(text=key_auth, content_type="application/octet-stream")

    async def acquire(self, issuer: str) -> None:
        loop = asyncio.get_running_loop()
        if self._lock is None or (self._users == 0 and self._loop is not loop):
            # An asyncio.Lock belongs to one loop; an idle responder may move to a new one
            # (each ``asyncio.run`` of the CLI, each test).
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if self._users == 0:
                app = web.Application()
                app.router.add_get("/.well-known/acme-challenge/{token}", self._handle)
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
                try:
                    await site.start()
                except OSError as e:
                    await runner.cleanup()
                    raise IssuerError(
                        issuer,
                        f"http-01 responder cannot listen on {self.host}:{self.port}: "
                        f"{one_line(e.strerror or e)}",
                    ) from e
                self._runner = runner
            self._users += 1

    async def release(self) -> None:
        assert self._lock is not None
        async with self._lock:
            self._users -= 1
            if self._users == 0 and self._runner is not None:
                runner, self._runner = self._runner, None
                await runner.cleanup()


_RESPONDERS: dict[tuple[str, int], _HttpResponder] = {}
_RESPONDERS_LOCK = threading.Lock()


def _responder_for(host: str, port: int) -> _HttpResponder:
    with _RESPONDERS_LOCK:
        responder = _RESPONDERS.get((host, port))
        if responder is None:
            responder = _RESPONDERS[(host, port)] = _HttpResponder(host, port)
        return responder


# -- the issuer ---------------------------------------------------------------------------------


class AcmeIssuer:
    """:class:`certpilot.domain.remedy.Issuer` for an ACME CA (Let's Encrypt, ZeroSSL, Pebble,
    step-ca, Boulder, ...).

    Every public method raises :class:`IssuerError` (one line, ``retry_after`` set for 429/503
    and for exhausted badNonce retries) and nothing else for CA-side failures.
    """

    def __init__(self, name: str, config: AcmeConfig, *, clock: Clock) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self._account_lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._account_uri: str | None = None
        self._account_key: JWK | None = None
        self._responder = (
            _responder_for(config.http_host, config.http_port)
            if config.challenge == "http-01" and config.webroot is None
            else None
        )
        self.bad_nonces = 0  # badNonce answers retried so far (for metrics and tests)

    def __repr__(self) -> str:
        return f"AcmeIssuer(name={self.name!r}, directory={self.config.directory_url!r})"

    # -- Issuer protocol ----------------------------------------------------------------------

    async def issue(self, request: IssueRequest) -> IssuedCertificate:
        if not request.names:
            raise IssuerError(self.name, "nothing to issue: no names in the request")
        try:
            parse_key_type(request.key_type)
        except ValueError as e:
            raise IssuerError(self.name, str(e)) from None
        if self._responder is not None:
            await self._responder.acquire(self.name)
        try:
            return await asyncio.to_thread(self._guard, self._issue_sync, request)
        finally:
            if self._responder is not None:
                await self._responder.release()

    async def revoke(self, chain_pem: bytes, reason: RevocationReason) -> None:
        await asyncio.to_thread(self._guard, self._revoke_sync, chain_pem, reason)

    async def renewal_info(self, chain_pem: bytes) -> RenewalWindow | None:
        return await asyncio.to_thread(self._guard, self._renewal_info_sync, chain_pem)

    async def account(self) -> str:
        """The account URL at the CA (registering the persisted key if needed)."""
        return await asyncio.to_thread(self._guard, self._account_sync)

    # -- error mapping ------------------------------------------------------------------------

    def _guard(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn`` (in the worker thread) and turn every CA-side failure into one
        :class:`IssuerError`. An unknown account (the CA lost its state) re-registers once."""
        try:
            try:
                return fn(*args, **kwargs)
            except messages.Error as e:
                if _acme_code(e) != "accountDoesNotExist":
                    raise
                log.info("%s: account unknown to the CA, registering again", self.name)
                with self._account_lock:
                    self._account_uri = None
                return fn(*args, **kwargs)
        except IssuerError:
            raise
        except Exception as e:
            raise self._map_error(e) from e

    def _map_error(self, e: BaseException) -> IssuerError:
        if isinstance(e, _RetryLater):
            what = "rate limited" if e.status == 429 else "CA unavailable (HTTP 503)"
            detail = f": {one_line(e.detail)}" if e.detail else ""
            after = f" (retry after {e.retry_after:g}s)" if e.retry_after is not None else ""
            return IssuerError(self.name, f"{what}{detail}{after}", retry_after=e.retry_after)
        if isinstance(e, messages.Error):
            code = _acme_code(e)
            detail = one_line(e.detail or e.title or e.description or "")
            if code == "badNonce":
                return IssuerError(
                    self.name,
                    f"badNonce after {self.config.bad_nonce_retries} retries: {detail}",
                    retry_after=0.0,
                )
            if code == "rateLimited":
                return IssuerError(self.name, f"rate limited: {detail}")
            return IssuerError(self.name, f"{code or 'error'}: {detail}")
        if isinstance(e, requests.exceptions.SSLError):
            return IssuerError(self.name, f"CA TLS error: {_root_cause(e)}")
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            reason = _root_cause(e)
            if isinstance(e, requests.exceptions.Timeout):
                reason = "timed out"
            return IssuerError(self.name, f"CA unreachable: {reason}")
        if isinstance(e, _OrderTimeout):
            return IssuerError(
                self.name, f"order not completed within {self.config.order_timeout:g}s"
            )
        if isinstance(e, _OrderFailed):
            return IssuerError(self.name, one_line(e))
        if isinstance(e, acme_errors.Error | DeserializationError | ValueError):
            return IssuerError(self.name, f"{type(e).__name__}: {one_line(e)}")
        if isinstance(e, OSError):
            return IssuerError(self.name, f"{type(e).__name__}: {one_line(e)}")
        return IssuerError(self.name, f"unexpected {type(e).__name__}: {one_line(e)}")

    # -- account ------------------------------------------------------------------------------

    def _load_account_key(self) -> JWK:
        """The persisted account key, created (0600, in a 0700 dir) on first use."""
        with self._key_lock:
            if self._account_key is None:
                self._account_key = self._read_or_create_key()
            return self._account_key

    def _read_or_create_key(self) -> JWK:
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state / ACCOUNT_KEY_FILE
        if not path.exists():
            fresh = generate_key(self.config.account_key_type)
            if create_private(path, key_to_pem(fresh)):
                log.info("%s: created ACME account key %s", self.name, path)
        if path.stat().st_mode & 0o077:
            log.warning("%s: %s was readable by others; fixed to 0600", self.name, path)
            path.chmod(0o600)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise IssuerError(self.name, f"{path}: not a PEM private key") from None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return JWKEC(key=key)
        if isinstance(key, rsa.RSAPrivateKey):
            return JWKRSA(key=key)
        raise IssuerError(self.name, f"{path}: account key must be RSA or EC")

    def _network(self) -> _Network:
        jwk = self._load_account_key()
        alg = ES256 if isinstance(jwk, JWKEC) else RS256
        # requests takes a CA bundle path where ClientNetwork's annotation says bool.
        verify = str(self.config.ca_bundle) if self.config.ca_bundle is not None else True
        net = _Network(
            key=jwk,
            alg=alg,
            verify_ssl=cast(bool, verify),
            user_agent=f"certpilot/{__version__} acme-python",
            timeout=cast(int, self.config.network_timeout),
            bad_nonce_retries=self.config.bad_nonce_retries,
            clock=self.clock,
        )
        host = urllib.parse.urlparse(self.config.directory_url).hostname or ""
        net.session.trust_env = not _is_loopback(host)
        return net

    @contextlib.contextmanager
    def _client(self, *, register: bool) -> Iterator[_Client]:
        net = self._network()
        try:
            directory = ClientV2.get_directory(self.config.directory_url, net)
            client = _Client(directory, net)
            if register:
                self._register(client)
            yield client
        finally:
            with self._account_lock:
                self.bad_nonces += net.bad_nonces
            net.session.close()

    def _register(self, client: _Client) -> None:
        with self._account_lock:
            uri = self._account_uri
        if uri is None:
            uri = self._new_account(client)
            with self._account_lock:
                self._account_uri = uri
        client.net.account = messages.RegistrationResource(body=messages.Registration(), uri=uri)

    def _new_account(self, client: _Client) -> str:
        jwk = self._load_account_key()
        eab = None
        if self.config.eab_kid_env and self.config.eab_hmac_env:
            kid = os.environ.get(self.config.eab_kid_env)
            hmac_key = os.environ.get(self.config.eab_hmac_env)
            if not kid or not hmac_key:
                raise IssuerError(
                    self.name,
                    f"external account binding: set {self.config.eab_kid_env} and "
                    f"{self.config.eab_hmac_env} in the environment",
                )
            try:
                eab = messages.ExternalAccountBinding.from_data(
                    account_public_key=jwk.public_key(),
                    kid=kid,
                    hmac_key=hmac_key,
                    directory=client.directory,
                )
            except (ValueError, TypeError, DeserializationError):
                # Never echo the key material back: name the variable only.
                raise IssuerError(
                    self.name, f"{self.config.eab_hmac_env} is not a base64url HMAC key"
                ) from None
        elif client.external_account_required():
            raise IssuerError(
                self.name,
                "the CA requires external account binding: set eab_kid_env and eab_hmac_env",
            )
        registration = messages.NewRegistration.from_data(
            email=self.config.email,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = client.new_account(registration)
            uri = str(regr.uri)
            log.info("%s: registered ACME account %s", self.name, uri)
        except acme_errors.ConflictError as e:
            # RFC 8555 section 7.3.1: the key already has an account; the server says where.
            uri = str(e.location)
            log.debug("%s: reusing ACME account %s", self.name, uri)
        with contextlib.suppress(OSError):
            write_public(
                self.config.state_dir / ACCOUNT_FILE,
                json.dumps({"directory": self.config.directory_url, "account": uri}).encode(),
                mode=0o600,
            )
        return uri

    def _account_sync(self) -> str:
        with self._client(register=True), self._account_lock:
            assert self._account_uri is not None
            return self._account_uri

    # -- issue --------------------------------------------------------------------------------

    def _issue_sync(self, request: IssueRequest) -> IssuedCertificate:
        deadline = time.monotonic() + self.config.order_timeout
        if request.validity_days is not None:
            # RFC 8555 notBefore/notAfter are refused by most CAs (Let's Encrypt among them);
            # the CA's profile decides the lifetime.
            log.debug("%s: validity_days is not sent to ACME CAs", self.name)
        with self._client(register=True) as client:
            profile = self._profile(client, request.profile)
            replaces = request.replaces if client.dir_get("renewalInfo") else None
            key = generate_key(request.key_type)
            csr_pem = _make_csr(key, request.names)
            try:
                orderr = client.new_order_ex(csr_pem, request.names, profile, replaces)
            except messages.Error as e:
                if replaces is None or _acme_code(e) not in ("alreadyReplaced", "malformed"):
                    raise
                # RFC 9773 section 5: a CA may refuse ``replaces`` (already replaced, or a
                # certificate it does not know); the order itself is still wanted.
                log.info("%s: CA refused replaces=%s, ordering without it", self.name, replaces)
                orderr = client.new_order_ex(csr_pem, request.names, profile, None)
            cleanups: list[Callable[[], None]] = []
            try:
                for authzr in orderr.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue  # reused authorization (RFC 8555 section 7.1.4)
                    challb, cleanup = self._provision(client, authzr)
                    cleanups.append(cleanup)
                    response = challb.chall.response(client.net.key)
                    client.answer_challenge(challb, response)
                authzrs = client.wait_authorizations(orderr, deadline)
                for authzr in authzrs:
                    if authzr.body.status != messages.STATUS_VALID:
                        raise _OrderFailed(_authz_failure(authzr))
                fullchain, alternates = client.finalize(
                    orderr.update(authorizations=authzrs),
                    deadline,
                    fetch_alternates=request.preferred_chain is not None,
                )
            finally:
                for cleanup in reversed(cleanups):
                    try:
                        cleanup()
                    except Exception as e:  # cleanup must not hide the order's outcome
                        log.warning("%s: challenge cleanup failed: %s", self.name, one_line(e))
        chains = [load_pem_chain(fullchain.encode())]
        for alt in alternates:
            with contextlib.suppress(ValueError):
                chains.append(load_pem_chain(alt.encode()))
        chosen = chains[select_chain(chains, request.preferred_chain)]
        wanted = (request.preferred_chain or "").casefold()
        if wanted and all(_issuer_cn(c).casefold() != wanted for c in chosen):
            log.info(
                "%s: no chain issued by %r; using the default", self.name, request.preferred_chain
            )
        issued = describe(chosen, key_to_pem(key), self.name)
        log.info(
            "%s: issued serial %s for %s (not after %s)",
            self.name,
            issued.serial,
            ",".join(request.names),
            issued.not_after.isoformat() if issued.not_after else "?",
        )
        return issued

    def _profile(self, client: _Client, wanted: str | None) -> str | None:
        if not wanted:
            return None
        meta = client.dir_get("meta")
        offered = getattr(meta, "profiles", None) if meta is not None else None
        if not offered:
            log.warning("%s: CA offers no profiles; ignoring profile %r", self.name, wanted)
            return None
        if wanted not in offered:
            raise IssuerError(
                self.name,
                f"profile {wanted!r} not offered by the CA (offered: {', '.join(sorted(offered))})",
            )
        return wanted

    def _provision(
        self, client: _Client, authzr: messages.AuthorizationResource
    ) -> tuple[messages.ChallengeBody, Callable[[], None]]:
        """Put the challenge response in place; return the challenge and how to remove it."""
        domain = str(authzr.body.identifier.value)
        kind = self.config.challenge
        wanted = challenges.HTTP01 if kind == "http-01" else challenges.DNS01
        for challb in authzr.body.challenges:
            if isinstance(challb.chall, wanted):
                break
        else:
            offered = ", ".join(str(c.chall.typ) for c in authzr.body.challenges)
            raise _OrderFailed(f"{domain}: CA offers no {kind} challenge (offered: {offered})")
        account_key = client.net.key
        assert account_key is not None
        if isinstance(challb.chall, challenges.HTTP01):
            token = challb.chall.encode("token")
            key_auth = challb.chall.validation(account_key)
            return challb, self._provision_http(token, key_auth)
        assert isinstance(challb.chall, challenges.DNS01)
        token = challb.chall.encode("token")
        value = challb.chall.validation(account_key)
        record = challb.chall.validation_domain_name(domain)
        return challb, self._provision_dns(domain, record, token, value)

    def _provision_http(self, token: str, key_auth: str) -> Callable[[], None]:
        if self.config.webroot is None:
            responder = self._responder
            assert responder is not None
            responder.tokens[token] = key_auth

            def forget() -> None:
                responder.tokens.pop(token, None)

            return forget
        directory = self.config.webroot / ".well-known" / "acme-challenge"
        directory.mkdir(parents=True, exist_ok=True)
        for d in (directory, directory.parent):
            with contextlib.suppress(OSError):
                d.chmod(0o755)
        path = directory / token
        write_public(path, key_auth.encode("ascii"), mode=0o644)

        def cleanup() -> None:
            path.unlink(missing_ok=True)

        return cleanup

    def _provision_dns(
        self, domain: str, record: str, token: str, value: str
    ) -> Callable[[], None]:
        env = {
            "CERTPILOT_ACME_DOMAIN": domain,
            "CERTPILOT_ACME_RECORD": record,
            "CERTPILOT_ACME_TOKEN": token,
            "CERTPILOT_ACME_VALUE": value,
        }
        self._run_hook(self.config.dns_hook, "present", env)
        if self.config.dns_propagation_seconds > 0:
            time.sleep(self.config.dns_propagation_seconds)
        cleanup_argv = self.config.dns_cleanup_hook or self.config.dns_hook
        return lambda: self._run_hook(cleanup_argv, "cleanup", env)

    def _run_hook(self, argv: tuple[str, ...], action: str, extra: dict[str, str]) -> None:
        env = dict(os.environ)
        env.update(extra)
        env["CERTPILOT_ACME_ACTION"] = action
        what = f"dns-01 {action} hook {Path(argv[0]).name}"
        try:
            res = subprocess.run(
                list(argv),
                env=env,
                capture_output=True,
                text=True,
                timeout=self.config.dns_hook_timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise _OrderFailed(
                f"{what} timed out after {self.config.dns_hook_timeout:g}s"
            ) from None
        except OSError as e:
            raise _OrderFailed(f"{what} cannot run: {one_line(e.strerror or e)}") from None
        if res.returncode != 0:
            tail = one_line(res.stderr.strip().splitlines()[-1]) if res.stderr.strip() else ""
            raise _OrderFailed(f"{what} exited {res.returncode}" + (f": {tail}" if tail else ""))

    # -- revoke -------------------------------------------------------------------------------

    def _revoke_sync(self, chain_pem: bytes, reason: RevocationReason) -> None:
        try:
            leaf = load_pem_chain(chain_pem)[0]
        except ValueError as e:
            raise IssuerError(self.name, f"cannot revoke: {one_line(e)}") from None
        serial = format(leaf.serial_number, "x")
        with self._client(register=True) as client:
            try:
                client.revoke(leaf, int(reason))
            except messages.Error as e:
                if _acme_code(e) != "alreadyRevoked":
                    raise
                # Idempotent: a job resumed after a crash may revoke twice.
                log.info("%s: serial %s was already revoked", self.name, serial)
                return
        log.info("%s: revoked serial %s (%s)", self.name, serial, reason.name.lower())

    # -- ARI ----------------------------------------------------------------------------------

    def _renewal_info_sync(self, chain_pem: bytes) -> RenewalWindow | None:
        try:
            leaf = load_pem_chain(chain_pem)[0]
            cert_id = ari_certificate_id(leaf)
        except ValueError as e:
            raise IssuerError(self.name, f"renewal info: {one_line(e)}") from None
        now = self.clock.now()
        if leaf.not_valid_after_utc <= now:
            # RFC 9773 section 4.3: clients MUST NOT ask about an expired certificate.
            return None
        with self._client(register=False) as client:
            base = client.dir_get("renewalInfo")
            if not base:
                return None
            url = f"{str(base).rstrip('/')}/{cert_id}"
            response = client.net.get(url, content_type=ClientNetwork.JSON_CONTENT_TYPE)
        return _parse_renewal_info(response, now)


def _parse_renewal_info(response: requests.Response, now: datetime) -> RenewalWindow:
    try:
        body = response.json()
        window = body["suggestedWindow"]
        start = _rfc3339(window["start"])
        end = _rfc3339(window["end"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"malformed renewalInfo response: {one_line(e)}") from None
    if end <= start:
        raise ValueError("malformed renewalInfo response: window end is not after its start")
    seconds = parse_retry_after(response.headers.get("Retry-After"), now)
    wait = _ARI_DEFAULT_RETRY if seconds is None else timedelta(seconds=seconds)
    wait = min(max(wait, _ARI_MIN_RETRY), _ARI_MAX_RETRY)
    explanation = body.get("explanationURL")
    return RenewalWindow(
        start=start,
        end=end,
        retry_after=now + wait,
        explanation_url=str(explanation) if explanation else None,
    )


def _rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an RFC 3339 string, got {type(value).__name__}")
    ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return ts.astimezone(UTC)


def _authz_failure(authzr: messages.AuthorizationResource) -> str:
    domain = authzr.body.identifier.value
    for challb in authzr.body.challenges:
        if challb.error is not None:
            detail = one_line(challb.error.detail or challb.error.typ)
            return f"{domain}: {challb.chall.typ} validation failed: {detail}"
    return f"{domain}: authorization {authzr.body.status.name}"


def _root_cause(e: BaseException) -> str:
    """The innermost reason of a ``requests``/``urllib3`` error, short: "connection refused",
    "certificate verify failed", "Name or service not known"."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        if nxt is None and hasattr(cur, "reason") and isinstance(cur.reason, BaseException):
            nxt = cur.reason
        cur = nxt
    text = str(e)
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "certificate verify failed" in lowered:
        return "certificate verify failed"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "name does not resolve"
    return one_line(text, 160)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = [
    "AcmeConfig",
    "AcmeIssuer",
    "ari_certificate_id",
    "ari_certificate_id_pem",
    "parse_retry_after",
    "select_chain",
]
