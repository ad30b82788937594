"""HTTP GETs for CT logs, with the retry rules every log client needs.

Logs rate-limit (429 with ``Retry-After``) and fail (5xx, resets) routinely; a monitor must
back off and try again instead of giving up or hammering. :class:`Fetcher` does that once for
the RFC 6962 client and the tiled client: it retries 429, 5xx, timeouts and connection errors
with exponential backoff (full jitter), waits at least what ``Retry-After`` asks (seconds or
an HTTP date, capped), and after ``attempts`` raises :class:`LogUnavailable` carrying the last
``Retry-After``. Any other status is the log's answer: 404 raises :class:`NotFound` (a tiled
log's missing tile), the rest :class:`LogProtocolError`. Bodies are capped (``max_bytes``) so a
hostile log cannot exhaust memory.

aiohttp has no retry policy of its own (aiohttp-retry exists but is not packaged here and would
still need the Retry-After and size rules), hence these few lines.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ctwatch.source import LogProtocolError, LogUnavailable

DEFAULT_ATTEMPTS = 6
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_RETRY_AFTER = 300.0
USER_AGENT = "certpilot-ctwatch (+https://github.com/certpilot/certpilot)"


class NotFound(LogProtocolError):
    """404: the resource is not there (a tile beyond the tree, an unknown leaf hash)."""


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 10.2.3: delay-seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER`; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), MAX_RETRY_AFTER)


class Fetcher:
    """GETs with retries over one aiohttp session (created here unless one is given)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        connections: int = 8,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_status: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_status(url, status)`` sees every answer (0 for a transport failure): the
        monitor counts requests and 429s from it."""
        self._own = session is None
        self._session = session
        self._attempts = max(1, attempts)
        self._base = base_delay
        self._max_delay = max_delay
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._connections = connections
        self._sleep = sleep
        self._on_status = on_status or (lambda _u, _s: None)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(limit=self._connections),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def aclose(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(self._max_delay, self._base * 2**attempt))
        return max(backoff, retry_after or 0.0)

    async def get_bytes(self, url: str, params: Mapping[str, str | int] | None = None) -> bytes:
        """The body of a 200 answer to ``GET url``; see the module text for failures."""
        session = self._get_session()
        last = "no attempt"
        retry_after: float | None = None
        for attempt in range(self._attempts):
            if attempt:
                await self._sleep(self._delay(attempt - 1, retry_after))
            retry_after = None
            try:
                async with session.get(url, params=params, allow_redirects=False) as resp:
                    self._on_status(url, resp.status)
                    if resp.status == 200:
                        return await self._read(url, resp)
                    if resp.status == 429 or resp.status >= 500:
                        retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                        last = f"HTTP {resp.status}"
                        continue
                    body = (await resp.content.read(200)).decode("utf-8", "replace")
                    reason = f"HTTP {resp.status} for {_path(url)}: {' '.join(body.split())}"
                    if resp.status == 404:
                        raise NotFound(url, reason.rstrip(": "))
                    raise LogProtocolError(url, reason.rstrip(": "))
            except (aiohttp.ClientError, TimeoutError) as e:
                self._on_status(url, 0)
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise LogUnavailable(
            url, f"{last} after {self._attempts} attempts", retry_after=retry_after
        )

    async def _read(self, url: str, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            raise LogProtocolError(url, f"answer of {resp.content_length} bytes is too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_bytes:
                raise LogProtocolError(url, f"answer is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        return data

    async def get_json(self, url: str, params: Mapping[str, str | int] | None = None) -> Any:
        """The decoded JSON of a 200 answer; :class:`LogProtocolError` when it is not JSON."""
        data = await self.get_bytes(url, params)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise LogProtocolError(url, f"answer is not JSON: {e}") from None


def _path(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]


__all__ = ["Fetcher", "NotFound", "retry_after_seconds"]
