"""One small error hierarchy. Errors carry fields so a caller can render one clear line.

Scan failures are *not* errors: they are problem codes on an observation. These exceptions are
for bad configuration, bad user input and bugs.
"""

from __future__ import annotations


class CertpilotError(Exception):
    """Base of every error certpilot raises on purpose."""

    def one_line(self) -> str:
        return str(self)


class ConfigError(CertpilotError):
    """A configuration file or value is invalid.

    ``source`` names the file (or ``env:NAME`` / ``--flag``), ``field`` the dotted path inside it,
    ``value`` the offending value and ``expected`` what would have been accepted.
    """

    def __init__(
        self,
        source: str,
        field: str,
        expected: str,
        value: object = None,
        *,
        has_value: bool = True,
    ) -> None:
        self.source = source
        self.field = field
        self.expected = expected
        self.value = value
        self.has_value = has_value
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        got = f" (got {self.value!r})" if self.has_value else ""
        return f"{where}: {self.expected}{got}"


class UsageError(CertpilotError):
    """The command line asks for something impossible (bad target syntax, bad flag value)."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        self.message = message
        super().__init__(f"{argument}: {message}")


class CertificateParseError(CertpilotError):
    """Bytes that were supposed to be a certificate are not one."""

    def __init__(self, origin: str, message: str) -> None:
        self.origin = origin
        self.message = message
        super().__init__(f"{origin}: {message}")


class StoreError(CertpilotError):
    """The inventory store cannot be opened or written."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        self.message = message
        super().__init__(f"store {url}: {message}")
