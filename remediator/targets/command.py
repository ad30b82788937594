"""Running a deploy hook (``nginx -t``, ``nginx -s reload``, ``systemctl reload haproxy``).

Contract:

* The command is an argv list, run with :func:`asyncio.create_subprocess_exec`: never a shell
  (DESIGN.md section 5). Users who want a pipeline say ``["sh", "-c", "..."]`` themselves.
* The environment is exactly what the caller passes (:func:`default_env` when nothing is
  given), never the service's own: that environment holds the Slack, webhook and OpenBao
  tokens, and a reload hook has no business seeing them.
* The command runs in a session of its own (``start_new_session=True``), so on timeout or
  cancellation the whole process group is signalled (``SIGTERM``, then ``SIGKILL`` after
  ``kill_grace``), including children a wrapper script forked. ``subprocess.run(timeout=)``
  kills only the direct child and can then hang on pipes a grandchild holds open.
* Output is kept as a bounded tail, and PEM private-key blocks are redacted from it, so a
  hook that echoes a key file cannot put the key into an exception or a log line.
* Failing to start the command, a non-zero exit and a timeout are all results, not exceptions:
  the caller decides (the files target turns them into ``DeployError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` for hooks when none is configured: Debian puts ``nginx`` in ``/usr/sbin``."""

TAIL_BYTES = 4096
"""How much of each output stream is kept (the end: that is where the error usually is)."""

_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# A tail may start in the middle of a key block: its BEGIN line was cut off.
_PRIVATE_KEY_END = re.compile(r"\A.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.DOTALL)


def default_env() -> dict[str, str]:
    """The environment hooks get unless one is configured: a ``PATH`` and the C locale."""
    return {"PATH": DEFAULT_PATH, "LC_ALL": "C"}


def redact(text: str) -> str:
    """``text`` with every (possibly truncated) PEM private-key block replaced."""
    text = _PRIVATE_KEY_PEM.sub("[private key redacted]", text)
    return _PRIVATE_KEY_END.sub("[private key redacted]", text)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended. ``returncode`` is ``None`` when it never started or was killed on
    timeout; negative when a signal ended it (``subprocess`` convention)."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str = ""  # tail, redacted
    stderr: str = ""  # tail, redacted
    duration: float = 0.0
    timed_out: bool = False
    error: str | None = None  # why it could not be started

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def output_tail(self, lines: int = 8) -> str:
        """The last ``lines`` lines of stderr (stdout when stderr is empty), on one line."""
        text = self.stderr.strip() or self.stdout.strip()
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    def describe(self) -> str:
        """One line for an error message: what ran, how it ended, the end of its output."""
        if self.error is not None:
            return f"cannot run `{self.command}`: {self.error}"
        if self.timed_out:
            how = f"timed out after {self.duration:.1f}s (process group killed)"
        elif self.returncode is not None and self.returncode < 0:
            how = f"killed by signal {-self.returncode}"
        else:
            how = f"exited with {self.returncode}"
        tail = self.output_tail()
        return f"`{self.command}` {how}" + (f": {tail}" if tail else "")


class _Tail:
    """The last ``limit`` bytes read from a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        return redact(bytes(self.data).decode("utf-8", errors="replace"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The group may already be gone (everyone exited): nothing to do then.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """``SIGTERM`` the process group, ``SIGKILL`` it after ``grace`` seconds, reap the leader.

    ``SIGKILL`` goes to the group even when the leader exited on ``SIGTERM``: a child that
    ignores ``SIGTERM`` keeps the group alive (and so its id reserved) until it is killed.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 (the bound before the process group is killed)
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    kill_grace: float = 2.0,
    tail_bytes: int = TAIL_BYTES,
) -> CommandResult:
    """Run ``argv`` (no shell) with exactly ``env`` (:func:`default_env` when ``None``).

    Returns within about ``timeout + kill_grace + 1`` seconds whatever the command does. On
    cancellation the process group is killed before ``CancelledError`` propagates.
    """
    args = tuple(argv)
    if not args:
        return CommandResult(args, None, error="empty command")
    environment = dict(default_env() if env is None else env)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as e:
        return CommandResult(
            args, None, duration=time.monotonic() - started, error=e.strerror or str(e)
        )
    out, err = _Tail(tail_bytes), _Tail(tail_bytes)
    readers = [
        asyncio.ensure_future(out.drain(proc.stdout)),
        asyncio.ensure_future(err.drain(proc.stderr)),
    ]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            await _terminate(proc, kill_grace)
        # A daemon the hook started in a session of its own may keep our pipes open for good:
        # give the readers a moment to reach EOF, then stop reading.
        await asyncio.wait(readers, timeout=1.0)
    except BaseException:  # cancelled: never leave the hook running behind us
        if proc.returncode is None:
            await asyncio.shield(_terminate(proc, kill_grace))
        raise
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return CommandResult(
        args,
        None if timed_out else proc.returncode,
        stdout=out.text(),
        stderr=err.text(),
        duration=time.monotonic() - started,
        timed_out=timed_out,
    )
